"""Baseline schedulers, each as its paper describes it (see docs/policy.md).

fair, fifo, sjf, edf, karuna, pias and the llf oracle. K-level variants return
integers in [0, K); ideal variants (``num_levels = None``) return floats.
"""

from __future__ import annotations

import math
from bisect import bisect_left, bisect_right

from mfs.header import STAGE_COLLECTIVE, STAGE_P2D
from mfs.policy.api import Changes, FlowState
from mfs.policy.base import BasePolicy
from mfs.policy.config import PolicyConfig


class FairPolicy(BasePolicy):
    """Fair sharing (DCTCP/DCQCN-like): every flow in one level; max-min within it."""

    name = "fair"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self.num_levels = 1

    def _initial_level(self, now: float, st: FlowState) -> float:
        return 0


class FifoPolicy(BasePolicy):
    """First come, first served by flow start time.

    Ideal (default): level = start_time (a float, earlier first). K-level: one FIFO
    queue (level 0), i.e. per-packet FIFO in the switch."""

    name = "fifo"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self.ideal = self.cfg.ideal is not False
        self.num_levels = None if self.ideal else 1

    def _initial_level(self, now: float, st: FlowState) -> float:
        return float(st.info.start_time) if self.ideal else 0


class SjfPolicy(BasePolicy):
    """Shortest job first by flow size (pFabric/PIAS family with known sizes).

    Ideal: level = size in bytes. K-level: level i for size in (t_{i-1}, t_i] of
    ``sjf_thresholds`` (K-1 increasing sizes)."""

    name = "sjf"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self.ideal = bool(self.cfg.ideal)
        self.num_levels = None if self.ideal else self.cfg.K
        self._thr = self.cfg.sjf_thresholds

    def _initial_level(self, now: float, st: FlowState) -> float:
        if self.ideal:
            return float(st.info.size_bytes)
        return bisect_left(self._thr, st.info.size_bytes)


class EdfPolicy(BasePolicy):
    """Earliest deadline first over explicit-deadline flows (Stage 3 with a deadline);
    implicit-deadline flows (Stages 1-2) are fair-shared below all of them.

    Ideal: level = absolute deadline; implicit flows at +inf. K-level: explicit flows
    in levels 0..K-2 by time to deadline against ``edf_thresholds_s`` (K-2 increasing
    cut-offs), promoted on ``tick`` as the deadline approaches; implicit at K-1."""

    name = "edf"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self.ideal = bool(self.cfg.ideal)
        self.num_levels = None if self.ideal else self.cfg.K
        self._thr = self.cfg.edf_thresholds_s
        self._explicit: set[int] = set()
        self._last_tick = -math.inf

    def _deadline_level(self, now: float, deadline: float) -> int:
        return bisect_left(self._thr, deadline - now)

    def _initial_level(self, now: float, st: FlowState) -> float:
        if not self.is_explicit(st.info):
            return math.inf if self.ideal else self.cfg.K - 1
        self._explicit.add(st.info.flow_id)
        d = self.deadline_of(st.info)
        return float(d) if self.ideal else self._deadline_level(now, d)

    def _on_flow_removed(self, st: FlowState) -> None:
        self._explicit.discard(st.info.flow_id)

    def tick(self, now: float, budget: int | None = None) -> Changes:
        self._now = now
        changes: Changes = {}
        if self.ideal or now - self._last_tick < self.cfg.recheck_interval_s:
            return changes
        self._last_tick = now
        for fid in self._explicit:
            st = self._flows[fid]
            self._promote(st, self._deadline_level(now, self.deadline_of(st.info)), changes)
        return changes


class KarunaPolicy(BasePolicy):
    """Karuna (SIGCOMM'16): deadline flows in the top queue, paced at the minimal rate
    that meets the deadline (``rate_limit`` = bytes_left / time_left); all other flows
    SJF by size over levels 1..K-1 (``karuna_thresholds``, K-2 sizes: Karuna's "split"
    for flows of known size). A deadline flow whose deadline has passed loses its
    deadline and joins the size-split levels (checked on ``tick``)."""

    name = "karuna"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self._thr = self.cfg.karuna_thresholds
        self._deadline_flows: set[int] = set()

    def _size_level(self, st: FlowState) -> int:
        return 1 + bisect_left(self._thr, st.info.size_bytes)

    def _initial_level(self, now: float, st: FlowState) -> float:
        if self.is_explicit(st.info) and self.deadline_of(st.info) > now:
            self._deadline_flows.add(st.info.flow_id)
            return 0
        return self._size_level(st)

    def _on_flow_removed(self, st: FlowState) -> None:
        self._deadline_flows.discard(st.info.flow_id)

    def tick(self, now: float, budget: int | None = None) -> Changes:
        self._now = now
        changes: Changes = {}
        expired = [f for f in self._deadline_flows if self.deadline_of(self._flows[f].info) <= now]
        for fid in expired:
            self._deadline_flows.discard(fid)
            st = self._flows[fid]
            self._set(st, self._size_level(st), changes)
        return changes

    def rate_limit(self, flow_id: int) -> float | None:
        st = self._state(flow_id)
        if flow_id not in self._deadline_flows:
            return None
        left = self.deadline_of(st.info) - self._now
        if left <= 0:
            return None
        return st.bytes_left / left


class PiasPolicy(BasePolicy):
    """PIAS (NSDI'15): information-agnostic MLFQ. Every flow starts at level 0 and is
    demoted one level each time its bytes sent cross a threshold (``pias_thresholds``,
    K-1 increasing byte counts; reported through ``progress``)."""

    name = "pias"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self._thr = self.cfg.pias_thresholds

    def _initial_level(self, now: float, st: FlowState) -> float:
        return 0

    def _on_progress(self, now: float, st: FlowState) -> Changes:
        changes: Changes = {}
        lvl = bisect_right(self._thr, st.bytes_sent)
        if lvl > st.level:
            self._set(st, lvl, changes)
        return changes


class LlfPolicy(BasePolicy):
    """Least-laxity-first oracle (ideal, unlimited levels).

    laxity(t) = D_eff - t - bytes_left*8 / (B*(1-rho)). The level is
    ``D_eff - bytes_left*8/(B*(1-rho))`` (= laxity + t): the same order as laxity at
    any instant, and it changes only when a flow makes progress, so only
    ``progress`` re-levels a flow. D_eff: Stage 3 = the deadline; Stage 1/2 = the
    request deadline minus the downstream compute estimated as
    ``remaining_compute / num_layers`` per layer for the layers that follow the
    consuming layer (Stage 1 needs its data before layer target computes: target..L-1;
    Stage 2 before target+1: target+1..L-1). No deadline known: +inf."""

    name = "llf"

    def __init__(self, config: PolicyConfig | None = None):
        super().__init__(config)
        self.num_levels = None

    def effective_deadline(self, st: FlowState) -> float | None:
        info = st.info
        req = self._requests.get(info.request_id)
        if info.stage == STAGE_P2D or req is None:
            return self.deadline_of(info)
        per_layer = req.remaining_compute / req.num_layers
        after = req.num_layers - info.target_layer - (1 if info.stage == STAGE_COLLECTIVE else 0)
        return req.deadline - per_layer * max(0, after)

    def _level(self, st: FlowState) -> float:
        d = self.effective_deadline(st)
        if d is None:
            return math.inf
        return d - st.bytes_left * 8.0 / self.residual_bps(st.info)

    def _initial_level(self, now: float, st: FlowState) -> float:
        return self._level(st)

    def _on_progress(self, now: float, st: FlowState) -> Changes:
        changes: Changes = {}
        self._set(st, self._level(st), changes)
        return changes
