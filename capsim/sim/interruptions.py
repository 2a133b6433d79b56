"""Spot interruptions and the committed base of an autoscaled fleet (the lifecycle's side).

:class:`CapacityPlan` is what :class:`capsim.sim.lifecycle.Lifecycle` needs of a scenario's
``capacity:`` (:mod:`capsim.spec.capacity`): how many base replicas are held for the whole run
and never interrupted, and, for a spot burst, when interruption notices come:

* ``poisson``: each spot replica, from the moment it is ready, draws an exponential time to its
  notice with mean ``1 / rate`` (one draw per replica, in the order they become ready, from the
  plan's own random stream), so notices form a Poisson process of rate ``rate`` per ready spot
  replica-hour;
* ``trace``: notices at given times, each taking the oldest ready spot replica (none ready:
  the notice is ignored and counted as ``missed``).

The stream is the replication's own :class:`numpy.random.SeedSequence` child
(:func:`interruption_seed`, the 5th), so changing the interruptions leaves arrivals, sizes,
jitter and cold starts as they were.

>>> plan = CapacityPlan(base=1, spot=True, rate_per_s=1 / 3600, seed=7)
>>> round(float(np.mean([plan.time_to_notice() for _ in range(4000)])) / 3600, 1)
1.0
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from capsim.spec.capacity import Capacity, PoissonInterruptions, TraceInterruptions


def interruption_seed(seed: int, replication: int) -> np.random.SeedSequence:
    """The replication's interruption stream: the 5th child of the same SeedSequence as
    :func:`capsim.workload.streams.seed_children` (whose 4 children it leaves unchanged)."""
    root = np.random.SeedSequence(seed)
    rep = np.random.SeedSequence(root.entropy, spawn_key=(replication,))
    return rep.spawn(5)[4]


@dataclass
class CapacityPlan:
    """Base replicas, and the spot burst's interruption notices (see the module docstring)."""

    base: int = 0
    spot: bool = False
    rate_per_s: float = 0.0
    trace: tuple[float, ...] = ()
    notice_s: float = 0.0
    drain: bool = True
    seed: np.random.SeedSequence | int | None = None
    rng: np.random.Generator = field(init=False)

    def __post_init__(self) -> None:
        self.rng = np.random.default_rng(self.seed)

    @classmethod
    def of(cls, cap: Capacity | None, seed: int, replication: int) -> CapacityPlan:
        """The plan of a scenario's ``capacity:`` for one replication (None: all on demand)."""
        if cap is None:
            return cls()
        it = cap.interruptions
        return cls(
            base=cap.base.replicas,
            spot=cap.burst == "spot",
            rate_per_s=it.rate_per_hour / 3600 if isinstance(it, PoissonInterruptions) else 0.0,
            trace=tuple(it.times_s) if isinstance(it, TraceInterruptions) else (),
            notice_s=cap.notice_s,
            drain=cap.drain_on_notice,
            seed=interruption_seed(seed, replication),
        )

    def compressed(self, factor: float) -> CapacityPlan:
        """The same plan on a day compressed ``factor`` times (rates up, times down)."""
        if factor == 1.0:
            return self
        return CapacityPlan(
            base=self.base,
            spot=self.spot,
            rate_per_s=self.rate_per_s * factor,
            trace=tuple(t / factor for t in self.trace),
            notice_s=self.notice_s / factor,
            drain=self.drain,
            seed=self.seed,
        )

    @property
    def interrupts(self) -> bool:
        return self.spot and (self.rate_per_s > 0 or bool(self.trace))

    def time_to_notice(self) -> float:
        """Seconds from a spot replica becoming ready to its notice (inf: never)."""
        if self.rate_per_s <= 0:
            return math.inf
        return float(self.rng.exponential(1.0 / self.rate_per_s))


