"""Evaluate one fleet configuration: replications → metrics → SLO verdict → cost.

This is ``capsim.simulate`` (the library entry point): the planner calls it as a function, many
times, with the same request streams (common random numbers) for every candidate.

>>> from capsim.load import load_scenario
>>> s = load_scenario("scenarios/vision.yaml")
>>> ev = simulate(s, Config("l4", "int8", replicas=4), replications=2)
>>> ev.config.replicas, ev.summary.replications
(4, 2)
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from capsim.analysis.capacity import price_provider
from capsim.analysis.cost import Price, batch_energy_j, idle_energy_j, price_per_gpu_hour
from capsim.analysis.metrics import RunMetrics, Summary, series_metrics, summarise, warmup_cut
from capsim.analysis.stats import CI, decide
from capsim.analysis.theory_check import TheoryValue, exact_wait
from capsim.errors import InputError
from capsim.load import load_catalog
from capsim.service.fixed import FixedServiceModel, MemoryFit, Unsupported
from capsim.sim.batched import run_batched
from capsim.sim.batched_closed import run_batched_closed
from capsim.sim.batched_queue import EngineConfig
from capsim.sim.llm_adapter import (
    make_llm_service,  # LLM engine (continuous batching)
    run_llm_replication,
)
from capsim.sim.overload import alarm_level
from capsim.spec.catalog import GPU, Catalog
from capsim.spec.scenario import Poisson, Scenario, Trace
from capsim.workload.arrivals import RequestStream
from capsim.workload.closed_loop import ClosedStream
from capsim.workload.streams import jitter_rng, make_stream, memory_limit_requests


@dataclass(frozen=True, order=True)
class Config:
    """One candidate fleet: card, precision, tensor parallelism, replica count."""

    gpu: str
    precision: str
    replicas: int = 1
    tp: int = 1
    ep: int = 1  # expert parallelism inside the tp GPUs (MoE models)

    @property
    def gpus(self) -> int:
        return self.replicas * self.tp

    def label(self) -> str:
        tp = f" tp{self.tp}" if self.tp > 1 else ""
        tp += f" ep{self.ep}" if self.ep > 1 else ""
        return f"{self.replicas} x {self.gpu} {self.precision}{tp}"


@dataclass(frozen=True)
class SLOCheck:
    metric: str
    percentile: float
    target_s: float
    ci: CI
    verdict: str  # meets | fails | undecided


@dataclass(frozen=True)
class Evaluation:
    """Everything known about one configuration after its replications."""

    config: Config
    summary: Summary
    checks: tuple[SLOCheck, ...]
    rejection: CI
    feasible: bool
    verdict: str
    price: Price
    usd_per_hour: float
    usd_per_1m_requests: float
    requests_per_joule: float
    extra: dict[str, float] = field(default_factory=dict)
    theory: TheoryValue | None = None  # the exact mean wait, where queueing theory applies

    @property
    def primary(self) -> SLOCheck:
        """The binding SLO check: the one with the highest upper limit relative to its target."""
        return max(self.checks, key=lambda c: c.ci.high / c.target_s)


def slo_targets(s: Scenario) -> list[tuple[str, float]]:
    """(series name, target seconds) for each SLO target the scenario sets."""
    out = []
    if s.slo.latency_ms is not None:
        out.append(("latency" if not s.is_llm else "e2e", s.slo.latency_ms / 1000))
    if s.slo.ttft_ms is not None:
        out.append(("ttft", s.slo.ttft_ms / 1000))
    if s.slo.tpot_ms is not None:
        out.append(("tpot", s.slo.tpot_ms / 1000))
    return out


# --------------------------------------------------------------------------- service models
def make_service(s: Scenario, gpu: GPU, precision: str, tp: int = 1, ep: int = 1):
    """The service-time model for this scenario's model on ``gpu`` (raises Unsupported)."""
    if s.is_llm:
        return make_llm_service(s, gpu, precision, tp, ep)
    if tp != 1:
        raise Unsupported("tensor parallelism applies to transformer models only")
    return FixedServiceModel(
        gpu, s.fixed_model, precision, batch_overhead_s=s.fleet.batch_overhead_ms / 1000
    )


def memory_fit(s: Scenario, svc) -> MemoryFit:
    return svc.memory_fit(s.fleet.max_batch) if not s.is_llm else svc.memory_fit()


def replica_capacity_rps(s: Scenario, svc) -> float:
    """Best throughput of one replica: full batches (fixed-shape), or the LLM service's
    optimistic bound (its compute and its largest KV-fitting decode batch)."""
    return svc.max_throughput_rps(s)


