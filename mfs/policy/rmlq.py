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
"""

from __future__ import annotations

import math

from mfs.policy.api import Changes, FlowState, RequestInfo
from mfs.policy.base import STAGE_COLLECTIVE, STAGE_P2D, BasePolicy, link_name
from mfs.policy.config import PolicyConfig
from mfs.policy.red import RequestLoad, inter_schedule

MLU_EPS = 1e-9  # relative tolerance on the infeasibility test (float noise at MLU == 1)


class MfsPolicy(BasePolicy):
    name = "mfs"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        c = self.cfg
        self.layout = c.layout
        self._cutoffs = c.mlu_cutoffs()
        self._tiers = self.layout.p2d_tiers
        self._p2d_by_req: dict[int, set[int]] = {}  # request -> its live Stage-3 flow ids
        self._p2d_left: dict[int, int] = {}  # request -> bytes left of its live Stage-3 flows
        self._p2d_seen: dict[int, list] = {}  # request -> [Stage-3 flows started, their bytes, highest layer]
        self._watch: set[int] = set()  # prefill-done requests with live Stage-3 flows (tick set)
        self._ports: dict[int, tuple[str, ...]] = {}  # flow id -> ports it loads (Algorithm 1)
        self._pruned: set[int] = set()  # requests parked in the scavenger level (sticky)
        self._batch_members: dict[int, set[int]] = {}  # batch id -> request ids
        self._active_batches: set[int] = set()
        self._batch_rank: dict[int, int] = {}  # batch id -> position in the RED order
        self._last_tick = -math.inf

    # --- level rules -------------------------------------------------------------
    def p2d_bytes(self, st: FlowState) -> float:
        """Bytes MLU is computed on for a Stage-3 flow (``mlu_bytes``). ``request``: what the
        flow's request still has to push to decode: the bytes left of its live Stage-3 flows
        plus, while its prefill computes, the layers not pushed yet (num_layers - 1 - the
        highest layer pushed so far) at the mean size of its pushes. ``message``: the flow's own."""
        if self.cfg.mlu_bytes == "message":
            return st.bytes_left
        rid = st.info.request_id
        left = self._p2d_left.get(rid, st.bytes_left)
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

    def _p2d_level(self, now: float, st: FlowState, current: float) -> float:
        """Target level of a Stage-3 flow (not yet combined with monotonicity)."""
        m = self.mlu(now, st)
        st.mlu = m
        if m is None:  # no deadline known: the loosest tier (tau_K = +inf)
            return self._tiers[-1]
        if m > self.cfg.infeasible_mlu * (1 + MLU_EPS):
            action = self.cfg.on_infeasible
            st.extra["infeasible"] = True
            if action == "scavenger":
                st.scavenger = True
                return self.layout.scavenger
            if action == "urgent":
                return self.layout.urgent_p2d
            return current  # keep
        return self._tier_level(m)

    def _early_level(self, st: FlowState) -> int:
        lay = self.layout
        if st.info.stage == STAGE_COLLECTIVE:
            st.rli = 0
            return lay.stage2
        rli = max(0, st.info.target_layer - self.current_layer(st.info))
        st.rli = rli
        return lay.stage1[min(rli, len(lay.stage1) - 1)]

    def _initial_level(self, now: float, st: FlowState) -> float:
        if st.info.stage == STAGE_P2D and st.info.request_id in self._pruned:
            st.scavenger = True
            return self.layout.scavenger
        if st.info.stage == STAGE_P2D:
            return self._p2d_level(now, st, math.inf)
        return self._early_level(st)

    def _recheck(self, now: float, st: FlowState, changes: Changes) -> None:
        if st.scavenger:
            return  # parked: never promoted back (sticky, no oscillation)
        if st.info.stage == STAGE_P2D:
            lvl = self._p2d_level(now, st, st.level)
            if st.scavenger:  # became infeasible: the one allowed demotion
                self._set(st, lvl, changes)
                return
        else:
            lvl = self._early_level(st)
        self._promote(st, lvl, changes)

    # --- bookkeeping hooks ----------------------------------------------------------
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
        if st.info.stage == STAGE_P2D and st.bytes_left != before:
            self._p2d_uncount(st.info.request_id, before - st.bytes_left)
        return changes

    def _on_flow_added(self, st: FlowState) -> None:
        i = st.info
        self._ports[i.flow_id] = tuple({link_name(i.src, "tx") if i.src else "*",
                                        link_name(i.dst, "rx") if i.dst else "*"})
        if st.info.stage == STAGE_P2D:
            rid = st.info.request_id
            self._p2d_by_req.setdefault(rid, set()).add(st.info.flow_id)
            self._p2d_left[rid] = self._p2d_left.get(rid, 0) + st.bytes_left
            seen = self._p2d_seen.setdefault(rid, [0, 0, -1])  # pushes started, their bytes, highest layer
            seen[0] += 1
            seen[1] += i.size_bytes
            seen[2] = max(seen[2], i.target_layer)
            if rid in self._prefill_done:
                self._watch.add(rid)

    def _on_flow_removed(self, st: FlowState) -> None:
        del self._ports[st.info.flow_id]
        if st.info.stage == STAGE_P2D:
            rid = st.info.request_id
            self._p2d_uncount(rid, st.bytes_left)
            s = self._p2d_by_req.get(rid)
            if s is not None:
                s.discard(st.info.flow_id)
                if not s:
                    del self._p2d_by_req[rid]
                    self._watch.discard(rid)
                    if rid not in self._requests:
                        self._p2d_seen.pop(rid, None)

    def _on_request_start(self, now: float, req: RequestInfo) -> Changes:
        self._batch_members.setdefault(req.batch_id, set()).add(req.request_id)
        return {}

    def _on_request_end(self, now: float, request_id: int, req: RequestInfo | None) -> Changes:
        if req is not None:
            members = self._batch_members.get(req.batch_id)
            if members is not None:
                members.discard(request_id)
                if not members:
                    del self._batch_members[req.batch_id]
                    self._active_batches.discard(req.batch_id)
                    self._batch_rank.pop(req.batch_id, None)
        if request_id not in self._req_flows:
            self._pruned.discard(request_id)
        if request_id not in self._p2d_by_req:
            self._p2d_seen.pop(request_id, None)
        self._watch.discard(request_id)
        return {}

    # --- events ---------------------------------------------------------------------
    def _on_layer(self, now: float, request_id: int) -> Changes:
        if request_id in self._prefill_done and request_id in self._p2d_by_req:
            self._watch.add(request_id)
        changes: Changes = {}
        for st in self.flows_of(request_id):
            self._recheck(now, st, changes)
        return changes

    def tick(self, now: float) -> Changes:
        self._now = now
        if now - self._last_tick < self.cfg.recheck_interval_s:
            return {}
        self._last_tick = now
        changes: Changes = {}
        for rid in self._watch:
            for fid in self._p2d_by_req[rid]:
                self._recheck(now, self._flows[fid], changes)
        return changes

    def _on_batch(self, now: float, batch_id: int, kind: str) -> Changes:
        if kind == "arrival":
            self._active_batches.add(batch_id)
        else:
            self._active_batches.discard(batch_id)
            self._batch_rank.pop(batch_id, None)
        if not (self.cfg.red or self.cfg.pruning):
            return {}
        batches: dict[int, list[RequestLoad]] = {}
        for bid in self._active_batches:
            reqs = [self._request_load(self._requests[r]) for r in self._batch_members.get(bid, ())
                    if r in self._requests]
            if reqs:
                batches[bid] = reqs
        bytes_per_s = self.cfg.bandwidth_bps / 8.0 * (1.0 - self.rho_for_link(""))
        res = inter_schedule(now, batches, bytes_per_s, self.cfg.prune_budget, prune=self.cfg.pruning)
        self._batch_rank = {b: i for i, b in enumerate(res.order)} if self.cfg.red else {}
        changes: Changes = {}
        for rid in res.pruned:
            self._pruned.add(rid)
            for st in self.flows_of(rid):
                if st.info.stage == STAGE_P2D:  # only Stage 3 is scavenged: its batch waits for Stage 1/2
                    st.scavenger = True
                    self._set(st, self.layout.scavenger, changes)
        return changes

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

    def _request_load(self, req: RequestInfo) -> RequestLoad:
        """Per-port bytes a request still has to move. Prunable (``loads``): the driver's
        estimate ``remaining_bytes`` on one shared bottleneck "*" when given, else its live
        Stage-3 flows' bytes on their sender ("<src>:tx") and receiver ("<dst>:rx") ports.
        Fixed: its live Stage-1/2 flows' bytes, likewise (none when ``remaining_bytes`` is given)."""
        rid = req.request_id
        loads: dict[str, float] = {}
        fixed: dict[str, float] = {}
        pruned = rid in self._pruned
        if req.remaining_bytes > 0:
            if not pruned:
                loads["*"] = float(req.remaining_bytes)
        else:
            for fid in self._req_flows.get(rid, ()):
                st = self._flows[fid]
                if st.info.stage == STAGE_P2D:
                    if pruned:
                        continue
                    into = loads
                else:
                    into = fixed
                left = st.info.size_bytes - st.bytes_sent
                for port in self._ports[fid]:
                    into[port] = into.get(port, 0.0) + left
        return RequestLoad(rid, req.deadline, self.remaining_compute(req), loads, fixed, pruned)

    # --- queries --------------------------------------------------------------------
    def rank(self, flow_id: int) -> float:
        """RED position of the flow's batch (Stage 1/2 only; inf if the batch is not ranked)."""
        st = self._state(flow_id)
        if st.info.stage == STAGE_P2D:
            return 0.0
        req = self._requests.get(st.info.request_id)
        bid = req.batch_id if req is not None else st.info.batch_id
        return float(self._batch_rank.get(bid, math.inf))

    def is_pruned(self, request_id: int) -> bool:
        return request_id in self._pruned

    def flows(self) -> list[FlowState]:
        out = []
        for st in self._flows.values():
            if st.info.stage != STAGE_P2D:
                st.extra["red_rank"] = self.rank(st.info.flow_id)
            out.append(st)
        return out