@runtime_checkable
class InterruptibleFleet(Protocol):
    """An engine whose replicas can be reclaimed (spot): ``interrupt_replica(fid, now, deadline,
    on_released)`` stops giving work to replica ``fid`` at ``now`` (the notice); what it still
    holds at ``deadline`` is re-queued to the other replicas (``requeued`` counts requests).
    Returns the id released (replicas that are interchangeable may give another one)."""

    requeued: int

    def sync(self, until: float) -> None: ...

    def interrupt_replica(
        self, fid: int, now: float, deadline: float, on_released: Callable[[int, float], None]
    ) -> int | None: ...


class SpotMixin:
    """The lifecycle's spot side: base replicas kept, notices, reclaims and replacements.

    Mixed into :class:`capsim.sim.lifecycle.Lifecycle`, whose state it uses (``rec_of``,
    ``cap``, ``fleet``, ``env``, ``draining``, ``finished``, ``missed``)."""

    env: Any
    fleet: Any
    cap: CapacityPlan
    rec_of: dict[int, Any]
    draining: list[Any]
    finished: bool
    missed: int

    def _ready_change(self, t: float, delta: int) -> None:
        raise NotImplementedError

    def _on_released(self, fid: int, when: float) -> None:
        raise NotImplementedError

    def _request(self, t: float) -> None:
        raise NotImplementedError

    def _serving(self) -> list[Any]:
        """Ready records taking work, oldest first (not draining, not under notice)."""
        return [r for r in self.rec_of.values() if math.isnan(r.drain)]

    def _keep_base(self, cb: Callable[[int, float], None]) -> Callable[[int, float], None]:
        """Wrap a release callback: when the engine picks a base replica to retire, a serving
        burst replica becomes base instead (the base count never drops)."""

        def wrapped(fid: int, when: float) -> None:
            rec = self.rec_of.get(fid)
            if rec is not None:
                self._pass_base(rec)
            cb(fid, when)

        return wrapped

    def _pass_base(self, rec: Any) -> None:
        """``rec`` leaves: if it is a base replica, a serving burst replica becomes base."""
        if rec.base:
            other = next((r for r in self._serving() if not r.base and r is not rec), None)
            if other is not None:
                rec.base, other.base = False, True

    def _notice(self, rec: Any) -> None:
        """A spot notice for ``rec``: it stops taking work, a replacement is requested (cold
        start), and what it still holds at the end of the notice is re-queued."""
        if not self._interruptible(rec):
            return  # retired, released, made base or already noticed since the draw
        rec.notice = self.env.now
        if self.cap.drain:
            self._take(rec, self.cap.notice_s)
        else:  # no handler: it serves on, and is reclaimed (and replaced) at the deadline
            ev = self.env.timeout(self.cap.notice_s)
            ev.callbacks.append(lambda _e: self._take(rec, 0.0))

    def _interruptible(self, rec: Any) -> bool:
        return not (
            self.finished
            or rec.base
            or not math.isnan(rec.drain)
            or math.isnan(rec.ready)
            or not math.isnan(rec.notice)
        )

    def _take(self, rec: Any, notice_s: float) -> None:
        """Reclaim ``rec`` ``notice_s`` from now: it takes no new work from now, what it holds
        then is re-queued; its replacement is requested now."""
        if self.finished or not math.isnan(rec.drain):
            return
        fid = next((f for f, r in self.rec_of.items() if r is rec), None)
        if fid is None or not isinstance(self.fleet, InterruptibleFleet):
            return
        t = self.env.now
        self.fleet.sync(t)
        self._ready_change(t, -1)
        rec.drain = t
        self.draining.append(rec)

        def released(r: int, when: float) -> None:
            if r != fid:  # interchangeable replicas: the engine freed another id
                self.rec_of[fid] = self.rec_of.pop(r)
                self.rec_of[r] = rec
            self._on_released(r, when)

        self.fleet.interrupt_replica(fid, t, t + notice_s, released)
        self._request(t)

    def _trace(self):
        for at in self.cap.trace:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            if self.finished:
                return
            spot = [r for r in self._serving() if self._interruptible(r)]
            if spot:
                self._notice(min(spot, key=lambda r: r.ready))
            else:
                self.missed += 1
