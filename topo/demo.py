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
from dataclasses import dataclass, replace
from pathlib import Path

from mfs.configutil import ConfigError
from topo import net as N
from topo import topology as T

DEFAULT_POLICIES = ["mfs", "fair", "sjf", "edf", "karuna"]
OUT = N.ROOT / "out" / "demo"


def _all_policies() -> list[str]:
    """Schedulers a switch can enforce (ideal ones are simulator-only)."""
    from mfs.policy import switch_schedulers
    return switch_schedulers()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m topo.demo",
        description="Replay a slice of a real Mooncake trace on an emulated cluster (namespaces + the embedded "
                    "MFS switch + controller + host agents) under MFS and baseline schedulers; print TTFT SLO "
                    "attainment, p50/p99 TTFT and Stage-2 completion time per policy; write out/demo/.",
        epilog="Needs root (network namespaces). Takes about 3 minutes with the defaults (docs/demo.md).")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help="comma-separated schedulers to compare (default %(default)s; "
                         f"available: {', '.join(_all_policies())})")
    ap.add_argument("--trace", default="mooncake-synthetic",
                    help="mooncake-conversation | mooncake-synthetic | a path to a Mooncake JSONL trace "
                         "(default %(default)s, from $MFS_TRACES or ../shared/traces beside the repository)")
    ap.add_argument("--skip", type=int, default=3650,
                    help="first trace line of the slice (default %(default)s: arrivals spread over distinct ms "
                         "timestamps, 9 of 20 requests fetch prefix KV from the other instance; docs/demo.md)")
    ap.add_argument("--requests", type=int, default=20, help="requests in the slice (default %(default)s)")
    ap.add_argument("--warm", type=int, default=None,
                    help="trace lines before the slice whose prefix KV the cluster already holds, as if it had "
                         "served them (default: all --skip of them)")
    ap.add_argument("--model", default="qwen3-coder",
                    help="model whose compute and per-stage bytes are emulated (mfs.sim.model; default "
                         "%(default)s: EP=32, the paper's most communication-heavy MoE model)")
    ap.add_argument("--load", type=float, default=1.25,
                    help="offered load as a fraction of the prefill instances' measured compute capacity; sets "
                         "the request rate (default %(default)s: past the knee, where fair sharing's attainment "
                         "falls; docs/demo.md)")
    ap.add_argument("--rate", type=float, default=None,
                    help="cluster request rate in real-cluster req/s (overrides --load)")
    ap.add_argument("--layer-ms", type=float, default=15.0,
                    help="emulated compute of the median request's layer; sets time_scale (default %(default)s)")
    ap.add_argument("--time-scale", type=float, default=None, help="emulated / real seconds (overrides --layer-ms)")
    ap.add_argument("--bandwidth", type=float, default=40.0,
                    help="emulated link rate in Mb/s for every link, 0 = the topology's (default %(default)s: "
                         "keeps the Python switch and agents within two shared cores; ratios do not depend on it)")
    ap.add_argument("--queue-buffer", type=int, default=128,
                    help="switch buffer per port and level, packets (default %(default)s: more than the agents' "
                         "128 KiB window, so one transfer alone never overflows its level)")
    ap.add_argument("--unshaped-hosts", action="store_true",
                    help="let hosts send faster than their link rate (by default each host's egress is limited to "
                         "it, as a NIC's is; otherwise deferred traffic floods the switch's ingress)")
    ap.add_argument("--calibrate", type=int, default=4,
                    help="requests replayed one at a time (fair sharing) to measure the low-load TTFT that "
                         "the SLO is a multiple of (default %(default)s)")
    ap.add_argument("--lowload-ratio", type=float, default=None,
                    help="low-load TTFT / ideal TTFT; skips the calibration run")
    ap.add_argument("--topology", default="racks",
                    help="racks (built in: 2 switches, instances spanning both) or a topology file / shipped name "
                         "such as demo (one switch) (default %(default)s)")
    ap.add_argument("--target", choices=("embedded", "bmv2"), default="embedded",
                    help="switch target (default embedded; bmv2 needs simple_switch_grpc, and its rates are "
                         "per queue in pps: see docs/emulation.md)")
    ap.add_argument("--slo-scale", type=float, default=3.0,
                    help="TTFT SLO as a multiple of each request's low-load TTFT (default %(default)s, the paper's)")
    ap.add_argument("--out", default=str(OUT), help="output directory (default out/demo)")
    ap.add_argument("--time-limit", type=float, default=60.0,
                    help="max seconds to wait for the last request after the last arrival (default %(default)s)")
    ap.add_argument("--instance-size", type=int, default=2,
                    help="prefill hosts per serving instance (Stage-2 peers; default %(default)s)")
    ap.add_argument("--retries", type=int, default=2,
                    help="rebuild and replay a policy this many times when its replay fails (its cluster torn down "
                         "from outside, or a host agent's control connection failing; default %(default)s)")
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


