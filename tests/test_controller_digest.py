"""Unknown-flow digests (``mfs_miss_t``): the controller classifies each (known / foreign /
unreported), counts and logs it, optionally installs an unreported flow at its stage default,
and clears the switch's digest filter cell (``miss_filter``, docs/p4-api.md revision 2).

Against the embedded switch over loopback gRPC: real packets through its pipeline raise the
digests. The filter-register part runs against a switch serving a P4Info with the register and
the digest's ``filter_index`` member.
"""

from __future__ import annotations

import asyncio

import pytest
from finsy.proto import p4r

from controller import config as config_mod
from controller.testing import config_data
from mfs.p4info import encode
from tests.test_controller import Host, _target, run, started, switch_flows, until
from tests.test_controller_idle import frame, p4info_copy, save_p4info, switches


def mfs_frame(stage, flow_id, src="10.0.0.1"):
    if src == "10.0.0.1":
        return frame(stage, flow_id)
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    from mfs.header import MFS_UDP_PORT, pack
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src=src, dst="10.0.0.2") / UDP(dport=MFS_UDP_PORT)
                 / pack(stage, flow_id) / (b"x" * 100))


def kinds(c):
    return {k: int(v) for k, v in c.metrics.by_label("unknown_flows", "kind").items()}


def test_unknown_flows_are_classified_and_unreported_ones_installed_at_the_stage_default():
    with _target("embedded") as t:
        async def go():
            data = config_data([t.address], unknown_flows={"install": True}, gc_timeout_s=30)
            c = await started(config_mod.parse(data, "miss.yaml"))
            h = Host(c.api_port)
            try:
                await h.register()
                base = h.reg.flow_id_base
                await h.report(h.start(1, stage=1))
                known, unreported, spoofed, unowned = (1, base + 1), (2, base + 7), (2, base + 8), (2, (5 << 20) + 1)
                pipe = t.handle.switch
                pipe.process(1, mfs_frame(*unreported))
                pipe.process(1, mfs_frame(*spoofed, src="10.0.0.9"))  # h1's flow id from another address
                pipe.process(1, mfs_frame(*unowned))  # no configured host owns host id 5
                await until(lambda: sum(kinds(c).values()) >= 3, what="3 digests acted on")
                assert kinds(c) == {"unreported": 1, "foreign": 2}
                await until(lambda: unreported in sup_installed(c), what="the unreported flow installed")
                flows = await switch_flows(t.address)
                assert flows[unreported] == 1  # config_data: stage 2 default level 1
                assert spoofed not in flows and unowned not in flows and known in flows
                assert c.engine.adopted[unreported].from_miss
                # its owner reports it after all: a normal flow from now on
                await h.report(h.start(7, stage=2))
                assert unreported not in c.engine.adopted and (base + 7) in c.engine.flows
                # an installed-on-digest entry nobody claims expires gc_timeout_s after, owner alive or not
                pipe.process(1, mfs_frame(2, base + 9))
                await until(lambda: (2, base + 9) in c.engine.adopted, what="second install")
                h_seen = c.engine.last_seen["h1"]
                assert await c.engine.gc(alive=h_seen + 1) == 0
                later = c.engine.adopted[(2, base + 9)].since + 31
                c.engine.last_seen["h1"] = later  # h1 is alive then: only the unclaimed entry goes
                assert await c.engine.gc(alive=later) == 1
                assert (2, base + 9) not in c.engine.adopted and len(c.engine.flows) == 2
                await until(lambda: (2, base + 9) not in sup_installed(c), what="expired entry deleted")
            finally:
                await h.close()
                await c.stop()
        run(go())


def sup_installed(c):
    return c.engine.supervisors["s1"].installed


