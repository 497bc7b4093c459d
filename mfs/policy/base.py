"""Shared bookkeeping for every policy: flows, requests, link load, input checks.

Subclasses implement ``_initial_level`` and override the event hooks they need.
Indexes are per request so that per-event work stays O(flows of that request).
"""

from __future__ import annotations

import math

from mfs.header import STAGE_COLLECTIVE, STAGE_KV_REUSE, STAGE_P2D, VALID_STAGES
from mfs.policy.api import Changes, FlowInfo, FlowState, RequestInfo
from mfs.policy.config import PolicyConfig


LINK_DIRECTIONS = ("tx", "rx")


def link_name(host: str, direction: str) -> str:
    """The one name of a load key (``link_load``): ``"<host>:tx"`` is what the host sends
    (its uplink), ``"<host>:rx"`` what it receives (the switch port's egress toward it).
    A flow src -> dst is loaded by ``link_name(src, "tx")`` and ``link_name(dst, "rx")``."""
    if direction not in LINK_DIRECTIONS:
        raise ValueError(f"link direction {direction!r} is not allowed (allowed: tx, rx)")
    return f"{host}:{direction}"


def _check_link(link: str) -> None:
    if not isinstance(link, str):
        raise ValueError(f"link_load link={link!r} must be a string")
    if link == "":
        return
    host, sep, direction = link.rpartition(":")
    if not sep or not host or direction not in LINK_DIRECTIONS:
        raise ValueError(f"link_load link={link!r} is not a load key (allowed: \"\" for the whole network, "
                         f"\"<host>:tx\" or \"<host>:rx\", see mfs.policy.link_name)")


class UnknownFlow(KeyError):
    """An event names a flow id the policy does not know (never started or already ended)."""

    def __str__(self) -> str:
        return self.args[0]


