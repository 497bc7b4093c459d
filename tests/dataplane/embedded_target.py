"""DataplaneTarget over the embedded switch: writes and reads go through a real
gRPC P4Runtime connection to an in-process server, packets through
``switch.process()`` (ingress + replication + egress with empty queues).

Also home of :class:`P4RTClient`, a small *synchronous* P4Runtime client used by
the embedded-switch tests where every message must be visible (the controller's
client in controller/p4rt is asyncio and acknowledges digests by itself).
"""

from __future__ import annotations

import queue
import threading

import grpc
from finsy.proto import p4r, p4r_grpc, rpc_status

from mfs.p4info import P4Schema


class WriteFailed(Exception):
    def __init__(self, code: grpc.StatusCode, details: str, errors: list[p4r.Error]):
        super().__init__(f"{code.name}: {details}")
        self.code, self.details, self.errors = code, details, errors


class P4RTClient:
    """One stream + unary RPCs, synchronous. ``messages`` receives every StreamMessageResponse."""

    def __init__(self, address: str, device_id: int = 1, election_id: int | None = 1, role: str = ""):
        self.address, self.device_id, self.role = address, device_id, role
        self.election_id = election_id
        self.channel = grpc.insecure_channel(address, options=[("grpc.max_metadata_size", 4 << 20)])
        self.stub = p4r_grpc.P4RuntimeStub(self.channel)
        self._out: queue.Queue = queue.Queue()
        self.messages: queue.Queue = queue.Queue()
        self.stream_error: grpc.RpcError | None = None
        self._call = None
        self._reader = None

    # ----- stream
    def open(self, election_id: int | None = None) -> p4r.MasterArbitrationUpdate:
        """Open the stream, send arbitration, return the first arbitration reply."""
        if election_id is not None:
            self.election_id = election_id

        def gen():
            while True:
                m = self._out.get()
                if m is None:
                    return
                yield m

        self._call = self.stub.StreamChannel(gen())
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        self.send(self.arbitration_msg())
        return self.next("arbitration")

    def arbitration_msg(self, election_id: int | None = None, device_id: int | None = None) -> p4r.StreamMessageRequest:
        m = p4r.StreamMessageRequest()
        m.arbitration.device_id = self.device_id if device_id is None else device_id
        eid = self.election_id if election_id is None else election_id
        if eid is not None:
            m.arbitration.election_id.high, m.arbitration.election_id.low = eid >> 64, eid & ((1 << 64) - 1)
        if self.role:
            m.arbitration.role.name = self.role
        return m

    def _read(self):
        try:
            for msg in self._call:
                self.messages.put(msg)
        except grpc.RpcError as e:
            self.stream_error = e
        self.messages.put(None)  # end of stream

    def send(self, msg: p4r.StreamMessageRequest) -> None:
        self._out.put(msg)

    def next(self, kind: str | None = None, timeout: float = 10.0):
        """Next stream message (of ``kind`` if given, skipping others); None at end of stream."""
        while True:
            msg = self.messages.get(timeout=timeout)
            if msg is None:
                self.messages.put(None)
                return None
            if kind is None:
                return msg
            if msg.WhichOneof("update") == kind:
                return getattr(msg, kind)

    def barrier(self) -> list[p4r.StreamMessageResponse]:
        """Re-send arbitration and collect everything the server queued before its reply."""
        self.send(self.arbitration_msg())
        got = []
        while True:
            msg = self.messages.get(timeout=10)
            if msg is None:
                self.messages.put(None)
                return got
            if msg.WhichOneof("update") == "arbitration":
                return got
            got.append(msg)

    def close(self) -> None:
        self._out.put(None)
        if self._reader is not None:
            self._reader.join(timeout=5)
        self.channel.close()

    # ----- unary
    def _eid(self, msg) -> None:
        if self.election_id is not None:
            msg.election_id.high, msg.election_id.low = self.election_id >> 64, self.election_id & ((1 << 64) - 1)

    def set_pipeline(self, p4info, device_config: bytes = b"", cookie: int = 0,
                     action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT) -> None:
        req = p4r.SetForwardingPipelineConfigRequest(device_id=self.device_id, action=action, role=self.role)
        self._eid(req)
        if p4info is not None:
            req.config.p4info.CopyFrom(p4info)
        req.config.p4_device_config = device_config
        req.config.cookie.cookie = cookie
        self.stub.SetForwardingPipelineConfig(req, timeout=10)

    def get_pipeline(self, response_type=p4r.GetForwardingPipelineConfigRequest.ALL) -> p4r.ForwardingPipelineConfig:
        req = p4r.GetForwardingPipelineConfigRequest(device_id=self.device_id, response_type=response_type)
        return self.stub.GetForwardingPipelineConfig(req, timeout=10).config

    def write(self, updates: list[p4r.Update], atomicity=p4r.WriteRequest.CONTINUE_ON_ERROR) -> None:
        """Raise WriteFailed with the per-update p4.v1.Error list (empty for whole-RPC errors)."""
        req = p4r.WriteRequest(device_id=self.device_id, role=self.role, atomicity=atomicity)
        self._eid(req)
        req.updates.extend(updates)
        try:
            self.stub.Write(req, timeout=10)
        except grpc.RpcError as e:
            errors = []
            for k, v in e.trailing_metadata() or ():
                if k == "grpc-status-details-bin":
                    st = rpc_status.Status.FromString(v)
                    for d in st.details:
                        err = p4r.Error()
                        d.Unpack(err)
                        errors.append(err)
            raise WriteFailed(e.code(), e.details(), errors) from None

    def read(self, entities: list[p4r.Entity]) -> list[p4r.Entity]:
        req = p4r.ReadRequest(device_id=self.device_id)
        req.entities.extend(entities)
        return [e for resp in self.stub.Read(req, timeout=10) for e in resp.entities]


