"""What-if: several autoscaling policies on the same traffic, in real time, side by side.

``whatif(scenario)`` runs each policy (the scenario's ``whatif.policies``, else its
``autoscaling`` policy and a fixed fleet sized for the peak) over the whole horizon without
compression, on the same request streams and service-time jitter (common random numbers), for
``replications`` independent replications. Per policy it measures, from the per-request arrays
and the replica records:

* SLO attainment: the fraction of requests (rejected ones count as misses) within the latency
  target, over the horizon and per hour;
* p50...p99.9 over the horizon with t-intervals over replications (non-stationary load: no
  warm-up deletion), p99 per window (by arrival time) and time in violation (windows whose p99
  exceeds the target);
* cost: GPU-seconds billed from request to release x price; GPU-hours; average and peak
  replicas; idle share (billed time not busy: warm idle plus provisioning);
* energy: busy batches at their power, warm idle between batches, provisioning at idle power.

>>> from capsim.scenario import load_scenario
>>> s = load_scenario("scenarios/embedding_autoscaled.yaml")
>>> [p.label for p in policies_for(s)][:2]
['fixed-peak', 'hpa-util']
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from capsim.autoscale import (
    ColdStart,
    FixedSpec,
    KPASpec,
    PredictiveSpec,
    ScheduledSpec,
    make_policy,
)
from capsim.catalog import GPU, Catalog, load_catalog
from capsim.cost import batch_energy_j, price_per_gpu_hour
from capsim.errors import InputError
from capsim.scenario import Poisson, Renewal, Scenario
from capsim.sim.batched_fleet import BatchedFleet, Jitter
from capsim.sim.lifecycle import ColdStartSampler, cold_start_seed, run_lifecycle
from capsim.stats import CI, PERCENTILES, t_interval
from capsim.workload import jitter_rng, rate_multiplier, sim_horizon

SAMPLE_SIZE = 20_000
HOUR = 3600.0


# =========================================================================== one run
@dataclass
class AutoscaledRun:
    """One policy, one replication: scalars, per-hour and per-window arrays, a latency sample."""

    policy: str
    replication: int
    scalars: dict[str, float]
    quantiles: dict[float, float]
    hourly_attainment: np.ndarray
    timeline: dict[str, np.ndarray]
    sample: np.ndarray
    unstable: bool = False
    unstable_reason: str = ""


def _real_time(s: Scenario) -> Scenario:
    """The scenario without time compression (autoscaling needs real time)."""
    if s.simulation.compress_to_s is None:
        return s
    sim = s.simulation.model_copy(update={"compress_to_s": None})
    return s.model_copy(update={"simulation": sim})


def replica_capacity_rps(svc, max_batch: int) -> float:
    """Best throughput of one replica (full batches)."""
    t = svc.batch_times(max_batch)
    return max(b / t[b] for b in range(1, max_batch + 1))


def weight_bytes(svc, tp: int = 1) -> float:
    """Bytes of weights one GPU loads at a cold start."""
    try:
        return float(svc.model.params * svc.precision.weight_bytes) / tp
    except AttributeError:
        return float(getattr(svc, "weight_bytes", 0.0)) / tp


def rate_at_start(s: Scenario) -> float:
    a = s.traffic.arrivals
    if isinstance(a, Poisson | Renewal):
        return float(a.rate_rps * rate_multiplier(a, np.array([0.0]))[0])
    from capsim.workload import read_trace

    t = read_trace(a).times
    return float(np.searchsorted(t, 60.0) / 60.0) if len(t) else 0.0


def _prior(s: Scenario, season_s: float) -> Callable[[np.ndarray], np.ndarray] | None:
    """Last period's rate before the run: the scenario's rate curve (rate-based traffic)."""
    a = s.traffic.arrivals
    if not isinstance(a, Poisson | Renewal):
        return None
    return lambda t: a.rate_rps * rate_multiplier(a, np.asarray(t, dtype=float) + season_s)


def cold_start_of(s: Scenario, spec) -> ColdStart:
    if spec.cold_start is not None:
        return spec.cold_start
    if s.autoscaling is not None and s.autoscaling.cold_start is not None:
        return s.autoscaling.cold_start
    return ColdStart()


def initial_replicas(s: Scenario, spec, policy, capacity: float) -> int:
    """Ready at t = 0: the spec's value, else enough for the load at t = 0 at 70% utilisation."""
    if spec.initial_replicas is not None:
        return policy.clamp(spec.initial_replicas)
    if isinstance(spec, FixedSpec):
        return policy.replicas
    if isinstance(spec, ScheduledSpec):
        return policy.clamp(policy.at(0.0))
    need = math.ceil(rate_at_start(s) / (0.7 * capacity)) if capacity > 0 else 1
    floor = 1 if (rate_at_start(s) > 0 or not isinstance(spec, KPASpec)) else 0
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
) -> AutoscaledRun:
    """Simulate one policy over one replication in real time and measure it.

    ``vectorise`` turns on the fleet's uncongested fast path (see ``BatchedFleet``): it pays
    for its precomputation (~4 s per day at 500 req/s) only when replicas are idle most of the
    time (a generous fixed fleet); autoscaled fleets run busy, so it is off by default.
    """
    from capsim.simulate import stream_for

    sr = _real_time(s)
    stream = stream_for(sr, replication)
    arrival, horizon = stream.arrival, stream.horizon
    K = s.fleet.max_batch
    bt = svc.batch_times(K)
    cap = replica_capacity_rps(svc, K)
    wb = weight_bytes(svc, tp)
    cs = cold_start_of(s, spec)
    policy = make_policy(
        spec,
        max_replicas=s.candidates.max_replicas,
        fixed_replicas=fixed_replicas,
        lead_s=cs.mean_s(wb),
        prior=_prior(s, spec.season_s) if isinstance(spec, PredictiveSpec) else None,
    )
    fleet = BatchedFleet(
        arrival,
        bt,
        max_queue_delay_s=s.fleet.max_queue_delay_s,
        max_queue_length=s.fleet.max_queue_length,
        jitter=Jitter(jitter_rng(sr, replication), s.fleet.service_time_cv)
        if s.fleet.service_time_cv > 0
        else None,
        vectorise=vectorise,
    )
    sampler = ColdStartSampler(cs, cold_start_seed(s.simulation.seed, replication), wb)
    lc = run_lifecycle(
        fleet,
        policy,
        sampler,
        horizon=horizon,
        initial=initial_replicas(s, spec, policy, cap),
        max_wait_s=s.simulation.max_wait_s,
        abort_on_unstable=abort_on_unstable,
    )
    return measure(
        s,
        gpu,
        svc,
        fleet,
        lc,
        arrival,
        horizon,
        label=spec.label,
        replication=replication,
        tp=tp,
        window_s=window_s,
    )


