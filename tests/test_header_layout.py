"""The P4 constants/header, mfs/header.py, mfs/levels.py, the committed P4Info,
the @id/@name annotations of the P4 source and docs/p4-api.md all agree."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from mfs import header as mfsh
from mfs import levels

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT / "p4src" / "shared"
P4INFO = ROOT / "p4src" / "build" / "mfs.p4info.txtpb"
API_DOC = ROOT / "docs" / "p4-api.md"
P4_SOURCES = [SHARED / "classify.p4", ROOT / "p4src" / "v1model" / "mfs.p4", ROOT / "p4src" / "tna" / "mfs.p4"]


def _strip_comments(text: str) -> str:
    return re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)


def p4_constants() -> dict[str, int]:
    text = _strip_comments((SHARED / "mfs_constants.p4").read_text())
    out = {}
    for m in re.finditer(r"const\s+bit<\d+>\s+(\w+)\s*=\s*(0x[0-9a-fA-F]+|\d+)\s*;", text):
        out[m.group(1)] = int(m.group(2), 0)
    for m in re.finditer(r"#define\s+(\w+)\s+(0x[0-9a-fA-F]+|\d+)\s*$", text, flags=re.M):
        out[m.group(1)] = int(m.group(2), 0)
    return out


def p4_header_fields(name: str) -> list[tuple[str, int]]:
    text = _strip_comments((SHARED / "headers.p4").read_text())
    m = re.search(r"header\s+" + name + r"\s*\{(.*?)\}", text, flags=re.S)
    assert m, f"header {name} not found in headers.p4"
    return [(f, int(w)) for w, f in re.findall(r"bit<(\d+)>\s+(\w+)\s*;", m.group(1))]


def test_mfs_header_constants():
    c = p4_constants()
    assert c["MFS_UDP_PORT"] == mfsh.MFS_UDP_PORT
    assert c["MFS_HEADER_LEN"] == mfsh.MFS_HEADER_LEN
    assert c["MFS_VERSION"] == mfsh.MFS_VERSION
    assert c["MFS_FLAG_PROPOSED"] == mfsh.FLAG_PROPOSED
    assert c["MFS_FLAG_LAST"] == mfsh.FLAG_LAST
    assert c["MFS_FLAG_MASK"] == mfsh.FLAG_MASK
    assert (c["MFS_STAGE_KV_REUSE"], c["MFS_STAGE_COLLECTIVE"], c["MFS_STAGE_P2D"]) == mfsh.VALID_STAGES
    assert c["MFS_RLI_UNKNOWN"] == mfsh.RLI_UNKNOWN


def test_levels_constants():
    c = p4_constants()
    assert c["NUM_QUEUES"] == levels.NUM_QUEUES
    assert c["LOWEST_LEVEL"] == levels.LOWEST_LEVEL
    assert c["CLASS_COUNTER_SIZE"] == 16
    assert c["DROP_COUNTER_SIZE"] == 8
    assert c["QUEUE_STATS_SIZE"] == c["STAT_PORTS"] * levels.NUM_QUEUES


def test_mfs_header_layout_matches_python_pack():
    fields = p4_header_fields("mfs_h")
    assert [f for f, _ in fields] == ["ver", "flags", "stage", "proposed", "reserved",
                                      "flow_id", "request_id", "target_layer", "rli"]
    assert sum(w for _, w in fields) == 8 * mfsh.MFS_HEADER_LEN
    # pack a header with distinct values and slice it with the P4 widths
    h = mfsh.MfsHeader(stage=3, flow_id=0xA1B2C3D4, request_id=0x01020304, target_layer=0x0506,
                       rli=0x0708, proposed=0x2A, last=True)
    raw = int.from_bytes(h.pack(), "big")
    got, pos = {}, 8 * mfsh.MFS_HEADER_LEN
    for f, w in fields:
        pos -= w
        got[f] = (raw >> pos) & ((1 << w) - 1)
    assert got == {"ver": 1, "flags": mfsh.FLAG_PROPOSED | mfsh.FLAG_LAST, "stage": 3, "proposed": 0x2A,
                   "reserved": 0, "flow_id": 0xA1B2C3D4, "request_id": 0x01020304,
                   "target_layer": 0x0506, "rli": 0x0708}


def test_digest_struct_matches_api():
    text = _strip_comments((SHARED / "headers.p4").read_text())
    m = re.search(r"struct\s+mfs_miss_t\s*\{(.*?)\}", text, flags=re.S)
    body = m.group(1).replace("port_t", "bit<9>")
    assert re.findall(r"bit<(\d+)>\s+(\w+)", body) == [("8", "stage"), ("32", "flow_id"), ("32", "request_id"),
                                                       ("32", "src_addr"), ("9", "ingress_port"),
                                                       ("16", "filter_index")]


# ---------------------------------------------------------------- P4Info vs docs/p4-api.md
def p4info() -> p4i.P4Info:
    return text_format.Parse(P4INFO.read_text(), p4i.P4Info())


def _doc_tables() -> dict[str, dict]:
    """Parse the '| table | keys | actions | size | default |' markdown tables."""
    tables = {}
    for line in API_DOC.read_text().splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 5 or not cells[0].startswith("`Mfs"):
            continue
        name = cells[0].strip("`")
        keys = [(n, t, int(b)) for n, t, b in re.findall(r"`(\w+)`: (\w+) (\d+)", cells[1])]
        actions = {}
        for a, params in re.findall(r"`(Mfs\w+\.\w+|NoAction)(?:\(([^)]*)\))?`", cells[2]):
            actions[a] = [(p.split(":")[0].strip(), int(p.split(":")[1])) for p in params.split(",") if p.strip()]
        tables[name] = {"keys": keys, "actions": actions, "size": int(cells[3]), "default": cells[4]}
    return tables


def test_doc_parser_sees_every_table():
    assert len(_doc_tables()) == 12


@pytest.mark.parametrize("name", sorted(_doc_tables()))
def test_p4info_table_matches_doc(name):
    doc = _doc_tables()[name]
    info = p4info()
    actions = {a.preamble.id: a for a in info.actions}
    (tab,) = [t for t in info.tables if t.preamble.name == name]
    assert [(f.name, p4i.MatchField.MatchType.Name(f.match_type).lower(), f.bitwidth)
            for f in tab.match_fields] == doc["keys"]
    assert tab.size == doc["size"]
    table_actions = {actions[r.id].preamble.name: actions[r.id] for r in tab.action_refs}
    for a, params in doc["actions"].items():
        assert a in table_actions, f"{name}: action {a} missing"
        if params:
            assert [(p.name, p.bitwidth) for p in table_actions[a].params] == params
    # a const default is declared as such in the doc ("`action`, const"), and is that action
    if ", const" in doc["default"]:
        want = doc["default"].split("`")[1]
        assert tab.const_default_action_id, f"{name}: the doc says the default is const"
        assert actions[tab.const_default_action_id].preamble.name == want
    else:
        assert not tab.const_default_action_id, f"{name}: const default not declared in docs/p4-api.md"
    # the flow table ages (idle timeout), nothing else does
    assert (tab.idle_timeout_behavior == p4i.Table.NOTIFY_CONTROL) == ("idle timeout" in doc["default"])
    # NoAction is only ever a default for tables whose doc says "NoAction" as default
    for r in tab.action_refs:
        if r.scope == p4i.ActionRef.DEFAULT_ONLY:
            assert actions[r.id].preamble.name == "NoAction" and doc["default"].startswith("`NoAction`")


def test_set_level_and_other_action_params():
    acts = {a.preamble.name: [(p.name, p.bitwidth) for p in a.params] for a in p4info().actions}
    assert acts["MfsIngress.set_level"] == [("level", 8)]
    assert acts["MfsIngress.trust_proposal"] == [("ceiling", 8)]
    assert acts["MfsIngress.route"] == [("port", 9), ("src_mac", 48), ("dst_mac", 48)]
    assert acts["MfsEgress.set_dscp"] == [("dscp", 6)]


def test_p4info_counters_registers_digest():
    info = p4info()
    ctr = {c.preamble.name: c for c in info.counters}
    assert ctr["MfsIngress.class_counter"].size == 16
    assert ctr["MfsIngress.drop_counter"].size == 8
    assert ctr["MfsEgress.queue_counter"].size == 512 * 8
    assert all(c.spec.unit == p4i.CounterSpec.BOTH for c in ctr.values())
    reg = {r.preamble.name: r for r in info.registers}
    assert set(reg) == {"MfsEgress.queue_depth", "MfsEgress.queue_delay", "MfsIngress.miss_filter"}
    assert all(reg[n].size == 512 * 8 and reg[n].type_spec.bitstring.bit.bitwidth == 32
               for n in ("MfsEgress.queue_depth", "MfsEgress.queue_delay"))
    assert reg["MfsIngress.miss_filter"].size == 4096
    assert reg["MfsIngress.miss_filter"].type_spec.bitstring.bit.bitwidth == 8
    (dg,) = info.digests
    assert dg.preamble.name == "mfs_miss_t" and dg.type_spec.struct.name == "mfs_miss_t"
    members = info.type_info.structs["mfs_miss_t"].members
    assert [(m.name, m.type_spec.bitstring.bit.bitwidth) for m in members] == [
        ("stage", 8), ("flow_id", 32), ("request_id", 32), ("src_addr", 32), ("ingress_port", 9),
        ("filter_index", 16)]
    assert info.pkg_info.arch == "v1model"
    # the controller operation header (PacketOut), docs/p4-api.md
    (po,) = info.controller_packet_metadata
    assert po.preamble.name == "packet_out"
    assert [(m.id, m.name, m.bitwidth) for m in po.metadata] == [(1, "op", 8), (2, "reserved", 8), (3, "index", 16)]


def _jenkins(name: str) -> int:
    """p4c's jenkinsOneAtATimeHash (ids of entities without @id)."""
    h = 0
    for c in name.encode():
        h = (h + c) & 0xFFFFFFFF
        h = (h + (h << 10)) & 0xFFFFFFFF
        h ^= h >> 6
    h = (h + (h << 3)) & 0xFFFFFFFF
    h ^= h >> 11
    return (h + (h << 15)) & 0xFFFFFFFF


