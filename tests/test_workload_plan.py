"""mfs.sim.plan: the request planning the simulator and the emulated workload share."""

import pytest

from mfs.sim import plan
from mfs.sim.workload import PrefixCache, Request
from hostagent.workload import FixedCost, choose_time_scale, token_counts, warm_cache


def test_prefix_plan_reuses_leading_blocks_and_computes_one_token():
    cache = PrefixCache()
    cache.store((1, 2, 3), 0)
    cache.store((9,), 1)
    holders, reused, nblk = plan.prefix_plan(cache, Request(0, 0.0, 2000, 1, (1, 2, 7, 3), 512))
    assert (holders, reused, nblk) == ([0, 0], 1024, 2)  # stops at the first miss
    holders, reused, nblk = plan.prefix_plan(cache, Request(1, 0.0, 1200, 1, (1, 2, 3), 512))
    assert (holders, reused, nblk) == ([0, 0, 0], 1199, 3)  # the whole prompt is cached: one token computed


def test_stage1_tokens_partial_last_block_and_local_blocks():
    # blocks held by 0, 0, 1, 1 (last one partial: 2000 reused of 4 x 512), computing on instance 1
    assert plan.stage1_tokens([0, 0, 1, 1], 1, 2000, 512) == {0: 1024}
    assert plan.stage1_tokens([0, 0, 1, 1], 2, 2000, 512) == {0: 1024, 1: 1024 - 48}
    assert plan.stage1_tokens([], 0, 0, 512) == {}


def test_route_prefers_holder_until_its_backlog_exceeds_the_fetch():
    assert plan.route([0.0, 0.0], [1, 1], 0.1) == 1  # holder, no fetch
    assert plan.route([0.0, 0.3], [1, 1], 0.1) == 0  # 0.2 s of fetch beats 0.3 s of queue
    assert plan.route([0.0, 0.0], [], 0.1) == 0  # ties: the first


def test_ideal_ttft_is_one_layer_of_stage1_plus_layers_plus_stage3():
    cost = FixedCost(num_layers=4, compute_s=0.05, stage1_per_token=100, stage2=250_000, stage3=125_000, gpus=2)
    bw = 1e6
    want = 512 * 100 / 2 / bw + 4 * (0.05 + 125_000 / bw) + 62_500 / bw
    assert plan.ideal_ttft(cost, bw, 100, 512) == pytest.approx(want)
    assert plan.ideal_ttft(cost, bw, 100, 0) == pytest.approx(want - 512 * 100 / 2 / bw)


def test_warm_cache_and_time_scale():
    warm = [Request(100, 0.0, 1024, 1, (1, 2), 512)]
    reqs = [Request(0, 0.0, 2048, 1, (1, 2, 3, 4), 512), Request(1, 0.0, 1024, 1, (5, 6), 512)]
    assert token_counts(reqs, warm) == [(1024, 1024), (1024, 0)]
    cache = PrefixCache()
    warm_cache(cache, warm + [Request(101, 0.0, 512, 1, (8,), 512)], 2)
    assert cache.lookup((1, 2, 8)) == [0, 0, 1] and cache.lookup((8,)) == [1]
    ts = choose_time_scale("mixtral-8x22b", reqs, warm, layer_s=0.02)
    from mfs.sim.model import CostModel, get_model
    cm = CostModel(get_model("mixtral-8x22b"))
    median = (cm.layer_compute_s((1024, 1024)) + cm.layer_compute_s((1024, 0))) / 2
    assert median * ts == pytest.approx(0.02)
    with pytest.raises(ValueError, match="layer_s"):
        choose_time_scale("mixtral-8x22b", reqs, warm, layer_s=0)
