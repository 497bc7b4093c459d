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
import itertools
import math
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np

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
    max_batch_tokens: int = 8192  # new tokens per attention group per prefill step (at least one request)
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
    fairness: str = "per_connection"  # inside a level: a Stage-2 collective gets one share per peer
    #                                   connection it opens ("per_connection"), or one share ("per_flow")

    def validate(self, model: ModelConfig) -> None:
        for key, allowed in (("stage1_issue", ("schedule", "arrival")), ("stage1_conns", ("per_layer", "shared")),
                             ("rho_source", ("blocking", "all")), ("kv_placement", ("owner", "last")),
                             ("fairness", ("per_connection", "per_flow"))):
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
    __slots__ = ("key", "tx", "rx", "queue", "head", "rate", "t", "ver", "cap", "stale", "w", "uid", "rk")

    def __init__(self, key, tx, rx, w=1.0, uid=0):
        self.key, self.tx, self.rx = key, tx, rx
        self.uid = uid  # the hash: sets of connections iterate in an order reproducible from run to run
        self.rk = None  # (level, rank) of the head at the last allocation
        self.w = w  # fairness weight inside a level: the transport connections (QPs) this one stands for
        self.queue: list = []  # heap of (level, seq, msg)
        self.head: Msg | None = None
        self.rate = 0.0
        self.t = 0.0
        self.ver = 0
        self.cap: float | None = None  # pacing rate (sum of its messages' caps), cached between re-reads
        self.stale = True  # cap must be re-read from the policy at the next allocation

    def __hash__(self) -> int:
        return self.uid


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
        self.dirty_links: set[int] = set()  # links whose connections need a new allocation
        self.full = False  # re-allocate every active connection
        self.rerank = False  # re-read the ranks of every active connection
        self.link_users: dict[int, set[Conn]] = {}  # active connections on each link
        self._uids = itertools.count()
        self.touched: set[Conn] = set()
        self.allocations = 0
        self.exact_caps = False  # True: re-read every cap at every allocation (reference behaviour)

    def conn(self, key, tx, rx, w: float = 1.0) -> Conn:
        c = self.conns.get(key)
        if c is None:
            c = self.conns[key] = Conn(key, tx, rx, w, next(self._uids))
        return c

    def _mark(self, c: Conn) -> None:
        self.dirty_links.add(c.tx)
        self.dirty_links.add(c.rx)
        self.dirty = True

    def mark_all(self) -> None:
        """Within-level ranks may have changed: at the next flush, re-read every active connection's
        rank and re-allocate around those whose rank changed."""
        self.rerank = self.dirty = True

    def link_usage(self, blocking_only: bool = False) -> dict[int, float]:
        """Bytes/s in use on each link with traffic ({link: rate}); ``blocking_only``: Stage-1/2 traffic only."""
        used: dict[int, float] = {}
        for c in self.active:
            if c.rate > 0 and not (blocking_only and c.head.stage == 3):
                used[c.tx] = used.get(c.tx, 0.0) + c.rate
                if c.rx != c.tx:
                    used[c.rx] = used.get(c.rx, 0.0) + c.rate
        return used

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
            self._mark(c)

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
                self.link_users[c.tx].discard(c)
                self.link_users[c.rx].discard(c)
                c.rate = 0.0
                self._mark(c)
            return
        if c not in self.active:
            self.active.add(c)
            self.link_users.setdefault(c.tx, set()).add(c)
            self.link_users.setdefault(c.rx, set()).add(c)
            c.stale = True
            self._mark(c)
        elif flag and old is not c.head and (old is None or old.level != c.head.level or c.cap is not None
                                    or self.caps(c.head.fid) is not None):
            c.stale = True
            self._mark(c)

    def set_level(self, m: Msg, level: float, now: float) -> None:
        if m.level == level or m.fid not in self.msgs:
            return
        m.level = level
        c = m.conn
        if c.head is m:
            self._rehead(c, now)
            c.stale = True
            self._mark(c)
        else:
            heapq.heappush(c.queue, (m.level, m.seq, m))
            if m.level < c.head.level:
                self._rehead(c, now)
            elif c.cap is not None:
                c.stale = True  # a queued message's cap may have changed with its level
                self._mark(c)

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
                c.stale = True
                self._mark(c)
        elif (prev_cap is None) != (self.caps(h.fid) is None):
            c.stale = True
            self._mark(c)
        elif prev_cap is not None and self.exact_caps:
            c.stale = True
            self._mark(c)
        # else: same level and (for a capped connection) the same pacing rate: the finished head's
        # minimal-rate cap was ~0, so the sum over the remaining messages is unchanged
        return m

    def repace(self, now: float) -> None:
        """Re-read the caps of capped connections served below their cap (their minimal rate has grown)."""
        for c in self.active:
            if c.cap is not None and c.rate < c.cap * (1 - 1e-9):
                c.stale = True
                self._mark(c)

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

    def _component(self) -> set[Conn] | list[Conn]:
        """The active connections whose rates may change: those connected to a dirty link through
        shared links (rates outside this component cannot change). Everything after mark_all()."""
        if self.full or self.exact_caps:
            return list(self.active)
        if self.rerank and self.rank is not None:
            rank = self.rank
            for c in self.active:
                if c.rk != (c.head.level, rank(c.head.fid)):
                    self._mark(c)
        comp: set[Conn] = set()
        users = self.link_users
        stack = list(self.dirty_links)
        seen = set(stack)
        while stack:
            for c in users.get(stack.pop(), ()):
                if c not in comp:
                    comp.add(c)
                    for l in (c.tx, c.rx):
                        if l not in seen:
                            seen.add(l)
                            stack.append(l)
        return comp

    def allocate(self, now: float) -> set[Conn]:
        """Recompute the rates of the connections a change can affect (``_component``); return those
        whose rate changed."""
        self.allocations += 1
        by_level: dict[tuple, list[Conn]] = {}
        old = {}
        rank = self.rank
        comp = self._component()
        self.dirty_links = set()
        self.full = self.rerank = False
        for c in comp:
            self.settle(c, now)
            old[c] = c.rate
            if c.stale or self.exact_caps:
                c.cap = self._conn_cap(c)
                c.stale = False
            key = c.rk = (c.head.level, rank(c.head.fid) if rank else 0.0)
            by_level.setdefault(key, []).append(c)
        resid: dict[int, float] = {}  # residual capacity of the links in use (absent = full)
        for lvl in sorted(by_level):
            _fill(by_level[lvl], resid, self.cap)
        tiny = 1e-9 * self.cap
        for c in comp:
            if c.rate < tiny:
                c.rate = 0.0  # float leftovers of a saturated link
        self.dirty = False
        return {c for c, r in old.items() if abs(c.rate - r) > 1e-9 * self.cap}