@dataclass
class Plan:
    """What every policy replays, and the emulation's scaling (docs/demo.md, "How the numbers are chosen")."""

    requests: list  # the slice, arrivals rescaled to ``rate``
    warm: list  # earlier trace lines whose prefix KV the cluster holds
    model: str
    rate: float  # real-cluster req/s
    capacity: float  # real-cluster req/s that keeps every prefill instance busy
    time_scale: float
    link_bps: float
    cluster: object  # hostagent.workload.EmuCluster
    lowload_ratio: float | None = None

    path: Path | None = None

    def set_rate(self, args) -> None:
        """``--rate``, else ``--load`` × the capacity measured at low load: the ideal capacity ÷ the
        low-load ratio (the emulated cluster's fixed costs stretch every layer as they do the SLO)."""
        from mfs.sim import workload as W
        self.rate = args.rate if args.rate is not None else args.load * self.capacity / (self.lowload_ratio or 1.0)
        self.requests = list(W.mooncake(self.path, cluster_rate=self.rate, limit=args.requests, skip=args.skip))

    def config(self, args, lowload_ratio: float | None = None):
        from hostagent.workload import EmuConfig
        return EmuConfig(model=self.model, link_bps=self.link_bps, time_scale=self.time_scale,
                         slo_scale=args.slo_scale, lowload_ratio=lowload_ratio or self.lowload_ratio or 1.0,
                         timeout=args.time_limit)


RACKS = {
    # The demo's default cluster: two racks joined by one trunk of 2 host links (non-blocking for the two
    # prefill hosts of a rack). Each prefill instance spans both racks (p1+p2, p3+p4), so the trunk carries
    # Stage-2 all-to-all, Stage-1 KV fetches from the other instance and Stage-3 pushes to d1 at once.
    "name": "racks",
    "defaults": {"bandwidth": 100, "queue_buffer": 64},
    "hosts": [{"name": "p1", "ip": "10.0.0.1/24", "role": "prefill", "ceiling": 2},
              {"name": "p2", "ip": "10.0.0.2/24", "role": "prefill", "ceiling": 2},
              {"name": "p3", "ip": "10.0.0.3/24", "role": "prefill", "ceiling": 2},
              {"name": "p4", "ip": "10.0.0.4/24", "role": "prefill", "ceiling": 2},
              {"name": "d1", "ip": "10.0.0.11/24", "role": "decode"}],
    "switches": [{"name": "s1", "target": "embedded", "device_id": 1},
                 {"name": "s2", "target": "embedded", "device_id": 2}],
    "links": [["p1", "s1-p1"], ["p4", "s1-p2"], ["p2", "s2-p1"], ["p3", "s2-p2"], ["d1", "s2-p3"],
              {"a": "s1-p3", "b": "s2-p4", "bandwidth": 200}],
}


def load_topology(name: str, mbps: float | None, queue_buffer: int | None = None) -> T.Topology:
    """``racks`` (built in, above) or a topology file / shipped name; ``mbps`` rescales every link
    (the trunk keeps its ratio to the host links); ``queue_buffer`` (packets per level and port)
    replaces every switch's and link's."""
    topo = T.from_dict(RACKS, "<demo racks>") if name == "racks" else T.load(name)
    if queue_buffer is not None:
        if not 1 <= queue_buffer <= 100_000:
            raise ValueError(f"--queue-buffer {queue_buffer} must be in 1..100000 packets")
        topo.switches = {k: replace(sw, queue_buffer=queue_buffer) for k, sw in topo.switches.items()}
        topo.links = [replace(ln, queue_buffer=None) for ln in topo.links]
    return with_bandwidth(topo, mbps)


