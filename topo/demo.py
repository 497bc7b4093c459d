"""The main job (``make demo``): a paired, repeated experiment, MFS vs baselines, on an emulated
disaggregated-serving cluster, side by side with the simulator's prediction of the same scenario.

The default scenario is shaped like the paper's testbed (§6.1): Mixtral-8x7B with TP1/EP8, two
serving instances on a 16-GPU prefill pool (4 GPUs and 2 × 100 Gb/s NICs per server: 50 Gb/s per
GPU, RTX-3090 compute), one decode instance, a Qwen-like agent workload (mean 1 k tokens, 65 %
prefix reuse) at a fixed fraction of the prefill capacity; scaled to the emulation (docs/demo.md).

For every seed (``--repeat``): one request set, replayed by every policy on its own cluster
(namespaces, veth, the embedded switch, the controller running that policy, a host agent per host;
built once per policy and reused across seeds; the policy order rotates per seed), and run through
the simulator (mfs.sim.engine) with the same requests. Then: a table with 95 % intervals, the paired
per-request TTFT difference MFS − baseline, emulated beside simulated, a one-line verdict,
``out/demo/{results,sim,summary}.json`` and ``out/demo/demo.png``. See docs/demo.md.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from contextlib import ExitStack
from dataclasses import dataclass, field, replace
from pathlib import Path

from mfs.configutil import ConfigError
from topo import net as N
from topo import topology as T

DEFAULT_POLICIES = ["mfs", "fair", "karuna"]
OUT = N.ROOT / "out" / "demo"
SYNTHETIC = ("agent", "conversation")
TRACES = ("mooncake-conversation", "mooncake-synthetic")


def hardware(name: str):
    """``testbed``: the paper's testbed GPUs and NICs (§4.1): RTX 3090 (71 TFLOP/s dense FP16 tensor
    with FP32 accumulate, 936 GB/s), 4 GPUs per server, 2 × 100 Gb/s NICs per server = 50 Gb/s
    (6.25 GB/s) per GPU. ``a100``: the simulator's default (mfs.sim.model.Hardware)."""
    from mfs.sim.model import Hardware
    if name == "testbed":
        return Hardware(peak_flops=71e12, hbm_bw=936e9, nic_bw=6.25e9, gpus_per_server=4)
    if name == "a100":
        return Hardware()
    raise ValueError(f"--hardware {name!r} is not known (known: testbed, a100)")


