"""One autoscaled run: a policy, its cold starts and a scalable fleet simulated over the real horizon."""

from __future__ import annotations

import math
import threading
from collections.abc import Callable

import numpy as np

from capsim.analysis.whatif_metrics import AutoscaledRun, measure_batched, measure_llm
from capsim.evaluate import memory_fit, replica_capacity_rps, slo_targets, stream_for
from capsim.sim.batched_fleet import BatchedFleet, Jitter
from capsim.sim.interruptions import CapacityPlan
from capsim.sim.lifecycle import ColdStartSampler, cold_start_seed, run_lifecycle
from capsim.sim.llm_adapter import llm_tokens
from capsim.sim.llm_fleet import ScalableLLMFleet
from capsim.sim.overload import alarm_level
from capsim.sim.policies import make_policy
from capsim.spec.autoscaling import (
    ColdStart,
    FixedSpec,
    KPASpec,
    PredictiveSpec,
    ScheduledSpec,
    scale_times,
)
from capsim.spec.catalog import GPU
from capsim.spec.scenario import Poisson, Renewal, Scenario
from capsim.workload.arrivals import RequestStream, rate_multiplier
from capsim.workload.streams import compressed_day, jitter_rng, real_time

# =========================================================================== one run


def weight_bytes(s: Scenario, svc) -> float:
    """Bytes of weights one GPU loads at a cold start (the memory fit's, per GPU)."""
    return float(memory_fit(s, svc).weight_bytes)


def rate_at_start(s: Scenario, arrival: np.ndarray) -> float:
    """The offered rate at t = 0: the rate curve's value, or a replayed trace's first minute
    (as replayed: after ``start_s``, ``speedup`` and ``rate_scale``)."""
    a = s.traffic.arrivals
    if isinstance(a, Poisson | Renewal):
        return float(a.rate_rps * rate_multiplier(a, np.array([0.0]))[0])
    return float(np.searchsorted(arrival, 60.0) / 60.0)


def _prior(
    s: Scenario, season_s: float, compression: float = 1.0
) -> Callable[[np.ndarray], np.ndarray] | None:
    """Last period's rate before the run: the scenario's rate curve (rate-based traffic), on a
    clock ``compression`` times faster when the day is compressed."""
    a = s.traffic.arrivals
    if not isinstance(a, Poisson | Renewal):
        return None
    return lambda t: (
        a.rate_rps * rate_multiplier(a, (np.asarray(t, dtype=float) + season_s) * compression)
    )


def cold_start_of(s: Scenario, spec) -> ColdStart:
    if spec.cold_start is not None:
        return spec.cold_start
    if s.autoscaling is not None and s.autoscaling.cold_start is not None:
        return s.autoscaling.cold_start
    return ColdStart()


def initial_replicas(spec, policy, rate0: float, capacity: float) -> int:
    """Ready at t = 0: the spec's value, else enough for the load ``rate0`` at t = 0 at 70%
    utilisation of ``capacity`` per replica."""
    if spec.initial_replicas is not None:
        return policy.clamp(spec.initial_replicas)
    if isinstance(spec, FixedSpec):
        return policy.replicas
    if isinstance(spec, ScheduledSpec):
        return policy.clamp(policy.at(0.0))
    need = math.ceil(rate0 / (0.7 * capacity)) if capacity > 0 else 1
    floor = 1 if (rate0 > 0 or not isinstance(spec, KPASpec)) else 0
    return policy.clamp(max(need, floor))


def run_policy(
    s: Scenario,
    gpu: GPU,
    svc,
    spec,
    replication: int,
    *,
    tp: int = 1,
    fixed_replicas: int | None = None,
    window_s: float = 300.0,
    abort_on_unstable: bool = False,
    vectorise: bool = False,
    compression: float = 1.0,
) -> AutoscaledRun:
    """Simulate one policy over one replication in real time and measure it.

    The engine is the batched fleet for fixed-shape models and the continuous-batching LLM
    fleet for transformers; both implement :class:`capsim.sim.lifecycle.ScalableFleet`.
    ``vectorise`` turns on the batched fleet's uncongested fast path (see ``BatchedFleet``):
    it pays for its precomputation (~4 s per day at 500 req/s) only when replicas are idle most
    of the time (a generous fixed fleet); autoscaled fleets run busy, so it is off by default.

    ``compression`` > 1 screens on a compressed day (see :func:`screen_setup`): the load pattern,
    the controller's periods and windows and the cold starts all run that many times faster;
    service times do not. Costs and energy are scaled back to the real horizon.
    """
    sr, spec, cs = screen_setup(s, spec, compression)
    stream = stream_for(sr, replication)
    assert isinstance(stream, RequestStream), "closed-loop scenarios are refused at load"
    horizon = stream.horizon
    wb = weight_bytes(s, svc)
    window_s /= compression
    policy = make_policy(
        spec,
        max_replicas=s.candidates.max_replicas,
        fixed_replicas=fixed_replicas,
        lead_s=cs.mean_s(wb),
        prior=_prior(s, spec.season_s, compression) if isinstance(spec, PredictiveSpec) else None,
    )
    fleet = (
        _llm_fleet(s, svc, stream)
        if s.is_llm
        else _batched_fleet(sr, svc, stream, replication, vectorise)
    )
    sampler = ColdStartSampler(cs, cold_start_seed(s.simulation.seed, replication), wb)
    lc = run_lifecycle(
        fleet,
        policy,
        sampler,
        horizon=horizon,
        initial=initial_replicas(
            spec, policy, rate_at_start(s, stream.arrival), replica_capacity_rps(s, svc)
        ),
        max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
        abort_on_unstable=abort_on_unstable,
        capacity=CapacityPlan.of(s.capacity, s.simulation.seed, replication).compressed(
            compression
        ),
    )
    targets = dict(slo_targets(s))
    kw = {"label": spec.label, "replication": replication, "tp": tp, "window_s": window_s}
    if s.is_llm:
        run = measure_llm(s, gpu, fleet, lc, horizon, targets, **kw)
    else:
        run = measure_batched(s, gpu, svc, fleet, lc, stream.arrival, horizon, targets, **kw)
    return _to_real_horizon(run, compression)


