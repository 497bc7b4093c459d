"""Policy benchmark (issue 10 item 1): MFS events/s with n = 500, 2000, 8000 active requests,
and the cost of a tick over a prefill-done request's Stage-3 flows.

Each request is its own batch (one host's legal burst of request_start + batch arrival, as in
the issue), with a Stage-1 fetch and a first Stage-3 push. "arrivals" times the 4n events
(request_start, two flow_start, batch arrival) that build the active set; "steady" times a mix of events with n active
(layer boundaries, progress, Stage-3 pushes starting and ending, ticks, a batch leaving and a new
one arriving). Per-event cost that grows with n shows as events/s falling with n: the printed
ratio to n = 500 stays near 1 when the cost is ~O(log n), and would fall ~16x at n = 8000 if it
were linear in n (a quadratic total). "overload": the same with 1/1000 of the bandwidth, where
Algorithm 1 finds infeasible batches and walks the RED order (O(n) per batch event while some
request could still be pruned): shown for n = 500 and 2000 only (n = 8000 takes minutes).
"""

from __future__ import annotations

import random
import time

from mfs.header import STAGE_KV_REUSE, STAGE_P2D
from mfs.policy import FlowInfo, MfsPolicy, PolicyConfig, RequestInfo

SIZES = (500, 2000, 8000)
STEADY_EVENTS = 20_000
HOSTS = 16


def _arrivals(pol: MfsPolicy, n: int, rnd: random.Random) -> float:
    t0 = time.perf_counter()
    for i in range(n):
        now = i * 1e-6  # a burst: no deadline comes near during the run (see "overload")
        pol.request_start(now, RequestInfo(i, i, deadline=now + rnd.uniform(0.5, 3.0), arrival=now, num_layers=8,
                                           remaining_compute=0.1))
        pol.flow_start(now, FlowInfo(i, STAGE_KV_REUSE, i, 1 << 20, target_layer=rnd.randrange(8), batch_id=i,
                                     src=f"h{rnd.randrange(HOSTS)}", dst=f"h{i % HOSTS}"))
        pol.flow_start(now, FlowInfo(n + i, STAGE_P2D, i, 1 << 20, target_layer=0, batch_id=i,
                                     src=f"h{i % HOSTS}", dst=f"d{rnd.randrange(HOSTS)}"))
        pol.batch_event(now, i, "arrival")
    return 4 * n / (time.perf_counter() - t0)


def _steady(pol: MfsPolicy, n: int, rnd: random.Random, events: int) -> float:
    now = n * 1e-6
    fid, rid = 10**7, n
    live3: list[int] = []
    oldest = 0
    t0 = time.perf_counter()
    for e in range(events):
        now += 1e-6
        k = e % 6
        if k == 0:
            pol.layer_boundary(now, rnd.randrange(oldest, rid), rnd.randrange(8))
        elif k == 1:
            r = rnd.randrange(oldest, rid)
            if r in pol._req_flows:
                f = next(iter(pol._req_flows[r]))
                pol.progress(now, f, 1 << 19)
            else:
                pol.tick(now)
        elif k == 2:
            fid += 1
            pol.flow_start(now, FlowInfo(fid, STAGE_P2D, rnd.randrange(oldest, rid), 1 << 20, target_layer=7,
                                         src=f"h{rnd.randrange(HOSTS)}", dst=f"d{rnd.randrange(HOSTS)}"))
            live3.append(fid)
        elif k == 3:
            if live3:
                pol.flow_end(now, live3.pop(rnd.randrange(len(live3))))
            else:
                pol.tick(now)
        elif k == 4:
            pol.tick(now)
        else:  # the oldest batch leaves, a new one arrives: the active set stays at n
            pol.layer_boundary(now, oldest, 8, prefill_done=True)
            pol.batch_event(now, oldest, "departure")
            pol.request_end(now, oldest)
            oldest += 1
            pol.request_start(now, RequestInfo(rid, rid, deadline=now + rnd.uniform(0.5, 3.0), arrival=now,
                                               num_layers=8, remaining_compute=0.1))
            pol.batch_event(now, rid, "arrival")
            rid += 1
    return events / (time.perf_counter() - t0)


def _tick_cost(flows: int) -> float:
    """Microseconds per tick for one prefill-done request with ``flows`` Stage-3 pushes."""
    pol = MfsPolicy(PolicyConfig(bandwidth_bps=100e9, recheck_interval_s=0.0))
    pol.request_start(0, RequestInfo(1, 1, deadline=10.0, arrival=0, num_layers=8))
    pol.layer_boundary(0, 1, 8, prefill_done=True)
    for f in range(flows):
        pol.flow_start(0, FlowInfo(f, STAGE_P2D, 1, 4096, target_layer=7, src="p", dst="d"))
    ticks = 2000
    t0 = time.perf_counter()
    for i in range(ticks):
        pol.tick(1.0 + i * 1e-6)
    return (time.perf_counter() - t0) / ticks * 1e6


def main() -> int:
    rows = []
    for label, bw, sizes in (("feasible", 100e9, SIZES), ("overload", 100e6, SIZES[:2])):
        for n in sizes:
            rnd = random.Random(n)
            pol = MfsPolicy(PolicyConfig(bandwidth_bps=bw))
            arr = _arrivals(pol, n, rnd)
            steady = _steady(pol, n, rnd, STEADY_EVENTS if label == "feasible" else STEADY_EVENTS // 10)
            rows.append((label, n, arr, steady, len(pol._pruned)))
    base = {lab: (a, s) for lab, n, a, s, _ in rows if n == SIZES[0]}
    print(f"{'load':>9} {'n active':>8} {'arrivals ev/s':>14} {'ratio':>6} {'steady ev/s':>12} {'ratio':>6} {'pruned':>7}")
    for lab, n, a, s, pruned in rows:
        print(f"{lab:>9} {n:>8} {a:>14,.0f} {a / base[lab][0]:>6.2f} {s:>12,.0f} {s / base[lab][1]:>6.2f} {pruned:>7}")
    small, big = _tick_cost(200), _tick_cost(20_000)
    print(f"tick over one prefill-done request: 200 pushes {small:.1f} us, 20,000 pushes {big:.1f} us "
          f"(ratio {big / small:.2f}; work is per group of pushes sharing an MLU, not per flow)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
