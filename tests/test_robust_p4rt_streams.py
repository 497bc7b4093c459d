"""Hostile StreamChannel clients of the embedded switch's P4Runtime server (issue 10 items 8-10):
streams that never arbitrate, a primary that stops reading, clients without an election id."""

from __future__ import annotations

import threading

import grpc
import pytest
from finsy.proto import p4r, p4r_grpc, rpc_code

from tests.dataplane.embedded_target import P4RTClient, WriteFailed, update
from tests.test_embedded_p4rt import SCHEMA, flow, mfs_frame
from topo.embedded import server as srv
from topo.embedded.pipeline import filter_index
from topo.embedded.server import start_server

C = rpc_code.Code
INS = p4r.Update.INSERT


def scrape(handle) -> dict:
    """The switch's Prometheus /metrics (topo/embedded/metrics.py) as {name{labels}: value}."""
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    from topo.embedded.metrics import serve
    server, port = serve(handle.stats, "127.0.0.1:0")
    try:
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    finally:
        server.shutdown()
        server.server_close()
    out = {}
    for fam in text_string_to_metric_families(text):
        for smp in fam.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(smp.labels.items()))
            out[smp.name + (f"{{{labels}}}" if labels else "")] = smp.value
    return out


@pytest.fixture
def sw():
    h = start_server(address="127.0.0.1:0", device_id=1)
    yield h
    h.stop()


class SilentStreams:
    """``n`` StreamChannel calls on one channel that send nothing (never arbitrate)."""

    def __init__(self, address: str, n: int):
        self.channel = grpc.insecure_channel(address)
        stub = p4r_grpc.P4RuntimeStub(self.channel)
        self.done = threading.Event()

        def never():
            self.done.wait()
            return
            yield  # a generator that yields nothing

        self.calls = [stub.StreamChannel(never()) for _ in range(n)]

    def close(self):
        self.done.set()
        for c in self.calls:
            c.cancel()
        self.channel.close()


def test_silent_streams_do_not_starve_the_server(sw):
    """40 streams that never arbitrate: Capabilities still answers, a controller still gets
    its arbitration reply and becomes primary (item 8)."""
    silent = SilentStreams(sw.address, 40)
    c = P4RTClient(sw.address, election_id=3)
    try:
        import time
        deadline = time.monotonic() + 10
        while sw.service.stream_count() < 40 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert sw.service.stream_count() >= 40, "the silent streams never reached the server"
        resp = c.stub.Capabilities(p4r.CapabilitiesRequest(), timeout=5)
        assert resp.p4runtime_api_version
        arb = c.open()
        assert arb is not None and arb.status.code == C.OK
        c.set_pipeline(SCHEMA.info)
        c.write([update(INS, table_entry=flow(3, 7, 0))])
    finally:
        c.close()
        silent.close()


def test_stream_that_never_arbitrates_is_closed(sw, monkeypatch):
    monkeypatch.setattr(sw.service, "arbitration_timeout_s", 0.3)
    silent = SilentStreams(sw.address, 1)
    try:
        with pytest.raises(grpc.RpcError) as e:
            next(silent.calls[0])
        assert e.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert "MasterArbitrationUpdate" in e.value.details()
    finally:
        silent.close()


