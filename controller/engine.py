"""Promotion engine: host events -> policy -> desired flow entries -> one Write per switch per round.

Rounds: host batches (already validated statelessly by controller/hostapi.py) are
queued per host; each round takes whole batches round robin, one batch per host at a
time starting from a rotating host, until ``ROUND_EVENTS`` events are taken (so a host
with a deep queue costs the others at most one round of bounded work, never a freeze),
applies the events to the policy in seq order, runs ``tick`` when the re-check
interval has passed, merges all level changes into the desired state and writes
the changed keys to every switch at once (one WriteRequest per switch per
round). A batch's future resolves after its round is written: the Report ack
means "applied", and report->installed latency is measured there.

Levels come from the policy (mfs.policy, the one implementation); the engine
converts them to int 0..7 (mfs.levels.clamp) and writes only real changes.
"""

from __future__ import annotations

import asyncio
import ipaddress
import itertools
import logging
import math
import time
from collections import deque
import contextlib
from dataclasses import dataclass, field, replace

from controller.aio import cancel_all
from controller.config import ControllerConfig
from controller.metrics import Metrics
from controller.placement import Placement, SwitchDesired
from controller.switches import FlowKey, SwitchSupervisor
from mfs import levels
from mfs.policy import FlowInfo, PolicyConfig, RequestInfo, link_name, make_switch_policy
from mfs.proto import report_pb2 as pb

log = logging.getLogger("mfs.engine")

# events applied per round (whole batches, round robin over hosts): bounds the time a round
# holds the event loop, so other hosts' reports, keep-alives and timers keep running
ROUND_EVENTS = 256
# ... and at most about this much time (an event costs what the policy makes it cost: a round
# stops after the event that crosses the budget, so a host's expensive events delay the others
# by one budget, not by the whole of them; past the budget, each other host with queued events
# still applies one event, so none is starved)
ROUND_BUDGET_S = 0.02
# flow groups the policy's periodic re-check may visit per round (mfs.policy tick budget)
TICK_BUDGET = 64
ROUND_PAUSE_MIN_S = 0.001  # after a round longer than this, the event loop gets half its time
ROUND_PAUSE_MAX_S = 0.01  # ... up to this long
# the controller-alive clock (Engine.alive_now) counts at most this much of any gap between two
# of its readings: a longer gap means the controller itself was not running (event loop blocked,
# process stopped) and no host is judged silent for it
ALIVE_STEP_MAX_S = 1.0
# ReportAck.levels: at most this many "level changed since the last ack" flows kept per host
# (a host that never reports again would otherwise grow its set; the oldest are dropped first:
# such a host has stopped listening anyway, and GC ends its flows after gc_timeout_s)
MAX_PENDING_LEVELS_PER_HOST = 65536
# a flow's pacing rate (policy.rate_limit) is news for its host when it moves by more than this fraction
RATE_NEWS_REL = 0.05
MAX_MISSES_LOGGED = 65536  # unknown-flow keys remembered as already logged (on_miss; oldest forgotten)


class Reject(Exception):
    """An event is refused. ``reason`` is the counted category, ``str()`` the full message."""

    def __init__(self, reason: str, message: str):
        self.reason = reason
        super().__init__(f"{reason}: {message}")


@dataclass
class FlowRec:
    info: FlowInfo  # info.request_id is the policy's id (ReqRec.iid)
    host: str
    key: FlowKey
    started: float
    level: int
    req: "ReqRec | None" = None
    batch_id: int = 0  # the batch id the host reported (in the namespace of its request's owner)
    sent: int = 0  # bytes sent, as last reported (progress) and applied by the policy
    rate: float | None = None  # the pacing rate (bytes/s) last told its host (policy.rate_limit); None = unpaced


class HostIds:
    """Ids that hosts choose (request ids, batch ids), namespaced by host as flow ids are: host
    A's id 7 and host B's id 7 are different records (``recs[(host, id)]``), each known to the
    policy by an internal id ``iid`` unique across hosts. An owner may share a record with
    *peers* (``peers[(peer, id)]`` -> the owners' keys sharing it, with how many times each):
    requests with the peers named in ``request_start`` (a peer's event reaches the owner's
    request only if it names the owner too: Engine._resolve). Batches are not shared: a batch
    event is always about the sender's own batch."""

    def __init__(self, iids=None):
        self.recs: dict[tuple[str, int], object] = {}
        self.peers: dict[tuple[str, int], dict[tuple[str, int], int]] = {}
        self.iids = iids or itertools.count(1)

    def owner_of(self, host: str, xid: int) -> str | None:
        """The owner that shares ``xid`` with ``host`` (the last one), if any."""
        owners = self.peers.get((host, xid))
        return next(reversed(owners))[0] if owners else None

    def share(self, key: tuple[str, int], peer: str) -> None:
        owners = self.peers.setdefault((peer, key[1]), {})
        owners[key] = owners.pop(key, 0) + 1  # re-inserted: shared last

    def unshare(self, key: tuple[str, int], peer: str) -> None:
        owners = self.peers.get((peer, key[1]))
        if owners is None or key not in owners:
            return
        owners[key] -= 1
        if owners[key] <= 0:
            del owners[key]
            if not owners:
                del self.peers[(peer, key[1])]


@dataclass
class ReqRec:
    """A request in the engine: ``owner``'s request ``rid`` (request ids are per host, as flow
    ids are), known to the policy as ``iid`` (unique across hosts). ``info`` is None for a
    placeholder: a request id a host referred to (layer boundary, flow) before any request of
    that id that names it was started."""

    owner: str
    rid: int
    iid: int
    info: RequestInfo | None = None
    # a placeholder of a peer's events that named host ``claim`` the request's owner
    # (FlowStart/LayerBoundary.owner): it joins only ``claim``'s request ``rid``, and only once
    # ``claim`` names ``owner`` a peer ("" = the host's own request id)
    claim: str = ""
    peers: frozenset = frozenset()
    layer: tuple[int, bool] | None = None  # last layer boundary (current layer, prefill done), for replay
    since: float = 0.0  # alive clock when created
    flows: set = field(default_factory=set)  # live flow ids linked to it
    batch: "BatchRec | None" = None  # its batch (started requests only)


