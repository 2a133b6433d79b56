"""Plain-text, JSON-ready and tabular views of results (no file I/O here)."""

from __future__ import annotations

from typing import Any

import pandas as pd

from capsim.evaluate import Evaluation, slo_targets
from capsim.planning.static import CandidateResult, PlanResult
from capsim.report.autoscaled import autoscaled_dict, format_autoscaled
from capsim.report.disagg import disagg_dict, format_disagg
from capsim.report.mixed import format_mix, mix_dict
from capsim.report.tables import MS, _ms, _table


def evaluation_row(e: Evaluation) -> dict[str, Any]:
    """One flat row per evaluated configuration (for tables, CSV and JSON)."""
    c = e.primary
    sc = e.summary.scalars
    row: dict[str, Any] = {
        "gpu": e.config.gpu,
        "precision": e.config.precision,
        "tp": e.config.tp,
        "replicas": e.config.replicas,
        "gpus": e.config.gpus,
        "feasible": e.feasible,
        "verdict": e.verdict,
        "slo_metric": c.metric,
        "slo_percentile": c.percentile,
        "target_ms": c.target_s * MS,
        "p_ms": c.ci.mean * MS,
        "p_ci_low_ms": c.ci.low * MS,
        "p_ci_high_ms": c.ci.high * MS,
        "replications": e.summary.replications,
        "utilisation": sc["utilisation"].mean,
        **{k: sc[k].mean for k in _USE if k in sc},
        "throughput_rps": sc["throughput_rps"].mean,
        "rejection_rate": e.rejection.mean,
        "usd_per_hour": e.usd_per_hour,
        "usd_per_1m_requests": e.usd_per_1m_requests,
        "requests_per_joule": e.requests_per_joule,
        "price_source": e.price.label,
    }
    for chk in e.checks:
        row[f"{chk.metric}_p{chk.percentile:g}_ms"] = chk.ci.mean * MS
        row[f"{chk.metric}_p{chk.percentile:g}_ci_high_ms"] = chk.ci.high * MS
    for k in (
        "output_tokens_per_s",
        "usd_per_1m_output_tokens",
        "usd_per_1m_tokens",
        "joules_per_token",
        "kv_utilisation",
    ):
        if k in e.extra:
            row[k] = e.extra[k]
    return row


#: Utilisation scalars as operators measure them (busy time, achieved FLOP/s and bytes/s).
_USE = ("busy_share", "compute_utilisation", "memory_bw_utilisation")


def _use_cells(sc) -> list[str]:
    """Busy share, compute and memory-bandwidth utilisation as table cells ('-' if absent)."""
    return [f"{sc[k].mean:.0%}" if k in sc else "-" for k in _USE]


def plan_frame(result: PlanResult) -> pd.DataFrame:
    """Every configuration the planner simulated, one row each."""
    rows = []
    for r in result.results:
        for e in r.evaluations:
            row = evaluation_row(e)
            row["candidate_status"] = r.status
            row["chosen"] = r.best is e
            rows.append(row)
    return pd.DataFrame(rows)


def candidate_dict(r: CandidateResult) -> dict[str, Any]:
    return {
        "gpu": r.candidate.gpu,
        "precision": r.candidate.precision,
        "tp": r.candidate.tp,
        "status": r.status,
        "reason": r.reason,
        "replica_lower_bound": r.lower_bound,
        "best": evaluation_row(r.best) if r.best else None,
        "evaluated_replica_counts": [e.config.replicas for e in r.evaluations],
    }


def plan_dict(result: PlanResult) -> dict[str, Any]:
    s = result.scenario
    rec = result.recommendation
    return {
        "scenario": s.name,
        "model": s.model.name,
        "slo": s.slo.model_dump(),
        "peak_rate_rps": result.peak_rate_rps,
        "recommendation": candidate_dict(rec) if rec else None,
        "trace": result.trace,
        "ranked": [candidate_dict(r) for r in result.feasible],
        "lost": [candidate_dict(r) for r in result.lost],
        **_autoscaled(result),
        **({"mixed": mix_dict(result.mixed)} if getattr(result, "mixed", None) else {}),
        **(
            {"disaggregated": disagg_dict(result.disagg)} if getattr(result, "disagg", None) else {}
        ),
    }


