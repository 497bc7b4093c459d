"""Simulator model choices (docs/simulator.md, "Model changes"): Stage-1 issue time, KV placement,
option validation, the no-network bound."""

from __future__ import annotations

import pytest

from mfs.sim.engine import ClusterConfig, Simulator
from mfs.sim.model import Hardware
from mfs.sim.workload import PrefixCache, Request
from tests.test_sim import TINY, FixedLevels


class Recorder(FixedLevels):
    def __init__(self):
        super().__init__({1: 0, 2: 0, 3: 1})
        self.starts = []  # (time, stage, request id)

    def flow_start(self, now, f):
        self.starts.append((now, f.stage, f.request_id))
        return super().flow_start(now, f)


def _run(**kw):
    hw = Hardware(peak_flops=1e12, nic_bw=1e9, layer_overhead=0.0)
    cl = ClusterConfig(servers=8, gpus_per_server=8, warmup=0, measured=8, tick_s=1.0, max_batch_tokens=4096, **kw)
    sim = Simulator(TINY, Recorder(), cl, hw)
    prefix = tuple(range(8))
    reqs = [Request(i, i * 1e-4, 8 * 512 + 512, 1, prefix + (100 + i,), 512) for i in range(8)]
    return sim, {r.request_id: r for r in sim.run(reqs)}


def test_stage1_loads_start_when_the_batch_is_scheduled():
    sim, recs = _run(stage1_issue="schedule")
    s1 = [(t, rid) for t, st, rid in sim.policy.starts if st == 1]
    assert s1  # some requests were routed away from the block owner and fetch its KV
    queued = 0
    for t, rid in s1:
        r = recs[rid]
        assert r.arrival <= t <= r.prefill_start + 1e-12
        queued += t > r.arrival + 1e-9
    assert queued  # at least one fetch waited for its batch instead of starting on arrival


def test_stage1_prefetch_on_arrival_option():
    sim, recs = _run(stage1_issue="arrival")
    s1 = [(t, rid) for t, st, rid in sim.policy.starts if st == 1]
    assert s1 and all(t == pytest.approx(recs[rid].arrival) for t, rid in s1)


def test_kv_placement_owner_keeps_hot_blocks_at_their_first_instance():
    pc = PrefixCache()
    pc.store((1, 2), 0)
    pc.store((1, 2, 3), 1, keep_owner=True)
    assert pc.lookup((1, 2, 3)) == [0, 0, 1]
    pc.store((1, 2, 3), 1)
    assert pc.lookup((1, 2, 3)) == [1, 1, 1]


@pytest.mark.parametrize("key", ["stage1_issue", "stage1_conns", "rho_source", "kv_placement"])
def test_bad_model_option_is_named(key):
    with pytest.raises(ValueError, match=f"ClusterConfig.{key}='bogus' is not allowed"):
        Simulator(TINY, FixedLevels(), ClusterConfig(servers=8, **{key: "bogus"}))


def test_no_network_bound_is_compute_only():
    hw = Hardware(peak_flops=1e12, nic_bw=1e9, layer_overhead=0.0)
    cl = ClusterConfig(servers=4, warmup=0, measured=1, tick_s=1.0, ideal_network=True)
    sim = Simulator(TINY, FixedLevels(), cl, hw)
    (r,) = sim.run([Request(0, 0.0, 4096, 1, (), 512)])
    c = sim.cost.request_profile(4096, 0).layer_compute_s
    assert r.ttft == pytest.approx(2 * c, rel=1e-4)  # transfers take ~0 s
    assert r.deadline == pytest.approx(3 * sim.ideal_ttft(4096, 0))  # deadlines still use the real NIC speed
