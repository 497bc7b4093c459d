"""The MFS pipeline of p4src/ (docs/p4-api.md), executed in Python.

This is a model of *our* program, not a P4 interpreter: the parser, the
classification order, the forwarding tables, the egress DSCP rewrite, the
counters, registers and the digest are written out by hand from
``p4src/shared/*.p4`` and ``p4src/v1model/mfs.p4``; the data-plane cases in
``tests/dataplane/cases`` keep it in agreement with bmv2.

Table state is the P4Runtime view (entries as validated specs, keyed by their
match key); each table also keeps the lookup structure the packet path uses,
updated in the same write (nothing is cached that a write could make stale).

    p = Pipeline(P4Schema.load())
    p.write_table(UPDATE_INSERT, table_entry)      # raises EntityError(code, msg)
    p.process(in_port, frame) -> [(out_port, frame, level), ...]

Threading: writes (gRPC threads) hold ``self.lock``; the packet path reads the
dicts without it (single dict/list assignments are atomic under the GIL).
"""

from __future__ import annotations

import struct
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable

from finsy.proto import p4i, p4r, rpc_code

from mfs import header as mfsh
from mfs import levels
from mfs.p4info import P4InfoError, P4Schema, TableEntrySpec

Code = rpc_code.Code

FLOOD_GROUP = 1
DROP_PORT = 511  # v1model drop port
NUM_PORT_SLOTS = 64  # queue_counter index = (port % 64) * 8 + level

# class_counter indexes (docs/p4-api.md)
CLS_FLOW, CLS_STAGE_DEFAULT, CLS_PROPOSAL, CLS_MFS_BE, CLS_DSCP, CLS_BE, CLS_MALFORMED, CLS_REJECTED = range(8)

ETH_IPV4, ETH_ARP = 0x0800, 0x0806
PROTO_TCP, PROTO_UDP = 6, 17

# Initial default actions of the program (p4src/v1model/mfs.p4); P4Info does not carry them.
INITIAL_DEFAULTS: dict[str, tuple[str, dict[str, int]]] = {
    "MfsIngress.ipv4_lpm": ("NoAction", {}),
    "MfsIngress.l2_fwd": ("MfsIngress.flood", {}),
    "MfsIngress.mfs_flow": ("NoAction", {}),
    "MfsIngress.mfs_stage_default": ("NoAction", {}),
    "MfsIngress.mfs_trust": ("NoAction", {}),
    "MfsIngress.dscp_classify": ("NoAction", {}),
    "MfsIngress.classify_default": ("MfsIngress.set_level", {"level": levels.LOWEST_LEVEL}),
    "MfsEgress.dscp_rewrite": ("NoAction", {}),
    "MfsEgress.level_dscp": ("NoAction", {}),
}

_ETH = struct.Struct("!6s6sH")
_IPV4_ADDRS = struct.Struct("!II")
_MFS = struct.Struct("!BBBBIIHH")
_H = struct.Struct("!H")


class EntityError(Exception):
    """One P4Runtime entity could not be written/read; ``code`` is a google.rpc code."""

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code, self.message = code, message


@dataclass(slots=True)
class Entry:
    spec: TableEntrySpec
    action: str
    params: dict[str, int]
    idle_ns: int = 0  # P4Runtime idle_timeout_ns (tables with NOTIFY_CONTROL only)
    last_hit: float = 0.0  # time.monotonic() of the last hit (or of the write)
    notified: float = 0.0  # time.monotonic() of the last idle-timeout notification


def ipv4_checksum(hdr: bytes | bytearray | memoryview) -> int:
    """Internet checksum of an IPv4 header whose checksum field is zero."""
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _set_ipv4_checksum(buf: bytearray, off: int) -> None:
    # Like update_checksum in p4src: over the 20 bytes of the fixed header (options are payload there).
    buf[off + 10:off + 12] = b"\0\0"
    buf[off + 10:off + 12] = _H.pack(ipv4_checksum(buf[off:off + 20]))


