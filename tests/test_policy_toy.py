"""The paper's toy examples, replayed on the fluid single-link evaluator (mfs.policy.fluid).

Units: 1 paper unit of data = 1e6 bytes, the link carries 1e6 bytes/s (bandwidth_bps = 8e6),
so 1 paper time unit = 1 s.
"""

import pytest

from mfs.header import STAGE_COLLECTIVE, STAGE_KV_REUSE, STAGE_P2D
from mfs.policy import FlowInfo, PolicyConfig, RequestInfo, make_policy
from mfs.policy.fluid import allocate, run_single_link

MB = 1_000_000
CAP = 1e6  # bytes/s
BPS = 8e6


def cfg(name, **kw):
    return PolicyConfig(scheduler=name, bandwidth_bps=BPS, **kw)


# --- Table 1 / Fig. 8: inter-request contention on one unit-capacity link ---------------
# Req 1: flow A size 2, remaining downstream time 9, deadline 18 -> must finish by 9
# Req 2,3 (one batch): flow B (their collective) size 4, downstream 6, deadline 12 -> by 6
# Req 4: flow C (P2D) size 3, downstream 0, deadline 7 -> by 7
# Total 9 units by time 9: the only schedule meeting every deadline is B, C, A back to back
# (zero slack); LLF finds it, and so does defer-and-promote.
A = FlowInfo(1, STAGE_KV_REUSE, 1, 2 * MB, target_layer=1, current_layer=0)
B = FlowInfo(2, STAGE_COLLECTIVE, 2, 4 * MB, target_layer=0, current_layer=0)
C = FlowInfo(3, STAGE_P2D, 4, 3 * MB, deadline=7.0)
FLOW_DEADLINE = {1: 9.0, 2: 6.0, 3: 7.0}
# Requests with deadlines and compute so that the LLF oracle derives A's and B's
# implicit deadlines (18 - 9 and 12 - 6) from remaining_compute / num_layers per layer.
REQS = [RequestInfo(1, 1, 18.0, 0.0, num_layers=10, remaining_compute=10.0),
        RequestInfo(2, 2, 12.0, 0.0, num_layers=10, remaining_compute=6.0 * 10 / 9)]


def table1(policy, **kw):
    return run_single_link(policy, [A, B, C], CAP, prefill_done=(4,), **kw)


def missed(res):
    return sorted(f for f, d in FLOW_DEADLINE.items() if not res.met(f, d))


@pytest.mark.parametrize("name,conf,expect_missed", [
    ("fair", {}, [2, 3]),  # FS: A done at 6, C at 8, B at 9
    ("sjf", {"ideal": True}, [2]),  # SJF: A, C, B -> B done at 9
    ("edf", {}, [2]),  # EDF: C (only explicit deadline) first, then A and B fair -> B at 9
])
def test_table1_baselines_miss(name, conf, expect_missed):
    res = table1(make_policy(name, cfg(name, **conf)))
    assert missed(res) == expect_missed


def test_table1_mfs_defer_and_promote_meets_every_deadline():
    # The toy has zero slack: C must be promoted exactly when B completes (t=4), when its
    # MLU = 3 / (7-4) reaches 1, so the top cut-off is U = 1 here (docs/policy.md).
    pol = make_policy("mfs", cfg("mfs", U=1.0, pruning=False))
    res = table1(pol)
    assert missed(res) == []
    assert res.finish == {2: pytest.approx(4.0), 3: pytest.approx(7.0), 1: pytest.approx(9.0)}
    lay = pol.layout
    # C started deferred below the early stages, and was promoted to the reserved top at t=4
    assert res.levels[3][0] == (0.0, lay.p2d[0])
    assert res.levels[3][1] == (pytest.approx(4.0), lay.urgent_p2d)
    assert res.levels[2] == [(0.0, lay.stage2)]


def test_table1_llf_oracle_meets_every_deadline():
    res = run_single_link(make_policy("llf", cfg("llf")), [A, B, C], CAP, requests=REQS, tick_s=0.25)
    assert missed(res) == []


