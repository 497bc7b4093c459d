"""Simulator throughput at one paper-scale point (256 servers, 512 warm-up + 1024 measured requests).

Prints wall time and simulated flows / events per second for MFS and Karuna, and
the same for fair sharing measured in the same run (ratio = cost relative to the
simplest policy). Goal: one paper-scale point <= 60 s on one core, for every
scheduler (Karuna's rate caps used to make its points ~5x slower than MFS's).

Memory: peak Python heap (tracemalloc) of a small point with 1x and 4x the measured
requests. Arrivals are streamed and finished requests dropped; what grows is the result
records and the prefix-block holder cache, an LRU bounded at ``prefix_capacity`` blocks.
"""

from __future__ import annotations

import time
import tracemalloc

from mfs.sim.engine import ClusterConfig
from mfs.sim.runner import run_point

MODEL, WORKLOAD, RATE = "mixtral-8x22b", "conversation", 1.2


def main() -> int:
    cl = ClusterConfig(servers=256, warmup=512, measured=1024, lowload_ratio=1.0)
    res = {}
    for sched in ("fair", "mfs", "karuna"):
        t0 = time.perf_counter()
        run = run_point(MODEL, WORKLOAD, sched, RATE, cl)
        wall = time.perf_counter() - t0
        m = run.meta
        res[sched] = wall
        print(f"{sched:5s} {MODEL}/{WORKLOAD} rate {RATE}/GPU, 256 servers, 512+1024 req: wall {wall:6.1f} s, "
              f"{m['flows']} flows ({m['flows'] / wall:,.0f}/s), {m['events']} events ({m['events'] / wall:,.0f}/s), "
              f"{m['allocations']} allocations, attainment {run.summary['attainment']:.3f}")
    for sched in ("mfs", "karuna"):
        print(f"{sched}/fair wall-time ratio: {res[sched] / res['fair']:.2f}  (goal: point <= 60 s: "
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
