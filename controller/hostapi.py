"""HostReports gRPC server (mfs/proto/report.proto): authentication, validation, flood control.

Semantics are documented in docs/report-api.md. In short:

* Register(host, token, address) must match the config (constant-time token
  compare); returns a fresh session, the host's flow-id range and the last seq
  the controller applied for that host (0 after a controller restart).
* Report(session, events): events with seq <= the last accepted one are
  duplicates (acknowledged, ignored); seq must increase within a batch.
  Stateless checks happen here (types, ranges, ownership of the flow-id
  range); stateful ones (unknown flow, duplicate start) in the engine. Each
  rejected event appears in ReportAck.rejected with "<reason>: <message>" and
  is counted per reason. The call returns once the batch is applied (its
  promotions written to the switches). ReportAck.levels carries the level of
  every flow of this host started or re-levelled since its previous ack
  (Engine.take_levels), so the host's send queue can follow the schedule.
* Flood control: a per-host token bucket (events/s, burst) and a bounded
  per-host queue of pending batches; beyond them the whole batch fails with
  RESOURCE_EXHAUSTED (nothing applied: retry later with the same seqs).
* Transport: bytes that do not parse as the RPC's message answer INVALID_ARGUMENT with one
  log line (repeats rate-limited); a connection must finish its HTTP/2 preface within
  ``limits.handshake_timeout_s`` and is closed after ``limits.idle_timeout_s`` without RPCs;
  at most ``limits.max_connections`` connections are held, at most
  ``limits.max_connections_per_peer`` of them from one peer (controller/connguard.py; the rest
  are refused at once).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import math
import secrets
import time
from dataclasses import dataclass, field

import grpc
from google.protobuf.message import DecodeError

from controller.config import ControllerConfig, HostConfig
from controller.connguard import ConnGuard
from controller.engine import Engine
from controller.engine import Reject as Bad
from controller.metrics import Metrics
from mfs.header import VALID_STAGES
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg

log = logging.getLogger("mfs.hostapi")

MAX_DST_LEN = 253
VALIDATE_SLICE = 512  # events checked between two turns of the event loop
BATCH_KINDS = ("arrival", "departure")


@dataclass
class HostSession:
    cfg: HostConfig
    session: str
    accepted_seq: int  # highest seq accepted into the engine queue
    tokens: float
    t_tokens: float
    flow_base: int
    # the host's (shared by its sessions): its batches are checked and queued one at a time, in
    # arrival order (the checks of a big batch yield to the event loop: another batch of the
    # host, or a Register computing what was accepted, must not come in between)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class TokenBucket:
    @staticmethod
    def take(s: HostSession, n: int, rate: float, burst: float, now: float) -> bool:
        s.tokens = min(burst, s.tokens + (now - s.t_tokens) * rate)
        s.t_tokens = now
        if n > s.tokens:
            return False
        s.tokens -= n
        return True


class LogLimiter:
    """One log line per ``key`` per ``interval`` seconds; the next says how many were suppressed."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0):
        self.log, self.interval = logger, interval
        self._last: dict[str, float] = {}
        self._suppressed: dict[str, int] = {}

    def warning(self, key: str, msg: str, *args) -> bool:
        now = time.monotonic()
        if now - self._last.get(key, -1e18) < self.interval:
            self._suppressed[key] = self._suppressed.get(key, 0) + 1
            return False
        self._last[key] = now
        n = self._suppressed.pop(key, 0)
        self.log.warning(msg + (f" ({n} more like this suppressed in the last {self.interval:g} s)" if n else ""),
                         *args)
        return True


def server_options(lim) -> list[tuple[str, int]]:
    """gRPC server options bounding what a connection may hold (limits.*)."""
    return [("grpc.so_reuseport", 0),
            # the guard in front (controller/connguard.py) holds at most max_connections; gRPC may see
            # a closed one a moment after the guard has freed its slot
            ("grpc.max_allowed_incoming_connections", 2 * lim.max_connections),
            ("grpc.server_handshake_timeout_ms", int(lim.handshake_timeout_s * 1000)),
            ("grpc.http2.settings_timeout", int(lim.handshake_timeout_s * 1000)),
            ("grpc.max_connection_idle_ms", int(lim.idle_timeout_s * 1000))]


