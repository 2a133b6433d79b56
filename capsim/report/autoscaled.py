"""The autoscaled plan (``plan`` with ``autoscaling:``) as text, a table and a JSON-ready dict."""

from __future__ import annotations

from typing import Any

from capsim.planning.autoscaled import knobs
from capsim.report.tables import MS, _table
from capsim.report.whatif import _capacity_head, _metric_name, capacity_line, q_text


# --------------------------------------------------------------------------- plan (autoscaled)
def autoscaled_frame(ap) -> Any:
    """Every autoscaled trial of the plan, one row each."""
    import pandas as pd

    rows = []
    pct = None
    for c in ap.candidates:
        for t in c.trials:
            r = t.result
            pct = r.percentile
            q = r.q()
            name = f"p{pct:g}{_metric_name(r.primary).replace(' ', '_')}"
            rows.append(
                {
                    "gpu": c.gpu,
                    "precision": c.precision,
                    "tp": c.tp,
                    "policy": t.spec.kind,
                    "settings": knobs(t.spec),
                    "meets_slo": r.meets_slo,
                    "verdict": r.verdict,
                    f"{name}_ms": q.mean * MS,
                    f"{name}_ci_high_ms": q.high * MS,
                    "attainment": r.ci("attainment").mean,
                    "cost_usd": t.cost,
                    "provisioning_cost_usd": r.ci("provisioning_cost_usd").mean,
                    "idle_cost_usd": r.ci("idle_cost_usd").mean,
                    "replicas_avg": r.ci("replicas_avg").mean,
                    "baseline_replicas": c.peak_replicas,
                    "baseline_usd": c.baseline_usd,
                    "replications": len(r.runs),
                    "chosen": c.best is t,
                }
            )
    return pd.DataFrame(rows)


def autoscaled_dict(ap) -> dict[str, Any]:
    def cand(c) -> dict[str, Any]:
        d: dict[str, Any] = {
            "gpu": c.gpu,
            "precision": c.precision,
            "tp": c.tp,
            "baseline": {
                "replicas": c.peak_replicas,
                "usd": c.baseline_usd,
                "usd_per_hour": c.baseline_usd_per_hour,
                "utilisation": c.baseline_utilisation,
            },
            "status": c.reason,
            "trials": len(c.trials),
        }
        if c.best is not None:
            r = c.best.result
            d["best"] = {
                "spec": c.best.spec.model_dump(mode="json", exclude_none=True),
                "settings": knobs(c.best.spec),
                "latency_ms": {m: r.q(metric=m).to_dict(MS) for m in r.targets},
                "scalars": {k: r.ci(k).to_dict() for k in r.runs[0].scalars},
                "saving_usd": c.saving_usd,
                "saving_share": c.saving_share,
            }
        return d

    rec = ap.recommendation
    return {
        "policy": ap.kind,
        "horizon_s": ap.horizon_s,
        "replications": ap.replications,
        "screen_compression": ap.screen_compression,
        "candidates": [cand(c) for c in ap.candidates],
        "recommendation": cand(rec) if rec else None,
        "notes": ap.notes,
    }


def format_autoscaled(ap, scenario) -> str:
    """The autoscaled section of ``capsim plan``: tuned policy vs the fixed peak fleet."""
    pct = scenario.slo.percentile
    h = ap.horizon_s / 3600
    screen = (
        f"settings screened on days compressed {ap.screen_compression:g}x, the cheapest "
        "confirmed over "
        if ap.screen_compression > 1
        else ""
    )
    lines = [
        f"Autoscaled ({ap.kind}, tuned per candidate; {screen}{h:g} h in real time, "
        f"{ap.replications} replications, cold starts billed):",
    ]
    rows = []
    for c in ap.candidates:
        if c.best is None:
            rows.append(
                [
                    c.label(),
                    f"{c.peak_replicas} x ${c.baseline_usd_per_hour:.2f}/h = ${c.baseline_usd:.2f}",
                    "-",
                    c.reason,
                    "",
                    "",
                    "",
                    "",
                    "",
                ]
            )
            continue
        r = c.best.result
        rows.append(
            [
                c.label(),
                f"{c.peak_replicas} replicas ${c.baseline_usd:.2f}",
                knobs(c.best.spec),
                q_text(r),
                f"{r.ci('replicas_avg').mean:.1f}",
                f"${c.best.cost:.2f}",
                f"${r.ci('provisioning_cost_usd').mean:.2f} / ${r.ci('idle_cost_usd').mean:.2f}",
                f"${c.saving_usd:.2f} ({c.saving_share:.0%})" if c.saving_usd > 0 else "none",
                str(len(c.trials)),
            ]
        )
    lines.append(
        _table(
            rows,
            [
                "config",
                f"fixed for peak ({h:g} h)",
                "tuned policy",
                f"p{pct:g} ms [95% CI]",
                "avg repl",
                "cost",
                "cold start / idle",
                "saving",
                "trials",
            ],
        )
    )
    rec = ap.recommendation
    if rec is not None:
        lines.append(
            f"Autoscaled recommendation: {rec.label()} with {ap.kind} {knobs(rec.best.spec)}: "
            f"${rec.best.cost:.2f} per {h:g} h vs ${rec.baseline_usd:.2f} for "
            f"{rec.peak_replicas} fixed replicas (saving {rec.saving_share:.0%})"
        )
    tuned = rec if rec is not None else next((c for c in ap.candidates if c.best), None)
    if tuned is not None and scenario.capacity is not None:
        which = "the recommendation" if rec is not None else "the first tuned candidate"
        lines.append(f"{_capacity_head(scenario.capacity)}; {which}:")
        lines.append(capacity_line(tuned.label(), tuned.best.result.ci))
    for n in ap.notes:
        lines.append(f"note: {n}")
    return "\n".join(lines)
