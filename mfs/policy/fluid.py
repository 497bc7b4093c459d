"""A tiny fluid single-link evaluator that drives any Policy (for tests and toy examples).

Service model: strict priority by level (smaller first); flows sharing a level split
what is left max-min fairly, honouring ``rate_limit`` caps (water-filling); capacity a
level does not use passes to the next (work-conserving). Flows are fluid and
preemptible, so this is the setting of the paper's toy examples (Table 1, Fig. 6/7)
and of Theorem 1.

The driver calls ``flow_start`` at each flow's ``start_time``, ``progress`` for every
live flow and ``tick`` at every event (and every ``tick_s`` if given), and
``flow_end`` on completion. It reads levels with ``policy.level`` each step, so it
does not depend on the Changes a policy returns. Each step is O(live flows): fine for
toy cases; the flow-level simulator (mfs.sim) is the tool at paper scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from itertools import groupby

from mfs.policy.api import FlowInfo, Policy, RequestInfo


@dataclass
class FluidResult:
    finish: dict[int, float]  # flow id -> completion time (inf if never completed)
    levels: dict[int, list[tuple[float, float]]] = field(default_factory=dict)  # flow id -> [(time, level)]

    def met(self, flow_id: int, deadline: float, tol: float = 1e-9) -> bool:
        return self.finish[flow_id] <= deadline + tol


def allocate(demands: list[tuple[int, float, float | None]], capacity: float) -> dict[int, float]:
    """Rates for ``(flow_id, level, cap)`` under strict priority + max-min within a level."""
    rates: dict[int, float] = {}
    left = capacity
    for _, group in groupby(sorted(demands, key=lambda d: d[1]), key=lambda d: d[1]):
        members = sorted(group, key=lambda d: math.inf if d[2] is None else d[2])
        n = len(members)
        for i, (fid, _lvl, cap) in enumerate(members):
            share = left / (n - i) if left > 0 else 0.0
            r = share if cap is None else min(cap, share)
            rates[fid] = r
            left -= r
    return rates


def run_single_link(policy: Policy, flows: list[FlowInfo], capacity_bytes_per_s: float,
                    requests: list[RequestInfo] = (), prefill_done: tuple[int, ...] = (),
                    tick_s: float | None = None, horizon: float = 1e12) -> FluidResult:
    """Run ``flows`` over one link of ``capacity_bytes_per_s``; return completion times.

    ``requests`` are registered at time 0 (and their batches announced as arrivals);
    requests in ``prefill_done`` get ``layer_boundary(0, rid, 0, prefill_done=True)``
    so that MFS re-checks their Stage-3 flows on every tick.
    """
    if capacity_bytes_per_s <= 0:
        raise ValueError(f"capacity_bytes_per_s={capacity_bytes_per_s} must be > 0")
    t = 0.0
    for req in requests:
        policy.request_start(t, req)
    for bid in sorted({r.batch_id for r in requests}):
        policy.batch_event(t, bid, "arrival")
    for rid in prefill_done:
        policy.layer_boundary(t, rid, 0, prefill_done=True)
    pending = sorted(flows, key=lambda f: (f.start_time, f.flow_id))
    sizes = {f.flow_id: float(f.size_bytes) for f in flows}
    sent: dict[int, float] = {}
    res = FluidResult(finish={f.flow_id: math.inf for f in flows})
    next_tick = tick_s if tick_s else math.inf
    policy.tick(t)
    while (pending or sent) and t <= horizon:
        while pending and pending[0].start_time <= t:
            f = pending.pop(0)
            policy.flow_start(t, f)
            sent[f.flow_id] = 0.0
        for fid in sent:
            lv = policy.level(fid)
            hist = res.levels.setdefault(fid, [])
            if not hist or hist[-1][1] != lv:
                hist.append((t, lv))
        rates = allocate([(fid, policy.level(fid), policy.rate_limit(fid)) for fid in sent], capacity_bytes_per_s)
        dt = min([pending[0].start_time - t] if pending else [math.inf])
        dt = min(dt, next_tick - t)
        for fid, r in rates.items():
            if r > 0:
                dt = min(dt, (sizes[fid] - sent[fid]) / r)
        if math.isinf(dt):
            break  # nothing can progress any more (starved forever)
        t += dt
        if t >= next_tick:
            next_tick += tick_s
        done = []
        for fid, r in rates.items():
            sent[fid] += r * dt
            if sizes[fid] - sent[fid] <= 1e-9 * max(1.0, sizes[fid]):
                done.append(fid)
        for fid in done:
            res.finish[fid] = t
            del sent[fid]
            policy.flow_end(t, fid)
        for fid, s in sent.items():
            policy.progress(t, fid, int(round(s)))
        policy.tick(t)
    return res