def update(kind: int, **entity) -> p4r.Update:
    """update(p4r.Update.INSERT, table_entry=te)"""
    u = p4r.Update(type=kind)
    (name, msg), = entity.items()
    if name == "multicast_group_entry":
        u.entity.packet_replication_engine_entry.multicast_group_entry.CopyFrom(msg)
    else:
        getattr(u.entity, name).CopyFrom(msg)
    return u


def mcast_group(group_id: int, ports: list[int]) -> p4r.MulticastGroupEntry:
    g = p4r.MulticastGroupEntry(multicast_group_id=group_id)
    for p in ports:
        g.replicas.add(egress_port=p, instance=0)
    return g


class EmbeddedTarget:
    """tests/dataplane/runner.py DataplaneTarget for topo/embedded."""

    def __init__(self):
        from topo.embedded.server import start_server

        self.handle = start_server(address="127.0.0.1:0", device_id=1)
        self.schema: P4Schema = self.handle.switch.schema
        self.client = P4RTClient(self.handle.address, device_id=1, election_id=1)
        arb = self.client.open()
        assert arb.status.code == 0, arb
        self._digests: list[dict] = []

    def close(self) -> None:
        self.client.close()
        self.handle.stop()

    def reset(self) -> None:
        self.client.set_pipeline(self.schema.info)  # VERIFY_AND_COMMIT: a fresh pipeline
        cfg = p4r.DigestEntry(digest_id=self.schema.digest("mfs_miss_t").id)
        cfg.config.max_timeout_ns, cfg.config.max_list_size, cfg.config.ack_timeout_ns = 0, 1, 10**9
        self.client.write([update(p4r.Update.INSERT, digest_entry=cfg)])
        self._digests = []

    def write(self, setup_items: list[dict]) -> None:
        ups = []
        for it in setup_items:
            if "register" in it:
                re_ = p4r.RegisterEntry(register_id=self.schema.register(it["register"]).id)
                re_.index.index = it["index"]
                re_.data.bitstring = it["value"].to_bytes(max(1, (it["value"].bit_length() + 7) // 8), "big")
                ups.append(update(p4r.Update.MODIFY, register_entry=re_))
            elif "multicast_group" in it:
                ups.append(update(p4r.Update.INSERT, multicast_group_entry=mcast_group(it["multicast_group"], it["ports"])))
            elif it.get("default"):
                te = self.schema.table_entry(it["table"], None, it["action"], it.get("params"), default=True)
                ups.append(update(p4r.Update.MODIFY, table_entry=te))
            else:
                te = self.schema.table_entry(it["table"], it.get("match"), it["action"], it.get("params"),
                                             priority=it.get("priority", 0))
                te.idle_timeout_ns = it.get("idle_timeout_ns", 0)
                ups.append(update(p4r.Update.INSERT, table_entry=te))
        if ups:
            self.client.write(ups)

    def send(self, port: int, frame: bytes) -> list[tuple[int, bytes, int | None]]:
        return [(p, bytes(f), lv) for p, f, lv in self.handle.switch.process(port, frame)]

    def counter(self, name: str, index: int) -> tuple[int, int]:
        ce = p4r.CounterEntry(counter_id=self.schema.counter(name).id)
        ce.index.index = index
        (e,) = self.client.read([p4r.Entity(counter_entry=ce)])
        return e.counter_entry.data.packet_count, e.counter_entry.data.byte_count

    def register(self, name: str, index: int) -> int:
        re_ = p4r.RegisterEntry(register_id=self.schema.register(name).id)
        re_.index.index = index
        (e,) = self.client.read([p4r.Entity(register_entry=re_)])
        return int.from_bytes(e.register_entry.data.bitstring, "big")

    def packet_out(self, values: dict) -> None:
        self.client.send(p4r.StreamMessageRequest(packet=self.schema.packet_out(values)))

    def digests(self) -> list[dict]:
        names = [m.name for m in self.schema.info.type_info.structs["mfs_miss_t"].members]
        for msg in self.client.barrier():
            if msg.WhichOneof("update") == "digest":
                dl = msg.digest
                for d in dl.data:
                    self._digests.append({n: int.from_bytes(m.bitstring, "big")
                                          for n, m in zip(names, d.struct.members)})
                ack = p4r.StreamMessageRequest()
                ack.digest_ack.digest_id, ack.digest_ack.list_id = dl.digest_id, dl.list_id
                self.client.send(ack)
        return list(self._digests)
