"""The agent against the real controller (controller/, embedded switch as its P4Runtime
target): registration, flow ids from the controller's range, a request's whole event
sequence accepted without rejections."""

import time

import pytest

from hostagent.agent import AgentConfig, HostAgent
from hostagent.testing import loopback_addresses

controller_testing = pytest.importorskip("controller.testing")
config_mod = pytest.importorskip("controller.config")


@pytest.fixture
def live(request):
    """A controller (scheduler ``request.param``, default mfs) on the embedded switch, hosts h1, h2."""
    a_ip, b_ip = loopback_addresses(2)
    try:
        target = controller_testing.open_target("embedded")
        t = target.__enter__()
    except controller_testing.TargetUnavailable as e:
        pytest.skip(f"embedded switch unavailable: {e}")
    hosts = [{"name": "h1", "address": a_ip, "token": "token-of-h1", "switch": "s1", "port": 1},
             {"name": "h2", "address": b_ip, "token": "token-of-h2", "switch": "s1", "port": 2}]
    data = controller_testing.config_data([t.address], hosts=hosts, policy={
        "scheduler": getattr(request, "param", "mfs"), "bandwidth_bps": 1e9})
    cfg = config_mod.parse(data, "hostagent-test.yaml")
    ctl = controller_testing.LiveController(cfg)
    try:
        yield ctl, a_ip, b_ip
    finally:
        ctl.stop()
        target.__exit__(None, None, None)


def test_agent_reports_to_real_controller(live):
    ctl, a_ip, b_ip = live
    target = f"127.0.0.1:{ctl.c.api_port}"
    a = HostAgent(AgentConfig("h1", a_ip, controller=target, token="token-of-h1")).start()
    b = HostAgent(AgentConfig("h2", b_ip, controller=target, token="token-of-h2")).start()
    try:
        assert a.reporter.registered.wait(15), a.reporter.last_error
        now = time.time()
        a.request_start(5, deadline=now + 5, arrival=now, num_layers=8, batch_id=5)
        a.batch_event(5, "arrival")
        t1 = a.submit(1, b_ip, 300_000, request_id=5, batch_id=5, deadline=now + 5, target_layer=3, current_layer=0)
        t2 = a.submit(3, b_ip, 200_000, request_id=5, batch_id=5, deadline=now + 5, target_layer=0, current_layer=0)
        a.layer_boundary(5, 1)
        t1.wait(30), t2.wait(30)
        base, bits = a.flow_id_range()
        assert base <= t1.flow_id < base + (1 << bits) and base <= t2.flow_id < base + (1 << bits)
        a.layer_boundary(5, 8, prefill_done=True)
        a.batch_event(5, "departure")
        a.request_end(5)
        assert a.reporter.flush(15), a.reporter.last_error
        assert list(a.reporter.rejections) == []
        assert a.reporter.acked_seq >= 9
    finally:
        a.close(flush_timeout=0)
        b.close(flush_timeout=0)
