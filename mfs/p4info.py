"""P4Info: names in, ids out — the one schema helper used by the controller, the
embedded switch and the data-plane tests.

    schema = P4Schema.load("p4src/build/mfs.p4info.txtpb")
    te = schema.table_entry("MfsIngress.mfs_flow", {"stage": 3, "flow_id": 42, "ingress_port": 1,
                                                    "src_addr": "10.0.1.1"}, "MfsIngress.set_level", {"level": 1})
    schema.describe_table_entry(te)   # -> TableEntrySpec with names and ints

Names may be given in full or as a unique suffix (``mfs_flow``). Unknown names
raise :class:`P4InfoError` naming what was asked and what exists. Values are
encoded in P4Runtime's canonical form (shortest big-endian byte string, at
least one byte) and checked against the P4Info bit width.
"""

from __future__ import annotations

import difflib
import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from finsy.proto import p4i, p4r
from google.protobuf import text_format

DEFAULT_P4INFO = Path(__file__).resolve().parents[1] / "p4src" / "build" / "mfs.p4info.txtpb"
# PacketOut enters the v1model program (bmv2 --cpu-port, the embedded switch) on this port:
# CPU_PORT of p4src/shared/mfs_constants.p4. Not a data port (those are 1..509).
CPU_PORT = 510


_MATCH_TYPES = {v: k.lower() for k, v in p4i.MatchField.MatchType.items()}  # EXACT -> "exact", ...


class P4InfoError(ValueError):
    """An entity, field or value does not fit the P4Info. The message names it."""