def runnable_service(s: Scenario, gpu: GPU, precision: str, tp: int = 1, ep: int = 1):
    """:func:`make_service`, refusing (Unsupported) a configuration that does not fit in
    memory — what ``simulate`` and ``whatif`` are asked to run must be able to run."""
    svc = make_service(s, gpu, precision, tp, ep)
    fit = memory_fit(s, svc)
    if not fit.fits:
        tps = (f" tp{tp}" if tp > 1 else "") + (f" ep{ep}" if ep > 1 else "")
        raise Unsupported(f"{gpu.id} {precision}{tps} does not fit: {fit.reason}")
    return svc


# --------------------------------------------------------------------------- streams (CRN)
_STREAMS: dict[tuple[str, int], RequestStream | ClosedStream] = {}
_JITTER: dict[tuple[str, int, int], np.ndarray | None] = {}


def _traffic_key(s: Scenario) -> str:
    """What a request stream depends on: the traffic, the seed and the compression."""
    return json.dumps(
        [
            s.traffic.model_dump(mode="json"),
            s.simulation.seed,
            s.simulation.compress_to_s,
            s.fleet.service_time_cv,
        ],
        sort_keys=True,
    )


def stream_for(s: Scenario, replication: int) -> RequestStream | ClosedStream:
    """Replication ``replication``'s request stream, generated once per process and reused."""
    key = (_traffic_key(s), replication)
    if key not in _STREAMS:
        if len(_STREAMS) > 64:
            _STREAMS.clear()
        _STREAMS[key] = make_stream(s, replication)
    return _STREAMS[key]


def _jitter_for(s: Scenario, replication: int, n: int) -> np.ndarray | None:
    """Service-time jitter factors for one replication (CRN: the same for every candidate)."""
    cv = s.fleet.service_time_cv
    if cv <= 0:
        return None
    key = (_traffic_key(s), replication, n)
    if key not in _JITTER:
        if len(_JITTER) > 64:
            _JITTER.clear()
        shape = 1.0 / cv**2
        _JITTER[key] = jitter_rng(s, replication).gamma(shape, 1.0 / shape, size=n)
    return _JITTER[key]


def deterministic_traffic(s: Scenario) -> bool:
    """A trace replayed as is: replications would be identical, so batch quantiles are used."""
    a = s.traffic.arrivals
    return isinstance(a, Trace) and a.rate_scale == 1.0 and s.fleet.service_time_cv == 0


def check_measurable(s: Scenario, *, file: str | None = None) -> None:
    """Refuse an SLO target the traffic cannot measure: TPOT (time per output token after
    the first) is undefined when no request has more than one output token."""
    if not (s.is_llm and s.slo.tpot_ms is not None):
        return
    stream = stream_for(s, 0)
    out = stream.output_tokens if isinstance(stream, RequestStream) else None
    if out is not None and len(out) and int(np.max(out)) < 2:
        raise InputError(
            "TPOT (time per output token after the first) is undefined for this traffic: no "
            "request in it has more than one output token; remove slo.tpot_ms (TTFT and "
            "latency targets are judged as usual) or give output lengths of 2 or more",
            file=file,
            where="slo.tpot_ms",
        )


