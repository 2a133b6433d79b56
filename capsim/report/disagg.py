"""The disaggregated part of the plan report (``capsim plan`` with a ``disaggregation:``
section) and of ``capsim simulate --decode-replicas``: the pools tried, the fleets simulated,
and the winner against co-located serving with the reason."""

from __future__ import annotations

from typing import Any

from capsim.planning.disagg import DisaggPlan, PoolSizing
from capsim.planning.disagg_sim import DisaggEvaluation, ci_ms


def _pool_line(p: PoolSizing) -> str:
    usd = f", ${p.usd_per_hour:.2f}/h" if p.usd_per_hour is not None else ""
    return f"    {p.candidate.label()}: {p.status}: {p.reason}{usd}"


def evaluation_lines(e: DisaggEvaluation) -> list[str]:
    """A simulated disaggregated fleet: SLO checks with intervals, pools, the KV link."""
    sc = e.summary.scalars
    link = e.link
    rps = sc["throughput_rps"].mean
    per_m = e.usd_per_hour / (rps * 3600) * 1e6 if rps > 0 else float("inf")
    out_tok = sc["output_tokens"].mean
    j_tok = sc["energy_j"].mean / out_tok if out_tok > 0 else float("nan")
    lines = [
        f"{e.fleet.label()} ({e.fleet.gpus} GPUs): {e.verdict}",
        f"  cost: ${e.usd_per_hour:.2f}/h ("
        + ", ".join(f"{k} ${v:.2f}/h" for k, v in e.pool_usd.items())
        + f"), ${per_m:,.2f} per 1M requests, {j_tok:.3f} J per output token",
        f"  p{e.checks[0].percentile:g} (95% CI over {e.summary.replications} replications): "
        + ", ".join(
            f"{c.metric} {ci_ms(e, c.metric)} vs {c.target_s * 1000:g} ms" for c in e.checks
        ),
        f"  KV transfer ({e.placement.replace('_', ' ')}, {link.streams} x "
        f"{link.bandwidth_b_s / 1e9:.1f} GB/s after efficiency, {link.latency_s * 1e6:.1f} us): "
        f"{sc['kv_mib_per_request'].mean:.1f} MiB per request, mean "
        f"{sc['kv_transfer_mean_s'].mean * 1000:.2f} ms, p99 {sc['kv_transfer_p99_s'].mean * 1000:.2f} ms",
        f"  busy share: prefill pool {sc['prefill_busy_share'].mean:.0%}, decode pool "
        f"{sc['decode_busy_share'].mean:.0%}; throughput {sc['throughput_rps'].mean:.2f} req/s, "
        f"decode preemptions {sc['decode_preemptions'].mean:.0f}",
    ]
    return lines


def pool_lines(pools: list[PoolSizing]) -> list[str]:
    """Sized and infeasible configurations one per line; dropped and skipped ones counted
    (each with its reason in the JSON output).

    >>> from capsim.planning.static import Candidate
    >>> pool_lines([PoolSizing(Candidate("l4", "fp8"), "sized", "3 replicas", 3, 2.42),
    ...             PoolSizing(Candidate("t4", "fp8"), "dropped", "precision unsupported")])
    ['    l4 fp8: sized: 3 replicas, $2.42/h', '    1 dropped (cannot run: precision, memory, link or idle latency)']
    """
    lines = [_pool_line(p) for p in pools if p.status in ("sized", "infeasible")]
    for status, why in (
        ("dropped", "cannot run: precision, memory, link or idle latency"),
        ("skipped", "dearer at their capacity lower bound than a sized pool"),
    ):
        n = sum(p.status == status for p in pools)
        if n:
            lines.append(f"    {n} {status} ({why})")
    return lines


def format_disagg(d: DisaggPlan) -> str:
    """The disaggregated section of ``capsim plan``."""
    lines = [
        "Disaggregated prefill/decode (xPyD; DistServe, arXiv:2401.09670): prefill pools sized "
        "for TTFT (KV transfer included), decode pools for the rest of the SLO",
        "  prefill pools:",
        *pool_lines(d.prefill),
        "  decode pools (behind the cheapest prefill pool):",
        *pool_lines(d.decode),
    ]
    if d.tried:
        lines.append("  simulated fleets:")
        for e in d.tried:
            lines += ["    " + x for x in evaluation_lines(e)]
    lines.append(f"Winner: {d.winner}: {d.reason}")
    return "\n".join(lines)


def disagg_dict(d: DisaggPlan) -> dict[str, Any]:
    """The disaggregated section as JSON."""

    def pool(p: PoolSizing) -> dict[str, Any]:
        c = p.candidate
        return {"gpu": c.gpu, "precision": c.precision, "tp": c.tp, "status": p.status,
                "reason": p.reason, "replicas": p.replicas, "usd_per_hour": p.usd_per_hour}  # fmt: skip

    return {
        "prefill": [pool(p) for p in d.prefill],
        "decode": [pool(p) for p in d.decode],
        "simulated": [_eval_dict(e) for e in d.tried],
        "best": _eval_dict(d.best) if d.best is not None else None,
        "colocated_usd_per_hour": d.colocated.usd_per_hour if d.colocated else None,
        "winner": d.winner,
        "reason": d.reason,
    }


def _eval_dict(e: DisaggEvaluation) -> dict[str, Any]:
    return {
        "fleet": e.fleet.label(),
        "prefill": {
            "gpu": e.fleet.prefill.gpu,
            "precision": e.fleet.prefill.precision,
            "tp": e.fleet.prefill.tp,
            "replicas": e.fleet.x,
        },  # fmt: skip
        "decode": {
            "gpu": e.fleet.decode.gpu,
            "precision": e.fleet.decode.precision,
            "tp": e.fleet.decode.tp,
            "replicas": e.fleet.y,
        },  # fmt: skip
        "placement": e.placement,
        "kv_link": {
            "bandwidth_gb_s_per_stream": e.link.bandwidth_b_s / 1e9,
            "latency_us": e.link.latency_s * 1e6,
            "streams": e.link.streams,
        },  # fmt: skip
        "usd_per_hour": e.usd_per_hour,
        "pool_usd_per_hour": e.pool_usd,
        "feasible": e.feasible,
        "verdict": e.verdict,
        "replications": e.summary.replications,
        "checks": {
            c.metric: {
                "mean_s": c.ci.mean,
                "low_s": c.ci.low,
                "high_s": c.ci.high,
                "target_s": c.target_s,
                "verdict": c.verdict,
            }  # fmt: skip
            for c in e.checks
        },
        "scalars": {k: v.mean for k, v in e.summary.scalars.items()},
    }


def disagg_eval_dict(e: DisaggEvaluation) -> dict[str, Any]:
    """``capsim simulate --decode-replicas --format json``."""
    return _eval_dict(e)


def format_disagg_eval(e: DisaggEvaluation) -> str:
    """``capsim simulate --decode-replicas``: the fleet, its checks, the KV link and pools."""
    slo = ", ".join(f"{c.metric} <= {c.target_s * 1000:g} ms" for c in e.checks)
    p = f"p{e.checks[0].percentile:g} " if e.checks else ""
    head = f"capsim simulate (disaggregated prefill/decode); SLO: {p}{slo}"
    return head + "\n" + "\n".join(evaluation_lines(e))