class BasePolicy:
    name = "base"

    def __init__(self, config: PolicyConfig | None = None):
        self.cfg = config or PolicyConfig(scheduler=self.name)
        self.num_levels: int | None = self.cfg.K
        self._flows: dict[int, FlowState] = {}
        self._req_flows: dict[int, set[int]] = {}  # request_id -> live flow ids
        self._requests: dict[int, RequestInfo] = {}
        self._req_layer: dict[int, int] = {}  # request_id -> current layer (from layer_boundary)
        self._prefill_done: set[int] = set()
        self._rho: dict[str, float] = {}
        self._now = 0.0

    # --- helpers ------------------------------------------------------------
    def _state(self, flow_id: int) -> FlowState:
        try:
            return self._flows[flow_id]
        except KeyError:
            raise UnknownFlow(f"flow {flow_id} is not registered (never started or already ended)") from None

    def _set(self, st: FlowState, level: float, changes: Changes) -> None:
        if level != st.level:
            st.level = level
            changes[st.info.flow_id] = level

    def _promote(self, st: FlowState, level: float, changes: Changes) -> None:
        """Monotonic: only ever moves a flow up (to a smaller level)."""
        if level < st.level:
            self._set(st, level, changes)

    def rho_for(self, info: FlowInfo) -> float:
        """Load of the flow's bottleneck: the largest of the global load (link "") and
        the loads reported for its sender's uplink ("<src>:tx") and its receiver's
        downlink ("<dst>:rx"), clamped to rho_cap."""
        r = self._rho
        if not r:
            return 0.0
        return min(self.cfg.rho_cap, max(r.get("", 0.0), r.get(f"{info.src}:tx", 0.0), r.get(f"{info.dst}:rx", 0.0)))

    def residual_bps(self, info: FlowInfo) -> float:
        return self.cfg.bandwidth_bps * (1.0 - self.rho_for(info))

    def deadline_of(self, info: FlowInfo) -> float | None:
        if info.deadline is not None:
            return info.deadline
        req = self._requests.get(info.request_id)
        return req.deadline if req is not None else None

    def current_layer(self, info: FlowInfo) -> int:
        return max(info.current_layer, self._req_layer.get(info.request_id, info.current_layer))

    def is_explicit(self, info: FlowInfo) -> bool:
        """Explicit-deadline flow (paper §1.2): Stage 3 with a known deadline."""
        return info.stage == STAGE_P2D and self.deadline_of(info) is not None

    def flows_of(self, request_id: int) -> list[FlowState]:
        return [self._flows[f] for f in self._req_flows.get(request_id, ())]

    # --- Policy events --------------------------------------------------------
    def request_start(self, now: float, req: RequestInfo) -> Changes:
        self._now = now
        _check_request(req)
        self._requests[req.request_id] = req
        self._req_layer.setdefault(req.request_id, 0)
        return self._on_request_start(now, req)

    def request_end(self, now: float, request_id: int) -> Changes:
        self._now = now
        req = self._requests.pop(request_id, None)
        self._req_layer.pop(request_id, None)
        self._prefill_done.discard(request_id)
        return self._on_request_end(now, request_id, req)

    def batch_event(self, now: float, batch_id: int, kind: str) -> Changes:
        self._now = now
        if kind not in ("arrival", "departure"):
            raise ValueError(f"batch_event kind={kind!r} is not allowed (allowed: arrival, departure)")
        return self._on_batch(now, batch_id, kind)

    def flow_start(self, now: float, flow: FlowInfo) -> float:
        self._now = now
        _check_flow(flow)
        if flow.flow_id in self._flows:
            raise ValueError(f"flow {flow.flow_id} is already registered (flow ids must be unique while live)")
        st = FlowState(info=flow, level=math.inf)
        self._flows[flow.flow_id] = st
        self._req_flows.setdefault(flow.request_id, set()).add(flow.flow_id)
        self._on_flow_added(st)  # indexes first: the initial level may depend on them (MFS: request bytes)
        st.level = self._initial_level(now, st)
        return st.level

    def layer_boundary(self, now: float, request_id: int, current_layer: int, prefill_done: bool = False) -> Changes:
        self._now = now
        if isinstance(current_layer, bool) or not isinstance(current_layer, int) or current_layer < 0:
            raise ValueError(f"layer_boundary current_layer={current_layer!r} must be an integer >= 0")
        prev = self._req_layer.get(request_id, 0)
        self._req_layer[request_id] = max(prev, current_layer)
        if prefill_done:
            self._prefill_done.add(request_id)
        return self._on_layer(now, request_id)

    def progress(self, now: float, flow_id: int, bytes_sent: int) -> Changes:
        self._now = now
        st = self._state(flow_id)
        if isinstance(bytes_sent, bool) or not isinstance(bytes_sent, int) or bytes_sent < 0:
            raise ValueError(f"progress bytes_sent={bytes_sent!r} for flow {flow_id} must be an integer >= 0")
        st.bytes_sent = max(st.bytes_sent, bytes_sent)
        return self._on_progress(now, st)

    def flow_end(self, now: float, flow_id: int) -> None:
        self._now = now
        st = self._state(flow_id)
        del self._flows[flow_id]
        rid = st.info.request_id
        s = self._req_flows.get(rid)
        if s is not None:
            s.discard(flow_id)
            if not s:
                del self._req_flows[rid]
        self._on_flow_removed(st)

    def link_load(self, now: float, rho: float, link: str = "") -> None:
        self._now = now
        _check_link(link)
        if isinstance(rho, bool) or not isinstance(rho, (int, float)) or not 0.0 <= rho <= 1.0:
            raise ValueError(f"link_load rho={rho!r} for link {link!r} must be a number in [0, 1]")
        self._rho[link] = float(rho)

    def tick(self, now: float, budget: int | None = None) -> Changes:
        """Periodic re-check. ``budget`` bounds the work of one call where the policy's re-check
        can grow with the number of flows (MFS: flow groups, the rest carried to the next calls;
        see ``pending_work``); policies whose tick is cheap ignore it."""
        self._now = now
        return {}

    def pending_work(self) -> int:
        """Work units a budgeted ``tick`` left for the next calls (0 = none)."""
        return 0

    # --- queries --------------------------------------------------------------
    def level(self, flow_id: int) -> float:
        return self._state(flow_id).level

    def rate_limit(self, flow_id: int) -> float | None:
        self._state(flow_id)
        return None

    def rank(self, flow_id: int) -> float:
        """Within-level service order hint (smaller first); 0 when the policy has none.

        Not part of the frozen Policy protocol: host send queues and the simulator may
        use it (``getattr(policy, "rank", None)``) to order flows sharing one level."""
        self._state(flow_id)
        return 0.0

    def flows(self) -> list[FlowState]:
        return list(self._flows.values())

    # --- hooks ------------------------------------------------------------------
    def _initial_level(self, now: float, st: FlowState) -> float:
        raise NotImplementedError

    def _on_flow_added(self, st: FlowState) -> None:
        pass

    def _on_flow_removed(self, st: FlowState) -> None:
        pass

    def _on_request_start(self, now: float, req: RequestInfo) -> Changes:
        return {}

    def _on_request_end(self, now: float, request_id: int, req: RequestInfo | None) -> Changes:
        return {}

    def _on_batch(self, now: float, batch_id: int, kind: str) -> Changes:
        return {}

    def _on_layer(self, now: float, request_id: int) -> Changes:
        return {}

    def _on_progress(self, now: float, st: FlowState) -> Changes:
        return {}


