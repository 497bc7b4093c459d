"""`make demo`'s default scenario at reduced size, end to end, with the paired MFS − fair TTFT
difference and its 95 % interval printed; what it asserts about that difference is only what
cannot fail by chance.

Runs the demo command itself (python -m topo.demo) with only mfs and fair and fewer requests per
seed but more seeds (16 x 8 = 128 pairs), the same scenario otherwise (Mixtral-8x7B TP1/EP8 on the
testbed-shaped cluster, agent workload, load 0.8), bounded by a subprocess timeout; reads
out/…/summary.json. About 3 minutes.

What it asserts (docs/demo.md, "The test"): the run completes with every request paired and a
well-formed interval; the simulator (deterministic, same requests) predicts MFS faster; and the
emulated MFS is **not grossly slower** than fair: its mean TTFT below twice fair's over the 128
pairs. That bound catches a policy that stalls or starves the GPU-blocking stages (a level
inversion that ranks deferred pushes above Stage 1/2 everywhere, a policy that never promotes);
the worst runs recorded were +16.5 % overall and 2.4 x fair on one seed of 24 requests.

What it does **not** assert, and why: that the emulated MFS is faster than fair, significantly
or at all. On this shared 2-core machine the emulated gain is about −6 % with a run-to-run sd of
about 3 % in most runs, but some runs collapse: the same code (23bf728) gave −6.6 % (run 8) and,
in this test's run at 12:00 UTC, +16.5 % (95 % CI +7.5 .. +25.5 %), and rerun by hand at 12:01,
−12.0 % (−17.9 .. −6.2 %). The heaviest seed (4) sometimes runs away under either policy (fair
465 ms vs mfs 328 ms in that rerun) and dominates the pooled mean; `--kv-size flow` once gave
+141 % on one seed. Those collapses are not reproduced on demand and not explained (docs/demo.md,
"Collapsing replays"), so any assertion on the sign or the interval would fail by chance well
above 1 %. A regression that makes MFS merely equal to fair, or moderately slower, passes this test:
read the printed difference and the per-seed figures.
"""

import json
import subprocess
import sys

import pytest

from topo.net import ROOT

ARGS = ["--policies", "mfs,fair", "--requests", "16", "--repeat", "8"]
GROSS = 1.0  # relative: MFS's mean TTFT at least twice fair's (+100 %) fails


def check_not_grossly_slower(rel: dict) -> None:
    """Fail when MFS's mean TTFT is at least twice fair's: ``rel`` is the paired relative
    difference MFS − fair (summary.json's ``emulated_ttft.rel``: value, lo, hi, n)."""
    assert rel["lo"] <= rel["value"] <= rel["hi"], rel  # a real interval
    assert rel["value"] < GROSS, (f"MFS grossly slower than fair: mean TTFT {rel['value']:+.1%} "
                                  f"(95 % CI {rel['lo']:+.1%} .. {rel['hi']:+.1%})")


def test_check_not_grossly_slower():
    """The check passes the worst run recorded (+16.5 %) and fails a policy twice as slow."""
    check_not_grossly_slower({"value": 0.165, "lo": 0.075, "hi": 0.255, "n": 128})
    check_not_grossly_slower({"value": -0.062, "lo": -0.098, "hi": -0.026, "n": 96})
    with pytest.raises(AssertionError, match="grossly slower"):
        check_not_grossly_slower({"value": 1.4, "lo": 1.1, "hi": 1.7, "n": 128})


@pytest.mark.netns
@pytest.mark.slow
def test_demo_default_scenario_runs_and_mfs_not_grossly_slower(tmp_path):
    pytest.importorskip("hostagent.workload", reason="the workload driver is not available")
    r = subprocess.run([sys.executable, "-m", "topo.demo", *ARGS, "--out", str(tmp_path)], cwd=ROOT,
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    (fair,) = [c for c in summary["comparisons"] if c["baseline"] == "fair"]
    emu, sim = fair["emulated_ttft"], fair["simulated_ttft"]
    d = emu["diff"]
    print(f"mfs - fair mean TTFT {emu['rel']['value']:+.1%} (95 % CI {emu['rel']['lo']:+.1%} .. "
          f"{emu['rel']['hi']:+.1%}), simulated {sim['rel']['value']:+.1%}")
    assert d["n"] == 128 and d["lo"] <= d["value"] <= d["hi"]  # every request paired, a real interval
    assert sim["rel"]["value"] < 0  # the simulator (deterministic, same requests) predicts MFS faster
    print(r.stdout[-1500:])  # the table, per-seed differences and the verdict
    check_not_grossly_slower(emu["rel"])
    assert "verdict:" in r.stdout and (tmp_path / "demo.png").stat().st_size > 10_000
