"""Autoscaling controllers: pure policy objects built from the specs in :mod:`capsim.spec.autoscaling`.

A policy is a plain object. Every ``period_s`` seconds it is given an :class:`Observation` of the
fleet (replica counts by state and the metrics averaged over the last period) and returns the
desired replica count (ready + provisioning; draining replicas are not counted). It keeps its own
history (stabilization windows, panic mode, last period's load) and knows nothing of SimPy, so it
is tested with hand-worked numbers. :mod:`capsim.sim.lifecycle` turns the desired count into
replicas that are requested, provision (cold start), serve, drain and are released.

The controllers follow the systems users run, with their parameter names (snake_case) and
defaults (see ``docs/reference/autoscaling.md``):

* ``fixed`` — a constant count (``replicas: peak`` = the static planner's count for the peak).
* ``hpa`` — Kubernetes HorizontalPodAutoscaler (pkg/controller/podautoscaler): per-replica
  metric ratio with tolerance 0.1, not-ready replicas counted at 0 when scaling up, scale-up /
  scale-down stabilization windows (0 s / 300 s), rate policies (up: max(+4, +100%) per 15 s;
  down: -100% per 15 s; ``select_policy`` max | min | disabled), clamp to [min, max]; every 15 s.
* ``kpa`` — Knative Pod Autoscaler (knative/serving pkg/autoscaler/scaling): target concurrency
  per replica = ``target`` x ``target_utilization_percentage`` (100 x 70%), stable window 60 s,
  panic window 10% of it, panic threshold 200%, max scale-up rate 1000, max scale-down rate 2,
  scale to zero after the stable window plus a 30 s grace period; every 2 s.
* ``scheduled`` — a time-of-day table (t = 0 is midnight).
* ``predictive`` — last period's load, read one cold start ahead: desired =
  ceil(max(forecast, current) / target_rps_per_replica).

>>> p = HPA(HPASpec(kind="hpa", metric="inflight", target=8, max_replicas=20))
>>> p.desired(Observation(t=15, period_s=15, ready=4, inflight=14 * 4))   # 14/8 = 1.75 -> 7
7
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from capsim.spec.autoscaling import (
    FixedSpec,
    HPASpec,
    KPASpec,
    PredictiveSpec,
    ScalingRules,
    ScheduledSpec,
)


@dataclass(frozen=True)
class Observation:
    """The fleet as a policy sees it at time ``t``: counts now, totals over the last period.

    ``busy_s``, ``inflight_s`` (request-seconds in the system), ``queue_s`` and ``serving_s``
    (replica-seconds of ready + draining replicas) are integrals over ``(t - period_s, t]``;
    ``arrivals`` the requests that arrived in it. Constructing one by hand: give ``inflight``
    as the average number in flight and it is converted.
    """

    t: float
    period_s: float
    ready: int
    provisioning: int = 0
    draining: int = 0
    arrivals: float = 0.0
    busy_s: float | None = None
    inflight: float | None = None  # average requests in the system over the period (fleet)
    queue: float | None = None  # average queue length over the period (fleet)
    utilization: float | None = None  # busy fraction of serving replicas, 0..1
    serving: float | None = None  # average serving replicas over the period

    @property
    def rps(self) -> float:
        return self.arrivals / self.period_s if self.period_s > 0 else 0.0

    @property
    def avg_serving(self) -> float:
        return self.serving if self.serving is not None else float(self.ready)

    def total(self, metric: str) -> float:
        """The fleet total of a metric (what HPA divides by the ready count)."""
        if metric == "utilization":
            u = self.utilization if self.utilization is not None else 0.0
            return 100.0 * u * self.avg_serving
        if metric in ("inflight", "concurrency"):
            return self.inflight or 0.0
        if metric == "queue_length":
            return self.queue or 0.0
        if metric == "rps":
            return self.rps
        raise ValueError(f"unknown metric {metric!r}")


class Policy:
    """Base controller: ``desired(obs)`` every ``period_s`` seconds."""

    period_s: float = 60.0
    min_replicas: int = 0
    max_replicas: int = 1 << 30

    def desired(self, obs: Observation) -> int:  # pragma: no cover - abstract
        raise NotImplementedError

    def clamp(self, n: int) -> int:
        return max(self.min_replicas, min(self.max_replicas, n))


class Fixed(Policy):
    def __init__(self, replicas: int, period_s: float = 60.0):
        self.replicas = replicas
        self.period_s = period_s
        self.min_replicas = self.max_replicas = replicas

    def desired(self, obs: Observation) -> int:
        return self.replicas


class HPA(Policy):
    """The HPA's replica calculator, stabilization and rate limits (kubernetes v1.30 logic)."""

    def __init__(self, spec: HPASpec, max_replicas: int | None = None):
        self.spec = spec
        self.period_s = spec.sync_period_s
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas or max_replicas or 1 << 30
        self.recommendations: deque[tuple[float, int]] = deque()
        self.up_events: deque[tuple[float, int]] = deque()
        self.down_events: deque[tuple[float, int]] = deque()
        self.last: dict[str, Any] = {}
        self.started = False

    # -- replica calculator (replica_calculator.go) -----------------------------------------
    def proposal(self, obs: Observation) -> int:
        """Metric proposal before stabilization: ceil(ratio x ready), with the HPA's rules."""
        s = self.spec
        current = obs.ready + obs.provisioning
        if obs.ready == 0:
            return current  # no metrics from ready pods: no change
        total = obs.total(s.metric)
        # per-replica average over the replicas ready now (one that just became ready brings
        # its own, near-zero, average: it dilutes rather than inflates)
        usage = total / obs.ready
        ratio = usage / s.target
        self.last = {"metric": usage, "ratio": ratio}
        if obs.provisioning > 0 and ratio > 1.0:
            # not-yet-ready replicas count as 0 when scaling up
            new_ratio = total / (obs.ready + obs.provisioning) / s.target
            if abs(1.0 - new_ratio) <= s.tolerance or new_ratio < 1.0:
                return current
            proposal = math.ceil(new_ratio * current - 1e-9)
            return max(proposal, current)
        if abs(1.0 - ratio) <= s.tolerance:
            return current
        return math.ceil(ratio * obs.ready - 1e-9)

    # -- horizontal.go: stabilization then rate limits ------------------------------------
    def _stabilize(self, t: float, current: int, desired: int) -> int:
        s = self.spec
        up_cut = t - s.scale_up.stabilization_window_s
        down_cut = t - s.scale_down.stabilization_window_s
        up_rec, down_rec = desired, desired
        for ts, rec in self.recommendations:
            if ts > up_cut:
                up_rec = min(up_rec, rec)
            if ts > down_cut:
                down_rec = max(down_rec, rec)
        keep = max(s.scale_up.stabilization_window_s, s.scale_down.stabilization_window_s)
        while self.recommendations and self.recommendations[0][0] <= t - keep:
            self.recommendations.popleft()
        self.recommendations.append((t, desired))
        rec = current
        if rec < up_rec:
            rec = up_rec
        if rec > down_rec:
            rec = down_rec
        return rec

    @staticmethod
    def _changed(events: deque[tuple[float, int]], t: float, period: float) -> int:
        return sum(n for ts, n in events if ts > t - period)

    def _limit(self, rules: ScalingRules, t: float, current: int, up: bool) -> int:
        if rules.select_policy == "disabled":
            return current
        pick = max if (rules.select_policy == "max") == up else min
        result: int | None = None
        for p in rules.policies:
            start = (
                current
                - self._changed(self.up_events, t, p.period_s)
                + self._changed(self.down_events, t, p.period_s)
            )
            if up:
                prop = (
                    start + p.value
                    if p.type == "pods"
                    else math.ceil(start * (1 + p.value / 100) - 1e-9)
                )
            else:
                prop = start - p.value if p.type == "pods" else int(start * (1 - p.value / 100))
            result = prop if result is None else pick(result, prop)
        return current if result is None else result

    def desired(self, obs: Observation) -> int:
        t = obs.t
        current = obs.ready + obs.provisioning
        if current == 0 and self.min_replicas > 0:
            out = self.min_replicas  # the HPA does not act at zero; the floor applies
        elif current > self.max_replicas:
            out = self.max_replicas
        elif current < self.min_replicas:
            out = self.min_replicas
        else:
            if not self.started:
                # the controller starts with the current count in its scale-down window
                # (horizontal.go maybeInitScaleDownStabilizationWindow)
                self.recommendations.append((t - obs.period_s, current))
            raw = self.proposal(obs)
            stab = self._stabilize(t, current, raw)
            out = stab
            if stab > current:
                lim = max(self._limit(self.spec.scale_up, t, current, True), current)
                out = min(stab, min(self.max_replicas, lim))
            elif stab < current:
                lim = min(self._limit(self.spec.scale_down, t, current, False), current)
                out = max(stab, max(self.min_replicas, lim))
        self.started = True
        if out > current:
            self.up_events.append((t, out - current))
        elif out < current:
            self.down_events.append((t, current - out))
        horizon = max(
            [p.period_s for p in self.spec.scale_up.policies + self.spec.scale_down.policies]
            or [0.0]
        )
        for ev in (self.up_events, self.down_events):
            while ev and ev[0][0] <= t - horizon:
                ev.popleft()
        return out