# =========================================================================== measurement
def _window_edges(horizon: float, w: float) -> np.ndarray:
    k = max(1, math.ceil(horizon / w - 1e-9))
    return np.minimum(np.arange(k + 1) * w, horizon)


def _occupancy(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-average number of intervals [start, end) open in each window."""
    if len(starts) == 0:
        return np.zeros(len(edges) - 1)
    lo, hi = edges[:-1], edges[1:]
    ov = np.minimum(ends[:, None], hi[None, :]) - np.maximum(starts[:, None], lo[None, :])
    return np.clip(ov, 0, None).sum(axis=0) / np.maximum(hi - lo, 1e-12)


def _peak(starts: np.ndarray, ends: np.ndarray) -> int:
    if len(starts) == 0:
        return 0
    t = np.concatenate([starts, ends])
    d = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((d, t))  # at equal times, releases (-1) first
    return int(np.cumsum(d[order]).max())


def _per_window_sum(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sums of ``x`` over index ranges ``[idx[k], idx[k+1])`` (``idx`` non-decreasing)."""
    out = np.zeros(len(idx) - 1)
    full = idx[1:] > idx[:-1]
    if full.any():
        out[full] = np.add.reduceat(x[: idx[-1]], idx[:-1][full], dtype=float)
    return out


def _busy_per_window(bstart, bdur, edges) -> np.ndarray:
    """Busy replica-seconds per window (a batch crossing a boundary is split there).

    ``bstart`` is sorted; only batches that start within the longest batch before a boundary
    can cross it, so the split is a small correction to per-window sums.
    """
    nwin = len(edges) - 1
    if len(bstart) == 0 or nwin == 0:
        return np.zeros(nwin)
    idx = np.searchsorted(bstart, edges, side="left")
    out = _per_window_sum(bdur, idx)
    longest = float(bdur.max())
    lo = np.searchsorted(bstart, edges[1:] - longest, side="left")
    for k, (a, b) in enumerate(zip(lo.tolist(), idx[1:].tolist(), strict=True)):
        if b > a:
            spill = np.clip(bstart[a:b] + bdur[a:b] - edges[k + 1], 0.0, None).sum()
            out[k] -= spill
            if k + 1 < nwin:
                out[k + 1] += spill
    return out


def measure(
    s: Scenario,
    gpu: GPU,
    svc,
    fleet: BatchedFleet,
    lc,
    arrival: np.ndarray,
    horizon: float,
    *,
    label: str,
    replication: int,
    tp: int,
    window_s: float,
) -> AutoscaledRun:
    target = s.slo.latency_ms / 1000
    pct = s.slo.percentile
    bstart, bdur, bsize = fleet.batch_log()
    served = int(bsize.sum())
    if fleet.limit is None:
        arr_served = arrival[:served]  # FIFO without rejections: a view, no copy
    else:
        arr_served = arrival[fleet.service_order()[:served]]
    lat = np.repeat(bstart + bdur, bsize) - arr_served
    n = len(arrival)
    rejected = int(fleet.rejected_mask().sum())
    ok = lat <= target
    attainment = float(ok.sum() / n) if n else 1.0
    # per hour (by arrival time); unserved and rejected requests count as misses
    hours = np.append(np.arange(0.0, horizon, HOUR), horizon)
    per_hour_all = np.diff(np.searchsorted(arrival, hours, side="left"))
    hidx = np.searchsorted(arr_served, hours, side="left")
    per_hour_ok = _per_window_sum(ok, hidx)
    hourly = np.where(per_hour_all > 0, per_hour_ok / np.maximum(per_hour_all, 1), np.nan)
    # windows: p99, offered load, replicas by state, busy, queue
    edges = _window_edges(horizon, window_s)
    nwin = len(edges) - 1
    widx = np.searchsorted(arr_served, edges, side="left")
    p_win = np.full(nwin, np.nan)
    for k in range(nwin):
        lo, hi = widx[k], widx[k + 1]
        if hi > lo:
            p_win[k] = np.percentile(lat[lo:hi], pct)
    wlen = np.diff(edges)
    violation_s = float(wlen[np.nan_to_num(p_win, nan=0.0) > target].sum())
    offered = np.diff(np.searchsorted(arrival, edges, side="left")) / np.maximum(wlen, 1e-12)
    states = lc.state_intervals()
    occ = {k: _occupancy(a, b, edges) for k, (a, b) in states.items()}
    busy_w = _busy_per_window(bstart, bdur, edges) / np.maximum(wlen, 1e-12)
    # time-average queue per window: ∫(admitted arrivals - starts) dt
    a_cnt = widx
    a_sum = _per_window_sum(arr_served, widx)
    bidx = np.searchsorted(bstart, edges, side="left")
    b_cnt = _per_window_sum(bsize, bidx)
    b_sum = _per_window_sum(bsize * bstart, bidx)
    started_before = np.concatenate([[0.0], np.cumsum(b_cnt)])[:-1]
    int_a = a_cnt[:-1] * wlen + ((a_cnt[1:] - a_cnt[:-1]) * edges[1:] - a_sum)
    int_s = started_before * wlen + (b_cnt * edges[1:] - b_sum)
    queue_w = (int_a - int_s) / np.maximum(wlen, 1e-12)
    # money and energy (within the horizon)
    price = price_per_gpu_hour(gpu, s.candidates.price_provider).usd_per_hour
    billed = lc.billed_seconds(horizon)
    prov = lc.provisioning_seconds(horizon)
    replica_s = float(billed.sum())
    prov_s = float(prov.sum())
    serving_s = max(replica_s - prov_s, 0.0)
    in_h = bstart < horizon
    busy_s = float(np.minimum(bdur[in_h], horizon - bstart[in_h]).sum())
    pf = svc.power_fractions(s.fleet.max_batch)
    e_busy = batch_energy_j(gpu, bdur[in_h], pf[bsize[in_h]], tp)
    e_idle = gpu.power.warm_idle_w * max(serving_s - busy_s, 0.0) * tp
    e_prov = gpu.power.idle_w * prov_s * tp
    rel = np.where(np.isnan(lc.released), np.inf, lc.released)
    ok_ready = ~np.isnan(lc.ready)
    ps = sorted(set(PERCENTILES) | {pct})
    qv = np.percentile(lat, ps) if len(lat) else [math.inf] * len(ps)
    q = {p: float(v) for p, v in zip(ps, qv, strict=True)}
    if lc.unstable or served < n - rejected:
        q = {p: math.inf for p in q}
    rng = np.random.default_rng(replication)
    sample = np.sort(
        lat if len(lat) <= SAMPLE_SIZE else lat[rng.integers(0, len(lat), SAMPLE_SIZE)]
    )
    scalars = {
        "arrived": float(n),
        "served": float(served),
        "rejected": float(rejected),
        "rejection_rate": rejected / n if n else 0.0,
        "attainment": attainment,
        "worst_hour_attainment": float(np.nanmin(hourly)) if np.isfinite(hourly).any() else 1.0,
        "violation_s": violation_s,
        "violation_share": violation_s / horizon if horizon else 0.0,
        "gpu_hours": replica_s * tp / HOUR,
        "cost_usd": replica_s * tp / HOUR * price,
        "usd_per_hour": replica_s * tp / horizon * price if horizon else 0.0,
        "provisioning_gpu_hours": prov_s * tp / HOUR,
        "provisioning_cost_usd": prov_s * tp / HOUR * price,
        "idle_cost_usd": max(serving_s - busy_s, 0.0) * tp / HOUR * price,
        "replicas_avg": replica_s / horizon if horizon else 0.0,
        "replicas_peak": float(_peak(lc.requested, np.minimum(rel, horizon))),
        "ready_avg": float(occ["ready"].mean() if nwin else 0.0),
        "ready_peak": float(_peak(lc.ready[ok_ready], np.minimum(rel, horizon)[ok_ready])),
        "cold_starts": float(np.sum(lc.requested > 0)),
        "utilisation": busy_s / serving_s if serving_s > 0 else 0.0,
        "idle_share": 1 - busy_s / replica_s if replica_s > 0 else 0.0,
        "provisioning_share": prov_s / replica_s if replica_s > 0 else 0.0,
        "energy_kwh": (e_busy + e_idle + e_prov) / 3.6e6,
        "energy_busy_kwh": e_busy / 3.6e6,
        "energy_idle_kwh": e_idle / 3.6e6,
        "energy_provisioning_kwh": e_prov / 3.6e6,
        "mean_batch": float(bsize.mean()) if len(bsize) else 0.0,
        "mean_latency_s": float(lat.mean()) if len(lat) else math.nan,
    }
    timeline = {
        "t_s": edges[:-1],
        "offered_rps": offered,
        "provisioning": occ["provisioning"],
        "ready": occ["ready"],
        "draining": occ["draining"],
        "busy": busy_w,
        "queue": queue_w,
        f"p{pct:g}_s": p_win,
    }
    return AutoscaledRun(
        label,
        replication,
        scalars,
        q,
        hourly,
        timeline,
        sample,
        lc.unstable,
        lc.unstable_reason,
    )


# =========================================================================== summaries
@dataclass
class PolicyResult:
    """One policy over its replications."""

    name: str
    spec: Any
    runs: list[AutoscaledRun]
    confidence: float
    target_s: float
    percentile: float
    max_rejection_rate: float
    fixed_replicas: int | None = None
    saving: CI | None = None  # vs the baseline, $ over the horizon (paired differences)
    saving_share: float | None = None

    def ci(self, key: str) -> CI:
        return t_interval([r.scalars[key] for r in self.runs], self.confidence)

    def q(self, p: float | None = None) -> CI:
        p = self.percentile if p is None else p
        return t_interval([r.quantiles[p] for r in self.runs], self.confidence)

    @property
    def unstable(self) -> bool:
        return any(r.unstable for r in self.runs)

    @property
    def unstable_reason(self) -> str:
        return next((r.unstable_reason for r in self.runs if r.unstable), "")

    @property
    def meets_slo(self) -> bool:
        """p-target met at the upper confidence limit over the horizon, rejections within limit."""
        if self.unstable:
            return False
        return (
            self.q().high <= self.target_s
            and self.ci("rejection_rate").mean <= self.max_rejection_rate
        )

    @property
    def verdict(self) -> str:
        if self.unstable:
            return f"unstable ({self.unstable_reason})"
        if len(self.runs) < 2:
            p = self.runs[0].quantiles[self.percentile] if self.runs else math.nan
            return f"screened on one replication: p{self.percentile:g} {p * 1000:.1f} ms"
        c = self.q()
        if c.high > self.target_s:
            return f"p{self.percentile:g} too high"
        if self.ci("rejection_rate").mean > self.max_rejection_rate:
            return "too many rejections"
        return "meets SLO"

    @property
    def hourly_attainment(self) -> np.ndarray:
        return np.nanmean(np.vstack([r.hourly_attainment for r in self.runs]), axis=0)

    @property
    def timeline(self) -> pd.DataFrame:
        """Per window, the mean over replications."""
        keys = self.runs[0].timeline.keys()
        return pd.DataFrame(
            {
                k: np.nanmean(np.vstack([r.timeline[k] for r in self.runs]), axis=0)
                if k != "t_s"
                else self.runs[0].timeline[k]
                for k in keys
            }
        )

    @property
    def samples(self) -> np.ndarray:
        return np.sort(np.concatenate([r.sample for r in self.runs]))


@dataclass
class WhatIfResult:
    scenario: Scenario
    gpu: str
    precision: str
    tp: int
    policies: list[PolicyResult]
    baseline: str | None
    horizon_s: float
    window_s: float
    replications: int
    price_usd_per_gpu_hour: float
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, name: str) -> PolicyResult:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    def frame(self) -> pd.DataFrame:
        """One row per policy (means, with the CI of the SLO percentile and of the cost)."""
        rows = []
        pct = self.scenario.slo.percentile
        for p in self.policies:
            c, cost = p.q(), p.ci("cost_usd")
            row: dict[str, Any] = {
                "policy": p.name,
                "kind": p.spec.kind,
                "meets_slo": p.meets_slo,
                "verdict": p.verdict,
                "attainment": p.ci("attainment").mean,
                "worst_hour_attainment": p.ci("worst_hour_attainment").mean,
                f"p{pct:g}_ms": c.mean * 1000,
                f"p{pct:g}_ci_low_ms": c.low * 1000,
                f"p{pct:g}_ci_high_ms": c.high * 1000,
                "violation_min": p.ci("violation_s").mean / 60,
                "rejected": p.ci("rejected").mean,
                "gpu_hours": p.ci("gpu_hours").mean,
                "cost_usd": cost.mean,
                "cost_ci_low_usd": cost.low,
                "cost_ci_high_usd": cost.high,
                "usd_per_hour": p.ci("usd_per_hour").mean,
                "provisioning_cost_usd": p.ci("provisioning_cost_usd").mean,
                "idle_cost_usd": p.ci("idle_cost_usd").mean,
                "replicas_avg": p.ci("replicas_avg").mean,
                "replicas_peak": max(r.scalars["replicas_peak"] for r in p.runs),
                "cold_starts": p.ci("cold_starts").mean,
                "idle_share": p.ci("idle_share").mean,
                "provisioning_share": p.ci("provisioning_share").mean,
                "energy_kwh": p.ci("energy_kwh").mean,
                "saving_usd": p.saving.mean if p.saving else math.nan,
                "saving_ci_low_usd": p.saving.low if p.saving else math.nan,
                "saving_ci_high_usd": p.saving.high if p.saving else math.nan,
                "saving_share": p.saving_share if p.saving_share is not None else math.nan,
                "replications": len(p.runs),
            }
            rows.append(row)
        return pd.DataFrame(rows)

    def hourly_frame(self) -> pd.DataFrame:
        data = {"hour": np.arange(len(self.policies[0].hourly_attainment))}
        for p in self.policies:
            data[p.name] = p.hourly_attainment
        return pd.DataFrame(data)


