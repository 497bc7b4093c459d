"""The flow-level simulator: disaggregated prefill/decode cluster on a non-blocking fat-tree.

One event queue for compute and network events. Scheduling decisions come only
from a :class:`mfs.policy.api.Policy`; this module never decides priorities.

Abstractions (docs/simulator.md explains why they are exact or what they lose):

* **Instance nodes.** KV and activations are sharded symmetrically over the G
  GPUs of a serving instance, and every GPU has its own 200 Gb/s NIC, so all G
  NICs of an instance carry identical traffic. An instance is therefore one
  node whose tx and rx links have one NIC's capacity, and every flow is sized
  as the per-GPU share of its bytes. In a non-blocking fat-tree only NIC tx/rx
  links constrain, so each flow crosses exactly two links: tx(src), rx(dst).
* **Stage 2 as one coflow per batch and layer.** The EP all-to-all (or SP
  all-gather) of a batch's layer is symmetric: it becomes one flow from the
  instance to itself (tx and rx of the same node) carrying the per-GPU
  volume that leaves the server.
* **Connections.** Messages (flows, as the policy sees them) between the same
  two nodes for the same request and stage are sent over one connection
  (one RDMA QP in practice); a connection serves its highest-priority message
  first, FIFO among equal levels. Bandwidth is shared between connections.
* **Network.** Strict priority across levels; max-min fair sharing between
  connections inside a level (progressive filling); optional per-flow rate
  caps (``Policy.rate_limit``, Karuna).
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

from mfs.policy.api import FlowInfo, Policy, RequestInfo
from mfs.policy.base import link_name
from mfs.sim import plan
from mfs.sim.model import CostModel, Hardware, ModelConfig
from mfs.sim.results import RequestRecord
from mfs.sim.workload import PrefixCache, Request

MET_TOLERANCE_S = 1e-6  # a request finishing within 1 µs after its deadline counts as met (float noise)


@dataclass
class ClusterConfig:
    servers: int = 256
    gpus_per_server: int = 8
    prefill_fraction: float = 0.5  # 1:1 prefill:decode
    max_batch_tokens: int = 16384  # new tokens per prefill batch (at least one request)
    tick_s: float = 0.002  # policy.tick / link_load / progress cadence (simulated seconds)
    warmup: int = 512
    measured: int = 1024
    slo_scale: float = 3.0  # deadline = arrival + slo_scale * low-load TTFT estimate of the request
    lowload_ratio: float = 1.0  # low-load TTFT / ideal estimate (from calibrate_slo)
    prefix_capacity: int = 500_000
    # model choices (docs/simulator.md, "Model changes"); the defaults are the faithful ones
    stage1_issue: str = "schedule"  # "schedule": KV loads start when the request's batch starts (vLLM
    #                                  KV connector start_load_kv); "arrival": prefetch on arrival
    stage1_conns: str = "per_layer"  # "per_layer": each layer's blocks are a separate transfer, posted
    #                                   together (NIXL/Mooncake batch transfer); "shared": one FIFO connection
    rho_source: str = "blocking"  # link load told to the policy: "blocking" = Stage-1/2 traffic only; "all"
    kv_placement: str = "owner"  # prefix block KV stays at the instance that computed it ("owner") or
    #                              moves to the last instance that used it ("last")
    ideal_network: bool = False  # bound: links 1e6x faster (transfers take ~0 s); deadlines unchanged

    def validate(self, model: ModelConfig) -> None:
        for key, allowed in (("stage1_issue", ("schedule", "arrival")), ("stage1_conns", ("per_layer", "shared")),
                             ("rho_source", ("blocking", "all")), ("kv_placement", ("owner", "last"))):
            if getattr(self, key) not in allowed:
                raise ValueError(f"ClusterConfig.{key}={getattr(self, key)!r} is not allowed "
                                 f"(allowed: {', '.join(allowed)})")
        if self.servers < 1 or self.gpus_per_server < 1:
            raise ValueError(f"servers and gpus_per_server must be >= 1 (got {self.servers}, {self.gpus_per_server})")
        if not 0 < self.prefill_fraction < 1:
            raise ValueError(f"prefill_fraction must be in (0, 1), got {self.prefill_fraction}")
        if self.prefill_instances(model) < 1 or self.decode_instances(model) < 1:
            raise ValueError(f"cluster of {self.servers}x{self.gpus_per_server} GPUs has no room for one "
                             f"prefill and one decode instance of {model.name} ({model.gpus} GPUs each)")
        if self.warmup < 0 or self.measured < 1:
            raise ValueError(f"warmup must be >= 0 and measured >= 1 (got {self.warmup}, {self.measured})")
        if not self.tick_s > 0 or not self.slo_scale > 0:
            raise ValueError("tick_s and slo_scale must be > 0")

    def prefill_gpus(self) -> int:
        return int(self.servers * self.gpus_per_server * self.prefill_fraction)

    def prefill_instances(self, model: ModelConfig) -> int:
        return self.prefill_gpus() // model.gpus

    def decode_instances(self, model: ModelConfig) -> int:
        return (self.servers * self.gpus_per_server - self.prefill_gpus()) // model.gpus


# ---------------------------------------------------------------------------
# network


class Msg:
    __slots__ = ("fid", "stage", "size", "left", "level", "seq", "conn", "owner", "layer", "info", "sent0")

    def __init__(self, fid, stage, size, conn, owner, layer, info, seq):
        self.fid, self.stage, self.size, self.left = fid, stage, size, float(size)
        self.level = 0.0
        self.seq, self.conn, self.owner, self.layer, self.info = seq, conn, owner, layer, info
        self.sent0 = 0


class Conn:
    __slots__ = ("key", "tx", "rx", "queue", "head", "rate", "t", "ver", "cap", "stale")

    def __init__(self, key, tx, rx):
        self.key, self.tx, self.rx = key, tx, rx
        self.queue: list = []  # heap of (level, seq, msg)
        self.head: Msg | None = None
        self.rate = 0.0
        self.t = 0.0
        self.ver = 0
        self.cap: float | None = None  # pacing rate (sum of its messages' caps), cached between re-reads
        self.stale = True  # cap must be re-read from the policy at the next allocation


class Network:
    """Links (capacity in bytes/s), connections and the strict-priority max-min allocator.

    ``caps(flow_id)`` gives a flow's rate cap (bytes/s) or None. After events,
    the owner calls :meth:`flush`, which re-allocates if the set of active
    connections, their levels or caps changed, and returns the connections
    whose completion time must be (re)scheduled.

    Caps are cached per connection and re-read from the policy only when the
    connection's messages change (a message joins, the head changes level or
    identity other than by completing) and, through :meth:`repace`, when a
    capped connection is served below its cap. A minimal-rate cap
    (bytes_left / time_left, Karuna) is invariant while the connection is
    served at its cap, and a completed head contributes ~0 to its connection's
    sum, so re-reading it at every allocation (``exact_caps=True``, the old
    behaviour, kept for tests) gives the same pacing at a cost of O(queued
    messages) per active connection per allocation.
    """

    def __init__(self, nlinks: int, capacity: float, caps: Callable[[int], float | None],
                 rank: Callable[[int], float] | None = None, sync: Callable[[Msg], None] | None = None):
        self.cap = capacity
        self.rank = rank
        self.sync = sync  # called for a capped head before its cap is read (report bytes sent)
        self.nlinks = nlinks
        self.caps = caps
        self.conns: dict[tuple, Conn] = {}
        self.active: set[Conn] = set()
        self.msgs: dict[int, Msg] = {}
        self.dirty = False
        self.touched: set[Conn] = set()
        self.allocations = 0
        self.link_rate = [0.0] * nlinks
        self.link_rate_blocking = [0.0] * nlinks  # the part used by Stage-1/2 (GPU-blocking) traffic
        self.exact_caps = False  # True: re-read every cap at every allocation (reference behaviour)

    def conn(self, key, tx, rx) -> Conn:
        c = self.conns.get(key)
        if c is None:
            c = self.conns[key] = Conn(key, tx, rx)
        return c

    def drop_conn(self, key) -> None:
        c = self.conns.get(key)
        if c is not None and c.head is None and not c.queue:
            del self.conns[key]

    def settle(self, c: Conn, now: float) -> None:
        if c.head is not None and c.rate > 0:
            c.head.left -= c.rate * (now - c.t)
        c.t = now

    def add(self, m: Msg, now: float) -> None:
        c = m.conn
        self.msgs[m.fid] = m
        heapq.heappush(c.queue, (m.level, m.seq, m))
        if c.head is None or m.level < c.head.level:
            self._rehead(c, now)
        elif c.cap is not None and c in self.active:
            c.stale = True  # the connection's pacing rate includes every queued message's cap
            self.dirty = True

    def _rehead(self, c: Conn, now: float, flag: bool = True) -> None:
        """Make the best queued message the head (after an arrival, a level change or a completion).

        ``flag=False`` (completion): the caller decides whether the allocation changed."""
        self.settle(c, now)
        old = c.head
        if old is not None:
            heapq.heappush(c.queue, (old.level, old.seq, old))
        c.head = None
        msgs = self.msgs
        while c.queue:
            lvl, _, m = heapq.heappop(c.queue)
            if m.fid in msgs and lvl == m.level and m is not c.head:
                c.head = m
                break
        self.touched.add(c)
        if c.head is None:
            if c in self.active:
                self.active.discard(c)
                c.rate = 0.0
                self.dirty = True
            return
        if c not in self.active:
            self.active.add(c)
            c.stale = self.dirty = True
        elif flag and old is not c.head and (old is None or old.level != c.head.level or c.cap is not None
                                    or self.caps(c.head.fid) is not None):
            c.stale = self.dirty = True

    def set_level(self, m: Msg, level: float, now: float) -> None:
        if m.level == level or m.fid not in self.msgs:
            return
        m.level = level
        c = m.conn
        if c.head is m:
            self._rehead(c, now)
            c.stale = self.dirty = True
        else:
            heapq.heappush(c.queue, (m.level, m.seq, m))
            if m.level < c.head.level:
                self._rehead(c, now)
            elif c.cap is not None:
                c.stale = self.dirty = True  # a queued message's cap may have changed with its level

    def finish_head(self, c: Conn, now: float) -> Msg:
        m = c.head
        self.settle(c, now)
        del self.msgs[m.fid]
        prev, prev_cap = m.level, c.cap
        c.head = None
        self._rehead(c, now, flag=False)
        h = c.head
        if h is None or h.level != prev:
            if h is not None:
                c.stale = self.dirty = True
        elif (prev_cap is None) != (self.caps(h.fid) is None):
            c.stale = self.dirty = True
        elif prev_cap is not None and self.exact_caps:
            c.stale = self.dirty = True
        # else: same level and (for a capped connection) the same pacing rate: the finished head's
        # minimal-rate cap was ~0, so the sum over the remaining messages is unchanged
        return m

    def repace(self, now: float) -> None:
        """Re-read the caps of capped connections served below their cap (their minimal rate has grown)."""
        for c in self.active:
            if c.cap is not None and c.rate < c.cap * (1 - 1e-9):
                c.stale = self.dirty = True

    def _conn_cap(self, c: Conn) -> float | None:
        """A connection is paced at the sum of its messages' caps (each paced flow keeps its
        own minimal rate even though the connection sends them one after another)."""
        cap = self.caps(c.head.fid)
        if cap is None:
            return None
        if self.sync is not None:
            self.sync(c.head)
            cap = self.caps(c.head.fid)
            if cap is None:
                return None
        seen = {c.head.fid}
        for _, _, m in c.queue:
            if m.fid not in seen and m.fid in self.msgs:
                seen.add(m.fid)
                mc = self.caps(m.fid)
                if mc is not None:
                    cap += mc
        return cap if cap > 0 else None

    def flush(self, now: float) -> set[Conn]:
        """Re-allocate if needed; return connections whose completion event must be rescheduled."""
        out = self.touched
        self.touched = set()
        if self.dirty:
            out |= self.allocate(now)
        return out

    def allocate(self, now: float) -> set[Conn]:
        """Recompute every active connection's rate; return those whose rate changed."""
        self.allocations += 1
        by_level: dict[tuple, list[Conn]] = {}
        old = {}
        rank = self.rank
        for c in self.active:
            self.settle(c, now)
            old[c] = c.rate
            if c.stale or self.exact_caps:
                c.cap = self._conn_cap(c)
                c.stale = False
            key = (c.head.level, rank(c.head.fid) if rank else 0.0)
            by_level.setdefault(key, []).append(c)
        resid = [self.cap] * self.nlinks
        for lvl in sorted(by_level):
            _fill(by_level[lvl], resid)
        tiny = 1e-9 * self.cap
        for c in self.active:
            if c.rate < tiny:
                c.rate = 0.0  # float leftovers of a saturated link
        self.link_rate = [self.cap - r for r in resid]
        blk = [0.0] * self.nlinks
        for c in self.active:
            if c.rate > 0 and c.head.stage != 3:
                blk[c.tx] += c.rate
                if c.rx != c.tx:
                    blk[c.rx] += c.rate
        self.link_rate_blocking = blk
        self.dirty = False
        return {c for c, r in old.items() if abs(c.rate - r) > 1e-9 * self.cap}