def test_without_install_unknown_flows_are_only_counted():
    with _target("embedded") as t:
        async def go():
            c = await started(config_mod.parse(config_data([t.address]), "miss.yaml"))
            try:
                t.handle.switch.process(1, mfs_frame(2, 3))  # h1 owns flow id 3
                await until(lambda: kinds(c) == {"unreported": 1}, what="digest acted on")
                await asyncio.sleep(0.1)
                assert await switch_flows(t.address) == {} and not c.engine.adopted
            finally:
                await c.stop()
        run(go())


def filter_p4info(path) -> str:
    """The committed P4Info with revision 2's digest filter where it lacks it: register
    MfsIngress.miss_filter (bit<8>, 4096 cells) and the digest member filter_index:16."""
    info = p4info_copy()
    if not any(r.preamble.name == "MfsIngress.miss_filter" for r in info.registers):
        reg = info.registers.add()
        reg.preamble.id, reg.preamble.name, reg.preamble.alias = 0x16000003, "MfsIngress.miss_filter", "miss_filter"
        reg.type_spec.bitstring.bit.bitwidth = 8
        reg.size = 4096
    st = info.type_info.structs["mfs_miss_t"]
    if not any(m.name == "filter_index" for m in st.members):
        m = st.members.add()
        m.name = "filter_index"
        m.type_spec.bitstring.bit.bitwidth = 16
    return save_p4info(info, path)


def controller_ops(switch) -> int:
    """Packets the embedded pipeline took from the CPU port (PacketOuts): class_counter[10]."""
    return switch.counter("MfsIngress.class_counter")[0][10]


def test_digest_filter_cells_are_cleared(tmp_path):
    """Cells are cleared by PacketOut (packet_out op 1): at once only when the flow now has an
    entry (known, or installed on the digest); a flow that will keep missing (foreign,
    misplaced) leaves its cell set until the periodic clear: one digest per filter_clear_s, not
    one per packet. The periodic clear also sweeps 1/8 of the register, so a cell whose digest
    was lost is cleared within 8 periods; every (re)connect sweeps the whole register."""
    p4 = filter_p4info(tmp_path / "filter.p4info.txtpb")
    with switches([p4]) as (h,):
        async def go():
            data = config_data([h.address], unknown_flows={"install": True, "filter_clear_s": 3600})
            data["switches"][0]["p4info"] = p4
            c = await started(config_mod.parse(data, "filter.yaml"))
            host = Host(c.api_port)
            try:
                await host.register()
                await host.report(host.start(6, stage=2))  # flow id base + 6 is known
                base = host.reg.flow_id_base
                sup = c.engine.supervisors["s1"]
                reg = sup.miss_filter()
                cells = h.switch.registers[reg.id]
                await until(lambda: controller_ops(h.switch) == reg.size, what="the sweep after connect")
                for i in (5, 9, 11, 77, 4095):  # as the data plane sets them on misses
                    cells[i] = 1
                names = sup._miss_members()
                dl = p4r.DigestList(digest_id=sup.schema.digest("mfs_miss_t").id, list_id=1)
                for fid, src, port, idx in ((base + 3, 0x0A000001, 1, 5),  # unreported: installed
                                            (base + 6, 0x0A000001, 1, 9),  # known
                                            (base + 7, 0x0A000001, 2, 11),  # h1 is on port 1: misplaced
                                            (base + 4, 0x0A000009, 1, 77)):  # not h1's address: foreign
                    vals = {"stage": 2, "flow_id": fid, "request_id": 0, "src_addr": src, "ingress_port": port,
                            "filter_index": idx}
                    widths = {"stage": 8, "flow_id": 32, "request_id": 32, "src_addr": 32, "ingress_port": 9,
                              "filter_index": 16}
                    d = dl.data.add()
                    for n in names:
                        d.struct.members.add(bitstring=encode(vals[n], widths[n]))
                await sup._on_digest(sup.client, dl)
                await until(lambda: controller_ops(h.switch) == reg.size + 2, what="two PacketOuts applied")
                assert [cells[i] for i in (5, 9, 11, 77, 4095)] == [0, 0, 1, 1, 1]
                assert kinds(c) == {"unreported": 1, "known": 1, "misplaced": 1, "foreign": 1}
                # the periodic clear: the two cells not acted on, and cells 0..511 of the sweep
                assert await sup.clear_miss_filter() == reg.size // 8
                await until(lambda: not cells[11] and not cells[77], what="pending cells cleared")
                assert cells[4095] == 1
                for _ in range(7):  # ... and a cell whose digest was lost, once the sweep gets there
                    assert await sup.clear_miss_filter() == reg.size // 8
                await until(lambda: not cells[4095], what="the sweep reached cell 4095")
                assert c.metrics.total("miss_filter_cleared") == 4  # 2 acted on + 2 pending
            finally:
                await host.close()
                await c.stop()
        run(go())


