"""Agent ↔ controller reporting against a HostReports server on a unix socket:
batching and order, controller down at start and in the middle (events queued,
resent with the same seq, applied once, in order), lost acks, wrong token, renumbering."""

import time

import pytest

from hostagent.agent import AgentConfig, HostAgent
from hostagent.report import Reporter, channel_target
from hostagent.testing import wait_for, FakeController, FakeHostReports, HostState, loopback_addresses



@pytest.fixture
def sock(tmp_path):
    return f"unix:{tmp_path}/ctl.sock"


def _seqs(events):
    return [e.seq for e in events]


def _kinds(events):
    return [e.WhichOneof("kind") for e in events]


def test_batching_and_order(sock):
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", batch_max=50, flush_interval=0.02)
    try:
        for i in range(400):
            r.emit("progress", flow_id=i, bytes_sent=i)
        r.start()
        assert r.flush(10)
        ev = svc.applied("h1")
        assert _seqs(ev) == list(range(1, 401))
        assert [e.progress.flow_id for e in ev] == list(range(400))
        batches = svc.hosts["h1"].batches
        assert max(batches) <= 50 and len(batches) < 400 / 10  # batched, never above batch_max
        assert svc.hosts["h1"].gaps == []
    finally:
        r.close()
        ctl.stop()


def test_controller_down_then_up_nothing_lost_or_duplicated(sock):
    svc = FakeHostReports({"h1": "tok"})
    r = Reporter(sock, "h1", "tok", "10.0.0.1", backoff_min=0.02, backoff_max=0.1)
    r.start()
    try:
        for i in range(30):  # controller not there yet
            r.emit("flow_end", flow_id=i)
        time.sleep(0.3)
        assert r.stats["rpc_errors"] > 0 and not r.connected and r.backlog() == 30
        ctl = FakeController(sock, svc).start()
        assert r.flush(10)
        assert _seqs(svc.applied("h1")) == list(range(1, 31))
        ctl.stop()  # controller goes away in the middle (state kept: same servicer)
        for i in range(30, 60):
            r.emit("flow_end", flow_id=i)
        time.sleep(0.3)
        assert r.backlog() == 30
        ctl = FakeController(sock, svc).start()
        assert r.flush(10)
        ev = svc.applied("h1")
        assert _seqs(ev) == list(range(1, 61))
        assert [e.flow_end.flow_id for e in ev] == list(range(60))
        assert svc.hosts["h1"].gaps == []
        ctl.stop()
    finally:
        r.close(flush_timeout=0)


def test_lost_ack_is_not_applied_twice(sock):
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", backoff_min=0.02)
    try:
        r.start()
        assert r.registered.wait(10)
        svc.fail_next_reports = 1  # the batch is applied but the ack is lost
        for i in range(10):
            r.emit("layer", request_id=7, current_layer=i)
        assert r.flush(10)
        ev = svc.applied("h1")
        assert [e.layer.current_layer for e in ev] == list(range(10))  # once each, in order
        assert svc.registers >= 2  # re-registered after the failure and dropped seq <= last_seq
        assert sum(svc.hosts["h1"].batches) >= 10 and svc.fail_next_reports == 0
    finally:
        r.close()
        ctl.stop()


def test_first_registration_continues_controller_sequence(sock):
    svc = FakeHostReports({"h1": "tok"})
    svc.hosts["h1"] = HostState(host_id=1, last_seq=100)  # events applied from an earlier agent run
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1")
    try:
        r.emit("request_end", request_id=1)  # emitted before the first Register
        r.start()
        assert r.flush(10)
        r.emit("request_end", request_id=2)
        assert r.flush(10)
        assert _seqs(svc.applied("h1")) == [101, 102]
    finally:
        r.close()
        ctl.stop()


def test_rejections_are_recorded_and_acked(sock):
    svc = FakeHostReports({"h1": "tok"})
    svc.reject = lambda e: "flow_id out of range" if e.WhichOneof("kind") == "flow_end" and e.flow_end.flow_id == 3 \
        else None
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1")
    try:
        r.start()
        for i in range(5):
            r.emit("flow_end", flow_id=i)
        assert r.flush(10)
        assert list(r.rejections) == [(4, "flow_id out of range")]
        assert r.backlog() == 0
    finally:
        r.close()
        ctl.stop()


