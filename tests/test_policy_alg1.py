"""Issue 9, MFS bugs (2)-(4): what Algorithm 1 may scavenge, MLU on the request's P2D bytes,
remaining compute that shrinks as layers complete. Each test failed on the code before the fix."""

from __future__ import annotations

import pytest

from mfs.header import STAGE_COLLECTIVE, STAGE_KV_REUSE, STAGE_P2D
from mfs.policy import FlowInfo, PolicyConfig, RequestInfo, make_policy


def mfs(**kw):
    kw.setdefault("bandwidth_bps", 8.0)  # 1 byte/s: bytes are seconds of link time
    return make_policy("mfs", PolicyConfig(**kw))


def flow(fid, stage, rid, size, src, dst, target=0, deadline=None, bid=1):
    return FlowInfo(fid, stage, rid, size, deadline=deadline, target_layer=target, batch_id=bid, src=src, dst=dst)


def test_pruning_the_request_a_collective_carries_scavenges_only_its_p2d():
    """(2) The batch's Stage-2 coflow carries its first request's id; pruning that request used to
    send the whole batch's collective (and the KV fetch the batch waits for) to the scavenger."""
    pol = mfs()
    for rid in (1, 2):
        pol.request_start(0, RequestInfo(rid, 1, deadline=10.0, arrival=0, num_layers=4))
    lay = pol.layout
    assert pol.flow_start(0, flow(1, STAGE_COLLECTIVE, 1, 2, "i0", "i0")) == lay.stage2
    assert pol.flow_start(0, flow(2, STAGE_KV_REUSE, 1, 1, "h9", "i0", target=1)) == lay.stage1[1]
    pol.flow_start(0, flow(3, STAGE_P2D, 1, 100, "i0", "d0", target=3, deadline=1000.0))
    # i0:tx carries 2 + 100 bytes, the batch's loose deadline is 10: prune request 1's push
    assert pol.batch_event(0, 1, "arrival") == {3: lay.scavenger}
    assert pol.is_pruned(1)
    assert pol.level(1) == lay.stage2 and pol.level(2) == lay.stage1[1]
    # the next layer's collective still carries request 1's id: it is not scavenged either
    assert pol.flow_start(1, flow(4, STAGE_COLLECTIVE, 1, 2, "i0", "i0", target=1)) == lay.stage2
    assert pol.flow_start(1, flow(5, STAGE_P2D, 1, 1, "i0", "d0", target=3)) == lay.scavenger


def test_mlu_is_on_the_requests_remaining_p2d_bytes():
    """(3) MLU was computed on one layer's message, so a request with most of its KV still to
    push looked loose until its last layers."""
    pol = mfs(bandwidth_bps=8e9)  # 1e9 bytes/s
    pol.request_start(0, RequestInfo(1, 1, deadline=1.0, arrival=0, num_layers=4))
    # layer 0's push: 0.2 GB now, 3 more layers of 0.2 GB to come -> MLU 0.8 (the message alone: 0.2)
    assert pol.flow_start(0, flow(1, STAGE_P2D, 1, int(0.2e9), "i0", "d0", target=0)) == 0
    assert pol.flows()[0].mlu == pytest.approx(0.8)
    old = make_policy("mfs", PolicyConfig(bandwidth_bps=8e9, mlu_bytes="message"))
    old.request_start(0, RequestInfo(1, 1, deadline=1.0, arrival=0, num_layers=4))
    assert old.flow_start(0, flow(1, STAGE_P2D, 1, int(0.2e9), "i0", "d0", target=0)) == 5
    # after prefill: two live pushes of 0.3 GB each -> MLU 0.6 for each (the message alone: 0.3)
    pol2 = mfs(bandwidth_bps=8e9, recheck_interval_s=0.0)
    pol2.request_start(0, RequestInfo(7, 1, deadline=1.0, arrival=0, num_layers=2))
    pol2.layer_boundary(0, 7, 2, prefill_done=True)
    assert pol2.flow_start(0, flow(1, STAGE_P2D, 7, int(0.3e9), "i0", "d0", target=0)) == 5
    assert pol2.flow_start(0, flow(2, STAGE_P2D, 7, int(0.3e9), "i0", "d0", target=1)) == 0
    assert pol2.tick(0.0) == {1: 0}
    # progress of either push lowers the request's MLU for both
    pol2.progress(0.5, 1, int(0.3e9))
    pol2.progress(0.5, 2, int(0.2e9))
    pol2.tick(0.5)
    assert [s.mlu for s in pol2.flows()] == [pytest.approx(0.2), pytest.approx(0.2)]


def test_mlu_bytes_knob_is_validated():
    with pytest.raises(Exception, match="mlu_bytes"):
        PolicyConfig(mlu_bytes="flow")
    assert PolicyConfig.from_dict({"mlu_bytes": "message"}).mlu_bytes == "message"


def test_remaining_compute_shrinks_as_layers_complete():
    """(4) Algorithm 1 used the request's remaining_compute from request_start forever."""
    pol = mfs()
    pol.request_start(0, RequestInfo(1, 1, deadline=12.0, arrival=0, num_layers=10, remaining_compute=10.0))
    pol.flow_start(0, flow(1, STAGE_P2D, 1, 3, "i0", "d0", target=9, deadline=1000.0))
    pol.layer_boundary(8.0, 1, 9)  # 9 of 10 layers computed: 1 s of compute left
    # finish = 8 + 1 (compute) + 3 (bytes) = 12 <= 12: feasible, nothing pruned
    assert pol.batch_event(8.0, 1, "arrival") == {}
    assert not pol.is_pruned(1)
    assert pol.remaining_compute(pol._requests[1]) == pytest.approx(1.0)
    pol.layer_boundary(9.0, 1, 10, prefill_done=True)
    assert pol.remaining_compute(pol._requests[1]) == 0.0


def test_a_batch_late_by_compute_alone_prunes_nobody():
    """Pruning cannot make a batch whose compute alone ends after its deadline feasible; it used
    to prune the heaviest request on the bottleneck anyway, even from a higher-ranked batch."""
    pol = mfs()
    pol.request_start(0, RequestInfo(1, 1, deadline=5.0, arrival=0, num_layers=1))
    pol.request_start(0, RequestInfo(2, 2, deadline=6.0, arrival=0, num_layers=1, remaining_compute=10.0))
    pol.flow_start(0, flow(1, STAGE_P2D, 1, 3, "i0", "d0", deadline=1000.0))
    pol.batch_event(0, 1, "arrival")
    assert pol.batch_event(0, 2, "arrival") == {}
    assert not pol.is_pruned(1) and not pol.is_pruned(2)
