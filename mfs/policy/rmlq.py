"""MFS: the Reverse Multi-Level Queue (paper §2.2-2.6), as documented in docs/policy.md.

* Stage 3 (P2D, explicit deadline): level from MLU = bytes_left / (time_left * B * (1-rho))
  through geometric thresholds over the P2D tiers ``[urgent_p2d, *p2d]``; MLU above
  ``infeasible_mlu`` or a past deadline = infeasible (``on_infeasible``).
* Stage 2: the Stage-2 level. Stage 1: ``stage1[min(RLI, len(stage1)-1)]``.
* Promotion only upward, at layer boundaries (the request's flows) and on ``tick``
  (Stage-3 flows of requests whose prefill compute has ended), at most every
  ``recheck_interval_s``.
* Batch arrival/departure: RED ranking (within-level order via :meth:`rank`) and
  Algorithm 1 feasibility pruning of whole requests into the scavenger level.
"""

from __future__ import annotations

import math

from mfs.policy.api import Changes, FlowState, RequestInfo
from mfs.policy.base import STAGE_COLLECTIVE, STAGE_P2D, BasePolicy
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
        self._watch: set[int] = set()  # prefill-done requests with live Stage-3 flows (tick set)
        self._ports: dict[int, tuple[str, ...]] = {}  # flow id -> ports it loads (Algorithm 1)
        self._pruned: set[int] = set()  # requests parked in the scavenger level (sticky)
        self._batch_members: dict[int, set[int]] = {}  # batch id -> request ids
        self._active_batches: set[int] = set()
        self._batch_rank: dict[int, int] = {}  # batch id -> position in the RED order
        self._last_tick = -math.inf

    # --- level rules -------------------------------------------------------------
    def mlu(self, now: float, st: FlowState) -> float | None:
        """Minimal Link Utilisation; inf when the deadline has passed; None without a deadline."""
        deadline = self.deadline_of(st.info)
        if deadline is None:
            return None
        left = deadline - now
        if st.bytes_left == 0:
            return 0.0
        if left <= 0:
            return math.inf
        return st.bytes_left * 8.0 / (left * self.residual_bps(st.info))

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
        if st.info.request_id in self._pruned:
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
    def _on_flow_added(self, st: FlowState) -> None:
        i = st.info
        self._ports[i.flow_id] = tuple({f"tx:{i.src}" if i.src else "*", f"rx:{i.dst}" if i.dst else "*"})
        if st.info.stage == STAGE_P2D:
            rid = st.info.request_id
            self._p2d_by_req.setdefault(rid, set()).add(st.info.flow_id)
            if rid in self._prefill_done:
                self._watch.add(rid)

    def _on_flow_removed(self, st: FlowState) -> None:
        del self._ports[st.info.flow_id]
        if st.info.stage == STAGE_P2D:
            s = self._p2d_by_req.get(st.info.request_id)
            if s is not None:
                s.discard(st.info.flow_id)
                if not s:
                    del self._p2d_by_req[st.info.request_id]
                    self._watch.discard(st.info.request_id)

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
                    if r in self._requests and r not in self._pruned]
            if reqs:
                batches[bid] = reqs
        bytes_per_s = self.cfg.bandwidth_bps / 8.0 * (1.0 - self.rho_for_link(""))
        res = inter_schedule(now, batches, bytes_per_s, self.cfg.prune_budget, prune=self.cfg.pruning)
        self._batch_rank = {b: i for i, b in enumerate(res.order)} if self.cfg.red else {}
        changes: Changes = {}
        for rid in res.pruned:
            self._pruned.add(rid)
            for st in self.flows_of(rid):
                st.scavenger = True
                self._set(st, self.layout.scavenger, changes)
        return changes

    def rho_for_link(self, link: str) -> float:
        return min(self.cfg.rho_cap, self._rho.get(link, 0.0))

    def _request_load(self, req: RequestInfo) -> RequestLoad:
        """Per-port bytes a request still has to move: the driver's estimate
        ``remaining_bytes`` on one shared bottleneck "*" when given, else its live
        flows' bytes on their sender ("tx:src") and receiver ("rx:dst") ports."""
        loads: dict[str, float] = {}
        if req.remaining_bytes > 0:
            loads["*"] = float(req.remaining_bytes)
        else:
            for fid in self._req_flows.get(req.request_id, ()):
                st = self._flows[fid]
                left = st.info.size_bytes - st.bytes_sent
                for port in self._ports[fid]:
                    loads[port] = loads.get(port, 0.0) + left
        return RequestLoad(req.request_id, req.deadline, req.remaining_compute, loads)

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