# --------------------------------------------------------------------------- one replication
def run_fixed_replication(
    s: Scenario, gpu: GPU, svc: FixedServiceModel, replicas: int, replication: int
) -> RunMetrics:
    """Simulate one replication of a fixed-shape configuration and measure it."""
    stream = stream_for(s, replication)
    k = s.fleet.max_batch
    cfg = EngineConfig(
        replicas=replicas,
        batch_times=svc.batch_times(k),
        max_queue_delay_s=s.fleet.max_queue_delay_s,
        router=s.fleet.router,
        max_queue_length=s.fleet.max_queue_length,
        max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
        jitter=None
        if isinstance(stream, ClosedStream)
        else _jitter_for(s, replication, len(stream)),
    )
    if isinstance(stream, ClosedStream):  # send times come from completions
        res = run_batched_closed(
            stream.clients(),
            cfg,
            stream.horizon,
            stream.think_rng(),
            jitter_cv=s.fleet.service_time_cv,
            max_requests=memory_limit_requests(s)[0],
        )
    else:
        res = run_batched(stream.arrival, cfg, stream.horizon)
    arrival = res.arrival
    served = res.served
    lat_all = np.where(served, res.finish - res.arrival, np.nan)
    cut = 0
    if s.stationary and not res.unstable:
        cut = warmup_cut(lat_all[served], s.simulation.warmup, arrival[served])
    keep = np.flatnonzero(served)[cut:]
    lat = lat_all[keep]
    t_first = arrival[keep[0]] if len(keep) else 0.0
    # an overloaded run stops early: its rates are over the time it ran
    end = res.end_time if res.unstable else max(res.end_time, stream.horizon)
    span = end - t_first
    busy_mask = res.batch_start >= t_first
    busy = float(res.batch_duration[busy_mask].sum())
    pf = svc.power_fractions(k)[res.batch_sizes[busy_mask]]
    energy = batch_energy_j(gpu, res.batch_duration[busy_mask], pf) + idle_energy_j(
        gpu, max(replicas * span - busy, 0.0)
    )
    arrived = len(arrival) - int(np.searchsorted(arrival, t_first))
    rejected = int(res.rejected[arrival >= t_first].sum())
    q, samples, bq = series_metrics(
        {"latency": lat},
        [s.slo.percentile],
        batch_ci_confidence=s.simulation.confidence if deterministic_traffic(s) else None,
    )
    scalars = {
        "arrived": float(arrived),
        "served": float(len(lat)),
        "rejected": float(rejected),
        "rejection_rate": rejected / arrived if arrived else 0.0,
        "throughput_rps": len(lat) / span if span > 0 else 0.0,
        "utilisation": busy / (replicas * span) if span > 0 else 0.0,
        "mean_batch": float(res.batch_sizes[busy_mask].mean()) if busy_mask.any() else 0.0,
        "mean_latency_s": float(lat.mean()) if len(lat) else math.nan,
        "mean_wait_s": float((res.start[keep] - res.arrival[keep]).mean())
        if len(keep)
        else math.nan,
        "energy_j": energy,
        "span_s": span,
        "warmup_deleted": float(cut),
    }
    scalars.update(_hardware_use_fixed(gpu, svc, res.batch_sizes[busy_mask], busy, replicas * span))
    return RunMetrics(q, scalars, res.unstable, res.unstable_reason, samples, bq)


def _hardware_use_fixed(
    gpu: GPU, svc: FixedServiceModel, sizes: np.ndarray, busy: float, capacity_s: float
) -> dict[str, float]:
    """Busy share, compute utilisation (achieved FLOP/s / dense peak of the math format) and
    memory-bandwidth utilisation (achieved bytes/s / peak) of the batches run, per replica."""
    if capacity_s <= 0 or not len(sizes):
        return dict(busy_share=0.0, compute_utilisation=0.0, memory_bw_utilisation=0.0)
    counts = np.bincount(sizes)
    flops = nbytes = 0.0
    peak = math.inf
    for b in np.flatnonzero(counts):
        op = svc.op(int(b))
        flops += counts[b] * op.flops
        nbytes += counts[b] * op.bytes
        peak = gpu.peak_flops(op.math_format) or math.inf
    return dict(
        busy_share=busy / capacity_s,
        compute_utilisation=flops / (capacity_s * peak),
        memory_bw_utilisation=nbytes / (capacity_s * gpu.bandwidth),
    )


def run_replication(s: Scenario, gpu: GPU, svc, replicas: int, replication: int) -> RunMetrics:
    if s.is_llm:
        return run_llm_replication(s, gpu, svc, replicas, replication, stream_for(s, replication))
    return run_fixed_replication(s, gpu, svc, replicas, replication)


# --------------------------------------------------------------------------- evaluation
def _verdict(s: Scenario, summary: Summary) -> tuple[tuple[SLOCheck, ...], CI, bool, str]:
    p = s.slo.percentile
    checks = tuple(
        SLOCheck(name, p, target, summary.q(name, p), decide(summary.q(name, p), target))
        for name, target in slo_targets(s)
    )
    rej = summary.scalars["rejection_rate"]
    if summary.unstable:
        return checks, rej, False, f"unstable ({summary.unstable_reason})"
    if any(c.verdict == "fails" for c in checks):
        c = next(c for c in checks if c.verdict == "fails")
        return checks, rej, False, f"p{p:g} {c.metric} too high"
    if rej.mean > s.slo.max_rejection_rate:
        return checks, rej, False, f"rejects {rej.mean:.2%} > {s.slo.max_rejection_rate:.2%}"
    if any(c.verdict == "undecided" for c in checks):
        return checks, rej, False, "undecided (CI straddles the target)"
    return checks, rej, True, "meets SLO"


