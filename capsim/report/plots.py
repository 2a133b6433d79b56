"""Plots. Every function draws on an ``ax`` it is given; saving is the caller's business."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from matplotlib.axes import Axes

from capsim.evaluate import Evaluation
from capsim.planning.static import PlanResult

MS = 1000.0


def plot_latency_cdf(
    ax: Axes, evaluations: Sequence[Evaluation], metric: str | None = None
) -> Axes:
    """Empirical latency CDFs (pooled replication samples), with the SLO target marked."""
    for e in evaluations:
        name = metric or e.primary.metric
        x = e.summary.samples.get(name)
        if x is None or len(x) == 0:
            continue
        y = np.arange(1, len(x) + 1) / len(x)
        ax.plot(x * MS, y, label=e.config.label())
    if evaluations:
        c = evaluations[0].primary
        ax.axvline(
            c.target_s * MS, color="k", ls="--", lw=1, label=f"target {c.target_s * MS:g} ms"
        )
        ax.axhline(c.percentile / 100, color="grey", ls=":", lw=1)
        ax.set_xlabel(f"{metric or c.metric} (ms)")
    ax.set_ylabel("fraction of requests")
    ax.set_xscale("log")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def plot_cost_vs_p99(ax: Axes, result: PlanResult) -> Axes:
    """Every simulated configuration: $/hour against its SLO percentile (with CI bars)."""
    for r in result.results:
        if not r.evaluations:
            continue
        xs = np.array([e.primary.ci.mean for e in r.evaluations]) * MS
        lo = np.array([e.primary.ci.low for e in r.evaluations]) * MS
        hi = np.array([e.primary.ci.high for e in r.evaluations]) * MS
        ys = np.array([e.usd_per_hour for e in r.evaluations])
        ok = np.isfinite(xs)
        if not ok.any():
            continue
        ax.errorbar(
            xs[ok],
            ys[ok],
            xerr=[xs[ok] - lo[ok], hi[ok] - xs[ok]],
            fmt="o",
            ms=3,
            capsize=2,
            label=r.candidate.label(),
        )
    if result.results:
        t = next((e.primary.target_s for r in result.results for e in r.evaluations), None)
        if t is not None:
            ax.axvline(t * MS, color="k", ls="--", lw=1, label="target")
    p = result.scenario.slo.percentile
    ax.set_xlabel(f"p{p:g} latency (ms, 95% CI)")
    ax.set_ylabel("$ per hour")
    ax.set_xscale("log")
    ax.legend(fontsize=6, ncol=2)
    ax.grid(alpha=0.3)
    return ax
