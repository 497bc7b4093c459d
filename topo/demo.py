"""The main job (``make demo``): MFS vs baselines on an emulated disaggregated-serving cluster.

For each policy: build the demo topology (namespaces, veth, the embedded switch, the
controller running that policy, a host agent per host), replay the same rate-scaled
slice of a Mooncake trace through the host agents (hostagent.workload), collect
per-request TTFTs, tear the cluster down. Then print one table row per policy and
write ``out/demo/results.json`` (+ ``.csv``, the simulator's schema, mfs.sim.results)
and ``out/demo/demo.png``. See docs/demo.md for what the numbers mean.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from pathlib import Path

from mfs.configutil import ConfigError
from topo import net as N
from topo import topology as T

DEFAULT_POLICIES = ["mfs", "fair", "sjf", "edf", "karuna"]
OUT = N.ROOT / "out" / "demo"


def _all_policies() -> list[str]:
    """Schedulers the controller can run (ideal ones, num_levels None, are simulator-only)."""
    from mfs.policy import POLICIES
    return [n for n, cls in POLICIES.items() if getattr(cls, "num_levels", 8) is not None]


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m topo.demo",
        description="Replay a slice of a real Mooncake trace on an emulated cluster (namespaces + the embedded "
                    "MFS switch + controller + host agents) under MFS and baseline schedulers; print TTFT SLO "
                    "attainment, p50/p99 TTFT and Stage-2 completion time per policy; write out/demo/.",
        epilog="Needs root (network namespaces). Takes about 40-60 s per policy with the defaults.")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help="comma-separated schedulers to compare (default %(default)s; "
                         "available: mfs, fair, fifo, sjf, edf, karuna, pias)")
    ap.add_argument("--trace", default="mooncake-conversation",
                    help="mooncake-conversation | mooncake-synthetic | a path to a Mooncake JSONL trace "
                         "(default %(default)s, from /work/shared/traces or $MFS_TRACES)")
    ap.add_argument("--skip", type=int, default=0, help="first trace line of the slice (default 0)")
    ap.add_argument("--requests", type=int, default=40, help="requests in the slice (default %(default)s)")
    ap.add_argument("--rate", type=float, default=2.0,
                    help="cluster request rate (req/s) the slice's arrival times are rescaled to (default %(default)s)")
    ap.add_argument("--topology", default="demo", help="topology file or shipped name (default demo)")
    ap.add_argument("--target", choices=("embedded", "bmv2"), default="embedded",
                    help="switch target (default embedded; bmv2 needs simple_switch_grpc, and its rates are "
                         "per queue in pps: see docs/emulation.md)")
    ap.add_argument("--slo-scale", type=float, default=None,
                    help="TTFT SLO as a multiple of each request's uncontended TTFT (default: the workload driver's)")
    ap.add_argument("--out", default=str(OUT), help="output directory (default out/demo)")
    ap.add_argument("--time-limit", type=float, default=120.0,
                    help="max seconds to wait for the last request after the last arrival (default %(default)s)")
    ap.add_argument("--instance-size", type=int, default=2,
                    help="prefill hosts per serving instance (Stage-2 peers; default %(default)s)")
    return ap


def check_environment() -> str | None:
    reason = N.netns.preflight()
    if reason:
        return reason
    try:
        import hostagent.workload  # noqa: F401
    except ImportError as e:
        return f"the workload driver hostagent.workload is not available ({e})"
    return None


def cluster_of(topo: T.Topology, instance_size: int):
    """Prefill hosts in instances of ``instance_size`` (their Stage-2 peers), one decode instance per
    decode host. Hosts of other roles (kvcache) carry no driver traffic."""
    from hostagent.workload import EmuCluster
    pre = [h.name for h in topo.hosts_by_role("prefill")]
    dec = [h.name for h in topo.hosts_by_role("decode")]
    if not pre or not dec:
        raise ConfigError(topo.source, "hosts", "the demo needs hosts with role prefill and role decode")
    groups = [pre[i:i + instance_size] for i in range(0, len(pre), instance_size)]
    return EmuCluster(prefill=groups, decode=[[d] for d in dec],
                      addresses={h: x.address for h, x in topo.hosts.items()})


def replay(net: N.Network, requests: list, args, policy: str):
    """Drive the workload through the host agents (hostagent.workload); returns a results Run."""
    from hostagent.control import ControlClient
    from hostagent.workload import EmuConfig, run_workload
    cluster = cluster_of(net.topo, args.instance_size)
    hosts = [h for g in cluster.prefill + cluster.decode for h in g]
    handles = {h: ControlClient(str(net.agent_sock(h)), net.ip(h)) for h in hosts}
    cfg = EmuConfig(link_bps=min(ln.bandwidth_bps for ln in net.topo.links),
                    **({"slo_scale": args.slo_scale} if args.slo_scale is not None else {}),
                    timeout=args.time_limit)
    try:
        return run_workload(handles, cluster, requests, cfg, scheduler=policy, rate=args.rate,
                            trace=args.trace, skip=args.skip, topology=net.topo.name, target=args.target)
    finally:
        for c in handles.values():
            close = getattr(c, "close", None)
            if close:
                close()


def load_requests(args) -> list:
    from mfs.sim import workload as W
    path = Path(args.trace) if Path(args.trace).exists() else W.trace_path(args.trace)
    return list(W.mooncake(path, cluster_rate=args.rate, limit=args.requests, skip=args.skip))


def table(runs) -> str:
    head = f"{'policy':8s} {'requests':>8s} {'SLO attain':>10s} {'TTFT p50':>9s} {'TTFT p99':>9s} {'Stage-2 CCT':>11s}"
    lines = [head, "-" * len(head)]
    for r in runs:
        s = r.summary

        def ms(x):
            return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:7.0f}ms"
        att = s.get("attainment", math.nan)
        lines.append(f"{r.scheduler:8s} {s.get('requests', 0):8d} {'n/a' if math.isnan(att) else f'{att:9.1%}':>10s} "
                     f"{ms(s.get('ttft_p50')):>9s} {ms(s.get('ttft_p99')):>9s} {ms(s.get('stage2_cct_mean')):>11s}")
    return "\n".join(lines)


def plot(runs, path: Path) -> Path:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    names = [r.scheduler for r in runs]
    fig, ax = plt.subplots(1, 3, figsize=(12, 3.6))
    panels = [("attainment", "TTFT SLO attainment", 1.0), ("ttft_p99", "p99 TTFT (s)", 1.0),
              ("stage2_cct_mean", "mean Stage-2 time per request (s)", 1.0)]
    for a, (key, title, _) in zip(ax, panels):
        vals = [r.summary.get(key, math.nan) for r in runs]
        a.bar(names, vals, color=["tab:red" if n == "mfs" else "tab:gray" for n in names])
        a.set_title(title)
        if key == "attainment":
            a.set_ylim(0, 1)
    fig.suptitle("Emulated cluster (embedded switch): MFS vs baselines")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    known = _all_policies()
    bad = [p for p in policies if p not in known]
    if bad or not policies:
        print(f"demo: --policies: {', '.join(bad) or '(empty)'} not allowed (allowed: {', '.join(known)})",
              file=sys.stderr)
        return 2
    reason = check_environment()
    if reason:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        topo = T.load(args.topology)
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    try:
        requests = load_requests(args)
    except (OSError, ValueError) as e:
        print(f"demo: trace {args.trace!r}: {e}", file=sys.stderr)
        return 2
    if not requests:
        print(f"demo: the trace slice is empty (--skip {args.skip} --requests {args.requests})", file=sys.stderr)
        return 2
    from mfs.sim.results import write_results

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"demo: {len(requests)} requests of {args.trace} (lines {args.skip}..{args.skip + len(requests) - 1}) "
          f"at {args.rate:g} req/s on {topo.name} ({len(topo.hosts)} hosts, "
          f"{min(ln.bandwidth_bps for ln in topo.links) / 1e6:g} Mb/s links), target {args.target}")
    runs = []
    t_all = time.monotonic()
    for i, pol in enumerate(policies, 1):
        t0 = time.monotonic()
        print(f"[{i}/{len(policies)}] {pol}: building the cluster ...", flush=True)
        try:
            with N.Network(topo, target=args.target, policy=pol, logdir=N.ROOT / "logs" / "demo" / pol,
                           tag="demo",
                           policy_options={"bandwidth_bps": min(ln.bandwidth_bps for ln in topo.links)}) as net:
                print(f"[{i}/{len(policies)}] {pol}: replaying ...", flush=True)
                run = replay(net, requests, args, pol)
                dead = net.check_processes()
                if dead:
                    raise N.BuildError(f"process(es) died during the replay: {', '.join(dead)} (logs in {net.logdir})")
        except (N.BuildError, N.netns.NetError) as e:
            print(f"demo: {pol}: {e}", file=sys.stderr)
            return 1
        runs.append(run)
        s = run.summary
        print(f"[{i}/{len(policies)}] {pol}: {s['requests']} requests, attainment {s['attainment']:.1%}, "
              f"p99 TTFT {s['ttft_p99'] * 1e3:.0f} ms ({time.monotonic() - t0:.0f} s)", flush=True)
    print()
    print(table(runs))
    js, csv = write_results(out / "results", runs, command="python -m topo.demo " + " ".join(argv or sys.argv[1:]))
    png = plot(runs, out / "demo.png")
    print(f"\nwrote {js}, {csv}, {png} (total {time.monotonic() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
