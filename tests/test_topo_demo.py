"""The demo's command line and output helpers (the emulated run itself is in mininet_tests/)."""

import math
import subprocess
import sys

import pytest

from mfs.sim.results import RequestRecord, make_run
from topo import demo
from topo.topology import load


def test_help_answers_the_questions():
    out = subprocess.run([sys.executable, "-m", "topo.demo", "--help"], capture_output=True, text=True,
                         timeout=60).stdout
    for word in ("--policies", "--trace", "--skip", "--requests", "--rate", "--topology", "--target",
                 "mooncake-conversation", "karuna"):
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


def test_table_and_plot(tmp_path):
    recs = [RequestRecord(i, 0.0, ttft=0.1 * (i + 1), deadline=0.25, met=0.1 * (i + 1) <= 0.25) for i in range(4)]
    runs = [make_run("mfs", 1.0, recs), make_run("fair", 1.0, [])]
    text = demo.table(runs)
    row = next(line for line in text.splitlines() if line.startswith("mfs"))
    assert "50.0%" in row  # 2 of 4 met
    assert "n/a" in next(line for line in text.splitlines() if line.startswith("fair"))
    assert math.isnan(runs[1].summary["attainment"])
    png = demo.plot(runs, tmp_path / "d.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
