"""Arrival times of the synthetic processes (Poisson, renewal) under a load pattern."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.spec.scenario import (
    Diurnal,
    Piecewise,
    Poisson,
    Renewal,
)
from capsim.workload.prefixes import SharedPrefixes


@dataclass(frozen=True)
class RequestStream:
    """One replication's requests: sorted arrival times (s) and optional token counts."""

    arrival: np.ndarray
    horizon: float
    prompt_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    time_scale: float = 1.0  # simulated seconds per real second (< 1 when compressed)
    prefixes: SharedPrefixes | None = None  # shared prefixes (sessions, system prompts)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def mean_rate(self) -> float:
        return len(self.arrival) / self.horizon if self.horizon > 0 else 0.0


# --------------------------------------------------------------------------- rate profiles
def rate_multiplier(arr: Poisson | Renewal, t: np.ndarray) -> np.ndarray:
    """Multiplier of the mean rate at real times ``t`` (pattern times bursts)."""
    m = np.ones_like(t, dtype=float)
    p = arr.pattern
    if isinstance(p, Diurnal):
        amp = (p.peak_to_trough - 1) / (p.peak_to_trough + 1)
        phase = 2 * np.pi * (t / p.period_s - p.peak_hour / 24.0)
        m = 1 + amp * np.cos(phase)
    elif isinstance(p, Piecewise):
        ts, ms = np.asarray(p.times_s), np.asarray(p.multipliers)
        if p.interpolation == "linear":
            m = np.interp(t, ts, ms)
        else:
            idx = np.searchsorted(ts, t, side="right") - 1
            m = np.where(idx < 0, ms[0], ms[np.clip(idx, 0, len(ms) - 1)])
    for b in arr.bursts:
        m = np.where((t >= b.start_s) & (t < b.start_s + b.duration_s), m * b.multiplier, m)
    return m


def _unit_gaps(arr: Poisson | Renewal, n: int, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps of a unit-rate process."""
    if isinstance(arr, Renewal):
        if arr.cv == 0:
            return np.ones(n)
        shape = 1.0 / arr.cv**2
        return rng.gamma(shape, 1.0 / shape, size=n)
    return rng.exponential(1.0, size=n)


def arrival_times(
    arr: Poisson | Renewal, horizon: float, rng: np.random.Generator, *, time_scale: float = 1.0
) -> np.ndarray:
    """Arrival times in ``[0, horizon)`` of simulated time.

    ``time_scale`` < 1 compresses the load pattern: simulated time τ sees the pattern at real time
    τ / time_scale (the rate itself is unchanged).
    """
    stationary = arr.pattern is None and not arr.bursts
    if stationary:
        grid = np.array([0.0, horizon])
        cum = np.array([0.0, arr.rate_rps * horizon])
    else:
        npts = int(min(2_000_000, max(2_000, horizon / 0.5))) + 1
        grid = np.linspace(0.0, horizon, npts)
        lam = arr.rate_rps * rate_multiplier(arr, grid / time_scale)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (lam[1:] + lam[:-1]) * np.diff(grid))])
    total = cum[-1]
    n_guess = int(total + 6 * np.sqrt(total) + 100)
    gaps = _unit_gaps(arr, n_guess, rng)
    points = np.cumsum(gaps, out=gaps)  # in place: no second array of 10^7 floats
    while points[-1] < total:
        more = np.cumsum(_unit_gaps(arr, n_guess, rng)) + points[-1]
        points = np.concatenate([points, more])
    points = points[: np.searchsorted(points, total, side="left")]  # sorted: a view, no copy
    if stationary:
        return points / arr.rate_rps
    return np.interp(points, cum, grid)
