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
from capsim.workload.prefixes import SharedPrefixes


# --------------------------------------------------------------------------- traces
@dataclass(frozen=True)
class TraceData:
    times: np.ndarray  # seconds from the first row, sorted
    prompt: np.ndarray | None
    output: np.ndarray | None
    session: np.ndarray | None = None  # per row: session number (0, 1, ...), from its id column


#: Most tokens one request may carry (prompt or output); real contexts are far below.
MAX_TOKENS = 2**31 - 1
#: Longest span a trace may cover; a longer one has a mistyped timestamp (year 9999, 1e308 s).
MAX_SPAN_S = 366 * 86400.0
#: Suffixes a trace file may have (pandas reads these; anything else is not a trace).
TRACE_SUFFIXES = (".csv", ".csv.gz", ".csv.bz2", ".csv.xz", ".csv.zst", ".csv.zip")
_TZ = r"(?:Z|[+-]\d\d:?\d\d)\s*$"


def _parse_times(col: pd.Series, fmt: str, file: str, column: str) -> np.ndarray:
    if fmt in ("auto", "seconds"):
        num = pd.to_numeric(col, errors="coerce")
        if fmt == "seconds" or num.notna().mean() >= 0.5:
            bad = num.isna() | ~np.isfinite(num.fillna(0.0).to_numpy(dtype=float))
            _first_bad(bad, file, column, "a finite number of seconds")
            return _plausible_span(num.to_numpy(dtype=float), file, column)
    aware = col.str.contains(_TZ, regex=True).to_numpy()
    if aware.any() and not aware.all():
        i = int(np.flatnonzero(aware != aware[0])[0])
        raise InputError(
            f"column '{column}': a timestamp {'with' if aware[i] else 'without'} a time zone "
            f"among ones {'without' if aware[i] else 'with'}: give every row a zone (2023-11-16T"
            "18:15:46Z) or none (2023-11-16 18:15:46)",
            file=file,
            where=f"row {i + 2}",
        )
    try:
        dt = pd.to_datetime(col, errors="coerce", format="mixed", utc=bool(aware.any()))
    except (ValueError, TypeError, OverflowError) as exc:
        raise InputError(
            f"column '{column}': cannot read the timestamps ({type(exc).__name__}); expected "
            "timestamps like 2023-11-16 18:15:46.68 or seconds",
            file=file,
        ) from None
    _first_bad(dt.isna(), file, column, "a timestamp like 2023-11-16 18:15:46.68 or seconds")
    return _plausible_span((dt - dt.min()).dt.total_seconds().to_numpy(dtype=float), file, column)


def _plausible_span(t: np.ndarray, file: str, column: str) -> np.ndarray:
    """Refuse a trace whose span is stretched by one mistyped row (year 9999, ``1e308`` s): a
    span over :data:`MAX_SPAN_S`, or a first/last row 10x further from the others than they span.
    """
    order = np.argsort(t, kind="stable")
    ts = t[order]
    span = float(ts[-1] - ts[0]) if len(ts) else 0.0
    bad = None
    if len(ts) >= 3:
        rest = float(ts[-2] - ts[1])
        if ts[-1] - ts[-2] > 10 * max(rest, 1.0):
            bad = int(order[-1])
        elif ts[1] - ts[0] > 10 * max(rest, 1.0):
            bad = int(order[0])
    if bad is None and span > MAX_SPAN_S:
        bad = int(order[-1])
    if bad is not None:
        raise InputError(
            f"column '{column}': this timestamp is implausibly far from the others (the trace "
            f"would span {span:.3g} s); expected every row within {MAX_SPAN_S / 86400:.0f} days "
            "and no single row far outside the rest",
            file=file,
            where=f"row {bad + 2}",
        )
    return t


def _first_bad(bad: pd.Series | np.ndarray, file: str, column: str, accepted: str) -> None:
    """Name the first bad row and its column; the value itself is never shown (a data row of a
    file that is not a trace could be a secret)."""
    bad = np.asarray(bad, dtype=bool)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise InputError(
            f"column '{column}': cannot read this value; expected {accepted}",
            file=file,
            where=f"row {i + 2}",
        )


def columns_text(columns) -> str:
    """The header names, each and the list truncated (never data rows).

    >>> columns_text(["a", "b" * 50])
    "'a', 'bbbbbbbbbbbbbbbbbbbbbbbbbbbbbb...'"
    """
    names = [str(c) if len(str(c)) <= 30 else str(c)[:30] + "..." for c in list(columns)[:12]]
    more = f" and {len(columns) - 12} more" if len(columns) > 12 else ""
    return ", ".join(repr(n) for n in names) + more


def _token_column(df: pd.DataFrame, name: str | None, file: str) -> np.ndarray | None:
    if name is None:
        return None
    if name not in df.columns:
        raise InputError(f"no column '{name}'; columns are: {columns_text(df.columns)}", file=file)
    num = pd.to_numeric(df[name], errors="coerce")
    vals = num.fillna(-1.0).to_numpy(dtype=float)
    with np.errstate(invalid="ignore"):
        bad = ~np.isfinite(vals) | (vals < 1) | (vals > MAX_TOKENS) | (vals != np.floor(vals))
    _first_bad(bad, file, name, f"a whole number of tokens from 1 to {MAX_TOKENS:,}")
    return vals.astype(np.int64)


