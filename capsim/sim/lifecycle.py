"""Replica lifecycle under an autoscaler: requested → provisioning → ready → draining → released.

The autoscaler is a SimPy process. Every ``policy.period_s`` seconds it brings the engine up to
the present (:meth:`ScalableFleet.sync`), reads the engine's cumulative counters
(:class:`FleetSample`), turns their differences since the last tick into an
:class:`~capsim.sim.policies.Observation`, asks the policy for the desired count and reconciles:

* more wanted: new replicas are *requested* now and *provision* for a cold start (sum of the
  node, image, weights and warm-up phases, one draw per replica from its own random stream);
  a SimPy timeout makes each one *ready* — it joins the engine and takes work from that moment;
* fewer wanted: replicas still provisioning are cancelled first (newest first, released at
  once), then ready ones are retired: an idle one is released at once, a busy one *drains*
  (takes no new work, finishes its batch) and is released when done.

Billing runs from request to release. Requests that arrive while no replica is ready wait in the
queue (as Knative's activator buffers them) until one is; a queue limit still rejects.

Any engine can be autoscaled by implementing :class:`ScalableFleet` (the batched engine does in
:mod:`capsim.sim.batched_fleet`; an event-driven engine such as an LLM engine implements
``sync`` as a no-op because it is always up to date).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import simpy

from capsim.sim.interruptions import CapacityPlan, SpotMixin
from capsim.sim.policies import Observation, Policy
from capsim.spec.autoscaling import ColdStart
from capsim.workload.streams import seed_children


# --------------------------------------------------------------------------- engine interface
@dataclass(frozen=True)
class FleetSample:
    """Cumulative counters of an engine at time ``t`` (integrals over ``[0, t]``).

    The autoscaler differences two samples to get the averages over a period.
    """

    t: float
    arrived: int  # requests arrived by t (admitted or not)
    queue: int  # waiting now (admitted, not started)
    in_service: int  # requests in batches / iterations running now
    busy: int  # replicas running work now (ready or draining)
    busy_seconds: float  # ∫ busy replicas dt
    request_seconds: float  # ∫ requests in the system (queued + in service) dt
    queue_seconds: float  # ∫ queue length dt
    rejected: int = 0  # rejected by a queue limit so far
    oldest_wait: float = 0.0  # how long the oldest waiting request has waited


@runtime_checkable
class ScalableFleet(Protocol):
    """What an engine offers the autoscaler.

    ``sync(t)``: process everything that happens before ``t`` (an event-driven engine: nothing).
    ``sample(t)``: cumulative counters at ``t`` (after ``sync(t)``).
    ``add_replica(t)``: a ready replica joins and takes work from ``t``; returns its id.
    ``retire_replica(t, on_released)``: stop giving work to one replica (an idle one if any)
    and call ``on_released(id, time)`` when its in-flight work is done (at once if idle; an
    engine that only learns the time later calls it then). Returns the id, or None if none.
    ``stop()``: abandon the run (overloaded); nothing more starts.
    """

    def sync(self, until: float) -> None: ...

    def sample(self, t: float) -> FleetSample: ...

    def add_replica(self, now: float) -> int: ...

    def retire_replica(
        self, now: float, on_released: Callable[[int, float], None]
    ) -> int | None: ...

    def stop(self) -> None: ...


# --------------------------------------------------------------------------- cold starts
def cold_start_seed(seed: int, replication: int) -> np.random.SeedSequence:
    """The replication's cold-start stream (:func:`capsim.workload.streams.seed_children`, 4th child):
    its own, so every policy still sees the same arrivals and service-time jitter."""
    return seed_children(seed, replication)[3]


class ColdStartSampler:
    """Hands out cold-start durations in request order; the k-th replica requested in a run gets
    the same draw under every policy (common random numbers)."""

    CHUNK = 256

    def __init__(
        self, spec: ColdStart, seed: np.random.SeedSequence | int, weight_bytes: float = 0.0
    ):
        self.spec, self.weight_bytes = spec, weight_bytes
        self.rng = np.random.default_rng(seed)
        self.buf: list[float] = []
        self.i = 0

    def __call__(self) -> float:
        if self.i >= len(self.buf):
            self.buf.extend(self.spec.sample(self.rng, self.CHUNK, self.weight_bytes).tolist())
        self.i += 1
        return self.buf[self.i - 1]


# --------------------------------------------------------------------------- records
@dataclass(eq=False)
class ReplicaRecord:
    requested: float
    ready: float = math.nan  # nan: cancelled while provisioning
    drain: float = math.nan  # when it stopped taking work
    released: float = math.nan  # nan: still held at the end
    cancelled: bool = False
    base: bool = False  # one of the capacity plan's base replicas (never interrupted)
    notice: float = math.nan  # when a spot interruption notice came


@dataclass
class LifecycleResult:
    """What the autoscaler did: one row per replica and one per tick."""

    requested: np.ndarray
    ready: np.ndarray
    drain: np.ndarray
    released: np.ndarray
    ticks: dict[str, np.ndarray]
    horizon: float
    end_time: float
    unstable: bool = False
    unstable_reason: str = ""
    notice: np.ndarray | None = None  # per replica: interruption notice time (nan: none)
    base: int = 0  # base replicas held over the whole horizon
    missed_notices: int = 0  # trace notices that found no ready spot replica

    @property
    def interruptions(self) -> int:
        return 0 if self.notice is None else int(np.count_nonzero(~np.isnan(self.notice)))

    def burst_seconds(self, until: float | None = None) -> float:
        """Replica-seconds above the base (the base is held over all of ``[0, until]``)."""
        h = self.horizon if until is None else until
        return max(float(self.billed_seconds(h).sum()) - self.base * h, 0.0)

    def billed_seconds(self, until: float | None = None) -> np.ndarray:
        """Per replica: seconds from request to release, within ``[0, until]``."""
        h = self.horizon if until is None else until
        rel = np.where(np.isnan(self.released), h, np.minimum(self.released, h))
        return np.clip(rel - self.requested, 0.0, None)

    def provisioning_seconds(self, until: float | None = None) -> np.ndarray:
        h = self.horizon if until is None else until
        end = np.where(np.isnan(self.ready), self.released, self.ready)
        end = np.where(np.isnan(end), h, np.minimum(end, h))
        return np.clip(end - self.requested, 0.0, None)

    def state_intervals(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """(start, end) per replica for each state (end = inf while still in it)."""
        inf = math.inf
        rel = np.where(np.isnan(self.released), inf, self.released)
        ready = self.ready
        prov_end = np.where(np.isnan(ready), rel, ready)
        ok = ~np.isnan(ready)
        drain = np.where(np.isnan(self.drain), rel, self.drain)
        return {
            "provisioning": (self.requested, prov_end),
            "ready": (np.where(ok, ready, inf), np.where(ok, drain, inf)),
            "draining": (np.where(ok, drain, inf), np.where(ok, rel, inf)),
        }


# --------------------------------------------------------------------------- the autoscaler
class Lifecycle(SpotMixin):
    """The autoscaler process and the replicas it manages (one run)."""

    def __init__(
        self,
        env: simpy.Environment,
        fleet: ScalableFleet,
        policy: Policy,
        cold_start: Callable[[], float],
        *,
        horizon: float,
        initial: int,
        max_wait_s: float = math.inf,
        abort_on_unstable: bool = False,
        tail_s: float = 3600.0,
        capacity: CapacityPlan | None = None,
    ):
        self.env, self.fleet, self.policy = env, fleet, policy
        self.cold_start = cold_start
        self.horizon, self.max_wait_s = horizon, max_wait_s
        self.abort_on_unstable, self.tail_s = abort_on_unstable, tail_s
        self.records: list[ReplicaRecord] = []
        self.rec_of: dict[int, ReplicaRecord] = {}  # fleet replica id -> record
        self.provisioning: list[ReplicaRecord] = []
        self.ready_count = 0
        self.draining: list[ReplicaRecord] = []
        self._ready_int = 0.0  # ∫ ready replicas dt
        self._ready_t = 0.0
        self.unstable_reason = ""
        self.cap = capacity if capacity is not None else CapacityPlan()
        self.finished = False
        self.end_t = 0.0
        self.missed = 0
        self.ticks: dict[str, list[float]] = {
            k: []
            for k in (
                "t",
                "desired",
                "ready",
                "provisioning",
                "draining",
                "rps",
                "inflight",
                "queue",
                "utilization",
            )
        }
        for k in range(max(initial, self.cap.base)):
            rec = ReplicaRecord(requested=0.0, ready=0.0, base=k < self.cap.base)
            self.records.append(rec)
            self._join(rec, 0.0)
        env.process(self._run())
        if self.cap.spot and self.cap.trace:
            env.process(self._trace())

    # -- replica transitions ----------------------------------------------------------------
    def _ready_change(self, t: float, delta: int) -> None:
        self._ready_int += self.ready_count * (t - self._ready_t)
        self._ready_t = t
        self.ready_count += delta

    def _join(self, rec: ReplicaRecord, t: float) -> None:
        self.fleet.sync(t)
        self._ready_change(t, +1)
        rec.ready = t
        self.rec_of[self.fleet.add_replica(t)] = rec
        if self.cap.spot and not rec.base and self.cap.rate_per_s > 0:
            ev = self.env.timeout(self.cap.time_to_notice())
            ev.callbacks.append(lambda _e: self._notice(rec))

    def _request(self, t: float) -> None:
        rec = ReplicaRecord(requested=t)
        self.records.append(rec)
        self.provisioning.append(rec)
        ev = self.env.timeout(self.cold_start())
        ev.callbacks.append(lambda _e: self._on_ready(rec))

    def _on_ready(self, rec: ReplicaRecord) -> None:
        if rec.cancelled:
            return
        self.provisioning = [r for r in self.provisioning if r is not rec]
        self._join(rec, self.env.now)

    def _on_released(self, fid: int, when: float) -> None:
        """The engine says when replica ``fid`` is free: now or later (a known batch end), or
        — called later, from a ``sync`` — when its last request finished."""
        rec = self.rec_of.pop(fid)
        if math.isnan(rec.drain):  # called from retire_replica: the drain starts now
            rec.drain = self.env.now
            if when > self.env.now:
                self.draining.append(rec)
        rec.released = when

    def _retire(self, t: float) -> None:
        fid = self.fleet.retire_replica(t, self._keep_base(self._on_released))
        rec = self.rec_of.get(fid) if fid is not None else None
        if rec is not None:  # the release time is not known yet: draining until the engine says
            self._pass_base(rec)
            rec.drain = t
            self.draining.append(rec)

    def reconcile(self, desired: int, t: float) -> None:
        desired = max(desired, self.cap.base)
        current = self.ready_count + len(self.provisioning)
        for _ in range(desired - current):
            self._request(t)
        excess = current - desired
        while excess > 0 and self.provisioning:
            rec = self.provisioning.pop()  # newest first: it has the longest left to wait
            rec.cancelled = True
            rec.released = t
            excess -= 1
        while excess > 0 and self.ready_count > 0:
            self._ready_change(t, -1)
            self._retire(t)
            excess -= 1

    # -- the process ----------------------------------------------------------------------
    def _observe(self, smp: FleetSample, prev: FleetSample, ready_s: float) -> Observation:
        dt = smp.t - prev.t
        busy_s = smp.busy_seconds - prev.busy_seconds
        self.draining = [r for r in self.draining if not r.released <= smp.t]  # NaN: draining
        return Observation(
            t=smp.t,
            period_s=dt,
            ready=self.ready_count,
            provisioning=len(self.provisioning),
            draining=len(self.draining),
            arrivals=float(smp.arrived - prev.arrived),
            busy_s=busy_s,
            inflight=(smp.request_seconds - prev.request_seconds) / dt,
            queue=(smp.queue_seconds - prev.queue_seconds) / dt,
            utilization=min(1.0, busy_s / ready_s) if ready_s > 0 else 0.0,
            serving=ready_s / dt,
        )

    def _run(self):
        env, fleet, period = self.env, self.fleet, self.policy.period_s
        prev = fleet.sample(0.0)
        prev_ready_int = 0.0
        while True:
            yield env.timeout(period)
            t = env.now
            fleet.sync(t)
            smp = fleet.sample(t)
            self._ready_change(t, 0)
            obs = self._observe(smp, prev, self._ready_int - prev_ready_int)
            prev, prev_ready_int = smp, self._ready_int
            desired = self.policy.desired(obs)
            self.reconcile(desired, t)
            tk = self.ticks
            for k, v in (
                ("t", t),
                ("desired", desired),
                ("ready", self.ready_count),
                ("provisioning", len(self.provisioning)),
                ("draining", obs.draining),
                ("rps", obs.rps),
                ("inflight", obs.inflight),
                ("queue", obs.queue),
                ("utilization", obs.utilization),
            ):
                tk[k].append(v)
            if smp.oldest_wait > self.max_wait_s and not self.provisioning:
                if not self.unstable_reason:
                    self.unstable_reason = (
                        f"overloaded: at t={t:.0f}s a request had waited {smp.oldest_wait:.1f}s "
                        f"(> max_wait_s {self.max_wait_s:g}) with {self.ready_count} replicas "
                        "ready and none starting"
                    )
                if self.abort_on_unstable:
                    fleet.stop()
                    self._finish(t)
                    return
            if t >= self.horizon:
                if smp.queue == 0 and smp.in_service == 0:
                    self._finish(t)
                    return
                if t >= self.horizon + self.tail_s:
                    if not self.unstable_reason:
                        self.unstable_reason = (
                            f"{smp.queue} requests still queued {self.tail_s:g}s after the end"
                        )
                    self._finish(t)
                    return

    def _finish(self, t: float) -> None:
        self.finished, self.end_t = True, t

    def result(self) -> LifecycleResult:
        recs = self.records

        def col(name: str) -> np.ndarray:
            return np.array([getattr(r, name) for r in recs], dtype=float)

        return LifecycleResult(
            requested=col("requested"),
            ready=col("ready"),
            drain=col("drain"),
            released=col("released"),
            ticks={k: np.asarray(v, dtype=float) for k, v in self.ticks.items()},
            horizon=self.horizon,
            # pending spot notices may tick on after the run: its end is when the autoscaler stopped
            end_time=self.end_t if self.cap.interrupts else self.env.now,
            unstable=bool(self.unstable_reason),
            unstable_reason=self.unstable_reason,
            notice=col("notice"),
            base=self.cap.base,
            missed_notices=self.missed,
        )


def run_lifecycle(
    fleet: ScalableFleet,
    policy: Policy,
    cold_start: Callable[[], float],
    *,
    horizon: float,
    initial: int,
    max_wait_s: float = math.inf,
    abort_on_unstable: bool = False,
    capacity: CapacityPlan | None = None,
) -> LifecycleResult:
    """Run ``fleet`` under ``policy`` over ``[0, horizon]`` (then until the queue is empty)."""
    env = simpy.Environment()
    lc = Lifecycle(
        env,
        fleet,
        policy,
        cold_start,
        horizon=horizon,
        initial=initial,
        max_wait_s=max_wait_s,
        abort_on_unstable=abort_on_unstable,
        capacity=capacity,
    )
    env.run()
    fleet.sync(math.inf)
    return lc.result()
