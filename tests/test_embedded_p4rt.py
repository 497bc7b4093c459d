"""P4Runtime semantics of the embedded switch, against a real gRPC client on loopback."""

import time

import grpc
import pytest
from finsy.proto import p4i, p4r, rpc_code
from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether

from mfs import header as mfsh
from mfs.p4info import P4Schema
from tests.dataplane.embedded_target import P4RTClient, WriteFailed, mcast_group, update
from topo.embedded.server import start_server

C = rpc_code.Code
INS, MOD, DEL = p4r.Update.INSERT, p4r.Update.MODIFY, p4r.Update.DELETE
SCHEMA = P4Schema.load()


@pytest.fixture
def sw():
    h = start_server(address="127.0.0.1:0", device_id=1, table_sizes={"MfsIngress.mfs_trust": 2})
    yield h
    h.stop()


@pytest.fixture
def cli(sw):
    c = P4RTClient(sw.address, device_id=1, election_id=10)
    assert c.open().status.code == C.OK
    c.set_pipeline(SCHEMA.info, cookie=7)
    yield c
    c.close()


def flow(stage, fid, level=None):
    return SCHEMA.table_entry("mfs_flow", {"stage": stage, "flow_id": fid, "ingress_port": 1, "src_addr": "10.0.1.1"},
                              "set_level" if level is not None else None, {"level": level} if level is not None else None)


def mfs_frame(stage=3, fid=42, src="10.0.1.1", proposed=None):
    return bytes(Ether(dst="02:00:00:00:00:02") / IP(src=src, dst="10.0.2.1") / UDP(dport=mfsh.MFS_UDP_PORT)
                 / (mfsh.pack(stage, fid, request_id=5, proposed=proposed) + b"x" * 8))


def test_capabilities_and_no_pipeline(sw):
    c = P4RTClient(sw.address, election_id=1)
    assert c.stub.Capabilities(p4r.CapabilitiesRequest()).p4runtime_api_version.startswith("1.")
    c.open()
    with pytest.raises(WriteFailed) as e:
        c.write([update(INS, table_entry=flow(3, 1, 0))])
    assert e.value.code == grpc.StatusCode.FAILED_PRECONDITION
    with pytest.raises(grpc.RpcError) as e:
        c.read([p4r.Entity(table_entry=p4r.TableEntry())])
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not c.get_pipeline().HasField("p4info")
    c.close()


def test_pipeline_config_actions_and_cookie(sw):
    A = p4r.SetForwardingPipelineConfigRequest
    R = p4r.GetForwardingPipelineConfigRequest
    c = P4RTClient(sw.address, election_id=1)
    c.open()
    bad = p4i.P4Info()
    bad.CopyFrom(SCHEMA.info)
    (tab,) = [t for t in bad.tables if t.preamble.name == "MfsIngress.mfs_flow"]
    tab.preamble.name = "MfsIngress.renamed"
    with pytest.raises(grpc.RpcError) as e:
        c.set_pipeline(bad)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "MfsIngress.mfs_flow" in e.value.details()
    bad.CopyFrom(SCHEMA.info)
    (act,) = [a for a in bad.actions if a.preamble.name == "MfsIngress.set_level"]
    act.params[0].bitwidth = 7
    with pytest.raises(grpc.RpcError) as e:
        c.set_pipeline(bad)
    assert "set_level" in e.value.details()
    with pytest.raises(grpc.RpcError) as e:
        c.set_pipeline(SCHEMA.info, device_config=b"\x00not json")
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        c.set_pipeline(None, action=A.COMMIT)
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    c.set_pipeline(SCHEMA.info, cookie=5, action=A.VERIFY)
    assert not c.get_pipeline().HasField("p4info")  # VERIFY does not install
    c.set_pipeline(SCHEMA.info, device_config=b'{"program": "mfs"}', cookie=9, action=A.VERIFY_AND_SAVE)
    assert not c.get_pipeline().HasField("p4info")
    c.set_pipeline(None, action=A.COMMIT)
    full = c.get_pipeline(R.ALL)
    assert full.cookie.cookie == 9 and full.p4_device_config == b'{"program": "mfs"}' and full.p4info.tables
    only = c.get_pipeline(R.COOKIE_ONLY)
    assert only.cookie.cookie == 9 and not only.HasField("p4info") and not only.p4_device_config
    pc = c.get_pipeline(R.P4INFO_AND_COOKIE)
    assert pc.p4info.tables and not pc.p4_device_config
    # state survives RECONCILE_AND_COMMIT, not VERIFY_AND_COMMIT
    c.write([update(INS, table_entry=flow(3, 1, 0))])
    c.set_pipeline(SCHEMA.info, cookie=10, action=A.RECONCILE_AND_COMMIT)
    assert len(c.read([p4r.Entity(table_entry=p4r.TableEntry())])) == 1
    c.set_pipeline(SCHEMA.info, cookie=11)
    assert c.read([p4r.Entity(table_entry=p4r.TableEntry())]) == []
    c.close()