def test_ids_follow_p4c_rules():
    info = p4info()
    prefix = {"tables": 0x02, "actions": 0x01, "counters": 0x12, "registers": 0x16, "digests": 0x17}
    ids = set()
    for kind, pfx in prefix.items():
        for e in getattr(info, kind):
            assert e.preamble.id >> 24 == pfx, f"{e.preamble.name}: id {e.preamble.id:#x} lacks prefix {pfx:#x}"
            assert e.preamble.id not in ids
            ids.add(e.preamble.id)
            assert e.preamble.alias == e.preamble.name.split(".")[-1]
    by_name = {a.preamble.name: a.preamble.id for a in info.actions}
    assert by_name["NoAction"] == (0x01 << 24) | (_jenkins("NoAction") & 0xFFFFFF)
    assert info.digests[0].preamble.id == (0x17 << 24) | (_jenkins("mfs_miss_t") & 0xFFFFFF)


def test_source_annotations_match_p4info():
    """Every @id/@name pair in the P4 sources is in the P4Info with that id (both archs)."""
    info = p4info()
    ids = {}
    for kind in ("tables", "actions", "counters", "registers", "digests"):
        for e in getattr(info, kind):
            ids[e.preamble.name] = e.preamble.id
    seen = set()
    for src in P4_SOURCES:
        text = _strip_comments(src.read_text())
        pairs = re.findall(r'@id\((0x[0-9a-fA-F]+|\d+)\)\s*@name\("\.?([^"]+)"\)', text)
        assert pairs, f"no @id/@name annotations in {src}"
        for id_, name in pairs:
            assert name in ids, f"{src.name}: {name} is not in the P4Info"
            assert ids[name] == int(id_, 0), f"{src.name}: {name} @id {id_} != P4Info {ids[name]:#x}"
            seen.add(name)
    assert seen == set(ids) - {"NoAction"}


