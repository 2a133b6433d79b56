"""Prompt and output token lengths: parametric distributions or pairs from a trace."""

from __future__ import annotations

import functools
import os
from pathlib import Path

import numpy as np

from capsim.spec.scenario import (
    EmpiricalTokens,
    TokenLengths,
    UniformTokens,
)
from capsim.workload.traces import TraceData, _token_column, check_trace_path, read_csv_text


# --------------------------------------------------------------------------- sizes, horizon
@functools.lru_cache(maxsize=8)
def _token_pairs_cached(path: str, mtime: float, p_col: str, o_col: str) -> TraceData:
    df = read_csv_text(path, "token trace")
    return TraceData(
        np.zeros(len(df)), _token_column(df, p_col, path), _token_column(df, o_col, path)
    )


def token_pairs(spec: EmpiricalTokens) -> tuple[np.ndarray, np.ndarray]:
    """The (prompt, output) rows of an empirical token-length trace (cached per file version)."""
    p = Path(spec.trace)
    check_trace_path(p, "traffic.tokens.trace")
    d = _token_pairs_cached(str(p), os.path.getmtime(p), spec.prompt_column, spec.output_column)
    assert d.prompt is not None and d.output is not None
    return d.prompt, d.output


def token_lengths(
    spec: TokenLengths | EmpiricalTokens | UniformTokens, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths, clipped to [1, max]: lognormal (medians and sigmas as given),
    uniform whole numbers in [min, max], or (prompt, output) pairs drawn jointly, with
    replacement, from a trace's rows."""
    if isinstance(spec, UniformTokens):
        up = rng.integers(spec.prompt_min, spec.prompt_max + 1, size=n, dtype=np.int64)
        uo = rng.integers(spec.output_min, spec.output_max + 1, size=n, dtype=np.int64)
        return up, uo
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