def _all_policies() -> list[str]:
    """Schedulers a switch can enforce (ideal ones are simulator-only)."""
    from mfs.policy import switch_schedulers
    return switch_schedulers()


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(
        prog="python -m topo.demo",
        description="A paired, repeated experiment on an emulated cluster (namespaces + the embedded MFS switch "
                    "+ controller + host agents): every policy replays the same requests per seed; prints mean "
                    "and p99 TTFT, SLO attainment and Stage-2 CCT with 95%% confidence intervals, the paired "
                    "per-request TTFT difference MFS - baseline beside the simulator's prediction of the same "
                    "scenario, and a verdict; writes out/demo/.",
        epilog="Needs root (network namespaces). About 5 minutes with the defaults (docs/demo.md).")
    ap.add_argument("--policies", default=",".join(DEFAULT_POLICIES),
                    help="comma-separated schedulers to compare, mfs against each other one (default %(default)s; "
                         f"available: {', '.join(_all_policies())})")
    ap.add_argument("--workload", "--trace", dest="workload", default="agent",
                    help="agent | conversation (the paper's Qwen-like synthetic workloads, new requests per seed) | "
                         "mooncake-conversation | mooncake-synthetic | a path to a Mooncake JSONL trace (a new slice "
                         "per seed, from $MFS_TRACES or ../shared/traces beside the repository) (default %(default)s)")
    ap.add_argument("--requests", type=int, default=24, help="measured requests per seed (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=4,
                    help="seeds: each a new request set, replayed by every policy (default %(default)s)")
    ap.add_argument("--seed", type=int, default=1, help="first seed (default %(default)s)")
    ap.add_argument("--warm", type=int, default=None,
                    help="requests before each set whose prefix KV the cluster already holds, as if it had served "
                         "them (default: 4 x --requests for the synthetic workloads; for a trace, every line "
                         "before the slice)")
    ap.add_argument("--skip", type=int, default=3650,
                    help="traces only: first line of seed 1's slice; seed k starts (k-1) x --requests later "
                         "(default %(default)s)")
    ap.add_argument("--model", default="mixtral-8x7b",
                    help="model whose compute and per-stage bytes are emulated (mfs.sim.model; default %(default)s, "
                         "the paper's testbed model, TP1/EP8)")
    ap.add_argument("--hardware", default="testbed",
                    help="testbed (the paper's: 4 RTX 3090 and 2 x 100 Gb/s per server) | a100 (the simulator's "
                         "default) (default %(default)s)")
    ap.add_argument("--load", type=float, default=0.8,
                    help="offered load as a fraction of the prefill instances' measured compute capacity "
                         "(default %(default)s)")
    ap.add_argument("--rate", type=float, default=None,
                    help="cluster request rate in real-cluster req/s (overrides --load)")
    ap.add_argument("--layer-ms", type=float, default=10.0,
                    help="emulated compute of the median request's layer; sets time_scale (default %(default)s)")
    ap.add_argument("--time-scale", type=float, default=None, help="emulated / real seconds (overrides --layer-ms)")
    ap.add_argument("--layers-per-step", type=int, default=4,
                    help="emulate this many consecutive layers as one step (same compute, bytes and ratios; the "
                         "emulation's fixed per-layer costs and noise divided by it; hostagent.workload.LayerGroups; "
                         "default %(default)s)")
    ap.add_argument("--kv-placement", choices=("group", "spread"), default="group",
                    help="group: attention data parallelism as the simulator models it, a request's KV on one host "
                         "of its instance (per-NIC bytes, scaled so each emulated NIC carries a real NIC's load); "
                         "spread: every host carries its per-GPU share (the earlier model) (default %(default)s)")
    ap.add_argument("--kv-size", choices=("flow", "load", "nic"), default="nic",
                    help="with --kv-placement group: flow = each Stage-1/3 transfer of the model's per-NIC size (an "
                         "emulated NIC then carries the KV of groups/hosts real NICs); load = scaled by hosts/groups "
                         "so each emulated NIC carries one real NIC's mean KV bytes/s; nic = each host carries the "
                         "KV of the busiest of the NICs it stands for, per step (default %(default)s)")
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
    ap.add_argument("--calibrate-runs", type=int, default=1,
                    help="repeat the calibration this many times and report its spread; the median is used "
                         "(default %(default)s)")
    ap.add_argument("--calibrate-only", action="store_true",
                    help="stop after the calibration (measure its spread with --calibrate-runs)")
    ap.add_argument("--lowload-ratio", type=float, default=None,
                    help="low-load TTFT / ideal TTFT; skips the calibration run")
    ap.add_argument("--topology", default="testbed",
                    help="testbed (built in: one switch, 4 prefill hosts in 2 instances, 2 decode hosts), racks "
                         "(built in: 2 switches, instances spanning both) or a topology file / shipped name "
                         "(default %(default)s)")
    ap.add_argument("--target", choices=("embedded", "bmv2"), default="embedded",
                    help="switch target (default embedded; bmv2 needs simple_switch_grpc, and its rates are "
                         "per queue in pps: see docs/emulation.md)")
    ap.add_argument("--slo-scale", type=float, default=3.0,
                    help="TTFT SLO as a multiple of each request's low-load TTFT (default %(default)s, the paper's)")
    ap.add_argument("--pin", default="off",
                    help="pin processes to CPUs: off | auto (switch on the last CPU, the rest on the others) | "
                         "switch=1,agent=0,controller=0,driver=0 (CPU lists with ':' for ',', e.g. 0:1) "
                         "(default %(default)s; docs/demo.md, 'Noise')")
    ap.add_argument("--no-sim", action="store_true", help="do not run the simulator beside the emulation")
    ap.add_argument("--out", default=str(OUT), help="output directory (default out/demo)")
    ap.add_argument("--time-limit", type=float, default=60.0,
                    help="max seconds to wait for the last request after the last arrival (default %(default)s)")
    ap.add_argument("--instance-size", type=int, default=2,
                    help="hosts per serving instance, prefill and decode (Stage-2 peers; default %(default)s)")
    ap.add_argument("--retries", type=int, default=4,
                    help="rebuild a policy's cluster and replay again this many times when a replay fails (its "
                         "cluster torn down from outside, or a host agent's control connection failing; "
                         "default %(default)s)")
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
    """Prefill hosts in instances of ``instance_size`` (their Stage-2 peers), decode hosts likewise (host i
    of a prefill instance pushes its Stage-3 share to host i mod m of the decode instance). Hosts of other
    roles (kvcache) carry no driver traffic."""
    from hostagent.workload import EmuCluster
    pre = [h.name for h in topo.hosts_by_role("prefill")]
    dec = [h.name for h in topo.hosts_by_role("decode")]
    if not pre or not dec:
        raise ConfigError(topo.source, "hosts", "the demo needs hosts with role prefill and role decode")
    if instance_size < 1:
        raise ValueError(f"--instance-size must be >= 1, got {instance_size}")
    groups = [pre[i:i + instance_size] for i in range(0, len(pre), instance_size)]
    dgroups = [dec[i:i + instance_size] for i in range(0, len(dec), instance_size)]
    return EmuCluster(prefill=groups, decode=dgroups, addresses={h: x.address for h, x in topo.hosts.items()})