def test_key_names_annotated():
    """Every match key in the sources carries @name(...) with a doc field name."""
    for src in P4_SOURCES:
        text = _strip_comments(src.read_text())
        for block in re.findall(r"key\s*=\s*\{(.*?)\}", text, flags=re.S):
            for line in filter(str.strip, block.split(";")):
                assert re.search(r'@name\("\w+"\)', line), f"{src.name}: key without @name: {line.strip()}"


def test_embedded_model_uses_the_p4_indices():
    """topo/embedded/pipeline.py (the model of the program) counts with the P4 program's indices."""
    from topo.embedded import pipeline as model
    c = p4_constants()
    for p4name, pyname in (("CLASS_FLOW_TABLE", "CLS_FLOW"), ("CLASS_STAGE_DEFAULT", "CLS_STAGE_DEFAULT"),
                           ("CLASS_PROPOSAL", "CLS_PROPOSAL"), ("CLASS_MFS_BEST_EFFORT", "CLS_MFS_BE"),
                           ("CLASS_TRUSTED_DSCP", "CLS_DSCP"), ("CLASS_BEST_EFFORT", "CLS_BE"),
                           ("CLASS_MALFORMED", "CLS_MALFORMED"), ("CLASS_PROPOSAL_REJECTED", "CLS_REJECTED"),
                           ("CLASS_FABRIC_DSCP", "CLS_FABRIC_DSCP"), ("CLASS_FABRIC_BEST_EFFORT", "CLS_FABRIC_BE"),
                           ("DROP_BAD_IPV4", "DROP_BAD_IPV4"), ("DROP_IPV4_CHECKSUM", "DROP_IPV4_CHECKSUM"),
                           ("DROP_TTL_EXPIRED", "DROP_TTL_EXPIRED"), ("DROP_ROUTE_DROP", "DROP_ROUTE_DROP"),
                           ("MISS_FILTER_SIZE", "MISS_FILTER_SIZE"), ("CLASS_CONTROLLER_OP", "CLS_CONTROLLER_OP"),
                           ("CPU_PORT", "CPU_PORT"), ("CPU_OP_CLEAR_MISS_FILTER", "CPU_OP_CLEAR_MISS_FILTER")):
        assert c[p4name] == getattr(model, pyname), p4name
    assert model.stat_index(c["STAT_PORTS"] - 1, levels.LOWEST_LEVEL) == c["QUEUE_STATS_SIZE"] - 1
    assert (c["ETHERTYPE_VLAN"], c["ETHERTYPE_QINQ"]) == model.ETH_VLAN_TPIDS