@pytest.mark.netns
@pytest.mark.timeout(300)
@pytest.mark.parametrize("kind", ["embedded", "bmv2"])
def test_cleared_cell_reports_the_flow_again(kind):
    """The controller's clear works on every target, bmv2 included (PI has no RegisterEntry
    writes or reads): an unreported flow is digested once, stays silent while its cell is set,
    and after the controller's periodic clear (a PacketOut) its next packet is digested again."""
    from pathlib import Path

    from mfs.p4info import bmv2_unavailable
    from tests.dataplane.embedded_target import EmbeddedTarget

    root = Path(__file__).resolve().parents[1]
    if kind == "bmv2":
        why = bmv2_unavailable(root / "p4src" / "build" / "mfs.json")
        if why:
            pytest.skip(why)
        from tests.dataplane.bmv2_target import Bmv2Target
        t = Bmv2Target(root / "p4src" / "build" / "mfs.json", root / "p4src" / "build" / "mfs.p4info.txtpb")
    else:
        t = EmbeddedTarget()
        t.address = t.handle.address
    try:
        async def go():
            data = config_data([t.address], unknown_flows={"filter_clear_s": 3600})  # only our explicit clear
            c = await started(config_mod.parse(data, "again.yaml"))   # primary (election id 10 > the adapter's 1)
            sup = c.engine.supervisors["s1"]
            size = sup.miss_filter().size

            def ops():
                return t.counter("MfsIngress.class_counter", 10)[0]

            def digested():
                return sum(kinds(c).values())

            try:
                await until(lambda: ops() >= size, timeout=60, what="the sweep after connect")
                base = ops()
                pkt = mfs_frame(2, 3)  # h1 (10.0.0.1, port 1) owns flow id 3 and did not report it
                await asyncio.to_thread(t.send, 1, pkt)
                await until(lambda: digested() == 1, what="the first digest")
                for _ in range(2):
                    await asyncio.to_thread(t.send, 1, pkt)
                await asyncio.sleep(0.5)
                assert digested() == 1, kinds(c)  # reported once: the cell is set
                n = await sup.clear_miss_filter()  # the cell of the unreported flow + a sweep slice
                assert n == size // 8
                await until(lambda: ops() >= base + n, timeout=30, what="the PacketOuts applied")
                await asyncio.to_thread(t.send, 1, pkt)
                await until(lambda: digested() == 2, what="the digest after the clear")
                assert kinds(c) == {"unreported": 2}
            finally:
                await c.stop()
        run(go(), timeout=240)
    finally:
        t.close()


def test_unknown_flows_config_errors():
    import pytest

    from mfs.configutil import ConfigError
    with pytest.raises(ConfigError, match=r"unknown_flows\.install"):
        config_mod.parse(config_data(["127.0.0.1:1"], unknown_flows={"install": "yes"}), "c.yaml")
    with pytest.raises(ConfigError, match=r"unknown_flows\.filter_clear_s"):
        config_mod.parse(config_data(["127.0.0.1:1"], unknown_flows={"filter_clear_s": 0}), "c.yaml")
    with pytest.raises(ConfigError, match=r"unknown_flows.*everything"):
        config_mod.parse(config_data(["127.0.0.1:1"], unknown_flows={"everything": 1}), "c.yaml")