def _autoscaled(result: PlanResult) -> dict[str, Any]:
    if getattr(result, "autoscaled", None) is None:
        return {}
    return {"autoscaled": autoscaled_dict(result.autoscaled)}


def _best(r: CandidateResult) -> Evaluation:
    """The cheapest setting of a feasible candidate (the ranked ones and the recommendation)."""
    assert r.best is not None
    return r.best


def format_plan(result: PlanResult) -> str:
    s = result.scenario
    p = s.slo.percentile
    lines = [
        f"capsim plan: {s.name} ({s.model.name}); SLO p{p:g} "
        + ", ".join(f"{n} <= {t * MS:g} ms" for n, t in _targets(s))
        + f"; peak offered load {result.peak_rate_rps:.1f} req/s",
        "",
    ]
    ranked = result.feasible
    if ranked:
        multi = len(_best(ranked[0]).checks) > 1  # several SLO metrics: name the binding one
        rows = []
        for i, r in enumerate(ranked, 1):
            e = _best(r)
            c = e.primary
            rows.append(
                [
                    str(i),
                    r.candidate.label(),
                    str(e.config.replicas),
                    (f"{c.metric} " if multi else "")
                    + f"{_ms(c.ci.mean)} [{_ms(c.ci.low)}, {_ms(c.ci.high)}]",
                    *_use_cells(e.summary.scalars),
                    f"{e.usd_per_hour:.2f}",
                    f"{e.usd_per_1m_requests:.2f}",
                    f"{e.requests_per_joule:.2f}",
                ]
            )
        lines.append("Feasible configurations, cheapest first:")
        lines.append(
            _table(
                rows,
                [
                    "#",
                    "config",
                    "replicas",
                    f"p{p:g} {'binding SLO' if multi else _best(ranked[0]).primary.metric} ms [95% CI]",
                    "busy",
                    "compute",
                    "mem BW",
                    "$/hour",
                    "$/1M req",
                    "req/J",
                ],
            )
        )
    else:
        lines.append("No configuration meets the SLO.")
    lines.append("")
    rec = result.recommendation
    if rec is not None:
        e = _best(rec)
        c = e.primary
        lines.append(
            f"Recommendation: {e.config.label()} at ${e.usd_per_hour:.2f}/h "
            f"(p{p:g} {c.metric} {_ms(c.ci.mean)} ms, upper 95% limit {_ms(c.ci.high)} ms "
            f"<= target {c.target_s * MS:g} ms)"
        )
        lines += [f"  {t}" for t in result.trace]
        if "usd_per_1m_output_tokens" in e.extra:  # LLM: cost per token, energy, KV cache
            x = e.extra
            lines.append(
                f"  per token: ${x['usd_per_1m_output_tokens']:.3f} per 1M output tokens, "
                f"${x['usd_per_1m_tokens']:.3f} per 1M tokens (prompt + output), "
                f"{x['joules_per_output_token']:.3f} J per output token; "
                f"{x['output_tokens_per_s']:,.0f} output tokens/s; KV cache "
                f"{x['kv_utilisation']:.0%} used on average"
            )
        lines.append("")
    lost = [r for r in result.results if r is not rec]
    if lost:
        lines.append("Why the others lost:")
        rows = [[r.candidate.label(), r.status, r.reason] for r in lost]
        lines.append(_table(rows, ["config", "status", "reason"]))
    if getattr(result, "mixed", None) is not None:
        lines += ["", format_mix(result.mixed)]
    if getattr(result, "disagg", None) is not None:
        lines += ["", format_disagg(result.disagg)]
    if getattr(result, "autoscaled", None) is not None:
        lines += ["", format_autoscaled(result.autoscaled, s)]
    return "\n".join(lines)


def _targets(s) -> list[tuple[str, float]]:
    return slo_targets(s)


