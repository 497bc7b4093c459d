"""MFS / RMLQ: levels, RLI cap, MLU tiers, monotonic promotion, tick, scavenger, RED, Algorithm 1."""

import math
import random

import pytest

from mfs.header import STAGE_COLLECTIVE, STAGE_KV_REUSE, STAGE_P2D
from mfs.policy import FlowInfo, PolicyConfig, RequestInfo, UnknownFlow, make_policy
from mfs.policy.config import default_layout
from mfs.policy.red import RequestLoad, inter_schedule, red_split

GB = 1e9  # bandwidth_bps = 8e9 -> 1e9 bytes/s, so MLU = bytes / (1e9 * seconds left)


def mfs(**kw):
    kw.setdefault("bandwidth_bps", 8 * GB)
    return make_policy("mfs", PolicyConfig(**kw))


def kv(fid, target, current=0, rid=1, size=1000):
    return FlowInfo(fid, STAGE_KV_REUSE, rid, size, target_layer=target, current_layer=current)


def p2d(fid, size, deadline, rid=1):
    return FlowInfo(fid, STAGE_P2D, rid, int(size), deadline=deadline)


def test_default_layout_k8():
    pol = mfs()
    lay = pol.layout
    assert (lay.urgent_p2d, lay.stage2, lay.stage1, lay.p2d, lay.scavenger) == (0, 1, (2, 3, 4), (5, 6), 7)
    assert pol.num_levels == 8


def test_stage2_goes_to_stage2_level_and_stage1_by_capped_rli():
    pol = mfs()
    assert pol.flow_start(0, FlowInfo(1, STAGE_COLLECTIVE, 1, 10, target_layer=5, current_layer=5)) == 1
    assert [pol.flow_start(0, kv(10 + r, r)) for r in range(6)] == [2, 3, 4, 4, 4, 4]  # RLI capped at 2
    # target already passed (GPU waiting): RLI 0
    assert pol.flow_start(0, kv(20, 1, current=3)) == 2
    assert pol.flows()[1].rli == 0 and pol.level(15) == 4


@pytest.mark.parametrize("k", range(2, 9))
def test_levels_are_ints_within_k_for_every_k(k):
    pol = mfs(K=k)
    rnd = random.Random(k)
    fid = 0
    for rid in range(20):
        pol.request_start(0, RequestInfo(rid, rid % 3, deadline=rnd.uniform(0.01, 2), arrival=0, num_layers=8))
    for step in range(200):
        now = step * 0.01
        fid += 1
        stage = rnd.choice([1, 2, 3])
        info = FlowInfo(fid, stage, rnd.randrange(20), rnd.randrange(1, 10**8), target_layer=rnd.randrange(8),
                        deadline=rnd.choice([None, now + rnd.uniform(-0.1, 1)]), batch_id=rnd.randrange(3))
        levels = [pol.flow_start(now, info)]
        levels += pol.layer_boundary(now, rnd.randrange(20), rnd.randrange(8), rnd.random() < 0.3).values()
        levels += pol.tick(now).values()
        levels += pol.batch_event(now, rnd.randrange(3), rnd.choice(["arrival", "departure"])).values()
        for lv in levels:
            assert isinstance(lv, int) and 0 <= lv < k
    assert all(isinstance(s.level, int) and 0 <= s.level < k for s in pol.flows())


def test_promotion_at_layer_boundary_only_touches_that_request_and_is_monotonic():
    pol = mfs()
    pol.flow_start(0, kv(1, 4, rid=1))
    pol.flow_start(0, kv(2, 4, rid=2))
    assert pol.level(1) == 4
    assert pol.layer_boundary(1, 1, 3) == {1: 3}  # RLI 1
    assert pol.level(2) == 4  # other request untouched
    assert pol.layer_boundary(2, 1, 2) == {}  # stale (smaller) layer: no demotion, no change
    assert pol.layer_boundary(3, 1, 4) == {1: 2}
    assert pol.layer_boundary(4, 1, 6) == {}  # already at the top early-stage level


def test_layer_boundary_does_not_scan_other_requests(monkeypatch):
    pol = mfs()
    for i in range(50):
        pol.flow_start(0, kv(i, 3, rid=i))
    seen = []
    orig = pol._early_level
    monkeypatch.setattr(pol, "_early_level", lambda st: (seen.append(st.info.flow_id), orig(st))[1])
    pol.layer_boundary(1, 7, 1)
    assert seen == [7]


