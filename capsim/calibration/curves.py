"""Efficiency curves from measurements: binning, thinning, rounding and fit errors."""

from __future__ import annotations

import datetime as _dt
import math
from collections.abc import Sequence
from typing import Any, Literal

import numpy as np

from capsim.service.llm import LLMServiceModel
from capsim.spec.calibration import (
    CurveKind,
    EfficiencyCurve,
    FitError,
)
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel

#: harness precision -> capsim math format (fp64 has none)


#: harness GEMM element and output bytes (calibrate/work.py)
_ELEM = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}


_OUT = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8": 4}


#: the non-overhead part of a measured time is at least this share of it (as in the timer)
MIN_BODY = 0.3


COMPOSITE_KINDS = ("forward_block", "forward_resnet50")
#: harness kinds the fit uses; newer ones (conv2d, forward_llm_step, allreduce) are left out
#: with a note until capsim models them
USED_KINDS = frozenset({"launch", "bandwidth_copy", "bandwidth_read", "gemm", "attention_decode", "attention_prefill", *COMPOSITE_KINDS, "power_idle", "power_busy"})  # fmt: skip


DEFAULT_TOLERANCE = 0.05


MAX_CURVE_BINS = 24


def binned_curve(
    x: np.ndarray, eff: np.ndarray, max_bins: int = MAX_CURVE_BINS
) -> tuple[list[float], list[float]]:
    """Breakpoints of an efficiency curve: medians of ``eff`` in equal-width bins of log(x).

    Robust to noisy points; keeps non-monotone shapes (the dip at a roofline's ridge).
    """
    x = np.asarray(x, dtype=float)
    eff = np.asarray(eff, dtype=float)
    ok = (x > 0) & np.isfinite(x) & (eff > 0) & np.isfinite(eff)
    lx, e = np.log(x[ok]), eff[ok]
    if not len(lx):
        raise ValueError("no usable points for an efficiency curve")
    nb = int(min(max_bins, len(np.unique(np.round(lx, 6)))))
    lo, hi = float(lx.min()), float(lx.max())
    if nb <= 1 or hi - lo < 1e-9:
        return [float(np.exp(np.median(lx)))], [float(np.median(e))]
    idx = np.minimum(((lx - lo) / (hi - lo) * nb).astype(int), nb - 1)
    at, ef = [], []
    for i in range(nb):
        sel = idx == i
        if sel.any():
            at.append(float(np.exp(np.median(lx[sel]))))
            ef.append(float(np.median(e[sel])))
    keep_at, keep_ef = [at[0]], [ef[0]]
    for a, v in zip(at[1:], ef[1:], strict=True):
        if a > keep_at[-1] * (1 + 1e-9):
            keep_at.append(a)
            keep_ef.append(v)
    return keep_at, keep_ef


def make_curve(
    kind: CurveKind, fmt: str, xname: Literal["intensity", "bytes"], x, eff
) -> EfficiencyCurve:
    """An efficiency curve from points ``(x, eff)`` (see :func:`binned_curve`), rounded for the
    catalog: breakpoints to 4 significant digits, efficiencies to 4 decimals but never fewer than
    4 significant digits (a tiny efficiency stays positive and keeps its precision)."""
    at, ef = binned_curve(np.asarray(x), np.asarray(eff))
    keep_at: list[float] = []
    keep_ef: list[float] = []
    for a, v in zip(at, ef, strict=True):
        a = _sig(a, 4)
        if keep_at and a <= keep_at[-1]:
            continue  # two breakpoints that round to the same value: keep the first
        keep_at.append(a)
        keep_ef.append(round_efficiency(v))
    return EfficiencyCurve(
        kind=kind,
        format=fmt,
        x=xname,
        at=keep_at,
        efficiency=keep_ef,
        points=int(len(np.asarray(x))),
    )


def round_efficiency(v: float) -> float:
    """``v`` to 4 decimals, or to 4 significant digits when that keeps more (``v < 0.1``).

    >>> round_efficiency(0.712345), round_efficiency(1.098432), round_efficiency(0.0000123456)
    (0.7123, 1.0984, 1.235e-05)
    """
    v = float(v)
    if not (v > 0 and math.isfinite(v)):
        return v
    return round(v, max(4, 3 - math.floor(math.log10(v))))


