"""Emulated disaggregated prefill/decode serving on real hosts (the workload driver).

Prefill instances are groups of hosts (the expert-parallel / sequence-parallel
peers of one serving instance); decode instances are groups of hosts too. Each
host stands for one GPU and its NIC. For every request (from
:func:`mfs.sim.workload.make_workload` or any iterable of ``Request``):

* **routing** (the simulator's functions, :mod:`mfs.sim.plan`): prefix blocks already
  held by an instance (:class:`mfs.sim.workload.PrefixCache`, KV kept at its owner) are
  reused; the request goes to the prefill instance with the least queued compute plus
  prefix-fetch time (unless ``pin`` names its instance: :func:`run_workload`); the decode
  instance with the least outstanding Stage-3 bytes receives its KV;
* **Stage 1** when the request's batch starts: for every layer ``j`` and every host
  ``i`` of the computing instance, the holder instance's host ``i mod n`` sends that
  layer's reused KV (per-GPU share) with ``target_layer = j``, all posted at once;
  layer ``j`` may not start before all its Stage-1 bytes have landed; the holders
  learn the request's layer boundaries (their agents re-stamp the RLI);
* **compute**: requests are batched FIFO up to ``max_batch_tokens`` new tokens;
  layer ``l`` is a timed wait of ``CostModel.layer_compute_s`` (same cost model as
  the simulator);
* **Stage 3** after each layer: every prefill host pushes the layer's KV (per-GPU
  share) to decode host ``i mod m`` (non-blocking);
* **Stage 2** after each layer: every prefill host sends the per-GPU all-to-all
  volume, split evenly, to each other host of its instance; layer ``l+1`` starts
  only when all of it has been delivered (GPU blocked). A one-host instance has no
  network peer: its Stage 2 is skipped (say so in the topology);
* **TTFT** = (prefill done and last Stage-3 byte delivered) − arrival.

Layer boundaries, request/batch start and end and every flow are reported to the
controller by the agents, which stamp every datagram; the scheduler lives in the
controller. The driver is policy-agnostic.

**Scaling.** An emulated link of ``link_bps`` stands for the real NIC of
``hw.nic_bw`` bytes/s. Bytes are multiplied by ``scale = link_bps/8 / nic_bw ×
time_scale`` and compute seconds by ``time_scale`` (``CostModel(scale, time_scale)``),
so every compute/communication ratio of the real cluster is kept. Request arrival
times are multiplied by ``time_scale`` too. Results are reported in **real-cluster
seconds** (emulated seconds ÷ ``time_scale``), so they compare point by point with
the simulator's (same schema: :mod:`mfs.sim.results`). Choose ``time_scale`` so that a
layer lasts tens of ms (:func:`choose_time_scale`): each transfer costs the agents about a
millisecond that the real cluster does not spend.
"""

from __future__ import annotations

import logging
import math
import queue
import statistics
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from types import SimpleNamespace
from typing import Any, Callable, Iterable, Mapping, Protocol

from mfs import header as H
from mfs.sim import plan
from mfs.sim.engine import MET_TOLERANCE_S
from mfs.sim.model import CostModel, Hardware, RequestProfile, get_model
from mfs.sim.results import RequestRecord, Run, make_run, write_results
from mfs.sim.workload import PrefixCache, Request

log = logging.getLogger("mfs.hostagent.workload")


class AgentHandle(Protocol):
    """What the driver needs from an agent: HostAgent via control.LocalHandle, or control.ControlClient."""

    def submit(self, stage: int, peer: str, nbytes: int, request_id: int, **kw) -> Future: ...
    def layer_boundary(self, request_id: int, current_layer: int, prefill_done: bool = False,
                       owner: str = "") -> None: ...
    def request_start(self, request_id: int, deadline: float, arrival: float, num_layers: int, **kw) -> None: ...
    def request_end(self, request_id: int) -> None: ...
    def batch_event(self, batch_id: int, kind: str) -> None: ...


@dataclass
class EmuCluster:
    prefill: list[list[str]]  # host names of each prefill instance
    decode: list[list[str]]  # host names of each decode instance
    addresses: dict[str, str]  # host -> peer spec ("10.0.0.1" or "127.1.2.3:19782")

    def validate(self, handles: dict[str, Any]) -> None:
        if not self.prefill or not self.decode:
            raise ValueError("the emulated cluster needs at least one prefill and one decode instance")
        seen: set[str] = set()
        for kind, groups in (("prefill", self.prefill), ("decode", self.decode)):
            for g in groups:
                if not g:
                    raise ValueError(f"a {kind} instance has no hosts")
                for h in g:
                    if h in seen:
                        raise ValueError(f"host {h!r} is in two instances")
                    seen.add(h)
                    if h not in self.addresses:
                        raise ValueError(f"host {h!r} has no address")
                    if h not in handles:
                        raise ValueError(f"host {h!r} has no agent handle")