def _fill(conns: list[Conn], resid: dict[int, float], cap: float) -> None:
    """Weighted max-min fair share of one priority level over the residual link capacities.

    A connection of weight ``w`` gets ``w`` shares (it stands for ``w`` transport connections,
    e.g. a collective's one QP per peer). Bottleneck elimination: repeatedly take the link with
    the smallest share per unit weight (or a connection whose cap is smaller than its weighted
    share), give its unfrozen connections that share × weight, subtract it from their other
    link, repeat. ``resid`` holds the links' residual capacity (absent = ``cap``); updated.
    """
    users: dict[int, list[Conn]] = {}
    for c in conns:
        c.rate = -1.0  # unfrozen
        users.setdefault(c.tx, []).append(c)
        if c.rx != c.tx:
            users.setdefault(c.rx, []).append(c)
    wsum = {l: sum(c.w for c in u) for l, u in users.items()}
    count = {l: len(u) for l, u in users.items()}
    for l in users:
        if l not in resid:
            resid[l] = cap
    heap = [(resid[l] / wsum[l], l) for l in users]
    heapq.heapify(heap)
    capped = sorted((c for c in conns if c.cap is not None), key=lambda c: c.cap / c.w, reverse=True)
    left = len(conns)

    def freeze(c: Conn, rate: float) -> None:
        c.rate = rate
        for l in ((c.tx, c.rx) if c.rx != c.tx else (c.tx,)):
            resid[l] = max(0.0, resid[l] - rate)
            count[l] -= 1
            wsum[l] -= c.w
            if count[l]:
                heapq.heappush(heap, (resid[l] / wsum[l] if wsum[l] > 0 else math.inf, l))

    while left:
        while capped and capped[-1].rate >= 0:
            capped.pop()
        share, l = heap[0] if heap else (math.inf, -1)
        if heap and (count[l] == 0 or wsum[l] <= 0
                     or abs(share - resid[l] / wsum[l]) > 1e-12 * (1 + share)):
            heapq.heappop(heap)  # stale entry
            continue
        if capped and capped[-1].cap < share * capped[-1].w:
            c = capped.pop()
            freeze(c, c.cap)
            left -= 1
            continue
        heapq.heappop(heap)
        share = max(share, 0.0)
        for c in users[l]:
            if c.rate < 0:
                freeze(c, share * c.w)
                left -= 1


