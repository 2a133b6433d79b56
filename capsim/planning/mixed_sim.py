"""Simulate a mixed fleet: pools behind a size router, each pool on its own sub-stream.

Routing by size thresholds is an exact split of the request stream, so each pool is simulated
alone with the existing LLM engine on the requests routed to it; the per-request latencies of
every pool are then merged, and the fleet-wide percentiles are percentiles over the union of
the pools' requests, with confidence intervals over independent replications (the same
streams for every mix: common random numbers).

>>> import numpy as np
>>> m = merge_series([{"e2e": np.array([1.0, 3.0])}, {"e2e": np.array([2.0])}])
>>> m["e2e"].tolist()
[1.0, 3.0, 2.0]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from capsim.analysis.cost import price_per_gpu_hour
from capsim.analysis.metrics import RunMetrics, Summary, series_metrics, summarise
from capsim.evaluate import SLOCheck, _verdict, runnable_service, stream_for
from capsim.planning.static import Candidate
from capsim.sim.llm_adapter import llm_tokens
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_measure import measure
from capsim.sim.overload import alarm_level
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario
from capsim.workload.arrivals import RequestStream
from capsim.workload.split import buckets, least_work, substream

SERIES = ("ttft", "tpot", "e2e")


@dataclass(frozen=True)
class Pool:
    """One pool of a mixed fleet: a card configuration serving some size buckets."""

    candidate: Candidate
    buckets: tuple[int, ...]
    replicas: int

    def label(self) -> str:
        c = self.candidate
        if not self.buckets:
            return f"{self.replicas} x {c.label()}"
        return f"{self.replicas} x {c.label()} (buckets {','.join(map(str, self.buckets))})"


@dataclass
class PoolRun:
    """One replication of one pool: its RunMetrics and the kept requests' latencies."""

    metrics: RunMetrics
    series: dict[str, np.ndarray]


@dataclass
class MixEvaluation:
    """A mix judged on the fleet-wide (merged) latencies."""

    pools: tuple[Pool, ...]
    summary: Summary
    checks: tuple[SLOCheck, ...]
    feasible: bool
    verdict: str
    usd_per_hour: float
    gpus: int
    pool_usd: dict[str, float] = field(default_factory=dict)

    def label(self) -> str:
        return " + ".join(p.label() for p in self.pools)


def pool_stream(s: Scenario, replication: int, bucket_ids: Sequence[int]) -> RequestStream:
    """Replication ``replication``'s requests routed to a pool serving ``bucket_ids``."""
    assert s.mix is not None
    st = stream_for(s, replication)
    assert isinstance(st, RequestStream)
    return substream(st, np.isin(buckets(st, s.mix.size_thresholds), list(bucket_ids)))


def run_pool(s: Scenario, cat: Catalog, pool: Pool, replication: int) -> PoolRun:
    """Simulate one pool on its sub-stream (its size buckets) for one replication."""
    return run_pool_on(s, cat, pool, pool_stream(s, replication, pool.buckets))


def run_pool_on(s: Scenario, cat: Catalog, pool: Pool, st: RequestStream) -> PoolRun:
    """Simulate one pool on the requests ``st`` routed to it."""
    c = pool.candidate
    gpu = cat[c.gpu]
    svc = runnable_service(s, gpu, c.precision, c.tp)
    prompt, output = llm_tokens(st)
    res = run_llm(
        st.arrival,
        prompt,
        output,
        svc,
        svc.limits,
        pool.replicas,
        router=s.fleet.router,
        max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
        max_queue_length=s.fleet.max_queue_length,
        horizon=st.horizon,
    )
    rm = measure(s, gpu, c.tp, res, st.horizon)
    cut = int(rm.scalars["warmup_deleted"])  # the same requests measure() kept
    keep = np.flatnonzero(res.served)[cut:]
    tpot = res.tpot[keep]
    series = {"ttft": res.ttft[keep], "tpot": tpot[~np.isnan(tpot)], "e2e": res.e2e[keep]}
    return PoolRun(rm, series)


