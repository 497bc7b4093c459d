"""The demo's emulation choices that do not need a network: topology, stage defaults, the plan."""

import pytest

from topo import demo


def test_racks_topology_puts_every_instance_across_the_trunk():
    topo = demo.load_topology("racks", 40, queue_buffer=128)
    cl = demo.cluster_of(topo, 2)
    assert cl.prefill == [["p1", "p2"], ["p3", "p4"]] and cl.decode == [["d1"]]
    rack = {ln.a.node: ln.b.node for ln in topo.links if ln.a.port is None}
    for a, b in cl.prefill:  # Stage-2 peers sit in different racks
        assert rack[a] != rack[b]
    # Stage 1 between instances (host i of one to host i of the other) crosses racks too
    assert rack["p3"] != rack["p1"] and rack["p4"] != rack["p2"]
    bws = sorted(ln.bandwidth_bps for ln in topo.links)
    assert bws[0] == 40e6 and bws[-1] == 80e6  # trunk keeps twice the host rate
    assert all(sw.queue_buffer == 128 for sw in topo.switches.values())
    with pytest.raises(ValueError, match="--queue-buffer"):
        demo.load_topology("racks", 40, queue_buffer=0)
    with pytest.raises(ValueError, match="--bandwidth"):
        demo.load_topology("racks", 1e9)


def test_stage_defaults_follow_each_policy():
    mfs = {(d["stage"], tuple(d.get("rli", ()))): d["level"] for d in demo.stage_defaults("mfs", 40e6)}
    assert mfs[(2, ())] == 1  # collectives straight to the high level (paper §4.5)
    assert [mfs[(1, (0, 0))], mfs[(1, (1, 1))], mfs[(1, (2, 0xFFFF))]] == [2, 3, 4]  # by RLI
    assert mfs[(3, ())] > 4  # a loose P2D flow starts deferred
    assert {d["level"] for d in demo.stage_defaults("fair", 40e6)} == {0}


def test_plan_scales_rate_and_time_and_checks_options():
    args = demo.parser().parse_args(["--requests", "6", "--warm", "40", "--lowload-ratio", "1.5"])
    plan = demo.make_plan(args, demo.load_topology("racks", 40))
    assert len(plan.requests) == 6 and len(plan.warm) == 40
    assert plan.rate == pytest.approx(0.8 * plan.capacity / 1.5)  # --load of the measured capacity
    assert plan.time_scale > 1 and plan.link_bps == 40e6
    cfg = plan.config(args)
    assert (cfg.model, cfg.lowload_ratio, cfg.slo_scale) == ("qwen3-coder", 1.5, 3.0)
    for bad, msg in ((["--warm", "50", "--skip", "40"], "--warm"), (["--load", "0"], "--load"),
                     (["--model", "gpt-9"], "unknown model"), (["--requests", "0"], "--requests")):
        with pytest.raises(ValueError, match=msg):
            demo.make_plan(demo.parser().parse_args(bad), demo.load_topology("racks", 40))