# ---------------------------------------------------------------------------
# requests and instances


class Req:
    __slots__ = ("r", "rid", "arrival", "deadline", "new", "reused", "inst", "dec", "rec", "layer",
                 "s1_pending", "s3_left", "measured", "compute_done", "est", "conns", "holders",
                 "gid", "g", "attn_s", "ffn_s", "s3_nic")

    def __init__(self, r: Request):
        self.r, self.rid, self.arrival = r, r.request_id, r.arrival
        self.s1_pending: dict[int, int] = {}  # layer -> outstanding Stage-1 messages
        self.s3_left = 0
        self.conns: list[tuple] = []
        self.layer = 0
        self.compute_done = False


class Batch:
    """One forward pass (prefill step) of an instance: each attention group's share of it is that
    group's next FIFO batch (at most ``max_batch_tokens`` new tokens per group, at least one request)."""

    __slots__ = ("bid", "reqs", "gtok", "layer", "layer_time", "s2_pending", "stall_from", "waiting", "dt", "s2")

    def __init__(self, bid):
        self.bid, self.reqs = bid, []
        self.gtok: dict[int, int] = {}  # attention group -> new tokens
        self.layer = 0
        self.layer_time = 0.0
        self.s2_pending = 0
        self.stall_from = None
        self.waiting = False
        self.dt = 0.0  # compute seconds per layer (set when the step starts)
        self.s2: list[int] = []  # per-NIC Stage-2 bytes of each group per layer


class Instance:
    __slots__ = ("idx", "node0", "queue", "batch")

    def __init__(self, idx, node0):
        self.idx, self.node0 = idx, node0  # node0: network node of its attention group 0
        self.queue: deque[Batch] = deque()  # FIFO steps not started yet
        self.batch: Batch | None = None


ARRIVAL, COMPUTE, FLOWDONE, TICK = 0, 1, 2, 3


@dataclass
class SimStats:
    events: int = 0
    flows: int = 0
    allocations: int = 0
    sim_time: float = 0.0
    nic_load: dict = field(default_factory=dict)  # measured per-NIC loads (Simulator.nic_load)


