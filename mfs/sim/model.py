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

Cost model (per layer, totals over the whole serving instance of ``gpus`` GPUs)
------------------------------------------------------------------------------
For a request with ``new`` freshly computed tokens and ``reused`` prefix tokens
(whose KV comes from the cache, Stage 1), ``ctx = reused + new``:

* FLOPs = attention projections ``2·new·hidden·(2·q_dim + 2·kv_dim)``
  + attention scores/values ``4·heads·head_dim·new·(reused + new/2)`` (causal)
  + FFN ``2·new·3·hidden·(top_k·moe_inter + dense_inter)`` (SwiGLU: 3 matrices).
* compute seconds = ``max(FLOPs / (gpus·peak·mfu), weight_bytes / (gpus·hbm)) + overhead``
  (a layer is compute-bound for prefill batches, memory-bound only for tiny ones).
* KV bytes per token per layer = ``2 · kv_heads · head_dim · dtype_bytes``.
* Stage 1 (reuse): ``kv_token · reused`` per layer.
* Stage 2, MoE expert parallelism: dispatch + combine
  ``2 · new · hidden · top_k · dtype_bytes`` per layer, of which the share sent to EP
  peers in *other* servers, ``(ep − ep_local)/ep`` with ``ep_local = gpus_per_server / tp``,
  crosses the network (TP stays on NVLink, paper §7).
  Sequence parallelism (dense Llama): all-gather of the layer's K/V over the SP ranks,
  ``(sp − 1) · kv_token · ctx`` per layer, of which ``(sp − sp_local)/(sp − 1)`` crosses servers.
* Stage 3 (P2D push): the request's full KV history, ``kv_token · ctx`` per layer.

Every byte figure is a total over the instance; the simulator spreads it evenly
over the instance's GPUs (``per_gpu``), because KV and activations are sharded
symmetrically (heads over TP ranks, tokens over the DP/EP/SP ranks).

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

    @property
    def prefill_compute_s(self) -> float:
        return self.num_layers * self.layer_compute_s

    def per_gpu(self, nbytes: int) -> int:
        return -(-nbytes // self.gpus)


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
    def layer_flops(self, new: int, reused: int) -> float:
        m = self.model
        _check_tokens(new, reused)
        q = m.num_heads * m.head_dim
        kv = m.num_kv_heads * m.head_dim
        proj = 2.0 * new * m.hidden * (2 * q + 2 * kv)
        attn = 4.0 * m.num_heads * m.head_dim * new * (reused + new / 2)
        ffn = 2.0 * new * 3 * m.hidden * (m.top_k * m.moe_inter + m.dense_inter)
        return proj + attn + ffn

    def layer_compute_s(self, batch: list[tuple[int, int]] | tuple[int, int]) -> float:
        """Seconds to compute one layer for a batch of (new, reused) token counts."""
        if isinstance(batch, tuple):
            batch = [batch]
        flops = sum(self.layer_flops(n, r) for n, r in batch)
        g = self.model.gpus
        t = max(flops / (g * self.hw.peak_flops * self.hw.mfu), self.model.layer_weight_bytes / (g * self.hw.hbm_bw))
        return (t + self.hw.layer_overhead) * self.time_scale

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

    def request_profile(self, new: int, reused: int = 0) -> RequestProfile:
        return RequestProfile(self.model.num_layers, self.layer_compute_s((new, reused)), self.stage1_bytes(reused),
                              self.stage2_bytes(new, reused), self.stage3_bytes(new, reused), self.model.gpus)


def _check_tokens(new: int, reused: int) -> None:
    if new < 0 or reused < 0:
        raise ValueError(f"token counts must be >= 0 (new={new}, reused={reused})")