def simulate(
    s: Scenario,
    config: Config,
    *,
    catalog: Catalog | None = None,
    replications: int | None = None,
    sequential: bool = True,
    progress: Callable[[str], None] | None = None,
) -> Evaluation:
    """Simulate ``config`` over independent replications and judge it against the SLO.

    With ``sequential`` (the default), replications are added — up to
    ``simulation.max_replications`` — while an SLO interval still straddles its target.
    """
    cat = catalog if catalog is not None else load_catalog()
    check_measurable(s)
    gpu = cat[config.gpu]
    svc = runnable_service(s, gpu, config.precision, config.tp, config.ep)
    sim = s.simulation
    n0 = 1 if deterministic_traffic(s) else (replications or sim.replications)
    n_max = (
        n0 if (deterministic_traffic(s) or replications or not sequential) else sim.max_replications
    )
    runs: list[RunMetrics] = []
    while True:
        for rep in range(len(runs), n0):
            if progress:
                progress(f"{config.label()}: replication {rep + 1}")
            runs.append(run_replication(s, gpu, svc, config.replicas, rep))
            if runs[-1].unstable:
                break
        summary = summarise(runs, sim.confidence)
        checks, rej, feasible, verdict = _verdict(s, summary)
        if summary.unstable or verdict != "undecided (CI straddles the target)" or n0 >= n_max:
            break
        n0 = min(n_max, n0 + sim.replications)
    ev = _priced(s, gpu, config, summary, checks, rej, feasible, verdict)
    return replace(ev, theory=theory_for(s, svc, config.replicas))


def theory_for(s: Scenario, svc, replicas: int) -> TheoryValue | None:
    """The exact mean wait of this configuration where queueing theory has one (else why not).

    Only for fixed-shape models under stationary Poisson traffic with deterministic batch times
    and no queue limit; LLM serving has no exact result and gets ``None``.
    """
    if s.is_llm:
        return None
    a, f = s.traffic.arrivals, s.fleet
    if not (isinstance(a, Poisson) and s.stationary):
        return TheoryValue(reason="traffic is not stationary Poisson")
    if f.service_time_cv > 0:
        return TheoryValue(reason="batch times are jittered (service_time_cv > 0)")
    if f.max_queue_length is not None:
        return TheoryValue(reason="a queue limit rejects requests")
    return exact_wait(
        rate_rps=a.rate_rps,
        replicas=replicas,
        batch_times=svc.batch_times(f.max_batch),
        queue_delay_s=f.max_queue_delay_s,
        shared_queue=f.router == "shared_queue",
    )


def _priced(s, gpu, config, summary, checks, rej, feasible, verdict) -> Evaluation:
    price = price_per_gpu_hour(gpu, price_provider(s))
    usd_h = price.usd_per_hour * config.gpus
    thr = summary.scalars["throughput_rps"].mean
    energy = summary.scalars["energy_j"].mean
    served = summary.scalars["served"].mean
    extra: dict[str, float] = {}
    if s.is_llm and "output_tokens" in summary.scalars:
        sc = summary.scalars
        out_s = sc["output_tokens_per_s"].mean
        span = sc["span_s"].mean
        tok_s = sc["total_tokens"].mean / span if span > 0 else 0.0
        extra = {
            "output_tokens_per_s": out_s,
            "usd_per_1m_output_tokens": usd_h / (out_s * 3600) * 1e6 if out_s > 0 else math.inf,
            "usd_per_1m_tokens": usd_h / (tok_s * 3600) * 1e6 if tok_s > 0 else math.inf,
            "joules_per_token": energy / sc["total_tokens"].mean
            if sc["total_tokens"].mean > 0
            else math.inf,
            "joules_per_output_token": energy / sc["output_tokens"].mean
            if sc["output_tokens"].mean > 0
            else math.inf,
            "kv_utilisation": sc["kv_utilisation_mean"].mean,
            "kv_utilisation_peak": sc["kv_utilisation_peak"].mean,
        }
    return Evaluation(
        config=config,
        summary=summary,
        checks=checks,
        rejection=rej,
        feasible=feasible,
        verdict=verdict,
        price=price,
        usd_per_hour=usd_h,
        usd_per_1m_requests=usd_h / (thr * 3600) * 1e6 if thr > 0 else math.inf,
        requests_per_joule=served / energy if energy > 0 else 0.0,
        extra=extra,
    )


def evaluate_many(
    s: Scenario, configs: Sequence[Config], catalog: Catalog | None = None
) -> list[Evaluation]:
    """Evaluate several configurations on the same streams (common random numbers)."""
    cat = catalog if catalog is not None else load_catalog()
    return [simulate(s, c, catalog=cat) for c in configs]
