"""Atomic writers: JSON (finite numbers only), CSV and PNG figures."""

from __future__ import annotations

import io
import json
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

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
