"""Measure one autoscaled run of a disaggregated fleet: two pools, each under its own policy.

The latency series are the fleet's (TTFT with the KV transfer, TPOT in the decode pool, e2e:
see :mod:`capsim.sim.llm_disagg`); replicas, GPU-hours, cost and energy are each pool's,
added up (each pool billed at its own card's price); the timeline's replica counts, busy
replicas and queue are the two pools' sums. Per pool it also reports the mean replicas and
cost (``prefill_replicas_avg``, ``decode_cost_usd``, ...) and the KV transfer's p99.

>>> pool_keys("prefill")[:2]
['prefill_replicas_avg', 'prefill_replicas_peak']
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from capsim.analysis.cost import llm_busy_energy_j
from capsim.analysis.prefix import prefix_cache_scalars
from capsim.analysis.whatif_metrics import (
    AutoscaledRun,
    _assemble,
    _counts,
    _fleet,
    _latency,
    _offered,
    peak,
    token_scalars,
    window_edges,
)
from capsim.spec.catalog import GPU

#: fleet scalars that add up over the two pools
ADDITIVE = (
    "gpu_hours",
    "cost_usd",
    "usd_per_hour",
    "provisioning_gpu_hours",
    "provisioning_cost_usd",
    "idle_cost_usd",
    "replicas_avg",
    "ready_avg",
    "cold_starts",
    "energy_kwh",
    "energy_busy_kwh",
    "energy_idle_kwh",
    "energy_provisioning_kwh",
)


def pool_keys(pool: str) -> list[str]:
    """The per-pool scalars of a disaggregated run."""
    return [f"{pool}_{k}" for k in ("replicas_avg", "replicas_peak", "cost_usd", "cold_starts")]


@dataclass
class PoolRun:
    """One pool's part of a run: its card, GPUs per replica, engine fleet and lifecycle."""

    name: str  # prefill | decode
    gpu: GPU
    tp: int
    fleet: object
    lc: object


@dataclass
class _Status:
    unstable: bool
    unstable_reason: str


def _status(pools: list[PoolRun], res: Any) -> _Status:
    for p in pools:
        if p.lc.unstable:  # type: ignore[attr-defined]
            return _Status(True, f"{p.name} pool: {p.lc.unstable_reason}")  # type: ignore[attr-defined]
    if res.link_reason:
        return _Status(True, res.link_reason)
    return _Status(False, "")


def _merge_fleet(
    parts: list[tuple[dict[str, float], dict[str, np.ndarray]]],
    busy: list[float],
    pools: list[PoolRun],
    horizon: float,
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The two pools' fleet scalars and replicas-by-state series as one fleet's."""
    sc: dict[str, float] = {k: float(sum(p[0][k] for p in parts)) for k in ADDITIVE}
    replica_s = [p[0]["replicas_avg"] * horizon for p in parts]
    prov_s = [p[0]["provisioning_share"] * r for p, r in zip(parts, replica_s, strict=True)]
    serving_s = sum(max(r - q, 0.0) for r, q in zip(replica_s, prov_s, strict=True))
    total_s, busy_s = sum(replica_s), sum(busy)
    starts = np.concatenate([p.lc.requested for p in pools])  # type: ignore[attr-defined]
    ends = np.concatenate([p.lc.released for p in pools])  # type: ignore[attr-defined]
    ends = np.minimum(np.where(np.isnan(ends), np.inf, ends), horizon)
    sc |= {
        "replicas_peak": float(peak(starts, ends)),
        "ready_peak": sum(p[0]["ready_peak"] for p in parts),  # at most
        "utilisation": busy_s / serving_s if serving_s > 0 else 0.0,
        "idle_share": 1 - busy_s / total_s if total_s > 0 else 0.0,
        "provisioning_share": sum(prov_s) / total_s if total_s > 0 else 0.0,
    }
    for pool, (s, _occ) in zip(pools, parts, strict=True):
        for k in ("replicas_avg", "replicas_peak", "cost_usd", "cold_starts"):
            sc[f"{pool.name}_{k}"] = s[k]
    occ: dict[str, np.ndarray] = {k: np.sum([p[1][k] for p in parts], axis=0) for k in parts[0][1]}
    return sc, occ


def measure_disagg_autoscaled(
    s,
    pools: list[PoolRun],
    res: Any,
    horizon: float,
    targets: dict[str, float],
    *,
    label: str,
    replication: int,
    window_s: float,
) -> AutoscaledRun:
    """An autoscaled run of a disaggregated fleet (see the module docstring); ``res`` is the
    run's :class:`capsim.sim.llm_disagg.DisaggRunResult`."""
    pct = s.slo.percentile
    arrival = res.arrival
    served_mask = res.served
    lat = {m: getattr(res, m)[served_mask] for m in targets}
    n, served = len(arrival), int(served_mask.sum())
    rejected = int(res.rejected.sum())
    status = _status(pools, res)
    complete = not status.unstable and served >= n - rejected
    edges = window_edges(horizon, window_s)
    wlen = np.maximum(np.diff(edges), 1e-12)
    latency = _latency(
        targets, pct, lat, arrival[served_mask], arrival, horizon, edges, replication, complete
    )
    parts, busy, busy_cum, queue_cum = [], [], 0.0, 0.0
    for p, r in zip(pools, (res.prefill, res.decode), strict=True):
        b_cum, q_cum = p.fleet.busy_queue_at(edges)  # type: ignore[attr-defined]
        busy_cum, queue_cum = busy_cum + b_cum, queue_cum + q_cum
        b = float(b_cum[-1])
        pre, dec = float(r.busy_prefill_s.sum()), float(r.busy_decode_s.sum())
        share = b / (pre + dec) if pre + dec > 0 else 0.0  # the part within the horizon
        e_busy = llm_busy_energy_j(p.gpu, pre, dec, p.tp) * share
        parts.append(_fleet(s, p.gpu, p.lc, horizon, edges, b, e_busy, p.tp))
        busy.append(b)
    fleet = _merge_fleet(parts, busy, pools, horizon)
    moved = res.transfer_s[~np.isnan(res.transfer_s)]
    dec_res = res.decode
    extra = {
        "mean_batch": dec_res.seq_iterations / dec_res.iterations if dec_res.iterations else 0.0,
        **token_scalars(res, served_mask, fleet[0]["cost_usd"], horizon),
        "preemptions": float(res.prefill.preemptions.sum() + dec_res.preemptions.sum()),
        "kv_transfer_p99_ms": float(np.percentile(moved, 99)) * 1000 if len(moved) else 0.0,
    }
    if getattr(res.prefill, "prefix_caching", False):
        extra.update(prefix_cache_scalars(res.prefill, np.flatnonzero(served_mask)))
    return _assemble(
        label,
        replication,
        pct,
        status,
        _counts(n, served, rejected),
        latency,
        fleet,
        edges,
        _offered(arrival, edges),
        np.diff(busy_cum) / wlen,
        np.diff(queue_cum) / wlen,
        extra,
    )
