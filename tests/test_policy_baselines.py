"""Baselines pinned on hand-made cases: fair, fifo, sjf, edf, karuna, pias, llf; the factory."""

import math

import pytest

from mfs.header import STAGE_COLLECTIVE, STAGE_KV_REUSE, STAGE_P2D
from mfs.policy import POLICIES, FlowInfo, Policy, PolicyConfig, RequestInfo, make_policy


def pol(name, **kw):
    return make_policy(name, PolicyConfig(scheduler=name, **kw))


def flow(fid, stage=STAGE_KV_REUSE, size=1000, deadline=None, rid=1, start=0.0, target=0):
    return FlowInfo(fid, stage, rid, size, deadline=deadline, start_time=start, target_layer=target)


def test_factory_builds_every_policy_conforming_to_the_protocol():
    assert set(POLICIES) == {"mfs", "fair", "fifo", "sjf", "edf", "karuna", "pias", "llf"}
    for name in POLICIES:
        p = make_policy(name)
        assert isinstance(p, Policy) and p.name == name
    with pytest.raises(ValueError, match="unknown policy 'x'"):
        make_policy("x")
    # the name wins over config.scheduler, and the config is re-validated for it
    assert make_policy("sjf", PolicyConfig(K=4)).num_levels == 4
    with pytest.raises(ValueError, match="ideal"):
        make_policy("fair", PolicyConfig(scheduler="sjf", ideal=True))


def test_fair_one_level():
    p = pol("fair")
    assert p.num_levels == 1
    assert {p.flow_start(0, flow(i, stage=s)) for i, s in enumerate([1, 2, 3])} == {0}


def test_fifo_ideal_by_start_time_and_k_level_single_queue():
    p = pol("fifo")
    assert p.num_levels is None
    assert p.flow_start(5, flow(1, start=2.5)) == 2.5
    p = pol("fifo", ideal=False)
    assert p.num_levels == 1 and p.flow_start(0, flow(1, start=2.5)) == 0


def test_sjf_thresholds_and_ideal():
    p = pol("sjf", K=4, sjf_thresholds=[100, 1000, 10000])
    assert [p.flow_start(0, flow(i, size=s)) for i, s in enumerate([1, 100, 101, 1000, 5000, 10**9])] == \
        [0, 0, 1, 1, 2, 3]
    p = pol("sjf", ideal=True)
    assert p.num_levels is None and p.flow_start(0, flow(1, size=1234)) == 1234.0


def test_edf_explicit_by_deadline_implicit_below_and_tick_promotes():
    p = pol("edf", K=4, edf_thresholds_s=[0.1, 1.0])
    assert p.flow_start(0, flow(1, stage=STAGE_P2D, deadline=0.05)) == 0
    assert p.flow_start(0, flow(2, stage=STAGE_P2D, deadline=0.5)) == 1
    assert p.flow_start(0, flow(3, stage=STAGE_P2D, deadline=5.0)) == 2
    assert p.flow_start(0, flow(4, stage=STAGE_COLLECTIVE)) == 3  # implicit: fair-shared at the bottom
    assert p.flow_start(0, flow(5, stage=STAGE_P2D)) == 3  # P2D without a deadline is not explicit
    assert p.tick(4.5) == {2: 0, 3: 1}
    q = pol("edf", ideal=True)
    assert q.flow_start(0, flow(1, stage=STAGE_P2D, deadline=3.0)) == 3.0
    assert q.flow_start(0, flow(2)) == math.inf


def test_karuna_top_queue_minimal_rate_rest_sjf():
    p = pol("karuna", K=4, karuna_thresholds=[100, 1000])
    assert p.flow_start(0, flow(1, stage=STAGE_P2D, size=1000, deadline=2.0)) == 0
    assert p.rate_limit(1) == pytest.approx(500.0)
    p.progress(1.0, 1, 600)
    assert p.rate_limit(1) == pytest.approx(400.0)  # 400 bytes left, 1 s left
    assert [p.flow_start(1, flow(i, size=s)) for i, s in [(2, 50), (3, 500), (4, 5000)]] == [1, 2, 3]
    assert p.rate_limit(2) is None
    assert p.tick(2.5) == {1: 2}  # deadline passed: loses its deadline, joins the size levels
    assert p.rate_limit(1) is None
    assert p.flow_start(3, flow(9, stage=STAGE_P2D, size=50, deadline=1.0)) == 1  # already late


def test_pias_starts_high_and_demotes_by_bytes_sent():
    p = pol("pias", K=4, pias_thresholds=[100, 1000, 10000])
    assert p.flow_start(0, flow(1, size=10**6)) == 0
    assert p.progress(1, 1, 99) == {}
    assert p.progress(2, 1, 100) == {1: 1}
    assert p.progress(3, 1, 50_000) == {1: 3}
    assert p.progress(4, 1, 60_000) == {}


def test_llf_laxity_order_and_progress():
    # 8 bits/s per byte/s: B = 8 bps -> 1 byte/s, so bytes_left = seconds of service
    p = pol("llf", bandwidth_bps=8.0)
    assert p.num_levels is None
    p.request_start(0, RequestInfo(1, 0, deadline=20.0, arrival=0, num_layers=10, remaining_compute=10.0))
    # Stage 3 with explicit deadline 7, 3 bytes -> latest start 4
    assert p.flow_start(0, flow(1, stage=STAGE_P2D, size=3, deadline=7.0)) == pytest.approx(4.0)
    # Stage 1 for layer 4: downstream compute 1 s/layer * (10-4) = 6 -> D_eff 14, minus 2 s of data
    assert p.flow_start(0, flow(2, size=2, target=4)) == pytest.approx(12.0)
    # Stage 2 of layer 4: layers 5..9 remain -> D_eff 15
    assert p.flow_start(0, flow(3, stage=STAGE_COLLECTIVE, size=2, target=4)) == pytest.approx(13.0)
    assert p.progress(1, 1, 1) == {1: pytest.approx(5.0)}  # served: less urgent
    assert p.flow_start(0, flow(4, rid=99, size=1)) == math.inf  # no deadline known


@pytest.mark.parametrize("name", ["sjf", "edf", "karuna", "pias"])
@pytest.mark.parametrize("k", [2, 3, 8])
def test_k_level_baselines_stay_in_range(name, k):
    p = pol(name, K=k)
    levels = []
    for i in range(40):
        f = flow(i, stage=1 + i % 3, size=10 ** (i % 10), deadline=(i % 4) * 0.01 if i % 2 else None)
        levels.append(p.flow_start(i * 0.001, f))
        levels += p.progress(i * 0.001, i, f.size_bytes // 2).values()
        levels += p.tick(i * 0.01).values()
    assert all(isinstance(lv, int) and 0 <= lv < k for lv in levels)


def test_every_policy_implements_the_policy_protocol():
    """The engine calls tick(now, budget=...) and pending_work(): both are in the Policy protocol
    (mfs/policy/api.py), and every scheduler implements them."""
    import inspect

    from mfs.policy import POLICIES, Policy, make_policy
    assert "budget" in inspect.signature(Policy.tick).parameters and hasattr(Policy, "pending_work")
    for name in POLICIES:
        pol = make_policy(name)
        assert isinstance(pol, Policy), name
        assert pol.tick(0.0, budget=1) == {} and pol.pending_work() == 0, name