KV_SIZES = ("load", "flow", "nic")


@dataclass
class EmuConfig:
    model: str = "mixtral-8x22b"
    link_bps: float = 100e6  # emulated NIC line rate (bits/s)
    time_scale: float = 1.0
    slo_scale: float = 3.0
    lowload_ratio: float = 1.0  # low-load TTFT / ideal estimate (mfs.sim.runner.calibrate_slo)
    max_batch_tokens: int = 16384
    warmup: int = 0
    hw: Hardware = field(default_factory=Hardware)
    timeout: float = 600.0  # emulated seconds to wait for the last request after the last arrival
    layers_per_step: int = 1  # emulate this many consecutive layers as one step (:class:`LayerGroups`)
    kv_placement: str = "spread"  # "group": attention-DP, a request's KV on one host (:class:`Driver`)
    kv_size: str = "load"  # with "group": "load" (per-NIC bytes × hosts/groups), "flow" (per-NIC bytes) or
    # "nic" (the busiest of the NICs a host stands for: Driver.kv_bytes)

    def validate(self) -> None:
        for k in ("link_bps", "time_scale", "slo_scale", "lowload_ratio", "timeout"):
            if not getattr(self, k) > 0:
                raise ValueError(f"{k} must be > 0, got {getattr(self, k)!r}")
        if self.kv_size not in KV_SIZES:
            raise ValueError(f"kv_size must be one of {', '.join(KV_SIZES)}, got {self.kv_size!r}")
        if self.kv_placement not in ("spread", "group"):
            raise ValueError(f"kv_placement must be spread or group, got {self.kv_placement!r}")
        n = get_model(self.model).num_layers
        if self.layers_per_step < 1 or n % self.layers_per_step:
            raise ValueError(f"layers_per_step must be >= 1 and divide {self.model}'s {n} layers, "
                             f"got {self.layers_per_step}")
        if self.max_batch_tokens < 1 or self.warmup < 0:
            raise ValueError(f"max_batch_tokens must be >= 1 and warmup >= 0 "
                             f"(got {self.max_batch_tokens}, {self.warmup})")

    def cost_model(self):
        scale = (self.link_bps / 8) / self.hw.nic_bw * self.time_scale
        cm = CostModel(get_model(self.model), self.hw, scale=scale, time_scale=self.time_scale)
        return LayerGroups(cm, self.layers_per_step) if self.layers_per_step > 1 else cm


@dataclass(frozen=True)
class LayerGroups:
    """A cost model whose every ``k`` consecutive layers are emulated as one step: k × the compute, then
    k layers' Stage-2 volume (blocking), Stage-1 and Stage-3 volumes per step of k layers' KV.

    Why: each emulated layer costs the driver, agents, controller and switch a fixed ~5-10 ms of Python
    work on a busy 2-core machine (control messages, reports, a Stage-2 round trip through the switch),
    which a real GPU does not spend; it dominates a 15 ms layer and varies from run to run (the low-load
    ratio's spread). Grouping keeps every per-step ratio (compute : Stage 2 : Stage 1 : Stage 3) and every
    total, divides the fixed costs and the packet-path load by k, and the TTFT of a request alone changes
    only by (k − 1) layers' worth of its first Stage-1 and last Stage-3 transfer (not overlapped with
    compute). docs/demo.md, "Noise"."""

    base: object  # CostModel (or anything with its interface)
    k: int

    def __post_init__(self):
        if self.k < 1 or self.base.model.num_layers % self.k:
            raise ValueError(f"k={self.k} must divide the {self.base.model.num_layers} layers")

    @property
    def model(self):
        m = self.base.model
        return SimpleNamespace(num_layers=m.num_layers // self.k, gpus=m.gpus, name=f"{m.name}/{self.k}",
                               groups=getattr(m, "groups", 1), attn_gpus=getattr(m, "attn_gpus", m.gpus))

    @property
    def hw(self):
        return self.base.hw

    def request_profile(self, new: int, reused: int = 0) -> RequestProfile:
        p, k = self.base.request_profile(new, reused), self.k
        return RequestProfile(p.num_layers // k, p.layer_compute_s * k, p.stage1_bytes * k, p.stage2_bytes * k,
                              p.stage3_bytes * k, p.gpus, p.nic_gpus, p.stage2_nic * k if p.stage2_nic >= 0 else -1)

    def layer_compute_s(self, batch, groups=None) -> float:
        return self.base.layer_compute_s(batch, groups) * self.k

    def stage2_nic_bytes(self, group_batches) -> list[int]:
        return [b * self.k for b in self.base.stage2_nic_bytes(group_batches)]

    def stage1_bytes(self, reused: int) -> int:
        return self.base.stage1_bytes(reused) * self.k

    def stage2_bytes(self, new: int, reused: int = 0) -> int:
        return self.base.stage2_bytes(new, reused) * self.k

    def stage3_bytes(self, new: int, reused: int = 0) -> int:
        return self.base.stage3_bytes(new, reused) * self.k


