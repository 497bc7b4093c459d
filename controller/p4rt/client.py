"""One P4Runtime connection to one device (grpc.aio + finsy's generated stubs).

What it does, and nothing more (supervision, resync and desired state live in
controller/switches.py):

* StreamChannel: arbitration (device id, election id, role name), digest lists
  (acknowledged at once and handed to a callback), idle-timeout notifications (handed
  to a callback), arbitration updates (losing
  primary flips :attr:`SwitchClient.is_primary` and every later write raises
  :class:`NotPrimary`), stream errors.
* SetForwardingPipelineConfig with a cookie: GetForwardingPipelineConfig
  COOKIE_ONLY first, skip the push when the device already runs our pipeline.
* Write: one WriteRequest for a list of updates; per-update errors decoded from
  ``grpc-status-details-bin`` (google.rpc.Status with p4.v1.Error details).
* Read: table entries, counters, registers (streaming ReadResponse).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
from dataclasses import dataclass
from typing import Awaitable, Callable, Iterable

import grpc
from finsy.proto import p4r, p4r_grpc, rpc_code, rpc_status

log = logging.getLogger("mfs.p4rt")

MAX_METADATA = 4 << 20  # per-update errors of a big batch travel in trailing metadata
MAX_MESSAGE = 64 << 20
CHANNEL_OPTIONS = [
    ("grpc.max_metadata_size", MAX_METADATA),
    ("grpc.max_receive_message_length", MAX_MESSAGE),
    ("grpc.max_send_message_length", MAX_MESSAGE),
    ("grpc.enable_retries", 0),
]
OK = rpc_code.OK


def code_name(code: int) -> str:
    try:
        return rpc_code.Code.Name(code)
    except ValueError:
        return f"CODE_{code}"


class P4RTError(Exception):
    """An RPC failed as a whole. ``code`` is the canonical gRPC code (int)."""

    def __init__(self, what: str, code: int, details: str):
        self.code, self.details = code, details
        super().__init__(f"{what}: {code_name(code)}: {details}")


class NotPrimary(P4RTError):
    """We are not (or no longer) the primary controller for this device/role."""

    def __init__(self, what: str, details: str = "not primary"):
        super().__init__(what, rpc_code.PERMISSION_DENIED, details)


@dataclass(frozen=True, slots=True)
class UpdateError:
    index: int  # position of the update in the WriteRequest
    code: int  # canonical gRPC code (rpc_code.*)
    message: str

    @property
    def code_name(self) -> str:
        return code_name(self.code)


def decode_write_errors(err: grpc.RpcError, n_updates: int) -> list[UpdateError] | None:
    """Per-update errors of a failed Write, or None if the failure is not per-update.

    P4Runtime puts a google.rpc.Status with one p4.v1.Error per update (OK for the
    ones that succeeded) in the ``grpc-status-details-bin`` trailer.
    """
    md = err.trailing_metadata() or ()
    blob = None
    for item in md:
        key, value = (item.key, item.value) if hasattr(item, "key") else item
        if key == "grpc-status-details-bin":
            blob = value
    if blob is None:
        return None
    st = rpc_status.Status()
    try:
        st.ParseFromString(blob if isinstance(blob, bytes) else bytes(blob))
    except Exception:  # noqa: BLE001 - malformed trailer -> not per-update
        return None
    out = []
    for i, any_ in enumerate(st.details):
        e = p4r.Error()
        if not any_.Unpack(e):
            continue
        if e.canonical_code != OK:
            out.append(UpdateError(i, e.canonical_code, e.message))
    if len(st.details) != n_updates:
        log.warning("write error details: %d entries for %d updates", len(st.details), n_updates)
    return out


def pipeline_cookie(p4info: p4r.ForwardingPipelineConfig | bytes, device_config: bytes) -> int:
    """64-bit cookie identifying (P4Info, device config): skip re-pushing an unchanged pipeline."""
    blob = p4info if isinstance(p4info, bytes) else p4info.SerializeToString(deterministic=True)
    h = hashlib.sha256(blob + b"\0" + device_config).digest()
    return int.from_bytes(h[:8], "big") >> 1  # keep it positive in every int64 view


DigestHandler = Callable[["SwitchClient", p4r.DigestList], Awaitable[None] | None]
IdleHandler = Callable[["SwitchClient", p4r.IdleTimeoutNotification], Awaitable[None] | None]


class SwitchClient:
    """A P4Runtime session with one device. Use :meth:`open`, then :meth:`close`."""

    def __init__(self, address: str, device_id: int, election_id: int, role: str = "",
                 name: str = "", on_digest: DigestHandler | None = None,
                 on_primary_change: Callable[[bool], None] | None = None,
                 on_idle_timeout: IdleHandler | None = None):
        if election_id <= 0 or election_id >> 128:
            raise ValueError(f"election_id {election_id} must be in 1..2^128-1")
        self.address, self.device_id, self.election_id, self.role = address, device_id, election_id, role
        self.name = name or address
        self.on_digest, self.on_primary_change = on_digest, on_primary_change
        self.on_idle_timeout = on_idle_timeout
        self.is_primary = False
        self.primary_election_id: int | None = None
        self.channel: grpc.aio.Channel | None = None
        self.stub: p4r_grpc.P4RuntimeStub | None = None
        self._out: asyncio.Queue | None = None
        self._reader: asyncio.Task | None = None
        self._arb = asyncio.Event()
        self.stream_broken = asyncio.Event()
        self.stream_error: str = ""
        self.writes = 0  # Write RPCs sent (tests check batching with this)
        self.updates = 0
        self.digests = 0
        self.idle_notifications = 0
        self.packets_out = 0

    # ------------------------------------------------------------ session
    def _eid(self) -> p4r.Uint128:
        return p4r.Uint128(high=self.election_id >> 64, low=self.election_id & ((1 << 64) - 1))

    def _arbitration(self) -> p4r.StreamMessageRequest:
        arb = p4r.MasterArbitrationUpdate(device_id=self.device_id, election_id=self._eid())
        if self.role:
            arb.role.name = self.role
        return p4r.StreamMessageRequest(arbitration=arb)

    async def open(self, timeout: float = 5.0) -> bool:
        """Connect, open the stream, send arbitration; return True when we are primary.

        Raises P4RTError when the device does not answer within ``timeout``.
        """
        self.channel = grpc.aio.insecure_channel(self.address, options=CHANNEL_OPTIONS)
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self._out = asyncio.Queue()
        self._arb.clear()
        self.stream_broken.clear()
        self._out.put_nowait(self._arbitration())
        call = self.stub.StreamChannel(self._requests())
        self._reader = asyncio.create_task(self._read_stream(call), name=f"p4rt-stream-{self.name}")
        try:
            await asyncio.wait_for(self._arb.wait(), timeout)
        except asyncio.TimeoutError:
            err = self.stream_error or "no arbitration response"
            await self.close()
            raise P4RTError(f"{self.name} ({self.address}) arbitration", rpc_code.UNAVAILABLE, err) from None
        if self.stream_broken.is_set():
            err = self.stream_error
            await self.close()
            raise P4RTError(f"{self.name} ({self.address}) stream", rpc_code.UNAVAILABLE, err)
        return self.is_primary

    async def _requests(self):
        assert self._out is not None
        while True:
            msg = await self._out.get()
            if msg is None:
                return
            yield msg

    async def _read_stream(self, call) -> None:
        try:
            async for resp in call:
                kind = resp.WhichOneof("update")
                if kind == "arbitration":
                    self._on_arbitration(resp.arbitration)
                elif kind == "digest":
                    await self._on_digest(resp.digest)
                elif kind == "idle_timeout_notification":
                    self.idle_notifications += 1
                    if self.on_idle_timeout:
                        r = self.on_idle_timeout(self, resp.idle_timeout_notification)
                        if asyncio.iscoroutine(r):
                            await r
                elif kind == "error":
                    log.warning("%s: stream error: %s", self.name, resp.error)
            self.stream_error = "stream closed by the device"
        except asyncio.CancelledError:
            self.stream_error = "closed"
            raise
        except grpc.aio.AioRpcError as e:
            self.stream_error = f"{code_name(e.code().value[0])}: {e.details()}"
        except Exception as e:  # noqa: BLE001 - any failure means the session is gone
            self.stream_error = f"{type(e).__name__}: {e}"
        finally:
            self._set_primary(False)
            self.stream_broken.set()
            self._arb.set()

    def _on_arbitration(self, arb: p4r.MasterArbitrationUpdate) -> None:
        eid = (arb.election_id.high << 64) | arb.election_id.low
        self.primary_election_id = eid if arb.HasField("election_id") else None
        self._set_primary(arb.status.code == OK)
        self._arb.set()

    def _set_primary(self, primary: bool) -> None:
        if primary != self.is_primary:
            self.is_primary = primary
            log.info("%s: %s", self.name, "primary" if primary else "not primary")
            if self.on_primary_change:
                self.on_primary_change(primary)

    async def _on_digest(self, dl: p4r.DigestList) -> None:
        self.digests += 1
        if self._out is not None:  # ack first: the device may hold further lists until acked
            self._out.put_nowait(p4r.StreamMessageRequest(
                digest_ack=p4r.DigestListAck(digest_id=dl.digest_id, list_id=dl.list_id)))
        if self.on_digest:
            r = self.on_digest(self, dl)
            if asyncio.iscoroutine(r):
                await r

    async def close(self) -> None:
        self._set_primary(False)
        if self._out is not None:
            self._out.put_nowait(None)
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self._reader = None
        if self.channel is not None:
            await self.channel.close()
            self.channel = None

    def _check_primary(self, what: str) -> None:
        if not self.is_primary or self.stream_broken.is_set():
            raise NotPrimary(f"{self.name} {what}",
                             self.stream_error if self.stream_broken.is_set() else "not primary")

    # ------------------------------------------------------------ pipeline
    async def get_cookie(self) -> int | None:
        req = p4r.GetForwardingPipelineConfigRequest(
            device_id=self.device_id, response_type=p4r.GetForwardingPipelineConfigRequest.COOKIE_ONLY)
        try:
            resp = await self.stub.GetForwardingPipelineConfig(req)
        except grpc.aio.AioRpcError as e:
            if e.code() in (grpc.StatusCode.FAILED_PRECONDITION, grpc.StatusCode.NOT_FOUND):
                return None  # no pipeline yet
            raise P4RTError(f"{self.name} GetForwardingPipelineConfig", e.code().value[0], e.details()) from None
        return resp.config.cookie.cookie if resp.config.HasField("cookie") else None

    async def set_pipeline(self, p4info, device_config: bytes, force: bool = False) -> bool:
        """Push (P4Info, device config) unless the device already has our cookie. Returns True if pushed."""
        self._check_primary("SetForwardingPipelineConfig")
        cookie = pipeline_cookie(p4info, device_config)
        if not force and await self.get_cookie() == cookie:
            return False
        await self._clear_multicast_groups()
        cfg = p4r.ForwardingPipelineConfig(p4info=p4info, p4_device_config=device_config)
        cfg.cookie.cookie = cookie
        req = p4r.SetForwardingPipelineConfigRequest(
            device_id=self.device_id, role=self.role, election_id=self._eid(),
            action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT, config=cfg)
        try:
            await self.stub.SetForwardingPipelineConfig(req)
        except grpc.aio.AioRpcError as e:
            raise P4RTError(f"{self.name} SetForwardingPipelineConfig", e.code().value[0], e.details()) from None
        return True

    async def _clear_multicast_groups(self) -> None:
        """Delete the device's multicast groups before a new pipeline replaces the old one.

        bmv2 (PI) forgets its groups on SetForwardingPipelineConfig while bmv2 keeps replicating
        them, so a group re-inserted after the push would replicate every packet twice
        (docs/bmv2.md). Without a pipeline there is nothing to read, hence nothing to delete."""
        try:
            ents = await self.read([p4r.Entity(packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
                multicast_group_entry=p4r.MulticastGroupEntry()))])
        except P4RTError:
            return
        groups = [e for e in ents if e.WhichOneof("entity") == "packet_replication_engine_entry"
                  and e.packet_replication_engine_entry.WhichOneof("type") == "multicast_group_entry"]
        for err in await self.write([update("delete", e) for e in groups]):
            raise P4RTError(f"{self.name} Write (delete multicast groups before a new pipeline)", err.code,
                            err.message)

    # ------------------------------------------------------------ packet-out
    def packet_out(self, packets: Iterable[p4r.PacketOut]) -> int:
        """Queue PacketOuts on the stream, in order; returns how many. Asynchronous: the device
        applies them after this returns and reports a refused one as a stream error.
        Raises NotPrimary unless we are the primary (a backup's PacketOut is refused)."""
        self._check_primary("PacketOut")
        assert self._out is not None
        n = 0
        for po in packets:
            self._out.put_nowait(p4r.StreamMessageRequest(packet=po))
            n += 1
        self.packets_out += n
        return n

    # ------------------------------------------------------------ write / read
    async def write(self, updates: Iterable[p4r.Update], timeout: float = 10.0) -> list[UpdateError]:
        """One WriteRequest; returns the per-update errors (empty list = all applied).

        Raises NotPrimary / P4RTError when the RPC fails as a whole.
        """
        self._check_primary("Write")
        req = p4r.WriteRequest(device_id=self.device_id, role=self.role, election_id=self._eid(),
                               atomicity=p4r.WriteRequest.CONTINUE_ON_ERROR)
        req.updates.extend(updates)
        n = len(req.updates)
        if n == 0:
            return []
        self.writes += 1
        self.updates += n
        try:
            await self.stub.Write(req, timeout=timeout)
            return []
        except grpc.aio.AioRpcError as e:
            per_update = decode_write_errors(e, n)
            if per_update:
                return per_update
            code = e.code().value[0]
            if code == rpc_code.PERMISSION_DENIED:
                self._set_primary(False)
                raise NotPrimary(f"{self.name} Write", e.details()) from None
            raise P4RTError(f"{self.name} Write", code, e.details()) from None

    async def read(self, entities: Iterable[p4r.Entity], timeout: float = 10.0) -> list[p4r.Entity]:
        req = p4r.ReadRequest(device_id=self.device_id, role=self.role)
        req.entities.extend(entities)
        out: list[p4r.Entity] = []
        try:
            async for resp in self.stub.Read(req, timeout=timeout):
                out.extend(resp.entities)
        except grpc.aio.AioRpcError as e:
            raise P4RTError(f"{self.name} Read", e.code().value[0], e.details()) from None
        return out

    async def read_table(self, table_id: int = 0) -> list[p4r.TableEntry]:
        """All entries of one table (table_id 0 = every table). Default entries are not included."""
        ents = await self.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=table_id))])
        return [e.table_entry for e in ents if e.WhichOneof("entity") == "table_entry"]

    async def read_counter(self, counter_id: int) -> dict[int, tuple[int, int]]:
        """index -> (packets, bytes) for every cell of an indirect counter."""
        ents = await self.read([p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=counter_id))])
        return {e.counter_entry.index.index: (e.counter_entry.data.packet_count, e.counter_entry.data.byte_count)
                for e in ents if e.WhichOneof("entity") == "counter_entry"}

    async def read_register(self, register_id: int) -> dict[int, int]:
        """index -> value for every cell of a bit<N> register."""
        ents = await self.read([p4r.Entity(register_entry=p4r.RegisterEntry(register_id=register_id))])
        out = {}
        for e in ents:
            if e.WhichOneof("entity") == "register_entry":
                out[e.register_entry.index.index] = int.from_bytes(e.register_entry.data.bitstring, "big")
        return out


def update(kind: str, entity: p4r.Entity | p4r.TableEntry) -> p4r.Update:
    """Build an Update: kind is "insert", "modify" or "delete"."""
    t = {"insert": p4r.Update.INSERT, "modify": p4r.Update.MODIFY, "delete": p4r.Update.DELETE}[kind]
    if isinstance(entity, p4r.TableEntry):
        entity = p4r.Entity(table_entry=entity)
    return p4r.Update(type=t, entity=entity)

