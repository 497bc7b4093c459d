"""controller.p4rt: our asyncio P4Runtime client against a real server on loopback."""

from __future__ import annotations

import asyncio
import time

import pytest
from finsy.proto import p4r, rpc_code

from controller.p4rt.client import SwitchClient, pipeline_cookie, update
from controller.testing import TargetUnavailable, open_target
from mfs.header import pack
from mfs.p4info import P4Schema

SCHEMA = P4Schema.load()
FLOW = "MfsIngress.mfs_flow"


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


@pytest.fixture
def target():
    try:
        with open_target("embedded") as t:
            yield t
    except TargetUnavailable as e:
        pytest.skip(str(e))


def flow(fid, level=3, stage=1):
    return SCHEMA.table_entry(FLOW, {"stage": stage, "flow_id": fid, "ingress_port": 1, "src_addr": "10.0.1.1"},
                              "MfsIngress.set_level", {"level": level})


async def primary(t, **kw) -> SwitchClient:
    c = SwitchClient(t.address, t.device_id, election_id=kw.pop("election_id", 10), **kw)
    assert await c.open()
    await c.set_pipeline(SCHEMA.info, b"")
    return c


def test_pipeline_cookie_skips_an_unchanged_pipeline(target):
    async def go():
        c = SwitchClient(target.address, target.device_id, election_id=3)
        await c.open()
        assert await c.get_cookie() is None  # nothing loaded yet
        assert await c.set_pipeline(SCHEMA.info, b"") is True
        assert await c.get_cookie() == pipeline_cookie(SCHEMA.info, b"")
        assert await c.set_pipeline(SCHEMA.info, b"") is False  # same cookie: skipped
        assert await c.set_pipeline(SCHEMA.info, b"", force=True) is True
        await c.close()
    run(go())


def test_per_update_errors_are_decoded_by_index(target):
    async def go():
        c = await primary(target)
        assert await c.write([update("insert", flow(1))]) == []
        errs = await c.write([
            update("insert", flow(2)),            # ok
            update("insert", flow(1)),            # exists
            update("modify", flow(99)),           # missing
            update("delete", flow(98)),           # missing
            update("insert", flow(3, level=2)),   # ok
        ])
        assert [(e.index, e.code) for e in errs] == [(1, rpc_code.ALREADY_EXISTS), (2, rpc_code.NOT_FOUND),
                                                    (3, rpc_code.NOT_FOUND)]
        assert all(e.message for e in errs)
        got = {SCHEMA.describe_table_entry(te).match["flow_id"] for te in await c.read_table(SCHEMA.table(FLOW).id)}
        assert got == {1, 2, 3}  # the good updates of the batch were applied
        assert c.writes == 2 and c.updates == 6
        await c.close()
    run(go())


def test_thousands_of_per_update_errors_fit_in_the_metadata(target):
    async def go():
        c = await primary(target)
        n = 3000
        errs = await c.write([update("modify", flow(i)) for i in range(n)])  # none exists
        assert len(errs) == n and {e.code for e in errs} == {rpc_code.NOT_FOUND}
        await c.close()
    run(go())


def test_read_counters_and_registers(target):
    async def go():
        c = await primary(target)
        cnt = await c.read_counter(SCHEMA.counter("MfsEgress.queue_counter").id)
        reg = await c.read_register(SCHEMA.register("MfsEgress.queue_depth").id)
        assert len(cnt) == 4096 and len(reg) == 4096
        assert set(cnt.values()) == {(0, 0)}
        await c.close()
    run(go())


def test_digest_lists_are_delivered_and_acked(target):
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    async def go():
        got = []
        c = SwitchClient(target.address, target.device_id, election_id=10, on_digest=lambda cl, dl: got.append(dl))
        assert await c.open()
        await c.set_pipeline(SCHEMA.info, b"")
        de = p4r.DigestEntry(digest_id=SCHEMA.digest("mfs_miss_t").id)
        de.config.max_timeout_ns, de.config.max_list_size, de.config.ack_timeout_ns = 0, 1, 10**9
        assert await c.write([update("insert", p4r.Entity(digest_entry=de))]) == []
        frame = bytes(Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1234, dport=19782)
                      / (pack(stage=3, flow_id=4242, request_id=7) + b"x" * 10))
        target.handle.switch.process(1, frame)  # flow-table miss of a valid MFS packet
        t0 = time.monotonic()
        while not got and time.monotonic() - t0 < 10:
            await asyncio.sleep(0.02)
        assert got, "no digest list arrived"
        assert c.digests >= 1 and got[0].digest_id == de.digest_id
        members = got[0].data[0].struct.members
        assert int.from_bytes(members[1].bitstring, "big") == 4242  # flow_id
        await c.close()
    run(go())


def test_connecting_to_nothing_fails_clearly():
    async def go():
        from controller.p4rt.client import P4RTError
        c = SwitchClient("127.0.0.1:1", 1, election_id=1, name="ghost")
        with pytest.raises(P4RTError, match="ghost .*arbitration|ghost .*stream"):
            await c.open(timeout=2)
    run(go())


def test_bad_election_id_is_refused():
    with pytest.raises(ValueError, match="election_id"):
        SwitchClient("127.0.0.1:1", 1, election_id=0)
