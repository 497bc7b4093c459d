"""Controller against a switch serving revision 2 of the P4 API (docs/p4-api.md): port modes
(edge / fabric) and the DSCP a fabric port trusts are programmed from the config; per-port
stats are read at the full-port index and the max-keeping registers read-and-cleared.

The P4Info is the committed one with revision 2's entities added where it lacks them, served
by the embedded switch (which stores entries of any table its P4Info has).
"""

from __future__ import annotations

from finsy.proto import p4i

from controller import config as config_mod
from controller.testing import config_data
from mfs.levels import default_dscp
from mfs.p4info import P4Schema
from tests.test_controller import Host, run, started
from tests.test_controller_idle import p4info_copy, save_p4info, switches


def rev2_p4info(path) -> str:
    info = p4info_copy()
    names = {t.preamble.name for t in info.tables}
    set_level = next(a.preamble.id for a in info.actions if a.preamble.name == "MfsIngress.set_level")
    if "MfsIngress.port_mode" not in names:
        ids = {}
        for aid, name in ((0x01000007, "MfsIngress.edge_port"), (0x01000008, "MfsIngress.fabric_port")):
            a = info.actions.add()
            a.preamble.id, a.preamble.name = aid, name
            ids[name] = aid
        t = info.tables.add()
        t.preamble.id, t.preamble.name, t.size = 0x02000008, "MfsIngress.port_mode", 512
        f = t.match_fields.add(id=1, name="ingress_port", bitwidth=9)
        f.match_type = p4i.MatchField.EXACT
        for aid in ids.values():
            t.action_refs.add(id=aid)
    if "MfsIngress.dscp_trust" not in names:
        t = info.tables.add()
        t.preamble.id, t.preamble.name, t.size = 0x0200000A, "MfsIngress.dscp_trust", 64
        f = t.match_fields.add(id=1, name="dscp", bitwidth=6)
        f.match_type = p4i.MatchField.EXACT
        t.action_refs.add(id=set_level)
    flow = next(t for t in info.tables if t.preamble.name == "MfsIngress.mfs_flow")
    if not any(f.name == "src_addr" for f in flow.match_fields):  # source-bound key
        for fid, name, bits in ((3, "ingress_port", 9), (4, "src_addr", 32)):
            f = flow.match_fields.add(id=fid, name=name, bitwidth=bits)
            f.match_type = p4i.MatchField.EXACT
    for c in list(info.counters) + list(info.registers):
        if c.preamble.name in ("MfsEgress.queue_counter", "MfsEgress.queue_depth", "MfsEgress.queue_delay"):
            c.size = 4096
    return save_p4info(info, path)


def test_port_modes_dscp_trust_and_full_port_stats(tmp_path):
    p4 = rev2_p4info(tmp_path / "rev2.p4info.txtpb")
    with switches([p4]) as (h,):
        async def go():
            data = config_data([h.address], placement="edge")
            data["switches"][0]["p4info"] = p4
            data["switches"][0]["ports"] = {1: {"rate_bps": 1e9}, 2: {"rate_bps": 1e9}, 6: {"rate_bps": 1e9},
                                            70: {"rate_bps": 1e9}}
            c = await started(config_mod.parse(data, "rev2.yaml"))
            try:
                modes = {e.spec.match["ingress_port"]: e.action
                         for e in h.switch.entries["MfsIngress.port_mode"].values()}
                # h1, h2 hang off ports 1, 2: edge; 6 and 70 lead to other switches: fabric
                assert modes == {1: "MfsIngress.edge_port", 2: "MfsIngress.edge_port",
                                 6: "MfsIngress.fabric_port", 70: "MfsIngress.fabric_port"}
                trust = {e.spec.match["dscp"]: e.params["level"]
                         for e in h.switch.entries["MfsIngress.dscp_trust"].values()}
                assert trust == {default_dscp(lv): lv for lv in range(8)}  # the inverse of level_dscp
                # flow entries bound to their source: the owning host's port and address
                h1, h2 = Host(c.api_port), Host(c.api_port, "h2", "token-of-h2", "10.0.0.2")
                for hh in (h1, h2):
                    await hh.register()
                    await hh.report(hh.start(0))
                    await hh.close()
                got = sorted((e.spec.match["flow_id"], e.spec.match["ingress_port"], e.spec.match["src_addr"])
                             for e in h.switch.entries["MfsIngress.mfs_flow"].values())
                assert got == [(h1.reg.flow_id_base, 1, 0x0A000001), (h2.reg.flow_id_base, 2, 0x0A000002)]
                sup = c.engine.supervisors["s1"]
                assert sup.full_port_stats
                depth = h.switch.registers[sup.schema.register("MfsEgress.queue_depth").id]
                depth[70 * 8 + 2] = 5
                depth[6 * 8 + 2] = 9  # (port 70 % 64) * 8 + 2: what the old index would have read
                rows = {(r["port"], r["level"]): r for r in await sup.read_queues()}
                assert rows[(70, 2)]["depth"] == 5 and rows[(6, 2)]["depth"] == 9
                assert depth[70 * 8 + 2] == 0 and depth[6 * 8 + 2] == 0  # read-and-clear
                rows = {(r["port"], r["level"]): r for r in await sup.read_queues()}
                assert rows[(70, 2)]["depth"] == 0
                # a resync leaves them as they are (owned tables, nothing to change)
                n = len(h.switch.entries["MfsIngress.port_mode"])
                assert await sup.reprogram() and len(h.switch.entries["MfsIngress.port_mode"]) == n
            finally:
                await c.stop()
        run(go())


def test_auto_placement_is_edge_only_where_every_switch_trusts_dscp(tmp_path):
    p4 = rev2_p4info(tmp_path / "rev2.p4info.txtpb")
    plain = P4Schema.load()
    data = config_data(["127.0.0.1:1", "127.0.0.1:2"])
    for sw in data["switches"]:
        sw["p4info"] = p4
    assert config_mod.parse(data, "c.yaml").placement == "edge"
    data["switches"][1]["p4info"] = str(plain_path())  # one switch without fabric-port trust
    want = "edge" if "MfsIngress.dscp_trust" in plain.tables else "all"
    assert config_mod.parse(data, "c.yaml").placement == want
    data["placement"] = "all"
    for sw in data["switches"]:
        sw["p4info"] = p4
    assert config_mod.parse(data, "c.yaml").placement == "all"  # explicit wins


def plain_path():
    from mfs.p4info import DEFAULT_P4INFO
    return DEFAULT_P4INFO


def test_hosts_without_a_port_are_named_when_entries_are_source_bound(tmp_path, caplog):
    from controller.engine import Engine
    data = config_data(["127.0.0.1:1"])
    data["switches"][0]["p4info"] = rev2_p4info(tmp_path / "rev2.p4info.txtpb")
    data["hosts"].append({"name": "h3", "address": "10.0.0.3", "token": "token-of-h3"})
    with caplog.at_level("WARNING", logger="mfs.engine"):
        Engine(config_mod.parse(data, "c.yaml"))
    assert any("h3" in r.getMessage() and "no switch/port" in r.getMessage() for r in caplog.records)
    caplog.clear()
    data["hosts"].pop()
    with caplog.at_level("WARNING", logger="mfs.engine"):
        Engine(config_mod.parse(data, "c.yaml"))
    assert not [r for r in caplog.records if "no switch/port" in r.getMessage()]
