"""The demo's analysis (topo.demoreport): paired comparisons, agreement with the simulator, verdict, plot."""

import pytest

from mfs.sim.results import RequestRecord, make_run
from topo import demoreport as R


def _runs(pol, factor, seeds=(1, 2), n=10, s2=0.01, sim=False):
    out = []
    for s in seeds:
        recs = [RequestRecord(s * 1000 + i, 0.0, ttft=(0.1 + 0.02 * i) * factor, deadline=0.25,
                              met=(0.1 + 0.02 * i) * factor <= 0.25, stage2_cct=s2 * factor) for i in range(n)]
        out.append(make_run(pol, 1.0, recs, seed=s, simulated=sim))
    return out


def test_compare_pairs_by_seed_and_request():
    emu = _runs("mfs", 0.8) + _runs("fair", 1.0) + _runs("karuna", 1.05)
    sim = _runs("mfs", 0.85, sim=True) + _runs("fair", 1.0, sim=True) + _runs("karuna", 0.7, sim=True)
    comps = {c.baseline: c for c in R.compare(emu, sim)}
    fair = comps["fair"]
    assert fair.emulated.rel.value == pytest.approx(-0.2) and fair.emulated.diff.n == 20
    assert fair.significant and fair.emulated.wins == 20
    assert fair.seeds_rel == pytest.approx([-0.2, -0.2])
    assert fair.simulated.rel.value == pytest.approx(-0.15)
    assert fair.agreement() == "same direction"  # -15 % lies outside the (exact) emulated interval
    assert "simulated -15.0%" in fair.line() and "magnitudes differ" in fair.line()
    kar = comps["karuna"]
    assert kar.agreement() == "opposite" and "DISAGREE" in kar.line()
    v = R.verdict(list(comps.values()))
    assert v.startswith("verdict: MFS does NOT win") and "vs fair 20% lower" in v


def test_verdict_when_mfs_wins_everywhere_and_when_not_significant():
    emu = _runs("mfs", 0.8) + _runs("fair", 1.0)
    emu[0].requests[0].ttft += 0.05  # some noise, so the interval has width
    sim = _runs("mfs", 0.8, sim=True) + _runs("fair", 1.0, sim=True)
    comps = R.compare(emu, sim)
    assert comps[0].agreement() == "agree"
    assert R.verdict(comps).startswith("verdict: MFS wins significantly, in the simulator's direction")
    tie = _runs("mfs", 1.0) + _runs("fair", 1.0)
    tie[0].requests[0].ttft += 0.05
    tie[1].requests[0].ttft -= 0.05
    c = R.compare(tie)[0]
    assert not c.significant and "not significant" in c.line() and "not significant" in R.verdict([c])
    assert R.verdict([]).startswith("verdict: nothing to compare")


def test_policy_stats_table_and_plot(tmp_path):
    emu = _runs("mfs", 0.8) + _runs("fair", 1.0)
    st = [R.policy_stats(p, rs) for p, rs in R.by_policy(emu).items()]
    assert st[0].requests == 20 and st[0].seeds == 2
    assert st[0].ttft_mean.lo < st[0].ttft_mean.value < st[0].ttft_mean.hi
    text = R.table(st, {"mfs": st[0]})
    assert "(sim)" in text and text.splitlines()[2].startswith("mfs")
    png = R.plot(emu, _runs("mfs", 0.8, sim=True), tmp_path / "d.png", "t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
