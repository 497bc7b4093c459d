"""Edge placement (controller/placement.py): a flow's entry only on the switch its host hangs off.

Against real P4Runtime targets over loopback gRPC (embedded switch; bmv2 when installed):
what each switch holds is read back from the switch with an independent session.
"""

from __future__ import annotations

import asyncio

import pytest

from controller import config as config_mod
from controller.config import HostConfig
from controller.placement import Placement, SwitchDesired
from controller.testing import config_data
from mfs.p4info import P4Schema
from mfs.configutil import ConfigError
from tests.test_controller import Host, _target, run, started, switch_flows, target_kind  # noqa: F401


def two_racks(addresses, placement="edge", **over):
    """h1 on s1 port 1, h2 on s2 port 1; port 3 of each switch links the two (fabric)."""
    data = config_data(addresses, placement=placement, **over)
    for sw in data["switches"]:
        sw["ports"] = {1: {"rate_bps": 1e9}, 3: {"rate_bps": 1e9}}
    data["hosts"][1].update(switch="s2", port=1)
    data["hosts"].append({"name": "h3", "address": "10.0.0.3", "token": "token-of-h3"})  # switch unknown
    return config_mod.parse(data, "test.yaml")


def test_edge_placement_writes_each_flow_only_on_its_edge_switch(target_kind):
    with _target(target_kind) as t1, _target(target_kind) as t2:
        async def go():
            c = await started(two_racks([t1.address, t2.address]))
            h1, h2 = Host(c.api_port), Host(c.api_port, "h2", "token-of-h2", "10.0.0.2")
            h3 = Host(c.api_port, "h3", "token-of-h3", "10.0.0.3")
            try:
                for h in (h1, h2, h3):
                    await h.register()
                s1, s2 = c.engine.supervisors["s1"], c.engine.supervisors["s2"]
                w2 = s2.client.writes
                await h1.report(*[h1.start(i) for i in range(5)])
                assert s2.client.writes == w2  # nothing of h1's is written on s2
                await h2.report(*[h2.start(i) for i in range(3)])
                f1, f2 = await switch_flows(t1.address), await switch_flows(t2.address)
                assert {k[1] - h1.reg.flow_id_base for k in f1} == set(range(5))
                assert {k[1] - h2.reg.flow_id_base for k in f2} == set(range(3))
                # a host whose switch is unknown: its flows could enter anywhere, but a source-bound
                # entry (revision 2) matches only on its host's port: none is written
                await h3.report(h3.start(0))
                key = (1, h3.reg.flow_id_base)
                assert key not in await switch_flows(t1.address) and key not in await switch_flows(t2.address)
                assert key in c.engine.desired and c.engine.where[key] == frozenset()
                sts = {s["name"]: s for s in await c.switches()}
                assert (sts["s1"]["flow_entries"], sts["s2"]["flow_entries"]) == (5, 3)
                assert sts["s1"]["placement"] == "edge"
                assert sts["s1"]["ports"] == "edge 1 fabric 3"
                assert sts["s2"]["ports"] == "edge 1 fabric 3"
                await h1.report(*[h1.end(i) for i in range(5)])
                assert len(await switch_flows(t1.address)) == 0 and len(await switch_flows(t2.address)) == 3
                assert not c.engine.where.get((1, h1.reg.flow_id_base))  # forgotten with the flow
            finally:
                for h in (h1, h2, h3):
                    await h.close()
                await c.stop()
        run(go())


def test_placement_all_on_source_bound_switches_writes_each_flow_on_its_edge_only(target_kind, caplog):
    """Revision 2 binds an entry to its host's port (exact ``ingress_port``, no wildcard): a copy
    on another switch could never match the owner's packets, so ``placement: all`` writes none
    there, and says so at config load, naming the switches."""
    with _target(target_kind) as t1, _target(target_kind) as t2:
        async def go():
            with caplog.at_level("WARNING", logger="mfs.controller"):
                cfg = two_racks([t1.address, t2.address], placement="all")
            assert "placement all: switches s1, s2 bind flow entries to the sender's port" in caplog.text
            c = await started(cfg)
            h1, h3 = Host(c.api_port), Host(c.api_port, "h3", "token-of-h3", "10.0.0.3")
            try:
                await h1.register()
                await h3.register()
                await h1.report(*[h1.start(i, stage=2) for i in range(4)])
                assert len(await switch_flows(t1.address)) == 4  # h1's edge switch
                assert await switch_flows(t2.address) == {}  # no copies where they cannot match
                assert c.engine.where[(2, h1.reg.flow_id_base)] == {"s1"}
                await h3.report(h3.start(0))
                assert (1, h3.reg.flow_id_base) not in await switch_flows(t1.address)
            finally:
                for h in (h1, h3):
                    await h.close()
                await c.stop()
        run(go())


