"""The control socket protocol and the mfs-hostagent CLI (a real agent process on loopback)."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from hostagent.agent import AgentConfig, HostAgent
from hostagent.control import ControlClient, ControlError, ControlServer
from hostagent.testing import FakeController, FakeHostReports, loopback_addresses, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def two_agents(tmp_path):
    a_ip, b_ip = loopback_addresses(2)
    a = HostAgent(AgentConfig("h1", a_ip)).start()
    b = HostAgent(AgentConfig("h2", b_ip)).start()
    sa = ControlServer(a, f"unix:{tmp_path}/h1.sock").start()
    sb = ControlServer(b, f"unix:{tmp_path}/h2.sock").start()
    yield (a, sa), (b, sb)
    for s in (sa, sb):
        s.close()
    a.close()
    b.close()


def test_submit_done_and_received_events(two_agents):
    (a, sa), (b, sb) = two_agents
    ca, cb = ControlClient(sa.path), ControlClient(sb.path)
    got = []
    try:
        cb.subscribe(got.append)
        futs = [ca.submit(3, b.config.address, n, request_id=9, target_layer=4, deadline=time.time() + 10)
                for n in (0, 1000, 250_000)]
        done = [f.result(30) for f in futs]
        assert [d["bytes"] for d in done] == [0, 1000, 250_000]
        assert all(d["event"] == "done" and d["end_time"] >= d["submit_time"] for d in done)
        assert wait_for(lambda: len(got) == 3)
        assert sorted(g["bytes"] for g in got) == [0, 1000, 250_000]
        assert all(g["src"] == a.config.address and g["stage"] == 3 and g["target_layer"] == 4 for g in got)
        st = ca.status()
        assert st["host"] == "h1" and st["completed"] == 3
        ca.layer_boundary(9, 5)
        ca.request_start(9, deadline=time.time() + 1, arrival=time.time(), num_layers=8)
        ca.batch_event(9, "arrival")
        ca.request_end(9)
    finally:
        ca.close()
        cb.close()


def test_pipelined_client_same_results_without_waiting(two_agents, caplog):
    """pipeline=True: submits and notifications do not wait for their replies, yet every transfer
    completes with its own done event, in any interleaving, and a refused request is not silent."""
    (a, sa), (b, sb) = two_agents
    ca = ControlClient(sa.path, pipeline=True)
    try:
        futs = [ca.submit(2, b.config.address, n, request_id=5, target_layer=k)
                for k, n in enumerate((0, 700, 30_000, 1, 120_000, 5000))]
        for k in range(4):
            ca.layer_boundary(5, k)
        done = [f.result(30) for f in futs]
        assert [d["bytes"] for d in done] == [0, 700, 30_000, 1, 120_000, 5000]
        assert len({d["flow_id"] for d in done}) == 6
        bad = ca.submit(4, b.config.address, 10, request_id=5)  # stage 4 does not exist
        with pytest.raises(ControlError, match="stage=4"):
            bad.result(10)
        with caplog.at_level("ERROR", logger="mfs.hostagent.control"):
            ca.batch_event(1, "later")
            assert ca.request("ping")["ok"]  # replies in order: the refusal was handled before this
        assert any("'later'" in r.getMessage() for r in caplog.records)
        assert ca.status()["completed"] == 6
    finally:
        ca.close()


@pytest.mark.parametrize("req,msg", [
    ({"op": "submit", "stage": 4, "peer": "127.0.0.1", "bytes": 1, "request_id": 1}, "stage=4"),
    ({"op": "submit", "stage": 1, "peer": "nohost", "bytes": 1, "request_id": 1}, "not an IPv4 address"),
    ({"op": "submit", "stage": 1, "peer": "127.0.0.1", "bytes": -5, "request_id": 1}, "bytes=-5"),
    ({"op": "submit", "stage": 1, "peer": "127.0.0.1", "bytes": "x", "request_id": 1}, "bytes='x'"),
    ({"op": "submit", "stage": 1, "peer": "127.0.0.1", "bytes": 1}, "request_id is required"),
    ({"op": "batch", "batch_id": 1, "kind": "later"}, "'later'"),
    ({"op": "frobnicate"}, "unknown op"),
    ({"op": "request_start", "request_id": 1, "arrival": 0, "num_layers": 2}, "deadline is required"),
    ({"op": "request_start", "request_id": 1, "deadline": "soon", "arrival": 0, "num_layers": 2},
     "deadline='soon' is not a number"),
])
def test_bad_requests_get_named_errors(two_agents, req, msg):
    (a, sa), _ = two_agents
    c = ControlClient(sa.path)
    try:
        op = req.pop("op")
        with pytest.raises(ControlError, match=msg):
            c.request(op, **req)
        assert c.request("ping")["ok"]  # the connection survives
    finally:
        c.close()


def test_garbage_line_does_not_kill_the_connection(two_agents):
    (a, sa), _ = two_agents
    import socket
    s = socket.socket(socket.AF_UNIX)
    s.connect(sa.path)
    s.sendall(b"this is not json\n[1,2]\n" + json.dumps({"op": "ping", "id": 3}).encode() + b"\n")
    f = s.makefile()
    replies = [json.loads(f.readline()) for _ in range(3)]
    s.close()
    assert replies[0]["ok"] is False and replies[1]["ok"] is False and "JSON object" in replies[1]["error"]
    assert replies[2]["ok"] is True and replies[2]["id"] == 3


def test_cli_serve_reports_to_controller(tmp_path):
    ctl_sock = f"unix:{tmp_path}/ctl.sock"
    svc = FakeHostReports({"h1": "sekret"})
    ctl = FakeController(ctl_sock, svc).start()
    a_ip, b_ip = loopback_addresses(2)
    peer = HostAgent(AgentConfig("h2", b_ip)).start()
    control = f"{tmp_path}/run/h1.sock"
    env = dict(os.environ, MFS_TOKEN="sekret", PYTHONPATH=ROOT)
    p = subprocess.Popen([sys.executable, "-m", "hostagent.cli", "serve", "--host", "h1", "--address", a_ip,
                          "--controller", ctl_sock, "--control", f"unix:{control}", "--priority-queue"],
                         env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        assert wait_for(lambda: os.path.exists(control) or p.poll() is not None, timeout=30), "agent did not start"
        assert p.poll() is None, p.stdout.read()
        r = subprocess.run([sys.executable, "-m", "hostagent.cli", "send", "--control", f"unix:{control}",
                            "--peer", b_ip, "--bytes", "100000", "--stage", "2", "--request-id", "77"],
                           env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stderr
        done = json.loads(r.stdout)
        assert done["bytes"] == 100000 and done["request_id"] == 77
        kinds = lambda: [e.WhichOneof("kind") for e in svc.applied("h1")]  # noqa: E731
        assert wait_for(lambda: "flow_end" in kinds(), timeout=20)
        assert kinds()[0] == "flow_start" and kinds()[-1] == "flow_end"
        assert set(kinds()[1:-1]) <= {"progress"}
        st = subprocess.run([sys.executable, "-m", "hostagent.cli", "status", "--control", f"unix:{control}"],
                            env=env, cwd=ROOT, capture_output=True, text=True, timeout=60)
        status = json.loads(st.stdout)
        assert status["controller"]["connected"] and status["completed"] == 1
    finally:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(15)
        except subprocess.TimeoutExpired:
            p.kill()
        peer.close()
        ctl.stop()
    assert p.returncode == 0
    assert not os.path.exists(control)  # socket removed on exit


def test_cli_errors_are_one_line(tmp_path):
    r = subprocess.run([sys.executable, "-m", "hostagent.cli", "serve", "--host", "h1", "--address", "10.0.0.300",
                        "--control", f"unix:{tmp_path}/x.sock"], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and "address='10.0.0.300' is not an IPv4 address" in r.stderr
    r = subprocess.run([sys.executable, "-m", "hostagent.cli", "status", "--control", f"unix:{tmp_path}/none.sock"],
                       cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert r.returncode == 1 and "cannot connect" in r.stderr


def test_an_agent_bug_is_reported_and_the_connection_survives(two_agents, monkeypatch, caplog):
    (a, sa), _ = two_agents

    def broken(request_id):
        raise KeyError(request_id)
    monkeypatch.setattr(a, "request_end", broken)
    c = ControlClient(sa.path)
    try:
        with pytest.raises(ControlError, match="internal error: KeyError"):
            c.request("request_end", request_id=7)
        assert c.request("ping")["ok"]  # before: the exception escaped and closed the socket silently
    finally:
        c.close()
    assert "control request failed" in caplog.text
