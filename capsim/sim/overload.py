"""Overload detection relative to the workload's own time scale.

A stable queue's waits come back down; an overloaded one's grow without bound (linearly in
time). A single long wait says little on its own: an M/M/1 queue at rho = 0.9 with a 1 s mean
service time has a p99 of 46 s and, over 2e5 requests, a longest wait near 120 s. So a run is
judged overloaded from the *growth* of the oldest waiting request's wait:

* the alarm level is ``max_wait_s`` when the scenario sets it, else
  :data:`LEVEL_SERVICE_TIMES` mean service times (at least :data:`MIN_LEVEL_S`);
* once the oldest wait passes the level, an excursion starts at that wait ``w1``; the run is
  overloaded when, without the wait falling back below the level, it reaches ``2 * w1``.

For a stable M/M/1 queue with 100 service times above the level the doubling has a chance of
about ``exp(-(1 - rho) * 100)`` per excursion (5e-5 at rho = 0.9); an overloaded queue's wait
grows at ``1 - 1/rho`` seconds per second and doubles in ``w1 / (1 - 1/rho)`` seconds.

>>> g = WaitGrowth(100.0)
>>> g.check(10.0, 150.0), g.check(20.0, 90.0), g.check(30.0, 120.0), g.check(300.0, 250.0)
('', '', '', 'overloaded: the oldest waiting request waited 120.0s at t=30s and 250.0s at t=300s (alarm level 100s): the wait doubled without the queue draining, so the queue grows without bound')
"""

from __future__ import annotations

import math

LEVEL_SERVICE_TIMES = 100.0
MIN_LEVEL_S = 60.0


def alarm_level(max_wait_s: float | None, time_scale_s: float) -> float:
    """The wait that starts an excursion: ``max_wait_s`` if set, else 100 service times (>= 60 s).

    >>> alarm_level(None, 1.0), alarm_level(None, 0.01), alarm_level(5.0, 1.0)
    (100.0, 60.0, 5.0)
    """
    if max_wait_s is not None:
        return float(max_wait_s)
    if not math.isfinite(time_scale_s) or time_scale_s <= 0:
        return MIN_LEVEL_S
    return max(MIN_LEVEL_S, LEVEL_SERVICE_TIMES * time_scale_s)


class WaitGrowth:
    """Watches the oldest waiting request's wait; :meth:`check` says when it grows unboundedly."""

    __slots__ = ("level", "t1", "w1")

    def __init__(self, level_s: float):
        self.level = level_s
        self.t1 = math.nan
        self.w1 = math.nan

    @property
    def armed(self) -> bool:
        """True during an excursion above the level."""
        return not math.isnan(self.w1)

    def calm(self) -> None:
        """The wait fell back below the level: the excursion is over."""
        self.w1 = math.nan

    def check(self, now: float, waited: float) -> str:
        """'' while the run looks stable, else the reason it is overloaded."""
        if waited <= self.level:
            self.w1 = math.nan
            return ""
        if math.isnan(self.w1):
            self.t1, self.w1 = now, waited
            return ""
        if waited >= 2 * self.w1:
            return (
                f"overloaded: the oldest waiting request waited {self.w1:.1f}s at t={self.t1:.0f}s "
                f"and {waited:.1f}s at t={now:.0f}s (alarm level {self.level:g}s): the wait doubled "
                "without the queue draining, so the queue grows without bound"
            )
        return ""
