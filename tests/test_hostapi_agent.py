"""Interop: the real host agent reporter (hostagent.report.Reporter) against the real
controller and the embedded switch, including a controller restart in the middle."""

from __future__ import annotations

import time

import pytest

from controller import config as config_mod
from controller.testing import LiveController, TargetUnavailable, config_data, free_port, open_target
from mfs.p4info import P4Schema

SCHEMA = P4Schema.load()


def wait(cond, timeout=20.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def setup():
    """(switch, config factory, controller, started reporter of h1) — the caller closes them."""
    Reporter = pytest.importorskip("hostagent.report", reason="host agent not importable").Reporter
    try:
        cm = open_target("embedded")
        t = cm.__enter__()
    except TargetUnavailable as e:
        pytest.skip(str(e))
    t.cm = cm
    api = free_port()
    cfg = lambda: config_mod.parse(config_data([t.address], api={"listen": f"127.0.0.1:{api}"}, gc_timeout_s=5),
                                   "agent-test.yaml")  # noqa: E731
    lc = LiveController(cfg())
    rep = Reporter(f"127.0.0.1:{api}", "h1", "token-of-h1", "10.0.0.1", flush_interval=0.0,
                   backoff_min=0.05, backoff_max=0.5, rpc_timeout=5)
    rep.start()
    assert rep.registered.wait(10)
    return t, cfg, lc, rep


def test_agent_reporter_survives_a_controller_restart():
    t, cfg, lc, rep = setup()
    try:
        now = time.time()
        rep.emit("request_start", request_id=1, deadline=now + 5, arrival=now, num_layers=8)
        rep.emit("flow_start", flow_id=1, stage=3, request_id=1, size_bytes=5_000_000, target_layer=7)
        rep.emit("flow_start", flow_id=2, stage=1, request_id=1, size_bytes=100_000, target_layer=3)
        assert rep.flush(10)
        assert not rep.rejections
        flows = lambda: {(e["stage"], e["flow_id"]): e["installed"]["s1"] for e in lc.call(lc.c.flows())}  # noqa: E731
        before = flows()
        assert set(before) == {(3, 1), (1, 2)} and all(v is not None for v in before.values())

        lc.stop()  # controller restart; entries stay on the switch
        lc = LiveController(cfg())
        assert {k: a.level for k, a in lc.c.engine.adopted.items()} == before
        rep.emit("progress", flow_id=2, bytes_sent=50_000)
        rep.emit("flow_end", flow_id=2)
        assert rep.flush(15)
        wait(lambda: rep.stats["registers"] >= 2, what="the agent to re-register")
        assert not rep.rejections, rep.rejections
        assert set(flows()) == {(3, 1)}  # flow 2 ended: its adopted entry is deleted

        async def on_switch():
            sup = lc.c.engine.supervisors["s1"]
            return {(s.match["stage"], s.match["flow_id"]) for s in
                    (SCHEMA.describe_table_entry(te) for te in await sup.client.read_table(sup.flow_table.id))}
        assert lc.call(on_switch()) == {(3, 1)}
    finally:
        rep.close(flush_timeout=0)
        lc.stop()
        t.cm.__exit__(None, None, None)


def test_double_restart_controller_and_switch_loses_no_entry():
    """Controller AND switch restart (issue 10, item 3): the new controller adopts nothing (the
    switch is empty) and its last_seq (0) is below what the host had acked, so the reporter
    re-announces its live requests and flows: every live flow gets its entry back, at the level
    the policy gives it, and its later events are applied, not refused as unknown_flow."""
    t, cfg, lc, rep = setup()
    try:
        now = time.time()
        rep.emit("request_start", request_id=1, deadline=now + 30, arrival=now, num_layers=8)
        rep.emit("flow_start", flow_id=1, stage=3, request_id=1, size_bytes=5_000_000, target_layer=7)
        rep.emit("flow_start", flow_id=2, stage=1, request_id=1, size_bytes=100_000, target_layer=3)
        rep.emit("flow_start", flow_id=3, stage=1, request_id=1, size_bytes=100_000, target_layer=6)
        rep.emit("layer", request_id=1, current_layer=3)
        rep.emit("progress", flow_id=1, bytes_sent=1_000_000)
        rep.emit("flow_end", flow_id=3)
        assert rep.flush(10) and not rep.rejections
        flows = lambda: {(e["stage"], e["flow_id"]): e["installed"]["s1"] for e in lc.call(lc.c.flows())}  # noqa: E731
        before = flows()
        assert set(before) == {(3, 1), (1, 2)} and all(v is not None for v in before.values())

        lc.stop()
        t.restart()  # the switch restarts too: its table is empty
        lc = LiveController(cfg())
        assert not lc.c.engine.adopted
        wait(lambda: rep.stats["controller_resets"] >= 1 and rep.backlog() == 0, what="the re-announce")
        assert not rep.rejections, rep.rejections
        wait(lambda: flows() == before, what=f"the entries back ({flows()} != {before})")
        eng = lc.c.engine
        assert eng.requests[("h1", 1)].layer == (3, False)  # the layer reached is re-announced too
        assert dict(eng.flow_rows()[0]) and eng.policy.flows()  # the policy knows them again
        rep.emit("progress", flow_id=2, bytes_sent=50_000)
        rep.emit("flow_end", flow_id=2)
        assert rep.flush(10)
        assert not rep.rejections, rep.rejections
        assert set(flows()) == {(3, 1)}
    finally:
        rep.close(flush_timeout=0)
        lc.stop()
        t.cm.__exit__(None, None, None)


def test_double_restart_with_events_sent_while_the_controller_was_down():
    """Controller AND switch restart while the host keeps reporting (issue 10, item 3, in
    flight): a flow and a request acknowledged before the outage and ended during it are
    re-announced (their end events, resent after the restart, are applied, not refused as
    unknown_flow / unknown_request), and the batch whose arrival was acknowledged before is
    announced again, so the policy ranks its flows (MFS ranks only active batches)."""
    t, cfg, lc, rep = setup()
    try:
        now = time.time()
        rep.emit("request_start", request_id=1, batch_id=7, deadline=now + 30, arrival=now, num_layers=8)
        rep.emit("request_start", request_id=2, batch_id=7, deadline=now + 40, arrival=now, num_layers=8)
        rep.emit("batch", batch_id=7, kind="arrival")
        rep.emit("flow_start", flow_id=1, stage=3, request_id=1, size_bytes=5_000_000, target_layer=7)
        rep.emit("flow_start", flow_id=2, stage=1, request_id=1, batch_id=7, size_bytes=100_000, target_layer=3)
        rep.emit("flow_start", flow_id=3, stage=1, request_id=1, batch_id=7, size_bytes=100_000, target_layer=6)
        rep.emit("flow_start", flow_id=4, stage=1, request_id=2, batch_id=7, size_bytes=100_000, target_layer=2)
        assert rep.flush(10) and not rep.rejections
        eng = lc.c.engine
        assert eng.policy.rank(2) < float("inf")  # ranked: its batch is active
        flows = lambda: {(e["stage"], e["flow_id"]): e["installed"]["s1"] for e in lc.call(lc.c.flows())}  # noqa: E731

        lc.stop()
        t.restart()
        # sent while the controller is down: ends of flows and a request it had acknowledged
        rep.emit("flow_end", flow_id=3)
        rep.emit("flow_end", flow_id=4)
        rep.emit("request_end", request_id=2)
        assert not rep.flush(0.3)  # nobody acknowledges them
        lc = LiveController(cfg())
        assert not lc.c.engine.adopted
        wait(lambda: rep.stats["controller_resets"] >= 1 and rep.backlog() == 0, what="the re-announce")
        assert not rep.rejections, rep.rejections
        wait(lambda: set(flows()) == {(3, 1), (1, 2)} and all(v is not None for v in flows().values()),
             what=f"the entries of the live flows ({flows()})")
        eng = lc.c.engine
        assert ("h1", 2) not in eng.requests and 3 not in eng.flows and 4 not in eng.flows
        assert eng.batches.recs[("h1", 7)].active
        assert eng.policy.rank(2) < float("inf")  # its batch is ranked again without a new batch event
        rep.emit("flow_end", flow_id=2)
        rep.emit("request_end", request_id=1)
        assert rep.flush(10) and not rep.rejections, rep.rejections
    finally:
        rep.close(flush_timeout=0)
        lc.stop()
        t.cm.__exit__(None, None, None)