def test_agent_traffic_flows_with_controller_down_then_reports_in_order(sock):
    svc = FakeHostReports({"h1": "tok"}, flow_id_bits=10)
    a_ip, b_ip = loopback_addresses(2)
    a = HostAgent(AgentConfig("h1", a_ip, controller=sock, token="tok", register_wait=0.2)).start()
    b = HostAgent(AgentConfig("h2", b_ip)).start()
    a.reporter.backoff_min = a.reporter.backoff_max = 0.05
    try:
        t1 = a.submit(2, b_ip, 50_000, request_id=1, target_layer=3, current_layer=3)
        assert t1.wait(20).end_time is not None  # best effort without a controller
        provisional = t1.flow_id
        ctl = FakeController(sock, svc).start()
        assert a.reporter.registered.wait(10)
        base, bits = a.flow_id_range()
        assert (base, bits) == (1 << 10, 10)
        a.layer_boundary(1, 4)
        a.submit(3, b_ip, 0, request_id=1, target_layer=4).wait(20)  # empty: delivered, not reported
        t2 = a.submit(3, b_ip, 70_000, request_id=1, target_layer=4, deadline=time.time() + 5)
        t2.wait(20)
        assert base <= t2.flow_id < base + (1 << bits)
        assert a.reporter.flush(10)
        ev = svc.applied("h1")
        assert _seqs(ev) == list(range(1, len(ev) + 1))
        kinds = _kinds(ev)
        assert kinds[0] == "flow_start" and ev[0].flow_start.flow_id == provisional
        assert ev[0].flow_start.size_bytes == 50_000 and ev[0].flow_start.dst == b_ip
        assert kinds.count("flow_start") == 2 and kinds.count("flow_end") == 2 and "layer" in kinds
        fs2 = [e.flow_start for e in ev if e.WhichOneof("kind") == "flow_start"][1]
        assert (fs2.flow_id, fs2.stage, fs2.size_bytes, fs2.target_layer, fs2.current_layer) == \
            (t2.flow_id, 3, 70_000, 4, 4)
        # flow_end after its flow_start, progress between them
        pos = {(_kinds(ev)[i], getattr(e, _kinds(ev)[i]).flow_id): i for i, e in enumerate(ev)
               if _kinds(ev)[i] in ("flow_start", "flow_end")}
        assert pos[("flow_start", t2.flow_id)] < pos[("flow_end", t2.flow_id)]
        ctl.stop()
    finally:
        a.close(flush_timeout=0)
        b.close()


def test_wrong_token_keeps_retrying_and_traffic_flows(sock):
    svc = FakeHostReports({"h1": "right"})
    ctl = FakeController(sock, svc).start()
    a_ip, b_ip = loopback_addresses(2)
    a = HostAgent(AgentConfig("h1", a_ip, controller=sock, token="wrong", register_wait=0.2)).start()
    b = HostAgent(AgentConfig("h2", b_ip)).start()
    try:
        a.submit(1, b_ip, 10_000, request_id=5, target_layer=2, current_layer=0).wait(20)
        assert wait_for(lambda: "UNAUTHENTICATED" in a.reporter.last_error)
        assert not a.reporter.connected and svc.applied("h1") == []
    finally:
        a.close(flush_timeout=0)
        b.close()
        ctl.stop()


def test_keepalive_batches_while_idle(sock):
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", keepalive=0.1)
    try:
        r.start()
        assert r.registered.wait(10)
        assert wait_for(lambda: svc.hosts["h1"].batches.count(0) >= 3, timeout=10)  # empty batches
        assert r.stats["keepalives"] >= 3 and svc.applied("h1") == []
        r.emit("request_end", request_id=1)  # real events still flow
        assert r.flush(10) and len(svc.applied("h1")) == 1
    finally:
        r.close()
        ctl.stop()
    with pytest.raises(ValueError, match="keepalive"):
        Reporter(sock, "h1", "tok", "10.0.0.1", keepalive=0)


def test_first_event_after_quiet_is_not_held_for_flush_interval(sock):
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", flush_interval=30.0)
    try:
        r.start()
        assert r.registered.wait(10)
        time.sleep(0.1)  # the keep-alive right after registering has gone
        r.emit("request_end", request_id=1)
        assert r.flush(10)  # far less than flush_interval: sent at once
        r.emit("request_end", request_id=2)
        r.emit("request_end", request_id=3)
        assert not r.flush(0.5)  # a second batch within flush_interval waits (bursts are batched)
    finally:
        r.close(flush_timeout=0)
        ctl.stop()


def test_flows_submitted_before_registration_get_real_ids(sock):
    svc = FakeHostReports({"h1": "tok"}, flow_id_bits=10)
    a_ip, b_ip = loopback_addresses(2)
    a = HostAgent(AgentConfig("h1", a_ip, controller=sock, token="tok")).start()
    b = HostAgent(AgentConfig("h2", b_ip)).start()
    a.reporter.backoff_min = a.reporter.backoff_max = 0.05
    ctl = None
    try:
        import threading
        starter = threading.Timer(0.3, lambda: setattr(starter, "ctl", FakeController(sock, svc).start()))
        starter.start()
        t = a.submit(2, b_ip, 20_000, request_id=1, target_layer=0)  # controller not up yet: waits
        starter.join()
        ctl = starter.ctl
        t.wait(20)
        base, bits = a.flow_id_range()
        assert (base, bits) == (1 << 10, 10) and base <= t.flow_id < base + (1 << bits)
        assert a.reporter.flush(10)
        assert [e.flow_start.flow_id for e in svc.applied("h1") if e.WhichOneof("kind") == "flow_start"] == [t.flow_id]
    finally:
        a.close(flush_timeout=0)
        b.close()
        if ctl is not None:
            ctl.stop()


