"""Per-run metrics from a run's arrays, and their summary over replications.

A run yields *named latency series* (``latency`` for fixed-shape models; ``ttft``, ``tpot`` and
``e2e`` for LLMs) plus scalars (throughput, utilisation, energy ...). :func:`summarise` turns
the runs of independent replications into confidence intervals: one interval per percentile
per series, from the spread of the per-replication values.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from capsim.analysis.stats import (
    CI,
    PERCENTILES,
    batch_quantile_ci,
    mean_crossing_cut,
    quantiles,
    t_interval,
)

SAMPLE_SIZE = 20_000  # latencies kept per run for CDF plots


@dataclass
class RunMetrics:
    """What one replication measured (seconds, requests, joules)."""

    quantiles: dict[str, dict[float, float]]
    scalars: dict[str, float]
    unstable: bool = False
    unstable_reason: str = ""
    samples: dict[str, np.ndarray] = field(default_factory=dict)
    batch_quantiles: dict[str, dict[float, CI]] = field(default_factory=dict)
    timeseries: dict[str, np.ndarray] = field(default_factory=dict)  # e.g. time_s, kv_utilisation


def series_metrics(
    series: dict[str, np.ndarray],
    percentiles: Sequence[float],
    rng: np.random.Generator | None = None,
    *,
    batch_ci_confidence: float | None = None,
) -> tuple[dict[str, dict[float, float]], dict[str, np.ndarray], dict[str, dict[float, CI]]]:
    """Percentiles of each series, a subsample for plots, and (optionally) batch-quantile CIs."""
    ps = sorted(set(PERCENTILES) | set(percentiles))
    q: dict[str, dict[float, float]] = {}
    samples: dict[str, np.ndarray] = {}
    bq: dict[str, dict[float, CI]] = {}
    for name, x in series.items():
        q[name] = dict(zip(ps, (float(v) for v in quantiles(x, ps)), strict=True))
        if len(x) > SAMPLE_SIZE:
            pick = (rng or np.random.default_rng(0)).choice(len(x), SAMPLE_SIZE, replace=False)
            samples[name] = np.sort(x[pick])
        else:
            samples[name] = np.sort(x)
        if batch_ci_confidence is not None:
            bq[name] = {p: batch_quantile_ci(x, p, confidence=batch_ci_confidence) for p in ps}
    return q, samples, bq


def warmup_cut(latency_in_arrival_order: np.ndarray, mode: str | float, arrival: np.ndarray) -> int:
    """How many leading requests to drop: the empty-start transient ('auto', see
    :func:`~capsim.analysis.stats.mean_crossing_cut`), none, or those before N seconds."""
    if mode == "none":
        return 0
    if mode == "auto":
        return mean_crossing_cut(latency_in_arrival_order)
    return int(np.searchsorted(arrival, float(mode)))


@dataclass(frozen=True)
class Summary:
    """Replications summarised: a CI per (series, percentile) and per scalar."""

    quantiles: dict[str, dict[float, CI]]
    scalars: dict[str, CI]
    replications: int
    unstable: bool
    unstable_reason: str
    samples: dict[str, np.ndarray]
    timeseries: dict[str, np.ndarray] = field(default_factory=dict)  # mean over replications

    def q(self, name: str, p: float) -> CI:
        return self.quantiles[name][p]


def summarise(runs: Sequence[RunMetrics], confidence: float) -> Summary:
    """Confidence intervals over independent replications (batch quantiles for a single run)."""
    if not runs:
        raise ValueError("no runs to summarise")
    names = runs[0].quantiles.keys()
    qs: dict[str, dict[float, CI]] = {}
    for name in names:
        qs[name] = {}
        for p in runs[0].quantiles[name]:
            if len(runs) == 1 and runs[0].batch_quantiles:
                qs[name][p] = runs[0].batch_quantiles[name][p]
            else:
                qs[name][p] = t_interval([r.quantiles[name][p] for r in runs], confidence)
    scalars = {k: t_interval([r.scalars[k] for r in runs], confidence) for k in runs[0].scalars}
    unstable = [r for r in runs if r.unstable]
    if unstable:
        for name in qs:
            for p in qs[name]:
                qs[name][p] = CI(math.inf, math.inf, math.inf, len(runs), confidence)
    samples = {
        name: np.sort(np.concatenate([r.samples.get(name, np.empty(0)) for r in runs]))
        for name in names
    }
    return Summary(
        qs,
        scalars,
        len(runs),
        bool(unstable),
        unstable[0].unstable_reason if unstable else "",
        samples,
        _mean_timeseries(runs),
    )


def _mean_timeseries(runs: Sequence[RunMetrics]) -> dict[str, np.ndarray]:
    """Element-wise mean of the runs' time series (those of the first run's shape)."""
    out: dict[str, np.ndarray] = {}
    for name, first in runs[0].timeseries.items():
        same = [
            r.timeseries[name]
            for r in runs
            if name in r.timeseries and np.shape(r.timeseries[name]) == np.shape(first)
        ]
        out[name] = np.mean(np.vstack(same), axis=0)
    return out
