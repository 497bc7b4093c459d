"""Edge placement end to end: two switches, the controller writes a flow's entry only on the
switch its sender hangs off; the second switch keeps the flow's level by trusting the DSCP the
first one marked, on its fabric port (docs/p4-api.md revision 2, docs/controller.md placement).

two_switch: p1 on s1 port 1, d1 on s2 port 1, the trunk s1-p3 <-> s2-p3. A flow from p1 to d1 is
reported to the controller over the real HostReports API; paced MFS packets cross both switches;
d1 records the DSCP each packet arrives with (s2's egress rewrite from the level s2 chose).
"""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from mfs.levels import LOWEST_LEVEL, default_dscp
from mfs.p4info import P4Schema
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg
from topo.net import Network, unique_tag
from topo.topology import load

from .helpers import by_flow, flow_arg, run_traffic

pytestmark = pytest.mark.netns

FLOW_TRUST_HIT = 8  # MfsIngress.class_counter index: fabric port, dscp_trust hit (docs/p4-api.md)


def wait_ready(net, timeout=60.0) -> dict:
    end = time.monotonic() + timeout
    while True:
        try:
            status = {s["name"]: s for s in net.admin_get("/api/switches")}
            if all(s["state"] == "ready" for s in status.values()):
                return status
        except OSError:
            pass
        assert time.monotonic() < end, "the controller did not get both switches ready"
        time.sleep(0.2)


def test_edge_entry_only_and_the_next_switch_trusts_its_dscp(tmp_path):
    schema = P4Schema.load()
    if "MfsIngress.dscp_trust" not in schema.tables:
        pytest.skip("the committed P4Info has no fabric-port DSCP trust (p4-api revision 2)")
    with Network(load("two_switch"), tag=unique_tag(), target="embedded", agents=False,
                 logdir=tmp_path / "logs") as net:
        status = wait_ready(net)
        assert status["s1"]["placement"] == "edge"  # auto: every switch trusts DSCP on fabric ports
        assert status["s1"]["ports"] == "edge 1,2 fabric 3"

        async def report():
            api = net.controller_config_path.read_text()
            import yaml
            listen = yaml.safe_load(api)["api"]["listen"]
            async with grpc.aio.insecure_channel(listen) as ch:
                stub = pbg.HostReportsStub(ch)
                reg = await stub.Register(pb.RegisterRequest(host="p1", token=net.tokens["p1"],
                                                             address=net.ip("p1")))
                fid = reg.flow_id_base + 5
                ev = pb.Event(seq=1, time=time.time(), flow_start=pb.FlowStart(
                    flow_id=fid, stage=2, request_id=1, size_bytes=10_000_000, target_layer=1, dst=net.ip("d1")))
                ack = await stub.Report(pb.ReportBatch(session=reg.session, events=[ev]))
                assert not ack.rejected, ack.rejected
                return fid
        fid = asyncio.run(report())
        flows = {f["flow_id"]: f for f in net.admin_get("/api/flows")}
        level = flows[fid]["level"]
        assert level != LOWEST_LEVEL, "the policy gave the flow the best-effort level: the test would not tell"
        assert flows[fid]["installed"] == {"s1": level, "s2": None}  # the edge switch only
        rows = by_flow(run_traffic(net, "p1", "d1", [flow_arg(2, fid, 200, 2e6)], tmp_path), fid)
        assert len(rows) >= 190, f"{len(rows)}/200 packets arrived"
        # s2 has no entry for the flow, yet d1 receives it at the level s1 chose: s2 trusted the DSCP
        assert {r[3] for r in rows} == {default_dscp(level)}

        async def counters():
            from controller.p4rt.client import SwitchClient
            c = SwitchClient(net.grpc_addr("s2"), net.topo.switches["s2"].device_id, election_id=1, name="reader")
            c.channel = grpc.aio.insecure_channel(net.grpc_addr("s2"))
            from finsy.proto import p4r_grpc
            c.stub = p4r_grpc.P4RuntimeStub(c.channel)
            try:
                return await c.read_counter(schema.counter("MfsIngress.class_counter").id)
            finally:
                await c.channel.close()
        cls = asyncio.run(counters())
        assert cls.get(FLOW_TRUST_HIT, (0, 0))[0] >= len(rows)
        assert cls.get(0, (0, 0))[0] == 0  # no flow-table hit on s2
