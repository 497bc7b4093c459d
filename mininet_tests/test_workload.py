"""On the emulated workload, MFS beats fair sharing where the paper says it should: R's Stage-1 stall.

Scenario (large effect, hand-sized with a fixed cost model so it does not depend on trace
slices): pairs of requests arrive together. F (fresh prompt, its first block held by instance 0)
runs on prefill instance 0: no Stage 1; R reuses a long prefix whose KV instance 0 holds, runs on
instance 1 and, when its batch starts, fetches every layer's KV (Stage 1, one transfer per layer,
posted together) from instance 0's hosts, while its own Stage-2 collectives use the same switch ports.

Where everything runs is pinned, not left to the router (whose load/prefix heuristic may put R
beside its prefix, and then there is no Stage 1 to schedule): ``run_workload(pin=...)`` places
F on 0 and R on 1 and makes instance 0 the owner of the warm blocks; ``kv_placement="spread"``
(every host of an instance carries its per-GPU share), the mode the figures below were sized for.

* fair sharing: the 8 per-layer fetches share the port, so layer 0's KV lands only when
  nearly all of them have: R stalls ~7 layers' worth of Stage 1 before layer 0;
* MFS: smallest RLI first (layer 0's fetch at RLI 0, the rest deferred and promoted at
  layer boundaries), Stage 2 above them: R stalls ~1 layer's worth.

Hosts are shaped to their line rate and every agent holds deferred data in its priority send
queue, ranked by the controller's levels (topo.demo.network: the demo's settings; for fair all flows share
one level, so its hosts send round robin as before). Asserted: where requests ran (F nothing fetched, R its
whole prefix), R's wait for Stage 1 before layer 0 (MFS under half of fair's: the mechanism) and R's whole
Stage-1 stall (MFS below fair). Not asserted: TTFT. On a busy 2-core box its run-to-run noise (Stage-2 rounds
through the agents and the Python switch: 0.25-1 s for 8 x 8 ms) exceeds the ~0.2-0.3 s MFS saves here —
measured R TTFT MFS 1.02-1.84 s vs fair 1.30-3.13 s, one of six runs with MFS behind; TTFT is asserted with
a confidence interval over 40 paired requests in test_demo.py. Same requests, fresh cluster per
policy, one switch (topologies/demo.yaml at 20 Mb/s: every figure is in seconds on the link, so the rate
only sets the packet rate; at 40 Mb/s a busy 2-core box's Python switch fell ~2.5x behind line rate).
"""

import pytest

from mfs.sim.workload import Request
from topo import demo
from topo.net import unique_tag

pytestmark = [pytest.mark.netns, pytest.mark.slow]

L, C = 8, 0.06  # layers, compute seconds per layer
LINK = 20e6
BLOCK, NBLK = 512, 8
S1_LAYER = 0.8 * C  # per-host Stage-1 seconds per layer on the link
S2_LAYER, S3_LAYER = 0.008, 0.004  # per-host Stage-2 / Stage-3 seconds per layer on the link


def _scenario():
    from hostagent.workload import FixedCost
    gpus = 2
    per_token = S1_LAYER * LINK / 8 * gpus / (BLOCK * NBLK)  # bytes per reused token per layer (instance total)
    cost = FixedCost(num_layers=L, compute_s=C, stage1_per_token=per_token, stage2=round(S2_LAYER * LINK / 8 * gpus),
                     stage3=round(S3_LAYER * LINK / 8 * gpus),
                     gpus=gpus)
    prefix = tuple(range(1, NBLK + 1))
    # instance 0 holds R's prefix and F's first block (pinned owners)
    warm = [Request(10_000, 0.0, BLOCK * NBLK, 1, prefix, BLOCK), Request(10_001, 0.0, BLOCK, 1, (999,), BLOCK)]
    pin = {10_000: 0, 10_001: 0}
    reqs, t = [], 0.0
    for k in range(4):
        reqs.append(Request(2 * k, t, 1024, 1, (999, 2000 + k), BLOCK))  # F: local prefix
        reqs.append(Request(2 * k + 1, t + 0.01, BLOCK * NBLK + 256, 1, prefix + (3000 + k,), BLOCK))  # R
        pin |= {2 * k: 0, 2 * k + 1: 1}  # F beside its block, R on the other instance: Stage 1 from 0
        t += 1.6
    return cost, warm, reqs, pin


def _first_wait(r_side):
    """Each R's wait for Stage 1 before its layer 0: from its batch's start (its arrival, or the previous R's
    prefill end: instance 1 runs only R, one at a time) to its layer 0."""
    out, prev_end = [], 0.0
    for q in sorted(r_side, key=lambda q: q.arrival):
        out.append(q.prefill_start - max(q.arrival, prev_end))
        prev_end = q.prefill_end
    return out


def test_mfs_beats_fair_on_emulated_workload(tmp_path):
    pytest.importorskip("hostagent.workload", reason="the workload driver is not available")
    from hostagent.workload import EmuConfig, run_workload
    cost, warm, reqs, pin = _scenario()
    topo = demo.load_topology("demo", LINK / 1e6, queue_buffer=128)
    cluster = demo.cluster_of(topo, 2)
    cfg = EmuConfig(link_bps=LINK, time_scale=1.0, timeout=30.0, kv_placement="spread")
    res = {}
    for pol in ("mfs", "fair"):
        with demo.network(topo, pol, LINK, tag=unique_tag(), logdir=tmp_path / pol) as net:
            handles = demo._handles(net, cluster)
            try:
                run = run_workload(handles, cluster, reqs, cfg, cost=cost, warm=warm, scheduler=pol, pin=pin)
            finally:
                demo._close(handles)
            assert not net.check_processes()
        assert run.meta["unfinished"] == 0 and len(run.requests) == len(reqs)
        assert len(cluster.prefill) == 2 and run.meta["pinned"] == len(pin)
        f_side = [q for q in run.requests if not q.request_id % 2]
        r_side = [q for q in run.requests if q.request_id % 2]
        # F local (its one block at its own instance: nothing fetched), R fetched its whole prefix
        assert all(q.reused_tokens == BLOCK and q.stage1_done is None for q in f_side), \
            [(q.request_id, q.reused_tokens, q.stage1_done) for q in run.requests]
        assert all(q.reused_tokens == BLOCK * NBLK and q.stage1_done is not None for q in r_side), \
            [(q.request_id, q.reused_tokens, q.stage1_done) for q in run.requests]
        res[pol] = {"first_wait": sum(_first_wait(r_side)) / len(r_side),
                    "stall": sum(q.stage1_stall for q in r_side) / len(r_side),
                    "r_ttft": sum(q.ttft for q in r_side) / len(r_side)}  # reported with a failure, not asserted
    m, f = res["mfs"], res["fair"]
    # before layer 0 fair waits ~7 layers of Stage 1 (~340 ms), MFS ~1 (~50 ms). Measured (means of R, load ~12 on
    # 2 cores): MFS 0.09-0.16 s vs fair 0.50-1.02 s; fair in both runs (MFS broken): 0.49/0.55, 0.54/0.52 s
    assert f["first_wait"] - m["first_wait"] > 0.15 and m["first_wait"] < 0.5 * f["first_wait"], res
    # the whole stall (later layers too: MFS promotes a layer's fetch at the previous boundary, which a loaded box's
    # control latency delays): 0.04 vs 0.37 s on a quiet box (at 40 Mb/s); loaded, MFS 0.26-0.55 vs fair 0.54-1.08
    assert m["stall"] < f["stall"], res
