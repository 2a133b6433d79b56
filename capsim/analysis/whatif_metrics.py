"""Measure one autoscaled run: latency against the SLO over time, replicas, cost, energy.

An autoscaled run is one policy over one replication in real time (no warm-up deletion: the
load is not stationary). From the per-request arrays of the engine and the replica records of
the lifecycle it measures:

* per SLO metric (``latency`` for fixed-shape models; ``ttft``, ``tpot``, ``e2e`` for LLMs, as
  the scenario's ``slo`` sets them): percentiles over the horizon and per window (by arrival);
* attainment: the share of requests within every target (rejected and unserved ones are
  misses; a one-token LLM output has no TPOT and meets it), over the horizon and per hour;
  time in violation: windows whose percentile exceeds any target;
* replicas by state per window, busy replicas, queue; GPU-hours billed from request to
  release, the provisioning and warm-idle parts of it, energy (busy work at its power, warm
  idle between, provisioning at idle power).

>>> edges = window_edges(650.0, 300.0)
>>> edges.tolist()
[0.0, 300.0, 600.0, 650.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from capsim.analysis.capacity import capacity_prices, spot_scalars, tier_costs
from capsim.analysis.cost import (
    batch_energy_j,
    idle_energy_j,
    llm_busy_energy_j,
    price_per_gpu_hour,
)
from capsim.analysis.prefix import prefix_cache_scalars
from capsim.analysis.stats import PERCENTILES, percentiles
from capsim.spec.catalog import GPU

SAMPLE_SIZE = 20_000
HOUR = 3600.0


@dataclass
class AutoscaledRun:
    """One policy, one replication: scalars, per-hour and per-window arrays, latency samples.

    ``quantiles[metric][p]`` and ``sample[metric]`` are in seconds; ``timeline`` has one value
    per window, with ``p<pct>_<metric>_s`` for each SLO metric.
    """

    policy: str
    replication: int
    scalars: dict[str, float]
    quantiles: dict[str, dict[float, float]]
    hourly_attainment: np.ndarray
    timeline: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]
    unstable: bool = False
    unstable_reason: str = ""


def window_edges(horizon: float, w: float) -> np.ndarray:
    """Window boundaries of width ``w`` over ``[0, horizon]`` (the last one may be shorter)."""
    k = max(1, math.ceil(horizon / w - 1e-9))
    return np.minimum(np.arange(k + 1) * w, horizon)


def occupancy(starts: np.ndarray, ends: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Time-average number of intervals [start, end) open in each window."""
    if len(starts) == 0:
        return np.zeros(len(edges) - 1)
    lo, hi = edges[:-1], edges[1:]
    ov = np.minimum(ends[:, None], hi[None, :]) - np.maximum(starts[:, None], lo[None, :])
    return np.clip(ov, 0, None).sum(axis=0) / np.maximum(hi - lo, 1e-12)


def peak(starts: np.ndarray, ends: np.ndarray) -> int:
    """Most intervals open at once."""
    if len(starts) == 0:
        return 0
    t = np.concatenate([starts, ends])
    d = np.concatenate([np.ones(len(starts)), -np.ones(len(ends))])
    order = np.lexsort((d, t))  # at equal times, releases (-1) first
    return int(np.cumsum(d[order]).max())


