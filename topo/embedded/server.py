"""P4Runtime server of the embedded switch (gRPC, finsy's generated stubs).

    h = start_server(address="127.0.0.1:0", device_id=1)
    h.address, h.port, h.switch.process(in_port, frame), h.restart(), h.stop()

Semantics follow PI (the P4Runtime server of bmv2) where the spec leaves room:
CONTINUE_ON_ERROR only, per-update errors as ``google.rpc.Status`` (code UNKNOWN)
with one ``p4.v1.Error`` per update in the ``grpc-status-details-bin`` trailer,
FAILED_PRECONDITION before a pipeline is set, PERMISSION_DENIED for a Write
that does not carry the primary's election id. Arbitration follows the spec:
per role, the primary is the client whose election id equals the highest one
ever received for that role; when it leaves there is no primary until a
client arrives with an election id >= that one; a client that sets no election id
is a backup (P4Runtime 1.4 §5), any number of them. See docs/embedded-switch.md.

The server is grpc.aio on one event-loop thread: a stream costs no thread, so
clients that open streams and never arbitrate cannot starve the others (they are
closed after ``arbitration_timeout_s``). Unary RPCs run in a small thread pool.
Each stream queues at most ``DIGEST_QUEUE`` digest lists for a client that does
not read; beyond that the oldest is dropped, counted and forgotten (its data is
digested again when seen again).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import threading
import time
from concurrent import futures
from pathlib import Path

import grpc
from finsy.proto import p4d, p4i, p4r, p4r_grpc, rpc_code, rpc_status
from google.protobuf import any_pb2

from mfs.p4info import DEFAULT_P4INFO, P4InfoError, P4Schema, decode
from topo.embedded.idle import IdleNotifier
from topo.embedded.pipeline import CPU_PORT, EntityError, Pipeline

log = logging.getLogger("mfs.switch.p4rt")
Code = rpc_code.Code
API_VERSION = "1.4.1"
READ_BATCH = 1000  # entities per streamed ReadResponse
DIGEST_QUEUE = 1024  # digest lists queued per stream (client not reading): beyond, the oldest is dropped
CONTROL_QUEUE = 4096  # other messages queued per stream: beyond, none is queued and the next one the
#                      stream sends is RESOURCE_EXHAUSTED (the stream ends as soon as the client reads)
MAX_UNACKED = 4096  # digest lists sent and not acknowledged: beyond, the oldest is forgotten
ARBITRATION_TIMEOUT_S = 10.0  # a stream must arbitrate within this time

_GRPC_CODE = {c.value[0]: c for c in grpc.StatusCode}


class RpcAbort(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


def _eid(e: p4r.Uint128) -> tuple[int, int]:
    return (e.high, e.low)


# ---------------------------------------------------------------- P4Info matching
def p4info_mismatch(ours: p4i.P4Info, theirs: p4i.P4Info) -> str | None:
    """First difference (names, ids, fields, widths) between two P4Infos, or None."""

    def sig(info: p4i.P4Info) -> list[tuple[str, str, tuple]]:
        out = []
        for t in info.tables:
            fields = tuple((f.id, f.name, f.bitwidth, f.match_type) for f in t.match_fields)
            out.append(("table", t.preamble.name, (t.preamble.id, fields, tuple(sorted(r.id for r in t.action_refs)))))
        for a in info.actions:
            out.append(("action", a.preamble.name, (a.preamble.id, tuple((p.id, p.name, p.bitwidth) for p in a.params))))
        for c in info.counters:
            out.append(("counter", c.preamble.name, (c.preamble.id, c.size)))
        for r in info.registers:
            out.append(("register", r.preamble.name, (r.preamble.id, r.size)))
        for d in info.digests:
            out.append(("digest", d.preamble.name, (d.preamble.id,)))
        return out

    a = {(k, n): v for k, n, v in sig(ours)}
    b = {(k, n): v for k, n, v in sig(theirs)}
    for key, v in a.items():
        if key not in b:
            return f"{key[0]} {key[1]} of the switch program is missing from the P4Info"
        if b[key] != v:
            return f"{key[0]} {key[1]} differs from the switch program (ids, fields or widths): {b[key]} != {v}"
    for key in b:
        if key not in a:
            return f"{key[0]} {key[1]} is not part of the switch program"
    return None


# ---------------------------------------------------------------- stream connections
class Connection:
    """One StreamChannel. ``send``/``send_digest`` may be called from any thread; the stream's
    handler (on the event loop) takes the messages in order with ``next``. At most DIGEST_QUEUE
    digest lists wait: beyond, the oldest is dropped."""

    def __init__(self, peer: str, loop: asyncio.AbstractEventLoop):
        self.peer, self.loop = peer, loop
        self.role: str | None = None
        self.election: tuple[int, int] | None = None  # None: no election id (a backup)
        self.arbitrated = False
        self.closed = False
        self.overflowed = False  # CONTROL_QUEUE exceeded: nothing more is queued, the next message closes it
        self.digests_dropped = 0
        self.queue_max = 0  # most digest lists ever queued at once
        self._lock = threading.Lock()
        self._q: collections.deque = collections.deque()
        self._ndig = 0  # digest lists in _q
        self._wake = asyncio.Event()

    def _notify(self) -> None:
        try:
            self.loop.call_soon_threadsafe(self._wake.set)
        except RuntimeError:  # event loop already closed (server stopped)
            pass

    def send(self, msg) -> None:
        """A StreamMessageResponse, an RpcAbort (close the stream with it) or None (end the stream)."""
        with self._lock:
            if self.closed:
                return
            if self.overflowed:
                return
            overflow = len(self._q) - self._ndig >= CONTROL_QUEUE and isinstance(msg, p4r.StreamMessageResponse)
            if overflow:
                self.overflowed = True
                self._q.appendleft(RpcAbort(Code.RESOURCE_EXHAUSTED, f"{CONTROL_QUEUE} stream messages queued: "
                                                                     f"the client does not read its stream"))
            else:
                self._q.append(msg)
        self._notify()

    def send_digest(self, msg: p4r.StreamMessageResponse) -> p4r.DigestList | None:
        """Queue a digest list; returns the oldest queued one if it had to be dropped to make room."""
        dropped = None
        with self._lock:
            if self.closed:
                return None
            if self._ndig >= DIGEST_QUEUE:
                for i, m in enumerate(self._q):  # the oldest digest list (control messages are few)
                    if isinstance(m, p4r.StreamMessageResponse) and m.HasField("digest"):
                        dropped = m.digest
                        del self._q[i]
                        break
                self._ndig -= 1
                self.digests_dropped += 1
            self._q.append(msg)
            self._ndig += 1
            self.queue_max = max(self.queue_max, self._ndig)
        self._notify()
        return dropped

    async def next(self):
        while True:
            with self._lock:
                if self._q:
                    m = self._q.popleft()
                    if isinstance(m, p4r.StreamMessageResponse) and m.HasField("digest"):
                        self._ndig -= 1
                    return m
                self._wake.clear()
            await self._wake.wait()

    def close(self) -> list[p4r.DigestList]:
        """No more messages; returns the digest lists that were never delivered."""
        with self._lock:
            self.closed = True
            left = [m.digest for m in self._q if isinstance(m, p4r.StreamMessageResponse) and m.HasField("digest")]
            self._q.clear()
            self._ndig = 0
        return left


class Digests:
    """PI-like digest engine: batches per DigestEntry.Config, dedupes until ack / ack timeout."""

    def __init__(self, send):
        self._send = send  # (p4r.DigestList) -> bool (False: nobody to send to)
        self.cv = threading.Condition()
        self.configs: dict[int, p4r.DigestEntry.Config] = {}
        self.pending: dict[int, list[tuple]] = {}
        self.pending_since: dict[int, float] = {}
        self.cache: dict[int, set] = {}  # digest id -> data sent or pending, not yet acked
        self.unacked: dict[tuple[int, int], tuple[float, list[tuple]]] = {}  # (did, list_id) -> (deadline, data)
        self.list_id = 0
        self.dropped = 0  # digests with no DigestEntry config
        self.lists_dropped = 0  # lists dropped from a stream queue or forgotten unacked (counted in stats)
        self.unacked_dropped = 0  # unacked lists forgotten because more than MAX_UNACKED were outstanding
        self._stop = False
        self._thread = threading.Thread(target=self._run, name="digests", daemon=True)
        self._thread.start()

    def configure(self, op: int, did: int, cfg: p4r.DigestEntry.Config | None) -> None:
        with self.cv:
            if op == p4r.Update.INSERT:
                if did in self.configs:
                    raise EntityError(Code.ALREADY_EXISTS, f"digest {did} is already configured")
                self.configs[did] = cfg
            elif op == p4r.Update.MODIFY:
                if did not in self.configs:
                    raise EntityError(Code.NOT_FOUND, f"digest {did} is not configured")
                self.configs[did] = cfg
            elif op == p4r.Update.DELETE:
                if did not in self.configs:
                    raise EntityError(Code.NOT_FOUND, f"digest {did} is not configured")
                del self.configs[did]
                self.pending.pop(did, None)
                self.cache.pop(did, None)
            self.cv.notify()

    def reset(self) -> None:
        with self.cv:
            self.configs.clear()
            self.pending.clear()
            self.pending_since.clear()
            self.cache.clear()
            self.unacked.clear()

    def stop(self) -> None:
        with self.cv:
            self._stop = True
            self.cv.notify()

    def add(self, did: int, data: tuple) -> None:
        """Called by the pipeline on every digest event (packet path: cheap)."""
        with self.cv:
            cfg = self.configs.get(did)
            if cfg is None:
                self.dropped += 1
                return
            cache = self.cache.setdefault(did, set())
            if data in cache:
                return
            cache.add(data)
            lst = self.pending.setdefault(did, [])
            if not lst:
                self.pending_since[did] = time.monotonic()
            lst.append(data)
            if (cfg.max_list_size and len(lst) >= cfg.max_list_size) or cfg.max_timeout_ns == 0:
                self._flush(did)
            else:
                self.cv.notify()

    def ack(self, did: int, list_id: int) -> bool:
        with self.cv:
            item = self.unacked.pop((did, list_id), None)
            if item is None:
                return False
            self.cache.get(did, set()).difference_update(item[1])
            return True

    def forget(self, did: int, list_id: int, count: bool = True) -> None:
        """A list that was never delivered (dropped from a full stream queue): its data may be
        digested again."""
        with self.cv:
            item = self.unacked.pop((did, list_id), None)
            if item is not None:
                self.cache.get(did, set()).difference_update(item[1])
            if count:
                self.lists_dropped += 1

    def _flush(self, did: int) -> None:  # holds cv
        data = self.pending.pop(did, [])
        self.pending_since.pop(did, None)
        if not data:
            return
        self.list_id += 1
        msg = p4r.DigestList(digest_id=did, list_id=self.list_id, timestamp=time.time_ns())
        for d in data:
            msg.data.add().CopyFrom(self.encode(d))
        if self._send(msg):
            cfg = self.configs[did]
            deadline = time.monotonic() + (cfg.ack_timeout_ns / 1e9 if cfg.ack_timeout_ns else float("inf"))
            self.unacked[(did, self.list_id)] = (deadline, data)
            while len(self.unacked) > MAX_UNACKED:  # a primary that never acks: forget the oldest
                key = next(iter(self.unacked))
                self.cache.get(key[0], set()).difference_update(self.unacked.pop(key)[1])
                self.unacked_dropped += 1
        else:
            self.cache.get(did, set()).difference_update(data)

    @staticmethod
    def encode(d: tuple) -> p4d.P4Data:
        s = p4d.P4Data()
        for v in d:
            s.struct.members.add().bitstring = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
        return s

    def _run(self) -> None:
        with self.cv:
            while not self._stop:
                now = time.monotonic()
                wake = now + 1.0
                for did in list(self.pending):
                    cfg = self.configs.get(did)
                    if cfg is None:
                        continue
                    due = self.pending_since[did] + cfg.max_timeout_ns / 1e9
                    if due <= now:
                        self._flush(did)
                    else:
                        wake = min(wake, due)
                for key, (deadline, data) in list(self.unacked.items()):
                    if deadline <= now:
                        del self.unacked[key]
                        self.cache.get(key[0], set()).difference_update(data)
                    else:
                        wake = min(wake, deadline)
                self.cv.wait(max(0.0005, wake - time.monotonic()))


# ---------------------------------------------------------------- the service
class P4RuntimeService(p4r_grpc.P4RuntimeServicer):
    def __init__(self, switch: Pipeline, device_id: int, p4info: p4i.P4Info, workers: int = 8):
        self.switch = switch
        self.pool = futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="p4rt")
        self.device_id = device_id
        self.p4info = p4info
        self.lock = threading.RLock()
        self.streams: set[Connection] = set()  # every open stream, arbitrated or not
        self.conns: set[Connection] = set()  # arbitrated streams
        self.max_election: dict[str, tuple[int, int]] = {}
        self._primaries: dict[str, Connection] = {}  # role -> primary (read without the lock by digests)
        self.arbitration_timeout_s = ARBITRATION_TIMEOUT_S
        self.digests = Digests(self._send_digest)
        switch.on_digest = self.digests.add
        self.idle = IdleNotifier(self)  # topo/embedded/idle.py
        self.reset()

    def reset(self) -> None:
        with self.lock:
            self.config: p4r.ForwardingPipelineConfig | None = None
            self.saved: p4r.ForwardingPipelineConfig | None = None
            self.max_election.clear()
            for c in list(self.streams):
                c.send(RpcAbort(Code.UNAVAILABLE, "switch restarted: stream closed"))
            self.conns.clear()
            self._primaries.clear()
        self.digests.reset()
        self.switch.reset()

    def stream_count(self) -> int:
        return len(self.streams)

    def stats(self) -> dict:
        """Counters of the P4Runtime server (exported by mfs-switch --metrics-addr)."""
        d = self.digests
        with self.lock:
            streams = list(self.streams)
        return {"streams": len(streams), "arbitrated_streams": sum(c.arbitrated for c in streams),
                "digest_lists_dropped": d.lists_dropped, "digest_unacked_dropped": d.unacked_dropped,
                "digests_unconfigured_dropped": d.dropped,
                "stream_queue_max": max((c.queue_max for c in streams), default=0)}

    # ----- arbitration
    def primary(self, role: str) -> Connection | None:
        top = self.max_election.get(role)
        if top is None:
            return None
        for c in self.conns:
            if c.role == role and c.election == top:
                return c
        return None

    def _refresh_primary(self, role: str) -> Connection | None:  # holds lock
        p = self.primary(role)
        if p is None:
            self._primaries.pop(role, None)
        else:
            self._primaries[role] = p
        return p

    def _arb_msg(self, c: Connection) -> p4r.StreamMessageResponse:
        p = self.primary(c.role)
        m = p4r.StreamMessageResponse()
        a = m.arbitration
        a.device_id = self.device_id
        if c.role:
            a.role.name = c.role
        top = self.max_election.get(c.role)
        if top is not None:
            a.election_id.high, a.election_id.low = top
        if p is c:
            a.status.code, a.status.message = Code.OK, "primary"
        elif p is not None:
            a.status.code, a.status.message = Code.ALREADY_EXISTS, "backup: another client is primary"
        else:
            a.status.code, a.status.message = Code.NOT_FOUND, "backup: there is no primary"
        return m

    def _arbitrate(self, c: Connection, upd: p4r.MasterArbitrationUpdate) -> None:
        if upd.device_id != self.device_id:
            raise RpcAbort(Code.NOT_FOUND, f"device id {upd.device_id} is not this switch's ({self.device_id})")
        role = upd.role.name if upd.HasField("role") else ""
        eid = _eid(upd.election_id) if upd.HasField("election_id") else None  # none: a backup
        with self.lock:
            if c.arbitrated and c.role != role:
                raise RpcAbort(Code.INVALID_ARGUMENT, f"a stream cannot change role ({c.role!r} -> {role!r})")
            if eid is not None:
                for o in self.conns:
                    if o is not c and o.role == role and o.election == eid:
                        raise RpcAbort(Code.INVALID_ARGUMENT, f"election id {eid} is already used by another "
                                                              f"client of role {role!r}")
            before = self.primary(role)
            c.role, c.election, c.arbitrated = role, eid, True
            self.conns.add(c)
            top = self.max_election.get(role)
            if eid is not None and (top is None or eid >= top):
                self.max_election[role] = eid
            after = self._refresh_primary(role)
            if after is not before:
                for o in self.conns:
                    if o.role == role:
                        o.send(self._arb_msg(o))
            else:
                c.send(self._arb_msg(c))

    def _disconnect(self, c: Connection) -> None:
        with self.lock:
            if c not in self.conns:
                return
            was = self.primary(c.role)
            self.conns.discard(c)
            self._refresh_primary(c.role)
            if was is c:
                for o in self.conns:
                    if o.role == c.role:
                        o.send(self._arb_msg(o))

    def _send_digest(self, msg: p4r.DigestList) -> bool:
        """Called by the digest engine holding its lock: must not take self.lock (lock order)."""
        p = self._primaries.get("")
        if p is None:
            return False
        dropped = p.send_digest(p4r.StreamMessageResponse(digest=msg))
        if dropped is not None:
            self.digests.forget(dropped.digest_id, dropped.list_id)
        return True

    def _stream_error(self, c: Connection, code: int, message: str, **which) -> None:
        m = p4r.StreamMessageResponse()
        m.error.canonical_code, m.error.message = code, message
        for k, v in which.items():
            getattr(m.error, k).CopyFrom(v)
        c.send(m)

    def _on_stream_msg(self, c: Connection, req: p4r.StreamMessageRequest) -> None:
        kind = req.WhichOneof("update")
        if kind == "arbitration":
            self._arbitrate(c, req.arbitration)
            return
        if not c.arbitrated:
            raise RpcAbort(Code.FAILED_PRECONDITION, "the first stream message must be a MasterArbitrationUpdate")
        if kind == "packet":
            if self.primary(c.role) is not c:
                self._stream_error(c, Code.PERMISSION_DENIED, "PacketOut from a client that is not primary",
                                   packet_out=p4r.PacketOutError(packet_out=req.packet))
            elif self.config is None:
                self._stream_error(c, Code.FAILED_PRECONDITION, "PacketOut before a forwarding pipeline config is set",
                                   packet_out=p4r.PacketOutError(packet_out=req.packet))
            else:
                try:
                    frame = self.switch.schema.packet_out_frame(req.packet)
                except P4InfoError as e:
                    self._stream_error(c, Code.INVALID_ARGUMENT, f"PacketOut: {e}",
                                       packet_out=p4r.PacketOutError(packet_out=req.packet))
                    return
                # the packet enters the pipeline on the CPU port (a controller operation: dropped there)
                self.switch.ingress(CPU_PORT, frame)
        elif kind == "digest_ack":
            ack = req.digest_ack
            if not self.digests.ack(ack.digest_id, ack.list_id):
                self._stream_error(c, Code.NOT_FOUND, f"no unacknowledged digest list {ack.list_id} "
                                                      f"for digest {ack.digest_id}",
                                   digest_list_ack=p4r.DigestListAckError(digest_list_ack=ack))
        else:
            self._stream_error(c, Code.UNIMPLEMENTED, f"stream message {kind!r} is not supported")

    async def StreamChannel(self, request_iterator, context):
        loop = asyncio.get_running_loop()
        c = Connection(context.peer(), loop)
        with self.lock:
            self.streams.add(c)

        async def reader():
            try:
                async for req in request_iterator:
                    try:
                        self._on_stream_msg(c, req)
                    except RpcAbort as e:
                        c.send(e)
                        return
            except asyncio.CancelledError:
                raise
            except Exception:  # stream broken / server stopping
                pass
            finally:
                self._disconnect(c)
            c.send(None)

        async def arbitration_deadline():
            await asyncio.sleep(self.arbitration_timeout_s)
            if not c.arbitrated:
                c.send(RpcAbort(Code.DEADLINE_EXCEEDED, f"no MasterArbitrationUpdate within "
                                                        f"{self.arbitration_timeout_s:g} s: stream closed"))

        tasks = [loop.create_task(reader()), loop.create_task(arbitration_deadline())]
        try:
            while True:
                msg = await c.next()
                if msg is None:
                    return
                if isinstance(msg, RpcAbort):
                    self._disconnect(c)
                    await context.abort(_GRPC_CODE[msg.code], msg.message)
                yield msg
        finally:
            for t in tasks:
                t.cancel()
            self._disconnect(c)
            with self.lock:
                self.streams.discard(c)
            for dl in c.close():  # never delivered: may be digested again
                self.digests.forget(dl.digest_id, dl.list_id, count=False)

    # ----- unary RPCs
    async def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(p4runtime_api_version=API_VERSION)

    def _check_device(self, device_id: int) -> None:
        if device_id != self.device_id:
            raise RpcAbort(Code.NOT_FOUND, f"device id {device_id} is not this switch's ({self.device_id})")

    def _check_primary(self, role: str, request) -> None:
        p = self.primary(role)
        if not request.HasField("election_id"):
            raise RpcAbort(Code.PERMISSION_DENIED, f"no election id: only the primary of role {role!r} may write")
        eid = _eid(request.election_id)
        if p is None or p.election != eid:
            raise RpcAbort(Code.PERMISSION_DENIED, f"election id {eid} is not the primary's for "
                                                   f"role {role!r}" + ("" if p else " (there is no primary)"))

    def _unary(fn):  # noqa: N805 - decorator: the blocking work runs in the unary thread pool
        async def wrapper(self, request, context):
            try:
                return await asyncio.get_running_loop().run_in_executor(self.pool, fn, self, request)
            except RpcAbort as e:
                await context.abort(_GRPC_CODE[e.code], e.message)
        wrapper.__name__ = fn.__name__
        return wrapper

    @_unary
    def SetForwardingPipelineConfig(self, request):
        self._check_device(request.device_id)
        A = p4r.SetForwardingPipelineConfigRequest
        with self.lock:
            self._check_primary(request.role, request)
            action = request.action
            if action == A.COMMIT:
                if self.saved is None:
                    raise RpcAbort(Code.FAILED_PRECONDITION, "COMMIT without a config saved by VERIFY_AND_SAVE")
                self.config, self.saved = self.saved, None
                self.switch.reset()
                self.digests.reset()
                return p4r.SetForwardingPipelineConfigResponse()
            if action not in (A.VERIFY, A.VERIFY_AND_SAVE, A.VERIFY_AND_COMMIT, A.RECONCILE_AND_COMMIT):
                raise RpcAbort(Code.INVALID_ARGUMENT, f"action {A.Action.Name(action)} is not supported")
            cfg = request.config
            if not cfg.HasField("p4info"):
                raise RpcAbort(Code.INVALID_ARGUMENT, "config.p4info is missing")
            why = p4info_mismatch(self.p4info, cfg.p4info)
            if why:
                raise RpcAbort(Code.INVALID_ARGUMENT, f"P4Info does not match the embedded MFS program: {why}")
            if cfg.p4_device_config:
                try:
                    json.loads(cfg.p4_device_config)
                except ValueError as e:
                    raise RpcAbort(Code.INVALID_ARGUMENT,
                                   f"p4_device_config is neither empty nor bmv2 JSON: {e}") from None
            if action == A.VERIFY:
                pass
            elif action == A.VERIFY_AND_SAVE:
                self.saved = p4r.ForwardingPipelineConfig()
                self.saved.CopyFrom(cfg)
            else:
                new = p4r.ForwardingPipelineConfig()
                new.CopyFrom(cfg)
                keep = action == A.RECONCILE_AND_COMMIT and self.config is not None
                self.config = new
                if not keep:
                    self.switch.reset()
                    self.digests.reset()
        return p4r.SetForwardingPipelineConfigResponse()

    @_unary
    def GetForwardingPipelineConfig(self, request):
        self._check_device(request.device_id)
        R = p4r.GetForwardingPipelineConfigRequest
        resp = p4r.GetForwardingPipelineConfigResponse()
        cfg = self.config
        if cfg is None:
            return resp
        rt = request.response_type
        if rt == R.ALL:
            resp.config.CopyFrom(cfg)
        else:
            resp.config.cookie.CopyFrom(cfg.cookie)
            if rt == R.P4INFO_AND_COOKIE:
                resp.config.p4info.CopyFrom(cfg.p4info)
            elif rt == R.DEVICE_CONFIG_AND_COOKIE:
                resp.config.p4_device_config = cfg.p4_device_config
        return resp

    async def Write(self, request, context):
        failed = await asyncio.get_running_loop().run_in_executor(self.pool, self._write, request)
        if isinstance(failed, RpcAbort):
            await context.abort(_GRPC_CODE[failed.code], failed.message)
        if failed is not None:
            message, trailer = failed
            await context.abort(grpc.StatusCode.UNKNOWN, message,
                                trailing_metadata=(("grpc-status-details-bin", trailer),))
        return p4r.WriteResponse()

    def _write(self, request) -> RpcAbort | tuple[str, bytes] | None:
        """None when every update succeeded; else the RPC error, or (message, status trailer) with
        one p4.v1.Error per update."""
        try:
            self._check_device(request.device_id)
            if self.config is None:
                raise RpcAbort(Code.FAILED_PRECONDITION, "no forwarding pipeline config has been set")
            self._check_primary(request.role, request)
            if request.atomicity != p4r.WriteRequest.CONTINUE_ON_ERROR:
                raise RpcAbort(Code.UNIMPLEMENTED, f"atomicity {p4r.WriteRequest.Atomicity.Name(request.atomicity)} "
                                                   f"is not supported (only CONTINUE_ON_ERROR)")
        except RpcAbort as e:
            return e
        errors = []
        failed = 0
        for upd in request.updates:
            try:
                self._write_one(upd)
                errors.append(p4r.Error(canonical_code=Code.OK))
            except EntityError as e:
                failed += 1
                errors.append(p4r.Error(canonical_code=e.code, message=e.message))
        if failed:
            st = rpc_status.Status(code=Code.UNKNOWN, message=f"{failed} of {len(errors)} updates failed")
            for err in errors:
                a = any_pb2.Any()
                a.Pack(err)
                st.details.append(a)
            first = next(e for e in errors if e.canonical_code != Code.OK)
            return (f"{st.message}; first: {Code.Name(first.canonical_code)}: {first.message}",
                    st.SerializeToString())
        return None

    def _write_one(self, upd: p4r.Update) -> None:
        if upd.type not in (p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE):
            raise EntityError(Code.INVALID_ARGUMENT, f"update type {upd.type} is not INSERT, MODIFY or DELETE")
        ent = upd.entity
        kind = ent.WhichOneof("entity")
        sw = self.switch
        if kind == "table_entry":
            sw.write_table(upd.type, ent.table_entry)
        elif kind == "packet_replication_engine_entry":
            pre = ent.packet_replication_engine_entry
            if pre.WhichOneof("type") != "multicast_group_entry":
                raise EntityError(Code.UNIMPLEMENTED, f"{pre.WhichOneof('type')} is not supported")
            g = pre.multicast_group_entry
            reps = []
            for r in g.replicas:
                if r.WhichOneof("port_kind") == "port":
                    try:
                        port = decode(r.port, 9, f"multicast group {g.multicast_group_id}: replica port")
                    except P4InfoError as e:
                        raise EntityError(Code.INVALID_ARGUMENT, str(e)) from None
                else:
                    port = r.egress_port
                reps.append((port, r.instance))
            sw.write_group(upd.type, g.multicast_group_id, reps)
        elif kind == "digest_entry":
            de = ent.digest_entry
            if sw.schema.by_id.get(de.digest_id) is None or de.digest_id not in {d.id for d in sw.schema.digests.values()}:
                raise EntityError(Code.INVALID_ARGUMENT, f"unknown digest id {de.digest_id}")
            if upd.type != p4r.Update.DELETE and not de.HasField("config"):
                raise EntityError(Code.INVALID_ARGUMENT, "digest_entry.config is missing")
            cfg = p4r.DigestEntry.Config()
            cfg.CopyFrom(de.config)
            self.digests.configure(upd.type, de.digest_id, cfg)
        elif kind in ("counter_entry", "register_entry"):
            self._write_indexed(upd.type, kind, getattr(ent, kind))
        elif kind is None:
            raise EntityError(Code.INVALID_ARGUMENT, "update has no entity")
        else:
            raise EntityError(Code.UNIMPLEMENTED, f"writing {kind} is not supported by the MFS program")

    def _write_indexed(self, op: int, kind: str, e) -> None:
        sw = self.switch
        if op != p4r.Update.MODIFY:
            raise EntityError(Code.INVALID_ARGUMENT, f"{kind}: only MODIFY is allowed")
        if kind == "counter_entry":
            pk_by = sw.counters.get(e.counter_id)
            if pk_by is None:
                raise EntityError(Code.INVALID_ARGUMENT, f"unknown counter id {e.counter_id}")
            size = len(pk_by[0])
        else:
            reg = sw.registers.get(e.register_id)
            if reg is None:
                raise EntityError(Code.INVALID_ARGUMENT, f"unknown register id {e.register_id}")
            size = len(reg)
        idxs = [e.index.index] if e.HasField("index") else range(size)
        if e.HasField("index") and not 0 <= e.index.index < size:
            raise EntityError(Code.OUT_OF_RANGE, f"{kind}: index {e.index.index} not in 0..{size - 1}")
        if kind == "counter_entry" and (e.data.packet_count < 0 or e.data.byte_count < 0):
            raise EntityError(Code.INVALID_ARGUMENT, f"counter_entry: negative count (packets "
                                                     f"{e.data.packet_count}, bytes {e.data.byte_count})")
        with sw.lock:
            for i in idxs:
                if kind == "counter_entry":
                    pk_by[0][i], pk_by[1][i] = e.data.packet_count, e.data.byte_count
                else:
                    which = e.data.WhichOneof("data")
                    if which != "bitstring":
                        raise EntityError(Code.INVALID_ARGUMENT, f"register data must be a bitstring, got {which}")
                    v = int.from_bytes(e.data.bitstring, "big")
                    bw = next(r.bitwidth for r in sw.schema.registers.values() if r.id == e.register_id)
                    if v >> bw:
                        raise EntityError(Code.INVALID_ARGUMENT, f"register value does not fit in {bw} bits")
                    reg[i] = v

    async def Read(self, request, context):
        ents = await asyncio.get_running_loop().run_in_executor(self.pool, self._read, request)
        if isinstance(ents, (RpcAbort, EntityError)):
            await context.abort(_GRPC_CODE[ents.code], ents.message)
        for i in range(0, max(1, len(ents)), READ_BATCH):
            yield p4r.ReadResponse(entities=ents[i:i + READ_BATCH])

    def _read(self, request) -> list[p4r.Entity] | RpcAbort | EntityError:
        try:
            self._check_device(request.device_id)
            if self.config is None:
                raise RpcAbort(Code.FAILED_PRECONDITION, "no forwarding pipeline config has been set")
            ents: list[p4r.Entity] = []
            for ent in request.entities:
                ents.extend(self._read_one(ent))
            return ents
        except (RpcAbort, EntityError) as e:
            return e

    def _read_one(self, ent: p4r.Entity) -> list[p4r.Entity]:
        sw = self.switch
        schema = sw.schema
        kind = ent.WhichOneof("entity")
        out = []
        if kind == "table_entry":
            te = ent.table_entry
            if te.table_id and te.table_id not in {t.id for t in schema.tables.values()}:
                raise EntityError(Code.INVALID_ARGUMENT, f"unknown table id {te.table_id}")
            if te.is_default_action or te.match:
                if not te.table_id:
                    raise EntityError(Code.INVALID_ARGUMENT, "reading a default entry or by key needs a table_id")
                probe = p4r.TableEntry()
                probe.CopyFrom(te)
                probe.ClearField("action")
                e = sw.lookup_entry(probe)
                if e is not None:
                    out.append(p4r.Entity(table_entry=self._entry_msg(e)))
            else:
                for _name, e in sw.table_entries(te.table_id):
                    out.append(p4r.Entity(table_entry=self._entry_msg(e)))
        elif kind == "counter_entry":
            ce = ent.counter_entry
            ids = [ce.counter_id] if ce.counter_id else [c.id for c in schema.counters.values()]
            for cid in ids:
                if cid not in sw.counters:
                    raise EntityError(Code.INVALID_ARGUMENT, f"unknown counter id {cid}")
                pk, by = sw.counters[cid]
                for i in self._indexes(ce, len(pk), "counter"):
                    m = p4r.CounterEntry(counter_id=cid)
                    m.index.index = i
                    m.data.packet_count, m.data.byte_count = pk[i], by[i]
                    out.append(p4r.Entity(counter_entry=m))
        elif kind == "register_entry":
            re_ = ent.register_entry
            ids = [re_.register_id] if re_.register_id else [r.id for r in schema.registers.values()]
            for rid in ids:
                if rid not in sw.registers:
                    raise EntityError(Code.INVALID_ARGUMENT, f"unknown register id {rid}")
                reg = sw.registers[rid]
                for i in self._indexes(re_, len(reg), "register"):
                    m = p4r.RegisterEntry(register_id=rid)
                    m.index.index = i
                    v = reg[i]
                    m.data.bitstring = v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")
                    out.append(p4r.Entity(register_entry=m))
        elif kind == "packet_replication_engine_entry":
            pre = ent.packet_replication_engine_entry
            if pre.WhichOneof("type") != "multicast_group_entry":
                raise EntityError(Code.UNIMPLEMENTED, f"reading {pre.WhichOneof('type')} is not supported")
            gid = pre.multicast_group_entry.multicast_group_id
            with sw.lock:
                groups = sorted(sw.groups.items()) if gid == 0 else [(gid, sw.groups[gid])] if gid in sw.groups else []
            for g, reps in groups:
                m = p4r.Entity()
                mg = m.packet_replication_engine_entry.multicast_group_entry
                mg.multicast_group_id = g
                for port, inst in reps:
                    mg.replicas.add(egress_port=port, instance=inst)
                out.append(m)
        elif kind == "digest_entry":
            did = ent.digest_entry.digest_id
            with self.digests.cv:
                cfgs = sorted(self.digests.configs.items())
            for d, cfg in cfgs:
                if did in (0, d):
                    m = p4r.Entity()
                    m.digest_entry.digest_id = d
                    m.digest_entry.config.CopyFrom(cfg)
                    out.append(m)
        else:
            raise EntityError(Code.UNIMPLEMENTED, f"reading {kind} is not supported by the MFS program")
        return out

    @staticmethod
    def _indexes(e, size: int, what: str):
        if not e.HasField("index"):
            return range(size)
        if not 0 <= e.index.index < size:
            raise EntityError(Code.OUT_OF_RANGE, f"{what} index {e.index.index} not in 0..{size - 1}")
        return (e.index.index,)

    def _entry_msg(self, e) -> p4r.TableEntry:
        s = e.spec
        schema = self.switch.schema
        te = schema.table_entry(s.table, s.match, None, None, priority=s.priority, default=s.is_default)
        if e.action is not None:
            te.action.action.CopyFrom(schema.action_msg(e.action, e.params))
        return te


# ---------------------------------------------------------------- in-process handle
class SwitchHandle:
    """A running embedded switch (P4Runtime server + pipeline [+ data plane]).

    The gRPC server (grpc.aio) runs on its own event-loop thread; unary RPCs run in a pool of
    ``max_workers`` threads, streams on the loop (no thread each)."""

    def __init__(self, address: str, device_id: int, p4info_path, table_sizes, dataplane_factory=None,
                 max_workers: int = 8):
        self.device_id = device_id
        schema = P4Schema.load(p4info_path or DEFAULT_P4INFO)
        self.switch = Pipeline(schema, table_sizes=table_sizes)
        self.service = P4RuntimeService(self.switch, device_id, schema.info, workers=max_workers)
        self._host = address.rsplit(":", 1)[0]
        self.server = None
        self._loop = asyncio.new_event_loop()
        self._loop_thread = threading.Thread(target=self._loop.run_forever, name="p4rt-loop", daemon=True)
        self._loop_thread.start()
        self.dataplane = None
        try:
            self.dataplane = dataplane_factory(self.switch) if dataplane_factory else None
            self.port = self._start(address)
        except Exception:
            self._shutdown()
            raise
        self.address = f"{self._host}:{self.port}"

    def _call(self, coro, timeout: float = 30):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def _start(self, address: str) -> int:
        async def start():
            server = grpc.aio.server(options=[("grpc.so_reuseport", 0), ("grpc.max_receive_message_length", 64 << 20),
                                              ("grpc.max_send_message_length", 64 << 20)])
            p4r_grpc.add_P4RuntimeServicer_to_server(self.service, server)
            port = server.add_insecure_port(address)
            if port == 0:
                raise OSError(f"cannot listen on {address} (address in use or invalid)")
            await server.start()
            return server, port

        try:
            self.server, port = self._call(start())
        except RuntimeError as e:  # grpc.aio: "Failed to bind to address"
            raise OSError(f"cannot listen on {address}: {e}") from None
        return port

    def _stop_server(self, grace: float | None) -> None:
        srv, self.server = self.server, None
        if srv is None:
            return

        async def stop():
            # streams told to close (reset) get up to 1 s to send their status before the server goes
            deadline = time.monotonic() + 1.0
            while self.service.stream_count() and time.monotonic() < deadline:
                await asyncio.sleep(0.01)
            await srv.stop(grace)

        self._call(stop())

    def _shutdown(self) -> None:
        if self.dataplane is not None:
            self.dataplane.stop()
            self.dataplane = None
        self.service.digests.stop()
        self.service.idle.stop()
        if self._loop.is_running():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._loop_thread.join(timeout=5)
        if not self._loop.is_running() and not self._loop.is_closed():
            self._loop.close()
        self.service.pool.shutdown(wait=False)

    def stop(self, grace: float | None = 0) -> None:
        if self.server is not None:
            self.service.reset()
            self._stop_server(grace)
        self._shutdown()

    def restart(self) -> None:
        """Simulate a reboot: all state lost, streams broken, same address."""
        self.service.reset()
        self._stop_server(0)
        deadline = time.monotonic() + 5
        while True:
            try:
                self._start(self.address)
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stats(self) -> dict:
        """P4Runtime server counters and, with a data plane, per-port counters (rx, tx, drops)."""
        out = {"p4runtime": self.service.stats()}
        if self.dataplane is not None:
            out["ports"] = self.dataplane.stats()
        return out

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def start_server(address: str = "127.0.0.1:0", device_id: int = 1, p4info_path: str | Path | None = None,
                 ports: dict[int, str] | None = None, table_sizes: dict[str, int] | None = None,
                 **dataplane_opts) -> SwitchHandle:
    """Start an embedded switch in this process. ``ports`` {port number: interface} attaches a data plane."""
    factory = None
    if ports:
        from topo.embedded.dataplane import Dataplane

        def factory(sw):
            return Dataplane(sw, ports, **dataplane_opts)
    elif dataplane_opts:
        raise TypeError(f"data plane options {sorted(dataplane_opts)} need ports")
    return SwitchHandle(address, device_id, p4info_path, table_sizes, factory)