def test_write_errors_per_update(cli):
    te_bad_width = flow(3, 2, 0)
    te_bad_width.match[0].exact.value = b"\x01\x00"  # 256 does not fit in 8 bits
    te_unknown = p4r.TableEntry(table_id=12345)
    te_noparams = flow(3, 3, 0)
    te_noparams.action.action.ClearField("params")
    ups = [update(INS, table_entry=flow(3, 1, 2)),
           update(INS, table_entry=flow(3, 1, 3)),
           update(MOD, table_entry=flow(3, 99, 1)),
           update(DEL, table_entry=flow(3, 98)),
           update(INS, table_entry=te_bad_width),
           update(INS, table_entry=te_unknown),
           update(INS, table_entry=te_noparams)]
    with pytest.raises(WriteFailed) as e:
        cli.write(ups)
    assert e.value.code == grpc.StatusCode.UNKNOWN
    codes = [err.canonical_code for err in e.value.errors]
    assert codes == [C.OK, C.ALREADY_EXISTS, C.NOT_FOUND, C.NOT_FOUND, C.INVALID_ARGUMENT, C.INVALID_ARGUMENT,
                     C.INVALID_ARGUMENT]
    assert "8 bits" in e.value.errors[4].message and "12345" in e.value.errors[5].message
    assert "missing params" in e.value.errors[6].message
    # the good one was applied (CONTINUE_ON_ERROR)
    got = cli.read([p4r.Entity(table_entry=flow(3, 1))])
    assert len(got) == 1 and got[0].table_entry.action.action.params[0].value == b"\x02"
    cli.write([update(MOD, table_entry=flow(3, 1, 4)), update(DEL, table_entry=flow(3, 1))])
    assert cli.read([p4r.Entity(table_entry=flow(3, 1))]) == []


def test_table_full_priority_and_lpm_rules(cli):
    trust = [SCHEMA.table_entry("mfs_trust", {"ingress_port": 1, "src_addr": f"10.0.0.{i}"},
                                "trust_proposal", {"ceiling": 1}) for i in range(3)]
    with pytest.raises(WriteFailed) as e:
        cli.write([update(INS, table_entry=t) for t in trust])
    assert [x.canonical_code for x in e.value.errors] == [C.OK, C.OK, C.RESOURCE_EXHAUSTED]
    rng = SCHEMA.table_entry("mfs_stage_default", {"stage": 1, "rli": (0, 3)}, "set_level", {"level": 2}, priority=5)
    no_prio = p4r.TableEntry()
    no_prio.CopyFrom(rng)
    no_prio.priority = 0
    prio_on_exact = flow(3, 5, 1)
    prio_on_exact.priority = 3
    lpm_bits = SCHEMA.table_entry("ipv4_lpm", {"dst_addr": ("10.0.2.0", 24)}, "drop")
    lpm_bits.match[0].lpm.value = bytes([10, 0, 2, 1])
    with pytest.raises(WriteFailed) as e:
        cli.write([update(INS, table_entry=rng), update(INS, table_entry=no_prio),
                   update(INS, table_entry=prio_on_exact), update(INS, table_entry=lpm_bits)])
    assert [x.canonical_code for x in e.value.errors] == [C.OK, C.INVALID_ARGUMENT, C.INVALID_ARGUMENT,
                                                          C.INVALID_ARGUMENT]
    assert "priority" in e.value.errors[1].message and "prefix" in e.value.errors[3].message