# =========================================================================== the library call
def policies_for(s: Scenario) -> list:
    """The scenario's what-if policies, else its autoscaling policy plus a peak-sized fixed fleet."""
    if s.whatif is not None and s.whatif.policies:
        return list(s.whatif.policies)
    out: list = [FixedSpec(kind="fixed", name="fixed-peak", replicas="peak")]
    if s.autoscaling is not None and not isinstance(s.autoscaling, FixedSpec):
        out.append(s.autoscaling)
    return out


def resolve_config(
    s: Scenario, gpu: str | None, precision: str | None, tp: int | None
) -> tuple[str, str, int]:
    w = s.whatif
    g = gpu or (w.gpu if w else None)
    p = precision or (w.precision if w else None)
    t = tp or (w.tp if w else 1)
    if g is None:
        if len(s.candidates.gpus) != 1:
            raise InputError(
                "which GPU? candidates.gpus lists several; set whatif.gpu or pass --gpu",
                where="whatif.gpu",
            )
        g = s.candidates.gpus[0]
    if p is None:
        if len(s.candidates.precisions) != 1:
            raise InputError(
                "which precision? candidates.precisions lists several; set whatif.precision "
                "or pass --precision",
                where="whatif.precision",
            )
        p = s.candidates.precisions[0]
    return g, p, t


