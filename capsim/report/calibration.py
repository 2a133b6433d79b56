"""``capsim calibrate compare``: measured kernel times against the spec-sheet roofline.

Rows come either from a measurements directory (every timed row) or from a catalog entry's
stored calibration tables. Per row: measured time, the roofline time capsim would use without
calibration (spec peaks x catalog efficiencies + per-kernel overhead), their ratio, achieved
FLOP/s and bytes/s, arithmetic intensity, and -- when the entry is calibrated -- what the
calibrated model predicts and from which source. :func:`plot_roofline` draws achieved FLOP/s
against intensity with the roofline on an ``ax`` (files are written by
:func:`capsim.report.files.write_figure`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from capsim.calibration.fit import _predict_row
from capsim.calibration.rows import _row_label
from capsim.service.calibrated import CalibratedTimer
from capsim.service.roofline import OpCost, roofline_op_time
from capsim.spec.catalog import GPU
from capsim.spec.precision import HARNESS_FORMATS

COLUMNS = [
    "kind",
    "op",
    "shape",
    "precision",
    "tp",
    "tokens",
    "measured_ms",
    "roofline_ms",
    "ratio",
    "achieved_tflops",
    "achieved_gb_s",
    "intensity",
    "calibrated_ms",
    "calibrated_error",
    "source",
]
#: token counts shown in the text table of stored calibration tables (all go to CSV / JSON)
SHOWN_TOKENS = (1, 8, 64, 512, 4096)


def _roofline_s(gpu: GPU | None, name: str, flops: float, nbytes: float, fmt: str) -> float:
    if gpu is None or not gpu.peak_flops(fmt):
        return float("nan")
    return roofline_op_time(gpu, OpCost(name, flops, nbytes, fmt)).time_s


def measurement_frame(rows: list[dict[str, Any]], gpu: GPU | None) -> pd.DataFrame:
    """One row per timed measurement of a harness directory."""
    out = []
    for r in rows:
        if r["kind"] in ("power_idle", "power_busy") or not r.get("median_s"):
            continue
        fmt = r["precision"]
        t = r["median_s"]
        f, b = float(r["flops"]), float(r["bytes"])
        roof = _roofline_s(gpu, r["kind"], f, b, fmt) if fmt in HARNESS_FORMATS else np.nan
        pred = _predict_row(gpu, r) if gpu is not None and gpu.calibration is not None else None
        label = _row_label(r)
        shape = label.split(" ", 2)[-1] if label.count(" ") >= 2 else ""
        if r["kind"].startswith("bandwidth"):
            shape = f"{r['buffer_bytes'] / 2**20:.0f} MiB"
        out.append(
            {
                "kind": r["kind"],
                "op": r["kind"],
                "shape": shape,
                "precision": fmt,
                "tp": 1,
                "tokens": r.get("m") or r.get("tokens") or r.get("batch"),
                "measured_ms": t * 1e3,
                "roofline_ms": roof * 1e3,
                "ratio": t / roof if roof == roof else np.nan,
                "achieved_tflops": f / t / 1e12,
                "achieved_gb_s": b / t / 1e9,
                "intensity": f / b if b else np.nan,
                "calibrated_ms": pred[0] * 1e3 if pred else np.nan,
                "calibrated_error": pred[0] / t - 1 if pred else np.nan,
                "source": pred[1] if pred else "",
            }
        )
    frame = pd.DataFrame(out, columns=COLUMNS)
    frame["tokens"] = frame["tokens"].astype("Int64")
    return frame


def table_frame(gpu: GPU) -> pd.DataFrame:
    """One row per stored point of ``gpu``'s calibration tables."""
    cal = gpu.calibration
    if cal is None:
        return pd.DataFrame(columns=COLUMNS)
    timer = CalibratedTimer(gpu)
    frames = []
    for tab in cal.tables:
        tok = np.asarray(tab.tokens, dtype=float)
        meas = np.asarray(tab.time_us, dtype=float) * 1e-6
        f, b = tab.cost(tok)
        roof = np.array(
            [
                roofline_op_time(gpu, OpCost(tab.op, fi, bi, tab.format, tab.kernels)).time_s
                for fi, bi in zip(f, b, strict=True)
            ]
        )
        tm = timer.evaluate(tab.op, f, b, tab.format, tab.kernels, tab.n, tab.k, tab.tp, tok)
        shape = f"n={tab.n} k={tab.k}" if tab.is_gemm else f"{tab.bytes_per_token:g} B/token"
        frames.append(
            pd.DataFrame(
                {
                    "kind": "gemm" if tab.is_gemm else "elementwise",
                    "op": tab.op,
                    "shape": shape,
                    "precision": tab.format,
                    "tp": tab.tp,
                    "tokens": tok.astype(int),
                    "measured_ms": meas * 1e3,
                    "roofline_ms": roof * 1e3,
                    "ratio": meas / roof,
                    "achieved_tflops": f / meas / 1e12,
                    "achieved_gb_s": b / meas / 1e9,
                    "intensity": np.where(b > 0, f / np.maximum(b, 1e-300), np.nan),
                    "calibrated_ms": tm.time_s * 1e3,
                    "calibrated_error": tm.time_s / meas - 1,
                    "source": np.array(["measured", "fitted", "roofline"])[tm.source],
                }  # fmt: skip
            )
        )
    return (
        pd.concat(frames, ignore_index=True)[COLUMNS] if frames else pd.DataFrame(columns=COLUMNS)
    )


