"""The only place that writes result files: every write is atomic (temp file + rename)."""

from __future__ import annotations

import re
from functools import partial
from pathlib import Path

import matplotlib
import pandas as pd  # noqa: E402

from capsim.errors import atomic_write_text
from capsim.planning.whatif import WhatIfResult
from capsim.report.autoscaled import autoscaled_frame
from capsim.report.disagg import disagg_eval_dict
from capsim.report.html import plan_html
from capsim.report.output import write_csv, write_figure, write_json, write_panels
from capsim.report.plots import plot_cost_vs_p99, plot_latency_cdf
from capsim.report.text import evaluation_dict, format_plan, plan_dict, plan_frame
from capsim.report.whatif import (
    _describe,
    plot_cdfs,
    plot_load,
    plot_replicas,
    plot_window_p,
    whatif_dict,
)

matplotlib.use("Agg")


def write_plan(out: Path, result) -> list[Path]:
    """plan.json, plan.csv (every simulated configuration), the plots, and report.html (all of
    it on one self-contained page)."""
    out.mkdir(parents=True, exist_ok=True)
    finalists = [r.best for r in result.feasible[:5]]
    paths = [
        write_json(out / "plan.json", plan_dict(result)),
        write_csv(out / "plan.csv", plan_frame(result)),
        write_figure(out / "latency_cdf.png", lambda ax: plot_latency_cdf(ax, finalists)),
        write_figure(out / "cost_vs_p99.png", lambda ax: plot_cost_vs_p99(ax, result)),
    ]
    if getattr(result, "autoscaled", None) is not None:
        paths += write_autoscaled(out, result.autoscaled)
    images = [(p.stem.replace("_", " "), p.read_bytes()) for p in paths if p.suffix == ".png"]
    page = plan_html(plan_dict(result), format_plan(result), images)
    atomic_write_text(out / "report.html", page)
    return [*paths, out / "report.html"]


def write_evaluation(out: Path, ev) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    samples = pd.DataFrame({k: pd.Series(v) for k, v in ev.summary.samples.items()})
    paths = [
        write_json(out / "simulate.json", evaluation_dict(ev)),
        write_csv(out / "latency_samples.csv", samples),
        write_figure(out / "latency_cdf.png", lambda ax: plot_latency_cdf(ax, [ev])),
    ]
    series = getattr(ev.summary, "timeseries", None)
    if series:  # e.g. LLM runs: KV-cache utilisation over time (mean over replications)
        paths.append(write_csv(out / "timeseries.csv", pd.DataFrame(series)))
    return paths


def write_disagg_eval(out: Path, ev) -> list[Path]:
    """``capsim simulate --decode-replicas --out``: the JSON and the fleet-level samples."""
    out.mkdir(parents=True, exist_ok=True)
    samples = pd.DataFrame({k: pd.Series(v) for k, v in ev.summary.samples.items()})
    return [
        write_json(out / "simulate.json", disagg_eval_dict(ev)),
        write_csv(out / "latency_samples.csv", samples),
    ]


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("_") or "policy"


def unique_slugs(names: list[str]) -> list[str]:
    """File-name stems for ``names``, never two alike (case-insensitively, for macOS and
    Windows file systems): a repeat gets ``-2``, ``-3``, ...

    >>> unique_slugs(["hpa a", "hpa/a", "HPA_A", "kpa"])
    ['hpa_a', 'hpa_a-2', 'HPA_A-3', 'kpa']
    """
    seen: set[str] = set()
    out = []
    for name in names:
        base = slug = _slug(name)
        n = 1
        while slug.lower() in seen:
            n += 1
            slug = f"{base}-{n}"
        seen.add(slug.lower())
        out.append(slug)
    return out


def write_whatif(out: Path, r: WhatIfResult) -> list[Path]:
    """whatif.json, whatif.csv, hourly_attainment.csv, per policy a timeline CSV and PNG, and
    latency_cdf.png — every write atomic."""
    out.mkdir(parents=True, exist_ok=True)
    metrics = list(r.policies[0].targets)
    paths = [
        write_json(out / "whatif.json", whatif_dict(r)),
        write_csv(out / "whatif.csv", r.frame()),
        write_csv(out / "hourly_attainment.csv", r.hourly_frame()),
    ]
    for m in metrics:
        name = "latency_cdf.png" if len(metrics) == 1 else f"latency_cdf_{m}.png"
        paths.append(write_figure(out / name, partial(plot_cdfs, r=r, metric=m)))
    for p, slug in zip(r.policies, unique_slugs([p.name for p in r.policies]), strict=True):
        paths.append(write_csv(out / f"timeline_{slug}.csv", p.timeline))
        paths.append(
            write_panels(
                out / f"timeline_{slug}.png",
                [
                    partial(plot_load, p=p),
                    partial(plot_replicas, p=p),
                    partial(plot_window_p, p=p),
                ],
                title=f"{p.name}: {_describe(p)}",
            )
        )
    return paths


def write_autoscaled(out: Path, ap) -> list[Path]:
    """autoscaled.csv (every trial) and the recommended policy's timeline."""
    paths = [write_csv(out / "autoscaled.csv", autoscaled_frame(ap))]
    rec = ap.recommendation
    if rec is not None:
        p = rec.best.result
        paths.append(
            write_panels(
                out / "autoscaled_timeline.png",
                [
                    lambda ax: plot_load(ax, p),
                    lambda ax: plot_replicas(ax, p),
                    lambda ax: plot_window_p(ax, p),
                ],
                title=f"{rec.label()}: {_describe(p)}",
            )
        )
    return paths