# ---------------------------------------------------------------- values
def encode(value: Any, bitwidth: int, what: str = "value") -> bytes:
    """Python value -> canonical P4Runtime bytes. Accepts int, bytes, 'a.b.c.d', 'aa:bb:..', '0x..'."""
    if isinstance(value, bool):
        value = int(value)
    if isinstance(value, (bytes, bytearray)):
        n = int.from_bytes(value, "big")
    elif isinstance(value, int):
        n = value
    elif isinstance(value, str):
        n = _parse_str(value, what)
    else:
        raise P4InfoError(f"{what}: cannot encode {type(value).__name__} {value!r}")
    if n < 0 or n >> bitwidth:
        raise P4InfoError(f"{what}: {value!r} does not fit in {bitwidth} bits")
    return n.to_bytes(max(1, (n.bit_length() + 7) // 8), "big")


def _parse_str(s: str, what: str) -> int:
    try:
        if s.count(".") == 3:
            return int(ipaddress.IPv4Address(s))
        if s.count(":") == 5 and len(s) == 17:
            return int(s.replace(":", ""), 16)
        if s.lower().startswith("0x"):
            return int(s, 16)
        return int(s, 10)
    except ValueError:
        raise P4InfoError(f"{what}: cannot parse {s!r} (expected an integer, 0x-hex, IPv4 or MAC)") from None


def decode(data: bytes, bitwidth: int | None = None, what: str = "value") -> int:
    """P4Runtime bytes -> int; checks the width (non-canonical leading zeros are accepted)."""
    if not data:
        raise P4InfoError(f"{what}: empty byte string (P4Runtime values have at least one byte)")
    n = int.from_bytes(data, "big")
    if bitwidth is not None and n >> bitwidth:
        shown = data.hex() if len(data) <= 16 else f"{data[:8].hex()}...({len(data)} bytes)"
        raise P4InfoError(f"{what}: value 0x{shown} does not fit in {bitwidth} bits")
    return n


# ---------------------------------------------------------------- schema
@dataclass(frozen=True)
class MatchField:
    id: int
    name: str
    bitwidth: int
    match_type: str  # exact | lpm | ternary | range | optional


@dataclass(frozen=True)
class Param:
    id: int
    name: str
    bitwidth: int


@dataclass(frozen=True)
class Action:
    id: int
    name: str
    params: dict[str, Param]
    params_by_id: dict[int, Param]


@dataclass(frozen=True)
class Table:
    id: int
    name: str
    fields: dict[str, MatchField]
    fields_by_id: dict[int, MatchField]
    action_ids: frozenset[int]
    default_only_ids: frozenset[int]  # actions allowed only as default
    table_only_ids: frozenset[int]  # actions not allowed as default
    size: int
    const_default_action_id: int
    needs_priority: bool  # has ternary/range/optional fields


@dataclass(frozen=True)
class Indexed:
    """A counter, meter or register."""

    id: int
    name: str
    size: int
    bitwidth: int = 0  # registers


@dataclass
class TableEntrySpec:
    """A table entry in names and ints (what describe_table_entry returns)."""

    table: str
    match: dict[str, Any] = field(default_factory=dict)  # exact: int; lpm: (v, plen); ternary: (v, mask); range: (lo, hi)
    action: str | None = None
    params: dict[str, int] = field(default_factory=dict)
    priority: int = 0
    is_default: bool = False


class P4Schema:
    def __init__(self, info: p4i.P4Info):
        self.info = info
        self.tables: dict[str, Table] = {}
        self.actions: dict[str, Action] = {}
        self.counters: dict[str, Indexed] = {}
        self.registers: dict[str, Indexed] = {}
        self.digests: dict[str, Indexed] = {}
        self.by_id: dict[int, Any] = {}
        for a in info.actions:
            ps = {p.name: Param(p.id, p.name, p.bitwidth) for p in a.params}
            act = Action(a.preamble.id, a.preamble.name, ps, {p.id: p for p in ps.values()})
            self._add(self.actions, act)
        for t in info.tables:
            fs = {f.name: MatchField(f.id, f.name, f.bitwidth, _MATCH_TYPES.get(f.match_type, "other"))
                  for f in t.match_fields}
            scope = {r.id: r.scope for r in t.action_refs}
            tab = Table(
                id=t.preamble.id,
                name=t.preamble.name,
                fields=fs,
                fields_by_id={f.id: f for f in fs.values()},
                action_ids=frozenset(scope),
                default_only_ids=frozenset(i for i, s in scope.items() if s == p4i.ActionRef.DEFAULT_ONLY),
                table_only_ids=frozenset(i for i, s in scope.items() if s == p4i.ActionRef.TABLE_ONLY),
                size=t.size,
                const_default_action_id=t.const_default_action_id,
                needs_priority=any(f.match_type in ("ternary", "range", "optional") for f in fs.values()),
            )
            self._add(self.tables, tab)
        for c in info.counters:
            self._add(self.counters, Indexed(c.preamble.id, c.preamble.name, c.size))
        for r in info.registers:
            bw = r.type_spec.bitstring.bit.bitwidth if r.type_spec.HasField("bitstring") else 0
            self._add(self.registers, Indexed(r.preamble.id, r.preamble.name, r.size, bw))
        for d in info.digests:
            self._add(self.digests, Indexed(d.preamble.id, d.preamble.name, 0))
        # controller header "packet_out": [(id, name, bitwidth)] in header order
        self.packet_out_fields: list[tuple[int, str, int]] = []
        for cpm in info.controller_packet_metadata:
            if cpm.preamble.name == "packet_out":
                self.packet_out_fields = [(m.id, m.name, m.bitwidth) for m in cpm.metadata]

    def _add(self, registry: dict, obj) -> None:
        registry[obj.name] = obj
        self.by_id[obj.id] = obj

    @classmethod
    def load(cls, path: str | Path = DEFAULT_P4INFO) -> "P4Schema":
        p = Path(path)
        try:
            data = p.read_bytes()
        except OSError as e:
            raise P4InfoError(f"{p}: cannot read P4Info: {e.strerror}") from None
        info = p4i.P4Info()
        try:
            if p.suffix in (".txt", ".txtpb", ".pbtxt") or data[:1].isalpha() or data[:1] == b"#":
                text_format.Parse(data.decode(), info)
            else:
                info.ParseFromString(data)
        except Exception as e:  # protobuf raises several types
            raise P4InfoError(f"{p}: not a valid P4Info: {e}") from None
        return cls(info)

    # ----- lookup by name (full or unique suffix)
    def _find(self, registry: dict, kind: str, name: str):
        if name in registry:
            return registry[name]
        hits = [v for k, v in registry.items() if k.endswith("." + name)]
        if len(hits) == 1:
            return hits[0]
        if len(hits) > 1:
            raise P4InfoError(f"{kind} name {name!r} is ambiguous: {', '.join(h.name for h in hits)}")
        close = difflib.get_close_matches(name, list(registry), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else f"; known: {', '.join(sorted(registry)) or '(none)'}"
        raise P4InfoError(f"unknown {kind} {name!r}{hint}")

    def table(self, name: str) -> Table:
        return self._find(self.tables, "table", name)

    def action(self, name: str) -> Action:
        return self._find(self.actions, "action", name)

    def counter(self, name: str) -> Indexed:
        return self._find(self.counters, "counter", name)

    def register(self, name: str) -> Indexed:
        return self._find(self.registers, "register", name)

    def digest(self, name: str) -> Indexed:
        return self._find(self.digests, "digest", name)

    def name_of(self, id_: int) -> str:
        obj = self.by_id.get(id_)
        if obj is None:
            raise P4InfoError(f"no P4Info entity has id {id_} (0x{id_:08x})")
        return obj.name

    # ----- PacketOut (controller_packet_metadata "packet_out", docs/p4-api.md)
    def packet_out(self, values: dict[str, Any], payload: bytes = b"") -> p4r.PacketOut:
        """A PacketOut whose packet_out header fields are ``values`` (every field, by name)."""
        if not self.packet_out_fields:
            raise P4InfoError("the P4Info has no controller_packet_metadata 'packet_out' (no PacketOut header)")
        names = [n for _i, n, _w in self.packet_out_fields]
        missing, extra = sorted(set(names) - set(values)), sorted(set(values) - set(names))
        if missing or extra:
            raise P4InfoError(f"packet_out: missing fields {missing} / unknown fields {extra} (fields: {names})")
        po = p4r.PacketOut(payload=bytes(payload))
        for mid, name, width in self.packet_out_fields:
            po.metadata.add(metadata_id=mid, value=encode(values[name], width, f"packet_out.{name}"))
        return po

    def packet_out_frame(self, po: p4r.PacketOut) -> bytes:
        """What a P4Runtime server injects on the CPU port for ``po``: the packet_out header (its
        fields packed in P4Info order, big-endian, like PI does) followed by the payload.
        P4InfoError names an unknown, repeated, missing or too wide field."""
        if not self.packet_out_fields:
            raise P4InfoError("the P4Info has no controller_packet_metadata 'packet_out' (no PacketOut header)")
        by_id = {mid: (name, width) for mid, name, width in self.packet_out_fields}
        got: dict[int, int] = {}
        for m in po.metadata:
            if m.metadata_id not in by_id:
                raise P4InfoError(f"packet_out has no metadata id {m.metadata_id} (ids: {sorted(by_id)})")
            if m.metadata_id in got:
                raise P4InfoError(f"packet_out metadata {by_id[m.metadata_id][0]} given twice")
            name, width = by_id[m.metadata_id]
            got[m.metadata_id] = decode(m.value, width, f"packet_out.{name}")
        missing = [name for mid, (name, _w) in by_id.items() if mid not in got]
        if missing:
            raise P4InfoError(f"packet_out metadata missing: {', '.join(missing)}")
        bits = total = 0
        for mid, _name, width in self.packet_out_fields:
            bits, total = (bits << width) | got[mid], total + width
        if total % 8:
            raise P4InfoError(f"packet_out header is {total} bits, not whole bytes")
        return bits.to_bytes(total // 8, "big") + po.payload

    # ----- building messages
    def action_msg(self, action: str, params: dict[str, Any] | None = None) -> p4r.Action:
        act = self.action(action)
        params = dict(params or {})
        missing = sorted(set(act.params) - set(params))
        extra = sorted(set(params) - set(act.params))
        if missing or extra:
            raise P4InfoError(f"action {act.name}: missing params {missing} / unknown params {extra} "
                              f"(expects {sorted(act.params)})")
        msg = p4r.Action(action_id=act.id)
        for pname, p in act.params.items():
            msg.params.add(param_id=p.id, value=encode(params[pname], p.bitwidth, f"{act.name}.{pname}"))
        return msg

    def table_entry(self, table: str, match: dict[str, Any] | None = None, action: str | None = None,
                    params: dict[str, Any] | None = None, priority: int = 0, default: bool = False) -> p4r.TableEntry:
        tab = self.table(table)
        te = p4r.TableEntry(table_id=tab.id, is_default_action=default)
        for fname, value in (match or {}).items():
            if fname not in tab.fields:
                raise P4InfoError(f"table {tab.name} has no match field {fname!r} (fields: {', '.join(tab.fields)})")
            te.match.append(self._field_match(tab, tab.fields[fname], value))
        if action is not None:
            act = self.action(action)
            if act.id not in tab.action_ids:
                raise P4InfoError(f"action {act.name} is not an action of table {tab.name}")
            te.action.action.CopyFrom(self.action_msg(action, params))
        if tab.needs_priority and not default:
            if priority <= 0:
                raise P4InfoError(f"table {tab.name} has ternary/range fields: entries need a priority > 0")
            te.priority = priority
        return te

    def _field_match(self, tab: Table, f: MatchField, value: Any) -> p4r.FieldMatch:
        what = f"{tab.name}.{f.name}"
        fm = p4r.FieldMatch(field_id=f.id)
        if f.match_type == "exact":
            fm.exact.value = encode(value, f.bitwidth, what)
        elif f.match_type == "optional":
            fm.optional.value = encode(value, f.bitwidth, what)
        elif f.match_type == "lpm":
            v, plen = _pair(value, (f.bitwidth,), what, "(value, prefix_len)")
            if isinstance(plen, str) and plen.strip().isdigit():
                plen = int(plen)
            if isinstance(plen, bool) or not isinstance(plen, int):
                raise P4InfoError(f"{what}: prefix length {plen!r} is not an integer")
            if not 0 <= plen <= f.bitwidth:
                raise P4InfoError(f"{what}: prefix length {plen} not in 0..{f.bitwidth}")
            n = decode(encode(v, f.bitwidth, what))
            n &= ((1 << f.bitwidth) - 1) ^ ((1 << (f.bitwidth - int(plen))) - 1)  # P4Runtime: masked-off bits must be 0
            fm.lpm.value, fm.lpm.prefix_len = encode(n, f.bitwidth, what), int(plen)
        elif f.match_type == "ternary":
            v, m = _pair(value, None, what, "(value, mask)")
            mask = decode(encode(m, f.bitwidth, what))
            fm.ternary.value = encode(decode(encode(v, f.bitwidth, what)) & mask, f.bitwidth, what)
            fm.ternary.mask = encode(mask, f.bitwidth, what)
        elif f.match_type == "range":
            lo, hi = (value["low"], value["high"]) if isinstance(value, dict) else _pair(value, None, what, "(low, high)")
            if decode(encode(lo, f.bitwidth, what)) > decode(encode(hi, f.bitwidth, what)):
                raise P4InfoError(f"{what}: range low {lo} > high {hi}")
            fm.range.low, fm.range.high = encode(lo, f.bitwidth, what), encode(hi, f.bitwidth, what)
        else:
            raise P4InfoError(f"{what}: unsupported match type {f.match_type}")
        return fm

    # ----- reading messages back (used by the embedded switch to validate writes)
    def describe_table_entry(self, te: p4r.TableEntry) -> TableEntrySpec:
        """Validate a TableEntry against the P4Info; P4InfoError names the first problem."""
        tab = self.by_id.get(te.table_id)
        if not isinstance(tab, Table):
            raise P4InfoError(f"unknown table id {te.table_id}")
        spec = TableEntrySpec(table=tab.name, priority=te.priority, is_default=te.is_default_action)
        seen = set()
        for fm in te.match:
            f = tab.fields_by_id.get(fm.field_id)
            if f is None:
                raise P4InfoError(f"table {tab.name}: unknown match field id {fm.field_id}")
            if fm.field_id in seen:
                raise P4InfoError(f"table {tab.name}: match field {f.name} given twice")
            seen.add(fm.field_id)
            kind = fm.WhichOneof("field_match_type")
            if kind != f.match_type:
                raise P4InfoError(f"table {tab.name}: field {f.name} is {f.match_type}, got {kind}")
            what = f"{tab.name}.{f.name}"
            if kind in ("exact", "optional"):
                spec.match[f.name] = decode(getattr(fm, kind).value, f.bitwidth, what)
            elif kind == "lpm":
                if not 0 <= fm.lpm.prefix_len <= f.bitwidth:
                    raise P4InfoError(f"{what}: prefix length {fm.lpm.prefix_len} not in 0..{f.bitwidth}")
                spec.match[f.name] = (decode(fm.lpm.value, f.bitwidth, what), fm.lpm.prefix_len)
            elif kind == "ternary":
                spec.match[f.name] = (decode(fm.ternary.value, f.bitwidth, what), decode(fm.ternary.mask, f.bitwidth, what))
            elif kind == "range":
                lo, hi = decode(fm.range.low, f.bitwidth, what), decode(fm.range.high, f.bitwidth, what)
                if lo > hi:
                    raise P4InfoError(f"{what}: range low {lo} > high {hi}")
                spec.match[f.name] = (lo, hi)
        if te.is_default_action and te.match:
            raise P4InfoError(f"table {tab.name}: a default entry has no match fields")
        if te.HasField("action"):
            which = te.action.WhichOneof("type")
            if which != "action":
                raise P4InfoError(f"table {tab.name}: only direct actions are supported, got {which}")
            a = te.action.action
            act = self.by_id.get(a.action_id)
            if not isinstance(act, Action):
                raise P4InfoError(f"unknown action id {a.action_id}")
            if act.id not in tab.action_ids:
                raise P4InfoError(f"action {act.name} is not an action of table {tab.name}")
            if te.is_default_action and act.id in tab.table_only_ids:
                raise P4InfoError(f"action {act.name} cannot be the default action of {tab.name}")
            if not te.is_default_action and act.id in tab.default_only_ids:
                raise P4InfoError(f"action {act.name} can only be the default action of {tab.name}")
            spec.action = act.name
            for p in a.params:
                prm = act.params_by_id.get(p.param_id)
                if prm is None:
                    raise P4InfoError(f"action {act.name}: unknown param id {p.param_id}")
                if prm.name in spec.params:
                    raise P4InfoError(f"action {act.name}: param {prm.name} given twice")
                spec.params[prm.name] = decode(p.value, prm.bitwidth, f"{act.name}.{prm.name}")
            missing = sorted(set(act.params) - set(spec.params))
            if missing:
                raise P4InfoError(f"action {act.name}: missing params {missing}")
        return spec


def _pair(value, _unused, what: str, shape: str):
    if isinstance(value, str) and "/" in value:
        v, plen = value.split("/", 1)
        if not plen.strip().isdigit():
            raise P4InfoError(f"{what}: {value!r}: prefix length {plen!r} is not an integer")
        return v, int(plen)
    if isinstance(value, (list, tuple)) and len(value) == 2:
        return value[0], value[1]
    raise P4InfoError(f"{what}: expected {shape}, got {value!r}")


def bmv2_json_mismatch(json_path: str | Path, schema: "P4Schema") -> str | None:
    """Why a bmv2 JSON was not compiled from the program this P4Info describes (a table,
    counter or register missing, or a table with other keys), or None. The two are committed
    side by side (p4src/build); they disagree when one was regenerated without the other."""
    import json

    prog = json.loads(Path(json_path).read_text())
    tables = {t["name"]: t for p in prog.get("pipelines", []) for t in p.get("tables", [])}
    have = {"counter": {c["name"] for c in prog.get("counter_arrays", [])},
            "register": {r["name"] for r in prog.get("register_arrays", [])}}
    for t in schema.tables.values():
        jt = tables.get(t.name)
        if jt is None:
            return f"{Path(json_path).name} has no table {t.name}: it is older than the P4Info (run `make p4`)"
        if len(jt.get("key", [])) != len(t.fields):
            return (f"{Path(json_path).name}: table {t.name} has {len(jt.get('key', []))} keys, the P4Info "
                    f"{len(t.fields)} (run `make p4`)")
    for kind, items in (("counter", schema.counters), ("register", schema.registers)):
        for name in items:
            if name not in have[kind]:
                return f"{Path(json_path).name} has no {kind} {name}: it is older than the P4Info (run `make p4`)"
    return None


def bmv2_unavailable(json_path: str | Path, p4info_path: str | Path = DEFAULT_P4INFO) -> str | None:
    """Why the bmv2 target cannot run the program at ``json_path`` for ``p4info_path``, or None:
    simple_switch_grpc missing, the JSON not built, or the JSON compiled from another program
    than the P4Info describes (one regenerated without the other: `make p4`, needs p4c)."""
    from mfs.tools import find_tool, missing_reason

    if not find_tool("simple_switch_grpc"):
        return missing_reason("simple_switch_grpc")
    if not Path(json_path).exists():
        return f"{Path(json_path).name} is not built (run `make p4`; needs p4c)"
    stale = bmv2_json_mismatch(json_path, P4Schema.load(p4info_path))
    return f"{stale}; needs p4c" if stale else None