def merge_series(parts: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The union of the pools' per-request series (one array per series name)."""
    names = [n for n in SERIES if any(n in p for p in parts)]
    return {n: np.concatenate([p[n] for p in parts if n in p]) for n in names}


_ADDITIVE = ("arrived", "served", "rejected", "throughput_rps", "energy_j", "output_tokens")


def merge_runs(s: Scenario, runs: Sequence[PoolRun]) -> RunMetrics:
    """One fleet-wide replication from its pools' runs: percentiles over the union."""
    q, samples, _ = series_metrics(merge_series([r.series for r in runs]), [s.slo.percentile])
    sc = {k: float(sum(r.metrics.scalars.get(k, 0.0) for r in runs)) for k in _ADDITIVE}
    sc["rejection_rate"] = sc["rejected"] / sc["arrived"] if sc["arrived"] else 0.0
    sc["span_s"] = max(r.metrics.scalars["span_s"] for r in runs)
    bad = [r.metrics for r in runs if r.metrics.unstable]
    reason = bad[0].unstable_reason if bad else ""
    return RunMetrics(q, sc, bool(bad), reason, samples)


def judge(
    s: Scenario, runs: Sequence[RunMetrics]
) -> tuple[Summary, tuple[SLOCheck, ...], bool, str]:
    """Summary over replications and the SLO verdict (as for one configuration)."""
    summary = summarise(runs, s.simulation.confidence)
    checks, _rej, feasible, verdict = _verdict(s, summary)
    return summary, checks, feasible, verdict


def pool_price(s: Scenario, cat: Catalog, pool: Pool) -> float:
    """$/hour of a pool."""
    c = pool.candidate
    p = price_per_gpu_hour(cat[c.gpu], s.candidates.price_provider).usd_per_hour
    return p * c.tp * pool.replicas


def evaluate_mix(
    s: Scenario, cat: Catalog, pools: Sequence[Pool], cache: dict | None = None
) -> MixEvaluation:
    """Simulate every pool for each replication and judge the merged fleet."""
    cache = cache if cache is not None else {}
    fleet_runs = []
    for rep in range(s.simulation.replications):
        parts = []
        for p in pools:
            if (p, rep) not in cache:
                cache[(p, rep)] = run_pool(s, cat, p, rep)
            parts.append(cache[(p, rep)])
        fleet_runs.append(merge_runs(s, parts))
    summary, checks, feasible, verdict = judge(s, fleet_runs)
    usd = {p.label(): pool_price(s, cat, p) for p in pools}
    gpus = sum(p.replicas * p.candidate.tp for p in pools)
    return MixEvaluation(
        tuple(pools), summary, checks, feasible, verdict, sum(usd.values()), gpus, usd
    )


def least_work_streams(
    s: Scenario, cat: Catalog, pools: Sequence[Pool], replication: int
) -> list[RequestStream]:
    """Replication ``replication``'s requests split by least-outstanding-work routing, each
    pool's speed being its replicas times one replica's token capacity at the mean request."""
    st = stream_for(s, replication)
    assert isinstance(st, RequestStream)
    assert st.prompt_tokens is not None and st.output_tokens is not None
    size = np.asarray(st.prompt_tokens) + np.asarray(st.output_tokens)
    mp, mo = float(np.mean(st.prompt_tokens)), float(np.mean(st.output_tokens))
    spt = []
    for p in pools:
        c = p.candidate
        svc = runnable_service(s, cat[c.gpu], c.precision, c.tp)
        spt.append(1.0 / (p.replicas * svc.throughput_for(mp, mo) * (mp + mo)))
    route = least_work(st.arrival, size, spt)
    return [substream(st, route == i) for i in range(len(pools))]


def evaluate_least_work(s: Scenario, cat: Catalog, pools: Sequence[Pool]) -> MixEvaluation:
    """Simulate ``pools`` behind a least-outstanding-work router and judge the merged fleet."""
    fleet_runs = []
    for rep in range(s.simulation.replications):
        streams = least_work_streams(s, cat, pools, rep)
        parts = [run_pool_on(s, cat, p, x) for p, x in zip(pools, streams, strict=True)]
        fleet_runs.append(merge_runs(s, parts))
        if fleet_runs[-1].unstable:
            break
    summary, checks, feasible, verdict = judge(s, fleet_runs)
    usd = {p.label(): pool_price(s, cat, p) for p in pools}
    gpus = sum(p.replicas * p.candidate.tp for p in pools)
    return MixEvaluation(
        tuple(pools), summary, checks, feasible, verdict, sum(usd.values()), gpus, usd
    )


def fleet_p(ev: MixEvaluation) -> str:
    """The binding fleet-wide check as text, e.g. 'p99 ttft 812 ms [790, 840] vs 2000 ms'."""
    if not ev.checks:
        return ev.verdict
    c = max(ev.checks, key=lambda c: c.ci.high / c.target_s)
    if not math.isfinite(c.ci.mean):
        return ev.verdict
    return (
        f"p{c.percentile:g} {c.metric} {c.ci.mean * 1000:.0f} ms "
        f"[{c.ci.low * 1000:.0f}, {c.ci.high * 1000:.0f}] vs {c.target_s * 1000:g} ms"
    )
