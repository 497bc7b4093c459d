"""Controller against a real P4Runtime target over loopback gRPC (embedded switch; bmv2 when installed).

Covers: arbitration (higher election id wins, the loser stops writing), one Write
per promotion round, resync after a switch restart, state rebuilt after a
controller restart (adopt, then delete what nobody claims), GC of silent hosts,
full flow table falling back to the stage default without failing the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import time

import grpc
import pytest

from controller import config as config_mod
from controller.main import Controller
from controller.p4rt.client import NotPrimary, SwitchClient
from controller.switches import FLOW_TABLE
from controller.testing import TARGETS, TargetUnavailable, config_data, open_target
from mfs.header import MFS_UDP_PORT, pack
from mfs.p4info import P4Schema
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg

SCHEMA = P4Schema.load()


@pytest.fixture(params=TARGETS)
def target_kind(request):
    return request.param


@contextlib.contextmanager
def _target(kind, **kw):
    cm = open_target(kind, **kw)
    try:
        t = cm.__enter__()
    except TargetUnavailable as e:  # depends on the machine: bmv2 may not be installed
        pytest.skip(f"{kind}: {e}")
    try:
        yield t
    finally:
        cm.__exit__(None, None, None)


def run(coro, timeout=60):
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def until(cond, timeout=10.0, what="condition"):
    t0 = time.monotonic()
    while not cond():
        if time.monotonic() - t0 > timeout:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def switch_flows(address: str) -> dict[tuple[int, int], int]:
    """Read mfs_flow straight from the switch with an independent (non-primary) session."""
    c = SwitchClient(address, 1, election_id=1, name="reader")
    c.channel = grpc.aio.insecure_channel(address)
    from finsy.proto import p4r_grpc
    c.stub = p4r_grpc.P4RuntimeStub(c.channel)
    try:
        out = {}
        for te in await c.read_table(SCHEMA.table(FLOW_TABLE).id):
            spec = SCHEMA.describe_table_entry(te)
            out[(spec.match["stage"], spec.match["flow_id"])] = spec.params["level"]
        return out
    finally:
        await c.channel.close()


class Host:
    """A minimal host-agent stand-in speaking the real HostReports API."""

    def __init__(self, port: int, name="h1", token="token-of-h1", address="10.0.0.1"):
        self.ch = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
        self.stub = pbg.HostReportsStub(self.ch)
        self.name, self.token, self.address = name, token, address
        self.seq = 0

    async def register(self):
        self.reg = await self.stub.Register(pb.RegisterRequest(host=self.name, token=self.token, address=self.address))
        self.seq = max(self.seq, self.reg.last_seq)
        return self.reg

    def ev(self, **kind) -> pb.Event:
        self.seq += 1
        return pb.Event(seq=self.seq, time=time.time(), **kind)

    async def report(self, *events) -> pb.ReportAck:
        return await self.stub.Report(pb.ReportBatch(session=self.reg.session, events=list(events)))

    def start(self, fid, stage=1, size=1_000_000, target_layer=3, **kw):
        return self.ev(flow_start=pb.FlowStart(flow_id=self.reg.flow_id_base + fid, stage=stage, request_id=1,
                                               size_bytes=size, target_layer=target_layer, **kw))

    def end(self, fid):
        return self.ev(flow_end=pb.FlowEnd(flow_id=self.reg.flow_id_base + fid))

    async def close(self):
        await self.ch.close()


def make_cfg(addresses, **over):
    return config_mod.parse(config_data(addresses, **over), "test.yaml")


async def started(cfg) -> Controller:
    c = Controller(cfg)
    await c.start()
    try:
        await c.engine.wait_ready(15)
    except BaseException:
        await c.stop()
        raise
    return c


HOSTS = {"h1": ("h1", "token-of-h1", "10.0.0.1"), "h2": ("h2", "token-of-h2", "10.0.0.2")}


@contextlib.asynccontextmanager
async def running(t, hosts=("h1",), **over):
    """A controller on target t with registered hosts; always cleaned up."""
    c = await started(make_cfg([t.address], **over))
    hs = []
    try:
        for n in hosts:
            hs.append(Host(c.api_port, *HOSTS[n]))
            await hs[-1].register()
        yield c, c.engine.supervisors["s1"], hs
    finally:
        for h in hs:
            await h.close()
        await c.stop()


# ------------------------------------------------------------------ arbitration
def test_arbitration_higher_election_id_wins_and_loser_stops_writing(target_kind):
    with _target(target_kind) as t:
        async def go():
            low = SwitchClient(t.address, t.device_id, election_id=5, name="low")
            assert await low.open() is True  # alone: primary
            high = SwitchClient(t.address, t.device_id, election_id=9, name="high")
            assert await high.open() is True
            await until(lambda: not low.is_primary, what="low to learn it lost primary")
            te = SCHEMA.table_entry(FLOW_TABLE, {"stage": 1, "flow_id": 7, "ingress_port": 1, "src_addr": "10.0.0.1"},
                                    "MfsIngress.set_level", {"level": 3})
            from controller.p4rt.client import update
            with pytest.raises(NotPrimary):
                await low.write([update("insert", te)])
            assert await high.set_pipeline(SCHEMA.info, t.device_config) in (True, False)
            assert await high.write([update("insert", te)]) == []
            # the loser did not even send its write (stops writing on losing primary)
            assert low.writes == 0
            await high.close()
            # spec: when the primary leaves there is no primary until a client arrives with an
            # election id >= the highest seen; the lower one stays backup and still cannot write
            await asyncio.sleep(0.3)
            if t.name == "bmv2":
                # PI (bmv2's server) deviates: the highest election id among the clients still
                # connected becomes primary (p4lang/PI proto/server/pi_server.cpp; docs/bmv2.md)
                await until(lambda: low.is_primary, what="PI to promote the remaining client")
                await low.close()
                return
            assert not low.is_primary
            with pytest.raises(NotPrimary):
                await low.write([update("modify", te)])
            again = SwitchClient(t.address, t.device_id, election_id=9, name="again")
            assert await again.open() is True
            await again.close()
            await low.close()
        run(go())


def test_two_controllers_only_the_primary_writes(target_kind):
    with _target(target_kind) as t:
        async def go():
            a = await started(make_cfg([t.address]))
            data = config_data([t.address])
            data["switches"][0]["election_id"] = 20
            b = await started(config_mod.parse(data, "b.yaml"))
            sa = a.engine.supervisors["s1"]
            await until(lambda: sa.state == "backup", what="the lower controller to become backup")
            assert b.engine.supervisors["s1"].state == "ready"
            ha, hb = Host(a.api_port), Host(b.api_port)
            await ha.register()
            await hb.register()
            writes_before = sa.client.writes
            await ha.report(ha.start(1))
            assert sa.client.writes == writes_before  # backup: nothing written
            assert await switch_flows(t.address) == {}
            await hb.report(hb.start(2))
            assert list(await switch_flows(t.address)) == [(1, 2)]
            for h in (ha, hb):
                await h.close()
            await b.stop()
            # the lower election id does not take over on its own (spec); it keeps not writing
            await asyncio.sleep(0.3)
            if t.name == "bmv2":
                # PI promotes the remaining controller instead (docs/bmv2.md), which then resyncs
                await until(lambda: sa.state == "ready", what="PI to promote the remaining controller")
            else:
                assert sa.state == "backup" and not sa.ready.is_set()
                assert sa.client.writes == writes_before
            await a.stop()
        run(go())


# ------------------------------------------------------------------ batching
def test_one_write_per_round(target_kind):
    with _target(target_kind) as t:
        async def go():
            async with running(t) as (c, sup, (h,)):
                w0 = sup.client.writes
                ack = await h.report(*[h.start(i, stage=1 + i % 3) for i in range(50)])
                assert not ack.rejected and ack.acked_seq == 50
                assert sup.client.writes - w0 == 1  # 50 inserts, one WriteRequest
                assert len(await switch_flows(t.address)) == 50
                w1 = sup.client.writes
                ack = await h.report(*[h.end(i) for i in range(50)])
                assert sup.client.writes - w1 == 1
                assert await switch_flows(t.address) == {}
        run(go())


# ------------------------------------------------------------------ switch restart
def test_resync_after_switch_restart(target_kind):
    with _target(target_kind) as t:
        async def go():
            async with running(t) as (c, sup, (h,)):
                await h.report(*[h.start(i) for i in range(10)])
                before = await switch_flows(t.address)
                assert len(before) == 10
                pushes, resyncs = sup.pipeline_pushes, sup.resyncs
                await asyncio.get_running_loop().run_in_executor(None, t.restart)
                await until(lambda: sup.resyncs > resyncs and sup.ready.is_set(), timeout=20, what="resync")
                assert sup.pipeline_pushes == pushes + 1  # the rebooted switch lost its pipeline
                assert await switch_flows(t.address) == before
                # promotions made while the switch is down are not lost
                await asyncio.get_running_loop().run_in_executor(None, t.restart)
                await h.report(*[h.end(i) for i in range(5)])
                await until(lambda: sup.resyncs > resyncs + 1 and sup.ready.is_set(), timeout=20, what="resync 2")
                # the ends may reach the engine after the resync wrote the state it had then; their deletes
                # follow it: wait (bounded) for the switch to converge, then compare
                want = {k: v for k, v in before.items() if k[1] >= 5}
                t0 = time.monotonic()
                while (got := await switch_flows(t.address)) != want and time.monotonic() - t0 < 10:
                    await asyncio.sleep(0.1)
                assert got == want
        run(go())


# ------------------------------------------------------------------ controller restart
def test_controller_restart_rebuilds_state_from_the_switches(target_kind):
    with _target(target_kind) as t:
        async def go():
            a = await started(make_cfg([t.address]))
            h, g = Host(a.api_port), Host(a.api_port, *HOSTS["h2"])
            await h.register()
            await g.register()
            await h.report(h.start(1, stage=2), h.start(2, stage=1))
            await g.report(g.start(3, stage=3, size=10_000_000))
            before = await switch_flows(t.address)
            g_key = (3, g.reg.flow_id_base + 3)
            assert set(before) == {(2, 1), (1, 2), g_key}
            for x in (h, g):
                await x.close()
            await a.stop()
            # a second controller with fresh state (short GC timeout) rebuilds from the switch
            b = await started(make_cfg([t.address], gc_timeout_s=1.0))
            h2 = Host(b.api_port)
            try:
                assert b.engine.desired == before  # adopted: nothing deleted, no promotion lost
                assert {k: a.owner for k, a in b.engine.adopted.items()} == {(2, 1): "h1", (1, 2): "h1", g_key: "h2"}
                reg = await h2.register()
                assert reg.last_seq == 0
                # the agent restates flow 1 and keeps reporting on flow 2 (not restated)
                ack = await h2.report(h2.start(1, stage=2),
                                      h2.ev(progress=pb.Progress(flow_id=2, bytes_sent=10)))
                assert not ack.rejected
                assert (2, 1) not in b.engine.adopted and 1 in b.engine.flows
                assert b.engine.desired[(2, 1)] <= before[(2, 1)]  # the better level is kept
                for _ in range(7):  # h1 stays alive; h2 never comes back
                    await h2.report()
                    await asyncio.sleep(0.25)
                flows = await switch_flows(t.address)
                assert set(flows) == {(2, 1), (1, 2)}  # h2's entry was deleted, h1's are kept
                ack = await h2.report(h2.end(2))  # a flow from before the restart ends: its entry goes
                assert not ack.rejected
                assert set(await switch_flows(t.address)) == {(2, 1)}
                assert b.metrics.total("adopted_entries") == 3
            finally:
                await h2.close()
                await b.stop()
        run(go())


# ------------------------------------------------------------------ GC
def test_gc_of_silent_hosts(target_kind):
    with _target(target_kind) as t:
        async def go():
            async with running(t, hosts=("h1", "h2"), gc_timeout_s=0.8) as (c, sup, (h1, h2)):
                await h1.report(h1.start(1))
                await h2.report(h2.start(1))
                assert len(await switch_flows(t.address)) == 2
                for _ in range(8):  # h2 keeps reporting, h1 is silent
                    await h2.report()
                    await asyncio.sleep(0.2)
                flows = await switch_flows(t.address)
                assert list(flows) == [(1, h2.reg.flow_id_base + 1)]
                assert c.metrics.total("gc_entries") >= 1
                # the silent host's flow is gone from the engine too: progress on it is "unknown_flow"
                ack = await h1.report(h1.ev(progress=pb.Progress(flow_id=1, bytes_sent=10)))
                assert ack.rejected[0].reason.startswith("unknown_flow")
        run(go())


# ------------------------------------------------------------------ full table
def test_full_table_falls_back_without_failing_the_batch(target_kind):
    with _target(target_kind, table_sizes={FLOW_TABLE: 4}) as t:
        async def go():
            async with running(t) as (c, sup, (h,)):
                ack = await h.report(*[h.start(i) for i in range(6)])
                assert not ack.rejected  # the batch itself succeeds
                flows = await switch_flows(t.address)
                assert len(flows) == 4
                assert len(sup.overflow) == 2
                assert c.metrics.total("table_full_fallbacks") == 2
                assert len(c.engine.flows) == 6  # every flow is still scheduled (on its stage default)
                await h.report(h.end(0), h.end(1))  # space frees: the overflow flows get their entries
                flows = await switch_flows(t.address)
                assert set(flows) == {(1, i) for i in range(2, 6)}
                assert not sup.overflow
        run(go())


def test_static_entries_programmed_at_connect(target_kind):
    with _target(target_kind) as t:
        async def go():
            async with running(t, hosts=()) as (c, sup, _):
                ents = await sup.client.read_table(0)
                by_table: dict[str, list] = {}
                for spec in (SCHEMA.describe_table_entry(te) for te in ents):
                    by_table.setdefault(spec.table, []).append(spec)
                assert len(by_table["MfsEgress.level_dscp"]) == 8
                assert {e.match["level"]: e.params["dscp"] for e in by_table["MfsEgress.level_dscp"]}[0] == 56
                trust = by_table["MfsIngress.mfs_trust"]
                assert [(e.match["ingress_port"], e.params["ceiling"]) for e in trust] == [(1, 2)]
                assert {e.match["egress_port"] for e in by_table["MfsEgress.dscp_rewrite"]} == {1, 2}
                assert [e.match["stage"] for e in by_table["MfsIngress.mfs_stage_default"]] == [2]
        run(go())


# ------------------------------------------------------------------ the process
def test_controller_process_serves_and_stops_cleanly_on_sigterm(tmp_path):
    import signal
    import subprocess
    import sys

    import yaml

    from controller import cli
    from controller.testing import free_port

    with _target("embedded") as t:
        admin = free_port()
        data = config_data([t.address], api={"listen": f"127.0.0.1:{free_port()}"},
                           admin={"listen": f"127.0.0.1:{admin}"})
        cfg = tmp_path / "ctl.yaml"
        cfg.write_text(yaml.safe_dump(data))
        proc = subprocess.Popen([sys.executable, "-m", "controller.main", "--config", str(cfg)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            url = f"http://127.0.0.1:{admin}"
            deadline = time.monotonic() + 30
            st = None
            while time.monotonic() < deadline:
                try:
                    st = cli.request(url, "GET", "/api/status", timeout=2)
                    if st["switches_ready"] == 1:
                        break
                except cli.CtlError:
                    pass
                time.sleep(0.1)
            assert st and st["switches_ready"] == 1, st
            import urllib.request
            metrics = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
            assert "mfs_switch_ready{switch=\"s1\"} 1" in metrics
            proc.send_signal(signal.SIGTERM)
            out, _ = proc.communicate(timeout=20)
            assert proc.returncode == 0, out
            assert "shutting down" in out
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(5)


# ------------------------------------------------------------------ several switches
def test_several_switches_get_their_entries_and_restart_independently(target_kind):
    """placement all on source-bound switches (revision 2): each switch holds the entries of the
    hosts on its edge ports (a copy elsewhere could not match: docs/controller.md), one Write per
    round; a restarted switch is resynced with its own entries while the other keeps working."""
    with _target(target_kind) as t1, _target(target_kind) as t2:
        async def go():
            data = config_data([t1.address, t2.address], placement="all")
            data["hosts"][1].update(switch="s2", port=1)
            c = await started(config_mod.parse(data, "test.yaml"))
            h, hb = Host(c.api_port), Host(c.api_port, "h2", "token-of-h2", "10.0.0.2")
            try:
                await h.register()
                await hb.register()
                s1, s2 = c.engine.supervisors["s1"], c.engine.supervisors["s2"]
                w1, w2 = s1.client.writes, s2.client.writes
                await h.report(*[h.start(i) for i in range(20)])
                assert (s1.client.writes - w1, s2.client.writes - w2) == (1, 0)  # one Write, on h1's switch
                await hb.report(*[hb.start(i) for i in range(15)])
                assert (s1.client.writes - w1, s2.client.writes - w2) == (1, 1)
                f1, f2 = await switch_flows(t1.address), await switch_flows(t2.address)
                assert {k[1] - h.reg.flow_id_base for k in f1} == set(range(20))
                assert {k[1] - hb.reg.flow_id_base for k in f2} == set(range(15))
                r2 = s2.resyncs
                await asyncio.get_running_loop().run_in_executor(None, t2.restart)
                await h.report(*[h.end(i) for i in range(10)])  # s1 keeps working while s2 is down
                assert len(await switch_flows(t1.address)) == 10
                await until(lambda: s2.resyncs > r2 and s2.ready.is_set(), timeout=20, what="s2 resync")
                assert await switch_flows(t2.address) == f2
            finally:
                await h.close()
                await hb.close()
                await c.stop()
        run(go())


# ------------------------------------------------------------------ link load
def test_link_load_from_queue_counters_reaches_the_policy():
    from scapy.layers.inet import IP, UDP
    from scapy.layers.l2 import Ether

    with _target("embedded") as t:
        async def go():
            data = config_data([t.address])
            data["switches"][0]["ports"] = {1: {"rate_bps": 1e9}, 2: {"rate_bps": 80_000.0}}  # 10 kB/s
            data["poll"]["counters_s"] = 60  # polled by hand below
            c = await started(config_mod.parse(data, "rho.yaml"))
            try:
                sup = c.engine.supervisors["s1"]
                assert await sup.poll_once() == {}  # first sample: no rate yet
                eth_ip = Ether(dst="ff:ff:ff:ff:ff:ff") / IP(src="10.0.0.1", dst="10.0.0.2")
                best_effort = bytes(eth_ip / UDP() / (b"x" * 958))  # 1000 bytes, level 7
                stage2 = bytes(eth_ip / UDP(dport=MFS_UDP_PORT) / pack(2, 77)
                               / (b"x" * 942))  # 1000 bytes, stage default -> level 1
                t0 = time.monotonic()
                for _ in range(10):  # flooded from port 1 to port 2
                    t.handle.switch.process(1, best_effort)
                    t.handle.switch.process(1, stage2)
                await asyncio.sleep(0.5)
                rho = await sup.poll_once()
                dt = time.monotonic() - t0
                assert rho[1] == 0.0
                # 20 kB over ~0.5 s on a 10 kB/s port: the port is saturated
                assert rho[2] == pytest.approx(0.999)
                # the policy sees, as the load of h2's downlink "h2:rx" (h2 sits on port 2; the
                # counters are the port's egress), only the Stage-1/2 levels: 10 kB of the 20 kB, rho ~ 1/dt
                from mfs.policy import FlowInfo
                via_h2 = FlowInfo(flow_id=0, stage=1, request_id=0, size_bytes=1, src="h1", dst="h2")
                from_h2 = FlowInfo(flow_id=0, stage=1, request_id=0, size_bytes=1, src="h2", dst="h1")
                assert c.engine.policy.rho_for(from_h2) == 0.0  # h2's uplink carried nothing
                seen = c.engine.policy.rho_for(via_h2)
                assert 0.3 < seen <= c.cfg.policy.rho_cap
                assert seen == pytest.approx(min(1.0 / dt, c.cfg.policy.rho_cap), abs=0.35)
                assert "mfs_port_rho" in c.metrics.prometheus()
            finally:
                await c.stop()
        run(go())
