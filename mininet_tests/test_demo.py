"""`make demo`'s default scenario at reduced size: MFS's paired per-request TTFT difference against
fair sharing is negative, the direction the simulator predicts, with its 95 % interval reported.

Runs the demo command itself (python -m topo.demo) with only mfs and fair and fewer requests per
seed but more seeds (16 x 8 = 128 pairs: per-seed variation is the larger part of the noise), the
same scenario otherwise (Mixtral-8x7B TP1/EP8 on the testbed-shaped cluster, agent workload, load
0.8), bounded by a subprocess timeout; reads out/…/summary.json. About 4 minutes.

What it asserts, honestly: the sign of the paired MFS − fair mean TTFT difference (negative in 6
of 7 recorded `make demo` runs, -5 .. -7 %; +2.8 % once), not that its interval excludes zero: on
this shared 2-core machine the interval excluded zero in 4 of 7 runs (96 pairs) and not in this
test's first run (-3.5 %, interval up to +0.75 %) (docs/demo.md, Results). So it can fail without
a regression (about one run in seven under a load average of ~10): read the per-seed differences
in its output before blaming the code. The interval is checked for consistency.
"""

import json
import subprocess
import sys

import pytest

from topo.net import ROOT

pytestmark = [pytest.mark.netns, pytest.mark.slow]

ARGS = ["--policies", "mfs,fair", "--requests", "16", "--repeat", "8"]


def test_demo_default_scenario_mfs_faster_than_fair_as_simulated(tmp_path):
    pytest.importorskip("hostagent.workload", reason="the workload driver is not available")
    r = subprocess.run([sys.executable, "-m", "topo.demo", *ARGS, "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (fair,) = [c for c in summary["comparisons"] if c["baseline"] == "fair"]
    emu, sim = fair["emulated_ttft"], fair["simulated_ttft"]
    d = emu["diff"]
    assert d["n"] == 128 and d["lo"] <= d["value"] <= d["hi"]  # every request paired, a real interval
    assert sim["rel"]["value"] < 0  # the simulator predicts MFS faster ...
    assert d["value"] < 0, (emu, r.stdout[-2000:])  # ... and the emulation agrees in direction
    assert "verdict:" in r.stdout and (tmp_path / "demo.png").stat().st_size > 10_000
