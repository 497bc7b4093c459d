"""Request planning shared by the simulator (mfs.sim.engine) and the emulated workload driver
(hostagent.workload), so both follow exactly the same semantics:

* which prefix blocks a request reuses and who holds them (:func:`prefix_plan`);
* which prefill instance it is routed to (:func:`route`: least queued compute plus the time to
  fetch the blocks that instance does not hold);
* how many reused tokens each holder sends in Stage 1 (:func:`stage1_tokens`; KV blocks stay at
  their owner, the last block may be partial);
* its ideal TTFT, the SLO's base (:func:`ideal_ttft`).
"""

from __future__ import annotations

from typing import Sequence

from mfs.sim.workload import PrefixCache, Request


def prefix_plan(cache: PrefixCache, r: Request) -> tuple[list[int], int, int]:
    """(holder instance of each reused block, reused tokens, reused blocks). At least one token
    of the prompt is computed, so a fully cached prompt reuses ``input_tokens - 1``."""
    holders = cache.lookup(r.hash_ids)
    reused = min(len(holders) * r.block_tokens, r.input_tokens - 1)
    nblk = -(-reused // r.block_tokens) if reused else 0
    return holders[:nblk], reused, nblk


def route(backlogs: Sequence[float], holders: Sequence[int], block_fetch_s: float) -> int:
    """Index of the prefill instance with the least ``backlog + block_fetch_s × blocks it would
    fetch`` (the first one on ties). ``block_fetch_s``: seconds to fetch one block's KV for every layer."""
    best, idx = float("inf"), 0
    for i, b in enumerate(backlogs):
        est = b + block_fetch_s * sum(1 for h in holders if h != i)
        if est < best:
            best, idx = est, i
    return idx


def block_fetch_s(cost, profile, block_tokens: int, nic_Bps: float) -> float:
    """Seconds to fetch one prefix block's KV for every layer (per NIC of the request's group, at
    ``nic_Bps``): the routing cost."""
    return profile.per_nic(cost.stage1_bytes(block_tokens)) * profile.num_layers / nic_Bps


def stage1_tokens(holders: Sequence[int], instance: int, reused: int, block_tokens: int) -> dict[int, int]:
    """Reused tokens each other holder sends to ``instance`` per layer (insertion order = first block)."""
    counts: dict[int, int] = {}
    for h in holders:
        if h != instance:
            counts[h] = counts.get(h, 0) + 1
    tail = len(holders) * block_tokens - reused  # the last block may be partial
    return {h: n * block_tokens - (tail if holders and holders[-1] == h else 0) for h, n in counts.items()}


def ideal_ttft(cost, nic_Bps: float, new: int, reused: int) -> float:
    """TTFT of a request alone on an idle cluster: one layer of Stage 1 (the rest overlaps compute),
    every layer's compute and Stage 2, and the last layer's Stage 3, at ``nic_Bps`` per NIC (the
    request alone on one attention group: per-NIC bytes of that group, ``RequestProfile.per_nic``)."""
    p = cost.request_profile(new, reused)
    s1 = p.per_nic(p.stage1_bytes) / nic_Bps if reused else 0.0
    s2 = p.stage2_per_nic / nic_Bps
    s3 = p.per_nic(p.stage3_bytes) / nic_Bps
    return s1 + p.num_layers * (p.layer_compute_s + s2) + s3
