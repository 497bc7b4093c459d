"""Simulator network: cached rate caps (Karuna pacing) are re-read exactly when they can change."""

from __future__ import annotations

import pytest

from mfs.sim.engine import ClusterConfig, Msg, Network, Simulator
from mfs.sim.model import Hardware, get_model
from mfs.sim.runner import sim_policy
from mfs.sim.workload import synthetic


def _msg(net, fid, conn, level=0, size=1000):
    m = Msg(fid, 3, size, conn, None, 0, None, fid)
    m.level = level
    net.add(m, 0.0)
    return m


def test_connection_paced_at_sum_of_caps_and_updated_when_a_message_joins():
    caps = {1: 10.0, 2: 20.0, 3: 5.0}
    reads = []
    net = Network(2, 1000.0, lambda fid: reads.append(fid) or caps.get(fid))
    c = net.conn("c", 0, 1)
    _msg(net, 1, c)
    _msg(net, 2, c)
    net.flush(0.0)
    assert c.rate == pytest.approx(30.0)
    _msg(net, 3, c)  # queued behind the head: the pacing rate must include it at once
    assert net.dirty
    net.flush(0.0)
    assert c.rate == pytest.approx(35.0)
    # the head completes: same level, capped -> no re-allocation, no cap re-read (invariant sum)
    reads.clear()
    net.finish_head(c, 0.5)
    assert not net.dirty and reads == [2] and c.rate == pytest.approx(35.0)


def test_under_served_capped_connection_is_repaced_and_served_one_is_not():
    caps = {1: 40.0, 2: 40.0, 3: 10.0}
    net = Network(4, 50.0, caps.get)
    a, b = net.conn("a", 0, 1), net.conn("b", 0, 3)  # share tx link 0 (capacity 50)
    other = net.conn("o", 2, 3)
    _msg(net, 1, a)
    _msg(net, 2, b)
    _msg(net, 3, other)
    net.flush(0.0)
    assert a.rate == pytest.approx(25.0) and b.rate == pytest.approx(25.0) and other.rate == pytest.approx(10.0)
    caps.update({1: 45.0, 2: 45.0, 3: 12.0})  # minimal rates grew (a, b under-served); 3 changed too
    net.repace(0.1)
    net.flush(0.1)
    assert a.cap == pytest.approx(45.0) and b.cap == pytest.approx(45.0)  # re-read
    assert other.cap == pytest.approx(10.0)  # served at its cap: its minimal rate is invariant, not re-read


def test_cached_caps_give_the_same_karuna_run_as_rereading_every_allocation():
    hw = Hardware()
    cl = ClusterConfig(servers=8, warmup=10, measured=60)
    out = {}
    for exact in (True, False):
        sim = Simulator(get_model("dbrx"), sim_policy("karuna", hw), cl, hw)
        sim.net.exact_caps = exact
        recs = sim.run(synthetic("agent", 60.0, 70))
        out[exact] = ({r.request_id: r.ttft for r in recs}, sim.stats.allocations)
    assert out[True][0].keys() == out[False][0].keys()
    for rid, t in out[True][0].items():
        assert out[False][0][rid] == pytest.approx(t, rel=1e-6)
    assert out[False][1] < out[True][1]  # fewer re-allocations
