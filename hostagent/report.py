"""Reporting to the controller's HostReports API (mfs/proto/report.proto).

Events get a per-host sequence number when they are emitted and stay in an
ordered backlog until the controller acknowledges them. One thread:

1. Register(host, token, address) → session, flow-id range, ``last_seq``;
   events with ``seq <= last_seq`` are dropped from the backlog (already applied).
   On the agent's *first* successful registration the backlog is renumbered to start
   at ``last_seq + 1`` (a restarted agent continues the controller's sequence).
2. Report(batch) with the oldest ``batch_max`` unacked events, in seq order. The first
   event after a quiet spell goes out at once (a flow's level should be installed before
   much of it is sent); batches follow each other at most every ``flush_interval``, so a
   burst is gathered while the previous Report is in flight or within that interval.
   With nothing to report, an empty batch is sent every ``keepalive`` seconds (the
   controller ends the flows of a host silent for ``gc_timeout_s``, 30 s by default).
   ReportAck.acked_seq removes acknowledged events; rejections are logged and kept
   in ``rejections`` (they are acknowledged too — resending would not help).
   ReportAck.levels (the controller's level for this host's flows started or
   re-levelled since the previous ack) go to ``on_levels`` as (flow id, level) pairs; the
   pacing rates among them (FlowLevel.rate: bytes/s, 0 = unpaced) to ``on_rates`` as
   (flow id, rate) pairs.
3. Any RPC failure (controller down, unknown session after a controller restart,
   wrong token) drops the session; the thread retries Register with exponential
   backoff (``backoff_min`` .. ``backoff_max``) and resends the backlog with the
   **same** seq numbers. Nothing is lost and nothing is applied twice; the agent's
   traffic keeps flowing meanwhile (reporting never blocks the data path).

4. A controller that lost its state (restarted — and maybe the switch too, so it adopted
   nothing): Register answers a ``last_seq`` *below* what this host had seen acknowledged.
   Resending the backlog is not enough then — the flows, requests and batches started and
   acknowledged before are unknown to it (their events would be refused as ``unknown_flow``,
   their flows left without entries, their batches unranked). So the reporter keeps the host's
   state **as the controller acknowledged it** (live requests, live flows with their progress,
   the current layer of those requests, active batches — built from acknowledged events, not
   rejected ones; a flow whose ``flow_end`` is still in the backlog is live to the controller)
   and **re-announces** it: ``request_start``, ``batch`` arrival, ``flow_start`` (+ ``progress``)
   and ``layer`` events, ahead of the backlog (the backlog is renumbered after them; nothing of
   it was applied by the new controller), which then applies on top of it. A re-announcement
   still unacknowledged at a further reset is replaced by a fresh one.

The backlog is bounded (``max_backlog``); beyond it the oldest Progress events are
dropped first (they are superseded by later progress or FlowEnd), then the call fails.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import grpc

from mfs.proto import report_pb2, report_pb2_grpc

log = logging.getLogger("mfs.hostagent.report")

EVENT_KINDS = ("flow_start", "layer", "progress", "flow_end", "request_start", "request_end", "batch")


class BacklogFull(RuntimeError):
    pass


@dataclass(frozen=True, slots=True)
class Registration:
    session: str
    host_id: int
    flow_id_base: int
    flow_id_bits: int
    last_seq: int
    server_time: float


def channel_target(target: str) -> str:
    """Validate a controller target: ``unix:/path`` / ``unix:///path`` or ``host:port``."""
    if target.startswith("unix:"):
        path = target[len("unix:"):]
        if not path.lstrip("/"):
            raise ValueError(f"controller target {target!r}: unix socket path is empty")
        return target
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"controller target {target!r} is neither unix:/path nor host:port")
    return target


