"""`sim report`: the reduced paper sweep and docs/results.md (generated; the command is written into it)."""

from __future__ import annotations

import math
import time
from dataclasses import replace
from pathlib import Path

from mfs.sim.engine import ClusterConfig
from mfs.sim.model import CostModel, get_model
from mfs.sim.results import Run, curves, max_sustainable_rate, plot_attainment, write_results
from mfs.sim.workload import SYNTH_KINDS, make_workload, traces_dir

# (model, workload): the paper's pairing (§4.2): Qwen-like workloads for the MoE models,
# Mooncake traces for Llama3-8B with sequence parallelism.
CASES = [(m, w) for m in ("mixtral-8x22b", "grok-2", "dbrx", "qwen3-coder") for w in ("conversation", "agent")] + \
        [("llama3-8b", "mooncake-conversation"), ("llama3-8b", "mooncake-synthetic")]
SCHEDS = ["mfs", "fair", "sjf", "edf", "karuna"]
# rates as multiples of the "knee": the rate at which fair sharing falls to TARGET attainment (found by
# bisection per case), dense around it so that the high-load points where schedulers differ are sampled
KNEE_GRID = (0.85, 1.0, 1.1, 1.2, 1.3, 1.45)
KNEE_STEPS = 4  # geometric bisection steps between 0.05 and 1.2 x the compute capacity estimate (±10 %)
TARGET = 0.9
HIGH_MIN = 0.2  # a "high-load point": rate >= knee where MFS still meets >= HIGH_MIN (ratios of ~0 are noise)


def capacity_rate(model: str, workload: str, sample: int = 300) -> float:
    """Requests/s per prefill GPU that saturate compute, from the workload's mean tokens (no reuse credit)."""
    m = get_model(model)
    cost = CostModel(m)
    reqs = list(make_workload(workload, 1.0, sample))
    reuse = SYNTH_KINDS.get(workload, (0, 0.35))[1]
    t = sum(cost.request_profile(max(1, int(r.input_tokens * (1 - reuse))), int(r.input_tokens * reuse)).prefill_compute_s
            for r in reqs) / len(reqs)
    return 1.0 / (t * m.gpus)


def find_knee(model: str, workload: str, cluster: ClusterConfig, seed: int = 1, steps: int = KNEE_STEPS) -> float:
    """Rate (req/s per prefill GPU) where fair sharing's attainment crosses TARGET, by geometric
    bisection between 0.05 and 1.2 x the compute capacity estimate (``cluster`` must be SLO-calibrated)."""
    from mfs.sim.runner import run_point

    cap = capacity_rate(model, workload)
    lo, hi = 0.05 * cap, 1.2 * cap
    for _ in range(steps):
        mid = math.sqrt(lo * hi)
        if run_point(model, workload, "fair", mid, cluster, seed=seed).summary["attainment"] >= TARGET:
            lo = mid
        else:
            hi = mid
    return math.sqrt(lo * hi)


def high_points(d: dict[str, dict[float, float]], knee: float) -> list[float]:
    """The (at most two) highest rates >= knee where MFS attainment is still >= HIGH_MIN."""
    hi = [r for r in sorted(d["mfs"]) if r >= knee * 0.999 and d["mfs"][r] >= HIGH_MIN]
    return hi[-2:] or [min(d["mfs"], key=lambda r: abs(r - knee))]


def rate_table(runs: list[Run], target: float = TARGET) -> str:
    cv = curves(runs)
    rates = sorted({r.rate for r in runs})
    head = "| scheduler | " + " | ".join(f"{r:.3g}" for r in rates) + f" | max rate @{target:.0%} |"
    lines = [head, "|---" * (len(rates) + 2) + "|"]
    for s, pts in sorted(cv.items(), key=lambda kv: (kv[0] != "mfs", " " in kv[0], kv[0])):
        d = dict(pts)
        lines.append(f"| {s} | " + " | ".join(f"{d[r]:.2f}" if r in d else "" for r in rates)
                     + f" | {max_sustainable_rate(pts, target):.3g} |")
    return "\n".join(lines)


def _ratio(a: float, b: float) -> str:
    if math.isnan(a) or math.isnan(b):
        return "n/a"
    if b == 0:
        return "∞" if a > 0 else "1.00 (both 0)"
    return f"{a / b:.2f}×"