@dataclass
class Simulator:
    model: ModelConfig
    policy: Policy
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    hw: Hardware = field(default_factory=Hardware)

    def __post_init__(self):
        self.cluster.validate(self.model)
        self.cost = CostModel(self.model, self.hw)
        c, m = self.cluster, self.model
        self.np = c.prefill_instances(m)
        self.nd = c.decode_instances(m)
        # network nodes: one per attention group (its attn_gpus NICs carry identical traffic, so the
        # group is one node with one NIC's tx/rx capacity); prefill groups first, then decode groups
        ng = self.ng = m.groups
        self.P, self.D = self.np * ng, self.nd * ng
        nodes = self.P + self.D
        bw = self.hw.nic_bw * (1e6 if c.ideal_network else 1.0)
        self.net = Network(2 * nodes, bw, self.policy.rate_limit, getattr(self.policy, "rank", None),
                           self._sync)  # link 2n = tx(n), 2n+1 = rx(n)
        self.inst = [Instance(i, i * ng) for i in range(self.np)]
        suffix = (lambda g: "") if ng == 1 else (lambda g: f".{g}")
        self.names = ([f"p{i}{suffix(g)}" for i in range(self.np) for g in range(ng)]
                      + [f"d{i}{suffix(g)}" for i in range(self.nd) for g in range(ng)])
        # the server of each prefill group (groups of one server exchange KV over NVLink, not NICs)
        self.node_server = [(n // ng * m.gpus + n % ng * m.attn_gpus) // c.gpus_per_server for n in range(self.P)]
        by_srv: dict[int, list[int]] = {}
        for n, sv in enumerate(self.node_server):
            by_srv.setdefault(sv, []).append(n)
        self.server_nodes = {sv: np.array(ns) for sv, ns in by_srv.items()}
        self.attn_backlog = np.zeros(self.P)  # queued attention seconds of each prefill group
        self.ffn_backlog = np.zeros(self.P)  # queued FFN seconds of the group's instance (same for its groups)
        self.dec_load = np.zeros(self.D)  # outstanding Stage-3 bytes per NIC of each decode group
        self.s2_weight = max(1, m.stage2_peers(c.gpus_per_server)) if c.fairness == "per_connection" else 1
        self.tx_bytes = np.zeros((3, nodes))  # bytes sent per NIC of each node, by stage
        self.rx_bytes = np.zeros((3, nodes))
        self.cache = PrefixCache(c.prefix_capacity)
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
        self._busy = 0.0  # summed prefill-instance busy time (steps running)
        self._t_first = None

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
        self.stats.nic_load = self.nic_load()
        return self.records

    def nic_load(self) -> dict:
        """Measured per-NIC loads over the run (from the first arrival to the end): the mean and the
        busiest prefill NIC's tx utilisation by stage, the decode NICs' rx utilisation (Stage 3),
        and the prefill instances' compute utilisation."""
        span = self.now - (self._t_first or 0.0)
        if span <= 0:
            return {}
        bw = self.net.cap
        P = self.P
        out = {}
        for k, st in enumerate(("stage1", "stage2", "stage3")):
            util = self.tx_bytes[k, :P] / (span * bw)
            out[f"{st}_tx_mean"] = float(util.mean())
            out[f"{st}_tx_max"] = float(util.max())
        tot = self.tx_bytes[:, :P].sum(axis=0) / (span * bw)
        out["prefill_tx_mean"] = float(tot.mean())
        out["prefill_tx_p99"] = float(np.percentile(tot, 99))
        out["prefill_tx_max"] = float(tot.max())
        rx3 = self.rx_bytes[2, P:] / (span * bw)
        out["decode_rx_mean"] = float(rx3.mean()) if len(rx3) else 0.0
        out["decode_rx_max"] = float(rx3.max()) if len(rx3) else 0.0
        out["compute_util"] = self._busy / (span * self.np)
        out["span_s"] = span
        return out

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
        usage = net.link_usage(blocking_only=self.cluster.rho_source != "all")
        for l in sorted(usage.keys() | self._rho.keys()):
            used = usage.get(l, 0.0)
            rho = min(0.95, 0.5 * self._rho.get(l, 0.0) + 0.5 * used / net.cap)
            if used <= 0 and rho < 1e-4:
                rho = 0.0
                del self._rho[l]
            else:
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
    def _route(self, holders: list[int], fetch_s: float) -> int:
        """KV-cache-aware routing over every prefill attention group: least queued attention of the
        group + queued FFN of its instance + time to fetch the prefix blocks held outside its server."""
        est = self.attn_backlog + self.ffn_backlog
        if holders and fetch_s > 0:
            est = est + fetch_s * len(holders)
            per_srv: dict[int, int] = {}
            for h in holders:
                sv = self.node_server[h]
                per_srv[sv] = per_srv.get(sv, 0) + 1
            for sv, n in per_srv.items():
                est[self.server_nodes[sv]] -= fetch_s * n
        return int(np.argmin(est))

    def _arrive(self, r: Request) -> None:
        now = self.now
        if self._t_first is None:
            self._t_first = now
        c, L = self.cluster, self.model.num_layers
        q = Req(r)
        holders, reused, _ = plan.prefix_plan(self.cache, r)
        q.reused, q.new = reused, r.input_tokens - reused
        q.est = self.ideal_ttft(q.new, q.reused)
        q.deadline = r.arrival + c.slo_scale * c.lowload_ratio * q.est
        idx = self._arrived
        self._arrived += 1
        q.measured = c.warmup <= idx < c.warmup + c.measured
        prof = self.cost.request_profile(q.new, reused)
        gid = self._route(holders, plan.block_fetch_s(self.cost, prof, r.block_tokens, self.hw.nic_bw))
        inst = self.inst[gid // self.ng]
        q.inst, q.gid, q.g = inst, gid, gid % self.ng
        q.attn_s = L * self.cost.attn_s(q.new, reused)
        q.ffn_s = L * self.cost.ffn_s(q.new)
        self.attn_backlog[gid] += q.attn_s
        self.ffn_backlog[inst.node0:inst.node0 + self.ng] += q.ffn_s
        q.dec = int(np.argmin(self.dec_load))  # decode group with the least outstanding Stage-3 bytes
        q.s3_nic = prof.per_nic(prof.stage3_bytes)
        q.s3_left = L
        self.dec_load[q.dec] += q.s3_nic * L
        q.rec = RequestRecord(q.rid, r.arrival, math.nan, q.deadline, False, q.measured, r.input_tokens, reused)
        self.reqs[q.rid] = q
        # batching is decided on arrival (per group FIFO, up to max_batch_tokens new tokens per group
        # and step, at least one request), so the policy learns the batch with the request (RED ranks batches)
        b = self._step_for(inst, q.g, q.new)
        b.reqs.append(q)
        b.gtok[q.g] = b.gtok.get(q.g, 0) + q.new
        self.policy.request_start(now, RequestInfo(q.rid, b.bid, q.deadline, r.arrival, L, prof.prefill_compute_s, 0))
        q.holders = holders
        self.cache.store(r.hash_ids, gid, keep_owner=c.kv_placement == "owner")
        if c.stage1_issue == "arrival":
            self._issue_stage1(q, b.bid)
        if inst.batch is None:
            self._start_batch(inst)
        self._ensure_tick()

    def _step_for(self, inst: Instance, g: int, new: int) -> Batch:
        """The queued step a request of group ``g`` joins: the last step holding group g if g's tokens
        fit, else the step after it (the first queued step if none holds g); a new step if none."""
        queue = inst.queue
        k = len(queue) - 1
        while k >= 0 and g not in queue[k].gtok:
            k -= 1
        if k >= 0 and queue[k].gtok[g] + new <= self.cluster.max_batch_tokens:
            return queue[k]
        if k + 1 < len(queue):
            return queue[k + 1]
        self.bid += 1
        b = Batch(self.bid)
        queue.append(b)
        return b

    def _issue_stage1(self, q: Req, bid: int) -> None:
        """Stage 1: every layer's reused KV from the holder group(s) outside the request's server, all
        posted at once; layer j's message targets layer j (RLI = j - current layer). Per NIC of the
        request's group (``per_nic``). One connection per (holder, layer) with
        ``stage1_conns="per_layer"`` (separate concurrent transfers), else one FIFO connection per holder."""
        if not q.reused:
            return
        r, dst = q.r, q.gid
        per_layer = self.cluster.stage1_conns == "per_layer"
        srv = self.node_server[dst]
        for h, tokens in plan.stage1_tokens(q.holders, dst, q.reused, r.block_tokens).items():
            if self.node_server[h] == srv:
                continue  # same server: NVLink, not the NICs
            size = self.cost.nic_bytes(self.cost.stage1_bytes(tokens))
            if size <= 0:
                continue
            conn = None
            for j in range(self.model.num_layers):
                if conn is None or per_layer:
                    conn = self.net.conn((h, dst, q.rid, 1, j if per_layer else -1), 2 * h, 2 * dst + 1)
                    q.conns.append(conn.key)
                self._start_flow(1, size, conn, q, j, q.rid, bid, h, dst, q.deadline)
                q.s1_pending[j] = q.s1_pending.get(j, 0) + 1

    def _start_flow(self, stage, size, conn, owner, layer, rid, bid, src, dst, deadline) -> Msg:
        self.fid += 1
        cur = owner.layer if isinstance(owner, Req) else layer
        info = FlowInfo(self.fid, stage, rid, int(size), deadline, layer, cur, bid, self.names[src],
                        self.names[dst], self.now)
        m = Msg(self.fid, stage, size, conn, owner, layer, info, self.fid)
        m.level = self.policy.flow_start(self.now, info)
        self.tx_bytes[stage - 1, src] += size
        self.rx_bytes[stage - 1, dst] += size
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
            if b.s2_pending == 0:  # the coflow ends with its slowest flow
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
        b.dt = self.cost.layer_compute_s([(q.new, q.reused) for q in b.reqs], [q.g for q in b.reqs])
        groups: list[list[tuple[int, int]]] = [[] for _ in range(self.ng)]
        for q in b.reqs:
            groups[q.g].append((q.new, q.reused))
        b.s2 = self.cost.stage2_nic_bytes(groups)
        self._apply(self.policy.batch_event(self.now, b.bid, "arrival"))
        if self.net.rank is not None:
            self.net.mark_all()  # RED ranks (within-level order) may have changed
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
        self._busy += b.dt
        self._push(now + b.dt, COMPUTE, inst, b)

    def _compute_done(self, inst: Instance, b: Batch) -> None:
        now = self.now
        b.layer_time = now
        first = b.reqs[0]
        # Stage 3: push this layer's KV of every request from its group to its decode group
        for q in b.reqs:
            d = self.P + q.dec
            conn = self.net.conn((q.gid, d, q.rid, 3), 2 * q.gid, 2 * d + 1)
            if b.layer == 0:
                q.conns.append(conn.key)
            self._start_flow(3, q.s3_nic, conn, q, b.layer, q.rid, b.bid, q.gid, d, q.deadline)
        # Stage 2: a coflow of one per-NIC flow per group (dispatch + combine), ending with its slowest flow
        n = 0
        dl = None
        for g, size in enumerate(b.s2):
            if size > 0:
                if dl is None:
                    dl = min(q.deadline for q in b.reqs)
                node = inst.node0 + g
                conn = self.net.conn((node, node, b.bid, 2), 2 * node, 2 * node + 1, self.s2_weight)
                self._start_flow(2, size, conn, b, b.layer, first.rid, b.bid, node, node, dl)
                n += 1
        b.s2_pending = n
        if not n:
            b.layer += 1
            self._try_layer(inst)

    def _prefill_done(self, inst: Instance) -> None:
        b = inst.batch
        now = self.now
        changes = {}
        sl = slice(inst.node0, inst.node0 + self.ng)
        for q in b.reqs:
            q.compute_done = True
            q.rec.prefill_end = now
            self.attn_backlog[q.gid] -= q.attn_s
            self.ffn_backlog[sl] -= q.ffn_s
            ch = self.policy.layer_boundary(now, q.rid, self.model.num_layers, True)
            if ch:
                changes.update(ch)
        ch = self.policy.batch_event(now, b.bid, "departure")
        if ch:
            changes.update(ch)
        if self.net.rank is not None:
            self.net.mark_all()  # RED ranks (within-level order) may have changed
        self._apply(changes)
        for g in range(self.ng):
            node = inst.node0 + g
            self.net.drop_conn((node, node, b.bid, 2))
        inst.batch = None
        if not inst.queue:  # float drift of the running sums
            self.ffn_backlog[sl] = 0.0
            for g in range(self.ng):
                if self.attn_backlog[inst.node0 + g] < 1e-9:
                    self.attn_backlog[inst.node0 + g] = 0.0
        for q in b.reqs:
            self._maybe_done(q)
        self._start_batch(inst)

    def _maybe_done(self, q: Req) -> None:
        if not q.compute_done or q.s3_left:
            return
        done = self.now
        q.rec.ttft = done - q.arrival
        q.rec.met = done <= q.deadline + MET_TOLERANCE_S
        self.dec_load[q.dec] -= q.s3_nic * self.model.num_layers
        self._apply(self.policy.request_end(done, q.rid))
        del self.reqs[q.rid]
        for key in q.conns:
            self.net.drop_conn(key)
        self.records.append(q.rec)
        if self.on_record:
            self.on_record(q.rec)