def with_bandwidth(topo: T.Topology, mbps: float | None) -> T.Topology:
    if not mbps:
        return topo
    if not 0.1 <= mbps <= 100_000:
        raise ValueError(f"--bandwidth {mbps!r} Mb/s is outside 0.1 .. 100000")
    host_bw = min(ln.bandwidth_bps for ln in topo.links)
    topo.links = [replace(ln, bandwidth_bps=ln.bandwidth_bps / host_bw * mbps * 1e6) for ln in topo.links]
    return topo


def make_plan(args, topo: T.Topology) -> Plan:
    """Load the slice and the warm-up lines; choose the rate (--load of capacity) and time_scale."""
    from hostagent import workload as E
    from mfs.sim import workload as W
    from mfs.sim.model import get_model
    get_model(args.model)  # ValueError naming the known models
    for k in ("skip", "requests", "calibrate", "retries"):
        if getattr(args, k, 0) < (1 if k == "requests" else 0):
            raise ValueError(f"--{k} must be >= {1 if k == 'requests' else 0}, got {getattr(args, k)}")
    for k in ("load", "rate", "layer_ms", "time_scale", "slo_scale", "lowload_ratio", "time_limit"):
        v = getattr(args, k)
        if v is not None and not v > 0:
            raise ValueError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    warm_n = args.skip if args.warm is None else args.warm
    if not 0 <= warm_n <= args.skip:
        raise ValueError(f"--warm {warm_n} must be in 0..--skip ({args.skip}): warm lines come before the slice")
    path = Path(args.trace) if Path(args.trace).exists() else W.trace_path(args.trace)
    warm = list(W.mooncake(path, limit=warm_n, skip=args.skip - warm_n)) if warm_n else []
    native = list(W.mooncake(path, limit=args.requests, skip=args.skip))
    if not native:
        raise ValueError(f"the trace slice is empty (--skip {args.skip} --requests {args.requests})")
    cluster = cluster_of(topo, args.instance_size)
    cap = E.capacity_rate(args.model, native, len(cluster.prefill), warm)
    ts = args.time_scale or E.choose_time_scale(args.model, native, warm, args.layer_ms / 1e3)
    plan = Plan(native, warm, args.model, math.nan, cap, ts, min(ln.bandwidth_bps for ln in topo.links), cluster,
                args.lowload_ratio)
    plan.path = path
    if args.rate is not None or args.lowload_ratio is not None:
        plan.set_rate(args)
    return plan


class DemoNetwork(N.Network):
    """The builder's Network with the demo's host side, the same for every policy:

    * each host's egress is shaped to its line rate (topology ``shape_hosts``: tc tbf in
      ``topo.netns.shape``) with an agent send buffer of 8 datagrams between the agent's pick
      and the shaper, as a NIC's doorbell queue;
    * every agent runs its strict-priority send queue (``--priority-queue``) ranked by the level
      the controller gives each flow (ReportAck.levels): each scheduler's own priorities are
      enforced at the sending host as at the switch, as the simulator does at the sending NIC
      (MFS's hybrid enforcement, and like for like for the baselines);
    * the switches' stage defaults come from the policy (``policy_stage_defaults``).
    """

    def __init__(self, topo, *, host_priority: bool = True, shape_hosts: bool = True, **kw):
        if shape_hosts:
            topo = replace(topo, shape_hosts=True)
        super().__init__(topo, policy_stage_defaults=True, **kw)
        self.host_priority, self.shape_hosts = host_priority, shape_hosts

    def popen(self, name, cmd, **kw):
        if name.startswith("agent-"):
            if self.host_priority:
                cmd = [*cmd, "--priority-queue"]
            if self.shape_hosts:  # 8 datagrams between the agent's pick and the line-rate shaper
                cmd = ["env", f"MFS_AGENT_SNDBUF={8 * 1500}", *cmd]
        return super().popen(name, cmd, **kw)


