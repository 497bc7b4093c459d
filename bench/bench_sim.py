"""Simulator throughput at one paper-scale point (256 servers, 512 warm-up + 1024 measured requests)
with the attention-DP model (one network node per attention group, a Stage-2 coflow of one flow
per group: 8x the Stage-2 flows of the old instance-node model for Mixtral).

Prints CPU time (one core: what the point costs, independent of how busy the shared machine is),
wall time and simulated flows / events per second for MFS and Karuna, and the same for fair
sharing measured in the same run (ratio = cost relative to the simplest policy). Goal: one
paper-scale point <= 60 s of CPU on one core, for MFS and for Karuna.

Memory: peak Python heap (tracemalloc) of a small point with 1x and 4x the measured
requests. Arrivals are streamed and finished requests dropped; what grows is the result
records and the prefix-block holder cache, an LRU bounded at ``prefix_capacity`` blocks.
"""

from __future__ import annotations

import time
import tracemalloc

from mfs.sim.engine import ClusterConfig
from mfs.sim.runner import run_point

MODEL, WORKLOAD, RATE = "mixtral-8x22b", "conversation", 0.6  # near the knee (fair ~0.9 attainment)


def main() -> int:
    cl = ClusterConfig(servers=256, warmup=512, measured=1024, lowload_ratio=1.0)
    res = {}
    for sched in ("fair", "mfs", "karuna"):
        t0, c0 = time.perf_counter(), time.process_time()
        run = run_point(MODEL, WORKLOAD, sched, RATE, cl)
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        m = run.meta
        res[sched] = cpu
        print(f"{sched:6s} {MODEL}/{WORKLOAD} rate {RATE}/prefill GPU, 256 servers, 512+1024 req: CPU {cpu:6.1f} s "
              f"(wall {wall:6.1f} s), {m['flows']} flows ({m['flows'] / cpu:,.0f}/CPU-s), {m['events']} events "
              f"({m['events'] / cpu:,.0f}/CPU-s), {m['allocations']} allocations, attainment "
              f"{run.summary['attainment']:.3f}")
    for sched in ("mfs", "karuna"):
        print(f"{sched}/fair CPU-time ratio: {res[sched] / res['fair']:.2f}  (goal: point <= 60 s CPU on one core: "
              f"{'met' if res[sched] <= 60 else 'NOT met'})")
    peaks = {}
    for measured in (256, 1024):
        tracemalloc.start()
        run_point(MODEL, WORKLOAD, "mfs", RATE, ClusterConfig(servers=16, warmup=64, measured=measured,
                                                             lowload_ratio=1.0))
        peaks[measured] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        print(f"memory: mfs, 16 servers, 64+{measured} requests: peak heap {peaks[measured] / 2**20:.1f} MiB")
    per_req = (peaks[1024] - peaks[256]) / (1024 - 256)
    print(f"memory ratio for 4x the requests: {peaks[1024] / peaks[256]:.2f}; growth {per_req / 1024:.1f} KiB per "
          f"extra request: its result record plus its prefix blocks in the KV-holder cache, an LRU bounded at "
          f"ClusterConfig.prefix_capacity blocks (finished requests and their flows are dropped)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