def peak_fixed_replicas(s: Scenario, cat: Catalog, gpu: str, precision: str, tp: int) -> int:
    """The static planner's replica count for this configuration (sized for the peak)."""
    from capsim.planner import Candidate, search_candidate

    r = search_candidate(s, Candidate(gpu, precision, tp), cat)
    if r.best is None:
        raise InputError(
            f"cannot size a fixed fleet of {gpu} {precision} for the peak: {r.reason}",
            where="whatif (fixed, replicas: peak)",
        )
    return r.best.config.replicas


def evaluate_policy(
    s: Scenario,
    cat: Catalog,
    gpu: str,
    precision: str,
    tp: int,
    spec,
    *,
    replications: int,
    fixed_replicas: int | None = None,
    window_s: float = 300.0,
    abort_on_unstable: bool = False,
    prior: Sequence[AutoscaledRun] = (),
) -> PolicyResult:
    """One policy over ``replications`` real-time replications (sequentially, in this process);
    ``prior`` runs (replications 0, 1, ...) already made are reused."""
    from capsim.simulate import make_service

    svc = make_service(s, cat[gpu], precision, tp)
    runs = list(prior) if prior else []
    for rep in range(len(runs), replications):
        runs.append(
            run_policy(
                s,
                cat[gpu],
                svc,
                spec,
                rep,
                tp=tp,
                fixed_replicas=fixed_replicas,
                window_s=window_s,
                abort_on_unstable=abort_on_unstable,
            )
        )
        if runs[-1].unstable and abort_on_unstable:
            break
    return PolicyResult(
        spec.label,
        spec,
        runs,
        s.simulation.confidence,
        s.slo.latency_ms / 1000,
        s.slo.percentile,
        s.slo.max_rejection_rate,
        fixed_replicas,
    )


