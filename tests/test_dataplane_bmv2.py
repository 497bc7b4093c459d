"""Every data-plane case (tests/dataplane/cases) against bmv2 simple_switch_grpc.

Skips, saying why, when simple_switch_grpc or p4src/build/mfs.json is absent
(build them from p4lang sources and run `make p4`, docs/bmv2.md).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mfs.tools import find_tool, missing_reason
from tests.dataplane import runner

ROOT = Path(__file__).resolve().parents[1]
BMV2_JSON = ROOT / "p4src" / "build" / "mfs.json"
P4INFO = ROOT / "p4src" / "build" / "mfs.p4info.txtpb"

pytestmark = [pytest.mark.netns, pytest.mark.timeout(300)]

CASES = runner.load_cases()


@pytest.fixture(scope="module")
def bmv2():
    if not find_tool("simple_switch_grpc"):
        pytest.skip(missing_reason("simple_switch_grpc"))
    if not BMV2_JSON.exists():
        pytest.skip(f"{BMV2_JSON.relative_to(ROOT)} is absent: run `make p4` with p4c installed")
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
    ok = bmv2.schema.table_entry("MfsIngress.mfs_flow", {"stage": 1, "flow_id": 1}, "MfsIngress.set_level",
                                 {"level": 2})
    missing = [bmv2.schema.table_entry("MfsIngress.mfs_flow", {"stage": 2, "flow_id": i}, "MfsIngress.set_level",
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
