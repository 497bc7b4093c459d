"""Malformed and hostile P4Runtime requests to the embedded switch (real gRPC on loopback).

Each bad update must come back as its own p4.v1.Error with the right code and a
message naming what was wrong; the switch keeps serving and everything accepted
before (or in the same batch) stays.
"""

from __future__ import annotations

import random

import grpc
import pytest
from finsy.proto import p4r, rpc_code

from mfs.p4info import P4Schema
from tests.dataplane.embedded_target import P4RTClient, WriteFailed, update
from tests.test_embedded_p4rt import cli, sw  # noqa: F401 - fixtures: switch on loopback, primary client

C = rpc_code.Code
INS, MOD, DEL = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
S = P4Schema.load()
FLOW = S.table("mfs_flow")


def flow(fid: int, level: int = 1, stage: int = 3) -> p4r.TableEntry:
    return S.table_entry("mfs_flow", {"stage": stage, "flow_id": fid, "ingress_port": 1, "src_addr": "10.0.1.1"},
                         "set_level", {"level": level})


def stage_default(prio: int) -> p4r.TableEntry:
    te = S.table_entry("mfs_stage_default", {"stage": 1, "rli": (0, 5)}, "set_level", {"level": 1}, priority=1)
    te.priority = prio
    return te


def flows_on_switch(c: P4RTClient) -> dict[int, int]:
    out = {}
    for e in c.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=FLOW.id))]):
        spec = S.describe_table_entry(e.table_entry)
        out[spec.match["flow_id"]] = spec.params["level"]
    return out


