"""The cluster under Mininet (topo/mininet_net.py): the embedded switch (and bmv2 when
installed) as Mininet switches, Mininet hosts.

* hosts ping each other through the switch (TTL 63: routed by the pipeline, not bridged),
  and the entries written without a controller are read back over P4Runtime;
* strict priority on a rate-limited switch port (the traffic tool of test_priority);
* ``mfs-topo run --mininet`` without a TTY runs until SIGTERM and cleans up;
* without Mininet the loader says what is missing.

Each test checks afterwards that its host shells, switch processes, interfaces and
namespace names are gone; when something is left it runs ``mn -c`` and fails. (``mn -c``
is not run otherwise: it also kills every ``ping`` on the machine and deletes every
``*-ethN`` link and /tmp/*.log, which would hit other users of a shared host.)
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mfs.levels import NUM_QUEUES, default_dscp
from topo import netns
from topo.mininet_net import MininetMissing, MininetNetwork, load_mininet, missing_reason
from topo.net import DEFAULT_P4INFO, BuildError, pid_alive, unique_tag
from topo.topology import load

from .helpers import TARGETS, by_flow, flow_arg, require_target, run_traffic, write_levels
from .test_priority import FLOW_RATE, HIGH, LOW
from .test_priority import topo as priority_topo

ROOT = Path(__file__).resolve().parents[1]
SIZE = 500  # UDP payload bytes
netns_only = pytest.mark.netns


def _require_mininet() -> None:
    reason = missing_reason()
    if reason:
        pytest.skip(f"Mininet: {reason}")


def _leftovers(net: MininetNetwork) -> list[str]:
    left = [f"process {n} (pid {p.popen.pid})" for n, p in net.procs.items() if pid_alive(p.popen.pid)
            and p.popen.poll() is None]
    present = set(netns.links(prefix=""))
    left += [f"link {ln}" for ln in net.made_links if ln in present]
    spaces = set(netns.namespaces())
    left += [f"namespace {n}" for n in net.made_ns if n in spaces]
    return left


@pytest.fixture
def nets():
    """Networks a test builds; after the test each must have left nothing behind."""
    made: list[MininetNetwork] = []
    yield made
    left = [x for net in made for x in _leftovers(net)]
    for net in made:
        net.stop()
    if left:
        subprocess.run(["mn", "-c"], capture_output=True, timeout=120)
        pytest.fail(f"left behind after the test (ran `mn -c`): {', '.join(left)}")


def _read_entries(net: MininetNetwork, sw: str, tables: list[str]) -> dict[str, list]:
    from controller.p4rt.client import SwitchClient
    from mfs.p4info import P4Schema

    schema = P4Schema.load(DEFAULT_P4INFO)

    async def go():
        c = SwitchClient(net.grpc_addr(sw), net.topo.switches[sw].device_id, election_id=5)
        await c.open()
        try:
            return {t: [schema.describe_table_entry(te) for te in await c.read_table(schema.table(t).id)]
                    for t in tables}
        finally:
            await c.close()
    return asyncio.run(go())


def _mac_int(mac: str) -> int:
    return int(mac.replace(":", ""), 16)


@pytest.mark.ping
@netns_only
@pytest.mark.parametrize("target", TARGETS)
def test_ping_through_switch_and_entries_read_back(target, tmp_path, nets):
    _require_mininet()
    require_target(target, shared_bottleneck=False)
    topo = load("line2")
    net = MininetNetwork(topo, tag=unique_tag(), target=target, controller=False, agents=False,
                         logdir=tmp_path / "logs")
    nets.append(net)
    with net:
        # Mininet built it: Mininet nodes, switch ports named as Mininet names them
        assert sorted(h.name for h in net.mn.hosts) == sorted(topo.hosts)
        assert type(net.mn["s1"]).target == target
        assert {i.name for i in net.mn["s1"].intfList()} >= {"s1-eth1", "s1-eth2"}
        h1, h2 = net.ip("h1"), net.ip("h2")
        out = net.mn_exec("h1", f"ping -c 3 -i 0.3 -W 3 {h2}")
        assert " 0% packet loss" in out, out
        assert "ttl=63" in out, f"replies not routed by the switch (route decrements TTL):\n{out}"
        back = net.exec("h2", ["ping", "-c", "2", "-i", "0.3", "-W", "3", h1], check=False)
        assert back.returncode == 0, back.stdout + back.stderr

        got = _read_entries(net, "s1", ["MfsIngress.ipv4_lpm", "MfsEgress.dscp_rewrite", "MfsEgress.level_dscp"])
        want = {}
        for e in net.static_entries("s1"):
            ip = ipaddress.IPv4Interface(e["match"]["dst_addr"])
            p = e["params"]
            want[(int(ip.ip), ip.network.prefixlen)] = (e["action"], p["port"], _mac_int(p["src_mac"]),
                                                        _mac_int(p["dst_mac"]))
        have = {s.match["dst_addr"]: (s.action, s.params["port"], s.params["src_mac"], s.params["dst_mac"])
                for s in got["MfsIngress.ipv4_lpm"]}
        assert have == want
        assert {s.match["egress_port"]: s.action for s in got["MfsEgress.dscp_rewrite"]} == \
            {p: "MfsEgress.rewrite_dscp" for p in topo.switch_ports("s1")}
        assert {s.match["level"]: s.params["dscp"] for s in got["MfsEgress.level_dscp"]} == \
            {lv: default_dscp(lv) for lv in range(NUM_QUEUES)}
    assert net.mn is None and not _leftovers(net)


@netns_only
def test_switch_dying_at_start_is_reported_and_cleaned_up(tmp_path, nets, monkeypatch):
    """A switch binary that exits at once: the error names the switch and its log; nothing is left."""
    _require_mininet()
    monkeypatch.setenv("BMV2_SWITCH", "/bin/false")
    net = MininetNetwork(load("line2"), tag=unique_tag(), target="bmv2", controller=False, agents=False,
                         logdir=tmp_path / "logs")
    nets.append(net)
    with pytest.raises(BuildError, match=r"s1 exited with code 1 while waiting for switch s1"):
        net.start()
    assert net.mn is None and not _leftovers(net)
    assert net.made_ns and net.made_links  # it got as far as the plumbing, which is gone again


@netns_only
@pytest.mark.slow
@pytest.mark.parametrize("target", TARGETS)
def test_strict_priority_on_rate_limited_port(target, tmp_path, nets):
    """h1 -> h2 through a 4 Mb/s switch port, two 3 Mb/s flows: the level-0 flow is served first."""
    _require_mininet()
    require_target(target)
    n = 300  # ~0.4 s at 3 Mb/s
    net = MininetNetwork(priority_topo(target), tag=unique_tag(), controller=False, agents=False,
                         logdir=tmp_path / "logs")
    nets.append(net)
    with net:
        write_levels(net, "s1", {(3, HIGH): 0, (3, LOW): 7})
        rows = run_traffic(net, "h1", "h2", [flow_arg(3, LOW, n, FLOW_RATE), flow_arg(3, HIGH, n, FLOW_RATE, 0.2)],
                           tmp_path, size=SIZE)
    hi, lo = by_flow(rows, HIGH), by_flow(rows, LOW)
    assert len(hi) >= 0.95 * n, f"level-0 flow delivered {len(hi)}/{n}"
    assert {r[3] for r in hi} == {default_dscp(0)} and {r[3] for r in lo} == {default_dscp(7)}
    # while both send, level 0 gets its offered 3 Mb/s and level 7 the leftover (~1 Mb/s);
    # a FIFO port would give each ~2 Mb/s
    t0, t1 = hi[0][0], hi[-1][0]
    assert t1 - t0 > 0.3, f"level-0 flow arrived within {t1 - t0:.2f}s: no contention to measure"

    def mbps(rs):
        return sum(1 for r in rs if t0 <= r[0] <= t1) * (SIZE + 42) * 8 / (t1 - t0) / 1e6
    assert mbps(hi) >= 0.8 * FLOW_RATE / 1e6, f"level 0 got {mbps(hi):.2f} Mb/s of {FLOW_RATE / 1e6:.0f} offered"
    assert mbps(lo) <= 0.5 * FLOW_RATE / 1e6, f"level 7 got {mbps(lo):.2f} Mb/s while level 0 was sending"
    assert lo[-1][0] > hi[-1][0], "the level-7 flow finished before the level-0 one"


def _cli_run(tag: str, topo: str, logs: Path, *extra: str) -> tuple[subprocess.Popen, list[str]]:
    """Start `mfs-topo run TOPO --mininet` without a TTY; return once it says "running"."""
    p = subprocess.Popen([sys.executable, "-m", "topo.cli", "run", topo, "--mininet", "--tag", tag,
                          "--logs", str(logs), *extra],
                         cwd=ROOT, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                         text=True, start_new_session=True)
    lines: list[str] = []
    end = time.monotonic() + 90
    while time.monotonic() < end:
        line = p.stdout.readline()
        if not line:
            break
        lines.append(line)
        if line.startswith("running"):
            return p, lines
    _cli_kill(p, tag)
    pytest.fail("mfs-topo run --mininet did not come up:\n" + "".join(lines))


def _cli_kill(p: subprocess.Popen, tag: str) -> None:
    if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    subprocess.run([sys.executable, "-m", "topo.cli", "stop", "--tag", tag], cwd=ROOT, capture_output=True)


def _gone(pred, timeout: float = 10.0) -> bool:
    """Namespaces are torn down asynchronously: wait (generously) until ``pred()`` holds."""
    end = time.monotonic() + timeout
    while not pred():
        if time.monotonic() > end:
            return False
        time.sleep(0.2)
    return True


@pytest.mark.ping
@netns_only
def test_cli_mininet_runs_until_sigterm(tmp_path):
    """`mfs-topo run line2 --mininet` (no TTY, controller on): routes arrive, SIGTERM cleans up."""
    _require_mininet()
    tag = unique_tag()
    p, lines = _cli_run(tag, "line2", tmp_path / "logs", "--no-agents")
    try:
        ns = f"{netns.PREFIX}{tag}-h1"
        assert ns in netns.namespaces()
        for _ in range(20):  # the controller installs the routes after it connects
            r = subprocess.run(["ip", "netns", "exec", ns, "ping", "-c", "1", "-W", "1", "10.0.0.2"],
                               capture_output=True, text=True)
            if r.returncode == 0:
                break
            time.sleep(0.5)
        assert r.returncode == 0, f"h1 cannot reach h2 through the controller-programmed switch: {r.stdout}"
        assert "s1-eth1" in netns.links(prefix="s1-")
        p.send_signal(signal.SIGTERM)
        out, _ = p.communicate(timeout=60)
        assert p.returncode == 0, "".join(lines) + out
        assert ns not in netns.namespaces()
        assert _gone(lambda: not netns.links(prefix="s1-eth")), netns.links(prefix="s1-eth")
    finally:
        _cli_kill(p, tag)


@netns_only
def test_mfs_topo_stop_after_a_crash(tmp_path):
    """SIGKILL the Mininet run (no cleanup of its own): `mfs-topo stop --tag` removes host shells,
    switches, namespaces and the switch-to-switch trunk (both ends in the root namespace)."""
    _require_mininet()
    tag = unique_tag()
    p, _ = _cli_run(tag, "two_switch", tmp_path / "logs", "--no-controller")
    try:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        assert "s1-eth3" in netns.links(prefix="s1-"), "the trunk should still exist after the crash"
        r = subprocess.run([sys.executable, "-m", "topo.cli", "stop", "--tag", tag], cwd=ROOT,
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0 and "stopped s1" in r.stdout and "removed link s1-eth3" in r.stdout, r.stdout
        assert not [n for n in netns.namespaces() if n.startswith(f"{netns.PREFIX}{tag}-")]
        assert _gone(lambda: not netns.links(prefix="s1-eth") and not netns.links(prefix="s2-eth")), \
            netns.links(prefix="s1-eth") + netns.links(prefix="s2-eth")
        # the switches' command lines hold their log file under tmp_path; pgrep exits 1 when nothing matches
        left = subprocess.run(["pgrep", "-af", str(tmp_path)], capture_output=True, text=True)
        assert left.returncode == 1, left.stdout
    finally:
        _cli_kill(p, tag)


def test_missing_mininet_is_named(tmp_path, monkeypatch):
    """A directory without Mininet: the error names it and how to install Mininet."""
    monkeypatch.delitem(sys.modules, "mininet", raising=False)
    monkeypatch.setenv("MFS_MININET_PATH", str(tmp_path))
    with pytest.raises(MininetMissing, match=str(tmp_path)) as e:
        load_mininet()
    assert "apt-get install mininet" in str(e.value)
    assert missing_reason().startswith("Mininet is not installed")
    assert "mininet" not in sys.modules