def check_trace_path(p: Path, where: str = "") -> None:
    """A trace is a regular file named ``*.csv`` (or compressed CSV); nothing else is opened."""
    if not p.name.lower().endswith(TRACE_SUFFIXES):
        raise InputError(
            f"a trace must be a CSV file; accepted names end with {', '.join(TRACE_SUFFIXES)}",
            file=p,
            where=where,
        )
    if p.is_dir():
        raise InputError("expected a CSV file, got a directory", file=p, where=where)
    if not p.is_file():
        raise InputError(
            "trace file not found"
            if not p.exists()
            else "expected a regular CSV file, got a special file (FIFO, socket or device)",
            file=p,
            where=where,
        )


def read_csv_text(path: str, what: str) -> pd.DataFrame:
    """Read a CSV as strings; errors name the file and never quote its contents."""
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise InputError(
            f"the {what} is empty: expected a header row and request rows", file=path
        ) from None
    except pd.errors.ParserError as exc:
        first = str(exc).splitlines()[0] if str(exc) else ""
        msg = first[:120] if first.startswith("Error tokenizing") else "malformed CSV"
        raise InputError(f"cannot read {what} CSV: {msg}", file=path) from None
    except UnicodeDecodeError:
        raise InputError(f"cannot read {what} CSV: not UTF-8 text", file=path) from None
    except OSError as exc:
        raise InputError(f"cannot read {what} CSV: {exc.strerror}", file=path) from None
    if df.empty:
        raise InputError(f"the {what} has no rows", file=path)
    return df


@functools.lru_cache(maxsize=8)
def _read_trace_cached(
    path: str,
    mtime: float,
    ts_col: str,
    fmt: str,
    p_col: str | None,
    o_col: str | None,
    s_col: str | None = None,
) -> TraceData:
    df = read_csv_text(path, "trace")
    if ts_col not in df.columns:
        raise InputError(
            f"no timestamp column '{ts_col}'; columns are: {columns_text(df.columns)}", file=path
        )
    t = _parse_times(df[ts_col], fmt, path, ts_col)
    prompt = _token_column(df, p_col, path)
    output = _token_column(df, o_col, path)
    session = None
    if s_col is not None:
        if s_col not in df.columns:
            raise InputError(
                f"no session column '{s_col}'; columns are: {columns_text(df.columns)}",
                file=path,
            )
        session = pd.factorize(df[s_col])[0].astype(np.int64)
    order = np.argsort(t, kind="stable")
    t = t[order] - t[order][0]
    return TraceData(
        t,
        prompt[order] if prompt is not None else None,
        output[order] if output is not None else None,
        session[order] if session is not None else None,
    )


def read_trace(spec: Trace) -> TraceData:
    """Parse a trace CSV (cached per file version); errors name the row and column."""
    p = Path(spec.path)
    check_trace_path(p)
    return _read_trace_cached(
        str(p),
        os.path.getmtime(p),
        spec.timestamp_column,
        spec.timestamp_format,
        spec.prompt_tokens_column,
        spec.output_tokens_column,
        spec.session_column,
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
    copy = np.zeros(len(t), dtype=np.int64)  # which overlaid copy (rate_scale > 1)
    if spec.rate_scale != 1.0 and len(t):
        whole, frac = divmod(spec.rate_scale, 1.0)
        parts_t, parts_i, parts_c = [], [], []
        for c in range(int(whole)):
            shift = 0.0 if c == 0 else rng.uniform(0, span)
            parts_t.append((t + shift) % max(span, 1e-9))
            parts_i.append(idx)
            parts_c.append(np.full(len(t), c))
        if frac > 0:
            sel = rng.random(len(t)) < frac
            shift = rng.uniform(0, span) if whole >= 1 else 0.0
            parts_t.append((t[sel] + shift) % max(span, 1e-9))
            parts_i.append(idx[sel])
            parts_c.append(np.full(int(sel.sum()), int(whole)))
        t = np.concatenate(parts_t)
        idx = np.concatenate(parts_i)
        copy = np.concatenate(parts_c)
        order = np.argsort(t, kind="stable")
        t, idx, copy = t[order], idx[order], copy[order]
    inside = t <= horizon  # the horizon defaults to the span: the last request is at it
    t, idx, copy = t[inside], idx[inside], copy[inside]
    prefixes = None
    if data.session is not None:  # a copy's sessions are other conversations
        sess = data.session[keep]
        n_sess = int(sess.max()) + 1 if len(sess) else 0
        stream = sess[idx] + copy * n_sess
        ns = int(stream.max()) + 1 if len(stream) else 0
        prefixes = SharedPrefixes(stream, np.full(ns, -1), np.zeros(ns, dtype=np.int64))
    return RequestStream(
        t,
        horizon,
        prompt[idx] if prompt is not None else None,
        output[idx] if output is not None else None,
        prefixes=prefixes,
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