class KPA(Policy):
    """Knative's autoscaler.Scale() plus the KPA reconciler's bounds and scale-to-zero grace."""

    def __init__(self, spec: KPASpec, max_replicas: int | None = None):
        self.spec = spec
        self.period_s = spec.tick_s
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas or max_replicas or 1 << 30
        self.history: deque[tuple[float, float, float]] = deque()  # (t, dt, value x dt)
        self.panic_time: float | None = None
        self.max_panic_pods = 0
        self.zero_since: float | None = None
        self.delay: deque[tuple[float, int]] = deque()
        self.last: dict[str, Any] = {}

    def _window_avg(self, t: float, window: float) -> float:
        num = den = 0.0
        for ts, dt, v in reversed(self.history):
            if ts <= t - window + 1e-9:
                break
            num += v
            den += dt
        return num / den if den > 0 else 0.0

    def record(self, obs: Observation) -> None:
        s = self.spec
        value = obs.inflight if s.metric == "concurrency" else obs.rps
        self.history.append((obs.t, obs.period_s, (value or 0.0) * obs.period_s))
        while self.history and self.history[0][0] <= obs.t - s.stable_window_s:
            self.history.popleft()

    def scale(self, obs: Observation) -> int:
        """autoscaler.Scale(): the desired pod count before the reconciler's bounds."""
        s = self.spec
        t = obs.t
        self.record(obs)
        stable = self._window_avg(t, s.stable_window_s)
        panic = self._window_avg(t, s.stable_window_s * s.panic_window_percentage / 100)
        return self.scale_from(t, obs.ready, stable, panic)

    def scale_from(self, t: float, ready: int, stable: float, panic: float) -> int:
        s = self.spec
        ready_count = max(1.0, float(ready))
        max_up = math.ceil(s.max_scale_up_rate * ready_count)
        max_down = math.floor(ready_count / s.max_scale_down_rate) if ready > 0 else 0
        target = s.effective_target
        dspc = math.ceil(stable / target - 1e-9)
        dppc = math.ceil(panic / target - 1e-9)
        desired_stable = int(min(max(dspc, max_down), max_up))
        desired_panic = int(min(max(dppc, max_down), max_up))
        over = dppc / ready_count >= s.panic_threshold_percentage / 100
        if over:
            self.panic_time = t
        elif self.panic_time is not None and self.panic_time + s.stable_window_s < t:
            self.panic_time = None
            self.max_panic_pods = 0
        desired = desired_stable
        if self.panic_time is not None:
            desired = max(desired, desired_panic)
            if desired > self.max_panic_pods:
                self.max_panic_pods = desired
            desired = self.max_panic_pods
        if s.scale_down_delay_s > 0:
            self.delay.append((t, desired))
            while self.delay and self.delay[0][0] <= t - s.scale_down_delay_s:
                self.delay.popleft()
            desired = max(n for _, n in self.delay)
        self.last = {
            "stable": stable,
            "panic": panic,
            "panicking": self.panic_time is not None,
            "desired_stable": desired_stable,
            "desired_panic": desired_panic,
        }
        return desired

    def desired(self, obs: Observation) -> int:
        d = self.scale(obs)
        current = obs.ready + obs.provisioning
        # reconciler: bounds, then scale to zero only after the grace period
        d = min(d, self.max_replicas)
        if d == 0 and self.min_replicas == 0 and current > 0:
            if self.zero_since is None:
                self.zero_since = obs.t
            if obs.t - self.zero_since < self.spec.scale_to_zero_grace_period_s:
                return max(1, min(current, self.max_replicas))
        elif d > 0:
            self.zero_since = None
        return max(d, self.min_replicas)


