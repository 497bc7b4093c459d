"""`sim` command line: run one point, sweep schedulers × rates, write docs/results.md.

    python -m mfs.sim run --model dbrx --workload conversation --scheduler mfs --rate 0.7
    python -m mfs.sim sweep --model dbrx --workload conversation --rates 0.4,0.6,0.8 --out out/sim/dbrx
    python -m mfs.sim report --servers 32 --out docs/results.md   # the reduced paper sweep (~25 min on 2 cores)
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import shlex
import sys
import time
from dataclasses import replace
from pathlib import Path

from mfs.sim.engine import ClusterConfig
from mfs.sim.model import MODELS
from mfs.sim.results import Run, plot_attainment, write_results
from mfs.sim.runner import SCHEDULERS, calibrate_slo, run_point
from mfs.sim.workload import WORKLOADS


def _floats(s: str) -> list[float]:
    try:
        xs = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None
    if not xs or any(not x > 0 for x in xs):
        raise argparse.ArgumentTypeError(f"{s!r}: rates must be > 0")
    return xs


def _scheds(s: str) -> list[str]:
    xs = [x.strip() for x in s.split(",") if x.strip()]
    bad = [x for x in xs if x not in SCHEDULERS]
    if bad or not xs:
        raise argparse.ArgumentTypeError(f"unknown scheduler(s) {', '.join(bad) or '(none)'} (allowed: {', '.join(SCHEDULERS)})")
    return xs


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default="mixtral-8x22b", help="model configuration (mfs/sim/model.py)")
    p.add_argument("--workload", choices=WORKLOADS, default="conversation",
                   help="synthetic Qwen-like (conversation, agent) or a Mooncake trace (needs $MFS_TRACES or ../shared/traces)")
    p.add_argument("--servers", type=int, default=256, help="servers of 8 GPUs, half prefill, half decode (default 256)")
    p.add_argument("--warmup", type=int, default=512, help="warm-up requests excluded from metrics (default 512)")
    p.add_argument("--measured", type=int, default=1024, help="measured requests (default 1024)")
    p.add_argument("--slo-scale", type=float, default=3.0, help="deadline = arrival + this × low-load TTFT (default 3)")
    p.add_argument("--max-batch-tokens", type=int, default=16384, help="new tokens per prefill batch (default 16384)")
    p.add_argument("--seed", type=int, default=1)


def _cluster(a) -> ClusterConfig:
    return ClusterConfig(servers=a.servers, warmup=a.warmup, measured=a.measured, slo_scale=a.slo_scale,
                         max_batch_tokens=a.max_batch_tokens)


def _point(job):
    model, workload, sched, rate, cluster, seed = job
    run = run_point(model, workload, sched, rate, cluster, seed=seed)
    if cluster.ideal_network:
        run.scheduler = BOUND  # compute-only bound: fair sharing on links 1e6x faster
    return run


BOUND = "no-network bound"


def run_jobs(todo: list[tuple], jobs: int | None = None, label: str = "") -> list[Run]:
    """Run ``(model, workload, scheduler, rate, cluster, seed)`` points on ``jobs`` processes, with progress."""
    jobs = max(1, min(jobs or os.cpu_count() or 1, len(todo)))
    runs: list[Run] = []
    t0 = time.perf_counter()
    with mp.get_context("fork").Pool(jobs) as pool:
        for i, run in enumerate(pool.imap_unordered(_point, todo), 1):
            runs.append(run)
            el = time.perf_counter() - t0
            print(f"\r{label}[{i}/{len(todo)}] {el:5.0f}s  last {run.scheduler}@{run.rate:g}: "
                  f"attain {run.summary['attainment']:.2f}   ", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    runs.sort(key=lambda r: (r.scheduler, r.rate))
    return runs


def sweep(model: str, workload: str, schedulers: list[str], rates: list[float], cluster: ClusterConfig,
          seed: int = 1, jobs: int | None = None, label: str = "") -> list[Run]:
    """Calibrate the SLO at low load, then run every (scheduler, rate) point on ``jobs`` processes."""
    ratio = calibrate_slo(model, workload, cluster, seed=seed)
    cl = replace(cluster, lowload_ratio=ratio)
    return run_jobs([(model, workload, s, r, cl, seed) for r in rates for s in schedulers], jobs, label)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(prog="sim", description="Paper-scale flow-level simulator of MFS and the baselines "
                                 "(docs/simulator.md). Rates are requests/s per prefill GPU.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("run", help="one (scheduler, rate) point; prints the summary")
    _common(p)
    p.add_argument("--scheduler", choices=SCHEDULERS, default="mfs")
    p.add_argument("--rate", type=float, required=True, help="requests/s per prefill GPU")
    p.add_argument("--out", help="write <out>.json and <out>.csv")
    p = sub.add_parser("sweep", help="schedulers × rates in parallel; writes JSON, CSV and an attainment plot")
    _common(p)
    p.add_argument("--schedulers", type=_scheds, default=["mfs", "fair", "sjf", "edf", "karuna"])
    p.add_argument("--rates", type=_floats, required=True, help="comma-separated requests/s per prefill GPU")
    p.add_argument("--jobs", type=int, default=None, help="worker processes (default: all cores)")
    p.add_argument("--out", required=True, help="output stem: <out>.json, <out>.csv, <out>.png")
    p = sub.add_parser("report", help="reduced paper sweep for every model/workload; writes docs/results.md")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--img", default="docs/img", help="directory for the plots")
    p.add_argument("--data", default="out/sim/report", help="directory for the raw JSON/CSV")
    p.add_argument("--servers", type=int, default=32, help="servers (default 32: reduced from 256 to fit ~25 min on 2 shared cores)")
    p.add_argument("--warmup", type=int, default=128)
    p.add_argument("--measured", type=int, default=256)
    p.add_argument("--jobs", type=int, default=None)
    p.add_argument("--only", default="", help="comma-separated model names to include (default all)")
    a = ap.parse_args(argv)
    cmd = "python -m mfs.sim " + " ".join(shlex.quote(x) for x in argv)
    try:
        if a.cmd == "run":
            cl = _cluster(a)
            cl = replace(cl, lowload_ratio=calibrate_slo(a.model, a.workload, cl, seed=a.seed))
            run = run_point(a.model, a.workload, a.scheduler, a.rate, cl, seed=a.seed)
            for k, v in run.summary.items():
                print(f"{k:22s} {v:.4g}" if isinstance(v, float) else f"{k:22s} {v}")
            print(f"{'flows':22s} {run.meta['flows']}\n{'wall_s':22s} {run.meta['wall_s']}")
            if a.out:
                print(*write_results(a.out, [run], cmd), sep="\n")
            return 0
        if a.cmd == "sweep":
            runs = sweep(a.model, a.workload, a.schedulers, a.rates, _cluster(a), a.seed, a.jobs)
            paths = write_results(a.out, runs, cmd)
            png = plot_attainment(runs, Path(a.out).with_suffix(".png"), f"{a.model} / {a.workload}")
            from mfs.sim.report import rate_table
            print(rate_table(runs))
            print(*paths, png, sep="\n")
            return 0
        from mfs.sim.report import make_report
        make_report(a, cmd)
        return 0
    except (ValueError, FileNotFoundError) as e:
        print(f"sim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
