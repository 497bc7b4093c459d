"""MFS: the Reverse Multi-Level Queue (paper §2.2-2.6), as documented in docs/policy.md.

* Stage 3 (P2D, explicit deadline): level from MLU = the request's remaining P2D bytes
  / (time_left * B * (1-rho))
  through geometric thresholds over the P2D tiers ``[urgent_p2d, *p2d]``; MLU above
  ``infeasible_mlu`` or a past deadline = infeasible (``on_infeasible``).
* Stage 2: the Stage-2 level. Stage 1: ``stage1[min(RLI, len(stage1)-1)]``.
* Promotion only upward, at layer boundaries (the request's flows) and on ``tick``
  (Stage-3 flows of requests whose prefill compute has ended), at most every
  ``recheck_interval_s``.
* Batch arrival/departure: RED ranking (within-level order via :meth:`rank`) and
  Algorithm 1 feasibility pruning: a pruned request's Stage-3 flows go to the scavenger level
  (its Stage-1/2 flows, which its whole batch waits for, keep theirs).

Everything is incremental (docs/policy.md, "Cost per event"): the RED order is a sorted list
re-keyed only for the batches that changed since the last batch event; Algorithm 1's walk is
skipped when a bound proves that no batch can be infeasible; Stage-3 flows sharing an MLU (one
request, deadline and path) are re-checked as one group whose flows are bucketed by level, so a
re-check costs O(levels + flows whose level changes). ``tests/test_policy_incremental.py``
checks every decision against a straightforward recomputation on random event sequences.
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections import deque

from mfs.policy.api import Changes, FlowState, RequestInfo
from mfs.policy.base import STAGE_COLLECTIVE, STAGE_P2D, BasePolicy, link_name
from mfs.policy.config import PolicyConfig
from mfs.policy.red import red_split

MLU_EPS = 1e-9  # relative tolerance on the infeasibility test (float noise at MLU == 1)


class _Group:
    """Live Stage-3 flows of one request with one deadline and one path: they share one MLU.
    ``buckets`` holds the ones not parked in the scavenger level, by level."""

    __slots__ = ("key", "rep", "buckets", "members", "mlu", "infeasible")

    def __init__(self, key: tuple, rep: FlowState):
        self.key = key
        self.rep = rep  # a live member: its request, deadline and path are the group's
        self.buckets: dict[float, set[int]] = {}
        self.members: set[int] = set()  # live members, parked ones included
        self.mlu: float | None = None  # the MLU at the group's latest (re-)check
        self.infeasible = False


class MfsPolicy(BasePolicy):
    name = "mfs"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        c = self.cfg
        self.layout = c.layout
        self._cutoffs = c.mlu_cutoffs()
        self._tiers = self.layout.p2d_tiers
        self._p2d_by_req: dict[int, set[int]] = {}  # request -> its live Stage-3 flow ids
        self._early_by_req: dict[int, set[int]] = {}  # request -> its live Stage-1/2 flow ids
        self._p2d_left: dict[int, int] = {}  # request -> bytes left of its live Stage-3 flows
        self._p2d_seen: dict[int, list] = {}  # request -> [Stage-3 flows started, their bytes, highest layer]
        self._groups: dict[tuple, _Group] = {}
        self._req_groups: dict[int, set[tuple]] = {}  # request -> keys of its groups
        self._flow_group: dict[int, _Group] = {}  # Stage-3 flow id -> its group
        self._watch: set[int] = set()  # prefill-done requests with live Stage-3 flows (tick set)
        self._pending: deque = deque()  # group keys still to re-check in the current tick pass
        self._last_tick = -math.inf
        self._ports: dict[int, tuple[str, ...]] = {}  # flow id -> ports it loads (Algorithm 1)
        self._pruned: set[int] = set()  # requests whose Stage-3 flows are parked (sticky)
        # --- Algorithm 1 / RED state -------------------------------------------------
        self._batch_members: dict[int, set[int]] = {}  # batch id -> registered request ids
        self._req_batch: dict[int, int] = {}  # registered request id -> its batch
        self._active_batches: set[int] = set()
        self._order = SortedKeys()  # (RED, batch) as of the last batch event
        self._rank_key: dict[int, tuple[float, int]] = {}  # ranked batch -> its key in _order
        self._placed: dict[int, tuple] = {}  # batch -> (order key, D_lo) while in _order
        # the feasibility bound (see _walk_needed): per placed batch [slack s = D_lo - compute,
        # V: bound of its walk value (S + L_i)[u*] when A was A_rec, A_rec, its key in _kappa or None]
        self._feas: dict[int, list] = {}
        self._kappa = SortedKeys()  # (s - (V - A_rec)/B, batch) of the batches not late
        self._late: list[tuple[float, int]] = []  # heap of (s, batch): drops batches late by compute alone
        self._added = 0  # A: bytes that could have raised any batch's walk value, ever (monotone)
        self._kappa_bps = None  # the B the keys of _kappa were computed with
        self._kerr = 0.0  # float error bound of those keys
        self._dirty: set[int] = set()  # batches to re-key at the next batch event
        self._cdirty: set[int] = set()  # batches whose remaining compute changed
        self._fixed: dict[int, dict[str, int]] = {}  # request -> port -> Stage-1/2 bytes left
        self._prunable: dict[int, dict[str, int]] = {}  # request -> port -> Stage-3 bytes left
        self._port_total: dict[str, int] = {}  # port -> bytes left of every live flow + remaining_bytes
        self._port_heap: list[tuple[int, str]] = []  # lazy max-heap of _port_total
        self._rb: dict[int, int] = {}  # registered request -> remaining_bytes counted on port "*"
        self._can_prune: set[int] = set()  # registered, unpruned requests with prunable bytes left

    # --- level rules -------------------------------------------------------------
    def p2d_bytes(self, st: FlowState) -> float:
        """Bytes MLU is computed on for a Stage-3 flow (``mlu_bytes``). ``request``: what the
        flow's request still has to push to decode: the bytes left of its live Stage-3 flows
        plus, while its prefill computes, the layers not pushed yet (num_layers - 1 - the
        highest layer pushed so far) at the mean size of its pushes. ``message``: the flow's own."""
        if self.cfg.mlu_bytes == "message":
            return st.bytes_left
        rid = st.info.request_id
        left = self._p2d_left.get(rid, 0)
        req = self._requests.get(rid)
        seen = self._p2d_seen.get(rid)
        if req is None or seen is None or rid in self._prefill_done:
            return left
        n, total, top = seen
        return left + max(0, req.num_layers - 1 - top) * (total / n)

    def mlu(self, now: float, st: FlowState) -> float | None:
        """Minimal Link Utilisation of a Stage-3 flow on its request's remaining P2D bytes;
        inf when the deadline has passed; None without a deadline."""
        deadline = self.deadline_of(st.info)
        if deadline is None:
            return None
        left = deadline - now
        size = self.p2d_bytes(st)
        if size == 0:
            return 0.0
        if left <= 0:
            return math.inf
        return size * 8.0 / (left * self.residual_bps(st.info))

    def _tier_level(self, mlu: float) -> int:
        for j, cut in enumerate(self._cutoffs):
            if mlu >= cut:
                return self._tiers[j]
        return self._tiers[-1]

    def p2d_target(self, now: float, st: FlowState) -> tuple[float | None, float | None, bool]:
        """``(level, mlu, infeasible)`` for a Stage-3 flow by MLU, before monotonicity.
        level None: infeasible with ``on_infeasible: keep`` (leave it where it is)."""
        m = self.mlu(now, st)
        if m is None:  # no deadline known: the loosest tier (tau_K = +inf)
            return self._tiers[-1], None, False
        if m > self.cfg.infeasible_mlu * (1 + MLU_EPS):
            action = self.cfg.on_infeasible
            if action == "scavenger":
                return self.layout.scavenger, m, True
            if action == "urgent":
                return self.layout.urgent_p2d, m, True
            return None, m, True
        return self._tier_level(m), m, False

    def _early_level(self, st: FlowState) -> int:
        lay = self.layout
        if st.info.stage == STAGE_COLLECTIVE:
            st.rli = 0
            return lay.stage2
        rli = max(0, st.info.target_layer - self.current_layer(st.info))
        st.rli = rli
        return lay.stage1[min(rli, len(lay.stage1) - 1)]

    def _initial_level(self, now: float, st: FlowState) -> float:
        if st.info.stage != STAGE_P2D:
            return self._early_level(st)
        g = self._flow_group[st.info.flow_id]
        if st.info.request_id in self._pruned:
            st.scavenger = True
            return self.layout.scavenger
        level, g.mlu, infeasible = self.p2d_target(now, st)
        if infeasible:
            st.extra["infeasible"] = True
            if self.cfg.on_infeasible == "scavenger":
                st.scavenger = True
                return level
        if level is None:  # keep, and a new flow has no level yet: the loosest tier
            level = self._tiers[-1]
        g.buckets.setdefault(level, set()).add(st.info.flow_id)
        return level

    def _recheck_group(self, now: float, g: _Group, changes: Changes) -> None:
        """Re-check every non-parked member of a group: O(levels + flows that move)."""
        if not g.buckets:
            return
        level, g.mlu, infeasible = self.p2d_target(now, g.rep)
        if infeasible:
            g.infeasible = True
            if self.cfg.on_infeasible == "scavenger":  # the one allowed demotion, sticky
                for fids in g.buckets.values():
                    for fid in fids:
                        st = self._flows[fid]
                        st.scavenger = True
                        st.extra["infeasible"] = True
                        self._set(st, level, changes)
                g.buckets.clear()
                return
            if level is None:  # keep
                return
        moved = [lv for lv in g.buckets if lv > level]
        if not moved:
            return
        into = g.buckets.setdefault(level, set())
        for lv in moved:
            for fid in g.buckets.pop(lv):
                st = self._flows[fid]
                if infeasible:
                    st.extra["infeasible"] = True
                self._set(st, level, changes)
                into.add(fid)

    def _recheck_request(self, now: float, rid: int, changes: Changes) -> None:
        for fid in self._early_by_req.get(rid, ()):
            st = self._flows[fid]
            self._promote(st, self._early_level(st), changes)
        for key in self._req_groups.get(rid, ()):
            self._recheck_group(now, self._groups[key], changes)

    # --- bookkeeping hooks ----------------------------------------------------------
    def _load(self, rid: int, stage: int, ports: tuple[str, ...], delta: int) -> None:
        """Add ``delta`` bytes of a flow of ``rid`` to its request's loads and the port totals."""
        per = (self._prunable if stage == STAGE_P2D else self._fixed).setdefault(rid, {})
        for port in ports:
            v = per.get(port, 0) + delta
            if v:
                per[port] = v
            else:
                per.pop(port, None)
            self._port_add(port, delta)
        if not per:
            (self._prunable if stage == STAGE_P2D else self._fixed).pop(rid, None)

    def _port_add(self, port: str, delta: int) -> None:
        v = self._port_total.get(port, 0) + delta
        if v:
            self._port_total[port] = v
            heapq.heappush(self._port_heap, (-v, port))
        else:
            self._port_total.pop(port, None)
        if len(self._port_heap) > 64 + 4 * len(self._port_total):  # drop stale entries
            self._port_heap = [(-v, p) for p, v in self._port_total.items()]
            heapq.heapify(self._port_heap)

    def _max_port_total(self) -> int:
        h = self._port_heap
        while h and self._port_total.get(h[0][1], 0) != -h[0][0]:
            heapq.heappop(h)
        return -h[0][0] if h else 0

    def _p2d_uncount(self, rid: int, left: int) -> None:
        n = self._p2d_left.get(rid, 0) - left
        if n > 0:
            self._p2d_left[rid] = n
        else:
            self._p2d_left.pop(rid, None)

    def progress(self, now: float, flow_id: int, bytes_sent: int) -> Changes:
        st = self._flows.get(flow_id)
        before = st.bytes_left if st is not None else 0
        changes = super().progress(now, flow_id, bytes_sent)
        delta = st.bytes_left - before
        if delta:
            i = st.info
            self._load(i.request_id, i.stage, self._ports[flow_id], delta)
            if i.stage == STAGE_P2D:
                self._p2d_uncount(i.request_id, -delta)
                self._update_can_prune(i.request_id)
        return changes

    def _update_can_prune(self, rid: int) -> None:
        req = self._requests.get(rid)
        if req is not None and rid not in self._pruned and \
                (req.remaining_bytes > 0 or self._p2d_left.get(rid, 0) > 0):
            self._can_prune.add(rid)
        else:
            self._can_prune.discard(rid)

    def _on_flow_added(self, st: FlowState) -> None:
        i = st.info
        rid, fid = i.request_id, i.flow_id
        ports = tuple({link_name(i.src, "tx") if i.src else "*", link_name(i.dst, "rx") if i.dst else "*"})
        self._ports[fid] = ports
        self._load(rid, i.stage, ports, st.bytes_left)
        self._added += st.bytes_left
        if i.stage != STAGE_P2D:
            self._early_by_req.setdefault(rid, set()).add(fid)
            return
        self._p2d_by_req.setdefault(rid, set()).add(fid)
        self._p2d_left[rid] = self._p2d_left.get(rid, 0) + st.bytes_left
        self._update_can_prune(rid)
        seen = self._p2d_seen.setdefault(rid, [0, 0, -1])  # pushes started, their bytes, highest layer
        seen[0] += 1
        seen[1] += i.size_bytes
        seen[2] = max(seen[2], i.target_layer)
        key = (rid, i.deadline, i.src, i.dst, fid if self.cfg.mlu_bytes == "message" else None)
        g = self._groups.get(key)
        if g is None:
            g = self._groups[key] = _Group(key, st)
            self._req_groups.setdefault(rid, set()).add(key)
            if self._pending and rid in self._watch:
                self._pending.append(key)  # the tick pass under way covers it too
        g.members.add(fid)
        self._flow_group[fid] = g
        if rid in self._prefill_done:
            self._watch.add(rid)

    def _on_flow_removed(self, st: FlowState) -> None:
        i = st.info
        rid, fid = i.request_id, i.flow_id
        self._load(rid, i.stage, self._ports.pop(fid), -st.bytes_left)
        if i.stage != STAGE_P2D:
            _discard(self._early_by_req, rid, fid)
            return
        self._p2d_uncount(rid, st.bytes_left)
        self._update_can_prune(rid)
        g = self._flow_group.pop(fid)
        b = g.buckets.get(st.level)
        if b is not None:
            b.discard(fid)
            if not b:
                del g.buckets[st.level]
        g.members.discard(fid)
        if not g.members:
            del self._groups[g.key]
            _discard(self._req_groups, rid, g.key)
        elif g.rep is st:
            g.rep = self._flows[next(iter(g.members))]
        if _discard(self._p2d_by_req, rid, fid):
            self._watch.discard(rid)
            if rid not in self._requests:
                self._p2d_seen.pop(rid, None)

    def _on_request_start(self, now: float, req: RequestInfo) -> Changes:
        rid, bid = req.request_id, req.batch_id
        old = self._req_batch.get(rid)
        if old is not None and old != bid:  # re-registered into another batch: it moves
            self._leave_batch(rid, old)
        self._req_batch[rid] = bid
        self._batch_members.setdefault(bid, set()).add(rid)
        self._mark(bid)
        self._port_add("*", req.remaining_bytes - self._rb.get(rid, 0))
        self._added += max(0, req.remaining_bytes - self._rb.get(rid, 0))
        self._rb[rid] = req.remaining_bytes
        self._update_can_prune(rid)
        return {}

    def _leave_batch(self, rid: int, bid: int) -> None:
        members = self._batch_members.get(bid)
        if members is None:
            return
        members.discard(rid)
        self._mark(bid)
        if not members:
            del self._batch_members[bid]
            self._active_batches.discard(bid)
            self._rank_key.pop(bid, None)  # unranked now; others keep their positions until the next event

    def _on_request_end(self, now: float, request_id: int, req: RequestInfo | None) -> Changes:
        bid = self._req_batch.pop(request_id, None)
        if bid is not None:
            self._leave_batch(request_id, bid)
        self._port_add("*", -self._rb.pop(request_id, 0))
        self._can_prune.discard(request_id)
        if request_id not in self._req_flows:
            self._pruned.discard(request_id)
        if request_id not in self._p2d_by_req:
            self._p2d_seen.pop(request_id, None)
        self._watch.discard(request_id)
        return {}

    def _mark(self, bid: int) -> None:
        if self.cfg.red or self.cfg.pruning:
            self._dirty.add(bid)

    # --- events ---------------------------------------------------------------------
    def _on_layer(self, now: float, request_id: int) -> Changes:
        if request_id in self._prefill_done and request_id in self._p2d_by_req:
            self._watch.add(request_id)
        bid = self._req_batch.get(request_id)
        if bid is not None and (self.cfg.red or self.cfg.pruning):
            self._cdirty.add(bid)  # its remaining compute changed
        changes: Changes = {}
        self._recheck_request(now, request_id, changes)
        return changes

    def tick(self, now: float, budget: int | None = None) -> Changes:
        """Re-check the Stage-3 flows of prefill-done requests, at most every
        ``recheck_interval_s``. ``budget``: re-check at most that many flow groups in this
        call and carry the rest of the pass over to the next calls (which continue it at
        once, whatever the interval); ``pending_work()`` tells how many are left."""
        self._now = now
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
            raise ValueError(f"tick budget={budget!r} must be an integer >= 1 or None")
        if not self._pending:
            if now - self._last_tick < self.cfg.recheck_interval_s:
                return {}
            self._last_tick = now
            self._pending.extend(k for rid in self._watch for k in self._req_groups.get(rid, ()))
        changes: Changes = {}
        n = 0
        pending = self._pending
        while pending and (budget is None or n < budget):
            g = self._groups.get(pending.popleft())
            if g is None or g.rep.info.request_id not in self._watch:
                continue  # ended, or its request left the watch set since the pass began
            self._recheck_group(now, g, changes)
            n += 1
        return changes

    def pending_work(self) -> int:
        """Flow groups left in the current tick pass (0: the pass is complete)."""
        return len(self._pending)

    def _on_batch(self, now: float, batch_id: int, kind: str) -> Changes:
        if kind == "arrival":
            self._active_batches.add(batch_id)
        else:
            self._active_batches.discard(batch_id)
            self._rank_key.pop(batch_id, None)
        if not (self.cfg.red or self.cfg.pruning):
            return {}
        self._dirty.add(batch_id)
        self._rekey()
        if not self.cfg.pruning or self.cfg.prune_budget <= 0 or not self._order or not self._can_prune:
            return {}  # (nothing anyone could prune: the walk would prune nobody)
        bytes_per_s = self.cfg.bandwidth_bps / 8.0 * (1.0 - self.rho_for_link(""))
        if not self._walk_needed(now, bytes_per_s):
            return {}
        changes: Changes = {}
        for rid in self._walk(now, bytes_per_s, self.cfg.prune_budget):
            self._prune(rid, changes)
        return changes

    def _prune(self, rid: int, changes: Changes) -> None:
        """Park a request's Stage-3 flows (only those: its batch waits for its Stage 1/2)."""
        self._pruned.add(rid)
        self._can_prune.discard(rid)
        bid = self._req_batch.get(rid)
        if bid is not None:
            self._mark(bid)
        scav = self.layout.scavenger
        for key in self._req_groups.get(rid, ()):
            g = self._groups[key]
            for fids in g.buckets.values():
                for fid in fids:
                    st = self._flows[fid]
                    st.scavenger = True
                    self._set(st, scav, changes)
            g.buckets.clear()

    def _rekey(self) -> None:
        """Re-place the batches that changed since the last batch event in the RED order and
        the feasibility bound: O(changed batches × (members · ports + log n))."""
        for bid in self._dirty:
            placed = self._placed.pop(bid, None)
            if placed is not None:
                self._order.remove(placed[0])
                self._drop_feas(bid)
            self._rank_key.pop(bid, None)
            if bid not in self._active_batches:
                continue
            members = self._batch_members.get(bid, ())
            live = [self._requests[r].deadline for r in members if r not in self._pruned]
            if not live:
                continue
            red, d_lo = red_split(live)
            key = (red, bid)
            self._order.add(key)
            self._rank_key[bid] = key
            self._placed[bid] = (key, d_lo)
            # it may now come before others: their walk values may grow by its largest port load
            self._added += self._batch_peak(bid)
            # its own walk value: at most the largest per-port total of all loads
            self._feas[bid] = [self._slack_of(bid, d_lo), self._max_port_total(), self._added, None]
            self._place_feas(bid)
        for bid in self._cdirty - self._dirty:  # compute only: same place, same loads
            e = self._feas.get(bid)
            if e is not None:
                if e[3] is not None:
                    self._kappa.remove(e[3])
                    e[3] = None
                e[0] = self._slack_of(bid, self._placed[bid][1])
                self._place_feas(bid)
        self._dirty.clear()
        self._cdirty.clear()
        if not self._order:
            self._kerr = 0.0

    def _slack_of(self, bid: int, d_lo: float) -> float:
        return d_lo - max(self.remaining_compute(self._requests[r]) for r in self._batch_members[bid])

    def _batch_peak(self, bid: int) -> int:
        """The largest per-port load the batch's requests carry (all of it, pruned or not)."""
        per: dict[str, int] = {}
        for rid in self._batch_members.get(bid, ()):
            rb = self._requests[rid].remaining_bytes
            for loads in ((({"*": rb}),) if rb > 0 else (self._fixed.get(rid, {}), self._prunable.get(rid, {}))):
                for p, b in loads.items():
                    per[p] = per.get(p, 0) + b
        return max(per.values(), default=0)

    def _place_feas(self, bid: int) -> None:
        e = self._feas[bid]
        if self._kappa_bps is None:
            return  # keys are made with the first B, when the bound is first used
        e[3] = (e[0] - (e[1] - e[2]) / self._kappa_bps, bid)
        self._kappa.add(e[3])
        heapq.heappush(self._late, (e[0], bid))
        self._kerr = max(self._kerr, 8 * math.ulp(abs(e[0]) + (e[1] + e[2]) / self._kappa_bps + 1.0))

    def _drop_feas(self, bid: int) -> None:
        e = self._feas.pop(bid, None)
        if e is not None and e[3] is not None:
            self._kappa.remove(e[3])

    def _walk_needed(self, now: float, bytes_per_s: float) -> bool:
        """False when Algorithm 1 would find no batch infeasible (while not late by compute
        alone), so it would prune nobody: exact, not a heuristic.

        A batch can prune only if now + C_i ≤ D_lo < now + C_i + V_i/B, V_i = (S + L_i)[u*] its
        walk value, i.e. only if its slack s_i = D_lo − C_i is ≥ now and s_i − V_i/B < now.
        V_i is bounded by the value a previous walk found for it (or, for a batch re-keyed since,
        by the largest per-port total M of all loads) plus every byte added since (A − A_rec):
        new flows, larger remaining_bytes, a batch placed before it. So with κ_i = s_i −
        (V − A_rec)/B kept sorted (and batches already late dropped), no batch can prune if
        min κ_i ≥ now + A/B. Bounds are widened by the float rounding error."""
        if bytes_per_s != self._kappa_bps:  # B changed (a global load): re-make every key
            self._kappa_bps = bytes_per_s
            self._kappa.clear()
            self._late.clear()
            for bid, e in self._feas.items():
                e[3] = None
                self._place_feas(bid)
        tol = self._kerr + 8 * math.ulp(abs(now) + (self._added + self._max_port_total()) / bytes_per_s + 1.0)
        late = self._late
        while late and late[0][0] < now - tol:
            s_i, bid = heapq.heappop(late)
            e = self._feas.get(bid)
            if e is not None and e[0] == s_i and e[3] is not None:
                self._kappa.remove(e[3])
                e[3] = None
        if len(late) > 64 + 4 * len(self._feas):  # drop stale entries
            self._late = [(e[0], b) for b, e in self._feas.items() if e[3] is not None]
            heapq.heapify(self._late)
        return bool(self._kappa) and self._kappa.first()[0] < now + self._added / bytes_per_s + tol

    def _tighten(self, bid: int, value: int) -> None:
        """A walk found the batch's walk value: the bound restarts from it."""
        e = self._feas[bid]
        if e[3] is not None:
            self._kappa.remove(e[3])
        e[1], e[2], e[3] = value, self._added, None
        self._place_feas(bid)

    def _walk(self, now: float, bytes_per_s: float, budget: int) -> list[int]:
        """Algorithm 1's feasibility walk over the RED order (the semantics of
        :func:`mfs.policy.red.inter_schedule`, on the maintained per-request loads). It stops
        as soon as nothing more can be pruned: the budget is spent, or no request with
        prunable bytes is left in the pool or ahead in the order."""
        committed: dict[str, int] = {}  # S
        top: list[tuple[int, _Desc]] = []  # lazy heap of S: largest value first, then the largest port name
        pool: dict[int, int] = {}  # P: unpruned admitted request -> its batch
        by_port: dict[str, list[tuple[int, int]]] = {}  # port -> heap of (-prunable bytes, request)
        pruned: list[int] = []
        ahead = sum(1 for r in self._can_prune if self._req_batch.get(r) in self._placed)
        victims = 0  # requests with prunable bytes in the pool

        def commit(port: str, delta: int) -> None:
            v = committed[port] = committed.get(port, 0) + delta
            heapq.heappush(top, (-v, _Desc(port)))

        def bottleneck(load: dict[str, int]) -> tuple[int, str] | None:
            """argmax over ports of (S + L_i, port): O(|L_i|) + the top of S's heap (a port
            outside L_i has S alone; one inside is counted with its L_i anyway)."""
            while top and committed[top[0][1]] != -top[0][0]:
                heapq.heappop(top)
            best = (-top[0][0], str(top[0][1])) if top else None
            for p, v in load.items():
                cand = (committed.get(p, 0) + v, p)
                if best is None or cand > best:
                    best = cand
            return best

        for _, bid in self._order:
            if len(pruned) >= budget or not (ahead or victims):
                break
            d_lo = self._placed[bid][1]
            load: dict[str, int] = {}
            compute = 0.0
            for rid in self._batch_members[bid]:
                req = self._requests[rid]
                compute = max(compute, self.remaining_compute(req))
                is_pruned = rid in self._pruned
                if req.remaining_bytes > 0:
                    mine = {} if is_pruned else {"*": req.remaining_bytes}
                else:
                    for port, b in self._fixed.get(rid, {}).items():
                        load[port] = load.get(port, 0) + b
                    mine = {} if is_pruned else self._prunable.get(rid, {})
                if not is_pruned:
                    pool[rid] = bid
                    if mine:
                        ahead -= 1
                        victims += 1
                    for port, b in mine.items():
                        load[port] = load.get(port, 0) + b
                        heapq.heappush(by_port.setdefault(port, []), (-b, rid))
            if now + compute <= d_lo:  # else compute alone is late: pruning cannot help
                first = bottleneck(load)
                self._tighten(bid, first[0] if first is not None else 0)
                while len(pruned) < budget and pool:
                    neck = bottleneck(load)
                    if neck is None or now + compute + neck[0] / bytes_per_s <= d_lo:
                        break  # no port, or feasible
                    h = by_port.get(neck[1], [])
                    while h and h[0][1] not in pool:
                        heapq.heappop(h)
                    if not h:
                        break  # nothing prunable on the bottleneck
                    rid = heapq.heappop(h)[1]
                    vbid = pool.pop(rid)
                    pruned.append(rid)
                    victims -= 1
                    req = self._requests[rid]
                    gone = {"*": req.remaining_bytes} if req.remaining_bytes > 0 else self._prunable.get(rid, {})
                    for port, b in gone.items():
                        if vbid == bid:
                            load[port] -= b
                        else:
                            commit(port, -b)
            for port, b in load.items():
                commit(port, b)
        return pruned

    def rho_for_link(self, link: str) -> float:
        return min(self.cfg.rho_cap, self._rho.get(link, 0.0))

    def remaining_compute(self, req: RequestInfo) -> float:
        """Compute left of a request: ``remaining_compute`` (given at request_start for the
        whole prefill) times the share of layers not started yet; 0 once its prefill is done."""
        rid = req.request_id
        if rid in self._prefill_done:
            return 0.0
        layer = self._req_layer.get(rid, 0)
        return req.remaining_compute * max(0, req.num_layers - layer) / req.num_layers

    # --- queries --------------------------------------------------------------------
    def rank(self, flow_id: int) -> float:
        """RED position of the flow's batch at the last batch event (Stage 1/2 only; inf if
        the batch is not ranked): O(log n)."""
        st = self._state(flow_id)
        if st.info.stage == STAGE_P2D:
            return 0.0
        if not self.cfg.red:
            return math.inf
        bid = self._req_batch.get(st.info.request_id, st.info.batch_id)
        key = self._rank_key.get(bid)
        return math.inf if key is None else float(self._order.index(key))

    def is_pruned(self, request_id: int) -> bool:
        return request_id in self._pruned

    def flows(self) -> list[FlowState]:
        out = []
        for st in self._flows.values():
            if st.info.stage != STAGE_P2D:
                st.extra["red_rank"] = self.rank(st.info.flow_id)
            else:
                g = self._flow_group[st.info.flow_id]
                st.mlu = g.mlu
                if g.infeasible:
                    st.extra["infeasible"] = True
            out.append(st)
        return out


