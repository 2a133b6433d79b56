"""Request streams: arrival times (and token sizes) as numpy arrays, generated once per replication.

Every candidate configuration sees the same stream in the same replication (common random
numbers), so their p99s are compared on the same traffic. Each random element has its own child
of a ``numpy.random.SeedSequence``: arrivals, token sizes, and service-time jitter.

Time-varying load uses the *time change* of a unit-rate process: with cumulative intensity
``Λ(t) = ∫ λ(u) du``, the arrival times are ``Λ⁻¹(E_k)`` where ``E_k`` are the points of a
unit-rate renewal process. For Poisson arrivals this is an exact non-homogeneous Poisson process
(equivalent to thinning); for renewal arrivals it keeps the coefficient of variation locally.

>>> import numpy as np
>>> from capsim.scenario import Poisson
>>> s = arrival_times(Poisson(kind="poisson", rate_rps=100.0), 60.0, np.random.default_rng(1))
>>> 5000 < len(s) < 7000
True
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from capsim.errors import InputError
from capsim.scenario import (
    Diurnal,
    EmpiricalTokens,
    Piecewise,
    Poisson,
    Renewal,
    Scenario,
    TokenLengths,
    Trace,
)

DEFAULT_HORIZON_S = 3600.0


@dataclass(frozen=True)
class RequestStream:
    """One replication's requests: sorted arrival times (s) and optional token counts."""

    arrival: np.ndarray
    horizon: float
    prompt_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    time_scale: float = 1.0  # simulated seconds per real second (< 1 when compressed)

    def __len__(self) -> int:
        return len(self.arrival)

    @property
    def mean_rate(self) -> float:
        return len(self.arrival) / self.horizon if self.horizon > 0 else 0.0


# --------------------------------------------------------------------------- rate profiles
def rate_multiplier(arr: Poisson | Renewal, t: np.ndarray) -> np.ndarray:
    """Multiplier of the mean rate at real times ``t`` (pattern times bursts)."""
    m = np.ones_like(t, dtype=float)
    p = arr.pattern
    if isinstance(p, Diurnal):
        amp = (p.peak_to_trough - 1) / (p.peak_to_trough + 1)
        phase = 2 * np.pi * (t / p.period_s - p.peak_hour / 24.0)
        m = 1 + amp * np.cos(phase)
    elif isinstance(p, Piecewise):
        ts, ms = np.asarray(p.times_s), np.asarray(p.multipliers)
        if p.interpolation == "linear":
            m = np.interp(t, ts, ms)
        else:
            idx = np.searchsorted(ts, t, side="right") - 1
            m = np.where(idx < 0, ms[0], ms[np.clip(idx, 0, len(ms) - 1)])
    for b in arr.bursts:
        m = np.where((t >= b.start_s) & (t < b.start_s + b.duration_s), m * b.multiplier, m)
    return m


def _unit_gaps(arr: Poisson | Renewal, n: int, rng: np.random.Generator) -> np.ndarray:
    """Inter-arrival gaps of a unit-rate process."""
    if isinstance(arr, Renewal):
        if arr.cv == 0:
            return np.ones(n)
        shape = 1.0 / arr.cv**2
        return rng.gamma(shape, 1.0 / shape, size=n)
    return rng.exponential(1.0, size=n)


def arrival_times(
    arr: Poisson | Renewal, horizon: float, rng: np.random.Generator, *, time_scale: float = 1.0
) -> np.ndarray:
    """Arrival times in ``[0, horizon)`` of simulated time.

    ``time_scale`` < 1 compresses the load pattern: simulated time τ sees the pattern at real time
    τ / time_scale (the rate itself is unchanged).
    """
    stationary = arr.pattern is None and not arr.bursts
    if stationary:
        grid = np.array([0.0, horizon])
        cum = np.array([0.0, arr.rate_rps * horizon])
    else:
        npts = int(min(2_000_000, max(2_000, horizon / 0.5))) + 1
        grid = np.linspace(0.0, horizon, npts)
        lam = arr.rate_rps * rate_multiplier(arr, grid / time_scale)
        cum = np.concatenate([[0.0], np.cumsum(0.5 * (lam[1:] + lam[:-1]) * np.diff(grid))])
    total = cum[-1]
    n_guess = int(total + 6 * np.sqrt(total) + 100)
    points = np.cumsum(_unit_gaps(arr, n_guess, rng))
    while points[-1] < total:
        more = np.cumsum(_unit_gaps(arr, n_guess, rng)) + points[-1]
        points = np.concatenate([points, more])
    points = points[points < total]
    if stationary:
        return points / arr.rate_rps
    return np.interp(points, cum, grid)


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


