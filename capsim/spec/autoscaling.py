"""Autoscaling specs: the scenario schema of ``autoscaling:`` and ``whatif:`` (the controllers are
in :mod:`capsim.sim.policies`).

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

"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from capsim.strict import Strict


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

    Defaults from measured reports (docs/reference/autoscaling.md): GPU node provisioning
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


class SplitSpec(Strict):
    """A what-if policy for a disaggregated fleet: one policy per pool.

    A prefill replica holds a request for its prefill only (a fraction of a second) and a decode
    replica for its whole output, so one signal and target rarely suits both pools (llm-d and
    NVIDIA Dynamo scale the two pools on separate signals). A policy that is not ``split``
    applies the same spec to each pool. A co-located fleet skips a ``split`` policy.

    >>> p = SplitSpec(kind="split", name="per-pool",
    ...     prefill={"kind": "hpa", "metric": "inflight", "target": 4},
    ...     decode={"kind": "hpa", "metric": "inflight", "target": 60})
    >>> p.label, p.prefill.target, p.decode.target
    ('per-pool', 4.0, 60.0)
    """

    kind: Literal["split"]
    name: str | None = Field(None, description="label in what-if output (default: the kind)")
    prefill: PolicySpec
    decode: PolicySpec

    @property
    def label(self) -> str:
        return self.name or self.kind

    @property
    def cold_start(self) -> ColdStart | None:
        return None


#: a what-if policy: any autoscaling policy, or one per pool of a disaggregated fleet
WhatIfPolicy = Annotated[
    FixedSpec | HPASpec | KPASpec | ScheduledSpec | PredictiveSpec | SplitSpec,
    Field(discriminator="kind"),
]


class WhatIf(Strict):
    """``whatif:`` — the configuration and the policy variants that ``capsim whatif`` compares."""

    gpu: str | None = Field(None, description="default: the only GPU in candidates.gpus")
    precision: str | None = Field(None, description="default: the only candidate precision")
    tp: int = Field(1, ge=1)
    ep: int = Field(1, ge=1, description="expert parallelism inside the tp GPUs (MoE models)")
    policies: list[WhatIfPolicy] = Field(default_factory=list)
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


def _scaled(v: Any, factor: float) -> Any:
    if isinstance(v, dict):
        out = {}
        for k, x in v.items():
            num = isinstance(x, int | float) and not isinstance(x, bool)
            times = k.endswith("_s") or k == "seconds"
            if num and (k == "gb_per_s" or k.endswith("_per_hour")):  # bandwidth, event rate
                out[k] = x * factor
            elif num and times:
                out[k] = x / factor
            elif (
                times and isinstance(x, list | tuple) and all(isinstance(v, int | float) for v in x)
            ):
                out[k] = [v / factor for v in x]
            else:
                out[k] = _scaled(x, factor)
        return out
    if isinstance(v, list):
        return [_scaled(x, factor) for x in v]
    return v


def scale_times(model: Any, factor: float) -> Any:
    """``model`` (a policy, cold-start or capacity spec) on a clock ``factor`` times faster: every
    duration and time (fields ``*_s`` and ``seconds``) divided by ``factor``, the weight-load
    bandwidth and event rates (``*_per_hour``) multiplied. Request rates and counts stay. Raises ``ValueError`` where a scaled value leaves the
    field's range (e.g. a KPA stable window under 6 s).

    >>> h = HPASpec(kind="hpa", target=60, cold_start={"warmup": 40})
    >>> c = scale_times(h, 8)
    >>> c.sync_period_s, c.cold_start.warmup.seconds, c.target
    (1.875, 5.0, 60.0)
    """
    data = _scaled(model.model_dump(exclude_none=True), factor)
    return type(model).model_validate(data)