def ideal_ttft(cost, link_Bps: float, new: int, reused: int, hw: Hardware | None = None) -> float:
    """The simulator's ideal TTFT (:func:`mfs.sim.plan.ideal_ttft`) on the emulated link, in emulated seconds."""
    return plan.ideal_ttft(cost, link_Bps, new, reused)


def warm_cache(cache: PrefixCache, warm: Iterable[Request], instances: int,
               pin: Mapping[int, int] | None = None) -> None:
    """Make ``cache`` look like a cluster that has served ``warm`` (earlier trace lines): their prefix
    blocks are held, owners spread round robin over the ``instances`` prefill instances, except a
    request whose id ``pin`` maps to an instance: that one owns its blocks (see :func:`check_pin`)."""
    pin = pin or {}
    for i, r in enumerate(warm):
        cache.store(r.hash_ids, pin.get(r.request_id, i % instances), keep_owner=True)


def check_pin(pin: Mapping[int, int] | None, instances: int) -> dict[int, int]:
    """``pin`` (request id → prefill instance index) as a dict, or ValueError naming a bad entry.

    A pinned request is prefilled on that instance whatever the router would choose, and a pinned
    warm request owns its prefix blocks there: for scenarios (tests, hand-checked runs) that depend
    on where requests run rather than on the routing heuristic; everything else is routed as usual."""
    out = {}
    for rid, idx in (pin or {}).items():
        if isinstance(idx, bool) or not isinstance(idx, int) or not 0 <= idx < instances:
            raise ValueError(f"pin: request {rid!r} -> {idx!r} is not a prefill instance index "
                             f"(0..{instances - 1})")
        out[rid] = idx
    return out


def token_counts(requests: Iterable[Request], warm: Iterable[Request] = ()) -> list[tuple[int, int]]:
    """(new, reused) tokens of each request as the driver will see them (routing does not change them)."""
    cache = PrefixCache()
    warm_cache(cache, warm, 1)
    out = []
    for r in requests:
        _, reused, _ = plan.prefix_plan(cache, r)
        cache.store(r.hash_ids, 0, keep_owner=True)
        out.append((r.input_tokens - reused, reused))
    return out


def choose_time_scale(model: str, requests: Iterable[Request], warm: Iterable[Request] = (),
                      layer_s: float = 0.02, hw: Hardware | None = None) -> float:
    """``time_scale`` that makes the median request's layer compute (alone) last ``layer_s`` emulated
    seconds: long against the ~1 ms an agent/controller round costs, short enough to replay quickly."""
    if not layer_s > 0:
        raise ValueError(f"layer_s must be > 0, got {layer_s!r}")
    cm = CostModel(get_model(model), hw or Hardware())
    counts = token_counts(requests, warm)
    if not counts:
        raise ValueError("no requests to choose a time_scale for")
    return layer_s / statistics.median(cm.layer_compute_s(c) for c in counts)


def service_s(model: str, new: int, reused: int, hw: Hardware | None = None) -> float:
    """Real-cluster seconds a prefill instance is busy with one request alone: every layer's
    compute plus its (GPU-blocking) Stage-2 transfer at the NIC rate."""
    hw = hw or Hardware()
    p = CostModel(get_model(model), hw).request_profile(new, reused)
    return p.num_layers * (p.layer_compute_s + p.stage2_per_nic / hw.nic_bw)


def capacity_rate(model: str, requests: list[Request], instances: int, warm: Iterable[Request] = (),
                  hw: Hardware | None = None) -> float:
    """Request rate (real req/s, whole cluster) at which ``instances`` prefill instances are busy all the time."""
    counts = token_counts(requests, warm)
    if not counts or instances < 1:
        raise ValueError("capacity_rate needs requests and at least one instance")
    return instances * len(counts) / sum(service_s(model, n, u, hw) for n, u in counts)


class _Req:
    __slots__ = ("rid", "arrival", "new", "reused", "prof", "inst", "dec", "deadline", "rec", "s1_pending",
                 "s3_left", "s3_last", "compute_done", "prefill_end", "batch", "finished", "holders", "block_tokens", "nblk", "s1_src",
                 "grp", "hidx")

    def __init__(self, r: Request):
        self.rid = r.request_id
        self.s1_pending: dict[int, int] = {}
        self.s1_src: list[str] = []  # hosts sending its Stage-1 data
        self.s3_left = 0
        self.s3_last = 0.0
        self.compute_done = False
        self.finished = False
        self.grp = 0  # attention group in its instance (kv_placement "group")
        self.hidx = 0  # index of the host carrying its KV in its instance: grp mod hosts


class _Batch:
    def __init__(self, bid: int):
        self.bid, self.reqs, self.tokens = bid, [], 0
        self.reporting = 0  # requests admitted but not yet reported to the agent: the batch must wait


