"""Model configurations and the per-layer cost model (one implementation, shared).

Used by the simulator (mfs.sim.engine) and by the host agent's emulated
workload, so that both see the same compute seconds and the same bytes per
stage for a request of a given input / reused length.

Sources of every constant
-------------------------
Hardware (``Hardware`` defaults, A100-class, as the paper's Vidur calibration):

* ``peak_flops = 312e12``: NVIDIA A100 datasheet, BF16 dense Tensor Core peak.
* ``mfu = 0.5``: assumed model-FLOPs utilisation of prefill GEMMs (large
  batched matmuls typically reach 40-60 % of peak on A100; 0.5 is our choice).
* ``hbm_bw = 2.039e12`` B/s: A100 80 GB SXM datasheet HBM2e bandwidth.
* ``nic_bw = 25e9`` B/s: one 200 Gb/s NIC per GPU (paper §4.2).
* ``gpus_per_server = 8`` (paper §4.2: 8 GPUs on NVSwitch per server).
* ``layer_overhead = 20e-6`` s: kernel-launch / synchronisation floor per layer (assumed).

Model shapes are the public ``config.json`` values of each model (URLs in
``ModelConfig.source``); parallelism is the paper's §4.2 table.

Cost model (per layer)
----------------------
For a request with ``new`` freshly computed tokens and ``reused`` prefix tokens
(whose KV comes from the cache, Stage 1), ``ctx = reused + new``:

* attention FLOPs = projections ``2·new·hidden·(2·q_dim + 2·kv_dim)``
  + scores/values ``4·heads·head_dim·new·(reused + new/2)`` (causal);
  FFN FLOPs = ``2·new·3·hidden·(top_k·moe_inter + dense_inter)`` (SwiGLU: 3 matrices).
* **Attention data parallelism.** An instance of ``G = tp·ep·sp`` GPUs runs attention in
  ``groups = G / (tp·sp)`` (= ep) data-parallel groups of ``attn_gpus = tp·sp`` GPUs; a request
  and the KV it holds live on one group (its heads sharded over the group's TP ranks, its
  tokens over its SP ranks), while the MoE layer spans all G GPUs (EP). Dense SP models
  (llama3-8b) have one group of G GPUs.
* compute seconds of a batch's layer =
  ``max(max_g attn_g / (attn_gpus·peak·mfu) + ffn / (G·peak·mfu), weight_bytes / (G·hbm)) + overhead``
  (the slowest group's attention, then the instance-wide FFN; memory-bound only for tiny batches).
* KV bytes per token per layer = ``2 · kv_heads · head_dim · dtype_bytes``.
* Stage 1 (reuse): ``kv_token · reused`` per layer; Stage 3 (P2D push): ``kv_token · ctx``.
  Both cross only the request's group: **per NIC** ``bytes / attn_gpus`` (:meth:`CostModel.nic_bytes`).
* Stage 2, MoE expert parallelism: dispatch + combine ``2 · new · hidden · top_k · dtype_bytes``
  per layer (instance total), of which the share sent to EP peers in *other* servers,
  ``f_off = (ep − ep_local)/ep`` with ``ep_local = gpus_per_server / tp``, crosses the network
  (TP stays on NVLink, paper §7). Per NIC (:meth:`CostModel.stage2_nic_bytes`): a GPU of group
  ``g`` dispatches its share of the group's tokens, ``D_g = new_g·top_k·hidden·dtype·f_off / tp``,
  and receives ``U = N·top_k·hidden·dtype·f_off / G`` for the experts it hosts (tokens spread
  evenly over experts, N = the batch's new tokens); combine is the reverse, so each NIC sends
  and receives ``D_g + U``.
  Sequence parallelism (dense Llama): all-gather of the layer's K/V over the SP ranks,
  ``(sp − 1) · kv_token · ctx`` per layer, of which ``(sp − sp_local)/(sp − 1)`` crosses servers,
  spread evenly over the G GPUs (one group).

Byte methods without ``nic`` in their name return instance totals (``RequestProfile.per_gpu``
divides by G: the old instance-averaged figure, kept for the emulated workload); the per-NIC
figures for a request alone on one group are ``RequestProfile.per_nic`` / ``stage2_nic``.

``scale`` multiplies bytes and ``time_scale`` multiplies compute seconds, so an
emulation on slow links keeps the paper's communication/compute ratio
(e.g. 100 Mb/s links: ``scale = 100e6 / 200e9``).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class ModelConfig:
    name: str
    num_layers: int
    hidden: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    moe_inter: int  # per-expert FFN width (MoE) or the dense FFN width (dense models)
    num_experts: int  # 0 = dense
    top_k: int  # experts per token (1 for dense)
    tp: int
    ep: int = 1
    sp: int = 1
    dense_inter: int = 0  # extra always-on FFN (shared / residual expert); 0 = none
    dtype_bytes: int = 2  # bf16
    source: str = ""

    @property
    def is_moe(self) -> bool:
        return self.num_experts > 0

    @property
    def gpus(self) -> int:
        """GPUs of one serving instance (one model replica)."""
        return self.tp * self.ep * self.sp

    @property
    def attn_gpus(self) -> int:
        """GPUs of one attention data-parallel group (a request's KV lives on them): tp·sp."""
        return self.tp * self.sp

    @property
    def groups(self) -> int:
        """Attention data-parallel groups per instance (G / attn_gpus = ep)."""
        return self.gpus // self.attn_gpus

    def stage2_peers(self, gpus_per_server: int) -> int:
        """Peer GPUs in other servers one GPU's Stage-2 collective exchanges data with (it opens one
        connection to each)."""
        if self.is_moe:
            ep_local = max(1, min(self.ep, gpus_per_server // self.tp))
            return (self.ep - ep_local) * self.tp
        if self.sp > 1:
            return self.sp - max(1, min(self.sp, gpus_per_server // self.tp))
        return 0

    @property
    def kv_bytes_per_token_layer(self) -> int:
        return 2 * self.num_kv_heads * self.head_dim * self.dtype_bytes

    @property
    def layer_weight_bytes(self) -> int:
        q = self.num_heads * self.head_dim
        kv = self.num_kv_heads * self.head_dim
        attn = self.hidden * (2 * q + 2 * kv)
        experts = max(1, self.num_experts) * 3 * self.hidden * self.moe_inter
        return (attn + experts + 3 * self.hidden * self.dense_inter) * self.dtype_bytes


_HF = "https://huggingface.co/{}/blob/main/config.json"

MODELS: dict[str, ModelConfig] = {m.name: m for m in (
    ModelConfig("mixtral-8x22b", num_layers=56, hidden=6144, num_heads=48, num_kv_heads=8, head_dim=128,
                moe_inter=16384, num_experts=8, top_k=2, tp=4, ep=8,
                source=_HF.format("mistralai/Mixtral-8x22B-v0.1")),
    ModelConfig("mixtral-8x7b", num_layers=32, hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                moe_inter=14336, num_experts=8, top_k=2, tp=1, ep=8,
                source=_HF.format("mistralai/Mixtral-8x7B-v0.1") + " (the paper's testbed model, TP1/EP8, §4.1)"),
    ModelConfig("grok-2", num_layers=64, hidden=8192, num_heads=64, num_kv_heads=8, head_dim=128,
                moe_inter=16384, num_experts=8, top_k=2, dense_inter=32768, tp=4, ep=8,
                source=_HF.format("xai-org/grok-2") + " (residual dense MLP of intermediate_size 32768)"),
    ModelConfig("dbrx", num_layers=40, hidden=6144, num_heads=48, num_kv_heads=8, head_dim=128,
                moe_inter=10752, num_experts=16, top_k=4, tp=2, ep=16,
                source=_HF.format("databricks/dbrx-base")),
    ModelConfig("qwen3-coder", num_layers=62, hidden=6144, num_heads=96, num_kv_heads=8, head_dim=128,
                moe_inter=2560, num_experts=160, top_k=8, tp=1, ep=32,
                source=_HF.format("Qwen/Qwen3-Coder-480B-A35B-Instruct")),
    ModelConfig("llama3-8b", num_layers=32, hidden=4096, num_heads=32, num_kv_heads=8, head_dim=128,
                moe_inter=14336, num_experts=0, top_k=1, tp=4, sp=4,
                source=_HF.format("meta-llama/Meta-Llama-3-8B")),
)}


def get_model(name: str) -> ModelConfig:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None


@dataclass(frozen=True, slots=True)
class Hardware:
    peak_flops: float = 312e12
    mfu: float = 0.5
    hbm_bw: float = 2.039e12
    nic_bw: float = 25e9  # bytes/s per GPU (200 Gb/s)
    gpus_per_server: int = 8
    layer_overhead: float = 20e-6

    def __post_init__(self):
        for k in ("peak_flops", "mfu", "hbm_bw", "nic_bw"):
            if not getattr(self, k) > 0:
                raise ValueError(f"Hardware.{k} must be > 0, got {getattr(self, k)!r}")
        if self.mfu > 1:
            raise ValueError(f"Hardware.mfu must be in (0, 1], got {self.mfu!r}")


@dataclass(frozen=True, slots=True)
class RequestProfile:
    """Per-layer figures for one request computed alone (all layers are identical)."""

    num_layers: int
    layer_compute_s: float
    stage1_bytes: int  # per layer, total over the instance
    stage2_bytes: int
    stage3_bytes: int
    gpus: int
    nic_gpus: int = 0  # GPUs that hold the request's KV (its attention group); 0 = all ``gpus``
    stage2_nic: int = -1  # per-NIC Stage-2 bytes of the request alone (its group's NICs); -1 = per_gpu(stage2_bytes)

    @property
    def prefill_compute_s(self) -> float:
        return self.num_layers * self.layer_compute_s

    def per_gpu(self, nbytes: int) -> int:
        """Instance total spread over all G GPUs (the instance-averaged figure)."""
        return -(-nbytes // self.gpus)

    def per_nic(self, nbytes: int) -> int:
        """Stage-1/3 bytes through each NIC of the request's attention group."""
        return -(-nbytes // (self.nic_gpus or self.gpus))

    @property
    def stage2_per_nic(self) -> int:
        """Stage-2 bytes through each NIC of the request's group when it is computed alone."""
        return self.stage2_nic if self.stage2_nic >= 0 else self.per_gpu(self.stage2_bytes)


@dataclass(frozen=True)
class CostModel:
    model: ModelConfig
    hw: Hardware = field(default_factory=Hardware)
    scale: float = 1.0  # bytes multiplier (emulation)
    time_scale: float = 1.0  # compute-seconds multiplier (emulation)

    def __post_init__(self):
        if not self.scale > 0 or not self.time_scale > 0:
            raise ValueError(f"scale and time_scale must be > 0 (got {self.scale}, {self.time_scale})")

    # ---- compute -----------------------------------------------------
    def attn_flops(self, new: int, reused: int) -> float:
        """Attention FLOPs of one layer (projections + causal scores/values), computed by the request's group."""
        m = self.model
        _check_tokens(new, reused)
        q = m.num_heads * m.head_dim
        kv = m.num_kv_heads * m.head_dim
        return 2.0 * new * m.hidden * (2 * q + 2 * kv) + 4.0 * m.num_heads * m.head_dim * new * (reused + new / 2)

    def ffn_flops(self, new: int) -> float:
        """FFN (MoE experts + dense/residual MLP) FLOPs of one layer, spread over all G GPUs."""
        m = self.model
        return 2.0 * new * 3 * m.hidden * (m.top_k * m.moe_inter + m.dense_inter)

    def layer_flops(self, new: int, reused: int) -> float:
        return self.attn_flops(new, reused) + self.ffn_flops(new)

    def attn_s(self, new: int, reused: int) -> float:
        """Seconds of one layer's attention of a request on its group (no overhead, time-scaled)."""
        return self.attn_flops(new, reused) / (self.model.attn_gpus * self.hw.peak_flops * self.hw.mfu) * self.time_scale

    def ffn_s(self, new: int) -> float:
        """Seconds of one layer's FFN share of a request over the instance (no overhead, time-scaled)."""
        return self.ffn_flops(new) / (self.model.gpus * self.hw.peak_flops * self.hw.mfu) * self.time_scale

    def layer_compute_s(self, batch: list[tuple[int, int]] | tuple[int, int],
                        groups: list[int] | None = None) -> float:
        """Seconds to compute one layer for a batch of (new, reused) token counts; ``groups[i]``: the
        attention group of ``batch[i]`` (default: all on one group). The slowest group's attention
        plus the instance's FFN (module docstring)."""
        if isinstance(batch, tuple):
            batch = [batch]
        m, hw = self.model, self.hw
        attn: dict[int, float] = {}
        ffn = 0.0
        for i, (n, r) in enumerate(batch):
            g = groups[i] if groups is not None else 0
            attn[g] = attn.get(g, 0.0) + self.attn_flops(n, r)
            ffn += self.ffn_flops(n)
        t = max(attn.values(), default=0.0) / (m.attn_gpus * hw.peak_flops * hw.mfu) + ffn / (m.gpus * hw.peak_flops * hw.mfu)
        t = max(t, m.layer_weight_bytes / (m.gpus * hw.hbm_bw))
        return (t + hw.layer_overhead) * self.time_scale

    # ---- bytes (totals over the instance, per layer) -------------------
    def _b(self, x: float) -> int:
        return int(round(x * self.scale))

    def stage1_bytes(self, reused: int) -> int:
        _check_tokens(0, reused)
        return self._b(self.model.kv_bytes_per_token_layer * reused)

    def stage2_bytes(self, new: int, reused: int = 0) -> int:
        m = self.model
        _check_tokens(new, reused)
        if m.is_moe:
            ep_local = max(1, min(m.ep, self.hw.gpus_per_server // m.tp))
            return self._b(2 * new * m.hidden * m.top_k * m.dtype_bytes * (m.ep - ep_local) / m.ep)
        if m.sp > 1:
            sp_local = max(1, min(m.sp, self.hw.gpus_per_server // m.tp))
            frac = (m.sp - sp_local) / (m.sp - 1)
            return self._b((m.sp - 1) * m.kv_bytes_per_token_layer * (new + reused) * frac)
        return 0

    def stage3_bytes(self, new: int, reused: int = 0) -> int:
        _check_tokens(new, reused)
        return self._b(self.model.kv_bytes_per_token_layer * (new + reused))

    # ---- per NIC (attention-DP groups) ----------------------------------
    def nic_bytes(self, nbytes: int) -> int:
        """Per-NIC share of a Stage-1/3 total (``stage1_bytes``/``stage3_bytes``): it crosses only the
        request's group, ``attn_gpus`` NICs."""
        return -(-nbytes // self.model.attn_gpus)

    def stage2_nic_bytes(self, group_batches: list[list[tuple[int, int]]]) -> list[int]:
        """Per-NIC Stage-2 bytes of one layer for each group of an instance: ``group_batches[g]`` is the
        list of (new, reused) of the batch members on group g (``len == groups``). Each NIC of group g
        sends and receives ``D_g + U`` (module docstring); a dense SP model has one group."""
        m, hw = self.model, self.hw
        if m.is_moe:
            ep_local = max(1, min(m.ep, hw.gpus_per_server // m.tp))
            per_tok = m.hidden * m.top_k * m.dtype_bytes * (m.ep - ep_local) / m.ep
            news = [sum(n for n, _ in gb) for gb in group_batches]
            u = sum(news) * per_tok / m.gpus
            return [self._b(n * per_tok / m.tp + u) for n in news]
        tot = [self.stage2_bytes(n, r) for gb in group_batches for n, r in gb]
        return [-(-sum(tot) // m.gpus)] * len(group_batches)

    def request_profile(self, new: int, reused: int = 0) -> RequestProfile:
        """Per-layer figures of a request computed alone on one group."""
        m = self.model
        s2 = self.stage2_nic_bytes([[(new, reused)]] + [[] for _ in range(m.groups - 1)])[0]
        return RequestProfile(m.num_layers, self.layer_compute_s((new, reused)), self.stage1_bytes(reused),
                              self.stage2_bytes(new, reused), self.stage3_bytes(new, reused), m.gpus,
                              m.attn_gpus, s2)


def _check_tokens(new: int, reused: int) -> None:
    if new < 0 or reused < 0:
        raise ValueError(f"token counts must be >= 0 (new={new}, reused={reused})")