TESTBED = {
    # The demo's default cluster, the paper's testbed scaled down (one ToR, §4.1): each host is one GPU and its
    # NIC share; prefill instances p1+p2 and p3+p4 (each standing for 8 GPUs with EP8), one decode instance
    # d1+d2. Host i of a prefill instance pushes Stage 3 to d(i mod 2), so every NIC, prefill or decode, carries
    # one GPU's share: the simulator's instance nodes (docs/simulator.md) on a non-blocking switch.
    "name": "testbed",
    "defaults": {"bandwidth": 100, "queue_buffer": 64},
    "hosts": [{"name": "p1", "ip": "10.0.0.1/24", "role": "prefill", "ceiling": 2},
              {"name": "p2", "ip": "10.0.0.2/24", "role": "prefill", "ceiling": 2},
              {"name": "p3", "ip": "10.0.0.3/24", "role": "prefill", "ceiling": 2},
              {"name": "p4", "ip": "10.0.0.4/24", "role": "prefill", "ceiling": 2},
              {"name": "d1", "ip": "10.0.0.11/24", "role": "decode"},
              {"name": "d2", "ip": "10.0.0.12/24", "role": "decode"}],
    "switches": [{"name": "s1", "target": "embedded", "device_id": 1}],
    "links": [["p1", "s1-p1"], ["p2", "s1-p2"], ["p3", "s1-p3"], ["p4", "s1-p4"], ["d1", "s1-p5"], ["d2", "s1-p6"]],
}