def test_table1_mfs_with_paper_U_promotes_when_mlu_reaches_U():
    # With the paper's U = 0.5 the same flow is promoted when it needs half the residual
    # bandwidth: 3 / (7 - t) >= 0.5 at t = 1 (checked on the 0.25 s tick).
    pol = make_policy("mfs", cfg("mfs", pruning=False))
    res = table1(pol, tick_s=0.25)
    assert res.levels[3][1] == (pytest.approx(1.0), pol.layout.urgent_p2d)
    assert res.met(3, 7.0)


# --- Fig. 6/7: intra-request contention -------------------------------------------------
# Layer 1 computes; its collective (size 2, RLI 0) shares the port with
#  (ingress) a KV-reuse fetch for layer 3 (size 1, RLI 2): the next layer starts when the
#            collective completes: FS/SJF/EDF at T=3, MFS at T=2;
#  (egress)  the P2D push of earlier layers (size 1, deadline 10): layer 2 = collective +
#            1 unit of compute finishes at T=4 under FS/SJF/EDF and T=3 under MFS.
COLL = FlowInfo(10, STAGE_COLLECTIVE, 7, 2 * MB, target_layer=1, current_layer=1)
KV = FlowInfo(11, STAGE_KV_REUSE, 7, 1 * MB, target_layer=3, current_layer=1)
P2D = FlowInfo(12, STAGE_P2D, 7, 1 * MB, deadline=10.0, target_layer=0, current_layer=1)
BASELINES = [("fair", {}), ("sjf", {"ideal": True}), ("sjf", {}), ("edf", {}), ("edf", {"ideal": True})]


@pytest.mark.parametrize("name,conf", BASELINES)
def test_fig6_ingress_baselines_start_next_layer_at_3(name, conf):
    res = run_single_link(make_policy(name, cfg(name, **conf)), [COLL, KV], CAP)
    assert res.finish[10] == pytest.approx(3.0)


def test_fig6_ingress_mfs_starts_next_layer_at_2():
    res = run_single_link(make_policy("mfs", cfg("mfs")), [COLL, KV], CAP)
    assert res.finish[10] == pytest.approx(2.0)
    assert res.finish[11] == pytest.approx(3.0)


@pytest.mark.parametrize("name,conf", BASELINES)
def test_fig7_egress_baselines_finish_layer_at_4(name, conf):
    res = run_single_link(make_policy(name, cfg(name, **conf)), [COLL, P2D], CAP)
    assert res.finish[10] + 1.0 == pytest.approx(4.0)


def test_fig7_egress_mfs_finishes_layer_at_3_and_p2d_still_meets_deadline():
    res = run_single_link(make_policy("mfs", cfg("mfs")), [COLL, P2D], CAP)
    assert res.finish[10] + 1.0 == pytest.approx(3.0)
    assert res.met(12, 10.0)


# --- the evaluator itself ---------------------------------------------------------------
def test_allocate_strict_priority_fair_share_and_caps():
    r = allocate([(1, 0, None), (2, 1, None), (3, 1, None)], 10.0)
    assert r == {1: 10.0, 2: 0.0, 3: 0.0}
    r = allocate([(1, 0, 2.0), (2, 1, None), (3, 1, None)], 10.0)
    assert r == pytest.approx({1: 2.0, 2: 4.0, 3: 4.0})
    r = allocate([(1, 0, 1.0), (2, 0, None), (3, 0, 100.0)], 9.0)
    assert r == pytest.approx({1: 1.0, 2: 4.0, 3: 4.0})


def test_karuna_paces_deadline_flow_at_minimal_rate_and_leaves_the_rest():
    # Karuna: C (deadline 7, size 3) gets rate 3/7 from t=0 and finishes exactly at 7;
    # A (2e6 B) and B (4e6 B) fall in the same size level (1 MiB..4 MiB] and share the spare
    # 4/7 (work conservation): A completes at 7, then B alone at 9 (misses its 6).
    pol = make_policy("karuna", cfg("karuna"))
    assert pol.flow_start(0.0, C) == 0 and pol.rate_limit(3) == pytest.approx(3 * MB / 7)
    pol = make_policy("karuna", cfg("karuna"))
    res = run_single_link(pol, [A, B, C], CAP, tick_s=0.5)
    assert res.finish == pytest.approx({3: 7.0, 1: 7.0, 2: 9.0}, abs=1e-6)