@pytest.mark.parametrize("mapping,mlu,level", [
    ("u_top", 0.6, 0), ("u_top", 0.5, 0), ("u_top", 0.2, 5), ("u_top", 0.125, 5), ("u_top", 0.1, 6),
    ("q1_top", 0.2, 0), ("q1_top", 0.125, 0), ("q1_top", 0.05, 5), ("q1_top", 0.01, 6),
])
def test_mlu_tiers(mapping, mlu, level):
    pol = mfs(mlu_mapping=mapping)
    # MLU = size / (1e9 B/s * 1 s)
    assert pol.flow_start(0, p2d(1, mlu * 1e9, deadline=1.0)) == level
    assert pol.flows()[0].mlu == pytest.approx(mlu)


def test_mlu_uses_residual_bandwidth_and_rho_cap():
    pol = mfs()
    pol.link_load(0, 0.5, "hostA:tx")
    f = FlowInfo(1, STAGE_P2D, 1, int(0.3e9), deadline=1.0, src="hostA", dst="hostB")
    assert pol.flow_start(0, f) == 0  # MLU = 0.3 / 0.5 = 0.6 >= U
    pol2 = mfs(rho_cap=0.5)
    pol2.link_load(0, 1.0)  # global, clamped to 0.5
    assert pol2.flow_start(0, p2d(1, 0.3e9, 1.0)) == 0
    with pytest.raises(ValueError, match="rho"):
        pol2.link_load(0, 1.5)


def test_p2d_without_deadline_goes_to_loosest_tier():
    pol = mfs()
    assert pol.flow_start(0, FlowInfo(1, STAGE_P2D, 99, 10**9)) == 6


def test_p2d_deadline_falls_back_to_request_deadline():
    pol = mfs()
    pol.request_start(0, RequestInfo(5, 0, deadline=1.0, arrival=0, num_layers=4))
    # the last layer's push (target_layer 3 of 4): no layers left to push after it
    assert pol.flow_start(0, FlowInfo(1, STAGE_P2D, 5, int(0.6e9), target_layer=3)) == 0


@pytest.mark.parametrize("deadline,size", [(1.0, 2e9), (-1.0, 10)])
def test_infeasible_p2d_goes_to_scavenger(deadline, size):
    pol = mfs()
    assert pol.flow_start(0, p2d(1, size, deadline)) == 7
    st = pol.flows()[0]
    assert st.scavenger and st.extra["infeasible"]


def test_on_infeasible_urgent_and_keep():
    assert mfs(on_infeasible="urgent").flow_start(0, p2d(1, 2e9, 1.0)) == 0
    pol = mfs(on_infeasible="keep")
    pol.flow_start(0, p2d(1, 0.2e9, 1.0))
    assert pol.level(1) == 5
    pol.layer_boundary(0.9, 1, 1, prefill_done=True)  # MLU 2 > 1 -> keep the level
    assert pol.level(1) == 5


def test_feasible_flow_turning_infeasible_is_parked_and_stays_parked():
    pol = mfs()
    pol.flow_start(0, p2d(1, 0.05e9, 1.0))  # MLU 0.05 -> level 6
    assert pol.layer_boundary(0.99, 1, 3) == {1: 7}  # MLU 5 -> infeasible: the one demotion
    pol.link_load(1.0, 0.0)
    pol.progress(1.0, 1, int(0.05e9))
    assert pol.layer_boundary(1.0, 1, 4) == {}  # sticky


def test_tick_only_rechecks_p2d_of_prefill_done_requests_and_is_rate_limited():
    pol = mfs(recheck_interval_s=0.1)
    pol.flow_start(0, p2d(1, 0.1e9, 1.0, rid=1))  # MLU 0.1 -> 6
    pol.flow_start(0, p2d(2, 0.1e9, 1.0, rid=2))
    pol.flow_start(0, p2d(5, 0.2e9, 10.0, rid=3))  # MLU 0.02 -> 6
    pol.flow_start(0, kv(3, 5, rid=1))
    assert pol.tick(0.5) == {}  # nobody finished prefill
    pol.layer_boundary(0.5, 3, 7, prefill_done=True)
    pol.layer_boundary(0.5, 1, 7, prefill_done=True)  # MLU 0.2 -> 5 (and the KV fetch promoted)
    assert pol.level(1) == 5 and pol.level(3) == 2
    assert pol.tick(0.85) == {1: 0}  # MLU 0.1/0.15 = 0.67 >= U; request 2 not done -> untouched
    assert pol.level(2) == 6
    pol.link_load(0.86, 0.9)  # flow 5: MLU 0.2/(9.14*0.1) = 0.22 -> 5, but ...
    assert pol.tick(0.86) == {}  # ... only every recheck_interval_s
    assert pol.tick(0.96) == {5: 5, 1: 7}  # and flow 1 (MLU 25) is now infeasible