class Pipeline:
    def __init__(self, schema: P4Schema, table_sizes: dict[str, int] | None = None,
                 on_digest: Callable[[int, tuple], None] | None = None):
        self.schema = schema
        self.lock = threading.RLock()
        self.on_digest = on_digest  # (digest_id, (stage, flow_id, request_id, src_addr, ingress_port))
        self.sizes = {}
        for name, tab in schema.tables.items():
            self.sizes[name] = tab.size
        for name, size in (table_sizes or {}).items():
            tab = schema.table(name)
            if not isinstance(size, int) or size < 0:
                raise ValueError(f"table_sizes[{name!r}]: {size!r} is not a non-negative integer")
            self.sizes[tab.name] = size
        missing = sorted(set(INITIAL_DEFAULTS) - set(schema.tables))
        if missing:
            raise P4InfoError(f"P4Info lacks tables of the MFS program: {', '.join(missing)}")
        self._digest_id = schema.digest("mfs_miss_t").id
        self.idle_tables = {t.preamble.id for t in schema.info.tables
                            if t.idle_timeout_behavior == p4i.Table.NOTIFY_CONTROL}
        self._cls_ctr = schema.counter("MfsIngress.class_counter")
        self._q_ctr = schema.counter("MfsEgress.queue_counter")
        self._q_depth = schema.register("MfsEgress.queue_depth")
        self._q_delay = schema.register("MfsEgress.queue_delay")
        self.reset()

    # ------------------------------------------------------------ state
    def reset(self) -> None:
        """Forget every entry, counter, register and group (switch reboot / new pipeline)."""
        with self.lock:
            self.entries: dict[str, dict[tuple, Entry]] = {name: {} for name in self.schema.tables}
            self.defaults: dict[str, Entry] = {}
            for name, (act, params) in INITIAL_DEFAULTS.items():
                self.defaults[name] = Entry(TableEntrySpec(table=name, action=act, params=dict(params), is_default=True),
                                            act, dict(params))
            self.counters: dict[int, tuple[list[int], list[int]]] = {
                c.id: ([0] * c.size, [0] * c.size) for c in self.schema.counters.values()}
            self.registers: dict[int, list[int]] = {r.id: [0] * r.size for r in self.schema.registers.values()}
            self.groups: dict[int, list[tuple[int, int]]] = {}  # group id -> [(port, instance)]
            self.digests_dropped = 0
            # lookup structures of the packet path
            self._lpm: dict[int, dict[int, Entry]] = {}  # prefix_len -> {masked addr: entry}
            self._lpm_lens: list[int] = []
            self._stage_ranges: list[tuple[int, int, int, int]] = []  # (stage, lo, hi, level), priority order
            self._refresh_defaults()

    def _refresh_defaults(self) -> None:
        d = self.defaults
        self._classify_default_level = d["MfsIngress.classify_default"].params.get("level", levels.LOWEST_LEVEL)
        self._dscp_rewrite_default = d["MfsEgress.dscp_rewrite"].action
        ld = d["MfsEgress.level_dscp"]
        self._level_dscp_default = ld.params["dscp"] if ld.action == "MfsEgress.set_dscp" else None
        self._l2_default = d["MfsIngress.l2_fwd"]
        self._lpm_default = d["MfsIngress.ipv4_lpm"]

    # ------------------------------------------------------------ table writes
    def _key(self, spec: TableEntrySpec) -> tuple:
        tab = self.schema.tables[spec.table]
        key = []
        for f in tab.fields.values():
            v = spec.match.get(f.name)
            if v is None:
                if f.match_type == "exact":
                    raise EntityError(Code.INVALID_ARGUMENT, f"table {tab.name}: exact match field {f.name} is missing")
                if f.match_type == "lpm":
                    v = (0, 0)
                elif f.match_type == "range":
                    v = (0, (1 << f.bitwidth) - 1)
                elif f.match_type == "ternary":
                    v = (0, 0)
            key.append(v)
        if tab.needs_priority:
            key.append(spec.priority)
        return tuple(key)

    def _validate(self, te: p4r.TableEntry) -> TableEntrySpec:
        try:
            spec = self.schema.describe_table_entry(te)
        except P4InfoError as e:
            raise EntityError(Code.INVALID_ARGUMENT, str(e)) from None
        tab = self.schema.tables[spec.table]
        for fm in te.match:
            f = tab.fields_by_id[fm.field_id]
            what = f"{tab.name}.{f.name}"
            if f.match_type == "lpm":
                v, plen = spec.match[f.name]
                if plen == 0:
                    raise EntityError(Code.INVALID_ARGUMENT, f"{what}: prefix length 0 must be omitted (don't care)")
                if v & ((1 << (f.bitwidth - plen)) - 1):
                    raise EntityError(Code.INVALID_ARGUMENT, f"{what}: value has bits set beyond the /{plen} prefix")
            elif f.match_type == "range":
                lo, hi = spec.match[f.name]
                if lo == 0 and hi == (1 << f.bitwidth) - 1:
                    raise EntityError(Code.INVALID_ARGUMENT, f"{what}: a full range must be omitted (don't care)")
            elif f.match_type == "ternary":
                v, m = spec.match[f.name]
                if m == 0:
                    raise EntityError(Code.INVALID_ARGUMENT, f"{what}: mask 0 must be omitted (don't care)")
                if v & ~m:
                    raise EntityError(Code.INVALID_ARGUMENT, f"{what}: value has bits outside the mask")
        if not te.is_default_action:
            if tab.needs_priority and te.priority <= 0:
                raise EntityError(Code.INVALID_ARGUMENT, f"table {tab.name} has ternary/range fields: "
                                                         f"entries need a priority > 0")
            if not tab.needs_priority and te.priority != 0:
                raise EntityError(Code.INVALID_ARGUMENT, f"table {tab.name} has only exact/lpm fields: "
                                                         f"priority must be 0, got {te.priority}")
            if not tab.fields:
                raise EntityError(Code.INVALID_ARGUMENT, f"table {tab.name} has no match fields: "
                                                         f"only its default entry can be modified")
        return spec

    def write_table(self, op: int, te: p4r.TableEntry) -> None:
        """Apply one P4Runtime update (p4r.Update.INSERT/MODIFY/DELETE) or raise EntityError."""
        spec = self._validate(te)
        name = spec.table
        tab = self.schema.tables[name]
        with self.lock:
            if te.is_default_action:
                if op != p4r.Update.MODIFY:
                    raise EntityError(Code.INVALID_ARGUMENT, f"table {name}: the default entry can only be modified")
                if tab.const_default_action_id:
                    raise EntityError(Code.PERMISSION_DENIED, f"table {name}: the default action is const")
                if spec.action is None:  # reset to the program's initial default
                    act, params = INITIAL_DEFAULTS[name]
                    spec = TableEntrySpec(table=name, action=act, params=dict(params), is_default=True)
                self.defaults[name] = Entry(spec, spec.action, spec.params)
                self._refresh_defaults()
                return
            key = self._key(spec)
            table = self.entries[name]
            if op == p4r.Update.INSERT:
                if key in table:
                    raise EntityError(Code.ALREADY_EXISTS, f"table {name}: an entry with this match key already exists")
                if spec.action is None:
                    raise EntityError(Code.INVALID_ARGUMENT, f"table {name}: INSERT needs an action")
                if len(table) >= self.sizes[name]:
                    raise EntityError(Code.RESOURCE_EXHAUSTED, f"table {name} is full ({self.sizes[name]} entries)")
                entry = Entry(spec, spec.action, spec.params, *self._idle(tab, te))
                table[key] = entry
                self._index_add(name, key, entry)
            elif op == p4r.Update.MODIFY:
                if key not in table:
                    raise EntityError(Code.NOT_FOUND, f"table {name}: no entry with this match key to modify")
                if spec.action is None:
                    raise EntityError(Code.INVALID_ARGUMENT, f"table {name}: MODIFY needs an action")
                entry = Entry(spec, spec.action, spec.params, *self._idle(tab, te))
                table[key] = entry
                self._index_add(name, key, entry)
            elif op == p4r.Update.DELETE:
                if key not in table:
                    raise EntityError(Code.NOT_FOUND, f"table {name}: no entry with this match key to delete")
                del table[key]
                self._index_del(name, key)
            else:
                raise EntityError(Code.INVALID_ARGUMENT, f"update type {op} is not INSERT, MODIFY or DELETE")

    def _idle(self, tab, te: p4r.TableEntry) -> tuple[int, float]:
        """(idle_ns, last_hit) of a written entry; a timeout on a table without one is refused."""
        if te.idle_timeout_ns and tab.id not in self.idle_tables:
            raise EntityError(Code.INVALID_ARGUMENT, f"table {tab.name} does not support idle timeout "
                                                     f"(P4Info idle_timeout_behavior is not NOTIFY_CONTROL)")
        return te.idle_timeout_ns, time.monotonic()

    def idle_entries(self, now: float) -> list[tuple[str, Entry]]:
        """Entries with an idle timeout not hit for that long, and not reported for that long
        either (an idle entry is reported again every idle_timeout_ns while idle)."""
        out = []
        with self.lock:
            for tid in self.idle_tables:
                name = self.schema.name_of(tid)
                for e in self.entries[name].values():
                    if e.idle_ns and now - max(e.last_hit, e.notified) >= e.idle_ns / 1e9:
                        e.notified = now
                        out.append((name, e))
        return out

    def _index_add(self, name: str, key: tuple, entry: Entry) -> None:
        if name == "MfsIngress.ipv4_lpm":
            (v, plen), = key
            d = self._lpm.get(plen)
            if d is None:
                d = self._lpm[plen] = {}
                self._lpm_lens = sorted(self._lpm, reverse=True)
            d[v] = entry
        elif name == "MfsIngress.mfs_stage_default":
            self._rebuild_stage_ranges()

    def _index_del(self, name: str, key: tuple) -> None:
        if name == "MfsIngress.ipv4_lpm":
            (v, plen), = key
            d = self._lpm[plen]
            del d[v]
            if not d:
                del self._lpm[plen]
                self._lpm_lens = sorted(self._lpm, reverse=True)
        elif name == "MfsIngress.mfs_stage_default":
            self._rebuild_stage_ranges()

    def _rebuild_stage_ranges(self) -> None:
        # P4Runtime: the larger priority wins.
        ents = sorted(self.entries["MfsIngress.mfs_stage_default"].items(), key=lambda kv: -kv[0][-1])
        self._stage_ranges = [(k[0], k[1][0], k[1][1], e.params["level"]) for k, e in ents]

    # ------------------------------------------------------------ reads
    def table_entries(self, table_id: int = 0) -> list[tuple[str, Entry]]:
        with self.lock:
            names = [self.schema.name_of(table_id)] if table_id else list(self.entries)
            return [(n, e) for n in names for e in self.entries[n].values()]

    def lookup_entry(self, te: p4r.TableEntry) -> Entry | None:
        spec = self._validate(te)
        with self.lock:
            if te.is_default_action:
                return self.defaults[spec.table]
            return self.entries[spec.table].get(self._key(spec))

    # ------------------------------------------------------------ multicast
    def write_group(self, op: int, group_id: int, replicas: list[tuple[int, int]]) -> None:
        if group_id <= 0:
            raise EntityError(Code.INVALID_ARGUMENT, "multicast_group_id must be > 0")
        seen = set()
        for port, inst in replicas:
            if (port, inst) in seen:
                raise EntityError(Code.INVALID_ARGUMENT, f"multicast group {group_id}: replica (port {port}, "
                                                         f"instance {inst}) given twice")
            if port >> 9:
                raise EntityError(Code.INVALID_ARGUMENT, f"multicast group {group_id}: port {port} does not fit in 9 bits")
            seen.add((port, inst))
        with self.lock:
            if op == p4r.Update.INSERT:
                if group_id in self.groups:
                    raise EntityError(Code.ALREADY_EXISTS, f"multicast group {group_id} already exists")
                self.groups[group_id] = list(replicas)
            elif op == p4r.Update.MODIFY:
                if group_id not in self.groups:
                    raise EntityError(Code.NOT_FOUND, f"multicast group {group_id} does not exist")
                self.groups[group_id] = list(replicas)
            elif op == p4r.Update.DELETE:
                if group_id not in self.groups:
                    raise EntityError(Code.NOT_FOUND, f"multicast group {group_id} does not exist")
                del self.groups[group_id]
            else:
                raise EntityError(Code.INVALID_ARGUMENT, f"update type {op} is not INSERT, MODIFY or DELETE")

    # ------------------------------------------------------------ counters / registers
    def counter(self, name: str) -> tuple[list[int], list[int]]:
        """(packets, bytes) lists of a counter, by name."""
        return self.counters[self.schema.counter(name).id]

    def register(self, name: str) -> list[int]:
        return self.registers[self.schema.register(name).id]

    # ------------------------------------------------------------ packet path
    def process(self, in_port: int, frame: bytes) -> list[tuple[int, bytes, int]]:
        """Ingress + replication + egress with an empty queue (no data plane attached)."""
        out = []
        for port, buf, level in self.ingress(in_port, frame):
            b = self.egress(port, buf, level, 0, 0)
            if b is not None:
                out.append((port, b, level))
        return out

    def ingress(self, in_port: int, frame: bytes) -> list[tuple[int, bytearray, int]]:
        """Parse, classify, forward, replicate. Returns the copies to enqueue: (port, frame, level)."""
        n = len(frame)
        if n < 14:
            return []
        buf = bytearray(frame)
        eth_type = (buf[12] << 8) | buf[13]
        ip = mfs_port = mfs_ok = False
        dscp = ttl = 0
        ihl = 5
        if eth_type == ETH_IPV4 and n >= 34:
            ip = True
            ihl = buf[14] & 0xF
            dscp = buf[15] >> 2
            ttl = buf[22]
            proto = buf[23]
            frag = ((buf[20] & 0x1F) << 8) | buf[21]
            if ihl == 5 and frag == 0 and proto == PROTO_UDP and n >= 42 and ((buf[36] << 8) | buf[37]) == mfsh.MFS_UDP_PORT:
                mfs_port = True
                udp_len = (buf[38] << 8) | buf[39]
                if udp_len >= 24 and n >= 58:
                    vf, stage, proposed, _r, flow_id, request_id, _tl, rli = _MFS.unpack_from(buf, 42)
                    mfs_ok = (vf >> 4) == mfsh.MFS_VERSION and stage in mfsh.VALID_STAGES

        # ---- classification (MfsClassify)
        cls2 = -1
        if mfs_ok:
            e = self.entries["MfsIngress.mfs_flow"].get((stage, flow_id))
            if e is not None:
                level, cls = e.params["level"], CLS_FLOW
                if e.idle_ns:
                    e.last_hit = time.monotonic()
            else:
                src = _IPV4_ADDRS.unpack_from(buf, 26)[0]
                self._digest(stage, flow_id, request_id, src, in_port)
                trusted = ceiling = None
                if vf & mfsh.FLAG_PROPOSED:
                    t = self.entries["MfsIngress.mfs_trust"].get((in_port, src))
                    if t is not None:
                        ceiling = t.params["ceiling"]
                        trusted = True
                    else:
                        cls2 = CLS_REJECTED
                for st, lo, hi, lvl in self._stage_ranges:
                    if st == stage and lo <= rli <= hi:
                        level, cls = lvl, CLS_STAGE_DEFAULT
                        break
                else:
                    if trusted:
                        level, cls = max(proposed, ceiling), CLS_PROPOSAL
                    else:
                        level, cls = self._classify_default_level, CLS_MFS_BE
        elif mfs_port:
            level, cls = self._classify_default_level, CLS_MALFORMED
        else:
            e = self.entries["MfsIngress.dscp_classify"].get((in_port, dscp)) if ip else None
            if e is not None:
                level, cls = e.params["level"], CLS_DSCP
            else:
                level, cls = self._classify_default_level, CLS_BE
        pk, by = self.counters[self._cls_ctr.id]
        pk[cls] += 1
        by[cls] += n
        if cls2 >= 0:
            pk[cls2] += 1
            by[cls2] += n
        if level > levels.LOWEST_LEVEL:
            level = levels.LOWEST_LEVEL

        # ---- forwarding
        e = None
        if ip:
            lpm = self._lpm
            dst = _IPV4_ADDRS.unpack_from(buf, 26)[1]
            for plen in self._lpm_lens:
                e = lpm[plen].get(dst & (0xFFFFFFFF ^ ((1 << (32 - plen)) - 1)))
                if e is not None:
                    break
            if e is None:
                e = self._lpm_default
            act = e.action
            if act == "MfsIngress.route":
                if ttl <= 1:
                    return []
                p = e.params
                buf[0:6] = p["dst_mac"].to_bytes(6, "big")
                buf[6:12] = p["src_mac"].to_bytes(6, "big")
                buf[22] = ttl - 1
                _set_ipv4_checksum(buf, 14)
                return [(p["port"], buf, level)]
            if act == "MfsIngress.drop":
                return []
        e = self.entries["MfsIngress.l2_fwd"].get((int.from_bytes(buf[0:6], "big"),)) or self._l2_default
        if e.action == "MfsIngress.l2_forward":
            return [(e.params["port"], buf, level)]
        if e.action == "MfsIngress.flood":
            reps = self.groups.get(FLOOD_GROUP, ())
            return [(port, bytearray(buf), level) for port, _inst in reps if port != in_port]
        return []  # NoAction: v1model drops a packet whose egress_spec was never set

    def egress(self, port: int, buf: bytearray, level: int, depth: int, delay_us: int) -> bytearray | None:
        """MfsEgress for one dequeued copy: DSCP rewrite, queue counter and registers."""
        if port == DROP_PORT:
            return None
        if len(buf) >= 34 and buf[12] == 0x08 and buf[13] == 0x00:
            e = self.entries["MfsEgress.dscp_rewrite"].get((port,))
            act = e.action if e is not None else self._dscp_rewrite_default
            new = None
            if act == "MfsEgress.rewrite_dscp":
                le = self.entries["MfsEgress.level_dscp"].get((level,))
                new = le.params["dscp"] if le is not None else self._level_dscp_default
            elif act == "MfsEgress.clear_dscp":
                new = 0
            if new is not None:
                buf[15] = (new << 2) | (buf[15] & 3)
                _set_ipv4_checksum(buf, 14)
        idx = (port % NUM_PORT_SLOTS) * levels.NUM_QUEUES + level
        pk, by = self.counters[self._q_ctr.id]
        pk[idx] += 1
        by[idx] += len(buf)
        self.registers[self._q_depth.id][idx] = depth & 0xFFFFFFFF
        self.registers[self._q_delay.id][idx] = delay_us & 0xFFFFFFFF
        return buf

    def _digest(self, stage: int, flow_id: int, request_id: int, src: int, in_port: int) -> None:
        cb = self.on_digest
        if cb is None:
            self.digests_dropped += 1
        else:
            cb(self._digest_id, (stage, flow_id, request_id, src, in_port))
