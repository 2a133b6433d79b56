"""Autoscaling policies: the scenario schema (``autoscaling:``, ``whatif:``) and pure controllers.

A policy is a plain object. Every ``period_s`` seconds it is given an :class:`Observation` of the
fleet (replica counts by state and the metrics averaged over the last period) and returns the
desired replica count (ready + provisioning; draining replicas are not counted). It keeps its own
history (stabilization windows, panic mode, last period's load) and knows nothing of SimPy, so it
is tested with hand-worked numbers. :mod:`capsim.sim.lifecycle` turns the desired count into
replicas that are requested, provision (cold start), serve, drain and are released.

The controllers follow the systems users run, with their parameter names (snake_case) and
defaults (see ``shared/reference/autoscaling.md``):

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
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from capsim.catalog import Strict

# =========================================================================== cold start schema


class Constant(Strict):
    """A fixed duration."""

    kind: Literal["constant"]
    seconds: float = Field(ge=0)

    @property
    def mean_s(self) -> float:
        return self.seconds

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.seconds)


class LogNormal(Strict):
    """Lognormal duration given by its median and the sigma of its logarithm."""

    kind: Literal["lognormal"]
    median_s: float = Field(gt=0)
    sigma: float = Field(0.5, ge=0, le=3)

    @property
    def mean_s(self) -> float:
        return self.median_s * math.exp(self.sigma**2 / 2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.lognormal(math.log(self.median_s), self.sigma, size=n)


class Uniform(Strict):
    """Uniform duration between ``low_s`` and ``high_s``."""

    kind: Literal["uniform"]
    low_s: float = Field(ge=0)
    high_s: float = Field(ge=0)

    @model_validator(mode="after")
    def _order(self) -> Uniform:
        if self.high_s < self.low_s:
            raise ValueError("high_s must be >= low_s")
        return self

    @property
    def mean_s(self) -> float:
        return (self.low_s + self.high_s) / 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low_s, self.high_s, size=n)


class FromWeights(Strict):
    """Weight loading at a given bandwidth: model weight bytes (per GPU) / ``gb_per_s``.

    0.8 GB/s reproduces the reported ~20 s for 16 GB and 62 s for 52 GiB.
    """

    kind: Literal["auto"]
    gb_per_s: float = Field(0.8, gt=0)


Phase = Annotated[Constant | LogNormal | Uniform, Field(discriminator="kind")]
WeightPhase = Annotated[Constant | LogNormal | Uniform | FromWeights, Field(discriminator="kind")]


def _phase(v: Any) -> Any:
    """A bare number is a constant number of seconds; ``auto`` is weight loading at 0.8 GB/s."""
    if isinstance(v, bool):
        return v
    if isinstance(v, int | float):
        return {"kind": "constant", "seconds": v}
    if v == "auto":
        return {"kind": "auto"}
    return v


class ColdStart(Strict):
    """Time from requesting a replica to it serving: the sum of four phases (seconds).

    Defaults from measured reports (shared/reference/autoscaling.md): GPU node provisioning
    ~45 s to 5 min (lognormal, median 100 s: 5-95% range 44-228 s); image pull 101 s for 5.6 GB,
    < 30 s lazily loaded (median 60 s); weights at 0.8 GB/s (~20 s for 16 GB); engine start and
    warm-up (median 30 s). Each phase is a number of seconds or a distribution
    (``constant``, ``lognormal``, ``uniform``), sampled from its own random stream.
    """

    node: Phase = LogNormal(kind="lognormal", median_s=100.0, sigma=0.5)
    image_pull: Phase = LogNormal(kind="lognormal", median_s=60.0, sigma=0.6)
    weight_load: WeightPhase = FromWeights(kind="auto")
    warmup: Phase = LogNormal(kind="lognormal", median_s=30.0, sigma=0.5)

    @field_validator("node", "image_pull", "weight_load", "warmup", mode="before")
    @classmethod
    def _numbers(cls, v: Any) -> Any:
        return _phase(v)

    def mean_s(self, weight_bytes: float = 0.0) -> float:
        return sum(self._durations_mean(weight_bytes))

    def _durations_mean(self, weight_bytes: float) -> list[float]:
        out = []
        for ph in (self.node, self.image_pull, self.weight_load, self.warmup):
            if isinstance(ph, FromWeights):
                out.append(weight_bytes / (ph.gb_per_s * 1e9))
            else:
                out.append(ph.mean_s)
        return out

    def sample(self, rng: np.random.Generator, n: int, weight_bytes: float = 0.0) -> np.ndarray:
        """``n`` cold-start durations (s): the phases are drawn in a fixed order, ``n`` each."""
        total = np.zeros(n)
        for ph in (self.node, self.image_pull, self.weight_load, self.warmup):
            if isinstance(ph, FromWeights):
                total += weight_bytes / (ph.gb_per_s * 1e9)
            else:
                total += ph.sample(rng, n)
        return total


# =========================================================================== policy schemas


class _PolicyBase(Strict):
    name: str | None = Field(None, description="label in what-if output (default: the kind)")
    min_replicas: int = Field(1, ge=0)
    max_replicas: int | None = Field(None, ge=1, description="default: candidates.max_replicas")
    initial_replicas: int | None = Field(
        None,
        ge=0,
        description="ready at t = 0 (default: enough for the load at t = 0 at 70% utilisation)",
    )
    cold_start: ColdStart | None = Field(
        None, description="default: autoscaling.cold_start, else the documented defaults"
    )

    @model_validator(mode="after")
    def _bounds(self) -> _PolicyBase:
        if self.max_replicas is not None and self.max_replicas < self.min_replicas:
            raise ValueError("max_replicas must be >= min_replicas")
        return self

    @property
    def label(self) -> str:
        return self.name or self.kind  # type: ignore[attr-defined]

    @property
    def period_s(self) -> float:
        return 60.0


class FixedSpec(_PolicyBase):
    """A constant fleet: ``replicas`` (a number, or ``peak`` = the planner's count for the peak)."""

    kind: Literal["fixed"]
    replicas: Annotated[int, Field(ge=1)] | Literal["peak"] = "peak"


class ScalingPolicyRule(Strict):
    """One HPA rate rule: change by ``value`` pods or percent per ``period_s``."""

    type: Literal["pods", "percent"]
    value: int = Field(ge=0)
    period_s: float = Field(15.0, gt=0, le=1800)


class ScalingRules(Strict):
    """HPA ``behavior.scaleUp`` / ``behavior.scaleDown``."""

    stabilization_window_s: float = Field(ge=0, le=3600)
    policies: list[ScalingPolicyRule]
    select_policy: Literal["max", "min", "disabled"] = "max"


def _default_up() -> ScalingRules:
    return ScalingRules(
        stabilization_window_s=0.0,
        policies=[
            ScalingPolicyRule(type="percent", value=100, period_s=15),
            ScalingPolicyRule(type="pods", value=4, period_s=15),
        ],
    )


def _default_down() -> ScalingRules:
    return ScalingRules(
        stabilization_window_s=300.0,
        policies=[ScalingPolicyRule(type="percent", value=100, period_s=15)],
    )


HPAMetric = Literal["utilization", "inflight", "queue_length", "rps"]


class HPASpec(_PolicyBase):
    """Kubernetes HPA target tracking on one per-replica metric.

    ``target`` is in the metric's unit: ``utilization`` in percent of time busy (like
    ``averageUtilization``), ``inflight`` and ``queue_length`` in requests per replica,
    ``rps`` in requests per second per replica (``averageValue``).
    """

    kind: Literal["hpa"]
    metric: HPAMetric = "utilization"
    target: float = Field(gt=0)
    tolerance: float = Field(0.1, ge=0, lt=1)
    sync_period_s: float = Field(15.0, gt=0, le=600)
    scale_up: ScalingRules = Field(default_factory=_default_up)
    scale_down: ScalingRules = Field(default_factory=_default_down)

    @property
    def period_s(self) -> float:
        return self.sync_period_s


class KPASpec(_PolicyBase):
    """Knative Pod Autoscaler (concurrency or requests per second per replica)."""

    kind: Literal["kpa"]
    metric: Literal["concurrency", "rps"] = "concurrency"
    target: float = Field(100.0, gt=0, description="per replica (Knative default 100)")
    target_utilization_percentage: float = Field(70.0, gt=0, le=100)
    container_concurrency: int = Field(0, ge=0, description="hard limit; 0 = unlimited")
    stable_window_s: float = Field(60.0, ge=6, le=3600)
    panic_window_percentage: float = Field(10.0, ge=1, le=100)
    panic_threshold_percentage: float = Field(200.0, ge=110, le=1000)
    max_scale_up_rate: float = Field(1000.0, gt=1)
    max_scale_down_rate: float = Field(2.0, gt=1)
    scale_to_zero_grace_period_s: float = Field(30.0, ge=0)
    scale_down_delay_s: float = Field(0.0, ge=0, le=3600)
    tick_s: float = Field(2.0, gt=0, le=60)
    min_replicas: int = Field(0, ge=0, description="Knative min-scale (0 allows scale to zero)")

    @property
    def period_s(self) -> float:
        return self.tick_s

    @property
    def effective_target(self) -> float:
        t = self.target
        if self.container_concurrency > 0:
            t = min(t, float(self.container_concurrency))
        return t * self.target_utilization_percentage / 100


class ScheduleEntry(Strict):
    hour: float = Field(ge=0, lt=24, description="hour of day (t = 0 is midnight)")
    replicas: int = Field(ge=0)


class ScheduledSpec(_PolicyBase):
    """Replica counts by time of day; each entry holds until the next (wrapping at midnight)."""

    kind: Literal["scheduled"]
    schedule: list[ScheduleEntry] = Field(min_length=1)
    day_s: float = Field(86400.0, gt=0, description="length of the day the hours divide")
    tick_s: float = Field(60.0, gt=0, le=3600)

    @field_validator("schedule")
    @classmethod
    def _sorted(cls, v: list[ScheduleEntry]) -> list[ScheduleEntry]:
        hours = [e.hour for e in v]
        if hours != sorted(hours) or len(set(hours)) != len(hours):
            raise ValueError("schedule hours must be strictly increasing")
        return v

    @property
    def period_s(self) -> float:
        return self.tick_s


class PredictiveSpec(_PolicyBase):
    """Last period's arrivals, read ``lead_s`` ahead (default: the mean cold start + one tick)."""

    kind: Literal["predictive"]
    target_rps_per_replica: float = Field(gt=0)
    season_s: float = Field(86400.0, gt=0, description="the period that repeats (a day)")
    lead_s: float | None = Field(None, ge=0, description="default: mean cold start + tick_s")
    reactive: bool = Field(
        True, description="never below what the current rate needs (as AWS pairs it)"
    )
    tick_s: float = Field(60.0, gt=0, le=3600)

    @property
    def period_s(self) -> float:
        return self.tick_s


PolicySpec = Annotated[
    FixedSpec | HPASpec | KPASpec | ScheduledSpec | PredictiveSpec, Field(discriminator="kind")
]


class WhatIf(Strict):
    """``whatif:`` — the configuration and the policy variants that ``capsim whatif`` compares."""

    gpu: str | None = Field(None, description="default: the only GPU in candidates.gpus")
    precision: str | None = Field(None, description="default: the only candidate precision")
    tp: int = Field(1, ge=1)
    policies: list[PolicySpec] = Field(default_factory=list)
    baseline: str | None = Field(None, description="policy name savings are measured against")
    window_s: float = Field(300.0, gt=0, description="windows for p99 over time")
    replications: int | None = Field(None, ge=2, description="default: simulation.replications")

    @model_validator(mode="after")
    def _names(self) -> WhatIf:
        names = [p.label for p in self.policies]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ValueError(f"policy names must be unique (give them 'name:'): {sorted(dup)}")
        if self.baseline is not None and self.baseline not in names:
            raise ValueError(f"baseline '{self.baseline}' is not one of {names}")
        return self


# =========================================================================== observations


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


# =========================================================================== controllers


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


# =========================================================================== factory


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