def _bad_updates(fid: int) -> list[tuple[str, p4r.Update, int, str]]:
    """(what, update, expected code, word the message must contain); ``fid`` keeps keys distinct."""
    out = []

    def te_case(what, mutate, code=C.INVALID_ARGUMENT, word="", op=INS, te=None):
        te = flow(fid) if te is None else te
        mutate(te)
        out.append((what, update(op, table_entry=te), code, word))

    def set_(attr, value):
        return lambda te: setattr(te, attr, value)

    te_case("garbage field id", lambda te: setattr(te.match[0], "field_id", 99), word="field id 99")
    te_case("unknown table id", set_("table_id", 0x7777), word="unknown table id")
    te_case("table id of an action", set_("table_id", S.action("set_level").id), word="unknown table id")
    te_case("oversized value", lambda te: setattr(te.match[1].exact, "value", b"\x01" * 5), word="32 bits")
    te_case("1 MB value", lambda te: setattr(te.match[1].exact, "value", b"\x7f" * (1 << 20)), word="32 bits")
    te_case("empty value", lambda te: setattr(te.match[1].exact, "value", b""), word="empty")
    te_case("oversized param", lambda te: setattr(te.action.action.params[0], "value", b"\x01\x00"), word="8 bits")
    te_case("duplicate field", lambda te: te.match.append(te.match[0]), word="twice")
    te_case("duplicate param", lambda te: te.action.action.params.append(te.action.action.params[0]), word="twice")
    te_case("garbage param id", lambda te: setattr(te.action.action.params[0], "param_id", 77), word="param id 77")
    te_case("garbage action id", lambda te: setattr(te.action.action, "action_id", 4242), word="action id 4242")
    te_case("action of another table", lambda te: setattr(te.action.action, "action_id", S.action("route").id),
            word="not an action of table")
    te_case("missing params", lambda te: te.action.action.ClearField("params"), word="missing params")
    te_case("insert without action", lambda te: te.ClearField("action"), word="needs an action")
    te_case("missing exact field", lambda te: te.match.pop(), word="missing")

    def wrong_kind(te):
        v = te.match[1].exact.value
        te.match[1].ClearField("exact")
        te.match[1].lpm.value, te.match[1].lpm.prefix_len = v, 32
    te_case("wrong match kind", wrong_kind, word="exact, got lpm")
    te_case("absurd priority on an exact table", set_("priority", 2**31 - 1), word="priority must be 0")
    te_case("negative priority on an exact table", set_("priority", -5), word="priority must be 0")
    te_case("negative priority on a range table", lambda te: None, word="priority > 0", te=stage_default(-1))
    te_case("zero priority on a range table", lambda te: None, word="priority > 0", te=stage_default(0))
    te_case("default entry with a match", set_("is_default_action", True), word="default entry", op=MOD)
    te_case("modify missing entry", lambda te: None, code=C.NOT_FOUND, op=MOD)
    te_case("delete missing entry", lambda te: None, code=C.NOT_FOUND, op=DEL)
    lpm = S.table_entry("ipv4_lpm", {"dst_addr": ("10.0.0.0", 8)}, "drop")
    te_case("lpm prefix 40", lambda te: setattr(te.match[0].lpm, "prefix_len", 40), word="prefix length", te=lpm)
    out.append(("no entity", p4r.Update(type=INS), C.INVALID_ARGUMENT, "no entity"))
    out.append(("update type unspecified", update(0, table_entry=flow(fid)), C.INVALID_ARGUMENT, "update type"))
    out.append(("update type 99", update(99, table_entry=flow(fid)), C.INVALID_ARGUMENT, "update type"))
    out.append(("empty table entry", update(INS, table_entry=p4r.TableEntry()), C.INVALID_ARGUMENT, "table id 0"))
    g = p4r.MulticastGroupEntry(multicast_group_id=5)
    g.replicas.add(port=b"\xff" * 1000, instance=0)
    out.append(("replica port of 1000 bytes", update(INS, multicast_group_entry=g), C.INVALID_ARGUMENT, "9 bits"))
    ce = p4r.CounterEntry(counter_id=S.counter("class_counter").id)
    ce.index.index = 99
    out.append(("counter index out of range", update(MOD, counter_entry=ce), C.OUT_OF_RANGE, "index 99"))
    ce = p4r.CounterEntry(counter_id=S.counter("class_counter").id)
    ce.index.index, ce.data.packet_count = 1, -5
    out.append(("negative counter", update(MOD, counter_entry=ce), C.INVALID_ARGUMENT, "negative"))
    de = p4r.DigestEntry(digest_id=FLOW.id)
    de.config.max_timeout_ns = 1
    out.append(("digest id of a table", update(INS, digest_entry=de), C.INVALID_ARGUMENT, "digest id"))
    u = p4r.Update(type=INS)
    u.entity.action_profile_member.action_profile_id = 1
    out.append(("action profile member", u, C.UNIMPLEMENTED, "action_profile_member"))
    return out


def test_each_bad_update_is_rejected_with_its_reason(cli):
    cli.write([update(INS, table_entry=flow(1, level=2))])
    for what, upd, code, word in _bad_updates(1000):
        with pytest.raises(WriteFailed) as e:
            cli.write([upd])
        (err,) = e.value.errors
        assert err.canonical_code == code, f"{what}: {C.Name(err.canonical_code)} {err.message}"
        assert word.lower() in err.message.lower(), f"{what}: message {err.message!r} lacks {word!r}"
        assert len(err.message) < 300, f"{what}: unbounded error message ({len(err.message)} chars)"
    assert flows_on_switch(cli) == {1: 2}, "a rejected update changed accepted state"
    cli.write([update(MOD, table_entry=flow(1, level=0))])  # still serving
    assert flows_on_switch(cli) == {1: 0}