def test_restart_deletes_entries_off_their_hosts_edge_switch(target_kind):
    """Entries a previous controller left on a switch where they no longer belong (copies of
    placement all from before source binding, or a host moved to another switch): a restarted
    controller adopts them, writes them on their host's edge switch and deletes them elsewhere."""
    with _target(target_kind) as t1, _target(target_kind) as t2:
        async def go():
            moved = config_data([t1.address, t2.address], placement="edge")
            for sw in moved["switches"]:
                sw["ports"] = {1: {"rate_bps": 1e9}, 3: {"rate_bps": 1e9}}
            moved["hosts"][0].update(switch="s2", port=1)  # h1 hung off s2 then
            moved["hosts"][1].update(switch="s1", port=1)
            c = await started(config_mod.parse(moved, "test.yaml"))
            h1 = Host(c.api_port)
            try:
                await h1.register()
                await h1.report(*[h1.start(i, stage=2) for i in range(4)])
                assert len(await switch_flows(t2.address)) == 4 and not await switch_flows(t1.address)
            finally:
                await h1.close()
                await c.stop()
            c = await started(two_racks([t1.address, t2.address], placement="edge"))  # h1 on s1 now
            try:
                for _ in range(200):  # the adopted keys are moved at the next round
                    if not await switch_flows(t2.address) and len(await switch_flows(t1.address)) == 4:
                        break
                    await asyncio.sleep(0.02)
                assert await switch_flows(t2.address) == {}
                assert len(await switch_flows(t1.address)) == 4
                assert len(c.engine.adopted) == 4
            finally:
                await c.stop()
        run(go())


def test_switch_view_and_placement_rules():
    hosts = [HostConfig("a", "10.0.0.1", "x" * 8, 0, switch="s1", port=1), HostConfig("b", "10.0.0.2", "x" * 8, 1)]
    p = Placement("edge", hosts, ["s1", "s2"], flow_id_bits=20)
    assert p.switches_of("a") == {"s1"} and p.switches_of("b") is None and p.switches_of(None) is None
    assert Placement("all", hosts, ["s1", "s2"]).switches_of("a") is None
    # source-bound switches hold an entry only as its host's edge switch, with the host's port known
    hosts.append(HostConfig("c", "10.0.0.3", "x" * 8, 2, switch="s2"))  # port unknown
    for mode in ("all", "edge"):
        b = Placement(mode, hosts, ["s1", "s2", "s3"], source_bound={"s1", "s2"})
        assert b.switches_of("a") == ({"s1", "s3"} if mode == "all" else {"s1"})
        assert b.switches_of("b") == {"s3"} and b.switches_of(None) == {"s3"}  # anywhere it can match
        assert b.switches_of("c") == ({"s3"} if mode == "all" else frozenset())
    assert Placement("all", hosts, ["s1"], source_bound={"s1"}).switches_of("b") == frozenset()
    assert p.owner(5).name == "a" and p.owner((1 << 20) + 5).name == "b" and p.owner(2 << 20) is None
    desired = {(1, 1): 3, (1, 2): 4}
    where = {(1, 1): frozenset({"s1"})}
    v1, v2 = SwitchDesired(desired, where, "s1"), SwitchDesired(desired, where, "s2")
    assert dict(v1) == desired and dict(v2) == {(1, 2): 4}
    assert v2.get((1, 1)) is None and (1, 1) not in v2 and len(v2) == 1
    with pytest.raises(ValueError, match="allowed: all, edge"):
        Placement("path", {}, [])


def test_placement_and_port_mode_config_errors():
    data = config_data(["127.0.0.1:1"], placement="everywhere")
    with pytest.raises(ConfigError, match=r"placement.*'everywhere' is not allowed \(allowed: auto, all, edge\)"):
        config_mod.parse(data, "c.yaml")
    data = config_data(["127.0.0.1:1"])
    data["switches"][0]["ports"][2]["mode"] = "core"
    with pytest.raises(ConfigError, match=r"switches\[0\]\.ports\.2\.mode.*'core' is not allowed"):
        config_mod.parse(data, "c.yaml")
    data["switches"][0]["ports"][2]["mode"] = "fabric"  # h2 hangs off port 2, but the operator says fabric
    cfg = config_mod.parse(data, "c.yaml")
    from controller.placement import port_roles
    assert port_roles(cfg, "s1") == {1: "edge", 2: "fabric"}
    # the default, auto: all while a switch's P4Info lacks fabric-port DSCP trust (revision 1)
    assert cfg.placement == ("edge" if "MfsIngress.dscp_trust" in P4Schema.load().tables else "all")


