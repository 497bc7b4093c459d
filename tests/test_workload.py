"""The emulated serving workload on loopback agents: hand-checked TTFT accounting, the
paper's stage dependencies, the results schema shared with the simulator."""

import math
import time

import pytest

from mfs.sim.results import read_results
from mfs.sim.workload import Request
from hostagent.agent import AgentConfig, HostAgent
from hostagent.control import ControlServer, LocalHandle, connect_all
from hostagent.testing import loopback_addresses
from hostagent.workload import EmuCluster, EmuConfig, FixedCost, run_workload

L, C = 4, 0.05  # layers, seconds of compute per layer
COST = FixedCost(num_layers=L, compute_s=C, stage1_per_token=100, stage2=250_000, stage3=125_000, gpus=2)
LINK = 1e9  # bits/s: the ideal TTFT below is computed for this rate
NAMES = ["p0", "p1", "p2", "p3", "d0"]


class Recorder:
    """Wraps a handle and timestamps the runtime calls (to check the dependencies)."""

    def __init__(self, inner, log, name=""):
        self.inner, self.log, self.address, self.name = inner, log, inner.address, name

    def submit(self, stage, peer, nbytes, request_id, **kw):
        self.log.append(("owner", request_id, (self.name, kw.get("owner", "")), time.time()))
        return self.inner.submit(stage, peer, nbytes, request_id, **kw)

    def layer_boundary(self, request_id, layer, prefill_done=False, owner=""):
        self.log.append(("layer", request_id, layer, time.time()))
        self.log.append(("owner", request_id, (self.name, owner), time.time()))
        self.inner.layer_boundary(request_id, layer, prefill_done, owner=owner)

    def request_start(self, *a, **kw):
        self.inner.request_start(*a, **kw)

    def request_end(self, rid):
        self.log.append(("end", rid, None, time.time()))
        self.inner.request_end(rid)

    def batch_event(self, *a):
        self.inner.batch_event(*a)


@pytest.fixture
def cluster():
    ips = loopback_addresses(len(NAMES))
    received = []
    agents = {n: HostAgent(AgentConfig(n, ip), on_received=received.append).start() for n, ip in zip(NAMES, ips)}
    yield agents, received
    for a in agents.values():
        a.close()


PIN = {0: 0, 1: 1}  # where the router sends A and B (below), pinned: the hand checks depend on it, not on its heuristic


def _requests():
    # A: 2048 fresh tokens -> instance 0. B: shares A's 4 prefix blocks (2048 tokens) and arrives while
    # instance 0 computes A, so it runs on instance 1 and fetches the prefix from instance 0 (Stage 1).
    return [Request(0, 0.0, 2048, 1, (11, 12, 13, 14), 512),
            Request(1, 0.01, 2560, 1, (11, 12, 13, 14, 15), 512)]