def _fill(conns: list[Conn], resid: list[float]) -> None:
    """Max-min fair share of one priority level over the residual link capacities.

    Bottleneck elimination: repeatedly take the link with the smallest equal
    share (or a connection whose cap is smaller), give its unfrozen connections
    that rate, subtract it from their other link, repeat.
    """
    users: dict[int, list[Conn]] = {}
    for c in conns:
        c.rate = -1.0  # unfrozen
        users.setdefault(c.tx, []).append(c)
        if c.rx != c.tx:
            users.setdefault(c.rx, []).append(c)
    count = {l: len(u) for l, u in users.items()}
    heap = [(resid[l] / n, l) for l, n in count.items()]
    heapq.heapify(heap)
    capped = sorted((c for c in conns if c.cap is not None), key=lambda c: c.cap, reverse=True)
    left = len(conns)

    def freeze(c: Conn, rate: float) -> None:
        c.rate = rate
        for l in ((c.tx, c.rx) if c.rx != c.tx else (c.tx,)):
            resid[l] = max(0.0, resid[l] - rate)
            count[l] -= 1
            if count[l]:
                heapq.heappush(heap, (resid[l] / count[l], l))

    while left:
        while capped and capped[-1].rate >= 0:
            capped.pop()
        share, l = heap[0] if heap else (math.inf, -1)
        if heap and (count[l] == 0 or abs(share - resid[l] / count[l]) > 1e-12 * (1 + share)):
            heapq.heappop(heap)  # stale entry
            continue
        if capped and capped[-1].cap < share:
            c = capped.pop()
            freeze(c, c.cap)
            left -= 1
            continue
        heapq.heappop(heap)
        share = max(share, 0.0)
        for c in users[l]:
            if c.rate < 0:
                freeze(c, share)
                left -= 1