def summary_frame(frame: pd.DataFrame) -> pd.DataFrame:
    """Per (op, precision): points, median measured / roofline ratio, its range."""
    rows = []
    for (op, prec), g in frame.groupby(["op", "precision"], sort=False):
        r = g["ratio"].dropna()
        rows.append(
            {
                "op": op,
                "precision": prec,
                "points": len(g),
                "median_ratio": float(r.median()) if len(r) else np.nan,
                "min_ratio": float(r.min()) if len(r) else np.nan,
                "max_ratio": float(r.max()) if len(r) else np.nan,
                "best_tflops": float(g["achieved_tflops"].max()),
                "best_gb_s": float(g["achieved_gb_s"].max()),
            }
        )
    return pd.DataFrame(rows)


def format_compare(frame: pd.DataFrame, title: str, *, thin: bool = False) -> str:
    """A fixed-width table (with ``thin``: only the rows at ``SHOWN_TOKENS``) and a
    per-operator summary of measured / roofline."""
    shown = frame[frame["tokens"].isin(SHOWN_TOKENS)] if thin else frame
    cols = [
        ("op", "op", "{}"),
        ("shape", "shape", "{}"),
        ("prec", "precision", "{}"),
        ("tp", "tp", "{}"),
        ("tokens", "tokens", "{}"),
        ("measured ms", "measured_ms", "{:.4f}"),
        ("roofline ms", "roofline_ms", "{:.4f}"),
        ("meas/roof", "ratio", "{:.2f}"),
        ("TFLOP/s", "achieved_tflops", "{:.3g}"),
        ("GB/s", "achieved_gb_s", "{:.4g}"),
        ("FLOP/B", "intensity", "{:.3g}"),
        ("calibrated", "calibrated_error", "{:+.1%}"),
        ("source", "source", "{}"),
    ]
    table = [[h for h, _, _ in cols]]
    for _, r in shown.iterrows():
        table.append([_cell(r[c], f) for _, c, f in cols])
    widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
    lines = [title, ""]
    for j, row in enumerate(table):
        lines.append("  ".join(v.rjust(w) if i > 3 else v.ljust(w) for i, (v, w) in enumerate(zip(row, widths, strict=True))))  # fmt: skip
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    if len(shown) < len(frame):
        lines.append(
            f"({len(shown)} of {len(frame)} rows: tokens in {', '.join(map(str, SHOWN_TOKENS))}; "
            "--all or --format csv for every row)"
        )
    lines += ["", "measured / roofline per operator (> 1: slower than the spec-sheet roofline):"]
    for r in summary_frame(frame).itertuples():
        lines.append(
            f"  {r.op:<18}{r.precision:<6}{r.points:>5} points  median {r.median_ratio:5.2f}  "
            f"range {r.min_ratio:5.2f} .. {r.max_ratio:5.2f}  best {r.best_tflops:.3g} TFLOP/s, "
            f"{r.best_gb_s:.4g} GB/s"
        )
    err = frame["calibrated_error"].dropna()
    if len(err):
        lines.append(
            f"calibrated model vs measured: median |error| {err.abs().median():.1%}, worst "
            f"{err.iloc[int(np.argmax(err.abs().to_numpy()))]:+.1%} over {len(err)} rows"
        )
    return "\n".join(lines)


def _cell(v: Any, fmt: str) -> str:
    if v is None or v is pd.NA or (isinstance(v, float) and not np.isfinite(v)):
        return "-"
    try:
        return fmt.format(v)
    except (ValueError, TypeError):
        return str(v)


def plot_roofline(ax, frame: pd.DataFrame, gpu: GPU | None, title: str = "") -> Any:
    """Achieved FLOP/s against arithmetic intensity, one colour per operator, under the spec
    roofline of each precision (dashed) -- operators that do no math are left out."""
    pts = frame[(frame["achieved_tflops"] > 0) & np.isfinite(frame["intensity"])]
    pts = pts[pts["intensity"] > 0]
    for op, g in pts.groupby("op", sort=False):
        ax.scatter(g["intensity"], g["achieved_tflops"], s=10, alpha=0.7, label=op)
    if len(pts):
        x = np.geomspace(pts["intensity"].min() / 2, pts["intensity"].max() * 2, 200)
        if gpu is not None:
            for fmt in sorted(set(pts["precision"])):
                peak = gpu.peak_flops(fmt)
                if peak:
                    y = np.minimum(peak, gpu.bandwidth * x) / 1e12
                    ax.plot(x, y, "--", lw=1.2, label=f"spec roofline {fmt}")
                    curve = gpu.calibration.curve("gemm", fmt) if gpu.calibration else None
                    if curve is not None:  # what the fitted model gives a GEMM of intensity x
                        ax.plot(x, y * curve.evaluate(x), "-", lw=1.2, label=f"fitted GEMM {fmt}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("arithmetic intensity (FLOP / byte)")
    ax.set_ylabel("achieved TFLOP/s")
    ax.set_title(title or "measured vs roofline")
    ax.grid(True, which="both", alpha=0.3)
    if len(pts):
        ax.legend(fontsize=7, loc="lower right")
    return ax
