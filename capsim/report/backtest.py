"""Backtest results: the side-by-side table, the CSV/JSON files and one plot per metric.

>>> from capsim.bench.backtest import Row
>>> fmt_value("ttft", 0.1234)
'123.4 ms'
>>> fmt_value("throughput_rps", 12.0)
'12 req/s'
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import pandas as pd
from matplotlib.axes import Axes

from capsim.bench.backtest import Backtest
from capsim.report.output import write_csv, write_figure, write_json

UNITS = {"throughput_rps": "req/s", "output_tokens_per_s": "tok/s"}


def _plot_one(df: pd.DataFrame, metric: str, stat: str, ax) -> None:
    plot_metric(ax, df, metric, stat)


def fmt_value(metric: str, x: float) -> str:
    """A value with its unit: rates as they are, latencies in ms."""
    if not math.isfinite(x):
        return "inf"
    if metric in UNITS:
        return f"{x:.4g} {UNITS[metric]}"
    return f"{x * 1000:.4g} ms"


def frame(results: list[Backtest]) -> pd.DataFrame:
    """One row per (run, metric, statistic): measured, predicted, relative error, and the
    prediction's std across replications where the replay reports one (finite runs)."""
    rows = []
    for bt in results:
        for r in bt.rows:
            rows.append(
                {
                    "run": bt.label,
                    "format": bt.run.source.format,
                    "config": bt.config.label(),
                    "load_kind": bt.load_kind,
                    "load": bt.load,
                    "metric": r.metric,
                    "stat": r.stat,
                    "measured": r.measured,
                    "predicted": r.predicted,
                    "rel_error": r.rel_error,
                    "predicted_std": r.spread,
                }
            )
    return pd.DataFrame(rows)


def table_lines(bt: Backtest) -> list[str]:
    """The side-by-side table of one run."""
    load = (
        f"{bt.load_kind} {bt.load:g}" if bt.load_kind in ("rate", "concurrency") else bt.load_kind
    )
    out = [f"{bt.label}  ({bt.config.label()}, {load})"]
    out.append(f"  {'metric':<22}{'measured':>14}{'predicted':>14}{'error':>9}")
    for r in bt.rows:
        name = r.metric if r.stat == "value" else f"{r.metric} {r.stat}"
        err = f"{r.rel_error:+.1%}" if math.isfinite(r.rel_error) else "n/a"
        sd = ""
        if r.spread is not None and r.predicted:
            sd = f"  (std {r.spread / abs(r.predicted):.1%} across replications)"
        out.append(
            f"  {name:<22}{fmt_value(r.metric, r.measured):>14}"
            f"{fmt_value(r.metric, r.predicted):>14}{err:>9}{sd}"
        )
    for a in bt.assumptions:
        out.append(f"  assumed: {a}")
    if bt.unstable:
        out.append(f"  capsim: {bt.unstable}")
    return out


def error_summary(df: pd.DataFrame) -> dict[str, float]:
    """Median and largest absolute relative error over all compared rows."""
    e = df["rel_error"].abs().dropna()
    if e.empty:
        return {"median_abs_error": math.nan, "max_abs_error": math.nan, "rows": 0}
    return {"median_abs_error": float(e.median()), "max_abs_error": float(e.max()), "rows": len(e)}


def plot_metric(ax: Axes, df: pd.DataFrame, metric: str, stat: str) -> Axes:
    """Measured and predicted ``metric`` ``stat`` against the offered load, one series per
    config and load kind."""
    sub = df[(df["metric"] == metric) & (df["stat"] == stat)].sort_values("load")
    for (cfg, kind), g in sub.groupby(["config", "load_kind"]):
        ax.plot(g["load"], g["measured"], "o-", label=f"measured ({cfg})")
        ax.plot(g["load"], g["predicted"], "s--", label=f"capsim ({cfg})")
        ax.set_xlabel("request rate (req/s)" if kind == "rate" else "concurrency (clients)")
    unit = UNITS.get(metric, "s")
    ax.set_ylabel(f"{metric} {stat} ({unit})" if stat != "value" else f"{metric} ({unit})")
    ax.set_title(f"{metric} {stat}: measured vs capsim", fontsize=9)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    return ax


def plot_steps(ax: Axes, df: pd.DataFrame) -> Axes:
    """Predicted against measured engine-step times (log-log), one series per phase and run."""
    for (run, metric), g in df.groupby(["run", "metric"]):
        ax.loglog(g["measured"] * 1e3, g["predicted"] * 1e3, "o", label=f"{metric} ({run})")
    lo = float(min(df["measured"].min(), df["predicted"].min())) * 1e3
    hi = float(max(df["measured"].max(), df["predicted"].max())) * 1e3
    ax.plot([lo, hi], [lo, hi], "k:", lw=1, label="predicted = measured")
    ax.set_xlabel("measured step time (ms)")
    ax.set_ylabel("capsim step time (ms)")
    ax.legend(fontsize=6)
    ax.grid(alpha=0.3, which="both")
    return ax


def write_backtest(out: Path, results: list[Backtest]) -> list[Path]:
    """backtest.csv, backtest.json and one PNG per compared metric under ``out``."""
    df = frame(results)
    paths = [write_csv(out / "backtest.csv", df)]
    data = {
        "summary": error_summary(df),
        "runs": [
            {
                "run": bt.label,
                "config": bt.config.label(),
                "load_kind": bt.load_kind,
                "load": bt.load,
                "assumptions": bt.assumptions,
                "unstable": bt.unstable,
                "rows": [{**r.__dict__, "rel_error": r.rel_error} for r in bt.rows],  # fmt: skip
            }
            for bt in results
        ],
    }
    paths.append(write_json(out / "backtest.json", data))
    steps = df[df["metric"].str.endswith("_step")] if len(df) else df
    if len(steps):
        paths.append(write_figure(out / "backtest_steps.png", lambda ax: plot_steps(ax, steps)))
    rest = df[~df["metric"].str.endswith("_step")] if len(df) else df
    for (metric, stat), _ in rest.groupby(["metric", "stat"], sort=True):
        name = f"backtest_{metric}" + ("" if stat == "value" else f"_{stat}") + ".png"
        paths.append(write_figure(out / name, functools.partial(_plot_one, df, metric, stat)))
    return paths
