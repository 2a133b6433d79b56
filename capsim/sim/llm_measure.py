"""Measurement of an LLM run: latency samples, token throughput, KV use and energy as RunMetrics."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from capsim.analysis.cost import idle_energy_j, llm_busy_energy_j
from capsim.analysis.metrics import RunMetrics, series_metrics, warmup_cut
from capsim.analysis.prefix import prefix_cache_scalars
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


#: (iterations, tokens, logits, decode_context, prefill_work, prefill_kv) -> (FLOPs, bytes)
#: per GPU: :meth:`capsim.service.llm.LLMServiceModel.work_per_gpu`.
WorkFn = Callable[[float, float, float, float, float, float], tuple[float, float]]


def hardware_use(
    res: LLMRunResult, gpu: GPU, work: WorkFn, math_format: str, span: float
) -> dict[str, float]:
    """Utilisation as operators measure it, mean per GPU over ``span`` x replicas:
    ``compute_utilisation`` (achieved FLOP/s / dense peak of ``math_format``),
    ``memory_bw_utilisation`` (achieved bytes/s / peak bandwidth) and ``busy_share`` (time in
    iterations). The work is rebuilt from the run's aggregates: iterations, prompt tokens
    computed, decode tokens, and attention contexts from the started requests' lengths
    (each decode token of a request with prompt p attends to p + i tokens).

    A replica that always holds a sequence is 100% busy; its compute and bandwidth shares say
    how much of the card that work used.
    """
    cap = res.replicas * span
    if cap <= 0:
        return dict(busy_share=0.0, compute_utilisation=0.0, memory_bw_utilisation=0.0)
    busy = float(res.busy_prefill_s.sum() + res.busy_decode_s.sum())
    started = ~np.isnan(res.first_token)
    p = res.prompt[started].astype(float)
    o = res.output[started].astype(float)
    decode_tokens = max(float(res.tokens_generated) - float(started.sum()), 0.0)
    dec_n = float((o - 1).sum())
    mean_ctx = float(((o - 1) * p + o * (o - 1) / 2).sum() / dec_n) if dec_n > 0 else 0.0
    pre_n = float(p.sum())
    scale = res.prefill_tokens / pre_n if pre_n > 0 else 0.0
    flops, nbytes = work(
        float(res.iterations), float(res.prefill_tokens) + decode_tokens,
        decode_tokens + float(started.sum()), decode_tokens * mean_ctx,
        scale * float((p * p / 2).sum()), float(res.prefill_tokens),
    )  # fmt: skip
    peak = gpu.peak_flops(math_format) or math.inf
    return dict(
        busy_share=busy / cap,
        compute_utilisation=flops / (cap * peak),
        memory_bw_utilisation=nbytes / (cap * gpu.bandwidth),
    )


def measure(
    s,
    gpu: GPU,
    tp: int,
    res: LLMRunResult,
    horizon: float,
    work: WorkFn | None = None,
    math_format: str = "fp16",
) -> RunMetrics:
    """RunMetrics of an LLM run: ``ttft``, ``tpot``, ``e2e`` series and the scalars
    (with ``work``, the compute / memory-bandwidth utilisation of :func:`hardware_use`)."""
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
    if res.prefix_caching:
        scalars.update(prefix_cache_scalars(res, keep))
    if work is not None:
        scalars.update(hardware_use(res, gpu, work, math_format, max(res.end_time, horizon)))
    series = {"time_s": t_bins, "kv_utilisation": util}
    return RunMetrics(q, scalars, res.unstable, res.unstable_reason, samples, bq, series)


def _replayed_as_is(s) -> bool:
    """A trace replayed unchanged: one run, batch-quantile intervals (as simulate decides)."""
    a = s.traffic.arrivals
    return isinstance(a, Trace) and a.rate_scale == 1.0 and s.fleet.service_time_cv == 0
