"""The only place that writes result files: every write is atomic (temp file + rename)."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from capsim.errors import atomic_write_bytes, atomic_write_text  # noqa: E402


def _json_default(o: Any) -> Any:
    if hasattr(o, "item"):
        return o.item()
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _finite(o: Any) -> Any:
    """Standard JSON has no NaN or infinity: they become null (an unstable run's p99 is
    reported as null, its verdict says why)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {k: _finite(v) for k, v in o.items()}
    if isinstance(o, list | tuple):
        return [_finite(v) for v in o]
    if hasattr(o, "item") and getattr(o, "ndim", 1) == 0:  # numpy scalar
        return _finite(o.item())
    if hasattr(o, "tolist"):
        return _finite(o.tolist())
    return o


def to_json(data: Any) -> str:
    """Indented standard JSON (NaN and infinities as null)."""
    return json.dumps(_finite(data), indent=2, default=_json_default, allow_nan=False) + "\n"


def write_json(path: Path, data: Any) -> Path:
    atomic_write_text(path, to_json(data))
    return path


def write_csv(path: Path, frame: pd.DataFrame) -> Path:
    atomic_write_text(path, frame.to_csv(index=False))
    return path


def write_figure(path: Path, draw: Callable[[Any], Any], *, size=(7, 4.5)) -> Path:
    """Draw with ``draw(ax)`` on a new figure and save it as PNG, atomically."""
    return write_panels(path, [draw], size=size, dpi=120)


def write_plan(out: Path, result) -> list[Path]:
    """plan.json, plan.csv (every simulated configuration) and two plots."""
    from capsim.report.plots import plot_cost_vs_p99, plot_latency_cdf
    from capsim.report.text import plan_dict, plan_frame

    out.mkdir(parents=True, exist_ok=True)
    finalists = [r.best for r in result.feasible[:5]]
    paths = [
        write_json(out / "plan.json", plan_dict(result)),
        write_csv(out / "plan.csv", plan_frame(result)),
        write_figure(out / "latency_cdf.png", lambda ax: plot_latency_cdf(ax, finalists)),
        write_figure(out / "cost_vs_p99.png", lambda ax: plot_cost_vs_p99(ax, result)),
    ]
    if getattr(result, "autoscaled", None) is not None:
        from capsim.report.whatif import write_autoscaled

        paths += write_autoscaled(out, result.autoscaled)
    return paths


def write_evaluation(out: Path, ev) -> list[Path]:
    from capsim.report.plots import plot_latency_cdf
    from capsim.report.text import evaluation_dict

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


def write_panels(
    path: Path,
    draws: list[Callable[[Any], Any]],
    *,
    title: str = "",
    size: tuple[float, float] | None = None,
    dpi: int = 110,
) -> Path:
    """Stacked panels sharing the x axis, one ``draw(ax)`` each; saved as PNG, atomically."""
    size = size or (8, 2.4 * len(draws))
    fig, axes = plt.subplots(len(draws), 1, figsize=size, sharex=True, squeeze=False)
    try:
        for ax, draw in zip(axes[:, 0], draws, strict=True):
            draw(ax)
        if title:
            fig.suptitle(title, fontsize=9)
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return path
