"""Robust Effective Deadline and Algorithm 1 (InterScheduling) of the MFS paper §2.5.

Pure functions, no policy state: the MFS policy feeds them its active batches.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field


def red_split(deadlines: list[float]) -> tuple[float, float]:
    """Return ``(RED, D_lo_min)`` for the request deadlines of one batch.

    Sort d_1 <= ... <= d_n; k* = argmax_{1<=k<n}(d_{k+1} - d_k) (first on ties);
    tight = d_1..d_k*, loose = the rest; f = k*/n;
    RED = f * min(tight) + (1 - f) * min(loose). One request (or no gap): the minimum.
    """
    if not deadlines:
        raise ValueError("red_split needs at least one deadline")
    d = sorted(deadlines)
    n = len(d)
    if n == 1:
        return d[0], d[0]
    k, best = 1, d[1] - d[0]
    for i in range(2, n):
        g = d[i] - d[i - 1]
        if g > best:
            k, best = i, g
    if best <= 0:
        return d[0], d[0]
    f = k / n
    return f * d[0] + (1 - f) * d[k], d[k]


def robust_effective_deadline(deadlines: list[float]) -> float:
    return red_split(deadlines)[0]


@dataclass
class RequestLoad:
    """One request of a batch as Algorithm 1 sees it.

    ``loads`` is what pruning relieves (its Stage-3 / P2D bytes, or the driver's
    ``remaining_bytes``); ``fixed`` is what it keeps (Stage 1/2: its batch computes with it
    and waits for them, so they are never scavenged). A request pruned earlier still
    computes with its batch and keeps its ``fixed`` load, but no longer counts for RED,
    can not be pruned again and has no prunable load left."""

    request_id: int
    deadline: float
    compute_s: float = 0.0  # remaining compute (seconds)
    loads: dict[str, float] = field(default_factory=dict)  # port -> prunable bytes still to carry
    fixed: dict[str, float] = field(default_factory=dict)  # port -> bytes that pruning does not remove
    pruned: bool = False


@dataclass
class InterResult:
    order: list[int]  # batch ids by ascending RED
    pruned: list[int]  # request ids, in pruning order
    red: dict[int, float]  # batch id -> RED


def inter_schedule(now: float, batches: dict[int, list[RequestLoad]], bytes_per_s: float,
                   budget: int, prune: bool = True) -> InterResult:
    """Algorithm 1: rank batches by RED (of their unpruned requests), then walk them
    accumulating per-port load and prune the heaviest request on the bottleneck port while
    a batch's pessimistic finish time exceeds its loose deadline D_lo (at most ``budget``
    requests). Only a request's prunable ``loads`` leave with it.

    EstFinishTime = now + max remaining compute of the batch's requests
    + max over ports of (committed load S + the batch's load) / bandwidth
    (no overlap of compute and communication: pessimistic, as in the paper).
    A batch whose compute alone ends after D_lo is not helped by pruning: it prunes nothing.
    """
    if bytes_per_s <= 0:
        raise ValueError(f"inter_schedule bytes_per_s={bytes_per_s} must be > 0")
    reds: dict[int, tuple[float, float]] = {}
    for bid, reqs in batches.items():
        live = [r.deadline for r in reqs if not r.pruned]
        if live:
            reds[bid] = red_split(live)
    order = sorted(reds, key=lambda b: (reds[b][0], b))
    result = InterResult(order=order, pruned=[], red={b: reds[b][0] for b in order})
    if not prune or budget <= 0:
        return result
    committed: dict[str, float] = defaultdict(float)  # S
    pool: dict[int, tuple[RequestLoad, int]] = {}  # P: request id -> (request, its batch)
    for bid in order:
        d_lo = reds[bid][1]
        reqs = batches[bid]
        load: dict[str, float] = defaultdict(float)  # L_i
        for r in reqs:
            for port, b in r.fixed.items():
                load[port] += b
            if not r.pruned:
                pool[r.request_id] = (r, bid)
                for port, b in r.loads.items():
                    load[port] += b
        compute = max((r.compute_s for r in reqs), default=0.0)
        if now + compute <= d_lo:  # else compute alone is late: pruning cannot help this batch
            while len(result.pruned) < budget and pool:
                ports = set(committed) | set(load)
                if not ports:
                    break
                u = max(ports, key=lambda p: (committed[p] + load[p], p))
                if now + compute + (committed[u] + load[u]) / bytes_per_s <= d_lo:
                    break  # feasible
                victim, vbid = max(pool.values(), key=lambda e: (e[0].loads.get(u, 0.0), -e[0].request_id))
                if victim.loads.get(u, 0.0) <= 0.0:
                    break  # nothing prunable on the bottleneck
                del pool[victim.request_id]
                result.pruned.append(victim.request_id)
                target = load if vbid == bid else committed
                for port, b in victim.loads.items():
                    target[port] -= b
        for port, b in load.items():
            committed[port] += b
    return result