class _Instance:
    def __init__(self, idx: int, hosts: list[str]):
        self.idx, self.hosts = idx, hosts
        self.queue: list[_Batch] = []
        self.backlog = 0.0
        self.gbacklog: list[float] = []  # queued compute per attention group (kv_placement "group")
        self.cv = threading.Condition()
        self.thread: threading.Thread | None = None


class Driver:
    def __init__(self, handles: dict[str, AgentHandle], cluster: EmuCluster, config: EmuConfig,
                 cost=None, on_record: Callable[[RequestRecord], None] | None = None,
                 warm: Iterable[Request] = (), pin: Mapping[int, int] | None = None):
        cluster.validate(handles)
        config.validate()
        self.pin = check_pin(pin, len(cluster.prefill))
        self.h, self.cl, self.cfg = handles, cluster, config
        self.cost = cost if cost is not None else config.cost_model()
        self.L = self.cost.model.num_layers
        self.link_Bps = config.link_bps / 8
        self.inst = [_Instance(i, g) for i, g in enumerate(cluster.prefill)]
        self.grouped = config.kv_placement == "group"
        self.groups = getattr(self.cost.model, "groups", 1) if self.grouped else 1
        for inst in self.inst:
            inst.gbacklog = [0.0] * self.groups
        self.dec_load = [0.0] * len(cluster.decode)
        self.cache = PrefixCache()
        warm_cache(self.cache, warm, len(self.inst), self.pin)
        self.lock = threading.Lock()
        self.reqs: dict[int, _Req] = {}
        self.records: list[RequestRecord] = []
        self.on_record = on_record
        self.bid = 0
        self.t0 = 0.0
        self.errors: list[str] = []
        self.done_cv = threading.Condition()
        self.finishq: queue.SimpleQueue = queue.SimpleQueue()
        self.stop = False
        self.flows = 0

    # ---- clocks: emulated seconds since t0 <-> record seconds (real cluster) ----
    def rel(self, unix: float) -> float:
        return unix - self.t0

    def real(self, emu: float) -> float:
        return emu / self.cfg.time_scale

    def addr(self, host: str) -> str:
        return self.cl.addresses[host]

    def _submit(self, src: str, dst: str, stage: int, nbytes: int, q: _Req, layer: int, bid: int,
                current: int | None) -> Future:
        self.flows += 1
        return self.h[src].submit(stage, self.addr(dst), nbytes, q.rid, batch_id=bid,
                                  deadline=self.t0 + q.deadline, target_layer=min(layer, 0xFFFF),
                                  current_layer=current, owner=self.owner(q, src))

    @staticmethod
    def owner(q: _Req, host: str) -> str:
        """The ``owner`` a host names in its events on ``q`` (docs/report-api.md): ``q``'s owner, the
        first host of its prefill instance (which starts it and names the others its peers), or ""
        for the owner itself."""
        return "" if host == q.inst.hosts[0] else q.inst.hosts[0]

    def _fail(self, what: str, e: BaseException) -> None:
        msg = f"{what}: {type(e).__name__}: {e}"
        with self.done_cv:
            first = not self.errors
            self.errors.append(msg)
            self.done_cv.notify_all()
        if first:  # the cause; what fails after it (every pending transfer of a broken connection) is its echo
            log.error(msg, exc_info=e)
        else:
            log.debug(msg)

    # ---- arrival ------------------------------------------------------------
    def arrive(self, r: Request, index: int) -> None:
        now = self.rel(time.time())
        q = _Req(r)
        q.arrival = now
        holders, reused, nblk = plan.prefix_plan(self.cache, r)
        q.reused, q.new = reused, r.input_tokens - reused
        q.prof = prof = self.cost.request_profile(q.new, reused)
        q.holders, q.nblk, q.block_tokens = holders, nblk, r.block_tokens
        est = ideal_ttft(self.cost, self.link_Bps, q.new, reused, self.cfg.hw)
        q.deadline = now + self.cfg.slo_scale * self.cfg.lowload_ratio * est
        kv_blk = plan.block_fetch_s(self.cost, prof, r.block_tokens, self.link_Bps)
        idx = self.pin.get(q.rid)
        inst = self.inst[plan.route([i.backlog for i in self.inst], holders, kv_blk) if idx is None else idx]
        q.inst = inst
        q.dec = min(range(len(self.dec_load)), key=self.dec_load.__getitem__)
        self.dec_load[q.dec] += prof.stage3_bytes * self.L
        if self.grouped:  # the request's attention group: the least queued one of its instance
            q.grp = min(range(self.groups), key=inst.gbacklog.__getitem__)
            q.hidx = q.grp % len(inst.hosts)
        q.s3_left = self.L * (1 if self.grouped else len(inst.hosts))
        measured = index >= self.cfg.warmup
        q.rec = RequestRecord(q.rid, self.real(now), math.nan, self.real(q.deadline), False, measured,
                              r.input_tokens, reused)
        with inst.cv:
            inst.backlog += prof.prefill_compute_s
            inst.gbacklog[q.grp] += prof.prefill_compute_s
            last = inst.queue[-1] if inst.queue else None
            if last is None or (last.tokens and last.tokens + q.new > self.cfg.max_batch_tokens):
                self.bid += 1
                last = _Batch(self.bid)
                inst.queue.append(last)
            q.batch = last.bid
            last.tokens += q.new
            last.reporting += 1  # the instance thread does not start this batch until it is reported
        # reported before the batch can start, but NOT under inst.cv: the agent's reply arrives on the
        # client's reader thread, which also runs transfer callbacks that take inst.cv (a deadlock until
        # the request timed out, seen as "no reply within 10 s")
        # inst.hosts[0] owns the request (starts and ends it); the instance's other hosts and the
        # holders of its reused KV report its layer boundaries and flows too: its peers
        peers = [hn for hn in inst.hosts[1:]]
        peers += [hn for hld in holders for hn in self.inst[hld].hosts if hn not in peers and hn != inst.hosts[0]]
        self.h[inst.hosts[0]].request_start(q.rid, self.t0 + q.deadline, self.t0 + now, self.L,
                                            batch_id=q.batch, remaining_compute=prof.prefill_compute_s, peers=peers)
        with inst.cv:
            last.reqs.append(q)
            last.reporting -= 1
        with self.lock:
            self.reqs[q.rid] = q
        self.cache.store(r.hash_ids, inst.idx, keep_owner=True)  # KV blocks stay at their owner
        with inst.cv:
            inst.cv.notify_all()

    def _issue_stage1(self, q: _Req, b: "_Batch") -> None:
        """Stage 1 when the request's batch is scheduled: every layer's reused KV from the holder
        instance(s), one transfer per (holder host, layer, computing host), all posted at once."""
        if not q.reused:
            return
        inst = q.inst
        dsts = [inst.hosts[q.hidx]] if self.grouped else inst.hosts
        for hld, tokens in plan.stage1_tokens(q.holders, inst.idx, q.reused, q.block_tokens).items():
            size = self.kv_bytes(q, self.cost.stage1_bytes(tokens), b, lambda r: r.reused)
            if size <= 0:
                continue
            src_hosts = self.inst[hld].hosts
            if self.grouped:  # the holder's host of the same index: one host pair per holder
                src_hosts = [src_hosts[q.hidx % len(src_hosts)]]
            q.s1_src.extend(h for h in src_hosts[:len(dsts)] if h not in q.s1_src)
            for j in range(self.L):
                for i, dst in enumerate(dsts):
                    with inst.cv:
                        q.s1_pending[j] = q.s1_pending.get(j, 0) + 1
                    f = self._submit(src_hosts[i % len(src_hosts)], dst, H.STAGE_KV_REUSE, size, q, j, b.bid, 0)
                    f.add_done_callback(lambda fut, j=j: self._s1_done(q, j, fut))

    def kv_bytes(self, q: _Req, nbytes: int, b: "_Batch | None" = None, weight=None) -> int:
        """Stage-1/3 bytes of one of the request's transfers. ``spread``: every host of the instance
        carries its per-GPU share (the instance-averaged figure). ``group`` (attention DP, the
        simulator's model): only the request's host. An emulated instance has fewer hosts than the real
        one has groups, so one of three figures is kept: ``kv_size="flow"``: the group's per-NIC bytes (each
        transfer as large as the real one; an emulated NIC carries the KV of groups ÷ hosts real NICs);
        ``"load"``: × hosts ÷ groups (each emulated NIC carries a real NIC's *mean* KV bytes/s; each
        transfer is hosts ÷ groups of the real one); ``"nic"``: the host is the busiest of the NICs it
        stands for, which run in parallel: its transfers of a step (batch ``b``) carry as many bytes as
        that NIC's (the largest over its groups of the group's bytes, ``weight(request)`` per request),
        shared in proportion to each request's bytes — one request alone on a host sends the real
        transfer's size, requests on different groups of a host share one NIC's worth."""
        if not self.grouped:
            return q.prof.per_gpu(nbytes)
        per_nic = q.prof.per_nic(nbytes)
        if self.cfg.kv_size == "flow":
            return per_nic
        if self.cfg.kv_size == "nic" and b is not None:
            by_group: dict[int, float] = {}
            for r in b.reqs:
                if r.hidx == q.hidx:
                    by_group[r.grp] = by_group.get(r.grp, 0.0) + weight(r)
            total = sum(by_group.values())
            return math.ceil(per_nic * max(by_group.values()) / total) if total > 0 else per_nic
        return -(-per_nic * len(q.inst.hosts) // self.groups)

    def _s1_done(self, q: _Req, layer: int, fut: Future) -> None:
        try:
            ev = fut.result()
        except Exception as e:
            self._fail(f"request {q.rid} stage 1", e)
            return
        inst = q.inst
        with inst.cv:
            q.s1_pending[layer] -= 1
            if q.s1_pending[layer] == 0:
                del q.s1_pending[layer]
                if not q.s1_pending:
                    q.rec.stage1_done = self.real(self.rel(ev["end_time"]))
            inst.cv.notify_all()

    def _s3_done(self, q: _Req, fut: Future) -> None:
        try:
            ev = fut.result()
        except Exception as e:
            self._fail(f"request {q.rid} stage 3", e)
            return
        with q.inst.cv:
            q.s3_left -= 1
            q.s3_last = max(q.s3_last, self.rel(ev["end_time"]))
            ready = q.s3_left == 0 and q.compute_done
        if ready:
            self.finishq.put(q)

    # ---- prefill instances ----------------------------------------------------
    def instance_loop(self, inst: _Instance) -> None:
        try:
            while True:
                with inst.cv:
                    while not (inst.queue and not inst.queue[0].reporting) and not self.stop:
                        inst.cv.wait(0.1)
                    if self.stop and not inst.queue:
                        return
                    b = inst.queue.pop(0)
                self.run_batch(inst, b)
        except Exception as e:
            self._fail(f"prefill instance {inst.idx}", e)

    def run_batch(self, inst: _Instance, b: _Batch) -> None:
        first = self.h[inst.hosts[0]]
        first.batch_event(b.bid, "arrival")
        for q in b.reqs:  # KV loads start when the batch is scheduled (as the simulator's default)
            self._issue_stage1(q, b)
        hosts = inst.hosts
        L = self.L
        for layer in range(L):
            with inst.cv:
                t_wait = time.time()
                waited = False
                while any(layer in q.s1_pending for q in b.reqs):
                    waited = True
                    inst.cv.wait(0.05)
                    if self.errors:
                        raise RuntimeError("aborting: " + self.errors[0])
                if waited:
                    stall = self.real(time.time() - t_wait)
                    for q in b.reqs:
                        q.rec.stage1_stall += stall
            now = self.rel(time.time())
            for q in b.reqs:
                if layer == 0:
                    q.rec.prefill_start = self.real(now)
                # the senders of its pending Stage-1 data learn the layer too: their agents re-stamp the
                # RLI (and re-rank, re-arm the retransmit timer) of the transfers it promotes
                for hn in hosts + ([h for h in q.s1_src if h not in hosts] if q.s1_pending else []):
                    self.h[hn].layer_boundary(q.rid, layer, owner=self.owner(q, hn))
            if self.grouped:
                time.sleep(self.cost.layer_compute_s([(q.new, q.reused) for q in b.reqs], [q.grp for q in b.reqs]))
            else:
                time.sleep(self.cost.layer_compute_s([(q.new, q.reused) for q in b.reqs]))
            # Stage 3: push this layer's KV to the decode instance (does not block compute)
            for q in b.reqs:
                size3 = self.kv_bytes(q, q.prof.stage3_bytes, b, lambda r: r.prof.stage3_bytes)
                dhosts = self.cl.decode[q.dec]
                for i, hn in enumerate(hosts):
                    if self.grouped and i != q.hidx:
                        continue
                    f = self._submit(hn, dhosts[i % len(dhosts)], H.STAGE_P2D, size3, q, layer, b.bid, layer)
                    f.add_done_callback(lambda fut, q=q: self._s3_done(q, fut))
            # Stage 2: all-to-all among the instance's hosts; blocks the next layer
            sizes = self.stage2_sizes(b, len(hosts))
            if max(sizes) > 0 and len(hosts) > 1:
                t2 = time.time()
                futs = [self._submit(src, dst, H.STAGE_COLLECTIVE, -(-sizes[i] // (len(hosts) - 1)), b.reqs[0], layer,
                                     b.bid, layer)
                        for i, src in enumerate(hosts) for dst in hosts if dst != src and sizes[i] > 0]
                for f in futs:
                    f.result(self.cfg.timeout)
                cct = self.real(time.time() - t2)
                for q in b.reqs:
                    q.rec.stage2_cct += cct
        now = self.rel(time.time())
        ready = []
        for q in b.reqs:
            for hn in hosts:
                self.h[hn].layer_boundary(q.rid, L, True, owner=self.owner(q, hn))
        first.batch_event(b.bid, "departure")
        with inst.cv:
            for q in b.reqs:
                q.prefill_end = now
                q.rec.prefill_end = self.real(now)
                q.compute_done = True
                inst.backlog = max(0.0, inst.backlog - q.prof.prefill_compute_s)
                inst.gbacklog[q.grp] = max(0.0, inst.gbacklog[q.grp] - q.prof.prefill_compute_s)
                if q.s3_left == 0:
                    ready.append(q)
        for q in ready:
            self.finishq.put(q)

    def stage2_sizes(self, b: _Batch, n: int) -> list[int]:
        """Stage-2 bytes each of the instance's ``n`` hosts sends per step. ``spread``: the batch's total ÷
        the instance's GPUs on every host. ``group``: the simulator's per-NIC figure (dispatch of its
        group's tokens + its experts' share, ``CostModel.stage2_nic_bytes``), host h carrying the mean
        over the groups it stands for (g mod n = h)."""
        if not self.grouped:
            return [-(-sum(self.cost.stage2_bytes(q.new, q.reused) for q in b.reqs) // self.cost.model.gpus)] * n
        gb: list[list[tuple[int, int]]] = [[] for _ in range(self.groups)]
        for q in b.reqs:
            gb[q.grp].append((q.new, q.reused))
        nic = self.cost.stage2_nic_bytes(gb)
        out = []
        for h in range(n):
            mine = [nic[g] for g in range(self.groups) if g % n == h]
            out.append(-(-sum(mine) // len(mine)) if mine else 0)
        return out

    def finish(self, q: _Req) -> None:
        done = max(q.s3_last, q.prefill_end)
        q.rec.stage3_done = self.real(q.s3_last)
        q.rec.ttft = self.real(done - q.arrival)
        q.rec.met = done <= q.deadline + MET_TOLERANCE_S
        self.dec_load[q.dec] -= q.prof.stage3_bytes * self.L
        self.h[q.inst.hosts[0]].request_end(q.rid)
        with self.done_cv:
            q.finished = True
            self.records.append(q.rec)
            self.done_cv.notify_all()
        if self.on_record:
            self.on_record(q.rec)

    def finisher_loop(self) -> None:
        while True:
            q = self.finishq.get()
            if q is None:
                return
            try:
                self.finish(q)
            except Exception as e:
                self._fail(f"request {q.rid} end", e)

    # ---- the run ----------------------------------------------------------------
    def run(self, requests: Iterable[Request]) -> list[RequestRecord]:
        self.t0 = time.time()
        for inst in self.inst:
            inst.thread = threading.Thread(target=self.instance_loop, args=(inst,), daemon=True,
                                           name=f"emu-prefill-{inst.idx}")
            inst.thread.start()
        fin = threading.Thread(target=self.finisher_loop, daemon=True, name="emu-finisher")
        fin.start()
        n = 0
        try:
            for r in requests:
                at = self.t0 + r.arrival * self.cfg.time_scale
                while (d := at - time.time()) > 0:
                    time.sleep(min(d, 0.5))
                if self.errors:
                    break
                self.arrive(r, n)
                n += 1
            end = time.time() + self.cfg.timeout
            with self.done_cv:
                while len(self.records) < n and not self.errors and time.time() < end:
                    self.done_cv.wait(0.1)
        finally:
            self.stop = True
            for inst in self.inst:
                with inst.cv:
                    inst.cv.notify_all()
            self.finishq.put(None)
            fin.join(timeout=10)
        if self.errors:
            raise RuntimeError(f"emulation failed: {self.errors[0]}")
        with self.lock:
            unfinished = [q for q in self.reqs.values() if not q.finished]
        for q in unfinished:  # timed out: counted as misses, TTFT = time waited so far
            q.rec.ttft = self.real(self.rel(time.time()) - q.arrival)
            q.rec.met = False
            self.records.append(q.rec)
        self.unfinished = len(unfinished)
        return sorted(self.records, key=lambda r: r.request_id)


def run_workload(handles: dict[str, AgentHandle], cluster: EmuCluster, requests: Iterable[Request],
                 config: EmuConfig | None = None, *, scheduler: str = "unknown", rate: float = 0.0,
                 out: str | None = None, cost=None, command: str = "", warm: Iterable[Request] = (),
                 on_record: Callable[[RequestRecord], None] | None = None,
                 pin: Mapping[int, int] | None = None, **meta) -> Run:
    """Run ``requests`` on the emulated cluster; return (and with ``out`` write) a results Run.

    ``handles`` maps host name → agent handle (``control.ControlClient`` for agents in
    namespaces, ``control.LocalHandle`` for in-process agents). ``scheduler`` and
    ``rate`` label the run (the scheduler itself runs in the controller). ``cost``
    replaces the cost model (anything with ``model.num_layers``, ``model.gpus``,
    ``request_profile``, ``layer_compute_s``, ``stage1_bytes``, ``stage2_bytes``). ``warm``:
    earlier requests whose prefix blocks the cluster already holds (:func:`warm_cache`). ``pin``:
    request id → prefill instance index for requests (and warm requests: their blocks' owner) that
    must run there instead of where the router sends them (:func:`check_pin`); the run's meta
    counts them (``pinned``).
    """
    config = config or EmuConfig()
    warm = list(warm)
    d = Driver(handles, cluster, config, cost=cost, warm=warm, on_record=on_record, pin=pin)
    t = time.perf_counter()
    recs = d.run(requests)
    run = make_run(scheduler, rate, recs, model=config.model if cost is None else "custom", emulated=True,
                   link_bps=config.link_bps, time_scale=config.time_scale, slo_scale=config.slo_scale,
                   lowload_ratio=config.lowload_ratio, warmup=config.warmup, measured=len(recs) - config.warmup,
                   max_batch_tokens=config.max_batch_tokens, flows=d.flows, unfinished=d.unfinished,
                   prefill=cluster.prefill, decode=cluster.decode, warm=len(warm), pinned=len(d.pin),
                   wall_s=round(time.perf_counter() - t, 3), **meta)
    if out:
        write_results(out, [run], command=command)
    return run


def calibrate_lowload(handles: dict[str, AgentHandle], cluster: EmuCluster, requests: list[Request],
                     config: EmuConfig, *, count: int = 4, warm: Iterable[Request] = (), cost=None,
                     spacing: float = 3.0) -> tuple[float, Run]:
    """The low-load TTFT ratio of this emulated cluster, measured as the simulator does
    (``mfs.sim.runner.calibrate_slo``): replay ``count`` requests of the slice (spread over its
    sizes) one at a time, and take the median of measured TTFT / ideal TTFT (compute plus
    uncontended transfers, :func:`ideal_ttft`). The emulation's own fixed costs (agents, control
    sockets, controller) are thereby part of the SLO, as the real cluster's are in the paper's
    "3 × TTFT at low load". Each request arrives ``spacing`` × its ideal TTFT after the previous
    one. Returns (ratio, the calibration run)."""
    if count < 1 or not requests:
        raise ValueError("calibration needs at least one request")
    if not spacing >= 1:
        raise ValueError(f"spacing must be >= 1, got {spacing!r}")
    warm = list(warm)
    cfg = replace(config, lowload_ratio=1.0, warmup=0)
    cm = cost if cost is not None else cfg.cost_model()
    out = lowload_set(requests, count, warm,
                      lambda new, reused: ideal_ttft(cm, cfg.link_bps / 8, new, reused, cfg.hw) / cfg.time_scale,
                      spacing)
    run = run_workload(handles, cluster, out, cfg, scheduler="calibration", rate=0.0, cost=cost, warm=warm)
    ratios = [q.ttft / (q.deadline - q.arrival) * cfg.slo_scale for q in run.requests if math.isfinite(q.ttft)]
    if not ratios:
        raise RuntimeError("calibration: no request finished")
    return statistics.median(ratios), run


def lowload_set(requests: list[Request], count: int, warm: Iterable[Request],
                ideal_s: Callable[[int, int], float], spacing: float = 3.0) -> list[Request]:
    """The low-load calibration's requests: ``count`` of ``requests`` spread over their sizes (smallest to
    largest), renumbered 0.., each arriving ``spacing`` × its ideal TTFT (``ideal_s(new, reused)``, in
    the requests' time unit) after the previous one. Shared by the emulation's and the simulator's
    calibration (topo.demo), so both measure the same requests."""
    if count < 1 or not requests:
        raise ValueError("calibration needs at least one request")
    if not spacing >= 1:
        raise ValueError(f"spacing must be >= 1, got {spacing!r}")
    by_size = sorted(requests, key=lambda r: r.input_tokens)
    picks = [by_size[round(i * (len(by_size) - 1) / max(1, count - 1))] for i in range(min(count, len(by_size)))]
    out, t = [], 0.0
    for i, (r, (new, reused)) in enumerate(zip(picks, token_counts(picks, warm))):
        out.append(replace(r, request_id=i, arrival=t))
        t += spacing * ideal_s(new, reused)
    return out


@dataclass(frozen=True)
class FixedCost:
    """A cost model with given per-layer figures, in emulated units (tests, hand-checked runs).

    Bytes are instance totals per layer (hosts send the per-GPU share, ÷ ``gpus``)."""

    num_layers: int
    compute_s: float  # seconds per layer
    stage1_per_token: float = 0.0  # bytes per reused token per layer
    stage2: int = 0
    stage3: int = 0
    gpus: int = 1

    @property
    def model(self):
        return SimpleNamespace(num_layers=self.num_layers, gpus=self.gpus, name="fixed", groups=1, attn_gpus=self.gpus)

    def request_profile(self, new: int, reused: int = 0) -> RequestProfile:
        return RequestProfile(self.num_layers, self.compute_s, self.stage1_bytes(reused), self.stage2,
                              self.stage3, self.gpus)

    def layer_compute_s(self, batch, groups=None) -> float:
        return self.compute_s

    def stage2_nic_bytes(self, group_batches) -> list[int]:
        return [-(-self.stage2 // self.gpus)] * len(group_batches)

    def stage1_bytes(self, reused: int) -> int:
        return int(round(self.stage1_per_token * reused))

    def stage2_bytes(self, new: int, reused: int = 0) -> int:
        return self.stage2