class Reporter:
    def __init__(self, target: str, host: str, token: str, address: str, *, batch_max: int = 256,
                 flush_interval: float = 0.005, backoff_min: float = 0.05, backoff_max: float = 2.0,
                 rpc_timeout: float = 2.0, max_backlog: int = 1_000_000, keepalive: float = 10.0,
                 on_register: Callable[[Registration], None] | None = None,
                 on_levels: Callable[[list[tuple[int, int]]], None] | None = None,
                 on_rates: Callable[[list[tuple[int, float]]], None] | None = None):
        if batch_max < 1:
            raise ValueError(f"batch_max={batch_max} must be >= 1")
        if not keepalive > 0:
            raise ValueError(f"keepalive={keepalive!r} must be > 0 seconds (at most the controller's gc_timeout_s / 3)")
        self.target = channel_target(target)
        self.host, self.token, self.address = host, token, address
        self.batch_max, self.flush_interval = batch_max, flush_interval
        self.backoff_min, self.backoff_max, self.rpc_timeout = backoff_min, backoff_max, rpc_timeout
        self.max_backlog = max_backlog
        self.keepalive = keepalive
        self._last_send = 0.0  # monotonic time of the last Report (keep-alives included)
        self._last_batch = -1e9  # ... of the last Report that carried events
        self.on_register = on_register
        self.on_levels = on_levels
        self.on_rates = on_rates
        self._cv = threading.Condition()
        self._backlog: deque[report_pb2.Event] = deque()
        self._next_seq = 1
        self._reset_last_seq = 0
        self._ever_registered = False
        self._session: str | None = None
        self._stop = False
        self._thread: threading.Thread | None = None
        self._channel: grpc.Channel | None = None
        self.registration: Registration | None = None
        self.acked_seq = 0
        self.rejections: deque[tuple[int, str]] = deque(maxlen=1000)
        self.stats = {"batches": 0, "events_sent": 0, "events_acked": 0, "rejected": 0, "registers": 0,
                      "rpc_errors": 0, "dropped_progress": 0, "resent": 0, "keepalives": 0, "levels": 0,
                      "controller_resets": 0, "reannounced": 0}
        # the host's live state as the controller acknowledged it (re-announced to a controller
        # that lost it), from acknowledged events that were not rejected
        self._live_reqs: dict[int, report_pb2.RequestStart] = {}  # request id -> its request_start
        self._live_flows: dict[int, report_pb2.FlowStart] = {}  # flow id -> its flow_start
        self._flow_bytes: dict[int, int] = {}  # flow id -> last progress
        # requests by (owner, request id): owner "" = this host's own (request ids are per host,
        # so a peer's request 5 is not this host's request 5)
        self._req_flows: dict[tuple[str, int], set[int]] = {}  # -> live flow ids
        self._req_layer: dict[tuple[str, int], tuple[int, bool]] = {}  # -> (layer, prefill done), live ones
        self._active_batches: set[int] = set()  # batch ids whose arrival (and no departure) was acked
        self._reann_upto = 0  # seq of the last re-announced event (those at the backlog's head up to it)
        self.last_error: str = ""
        self.registered = threading.Event()

    # ---- producer side ---------------------------------------------------
    def emit(self, event: str, /, **fields) -> int:
        """Queue one event (``event`` one of EVENT_KINDS, ``fields`` of that message). Returns its seq."""
        if event not in EVENT_KINDS:
            raise ValueError(f"event kind {event!r} is not one of {EVENT_KINDS}")
        ev = report_pb2.Event(time=time.time(), **{event: fields})
        with self._cv:
            if len(self._backlog) >= self.max_backlog:
                self._shed()
            ev.seq = self._next_seq
            self._next_seq += 1
            self._backlog.append(ev)
            self._cv.notify()
            return ev.seq

    def _req_key(self, owner: str, rid: int) -> tuple[str, int]:
        return ("" if owner == self.host else owner, rid)

    def _acked(self, ev: report_pb2.Event) -> None:
        """``ev`` is acknowledged (applied, not rejected): keep the live state (caller holds the lock)."""
        kind = ev.WhichOneof("kind")
        if kind == "flow_start":
            f = self._live_flows[ev.flow_start.flow_id] = report_pb2.FlowStart()
            f.CopyFrom(ev.flow_start)
            self._req_flows.setdefault(self._req_key(f.owner, f.request_id), set()).add(f.flow_id)
            self._flow_bytes.pop(f.flow_id, None)
        elif kind == "progress":
            if ev.progress.flow_id in self._live_flows:
                self._flow_bytes[ev.progress.flow_id] = ev.progress.bytes_sent
        elif kind == "flow_end":
            fid = ev.flow_end.flow_id
            fs = self._live_flows.pop(fid, None)
            self._flow_bytes.pop(fid, None)
            if fs is not None:
                key = self._req_key(fs.owner, fs.request_id)
                s = self._req_flows.get(key)
                if s is not None:
                    s.discard(fid)
                    if not s:
                        del self._req_flows[key]
                        if key[0] or key[1] not in self._live_reqs:
                            self._req_layer.pop(key, None)
        elif kind == "request_start":
            f = self._live_reqs[ev.request_start.request_id] = report_pb2.RequestStart()
            f.CopyFrom(ev.request_start)
        elif kind == "request_end":
            rid = ev.request_end.request_id
            self._live_reqs.pop(rid, None)
            if ("", rid) not in self._req_flows:
                self._req_layer.pop(("", rid), None)
        elif kind == "layer":
            key = self._req_key(ev.layer.owner, ev.layer.request_id)
            if (not key[0] and key[1] in self._live_reqs) or key in self._req_flows:
                layer, done = self._req_layer.get(key, (0, False))
                self._req_layer[key] = (max(layer, ev.layer.current_layer), done or ev.layer.prefill_done)
        elif kind == "batch":
            if ev.batch.kind == "arrival":
                self._active_batches.add(ev.batch.batch_id)
            elif ev.batch.kind == "departure":
                self._active_batches.discard(ev.batch.batch_id)

    def live_state(self) -> dict[str, int]:
        """The host's live requests, flows and active batches as the controller acknowledged them."""
        with self._cv:
            return {"requests": len(self._live_reqs), "flows": len(self._live_flows),
                    "batches": len(self._active_batches)}

    def _reannounce(self, last_seq: int) -> None:
        """The controller lost this host's state: put the live state it had acknowledged ahead of
        the backlog (in place of an earlier re-announcement still in it), renumbering everything
        from ``last_seq + 1`` (caller holds the lock; no Report is in flight: this runs on the
        reporting thread)."""
        while self._backlog and self._backlog[0].seq <= self._reann_upto:
            self._backlog.popleft()  # an unacknowledged re-announcement: made again below
        now = time.time()
        out = [report_pb2.Event(time=now, request_start=f) for f in self._live_reqs.values()]
        out += [report_pb2.Event(time=now, batch={"batch_id": bid, "kind": "arrival"}) for bid in self._active_batches]
        for fid, f in self._live_flows.items():
            out.append(report_pb2.Event(time=now, flow_start=f))
            if self._flow_bytes.get(fid):
                out.append(report_pb2.Event(time=now, progress={"flow_id": fid, "bytes_sent": self._flow_bytes[fid]}))
        for (owner, rid), (layer, done) in self._req_layer.items():
            out.append(report_pb2.Event(time=now, layer={"request_id": rid, "current_layer": layer,
                                                         "prefill_done": done, "owner": owner}))
        seq = last_seq
        for e in out + list(self._backlog):
            seq += 1
            e.seq = seq
        self._backlog = deque(out + list(self._backlog))
        self._reann_upto = last_seq + len(out)
        self._next_seq = seq + 1
        self._reset_last_seq = seq
        self.stats["controller_resets"] += 1
        self.stats["reannounced"] += len(out)
        log.warning("%s: the controller lost this host's state (last_seq %d < acked %d): re-announcing %d events "
                    "(its live requests, batches and flows)", self.host, last_seq, self.acked_seq, len(out))

    def _shed(self) -> None:
        for i, e in enumerate(self._backlog):
            if e.WhichOneof("kind") == "progress" and (self._session is None or i >= self.batch_max):
                del self._backlog[i]
                self.stats["dropped_progress"] += 1
                return
        raise BacklogFull(f"report backlog full ({self.max_backlog} events) and controller unreachable")

    def backlog(self) -> int:
        with self._cv:
            return len(self._backlog)

    def wait_registered(self, timeout: float | None = None) -> bool:
        """Block until the first successful registration (True) or ``timeout`` seconds (False)."""
        return self.registered.wait(timeout)

    @property
    def connected(self) -> bool:
        return self._session is not None

    # ---- lifecycle -------------------------------------------------------
    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name=f"mfs-report-{self.host}", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 5.0) -> bool:
        """Wait until every event emitted so far is acknowledged."""
        end = time.monotonic() + timeout
        with self._cv:
            target, resets = self._next_seq - 1, self.stats["controller_resets"]
            while self.acked_seq < target or self._backlog and self._backlog[0].seq <= target:
                if self.stats["controller_resets"] != resets:  # renumbered: wait for all that was there then
                    target, resets = self._reset_last_seq, self.stats["controller_resets"]
                    continue
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self._cv.wait(min(left, 0.05))
        return True

    def close(self, flush_timeout: float = 1.0) -> None:
        if self._thread is not None and flush_timeout > 0:
            self.flush(flush_timeout)
        with self._cv:
            self._stop = True
            self._cv.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5)
        if self._channel is not None:
            self._channel.close()

    # ---- the reporting thread -------------------------------------------
    def _stub(self) -> report_pb2_grpc.HostReportsStub:
        if self._channel is None:
            self._channel = grpc.insecure_channel(self.target)
        return report_pb2_grpc.HostReportsStub(self._channel)

    def _sleep(self, seconds: float) -> bool:
        with self._cv:
            if not self._stop:
                self._cv.wait(seconds)
            return not self._stop

    def _register(self) -> None:
        r = self._stub().Register(report_pb2.RegisterRequest(host=self.host, token=self.token, address=self.address),
                                  timeout=self.rpc_timeout)
        reg = Registration(r.session, r.host_id, r.flow_id_base, r.flow_id_bits, r.last_seq, r.server_time)
        with self._cv:
            if not self._ever_registered:
                shift = reg.last_seq
                for e in self._backlog:
                    e.seq += shift
                self._next_seq += shift
                self._ever_registered = True
            elif reg.last_seq < self.acked_seq:
                self._reannounce(reg.last_seq)
                self.acked_seq = reg.last_seq
            while self._backlog and self._backlog[0].seq <= reg.last_seq:
                self._acked(self._backlog.popleft())  # applied (its ack was lost)
            self.stats["resent"] += len(self._backlog) if self.stats["registers"] else 0
            self.acked_seq = max(self.acked_seq, reg.last_seq)
            self._session = reg.session
            self.registration = reg
            self.stats["registers"] += 1
            self._cv.notify_all()
        log.info("%s registered with %s: host_id=%d flow ids %d/+2^%d last_seq=%d", self.host, self.target,
                 reg.host_id, reg.flow_id_base, reg.flow_id_bits, reg.last_seq)
        if self.on_register is not None:
            self.on_register(reg)  # before waiters wake: they must see the new flow-id range
        self.registered.set()

    def _run(self) -> None:
        backoff = self.backoff_min
        while True:
            with self._cv:
                if self._stop:
                    return
            if self._session is None:
                try:
                    self._register()
                    backoff = self.backoff_min
                except grpc.RpcError as e:
                    self._rpc_failed("Register", e)
                    if not self._sleep(backoff):
                        return
                    backoff = min(self.backoff_max, backoff * 2)
                    continue
            with self._cv:
                if not self._backlog and not self._stop:
                    self._cv.wait(min(0.5, max(0.0, self._last_send + self.keepalive - time.monotonic())))
                if self._stop:
                    return
                if not self._backlog and time.monotonic() < self._last_send + self.keepalive:
                    continue
                gap = self._last_batch + self.flush_interval - time.monotonic()
                if self._backlog and len(self._backlog) < self.batch_max and gap > 0:
                    self._cv.wait(gap)  # batches at most every flush_interval: let a burst join
                n = min(self.batch_max, len(self._backlog))
                events = [self._backlog[i] for i in range(n)]
                session = self._session
                self._last_send = time.monotonic()
                if events:
                    self._last_batch = self._last_send
                else:
                    self.stats["keepalives"] += 1
            try:
                ack = self._stub().Report(report_pb2.ReportBatch(session=session, events=events),
                                          timeout=self.rpc_timeout)
            except grpc.RpcError as e:
                self._rpc_failed("Report", e)
                with self._cv:
                    self._session = None
                if not self._sleep(backoff):
                    return
                backoff = min(self.backoff_max, backoff * 2)
                continue
            self.stats["batches"] += 1
            self.stats["events_sent"] += len(events)
            with self._cv:
                rejected = set()
                for rej in ack.rejected:
                    rejected.add(rej.seq)
                    self.rejections.append((rej.seq, rej.reason))
                    self.stats["rejected"] += 1
                    log.warning("%s: controller rejected event seq=%d: %s", self.host, rej.seq, rej.reason)
                while self._backlog and self._backlog[0].seq <= ack.acked_seq:
                    ev = self._backlog.popleft()
                    if ev.seq not in rejected:
                        self._acked(ev)
                    self.stats["events_acked"] += 1
                self.acked_seq = max(self.acked_seq, ack.acked_seq)
                self.stats["levels"] += len(ack.levels)
                self._cv.notify_all()
            if ack.levels and self.on_levels is not None:
                try:
                    self.on_levels([(fl.flow_id, fl.level) for fl in ack.levels])
                except Exception:  # noqa: BLE001 - a consumer bug must not stop reporting
                    log.exception("%s: levels callback failed", self.host)
                rates = [(fl.flow_id, fl.rate) for fl in ack.levels if fl.HasField("rate")]
                if rates and self.on_rates is not None:
                    try:
                        self.on_rates(rates)
                    except Exception:  # noqa: BLE001
                        log.exception("%s: rates callback failed", self.host)

    def _rpc_failed(self, what: str, e: grpc.RpcError) -> None:
        self.stats["rpc_errors"] += 1
        code = e.code() if hasattr(e, "code") else None
        self.last_error = f"{what}: {code.name if code else ''} {e.details() if hasattr(e, 'details') else e}"
        with self._cv:
            self._session = None
        if code == grpc.StatusCode.UNAUTHENTICATED or code == grpc.StatusCode.PERMISSION_DENIED:
            log.error("%s: controller refused %s: %s (check the token)", self.host, what, self.last_error)
        else:
            log.debug("%s: %s failed: %s", self.host, what, self.last_error)
