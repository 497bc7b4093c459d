"""Every data-plane case (tests/dataplane/cases) against bmv2 simple_switch_grpc.

Skips, saying why, when simple_switch_grpc or p4src/build/mfs.json is absent
(build them from p4lang sources and run `make p4`, docs/bmv2.md).
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from mfs.p4info import bmv2_unavailable
from mfs.tools import find_tool, missing_reason
from tests.dataplane import runner

ROOT = Path(__file__).resolve().parents[1]
BMV2_JSON = ROOT / "p4src" / "build" / "mfs.json"
P4INFO = ROOT / "p4src" / "build" / "mfs.p4info.txtpb"

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

CASES = runner.load_cases()


@pytest.fixture(scope="module")
def bmv2():
    why = bmv2_unavailable(BMV2_JSON, P4INFO)
    if why:
        pytest.skip(why)
    from tests.dataplane.bmv2_target import Bmv2Target
    target = Bmv2Target(BMV2_JSON, P4INFO)
    try:
        yield target
    finally:
        target.close()


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_on_bmv2(bmv2, case):
    runner.run_case(bmv2, case)


def test_pipeline_repush_does_not_duplicate_flood_copies(bmv2):
    """bmv2 (PI) forgets multicast groups on SetForwardingPipelineConfig but keeps replicating them:
    the controller's client deletes them before a push, so a re-installed flood group gives one
    copy per port, not two."""
    import asyncio

    from controller.p4rt.client import SwitchClient, update
    from finsy.proto import p4r

    bmv2.reset()
    bmv2.write([{"multicast_group": 1, "ports": [1, 2, 3]}])
    group = p4r.Entity(packet_replication_engine_entry=p4r.PacketReplicationEngineEntry(
        multicast_group_entry=p4r.MulticastGroupEntry(multicast_group_id=1, replicas=[
            p4r.Replica(egress_port=p, instance=1) for p in (1, 2, 3)])))

    async def repush():
        c = SwitchClient(bmv2.address, bmv2.device_id, election_id=2, name="bmv2")
        assert await c.open(), "the controller's client did not become primary"
        try:
            assert await c.set_pipeline(bmv2.schema.info, BMV2_JSON.read_bytes(), force=True)
            assert await c.write([update("insert", group)]) == []
        finally:
            await c.close()

    asyncio.run(repush())
    arp = bytes.fromhex("ffffffffffff" "020000000004" "0806") + bytes(46)
    outs = bmv2.send(4, arp)
    assert sorted(p for p, _, _ in outs) == [1, 2, 3]


def test_many_failing_updates_in_one_write_are_reported_per_update(bmv2):
    """PI returns per-update errors in gRPC trailing metadata; 2,000 of them exceed gRPC's default
    16 KiB metadata limit (RESOURCE_EXHAUSTED for the whole RPC) unless the client raises
    grpc.max_metadata_size, as controller.p4rt.client does."""
    import asyncio

    from controller.p4rt.client import SwitchClient, update

    bmv2.reset()
    n = 2000
    src = {"ingress_port": 1, "src_addr": "10.0.1.1"}
    ok = bmv2.schema.table_entry("MfsIngress.mfs_flow", {"stage": 1, "flow_id": 1, **src}, "MfsIngress.set_level",
                                 {"level": 2})
    missing = [bmv2.schema.table_entry("MfsIngress.mfs_flow", {"stage": 2, "flow_id": i, **src}, "MfsIngress.set_level",
                                       {"level": 2}) for i in range(n)]

    async def go():
        c = SwitchClient(bmv2.address, bmv2.device_id, election_id=2, name="bmv2")
        assert await c.open()
        try:
            return await c.write([update("insert", ok)] + [update("delete", te) for te in missing])
        finally:
            await c.close()

    errs = asyncio.run(go())
    assert [e.index for e in errs] == list(range(1, n + 1))   # the insert (index 0) went through
    assert {e.code_name for e in errs} == {"NOT_FOUND"}, {e.code_name for e in errs}


def test_level_selects_the_strict_priority_queue(bmv2):
    """The one level -> queue conversion (priority = 7 - level) on real bmv2: with only the
    priority-0 queue of port 2 rate-limited (20 pkt/s, Thrift CLI), 40 level-7 packets sent
    first crawl out while 10 level-0 packets sent after them overtake them. Were the mapping
    inverted, the level-0 packets would be the ones rate-limited behind the queue."""
    import importlib.util
    import select

    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from mfs.header import MFS_UDP_PORT, pack

    if not find_tool("simple_switch_CLI"):
        pytest.skip(missing_reason("simple_switch_CLI"))
    if importlib.util.find_spec("thrift") is None:
        pytest.skip("simple_switch_CLI needs the Python package thrift in this interpreter (pip install thrift)")
    bmv2.reset()
    bmv2.write([{"table": "MfsIngress.ipv4_lpm", "match": {"dst_addr": ["10.0.2.0", 24]}, "action": "MfsIngress.route",
                 "params": {"port": 2, "src_mac": "02:aa:00:00:00:02", "dst_mac": "02:bb:00:00:00:02"}},
                {"table": "MfsIngress.mfs_flow", "match": {"stage": 3, "flow_id": 1, "ingress_port": 1, "src_addr": "10.0.1.1"},
                 "action": "MfsIngress.set_level",
                 "params": {"level": 0}}])
    base = Ether(dst="02:00:00:00:00:02", src="02:00:00:00:00:01") / IP(src="10.0.1.1", dst="10.0.2.1")
    low = bytes(base / UDP(sport=1000, dport=9000) / (b"l" * 64))                          # best effort: level 7
    high = bytes(base / UDP(sport=1000, dport=MFS_UDP_PORT) / (pack(3, 1) + b"h" * 48))  # flow table: level 0
    n_low, n_high = 40, 10
    bmv2.cli("set_queue_rate 20 2 0\n")   # port 2, priority 0 (= level 7) only
    try:
        rx = bmv2.socks[2]
        # paced: bmv2's packet input loses frames sent back to back (33 of 50 arrived unpaced)
        for frame in [low] * n_low + [high] * n_high:
            bmv2.socks[1].send(frame)
            time.sleep(0.002)
        order = []
        deadline = time.monotonic() + 30   # 40 packets at 20 pkt/s take ~2 s; generous on a loaded machine
        while len(order) < n_low + n_high and time.monotonic() < deadline:
            if select.select([rx], [], [], 0.2)[0]:
                data, addr = rx.recvfrom(65535)
                if addr[2] != 4 and len(data) >= 38:   # not our own outgoing copy
                    order.append("H" if int.from_bytes(data[36:38], "big") == MFS_UDP_PORT else "L")
    finally:
        bmv2.cli("set_queue_rate 0 2 0\n")  # 0 = no limit again
    assert order.count("H") == n_high and order.count("L") == n_low, "".join(order)
    last_high = max(i for i, c in enumerate(order) if c == "H")
    lows_before = order[:last_high].count("L")
    assert lows_before < n_low // 2, f"level-0 packets did not overtake the rate-limited level-7 queue: {''.join(order)}"
