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


def _stage_defaults(scheduler):
    from controller.engine import stage_defaults_from_policy
    from mfs.policy import PolicyConfig
    return stage_defaults_from_policy(PolicyConfig.from_dict({"scheduler": scheduler, "bandwidth_bps": 40e6}))


def test_stage_defaults_follow_each_policy():
    mfs = {(d["stage"], tuple(d.get("rli", ()))): d["level"] for d in _stage_defaults("mfs")}
    assert mfs[(2, ())] == 1  # collectives straight to the high level (paper §4.5)
    assert [mfs[(1, (0, 0))], mfs[(1, (1, 1))], mfs[(1, (2, 0xFFFF))]] == [2, 3, 4]  # by RLI
    assert mfs[(3, ())] > 4  # a loose P2D flow starts deferred
    assert {d["level"] for d in _stage_defaults("fair")} == {0}


def test_demo_network_is_the_same_host_side_for_every_policy(tmp_path):
    topo = demo.load_topology("racks", 40)
    for pol in ("mfs", "fair"):
        net = demo.network(topo, pol, 40e6, logdir=tmp_path)
        net.grpc_ports = {sw: 1 for sw in topo.switches}  # not started: addresses only
        net.tokens = {h: "t" for h in topo.hosts}
        assert net.topo.shape_hosts and net.host_priority and net.shape_hosts
        cfg = net.controller_config()
        assert cfg["stage_defaults"] == _stage_defaults(pol)  # derived from the policy the controller runs
    assert not topo.shape_hosts  # the caller's topology is not changed


def test_plan_pairs_requests_per_seed_and_scales_rate_and_time():
    args = demo.parser().parse_args(["--requests", "6", "--repeat", "2", "--warm", "40", "--lowload-ratio", "1.5"])
    plan = demo.make_plan(args, demo.load_topology("testbed", 40))
    assert plan.seeds == [1, 2] and plan.cluster.decode == [["d1", "d2"]]
    a, b = plan.requests(1), plan.requests(2)
    assert len(a) == len(b) == 6 and len(plan.warm(1)) == 40
    assert [r.input_tokens for r in a] != [r.input_tokens for r in b]  # a new request set per seed
    assert a == plan.requests(1)  # ... and the same one for every policy
    assert not {r.request_id for r in a} & {r.request_id for r in b}  # ids never collide across seeds
    for s in (1, 2):  # --load of each set's own measured capacity
        assert plan.rate(s) == pytest.approx(0.8 * plan.caps[s] / 1.5)
    assert plan.caps[1] != plan.caps[2]
    assert a[-1].arrival == pytest.approx(5 / plan.rate(1))  # the set is rescaled to its rate
    assert plan.time_scale > 1 and plan.link_bps == 40e6
    cfg = plan.config(args)
    assert (cfg.model, cfg.lowload_ratio, cfg.slo_scale, cfg.hw.nic_bw) == ("mixtral-8x7b", 1.5, 3.0, 6.25e9)
    for bad, msg in ((["--load", "0"], "--load"), (["--model", "gpt-9"], "unknown model"),
                     (["--requests", "1"], "--requests"), (["--repeat", "0"], "--repeat"),
                     (["--hardware", "tpu"], "--hardware"), (["--workload", "nosuch"], "--workload")):
        with pytest.raises(ValueError, match=msg):
            demo.make_plan(demo.parser().parse_args(bad), demo.load_topology("testbed", 40))


def test_trace_slices_move_by_seed():
    from mfs.sim import workload as W
    if W.traces_dir() is None:
        pytest.skip("traces not available ($MFS_TRACES or ../shared/traces)")
    args = demo.parser().parse_args(["--workload", "mooncake-synthetic", "--requests", "5", "--repeat", "2",
                                     "--skip", "100", "--lowload-ratio", "1.5"])
    plan = demo.make_plan(args, demo.load_topology("testbed", 40))
    assert len(plan.warm(1)) == 100 and len(plan.warm(2)) == 105  # every line before the slice
    with pytest.raises(ValueError, match="--warm"):
        demo.make_plan(demo.parser().parse_args(["--workload", "mooncake-synthetic", "--skip", "10", "--warm", "50"]),
                       demo.load_topology("testbed", 40))