# ---------------------------------------------------------------------------
# requests and instances


class Req:
    __slots__ = ("r", "rid", "arrival", "deadline", "new", "reused", "inst", "dec", "rec", "layer",
                 "s1_pending", "s3_left", "measured", "compute_done", "est", "conns", "holders")

    def __init__(self, r: Request):
        self.r, self.rid, self.arrival = r, r.request_id, r.arrival
        self.s1_pending: dict[int, int] = {}  # layer -> outstanding Stage-1 messages
        self.s3_left = 0
        self.conns: list[tuple] = []
        self.layer = 0
        self.compute_done = False


class Batch:
    __slots__ = ("bid", "reqs", "tokens", "layer", "layer_time", "s2_pending", "stall_from", "waiting", "started")

    def __init__(self, bid):
        self.bid, self.reqs, self.tokens = bid, [], 0
        self.started = False
        self.layer = 0
        self.layer_time = 0.0
        self.s2_pending = 0
        self.stall_from = None
        self.waiting = False


class Instance:
    __slots__ = ("idx", "node", "queue", "batch", "backlog")

    def __init__(self, idx, node):
        self.idx, self.node = idx, node
        self.queue: deque[Batch] = deque()  # FIFO; the last one is still open for arrivals
        self.batch: Batch | None = None
        self.backlog = 0.0  # estimated compute seconds queued or running


