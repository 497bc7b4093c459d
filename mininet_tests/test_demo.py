"""`make demo`'s default scenario at reduced size: MFS's paired per-request TTFT advantage over fair
sharing is significant (its 95 % interval lies below zero), in the direction the simulator predicts.

Runs the demo command itself (python -m topo.demo) with fewer requests and seeds and only mfs and
fair, the same scenario otherwise (Mixtral-8x7B TP1/EP8 on the testbed-shaped cluster, agent
workload, load 0.8), bounded by a subprocess timeout; reads out/…/summary.json. About 3 minutes.
"""

import json
import subprocess
import sys

import pytest

from topo.net import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ARGS = ["--policies", "mfs,fair", "--requests", "24", "--repeat", "3"]


def test_demo_default_scenario_mfs_beats_fair_with_its_interval(tmp_path):
    pytest.importorskip("hostagent.workload", reason="the workload driver is not available")
    r = subprocess.run([sys.executable, "-m", "topo.demo", *ARGS, "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (fair,) = [c for c in summary["comparisons"] if c["baseline"] == "fair"]
    emu, sim = fair["emulated_ttft"], fair["simulated_ttft"]
    assert emu["diff"]["n"] == 72  # every request paired
    assert emu["diff"]["hi"] < 0, (emu, r.stdout[-2000:])  # MFS - fair < 0 with its 95 % interval
    assert sim["rel"]["value"] < 0  # ... which is the simulator's direction
    assert "verdict:" in r.stdout and (tmp_path / "demo.png").stat().st_size > 10_000
