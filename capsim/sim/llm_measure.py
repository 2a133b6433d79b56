"""Measurement of an LLM run: latency samples, token throughput, KV use and energy as RunMetrics."""

from __future__ import annotations

import math

import numpy as np

from capsim.analysis.cost import idle_energy_j, llm_busy_energy_j
from capsim.analysis.metrics import RunMetrics, series_metrics, warmup_cut
from capsim.sim.llm_types import LLMRunResult
from capsim.spec.catalog import GPU
from capsim.spec.scenario import Trace


def _power_energy(gpu: GPU, res: LLMRunResult, tp: int, span: float) -> float:
    """Energy (J): prefill iterations at max power, decode at the memory-bound level, the rest
    of each replica's span at warm idle; times ``tp`` GPUs."""
    pre = float(res.busy_prefill_s.sum())
    dec = float(res.busy_decode_s.sum())
    idle = max(res.replicas * span - pre - dec, 0.0)
    return llm_busy_energy_j(gpu, pre, dec, tp) + idle_energy_j(gpu, idle, tp)


def measure(s, gpu: GPU, tp: int, res: LLMRunResult, horizon: float) -> RunMetrics:
    """RunMetrics of an LLM run: ``ttft``, ``tpot``, ``e2e`` series and the scalars."""
    served = res.served
    e2e_all = res.e2e
    cut = 0
    if s.stationary and not res.unstable and served.any():
        cut = warmup_cut(e2e_all[served], s.simulation.warmup, res.arrival[served])
    keep = np.flatnonzero(served)[cut:]
    t_first = float(res.arrival[keep[0]]) if len(keep) else 0.0
    # an overloaded run stops early: its rates are over the time it ran
    span = (res.end_time if res.unstable else max(res.end_time, horizon)) - t_first
    ttft = res.ttft[keep]
    e2e = e2e_all[keep]
    tpot = res.tpot[keep]
    tpot = tpot[~np.isnan(tpot)]  # empty when no request has two output tokens: p99 NaN,
    # which the interval over replications leaves out (never a made-up 0)
    arrived = len(res.arrival) - int(np.searchsorted(res.arrival, t_first))
    late = res.arrival >= t_first
    rejected = int(res.rejected[late].sum())
    out_tok = float(res.output[keep].sum())
    tot_tok = out_tok + float(res.prompt[keep].sum())
    energy = _power_energy(gpu, res, tp, span)
    busy = float(res.busy_prefill_s.sum() + res.busy_decode_s.sum())
    q, samples, bq = series_metrics(
        {"ttft": ttft, "tpot": tpot, "e2e": e2e},
        [s.slo.percentile],
        batch_ci_confidence=s.simulation.confidence if _replayed_as_is(s) else None,
    )
    t_bins, util, kv_mean, kv_peak = res.kv_utilisation(0.0, max(res.end_time, horizon))
    scalars = {
        "arrived": float(arrived),
        "served": float(len(keep)),
        "rejected": float(rejected),
        "rejection_rate": rejected / arrived if arrived else 0.0,
        "throughput_rps": len(keep) / span if span > 0 else 0.0,
        "utilisation": busy / (res.replicas * span) if span > 0 else 0.0,
        "mean_batch": res.seq_iterations / res.iterations if res.iterations else 0.0,
        "mean_ttft_s": float(ttft.mean()) if len(ttft) else math.nan,
        "mean_queue_s": float(np.nanmean(res.admitted[keep] - res.arrival[keep]))
        if len(keep)
        else math.nan,
        "output_tokens": out_tok,
        "total_tokens": tot_tok,
        "output_tokens_per_s": out_tok / span if span > 0 else 0.0,
        "preemptions": float(res.preemptions[keep].sum()),
        "kv_utilisation_mean": kv_mean,
        "kv_utilisation_peak": kv_peak,
        "energy_j": energy,
        "span_s": span,
        "warmup_deleted": float(cut),
    }
    series = {"time_s": t_bins, "kv_utilisation": util}
    return RunMetrics(q, scalars, res.unstable, res.unstable_reason, samples, bq, series)


def _replayed_as_is(s) -> bool:
    """A trace replayed unchanged: one run, batch-quantile intervals (as simulate decides)."""
    a = s.traffic.arrivals
    return isinstance(a, Trace) and a.rate_scale == 1.0 and s.fleet.service_time_cv == 0
