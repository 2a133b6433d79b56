"""A sweep's table, frames, Pareto plots and files (plot functions draw on the ``ax`` given)."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any

import pandas as pd
from matplotlib.axes import Axes

from capsim.planning.sweep import MONTH, SweepResult, pareto_mask
from capsim.report.output import write_csv, write_figure, write_json


def _fmt(v: Any) -> str:
    return str(v) if not isinstance(v, float) else f"{v:g}"


def sweep_frame(r: SweepResult) -> pd.DataFrame:
    """One row per variant: its settings and its recommendation."""
    rows = []
    for v in r.variants:
        row: dict[str, Any] = {p: _fmt(v.values.get(p)) for p in r.paths}
        lo, hi = v.p99_ci_ms or (None, None)
        row.update(
            recommendation=v.recommendation,
            gpus=v.gpus,
            usd_per_hour=v.usd_per_hour,
            slo_metric=v.metric,
            p_ms=v.p99_ms,
            p_ci_low_ms=lo,
            p_ci_high_ms=hi,
            feasible_configs=len(v.points),
        )
        rows.append(row)
    return pd.DataFrame(rows)


def points_frame(r: SweepResult) -> pd.DataFrame:
    """Every feasible configuration of every variant, with its place on the frontiers."""
    rows = []
    for v in r.variants:
        for p in v.points:
            row: dict[str, Any] = {k: _fmt(v.values.get(k)) for k in r.paths}
            row.update(
                config=p.label,
                gpus=p.gpus,
                usd_per_hour=p.usd_per_hour,
                slo_metric=p.metric,
                p_ms=p.p99_ms,
                p_ci_high_ms=p.p99_high_ms,
                chosen=p.chosen,
                tokens_per_s_per_gpu=p.tokens_per_s_per_gpu,
                tokens_per_s_per_user=p.tokens_per_s_per_user,
            )
            rows.append(row)
    df = pd.DataFrame(rows)
    if len(df):
        df["pareto_cost_p99"] = pareto_mask(df["usd_per_hour"], df["p_ms"])
        if r.is_llm and df["tokens_per_s_per_user"].notna().all():
            df["pareto_tokens"] = pareto_mask(
                -df["tokens_per_s_per_gpu"], -df["tokens_per_s_per_user"]
            )
    return df


def _scatter(ax: Axes, df: pd.DataFrame, x: str, y: str, front: str) -> None:
    on = df[df[front]].sort_values(x)
    ax.scatter(df[x], df[y], s=14, color="0.6", label="feasible configurations")
    ax.plot(on[x], on[y], "o-", color="C3", ms=5, label="Pareto frontier")
    for _, row in on.iterrows():
        ax.annotate(
            row["config"], (row[x], row[y]), fontsize=6, xytext=(3, 3), textcoords="offset points"
        )


def plot_pareto_cost(ax: Axes, df: pd.DataFrame) -> Axes:
    """$ per hour against p99 over every variant; the frontier joined in red."""
    if len(df):
        _scatter(ax, df, "p_ms", "usd_per_hour", "pareto_cost_p99")
        ax.set_xlabel(f"{df['slo_metric'].iloc[0]} (ms)")
        ax.legend(fontsize=7)
    ax.set_ylabel("$ per hour")
    ax.set_title("cost vs p99 (lower left is better)", fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def plot_pareto_tokens(ax: Axes, df: pd.DataFrame) -> Axes:
    """Output tokens/s per GPU against tokens/s per user (upper right is better)."""
    if len(df) and "pareto_tokens" in df:
        _scatter(ax, df, "tokens_per_s_per_user", "tokens_per_s_per_gpu", "pareto_tokens")
        ax.legend(fontsize=7)
    ax.set_xlabel("output tokens/s per user (1 / median TPOT)")
    ax.set_ylabel("output tokens/s per GPU")
    ax.set_title("throughput vs interactivity (upper right is better)", fontsize=9)
    ax.grid(alpha=0.3)
    return ax


def format_sweep(r: SweepResult) -> str:
    """The variants table, then the growth forecast when there is one."""
    df = sweep_frame(r)
    lines = [f"capsim sweep: {r.scenario} — {len(r.variants)} variants"]
    cols = [*r.paths, "recommendation", "gpus", "usd_per_hour", "slo_metric", "p_ms"]
    lines.append(df[cols].to_string(index=False, float_format=lambda x: f"{x:.2f}"))
    if r.forecast:
        lines.append("")
        lines.append(f"Growth forecast ({r.growth:.0%}/month): cheapest fleet per month")
        for f in r.forecast:
            if f["fleet"] is None:
                lines.append(
                    f"  month {f['month']:>2} x{f['traffic_factor']:.2f}: no feasible fleet"
                )
                continue
            add = f["added_gpus"]
            more = f" (+{add} GPU{'s' if add > 1 else ''} needed)" if add and add > 0 else ""
            lines.append(
                f"  month {f['month']:>2} x{f['traffic_factor']:.2f}: {f['fleet']}, "
                f"{f['gpus']} GPUs, ${f['usd_per_hour']:.2f}/h{more}"
            )
    return "\n".join(lines)


def sweep_dict(r: SweepResult) -> dict[str, Any]:
    return {
        "scenario": r.scenario,
        "varied": r.paths,
        "variants": sweep_frame(r).to_dict(orient="records"),
        "growth_per_month": r.growth,
        "forecast": r.forecast,
    }


def _write_parquet(path: Path, df: pd.DataFrame) -> Path | None:
    """Parquet when pyarrow is importable (atomic), else None."""
    try:
        import pyarrow  # noqa: F401  (optional)
    except ImportError:
        return None
    buf = io.BytesIO()
    df.astype({c: str for c in df.columns if df[c].dtype == object}).to_parquet(buf, index=False)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(buf.getvalue())
    os.replace(tmp, path)
    return path


def write_sweep(out: Path, r: SweepResult) -> list[Path]:
    """sweep.json, sweep.csv, points.csv (+ .parquet with pyarrow), Pareto plot(s), forecast."""
    out.mkdir(parents=True, exist_ok=True)
    df, pts = sweep_frame(r), points_frame(r)
    paths = [
        write_json(out / "sweep.json", sweep_dict(r)),
        write_csv(out / "sweep.csv", df),
        write_csv(out / "points.csv", pts),
        write_figure(out / "pareto_cost_p99.png", lambda ax: plot_pareto_cost(ax, pts)),
    ]
    if r.is_llm:
        paths.append(
            write_figure(out / "pareto_tokens.png", lambda ax: plot_pareto_tokens(ax, pts))
        )
    if r.forecast:
        paths.append(write_csv(out / "forecast.csv", pd.DataFrame(r.forecast)))
    for name, frame in (("sweep.parquet", df), ("points.parquet", pts)):
        p = _write_parquet(out / name, frame)
        if p is not None:
            paths.append(p)
    return paths


__all__ = ["MONTH", "format_sweep", "sweep_dict", "write_sweep", "plot_pareto_cost"]
