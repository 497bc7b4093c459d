"""Sweeps (mfs.sim.sweep): resumable point files, progress lines, the same results on a local Ray
instance as on the local pool, and the report's confidence intervals."""

from __future__ import annotations

import io
import json
import math

import pytest

from mfs.sim.report import case_stats, make_report, mean_ci
from mfs.sim.sweep import BOUND, Point, executor, grid, load_points, sweep

BASE = Point("", "", "", 1.0, servers=4, warmup=4, measured=12)  # llama3-8b: 16-GPU instances


def _points():
    return grid(["llama3-8b"], ["agent"], ["mfs", "fair"], [1, 2], lambda m, w: [1.0], BASE)


def test_sweep_writes_one_file_per_point_and_resumes(tmp_path):
    pts = _points()
    assert [p.scheduler for p in pts] == ["mfs", "fair", BOUND] * 2 and [p.seed for p in pts] == [1] * 3 + [2] * 3
    log = io.StringIO()
    first = sweep(pts[:3], tmp_path, executor(None, 1), log=log)
    assert len(first) == 3 and "[3/3]" in log.getvalue() and "calibration 1/1" in log.getvalue()
    assert len(list(tmp_path.glob("calib_*.json"))) == 1
    mtimes = {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.json")}
    log = io.StringIO()
    allres = sweep(pts, tmp_path, executor(None, 1), log=log)  # resumes: only seed 2 runs
    assert "6 points, 3 already" in log.getvalue() and "[3/3]" in log.getvalue()
    assert len(allres) == 6
    for name, t in mtimes.items():
        assert (tmp_path / name).stat().st_mtime_ns == t  # finished points were not re-run
    d = json.loads((tmp_path / f"{pts[0].key}.json").read_text())
    assert d["point"]["scheduler"] == "mfs" and 0 <= d["summary"]["attainment"] <= 1
    assert d["nic_load"]["stage2_tx_mean"] > 0  # measured per-NIC loads are stored with the point


def test_load_points_names_a_bad_file(tmp_path):
    (tmp_path / "x.json").write_text("{not json")
    with pytest.raises(ValueError, match="x.json: cannot read point"):
        load_points(tmp_path)
    with pytest.raises(FileNotFoundError, match="not found"):
        load_points(tmp_path / "missing")


@pytest.mark.slow
def test_sweep_on_a_local_ray_instance_gives_the_local_results(tmp_path):
    ray = pytest.importorskip("ray", reason="ray is not installed (pip install '.[ray]')")
    pts = _points()[:2]
    local = {d["key"]: d["summary"] for d in sweep(pts, tmp_path / "local", executor(None, 1), log=io.StringIO())}
    try:
        on_ray = {d["key"]: d["summary"] for d in sweep(pts, tmp_path / "ray", executor("local", 1), log=io.StringIO())}
    finally:
        ray.shutdown()
    assert on_ray == local  # the simulator is deterministic: same points, same numbers


def test_mean_ci_and_paired_ratios():
    m, h, n = mean_ci([0.5, 0.7, 0.6])
    assert (m, n) == (pytest.approx(0.6), 3)
    assert h == pytest.approx(4.303 * 0.1 / math.sqrt(3))  # t(0.975, 2) · s / √n
    assert mean_ci([0.4])[2] == 1 and math.isnan(mean_ci([0.4])[1])

    def pt(s, r, seed, att, cct):
        return {"point": {"scheduler": s, "rate": r, "seed": seed},
                "summary": {"attainment": att, "stage2_cct_mean": cct}, "nic_load": {}}
    cs = {}
    for s, atts in (("mfs", {1.0: (1.0, 1.0), 2.0: (0.8, 0.6)}), ("fair", {1.0: (1.0, 1.0), 2.0: (0.4, 0.3)}),
                    ("karuna", {1.0: (1.0, 1.0), 2.0: (0.4, 0.4)})):
        for r, (a1, a2) in atts.items():
            cs.setdefault(s, {}).setdefault(r, {})[1] = pt(s, r, 1, a1, 2.0 if s == "mfs" else 4.0)
            cs[s][r][2] = pt(s, r, 2, a2, 2.0 if s == "mfs" else 4.0)
    st = case_stats(cs)
    (row,) = st["rows"]
    assert row["rate"] == 2.0
    assert row["vs_karuna"][0] == pytest.approx((2.0 + 1.5) / 2)  # per-seed ratios 0.8/0.4, 0.6/0.4
    assert row["cct_vs_fair"][0] == pytest.approx(0.5)


def test_report_from_points_and_from_its_csv(tmp_path):
    pts = _points()[:3]
    sweep(pts, tmp_path / "runs", executor(None, 1), log=io.StringIO())
    out = make_report(str(tmp_path / "runs"), str(tmp_path / "r.md"), str(tmp_path / "img"),
                      str(tmp_path / "p.csv"), "cmd", partial="python -m mfs.sim sweep --resume")
    text = out.read_text()
    assert "Partial results" in text and "python -m mfs.sim sweep --resume" in text
    assert "per prefill GPU" in text and "llama3-8b / agent" in text
    again = make_report(str(tmp_path / "p.csv"), str(tmp_path / "r2.md"), str(tmp_path / "img"), None, "cmd")
    assert again.read_text().split("## Per case")[1] == text.split("## Per case")[1]
