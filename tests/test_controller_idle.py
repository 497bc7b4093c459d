"""Flow-table idle timeout: the controller sets idle_timeout_ns on a flow's edge entry when the
switch's P4Info supports it (NOTIFY_CONTROL), and ends the flow on the P4Runtime
IdleTimeoutNotification (as GC would: policy, desired state, entries everywhere).

Against the embedded switch over loopback gRPC, serving a P4Info whose ``mfs_flow`` has
``idle_timeout_behavior: NOTIFY_CONTROL`` (revision 2 of docs/p4-api.md). Time is not waited
for: the switch's idle check is run at a chosen instant (``IdleNotifier.check(now)``), after
real packets have hit one of the entries.
"""

from __future__ import annotations

import contextlib

import pytest
from finsy.proto import p4i
from google.protobuf import text_format

from controller import config as config_mod
from controller.testing import config_data
from mfs.header import MFS_UDP_PORT, pack
from mfs.p4info import DEFAULT_P4INFO, P4Schema
from tests.test_controller import Host, run, started, switch_flows, until

IDLE_S = 30.0  # long: the switch's own 50 ms check never fires during the test


def p4info_copy() -> p4i.P4Info:
    """A mutable copy of the committed P4Info (tests derive variants from it)."""
    return p4i.P4Info.FromString(P4Schema.load(DEFAULT_P4INFO).info.SerializeToString())


def save_p4info(info: p4i.P4Info, path) -> str:
    path.write_text(text_format.MessageToString(info))
    return str(path)


def idle_p4info(path, behavior=p4i.Table.NOTIFY_CONTROL, source_bound=True) -> str:
    """The committed P4Info with ``behavior`` on mfs_flow; ``source_bound=False``: its key is
    only (stage, flow_id), as in revision 1 (a copy of every entry is useful on such a switch)."""
    info = p4info_copy()
    for t in info.tables:
        if t.preamble.name == "MfsIngress.mfs_flow":
            t.idle_timeout_behavior = behavior
            if not source_bound:
                keep = [m for m in t.match_fields if m.name in ("stage", "flow_id")]
                del t.match_fields[:]
                t.match_fields.extend(keep)
    return save_p4info(info, path)


@contextlib.contextmanager
def switches(p4infos):
    from topo.embedded.server import start_server
    hs = []
    try:
        for p in p4infos:
            hs.append(start_server(address="127.0.0.1:0", p4info_path=p))
        yield hs
    finally:
        for h in hs:
            h.stop()


def frame(stage: int, flow_id: int) -> bytes:
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether
    return bytes(Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(dport=MFS_UDP_PORT)
                 / pack(stage, flow_id) / (b"x" * 100))


def entry(handle, key):
    return next(e for k, e in handle.switch.entries["MfsIngress.mfs_flow"].items() if k[:2] == key)


def test_idle_flow_is_ended_and_its_entries_deleted(tmp_path):
    p4 = idle_p4info(tmp_path / "idle.p4info.txtpb")
    # s2, s3: flow keys not bound to the source (a source-bound switch holds only its own hosts'
    # entries: docs/controller.md), so placement all writes copies there
    unbound = idle_p4info(tmp_path / "idle-unbound.p4info.txtpb", source_bound=False)
    no_idle = idle_p4info(tmp_path / "no-idle.p4info.txtpb", p4i.Table.NO_TIMEOUT, source_bound=False)
    with switches([p4, unbound, no_idle]) as (h1sw, h2sw, plain):
        async def go():
            data = config_data([h1sw.address, h2sw.address, plain.address], flow_idle_timeout_s=IDLE_S,
                               placement="all")
            for sw, path in zip(data["switches"], (p4, unbound, no_idle)):
                sw["p4info"] = path
            c = await started(config_mod.parse(data, "idle.yaml"))
            h = Host(c.api_port)
            try:
                await h.register()
                s1 = c.engine.supervisors["s1"]
                assert (s1.idle_ns, c.engine.supervisors["s3"].idle_ns) == (int(IDLE_S * 1e9), 0)
                await h.report(h.start(0), h.start(1, stage=2))
                k0, k1 = (1, h.reg.flow_id_base), (2, h.reg.flow_id_base + 1)
                # placement all: every switch has both entries; only h1's edge switch (s1) times them out
                for sw in (h1sw, h2sw, plain):
                    assert set(await switch_flows(sw.address)) == {k0, k1}
                assert entry(h1sw, k0).idle_ns == int(IDLE_S * 1e9)
                assert entry(h2sw, k0).idle_ns == 0 and entry(plain, k0).idle_ns == 0
                h1sw.switch.process(1, frame(*k1))  # a packet of flow 1 hits its entry; flow 0 sends nothing
                now = entry(h1sw, k0).last_hit + IDLE_S
                assert entry(h1sw, k1).last_hit > entry(h1sw, k0).last_hit
                assert h1sw.service.idle.check(now) == 1  # flow 0 only
                for sw in (h1sw, h2sw, plain):
                    await until(lambda: all(k[:2] != k0 for k in sw.switch.entries["MfsIngress.mfs_flow"]),
                                what="flow 0's entry deleted")
                assert set(await switch_flows(h2sw.address)) == {k1}
                assert k0[1] not in c.engine.flows and k1[1] in c.engine.flows
                assert c.metrics.total("idle_timeout_flows") == 1
                st = {s["name"]: s for s in await c.switches()}
                assert st["s1"]["idle_timeouts"] == 1 and st["s1"]["idle_timeout_s"] == IDLE_S
                # the host forgot it: its late flow_end is refused as for any ended flow
                ack = await h.report(h.end(0))
                assert ack.rejected and "unknown_flow" in ack.rejected[0].reason
                # still idle later: notified again (spec), nothing left to do; flow 1 idles too
                assert h1sw.service.idle.check(entry(h1sw, k1).last_hit + IDLE_S) == 1
                await until(lambda: not h1sw.switch.entries["MfsIngress.mfs_flow"], what="flow 1's entry deleted")
                assert not c.engine.flows
            finally:
                await h.close()
                await c.stop()
        run(go())


def test_embedded_switch_refuses_a_timeout_where_the_p4info_has_none(tmp_path):
    from finsy.proto import p4r

    from topo.embedded.pipeline import EntityError, Pipeline
    schema = P4Schema.load(idle_p4info(tmp_path / "no-idle.p4info.txtpb", p4i.Table.NO_TIMEOUT))
    p = Pipeline(schema)
    te = schema.table_entry("MfsIngress.mfs_flow", {"stage": 1, "flow_id": 5, "ingress_port": 1, "src_addr": "10.0.0.1"},
                            "MfsIngress.set_level", {"level": 3})
    te.idle_timeout_ns = 10**9
    with pytest.raises(EntityError, match="does not support idle timeout"):
        p.write_table(p4r.Update.INSERT, te)


def test_idle_timeout_config_errors():
    from mfs.configutil import ConfigError
    for bad in (-1, "soon", float("inf")):
        with pytest.raises(ConfigError, match="flow_idle_timeout_s"):
            config_mod.parse(config_data(["127.0.0.1:1"], flow_idle_timeout_s=bad), "c.yaml")
    assert config_mod.parse(config_data(["127.0.0.1:1"], flow_idle_timeout_s=0), "c.yaml").flow_idle_timeout_s == 0
