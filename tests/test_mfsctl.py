"""mfsctl against a live controller (admin HTTP on loopback) and the embedded switch."""

from __future__ import annotations

import asyncio
import json
import time

import grpc
import pytest

from controller import cli
from controller import config as config_mod
from controller.testing import LiveController, TargetUnavailable, config_data, open_target
from mfs.p4info import P4Schema
from mfs.proto import report_pb2 as pb
from mfs.proto import report_pb2_grpc as pbg

SCHEMA = P4Schema.load()


@pytest.fixture
def live():
    try:
        cm = open_target("embedded")
        t = cm.__enter__()
    except TargetUnavailable as e:
        pytest.skip(str(e))
    lc = LiveController(config_mod.parse(config_data([t.address]), "mfsctl-test.yaml"))
    try:
        # one host with two flows, so that flows/queues have content
        async def report():
            async with grpc.aio.insecure_channel(f"127.0.0.1:{lc.c.api_port}") as ch:
                stub = pbg.HostReportsStub(ch)
                reg = await stub.Register(pb.RegisterRequest(host="h1", token="token-of-h1", address="10.0.0.1"))
                now = time.time()
                await stub.Report(pb.ReportBatch(session=reg.session, events=[
                    pb.Event(seq=1, time=now, request_start=pb.RequestStart(request_id=1, deadline=now + 2,
                                                                           arrival=now, num_layers=8)),
                    pb.Event(seq=2, time=now, flow_start=pb.FlowStart(flow_id=1, stage=3, request_id=1,
                                                                      size_bytes=5_000_000, target_layer=7)),
                    pb.Event(seq=3, time=now, flow_start=pb.FlowStart(flow_id=2, stage=1, request_id=1,
                                                                      size_bytes=100_000, target_layer=4))]))
        lc.call(report())
        yield lc, t
    finally:
        lc.stop()
        cm.__exit__(None, None, None)


def ctl(lc, *args):
    return cli.main(["--controller", lc.url, *args])


def test_status_switches_flows_queues(live, capsys):
    lc, _ = live
    assert ctl(lc, "status") == 0
    out = capsys.readouterr().out
    assert "live_flows" in out and "switches_ready" in out
    assert ctl(lc, "--json", "status") == 0
    st = json.loads(capsys.readouterr().out)
    assert st["live_flows"] == 2 and st["switches_ready"] == 1
    assert ctl(lc, "switches") == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].startswith("NAME") and "ready" in out
    head = out.splitlines()[0].split()
    assert "PLACEMENT" in head and "PORTS" in head and "FLOW_ENTRIES" in head
    assert "edge 1,2" in out  # h1 and h2 hang off s1 ports 1 and 2
    assert ctl(lc, "--json", "switches") == 0
    sw = json.loads(capsys.readouterr().out)[0]
    assert (sw["ports"], sw["flow_entries"]) == ("edge 1,2", 2)  # the 2 live flows (h1, h2 on s1: any placement)
    assert sw["placement"] in ("all", "edge")
    assert ctl(lc, "--json", "flows") == 0
    flows = json.loads(capsys.readouterr().out)
    assert {f["flow_id"]: f["stage"] for f in flows} == {1: 3, 2: 1}
    assert all(f["installed"]["s1"] == f["level"] for f in flows)
    f1 = next(f for f in flows if f["flow_id"] == 1)
    assert f1["mlu"] is not None and f1["laxity_s"] > 0 and f1["bytes_left"] == 5_000_000
    assert ctl(lc, "flows") == 0
    assert "LAXITY_S" in capsys.readouterr().out
    assert ctl(lc, "--json", "queues") == 0
    q = json.loads(capsys.readouterr().out)
    assert len(q) == 2 * 8 and {r["port"] for r in q} == {1, 2}
    assert ctl(lc, "queues") == 0
    assert "DELAY_US" in capsys.readouterr().out