@dataclass(eq=False)
class BatchRec:
    """A batch in the engine: ``owner``'s batch ``bid`` (batch ids are per host, as request ids
    are), known to the policy as ``iid``. Its members are started requests of its owner (their
    ``request_start.batch_id``); only its owner's ``batch`` events reach it (a peer's flows of its
    requests name it by its owner's id). ``active`` between its arrival and its departure."""

    owner: str
    bid: int
    iid: int
    members: set = field(default_factory=set)  # member requests' iids
    active: bool = False


@dataclass
class Adopted:
    level: int
    since: float
    owner: str | None  # host whose flow-id range holds the flow
    from_miss: bool = False  # installed on an unknown-flow digest (expires gc_timeout_s after, owner alive or not)


@dataclass
class Batch:
    host: str
    events: list  # validated pb.Event, seq increasing
    t_recv: float
    future: asyncio.Future
    rejected: list = field(default_factory=list)  # (seq, message)
    pos: int = 0  # events applied so far (a big batch spans rounds)


def to_level(x: float) -> int:
    if x is None or math.isnan(x):
        return levels.LOWEST_LEVEL
    return levels.clamp(int(round(x)))


def stage_defaults_from_policy(policy: PolicyConfig, rli_classes: int = 3) -> list[dict]:
    """Switch levels for a flow's packets sent before the controller has installed its entry
    (the config's ``stage_defaults``, in that shape): the level the policy itself gives a new
    flow of each stage — for MFS its layout (Stage 2 high, Stage 1 by RLI 0, 1, >= 2, Stage 3
    deferred), for a baseline its own initial level. Probe: a 64 kB flow of a request due in
    1 s. Without stage defaults those packets take ``classify_default_level`` (the lowest),
    behind every installed flow: a Stage-2 collective sent in the ~2 ms before its report is
    applied would wait behind deferred Stage-1 data."""
    pol = make_switch_policy(policy)  # a fresh instance of what the controller runs
    now = 1000.0
    pol.request_start(now, RequestInfo(1, 1, now + 1.0, now, 64, 0.5, 0))
    out: list[dict] = []

    def level(fid: int, stage: int, target: int = 0) -> int:
        return to_level(pol.flow_start(now, FlowInfo(fid, stage, 1, 64_000, now + 1.0, target, 0, 1, "a", "b", now)))
    out.append({"stage": 2, "level": level(1, 2)})
    for r in range(rli_classes):
        out.append({"stage": 1, "level": level(2 + r, 1, r), "rli": [r, r if r < rli_classes - 1 else 0xFFFF]})
    out.append({"stage": 3, "level": level(2 + rli_classes, 3, 63)})  # its last layer's push: nothing more to come
    return out