def test_hand_checked_ttft_and_dependencies(cluster, tmp_path):
    agents, received = cluster
    log = []
    handles = {n: Recorder(LocalHandle(a), log, n) for n, a in agents.items()}
    cl = EmuCluster(prefill=[["p0", "p1"], ["p2", "p3"]], decode=[["d0"]],
                    addresses={n: h.address for n, h in handles.items()})
    run = run_workload(handles, cl, _requests(), EmuConfig(link_bps=LINK, slo_scale=3.0, kv_placement="spread"),
                       cost=COST, pin=PIN, scheduler="none", rate=1.0, out=str(tmp_path / "emu"))
    a, b = run.requests
    # hand-checked ideal TTFT (the simulator's formula): s1 + L*(compute + s2) + s3, per-GPU bytes / link
    Bps = LINK / 8
    s2, s3 = 250_000 / 2 / Bps, 125_000 / 2 / Bps
    ideal_a = L * (C + s2) + s3
    ideal_b = 2048 * 100 / 2 / Bps + ideal_a
    assert a.deadline - a.arrival == pytest.approx(3 * ideal_a, rel=1e-6)
    assert b.deadline - b.arrival == pytest.approx(3 * ideal_b, rel=1e-6)
    assert (a.reused_tokens, b.reused_tokens) == (0, 2048)
    for r in (a, b):
        # TTFT = L layers of compute + transfers + driver overhead (generous bound for a loaded machine)
        assert L * C <= r.ttft < L * C + 0.5, r
        assert r.prefill_end - r.prefill_start >= L * C * 0.99
        assert r.stage3_done is not None and r.stage3_done <= r.arrival + r.ttft + 1e-6
        assert r.ttft == pytest.approx(max(r.stage3_done, r.prefill_end) - r.arrival, abs=1e-6)
        assert r.stage2_cct > 0 and r.met == (r.ttft <= r.deadline - r.arrival)
    assert a.stage1_done is None and b.stage1_done is not None
    # dependencies, from receiver-side delivery times and the layer boundaries the driver issued
    starts = {}
    for kind, rid, layer, t in log:
        if kind == "layer":
            starts.setdefault((rid, layer), t)
    s1 = [d for d in received if d.stage == 1]
    assert {d.request_id for d in s1} == {1} and len(s1) == L * 2  # every layer, to both hosts of instance 1
    for d in s1:
        assert d.time <= starts[(1, d.target_layer)] + 0.002, "Stage 1 of a layer landed after it started"
    for rid in (0, 1):
        s2d = [d for d in received if d.stage == 2 and d.request_id == rid]
        assert len(s2d) == L * 2  # each host to the other, every layer
        for d in s2d:
            nxt = starts[(rid, d.target_layer + 1)]
            assert d.time <= nxt + 0.002, "layer started before its predecessor's Stage 2 landed"
        s3d = [d for d in received if d.stage == 3 and d.request_id == rid]
        assert len(s3d) == L * 2 and {d.target_layer for d in s3d} == set(range(L))
    # a request's owner (its instance's first host) reports on it as its own; every other host (its
    # instance's, the KV holders') names the owner (report.proto FlowStart/LayerBoundary.owner)
    owners = {(rid, who) for kind, rid, who, _ in log if kind == "owner"}
    assert owners == {(0, ("p0", "")), (0, ("p1", "p0")), (1, ("p2", "")), (1, ("p3", "p2")),
                      (1, ("p0", "p2")), (1, ("p1", "p2"))}
    # results file: the simulator's schema
    runs, _ = read_results(tmp_path / "emu.json")
    assert runs[0].summary["requests"] == 2 and runs[0].meta["emulated"] is True
    assert [r.request_id for r in runs[0].requests] == [0, 1]
    assert math.isclose(runs[0].requests[0].ttft, a.ttft)


def test_driver_over_control_sockets(cluster, tmp_path):
    agents, _ = cluster
    servers = {n: ControlServer(a, f"unix:{tmp_path}/{n}.sock").start() for n, a in agents.items()}
    clients = connect_all({n: (s.path, agents[n].config.address) for n, s in servers.items()})
    try:
        cl = EmuCluster(prefill=[["p0", "p1"], ["p2", "p3"]], decode=[["d0"]],
                        addresses={n: c.address for n, c in clients.items()})
        run = run_workload(clients, cl, _requests(), EmuConfig(link_bps=LINK), cost=COST)
        assert run.summary["requests"] == 2 and run.meta["unfinished"] == 0
        assert all(L * C <= r.ttft < L * C + 0.5 for r in run.requests)
        assert sum(a.completed for a in agents.values()) == run.meta["flows"]
    finally:
        for c in clients.values():
            c.close()
        for s in servers.values():
            s.close()


def test_cost_model_scaling_keeps_ratios():
    cfg = EmuConfig(model="llama3-8b", link_bps=100e6, time_scale=4.0)
    cm = cfg.cost_model()
    real = EmuConfig(model="llama3-8b").cost_model().__class__(cm.model, cm.hw)  # unscaled
    new, reused = 3000, 1024
    p, q = cm.request_profile(new, reused), real.request_profile(new, reused)
    assert p.layer_compute_s == pytest.approx(4 * q.layer_compute_s)
    # transfer time on the emulated link / compute time == the same ratio on the real NIC
    emu_ratio = (p.stage3_bytes / (100e6 / 8)) / p.layer_compute_s
    real_ratio = (q.stage3_bytes / cm.hw.nic_bw) / q.layer_compute_s
    assert emu_ratio == pytest.approx(real_ratio, rel=1e-3)


