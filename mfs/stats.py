"""Small-sample statistics for comparing schedulers (pure Python, no SciPy).

Every interval is a two-sided 95 % interval unless ``level`` says otherwise:

* :func:`mean_ci` — Student-t interval of a mean;
* :func:`paired_diff` — mean of paired differences (same request under two policies) with its
  t interval, and the same relative to the baseline's mean;
* :func:`wilson` — Wilson score interval of a proportion (SLO attainment);
* :func:`quantile_ci` — percentile-bootstrap interval of a quantile (p99 TTFT), seeded, so the
  same data always gives the same interval.
"""

from __future__ import annotations

import math
import random
import statistics
from dataclasses import dataclass
from typing import Sequence

# two-sided 95 % Student-t quantiles t_{0.975, df}, df = 1..30 (standard tables)
_T975 = (12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228,
         2.201, 2.179, 2.160, 2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086,
         2.080, 2.074, 2.069, 2.064, 2.060, 2.056, 2.052, 2.048, 2.045, 2.042)


def t975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` degrees of freedom (df >= 1)."""
    if df < 1:
        raise ValueError(f"degrees of freedom must be >= 1, got {df}")
    if df <= 30:
        return _T975[df - 1]
    # Cornish-Fisher expansion around the normal quantile: error < 1e-3 for df > 30
    z = 1.959964
    return z + (z ** 3 + z) / (4 * df) + (5 * z ** 5 + 16 * z ** 3 + 3 * z) / (96 * df * df)


@dataclass(frozen=True)
class Interval:
    value: float
    lo: float
    hi: float
    n: int

    @property
    def half(self) -> float:
        return (self.hi - self.lo) / 2

    def excludes_zero(self) -> bool:
        return self.lo > 0 or self.hi < 0

    def scaled(self, k: float) -> "Interval":
        a, b = self.lo * k, self.hi * k
        return Interval(self.value * k, min(a, b), max(a, b), self.n)

    def as_dict(self) -> dict:
        return {"value": self.value, "lo": self.lo, "hi": self.hi, "n": self.n}


NAN = Interval(math.nan, math.nan, math.nan, 0)


def _finite(xs: Sequence[float]) -> list[float]:
    return [float(x) for x in xs if x is not None and math.isfinite(x)]


def mean_ci(xs: Sequence[float]) -> Interval:
    """Mean with its Student-t 95 % interval (a point interval for one value, NaN for none)."""
    xs = _finite(xs)
    n = len(xs)
    if n == 0:
        return NAN
    m = statistics.fmean(xs)
    if n == 1:
        return Interval(m, m, m, 1)
    h = t975(n - 1) * statistics.stdev(xs) / math.sqrt(n)
    return Interval(m, m - h, m + h, n)


@dataclass(frozen=True)
class PairedDiff:
    diff: Interval  # mean of (treatment - baseline), absolute units
    rel: Interval  # the same ÷ the baseline's mean (−0.2 = 20 % lower than the baseline)
    base_mean: float
    wins: int  # pairs where the treatment is lower
    losses: int  # pairs where it is higher

    def as_dict(self) -> dict:
        return {"diff": self.diff.as_dict(), "rel": self.rel.as_dict(), "base_mean": self.base_mean,
                "wins": self.wins, "losses": self.losses}


def paired_diff(treatment: Sequence[float], baseline: Sequence[float]) -> PairedDiff:
    """Paired comparison: ``treatment[i]`` and ``baseline[i]`` measured on the same unit (request).

    Pairs with a non-finite member are dropped. The relative interval divides the absolute one by
    the baseline's mean over the kept pairs (its own uncertainty is not propagated)."""
    if len(treatment) != len(baseline):
        raise ValueError(f"paired_diff needs equally long sequences (got {len(treatment)} and {len(baseline)})")
    pairs = [(a, b) for a, b in zip(treatment, baseline)
             if a is not None and b is not None and math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return PairedDiff(NAN, NAN, math.nan, 0, 0)
    d = mean_ci([a - b for a, b in pairs])
    base = statistics.fmean(b for _, b in pairs)
    rel = d.scaled(1 / base) if base else NAN
    return PairedDiff(d, rel, base, sum(a < b for a, b in pairs), sum(a > b for a, b in pairs))


def wilson(k: int, n: int) -> Interval:
    """Proportion k/n with its Wilson score 95 % interval."""
    if n <= 0:
        return NAN
    if not 0 <= k <= n:
        raise ValueError(f"need 0 <= k <= n, got k={k}, n={n}")
    z = 1.959964
    p = k / n
    den = 1 + z * z / n
    c = (p + z * z / (2 * n)) / den
    h = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    return Interval(p, max(0.0, c - h), min(1.0, c + h), n)


def quantile(xs: Sequence[float], q: float) -> float:
    """Linear-interpolation quantile (as numpy's default and mfs.sim.results)."""
    s = sorted(_finite(xs))
    if not s:
        return math.nan
    k = (len(s) - 1) * q
    lo, hi = math.floor(k), math.ceil(k)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


def quantile_ci(xs: Sequence[float], q: float, resamples: int = 1000, seed: int = 1) -> Interval:
    """Quantile ``q`` of ``xs`` with a percentile-bootstrap 95 % interval (deterministic: ``seed``).

    With few values a high quantile's interval is wide and reaches the sample maximum: read it as
    'how far the tail could move', not as a precise estimate."""
    xs = _finite(xs)
    if not xs:
        return NAN
    v = quantile(xs, q)
    if len(xs) == 1:
        return Interval(v, v, v, 1)
    rng = random.Random(seed)
    n = len(xs)
    boots = sorted(quantile([xs[rng.randrange(n)] for _ in range(n)], q) for _ in range(resamples))
    return Interval(v, quantile(boots, 0.025), quantile(boots, 0.975), n)