class HostApi(pbg.HostReportsServicer):
    def __init__(self, cfg: ControllerConfig, engine: Engine, metrics: Metrics | None = None):
        self.cfg, self.engine = cfg, engine
        self.metrics = metrics or engine.metrics
        self.by_session: dict[str, HostSession] = {}
        self.by_host: dict[str, HostSession] = {}
        self.host_locks: dict[str, asyncio.Lock] = {}
        self.server: grpc.aio.Server | None = None
        self.guard: ConnGuard | None = None
        self.port = 0
        self.limited = LogLimiter(log)

    # ------------------------------------------------------------------ server
    async def start(self, address: str | None = None) -> int:
        """Serve on ``address`` (or ``api.listen``): the connection guard listens there and relays
        to the gRPC server on a private unix socket. Returns the TCP port (0 for a unix socket)."""
        lim = self.cfg.limits
        self.server = grpc.aio.server(options=server_options(lim))
        self.server.add_generic_rpc_handlers((self._handlers(),))
        guard = ConnGuard(address or self.cfg.api_listen, lim.max_connections, lim.max_connections_per_peer,
                          self.metrics, self.limited)
        if self.server.add_insecure_port(guard.backend) == 0:
            guard.remove()
            raise OSError(f"host API: gRPC cannot listen on {guard.backend}")
        await self.server.start()
        try:
            self.port = await guard.start()
        except BaseException:
            await self.server.stop(0)
            guard.remove()
            raise
        self.guard = guard
        return self.port

    async def stop(self) -> None:
        if self.guard is not None:
            await self.guard.stop()  # no new connections
        if self.server is not None:
            await self.server.stop(0.5)  # closes the relayed ones
            self.server = None
        if self.guard is not None:
            self.guard.remove()
            self.guard = None

    def _handlers(self) -> grpc.GenericRpcHandler:
        """The HostReports methods, each parsing its own request: bytes that are not the message
        answer INVALID_ARGUMENT (gRPC's own deserializer answers UNKNOWN and logs a traceback),
        and an unexpected error is one rate-limited log line, INTERNAL."""
        def wrap(name, method, req_type, resp_type):
            async def handler(raw: bytes, context):
                try:
                    request = req_type.FromString(raw)
                except (DecodeError, ValueError) as e:
                    self._reject_rpc("decode")
                    peer = self.guard.peer_of(context.peer()) if self.guard is not None else context.peer()
                    self.limited.warning("decode", "host API %s: %d bytes from %s are not a %s (%s)", name,
                                         len(raw), peer, req_type.DESCRIPTOR.name, e)
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                        f"{name}: the request is not a valid {req_type.DESCRIPTOR.full_name}")
                try:
                    return await method(request, context)
                except (grpc.aio.AbortError, asyncio.CancelledError):
                    raise
                except Exception as e:  # noqa: BLE001 - a bug: one line, not a traceback per call
                    self._reject_rpc("internal")
                    self.limited.warning("internal", "host API %s failed: %s: %s", name, type(e).__name__, e)
                    await context.abort(grpc.StatusCode.INTERNAL, f"{name}: internal error ({type(e).__name__})")
            return grpc.unary_unary_rpc_method_handler(handler, request_deserializer=None,
                                                       response_serializer=resp_type.SerializeToString)
        return grpc.method_handlers_generic_handler("mfs.report.v1.HostReports", {
            "Register": wrap("Register", self.Register, pb.RegisterRequest, pb.RegisterResponse),
            "Report": wrap("Report", self.Report, pb.ReportBatch, pb.ReportAck)})

    def _reject_rpc(self, reason: str) -> None:
        self.metrics.count("rejected_reports", reason=reason)

    # ------------------------------------------------------------------ RPCs
    async def Register(self, request: pb.RegisterRequest, context) -> pb.RegisterResponse:
        h = self.cfg.host(request.host)
        if h is None or not hmac.compare_digest(h.token.encode(), request.token.encode()) \
                or h.address != request.address:
            self._reject_rpc("auth")
            # one message for every mismatch: do not reveal which part was wrong
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                f"register: host {request.host!r} with this token and address is not configured")
        lock = self.host_locks.setdefault(h.name, asyncio.Lock())
        async with lock:
            old = self.by_host.get(h.name)
            if old is not None:
                self.by_session.pop(old.session, None)
            last = self.engine.last_applied_seq.get(h.name, 0)
            accepted = max(last, old.accepted_seq) if old is not None else last  # batches may still be queued
            # the token bucket belongs to the host, not the session: registering again does not refill it
            tokens, t_tokens = (old.tokens, old.t_tokens) if old is not None else (self.cfg.limits.burst,
                                                                                  time.monotonic())
            s = HostSession(h, secrets.token_hex(16), accepted, tokens, t_tokens,
                            h.host_id << self.cfg.limits.flow_id_bits, lock)
            self.by_session[s.session] = s
            self.by_host[h.name] = s
        self.engine.touch(h.name)
        self.metrics.count("registrations", host=h.name)
        return pb.RegisterResponse(session=s.session, host_id=h.host_id, flow_id_base=s.flow_base,
                                   flow_id_bits=self.cfg.limits.flow_id_bits, last_seq=last,
                                   server_time=time.time())

    async def Report(self, request: pb.ReportBatch, context) -> pb.ReportAck:
        t_recv = time.perf_counter()
        s = self.by_session.get(request.session)
        if s is None:
            self._reject_rpc("session")
            await context.abort(grpc.StatusCode.UNAUTHENTICATED,
                                "report: unknown or expired session (Register again)")
        lim = self.cfg.limits
        n = len(request.events)
        if n > lim.max_batch_events:
            self._reject_rpc("batch_too_large")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"report: {n} events in one batch (limit {lim.max_batch_events})")
        if not TokenBucket.take(s, max(1, n), lim.reports_per_s, lim.burst, time.monotonic()):
            self._reject_rpc("flood")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"report: host {s.cfg.name} exceeds {lim.reports_per_s:g} events/s "
                                f"(burst {lim.burst:g}); batch not applied, retry later")
        if self.engine.pending(s.cfg.name) >= lim.queue_batches:
            self._reject_rpc("queue_full")
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED,
                                f"report: host {s.cfg.name} has {lim.queue_batches} batches pending; "
                                f"batch not applied, retry later")
        async with s.lock:
            rejected, accepted = await self._check(s, request)
            fut = self.engine.submit(s.cfg.name, accepted, t_recv) if accepted else None
        if fut is not None:
            rejected.extend(await fut)
        else:
            self.engine.touch(s.cfg.name)
        rejected.sort()
        ack = pb.ReportAck(acked_seq=s.accepted_seq)
        for seq, msg in rejected:
            ack.rejected.add(seq=seq, reason=msg)
        for fid, lvl, rate in self.engine.take_levels(s.cfg.name):
            fl = ack.levels.add(flow_id=fid, level=lvl)
            if rate is not None:
                fl.rate = rate
        return ack

    # ------------------------------------------------------------------ validation
    async def _check(self, s: HostSession, request: pb.ReportBatch) -> tuple[list, list]:
        """Seq order and stateless checks of a batch: (rejected (seq, message), accepted events)."""
        rejected: list[tuple[int, str]] = []
        accepted = []
        last = s.accepted_seq
        now = time.time()
        for i, ev in enumerate(request.events):
            if i and not i % VALIDATE_SLICE:
                await asyncio.sleep(0)  # a big batch's checks must not hold the event loop
            if ev.seq <= s.accepted_seq:
                self.metrics.count("duplicate_events", host=s.cfg.name)
                continue  # already applied: ack, ignore
            if ev.seq <= last:
                rejected.append((ev.seq, f"seq_order: seq {ev.seq} after {last} in the same batch "
                                         f"(seq must strictly increase)"))
                self.metrics.count("rejected_reports", reason="seq_order")
                continue
            last = ev.seq
            try:
                self.validate(s, ev, now)
                accepted.append(ev)
            except Bad as b:
                rejected.append((ev.seq, str(b)))
                self.metrics.count("rejected_reports", reason=b.reason)
        s.accepted_seq = last
        return rejected, accepted

    def validate(self, s: HostSession, ev: pb.Event, now: float) -> None:
        lim = self.cfg.limits
        kind = ev.WhichOneof("kind")
        if kind is None:
            raise Bad("no_kind", f"event seq {ev.seq} carries no event (set one of flow_start, layer, progress, "
                                 f"flow_end, request_start, request_end, batch)")
        if not math.isfinite(ev.time) or ev.time < 0:
            raise Bad("bad_time", f"time={ev.time!r} is not a finite unix time")
        if kind == "flow_start":
            f = ev.flow_start
            self._own(s, f.flow_id)
            if f.stage not in VALID_STAGES:
                raise Bad("bad_stage", f"flow_start.stage={f.stage} is not one of {VALID_STAGES}")
            if not 1 <= f.size_bytes <= lim.max_flow_bytes:
                raise Bad("bad_size", f"flow_start.size_bytes={f.size_bytes} is out of range "
                                      f"(allowed: 1..{lim.max_flow_bytes})")
            if f.deadline != 0:
                self._deadline("flow_start.deadline", f.deadline, now)
            for name in ("target_layer", "current_layer"):
                v = getattr(f, name)
                if not 0 <= v <= lim.max_layers:
                    raise Bad("bad_layer", f"flow_start.{name}={v} is out of range (allowed: 0..{lim.max_layers})")
            if len(f.dst) > MAX_DST_LEN:
                raise Bad("bad_dst", f"flow_start.dst is {len(f.dst)} characters (limit {MAX_DST_LEN})")
            self._owner("flow_start", f.owner)
        elif kind == "progress":
            self._own(s, ev.progress.flow_id)
            if ev.progress.bytes_sent > lim.max_flow_bytes:
                raise Bad("bad_bytes", f"progress.bytes_sent={ev.progress.bytes_sent} exceeds {lim.max_flow_bytes}")
        elif kind == "flow_end":
            self._own(s, ev.flow_end.flow_id)
        elif kind == "layer":
            if not 0 <= ev.layer.current_layer <= lim.max_layers:
                raise Bad("bad_layer", f"layer.current_layer={ev.layer.current_layer} is out of range "
                                       f"(allowed: 0..{lim.max_layers})")
            self._owner("layer", ev.layer.owner)
        elif kind == "request_start":
            r = ev.request_start
            self._deadline("request_start.deadline", r.deadline, now)
            if not math.isfinite(r.arrival) or r.arrival < 0:
                raise Bad("bad_time", f"request_start.arrival={r.arrival!r} is not a finite unix time")
            if not 1 <= r.num_layers <= lim.max_layers:
                raise Bad("bad_layer", f"request_start.num_layers={r.num_layers} is out of range "
                                       f"(allowed: 1..{lim.max_layers})")
            if not math.isfinite(r.remaining_compute) or not 0 <= r.remaining_compute <= lim.deadline_future_s:
                raise Bad("bad_time", f"request_start.remaining_compute={r.remaining_compute!r} is out of range "
                                      f"(allowed: 0..{lim.deadline_future_s:g} s)")
            if r.remaining_bytes > lim.max_flow_bytes:
                raise Bad("bad_size", f"request_start.remaining_bytes={r.remaining_bytes} exceeds {lim.max_flow_bytes}")
            if len(r.peers) > len(self.cfg.hosts):
                raise Bad("bad_peer", f"request_start.peers names {len(r.peers)} hosts "
                                      f"(only {len(self.cfg.hosts)} are configured)")
            for p in r.peers:
                if self.cfg.host(p) is None:
                    raise Bad("bad_peer", f"request_start.peers: {p[:64]!r} is not a configured host")
        elif kind == "batch":
            if ev.batch.kind not in BATCH_KINDS:
                raise Bad("bad_kind", f"batch.kind={ev.batch.kind!r} is not allowed (allowed: {', '.join(BATCH_KINDS)})")

    def _owner(self, what: str, owner: str) -> None:
        if owner and self.cfg.host(owner) is None:
            raise Bad("bad_peer", f"{what}.owner: {owner[:64]!r} is not a configured host")

    def _own(self, s: HostSession, flow_id: int) -> None:
        base, bits = s.flow_base, self.cfg.limits.flow_id_bits
        if not base <= flow_id < base + (1 << bits):
            raise Bad("not_owner", f"flow_id {flow_id} is outside host {s.cfg.name}'s range "
                                   f"[{base}, {base + (1 << bits)})")

    def _deadline(self, what: str, v: float, now: float) -> None:
        lim = self.cfg.limits
        if not math.isfinite(v):
            raise Bad("bad_deadline", f"{what}={v!r} is not finite")
        if v < now - lim.deadline_past_s:
            raise Bad("bad_deadline", f"{what}={v:.3f} is {now - v:.0f} s in the past "
                                      f"(limit {lim.deadline_past_s:g} s; clocks in sync?)")
        if v > now + lim.deadline_future_s:
            raise Bad("bad_deadline", f"{what}={v:.3f} is {v - now:.0f} s in the future "
                                      f"(limit {lim.deadline_future_s:g} s)")
