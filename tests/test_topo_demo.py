"""The demo's command line and output helpers (the emulated run itself is in mininet_tests/)."""

import subprocess
import sys

import pytest

from topo import demo
from topo.topology import load


def test_help_answers_the_questions():
    out = subprocess.run([sys.executable, "-m", "topo.demo", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for word in ("--policies", "--trace", "--workload", "--repeat", "--skip", "--requests", "--rate", "--topology", "--target",
                 "mooncake", "karuna"):
        assert word in out, word


def test_unknown_policy_is_refused_by_name():
    r = subprocess.run([sys.executable, "-m", "topo.demo", "--policies", "mfs,nosuch"], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 2 and "nosuch not allowed" in r.stderr and "fair" in r.stderr


def test_cluster_from_roles():
    pytest.importorskip("hostagent.workload")
    c = demo.cluster_of(load("demo"), 2)
    assert c.prefill == [["p1", "p2"], ["p3", "p4"]] and c.decode == [["d1"]]
    assert c.addresses["d1"] == "10.0.0.11"


def test_testbed_topology_is_one_switch_with_matching_decode_nics():
    topo = demo.load_topology("testbed", 40, queue_buffer=128)
    c = demo.cluster_of(topo, 2)
    assert c.prefill == [["p1", "p2"], ["p3", "p4"]] and c.decode == [["d1", "d2"]]
    assert list(topo.switches) == ["s1"] and {ln.bandwidth_bps for ln in topo.links} == {40e6}