def _job(args) -> AutoscaledRun:
    s, cat, gpu, precision, tp, spec, rep, fixed_n, window_s = args
    from capsim.simulate import make_service

    svc = make_service(s, cat[gpu], precision, tp)
    return run_policy(s, cat[gpu], svc, spec, rep, tp=tp, fixed_replicas=fixed_n, window_s=window_s)


def whatif(
    scenario: Scenario,
    catalog: Catalog | None = None,
    policies: Sequence[Any] | None = None,
    *,
    gpu: str | None = None,
    precision: str | None = None,
    tp: int | None = None,
    replications: int | None = None,
    window_s: float | None = None,
    baseline: str | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
) -> WhatIfResult:
    """Run each policy over ``replications`` real-time replications of the same traffic."""
    s = scenario
    cat = catalog if catalog is not None else load_catalog()
    if s.is_llm:
        raise InputError(
            "what-if for LLM scenarios needs the LLM engine to implement "
            "capsim.sim.lifecycle.ScalableFleet (not available yet)",
            where="model",
        )
    g, p, t = resolve_config(s, gpu, precision, tp)
    if g not in cat.gpus:
        raise InputError(
            f"unknown GPU '{g}'; the catalog has: {', '.join(cat)}", where="whatif.gpu"
        )
    from capsim.simulate import make_service

    make_service(s, cat[g], p, t)  # raises Unsupported for a precision the card lacks
    specs = list(policies) if policies is not None else policies_for(s)
    if not specs:
        raise InputError("no policies to compare", where="whatif.policies")
    names = [sp.label for sp in specs]
    if len(set(names)) != len(names):
        raise InputError(f"policy names must be unique: {names}", where="whatif.policies")
    w = s.whatif
    reps = (
        replications
        or (w.replications if w and w.replications else None)
        or max(2, s.simulation.replications)
    )
    win = window_s or (w.window_s if w else 300.0)
    base = baseline or (w.baseline if w else None)
    if base is None:
        base = next((sp.label for sp in specs if isinstance(sp, FixedSpec)), None)
    elif base not in names:
        raise InputError(f"baseline '{base}' is not one of {names}", where="--baseline")
    fixed_n = None
    if any(isinstance(sp, FixedSpec) and sp.replicas == "peak" for sp in specs):
        if progress:
            progress(f"sizing a fixed {g} {p} fleet for the peak (static plan)")
        fixed_n = peak_fixed_replicas(s, cat, g, p, t)
    tasks = [(s, cat, g, p, t, sp, rep, fixed_n, win) for rep in range(reps) for sp in specs]
    runs: list[AutoscaledRun] = []
    if jobs > 1 and len(tasks) > 1:
        with ProcessPoolExecutor(max_workers=min(jobs, len(tasks), os.cpu_count() or 1)) as pool:
            for i, r in enumerate(pool.map(_job, tasks), 1):
                runs.append(r)
                if progress:
                    progress(f"[{i}/{len(tasks)}] {r.policy} replication {r.replication + 1}")
    else:
        for i, task in enumerate(tasks, 1):
            runs.append(_job(task))
            if progress:
                progress(
                    f"[{i}/{len(tasks)}] {runs[-1].policy} replication {runs[-1].replication + 1}"
                )
    results = []
    for sp in specs:
        mine = sorted((r for r in runs if r.policy == sp.label), key=lambda r: r.replication)
        results.append(
            PolicyResult(
                sp.label,
                sp,
                mine,
                s.simulation.confidence,
                s.slo.latency_ms / 1000,
                s.slo.percentile,
                s.slo.max_rejection_rate,
                fixed_n if isinstance(sp, FixedSpec) and sp.replicas == "peak" else None,
            )
        )
    if base is not None:
        b = next(r for r in results if r.name == base)
        for r in results:
            if r is b:
                continue
            diff = [
                x.scalars["cost_usd"] - y.scalars["cost_usd"]
                for x, y in zip(b.runs, r.runs, strict=True)
            ]
            r.saving = t_interval(diff, s.simulation.confidence)
            bc = b.ci("cost_usd").mean
            r.saving_share = r.saving.mean / bc if bc > 0 else None
    price = price_per_gpu_hour(cat[g], s.candidates.price_provider).usd_per_hour
    horizon = sim_horizon(_real_time(s))[0]
    return WhatIfResult(s, g, p, t, results, base, horizon, win, reps, price)