def test_bad_cluster_and_config_are_named(cluster):
    agents, _ = cluster
    handles = {n: LocalHandle(a) for n, a in agents.items()}
    addrs = {n: h.address for n, h in handles.items()}
    with pytest.raises(ValueError, match="host 'zz' has no address"):
        run_workload(handles, EmuCluster([["zz"]], [["d0"]], addrs), [], cost=COST)
    with pytest.raises(ValueError, match="host 'p0' is in two instances"):
        run_workload(handles, EmuCluster([["p0"]], [["p0"]], addrs), [], cost=COST)
    with pytest.raises(ValueError, match="link_bps must be > 0"):
        run_workload(handles, EmuCluster([["p0"]], [["d0"]], addrs), [], EmuConfig(link_bps=0), cost=COST)
    with pytest.raises(ValueError, match="unknown model"):
        EmuConfig(model="gpt-9").cost_model()


def test_pin_places_requests_and_warm_owners_instead_of_the_router(cluster):
    agents, _ = cluster
    handles = {n: LocalHandle(a) for n, a in agents.items()}
    cl = EmuCluster(prefill=[["p0", "p1"], ["p2", "p3"]], decode=[["d0"]],
                    addresses={n: h.address for n, h in handles.items()})
    # unpinned, the warm prefix would be instance 0's (round robin) and both requests would run beside it
    # (no Stage 1); pinned, instance 1 owns it and both run on instance 0, fetching it (Stage 1)
    warm = [Request(100, 0.0, 2048, 1, (11, 12, 13, 14), 512)]
    run = run_workload(handles, cl, _requests(), EmuConfig(link_bps=LINK), cost=COST, warm=warm,
                       pin={100: 1, 0: 0, 1: 0})
    a, b = run.requests
    assert (a.reused_tokens, b.reused_tokens) == (2047, 2048) and run.meta["pinned"] == 3
    assert a.stage1_done is not None and b.stage1_done is not None
    with pytest.raises(ValueError, match=r"pin: request 1 -> 2 is not a prefill instance index \(0..1\)"):
        run_workload(handles, cl, [], cost=COST, pin={0: 0, 1: 2})
    with pytest.raises(ValueError, match="pin: request 0 -> '1' is not"):
        run_workload(handles, cl, [], cost=COST, pin={0: "1"})


def test_kv_size_nic_gives_a_host_the_bytes_of_its_busiest_nic():
    """``kv_size="nic"``: a host standing for several attention groups' NICs carries, per step, the bytes
    of the busiest of them (they run in parallel), shared by its requests in proportion to their bytes;
    ``"load"``: every transfer × hosts ÷ groups; ``"flow"``: the per-NIC size."""
    from types import SimpleNamespace as NS
    from hostagent.workload import Driver

    inst = NS(hosts=["a", "b"])
    prof = NS(per_nic=lambda n: n)

    def req(grp, nbytes):
        return NS(grp=grp, hidx=grp % 2, inst=inst, prof=prof, w=nbytes)

    def size(mode, q, reqs):
        drv = NS(grouped=True, groups=8, cfg=NS(kv_size=mode))
        return Driver.kv_bytes(drv, q, q.w, NS(reqs=reqs), lambda r: r.w)

    alone, other_host = req(0, 8000), req(1, 8000)
    assert size("nic", alone, [alone, other_host]) == 8000  # alone on its host: the real transfer's size
    assert size("load", alone, [alone]) == 2000 and size("flow", alone, [alone]) == 8000
    a, b = req(0, 6000), req(2, 2000)  # two groups of host a: one NIC's worth (the larger), shared
    assert size("nic", a, [a, b]) == 4500 and size("nic", b, [a, b]) == 1500
    c, d = req(4, 3000), req(4, 3000)  # one group (one NIC) carries both in full
    assert size("nic", c, [c, d]) == 3000 and size("nic", d, [c, d]) == 3000
    with pytest.raises(ValueError, match="kv_size must be one of"):
        EmuConfig(kv_size="both").validate()