def _check_flow(f: FlowInfo) -> None:
    if not isinstance(f, FlowInfo):
        raise TypeError(f"flow_start expects a FlowInfo, got {type(f).__name__}")
    if f.stage not in VALID_STAGES:
        raise ValueError(f"flow {f.flow_id}: stage={f.stage!r} is not one of {VALID_STAGES}")
    for name in ("flow_id", "request_id", "size_bytes", "target_layer", "current_layer", "batch_id"):
        v = getattr(f, name)
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise ValueError(f"flow {f.flow_id}: {name}={v!r} must be an integer >= 0")
    if f.deadline is not None and (not isinstance(f.deadline, (int, float)) or math.isnan(f.deadline)):
        raise ValueError(f"flow {f.flow_id}: deadline={f.deadline!r} must be a number or None")


def _check_request(r: RequestInfo) -> None:
    if not isinstance(r, RequestInfo):
        raise TypeError(f"request_start expects a RequestInfo, got {type(r).__name__}")
    if isinstance(r.deadline, bool) or not isinstance(r.deadline, (int, float)) or not math.isfinite(r.deadline):
        raise ValueError(f"request {r.request_id}: deadline={r.deadline!r} must be a finite number")
    if isinstance(r.remaining_compute, bool) or not isinstance(r.remaining_compute, (int, float)) \
            or not math.isfinite(r.remaining_compute):
        raise ValueError(f"request {r.request_id}: remaining_compute={r.remaining_compute!r} must be a finite number")
    if isinstance(r.remaining_bytes, bool) or not isinstance(r.remaining_bytes, int):
        raise ValueError(f"request {r.request_id}: remaining_bytes={r.remaining_bytes!r} must be an integer")
    if isinstance(r.num_layers, bool) or not isinstance(r.num_layers, int) or r.num_layers < 1:
        raise ValueError(f"request {r.request_id}: num_layers={r.num_layers!r} must be an integer >= 1")
    if r.remaining_compute < 0 or r.remaining_bytes < 0:
        raise ValueError(f"request {r.request_id}: remaining_compute and remaining_bytes must be >= 0")


__all__ = ["BasePolicy", "UnknownFlow", "link_name", "STAGE_KV_REUSE", "STAGE_COLLECTIVE", "STAGE_P2D"]
