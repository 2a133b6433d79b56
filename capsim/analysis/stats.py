"""Output analysis: warm-up deletion, percentiles, and confidence intervals that are honest.

Successive latencies in a queue are strongly correlated, so an interval built as if the
per-request latencies were independent is far too narrow. capsim's intervals come from
*independent replications* (a t-interval over the per-replication p99s) or, for a single run
of deterministic input such as a trace, from *batch quantiles* (the run cut into consecutive
time batches, one p99 per batch).

>>> ci = t_interval([1.0, 1.2, 0.9, 1.1, 1.0], confidence=0.95)
>>> round(ci.mean, 2), ci.low < 1.04 < ci.high
(1.04, True)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats as _st

PERCENTILES = (50.0, 90.0, 95.0, 99.0, 99.9)


@dataclass(frozen=True)
class CI:
    """A point estimate with its confidence interval (from ``n`` independent values)."""

    mean: float
    low: float
    high: float
    n: int
    confidence: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2

    def fmt(self, scale: float = 1.0, digits: int = 1) -> str:
        """``12.3 [11.8, 12.9]`` (values times ``scale``)."""
        if not math.isfinite(self.mean):
            return "n/a"
        return (
            f"{self.mean * scale:.{digits}f} "
            f"[{self.low * scale:.{digits}f}, {self.high * scale:.{digits}f}]"
        )

    def to_dict(self, scale: float = 1.0) -> dict[str, float | int]:
        return {
            "mean": self.mean * scale,
            "low": self.low * scale,
            "high": self.high * scale,
            "n": self.n,
            "confidence": self.confidence,
        }


def t_interval(values: Sequence[float] | np.ndarray, confidence: float = 0.95) -> CI:
    """Student-t interval for the mean of independent values (inf-wide for n < 2)."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)] if np.isfinite(v).any() else v
    n = len(v)
    if n == 0:
        return CI(math.nan, math.nan, math.nan, 0, confidence)
    m = float(v.mean())
    if n < 2:
        return CI(m, -math.inf, math.inf, n, confidence)
    sd = float(v.std(ddof=1))
    h = float(_st.t.ppf(0.5 + confidence / 2, n - 1)) * sd / math.sqrt(n)
    return CI(m, m - h, m + h, n, confidence)


def mser5(x: np.ndarray, max_fraction: float = 0.5) -> int:
    """MSER-5 warm-up: how many leading observations to delete.

    Batch the series in means of 5; choose the deletion point d* that minimises
    ``sum_{i>d}(Z_i - mean_d)^2 / (m - d)^2`` over d up to ``max_fraction`` of the run.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([np.linspace(10, 1, 200), rng.normal(1, 0.1, 2000)])
    >>> 150 <= mser5(x) <= 300
    True
    """
    x = np.asarray(x, dtype=float)
    m = len(x) // 5
    if m < 4:
        return 0
    z = x[: m * 5].reshape(m, 5).mean(axis=1)
    # suffix sums for O(m) evaluation of every deletion point
    rev = z[::-1]
    s1 = np.cumsum(rev)[::-1]
    s2 = np.cumsum(rev**2)[::-1]
    k = np.arange(m, 0, -1, dtype=float)  # number of batches kept when deleting d
    sse = s2 - s1**2 / k
    stat = sse / k**2
    dmax = max(1, int(m * max_fraction))
    d = int(np.argmin(stat[:dmax]))
    return d * 5


