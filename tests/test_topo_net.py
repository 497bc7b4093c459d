"""The builder's plumbing: namespaces, veth, addresses, static ARP, cleanup (lxbr target: no P4)."""

import os
import subprocess
import sys

import pytest

from topo import net as N
from topo import netns
from topo.topology import load

pytestmark = pytest.mark.netns


def _leftovers(tag):
    ns = [n for n in netns.namespaces() if n.startswith(f"mfs-{tag}")]
    return ns + netns.links(f"mfs-{tag}")


@pytest.mark.ping
def test_plumbing_two_switches_and_cleanup(tmp_path):
    tag = N.unique_tag()
    net = N.Network(load("two_switch"), tag=tag, target="lxbr", controller=False, agents=False, logdir=tmp_path)
    with net:
        assert set(net.made_ns) == {f"mfs-{tag}-{h}" for h in ("p1", "p2", "d1", "kv1")}
        r = net.exec("p1", ["ping", "-c1", "-W2", net.ip("d1")])  # crosses s1 -> trunk -> s2
        assert "1 received" in r.stdout
        neigh = net.exec("p1", ["ip", "neigh", "show", net.ip("kv1")]).stdout
        assert "PERMANENT" in neigh and net.topo.hosts["kv1"].mac in neigh
        link = net.exec("d1", ["ip", "-o", "link", "show", "eth0"]).stdout
        assert net.topo.hosts["d1"].mac in link
        assert (N.RUN_BASE / tag / N.STATE).exists()
    assert _leftovers(tag) == []
    assert not (N.RUN_BASE / tag).exists()


def test_failed_start_cleans_up(tmp_path):
    tag = N.unique_tag()
    # an embedded switch that exits at once: start() must raise and leave nothing behind
    net = N.Network(load("line2"), tag=tag, controller=False, agents=False, logdir=tmp_path,
                    python=sys.executable, switch_args=["--no-such-option-xyz"])
    with pytest.raises(N.BuildError) as ei:
        net.start()
    assert "s1" in str(ei.value) and "exited" in str(ei.value)
    assert _leftovers(tag) == []


def test_cli_detach_status_stop(tmp_path):
    tag = N.unique_tag()
    py = [sys.executable, "-m", "topo.cli"]
    r = subprocess.run(py + ["run", "line2", "--target", "lxbr", "--tag", tag, "--detach", "--logs", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)
    try:
        assert r.returncode == 0, r.stderr
        assert f"mfs-{tag}-h1" in netns.namespaces()
        st = subprocess.run(py + ["status"], capture_output=True, text=True, timeout=30).stdout
        assert f"tag {tag}" in st and f"mfs-{tag}-h2" in st
    finally:
        out = subprocess.run(py + ["stop", "--tag", tag], capture_output=True, text=True, timeout=60).stdout
    assert f"mfs-{tag}-h1" in out
    assert _leftovers(tag) == []


def test_bad_topology_is_a_clear_cli_error(tmp_path):
    f = tmp_path / "t.yaml"
    f.write_text("hosts: []\nswitches: []\nlinks: []\n")
    r = subprocess.run([sys.executable, "-m", "topo.cli", "run", str(f)], capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and f"{f}: hosts: at least one host is required" in r.stderr


@pytest.mark.ping
def test_plain_stop_leaves_a_live_process_cluster_alone(tmp_path):
    """`mfs-topo stop` (no tag) from another shell must not tear down a demo or test still running;
    --all does."""
    tag = N.unique_tag()
    py = [sys.executable, "-m", "topo.cli"]
    with N.Network(load("line2"), tag=tag, target="lxbr", controller=False, agents=False, logdir=tmp_path) as net:
        out = subprocess.run(py + ["stop"], capture_output=True, text=True, timeout=60).stdout
        assert f"left running: cluster {tag!r}" in out
        assert set(net.made_ns) <= set(netns.namespaces())
        assert "1 received" in net.exec("h1", ["ping", "-c1", "-W2", net.ip("h2")]).stdout
        others = [st for st in N.read_states() if st.get("tag") != tag and st.get("owner") != os.getpid()
                  and bool(st.get("owner")) and N.pid_alive(int(st["owner"]))]
        if others:  # --all would tear down somebody else's live demo or test (e.g. a `make demo` in another shell)
            out = subprocess.run(py + ["stop", "--tag", tag], capture_output=True, text=True, timeout=60).stdout
            assert f"mfs-{tag}-h1" in out and _leftovers(tag) == []
            pytest.skip(f"`mfs-topo stop --all` not run: live cluster(s) of other processes on this machine "
                        f"({', '.join(repr(st.get('tag') or 'main') for st in others)}); the test stopped its "
                        f"own cluster with --tag instead")
        out = subprocess.run(py + ["stop", "--all"], capture_output=True, text=True, timeout=60).stdout
        assert f"mfs-{tag}-h1" in out
        assert _leftovers(tag) == []
