"""mfs.stats: the intervals the demo reports, against hand/table values."""

import math
import statistics

import pytest

from mfs import stats as S


def test_t_quantiles_match_tables_and_approach_normal():
    assert S.t975(1) == pytest.approx(12.706) and S.t975(10) == pytest.approx(2.228)
    assert S.t975(30) == pytest.approx(2.042)
    assert S.t975(60) == pytest.approx(2.000, abs=2e-3) and S.t975(120) == pytest.approx(1.980, abs=2e-3)
    assert S.t975(10_000) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError, match="degrees of freedom"):
        S.t975(0)


def test_mean_ci_by_hand():
    xs = [1.0, 2.0, 3.0, 4.0, 5.0]
    iv = S.mean_ci(xs)
    h = 2.776 * statistics.stdev(xs) / math.sqrt(5)
    assert (iv.value, iv.lo, iv.hi, iv.n) == pytest.approx((3.0, 3 - h, 3 + h, 5))
    assert S.mean_ci([7.0]).lo == 7.0 and math.isnan(S.mean_ci([]).value)
    assert S.mean_ci([1.0, float("nan"), 3.0]).n == 2  # non-finite values are dropped


def test_paired_difference_sees_a_shift_hidden_by_spread():
    base = [0.1 * k for k in range(1, 21)]  # widely spread requests ...
    treat = [b - 0.01 for b in base]  # ... each 10 ms faster
    unpaired = S.mean_ci(treat).lo - S.mean_ci(base).hi
    assert unpaired < 0  # the per-policy intervals overlap
    d = S.paired_diff(treat, base)
    assert d.diff.value == pytest.approx(-0.01) and d.diff.excludes_zero() and d.diff.hi < 0
    assert d.rel.value == pytest.approx(-0.01 / statistics.fmean(base))
    assert (d.wins, d.losses) == (20, 0)
    noisy = S.paired_diff([b + (0.05 if k % 2 else -0.05) for k, b in enumerate(base)], base)
    assert not noisy.diff.excludes_zero()
    with pytest.raises(ValueError, match="equally long"):
        S.paired_diff([1.0], [1.0, 2.0])


def test_wilson_interval():
    iv = S.wilson(5, 10)
    assert (iv.lo, iv.hi) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert S.wilson(10, 10).hi == pytest.approx(1.0) and S.wilson(10, 10).lo == pytest.approx(0.7225, abs=1e-4)
    with pytest.raises(ValueError):
        S.wilson(11, 10)


def test_quantile_bootstrap_is_deterministic_and_brackets_the_estimate():
    xs = [float(k) for k in range(100)]
    iv = S.quantile_ci(xs, 0.99)
    assert iv.value == pytest.approx(98.01) and iv.lo <= iv.value <= iv.hi <= 99.0
    assert S.quantile_ci(xs, 0.99) == iv
    med = S.quantile_ci(xs, 0.5)
    assert 35 < med.lo < 49.5 < med.hi < 65  # SE of the median here: 0.05 / density 0.01 = 5
