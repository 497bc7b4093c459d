"""Request streams: the Mooncake traces (streamed) and synthetic Qwen-like workloads.

Every source yields :class:`Request` objects in arrival order, one at a time
(memory stays flat with trace length). A request carries its prefix-block
hashes; which of its tokens are *reused* (Stage 1) is decided by the cluster
(the instance that served a block before holds its KV), see
:class:`PrefixCache`.

Rates are **per-GPU request rates** of the prefill pool (the paper's x-axis):
``cluster req/s = rate × prefill GPUs``.
"""

from __future__ import annotations

import json
import math
import os
import random
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

MOONCAKE_BLOCK_TOKENS = 512  # traces/README.md
SYNTH_BLOCK_TOKENS = 64  # finer blocks so short synthetic prompts can hit their reuse fraction

TRACE_FILES = {"mooncake-conversation": "mooncake_conversation.jsonl",
               "mooncake-synthetic": "mooncake_synthetic.jsonl"}


@dataclass(slots=True)
class Request:
    request_id: int
    arrival: float  # seconds
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...]
    block_tokens: int


def traces_dir() -> Path | None:
    """$MFS_TRACES, else ../shared/traces relative to the repo root; None if absent."""
    env = os.environ.get("MFS_TRACES")
    p = Path(env) if env else Path(__file__).resolve().parents[2].parent / "shared" / "traces"
    return p if p.is_dir() else None


def trace_path(name: str) -> Path:
    if name not in TRACE_FILES:
        raise ValueError(f"unknown trace {name!r} (known: {', '.join(TRACE_FILES)})")
    d = traces_dir()
    if d is None:
        raise FileNotFoundError("traces directory not found: set MFS_TRACES or put the traces in ../shared/traces")
    p = d / TRACE_FILES[name]
    if not p.is_file():
        raise FileNotFoundError(f"trace file {p} not found")
    return p


def _parse(line: str, path: Path, lineno: int) -> dict:
    try:
        d = json.loads(line)
        ts, n = float(d["timestamp"]), int(d["input_length"])
        hashes = d.get("hash_ids", [])
        if n <= 0 or ts < 0 or not isinstance(hashes, list):
            raise ValueError("timestamp >= 0, input_length > 0 and a hash_ids list are required")
        return {"ts": ts / 1000.0, "n": n, "out": int(d.get("output_length", 1)), "h": tuple(hashes)}
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"{path}:{lineno}: bad trace record ({type(e).__name__}: {e})") from None


def _lines(path: Path, skip: int, limit: int | None) -> Iterator[tuple[int, dict]]:
    with open(path) as f:
        for i, line in enumerate(f, 1):
            if i <= skip:
                continue
            if limit is not None and i > skip + limit:
                return
            if line.strip():
                yield i, _parse(line, path, i)


def native_rate(path: Path, skip: int = 0, limit: int | None = None) -> float:
    """Arrivals per second of a trace slice (one streaming pass)."""
    first = last = None
    count = 0
    for _, r in _lines(path, skip, limit):
        first = r["ts"] if first is None else first
        last, count = r["ts"], count + 1
    if count < 2 or last <= first:
        raise ValueError(f"{path}: slice has no time span to scale (records {count})")
    return (count - 1) / (last - first)


def mooncake(path: str | Path, cluster_rate: float | None = None, limit: int | None = None,
             skip: int = 0) -> Iterator[Request]:
    """Stream a Mooncake trace; with ``cluster_rate`` (req/s) arrival times are rescaled to it."""
    path = Path(path)
    factor = 1.0
    if cluster_rate is not None:
        if not cluster_rate > 0:
            raise ValueError(f"cluster_rate must be > 0, got {cluster_rate}")
        factor = native_rate(path, skip, limit) / cluster_rate
    t0 = None
    for i, (_, r) in enumerate(_lines(path, skip, limit)):
        t0 = r["ts"] if t0 is None else t0
        yield Request(i, (r["ts"] - t0) * factor, r["n"], r["out"], r["h"], MOONCAKE_BLOCK_TOKENS)


SYNTH_KINDS = {
    # kind: (mean input tokens, mean reuse fraction) -- paper §4.1 (QwenA-Conv, QwenB-Agent)
    "conversation": (2000, 0.50),
    "agent": (1000, 0.65),
}


