"""Strict priority on a congested switch port, and a promotion written mid-flow.

line2 with the switch port toward h2 limited to 4 Mb/s; h1 offers two paced UDP flows
of 3 Mb/s each (6 Mb/s > 4 Mb/s), so the egress queue of port 2 is congested.
Levels come from ``mfs_flow`` entries written directly over P4Runtime (no controller).
"""

import pytest

from mfs.levels import default_dscp
from topo.net import Network, unique_tag
from topo.topology import from_dict

from .helpers import TARGETS, by_flow, flow_arg, require_target, run_traffic, span, write_levels

pytestmark = [pytest.mark.netns, pytest.mark.slow]

RATE = 4e6  # bottleneck (switch port 2 -> h2)
FLOW_RATE = 3e6
N = 500  # packets of 500 B: ~0.67 s at 3 Mb/s alone
HIGH, LOW = 11, 22


def topo(target):
    return from_dict({"name": "prio", "hosts": [{"name": "h1", "ip": "10.0.0.1/24"}, {"name": "h2", "ip": "10.0.0.2/24"}],
                      "switches": [{"name": "s1", "target": target}],
                      "links": [{"a": "h1", "b": "s1-p1", "bandwidth": 100},
                                {"a": "h2", "b": "s1-p2", "bandwidth": RATE / 1e6}]}, "prio")


@pytest.mark.parametrize("target", TARGETS)
def test_strict_priority_on_congested_port(target, tmp_path):
    require_target(target)
    with Network(topo(target), tag=unique_tag(), controller=False, agents=False, logdir=tmp_path / "logs") as net:
        write_levels(net, "s1", {(3, HIGH): 0, (3, LOW): 7})
        alone = by_flow(run_traffic(net, "h1", "h2", [flow_arg(3, HIGH, N, FLOW_RATE)], tmp_path), HIGH)
        rows = run_traffic(net, "h1", "h2", [flow_arg(3, LOW, N, FLOW_RATE), flow_arg(3, HIGH, N, FLOW_RATE, 0.2)],
                           tmp_path)
    hi, lo = by_flow(rows, HIGH), by_flow(rows, LOW)
    assert len(alone) >= 0.95 * N, f"uncontended high flow lost packets: {len(alone)}/{N}"
    # the high-level flow is served first: (almost) no loss, completion time near uncontended
    assert len(hi) >= 0.95 * N, f"high flow delivered {len(hi)}/{N}"
    assert span(hi) <= 1.5 * span(alone) + 0.3, f"high flow took {span(hi):.2f}s vs {span(alone):.2f}s alone"
    assert {r[3] for r in hi} == {default_dscp(0)}
    assert {r[3] for r in lo} == {default_dscp(7)}
    # while both are active, the low-level flow only gets the leftover (4 - 3 = 1 Mb/s)
    t0, t1 = hi[0][0], hi[-1][0]
    lo_during = [r for r in lo if t0 <= r[0] <= t1]
    hi_during = [r for r in hi if t0 <= r[0] <= t1]
    assert len(lo_during) < 0.6 * len(hi_during), (len(lo_during), len(hi_during))
    # and the low flow waits: it finishes after the high one
    assert lo[-1][0] > hi[-1][0]


@pytest.mark.parametrize("target", TARGETS)
def test_promotion_mid_flow_moves_packets(target, tmp_path):
    """A is at level 5 behind B at level 3; MODIFY A to level 1 mid-flow: A's packets carry the
    new level's DSCP within a bounded time and A now takes the bandwidth B had."""
    require_target(target)
    A, B = 31, 32
    n = 1500  # ~2 s at 3 Mb/s
    with Network(topo(target), tag=unique_tag(), controller=False, agents=False, logdir=tmp_path / "logs") as net:
        write_levels(net, "s1", {(3, A): 5, (3, B): 3})
        marks = {}

        def promote(t_send):
            import time
            time.sleep(0.8)
            marks["before"] = time.time()
            marks["after"] = write_levels(net, "s1", {(3, A): 1}, kind="modify")

        rows = run_traffic(net, "h1", "h2", [flow_arg(3, A, n, FLOW_RATE), flow_arg(3, B, n, FLOW_RATE)],
                           tmp_path, during=promote)
    a = by_flow(rows, A)
    old, new = default_dscp(5), default_dscp(1)
    first_new = next((r[0] for r in a if r[3] == new), None)
    assert first_new is not None, "no packet of A ever carried the promoted level's DSCP"
    assert first_new - marks["after"] < 1.0, f"promotion took {first_new - marks['after']:.2f}s to show"
    assert all(r[3] == old for r in a if r[0] < marks["before"])
    # the switch classifies in arrival order: every packet of A sent after the first one that carried
    # the new level carries it too (A's packets still queued at the old level drain only when the
    # levels above are idle, i.e. they may arrive last — that is strict priority, not a stale entry)
    first_new_seq = next(r[2] for r in a if r[3] == new)
    later = [r for r in a if r[2] > first_new_seq]
    assert later and all(r[3] == new for r in later), sorted({r[3] for r in later})
    # A's throughput rises: before, it got the leftover of B; after, B gets the leftover
    def rate(rs, t0, t1):
        return sum(1 for r in rs if t0 <= r[0] < t1) / max(1e-9, t1 - t0)
    b = by_flow(rows, B)
    before = rate(a, a[0][0] + 0.2, marks["before"])
    after = rate(a, first_new + 0.2, min(a[-1][0], b[-1][0]))
    assert after > 1.5 * before, f"A: {before:.0f} pkt/s before, {after:.0f} pkt/s after promotion"