def format_evaluation(e: Evaluation) -> str:
    """Full metrics of one configuration."""
    s = e.summary
    lines = [f"{e.config.label()}: {e.verdict}", ""]
    rows = []
    for name, qs in s.quantiles.items():
        for p, ci in qs.items():
            if name == "tpot" and not len(s.samples.get(name, [])) and not s.unstable:
                rows.append([name, f"p{p:g}", "undefined", "(no request has 2+ output tokens)"])
                continue
            rows.append([name, f"p{p:g}", f"{_ms(ci.mean)}", f"[{_ms(ci.low)}, {_ms(ci.high)}]"])
    lines.append(_table(rows, ["metric", "percentile", "ms", "95% CI"]))
    lines.append("")
    srows = []
    for k, ci in s.scalars.items():
        v = ci.mean
        srows.append([k, f"{v:.4g}", f"[{ci.low:.4g}, {ci.high:.4g}]" if ci.n > 1 else ""])
    lines.append(_table(srows, ["quantity (per replication)", "mean", "95% CI"]))
    lines.append("")
    lines.append(
        f"cost: ${e.usd_per_hour:.2f}/h ({e.price.label}); ${e.usd_per_1m_requests:.2f} per 1M "
        f"requests; {e.requests_per_joule:.2f} requests/J"
    )
    for k, v in e.extra.items():
        lines.append(f"{k}: {v:.4g}")
    lines.append(
        "SLO: "
        + "; ".join(
            f"p{c.percentile:g} {c.metric} {_ms(c.ci.mean)} ms [{_ms(c.ci.low)}, {_ms(c.ci.high)}] "
            f"vs {c.target_s * MS:g} ms: {c.verdict}"
            for c in e.checks
        )
        + f"; rejections {e.rejection.mean:.3%}"
    )
    if e.theory is not None:
        lines.append(_theory_line(e))
    if s.unstable:
        lines.append(f"UNSTABLE: {s.unstable_reason}")
    return "\n".join(lines)


def _theory_line(e: Evaluation) -> str:
    """The exact mean wait beside the simulated one (or why theory does not apply)."""
    t = e.theory
    assert t is not None
    if not t.applies:
        return f"theory: no exact queueing result ({t.reason})"
    w = e.summary.scalars.get("mean_wait_s")
    sim = f"; simulated {w.mean * MS:.4g} ms [{w.low * MS:.4g}, {w.high * MS:.4g}]" if w else ""
    return f"theory: {t.model} exact mean wait {t.wait_mean_s * MS:.4g} ms{sim}"


def evaluation_dict(e: Evaluation) -> dict[str, Any]:
    s = e.summary
    return {
        "config": {
            "gpu": e.config.gpu,
            "precision": e.config.precision,
            "tp": e.config.tp,
            "replicas": e.config.replicas,
        },
        "feasible": e.feasible,
        "verdict": e.verdict,
        "unstable": s.unstable,
        "unstable_reason": s.unstable_reason,
        "replications": s.replications,
        "latency_ms": {
            name: {f"p{p:g}": ci.to_dict(MS) for p, ci in qs.items()}
            for name, qs in s.quantiles.items()
        },
        "scalars": {k: ci.to_dict() for k, ci in s.scalars.items()},
        "slo": [
            {
                "metric": c.metric,
                "percentile": c.percentile,
                "target_ms": c.target_s * MS,
                "ci_ms": c.ci.to_dict(MS),
                "verdict": c.verdict,
            }
            for c in e.checks
        ],
        "cost": {
            "usd_per_hour": e.usd_per_hour,
            "usd_per_1m_requests": e.usd_per_1m_requests,
            "requests_per_joule": e.requests_per_joule,
            "price": e.price.label,
        },
        "extra": dict(e.extra),
        "theory": None
        if e.theory is None
        else {
            "model": e.theory.model or None,
            "wait_mean_ms": e.theory.wait_mean_s * MS if e.theory.applies else None,
            "reason": e.theory.reason or None,
        },
    }