def test_atomicity_and_election(cli, sw):
    with pytest.raises(WriteFailed) as e:
        cli.write([update(INS, table_entry=flow(3, 1, 0))], atomicity=p4r.WriteRequest.ROLLBACK_ON_ERROR)
    assert e.value.code == grpc.StatusCode.UNIMPLEMENTED
    other = P4RTClient(sw.address, election_id=3)
    assert other.open().status.code == C.ALREADY_EXISTS  # backup
    with pytest.raises(WriteFailed) as e:
        other.write([update(INS, table_entry=flow(3, 1, 0))])
    assert e.value.code == grpc.StatusCode.PERMISSION_DENIED
    other.close()


def test_default_entries(cli):
    d = SCHEMA.table_entry("classify_default", None, "set_level", {"level": 4}, default=True)
    cli.write([update(MOD, table_entry=d)])
    probe = p4r.TableEntry(table_id=SCHEMA.table("classify_default").id, is_default_action=True)
    (got,) = cli.read([p4r.Entity(table_entry=probe)])
    assert got.table_entry.is_default_action and got.table_entry.action.action.params[0].value == b"\x04"
    with pytest.raises(WriteFailed) as e:
        cli.write([update(INS, table_entry=d)])
    assert e.value.errors[0].canonical_code == C.INVALID_ARGUMENT
    # reset to the program's default by a MODIFY without action
    cli.write([update(MOD, table_entry=p4r.TableEntry(table_id=probe.table_id, is_default_action=True))])
    (got,) = cli.read([p4r.Entity(table_entry=probe)])
    assert got.table_entry.action.action.params[0].value == b"\x07"
    # l2_fwd default is flood, modifiable
    (l2,) = cli.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=SCHEMA.table("l2_fwd").id,
                                                            is_default_action=True))])
    assert l2.table_entry.action.action.action_id == SCHEMA.action("flood").id


def test_reads_counters_registers_groups(cli, sw):
    cli.write([update(INS, table_entry=flow(3, 42, 1)),
               update(INS, table_entry=SCHEMA.table_entry("l2_fwd", {"dst_addr": "02:00:00:00:00:02"},
                                                          "l2_forward", {"port": 2})),
               update(INS, multicast_group_entry=mcast_group(1, [1, 2, 3]))])
    out = sw.switch.process(1, mfs_frame())
    assert [(p, lv) for p, _, lv in out] == [(2, 1)]
    everything = cli.read([p4r.Entity(table_entry=p4r.TableEntry())])
    assert len(everything) == 2
    one_table = cli.read([p4r.Entity(table_entry=p4r.TableEntry(table_id=SCHEMA.table("mfs_flow").id))])
    assert len(one_table) == 1 and one_table[0].table_entry == flow(3, 42, 1)
    ce = p4r.CounterEntry(counter_id=SCHEMA.counter("class_counter").id)
    ce.index.index = 0
    (c0,) = cli.read([p4r.Entity(counter_entry=ce)])
    assert c0.counter_entry.data.packet_count == 1 and c0.counter_entry.data.byte_count == len(mfs_frame())
    all_q = cli.read([p4r.Entity(counter_entry=p4r.CounterEntry(counter_id=SCHEMA.counter("queue_counter").id))])
    assert len(all_q) == 512 * 8 and all_q[2 * 8 + 1].counter_entry.data.packet_count == 1
    regs = cli.read([p4r.Entity(register_entry=p4r.RegisterEntry())])
    assert len(regs) == 2 * 4096 + 4096   # queue_depth, queue_delay, miss_filter
    ge = p4r.Entity()
    ge.packet_replication_engine_entry.multicast_group_entry.multicast_group_id = 0
    (g,) = cli.read([ge])
    assert [r.egress_port for r in g.packet_replication_engine_entry.multicast_group_entry.replicas] == [1, 2, 3]
    with pytest.raises(WriteFailed) as e:
        cli.write([update(INS, multicast_group_entry=mcast_group(1, [1])),
                   update(DEL, multicast_group_entry=mcast_group(9, []))])
    assert [x.canonical_code for x in e.value.errors] == [C.ALREADY_EXISTS, C.NOT_FOUND]
    # flood to an unknown MAC uses group 1 without the ingress port
    out = sw.switch.process(2, bytes(Ether(dst="02:00:00:00:00:99") / IP(dst="192.168.0.1") / b"hi"))
    assert sorted(p for p, _, _ in out) == [1, 3]


