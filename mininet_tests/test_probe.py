"""topo.probe (docs/demo.md, "Fixed costs"): exchanges on the demo's cluster, timed beside their wire time."""

import re
import subprocess
import sys

import pytest

from topo import probe
from topo.net import ROOT


def test_bad_options_are_named(capsys):
    assert probe.main(["--sizes", "1k"]) == 2 and "--sizes '1k'" in capsys.readouterr().err
    assert probe.main(["--rounds", "0"]) == 2 and "--rounds" in capsys.readouterr().err


@pytest.mark.netns
@pytest.mark.slow
def test_probe_times_exchanges_no_faster_than_the_wire():
    r = subprocess.run([sys.executable, "-m", "topo.probe", "--sizes", "1400,30000", "--rounds", "2"], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    print(r.stdout)
    rows = re.findall(r"(one way|both ways)\s+(\d+) B: median\s+([\d.]+) ms, min\s+([\d.]+) ms; wire time\s+([\d.]+) ms",
                      r.stdout)
    assert len(rows) == 4, r.stdout
    for _mode, size, median, low, wire in rows:
        assert float(low) <= float(median)
        if int(size) >= 30000:  # shaped to the line rate at the host and the switch: never faster than the wire
            assert float(low) >= 0.9 * float(wire), (size, low, wire)
    m = re.search(r"transport: tx_packets (\d+), duplicates (\d+), lost_rto (\d+), lost_rack (\d+)", r.stdout)
    assert m and int(m.group(1)) >= 2 * 2 * (1 + 22), r.stdout  # at least every datagram once
