"""Warm-up, repeat until a time or count limit, and summarise the samples."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from .backends.base import Backend, Op


@dataclass(frozen=True)
class TimingConfig:
    """How long to measure one point.

    ``warmup`` untimed calls first (fewer when a call is slower than ``max_time_s``), then timed
    samples until ``max_time_s`` has passed and at least ``min_repeats`` were taken, or until
    ``max_repeats`` samples, or until the run's deadline.
    """

    warmup: int = 3
    max_time_s: float = 0.5
    min_repeats: int = 5
    max_repeats: int = 200

    def with_time(self, max_time_s: float) -> TimingConfig:
        """The same limits with another per-point time."""
        return replace(self, max_time_s=max_time_s)

    def as_dict(self) -> dict[str, Any]:
        """For ``meta.json``."""
        return asdict(self)


@dataclass(frozen=True)
class Stats:
    """Summary of the per-call times of one measurement point, seconds."""

    median_s: float
    min_s: float
    p10_s: float
    p90_s: float
    std_s: float
    repeats: int


def summarize(samples: Sequence[float]) -> Stats:
    """Median, min, p10, p90 and sample standard deviation of ``samples``."""
    if len(samples) == 0:
        raise ValueError("no samples to summarise")
    x = np.asarray(samples, dtype=np.float64)
    p10, median, p90 = np.percentile(x, [10, 50, 90])
    std = float(x.std(ddof=1)) if x.size > 1 else 0.0
    return Stats(float(median), float(x.min()), float(p10), float(p90), std, int(x.size))


def measure(backend: Backend, op: Op, cfg: TimingConfig, deadline: float) -> Stats:
    """Warm up, then time ``op`` per :class:`TimingConfig`; stop early at ``deadline``.

    At least one sample is always taken; when the first (warm-up) call already reaches the
    deadline it is the only sample. Times are per kernel call (divided by ``op.inner``).
    """
    with op.entered():
        first = backend.time_once(op)
        if time.perf_counter() + first >= deadline:
            return summarize([first / op.inner])
        for _ in range(cfg.warmup - 1):
            if first >= cfg.max_time_s or time.perf_counter() + first >= deadline:
                break
            backend.time_once(op)
        return _sample(backend, op, cfg, deadline)


def _sample(backend: Backend, op: Op, cfg: TimingConfig, deadline: float) -> Stats:
    samples: list[float] = []
    start = time.perf_counter()
    while len(samples) < cfg.max_repeats:
        samples.append(backend.time_once(op) / op.inner)
        now = time.perf_counter()
        last = samples[-1] * op.inner
        if len(samples) >= cfg.min_repeats and now - start >= cfg.max_time_s:
            break
        if now + last >= deadline:
            break
    return summarize(samples)