def test_flow_end_and_unknown_flow_errors():
    pol = mfs()
    pol.flow_start(0, kv(1, 2))
    with pytest.raises(ValueError, match="already registered"):
        pol.flow_start(0, kv(1, 2))
    pol.flow_end(1, 1)
    assert pol.flows() == []
    with pytest.raises(UnknownFlow, match="flow 1 is not registered"):
        pol.progress(2, 1, 10)
    with pytest.raises(ValueError, match="stage=4"):
        pol.flow_start(0, FlowInfo(2, 4, 1, 10))
    with pytest.raises(ValueError, match="size_bytes=-1"):
        pol.flow_start(0, FlowInfo(2, 1, 1, -1))
    with pytest.raises(ValueError, match="kind='start'"):
        pol.batch_event(0, 1, "start")


# --- RED and Algorithm 1 ---------------------------------------------------------------
def test_red_split():
    assert red_split([5.0]) == (5.0, 5.0)
    assert red_split([3.0, 3.0, 3.0]) == (3.0, 3.0)
    # one tight outlier among 4: k*=1, f=1/4 -> RED = 0.25*1 + 0.75*10
    assert red_split([10.0, 1.0, 11.0, 12.0]) == (pytest.approx(7.75), 10.0)
    # 3 tight + 1 loose: largest gap after the third
    assert red_split([1.0, 1.5, 2.0, 9.0]) == (pytest.approx(0.75 * 1 + 0.25 * 9), 9.0)
    with pytest.raises(ValueError):
        red_split([])


def test_inter_schedule_orders_by_red_not_min_deadline():
    # batch 1 has one very tight outlier (piggyback): its RED is late; batch 2 is uniformly urgent
    b1 = [RequestLoad(1, 1.0), RequestLoad(2, 10.0), RequestLoad(3, 10.0), RequestLoad(4, 10.0)]
    b2 = [RequestLoad(5, 3.0), RequestLoad(6, 3.0)]
    res = inter_schedule(0.0, {1: b1, 2: b2}, 1.0, budget=0)
    assert res.order == [2, 1]
    assert res.pruned == []


def test_inter_schedule_prunes_heaviest_request_on_bottleneck():
    # one port, 1 byte/s. Batch 1 (deadline 4) fits (3 bytes). Batch 2 (deadline 6) adds
    # 2 + 5 bytes: 10 > 6 -> prune the heaviest on the port (request 4, 5 bytes) -> 5 <= 6.
    b1 = [RequestLoad(1, 4.0, loads={"p": 3.0})]
    b2 = [RequestLoad(3, 6.0, loads={"p": 2.0}), RequestLoad(4, 6.0, loads={"p": 5.0})]
    res = inter_schedule(0.0, {1: b1, 2: b2}, 1.0, budget=5)
    assert res.order == [1, 2] and res.pruned == [4]
    # budget 0: nothing pruned; compute makes it infeasible beyond what pruning can fix: stop
    assert inter_schedule(0.0, {1: b1, 2: b2}, 1.0, budget=0).pruned == []
    late = {1: [RequestLoad(1, 1.0, compute_s=5.0, loads={})]}
    assert inter_schedule(0.0, late, 1.0, budget=5).pruned == []


def test_inter_schedule_can_prune_from_higher_ranked_batch():
    # batch 1 (deadline 10) carries a huge request on the same port; batch 2 (deadline 11)
    # becomes infeasible; the heaviest on the bottleneck is request 1 of batch 1.
    b1 = [RequestLoad(1, 10.0, loads={"p": 9.0})]
    b2 = [RequestLoad(2, 11.0, loads={"p": 3.0})]
    res = inter_schedule(0.0, {1: b1, 2: b2}, 1.0, budget=5)
    assert res.pruned == [1]