def _hour_of(t: float, day_s: float) -> float:
    return (t % day_s) / day_s * 24.0


class Scheduled(Policy):
    def __init__(self, spec: ScheduledSpec, max_replicas: int | None = None):
        self.spec = spec
        self.period_s = spec.tick_s
        self.hours = [e.hour for e in spec.schedule]
        self.counts = [e.replicas for e in spec.schedule]
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas or max_replicas or 1 << 30

    def at(self, t: float) -> int:
        h = _hour_of(t, self.spec.day_s)
        i = int(np.searchsorted(self.hours, h + 1e-9, side="right")) - 1
        return self.counts[i]  # i = -1 wraps to the last entry (before the first hour)

    def desired(self, obs: Observation) -> int:
        return self.clamp(self.at(obs.t))


class Predictive(Policy):
    """ceil(max(forecast, now) / target): forecast = last period's rate ``lead_s`` ahead.

    ``prior(t)`` gives the rate for times before the run (the scenario's rate curve one period
    earlier); without it the first period is reactive only.
    """

    def __init__(
        self,
        spec: PredictiveSpec,
        *,
        lead_s: float,
        prior: Callable[[np.ndarray], np.ndarray] | None = None,
        max_replicas: int | None = None,
    ):
        self.spec = spec
        self.period_s = spec.tick_s
        self.lead_s = lead_s
        self.prior = prior
        self.min_replicas = spec.min_replicas
        self.max_replicas = spec.max_replicas or max_replicas or 1 << 30
        self.history: dict[int, float] = {}  # tick index -> observed rate
        self.last: dict[str, Any] = {}

    def _rate_at(self, t: float) -> float | None:
        """Observed (or prior) rate at time ``t`` (which lies in the past)."""
        k = math.floor(t / self.spec.tick_s)
        if k in self.history:
            return self.history[k]
        if t < 0 and self.prior is not None:
            return float(self.prior(np.array([t + self.spec.tick_s / 2]))[0])
        return None

    def forecast(self, t: float) -> float | None:
        """Highest rate last period over ``[t + lead, t + lead + tick]``."""
        s = self.spec
        lo = t + self.lead_s - s.season_s
        pts = [lo, lo + s.tick_s / 2, lo + s.tick_s]
        vals = [v for v in (self._rate_at(x) for x in pts) if v is not None]
        return max(vals) if vals else None

    def desired(self, obs: Observation) -> int:
        s = self.spec
        k = math.floor((obs.t - 1e-9) / s.tick_s)  # the tick interval just observed
        self.history[k] = obs.rps
        f = self.forecast(obs.t)
        need = [obs.rps] if (s.reactive or f is None) else []
        if f is not None:
            need.append(f)
        self.last = {"forecast": f, "rps": obs.rps}
        return self.clamp(math.ceil(max(need) / s.target_rps_per_replica - 1e-9))


def make_policy(
    spec: Any,
    *,
    max_replicas: int,
    fixed_replicas: int | None = None,
    lead_s: float = 0.0,
    prior: Callable[[np.ndarray], np.ndarray] | None = None,
) -> Policy:
    """A fresh controller for one run (controllers keep history)."""
    if isinstance(spec, FixedSpec):
        n = spec.replicas if isinstance(spec.replicas, int) else fixed_replicas
        if n is None:
            raise ValueError("fixed policy with replicas: peak needs the planner's count")
        return Fixed(n)
    if isinstance(spec, HPASpec):
        return HPA(spec, max_replicas)
    if isinstance(spec, KPASpec):
        return KPA(spec, max_replicas)
    if isinstance(spec, ScheduledSpec):
        return Scheduled(spec, max_replicas)
    if isinstance(spec, PredictiveSpec):
        lead = spec.lead_s if spec.lead_s is not None else lead_s + spec.tick_s
        return Predictive(spec, lead_s=lead, prior=prior, max_replicas=max_replicas)
    raise TypeError(f"not a policy spec: {spec!r}")
