"""The demo's analysis: paired comparison of schedulers over repeated runs, with 95 % intervals.

Input: results Runs (mfs.sim.results) of the emulation and, optionally, of the simulator, one per
(policy, seed), every policy of a seed having replayed the same requests (same ids). Output: a
table (mean TTFT, p99 TTFT, SLO attainment, Stage-2 CCT, each with its interval), the paired
per-request TTFT difference of ``mfs`` against every baseline, emulated beside simulated, a
one-line verdict and ``demo.png``. Statistics: :mod:`mfs.stats` (docs/demo.md, "Statistics").
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from mfs import stats as S

TREATMENT = "mfs"


def by_policy(runs) -> dict[str, list]:
    out: dict[str, list] = {}
    for r in runs:
        out.setdefault(r.scheduler, []).append(r)
    return out


def _seed(run) -> int:
    return int(run.meta.get("seed", 0))


def records(runs) -> list:
    return [q for r in runs for q in r.requests if q.measured]


def keyed(runs) -> dict[tuple[int, int], object]:
    """(seed, request_id) -> measured record."""
    return {(_seed(r), q.request_id): q for r in runs for q in r.requests if q.measured}


@dataclass
class PolicyStats:
    policy: str
    seeds: int
    requests: int
    ttft_mean: S.Interval
    ttft_p99: S.Interval
    attainment: S.Interval
    stage2_cct: S.Interval

    def as_dict(self) -> dict:
        return {"policy": self.policy, "seeds": self.seeds, "requests": self.requests,
                **{k: getattr(self, k).as_dict() for k in ("ttft_mean", "ttft_p99", "attainment", "stage2_cct")}}


def policy_stats(policy: str, runs) -> PolicyStats:
    recs = records(runs)
    ttft = [q.ttft for q in recs]
    return PolicyStats(policy, len({_seed(r) for r in runs}), len(recs), S.mean_ci(ttft), S.quantile_ci(ttft, 0.99),
                       S.wilson(sum(bool(q.met) for q in recs), len(recs)), S.mean_ci([q.stage2_cct for q in recs]))


def paired(runs_t, runs_b, key: str = "ttft") -> S.PairedDiff:
    """Per-request paired difference treatment − baseline over the requests both measured."""
    a, b = keyed(runs_t), keyed(runs_b)
    common = sorted(set(a) & set(b))
    return S.paired_diff([getattr(a[k], key) for k in common], [getattr(b[k], key) for k in common])


def per_seed_rel(runs_t, runs_b) -> list[float]:
    """Relative mean-TTFT difference per seed (treatment/baseline − 1): is the sign the same in every repetition?"""
    bt, bb = {_seed(r): r for r in runs_t}, {_seed(r): r for r in runs_b}
    out = []
    for s in sorted(set(bt) & set(bb)):
        pairs = _pairs(bt[s], bb[s])
        out.append(S.paired_diff([a for a, _ in pairs], [b for _, b in pairs]).rel.value if pairs else math.nan)
    return out


def _pairs(rt, rb):
    a = {q.request_id: q.ttft for q in rt.requests if q.measured}
    b = {q.request_id: q.ttft for q in rb.requests if q.measured}
    return [(a[k], b[k]) for k in sorted(set(a) & set(b))]


@dataclass
class Comparison:
    baseline: str
    emulated: S.PairedDiff
    simulated: S.PairedDiff | None
    stage2: S.PairedDiff  # paired Stage-2 CCT difference (emulated)
    seeds_rel: list[float] = field(default_factory=list)

    @property
    def significant(self) -> bool:
        return self.emulated.rel.excludes_zero()

    def agreement(self) -> str:
        """'agree' (the simulated change lies inside the emulated interval), 'same direction' (outside it,
        same sign), 'opposite' (the emulated interval excludes zero on the other side), 'no simulation'."""
        if self.simulated is None or not math.isfinite(self.simulated.rel.value):
            return "no simulation"
        e, s = self.emulated.rel, self.simulated.rel.value
        if e.lo <= s <= e.hi:
            return "agree"
        if e.excludes_zero() and (s < 0) != (e.value < 0):
            return "opposite"
        return "same direction" if (s < 0) == (e.value < 0) else "differ"

    def line(self) -> str:
        e = self.emulated.rel
        txt = (f"{TREATMENT} vs {self.baseline:7s} mean TTFT: emulated {_pct(e.value)} "
               f"(95% CI {_pct(e.lo)} .. {_pct(e.hi)}; {self.emulated.wins} of "
               f"{self.emulated.diff.n} requests faster)")
        if self.simulated is not None:
            txt += f", simulated {_pct(self.simulated.rel.value)}"
            ag = self.agreement()
            if ag == "agree":
                txt += " [agree]"
            elif ag == "same direction":
                txt += " [same direction; the magnitudes differ beyond the interval, docs/demo.md]"
            else:
                txt += " [DISAGREE beyond the interval, docs/demo.md]"
        if not self.significant:
            txt += " -- not significant (the interval includes 0)"
        return txt

    def as_dict(self) -> dict:
        return {"baseline": self.baseline, "emulated_ttft": self.emulated.as_dict(),
                "simulated_ttft": self.simulated.as_dict() if self.simulated else None,
                "emulated_stage2": self.stage2.as_dict(), "per_seed_rel": self.seeds_rel,
                "significant": self.significant, "agreement": self.agreement()}


def compare(emu_runs, sim_runs=None) -> list[Comparison]:
    emu, sim = by_policy(emu_runs), by_policy(sim_runs or [])
    if TREATMENT not in emu:
        return []
    out = []
    for b in emu:
        if b == TREATMENT:
            continue
        s = paired(sim[TREATMENT], sim[b]) if TREATMENT in sim and b in sim else None
        out.append(Comparison(b, paired(emu[TREATMENT], emu[b]), s, paired(emu[TREATMENT], emu[b], "stage2_cct"),
                              per_seed_rel(emu[TREATMENT], emu[b])))
    return out


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x * 100:+.1f}%"


def _ms(iv: S.Interval) -> str:
    if not math.isfinite(iv.value):
        return "n/a"
    return f"{iv.value * 1e3:.1f} ({iv.lo * 1e3:.1f}-{iv.hi * 1e3:.1f})"


def table(stats: list[PolicyStats], sim: dict[str, PolicyStats] | None = None) -> str:
    """One row per policy: value (95 % interval); times in real-cluster ms."""
    head = (f"{'policy':8s} {'n':>4s}  {'mean TTFT ms':>20s}  {'p99 TTFT ms':>20s}  {'SLO attain %':>16s}  "
            f"{'Stage-2 CCT ms':>18s}")
    lines = [head, "-" * len(head)]
    for st in stats:
        a = st.attainment
        att = "n/a" if not math.isfinite(a.value) else f"{a.value * 100:.0f} ({a.lo * 100:.0f}-{a.hi * 100:.0f})"
        lines.append(f"{st.policy:8s} {st.requests:4d}  {_ms(st.ttft_mean):>20s}  {_ms(st.ttft_p99):>20s}  "
                     f"{att:>16s}  {_ms(st.stage2_cct):>18s}")
        if sim and st.policy in sim:
            s = sim[st.policy]
            lines.append(f"{'  (sim)':8s} {s.requests:4d}  {s.ttft_mean.value * 1e3:20.1f}  {s.ttft_p99.value * 1e3:20.1f}  "
                         f"{s.attainment.value * 100:16.0f}  {s.stage2_cct.value * 1e3:18.1f}")
    return "\n".join(lines)


def verdict(comps: list[Comparison]) -> str:
    """One line: does MFS win, significantly, against every baseline, in the simulator's direction?"""
    if not comps:
        return f"verdict: nothing to compare ({TREATMENT} and at least one baseline are needed)"
    parts, ok = [], True
    for c in comps:
        e = c.emulated.rel
        if e.hi < 0:
            word = f"{-e.value * 100:.0f}% lower (CI {-e.hi * 100:.0f}-{-e.lo * 100:.0f}%)"
        elif e.lo > 0:
            word = f"{e.value * 100:.0f}% HIGHER (CI {e.lo * 100:.0f}-{e.hi * 100:.0f}%)"
            ok = False
        else:
            word = f"{_pct(e.value)}, not significant"
            ok = False
        if c.simulated is not None:
            word += f", sim {_pct(c.simulated.rel.value)}"
            if c.agreement() in ("opposite", "differ") or (c.simulated.rel.value < 0) != (e.value < 0):
                ok = False
        parts.append(f"vs {c.baseline} {word}")
    head = ("MFS wins significantly, in the simulator's direction" if ok else
            "MFS does NOT win significantly against every baseline")
    return f"verdict: {head}: mean TTFT " + "; ".join(parts)


