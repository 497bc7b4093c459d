"""The one interface through which every scheduler sees flows and events.

The live controller, the simulator (mfs.sim) and the emulation drive policies
only through this interface, so a policy behaves identically in all three.

Time is a float in seconds on one clock chosen by the driver (simulated time
in the simulator, ``time.time()`` in the controller). Deadlines are absolute on
that clock.

Levels follow mfs.levels: 0 is the highest priority. A policy with
``num_levels = None`` is an *ideal* policy (unlimited levels, e.g. the LLF oracle):
its levels are arbitrary floats (smaller = served first) and it can only be
used by the simulator; the controller refuses it.

Every event method returns the flows whose level changed, as
``{flow_id: new_level}``; the controller writes exactly those to the switches.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable


@dataclass(slots=True)
class FlowInfo:
    """What a host reports when a transfer starts."""

    flow_id: int
    stage: int  # 1 KV reuse, 2 collective, 3 P2D (mfs.header.STAGE_*)
    request_id: int
    size_bytes: int
    deadline: float | None = None  # the request's TTFT deadline (absolute); None = unknown
    target_layer: int = 0  # layer that consumes the data (Stage 1/2); layer whose KV it carries (Stage 3)
    current_layer: int = 0  # layer the request is computing (or waiting to compute) now
    batch_id: int = 0
    src: str = ""  # host names, used by the simulator for links and by the controller for ownership
    dst: str = ""
    start_time: float = 0.0


@dataclass(slots=True)
class RequestInfo:
    """Request-level facts used for RED ranking and feasibility (Algorithm 1)."""

    request_id: int
    batch_id: int
    deadline: float  # absolute TTFT deadline
    arrival: float
    num_layers: int
    remaining_compute: float = 0.0  # estimated seconds of compute left (for RED / feasibility)
    remaining_bytes: int = 0  # estimated bytes left on its bottleneck (for feasibility)


@dataclass(slots=True)
class FlowState:
    """A policy's view of one live flow (read by `mfsctl flows`)."""

    info: FlowInfo
    level: float
    bytes_sent: int = 0
    mlu: float | None = None
    rli: int | None = None
    scavenger: bool = False
    extra: dict = field(default_factory=dict)

    @property
    def bytes_left(self) -> int:
        return max(0, self.info.size_bytes - self.bytes_sent)


Changes = dict[int, float]  # flow_id -> new level


@runtime_checkable
class Policy(Protocol):
    name: str
    num_levels: int | None  # None: ideal policy (simulator only)

    # --- events -------------------------------------------------------
    def request_start(self, now: float, req: RequestInfo) -> Changes: ...
    def request_end(self, now: float, request_id: int) -> Changes: ...
    def batch_event(self, now: float, batch_id: int, kind: str) -> Changes:
        """kind is "arrival" or "departure": re-run RED ranking and pruning."""
        ...

    def flow_start(self, now: float, flow: FlowInfo) -> float:
        """Register a flow; return its initial level."""
        ...

    def layer_boundary(self, now: float, request_id: int, current_layer: int, prefill_done: bool = False) -> Changes: ...
    def progress(self, now: float, flow_id: int, bytes_sent: int) -> Changes: ...
    def flow_end(self, now: float, flow_id: int) -> None: ...
    def link_load(self, now: float, rho: float, link: str = "") -> None:
        """Current utilisation in [0, 1) of a link (or of the flow's bottleneck when link == "")."""
        ...

    def tick(self, now: float, budget: int | None = None) -> Changes:
        """Periodic re-check (MFS: Stage-3 flows of requests whose prefill compute has ended).
        ``budget`` bounds the work of one call (None: all of it); what is left is done by the
        next calls (``pending_work``)."""
        ...

    def pending_work(self) -> int:
        """Work units a budgeted ``tick`` left for the next calls (0 = none)."""
        ...

    # --- queries ------------------------------------------------------
    def level(self, flow_id: int) -> float: ...
    def rate_limit(self, flow_id: int) -> float | None:
        """Bytes/s cap the sender should pace this flow at (Karuna's minimal rate), or None."""
        ...

    def flows(self) -> list[FlowState]: ...