def test_tcp_target_and_bad_targets():
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController("127.0.0.1:0", svc).start()
    r = Reporter(ctl.target, "h1", "tok", "10.0.0.1")
    try:
        r.start()
        r.emit("batch", batch_id=1, kind="arrival")
        assert r.flush(10)
        assert svc.applied("h1")[0].batch.kind == "arrival"
    finally:
        r.close()
        ctl.stop()
    for bad in ("nohost", "unix:", "h:99999", ":5"):
        with pytest.raises(ValueError, match="controller target"):
            channel_target(bad)
    with pytest.raises(ValueError, match="event kind"):
        Reporter("unix:/x", "h", "t", "1.2.3.4").emit("bogus")


class _AcksThenHangs(FakeHostReports):
    """A controller that applies the first ``allow`` Reports, then fails every one unapplied."""

    def __init__(self, tokens, allow):
        super().__init__(tokens)
        self.allow = allow

    def Report(self, request, context):
        if request.session in self.sessions:  # (a stale session is refused as usual)
            if self.allow <= 0:
                import grpc
                context.abort(grpc.StatusCode.UNAVAILABLE, "injected: down")
            self.allow -= 1
        return super().Report(request, context)


def test_reannounce_is_made_again_at_a_further_reset(sock):
    """The controller loses the host's state, applies part of the re-announcement, and loses it
    again: the next re-announcement replaces what was left of the first (each live request,
    batch and flow announced once, from what was acknowledged), and the events emitted since
    follow it."""
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", batch_max=1, flush_interval=0.0, backoff_min=0.02, backoff_max=0.1,
                 keepalive=0.3)  # (a keep-alive finds the restarted controller)
    r.start()
    try:
        r.emit("request_start", request_id=1, batch_id=3)
        r.emit("batch", batch_id=3, kind="arrival")
        r.emit("flow_start", flow_id=5, stage=1, request_id=1, batch_id=3, size_bytes=1000)
        r.emit("progress", flow_id=5, bytes_sent=400)
        r.emit("request_start", request_id=2)  # rejected: not live to the controller
        svc.reject = lambda e: "no" if e.HasField("request_start") and e.request_start.request_id == 2 else None
        assert r.flush(10)
        assert r.live_state() == {"requests": 1, "flows": 1, "batches": 1}
        ctl.stop()
        svc2 = _AcksThenHangs({"h1": "tok"}, allow=1)
        ctl = FakeController(sock, svc2).start()
        assert wait_for(lambda: r.stats["controller_resets"] == 1 and len(svc2.applied("h1")) == 1)
        r.emit("flow_end", flow_id=5)  # while the re-announcement is still being sent
        ctl.stop()
        svc3 = FakeHostReports({"h1": "tok"})
        ctl = FakeController(sock, svc3).start()
        assert wait_for(lambda: r.stats["controller_resets"] == 2)
        assert r.flush(10)
        ev = svc3.applied("h1")
        assert _kinds(ev) == ["request_start", "batch", "flow_start", "progress", "flow_end"]
        assert ev[1].batch.kind == "arrival" and ev[3].progress.bytes_sent == 400
        assert _seqs(ev) == list(range(1, 6)) and svc3.hosts["h1"].gaps == []
        assert r.live_state() == {"requests": 1, "flows": 0, "batches": 1}
    finally:
        r.close(flush_timeout=0)
        ctl.stop()


def test_reannounce_keeps_a_peers_request_apart_from_the_hosts_own_of_the_same_id(sock):
    """Request ids are per host: this host's request 5 and h2's request 5 (which it serves as a
    peer: owner "h2") are two requests, and each gets its own layer back after a reset."""
    svc = FakeHostReports({"h1": "tok"})
    ctl = FakeController(sock, svc).start()
    r = Reporter(sock, "h1", "tok", "10.0.0.1", flush_interval=0.0, backoff_min=0.02, backoff_max=0.1, keepalive=0.3)
    r.start()
    try:
        r.emit("request_start", request_id=5)
        r.emit("layer", request_id=5, current_layer=2)
        r.emit("flow_start", flow_id=9, stage=1, request_id=5, owner="h2", size_bytes=1000)
        r.emit("layer", request_id=5, current_layer=7, prefill_done=True, owner="h2")
        assert r.flush(10)
        ctl.stop()
        svc2 = FakeHostReports({"h1": "tok"})
        ctl = FakeController(sock, svc2).start()
        assert wait_for(lambda: r.stats["controller_resets"] == 1) and r.flush(10)
        layers = {(e.layer.owner, e.layer.request_id): (e.layer.current_layer, e.layer.prefill_done)
                  for e in svc2.applied("h1") if e.HasField("layer")}
        assert layers == {("", 5): (2, False), ("h2", 5): (7, True)}
        r.emit("flow_end", flow_id=9)  # h2's request leaves this host's state; its own stays
        r.emit("layer", request_id=5, current_layer=3)
        assert r.flush(10)
        assert r._req_layer == {("", 5): (3, False)}
    finally:
        r.close(flush_timeout=0)
        ctl.stop()