ARRIVAL, COMPUTE, FLOWDONE, TICK = 0, 1, 2, 3


@dataclass
class SimStats:
    events: int = 0
    flows: int = 0
    allocations: int = 0
    sim_time: float = 0.0


@dataclass
class Simulator:
    model: ModelConfig
    policy: Policy
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    hw: Hardware = field(default_factory=Hardware)

    def __post_init__(self):
        self.cluster.validate(self.model)
        self.cost = CostModel(self.model, self.hw)
        c = self.cluster
        self.np = c.prefill_instances(self.model)
        self.nd = c.decode_instances(self.model)
        nodes = self.np + self.nd
        bw = self.hw.nic_bw * (1e6 if c.ideal_network else 1.0)
        self.net = Network(2 * nodes, bw, self.policy.rate_limit, getattr(self.policy, "rank", None),
                           self._sync)  # link 2n = tx(n), 2n+1 = rx(n)
        self.inst = [Instance(i, i) for i in range(self.np)]
        self.dec_load = [0.0] * self.nd
        self.cache = PrefixCache(c.prefix_capacity)
        self.names = [f"p{i}" for i in range(self.np)] + [f"d{i}" for i in range(self.nd)]
        self.ev: list = []
        self.seq = 0
        self.fid = 0
        self.bid = 0
        self.now = 0.0
        self.reqs: dict[int, Req] = {}
        self.records: list[RequestRecord] = []
        self.stats = SimStats()
        self.on_record: Callable[[RequestRecord], None] | None = None
        self._tick_on = False
        self._rho: dict[int, float] = {}
        self._read = 0  # requests taken from the source
        self._deferred: dict[int, float] = {}  # level changes returned while allocating
        self._arrived = 0

    # ---- public -----------------------------------------------------------
    def ideal_ttft(self, new: int, reused: int) -> float:
        """TTFT of a request alone on an idle cluster (compute + uncontended transfers)."""
        return plan.ideal_ttft(self.cost, self.hw.nic_bw, new, reused)

    def run(self, requests: Iterable[Request]) -> list[RequestRecord]:
        c = self.cluster
        limit = c.warmup + c.measured
        it: Iterator[Request] = iter(requests)
        self._next_arrival(it, limit)
        ev = self.ev
        pol = self.policy
        while ev:
            t, _, kind, a, b = heapq.heappop(ev)
            if kind == FLOWDONE and (a.ver != b or a.head is None):
                continue  # superseded prediction
            self.now = t
            self.stats.events += 1
            if kind == FLOWDONE:
                conn = a
                m = self.net.finish_head(conn, t)
                self._flow_done(m)
            elif kind == COMPUTE:
                self._compute_done(a, b)
            elif kind == ARRIVAL:
                self._arrive(a)
                self._next_arrival(it, limit)
            else:
                self._tick()
            # coalesce simultaneous events before re-allocating bandwidth
            if (self.net.dirty or self.net.touched) and not (ev and ev[0][0] <= t):
                for cn in self.net.flush(t):
                    self._reschedule_conn(cn)
                if self._deferred:
                    ch, self._deferred = self._deferred, {}
                    self._apply(ch)
                    for cn in self.net.flush(t):
                        self._reschedule_conn(cn)
        self.stats.flows = self.fid
        self.stats.allocations = self.net.allocations
        self.stats.sim_time = self.now
        return self.records

    # ---- events -------------------------------------------------------------
    def _push(self, t, kind, a=None, b=None):
        self.seq += 1
        heapq.heappush(self.ev, (t, self.seq, kind, a, b))

    def _next_arrival(self, it, limit):
        if self._read >= limit:
            return
        r = next(it, None)
        if r is not None:
            self._read += 1
            self._push(r.arrival, ARRIVAL, r)

    def _reschedule_conn(self, c: Conn) -> None:
        c.ver += 1
        if c.head is not None and c.rate > 0:
            self._push(c.t + max(c.head.left, 0.0) / c.rate, FLOWDONE, c, c.ver)

    def _apply(self, changes) -> None:
        if not changes:
            return
        msgs = self.net.msgs
        for fid, lvl in changes.items():
            m = msgs.get(fid)
            if m is not None:
                self.net.set_level(m, lvl, self.now)

    def _ensure_tick(self):
        if not self._tick_on:
            self._tick_on = True
            self._push(self.now + self.cluster.tick_s, TICK)

    def _tick(self):
        pol, now, net = self.policy, self.now, self.net
        for l, used in enumerate(net.link_rate if self.cluster.rho_source == "all" else net.link_rate_blocking):
            if used > 0 or self._rho.get(l):
                rho = min(0.95, 0.5 * self._rho.get(l, 0.0) + 0.5 * used / net.cap)
                self._rho[l] = rho
                pol.link_load(now, rho, self._link_name(l))
        changes = {}
        for c in net.active:
            m = c.head
            net.settle(c, now)
            sent = int(m.size - m.left)
            if sent != m.sent0:
                m.sent0 = sent
                ch = pol.progress(now, m.fid, sent)
                if ch:
                    changes.update(ch)
        changes.update(pol.tick(now) or {})
        self._apply(changes)
        net.repace(now)  # re-pace connections served below their (grown) minimal rate, every tick_s
        if net.msgs or any(i.batch for i in self.inst):
            self._push(now + self.cluster.tick_s, TICK)
        else:
            self._tick_on = False

    def _sync(self, m: Msg) -> None:
        """Report a flow's bytes sent now (before the policy computes its rate cap)."""
        sent = int(m.size - m.left)
        m.sent0 = sent
        ch = self.policy.progress(self.now, m.fid, sent)
        if ch:
            self._deferred.update(ch)

    def _link_name(self, l: int) -> str:
        return link_name(self.names[l // 2], "tx" if l % 2 == 0 else "rx")

    # ---- requests -----------------------------------------------------------
    def _arrive(self, r: Request) -> None:
        now = self.now
        q = Req(r)
        holders, reused, _ = plan.prefix_plan(self.cache, r)
        q.reused, q.new = reused, r.input_tokens - reused
        q.est = self.ideal_ttft(q.new, q.reused)
        q.deadline = r.arrival + self.cluster.slo_scale * self.cluster.lowload_ratio * q.est
        idx = self._arrived
        self._arrived += 1
        q.measured = self.cluster.warmup <= idx < self.cluster.warmup + self.cluster.measured
        # KV-cache-aware routing: least (backlog + time to fetch the prefix blocks it does not hold)
        prof = self.cost.request_profile(q.new, reused)
        kv_blk = plan.block_fetch_s(self.cost, prof, r.block_tokens, self.hw.nic_bw)
        inst = self.inst[plan.route([i.backlog for i in self.inst], holders, kv_blk)]
        q.inst = inst
        q.dec = min(range(self.nd), key=self.dec_load.__getitem__)
        q.s3_left = prof.num_layers
        self.dec_load[q.dec] += prof.stage3_bytes * prof.num_layers
        inst.backlog += prof.prefill_compute_s
        q.rec = RequestRecord(q.rid, r.arrival, math.nan, q.deadline, False, q.measured, r.input_tokens, reused)
        self.reqs[q.rid] = q
        L = self.model.num_layers
        # batching is decided on arrival (FIFO, up to max_batch_tokens new tokens, at least one request),
        # so the policy learns the batch with the request (RED ranks batches)
        last = inst.queue[-1] if inst.queue else None
        if last is None or (last.reqs and last.tokens + q.new > self.cluster.max_batch_tokens):
            self.bid += 1
            last = Batch(self.bid)
            inst.queue.append(last)
        last.reqs.append(q)
        last.tokens += q.new
        self.policy.request_start(now, RequestInfo(q.rid, last.bid, q.deadline, r.arrival, L, prof.prefill_compute_s, 0))
        q.holders = holders
        self.cache.store(r.hash_ids, inst.idx, keep_owner=self.cluster.kv_placement == "owner")
        if self.cluster.stage1_issue == "arrival":
            self._issue_stage1(q, last.bid)
        if inst.batch is None:
            self._start_batch(inst)
        self._ensure_tick()

    def _issue_stage1(self, q: Req, bid: int) -> None:
        """Stage 1: every layer's reused KV from its holder(s), all posted at once; layer j's message
        targets layer j (RLI = j - current layer). One connection per (holder, layer) with
        ``stage1_conns="per_layer"`` (separate concurrent transfers), else one FIFO connection per holder."""
        if not q.reused:
            return
        r, inst, holders = q.r, q.inst, q.holders
        prof = self.cost.request_profile(q.new, q.reused)
        per_layer = self.cluster.stage1_conns == "per_layer"
        for h, tokens in plan.stage1_tokens(holders, inst.idx, q.reused, r.block_tokens).items():
            size = prof.per_gpu(self.cost.stage1_bytes(tokens))
            if size <= 0:
                continue
            conn = None
            for j in range(prof.num_layers):
                if conn is None or per_layer:
                    conn = self.net.conn((h, inst.idx, q.rid, 1, j if per_layer else -1), 2 * h, 2 * inst.idx + 1)
                    q.conns.append(conn.key)
                self._start_flow(1, size, conn, q, j, q.rid, bid, self.names[h], self.names[inst.idx], q.deadline)
                q.s1_pending[j] = q.s1_pending.get(j, 0) + 1

    def _start_flow(self, stage, size, conn, owner, layer, rid, bid, src, dst, deadline) -> Msg:
        self.fid += 1
        cur = owner.layer if isinstance(owner, Req) else layer
        info = FlowInfo(self.fid, stage, rid, int(size), deadline, layer, cur, bid, src, dst, self.now)
        m = Msg(self.fid, stage, size, conn, owner, layer, info, self.fid)
        m.level = self.policy.flow_start(self.now, info)
        self.net.add(m, self.now)
        return m

    def _flow_done(self, m: Msg) -> None:
        self.policy.flow_end(self.now, m.fid)
        o = m.owner
        if m.stage == 1:
            o.s1_pending[m.layer] -= 1
            if o.s1_pending[m.layer] == 0:
                del o.s1_pending[m.layer]
                if not o.s1_pending:
                    o.rec.stage1_done = self.now
                b = o.inst.batch
                if b is not None and b.waiting and o in b.reqs:
                    self._try_layer(o.inst)
        elif m.stage == 2:
            b = o
            b.s2_pending -= 1
            if b.s2_pending == 0:
                cct = self.now - b.layer_time
                for q in b.reqs:
                    q.rec.stage2_cct += cct
                inst = b.reqs[0].inst
                b.layer += 1
                self._try_layer(inst)
        else:
            o.s3_left -= 1
            if o.s3_left == 0:
                o.rec.stage3_done = self.now
                self._maybe_done(o)

    # ---- prefill instances ----------------------------------------------------
    def _start_batch(self, inst: Instance) -> None:
        if not inst.queue:
            return
        b = inst.queue.popleft()
        inst.batch = b
        b.layer_time = self.now
        b.stall_from = self.now
        self._apply(self.policy.batch_event(self.now, b.bid, "arrival"))
        self.net.dirty = True  # RED ranks (within-level order) may have changed
        if self.cluster.stage1_issue == "schedule":
            for q in b.reqs:  # KV loads start when the batch is scheduled (GPU memory is allocated)
                self._issue_stage1(q, b.bid)
        self._try_layer(inst)

    def _try_layer(self, inst: Instance) -> None:
        """Start the batch's next layer if its Stage-2 is done and its Stage-1 data has landed."""
        b = inst.batch
        L = self.model.num_layers
        now = self.now
        if b.layer >= L:
            self._prefill_done(inst)
            return
        if any(b.layer in q.s1_pending for q in b.reqs):
            if not b.waiting:
                b.waiting, b.stall_from = True, now
            return
        if b.waiting:
            stall = now - b.stall_from
            for q in b.reqs:
                q.rec.stage1_stall += stall
            b.waiting = False
        changes = {}
        for q in b.reqs:
            q.layer = b.layer
            if b.layer == 0:
                q.rec.prefill_start = now
            ch = self.policy.layer_boundary(now, q.rid, b.layer)
            if ch:
                changes.update(ch)
        self._apply(changes)
        dt = self.cost.layer_compute_s([(q.new, q.reused) for q in b.reqs])
        self._push(now + dt, COMPUTE, inst, b)

    def _compute_done(self, inst: Instance, b: Batch) -> None:
        now = self.now
        L = self.model.num_layers
        b.layer_time = now
        first = b.reqs[0]
        g = self.model.gpus
        size2 = -(-sum(self.cost.stage2_bytes(q.new, q.reused) for q in b.reqs) // g)
        # Stage 3: push this layer's KV of every request to its decode instance
        for q in b.reqs:
            size3 = -(-self.cost.stage3_bytes(q.new, q.reused) // g)
            d = self.np + q.dec
            conn = self.net.conn((inst.idx, d, q.rid, 3), 2 * inst.idx, 2 * d + 1)
            if b.layer == 0:
                q.conns.append(conn.key)
            self._start_flow(3, size3, conn, q, b.layer, q.rid, b.bid, self.names[inst.idx], self.names[d], q.deadline)
        if size2 > 0:
            conn = self.net.conn((inst.idx, inst.idx, b.bid, 2), 2 * inst.idx, 2 * inst.idx + 1)
            b.s2_pending = 1
            dl = min(q.deadline for q in b.reqs)
            self._start_flow(2, size2, conn, b, b.layer, first.rid, b.bid, self.names[inst.idx],
                             self.names[inst.idx], dl)
        else:
            b.layer += 1
            self._try_layer(inst)

    def _prefill_done(self, inst: Instance) -> None:
        b = inst.batch
        now = self.now
        changes = {}
        for q in b.reqs:
            q.compute_done = True
            q.rec.prefill_end = now
            inst.backlog -= self.cost.request_profile(q.new, q.reused).prefill_compute_s
            ch = self.policy.layer_boundary(now, q.rid, self.model.num_layers, True)
            if ch:
                changes.update(ch)
        ch = self.policy.batch_event(now, b.bid, "departure")
        if ch:
            changes.update(ch)
        self.net.dirty = True  # RED ranks (within-level order) may have changed
        self._apply(changes)
        self.net.drop_conn((inst.idx, inst.idx, b.bid, 2))
        inst.batch = None
        inst.backlog = max(0.0, inst.backlog)
        for q in b.reqs:
            self._maybe_done(q)
        self._start_batch(inst)

    def _maybe_done(self, q: Req) -> None:
        if not q.compute_done or q.s3_left:
            return
        done = self.now
        q.rec.ttft = done - q.arrival
        q.rec.met = done <= q.deadline + MET_TOLERANCE_S
        self.dec_load[q.dec] -= self.cost.stage3_bytes(q.new, q.reused) * self.model.num_layers
        self._apply(self.policy.request_end(done, q.rid))
        del self.reqs[q.rid]
        for key in q.conns:
            self.net.drop_conn(key)
        self.records.append(q.rec)
        if self.on_record:
            self.on_record(q.rec)