def achieved_efficiency(
    gpu: GPU, flops, nbytes, fmt: str, seconds, overhead_s: float, kernels: int = 1
) -> np.ndarray:
    """Achieved fraction of the spec roofline, the inverse of the timer's fitted formula
    ``time = max(flops / peak, bytes / bandwidth) / eff + kernels * overhead``."""
    f, b, t = (np.asarray(v, dtype=float) for v in (flops, nbytes, seconds))
    peak = gpu.peak_flops(fmt)
    if peak is None:
        raise ValueError(f"{gpu.id} has no {fmt} peak")
    roof = np.maximum(f / peak, b / gpu.bandwidth)
    body = np.maximum(t - kernels * overhead_s, MIN_BODY * t)
    return roof / body


def thin_indices(tokens: Sequence[float], seconds: Sequence[float], tolerance: float) -> list[int]:
    """Indices of the points to keep so that log-log interpolation between them reproduces
    every point within ``tolerance`` (relative); Douglas-Peucker in log space."""
    lx = np.log(np.asarray(tokens, dtype=float))
    ly = np.log(np.asarray(seconds, dtype=float))
    tol = math.log1p(tolerance) * 0.999
    keep = {0, len(lx) - 1}
    stack = [(0, len(lx) - 1)]
    while stack:
        i, j = stack.pop()
        if j <= i + 1:
            continue
        xs = lx[i + 1 : j]
        pred = ly[i] + (ly[j] - ly[i]) * (xs - lx[i]) / (lx[j] - lx[i])
        dev = np.abs(pred - ly[i + 1 : j])
        m = int(dev.argmax())
        if dev[m] > tol:
            kk = i + 1 + m
            keep.add(kk)
            stack += [(i, kk), (kk, j)]
    return sorted(keep)


def _sig(v: float, digits: int) -> float:
    """``v`` rounded to ``digits`` significant digits."""
    if v == 0 or not math.isfinite(v):
        return float(v)
    return float(f"{v:.{digits}g}")


def _round_us(v: float) -> float:
    return round(float(v), 3) if v >= 1 else _sig(float(v), 4)


def _errors(pred: np.ndarray, meas: np.ndarray) -> np.ndarray:
    return np.asarray(pred, dtype=float) / np.asarray(meas, dtype=float) - 1.0


def fit_error(held_out: str, err: np.ndarray, labels: Sequence[str]) -> FitError:
    err = np.asarray(err, dtype=float)
    if not len(err):
        return FitError(held_out=held_out, points=0, median_abs_error=0.0, worst_error=0.0)
    i = int(np.argmax(np.abs(err)))
    return FitError(
        held_out=held_out,
        points=len(err),
        median_abs_error=round(float(np.median(np.abs(err))), 4),
        worst_error=round(float(err[i]), 4),
        worst_point=labels[i],
    )


def _today() -> str:
    return _dt.date.today().isoformat()


#: capsim operators inside the harness's transformer block (no RoPE, no embedding, no LM head);
#: capsim's norm is the fused residual-add + RMSNorm, so two norm calls cover the block's two
#: norms and two residual adds.
BLOCK_OPS = ("norm", "qkv_proj", "attn_prefill", "o_proj", "mlp_up", "mlp_act", "mlp_down")


def predict_forward_block(
    gpu: GPU,
    *,
    batch: int,
    seq_len: int,
    hidden: int,
    heads: int,
    ffn: int,
    precision: str,
    timer=None,
) -> tuple[float, dict[str, Any]]:
    """Predicted time of one pre-norm Llama block over ``batch`` prompts of ``seq_len`` tokens,
    from capsim's LLM operator model on ``gpu`` (its calibration when it has one), and the
    per-operator times and sources."""
    model = TransformerModel(
        name="harness-block", layers=1, hidden_size=hidden, attention_heads=heads,
        kv_heads=heads, ffn_size=ffn, vocab_size=1, gated_mlp=True, max_context=seq_len,
    )  # fmt: skip
    settings = LLMEngineSettings(max_num_batched_tokens=16, max_model_len=seq_len)
    svc = LLMServiceModel(gpu, model, precision, 1, settings, timer)
    parts: dict[str, Any] = {}
    total = 0.0
    for line in svc.breakdown(prefill=[(seq_len, 0)] * batch).lines:
        if line.op.name not in BLOCK_OPS:
            continue
        calls = 2 if line.op.name == "norm" else line.count
        total += calls * line.op.time_s
        parts[line.op.name] = {"time_s": calls * line.op.time_s, "source": line.op.source}
    return total, parts