def test_batch_events_prune_into_scavenger_and_rank_by_red():
    pol = mfs(bandwidth_bps=8.0)  # 1 byte/s: remaining_bytes are seconds of link time
    reqs = [RequestInfo(1, 10, 4.0, 0, 4, remaining_bytes=3), RequestInfo(3, 20, 6.0, 0, 4, remaining_bytes=2),
            RequestInfo(4, 20, 6.0, 0, 4, remaining_bytes=5)]
    for r in reqs:
        pol.request_start(0, r)
    assert pol.flow_start(0, p2d(41, 1, 100.0, rid=4)) == 6  # MLU (1 + 3 layers to come) / 100
    assert pol.flow_start(0, kv(40, 2, rid=4)) == 4
    pol.flow_start(0, kv(31, 2, rid=3))
    pol.flow_start(0, kv(11, 2, rid=1))
    assert pol.batch_event(0, 10, "arrival") == {}
    assert pol.rank(11) == 0
    ch = pol.batch_event(0, 20, "arrival")
    assert ch == {41: 7}  # only the Stage-3 push is scavenged: batch 20 still waits for flow 40
    assert pol.is_pruned(4) and not pol.is_pruned(3)
    assert pol.rank(31) == 1 and pol.rank(11) == 0
    # later pushes of a pruned request start in the scavenger level; promotion never lifts them
    assert pol.flow_start(1, p2d(42, 1, 100.0, rid=4)) == 7
    assert pol.layer_boundary(1, 4, 3) == {40: 2}  # its KV fetch is promoted as usual
    assert pol.flow_start(1, kv(43, 4, rid=4)) == 3
    # departure of batch 10 re-ranks
    pol.batch_event(1, 10, "departure")
    assert pol.rank(31) == 0 and pol.rank(11) == math.inf
    assert {s.info.flow_id: s.extra.get("red_rank") for s in pol.flows()}[31] == 0


def test_pruning_and_red_can_be_disabled():
    pol = mfs(bandwidth_bps=8.0, pruning=False, red=False)
    pol.request_start(0, RequestInfo(1, 1, 1.0, 0, 4, remaining_bytes=100))
    pol.flow_start(0, kv(1, 0))
    assert pol.batch_event(0, 1, "arrival") == {}
    assert pol.level(1) == 2 and pol.rank(1) == math.inf


def test_default_layouts_respect_the_paper_order():
    for k in range(2, 9):
        lay = default_layout(k)
        assert lay.urgent_p2d == 0 and lay.scavenger == k - 1
        assert lay.stage2 <= lay.stage1[0] and lay.stage1[-1] <= lay.p2d[0]
        assert max(lay.stage1[-1], lay.p2d[-1]) <= lay.scavenger


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_events_only_promote_except_into_scavenger(seed):
    rnd = random.Random(seed)
    pol = mfs(bandwidth_bps=8e6, recheck_interval_s=0.0)
    scav = pol.layout.scavenger
    last = {}
    for rid in range(10):
        pol.request_start(0, RequestInfo(rid, rid % 4, deadline=rnd.uniform(0.5, 3), arrival=0, num_layers=6,
                                         remaining_compute=0.2, remaining_bytes=rnd.choice([0, 10**6])))
    fid = 0
    for step in range(300):
        now = step * 0.01
        ev = rnd.random()
        if ev < 0.3:
            fid += 1
            rid = rnd.randrange(10)
            info = FlowInfo(fid, rnd.choice([1, 2, 3]), rid, rnd.randrange(1, 10**6), target_layer=rnd.randrange(6),
                            src=f"h{rnd.randrange(3)}", dst=f"h{rnd.randrange(3)}")
            last[fid] = pol.flow_start(now, info)
            continue
        if ev < 0.55:
            ch = pol.layer_boundary(now, rnd.randrange(10), rnd.randrange(7), rnd.random() < 0.3)
        elif ev < 0.75:
            ch = pol.tick(now)
        elif ev < 0.85:
            ch = pol.batch_event(now, rnd.randrange(4), rnd.choice(["arrival", "departure"]))
        elif ev < 0.95 and last:
            f = rnd.choice(list(last))
            ch = pol.progress(now, f, rnd.randrange(0, 10**5))
        else:
            pol.link_load(now, rnd.random())
            continue
        for f, lv in ch.items():
            assert lv < last[f] or lv == scav, (f, last[f], lv)
            assert lv == pol.level(f)
            last[f] = lv
    assert {s.info.flow_id: s.level for s in pol.flows()} == last