def per_window_sum(x: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Sums of ``x`` over index ranges ``[idx[k], idx[k+1])`` (``idx`` non-decreasing).

    A boolean ``x`` is counted range by range (no float copy of it).

    >>> per_window_sum(np.array([True, False, True, True]), np.array([0, 2, 2, 4])).tolist()
    [1.0, 0.0, 2.0]
    """
    if x.dtype == bool:
        bounds = idx.tolist()
        return np.array(
            [np.count_nonzero(x[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)],
            dtype=float,
        )
    out = np.zeros(len(idx) - 1)
    full = idx[1:] > idx[:-1]
    if full.any():
        out[full] = np.add.reduceat(x[: idx[-1]], idx[:-1][full], dtype=float)
    return out


def busy_per_window(bstart, bdur, edges) -> np.ndarray:
    """Busy replica-seconds per window (a batch crossing a boundary is split there).

    ``bstart`` is sorted; only batches that start within the longest batch before a boundary
    can cross it, so the split is a small correction to per-window sums.
    """
    nwin = len(edges) - 1
    if len(bstart) == 0 or nwin == 0:
        return np.zeros(nwin)
    idx = np.searchsorted(bstart, edges, side="left")
    out = per_window_sum(bdur, idx)
    longest = float(bdur.max())
    lo = np.searchsorted(bstart, edges[1:] - longest, side="left")
    for k, (a, b) in enumerate(zip(lo.tolist(), idx[1:].tolist(), strict=True)):
        if b > a:
            spill = np.clip(bstart[a:b] + bdur[a:b] - edges[k + 1], 0.0, None).sum()
            out[k] -= spill
            if k + 1 < nwin:
                out[k + 1] += spill
    return out


# --------------------------------------------------------------------------- the two parts
@dataclass
class _Latency:
    scalars: dict[str, float]
    quantiles: dict[str, dict[float, float]]
    hourly: np.ndarray
    p_win: dict[str, np.ndarray]
    sample: dict[str, np.ndarray]


def _latency(
    targets: dict[str, float],
    pct: float,
    lat: dict[str, np.ndarray],
    arr_served: np.ndarray,
    arrival: np.ndarray,
    horizon: float,
    edges: np.ndarray,
    replication: int,
    complete: bool,
) -> _Latency:
    """SLO statistics of the served requests (``lat`` aligned with the sorted ``arr_served``)."""
    n = len(arrival)
    ok = None  # no float-sized temporaries: one boolean array per target, reused
    for m, target in targets.items():
        good = np.greater(lat[m], target)
        np.logical_not(good, out=good)  # NaN (no TPOT for a one-token output) meets it
        ok = good if ok is None else np.logical_and(ok, good, out=ok)
    if ok is None:
        ok = np.ones(len(arr_served), dtype=bool)
    hours = np.append(np.arange(0.0, horizon, HOUR), horizon)
    per_hour_all = np.diff(np.searchsorted(arrival, hours, side="left"))
    per_hour_ok = per_window_sum(ok, np.searchsorted(arr_served, hours, side="left"))
    hourly = np.where(per_hour_all > 0, per_hour_ok / np.maximum(per_hour_all, 1), np.nan)
    widx = np.searchsorted(arr_served, edges, side="left")
    wlen = np.diff(edges)
    over = np.zeros(len(wlen), dtype=bool)
    ps = sorted(set(PERCENTILES) | {pct})
    rng = np.random.default_rng(replication)
    quantiles, p_win, sample = {}, {}, {}
    nans: dict[str, bool] = {}
    for m, target in targets.items():
        x = lat[m]
        has_nan = nans[m] = bool(np.isnan(x).any())  # only an LLM's TPOT of one-token outputs
        pw = np.full(len(wlen), np.nan)
        for k in range(len(wlen)):
            seg = x[widx[k] : widx[k + 1]]
            if has_nan:
                seg = seg[~np.isnan(seg)]
            if len(seg):
                pw[k] = np.percentile(seg, pct)
        over |= np.nan_to_num(pw, nan=0.0) > target
        p_win[m] = pw
        v = x[~np.isnan(x)] if has_nan else x
        qv = percentiles(v, ps) if len(v) and complete else [math.inf] * len(ps)
        quantiles[m] = {p: float(q) for p, q in zip(ps, qv, strict=True)}
        pick = v if len(v) <= SAMPLE_SIZE else v[rng.integers(0, len(v), SAMPLE_SIZE)]
        sample[m] = np.sort(pick)
    violation_s = float(wlen[over].sum())
    first = next(iter(targets))
    x0 = lat[first]
    mean = math.nan
    if len(arr_served):  # nanmean copies the array: only where there is a NaN
        mean = float(np.nanmean(x0) if nans[first] else np.mean(x0))
    scalars = {
        "attainment": float(ok.sum() / n) if n else 1.0,
        "worst_hour_attainment": float(np.nanmin(hourly)) if np.isfinite(hourly).any() else 1.0,
        "violation_s": violation_s,
        "violation_share": violation_s / horizon if horizon else 0.0,
        "mean_latency_s": mean,
    }
    return _Latency(scalars, quantiles, hourly, p_win, sample)


def _fleet(
    s,
    gpu: GPU,
    lc,
    horizon: float,
    edges: np.ndarray,
    busy_s: float,
    e_busy: float,
    tp: int,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """Cost, energy and replica scalars, and replicas by state per window."""
    price = price_per_gpu_hour(gpu, s.candidates.price_provider).usd_per_hour
    replica_s = float(lc.billed_seconds(horizon).sum())
    tiers: dict[str, float] = {}
    if s.capacity is not None:  # base + burst at their tiers' prices
        base_s = getattr(lc, "base", 0) * horizon
        tiers = tier_costs(
            capacity_prices(gpu, s.capacity, s.candidates.price_provider),
            base_s=base_s,
            burst_s=max(replica_s - base_s, 0.0),
            tp=tp,
        )
        cost = tiers["cost_base_usd"] + tiers["cost_burst_usd"]
        price = cost / (replica_s * tp / HOUR) if replica_s > 0 else price  # the blended rate
    prov_s = float(lc.provisioning_seconds(horizon).sum())
    serving_s = max(replica_s - prov_s, 0.0)
    e_idle = idle_energy_j(gpu, max(serving_s - busy_s, 0.0), tp)
    e_prov = gpu.power.idle_w * prov_s * tp
    rel = np.minimum(np.where(np.isnan(lc.released), np.inf, lc.released), horizon)
    ok_ready = ~np.isnan(lc.ready)
    occ = {k: occupancy(a, b, edges) for k, (a, b) in lc.state_intervals().items()}
    gpu_h = replica_s * tp / HOUR
    scalars = {
        "gpu_hours": gpu_h,
        "cost_usd": gpu_h * price,
        "usd_per_hour": replica_s * tp / horizon * price if horizon else 0.0,
        "provisioning_gpu_hours": prov_s * tp / HOUR,
        "provisioning_cost_usd": prov_s * tp / HOUR * price,
        "idle_cost_usd": max(serving_s - busy_s, 0.0) * tp / HOUR * price,
        "replicas_avg": replica_s / horizon if horizon else 0.0,
        "replicas_peak": float(peak(lc.requested, rel)),
        "ready_avg": float(occ["ready"].mean()) if len(edges) > 1 else 0.0,
        "ready_peak": float(peak(lc.ready[ok_ready], rel[ok_ready])),
        "cold_starts": float(np.sum(lc.requested > 0)),
        "utilisation": busy_s / serving_s if serving_s > 0 else 0.0,
        "idle_share": 1 - busy_s / replica_s if replica_s > 0 else 0.0,
        "provisioning_share": prov_s / replica_s if replica_s > 0 else 0.0,
        "energy_kwh": (e_busy + e_idle + e_prov) / 3.6e6,
        "energy_busy_kwh": e_busy / 3.6e6,
        "energy_idle_kwh": e_idle / 3.6e6,
        "energy_provisioning_kwh": e_prov / 3.6e6,
        **tiers,
    }
    return scalars, occ


def _assemble(
    label: str,
    replication: int,
    pct: float,
    lc,
    counts: dict[str, float],
    latency: _Latency,
    fleet: tuple[dict[str, float], dict[str, np.ndarray]],
    edges: np.ndarray,
    offered: np.ndarray,
    busy_w: np.ndarray,
    queue_w: np.ndarray,
    extra: dict[str, float],
) -> AutoscaledRun:
    fscalars, occ = fleet
    timeline = {
        "t_s": edges[:-1],
        "offered_rps": offered,
        "provisioning": occ["provisioning"],
        "ready": occ["ready"],
        "draining": occ["draining"],
        "busy": busy_w,
        "queue": queue_w,
        **{f"p{pct:g}_{m}_s": v for m, v in latency.p_win.items()},
    }
    scalars = {**counts, **latency.scalars, **fscalars, **extra}
    return AutoscaledRun(
        label,
        replication,
        scalars,
        latency.quantiles,
        latency.hourly,
        timeline,
        latency.sample,
        lc.unstable,
        lc.unstable_reason,
    )


def _counts(n: int, served: int, rejected: int) -> dict[str, float]:
    return {
        "arrived": float(n),
        "served": float(served),
        "rejected": float(rejected),
        "rejection_rate": rejected / n if n else 0.0,
    }


def _offered(arrival: np.ndarray, edges: np.ndarray) -> np.ndarray:
    wlen = np.maximum(np.diff(edges), 1e-12)
    return np.diff(np.searchsorted(arrival, edges, side="left")) / wlen


# --------------------------------------------------------------------------- batched fleets
def measure_batched(
    s,
    gpu: GPU,
    svc,
    fleet,
    lc,
    arrival: np.ndarray,
    horizon: float,
    targets: dict[str, float],
    *,
    label: str,
    replication: int,
    tp: int,
    window_s: float,
) -> AutoscaledRun:
    """An autoscaled run of :class:`capsim.sim.batched_fleet.BatchedFleet` (fixed-shape)."""
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
    complete = not lc.unstable and served >= n - rejected
    edges = window_edges(horizon, window_s)
    wlen = np.maximum(np.diff(edges), 1e-12)
    latency = _latency(
        targets, pct, {"latency": lat}, arr_served, arrival, horizon, edges, replication, complete
    )
    busy_w = busy_per_window(bstart, bdur, edges) / wlen
    # time-average queue per window: ∫(admitted arrivals - starts) dt
    widx = np.searchsorted(arr_served, edges, side="left")
    a_sum = per_window_sum(arr_served, widx)
    bidx = np.searchsorted(bstart, edges, side="left")
    b_cnt = per_window_sum(bsize, bidx)
    b_sum = per_window_sum(bsize * bstart, bidx)
    started_before = np.concatenate([[0.0], np.cumsum(b_cnt)])[:-1]
    int_a = widx[:-1] * wlen + ((widx[1:] - widx[:-1]) * edges[1:] - a_sum)
    int_s = started_before * wlen + (b_cnt * edges[1:] - b_sum)
    queue_w = (int_a - int_s) / wlen
    in_h = bstart < horizon
    busy_s = float(np.minimum(bdur[in_h], horizon - bstart[in_h]).sum())
    pf = svc.power_fractions(s.fleet.max_batch)
    e_busy = batch_energy_j(gpu, bdur[in_h], pf[bsize[in_h]], tp)
    extra = {"mean_batch": float(bsize.mean()) if len(bsize) else 0.0}
    if s.capacity is not None:
        extra.update(spot_scalars(lc, fleet))
    return _assemble(
        label,
        replication,
        pct,
        lc,
        _counts(n, served, rejected),
        latency,
        _fleet(s, gpu, lc, horizon, edges, busy_s, e_busy, tp),
        edges,
        _offered(arrival, edges),
        busy_w,
        queue_w,
        extra,
    )


# --------------------------------------------------------------------------- LLM fleets
def token_scalars(res, served: np.ndarray, cost: float, horizon: float) -> dict[str, float]:
    """Output tokens served, their rate, and the cost per million (output, and all) tokens."""
    out_tok = float(res.output[served].sum())
    all_tok = out_tok + float(res.prompt[served].sum())
    return {
        "output_tokens": out_tok,
        "output_tokens_per_s": out_tok / horizon if horizon else 0.0,
        "usd_per_1m_output_tokens": cost / out_tok * 1e6 if out_tok else math.nan,
        "usd_per_1m_tokens": cost / all_tok * 1e6 if all_tok else math.nan,
    }


def measure_llm(
    s,
    gpu: GPU,
    fleet,
    lc,
    horizon: float,
    targets: dict[str, float],
    *,
    label: str,
    replication: int,
    tp: int,
    window_s: float,
) -> AutoscaledRun:
    """An autoscaled run of :class:`capsim.sim.llm_fleet.ScalableLLMFleet` (continuous
    batching): TTFT, TPOT and end-to-end latency against their targets, tokens and their cost.

    Busy replicas and the queue per window come from the autoscaler's samples of the engine's
    cumulative counters (exact at every tick, linear in between).
    """
    pct = s.slo.percentile
    res = fleet.result(horizon)
    arrival = res.arrival
    served_mask = res.served
    arr_served = arrival[served_mask]
    lat = {m: getattr(res, m)[served_mask] for m in targets}
    n, served = len(arrival), int(served_mask.sum())
    rejected = int(res.rejected.sum())
    complete = not lc.unstable and served >= n - rejected
    edges = window_edges(horizon, window_s)
    wlen = np.maximum(np.diff(edges), 1e-12)
    latency = _latency(
        targets, pct, lat, arr_served, arrival, horizon, edges, replication, complete
    )
    busy_cum, queue_cum = fleet.busy_queue_at(edges)
    busy_w, queue_w = np.diff(busy_cum) / wlen, np.diff(queue_cum) / wlen
    busy_s = float(busy_cum[-1])
    pre, dec = float(res.busy_prefill_s.sum()), float(res.busy_decode_s.sum())
    share = busy_s / (pre + dec) if pre + dec > 0 else 0.0  # the part within the horizon
    e_busy = llm_busy_energy_j(gpu, pre, dec, tp) * share
    fscalars, occ = _fleet(s, gpu, lc, horizon, edges, busy_s, e_busy, tp)
    extra = {
        "mean_batch": res.seq_iterations / res.iterations if res.iterations else 0.0,
        **token_scalars(res, served_mask, fscalars["cost_usd"], horizon),
        "preemptions": float(res.preemptions.sum()),
    }
    if getattr(res, "prefix_caching", False):
        extra.update(prefix_cache_scalars(res, np.flatnonzero(served_mask)))
    if s.capacity is not None:
        extra.update(spot_scalars(lc, fleet))
    return _assemble(
        label,
        replication,
        pct,
        lc,
        _counts(n, served, rejected),
        latency,
        (fscalars, occ),
        edges,
        _offered(arrival, edges),
        busy_w,
        queue_w,
        extra,
    )