def test_policy_show_and_set_live(live, capsys):
    lc, t = live
    assert ctl(lc, "policy", "show") == 0
    assert "scheduler: mfs" in capsys.readouterr().out
    assert ctl(lc, "policy", "set", "scheduler=sjf", "K=4", "threshold_base_bytes=1e6") == 0
    assert "applied: scheduler=sjf, K=4" in capsys.readouterr().out
    assert lc.cfg.policy.scheduler == "sjf" and lc.c.engine.policy.name == "sjf"
    # live flows were re-levelled by the new policy and the switch follows
    assert ctl(lc, "--json", "flows") == 0
    flows = json.loads(capsys.readouterr().out)
    assert all(f["level"] <= 3 and f["installed"]["s1"] == f["level"] for f in flows)
    # host ceilings / trust are applied to the switch's mfs_trust table
    assert ctl(lc, "policy", "set", "hosts.h1.ceiling=1") == 0

    async def trust():
        sup = lc.c.engine.supervisors["s1"]
        ents = await sup.client.read_table(SCHEMA.table("MfsIngress.mfs_trust").id)
        return [SCHEMA.describe_table_entry(te).params["ceiling"] for te in ents]
    assert lc.call(trust()) == [1]
    assert ctl(lc, "policy", "set", "hosts.h1.trusted=false") == 0
    assert lc.call(trust()) == []


@pytest.mark.parametrize("args,needle", [
    (["K=12"], "K: 12 is out of range (allowed: 2..8)"),
    (["scheduler=magic"], "allowed: mfs"),
    (["scheduler=llf"], "a switch cannot"),
    (["hosts.h9.ceiling=1"], "hosts.<configured host>"),
    (["hosts.h1.ceiling=9"], "allowed: 0..7"),
    (["nonsense"], "not key=value"),
])
def test_policy_set_errors_are_clear_and_change_nothing(live, capsys, args, needle):
    lc, _ = live
    assert ctl(lc, "policy", "set", *args) == 2
    err = capsys.readouterr().err
    assert needle in err, err
    assert lc.cfg.policy.scheduler == "mfs" and lc.cfg.policy.K == 8


def test_policy_what_if_runs_the_simulator(live, capsys):
    pytest.importorskip("mfs.sim.runner", reason="the simulator (mfs.sim) is not importable")
    lc, _ = live
    assert ctl(lc, "--json", "policy", "what-if", "scheduler=fair", "--servers", "8", "--warmup", "4",
               "--measured", "16", "--rate", "0.2") == 0
    res = json.loads(capsys.readouterr().out)
    assert res["current"]["scheduler"] == "mfs" and res["proposed"]["scheduler"] == "fair"
    assert res["current"]["requests"] == res["proposed"]["requests"] == 16
    assert 0 <= res["proposed"]["attainment"] <= 1


def test_unreachable_controller_is_a_clear_error(capsys):
    assert cli.main(["--controller", "http://127.0.0.1:1", "status"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach the controller at http://127.0.0.1:1" in err and "MFSCTL_CONTROLLER" in err


def test_controller_url_from_environment(monkeypatch, capsys):
    monkeypatch.setenv("MFSCTL_CONTROLLER", "http://127.0.0.1:2")
    assert cli.main(["switches"]) == 2
    assert "http://127.0.0.1:2" in capsys.readouterr().err


def test_passthrough_commands(capsys):
    pytest.importorskip("mfs.sim.cli", reason="the simulator (mfs.sim) is not importable")
    with pytest.raises(SystemExit) as ei:
        cli.main(["sim", "--help"])
    assert ei.value.code == 0
    assert "simulator" in capsys.readouterr().out
    try:
        import controller.tofino  # noqa: F401
    except ImportError:
        assert cli.main(["tofino-config"]) == 2
        assert "tofino-config is not available" in capsys.readouterr().err
    else:
        with pytest.raises(SystemExit) as ei:
            cli.main(["tofino-config", "--help"])
        assert ei.value.code == 0
