"""The MFS pipeline of p4src/ (docs/p4-api.md), executed in Python.

This is a model of *our* program, not a P4 interpreter: the parser (VLAN tags,
IPv4 options), the IPv4 sanity drops, the port mode, the router-MAC check,
the classification order, the forwarding tables, the unknown-flow filter, the
egress DSCP rewrite, the counters, registers, the digest and the flow table's
idle timeout are written out by hand from ``p4src/shared/*.p4`` and
``p4src/v1model/mfs.p4``; the data-plane cases in ``tests/dataplane/cases``
keep it in agreement with bmv2.

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
from mfs.p4info import CPU_PORT, P4InfoError, P4Schema, TableEntrySpec  # noqa: F401 - CPU_PORT re-exported

Code = rpc_code.Code

FLOOD_GROUP = 1
DROP_PORT = 511  # v1model drop port
CPU_OP_CLEAR_MISS_FILTER = 1  # packet_out op: miss_filter[index & 0xFFF] := 0
_CPU_OUT = struct.Struct("!BBH")  # packet_out header cpu_out_h: op, reserved, index
MISS_FILTER_SIZE = 4096

# class_counter indexes (docs/p4-api.md)
(CLS_FLOW, CLS_STAGE_DEFAULT, CLS_PROPOSAL, CLS_MFS_BE, CLS_DSCP, CLS_BE, CLS_MALFORMED, CLS_REJECTED,
 CLS_FABRIC_DSCP, CLS_FABRIC_BE, CLS_CONTROLLER_OP) = range(11)
# drop_counter indexes (docs/p4-api.md)
DROP_BAD_IPV4, DROP_IPV4_CHECKSUM, DROP_TTL_EXPIRED, DROP_ROUTE_DROP = range(4)

ETH_IPV4, ETH_ARP = 0x0800, 0x0806
ETH_VLAN_TPIDS = (0x8100, 0x88A8)
PROTO_TCP, PROTO_UDP = 6, 17

# Initial default actions of the program (p4src/v1model/mfs.p4); P4Info does not carry them.
INITIAL_DEFAULTS: dict[str, tuple[str, dict[str, int]]] = {
    "MfsIngress.port_mode": ("MfsIngress.edge_port", {}),
    "MfsIngress.router_mac": ("MfsIngress.routable", {}),
    "MfsIngress.dscp_trust": ("NoAction", {}),
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


def stat_index(port: int, level: int) -> int:
    """queue_counter / queue_depth / queue_delay index: the full 9-bit port * 8 + level."""
    return (port & 0x1FF) * levels.NUM_QUEUES + level


def filter_index(flow_id: int) -> int:
    """miss_filter cell of a flow id (docs/p4-api.md)."""
    return (flow_id ^ (flow_id >> 12) ^ (flow_id >> 24)) & 0xFFF


def ipv4_checksum(hdr: bytes | bytearray | memoryview) -> int:
    """Internet checksum of an IPv4 header whose checksum field is zero."""
    s = sum(struct.unpack(f"!{len(hdr) // 2}H", hdr))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return (~s) & 0xFFFF


def _set_ipv4_checksum(buf: bytearray, off: int, hlen: int) -> None:
    # Like update_checksum in p4src: over the whole header, options included.
    buf[off + 10:off + 12] = b"\0\0"
    buf[off + 10:off + 12] = _H.pack(ipv4_checksum(buf[off:off + hlen]))


def _l3_offset(buf: bytes | bytearray) -> tuple[int, int]:
    """(EtherType after up to two VLAN tags, its offset), like MfsHeaderParser."""
    n = len(buf)
    off = 12
    eth_type = (buf[12] << 8) | buf[13]
    for _ in range(2):
        if eth_type not in ETH_VLAN_TPIDS or n < off + 6:
            break
        off += 4
        eth_type = (buf[off] << 8) | buf[off + 1]
    if eth_type in ETH_VLAN_TPIDS and off == 20:
        return -1, off + 2  # a third tag: not parsed
    return eth_type, off + 2


class Pipeline:
    def __init__(self, schema: P4Schema, table_sizes: dict[str, int] | None = None,
                 on_digest: Callable[[int, tuple], None] | None = None):
        self.schema = schema
        self.lock = threading.RLock()
        # (digest_id, (stage, flow_id, request_id, src_addr, ingress_port, filter_index))
        self.on_digest = on_digest
        self.idle_tables = {t.preamble.id for t in schema.info.tables
                            if t.idle_timeout_behavior == p4i.Table.NOTIFY_CONTROL}
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
        self._cls_ctr = schema.counter("MfsIngress.class_counter")
        self._drop_ctr = schema.counter("MfsIngress.drop_counter")
        self._miss_filter = schema.register("MfsIngress.miss_filter")
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
        self._router_mac_default = d["MfsIngress.router_mac"].action

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
        """Parse, check, classify, forward, replicate. Returns the copies to enqueue: (port, frame, level)."""
        n = len(frame)
        if in_port == CPU_PORT:
            return self._controller_op(frame)
        if n < 14:
            return []
        buf = bytearray(frame)
        eth_type, ip_off = _l3_offset(buf)
        ip = mfs_port = mfs_ok = False
        dscp = ttl = hlen = 0
        drop = -1
        if eth_type == ETH_IPV4 and n >= ip_off + 20:
            ip = True
            vihl = buf[ip_off]
            ihl = vihl & 0xF
            hlen = ihl * 4
            dscp = buf[ip_off + 1] >> 2
            ttl = buf[ip_off + 8]
            if vihl >> 4 != 4 or ihl < 5:
                drop = DROP_BAD_IPV4
            elif n < ip_off + hlen or ipv4_checksum(buf[ip_off:ip_off + hlen]) != 0:
                drop = DROP_IPV4_CHECKSUM  # also options cut short (the parser fails, the sum is partial)
            else:
                proto = buf[ip_off + 9]
                frag = ((buf[ip_off + 6] & 0x1F) << 8) | buf[ip_off + 7]
                l4 = ip_off + hlen
                if (frag == 0 and proto == PROTO_UDP and n >= l4 + 8
                        and ((buf[l4 + 2] << 8) | buf[l4 + 3]) == mfsh.MFS_UDP_PORT):
                    mfs_port = True
                    udp_len = (buf[l4 + 4] << 8) | buf[l4 + 5]
                    if udp_len >= 24 and n >= l4 + 24:
                        vf, stage, proposed, _r, flow_id, request_id, _tl, rli = _MFS.unpack_from(buf, l4 + 8)
                        total_len = (buf[ip_off + 2] << 8) | buf[ip_off + 3]
                        mfs_ok = ((vf >> 4) == mfsh.MFS_VERSION and stage in mfsh.VALID_STAGES
                                  and total_len == (hlen + udp_len) & 0xFFFF)  # 16-bit sum, as in P4
        if drop >= 0:
            self._count_drop(drop, n)
            return []

        # ---- port mode (port_mode table; port metadata on TNA)
        pm = self.entries["MfsIngress.port_mode"].get((in_port,))
        fabric = (pm.action if pm is not None else "MfsIngress.edge_port") == "MfsIngress.fabric_port"

        # ---- classification (MfsClassify)
        cls2 = -1
        if fabric:
            e = self.entries["MfsIngress.dscp_trust"].get((dscp,)) if ip else None
            if e is not None:
                level, cls = e.params["level"], CLS_FABRIC_DSCP
            else:
                level, cls = self._classify_default_level, CLS_FABRIC_BE
        elif mfs_ok:
            src = _IPV4_ADDRS.unpack_from(buf, ip_off + 12)[0]
            e = self.entries["MfsIngress.mfs_flow"].get((stage, flow_id, in_port, src))
            if e is not None:
                level, cls = e.params["level"], CLS_FLOW
                if e.idle_ns:
                    e.last_hit = time.monotonic()
            else:
                fi = filter_index(flow_id)
                cells = self.registers[self._miss_filter.id]
                if cells[fi] == 0:
                    cells[fi] = 1
                    self._digest(stage, flow_id, request_id, src, in_port, fi)
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

        # ---- forwarding: route only frames addressed to the router (router_mac)
        if ip:
            rm = self.entries["MfsIngress.router_mac"].get((int.from_bytes(buf[0:6], "big"),))
            routable = (rm.action if rm is not None else self._router_mac_default) == "MfsIngress.routable"
        else:
            routable = False
        if routable:
            lpm = self._lpm
            dst = _IPV4_ADDRS.unpack_from(buf, ip_off + 12)[1]
            e = None
            for plen in self._lpm_lens:
                e = lpm[plen].get(dst & (0xFFFFFFFF ^ ((1 << (32 - plen)) - 1)))
                if e is not None:
                    break
            if e is None:
                e = self._lpm_default
            act = e.action
            if act == "MfsIngress.route":
                if ttl <= 1:
                    self._count_drop(DROP_TTL_EXPIRED, n)
                    return []
                p = e.params
                buf[0:6] = p["dst_mac"].to_bytes(6, "big")
                buf[6:12] = p["src_mac"].to_bytes(6, "big")
                buf[ip_off + 8] = ttl - 1
                _set_ipv4_checksum(buf, ip_off, hlen)
                return [(p["port"], buf, level)]
            if act == "MfsIngress.drop":
                self._count_drop(DROP_ROUTE_DROP, n)
                return []
        e = self.entries["MfsIngress.l2_fwd"].get((int.from_bytes(buf[0:6], "big"),)) or self._l2_default
        if e.action == "MfsIngress.l2_forward":
            return [(e.params["port"], buf, level)]
        if e.action == "MfsIngress.flood":
            reps = self.groups.get(FLOOD_GROUP, ())
            return [(port, bytearray(buf), level) for port, _inst in reps if port != in_port]
        return []  # NoAction: v1model drops a packet whose egress_spec was never set

    def egress(self, port: int, buf: bytearray, level: int, depth: int, delay_us: int) -> bytearray | None:
        """MfsEgress for one dequeued copy: DSCP rewrite, queue counter, max depth/delay registers."""
        if port == DROP_PORT:
            return None
        n = len(buf)
        if n >= 34:
            eth_type, off = _l3_offset(buf)
            if eth_type == ETH_IPV4 and n >= off + 20:
                e = self.entries["MfsEgress.dscp_rewrite"].get((port,))
                act = e.action if e is not None else self._dscp_rewrite_default
                new = None
                if act == "MfsEgress.rewrite_dscp":
                    le = self.entries["MfsEgress.level_dscp"].get((level,))
                    new = le.params["dscp"] if le is not None else self._level_dscp_default
                elif act == "MfsEgress.clear_dscp":
                    new = 0
                if new is not None:
                    buf[off + 1] = (new << 2) | (buf[off + 1] & 3)
                    _set_ipv4_checksum(buf, off, (buf[off] & 0xF) * 4)
        idx = stat_index(port, level)
        pk, by = self.counters[self._q_ctr.id]
        pk[idx] += 1
        by[idx] += n
        d = self.registers[self._q_depth.id]
        if depth > d[idx]:
            d[idx] = depth & 0xFFFFFFFF
        d = self.registers[self._q_delay.id]
        if delay_us > d[idx]:
            d[idx] = delay_us & 0xFFFFFFFF
        return buf

    def _controller_op(self, frame: bytes) -> list:
        """A packet from the CPU port (a P4Runtime PacketOut, packet_out header first): apply the
        operation, count it in class_counter[10], drop the packet. Anything else from the CPU port
        (too short for the header, unknown op) is counted and dropped too."""
        if len(frame) >= _CPU_OUT.size:
            op, _reserved, index = _CPU_OUT.unpack_from(frame)
            if op == CPU_OP_CLEAR_MISS_FILTER:
                self.registers[self._miss_filter.id][index & (MISS_FILTER_SIZE - 1)] = 0
        pk, by = self.counters[self._cls_ctr.id]
        pk[CLS_CONTROLLER_OP] += 1
        by[CLS_CONTROLLER_OP] += len(frame)
        return []

    def _count_drop(self, reason: int, nbytes: int) -> None:
        pk, by = self.counters[self._drop_ctr.id]
        pk[reason] += 1
        by[reason] += nbytes

    def _digest(self, stage: int, flow_id: int, request_id: int, src: int, in_port: int, fi: int) -> None:
        cb = self.on_digest
        if cb is None:
            self.digests_dropped += 1
        else:
            cb(self._digest_id, (stage, flow_id, request_id, src, in_port, fi))
