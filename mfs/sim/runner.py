"""Running simulation points: policy construction, SLO calibration, one (scheduler, rate) point."""

from __future__ import annotations

import statistics
import time
from dataclasses import asdict, replace

from mfs.policy import PolicyConfig, make_policy
from mfs.sim.engine import ClusterConfig, Simulator
from mfs.sim.model import Hardware, get_model
from mfs.sim.results import Run, make_run
from mfs.sim.workload import make_workload

SCHEDULERS = ("mfs", "fair", "fifo", "sjf", "edf", "karuna", "pias", "llf")
LOWLOAD_RATE = 0.01  # req/s per prefill GPU used to measure the low-load TTFT


def sim_policy(name: str, hw: Hardware, **overrides):
    """The policy library's scheduler ``name``, told the simulated NIC bandwidth."""
    return make_policy(name, PolicyConfig(scheduler=name, bandwidth_bps=hw.nic_bw * 8, **overrides))


def calibrate_slo(model: str, workload: str, cluster: ClusterConfig, hw: Hardware | None = None,
                  seed: int = 1, count: int = 200) -> float:
    """Median of (TTFT at low load / ideal TTFT estimate) over a low-load run with fair sharing.

    Each request's deadline is then ``arrival + slo_scale × ratio × ideal_ttft(request)``:
    3× its own low-load TTFT (paper §4.3), per request because prompt lengths differ by 10×.
    """
    hw = hw or Hardware()
    m = get_model(model)
    cl = replace(cluster, warmup=0, measured=count, lowload_ratio=1.0)
    sim = Simulator(m, sim_policy("fair", hw), cl, hw)
    recs = sim.run(make_workload(workload, LOWLOAD_RATE * cl.prefill_gpus(), count, seed))
    ratios = []
    for r in recs:
        est = sim.ideal_ttft(r.input_tokens - r.reused_tokens, r.reused_tokens)
        ratios.append(r.ttft / est)
    return statistics.median(ratios)


def run_point(model: str, workload: str, scheduler: str, rate: float, cluster: ClusterConfig,
              hw: Hardware | None = None, seed: int = 1, policy_overrides: dict | None = None) -> Run:
    """One simulation point; ``rate`` is requests/s per prefill GPU."""
    hw = hw or Hardware()
    if not rate > 0:
        raise ValueError(f"rate must be > 0 req/s per GPU, got {rate}")
    m = get_model(model)
    pol = sim_policy(scheduler, hw, **(policy_overrides or {}))
    sim = Simulator(m, pol, cluster, hw)
    n = cluster.warmup + cluster.measured
    t0 = time.perf_counter()
    recs = sim.run(make_workload(workload, rate * cluster.prefill_gpus(), n, seed))
    wall = time.perf_counter() - t0
    st = sim.stats
    return make_run(scheduler, rate, recs, model=model, workload=workload, seed=seed,
                    servers=cluster.servers, slo_scale=cluster.slo_scale, lowload_ratio=cluster.lowload_ratio,
                    warmup=cluster.warmup, measured=cluster.measured, max_batch_tokens=cluster.max_batch_tokens,
                    flows=st.flows, events=st.events, nic_load=st.nic_load, allocations=st.allocations, sim_time=st.sim_time,
                    wall_s=round(wall, 3), hardware=asdict(hw))
