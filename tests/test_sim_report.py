"""Report helpers: which points count as "high load"."""

from mfs.sim.report import high_points


def test_high_points_are_the_two_highest_rates_at_or_above_the_knee_where_mfs_still_meets_some():
    d = {"mfs": {0.8: 1.0, 1.0: 0.9, 1.1: 0.7, 1.2: 0.4, 1.3: 0.1}}
    assert high_points(d, knee=1.0) == [1.1, 1.2]  # 1.3: MFS below 20 %, ratios there are noise
    assert high_points(d, knee=1.15) == [1.2]
    # nothing qualifies: fall back to the rate nearest the knee
    assert high_points({"mfs": {0.8: 0.1, 1.0: 0.05}}, knee=0.95) == [1.0]


def test_high_points_prefer_the_rates_run_with_the_most_seeds():
    d = {"mfs": {1.0: 0.9, 1.1: 0.6, 1.2: 0.4, 1.3: 0.3}}
    seeds = {1.0: 3, 1.1: 3, 1.2: 1, 1.3: 1}
    assert high_points(d, knee=1.0) == [1.2, 1.3]
    assert high_points(d, knee=1.0, seeds=seeds) == [1.0, 1.1]  # not the single-seed points
    assert high_points(d, knee=1.05, seeds=seeds) == [1.1]