def network(topo: T.Topology, policy: str, bandwidth_bps: float, **kw) -> DemoNetwork:
    """A cluster for one policy (scheduler ``policy`` told the emulated link rate)."""
    return DemoNetwork(topo, policy=policy, policy_options={"bandwidth_bps": bandwidth_bps}, **kw)


def _handles(net: N.Network, cluster):
    from hostagent.control import connect_all
    hosts = [h for g in cluster.prefill + cluster.decode for h in g]
    return connect_all({h: (str(net.agent_sock(h)), net.ip(h)) for h in hosts})


def _close(handles) -> None:
    for c in handles.values():
        close = getattr(c, "close", None)
        if close:
            close()


def calibrate(net: N.Network, plan: Plan, args) -> float:
    """Low-load TTFT / ideal TTFT on this cluster (run it with fair sharing, as the simulator does)."""
    from hostagent.workload import calibrate_lowload
    handles = _handles(net, plan.cluster)
    try:
        ratio, _ = calibrate_lowload(handles, plan.cluster, plan.requests, plan.config(args, 1.0),
                                     count=args.calibrate, warm=plan.warm)
    finally:
        _close(handles)
    return ratio


def replay(net: N.Network, plan: Plan, args, policy: str, progress=None):
    """Drive the workload through the host agents (hostagent.workload); returns a results Run."""
    from hostagent.workload import run_workload
    handles = _handles(net, plan.cluster)
    try:
        return run_workload(handles, plan.cluster, plan.requests, plan.config(args), scheduler=policy,
                            rate=plan.rate, warm=plan.warm, on_record=progress, trace=args.trace, skip=args.skip,
                            topology=net.topo.name, target=args.target, load=round(plan.rate * (plan.lowload_ratio or 1.0) / plan.capacity, 3))
    finally:
        _close(handles)


def lost_cluster(net: N.Network) -> str | None:
    """Why ``net`` is no longer whole, or None: its run state file removed, host namespaces gone,
    processes killed by a signal (the demo never signals its processes before teardown) or exited.
    A run state file or namespace removed by someone else means an outside teardown: ``mfs-topo stop``
    without ``--tag`` (also ``make stop`` / ``make clean``) stops every recorded run, this one included."""
    why = []
    if not (net.rundir / N.STATE).exists():
        why.append(f"its run state {net.rundir / N.STATE} was removed")
    present = set(N.netns.namespaces())
    gone = [net.ns(h) for h in net.topo.hosts if net.ns(h) not in present]
    if gone:
        why.append(f"namespace(s) {', '.join(gone)} removed")
    for name, p in net.procs.items():
        rc = p.popen.poll()
        if rc is not None:
            why.append(f"{name} {'killed by signal ' + str(-rc) if rc < 0 else 'exited ' + str(rc)}")
    return "; ".join(why) or None


def outside_teardown(why: str | None) -> bool:
    """The cluster was stopped from outside (not a crash of ours): worth one rebuild."""
    return bool(why) and ("removed" in why or "killed by signal" in why)