def make_report(a, cmd: str) -> None:
    from mfs.sim.cli import BOUND, run_jobs
    from mfs.sim.runner import calibrate_slo

    only = {x for x in a.only.split(",") if x}
    cases = [c for c in CASES if not only or c[0] in only]
    if traces_dir() is None:
        skipped = [c for c in cases if c[1].startswith("mooncake")]
        cases = [c for c in cases if not c[1].startswith("mooncake")]
    else:
        skipped = []
    base = ClusterConfig(servers=a.servers, warmup=a.warmup, measured=a.measured)
    t0 = time.perf_counter()
    sections, rows = [], []
    for i, (model, wl) in enumerate(cases, 1):
        label = f"{model}/{wl} ({i}/{len(cases)}) "
        cl = replace(base, lowload_ratio=calibrate_slo(model, wl, base))
        knee = find_knee(model, wl, cl)
        rates = [round(knee * f, 4) for f in KNEE_GRID]
        todo = [(model, wl, s, r, cl, 1) for r in rates for s in SCHEDS]
        todo += [(model, wl, "fair", r, replace(cl, ideal_network=True), 1) for r in rates]
        runs = run_jobs(todo, a.jobs, label)
        print(f"{label}done at {(time.perf_counter() - t0) / 60:.1f} min", flush=True)
        stem = Path(a.data) / f"{model}_{wl}"
        write_results(stem, runs, cmd)
        png = plot_attainment(runs, Path(a.img) / f"sim_{model}_{wl}.png", f"{model} / {wl}")
        cv = curves(runs)
        d = {s: dict(p) for s, p in cv.items()}
        hi = high_points(d, knee)
        bases = [s for s in SCHEDS if s != "mfs"]
        best_base = {r: max(bases, key=lambda s: d[s].get(r, -1)) for r in hi}
        msr = {s: max_sustainable_rate(cv[s], TARGET) for s in cv}
        best_rate_base = max(bases, key=lambda s: msr[s])
        for r in hi:
            rows.append(f"| {model} | {wl} | {r:.3g} ({r / knee:.2f}×knee) | {d['mfs'][r]:.2f} | {d['karuna'][r]:.2f} | "
                        f"{_ratio(d['mfs'][r], d['karuna'][r])} | {best_base[r]} {d[best_base[r]][r]:.2f} | "
                        f"{_ratio(d['mfs'][r], d[best_base[r]][r])} | {d[BOUND][r]:.2f} | "
                        f"{_ratio(msr['mfs'], msr['karuna'])} | {_ratio(msr['mfs'], msr[best_rate_base])} "
                        f"({best_rate_base}) |")
        top = [x for x in runs if x.rate == hi[-1] and x.scheduler in SCHEDS]
        detail = "\n".join(f"| {x.scheduler} | {x.summary['ttft_mean'] * 1e3:.1f} | {x.summary['ttft_p99'] * 1e3:.1f} | "
                           f"{x.summary['stage2_cct_mean'] * 1e3:.2f} | {x.summary['stage1_stall_mean'] * 1e3:.2f} | "
                           f"{x.summary['earliness_nonneg_mean'] * 1e3:.1f} |"
                           for x in sorted(top, key=lambda x: (x.scheduler != "mfs", x.scheduler)))
        sections.append(f"### {model} / {wl}\n\nKnee (fair sharing at {TARGET:.0%}) {knee:.3g} req/s per prefill GPU "
                        f"(compute capacity estimate {capacity_rate(model, wl):.3g}); rates = "
                        f"{', '.join(f'{f:g}' for f in KNEE_GRID)} × knee; SLO ratio low-load/ideal = "
                        f"{cl.lowload_ratio:.3f}.\n\n![{model} {wl}](img/{png.name})\n\n{rate_table(runs)}\n\n"
                        f"At rate {hi[-1]:.3g} (ms; Stage-2 CCT and Stage-1 stall summed per request over its layers, "
                        f"earliness = mean over requests that met their deadline):\n\n"
                        f"| scheduler | mean TTFT | p99 TTFT | Stage-2 CCT | Stage-1 stall | earliness ≥ 0 |\n"
                        f"|---|---|---|---|---|---|\n{detail}\n")
    wall = time.perf_counter() - t0
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    text = [
        "# Simulation results (generated)",
        "",
        f"Generated by `{cmd}` in {wall / 60:.1f} min; do not edit by hand. Method and model: docs/simulator.md; "
        f"discussion of the gap to the paper: docs/simulator.md, \"Results vs the paper\".",
        "",
        f"**Reduced sweep** (compute budget ~25 min on 2 shared cores): {a.servers} servers × 8 GPUs instead of 256, "
        f"{a.warmup} warm-up + {a.measured} measured requests per point instead of 512 + 1024, one seed, "
        f"{len(KNEE_GRID)} rates per case placed around each case's knee, schedulers {', '.join(SCHEDS)}, plus the "
        f"*{BOUND}* (fair sharing with transfers taking ~0 s, same deadlines: the attainment no network "
        f"scheduler can beat). The full paper scale is "
        f"`python -m mfs.sim sweep --servers 256 --warmup 512 --measured 1024 ...`. "
        f"Attainment = share of measured requests whose TTFT (incl. the Stage-3 tail) meets 3 × their "
        f"low-load TTFT. Max rate = largest rate with attainment ≥ {TARGET:.0%} (interpolated; 0 when even the "
        f"lowest rate misses it).",
        "",
        f"## Summary: MFS vs Karuna and vs the best baseline at high load",
        "",
        f"High-load points: the (at most two) highest rates at or above the knee where MFS still meets ≥ "
        f"{HIGH_MIN:.0%} (beyond them every scheduler is near 0 and ratios are noise). Paper (§6): 1.2–2.4× "
        f"attainment, sustainable rate 1.17–1.46× Karuna's.",
        "",
        "| model | workload | rate | MFS | Karuna | MFS/Karuna | best baseline | MFS/best | bound | "
        "rate@90% MFS/Karuna | rate@90% MFS/best |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
        *rows,
        "",
    ]
    if skipped:
        text += [f"Skipped (traces directory not found): {', '.join(f'{m}/{w}' for m, w in skipped)}.", ""]
    text += ["## Per case", "", *sections]
    out.write_text("\n".join(text) + "\n")
    print(out)
