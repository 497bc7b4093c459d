"""Attention-DP granularity (docs/simulator.md, "Attention data parallelism"): per-NIC KV bytes and
times of a lone request for every model, the Stage-2 coflow of per-group flows, group-aware compute,
and per-connection fairness inside a level."""

from __future__ import annotations

import pytest

from mfs.sim.engine import ClusterConfig, Msg, Network, Simulator
from mfs.sim.model import MODELS, CostModel, Hardware
from mfs.sim.workload import Request
from tests.test_sim import FixedLevels

NIC_BPS = 200e9 / 8  # one 200 Gb/s NIC per GPU


class Recorder(FixedLevels):
    def __init__(self, by_stage):
        super().__init__(by_stage)
        self.info, self.t0, self.t1 = {}, {}, {}

    def flow_start(self, now, f):
        self.info[f.flow_id], self.t0[f.flow_id] = f, now
        return super().flow_start(now, f)

    def flow_end(self, now, fid):
        self.t1[fid] = now
        super().flow_end(now, fid)


def _lone(name: str, tokens: int = 2000, top: int = 3):
    """A lone request of ``tokens`` new tokens on an idle cluster with one prefill and one decode
    instance; Stage ``top`` on top so its per-layer transfers run alone at line rate."""
    m = MODELS[name]
    servers = 2 * m.gpus // 8
    levels = {k: 0 if k == top else 1 for k in (1, 2, 3)}
    sim = Simulator(m, Recorder(levels), ClusterConfig(servers=servers, warmup=0, measured=1))
    (rec,) = sim.run([Request(0, 0.0, tokens, 1, (), 512)])
    return sim, rec


@pytest.mark.parametrize("name", sorted(MODELS))
def test_lone_request_kv_per_nic_bytes_and_time_per_layer(name):
    m = MODELS[name]
    sim, rec = _lone(name)
    pol = sim.policy
    s3 = [f for f in pol.info.values() if f.stage == 3]
    assert len(s3) == m.num_layers
    # the request's KV lives on one attention group of tp·sp GPUs: 8 KV heads × 128 × 2 (K, V) × 2 B
    # per token and layer, over the group's NICs only (heads sharded over TP ranks, tokens over SP ranks)
    want = 2 * m.num_kv_heads * m.head_dim * 2 * 2000 // (m.tp * m.sp)
    assert {f.size_bytes for f in s3} == {want}
    assert len({f.src for f in s3}) == 1  # one group's NICs carry all of it
    for f in s3:  # uncontended at top priority: bytes / one NIC's rate, per layer
        assert pol.t1[f.flow_id] - pol.t0[f.flow_id] == pytest.approx(want / NIC_BPS, rel=1e-6)
    assert sim.cost.nic_bytes(sim.cost.stage3_bytes(2000)) == want


def test_qwen3_coder_lone_2k_request_pushes_8_2_mb_per_layer_through_one_nic():
    # the figure, from the constants: 4096 B of KV per token and layer, TP1 ⇒ one NIC holds it all
    sim, _ = _lone("qwen3-coder")
    (size,) = {f.size_bytes for f in sim.policy.info.values() if f.stage == 3}
    assert size == 8_192_000
    assert size / NIC_BPS == pytest.approx(327.68e-6)
    # the instance-averaged figure the old model used was 32× smaller (÷ all 32 GPUs of the instance)
    assert sim.cost.request_profile(2000).per_gpu(sim.cost.stage3_bytes(2000)) * 32 == size


@pytest.mark.parametrize("name", ["mixtral-8x22b", "dbrx", "qwen3-coder"])
def test_stage2_coflow_is_one_flow_per_group_ending_with_the_slowest(name):
    m = MODELS[name]
    sim, rec = _lone(name, top=2)
    pol = sim.policy
    layer0 = [f for f in pol.info.values() if f.stage == 2 and f.target_layer == 0]
    assert len(layer0) == m.groups  # every group's GPUs host experts: all take part
    ep_local = 8 // m.tp
    per_tok = m.hidden * m.top_k * 2 * (m.ep - ep_local) / m.ep
    u = 2000 * per_tok / m.gpus  # what each GPU receives for its experts (and sends back in combine)
    d = 2000 * per_tok / m.tp  # what each GPU of the request's group dispatches (and gets back)
    sizes = sorted(f.size_bytes for f in layer0)
    assert sizes[-1] == round(d + u) and set(sizes[:-1]) == {round(u)}
    # the layer's Stage 2 ends with its slowest flow (the request's group), uncontended here
    assert rec.stage2_cct == pytest.approx(m.num_layers * (d + u) / NIC_BPS, rel=1e-6)


def test_layer_compute_is_slowest_groups_attention_plus_instance_ffn():
    m = MODELS["qwen3-coder"]
    hw = Hardware(layer_overhead=0.0)
    c = CostModel(m, hw)
    rate = hw.peak_flops * hw.mfu
    one = c.layer_compute_s([(1000, 0), (1000, 0)], [0, 0])
    spread = c.layer_compute_s([(1000, 0), (1000, 0)], [0, 1])
    assert one == pytest.approx(2 * c.attn_flops(1000, 0) / (m.tp * rate) + 2 * c.ffn_flops(1000) / (m.gpus * rate))
    assert spread == pytest.approx(c.attn_flops(1000, 0) / (m.tp * rate) + 2 * c.ffn_flops(1000) / (m.gpus * rate))
    # dense SP model: one group spanning the instance, the old instance-wide formula
    ll = CostModel(MODELS["llama3-8b"], hw)
    assert ll.layer_compute_s((4096, 0)) == pytest.approx(
        max(ll.layer_flops(4096, 0) / (16 * rate), ll.model.layer_weight_bytes / (16 * hw.hbm_bw)))