def table(runs) -> str:
    head = (f"{'policy':8s} {'requests':>8s} {'SLO attain':>10s} {'TTFT p50':>9s} {'TTFT p99':>9s} "
            f"{'Stage-2 CCT':>11s} {'S1 stall':>9s}")
    lines = [head, "-" * len(head)]
    for r in runs:
        s = r.summary

        def ms(x):
            return "   n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x * 1e3:7.0f}ms"
        att = s.get("attainment", math.nan)
        lines.append(f"{r.scheduler:8s} {s.get('requests', 0):8d} {'n/a' if math.isnan(att) else f'{att:9.1%}':>10s} "
                     f"{ms(s.get('ttft_p50')):>9s} {ms(s.get('ttft_p99')):>9s} {ms(s.get('stage2_cct_mean')):>11s} "
                     f"{ms(s.get('stage1_stall_mean')):>9s}")
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
        topo = load_topology(args.topology, args.bandwidth, args.queue_buffer)
        plan = make_plan(args, topo)
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    from mfs.sim.results import write_results

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = len(plan.requests)
    print(f"demo: {n} requests of {args.trace} (lines {args.skip}..{args.skip + n - 1}, prefix KV of "
          f"{len(plan.warm)} earlier lines held) on {topo.name} ({len(topo.hosts)} hosts, "
          f"{plan.link_bps / 1e6:g} Mb/s links), target {args.target}")
    print(f"demo: model {plan.model}; time_scale {plan.time_scale:.3g}"
          f"{f' (median layer {args.layer_ms:g} ms emulated)' if args.time_scale is None else ''}; "
          f"ideal prefill capacity {plan.capacity:.3g} req/s", flush=True)
    t_all = time.monotonic()

    def cluster(pol: str, tag: str):
        # a tag of its own: a concurrent demo (or its `mfs-topo stop --tag`) never touches this one's names
        return network(topo, pol, plan.link_bps, target=args.target, logdir=N.ROOT / "logs" / "demo" / tag,
                       tag=N.unique_tag(), shape_hosts=not args.unshaped_hosts)

    if plan.lowload_ratio is None:
        print(f"[calibrate] {args.calibrate} requests one at a time, fair sharing ...", flush=True)
        try:
            with cluster("fair", "calibration") as net:
                plan.lowload_ratio = calibrate(net, plan, args)
        except (N.BuildError, N.netns.NetError, RuntimeError) as e:
            print(f"demo: calibration: {e}", file=sys.stderr)
            return 1
        print(f"[calibrate] low-load TTFT = {plan.lowload_ratio:.2f} x ideal; SLO = {args.slo_scale:g} x that "
              f"({time.monotonic() - t_all:.0f} s)", flush=True)
        plan.set_rate(args)
    print(f"demo: rate {plan.rate:.3g} req/s (real cluster) = {plan.rate * plan.lowload_ratio / plan.capacity:.0%} of "
          f"the measured capacity; last arrival at {plan.requests[-1].arrival * plan.time_scale:.0f} s emulated",
          flush=True)
    runs = []
    for i, pol in enumerate(policies, 1):
        t0 = time.monotonic()
        tag = f"[{i}/{len(policies)}] {pol}"
        print(f"{tag}: building the cluster ...", flush=True)
        done = []

        def progress(rec, tag=tag):
            done.append(rec)
            if len(done) % 6 == 0 or len(done) == n:
                met = sum(r.met for r in done)
                print(f"{tag}: {len(done)}/{n} requests done, {met} met their SLO", flush=True)
        for attempt in range(args.retries + 1):
            done.clear()
            try:
                with cluster(pol, pol) as net:
                    print(f"{tag}: replaying ...", flush=True)
                    try:
                        run = replay(net, plan, args, pol, progress)
                        err = None
                    except (RuntimeError, TimeoutError) as e:  # TimeoutError: an agent stopped answering
                        err = str(e) or f"{type(e).__name__} (an agent stopped answering its control socket)"
                    why = lost_cluster(net)
                    if err is None and why is None:
                        break
                    msg = (f"{err}; " if err else "") + (f"the cluster is not whole: {why}" if why else "")
                    if attempt < args.retries:
                        cause = ("torn down from outside (`mfs-topo stop --all`?)" if outside_teardown(why) else
                                 "a host agent's control connection failed (known intermittent issue, "
                                 "docs/demo.md)")
                        print(f"demo: {pol}: {msg} -- {cause}; rebuilding and replaying {pol} again",
                              file=sys.stderr, flush=True)
                        continue
                    raise N.BuildError(f"{msg} (logs in {net.logdir})")
            except (N.BuildError, N.netns.NetError, RuntimeError, TimeoutError) as e:
                print(f"demo: {pol}: {str(e) or type(e).__name__}", file=sys.stderr)
                return 1
        runs.append(run)
        s = run.summary
        print(f"{tag}: {s['requests']} requests, attainment {s['attainment']:.1%}, "
              f"p99 TTFT {s['ttft_p99'] * 1e3:.0f} ms ({time.monotonic() - t0:.0f} s)", flush=True)
    print()
    print(table(runs))
    js, csv = write_results(out / "results", runs, command="python -m topo.demo " + " ".join(argv or sys.argv[1:]))
    png = plot(runs, out / "demo.png")
    print(f"\nwrote {js}, {csv}, {png} (total {time.monotonic() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