def test_arbitration_primary_change(sw):
    a = P4RTClient(sw.address, election_id=5)
    assert a.open().status.code == C.OK
    b = P4RTClient(sw.address, election_id=9)
    arb_b = b.open()
    assert arb_b.status.code == C.OK and arb_b.election_id.low == 9
    note = a.next("arbitration")
    assert note.status.code == C.ALREADY_EXISTS and note.election_id.low == 9
    dup = P4RTClient(sw.address, election_id=9)
    dup.open_error = None
    dup_arb = dup.open()
    assert dup_arb is None and dup.stream_error.code() == grpc.StatusCode.INVALID_ARGUMENT
    wrong = P4RTClient(sw.address, device_id=2, election_id=11)
    assert wrong.open() is None and wrong.stream_error.code() == grpc.StatusCode.NOT_FOUND
    b.close()  # primary leaves: no primary until someone has an election id >= 9
    note = a.next("arbitration")
    assert note.status.code == C.NOT_FOUND
    assert a.barrier() == []
    a.send(a.arbitration_msg(election_id=12))
    assert a.next("arbitration").status.code == C.OK
    for c in (a, dup, wrong):
        c.close()


def test_digests_dedupe_ack_and_batching(cli, sw):
    did = SCHEMA.digest("mfs_miss_t").id
    # not configured: no digest
    sw.switch.process(1, mfs_frame(fid=1))
    assert cli.barrier() == []
    cfg = p4r.DigestEntry(digest_id=did)
    cfg.config.max_timeout_ns, cfg.config.max_list_size, cfg.config.ack_timeout_ns = 0, 1, 60 * 10**9
    cli.write([update(INS, digest_entry=cfg)])
    cell = p4r.RegisterEntry(register_id=SCHEMA.register("miss_filter").id)
    cell.index.index, cell.data.bitstring = 1, b"\x00"   # flow 1's miss_filter cell, set by the packet above
    cli.write([update(MOD, register_entry=cell)])
    sw.switch.process(1, mfs_frame(fid=1))
    cli.write([update(MOD, register_entry=cell)])
    sw.switch.process(1, mfs_frame(fid=1))  # same data: deduplicated until acked (by the digest engine)
    msgs = cli.barrier()
    assert len(msgs) == 1
    dl = msgs[0].digest
    vals = [int.from_bytes(m.bitstring, "big") for m in dl.data[0].struct.members]
    assert vals == [3, 1, 5, int.from_bytes(bytes([10, 0, 1, 1]), "big"), 1, 1]   # ..., ingress_port, filter_index
    ack = p4r.StreamMessageRequest()
    ack.digest_ack.digest_id, ack.digest_ack.list_id = did, dl.list_id
    cli.send(ack)
    cli.barrier()
    sw.switch.process(1, mfs_frame(fid=1))  # the data plane reports an unknown flow once (miss_filter) ...
    assert cli.barrier() == []
    cli.write([update(MOD, register_entry=cell)])   # ... until the controller clears its cell
    sw.switch.process(1, mfs_frame(fid=1))  # after the ack and the clear it is sent again
    assert len(cli.barrier()) == 1
    cli.send(ack)  # second ack of the same list: StreamError
    err = cli.next("error")
    assert err.canonical_code == C.NOT_FOUND
    # batching: 3 per list, flushed by size
    cfg.config.max_list_size, cfg.config.max_timeout_ns = 3, 10 * 10**9
    cli.write([update(MOD, digest_entry=cfg)])
    for fid in (10, 11, 12):
        sw.switch.process(1, mfs_frame(fid=fid))
    (m,) = cli.barrier()
    assert len(m.digest.data) == 3
    (got,) = cli.read([p4r.Entity(digest_entry=p4r.DigestEntry(digest_id=did))])
    assert got.digest_entry.config.max_list_size == 3