# --------------------------------------------------------------------------- sizes, horizon
@functools.lru_cache(maxsize=8)
def _token_pairs_cached(path: str, mtime: float, p_col: str, o_col: str) -> TraceData:
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except (OSError, pd.errors.ParserError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read token trace CSV: {exc}".splitlines()[0], file=path) from None
    if df.empty:
        raise InputError("the token trace has no rows", file=path)
    return TraceData(
        np.zeros(len(df)), _token_column(df, p_col, path), _token_column(df, o_col, path)
    )


def token_pairs(spec: EmpiricalTokens) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, output) rows of an empirical token-length trace (cached per file version)."""
    p = Path(spec.trace)
    if not p.is_file():
        raise InputError("token trace file not found", file=p, where="traffic.tokens.trace")
    d = _token_pairs_cached(str(p), os.path.getmtime(p), spec.prompt_column, spec.output_column)
    assert d.prompt is not None and d.output is not None
    return d.prompt, d.output


def token_lengths(
    spec: TokenLengths | EmpiricalTokens, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths, clipped to [1, max]: lognormal (medians and sigmas as given)
    or (prompt, output) pairs drawn jointly, with replacement, from a trace's rows."""
    if isinstance(spec, EmpiricalTokens):
        prompts, outputs = token_pairs(spec)
        pick = rng.integers(0, len(prompts), size=n)
        p = np.clip(prompts[pick], 1, spec.prompt_max).astype(np.int64)
        o = np.clip(outputs[pick], 1, spec.output_max).astype(np.int64)
        return p, o
    p = rng.lognormal(np.log(spec.prompt_median), spec.prompt_sigma, size=n)
    o = rng.lognormal(np.log(spec.output_median), spec.output_sigma, size=n)
    p = np.clip(np.rint(p), 1, spec.prompt_max).astype(np.int64)
    o = np.clip(np.rint(o), 1, spec.output_max).astype(np.int64)
    return p, o


def real_horizon(s: Scenario) -> float:
    """The span of traffic the scenario asks for, in real seconds."""
    if s.traffic.horizon_s is not None:
        return s.traffic.horizon_s
    a = s.traffic.arrivals
    if isinstance(a, Trace):
        return trace_span(a)
    if isinstance(a, Poisson | Renewal) and a.pattern is not None:
        return a.pattern.period_s if isinstance(a.pattern, Diurnal) else max(a.pattern.times_s)
    return DEFAULT_HORIZON_S


def sim_horizon(s: Scenario) -> tuple[float, float]:
    """(simulated horizon, time scale). Compression applies only to rate-based arrivals."""
    h = real_horizon(s)
    c = s.simulation.compress_to_s
    if c is None or c >= h or isinstance(s.traffic.arrivals, Trace):
        return h, 1.0
    return c, c / h


def seed_children(seed: int, replication: int) -> list[np.random.SeedSequence]:
    """The SeedSequence children of one replication: [arrivals, sizes, service jitter, cold
    starts] — one stream per random element, so changing one leaves the others as they were."""
    root = np.random.SeedSequence(seed)
    rep = np.random.SeedSequence(root.entropy, spawn_key=(replication,))
    return rep.spawn(4)


def expected_requests(s: Scenario) -> tuple[float, float]:
    """(requests one replication generates on average, mean offered rate in req/s)."""
    a = s.traffic.arrivals
    h, scale = sim_horizon(s)
    if isinstance(a, Trace):
        n = float(np.count_nonzero(read_trace(a).times >= a.start_s)) * a.rate_scale
        n *= min(1.0, h / trace_span(a)) if trace_span(a) > 0 else 1.0
        return n, n / h if h > 0 else 0.0
    grid = np.linspace(0.0, real_horizon(s), 20001)
    mean = float(a.rate_rps * rate_multiplier(a, grid).mean())
    return mean * h, mean


def check_traffic(s: Scenario, *, file: str | None = None) -> None:
    """What only the traffic as a whole shows: some requests at all, not more than fit in
    memory, and a warm-up shorter than the simulated horizon."""
    n, mean = expected_requests(s)
    h, _ = sim_horizon(s)
    if n <= 0 or mean <= 0:
        raise InputError(
            "no traffic: the arrival rate is zero over the whole horizon",
            file=file,
            where="traffic",
        )
    cap = s.simulation.max_requests
    if n > cap:
        raise InputError(
            f"one replication would generate ~{n:,.0f} requests ({mean:,.4g} req/s over "
            f"{h:,.0f} simulated s); at most simulation.max_requests = {cap:,} fit in memory: "
            "shorten traffic.horizon_s, set simulation.compress_to_s, or raise max_requests",
            file=file,
            where="traffic",
        )
    w = s.simulation.warmup
    if isinstance(w, float) and w >= h:
        raise InputError(
            f"warm-up {w:g} s is not shorter than the simulated horizon of {h:g} s: nothing "
            "would be measured",
            file=file,
            where="simulation.warmup",
        )


def make_stream(s: Scenario, replication: int) -> RequestStream:
    """The request stream of one replication (the same for every candidate)."""
    arr_seq, size_seq, *_ = seed_children(s.simulation.seed, replication)
    rng = np.random.default_rng(arr_seq)
    horizon, scale = sim_horizon(s)
    a = s.traffic.arrivals
    if isinstance(a, Trace):
        stream = trace_stream(a, horizon, rng)
    else:
        stream = RequestStream(
            arrival_times(a, horizon, rng, time_scale=scale), horizon, time_scale=scale
        )
    if s.traffic.tokens is not None and stream.prompt_tokens is None:
        p, o = token_lengths(s.traffic.tokens, len(stream), np.random.default_rng(size_seq))
        stream = RequestStream(stream.arrival, stream.horizon, p, o, stream.time_scale)
    return stream


def jitter_rng(s: Scenario, replication: int) -> np.random.Generator:
    """The generator of service-time jitter for one replication (same for every candidate)."""
    return np.random.default_rng(seed_children(s.simulation.seed, replication)[2])


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


def peak_rate(s: Scenario) -> float:
    """Highest offered rate over the horizon (req/s), for capacity bounds."""
    a = s.traffic.arrivals
    if isinstance(a, Trace):
        data = read_trace(a)
        t = data.times[data.times >= a.start_s] / a.speedup
        return trace_peak_rate(t) * a.rate_scale
    h = real_horizon(s)
    grid = np.linspace(0, h, 20001)
    return float(a.rate_rps * rate_multiplier(a, grid).max())