def test_requests_spread_over_groups_and_share_one_step():
    m = MODELS["mixtral-8x22b"]
    sim = Simulator(m, FixedLevels(), ClusterConfig(servers=8, warmup=0, measured=4))
    assert sim.np == 1 and sim.ng == 8
    pol = sim.policy = Recorder({1: 0, 2: 0, 3: 0})
    recs = {r.request_id: r for r in sim.run([Request(i, 0.0, 1000, 1, (), 512) for i in range(4)])}
    assert len(recs) == 4
    # request 0 starts a step on the idle instance at once; the router puts 1..3 on three other
    # groups, and they share the next step (one forward pass of the instance)
    assert sim.bid == 2
    assert len({recs[i].prefill_start for i in (1, 2, 3)}) == 1 and recs[1].prefill_start > recs[0].prefill_start
    groups = {f.request_id: f.src for f in pol.info.values() if f.stage == 3}
    assert len(set(groups.values())) == 4


def test_weighted_fair_share_counts_connections():
    # a collective opening 24 peer connections vs 8 single-connection transfers on one link
    net = Network(4, 100.0, lambda fid: None)
    coll = net.conn("coll", 0, 1, w=24)
    others = [net.conn(i, 0, 3) for i in range(8)]
    for i, c in enumerate([coll] + others):
        net.add(Msg(i + 1, 2 if c is coll else 1, 10, c, None, 0, None, i), 0.0)
    net.flush(0.0)
    assert coll.rate == pytest.approx(100 * 24 / 32)
    assert [c.rate for c in others] == pytest.approx([100 / 32] * 8)


def test_weighted_share_with_cap_and_second_bottleneck():
    # a (w=2) capped at 10 on link 0; b (w=1) on links 0 and 2; c (w=1) on link 2 only
    net = Network(4, 90.0, lambda fid: 10.0 if fid == 1 else None)
    a, b, c = net.conn("a", 0, 1, w=2), net.conn("b", 0, 2), net.conn("c", 3, 2)
    for i, x in enumerate((a, b, c)):
        net.add(Msg(i + 1, 1, 10, x, None, 0, None, i), 0.0)
    net.flush(0.0)
    assert (a.rate, b.rate, c.rate) == pytest.approx((10.0, 45.0, 45.0))


@pytest.mark.parametrize("fairness,weight", [("per_connection", 24), ("per_flow", 1)])
def test_fairness_knob_sets_the_collective_weight(fairness, weight):
    sim = Simulator(MODELS["dbrx"], FixedLevels(), ClusterConfig(servers=8, fairness=fairness))
    assert sim.s2_weight == weight  # DBRX TP2/EP16: 12 of 16 EP ranks × 2 GPUs in other servers


def test_routing_prefers_the_holder_group_and_same_server_kv_is_local():
    m = MODELS["qwen3-coder"]  # TP1: 8 groups per server, 32 per instance
    sim = Simulator(m, Recorder({1: 0, 2: 0, 3: 0}), ClusterConfig(servers=8, warmup=0, measured=2))
    prefix = tuple(range(8))
    recs = sim.run([Request(0, 0.0, 8 * 512 + 100, 1, prefix + (900,), 512),
                    Request(1, 1.0, 8 * 512 + 100, 1, prefix + (901,), 512)])
    assert recs[1].reused_tokens == 8 * 512
    s1 = [f for f in sim.policy.info.values() if f.stage == 1]
    s3 = {f.request_id: f.src for f in sim.policy.info.values() if f.stage == 3}
    # the holder's group is busy: the second request runs on another group of the holder's server,
    # whose KV comes over NVLink (no Stage-1 flow on the NICs); any fetch would cross servers
    srv = {r: sim.node_server[sim.names.index(n)] for r, n in s3.items()}
    assert s3[1] != s3[0] and srv[1] == srv[0] and not s1
    for f in s1:
        assert sim.node_server[sim.names.index(f.src)] != sim.node_server[sim.names.index(f.dst)]


def test_per_group_fifo_steps():
    sim = Simulator(MODELS["mixtral-8x22b"], FixedLevels(), ClusterConfig(servers=8, max_batch_tokens=1000))
    inst = sim.inst[0]

    def join(g, new):
        b = sim._step_for(inst, g, new)
        b.gtok[g] = b.gtok.get(g, 0) + new
        return b.bid

    a = join(0, 600)
    assert join(0, 400) == a  # group 0 still fits (1000 tokens per group and step)
    b = join(0, 100)  # group 0 is full in step a: the next step
    assert b != a
    assert join(1, 900) == a  # group 1 has room in the oldest queued step
    assert join(1, 200) == b  # after its last step holding group 1
    assert join(0, 5000) != b  # over the limit alone: a step of its own (at least one request)