#: scalars that add up over time: a compressed day's values times the compression factor
EXTENSIVE = (
    "gpu_hours",
    "cost_usd",
    "provisioning_gpu_hours",
    "provisioning_cost_usd",
    "idle_cost_usd",
    "energy_kwh",
    "energy_busy_kwh",
    "energy_idle_kwh",
    "energy_provisioning_kwh",
    "violation_s",
    "cost_base_usd",
    "cost_burst_usd",
    "on_demand_cost_usd",
    "saving_vs_on_demand_usd",
)


def screen_setup(s: Scenario, spec, compression: float) -> tuple[Scenario, object, ColdStart]:
    """(scenario, policy, cold start) of a run on a day compressed ``compression`` times.

    1 (the default) is the real-time day. Raises ``ValueError`` where the day cannot be
    compressed (replayed traces) or a scaled duration leaves its field's range.
    """
    cs = cold_start_of(s, spec)
    if compression == 1.0:
        return real_time(s), spec, cs
    sc = compressed_day(s, compression)
    if sc is None:
        raise ValueError("only rate-based arrivals can be compressed")
    if sc.capacity is not None:  # spot interruptions and notices on the same clock
        sc = sc.model_copy(update={"capacity": scale_times(sc.capacity, compression)})
    return sc, scale_times(spec, compression), scale_times(cs, compression)


def _to_real_horizon(run: AutoscaledRun, compression: float) -> AutoscaledRun:
    if compression != 1.0:
        for k in EXTENSIVE:
            if k in run.scalars:
                run.scalars[k] *= compression
    return run


#: per thread, one jitter source per (seed, replication, cv): factor k is the same for every
#: policy (common random numbers), so a later run reuses the factors an earlier one drew (a
#: second real-time round on a pinned worker draws none); a source draws as it goes, so
#: threads (a multi-threaded Dask worker) do not share one
_JITTER_SOURCES: dict[tuple[int, int, int, float], Jitter] = {}


def jitter_source(s: Scenario, replication: int) -> Jitter | None:
    """Replication ``replication``'s service-time jitter factors (None without jitter).

    >>> from capsim.load import load_scenario
    >>> s = load_scenario("scenarios/embedding_autoscaled.yaml")
    >>> jitter_source(s, 0) is jitter_source(s, 0) is not jitter_source(s, 1)
    True
    """
    cv = s.fleet.service_time_cv
    if cv <= 0:
        return None
    key = (threading.get_ident(), s.simulation.seed, replication, cv)
    src = _JITTER_SOURCES.get(key)
    if src is None:
        if len(_JITTER_SOURCES) >= 8:
            _JITTER_SOURCES.clear()
        src = _JITTER_SOURCES[key] = Jitter(jitter_rng(s, replication), cv)
    return src


def _batched_fleet(s: Scenario, svc, stream, replication: int, vectorise: bool) -> BatchedFleet:
    return BatchedFleet(
        stream.arrival,
        svc.batch_times(s.fleet.max_batch),
        max_queue_delay_s=s.fleet.max_queue_delay_s,
        max_queue_length=s.fleet.max_queue_length,
        jitter=jitter_source(s, replication),
        vectorise=vectorise,
    )


def _llm_fleet(s: Scenario, svc, stream) -> ScalableLLMFleet:
    """The engine's own overload check is off: waiting through a cold start is not overload;
    the lifecycle judges (a wait over ``max_wait_s`` with no replica starting)."""
    prompt, output = llm_tokens(stream)
    chains = None
    if stream.prefixes is not None and svc.settings.enable_prefix_caching:
        chains = stream.prefixes.chains(prompt, output, svc.settings.block_size)
    return ScalableLLMFleet(
        stream.arrival,
        prompt,
        output,
        svc,
        svc.limits,
        router=s.fleet.router,
        max_queue_length=s.fleet.max_queue_length,
        chains=chains,
    )
