"""The host send queue follows the controller's levels (ReportAck.levels) for every scheduler:
strict priority across ranks, round robin within one; the agent ranks each flow at the level the
controller gave it (at start and after promotions), new flows at the level learnt for their stage."""

from __future__ import annotations

import time

import pytest

from hostagent.agent import AgentConfig, HostAgent, host_rank
from hostagent.testing import loopback_addresses
from hostagent.transport import MIN_RTO, Transport
from mfs import header as H

from tests.test_hostagent_controller import live  # noqa: F401 - the controller fixture (param: scheduler)


def _hdr(fid, stage=1):
    return H.MfsHeader(stage=stage, flow_id=fid, request_id=1, target_layer=0, rli=0)


def test_priority_pick_is_strict_across_ranks_and_round_robin_within():
    a_ip, b_ip = loopback_addresses(2)
    t = Transport(a_ip, priority_queue=True, name="pick")  # not started: _pick is driven by hand
    try:
        for fid, rank in ((1, 3.0), (2, 1.0), (3, 1.0)):
            t.send(_hdr(fid), (b_ip, 9), 1_000_000, rank=rank)
        t._commands()
        assert [t._pick().flow_id for _ in range(6)] == [2, 3, 2, 3, 2, 3]
        t.rerank(1, 1.0)  # promoted to the others' rank: now shares with them
        t._commands()
        picks = [t._pick().flow_id for _ in range(6)]
        assert set(picks[:3]) == {1, 2, 3} and picks[3:] == picks[:3]
        assert t._tx[1].rto == MIN_RTO  # a promotion resets the retransmission timer
        t.rerank(2, 0.0)
        t._commands()
        assert {t._pick().flow_id for _ in range(5)} == {2}
    finally:
        t.close()


@pytest.fixture
def agent_on(live):
    ctl, a_ip, b_ip = live
    target_addr = f"127.0.0.1:{ctl.c.api_port}"
    # b_ip has no agent: transfers to it stay live (unacknowledged), so their ranks can be read
    agent = HostAgent(AgentConfig("h1", a_ip, controller=target_addr, token="token-of-h1", priority_queue=True,
                                  window=4 * 1400)).start()
    try:
        assert agent.reporter.registered.wait(15), agent.reporter.last_error
        yield ctl, agent, b_ip
    finally:
        agent.close(flush_timeout=0)


def wait(cond, what, timeout=15.0):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def ranks_follow_controller(ctl, agent, trs) -> bool:
    for tr in trs:
        want = ctl.c.engine.desired.get((tr.stage, tr.flow_id))
        if want is None or agent.controller_level(tr.flow_id) != want or tr._tx.rank != float(want):
            return False
    return True


@pytest.mark.parametrize("live", ["fair"], indirect=True)
def test_baseline_host_queue_uses_the_baselines_levels(agent_on):
    ctl, agent, peer = agent_on
    now = time.time()
    agent.request_start(1, deadline=now + 30, arrival=now, num_layers=8)
    s3 = agent.submit(3, peer, 5_000_000, request_id=1, deadline=now + 30)
    s2 = agent.submit(2, peer, 5_000_000, request_id=1, deadline=now + 30)
    wait(lambda: ranks_follow_controller(ctl, agent, [s3, s2]), "ranks = fair's levels")
    # fair gives every flow the same level: the host shares its NIC instead of MFS's Stage order
    assert s3._tx.rank == s2._tx.rank and host_rank(3, None, None) != host_rank(2, 0, None)
    # a new Stage-3 flow starts at the level the controller gave the previous one, not MFS's default
    s3b = agent.submit(3, peer, 5_000_000, request_id=1, deadline=now + 30)
    assert s3b._tx.rank == s3._tx.rank


@pytest.mark.parametrize("live", ["mfs"], indirect=True)
def test_mfs_promotion_reaches_the_host_queue(agent_on):
    ctl, agent, peer = agent_on
    now = time.time()
    agent.request_start(2, deadline=now + 30, arrival=now, num_layers=8)
    s1 = agent.submit(1, peer, 5_000_000, request_id=2, deadline=now + 30, target_layer=4, current_layer=0)
    s2 = agent.submit(2, peer, 5_000_000, request_id=2, deadline=now + 30)
    wait(lambda: ranks_follow_controller(ctl, agent, [s1, s2]), "ranks = MFS's levels")
    before = s1._tx.rank
    assert s2._tx.rank < before  # Stage 2 above a fetch due in 4 layers
    agent.layer_boundary(2, 4)  # the fetch is due now: the controller promotes it
    wait(lambda: s1._tx.rank < before and ranks_follow_controller(ctl, agent, [s1, s2]),
         "the promotion in the host queue")