def plot(emu_runs, sim_runs, path, title: str = "") -> object:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    emu, sim = by_policy(emu_runs), by_policy(sim_runs or [])
    names = list(emu)
    colors = {n: ("tab:red" if n == TREATMENT else c) for n, c in
              zip(names, ["tab:blue", "tab:green", "tab:purple", "tab:orange", "tab:brown", "tab:gray", "tab:olive"])}
    fig, ax = plt.subplots(1, 4, figsize=(18, 4.0))
    # 1) TTFT CDF with the DKW 95 % band
    for n in names:
        xs = sorted(q.ttft * 1e3 for q in records(emu[n]) if math.isfinite(q.ttft))
        if not xs:
            continue
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        eps = math.sqrt(math.log(2 / 0.05) / (2 * len(xs)))
        ax[0].step(xs, ys, where="post", color=colors[n], lw=2.2 if n == TREATMENT else 1.3, label=n)
        ax[0].fill_between(xs, [max(0, y - eps) for y in ys], [min(1, y + eps) for y in ys], step="post",
                           color=colors[n], alpha=0.12)
    ax[0].set_xlabel("TTFT (real-cluster ms)")
    ax[0].set_ylabel("fraction of requests")
    ax[0].set_title("TTFT CDF, emulated (band: 95% DKW)")
    ax[0].grid(alpha=0.3)
    ax[0].legend(fontsize=8)
    # 2) mean TTFT and 3) Stage-2 CCT: emulated with 95 % CI, simulated as a marker
    for a, key, ylabel in ((ax[1], "ttft", "mean TTFT (ms)"), (ax[2], "stage2_cct", "mean Stage-2 CCT per request (ms)")):
        for i, n in enumerate(names):
            iv = S.mean_ci([getattr(q, key) for q in records(emu[n])])
            a.bar(i, iv.value * 1e3, color=colors[n], alpha=0.8)
            a.errorbar(i, iv.value * 1e3, yerr=[[max(0, (iv.value - iv.lo) * 1e3)], [max(0, (iv.hi - iv.value) * 1e3)]],
                       color="black", capsize=5)
            if n in sim:
                sv = S.mean_ci([getattr(q, key) for q in records(sim[n])]).value
                a.plot(i, sv * 1e3, marker="D", color="black", ms=7, mfc="white",
                       label="simulator" if not a.get_legend_handles_labels()[0] else None)
        a.set_xticks(range(len(names)), names)
        a.set_ylabel(ylabel)
        a.set_title(ylabel.split(" (")[0] + ": emulated, 95% CI")
        a.grid(alpha=0.3, axis="y")
        if a.get_legend_handles_labels()[0]:
            a.legend(fontsize=8)
    # 4) the headline: paired per-request difference MFS - baseline, emulated (95 % CI) vs simulated
    a = ax[3]
    comps = compare(emu_runs, sim_runs)
    for i, c in enumerate(comps):
        e = c.emulated.rel
        if not math.isfinite(e.value):
            continue
        a.bar(i, e.value * 100, color=colors.get(c.baseline, "gray"), alpha=0.8)
        a.errorbar(i, e.value * 100, yerr=[[(e.value - e.lo) * 100], [(e.hi - e.value) * 100]], color="black",
                   capsize=5)
        if c.simulated is not None:
            a.plot(i, c.simulated.rel.value * 100, marker="D", color="black", ms=7, mfc="white",
                   label="simulator" if not a.get_legend_handles_labels()[0] else None)
    a.axhline(0, color="black", lw=0.8)
    a.set_xticks(range(len(comps)), [f"vs {c.baseline}" for c in comps])
    a.set_ylabel(f"{TREATMENT} - baseline, mean TTFT (%)")
    a.set_title("paired per-request difference, 95% CI")
    a.grid(alpha=0.3, axis="y")
    if a.get_legend_handles_labels()[0]:
        a.legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