def test_packet_out_is_a_controller_operation(cli, sw):
    """A PacketOut enters the pipeline on the CPU port with its packet_out header (op, reserved,
    index) in front: op 1 clears that miss_filter cell; every one is counted in class_counter[10].
    Malformed metadata is a stream error naming what is wrong, and nothing reaches the pipeline."""
    cells = sw.switch.register("MfsIngress.miss_filter")
    ops = sw.switch.counter("MfsIngress.class_counter")[0]
    cells[0x575] = cells[0x101] = 1
    m = p4r.StreamMessageRequest()
    m.packet.payload = b"\x00" * 20   # no metadata
    cli.send(m)
    err = cli.next("error")
    assert err.canonical_code == C.INVALID_ARGUMENT and err.HasField("packet_out")
    assert "op" in err.message and "index" in err.message, err.message
    m.packet.CopyFrom(SCHEMA.packet_out({"op": 1, "reserved": 0, "index": 0x575}))
    m.packet.metadata[0].value = b"\x01\x00"   # op is 8 bits
    cli.send(m)
    err = cli.next("error")
    assert err.canonical_code == C.INVALID_ARGUMENT and "packet_out.op" in err.message, err.message
    assert ops[10] == 0 and cells[0x575] == 1
    cli.send(p4r.StreamMessageRequest(packet=SCHEMA.packet_out({"op": 1, "reserved": 0, "index": 0x575})))
    cli.send(p4r.StreamMessageRequest(packet=SCHEMA.packet_out({"op": 2, "reserved": 0, "index": 0x101})))
    deadline = time.monotonic() + 10
    while ops[10] < 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ops[10] == 2 and cells[0x575] == 0 and cells[0x101] == 1   # op 2 is no operation


def test_restart_loses_state_and_breaks_streams(cli, sw):
    cli.write([update(INS, table_entry=flow(3, 42, 0))])
    sw.switch.process(1, mfs_frame())
    address = sw.address
    sw.restart()
    assert cli.next() is None and cli.stream_error.code() == grpc.StatusCode.UNAVAILABLE
    assert sw.address == address
    c2 = P4RTClient(address, election_id=1)
    assert c2.open().status.code == C.OK  # election ids start over after a reboot
    assert not c2.get_pipeline().HasField("p4info")
    c2.set_pipeline(SCHEMA.info)
    assert c2.read([p4r.Entity(table_entry=p4r.TableEntry())]) == []
    ce = p4r.CounterEntry(counter_id=SCHEMA.counter("class_counter").id)
    assert all(e.counter_entry.data.packet_count == 0 for e in c2.read([p4r.Entity(counter_entry=ce)]))
    c2.close()
