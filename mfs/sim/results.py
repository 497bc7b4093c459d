"""The results schema shared by the simulator and the emulation: writer, reader, summarizer, plotter.

Independent of simulator internals: anything that measures requests (the
flow-level simulator, the emulated cluster) fills :class:`RequestRecord` s and
calls :func:`make_run` / :func:`write_results`.

File layout (``<stem>.json``; ``<stem>.csv`` holds one summary row per run)::

    {"schema": "mfs-results/1",
     "command": "...",                       # what produced it
     "runs": [{"scheduler": "mfs", "rate": 0.7,
               "meta": {...},                # model, workload, slo_scale, ...
               "summary": {...},             # see summarize()
               "requests": [{RequestRecord fields}, ...]}]}

Times are seconds on the producer's clock; ``deadline`` is absolute
(``arrival + SLO``); ``ttft = completion − arrival``; ``earliness =
deadline − completion`` (negative = miss). Only records with ``measured`` true
(warm-up excluded) enter the summary.
"""

from __future__ import annotations

import csv
import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Iterable

SCHEMA = "mfs-results/1"


@dataclass(slots=True)
class RequestRecord:
    request_id: int
    arrival: float
    ttft: float
    deadline: float
    met: bool
    measured: bool = True
    input_tokens: int = 0
    reused_tokens: int = 0
    prefill_start: float | None = None  # first layer starts computing
    prefill_end: float | None = None  # last layer (and its Stage 2) done
    stage1_done: float | None = None  # last Stage-1 byte landed
    stage3_done: float | None = None  # last Stage-3 byte landed (= completion unless prefill ends later)
    stage2_cct: float = 0.0  # summed non-overlapped Stage-2 time over layers (s)
    stage1_stall: float = 0.0  # summed GPU wait for Stage-1 data beyond Stage 2 (s)

    @property
    def completion(self) -> float:
        return self.arrival + self.ttft

    @property
    def earliness(self) -> float:
        return self.deadline - self.completion


_FIELDS = [f.name for f in fields(RequestRecord)]


def _pct(sorted_xs: list[float], q: float) -> float:
    if not sorted_xs:
        return math.nan
    k = (len(sorted_xs) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def summarize(records: Iterable[RequestRecord]) -> dict:
    recs = [r for r in records if r.measured]
    n = len(recs)
    if n == 0:
        return {"requests": 0, "attainment": math.nan, "ttft_mean": math.nan, "ttft_p50": math.nan,
                "ttft_p99": math.nan, "stage2_cct_mean": math.nan, "stage1_stall_mean": math.nan,
                "earliness_mean": math.nan, "earliness_nonneg_mean": math.nan}
    ttft = sorted(r.ttft for r in recs)
    early = [r.earliness for r in recs]
    nonneg = [e for e in early if e >= 0]
    return {
        "requests": n,
        "attainment": sum(r.met for r in recs) / n,
        "ttft_mean": sum(ttft) / n,
        "ttft_p50": _pct(ttft, 0.5),
        "ttft_p99": _pct(ttft, 0.99),
        "stage2_cct_mean": sum(r.stage2_cct for r in recs) / n,
        "stage1_stall_mean": sum(r.stage1_stall for r in recs) / n,
        "earliness_mean": sum(early) / n,
        "earliness_nonneg_mean": sum(nonneg) / len(nonneg) if nonneg else math.nan,
    }


@dataclass(slots=True)
class Run:
    scheduler: str
    rate: float
    meta: dict
    summary: dict
    requests: list[RequestRecord]


def make_run(scheduler: str, rate: float, records: list[RequestRecord], **meta) -> Run:
    return Run(scheduler, float(rate), meta, summarize(records), records)


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_json_safe(v) for v in x]
    return x


def write_results(stem: str | Path, runs: list[Run], command: str = "", with_requests: bool = True) -> tuple[Path, Path]:
    """Write ``stem.json`` (full) and ``stem.csv`` (summary rows); return both paths."""
    stem = Path(stem)
    if stem.suffix in (".json", ".csv"):
        stem = stem.with_suffix("")
    stem.parent.mkdir(parents=True, exist_ok=True)
    doc = {"schema": SCHEMA, "command": command, "runs": [
        {"scheduler": r.scheduler, "rate": r.rate, "meta": r.meta, "summary": r.summary,
         "requests": [asdict(q) for q in r.requests] if with_requests else []} for r in runs]}
    jp, cp = stem.with_suffix(".json"), stem.with_suffix(".csv")
    jp.write_text(json.dumps(_json_safe(doc), indent=1))
    keys = sorted({k for r in runs for k in r.meta})
    skeys = list(summarize([]).keys())
    with open(cp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["scheduler", "rate", *keys, *skeys])
        for r in runs:
            w.writerow([r.scheduler, r.rate, *[r.meta.get(k, "") for k in keys], *[r.summary.get(k) for k in skeys]])
    return jp, cp


def read_results(path: str | Path) -> tuple[list[Run], str]:
    """Read a results JSON; returns (runs, command). Errors name the file and what is wrong."""
    p = Path(path)
    if p.suffix != ".json":
        p = p.with_suffix(".json")
    try:
        doc = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"{p}: cannot read results: {e}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise ValueError(f"{p}: not an {SCHEMA} file (schema={doc.get('schema') if isinstance(doc, dict) else None!r})")
    runs = []
    for i, r in enumerate(doc.get("runs", [])):
        try:
            recs = [RequestRecord(**q) for q in r.get("requests", [])]
            summ = {k: (math.nan if v is None else v) for k, v in r["summary"].items()}
            runs.append(Run(r["scheduler"], float(r["rate"]), r.get("meta", {}), summ, recs))
        except (KeyError, TypeError) as e:
            raise ValueError(f"{p}: runs[{i}] is malformed: {e}") from None
    return runs, doc.get("command", "")


def curves(runs: list[Run], key: str = "attainment") -> dict[str, list[tuple[float, float]]]:
    """{scheduler: [(rate, summary[key]), ...] sorted by rate}."""
    out: dict[str, list[tuple[float, float]]] = {}
    for r in runs:
        out.setdefault(r.scheduler, []).append((r.rate, r.summary.get(key, math.nan)))
    return {k: sorted(v) for k, v in out.items()}


def max_sustainable_rate(points: list[tuple[float, float]], target: float = 0.9) -> float:
    """Largest rate at which attainment stays >= target (linear interpolation to the first point below).

    Returns 0.0 if even the lowest rate misses the target, and the highest swept
    rate if none does (a lower bound).
    """
    pts = sorted(points)
    if not pts or not pts[0][1] >= target:
        return 0.0
    for (r0, a0), (r1, a1) in zip(pts, pts[1:]):
        if not a1 >= target:
            return r0 + (r1 - r0) * (a0 - target) / (a0 - a1) if a0 != a1 else r0
    return pts[-1][0]


def plot_attainment(runs: list[Run], path: str | Path, title: str = "", key: str = "attainment") -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.2, 3.0), dpi=110)
    for sched, pts in sorted(curves(runs, key).items()):
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", ms=3,
                lw=2.2 if sched == "mfs" else 1.2, label=sched)
    ax.set_xlabel("request rate (req/s per prefill GPU)")
    ax.set_ylabel("TTFT SLO attainment" if key == "attainment" else key)
    if key == "attainment":
        ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7)
    fig.tight_layout()
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(p)
    plt.close(fig)
    return p