class _Desc(str):
    """A port name that orders descending (so a min-heap yields the largest name first)."""

    __slots__ = ()

    def __lt__(self, other):
        return str.__gt__(self, other)


def _discard(index: dict, key, value) -> bool:
    """Remove ``value`` from the set ``index[key]``; drop the key when empty (then True)."""
    s = index.get(key)
    if s is None:
        return False
    s.discard(value)
    if s:
        return False
    del index[key]
    return True


class SortedKeys:
    """A sorted list of distinct keys in buckets of ~LOAD (a simple sortedcontainers.SortedList):
    add/remove move at most 2·LOAD entries and index() sums the bucket sizes, so each costs
    O(log n + n/LOAD + LOAD) with small constants instead of a memmove of all n."""

    LOAD = 256

    def __init__(self):
        self._lists: list[list] = []
        self._maxes: list = []
        self._len = 0

    def __len__(self) -> int:
        return self._len

    def __iter__(self):
        for lst in self._lists:
            yield from lst

    def clear(self) -> None:
        self._lists, self._maxes, self._len = [], [], 0

    def first(self):
        return self._lists[0][0]

    def add(self, key) -> None:
        lists, maxes = self._lists, self._maxes
        self._len += 1
        if not lists:
            lists.append([key])
            maxes.append(key)
            return
        i = bisect_left(maxes, key)
        if i == len(maxes):
            i -= 1
            lists[i].append(key)
            maxes[i] = key
        else:
            insort(lists[i], key)
        lst = lists[i]
        if len(lst) > 2 * self.LOAD:
            half = lst[self.LOAD:]
            del lst[self.LOAD:]
            lists.insert(i + 1, half)
            maxes[i] = lst[-1]
            maxes.insert(i + 1, half[-1])

    def remove(self, key) -> None:
        """Remove ``key`` if present."""
        lists, maxes = self._lists, self._maxes
        i = bisect_left(maxes, key)
        if i == len(maxes):
            return
        lst = lists[i]
        j = bisect_left(lst, key)
        if j == len(lst) or lst[j] != key:
            return
        del lst[j]
        self._len -= 1
        if not lst:
            del lists[i]
            del maxes[i]
        else:
            maxes[i] = lst[-1]

    def index(self, key) -> int:
        """Position ``key`` has (or would have) in the order."""
        i = bisect_left(self._maxes, key)
        before = sum(len(lst) for lst in self._lists[:i])
        return before + (bisect_left(self._lists[i], key) if i < len(self._lists) else 0)
