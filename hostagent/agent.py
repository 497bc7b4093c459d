"""The host agent: the serving runtime's API (submit / layer boundary / completion).

Shape of the paper's local daemon (§3: submit, permit, completion): the runtime
submits a transfer with its stage, peer, size, request/batch, deadline, target
layer and current layer; the agent allocates a flow id from the range the
controller gave this host, reports ``FlowStart``, stamps the MFS header on every
datagram (``mfs.header.Stamper``), moves the bytes (:mod:`hostagent.transport`),
reports progress and ``FlowEnd``, and completes the transfer's future when every
byte is delivered. Layer boundaries update the RLI stamped on the request's
not-yet-sent datagrams and are reported to the controller, which decides levels.

Levels are decided by the controller (switch flow table). The host only *proposes*
a level when the runtime passes ``level=`` (FLAG_PROPOSED; honoured on trusted ports
only). The optional host send queue (``priority_queue=True``) orders the agent's own
sending by the level the controller assigns each flow (ReportAck.levels: at flow start
and whenever it changes), whatever the scheduler — the switch's schedule, enforced at
the host too (the paper's hybrid enforcement). Until a flow's level arrives (one report
round trip, ~1-3 ms) it is ranked at the level the controller gave this host's previous
flow of the same stage (and RLI class), else by :func:`host_rank`; a runtime-proposed
level always wins.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Callable

from mfs import header as H
from mfs.levels import NUM_QUEUES, clamp
from hostagent.report import Registration, Reporter
from hostagent.transport import DEFAULT_CHUNK, DEFAULT_WINDOW, Delivered, Transport, TxTransfer

log = logging.getLogger("mfs.hostagent")

PROVISIONAL_BITS = 16


def host_rank(stage: int, rli: int | None, level: int | None) -> float:
    """Order of the host send queue (smaller first).

    A runtime-proposed level wins. Otherwise the paper's arbitration order without
    MLU (which needs the controller's load view): Stage 2 (RLI 0) first, then Stage 1
    by RLI (RLI 0 ties with Stage 2), then Stage 3 last.
    """
    if level is not None:
        return float(clamp(level))
    if stage == H.STAGE_COLLECTIVE:
        return 0.0
    if stage == H.STAGE_KV_REUSE:
        return float(min(rli if rli is not None else NUM_QUEUES - 2, NUM_QUEUES - 2))
    return float(NUM_QUEUES - 1)


@dataclass
class AgentConfig:
    host: str
    address: str  # IPv4 the agent binds and sends from
    controller: str | None = None  # unix:/path or host:port; None = no reporting
    token: str = ""
    port: int = H.MFS_UDP_PORT
    dscp_port: int = H.MFS_UDP_PORT + 1
    dscp_mode: bool = False
    priority_queue: bool = False
    chunk: int = DEFAULT_CHUNK
    window: int = DEFAULT_WINDOW
    batch_max: int = 256
    flush_interval: float = 0.005
    progress_steps: int = 4  # Progress events per flow (at each 1/steps of its bytes)
    register_wait: float = 5.0  # s after start: submits wait for the first registration (real flow ids)
    drop_every: int = 0  # test hook: drop every k-th outgoing datagram

    def __post_init__(self):
        try:
            ipaddress.IPv4Address(self.address)
        except ValueError:
            raise ValueError(f"address={self.address!r} is not an IPv4 address") from None
        if not self.host:
            raise ValueError("host name is empty")
        if self.progress_steps < 1:
            raise ValueError(f"progress_steps={self.progress_steps} must be >= 1")


@dataclass
class Transfer:
    """Handle of a submitted transfer. ``future`` resolves to itself when every byte is delivered."""

    flow_id: int
    stage: int
    peer: str
    size: int
    request_id: int
    batch_id: int
    target_layer: int
    submit_time: float
    future: Future = field(default_factory=Future)
    end_time: float | None = None
    packets: int = 0
    retransmits: int = 0
    reported: bool = True
    rli0: int | None = None  # RLI at submit
    proposed: int | None = None  # runtime-proposed level
    _tx: TxTransfer | None = None

    def wait(self, timeout: float | None = None) -> "Transfer":
        return self.future.result(timeout)

    @property
    def done(self) -> bool:
        return self.future.done()


def parse_peer(peer: str, default_port: int) -> tuple[str, int]:
    host, sep, port = peer.partition(":")
    try:
        ipaddress.IPv4Address(host)
    except ValueError:
        raise ValueError(f"peer={peer!r}: {host!r} is not an IPv4 address") from None
    if sep:
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"peer={peer!r}: bad port {port!r}")
        return host, int(port)
    return host, default_port


class HostAgent:
    def __init__(self, config: AgentConfig, on_received: Callable[[Delivered], None] | None = None):
        self.config = c = config
        self._lock = threading.Lock()
        self._receivers: list[Callable[[Delivered], None]] = [on_received] if on_received else []
        self._done_listeners: list[Callable[[Transfer], None]] = []
        self.transport = Transport(c.address, c.port, c.dscp_port, chunk=c.chunk, window=c.window,
                                   priority_queue=c.priority_queue, on_received=self._received,
                                   drop_every=c.drop_every, name=c.host)
        ip = int(ipaddress.IPv4Address(c.address))
        self._id_base, self._id_bits = (ip & 0xFFFF) << PROVISIONAL_BITS, PROVISIONAL_BITS  # until registered
        self._id_next = 0
        self._live: dict[int, Transfer] = {}
        self._layers: dict[int, int] = {}  # request -> current layer
        self._by_request: dict[int, set[int]] = {}
        self.reporter: Reporter | None = None
        if c.controller:
            self.reporter = Reporter(c.controller, c.host, c.token, c.address, batch_max=c.batch_max,
                                     flush_interval=c.flush_interval, on_register=self._registered,
                                     on_levels=self._levels, on_rates=self._rates)
        self._ctl_level: dict[int, int] = {}  # live flow -> the controller's level (ReportAck.levels)
        self._stage_level: dict[tuple[int, int], int] = {}  # (stage, RLI class) -> level of the last new flow
        self.completed = 0

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> "HostAgent":
        self._started = time.monotonic()
        self.transport.start()
        if self.reporter is not None:
            self.reporter.start()
        return self

    def close(self, flush_timeout: float = 1.0) -> None:
        if self.reporter is not None:
            self.reporter.close(flush_timeout)
        self.transport.close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.close()

    # ---- controller registration -----------------------------------------
    def _registered(self, reg: Registration) -> None:
        if not 1 <= reg.flow_id_bits <= 32 or reg.flow_id_base + (1 << reg.flow_id_bits) > 1 << 32:
            log.error("%s: controller gave an invalid flow-id range base=%d bits=%d; keeping the provisional one",
                      self.config.host, reg.flow_id_base, reg.flow_id_bits)
            return
        with self._lock:
            if (reg.flow_id_base, reg.flow_id_bits) != (self._id_base, self._id_bits):
                self._id_base, self._id_bits, self._id_next = reg.flow_id_base, reg.flow_id_bits, 0

    def flow_id_range(self) -> tuple[int, int]:
        with self._lock:
            return self._id_base, self._id_bits

    def _alloc_flow_id(self) -> int:
        size = 1 << self._id_bits
        for _ in range(size):
            fid = self._id_base + self._id_next
            self._id_next = (self._id_next + 1) % size
            if fid not in self._live:
                return fid
        raise RuntimeError(f"all {size} flow ids of this host are in use")

    @staticmethod
    def _rli_class(stage: int, rli: int | None) -> int:
        """Stage defaults' RLI classes (0, 1, >= 2; unknown with the last), as the controller's."""
        return min(rli, 2) if stage == H.STAGE_KV_REUSE and rli is not None else 2

    def _start_rank(self, stage: int, rli: int | None, level: int | None) -> float:
        """Send-queue rank of a new flow before the controller's level for it arrives."""
        if level is None:
            learnt = self._stage_level.get((stage, self._rli_class(stage, rli)))
            if learnt is not None:
                return float(learnt)
        return host_rank(stage, rli, level)

    def _levels(self, pairs: list[tuple[int, int]]) -> None:  # reporter thread
        """ReportAck.levels: rank each live flow at the controller's level (unless the runtime proposed one)."""
        rerank = []
        with self._lock:
            for fid, lvl in pairs:
                tr = self._live.get(fid)
                if tr is None:
                    continue
                if fid not in self._ctl_level:  # the level at flow start: the default for the next such flow
                    self._stage_level[(tr.stage, self._rli_class(tr.stage, tr.rli0))] = lvl
                self._ctl_level[fid] = lvl
                if tr.proposed is None and tr._tx is not None:
                    rerank.append((fid, lvl))
        for fid, lvl in rerank:
            self.transport.rerank(fid, float(clamp(lvl)))

    def _rates(self, pairs: list[tuple[int, float]]) -> None:  # reporter thread
        """ReportAck.levels.rate: pace each live flow at the controller's rate (bytes/s; 0 = unpaced), the
        policy's ``rate_limit`` (Karuna's minimal rate that meets the deadline)."""
        with self._lock:
            live = [(fid, r) for fid, r in pairs if fid in self._live]
        for fid, r in live:
            self.transport.pace(fid, r if r > 0 else None)

    def controller_level(self, flow_id: int) -> int | None:
        """The controller's current level for a live flow of this host (None before it is known)."""
        with self._lock:
            return self._ctl_level.get(flow_id)

    def _emit(self, event: str, /, **fields) -> None:
        if self.reporter is not None:
            self.reporter.emit(event, **fields)

    # ---- the runtime API -------------------------------------------------
    def submit(self, stage: int, peer: str, nbytes: int, request_id: int, *, batch_id: int = 0,
               deadline: float | None = None, target_layer: int = 0, current_layer: int | None = None,
               level: int | None = None, on_done: Callable[[Transfer], None] | None = None,
               owner: str = "") -> Transfer:
        """Start a transfer of ``nbytes`` to ``peer`` ("ip" or "ip:port"); returns its handle.
        ``owner``: the host that owns ``request_id`` if not this one (this host is its peer)."""
        if stage not in H.VALID_STAGES:
            raise ValueError(f"stage={stage!r} is not one of {H.VALID_STAGES}")
        if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
            raise ValueError(f"bytes={nbytes!r} must be an integer >= 0")
        if not 0 <= request_id < 1 << 64:
            raise ValueError(f"request_id={request_id!r} must fit in 64 bits")
        if not 0 <= target_layer < 1 << 16:
            raise ValueError(f"target_layer={target_layer!r} must be in 0..65535")
        if level is not None and not 0 <= level <= 255:
            raise ValueError(f"level={level!r} must be in 0..255")
        addr = parse_peer(peer, self.config.port)
        rep = self.reporter
        if rep is not None and not rep.registered.is_set():
            # provisional flow ids are refused by the controller (not_owner) and would leave the flow
            # best effort: shortly after start, wait for the controller's range instead
            left = self.config.register_wait - (time.monotonic() - getattr(self, "_started", 0.0))
            if left > 0:
                rep.wait_registered(left)
        with self._lock:
            if current_layer is not None:
                self._layers[request_id] = max(current_layer, self._layers.get(request_id, current_layer))
            cur = self._layers.get(request_id)
            rli = self._rli(stage, target_layer, cur)
            fid = self._alloc_flow_id()
            now = time.time()
            tr = Transfer(fid, stage, peer, nbytes, request_id, batch_id, target_layer, now, rli0=rli, proposed=level)
            self._live[fid] = tr
            rank = self._start_rank(stage, rli, level)
            self._by_request.setdefault(request_id, set()).add(fid)
        if on_done is not None:
            tr.future.add_done_callback(lambda f: on_done(f.result()))
        tr.reported = nbytes > 0  # an empty transfer has nothing to schedule (the controller refuses size 0)
        if tr.reported:
            self._emit("flow_start", flow_id=fid, stage=stage, request_id=request_id, batch_id=batch_id,
                       size_bytes=nbytes, deadline=deadline or 0.0, target_layer=target_layer,
                       current_layer=cur if cur is not None else 0, dst=addr[0], owner=owner)
        hdr = H.MfsHeader(stage=stage, flow_id=fid, request_id=request_id & 0xFFFFFFFF,
                          target_layer=target_layer, rli=H.RLI_UNKNOWN if rli is None else rli, proposed=level)
        steps = self.config.progress_steps
        marks = [nbytes * k // steps for k in range(1, steps)]

        def progress(t: TxTransfer, acked: int) -> None:
            while marks and acked >= marks[0]:
                marks.pop(0)
                self._emit("progress", flow_id=fid, bytes_sent=acked)

        tx = self.transport.send(hdr, addr, nbytes, rank=rank,
                                 dscp_mode=self.config.dscp_mode, level=self._dscp_level(stage, rli, level),
                                 on_done=self._tx_done, on_progress=progress if marks else None)
        with self._lock:
            tr._tx = tx
            lvl = self._ctl_level.get(fid) if level is None else None
        if lvl is not None:  # the ack overtook the send: apply it now
            self.transport.rerank(fid, float(clamp(lvl)))
        return tr

    @staticmethod
    def _rli(stage: int, target_layer: int, current: int | None) -> int | None:
        if stage == H.STAGE_COLLECTIVE:
            return 0
        if stage == H.STAGE_KV_REUSE and current is not None:
            return max(0, min(target_layer - current, 0xFFFE))
        return None

    @staticmethod
    def _dscp_level(stage: int, rli: int | None, level: int | None) -> int:
        return int(host_rank(stage, rli, level))

    def _tx_done(self, t: TxTransfer) -> None:  # I/O thread
        with self._lock:
            tr = self._live.pop(t.flow_id, None)
            self._ctl_level.pop(t.flow_id, None)
            if tr is not None:
                s = self._by_request.get(tr.request_id)
                if s is not None:
                    s.discard(t.flow_id)
                    if not s:
                        del self._by_request[tr.request_id]
            self.completed += 1
        if tr is None:
            return
        tr.end_time, tr.packets, tr.retransmits = t.end_time, t.packets, t.retransmits
        if tr.reported:
            self._emit("flow_end", flow_id=t.flow_id)
        tr.future.set_result(tr)
        for cb in list(self._done_listeners):
            try:
                cb(tr)
            except Exception:
                log.exception("completion listener failed")

    def layer_boundary(self, request_id: int, current_layer: int, prefill_done: bool = False,
                       owner: str = "") -> None:
        """The request now computes (or waits to compute) ``current_layer``. ``owner``: the host
        that owns the request if not this one."""
        if current_layer < 0:
            raise ValueError(f"current_layer={current_layer} must be >= 0")
        with self._lock:
            self._layers[request_id] = current_layer
            live = [self._live[f] for f in self._by_request.get(request_id, ()) if f in self._live]
            ctl = {tr.flow_id: self._ctl_level.get(tr.flow_id) for tr in live}
        self._emit("layer", request_id=request_id, current_layer=current_layer, prefill_done=prefill_done,
                   owner=owner)
        for tr in live:
            if tr.stage == H.STAGE_KV_REUSE and tr._tx is not None and tr._tx.stamper is not None:
                rli = self._rli(tr.stage, tr.target_layer, current_layer)
                old = tr._tx.header
                hdr = H.MfsHeader(stage=old.stage, flow_id=old.flow_id, request_id=old.request_id,
                                  target_layer=old.target_layer, rli=rli, proposed=old.proposed)
                lvl = ctl.get(tr.flow_id)  # the controller's level rules the send queue once known
                rank = host_rank(tr.stage, rli, old.proposed) if lvl is None or old.proposed is not None else None
                self.transport.restamp(tr.flow_id, hdr, rank)
            if tr._tx is not None and not tr.done:
                self._emit("progress", flow_id=tr.flow_id, bytes_sent=tr._tx.bytes_acked())

    def request_start(self, request_id: int, deadline: float, arrival: float, num_layers: int, *, batch_id: int = 0,
                      remaining_compute: float = 0.0, remaining_bytes: int = 0, peers: list[str] = ()) -> None:
        """This host owns request ``request_id``; ``peers`` (controller host names) may report its
        layer boundaries and flows too (docs/report-api.md, "Requests are per host")."""
        self._emit("request_start", request_id=request_id, batch_id=batch_id, deadline=deadline, arrival=arrival,
                   num_layers=num_layers, remaining_compute=remaining_compute, remaining_bytes=remaining_bytes,
                   peers=list(peers))

    def request_end(self, request_id: int) -> None:
        with self._lock:
            self._layers.pop(request_id, None)
        self._emit("request_end", request_id=request_id)

    def batch_event(self, batch_id: int, kind: str) -> None:
        if kind not in ("arrival", "departure"):
            raise ValueError(f"batch kind {kind!r} is not 'arrival' or 'departure'")
        self._emit("batch", batch_id=batch_id, kind=kind)

    # ---- completion listeners -------------------------------------------
    def add_receive_listener(self, cb: Callable[[Delivered], None]) -> None:
        self._receivers.append(cb)

    def remove_receive_listener(self, cb: Callable[[Delivered], None]) -> None:
        if cb in self._receivers:
            self._receivers.remove(cb)

    def add_done_listener(self, cb: Callable[[Transfer], None]) -> None:
        self._done_listeners.append(cb)

    def remove_done_listener(self, cb: Callable[[Transfer], None]) -> None:
        if cb in self._done_listeners:
            self._done_listeners.remove(cb)

    def _received(self, d: Delivered) -> None:  # I/O thread
        for cb in list(self._receivers):
            try:
                cb(d)
            except Exception:
                log.exception("receive listener failed")

    def status(self) -> dict:
        with self._lock:
            base, bits = self._id_base, self._id_bits
            live = len(self._live)
        st = {"host": self.config.host, "address": self.config.address, "port": self.transport.port,
              "flow_id_base": base, "flow_id_bits": bits, "live_transfers": live, "completed": self.completed,
              "transport": dict(self.transport.stats)}
        if self.reporter is not None:
            r = self.reporter
            st["controller"] = {"target": r.target, "connected": r.connected, "acked_seq": r.acked_seq,
                                "backlog": r.backlog(), "last_error": r.last_error, **r.stats}
        return st
