"""What-if results as text, JSON-ready dicts, and plots (each plot draws on an ``ax`` given)."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from matplotlib.axes import Axes

from capsim.analysis.stats import CI
from capsim.planning.whatif import PolicyResult, WhatIfResult
from capsim.planning.whatif_disagg import POOLS, pool_spec
from capsim.report.tables import MS, _ms, _table


def _saving(p: PolicyResult) -> CI:
    """The saving of a policy compared with the baseline (only those have one)."""
    assert p.saving is not None
    return p.saving


def _share(x: float | None) -> str:
    return "n/a" if x is None or not math.isfinite(x) else f"{x:.0%}"


def _pct(x: float) -> str:
    return "n/a" if not math.isfinite(x) else f"{x:.2%}"


def _ci_ms(c) -> str:
    return f"{_ms(c.mean)} [{_ms(c.low)}, {_ms(c.high)}]"


def _metric_name(m: str) -> str:
    """How a metric is named in a column: fixed-shape latency needs no name."""
    return "" if m == "latency" else f" {m}"


def slo_text(targets: dict[str, float], pct: float) -> str:
    """``p99 <= 150 ms`` or ``p99 ttft <= 2000 ms, tpot <= 100 ms``."""
    parts = [f"{m + ' ' if m != 'latency' else ''}<= {t * MS:g} ms" for m, t in targets.items()]
    return f"p{pct:g} " + ", ".join(parts)


def q_text(p: PolicyResult) -> str:
    """The SLO percentile with its CI: one metric, or each metric by name."""
    if len(p.targets) == 1:
        return _ci_ms(p.q())
    return "; ".join(f"{m} {_ci_ms(p.q(metric=m))}" for m in p.targets)


def _describe(p: PolicyResult) -> str:
    if p.serving == "disaggregated":
        return _describe_pools(p)
    return _describe_spec(p.spec, p.fixed_replicas)


def _describe_pools(p: PolicyResult) -> str:
    """Each pool's policy and its mean (peak) replicas, and the KV transfer's p99."""
    parts = []
    for i, pool in enumerate(POOLS):
        n = p.pools[i] if p.pools else None
        avg = p.ci(f"{pool}_replicas_avg").mean
        top = max(r.scalars[f"{pool}_replicas_peak"] for r in p.runs)
        parts.append(
            f"{pool}: {_describe_spec(pool_spec(p.spec, pool), n)} (avg {avg:.1f}, peak {top:.0f})"
        )
    kv = p.ci("kv_transfer_p99_ms").mean
    return "; ".join(parts) + f"; KV transfer p99 {kv:.1f} ms"


def _describe_spec(sp, peak_replicas: int | None) -> str:
    k = sp.kind
    if k == "fixed":
        n = peak_replicas if sp.replicas == "peak" else sp.replicas
        return f"fixed {n} replicas" + (" (sized for the peak)" if sp.replicas == "peak" else "")
    if k == "hpa":
        unit = "%" if sp.metric == "utilization" else ""
        return (
            f"HPA {sp.metric} target {sp.target:g}{unit}, {sp.min_replicas}-"
            f"{sp.max_replicas or 'max'} replicas, down-stabilization "
            f"{sp.scale_down.stabilization_window_s:g}s"
        )
    if k == "kpa":
        return (
            f"KPA {sp.metric} target {sp.target:g} x {sp.target_utilization_percentage:g}%, "
            f"{sp.min_replicas}-{sp.max_replicas or 'max'} replicas, stable window "
            f"{sp.stable_window_s:g}s"
        )
    if k == "scheduled":
        return "scheduled " + ", ".join(f"{e.hour:g}h:{e.replicas}" for e in sp.schedule)
    if k == "predictive":
        return (
            f"predictive {sp.target_rps_per_replica:g} req/s per replica, "
            f"{sp.min_replicas}-{sp.max_replicas or 'max'} replicas"
        )
    return k


def format_whatif(r: WhatIfResult) -> str:
    s = r.scenario
    pct = s.slo.percentile
    targets = r.policies[0].targets
    tp = (f" tp{r.tp}" if r.tp > 1 else "") + (f" ep{r.ep}" if r.ep > 1 else "")
    lines = [
        f"capsim whatif: {s.name} on {r.gpu} {r.precision}{tp} (${r.price_usd_per_gpu_hour:g}/GPU-h); "
        f"SLO {slo_text(targets, pct)}; {r.horizon_s / 3600:g} h in real time, "
        f"{r.replications} replications, same traffic for every policy",
        *r.notes,
        "",
    ]
    rows = []
    for p in r.policies:
        sav = ""
        if p.saving is not None:
            sav = (
                f"{p.saving.mean:+.2f} ({p.saving_share:+.0%})"
                if p.saving_share is not None
                else ""
            )
        rows.append(
            [
                p.name,
                "yes" if p.meets_slo else "NO",
                _pct(p.ci("attainment").mean),
                _pct(p.ci("worst_hour_attainment").mean),
                *[_ci_ms(p.q(metric=m)) for m in targets],
                f"{p.ci('violation_s').mean / 60:.0f}",
                f"{p.ci('rejected').mean:.0f}",
                f"{p.ci('gpu_hours').mean:.1f}",
                f"{p.ci('cost_usd').mean:.2f}",
                sav,
                f"{p.ci('replicas_avg').mean:.1f}/{max(x.scalars['replicas_peak'] for x in p.runs):.0f}",
                f"{p.ci('idle_share').mean:.0%}",
            ]
        )
    lines.append(
        _table(
            rows,
            [
                "policy",
                "SLO",
                "attain",
                "worst h",
                *[f"p{pct:g}{_metric_name(m)} ms [95% CI]" for m in targets],
                "viol min",
                "rejected",
                "GPU-h",
                "cost $",
                f"saving $ vs {r.baseline}" if r.baseline else "saving $",
                "avg/peak",
                "idle",
            ],
        )
    )
    lines.append("")
    lines.append(
        "attain: requests within the target over the horizon (worst h: the worst hour); viol "
        f"min: minutes in {r.window_s / 60:g}-min windows whose p{pct:g} exceeds a target; "
        "cost: GPU time billed from request to release; idle: billed time not busy "
        "(warm idle + provisioning)."
    )
    lines.append("")
    for p in r.policies:
        extra = (
            f"  {p.name}: {_describe(p)}; {p.ci('cold_starts').mean:.0f} cold starts, "
            f"provisioning ${p.ci('provisioning_cost_usd').mean:.2f}, warm idle "
            f"${p.ci('idle_cost_usd').mean:.2f}; energy {p.ci('energy_kwh').mean:.1f} kWh; "
            f"{p.verdict}"
        )
        lines.append(extra)
    lines += capacity_lines(r)
    base = r.baseline
    winners = [p for p in r.policies if p.meets_slo and p.name != base and p.saving is not None]
    if base and winners:
        best = max(winners, key=lambda p: _saving(p).mean)
        saving = _saving(best)
        lines.append("")
        lines.append(
            f"Cheapest policy meeting the SLO over the horizon: {best.name}, saving "
            f"${saving.mean:.2f} [{saving.low:.2f}, {saving.high:.2f}] "
            f"({_share(best.saving_share)}) against {base}."
        )
        if best.ci("violation_s").mean > 0:
            clean = [p for p in winners if p.ci("violation_s").mean == 0]
            note = (
                f"  It spends {best.ci('violation_s').mean / 60:.0f} min in windows over the "
                f"target (worst hour {best.ci('worst_hour_attainment').mean:.2%} within it)"
            )
            if clean:
                c = max(clean, key=lambda p: _saving(p).mean)
                note += (
                    f"; the cheapest with no such window is {c.name}, saving "
                    f"${_saving(c).mean:.2f} ({_share(c.saving_share)})"
                )
            lines.append(note + ".")
    return "\n".join(lines)


def _finite(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def whatif_dict(r: WhatIfResult) -> dict[str, Any]:
    s = r.scenario
    pct = s.slo.percentile
    out: dict[str, Any] = {
        "scenario": s.name,
        "config": {
            "gpu": r.gpu,
            "precision": r.precision,
            "tp": r.tp,
            **({"ep": r.ep} if r.ep > 1 else {}),
        },
        "price_usd_per_gpu_hour": r.price_usd_per_gpu_hour,
        "slo": s.slo.model_dump(),
        "horizon_s": r.horizon_s,
        "window_s": r.window_s,
        "replications": r.replications,
        "baseline": r.baseline,
        "notes": r.notes,
        "policies": [],
    }
    for p in r.policies:
        d: dict[str, Any] = {
            "name": p.name,
            "spec": p.spec.model_dump(mode="json", exclude_none=True),
            "description": _describe(p),
            "meets_slo": p.meets_slo,
            "verdict": p.verdict,
            f"p{pct:g}_ms": {m: p.q(metric=m).to_dict(MS) for m in p.targets},
            "percentiles_ms": {
                m: {f"p{q:g}": p.q(q, m).to_dict(MS) for q in sorted(p.runs[0].quantiles[m])}
                for m in p.targets
            },
            "binding_metric": p.primary,
            "hourly_attainment": [_finite(x) for x in p.hourly_attainment],
            "scalars": {k: p.ci(k).to_dict() for k in p.runs[0].scalars},
            "saving_usd": p.saving.to_dict() if p.saving else None,
            "saving_share": p.saving_share,
        }
        if p.fixed_replicas is not None:
            d["fixed_replicas"] = p.fixed_replicas
        if p.serving == "disaggregated":
            d["serving"] = p.serving
            if p.pools is not None:
                d["fixed_pools"] = {"prefill": p.pools[0], "decode": p.pools[1]}
        if p.unstable:
            d["unstable_reason"] = p.unstable_reason
        out["policies"].append(d)
    return out


# --------------------------------------------------------------------------- plots
def plot_load(ax: Axes, p: PolicyResult) -> Axes:
    tl = p.timeline
    h = tl["t_s"] / 3600
    ax.step(h, tl["offered_rps"], where="post", color="k", lw=1, label="offered load")
    ax.set_ylabel("req/s")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_replicas(ax: Axes, p: PolicyResult) -> Axes:
    """Replicas by state (time-average per window), stacked, with busy replicas on top."""
    tl = p.timeline
    h = tl["t_s"] / 3600
    ax.stackplot(
        h,
        tl["ready"],
        tl["draining"],
        tl["provisioning"],
        labels=["ready", "draining", "provisioning"],
        colors=["tab:green", "tab:orange", "tab:red"],
        alpha=0.6,
        step="post",
    )
    ax.step(h, tl["busy"], where="post", color="k", lw=0.8, label="busy")
    ax.set_ylabel("replicas")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", ncol=4)
    return ax


def plot_window_p(ax: Axes, p: PolicyResult) -> Axes:
    """The SLO percentile per window of each metric, with its target (dashed, same colour)."""
    tl = p.timeline
    h = tl["t_s"] / 3600
    pct = f"p{p.percentile:g}"
    colors = ["tab:blue", "tab:purple", "tab:brown"]
    for (m, target), color in zip(p.targets.items(), colors, strict=False):
        label = pct + _metric_name(m)
        ax.step(h, tl[f"{pct}_{m}_s"] * MS, where="post", color=color, lw=1, label=label)
        ax.axhline(target * MS, color=color, ls="--", lw=1, label=f"{label} target")
    ax.set_yscale("log")
    ax.set_ylabel("ms")
    ax.set_xlabel("hour")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    return ax


def plot_cdfs(ax: Axes, r: WhatIfResult, metric: str | None = None) -> Axes:
    """Latency CDF of every policy for one metric (default: the first SLO metric)."""
    m = metric or next(iter(r.policies[0].targets))
    for p in r.policies:
        x = p.samples(m)
        if len(x):
            ax.plot(x * MS, np.arange(1, len(x) + 1) / len(x), label=p.name)
    ax.axvline(r.policies[0].targets[m] * MS, color="k", ls="--", lw=1, label="target")
    ax.axhline(r.scenario.slo.percentile / 100, color="grey", ls=":", lw=1)
    ax.set_xscale("log")
    ax.set_xlabel(f"{'latency' if m == 'latency' else m} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return ax


def _capacity_head(cap) -> str:
    n = cap.base.replicas
    base = f"{n} base replica{'s' * (n > 1)} ({cap.base.tier}) + " if n else ""
    it = cap.interruptions
    how = (
        f"{it.rate_per_hour:g} interruptions per spot replica-hour"
        if it is not None and it.kind == "poisson"
        else f"{len(it.times_s)} traced interruptions"
        if it is not None
        else "no interruptions"
    )
    notice = f", {cap.notice_s:g} s notice" if it is not None else ""
    prov = f" at {cap.provider}" if cap.provider else ""
    return f"Capacity{prov}: {base}{cap.burst.replace('_', '-')} burst; {how}{notice}"


def capacity_line(name: str, ci) -> str:
    """One policy's cost by tier and what interruptions did (``ci(key)`` gives a CI)."""
    od = ci("on_demand_cost_usd").mean
    sav = ci("saving_vs_on_demand_usd").mean
    share = f" ({sav / od:.0%})" if od > 0 else ""
    return (
        f"  {name}: base ${ci('cost_base_usd').mean:.2f} + burst "
        f"${ci('cost_burst_usd').mean:.2f}; {ci('interruptions').mean:.1f} interruptions, "
        f"{ci('requeued').mean:.1f} requests re-queued; attainment "
        f"{ci('attainment').mean:.2%}; all on demand ${od:.2f}, saving ${sav:.2f}{share}"
    )


def capacity_lines(r: WhatIfResult) -> list[str]:
    """The what-if's capacity section (none without ``capacity:``): per policy, cost by tier,
    interruptions, re-queued requests, SLO attainment, and the saving against on demand."""
    cap = r.scenario.capacity
    if cap is None:
        return []
    out = ["", _capacity_head(cap) + " (means over replications):"]
    out += [capacity_line(p.name, p.ci) for p in r.policies]
    return out
