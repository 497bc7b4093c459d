"""Switch supervision: desired state -> table writes, reconnect/resync, counters.

One :class:`SwitchSupervisor` per configured switch. The flow-table desired state
(``(stage, flow_id) -> level``) belongs to the engine and is shared by every
supervisor (every switch carries every flow entry); each supervisor tracks what
its switch actually holds (``installed``) and what did not fit (``overflow``).

Semantics (docs/controller.md, "Supervision and resync"):

* connect -> arbitration -> (primary only) pipeline push if the cookie differs
  -> full resync -> ready. A backup waits for an arbitration update.
* stream broken / switch restarted / primary lost: stop writing, reconnect with
  exponential backoff, re-push the pipeline if needed, resync everything.
* resync = read every entry of the tables the controller owns, then one Write:
  insert what is missing, modify what differs, delete what is not desired.
  On the first resync after the controller starts, ``mfs_flow`` entries the
  controller does not know are *adopted* (see Engine.adopt); later they are
  deleted.
* a full flow table (RESOURCE_EXHAUSTED on INSERT) leaves the flow on its stage
  default; it is counted and retried when entries are deleted or at each poll.
* flow writes go out in chunks of at most ``WRITE_CHUNK`` updates (deletes first), so a
  Write's per-update error list stays far below the gRPC metadata limit whatever the
  desired state's size; and never more inserts than the table has room for: the rest
  take the stage default at once, as on a full table (without them, 75k desired flows
  against a 4,096-entry table made one 6 MB error list, a failed Write, a reconnect, and
  the same again: the switch never became ready).
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import time
from typing import TYPE_CHECKING, Callable

from finsy.proto import p4i, p4r, rpc_code

from controller.aio import cancel_all
from controller.config import ControllerConfig, HostConfig, SwitchConfig
from controller.p4rt.client import NotPrimary, P4RTError, SwitchClient, update
from controller.placement import FLOW_TABLE, port_roles
from mfs.p4info import P4InfoError, P4Schema, encode

if TYPE_CHECKING:
    from controller.metrics import Metrics

log = logging.getLogger("mfs.switch")

FlowKey = tuple[int, int]  # (stage, flow_id)
SET_LEVEL = "MfsIngress.set_level"
FLOOD_GROUP = 1
MISS_FILTER = "MfsIngress.miss_filter"  # unknown-flow digest filter (docs/p4-api.md revision 2)
# its cells are cleared by PacketOut (packet_out op 1, docs/p4-api.md): P4Runtime RegisterEntry
# writes and reads are not available on every target (PI/bmv2 refuses both)
CPU_OP_CLEAR_MISS_FILTER = 1
# every unknown_flows.filter_clear_s one slice of the register is swept (besides the cells of
# digests not acted on), so the whole register is swept every FILTER_SWEEP_SLICES periods:
# a cell whose digest was lost stays silent at most that long, and bmv2 (~4,000 PacketOut/s)
# never stalls for a whole sweep. After every (re)connect the whole register is swept at once.
FILTER_SWEEP_SLICES = 8
PORT_MODE, DSCP_TRUST = "MfsIngress.port_mode", "MfsIngress.dscp_trust"  # revision 2, v1model/embedded only
OWNED_IF_PRESENT = (PORT_MODE, DSCP_TRUST)
# at most this many updates per flow-table Write: each failed update costs ~100 bytes of
# trailing metadata (P4Runtime per-update errors), so 1,024 of them stay ~100 kB, far below
# the client's limit (controller/p4rt/client.py MAX_METADATA) and any switch's
WRITE_CHUNK = 1024
# tables whose whole content the controller owns (plus any table named in switches[].entries)
OWNED_TABLES = ("MfsIngress.mfs_stage_default", "MfsIngress.mfs_trust", "MfsIngress.dscp_classify",
                "MfsEgress.level_dscp", "MfsEgress.dscp_rewrite")


def entry_key(te: p4r.TableEntry) -> tuple:
    """Identity of a table entry (table, match, priority), independent of field order."""
    if te.is_default_action:
        return (te.table_id, "default")
    fields = tuple(sorted((m.field_id, m.SerializeToString(deterministic=True)) for m in te.match))
    return (te.table_id, fields, te.priority)


def static_entries(cfg: ControllerConfig, sw: SwitchConfig, schema: P4Schema) -> list[p4r.TableEntry]:
    """Every non-flow entry the controller programs on one switch, from the config."""
    out = []
    for e in sw.entries:
        out.append(schema.table_entry(e.table, e.match, e.action, e.params, e.priority, e.default))
    for d in cfg.stage_defaults:
        match: dict = {"stage": d.stage}
        if (d.rli_low, d.rli_high) != (0, 0xFFFF):  # P4Runtime: a full range is a don't-care, omitted
            match["rli"] = (d.rli_low, d.rli_high)
        out.append(schema.table_entry("MfsIngress.mfs_stage_default", match, SET_LEVEL, {"level": d.level},
                                      priority=d.priority))
    for h in cfg.hosts:
        if h.trusted and h.switch == sw.name:
            out.append(schema.table_entry("MfsIngress.mfs_trust", {"ingress_port": h.port, "src_addr": h.address},
                                          "MfsIngress.trust_proposal", {"ceiling": h.ceiling}))
    for port, pc in sorted(sw.ports.items()):
        for dscp, lv in sorted(pc.trusted_dscp.items()):
            out.append(schema.table_entry("MfsIngress.dscp_classify", {"ingress_port": port, "dscp": dscp},
                                          SET_LEVEL, {"level": lv}))
        if pc.dscp_mode != "leave":
            act = "MfsEgress.rewrite_dscp" if pc.dscp_mode == "rewrite" else "MfsEgress.clear_dscp"
            out.append(schema.table_entry("MfsEgress.dscp_rewrite", {"egress_port": port}, act, {}))
    for lv, dscp in sorted(cfg.level_dscp.items()):
        out.append(schema.table_entry("MfsEgress.level_dscp", {"level": lv}, "MfsEgress.set_dscp", {"dscp": dscp}))
    out.append(schema.table_entry("MfsIngress.classify_default", None, SET_LEVEL,
                                  {"level": cfg.classify_default_level}, default=True))
    # revision 2 (docs/p4-api.md), where the switch's P4Info has them: each port's mode, and the
    # DSCP a fabric port trusts = the inverse of level_dscp (what the edge switch marked)
    if PORT_MODE in schema.tables:
        for port, role in port_roles(cfg, sw.name).items():
            out.append(schema.table_entry(PORT_MODE, {"ingress_port": port},
                                          "MfsIngress.fabric_port" if role == "fabric" else "MfsIngress.edge_port", {}))
    if DSCP_TRUST in schema.tables:
        for dscp, lv in sorted({d: lv for lv, d in sorted(cfg.level_dscp.items())}.items()):  # shared: least urgent
            out.append(schema.table_entry(DSCP_TRUST, {"dscp": dscp}, SET_LEVEL, {"level": lv}))
    return out


def flood_group(sw: SwitchConfig) -> p4r.Entity | None:
    ports = sw.multicast_ports if sw.multicast_ports is not None else sorted(sw.ports)
    if not ports:
        return None
    g = p4r.MulticastGroupEntry(multicast_group_id=FLOOD_GROUP)
    for i, port in enumerate(ports):
        g.replicas.add(egress_port=port, instance=1)
    return p4r.Entity(packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(multicast_group_entry=g))


class SwitchSupervisor:
    def __init__(self, cfg: ControllerConfig, sw: SwitchConfig, desired: dict[FlowKey, int],
                 metrics: "Metrics", adopt: Callable[[str, dict[FlowKey, int]], None] | None = None,
                 on_load: Callable[[str, dict[int, list[float]]], None] | None = None,
                 owner: Callable[[int], HostConfig | None] | None = None,
                 on_idle: Callable[[str, FlowKey], None] | None = None,
                 on_miss: Callable[[str, dict[str, int]], str] | None = None):
        self.cfg, self.sw, self.desired, self.metrics = cfg, sw, desired, metrics
        self.schema = P4Schema.load(sw.p4info)  # per switch: v1model and Tofino P4Info differ in ids
        self.flow_table = self.schema.table(FLOW_TABLE)
        self.level_param = self.schema.action(SET_LEVEL).params["level"].id
        self.set_level_id = self.schema.action(SET_LEVEL).id
        self.adopt, self.on_load = adopt, on_load
        self.owner, self.on_idle, self.on_miss = owner, on_idle, on_miss
        self._last_filter_clear = time.monotonic()
        self._filter_pending: set[int] = set()  # cells of digests not acted on: cleared each period
        self._filter_sweep_next = 0  # next cell of the rolling sweep
        # idle timeout on this switch's flow entries: only if its P4Info says the table notifies
        raw = next(t for t in self.schema.info.tables if t.preamble.id == self.flow_table.id)
        self.idle_ns = int(cfg.flow_idle_timeout_s * 1e9) \
            if raw.idle_timeout_behavior == p4i.Table.NOTIFY_CONTROL else 0
        self.idle_timeouts = 0
        self.installed: dict[FlowKey, int] = {}
        self.overflow: set[FlowKey] = set()
        # flow entries the switch can hold: the P4Info size, lowered to what it really held
        # when an insert found the table full (a target may be smaller than its P4Info says)
        self.capacity = self.flow_table.size
        self.client: SwitchClient | None = None
        self.ready = asyncio.Event()
        self.lock = asyncio.Lock()
        self.state = "init"
        self.last_error = ""
        self.connects = 0
        self.resyncs = 0
        self.pipeline_pushes = 0
        self.first_sync_done = False
        self.rho: dict[int, float] = {}
        self._last_bytes: dict[int, list[int]] = {}  # port -> bytes per level at the last poll
        self._last_poll = 0.0
        self._stop = asyncio.Event()
        self._primary_changed = asyncio.Event()
        self._tasks: list[asyncio.Task] = []

    # -------------------------------------------------------------- entries
    def flow_entry(self, key: FlowKey, level: int | None) -> p4r.TableEntry:
        """The ``mfs_flow`` entry of ``key`` (level None: for a DELETE). A source-bound table
        (fields ``ingress_port``/``src_addr``, docs/p4-api.md) gets the owning host's port and
        address (such an entry is placed only on the owner's edge switch, controller/placement.py);
        the entry on the owner's edge switch gets the idle timeout."""
        te = p4r.TableEntry(table_id=self.flow_table.id)
        fs = self.flow_table.fields
        te.match.add(field_id=fs["stage"].id).exact.value = encode(key[0], fs["stage"].bitwidth, "stage")
        te.match.add(field_id=fs["flow_id"].id).exact.value = encode(key[1], fs["flow_id"].bitwidth, "flow_id")
        host = self.owner(key[1]) if self.owner is not None else None
        if "ingress_port" in fs:
            te.match.add(field_id=fs["ingress_port"].id).exact.value = encode(
                host.port if host is not None and host.port is not None else 0, fs["ingress_port"].bitwidth, "port")
        if "src_addr" in fs:
            addr = int(ipaddress.IPv4Address(host.address)) if host is not None else 0
            te.match.add(field_id=fs["src_addr"].id).exact.value = encode(addr, fs["src_addr"].bitwidth, "src_addr")
        if level is not None:
            a = te.action.action
            a.action_id = self.set_level_id
            a.params.add(param_id=self.level_param, value=encode(level, 8, "level"))
            if self.idle_ns and host is not None and host.switch == self.sw.name:
                te.idle_timeout_ns = self.idle_ns
        return te

    async def _on_idle(self, client: SwitchClient, n: p4r.IdleTimeoutNotification) -> None:
        """P4Runtime idle-timeout notification: these entries were not hit for their idle
        timeout. The engine ends their flows as GC would (their entries are deleted)."""
        for te in n.table_entry:
            if te.table_id != self.flow_table.id:
                continue
            key, _ = self._flow_of(te)
            self.idle_timeouts += 1
            self.metrics.count("idle_timeouts", switch=self.sw.name)
            if self.on_idle is not None:
                self.on_idle(self.sw.name, key)

    def _flow_of(self, te: p4r.TableEntry) -> tuple[FlowKey, int | None]:
        vals = {m.field_id: int.from_bytes(m.exact.value, "big") for m in te.match}
        fs = self.flow_table.fields
        lvl = None
        for p in te.action.action.params:
            if p.param_id == self.level_param:
                lvl = int.from_bytes(p.value, "big")
        return (vals.get(fs["stage"].id, 0), vals.get(fs["flow_id"].id, 0)), lvl

    def owned_table_ids(self) -> set[int]:
        ids = {self.schema.table(t).id for t in OWNED_TABLES}
        ids |= {self.schema.tables[t].id for t in OWNED_IF_PRESENT if t in self.schema.tables}
        ids |= {self.schema.table(e.table).id for e in self.sw.entries}
        return ids

    # -------------------------------------------------------------- supervision
    def start(self) -> None:
        self._tasks = [asyncio.create_task(self._supervise(), name=f"supervise-{self.sw.name}"),
                       asyncio.create_task(self._poll(), name=f"poll-{self.sw.name}")]

    async def stop(self) -> None:
        self._stop.set()
        await cancel_all(self._tasks)
        if self.client:
            await self.client.close()
            self.client = None
        self.ready.clear()

    def _on_primary(self, primary: bool) -> None:
        if not primary:
            self.ready.clear()
        self._primary_changed.set()

    async def _supervise(self) -> None:
        backoff = self.cfg.reconnect_min_s
        while not self._stop.is_set():
            client = SwitchClient(self.sw.address, self.sw.device_id, self.sw.election_id, self.sw.role,
                                  name=self.sw.name, on_digest=self._on_digest, on_primary_change=self._on_primary,
                                  on_idle_timeout=self._on_idle)
            try:
                self.state = "connecting"
                await client.open()
                self.client = client
                self.connects += 1
                backoff = self.cfg.reconnect_min_s
                while not client.stream_broken.is_set() and not self._stop.is_set():
                    if not client.is_primary:
                        self.state = "backup"
                        await self._wait_change(client)
                        continue
                    self._primary_changed.clear()
                    async with self.lock:
                        if await client.set_pipeline(self.schema.info, self.sw.device_config_bytes()):
                            self.pipeline_pushes += 1
                            log.info("%s: pipeline pushed", self.sw.name)
                        await self._resync(client)
                        self.ready.set()
                    self.state = "ready"
                    self.last_error = ""
                    await self._wait_change(client)
                    self.ready.clear()
            except asyncio.CancelledError:
                raise
            except (P4RTError, OSError) as e:
                self.last_error = str(e)
                log.warning("%s: %s", self.sw.name, e)
            except Exception as e:  # noqa: BLE001 - keep supervising whatever happened
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("%s: supervision error", self.sw.name)
            finally:
                self.ready.clear()
                if client.stream_error and not self.last_error:
                    self.last_error = client.stream_error
                await client.close()
                if self.client is client:
                    self.client = None
            if self._stop.is_set():
                break
            self.state = "disconnected"
            try:
                await asyncio.wait_for(self._stop.wait(), backoff)
            except asyncio.TimeoutError:
                pass
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    async def _wait_change(self, client: SwitchClient) -> None:
        waits = [asyncio.ensure_future(client.stream_broken.wait()), asyncio.ensure_future(self._stop.wait()),
                 asyncio.ensure_future(self._primary_changed.wait())]
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()
        self._primary_changed.clear()

    # -------------------------------------------------------------- resync
    async def _resync(self, client: SwitchClient) -> None:
        """Make the switch hold exactly the desired state (caller holds self.lock)."""
        t0 = time.perf_counter()
        owned = self.owned_table_ids()
        current = await client.read_table(0)
        want_static = {entry_key(te): te for te in static_entries(self.cfg, self.sw, self.schema)}
        have_static = {}
        flows: dict[FlowKey, int] = {}
        for te in current:
            if te.table_id == self.flow_table.id:
                key, lvl = self._flow_of(te)
                flows[key] = lvl if lvl is not None else -1
            elif te.table_id in owned:
                have_static[entry_key(te)] = te
        ups: list[p4r.Update] = []
        for k, te in have_static.items():
            if k not in want_static:
                ups.append(update("delete", te))
        for k, te in want_static.items():
            if te.is_default_action:
                ups.append(update("modify", te))
            elif k not in have_static:
                ups.append(update("insert", te))
            elif have_static[k].action.SerializeToString(deterministic=True) != te.action.SerializeToString(deterministic=True):
                ups.append(update("modify", te))
        if not self.first_sync_done and self.adopt is not None:
            unknown = {k: v for k, v in flows.items() if k not in self.desired and v >= 0}
            if unknown:
                self.adopt(self.sw.name, unknown)
        self.first_sync_done = True
        self.installed = {k: v for k, v in flows.items()}
        self.overflow.clear()
        self.capacity = max(self.flow_table.size, len(self.installed))
        errs = await client.write(ups, timeout=self.cfg.write_timeout_s)
        for e in errs:
            self.metrics.count("static_write_errors", switch=self.sw.name)
            log.error("%s: static entry rejected: %s %s (%s)", self.sw.name, e.code_name, e.message,
                      ups[e.index].entity.table_entry)
        await self._sync_group(client)
        await self._enable_digest(client)
        # digests raised while no controller was primary are lost: their cells would stay set
        reg = self.miss_filter()
        if reg is not None:
            self._clear_cells(client, range(reg.size), metric="miss_filter_swept")
        # flow entries: diff the whole table against the desired state
        await self._write_flows(client, set(self.desired) | set(self.installed))
        self.resyncs += 1
        self.metrics.observe("resync_seconds", time.perf_counter() - t0, switch=self.sw.name)
        log.info("%s: resynced (%d flow entries, %d static) in %.1f ms", self.sw.name, len(self.installed),
                 len(want_static), 1e3 * (time.perf_counter() - t0))

    async def _sync_group(self, client: SwitchClient) -> None:
        g = flood_group(self.sw)
        if g is None:
            return
        errs = await client.write([update("insert", g)])
        if errs and errs[0].code == rpc_code.ALREADY_EXISTS:
            errs = await client.write([update("modify", g)])
        for e in errs:
            log.error("%s: multicast group %d: %s %s", self.sw.name, FLOOD_GROUP, e.code_name, e.message)

    async def _enable_digest(self, client: SwitchClient) -> None:
        try:
            d = self.schema.digest("mfs_miss_t")
        except Exception:  # noqa: BLE001 - a P4Info without the digest is fine
            return
        de = p4r.DigestEntry(digest_id=d.id)
        de.config.max_timeout_ns, de.config.max_list_size, de.config.ack_timeout_ns = 1_000_000, 64, 100_000_000
        errs = await client.write([update("insert", p4r.Entity(digest_entry=de))])
        if errs and errs[0].code == rpc_code.ALREADY_EXISTS:
            errs = await client.write([update("modify", p4r.Entity(digest_entry=de))])
        for e in errs:
            log.info("%s: digest config not accepted: %s %s", self.sw.name, e.code_name, e.message)

    def _miss_members(self) -> list[str]:
        """Member names of the ``mfs_miss_t`` digest struct, in order (from the P4Info)."""
        try:
            d = self.schema.digest("mfs_miss_t")
        except Exception:  # noqa: BLE001 - a P4Info without the digest
            return []
        raw = next(x for x in self.schema.info.digests if x.preamble.id == d.id)
        st = self.schema.info.type_info.structs.get(raw.type_spec.struct.name)
        return [m.name for m in st.members] if st is not None else []

    def miss_filter(self):
        """The ``miss_filter`` register (docs/p4-api.md revision 2), or None if the P4Info has none."""
        return self.schema.registers.get(MISS_FILTER)

    async def _on_digest(self, client: SwitchClient, dl: p4r.DigestList) -> None:
        """Unknown-flow digests (``mfs_miss_t``): each is handed to the engine (log, metric,
        optional install at the stage default); then the filter cells of the flows that now
        have their entry are cleared at once (the others at the next periodic clear)."""
        self.metrics.count("flow_miss_digests", len(dl.data), switch=self.sw.name)
        names = self._miss_members()
        cells = set()
        for d in dl.data:
            vals = [m.bitstring for m in d.struct.members] if d.HasField("struct") else []
            miss = {n: int.from_bytes(v, "big") for n, v in zip(names, vals)}
            if "stage" not in miss or "flow_id" not in miss:
                continue
            kind = self.on_miss(self.sw.name, miss) if self.on_miss is not None else "known"
            if "filter_index" in miss:
                (cells if kind in ("known", "installed") else self._filter_pending).add(miss["filter_index"])
        if cells:
            self._clear_cells(client, sorted(cells))

    def _clear_cells(self, client: SwitchClient | None, cells, metric: str = "miss_filter_cleared") -> int:
        """Clear miss_filter cells: one PacketOut each (packet_out op 1, index), the same on every
        target. Returns the PacketOuts sent (0 if the P4Info has no filter or no packet_out
        header, or the switch is not ours right now: the next (re)connect sweeps everything)."""
        reg = self.miss_filter()
        if reg is None or client is None:
            return 0
        pos = []
        try:
            for i in cells:
                if not 0 <= i < reg.size:
                    log.warning("%s: %s index %d out of range 0..%d", self.sw.name, reg.name, i, reg.size - 1)
                    continue
                pos.append(self.schema.packet_out({"op": CPU_OP_CLEAR_MISS_FILTER, "reserved": 0, "index": i}))
        except P4InfoError as e:
            log.warning("%s: cannot clear %s: %s", self.sw.name, reg.name, e)
            return 0
        try:
            n = client.packet_out(pos)
        except P4RTError as e:  # not primary / switch gone: the next (re)connect sweeps everything
            log.info("%s: clearing %s failed: %s", self.sw.name, reg.name, e)
            return 0
        if metric:
            self.metrics.count(metric, n, switch=self.sw.name)
        return n

    async def _zero_register(self, client: SwitchClient, reg, cells) -> int:
        """Write 0 to register cells (P4Runtime RegisterEntry MODIFY, one Write); returns how many
        were accepted. For the queue statistics, which only targets that can read registers have."""
        ups = []
        for i in cells:
            re = p4r.RegisterEntry(register_id=reg.id)
            re.index.index = i
            re.data.bitstring = encode(0, reg.bitwidth or 8, reg.name)
            ups.append(update("modify", p4r.Entity(register_entry=re)))
        try:
            errs = await client.write(ups, timeout=self.cfg.write_timeout_s)
        except P4RTError as e:
            log.info("%s: clearing %s failed: %s", self.sw.name, reg.name, e)
            return 0
        for e in errs[:1]:
            log.warning("%s: clearing %s: %d cells refused, first: %s %s", self.sw.name, reg.name, len(errs),
                        e.code_name, e.message)
        return len(ups) - len(errs)

    async def clear_miss_filter(self) -> int:
        """The periodic clear: the cells of digests not acted on (a flow that keeps missing is
        reported once per period) and the next 1/FILTER_SWEEP_SLICES of the register (a digest
        lost on the way would otherwise silence its cell for good). Returns the cells cleared."""
        reg, client = self.miss_filter(), self.client
        if reg is None or client is None or not self.ready.is_set():
            return 0
        step = -(-reg.size // FILTER_SWEEP_SLICES)
        lo = self._filter_sweep_next
        self._filter_sweep_next = (lo + step) % reg.size
        pending, self._filter_pending = self._filter_pending, set()
        cleared = self._clear_cells(client, sorted(pending), metric="miss_filter_cleared")
        return cleared + self._clear_cells(client, sorted(set(range(lo, min(lo + step, reg.size))) - pending),
                                           metric="miss_filter_swept")

    async def reprogram(self) -> bool:
        """Re-run the full resync now (after a live config change). False if not ready."""
        if not self.ready.is_set() or self.client is None:
            return False
        async with self.lock:
            if self.client is None:
                return False
            await self._resync(self.client)
        return True

    # -------------------------------------------------------------- flow writes
    async def sync(self, keys) -> bool:
        """Bring ``keys`` on this switch to the desired state in one Write. False if not ready
        (the next resync will do it)."""
        if not self.ready.is_set() or self.client is None:
            return False
        async with self.lock:
            if not self.ready.is_set() or self.client is None:
                return False
            try:
                await self._write_flows(self.client, keys)
            except NotPrimary as e:
                self.ready.clear()
                self.last_error = str(e)
                return False
            except P4RTError as e:
                self.ready.clear()
                self.last_error = str(e)
                self._primary_changed.set()  # make the supervisor reconnect/resync
                if self.client is not None:
                    self.client.stream_broken.set()
                return False
        return True

    def room(self) -> int:
        return self.capacity - len(self.installed)

    async def _write_flows(self, client: SwitchClient, keys, probe: bool = False) -> None:
        """Bring ``keys`` to the desired state: deletes, then modifies, then as many inserts as
        the table has room for (the rest overflow: their flows keep the stage default), in
        Writes of at most WRITE_CHUNK updates. ``probe``: send one insert even if the table
        looks full (it may have room again: learn its real capacity)."""
        deletes, modifies, inserts = [], [], []
        freed = False
        for key in keys:
            want = self.desired.get(key)
            have = self.installed.get(key)
            if want == have:
                continue
            if want is None:
                self.overflow.discard(key)
                deletes.append(("delete", key, None))
            elif have is None:
                inserts.append(("insert", key, want))
            else:
                modifies.append(("modify", key, want))
        pending = deletes + modifies + inserts
        while pending:
            chunk, pending = pending[:WRITE_CHUNK], pending[WRITE_CHUNK:]
            room = self.room() + sum(1 for kind, _, _ in chunk if kind == "delete")
            plan = []
            for op in chunk:
                if op[0] == "insert":
                    if room <= 0 and not probe:
                        self._overflowed(op[1])
                        continue
                    room -= 1
                    probe = False
                plan.append(op)
            freed |= await self._write_plan(client, plan)
        if freed and self.overflow:
            await self._retry_overflow(client)

    def _overflowed(self, key: FlowKey) -> None:
        if key not in self.overflow:
            self.metrics.count("table_full_fallbacks", switch=self.sw.name)
        self.overflow.add(key)

    async def _write_plan(self, client: SwitchClient, plan: list) -> bool:
        """One Write of ``plan`` (at most WRITE_CHUNK updates), with up to two follow-ups for
        inserts that already existed / modifies of vanished entries. True if entries were freed."""
        freed = False
        retries = 0
        while plan and retries < 3:
            retries += 1
            ups = [update(kind, self.flow_entry(key, lvl if kind != "delete" else None)) for kind, key, lvl in plan]
            t0 = time.perf_counter()
            errs = await client.write(ups, timeout=self.cfg.write_timeout_s)
            self.metrics.observe("write_seconds", time.perf_counter() - t0, switch=self.sw.name)
            bad = {e.index: e for e in errs}
            again: list[tuple[str, FlowKey, int | None]] = []
            n_ok = 0
            full = False
            for i, (kind, key, lvl) in enumerate(plan):
                e = bad.get(i)
                if e is None:
                    n_ok += 1
                    if kind == "delete":
                        self.installed.pop(key, None)
                        freed = True
                    else:
                        self.installed[key] = lvl
                        self.overflow.discard(key)
                    continue
                if kind == "insert" and e.code == rpc_code.ALREADY_EXISTS:
                    again.append(("modify", key, lvl))
                elif kind == "modify" and e.code == rpc_code.NOT_FOUND:
                    self.installed.pop(key, None)
                    again.append(("insert", key, lvl))
                elif kind == "delete" and e.code == rpc_code.NOT_FOUND:
                    self.installed.pop(key, None)
                elif kind == "insert" and e.code == rpc_code.RESOURCE_EXHAUSTED:
                    full = True
                    self._overflowed(key)
                else:
                    self.metrics.count("flow_write_errors", switch=self.sw.name, code=e.code_name)
                    log.error("%s: %s %s -> %s: %s", self.sw.name, kind, key, e.code_name, e.message)
            if full:  # the table holds no more than this: later inserts overflow without a Write
                self.capacity = len(self.installed)
            elif len(self.installed) > self.capacity:
                self.capacity = len(self.installed)
            self.metrics.count("entry_updates", n_ok, switch=self.sw.name)
            plan = again
        return freed

    async def _retry_overflow(self, client: SwitchClient, probe: bool = False) -> None:
        """Insert up to ``room`` overflowed keys: O(keys looked at), not O(desired state) — keys
        no longer desired are dropped as they are met (O(1) lookups in the switch's view)."""
        room = max(self.room(), 1 if probe else 0)
        keys, gone = [], []
        for k in self.overflow:
            if len(keys) >= room:
                break
            (keys if k in self.desired else gone).append(k)
        self.overflow.difference_update(gone)
        if keys:  # still in overflow until inserted (so a failed retry is not counted again)
            await self._write_flows(client, keys, probe=probe)

    # -------------------------------------------------------------- counters
    async def _poll(self) -> None:
        while not self._stop.is_set():
            try:
                await asyncio.wait_for(self._stop.wait(), self.cfg.counter_poll_s)
                return
            except asyncio.TimeoutError:
                pass
            if not self.ready.is_set() or self.client is None:
                continue
            try:
                await self.poll_once()
                if self.overflow:
                    async with self.lock:
                        if self.ready.is_set() and self.client is not None:
                            await self._retry_overflow(self.client, probe=True)
                if time.monotonic() - self._last_filter_clear >= self.cfg.unknown_flows.filter_clear_s:
                    self._last_filter_clear = time.monotonic()
                    await self.clear_miss_filter()
            except P4RTError as e:
                log.info("%s: counter poll failed: %s", self.sw.name, e)

    async def poll_once(self) -> dict[int, float]:
        """Read MfsEgress.queue_counter; update and return rho per configured port.

        ``self.rho`` is the whole port's utilisation (shown by mfsctl); ``on_load`` gets the
        utilisation per level, so the engine can give the policy the load that matters to it
        (MFS: the Stage-1/2 levels, docs/policy.md)."""
        client = self.client
        if client is None:
            return {}
        cells = await client.read_counter(self.schema.counter("MfsEgress.queue_counter").id)
        now = time.monotonic()
        per_level: dict[int, list[int]] = {}
        for port in self.sw.ports:
            per_level[port] = [cells.get(self.queue_index(port, lv), (0, 0))[1] for lv in range(8)]
        util: dict[int, list[float]] = {}
        if self._last_poll:
            dt = max(1e-6, now - self._last_poll)
            for port, now_bytes in per_level.items():
                prev = self._last_bytes.get(port)
                if prev is None or any(b < a for a, b in zip(prev, now_bytes)):
                    continue  # first sample, or counters reset (switch restart)
                bps = self.sw.ports[port].rate_bps * dt / 8
                util[port] = [(b - a) / bps for a, b in zip(prev, now_bytes)]
                self.rho[port] = min(0.999, sum(util[port]))
        self._last_bytes, self._last_poll = per_level, now
        for port, r in self.rho.items():
            self.metrics.gauge("port_rho", r, switch=self.sw.name, port=str(port))
        if self.on_load and util:
            self.on_load(self.sw.name, util)
        return dict(self.rho)

    async def read_queues(self) -> list[dict]:
        """Per configured port and level: packets, bytes, last queue depth and delay."""
        if self.client is None or not self.ready.is_set():
            raise P4RTError(f"{self.sw.name} queues", rpc_code.UNAVAILABLE, self.last_error or self.state)
        cnt = await self.client.read_counter(self.schema.counter("MfsEgress.queue_counter").id)
        regs = [self.schema.register("MfsEgress.queue_depth"), self.schema.register("MfsEgress.queue_delay")]
        depth, delay = [await self.client.read_register(r.id) for r in regs]
        if self.full_port_stats:  # revision 2: the registers keep the maximum until cleared: read-and-clear
            for r, vals in zip(regs, (depth, delay)):
                set_cells = sorted(i for i, v in vals.items() if v)
                if set_cells:
                    await self._zero_register(self.client, r, set_cells)
        out = []
        for port in sorted(self.sw.ports):
            for lv in range(8):
                i = self.queue_index(port, lv)
                pk, by = cnt.get(i, (0, 0))
                out.append({"switch": self.sw.name, "port": port, "level": lv, "packets": pk, "bytes": by,
                            "depth": depth.get(i, 0), "delay_us": delay.get(i, 0),
                            "rho": self.rho.get(port)})
        return out

    @property
    def full_port_stats(self) -> bool:
        """Revision 2 layout (docs/p4-api.md): per-port stats indexed by the full 9-bit port
        (4096 cells), depth/delay registers keeping the maximum until the controller clears them.
        Before: ``(port % 64) * 8 + level`` (512 cells), last value."""
        return self.schema.counter("MfsEgress.queue_counter").size >= 512 * 8

    def queue_index(self, port: int, level: int) -> int:
        return (port if self.full_port_stats else port % 64) * 8 + level

    def port_summary(self) -> str:
        """"edge 1,2 fabric 3": the role of each configured port (controller/placement.py)."""
        roles = port_roles(self.cfg, self.sw.name)
        parts = []
        for role in ("edge", "fabric"):
            ps = [str(p) for p, r in roles.items() if r == role]
            if ps:
                parts.append(f"{role} {','.join(ps)}")
        return " ".join(parts) or "-"

    def status(self) -> dict:
        return {"name": self.sw.name, "address": self.sw.address, "device_id": self.sw.device_id,
                "election_id": self.sw.election_id, "role": self.sw.role, "state": self.state,
                "primary": bool(self.client and self.client.is_primary), "last_error": self.last_error,
                "connects": self.connects, "resyncs": self.resyncs, "pipeline_pushes": self.pipeline_pushes,
                "flow_entries": len(self.installed), "flow_table_size": self.flow_table.size,
                "placement": self.cfg.placement, "ports": self.port_summary(),
                "idle_timeout_s": self.idle_ns / 1e9, "idle_timeouts": self.idle_timeouts,
                "overflow": len(self.overflow), "writes": self.client.writes if self.client else 0,
                "rho": {str(k): v for k, v in self.rho.items()}}