def mean_crossing_cut(x: np.ndarray, max_fraction: float = 0.5, batches: int = 200) -> int:
    """Warm-up deletion that cannot bias tails low: drop the empty-start transient only.

    capsim's runs start empty, so their initial transient is *low* (short queues). The rule
    cuts the series into about ``batches`` consecutive batch means (at least 5 observations
    each) and deletes the batches before the first one whose mean reaches the mean of the run's
    second half (a crossing-of-the-mean rule). It deletes only a prefix that is below the
    steady level; unlike MSER-5, which picks the deletion point that minimises the kept
    part's variance and so tends to cut just after a high excursion (on M/M/1 at rho = 0.9
    with 2e5 requests it biased p99 -1.4% and p99.9 -2.2%), it never removes a high stretch.

    >>> rng = np.random.default_rng(0)
    >>> x = np.concatenate([np.linspace(0, 1, 2000), rng.normal(1, 0.1, 20000)])
    >>> 1000 <= mean_crossing_cut(x) <= 2200
    True
    >>> mean_crossing_cut(np.ones(3))
    0
    """
    x = np.asarray(x, dtype=float)
    b = max(5, len(x) // batches)
    m = len(x) // b
    if m < 4:
        return 0
    z = x[: m * b].reshape(m, b).mean(axis=1)
    level = float(z[m // 2 :].mean())
    dmax = max(1, int(m * max_fraction))
    reached = np.flatnonzero(z[:dmax] >= level)
    d = int(reached[0]) if len(reached) else dmax
    return d * b


def quantiles(x: np.ndarray, ps: Sequence[float] = PERCENTILES) -> np.ndarray:
    """Percentiles (0-100) of ``x``; NaN when empty."""
    x = np.asarray(x, dtype=float)
    if len(x) == 0:
        return np.full(len(ps), math.nan)
    return np.percentile(x, ps)


#: below this many values ``percentiles`` is ``np.percentile`` itself
SELECT_MIN = 1_000_000


def percentiles(x: np.ndarray, ps: Sequence[float]) -> np.ndarray:
    """``np.percentile(x, ps)`` (linear), bit for bit, in about half the time on large arrays.

    ``np.percentile`` partitions a copy of the whole array around every order statistic it
    needs. Here a strided sample (every n/100,000-th value) brackets each needed order
    statistic ``k`` by a band six standard deviations wide; one pass counts the values below
    the band and keeps those inside it (a fraction of a percent), which are then partitioned.
    The interpolation is numpy's own (``np.quantile`` of the two neighbours at numpy's
    weight). A band that misses (a sample that far off) falls back to ``np.percentile``.
    ``x`` must hold no NaN.

    >>> x = np.random.default_rng(1).lognormal(0.0, 1.0, 1_500_000)
    >>> bool((percentiles(x, [50, 99, 99.9]) == np.percentile(x, [50, 99, 99.9])).all())
    True
    """
    x = np.asarray(x, dtype=float)
    n = len(x)
    if n < SELECT_MIN:
        return np.percentile(x, ps)
    q = np.true_divide(np.asarray(ps, dtype=float), 100)
    vi = (n - 1) * q  # numpy's virtual index for the linear method
    prev = np.minimum(np.floor(vi), n - 1).astype(np.intp)
    nxt = np.minimum(prev + 1, n - 1)
    got = _order_stats(x, sorted(set(prev.tolist()) | set(nxt.tolist())))
    if got is None:
        return np.percentile(x, ps)
    gamma = vi - np.floor(vi)
    return np.array(
        [
            np.quantile(np.array([got[a], got[b]]), g) if a != b else got[a]
            for a, b, g in zip(prev.tolist(), nxt.tolist(), gamma.tolist(), strict=True)
        ]
    )


def _order_stats(x: np.ndarray, ks: list[int]) -> dict[int, float] | None:
    """The ``k``-th smallest values of ``x`` (0-based, ``ks`` sorted), or None when a sampled
    band misses one."""
    n = len(x)
    smp = np.sort(x[:: max(1, n // 100_000)])
    m = len(smp)
    w = 6 * math.sqrt(m * 0.25) + 2  # six binomial standard deviations at most, in sample ranks
    bands: list[list] = []  # [low, high, ks], overlapping bands merged
    for k in ks:
        c = k / max(n - 1, 1) * (m - 1)
        lo = float(smp[int(c - w)]) if c - w > 0 else -math.inf
        hi = float(smp[int(c + w) + 1]) if c + w + 1 < m - 1 else math.inf
        if bands and lo <= bands[-1][1]:
            bands[-1][1] = max(bands[-1][1], hi)
            bands[-1][2].append(k)
        else:
            bands.append([lo, hi, [k]])
    out: dict[int, float] = {}
    for lo, hi, kk in bands:
        below = int(np.count_nonzero(x < lo)) if lo > -math.inf else 0
        sub = x[(x >= lo) & (x <= hi)]
        rel = [k - below for k in kk]
        if rel[0] < 0 or rel[-1] >= len(sub):
            return None
        sub.partition(rel)
        out.update({k: float(sub[r]) for k, r in zip(kk, rel, strict=True)})
    return out


def batch_quantile_ci(
    x: np.ndarray, p: float, *, batches: int = 10, confidence: float = 0.95
) -> CI:
    """Batch-quantile interval for one run: cut ``x`` (in time order) into consecutive batches."""
    x = np.asarray(x, dtype=float)
    if len(x) < batches * 10:
        return t_interval([float(np.percentile(x, p))] if len(x) else [], confidence)
    parts = np.array_split(x, batches)
    return t_interval([float(np.percentile(b, p)) for b in parts], confidence)


def decide(ci: CI, target: float) -> str:
    """'meets' when the upper limit is within target, 'fails' when the lower limit is above it,
    else 'undecided' (more replications would tell)."""
    if ci.high <= target:
        return "meets"
    if ci.low > target:
        return "fails"
    return "undecided"
