"""`sim` command line: run one point, sweep (resumable, local pool or Ray), write docs/results.md.

    python -m mfs.sim run --model dbrx --workload conversation --scheduler mfs --rate 0.7
    python -m mfs.sim sweep --models dbrx --workloads conversation --loads 0.4,0.6,0.8 --seeds 1,2,3 --out /work/simruns/x
    python -m mfs.sim sweep ... --ray auto          # the same sweep on a running Ray cluster
    python -m mfs.sim report --data /work/simruns/x  # docs/results.md, docs/img/, docs/data/sim_points.csv
"""

from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import replace

from mfs.sim.engine import ClusterConfig
from mfs.sim.model import MODELS
from mfs.sim.results import write_results
from mfs.sim.runner import SCHEDULERS, calibrate_slo, run_point
from mfs.sim.sweep import BOUND, Point, executor, grid, sweep
from mfs.sim.workload import WORKLOADS


def _floats(s: str) -> list[float]:
    try:
        xs = [float(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of numbers") from None
    if not xs or any(not x > 0 for x in xs):
        raise argparse.ArgumentTypeError(f"{s!r}: values must be > 0")
    return xs


def _ints(s: str) -> list[int]:
    try:
        xs = [int(x) for x in s.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{s!r} is not a comma-separated list of integers") from None
    if not xs:
        raise argparse.ArgumentTypeError("empty list")
    return xs


def _choices(allowed, what):
    def parse(s: str) -> list[str]:
        xs = [x.strip() for x in s.split(",") if x.strip()]
        bad = [x for x in xs if x not in allowed]
        if bad or not xs:
            raise argparse.ArgumentTypeError(f"unknown {what} {', '.join(bad) or '(none)'} (allowed: {', '.join(allowed)})")
        return xs
    return parse


_scheds = _choices(SCHEDULERS, "scheduler(s)")


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", choices=sorted(MODELS), default="mixtral-8x22b", help="model configuration (mfs/sim/model.py)")
    p.add_argument("--workload", choices=WORKLOADS, default="conversation",
                   help="synthetic Qwen-like (conversation, agent) or a Mooncake trace (needs $MFS_TRACES or ../shared/traces)")
    p.add_argument("--servers", type=int, default=256, help="servers of 8 GPUs, half prefill, half decode (default 256)")
    p.add_argument("--warmup", type=int, default=512, help="warm-up requests excluded from metrics (default 512)")
    p.add_argument("--measured", type=int, default=1024, help="measured requests (default 1024)")
    p.add_argument("--slo-scale", type=float, default=3.0, help="deadline = arrival + this × low-load TTFT (default 3)")
    p.add_argument("--max-batch-tokens", type=int, default=8192,
                   help="new tokens per attention group per prefill step (default 8192, the paper's testbed)")
    p.add_argument("--fairness", choices=("per_connection", "per_flow"), default="per_connection",
                   help="sharing inside a priority level: a collective gets one share per peer connection it "
                        "opens (default, what transports do) or one share in all")


def _cluster(a) -> ClusterConfig:
    return ClusterConfig(servers=a.servers, warmup=a.warmup, measured=a.measured, slo_scale=a.slo_scale,
                         max_batch_tokens=a.max_batch_tokens, fairness=a.fairness)


def model_table(tokens: int, reused: int = 0) -> str:
    """Per layer, a lone request on one attention group: KV (Stage 3) and Stage-2 bytes through each
    NIC of its group and their time at one NIC's rate, against the layer's compute."""
    from mfs.sim.model import CostModel, Hardware
    hw = Hardware()
    rows = [f"lone request: {tokens} new + {reused} reused tokens; per layer, per NIC of its attention group "
            f"({hw.nic_bw * 8 / 1e9:.0f} Gb/s)",
            "| model | groups x GPUs | Stage 3 KV / NIC | time | Stage 1 KV / NIC | Stage 2 / NIC (own group) | time "
            "| compute | old per-GPU KV (÷ G) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in sorted(MODELS.items()):
        c = CostModel(m, hw)
        p = c.request_profile(tokens, reused)
        s3, s1, s2 = p.per_nic(p.stage3_bytes), p.per_nic(p.stage1_bytes), p.stage2_per_nic
        rows.append(f"| {name} | {m.groups} x {m.attn_gpus} | {s3 / 1e6:.3f} MB | {s3 / hw.nic_bw * 1e6:.1f} µs | "
                    f"{s1 / 1e6:.3f} MB | {s2 / 1e6:.2f} MB | {s2 / hw.nic_bw * 1e6:.0f} µs | "
                    f"{p.layer_compute_s * 1e6:.0f} µs | {p.per_gpu(p.stage3_bytes) / 1e6:.3f} MB |")
    return "\n".join(rows)


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
    p.add_argument("--seed", type=int, default=1)
    p = sub.add_parser("sweep", help="models × workloads × schedulers × rates × seeds; resumable (one JSON per "
                       "point in --out; finished points are skipped); local process pool or --ray")
    _common(p)
    p.add_argument("--models", type=_choices(sorted(MODELS), "model(s)"), default=None,
                   help="comma-separated (default: --model)")
    p.add_argument("--workloads", type=_choices(WORKLOADS, "workload(s)"), default=None,
                   help="comma-separated (default: --workload)")
    p.add_argument("--schedulers", type=_scheds, default=["mfs", "karuna", "fair", "sjf", "edf"])
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument("--rates", type=_floats, help="comma-separated requests/s per prefill GPU")
    g.add_argument("--loads", type=_floats, help="comma-separated fractions of each case's balanced-compute "
                   "capacity (mfs.sim.report.capacity_rate)")
    p.add_argument("--seeds", type=_ints, default=[1, 2, 3], help="comma-separated seeds (default 1,2,3)")
    p.add_argument("--no-bound", action="store_true", help=f"skip the {BOUND} points")
    p.add_argument("--order", choices=("breadth", "depth"), default="breadth",
                   help="breadth (default): seed by seed over every case, so partial results cover all cases")
    p.add_argument("--jobs", type=int, default=None, help="local worker processes (default: all cores)")
    p.add_argument("--ray", metavar="ADDRESS", default=None,
                   help="run on Ray: a cluster address, 'auto' (the running cluster) or 'local' (start one here)")
    p.add_argument("--out", required=True, help="results directory (one small JSON per point)")
    p = sub.add_parser("model", help="per-NIC figures of a lone request per model (bytes and time per layer)")
    p.add_argument("--tokens", type=int, default=2000, help="new tokens of the lone request (default 2000)")
    p.add_argument("--reused", type=int, default=0, help="reused prefix tokens (default 0)")
    p = sub.add_parser("report", help="docs/results.md (+ plots, + compact CSV) from a results directory or CSV")
    p.add_argument("--data", required=True, nargs="+",
                   help="results directories of sweeps, or CSVs written by report (cases kept apart by scale)")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--img", default="docs/img", help="directory for the plots")
    p.add_argument("--csv", default="docs/data/sim_points.csv", help="write every point here ('' = don't)")
    p.add_argument("--partial", default="", help="mark the results partial, with this command that continues the sweep")
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
            print("measured per-NIC loads (share of one NIC's 200 Gb/s over the run; prefill NICs tx by stage, "
                  "mean and busiest; decode NICs rx; compute = prefill instances busy):")
            for k, v in run.meta.get("nic_load", {}).items():
                print(f"  {k:20s} {v:.4g}")
            if a.out:
                print(*write_results(a.out, [run], cmd), sep="\n")
            return 0
        if a.cmd == "model":
            print(model_table(a.tokens, a.reused))
            return 0
        if a.cmd == "sweep":
            from mfs.sim.report import capacity_rate
            models, wls = a.models or [a.model], a.workloads or [a.workload]
            rates = (lambda m, w: a.rates) if a.rates else (lambda m, w: [x * capacity_rate(m, w) for x in a.loads])
            base = Point("", "", "", 1.0, servers=a.servers, warmup=a.warmup, measured=a.measured,
                         max_batch_tokens=a.max_batch_tokens, fairness=a.fairness)
            pts = grid(models, wls, a.schedulers, a.seeds, rates, base, bound=not a.no_bound, order=a.order)
            res = sweep(pts, a.out, executor(a.ray, a.jobs))
            print(f"{len(res)} of {len(pts)} points in {a.out}; report: python -m mfs.sim report --data {a.out}")
            return 0
        from mfs.sim.report import make_report
        print(make_report(a.data, a.out, a.img, a.csv or None, cmd, a.partial))
        return 0
    except (ValueError, FileNotFoundError, RuntimeError) as e:
        print(f"sim: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