# ------------------------------------------------------------------ per-switch P4Info
def renumbered_p4info(path) -> str:
    """The committed P4Info with every object id moved (names equal), as the Tofino back end's
    P4Info differs from the v1model one (issue 11)."""
    from tests.test_controller_idle import p4info_copy, save_p4info
    info = p4info_copy()
    new = {}
    for kind in ("tables", "actions", "counters", "registers", "digests", "meters", "direct_counters"):
        for obj in getattr(info, kind):
            new[obj.preamble.id] = obj.preamble.id + 0x400
            obj.preamble.id = new[obj.preamble.id]
    for t in info.tables:
        for ref in t.action_refs:
            ref.id = new[ref.id]
        if t.const_default_action_id:
            t.const_default_action_id = new[t.const_default_action_id]
        t.direct_resource_ids[:] = [new[i] for i in t.direct_resource_ids]
    return save_p4info(info, path)


def test_each_switch_is_programmed_with_its_own_p4info(tmp_path):
    """s1 serves the committed (v1model) P4Info, s2 one with other ids and the same names:
    the controller resolves every name through each switch's own P4Info."""
    from finsy.proto import p4r_grpc
    import grpc

    from controller.p4rt.client import SwitchClient
    from mfs.p4info import P4Schema
    from topo.embedded.server import start_server
    other = renumbered_p4info(tmp_path / "other.p4info.txtpb")
    s_other = P4Schema.load(other)
    assert s_other.table("MfsIngress.mfs_flow").id != P4Schema.load().table("MfsIngress.mfs_flow").id
    h1, h2 = start_server(address="127.0.0.1:0"), start_server(address="127.0.0.1:0", p4info_path=other)
    try:
        async def flows_of(address, schema):
            c = SwitchClient(address, 1, election_id=1, name="reader")
            c.channel = grpc.aio.insecure_channel(address)
            c.stub = p4r_grpc.P4RuntimeStub(c.channel)
            try:
                out = {}
                for te in await c.read_table(0):
                    spec = schema.describe_table_entry(te)
                    out.setdefault(spec.table, []).append(spec)
                return out
            finally:
                await c.channel.close()

        async def go():
            data = config_data([h1.address, h2.address], placement="all")
            data["switches"][1]["p4info"] = other
            data["hosts"][1].update(switch="s2", port=1)  # (source-bound entries: each on its edge switch)
            c = await started(config_mod.parse(data, "p4info.yaml"))
            h, hb = Host(c.api_port), Host(c.api_port, "h2", "token-of-h2", "10.0.0.2")
            try:
                for x in (h, hb):
                    await x.register()
                    await x.report(x.start(0, stage=3), x.start(1))
                a, b = await flows_of(h1.address, P4Schema.load()), await flows_of(h2.address, s_other)
                for tab in ("MfsIngress.mfs_stage_default", "MfsEgress.level_dscp", "MfsEgress.dscp_rewrite"):
                    assert sorted(map(repr, a[tab])) == sorted(map(repr, b[tab])), tab
                mine = lambda d, x: {(e.match["stage"], e.match["flow_id"] - x.reg.flow_id_base, e.match["ingress_port"])  # noqa: E731
                                     for e in d["MfsIngress.mfs_flow"]}
                assert mine(a, h) == mine(b, hb) == {(3, 0, 1), (1, 1, 1)}
                # and the counters are read by name on each switch too
                assert (await c.engine.supervisors["s2"].read_queues())[0]["switch"] == "s2"
            finally:
                for x in (h, hb):
                    await x.close()
                await c.stop()
        run(go())
    finally:
        h1.stop()
        h2.stop()


def test_overflow_retry_looks_only_at_overflowed_keys():
    """A table-full retry picks up to ``room`` overflowed keys and drops the ended ones it meets,
    without walking the whole desired state (it used to build a set of every desired key)."""
    from controller.engine import Engine

    class Client:  # a switch session that accepts every update
        writes = 0

        async def write(self, ups, timeout=None):
            self.writes += 1
            return []

    class NoWalk(SwitchDesired):
        def __iter__(self):
            raise AssertionError("walked the whole desired state")

    async def go():
        eng = Engine(config_mod.parse(config_data(["127.0.0.1:1"]), "t.yaml"))
        sup = eng.supervisors["s1"]
        sup.client, sup.capacity = Client(), 2
        eng.desired.update({(1, i): 3 for i in range(5000)})
        sup.desired = NoWalk(eng.desired, eng.where, "s1")
        waiting = {(1, 5), (1, 6), (1, 7)}
        sup.overflow = waiting | {(2, 99)}  # (2, 99) ended meanwhile
        await sup._retry_overflow(sup.client)
        assert len(sup.installed) == 2 and set(sup.installed) <= waiting
        assert sup.overflow - {(2, 99)} == waiting - set(sup.installed)
        sup.capacity = 10
        await sup._retry_overflow(sup.client)
        assert set(sup.installed) == waiting and not sup.overflow
    asyncio.run(go())