def test_primary_that_stops_reading_has_a_bounded_digest_queue(sw, monkeypatch):
    """Digest lists for a primary that does not read are bounded: the oldest are dropped and
    counted, the newest arrive once it reads again (item 9)."""
    monkeypatch.setattr(srv, "DIGEST_QUEUE", 50)
    # no BDP probing: gRPC's receive window stays small, so not reading really backs up the server
    ch = grpc.insecure_channel(sw.address, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)])
    stub = p4r_grpc.P4RuntimeStub(ch)
    out: list = []
    cv = threading.Condition()

    def requests():
        i = 0
        while True:
            with cv:
                while len(out) <= i:
                    cv.wait()
                m = out[i]
            if m is None:
                return
            yield m
            i += 1

    def send(m):
        with cv:
            out.append(m)
            cv.notify()

    call = stub.StreamChannel(requests())
    arb = p4r.StreamMessageRequest()
    arb.arbitration.device_id, arb.arbitration.election_id.low = 1, 1
    send(arb)
    try:
        assert next(call).arbitration.status.code == C.OK
        c = P4RTClient(sw.address, election_id=1)
        c.set_pipeline(SCHEMA.info)
        cfg = p4r.DigestEntry(digest_id=SCHEMA.digest("mfs_miss_t").id)
        cfg.config.max_timeout_ns, cfg.config.max_list_size, cfg.config.ack_timeout_ns = 0, 1, 0
        c.write([update(INS, digest_entry=cfg)])
        n = 10_000  # more lists than gRPC's flow-control window holds
        frame = bytearray(mfs_frame(fid=1))
        frame[40:42] = b"\0\0"  # no UDP checksum: the flow id below changes
        fid_at = 14 + 20 + 8 + 4
        assert frame[fid_at:fid_at + 4] == (1).to_bytes(4, "big")
        # the data plane reports an unknown flow once per miss_filter cell (4096 cells) until the
        # controller clears it; this test is about the server's queue, so each cell is cleared
        cells = sw.switch.register("MfsIngress.miss_filter")
        for fid in range(1, n + 1):
            frame[fid_at:fid_at + 4] = fid.to_bytes(4, "big")
            cells[filter_index(fid)] = 0
            sw.switch.process(1, bytes(frame))
        st = sw.service.stats()
        assert st["digest_lists_dropped"] > 0, st
        assert st["stream_queue_max"] <= 50, st
        assert scrape(sw)["mfs_switch_digest_lists_dropped_total"] == st["digest_lists_dropped"]
        # read again: far fewer than n lists arrive, the newest (last flow id) among them
        send(arb)  # arbitration again: its reply marks the end of what was queued
        got = []
        for m in call:
            if m.WhichOneof("update") == "arbitration":
                break
            got.append(m.digest)
        fids = [int.from_bytes(d.data[0].struct.members[1].bitstring, "big") for d in got]
        print(f"{n} digest lists for a primary that stopped reading: {len(got)} delivered, "
              f"{st['digest_lists_dropped']} dropped")
        assert len(got) < n // 2
        assert fids[-1] == n
        # dropped lists are forgotten: a dropped flow is reported again when it is seen again
        lost = next(f for f in range(1, n + 1) if f not in set(fids))
        frame[fid_at:fid_at + 4] = lost.to_bytes(4, "big")
        cells[filter_index(lost)] = 0
        sw.switch.process(1, bytes(frame))
        send(arb)
        again = []
        for m in call:
            if m.WhichOneof("update") == "arbitration":
                break
            again.append(m.digest)
        assert [int.from_bytes(d.data[0].struct.members[1].bitstring, "big") for d in again] == [lost]
        c.close()
    finally:
        send(None)
        call.cancel()
        ch.close()


def test_client_that_floods_and_never_reads_is_bounded(sw, monkeypatch):
    """Every arbitration update is answered; for a client that sends them without reading the
    answers at most CONTROL_QUEUE wait, and when it reads it learns its stream was closed."""
    monkeypatch.setattr(srv, "CONTROL_QUEUE", 50)
    # a 1 KiB receive window: the server can push only a few answers before its queue fills
    ch = grpc.insecure_channel(sw.address, options=[("grpc.http2.bdp_probe", 0), ("grpc.http2.lookahead_bytes", 1024)])
    arb = p4r.StreamMessageRequest()
    arb.arbitration.device_id, arb.arbitration.election_id.low = 1, 1
    call = p4r_grpc.P4RuntimeStub(ch).StreamChannel(iter([arb] * 5_000))
    try:
        import time
        deadline = time.monotonic() + 20
        while not any(c.overflowed for c in list(sw.service.streams)) and time.monotonic() < deadline:
            time.sleep(0.05)
        (conn,) = sw.service.streams
        assert conn.overflowed and len(conn._q) <= 51, len(conn._q)
        with pytest.raises(grpc.RpcError) as e:
            for _m in call:
                pass
        assert e.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, e.value
        assert "does not read" in e.value.details()
        c = P4RTClient(sw.address, election_id=2)  # the switch still serves others
        assert c.open().status.code == C.OK
        c.close()
    finally:
        call.cancel()
        ch.close()


def test_clients_without_election_id_are_backups(sw):
    """No election id: a backup (P4Runtime 1.4 §5), any number of them; they cannot write,
    and a client with an election id still becomes primary (item 10)."""
    backups = [P4RTClient(sw.address, election_id=None) for _ in range(3)]
    try:
        for b in backups:
            arb = b.open()
            assert arb is not None, b.stream_error
            assert arb.status.code == C.NOT_FOUND, arb  # backup, no primary yet
        with pytest.raises(grpc.RpcError) as e:
            backups[0].set_pipeline(SCHEMA.info)
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
        p = P4RTClient(sw.address, election_id=1)
        assert p.open().status.code == C.OK
        for b in backups:
            note = b.next("arbitration")
            assert note.status.code == C.ALREADY_EXISTS and note.election_id.low == 1
        p.set_pipeline(SCHEMA.info)
        with pytest.raises(WriteFailed) as e:
            backups[1].write([update(INS, table_entry=flow(3, 1, 0))])
        assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
        p.close()
        for b in backups:
            assert b.next("arbitration").status.code == C.NOT_FOUND
    finally:
        for b in backups:
            b.close()