def test_simulator_runs_the_same_scenario():
    """The simulator's cluster has the emulation's instances (2 prefill of 8 GPUs, 1 decode) and sees the
    same requests; its low-load ratio is near 1 (no emulation costs)."""
    args = demo.parser().parse_args(["--requests", "6", "--repeat", "2", "--lowload-ratio", "1.5"])
    plan = demo.make_plan(args, demo.load_topology("testbed", 40))
    cl = demo.sim_cluster(plan, args, 1.0, 6)
    from mfs.sim.model import get_model
    m = get_model("mixtral-8x7b")
    assert (cl.prefill_instances(m), cl.decode_instances(m), cl.gpus_per_server) == (2, 1, 4)
    runs, ratio = demo.simulate_all(plan, args, ["mfs", "fair"])
    assert 1.0 <= ratio < 1.3
    for r in runs:  # the same load as the emulation, of the simulator's own measured capacity
        assert r.rate == pytest.approx(0.8 * plan.caps[r.meta["seed"]] / ratio)
    assert [(r.scheduler, r.meta["seed"]) for r in runs] == [("mfs", 1), ("fair", 1), ("mfs", 2), ("fair", 2)]
    ids = {r.scheduler: sorted(q.request_id for q in r.requests) for r in runs if r.meta["seed"] == 2}
    assert ids["mfs"] == ids["fair"] == sorted(q.request_id for q in plan.requests(2))


def test_shape_limits_rate_with_tbf_in_a_namespace():
    from topo import netns
    from topo.net import unique_tag
    reason = netns.preflight()
    if reason:
        pytest.skip(reason)
    ns = f"{netns.PREFIX}shp{unique_tag()}"
    netns.add_ns(ns)
    try:
        netns.shape("lo", 40e6, ns=ns)
        out = netns.run(["tc", "qdisc", "show", "dev", "lo"], ns=ns).stdout
        assert "tbf" in out and "rate 40Mbit" in out, out
        with pytest.raises(ValueError, match="rate_bps"):
            netns.shape("lo", -1.0, ns=ns)
    finally:
        netns.del_ns(ns)
    assert ns not in netns.namespaces()


def test_lost_cluster_names_an_outside_teardown(tmp_path):
    """The demo's diagnosis when its cluster is stopped from outside (`mfs-topo stop` without --tag kills
    every recorded run's processes, removes their namespaces and run state): it says what is gone, and
    only such a teardown (not a crash of ours) is retried."""
    import signal
    import subprocess
    import sys
    from types import SimpleNamespace

    from topo import net as N
    from topo import netns
    reason = netns.preflight()
    if reason:
        pytest.skip(reason)
    ns = f"{netns.PREFIX}lc{N.unique_tag()}"
    netns.add_ns(ns)
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / N.STATE).write_text("{}")
        fake = SimpleNamespace(rundir=tmp_path, topo=SimpleNamespace(hosts={"p1": None}), ns=lambda h: ns,
                               procs={"agent-p1": SimpleNamespace(popen=proc)})
        assert demo.lost_cluster(fake) is None  # whole
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)
        netns.del_ns(ns)
        (tmp_path / N.STATE).unlink()
        why = demo.lost_cluster(fake)
        assert "run state" in why and ns in why and "agent-p1 killed by signal 15" in why, why
        assert demo.outside_teardown(why)
        crash = SimpleNamespace(popen=subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"]))
        crash.popen.wait(timeout=30)
        (tmp_path / N.STATE).write_text("{}")
        netns.add_ns(ns)
        fake.procs = {"agent-p1": crash}
        why = demo.lost_cluster(fake)
        assert why == "agent-p1 exited 3" and not demo.outside_teardown(why)
    finally:
        proc.kill()
        proc.wait(timeout=10)
        if ns in netns.namespaces():
            netns.del_ns(ns)
    assert ns not in netns.namespaces()
    with pytest.raises(ValueError, match="--retries"):
        demo.make_plan(demo.parser().parse_args(["--retries", "-1"]), demo.load_topology("testbed", 40))