def synthetic(kind: str, cluster_rate: float, count: int, seed: int = 1,
              templates: int = 64, zipf_s: float = 1.1) -> Iterator[Request]:
    """Poisson arrivals; lognormal(σ=0.6) input lengths; reused prefixes from Zipf-popular templates.

    Each request reuses the first ``≈ reuse × input`` tokens of a shared template
    chain (system prompt / conversation history / agent tools), picked with Zipf
    popularity so that a few prefixes are hot (the paper's "victim units"); the
    rest of the prompt is new. Lengths are quantised to 64-token blocks. The
    measured first-seen reuse over 2000 requests is ≈ the target (0.50 / 0.65).
    """
    if kind not in SYNTH_KINDS:
        raise ValueError(f"unknown synthetic workload {kind!r} (known: {', '.join(SYNTH_KINDS)})")
    if not cluster_rate > 0 or count < 0:
        raise ValueError(f"need cluster_rate > 0 and count >= 0 (got {cluster_rate}, {count})")
    mean, reuse = SYNTH_KINDS[kind]
    rng = random.Random(seed)
    sigma = 0.6
    mu = math.log(mean) - sigma * sigma / 2
    weights = [1.0 / (i + 1) ** zipf_s for i in range(templates)]
    cum = [0.0]
    for w in weights:
        cum.append(cum[-1] + w)
    max_blocks = 32768 // SYNTH_BLOCK_TOKENS
    next_hash = templates * max_blocks  # template t owns hashes [t*max_blocks, (t+1)*max_blocks)
    t = 0.0
    for i in range(count):
        t += rng.expovariate(cluster_rate)
        n = max(SYNTH_BLOCK_TOKENS, min(32768, int(rng.lognormvariate(mu, sigma))))
        frac = min(0.95, max(0.0, rng.gauss(reuse * 1.1, 0.15)))  # ×1.1: cold templates and rounding; measured reuse ≈ target
        nblocks = -(-n // SYNTH_BLOCK_TOKENS)
        k = min(nblocks - 1, int(round(frac * n / SYNTH_BLOCK_TOKENS)))
        x = rng.random() * cum[-1]
        tpl = _bisect(cum, x)
        hashes = [tpl * max_blocks + j for j in range(k)]
        hashes += range(next_hash, next_hash + nblocks - k)
        next_hash += nblocks - k
        yield Request(i, t, n, 1, tuple(hashes), SYNTH_BLOCK_TOKENS)


def _bisect(cum: list[float], x: float) -> int:
    lo, hi = 0, len(cum) - 2
    while lo < hi:
        mid = (lo + hi) // 2
        if cum[mid + 1] <= x:
            lo = mid + 1
        else:
            hi = mid
    return lo


WORKLOADS = ("conversation", "agent", "mooncake-conversation", "mooncake-synthetic")


def make_workload(name: str, cluster_rate: float, count: int, seed: int = 1) -> Iterator[Request]:
    """One of WORKLOADS at ``cluster_rate`` req/s, ``count`` requests."""
    if name in SYNTH_KINDS:
        return synthetic(name, cluster_rate, count, seed)
    if name in TRACE_FILES:
        return mooncake(trace_path(name), cluster_rate=cluster_rate, limit=count)
    raise ValueError(f"unknown workload {name!r} (known: {', '.join(WORKLOADS)})")


class PrefixCache:
    """Which instance holds the KV of each prefix block (LRU, bounded).

    A block's KV is held by the instance that last computed or fetched it.
    ``capacity`` bounds the number of tracked blocks so memory stays flat on
    long traces (evicted blocks count as not reusable).
    """

    def __init__(self, capacity: int = 500_000):
        if capacity <= 0:
            raise ValueError(f"PrefixCache capacity must be > 0, got {capacity}")
        self.capacity = capacity
        self._holder: OrderedDict[int, int] = OrderedDict()

    def lookup(self, hash_ids: tuple[int, ...]) -> list[int | None]:
        """Holder of each leading block, stopping at the first miss (prefix semantics)."""
        out: list[int | None] = []
        for h in hash_ids:
            who = self._holder.get(h)
            if who is None:
                break
            out.append(who)
        return out

    def store(self, hash_ids: tuple[int, ...], instance: int, keep_owner: bool = False) -> None:
        """``instance`` used these blocks. ``keep_owner``: a block already held stays where it is
        (a KV pool keeps one copy at the unit that computed it, so hot blocks make "victim"
        units); otherwise the block moves to ``instance``."""
        held = self._holder
        for h in hash_ids:
            if not (keep_owner and h in held):
                held[h] = instance
            held.move_to_end(h)
        while len(held) > self.capacity:
            held.popitem(last=False)

    def __len__(self) -> int:
        return len(self._holder)