class Engine:
    def __init__(self, cfg: ControllerConfig, metrics: Metrics | None = None):
        self.cfg = cfg
        self.metrics = metrics or Metrics()
        self.policy = make_switch_policy(cfg.policy)
        self.desired: dict[FlowKey, int] = {}
        # which switches hold a key (controller/placement.py); a key absent here is on every switch
        self.placement = Placement.from_config(cfg)
        self.where: dict[FlowKey, frozenset[str]] = {}
        self._moved: set[FlowKey] = set()  # keys whose placement changed since their last push
        self.flows: dict[int, FlowRec] = {}
        # requests and batches, namespaced per host (HostIds): (host, id) -> ReqRec / BatchRec;
        # peers[(peer host, id)] -> the owners' keys that share it. Internal ids (the policy's) are
        # unique across both; 0 is never a batch's (a flow whose batch is unknown names it)
        self._iids = itertools.count(1)
        self.reqs = HostIds(self._iids)
        self.requests: dict[tuple[str, int], ReqRec] = self.reqs.recs
        self.peers = self.reqs.peers
        self.batches = HostIds(self._iids)
        self.live_batches: dict[str, int] = {}  # host -> batches (with members, or announced)
        self.live_flows: dict[str, int] = {}  # host -> live flows (its flow-table entries)
        self.miss_installed: dict[str, int] = {}  # host -> entries installed for its unreported flows
        self.live_requests: dict[str, int] = {}  # host -> started requests
        self.placeholders: dict[str, int] = {}  # host -> placeholders carrying layer state
        self.alive = 0.0  # the controller-alive clock (alive_now)
        self._alive_mono = time.monotonic()
        self._rr = 0  # round robin start
        self._cost: dict[str, float] = {}  # host -> recent policy seconds per event (EWMA)
        # after a controller restart: entries found on the switches, key -> Adopted (see adopt())
        self.adopted: dict[FlowKey, Adopted] = {}
        self.last_seen: dict[str, float] = {}
        self.last_applied_seq: dict[str, int] = {}
        self.queues: dict[str, deque[Batch]] = {}
        self.supervisors: dict[str, SwitchSupervisor] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task] = []
        self._last_tick = 0.0
        self._dirty: set[FlowKey] = set()  # keys whose desired level changed outside a policy Changes dict
        self.rounds = 0
        # per host: flow id -> level, for the host's flows started or re-levelled since its last ack
        # (ReportAck.levels; taken by take_levels). Insertion ordered, bounded per host.
        self.level_news: dict[str, dict[int, int]] = {}
        # per host: flows of level_news whose pacing rate (policy.rate_limit) changed: sent with the level
        self.rate_news: dict[str, set[int]] = {}
        self._rate_check: set[int] = set()  # flows whose rate_limit may have changed this round
        self.host_by_address = {h.address: h.name for h in cfg.hosts}
        self._misses_logged: dict[FlowKey, None] = {}  # unknown flows already logged (bounded, oldest out)
        self.hosts_by_port = {(h.switch, h.port): h.name for h in cfg.hosts if h.switch and h.port is not None}
        for sw in cfg.switches:
            self.supervisors[sw.name] = SwitchSupervisor(cfg, sw, SwitchDesired(self.desired, self.where, sw.name),
                                                         self.metrics,
                                                         adopt=self.adopt, on_load=self.on_load,
                                                         owner=self.placement.owner, on_idle=self.on_idle,
                                                         on_miss=self.on_miss)
        bound = [n for n, s in self.supervisors.items() if "src_addr" in s.flow_table.fields]
        unplaced = [h.name for h in cfg.hosts if not h.switch or h.port is None]
        if bound and unplaced:  # their entries carry port 0: they can never match
            log.warning("switches %s bind flow entries to the sender's port, but hosts %s have no switch/port in "
                        "the config: their flows will take the stage defaults", ", ".join(bound), ", ".join(unplaced))

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        for s in self.supervisors.values():
            s.start()
        self._tasks = [asyncio.create_task(self._run(), name="engine"),
                       asyncio.create_task(self._timers(), name="engine-timers")]

    async def stop(self) -> None:
        await cancel_all(self._tasks)
        await asyncio.gather(*(s.stop() for s in self.supervisors.values()))
        for q in self.queues.values():
            for b in q:
                if not b.future.done():
                    b.future.cancel()

    async def wait_ready(self, timeout: float = 10.0) -> None:
        await asyncio.wait_for(asyncio.gather(*(s.ready.wait() for s in self.supervisors.values())), timeout)

    # ------------------------------------------------------------------ input
    def pending(self, host: str) -> int:
        return len(self.queues.get(host, ()))

    def submit(self, host: str, events: list, t_recv: float) -> asyncio.Future:
        fut = asyncio.get_running_loop().create_future()
        self.queues.setdefault(host, deque()).append(Batch(host, events, t_recv, fut))
        self.touch(host)
        self._wake.set()
        return fut

    def touch(self, host: str) -> None:
        self.last_seen[host] = self.alive_now()

    def alive_now(self) -> float:
        """The controller-alive clock (seconds): follows the monotonic clock, except that any gap
        between two readings longer than ALIVE_STEP_MAX_S counts as that much only. It is read
        by every report and by the timers (every policy re-check interval), so a long gap means
        the controller was not running (its event loop blocked by a long computation, the
        process stopped): host silence is measured on this clock, and no host is judged silent
        (GC) for a period in which the controller could not hear it."""
        now = time.monotonic()
        gap = now - self._alive_mono
        self._alive_mono = now
        if gap > ALIVE_STEP_MAX_S:
            self.metrics.count("controller_stalls")
            self.metrics.observe("controller_stall_seconds", gap)
        self.alive += min(max(gap, 0.0), ALIVE_STEP_MAX_S)
        return self.alive

    # ------------------------------------------------------------------ rounds
    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            t0 = time.perf_counter()
            try:
                await self.round()
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug in one round must not stop the controller
                log.exception("engine round failed")
            # let the rest of the controller run between rounds (reports arriving, keep-alives,
            # timers): a round that wrote nothing never gave the event loop a turn, and a report
            # reaches the engine only after several turns of the loop (gRPC's hand-offs): after a
            # long round, the loop gets half as long (the engine at most ~2/3 of the time)
            took = time.perf_counter() - t0
            await asyncio.sleep(min(took / 2, ROUND_PAUSE_MAX_S) if took > ROUND_PAUSE_MIN_S else 0)

    async def round(self) -> None:
        now = time.time()
        taken: list[Batch] = []
        changes: dict[int, float] = {}
        try:
            hosts = [h for h, q in self.queues.items() if q]
            if hosts:
                self._rr = (self._rr + 1) % len(hosts)
                hosts = hosts[self._rr:] + hosts[:self._rr]
                # hosts whose events have been cheap first; a host whose next slice would overrun
                # the round's budget applies one event only (every host with queued events applies
                # at least one per round: none waits on the others' load, and its cost is measured)
                hosts.sort(key=lambda h: self._cost.get(h, 0.0))
            budget = ROUND_EVENTS
            t_start = time.perf_counter()
            deadline = t_start + ROUND_BUDGET_S
            applied = 0
            served: set[str] = set()
            while hosts:
                over = budget <= 0 or time.perf_counter() > deadline
                todo = [h for h in hosts if h not in served] if over else list(hosts)
                progressed = False
                for host in todo:
                    q = self.queues[host]
                    b = q[0]
                    n = min(len(b.events) - b.pos, max(1, budget // len(hosts)))
                    t0 = time.perf_counter()
                    if applied and (budget <= 0 or t0 + n * self._cost.get(host, 0.0) > deadline):
                        if host in served:
                            continue
                        n = 1  # its one event of this round
                    n = self._apply_batch(now, b, changes, b.pos, b.pos + n, deadline)
                    t1 = time.perf_counter()
                    self._cost[host] = 0.7 * self._cost.get(host, 0.0) + 0.3 * (t1 - t0) / max(1, n)
                    applied += n
                    b.pos += n
                    budget -= n
                    served.add(host)
                    progressed = True
                    if b.pos >= len(b.events):
                        taken.append(q.popleft())  # applied whole: acked after this round's write
                    if not q:
                        hosts.remove(host)
                if not progressed:
                    break
            if any(self.queues.values()):
                self._wake.set()  # more next round
            pending = self.policy.pending_work()
            if pending or now - self._last_tick >= max(0.001, self.cfg.policy.recheck_interval_s):
                if not pending:
                    self._last_tick = now
                # a pass over many flow groups is spread over rounds (the policy carries the rest)
                changes.update(self.policy.tick(now, budget=TICK_BUDGET))
                if self.policy.pending_work():
                    self._wake.set()
            keys = self._commit(changes) | self._dirty
            self._dirty = set()
            self._rates()
            if keys:
                await self.push(keys)
        finally:  # whatever happened, no host waits forever for its ack
            self.rounds += 1
            t_done = time.perf_counter()
            for b in taken:
                if not b.future.done():
                    b.future.set_result(b.rejected)
                self.metrics.observe("report_to_installed_seconds", t_done - b.t_recv)

    def _commit(self, changes: dict[int, float]) -> set[FlowKey]:
        """Merge policy changes into the desired state; return the keys that changed."""
        keys = set()
        for fid, lvl in changes.items():
            rec = self.flows.get(fid)
            if rec is None:
                continue
            new = to_level(lvl)
            if self.desired.get(rec.key) != new:
                if rec.key in self.desired and new < self.desired[rec.key]:
                    self.metrics.count("promotions")
                self.desired[rec.key] = new
                self._level_news(rec, new)
                keys.add(rec.key)
        return keys

    def _rates(self) -> None:
        """Pacing rates (``policy.rate_limit``, e.g. Karuna's bytes left / time left of a deadline flow)
        of the flows started, re-levelled or progressed this round: a change of more than
        ``RATE_NEWS_REL`` (or paced <-> unpaced) is news for the flow's host (ReportAck.levels.rate)."""
        check, self._rate_check = self._rate_check, set()
        limit = self.policy.rate_limit
        for fid in check:
            rec = self.flows.get(fid)
            if rec is None:
                continue
            try:
                r = limit(fid)
            except KeyError:
                continue
            old = rec.rate
            if r == old or (r is not None and old is not None and abs(r - old) <= RATE_NEWS_REL * old):
                continue
            rec.rate = r
            news = self.level_news.setdefault(rec.host, {})
            news.setdefault(fid, rec.level)
            self.rate_news.setdefault(rec.host, set()).add(fid)

    def _level_news(self, rec: FlowRec, level: int) -> None:
        """Remember ``rec``'s new level for the next ReportAck to its host."""
        rec.level = level
        self._rate_check.add(rec.info.flow_id)
        news = self.level_news.setdefault(rec.host, {})
        news.pop(rec.info.flow_id, None)  # re-insert: newest last
        news[rec.info.flow_id] = level
        while len(news) > MAX_PENDING_LEVELS_PER_HOST:
            news.pop(next(iter(news)))
            self.metrics.count("level_news_dropped")

    def take_levels(self, host: str) -> list[tuple[int, int, float | None]]:
        """(flow id, level, rate) of ``host``'s flows started, re-levelled or re-paced since the last call
        for it (ReportAck.levels, docs/report-api.md); clears them. ``rate``: bytes/s to pace the flow at,
        0.0 = unpaced, None = unchanged."""
        news = self.level_news.pop(host, None)
        paced = self.rate_news.pop(host, None) or ()
        if not news:
            return []
        out = []
        for fid, lvl in news.items():
            rate = None
            if fid in paced:
                rec = self.flows.get(fid)
                rate = (rec.rate or 0.0) if rec is not None else 0.0
            out.append((fid, lvl, rate))
        return out

    async def flush(self) -> None:
        """Write the pending desired-state changes now (e.g. after a live policy change)."""
        keys, self._dirty = self._dirty, set()
        if keys:
            await self.push(keys)

    async def push(self, keys: set[FlowKey]) -> None:
        """Write ``keys`` to the ready switches concurrently (one Write each). A key goes to the
        switches it is placed on (``where``; absent = every switch), or to every switch if its
        placement changed since it was last written; a switch none of the keys concerns gets
        no Write."""
        where, moved, sups = self.where, self._moved, self.supervisors
        if not where and not moved:
            await asyncio.gather(*(s.sync(keys) for s in sups.values()))
            return
        every: list[FlowKey] = []
        per: dict[str, list[FlowKey]] = {}
        for k in keys:
            w = where.get(k)
            if w is None or k in moved:
                every.append(k)
            else:
                for n in w:
                    per.setdefault(n, []).append(k)
        await asyncio.gather(*(s.sync(every + per.get(n, [])) for n, s in sups.items() if every or n in per))
        for k in keys:
            moved.discard(k)
            if k not in self.desired:  # ended flows: their placement is no longer needed
                where.pop(k, None)

    def place(self, key: FlowKey, host: str | None) -> None:
        """Record which switches hold ``key`` (the flow of ``host``), per the configured placement."""
        w = self.placement.switches_of(host)
        if w != self.where.get(key) and key in self.desired:
            self._moved.add(key)  # written everywhere once: deleted where it no longer belongs
        if w is None:
            self.where.pop(key, None)
        else:
            self.where[key] = w

    # ------------------------------------------------------------------ events
    def _apply_batch(self, now: float, b: Batch, changes: dict[int, float], lo: int = 0, hi: int | None = None,
                     deadline: float = math.inf) -> int:
        """Apply events ``lo:hi`` of ``b``, stopping after the one that ends past ``deadline``
        (perf_counter); returns how many were applied."""
        n = 0
        for ev in b.events[lo:hi]:
            n += 1
            try:
                self._apply(now, b.host, ev, changes)
            except Reject as r:
                b.rejected.append((ev.seq, str(r)))
                self.metrics.count("rejected_reports", reason=r.reason)
            except Exception as e:  # noqa: BLE001 - the policy refused the event in its own way
                log.warning("%s seq %d: policy error: %s", b.host, ev.seq, e)
                b.rejected.append((ev.seq, f"policy: {type(e).__name__}: {e}"))
                self.metrics.count("rejected_reports", reason="policy")
            self.last_applied_seq[b.host] = max(self.last_applied_seq.get(b.host, 0), ev.seq)
            if time.perf_counter() > deadline:
                break
        return n

    def _apply(self, now: float, host: str, ev: pb.Event, changes: dict[int, float]) -> None:
        kind = ev.WhichOneof("kind")
        pol = self.policy
        if kind == "flow_start":
            fs = ev.flow_start
            if fs.flow_id in self.flows:
                raise Reject("duplicate_flow", f"flow {fs.flow_id} already started (end it first)")
            cap = self.cfg.limits.max_flows_per_host
            a = self.adopted.get((fs.stage, fs.flow_id))
            taken_over = a is not None and a.from_miss and a.owner == host  # already counted
            if self._flow_entries(host) - taken_over >= cap:
                raise Reject("host_cap", f"host {host} already has {cap} live flows (limits.max_flows_per_host; "
                                         f"entries installed for its unreported flows count too); end some first")
            req = self._resolve(host, fs.request_id, fs.owner)
            info = FlowInfo(flow_id=fs.flow_id, stage=fs.stage, request_id=req.iid, size_bytes=fs.size_bytes,
                            deadline=fs.deadline or None, target_layer=fs.target_layer,
                            current_layer=fs.current_layer, batch_id=self._flow_batch(req, fs.batch_id), src=host,
                            dst=self.host_by_address.get(fs.dst, fs.dst),  # the policy names links by host
                            start_time=now)
            try:
                lvl = to_level(pol.flow_start(now, info))
            except (ValueError, TypeError) as e:
                raise Reject("policy", str(e)) from None
            key = (fs.stage, fs.flow_id)
            adopted = self._unadopt(key)
            if adopted is not None and adopted.level < lvl:
                lvl = adopted.level  # keep the promotion the switch already had (controller restart)
            rec = self.flows[fs.flow_id] = FlowRec(info, host, key, now, lvl, req, fs.batch_id)
            req.flows.add(fs.flow_id)
            self.live_flows[host] = self.live_flows.get(host, 0) + 1
            if self.where.get(key) != self.placement.switches_of(host):
                self.place(key, host)
                self._dirty.add(key)
            self._level_news(rec, lvl)
            for other in [(st, fs.flow_id) for st in (1, 2, 3) if st != fs.stage]:
                if self.desired.pop(other, None) is not None:  # flow id reused with another stage
                    self._unadopt(other)
                    self._dirty.add(other)
            if self.desired.get(key) != lvl:
                self.desired[key] = lvl
                self._dirty.add(key)
            self.metrics.count("flows_started")
        elif kind == "progress":
            if self._adopted_of(host, ev.progress.flow_id):
                self.metrics.count("adopted_progress")
                return  # a flow from before the restart: its entry keeps its level until it ends
            rec = self._own_flow(host, ev.progress.flow_id)
            if ev.progress.bytes_sent > rec.info.size_bytes:
                raise Reject("bad_bytes", f"flow {rec.info.flow_id}: bytes_sent={ev.progress.bytes_sent} exceeds "
                                          f"size_bytes={rec.info.size_bytes}")
            changes.update(pol.progress(now, rec.info.flow_id, ev.progress.bytes_sent))
            rec.sent = max(rec.sent, ev.progress.bytes_sent)
            self._rate_check.add(rec.info.flow_id)
        elif kind == "flow_end":
            keys = self._adopted_of(host, ev.flow_end.flow_id)
            if keys and ev.flow_end.flow_id not in self.flows:
                for k in keys:  # a flow from before the restart ends: delete its entry
                    self._unadopt(k)
                    if self.desired.pop(k, None) is not None:
                        self._dirty.add(k)
                return
            rec = self._own_flow(host, ev.flow_end.flow_id)
            self._end_flow(now, rec)
        elif kind == "layer":
            lb = ev.layer
            req = self._resolve(host, lb.request_id, lb.owner, create=False)
            if req is not None and req.info is not None and lb.current_layer > req.info.num_layers:
                raise Reject("bad_layer", f"request {lb.request_id}: current_layer={lb.current_layer} > "
                                          f"num_layers={req.info.num_layers}")
            if req is None or (req.info is None and req.layer is None):
                # layer state of a request not started (yet): bounded per host (checked where counted)
                cap = self.cfg.limits.max_unknown_requests
                if self.placeholders.get(host, 0) >= cap:
                    raise Reject("host_cap", f"host {host} already has layer state for {cap} requests that were "
                                             f"never started (limits.max_unknown_requests)")
                if req is None:
                    req = self._resolve(host, lb.request_id, lb.owner)
                self.placeholders[req.owner] = self.placeholders.get(req.owner, 0) + 1
            self._layer(now, req, lb.current_layer, lb.prefill_done, changes)
        elif kind == "request_start":
            rs = ev.request_start
            key = (host, rs.request_id)
            old = self.requests.get(key)
            if old is not None and old.claim:
                raise Reject("request_conflict", f"request {rs.request_id}: this host reported layer boundaries or "
                                                 f"flows of host {old.claim!r}'s request {rs.request_id} (as its "
                                                 f"peer) that host {old.claim!r} has not started yet; use another id "
                                                 f"or end those flows first")
            if old is None or old.info is None:
                cap = self.cfg.limits.max_requests_per_host
                if self.live_requests.get(host, 0) >= cap:
                    raise Reject("host_cap", f"host {host} already has {cap} live requests "
                                             f"(limits.max_requests_per_host); end some first")
            batch = self.batches.recs.get((host, rs.batch_id))
            if batch is None:
                self._batch_room(host)
            req = self._resolve(host, rs.request_id)
            if batch is None:
                batch = self._new_batch(host, rs.batch_id)
            info = RequestInfo(request_id=req.iid, batch_id=batch.iid, deadline=rs.deadline,
                               arrival=rs.arrival or now, num_layers=rs.num_layers,
                               remaining_compute=rs.remaining_compute, remaining_bytes=rs.remaining_bytes)
            try:
                changes.update(pol.request_start(now, info))
            except (ValueError, TypeError) as e:
                if old is None:
                    self._drop_req(now, req)
                self._drop_batch(batch)  # if it was created for this request
                raise Reject("policy", str(e)) from None
            if req.info is None:
                self.live_requests[host] = self.live_requests.get(host, 0) + 1
                if req.layer is not None:
                    self.placeholders[host] -= 1
            req.info = info
            self._set_peers(now, req, [p for p in rs.peers if p != host], changes, batch)
        elif kind == "request_end":
            rid = ev.request_end.request_id
            req = self.requests.get((host, rid))
            if req is None or req.info is None:
                owner = self.reqs.owner_of(host, rid)
                if owner is not None:
                    raise Reject("not_owner", f"request {rid} belongs to host {owner!r} (a peer may report "
                                              f"layer boundaries and flows of it, not end it)")
                raise Reject("unknown_request", f"request {rid} was never started")
            changes.update(pol.request_end(now, req.iid))
            self._drop_req(now, req)
        elif kind == "batch":
            bid, arrival = ev.batch.batch_id, ev.batch.kind == "arrival"
            b = self.batches.recs.get((host, bid))  # always the sender's own batch
            if b is None:
                if not arrival:
                    return  # the departure of a batch this host has no record of: nothing to undo
                self._batch_room(host)
                b = self._new_batch(host, bid)
            changes.update(pol.batch_event(now, b.iid, ev.batch.kind))
            b.active = arrival
            self._drop_batch(b)  # departed and without members: forgotten
        else:  # hostapi already refuses these; keep the engine safe on its own
            raise Reject("no_kind", "event has no kind")

    def _adopted_of(self, host: str, flow_id: int) -> list[FlowKey]:
        if not self.adopted or flow_id in self.flows:
            return []
        return [(st, flow_id) for st in (1, 2, 3) if (st, flow_id) in self.adopted
                and self.adopted[(st, flow_id)].owner == host]

    def _flow_entries(self, host: str) -> int:
        """``host``'s flow-table entries held against limits.max_flows_per_host: its live flows and
        the entries installed for its unreported flows (``unknown_flows.install``)."""
        return self.live_flows.get(host, 0) + self.miss_installed.get(host, 0)

    def _unadopt(self, key: FlowKey) -> Adopted | None:
        """Forget the adopted entry of ``key`` (if any); returns it."""
        a = self.adopted.pop(key, None)
        if a is not None and a.from_miss:
            self.miss_installed[a.owner] -= 1
        return a

    def owner_of(self, flow_id: int) -> str | None:
        h = self.placement.owner(flow_id)
        return h.name if h is not None else None

    # ------------------------------------------------------------------ requests (per host)
    def _resolve(self, host: str, rid: int, owner: str = "", create: bool = True) -> ReqRec | None:
        """The request ``host`` means by ``rid`` on behalf of ``owner`` (the event's ``owner`` field;
        "" or ``host`` = its own): ``owner``'s started request ``rid`` if it names ``host`` a peer
        (both sides confirm the link); else ``host``'s own record of ``rid`` — for ``owner``'s
        request a placeholder claimed for ``owner`` (it joins ``owner``'s request when that names
        ``host`` a peer), created if ``create``. An event without ``owner`` never leaves the
        sender's namespace; a placeholder never joins another host's request than the one it
        claims. Refused (``request_conflict``) if ``host``'s record of ``rid`` is for another owner."""
        owner = "" if owner == host else owner
        if owner:
            o = self.requests.get((owner, rid))
            if o is not None and o.info is not None and host in o.peers:
                return o
        req = self.requests.get((host, rid))
        if req is None:
            if create:
                req = self.requests[(host, rid)] = ReqRec(host, rid, next(self._iids), since=self.alive, claim=owner)
            return req
        if req.claim != owner:
            raise Reject("request_conflict",
                         f"request {rid}: " + (f"host {owner!r} has not named this host a peer of its request {rid}, "
                                               f"and this host's id {rid} is already in use"
                                               if owner and not req.claim else
                                               f"this host's id {rid} holds events for host {req.claim!r}'s "
                                               f"request {rid}" + (f", not {owner!r}'s" if owner else
                                                                   " (name its owner)")))
        return req

    # ------------------------------------------------------------------ batches (per host)
    def _flow_batch(self, req: ReqRec, bid: int) -> int:
        """The policy's id of batch ``bid`` named by a flow of ``req``: the batch of that id of the
        request's owner (0, no batch, if it has none): a flow cannot name another host's batch."""
        b = self.batches.recs.get((req.owner, bid))
        return b.iid if b is not None else 0

    def _batch_room(self, host: str) -> None:
        cap = self.cfg.limits.max_requests_per_host
        if self.live_batches.get(host, 0) >= cap:
            raise Reject("host_cap", f"host {host} already has {cap} batches (limits.max_requests_per_host); "
                                     f"let some depart or end their requests first")

    def _new_batch(self, host: str, bid: int) -> BatchRec:
        b = self.batches.recs[(host, bid)] = BatchRec(host, bid, next(self._iids))
        self.live_batches[host] = self.live_batches.get(host, 0) + 1
        return b

    def _drop_batch(self, b: BatchRec) -> None:
        """Forget ``b`` if it has no member and is not active (its owner's id is then free)."""
        if b.members or b.active or self.batches.recs.get((b.owner, b.bid)) is not b:
            return
        del self.batches.recs[(b.owner, b.bid)]
        self.live_batches[b.owner] -= 1

    def _unlink_batch(self, req: ReqRec, keep: BatchRec | None = None) -> None:
        """Take ``req`` out of its batch."""
        b, req.batch = req.batch, None
        if b is None:
            return
        b.members.discard(req.iid)
        if b is not keep:
            self._drop_batch(b)

    def _layer(self, now: float, req: ReqRec, layer: int, done: bool, changes: dict[int, float]) -> None:
        changes.update(self.policy.layer_boundary(now, req.iid, layer, done))
        prev = req.layer or (0, False)
        req.layer = (max(prev[0], layer), prev[1] or done)

    def _set_peers(self, now: float, req: ReqRec, peers: list[str], changes: dict[int, float],
                   batch: BatchRec) -> None:
        """``req``'s owner names the hosts that may report its layer boundaries and flows, and puts it
        in ``batch``. What a peer reported under this id before, naming this owner (a placeholder:
        its flows, its layer state), joins."""
        self._unlink_batch(req, keep=batch)
        for p in req.peers - set(peers):
            self.reqs.unshare((req.owner, req.rid), p)
        for p in set(peers) - req.peers:
            self.reqs.share((req.owner, req.rid), p)
        req.peers = frozenset(peers)
        req.batch = batch
        batch.members.add(req.iid)
        for p in req.peers:
            ph = self.requests.get((p, req.rid))
            if ph is None or ph.info is not None or ph.claim != req.owner:
                continue  # the peer's own request of the same id (or one it claims for another) stays its own
            for fid in list(ph.flows):
                self._relink(now, self.flows[fid], req, changes)
            if ph.layer is not None:
                self._layer(now, req, ph.layer[0], ph.layer[1], changes)
            self._drop_req(now, ph)

    def _relink(self, now: float, rec: FlowRec, req: ReqRec, changes: dict[int, float]) -> None:
        """Move a live flow to request ``req`` (the policy sees it end and start again, with its progress)."""
        with contextlib.suppress(KeyError):
            self.policy.flow_end(now, rec.info.flow_id)
        if rec.req is not None:
            rec.req.flows.discard(rec.info.flow_id)
        rec.info = replace(rec.info, request_id=req.iid, batch_id=self._flow_batch(req, rec.batch_id))
        rec.req = req
        req.flows.add(rec.info.flow_id)
        changes[rec.info.flow_id] = self.policy.flow_start(now, rec.info)
        if rec.sent:
            changes.update(self.policy.progress(now, rec.info.flow_id, rec.sent))

    def _drop_req(self, now: float, req: ReqRec) -> None:
        """Forget ``req`` (ended, GC'd, or a placeholder merged into its owner's request); its
        live flows, if any, stay (a placeholder is then recreated for them)."""
        if self.requests.get((req.owner, req.rid)) is not req:
            return
        del self.requests[(req.owner, req.rid)]
        self._unlink_batch(req)
        if req.info is not None:
            self.live_requests[req.owner] -= 1
        elif req.layer is not None:
            self.placeholders[req.owner] -= 1
            with contextlib.suppress(KeyError, ValueError):
                self.policy.request_end(now, req.iid)  # the policy's layer state of it
        for p in req.peers:
            self.reqs.unshare((req.owner, req.rid), p)
        if req.flows:  # flows outlive their request: they keep its policy id, in a placeholder
            self.requests[(req.owner, req.rid)] = ReqRec(req.owner, req.rid, req.iid, since=self.alive,
                                                         flows=req.flows, claim=req.claim)
            for fid in req.flows:
                self.flows[fid].req = self.requests[(req.owner, req.rid)]

    def _own_flow(self, host: str, flow_id: int) -> FlowRec:
        rec = self.flows.get(flow_id)
        if rec is None:
            raise Reject("unknown_flow", f"flow {flow_id} was never started (or already ended)")
        if rec.host != host:
            raise Reject("not_owner", f"flow {flow_id} belongs to host {rec.host!r}")
        return rec

    def _end_flow(self, now: float, rec: FlowRec) -> None:
        try:
            self.policy.flow_end(now, rec.info.flow_id)
        except KeyError:
            pass
        if self.flows.pop(rec.info.flow_id, None) is not None:
            self.live_flows[rec.host] -= 1
        req = rec.req
        if req is not None:
            req.flows.discard(rec.info.flow_id)
            if req.info is None and req.layer is None and not req.flows:
                self._drop_req(now, req)
        news = self.level_news.get(rec.host)
        if news:
            news.pop(rec.info.flow_id, None)  # ended: its level is no longer news
        paced = self.rate_news.get(rec.host)
        if paced:
            paced.discard(rec.info.flow_id)
        if self.desired.pop(rec.key, None) is not None:
            self._dirty.add(rec.key)
        self.metrics.count("flows_ended")

    # ------------------------------------------------------------------ restart / GC / load
    def adopt(self, switch: str, entries: dict[FlowKey, int]) -> None:
        """Flow entries found on a switch at the controller's first resync (a controller
        restart). They are kept, with their level, and belong to the host whose flow-id
        range holds them: re-reported by a flow_start they become normal flows (keeping the
        better level); a flow_end deletes them; progress is acknowledged; they are deleted
        when their host is silent for gc_timeout_s (or has not come back gc_timeout_s after
        the adoption, or no configured host owns the id)."""
        now = self.alive_now()
        n = 0
        for key, lvl in entries.items():
            if key in self.desired or key[1] in self.flows:
                continue
            self.desired[key] = lvl
            self.adopted[key] = Adopted(lvl, now, self.owner_of(key[1]))
            self.place(key, self.adopted[key].owner)
            self._dirty.add(key)  # written where it belongs, deleted elsewhere
            n += 1
        self.metrics.count("adopted_entries", n, switch=switch)
        log.info("%s: adopted %d flow entries left by a previous controller", switch, n)

    def on_idle(self, switch: str, key: FlowKey) -> None:
        """``key``'s entry on ``switch`` was not hit for ``flow_idle_timeout_s`` (a P4Runtime
        idle-timeout notification; only the entry on the flow's edge switch has a timeout):
        its host forgot to end it. End the flow as GC would (policy, desired state, entries);
        an adopted entry is dropped; an entry the controller does not want is deleted."""
        rec = self.flows.get(key[1])
        if rec is not None and rec.key == key:
            log.info("%s: flow %d (%s, stage %d) idle for %.1f s: ended", switch, key[1], rec.host, key[0],
                     self.cfg.flow_idle_timeout_s)
            self._end_flow(time.time(), rec)
            self.metrics.count("idle_timeout_flows")
        elif self._unadopt(key) is not None:
            self.desired.pop(key, None)
            self.metrics.count("idle_timeout_flows")
        self._dirty.add(key)  # deleted wherever it is installed and not wanted
        self._wake.set()

    def on_miss(self, switch: str, miss: dict[str, int]) -> str:
        """An ``mfs_miss_t`` digest: a valid MFS packet whose flow has no entry on ``switch``.

        Classified and counted as ``unknown_flows{switch,kind}``: ``foreign`` (no configured host
        owns the flow id, or the packet's source address is not the owner's: a misbehaving or
        spoofing sender; never installed), ``misplaced`` (the owner's packet arrived on another
        port than its ``hosts[].port``: the config is wrong, the source-bound entry cannot
        match), ``known`` (the controller has the flow: the packet raced its entry),
        ``unreported`` (its owner did not report it). Each unknown key is logged once. With
        ``unknown_flows.install`` an unreported flow gets an entry at its stage default level,
        held like an adopted entry: its owner's flow_start takes it over, flow_end, the idle
        timeout, or ``gc_timeout_s`` without a claim remove it.

        Returns the kind, or ``installed`` for an unreported flow given an entry: the caller
        clears the digest filter cell at once only for ``known`` and ``installed`` (the flow now
        has its entry); the others stay silent until the periodic clear (so a flow that will
        keep missing is reported once per ``unknown_flows.filter_clear_s``, not per packet)."""
        key = (miss["stage"], miss["flow_id"])
        owner = self.placement.owner(key[1])
        src, port = miss.get("src_addr"), miss.get("ingress_port")
        if owner is None or (src is not None and src != int(ipaddress.IPv4Address(owner.address))):
            kind = "foreign"
        elif port is not None and owner.port is not None and owner.switch == switch and port != owner.port:
            kind = "misplaced"
        elif key in self.desired:
            kind = "known"
        else:
            kind = "unreported"
        self.metrics.count("unknown_flows", switch=switch, kind=kind)
        if kind == "known":
            return kind
        if key not in self._misses_logged:
            self._misses_logged[key] = None
            while len(self._misses_logged) > MAX_MISSES_LOGGED:
                self._misses_logged.pop(next(iter(self._misses_logged)))
            log.info("%s: %s flow %s (stage %d) from %s on port %s, request %s%s", switch, kind, key[1], key[0],
                     ipaddress.IPv4Address(src) if src is not None else "?", "?" if port is None else port,
                     miss.get("request_id", "?"),
                     f" (hosts[{owner.name}].port is {owner.port})" if kind == "misplaced" else "")
        if kind == "unreported" and self.cfg.unknown_flows.install and key[0] in (1, 2, 3):
            if self._flow_entries(owner.name) >= self.cfg.limits.max_flows_per_host:
                self.metrics.count("unknown_flows_not_installed", switch=switch, reason="host_cap")
                return kind  # its owner holds all the entries it may (limits.max_flows_per_host)
            lvl = self.stage_default_level(key[0])
            self.desired[key] = lvl
            self.adopted[key] = Adopted(lvl, self.alive_now(), owner.name, from_miss=True)
            self.miss_installed[owner.name] = self.miss_installed.get(owner.name, 0) + 1
            self.place(key, owner.name)
            self._dirty.add(key)
            self._wake.set()
            self.metrics.count("unknown_flows_installed", switch=switch)
            return "installed"
        return kind

    def stage_default_level(self, stage: int) -> int:
        """The level a packet of ``stage`` gets without a flow entry and without knowing its RLI:
        the least urgent of the stage's configured defaults, else ``classify_default_level``."""
        lv = [d.level for d in self.cfg.stage_defaults if d.stage == stage]
        return max(lv) if lv else self.cfg.classify_default_level

    def on_load(self, switch: str, util: dict[int, list[float]]) -> None:
        """Per-port, per-level utilisation from the switch counters -> policy.link_load.

        MLU's rho is the load of the traffic that outranks deferred transfers: for a policy
        with a level layout (MFS) the Stage-1/2 levels, as the simulator does
        (mfs/sim rho_source "blocking"); for the others the whole port."""
        now = time.time()
        layout = getattr(self.policy, "layout", None)
        levels = sorted({layout.stage2, *layout.stage1}) if layout is not None else range(8)
        for port, per_level in util.items():
            host = self.hosts_by_port.get((switch, port))
            if host is not None:
                # the port's egress counters carry what the host receives: its "<host>:rx" load
                self.policy.link_load(now, min(0.999, sum(per_level[lv] for lv in levels)), link_name(host, "rx"))

    async def gc(self, alive: float | None = None) -> int:
        """End every flow, and forget every request, batch and layer state, of hosts silent for
        gc_timeout_s; forget layer state of requests never started after gc_timeout_s; drop
        expired adopted entries. Silence is measured on the controller-alive clock
        (:meth:`alive_now`): a period in which the controller was not running does not count."""
        alive = self.alive_now() if alive is None else alive
        now = time.time()
        timeout = self.cfg.gc_timeout_s
        silent = {h for h, t in self.last_seen.items() if alive - t > timeout}
        n = 0
        changes: dict[int, float] = {}  # what ending them changes for the others (e.g. no longer pruned)
        for rec in [r for r in self.flows.values() if r.host in silent]:
            self._end_flow(now, rec)
            n += 1
        for req in [r for r in self.requests.values()
                    if (r.owner in silent and (r.info is not None or r.layer is not None or not r.flows))
                    or (r.info is None and not r.flows and alive - r.since > timeout)]:
            # (a request of a silent host that other hosts' live flows still name stays as a bare
            # placeholder for them, without layer state: it goes when they end)
            if req.info is not None:
                with contextlib.suppress(KeyError, ValueError):
                    changes.update(self.policy.request_end(now, req.iid))
            self._drop_req(now, req)
            self.metrics.count("gc_requests")
        for b in [b for b in self.batches.recs.values() if b.owner in silent]:
            if b.active:  # a silent host's batch departs (its requests are gone: nothing left to rank)
                with contextlib.suppress(KeyError, ValueError):
                    changes.update(self.policy.batch_event(now, b.iid, "departure"))
                b.active = False
            self._drop_batch(b)
        for key, a in list(self.adopted.items()):
            seen = self.last_seen.get(a.owner, a.since) if a.owner and not a.from_miss else a.since
            if alive - max(seen, a.since) > timeout:
                self._unadopt(key)
                if self.desired.pop(key, None) is not None:
                    self._dirty.add(key)
                n += 1
        keys = self._commit(changes)
        if keys:
            self._dirty |= keys
            self._wake.set()
        if n:
            self.metrics.count("gc_entries", n)
            self._wake.set()
        return n

    async def _timers(self) -> None:
        period = max(0.001, min(self.cfg.policy.recheck_interval_s, ALIVE_STEP_MAX_S / 4))
        last_gc = self.alive_now()
        while True:
            await asyncio.sleep(period)
            self._wake.set()  # tick
            try:
                alive = self.alive_now()
                if alive - last_gc >= min(1.0, self.cfg.gc_timeout_s / 4):
                    last_gc = alive
                    await self.gc(alive)
            except asyncio.CancelledError:
                raise
            except Exception:  # noqa: BLE001 - a bug in one GC pass must not stop ticks and GC for good
                log.exception("engine timers (GC) failed")
                self.metrics.count("engine_timer_errors")

    # ------------------------------------------------------------------ live policy change
    def set_policy(self, updates: dict) -> PolicyConfig:
        """Apply key=value changes; rebuild the policy and replay live requests/flows into it."""
        base = self.cfg.policy.to_dict()
        base.update(updates)
        new_cfg = PolicyConfig.from_dict(base, "policy set")
        new_pol = make_switch_policy(new_cfg)
        now = time.time()
        changes: dict[int, float] = {}
        for req in self.requests.values():
            if req.info is not None:
                changes.update(new_pol.request_start(now, req.info))
        for rec in self.flows.values():
            changes[rec.info.flow_id] = new_pol.flow_start(now, rec.info)
            if rec.sent:
                changes.update(new_pol.progress(now, rec.info.flow_id, rec.sent))
        for req in self.requests.values():
            if req.layer is not None:
                changes.update(new_pol.layer_boundary(now, req.iid, *req.layer))
        for b in self.batches.recs.values():
            if b.active:
                changes.update(new_pol.batch_event(now, b.iid, "arrival"))
        self.policy, self.cfg.policy = new_pol, new_cfg
        for fid, lvl in changes.items():
            rec = self.flows.get(fid)
            if rec is not None and self.desired.get(rec.key) != to_level(lvl):
                self.desired[rec.key] = to_level(lvl)
                self._level_news(rec, to_level(lvl))
                self._dirty.add(rec.key)
        self._wake.set()
        return new_cfg

    # ------------------------------------------------------------------ views
    def flow_rows(self) -> list[dict]:
        states = {s.info.flow_id: s for s in self.policy.flows()}
        now = time.time()
        out = []
        for fid, rec in sorted(self.flows.items()):
            st = states.get(fid)
            req = rec.req
            dl = rec.info.deadline or (req.info.deadline if req is not None and req.info is not None else None)
            out.append({"flow_id": fid, "host": rec.host, "stage": rec.info.stage,
                        "request_id": req.rid if req is not None else None,
                        "request_owner": req.owner if req is not None else None,
                        "level": self.desired.get(rec.key), "policy_level": st.level if st else None,
                        "bytes_left": st.bytes_left if st else rec.info.size_bytes,
                        "size_bytes": rec.info.size_bytes, "mlu": st.mlu if st else None,
                        "rli": st.rli if st else None, "scavenger": bool(st and st.scavenger),
                        "laxity_s": (dl - now) if dl else None,
                        "installed": {n: s.installed.get(rec.key) for n, s in self.supervisors.items()}})
        for key, a in sorted(self.adopted.items()):
            out.append({"flow_id": key[1], "host": a.owner, "stage": key[0], "level": a.level, "adopted": True,
                        "installed": {n: s.installed.get(key) for n, s in self.supervisors.items()}})
        return out