def test_ten_thousand_updates_many_bad(cli):
    cli.write([update(INS, table_entry=flow(i, level=5)) for i in range(1, 51)])  # accepted before
    rng = random.Random(7)
    updates, expect = [], []
    good = {}
    fid = 100
    bad_templates = [b for b in _bad_updates(10**6) if b[0] != "1 MB value"]  # keep the request < 64 MB
    for _ in range(10_000):
        if rng.random() < 0.4 and fid < FLOW.size - 100:
            fid += 1
            updates.append(update(INS, table_entry=flow(fid, level=fid % 8)))
            expect.append(C.OK)
            good[fid] = fid % 8
        elif rng.random() < 0.5:  # duplicate of an entry accepted before the batch
            updates.append(update(INS, table_entry=flow(rng.randrange(1, 51), level=0)))
            expect.append(C.ALREADY_EXISTS)
        else:
            _what, upd, code, _word = rng.choice(bad_templates)
            updates.append(upd)
            expect.append(code)
    with pytest.raises(WriteFailed) as e:
        cli.write(updates)
    assert e.value.code == grpc.StatusCode.UNKNOWN
    got = [err.canonical_code for err in e.value.errors]
    assert len(got) == len(updates)
    assert got == expect
    want = {i: 5 for i in range(1, 51)} | good
    assert flows_on_switch(cli) == want  # accepted-before entries untouched, good ones of the batch applied
    cli.write([update(DEL, table_entry=flow(1))])
    assert 1 not in flows_on_switch(cli)


def test_bad_reads_get_the_right_status(cli):
    cli.write([update(INS, table_entry=flow(1))])
    cases = [
        ("unknown table id", p4r.Entity(table_entry=p4r.TableEntry(table_id=0x7777)), grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown counter id", p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=5)),
         grpc.StatusCode.INVALID_ARGUMENT),
        ("unknown register id", p4r.Entity(register_entry=p4r.RegisterEntry(register_id=5)),
         grpc.StatusCode.INVALID_ARGUMENT),
    ]
    ce = p4r.CounterEntry(counter_id=S.counter("class_counter").id)
    ce.index.index = 16
    cases.append(("counter index 16 of 16", p4r.Entity(counter_entry=ce), grpc.StatusCode.OUT_OF_RANGE))
    te = flow(1)
    te.match[0].field_id = 99
    cases.append(("read by a garbage key", p4r.Entity(table_entry=te), grpc.StatusCode.INVALID_ARGUMENT))
    te = p4r.TableEntry(is_default_action=True)
    cases.append(("default entry without a table", p4r.Entity(table_entry=te), grpc.StatusCode.INVALID_ARGUMENT))
    cases.append(("empty entity", p4r.Entity(), grpc.StatusCode.UNIMPLEMENTED))
    for what, ent, code in cases:
        with pytest.raises(grpc.RpcError) as e:
            cli.read([ent])
        assert e.value.code() == code, f"{what}: {e.value.code()} {e.value.details()}"
        assert e.value.details(), what
    assert flows_on_switch(cli) == {1: 1}


def test_garbage_bytes_and_wrong_device_keep_the_server_up(sw, cli):
    rng = random.Random(3)
    ch = grpc.insecure_channel(sw.address)
    for method in ("Write", "Read", "SetForwardingPipelineConfig", "GetForwardingPipelineConfig", "Capabilities"):
        raw = ch.unary_unary(f"/p4.v1.P4Runtime/{method}", request_serializer=None, response_deserializer=None)
        for n in (1, 7, 64, 4096):
            blob = bytes(rng.randrange(256) for _ in range(n))
            try:
                raw(blob, timeout=10)
            except grpc.RpcError as e:  # unparsable or nonsensical: an error status, never a hang
                assert e.code() != grpc.StatusCode.DEADLINE_EXCEEDED, method
    ch.close()
    with pytest.raises(WriteFailed) as e:
        P4RTClient(sw.address, device_id=99, election_id=10).write([update(INS, table_entry=flow(5))])
    assert e.value.code == grpc.StatusCode.NOT_FOUND and "device id 99" in e.value.details
    with pytest.raises(WriteFailed) as e:  # not the primary's election id
        P4RTClient(sw.address, device_id=1, election_id=9).write([update(INS, table_entry=flow(5))])
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    cli.write([update(INS, table_entry=flow(6))])
    assert flows_on_switch(cli) == {6: 1}