RACKS = {
    # Two racks joined by one trunk of 2 host links (non-blocking for the two prefill hosts of a rack). Each
    # prefill instance spans both racks (p1+p2, p3+p4), so the trunk carries Stage-2 all-to-all, Stage-1 KV
    # fetches from the other instance and Stage-3 pushes to d1 at once (the previous default; not the
    # simulator's non-blocking fabric).
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
BUILT_IN = {"testbed": TESTBED, "racks": RACKS}


def load_topology(name: str, mbps: float | None, queue_buffer: int | None = None) -> T.Topology:
    """``testbed`` / ``racks`` (built in, above) or a topology file / shipped name; ``mbps`` rescales every
    link (a trunk keeps its ratio to the host links); ``queue_buffer`` (packets per level and port)
    replaces every switch's and link's."""
    topo = T.from_dict(BUILT_IN[name], f"<demo {name}>") if name in BUILT_IN else T.load(name)
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


@dataclass
class Plan:
    """What every policy replays, per seed, and the emulation's scaling (docs/demo.md, "How the numbers
    are chosen"). Request sets are kept at a unit rate (1 req/s); :meth:`requests` rescales them."""

    model: str
    hw: object  # mfs.sim.model.Hardware
    workload: str
    cluster: object  # hostagent.workload.EmuCluster
    link_bps: float
    time_scale: float
    capacity: float  # real-cluster req/s that keeps every prefill instance busy (ideal), mean over the seeds
    sets: dict = field(default_factory=dict)  # seed -> (unit-rate requests, warm requests)
    caps: dict = field(default_factory=dict)  # seed -> its set's ideal capacity (real req/s)
    load: float = 0.8  # fraction of the measured capacity (when ``fixed_rate`` is None)
    fixed_rate: float | None = None  # --rate: real-cluster req/s for every seed
    lowload_ratio: float | None = None
    max_batch_tokens: int = 8192  # the paper's testbed (vLLM, 8192 batched tokens)

    @property
    def seeds(self) -> list[int]:
        return list(self.sets)

    def rate(self, seed: int, lowload_ratio: float | None = None) -> float:
        """Real-cluster req/s of ``seed``'s set: ``--rate``, else ``--load`` × the capacity measured at low
        load for that set (its ideal capacity ÷ the low-load ratio: the emulated cluster's fixed costs
        stretch every layer as they do the SLO), so every seed runs at the same load whatever its sizes."""
        if self.fixed_rate is not None:
            return self.fixed_rate
        return self.load * self.caps[seed] / (lowload_ratio or self.lowload_ratio or 1.0)

    def requests(self, seed: int, lowload_ratio: float | None = None) -> list:
        rate = self.rate(seed, lowload_ratio)
        return [replace(r, arrival=r.arrival / rate) for r in self.sets[seed][0]]

    def warm(self, seed: int) -> list:
        return self.sets[seed][1]

    def config(self, args, lowload_ratio: float | None = None):
        from hostagent.workload import EmuConfig
        return EmuConfig(model=self.model, link_bps=self.link_bps, time_scale=self.time_scale,
                         slo_scale=args.slo_scale, lowload_ratio=lowload_ratio or self.lowload_ratio or 1.0,
                         timeout=args.time_limit, hw=self.hw, max_batch_tokens=self.max_batch_tokens,
                         layers_per_step=args.layers_per_step, kv_placement=args.kv_placement,
                         kv_size=args.kv_size)


def request_set(args, seed: int, index: int) -> tuple[list, list]:
    """(requests at 1 req/s starting at 0 with ids unique across seeds, warm requests) of one seed."""
    from mfs.sim import workload as W
    n = args.requests
    if args.workload in SYNTHETIC:
        w = 4 * n if args.warm is None else args.warm
        allr = list(W.synthetic(args.workload, 1.0, w + n, seed=seed))
        warm, meas = allr[:w], allr[w:]
    else:
        path = Path(args.workload) if Path(args.workload).exists() else W.trace_path(args.workload)
        skip = args.skip + index * n
        w = skip if args.warm is None else args.warm
        if not 0 <= w <= skip:
            raise ValueError(f"--warm {w} must be in 0..{skip} (the lines before the slice)")
        warm = list(W.mooncake(path, limit=w, skip=skip - w)) if w else []
        meas = list(W.mooncake(path, limit=n, skip=skip))
    if len(meas) < n:
        raise ValueError(f"{args.workload}: only {len(meas)} requests for seed {seed} (need --requests {n})")
    t0, t1 = meas[0].arrival, meas[-1].arrival
    unit = (len(meas) - 1) / (t1 - t0) if t1 > t0 else 1.0  # native req/s of the slice
    reqs = [replace(r, request_id=seed * 1_000_000 + i, arrival=(r.arrival - t0) * unit) for i, r in enumerate(meas)]
    return reqs, warm


def make_plan(args, topo: T.Topology) -> Plan:
    """Load every seed's requests; choose time_scale and (with --rate / --lowload-ratio) the rate."""
    from hostagent import workload as E
    from mfs.sim.model import get_model
    layers = get_model(args.model).num_layers  # ValueError naming the known models
    hw = hardware(args.hardware)
    if args.layers_per_step < 1 or layers % args.layers_per_step:
        raise ValueError(f"--layers-per-step {args.layers_per_step} must divide {args.model}'s {layers} layers")
    for k, lo in (("requests", 2), ("repeat", 1), ("calibrate", 1), ("calibrate_runs", 1), ("retries", 0),
                  ("skip", 0), ("seed", 0)):
        if getattr(args, k) < lo:
            raise ValueError(f"--{k.replace('_', '-')} must be >= {lo}, got {getattr(args, k)}")
    for k in ("load", "rate", "layer_ms", "time_scale", "slo_scale", "lowload_ratio", "time_limit"):
        v = getattr(args, k)
        if v is not None and not v > 0:
            raise ValueError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    if args.warm is not None and args.warm < 0:
        raise ValueError(f"--warm must be >= 0, got {args.warm}")
    if args.workload not in SYNTHETIC + TRACES and not Path(args.workload).exists():
        raise ValueError(f"--workload {args.workload!r}: not one of {', '.join(SYNTHETIC + TRACES)} "
                         f"and no such trace file")
    cluster = cluster_of(topo, args.instance_size)
    sets = {s: request_set(args, s, i) for i, s in enumerate(range(args.seed, args.seed + args.repeat))}
    first, warm = sets[args.seed]
    caps = {s: E.capacity_rate(args.model, r, len(cluster.prefill), w, hw) for s, (r, w) in sets.items()}
    ts = args.time_scale or E.choose_time_scale(args.model, first, warm, args.layer_ms / 1e3, hw)
    return Plan(args.model, hw, args.workload, cluster, min(ln.bandwidth_bps for ln in topo.links), ts,
                statistics.fmean(caps.values()), sets, caps, args.load, args.rate, lowload_ratio=args.lowload_ratio)


# ---------------------------------------------------------------------------------------------- simulator


def sim_cluster(plan: Plan, args, lowload: float, measured: int):
    """The simulator's cluster for the emulated one: as many prefill and decode instances of the model,
    servers of ``hw.gpus_per_server`` GPUs, one NIC per GPU (mfs.sim.engine.ClusterConfig)."""
    from mfs.sim.engine import ClusterConfig
    from mfs.sim.model import get_model
    g, gps = get_model(plan.model).gpus, plan.hw.gpus_per_server
    p, d = len(plan.cluster.prefill), len(plan.cluster.decode)
    total = (p + d) * g
    if total % gps:
        raise ValueError(f"{p} prefill + {d} decode instances of {g} GPUs do not fill servers of {gps} GPUs")
    return ClusterConfig(servers=total // gps, gpus_per_server=gps, prefill_fraction=(p * g + 0.5) / total,
                         warmup=0, measured=measured, slo_scale=args.slo_scale, lowload_ratio=lowload,
                         max_batch_tokens=plan.max_batch_tokens)


def simulate(plan: Plan, args, policy: str, requests: list, warm: list, lowload: float, **meta):
    """Run ``requests`` (real-cluster arrivals) through the flow-level simulator under ``policy``."""
    from hostagent.workload import warm_cache
    from mfs.sim.engine import Simulator
    from mfs.sim.model import get_model
    from mfs.sim.results import make_run
    from mfs.sim.runner import sim_policy
    sim = Simulator(get_model(plan.model), sim_policy(policy, plan.hw), sim_cluster(plan, args, lowload, max(1, len(requests))),
                    plan.hw)
    warm_cache(sim.cache, warm, sim.np)
    recs = sim.run(requests)
    rate = (len(requests) - 1) / requests[-1].arrival if len(requests) > 1 and requests[-1].arrival > 0 else 0.0
    return make_run(policy, rate, recs, model=plan.model, simulated=True, lowload_ratio=lowload, **meta), sim


def sim_lowload(plan: Plan, args) -> float:
    """The simulator's low-load ratio on the calibration requests the emulation uses (fair sharing)."""
    from hostagent.workload import lowload_set
    seed = plan.seeds[0]
    probe = simulate(plan, args, "fair", [], [], 1.0)[1]
    picks = lowload_set(plan.sets[seed][0], args.calibrate, plan.warm(seed), probe.ideal_ttft)
    run, sim = simulate(plan, args, "fair", picks, plan.warm(seed), 1.0)
    ratios = [q.ttft / sim.ideal_ttft(q.input_tokens - q.reused_tokens, q.reused_tokens) for q in run.requests
              if math.isfinite(q.ttft)]
    return statistics.median(ratios) if ratios else 1.0


def simulate_all(plan: Plan, args, policies: list[str]) -> tuple[list, float]:
    """Every (seed, policy) of the plan through the simulator: the same requests in the same order, at the
    same load as the emulation — ``--load`` × the capacity the *simulator* measures (ideal ÷ its own
    low-load ratio), as the emulation runs at ``--load`` × its measured capacity; with ``--rate``, at that
    rate. Returns (runs, the simulator's low-load ratio)."""
    lowload = sim_lowload(plan, args)
    runs = [simulate(plan, args, pol, plan.requests(seed, lowload), plan.warm(seed), lowload, seed=seed)[0]
            for seed in plan.seeds for pol in policies]
    return runs, lowload

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

    def __init__(self, topo, *, host_priority: bool = True, shape_hosts: bool = True,
                 pin: dict[str, str] | None = None, **kw):
        if shape_hosts:
            topo = replace(topo, shape_hosts=True)
        super().__init__(topo, policy_stage_defaults=True, **kw)
        self.host_priority, self.shape_hosts = host_priority, shape_hosts
        self.pin = dict(pin or {})  # role (switch, controller, agent) -> CPU list for taskset -c

    def popen(self, name, cmd, **kw):
        role = "agent" if name.startswith("agent-") else "controller" if name == "controller" else "switch"
        if self.pin.get(role):
            cmd = ["taskset", "-c", self.pin[role], *cmd]
        if name.startswith("agent-"):
            if self.host_priority:
                cmd = [*cmd, "--priority-queue"]
            if self.shape_hosts:  # 8 datagrams between the agent's pick and the line-rate shaper
                cmd = ["env", f"MFS_AGENT_SNDBUF={8 * 1500}", *cmd]
        return super().popen(name, cmd, **kw)


def pin_plan(spec: str, cpus: list[int] | None = None) -> dict[str, str]:
    """``--pin``: ``off`` (the kernel places every process), ``auto`` (the switches, which do per-packet work,
    on the last CPU this process may use; controller, agents and this driver on the others), or
    ``switch=CPUS,controller=CPUS,agent=CPUS,driver=CPUS`` (taskset lists such as ``0`` or ``0-1``)."""
    import os
    cpus = sorted(cpus if cpus is not None else os.sched_getaffinity(0))
    if spec == "off":
        return {}
    if spec == "auto":
        if len(cpus) < 2:
            return {}
        rest = ",".join(map(str, cpus[:-1]))
        return {"switch": str(cpus[-1]), "controller": rest, "agent": rest, "driver": rest}
    out = {}
    for part in spec.split(","):
        role, _, val = part.partition("=")
        if role not in ("switch", "controller", "agent", "driver") or not val or \
                not all(c.isdigit() or c == "-" for c in val.replace(":", "")):
            raise ValueError(f"--pin {spec!r}: expected off, auto or role=CPUS,... with roles switch, controller, "
                             f"agent, driver (got {part!r})")
        out[role] = val.replace(":", ",")
    return out


def network(topo: T.Topology, policy: str, bandwidth_bps: float, **kw) -> DemoNetwork:
    """A cluster for one policy (scheduler ``policy`` told the emulated link rate)."""
    return DemoNetwork(topo, policy=policy, policy_options={"bandwidth_bps": bandwidth_bps}, **kw)


def _handles(net: N.Network, cluster):
    from hostagent.control import connect_all
    hosts = [h for g in cluster.prefill + cluster.decode for h in g]
    return connect_all({h: (str(net.agent_sock(h)), net.ip(h)) for h in hosts}, pipeline=True)


def _close(handles) -> None:
    for c in handles.values():
        close = getattr(c, "close", None)
        if close:
            close()


def calibrate(net: N.Network, plan: Plan, args) -> float:
    """Low-load TTFT / ideal TTFT on this cluster (run it with fair sharing, as the simulator does)."""
    from hostagent.workload import calibrate_lowload
    seed = plan.seeds[0]
    handles = _handles(net, plan.cluster)
    try:
        ratio, _ = calibrate_lowload(handles, plan.cluster, plan.sets[seed][0], plan.config(args, 1.0),
                                     count=args.calibrate, warm=plan.warm(seed))
    finally:
        _close(handles)
    return ratio


def replay(net: N.Network, plan: Plan, args, policy: str, seed: int, progress=None):
    """Drive one seed's requests through the host agents (hostagent.workload); returns a results Run."""
    from hostagent.workload import run_workload
    handles = _handles(net, plan.cluster)
    try:
        return run_workload(handles, plan.cluster, plan.requests(seed), plan.config(args), scheduler=policy,
                            rate=plan.rate(seed), warm=plan.warm(seed), on_record=progress, workload=args.workload,
                            seed=seed, topology=net.topo.name, target=args.target, hardware=args.hardware,
                            load=round(plan.rate(seed) * (plan.lowload_ratio or 1.0) / plan.caps[seed], 3))
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



class Clusters:
    """One running cluster per policy, built on first use and kept across seeds (a build costs ~10 s of
    process start-ups), rebuilt after a failed replay; all torn down when the ExitStack closes."""

    def __init__(self, topo, plan: Plan, args, stack: ExitStack):
        self.topo, self.plan, self.args, self.stack = topo, plan, args, stack
        self.nets: dict[str, DemoNetwork] = {}
        self.pin = pin_plan(args.pin)

    def get(self, pol: str, log: str | None = None) -> DemoNetwork:
        if pol not in self.nets:
            # a tag of its own: a concurrent demo (or its `mfs-topo stop --tag`) never touches this one's names
            net = network(self.topo, pol, self.plan.link_bps, target=self.args.target,
                          logdir=N.ROOT / "logs" / "demo" / (log or pol), tag=N.unique_tag(),
                          shape_hosts=not self.args.unshaped_hosts, pin=self.pin)
            self.nets[pol] = self.stack.enter_context(net)
        return self.nets[pol]

    def lost(self, pol: str) -> str | None:
        net = self.nets.get(pol)
        return lost_cluster(net) if net is not None else None

    def drop(self, pol: str) -> None:
        net = self.nets.pop(pol, None)
        if net is not None:
            net.stop()


def _fmt_s(s: float) -> str:
    return f"{s / 60:.1f} min" if s >= 120 else f"{s:.0f} s"


def with_retries(args, what: str, attempt, rebuild, lost):
    """``attempt()`` up to 1 + ``--retries`` times; after a failure ``rebuild()`` (drop the cluster, the next
    attempt builds a new one). ``lost()`` says why the cluster is not whole (or None)."""
    for k in range(args.retries + 1):
        try:
            return attempt()
        except (N.BuildError, N.netns.NetError, RuntimeError, TimeoutError) as e:
            why = lost()
            rebuild()
            if k == args.retries:
                raise
            cause = "torn down from outside (`mfs-topo stop --all`?)" if outside_teardown(why) else "failed"
            print(f"demo: {what}: {str(e).splitlines()[0] if str(e) else type(e).__name__} -- {cause}; "
                  f"rebuilding and trying again", file=sys.stderr, flush=True)


def run_replay(clusters: Clusters, plan: Plan, args, pol: str, seed: int, tag: str):
    """One (policy, seed) replay with progress lines; rebuilds the cluster and retries on failure."""
    n = len(plan.sets[seed][0])
    done: list = []
    step = max(1, n // 3)

    def progress(rec):
        done.append(rec)
        if len(done) % step == 0 and len(done) < n:
            print(f"{tag}: {len(done)}/{n} requests done, {sum(r.met for r in done)} met their SLO", flush=True)

    for attempt in range(args.retries + 1):
        done.clear()
        try:
            net = clusters.get(pol)
        except (N.BuildError, N.netns.NetError) as e:  # e.g. killed from outside while starting
            clusters.drop(pol)
            if attempt == args.retries:
                raise
            print(f"demo: building {pol}'s cluster: {str(e).splitlines()[0]}; trying again", file=sys.stderr,
                  flush=True)
            continue
        try:
            run = replay(net, plan, args, pol, seed, progress)
            err = None
        except (RuntimeError, TimeoutError) as e:  # TimeoutError: an agent stopped answering
            err = str(e) or f"{type(e).__name__} (an agent stopped answering its control socket)"
        why = lost_cluster(net)
        if err is None and why is None:
            return run
        msg = (f"{err}; " if err else "") + (f"the cluster is not whole: {why}" if why else "")
        clusters.drop(pol)
        if attempt < args.retries:
            cause = ("torn down from outside (`mfs-topo stop --all`?)" if outside_teardown(why) else
                     "a host agent's control connection failed")
            print(f"demo: {pol} seed {seed}: {msg} -- {cause}; rebuilding {pol}'s cluster and replaying again",
                  file=sys.stderr, flush=True)
            continue
        raise N.BuildError(f"{msg} (logs in {net.logdir})")


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    known = _all_policies()
    bad = [p for p in policies if p not in known]
    if bad or not policies or len(set(policies)) != len(policies):
        print(f"demo: --policies: {', '.join(bad) or '(empty or repeated)'} not allowed (allowed: {', '.join(known)})",
              file=sys.stderr)
        return 2
    reason = check_environment()
    if reason:
        print(f"demo: cannot run here: {reason}", file=sys.stderr)
        return 2
    try:
        topo = load_topology(args.topology, args.bandwidth, args.queue_buffer)
        plan = make_plan(args, topo)
        pins = pin_plan(args.pin)
    except ConfigError as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"demo: {e}", file=sys.stderr)
        return 2
    from mfs.sim.results import write_results
    from topo import demoreport as R
    if pins.get("driver"):
        import os
        os.sched_setaffinity(0, {int(c) for part in pins["driver"].split(",") for c in
                                 (range(int(part.split("-")[0]), int(part.split("-")[-1]) + 1))})

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    command = "python -m topo.demo " + " ".join(argv if argv is not None else sys.argv[1:])
    n, seeds = args.requests, plan.seeds
    print(f"demo: {args.workload} workload, {n} requests x {len(seeds)} seeds ({seeds[0]}..{seeds[-1]}), every "
          f"policy replays the same requests per seed; {len(plan.warm(seeds[0]))} earlier requests' prefix KV held")
    print(f"demo: model {plan.model} on {args.hardware} hardware ({plan.hw.nic_bw * 8 / 1e9:g} Gb/s per GPU); "
          f"{len(plan.cluster.prefill)} prefill instances {plan.cluster.prefill}, decode {plan.cluster.decode} on "
          f"{topo.name} ({plan.link_bps / 1e6:g} Mb/s links, target {args.target}); time_scale {plan.time_scale:.3g}"
          f"{f' (median layer {args.layer_ms:g} ms emulated)' if args.time_scale is None else ''}, "
          f"{args.layers_per_step} layers per emulated step; ideal prefill "
          f"capacity {plan.capacity:.3g} req/s", flush=True)
    t_all = time.monotonic()
    summary: dict = {"command": command, "scenario": {
        "workload": args.workload, "requests": n, "seeds": seeds, "model": plan.model, "hardware": args.hardware,
        "topology": topo.name, "link_bps": plan.link_bps, "time_scale": plan.time_scale, "capacity": plan.capacity,
        "load": args.load if args.rate is None else None, "policies": policies,
        "pin": pins, "layer_ms": args.layer_ms, "layers_per_step": args.layers_per_step,
        "kv_placement": args.kv_placement, "kv_size": args.kv_size}}
    emu_runs: list = []
    with ExitStack() as stack:
        clusters = Clusters(topo, plan, args, stack)
        try:
            if plan.lowload_ratio is None:
                ratios = []
                for k in range(args.calibrate_runs):
                    print(f"[calibrate {k + 1}/{args.calibrate_runs}] {args.calibrate} requests one at a time, "
                          f"fair sharing ...", flush=True)
                    ratios.append(with_retries(args, "calibration", lambda: calibrate(clusters.get("fair"), plan, args),
                                               lambda: clusters.drop("fair"), lambda: clusters.lost("fair")))
                    print(f"[calibrate {k + 1}/{args.calibrate_runs}] low-load TTFT = {ratios[-1]:.3f} x ideal "
                          f"({_fmt_s(time.monotonic() - t_all)})", flush=True)
                plan.lowload_ratio = statistics.median(ratios)
                spread = (f"; {len(ratios)} runs: {min(ratios):.3f}..{max(ratios):.3f} (sd {statistics.stdev(ratios):.3f})"
                          if len(ratios) > 1 else "")
                print(f"[calibrate] low-load ratio {plan.lowload_ratio:.3f}{spread}; SLO = {args.slo_scale:g} x that "
                      f"x ideal TTFT", flush=True)
                summary["calibration"] = {"ratios": ratios, "used": plan.lowload_ratio}
                if "fair" not in policies:
                    clusters.drop("fair")
                if args.calibrate_only:
                    (out / "summary.json").write_text(json.dumps(summary, indent=1))
                    return 0
            summary["scenario"]["rates"] = {s: plan.rate(s) for s in seeds}
            summary.setdefault("calibration", {})["used"] = plan.lowload_ratio
            rates = [plan.rate(s) for s in seeds]
            print(f"demo: rate {min(rates):.3g}..{max(rates):.3g} req/s (real cluster) per seed = "
                  f"{'--rate' if args.rate is not None else f'{args.load:.0%} of each set' + chr(39) + 's measured capacity'}"
                  f"; {n} requests arrive over ~{n / statistics.fmean(rates) * plan.time_scale:.0f} s emulated per "
                  f"replay", flush=True)
            sim_runs: list = []
            if not args.no_sim:
                t0 = time.monotonic()
                sim_runs, sim_ratio = simulate_all(plan, args, policies)
                summary["calibration"]["sim"] = sim_ratio
                pred = [c for c in R.compare(sim_runs, None)]
                print(f"[simulator] same requests at the same load (its low-load ratio is {sim_ratio:.2f}), "
                      f"{len(sim_runs)} runs ({time.monotonic() - t0:.1f} s): " + "; ".join(f"mfs vs {c.baseline} mean TTFT {R._pct(c.emulated.rel.value)}"
                                                     for c in pred), flush=True)
            total = len(seeds) * len(policies)
            durs: list[float] = []
            k = 0
            for si, seed in enumerate(seeds):
                order = policies[si % len(policies):] + policies[:si % len(policies)]  # rotate: no policy always first
                for pol in order:
                    k += 1
                    tag = f"[{k}/{total}] seed {seed} {pol}"
                    t0 = time.monotonic()
                    if pol not in clusters.nets:
                        print(f"{tag}: building the cluster ...", flush=True)
                    run = run_replay(clusters, plan, args, pol, seed, tag)
                    durs.append(time.monotonic() - t0)
                    emu_runs.append(run)
                    s = run.summary
                    print(f"{tag}: mean TTFT {s['ttft_mean'] * 1e3:.1f} ms, {round(s['attainment'] * s['requests'])}/"
                          f"{s['requests']} met their SLO ({durs[-1]:.0f} s; elapsed {_fmt_s(time.monotonic() - t_all)}, "
                          f"~{_fmt_s(statistics.fmean(durs) * (total - k))} left)", flush=True)
        except (N.BuildError, N.netns.NetError, RuntimeError, TimeoutError) as e:
            print(f"demo: {str(e) or type(e).__name__}", file=sys.stderr)
            return 1
    order = {p: i for i, p in enumerate(policies)}
    emu_runs.sort(key=lambda r: (order[r.scheduler], r.meta.get("seed", 0)))
    stats = [R.policy_stats(p, runs) for p, runs in R.by_policy(emu_runs).items()]
    sim_stats = {p: R.policy_stats(p, runs) for p, runs in R.by_policy(sim_runs).items()}
    comps = R.compare(emu_runs, sim_runs)
    print()
    print(f"emulated (real-cluster ms; value (95% CI); {n} requests x {len(seeds)} seeds per policy; "
          f"'(sim)' rows: the simulator, same requests)")
    print(R.table(stats, sim_stats))
    print()
    print("paired per-request TTFT difference (same request, same seed):")
    for c in comps:
        print("  " + c.line())
        seeds_txt = ", ".join(R._pct(x) for x in c.seeds_rel)
        s2 = c.stage2.rel
        print(f"    per seed {seeds_txt}; Stage-2 CCT {R._pct(s2.value)} ({R._pct(s2.lo)} .. {R._pct(s2.hi)})")
    line = R.verdict(comps)
    summary.update(policies=[s.as_dict() for s in stats], sim_policies=[s.as_dict() for s in sim_stats.values()],
                   comparisons=[c.as_dict() for c in comps], verdict=line, wall_s=round(time.monotonic() - t_all, 1))
    js, csv = write_results(out / "results", emu_runs, command=command)
    if sim_runs:
        write_results(out / "sim", sim_runs, command=command)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    png = R.plot(emu_runs, sim_runs, out / "demo.png",
                 f"{plan.model}, {args.workload}, {n} requests x {len(seeds)} seeds, load {args.load:g}: emulated "
                 f"(bars, 95% CI) vs simulated (diamonds)")
    print(f"\nwrote {js}, {csv}, {out / 'summary.json'}, {png} (total {_fmt_s(time.monotonic() - t_all)})")
    print(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
