"""Arrival traces read from CSV/Parquet files, replayed as request streams."""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capsim.errors import InputError
from capsim.spec.scenario import (
    Trace,
)
from capsim.workload.arrivals import RequestStream


# --------------------------------------------------------------------------- traces
@dataclass(frozen=True)
class TraceData:
    times: np.ndarray  # seconds from the first row, sorted
    prompt: np.ndarray | None
    output: np.ndarray | None


def _parse_times(col: pd.Series, fmt: str, file: str, column: str) -> np.ndarray:
    if fmt in ("auto", "seconds"):
        num = pd.to_numeric(col, errors="coerce")
        if fmt == "seconds" or num.notna().mean() >= 0.5:
            bad = num.isna() | ~np.isfinite(num.fillna(0.0).to_numpy(dtype=float))
            _first_bad(bad, col, file, column, "a finite number of seconds")
            return num.to_numpy(dtype=float)
    dt = pd.to_datetime(col, errors="coerce", format="mixed")
    _first_bad(dt.isna(), col, file, column, "a timestamp like 2023-11-16 18:15:46.68 or seconds")
    return (dt - dt.min()).dt.total_seconds().to_numpy(dtype=float)


def _first_bad(bad: pd.Series, col: pd.Series, file: str, column: str, accepted: str) -> None:
    if bad.any():
        i = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(
            f"column '{column}': cannot read {col.iloc[i]!r}; expected {accepted}",
            file=file,
            where=f"row {i + 2}",
        )


def _token_column(df: pd.DataFrame, name: str | None, file: str) -> np.ndarray | None:
    if name is None:
        return None
    if name not in df.columns:
        raise InputError(
            f"no column '{name}'; columns are: {', '.join(map(str, df.columns))}", file=file
        )
    num = pd.to_numeric(df[name], errors="coerce")
    bad = num.isna() | (num < 0) | (num != np.floor(num))
    _first_bad(bad, df[name], file, name, "a whole number of tokens >= 0")
    return num.to_numpy(dtype=np.int64)


@functools.lru_cache(maxsize=8)
def _read_trace_cached(
    path: str, mtime: float, ts_col: str, fmt: str, p_col: str | None, o_col: str | None
) -> TraceData:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(
            "the trace is empty: expected a header row and request rows", file=path
        ) from None
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read trace CSV: {exc}".splitlines()[0], file=path) from None
    if df.empty:
        raise InputError("the trace has no rows", file=path)
    if ts_col not in df.columns:
        raise InputError(
            f"no timestamp column '{ts_col}'; columns are: {', '.join(map(str, df.columns))}",
            file=path,
        )
    t = _parse_times(df[ts_col], fmt, path, ts_col)
    prompt = _token_column(df, p_col, path)
    output = _token_column(df, o_col, path)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return TraceData(
        t,
        prompt[order] if prompt is not None else None,
        output[order] if output is not None else None,
    )


def read_trace(spec: Trace) -> TraceData:
    """Parse a trace CSV (cached per file version); errors name the row and column."""
    p = Path(spec.path)
    if p.is_dir():
        raise InputError("expected a CSV file, got a directory", file=p)
    if not p.is_file():
        raise InputError("trace file not found", file=p)
    return _read_trace_cached(
        str(p),
        os.path.getmtime(p),
        spec.timestamp_column,
        spec.timestamp_format,
        spec.prompt_tokens_column,
        spec.output_tokens_column,
    )


def trace_span(spec: Trace) -> float:
    data = read_trace(spec)
    return max(float(data.times[-1]) - spec.start_s, 0.0) / spec.speedup


def trace_stream(spec: Trace, horizon: float, rng: np.random.Generator) -> RequestStream:
    """Replay a trace: skip ``start_s``, apply ``speedup`` and ``rate_scale``, cut at horizon."""
    data = read_trace(spec)
    keep = data.times >= spec.start_s
    t = (data.times[keep] - spec.start_s) / spec.speedup
    prompt = data.prompt[keep] if data.prompt is not None else None
    output = data.output[keep] if data.output is not None else None
    span = float(t[-1]) if len(t) else 0.0
    idx = np.arange(len(t))
    if spec.rate_scale != 1.0 and len(t):
        whole, frac = divmod(spec.rate_scale, 1.0)
        parts_t, parts_i = [], []
        for copy in range(int(whole)):
            shift = 0.0 if copy == 0 else rng.uniform(0, span)
            parts_t.append((t + shift) % max(span, 1e-9))
            parts_i.append(idx)
        if frac > 0:
            sel = rng.random(len(t)) < frac
            shift = rng.uniform(0, span) if whole >= 1 else 0.0
            parts_t.append((t[sel] + shift) % max(span, 1e-9))
            parts_i.append(idx[sel])
        t = np.concatenate(parts_t)
        idx = np.concatenate(parts_i)
        order = np.argsort(t, kind="stable")
        t, idx = t[order], idx[order]
    inside = t <= horizon  # the horizon defaults to the span: the last request is at it
    t, idx = t[inside], idx[inside]
    return RequestStream(
        t,
        horizon,
        prompt[idx] if prompt is not None else None,
        output[idx] if output is not None else None,
    )


def trace_peak_rate(t: np.ndarray, window_s: float = 60.0) -> float:
    """Most requests in a window of ``window_s`` (or 1/60 of the span, if longer), per second.

    Only whole windows count (a short last one would exaggerate); a trace shorter than one
    window gives its mean rate.

    >>> round(trace_peak_rate(np.arange(0, 61, 0.01)), 1)       # 100 req/s for 61 s
    100.0
    """
    if len(t) < 2:
        return float(len(t))
    t = np.asarray(t, dtype=float) - float(t[0])
    span = float(t[-1])
    win = max(window_s, span / 60)
    full = int(span // win)
    if full < 1:
        return len(t) / max(span, 1.0)
    counts = np.histogram(t, bins=full, range=(0.0, full * win))[0]
    return float(counts.max() / win)
