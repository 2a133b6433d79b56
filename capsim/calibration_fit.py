"""Turning measurements into a catalog entry's ``calibration`` block.

Two sources:

* :func:`fit_measurements` -- a ``capsim-calibration/1`` directory written by the harness
  (``calibrate/``; loaded by the CLI with ``calibrate.load_measurements``, which capsim imports
  only inside the ``capsim calibrate`` commands). GEMM rows become measured tables (one per
  format and ``(n, k)``, time against ``m``) and, with the attention and bandwidth rows, fitted
  efficiency curves; launch rows give the per-kernel overhead. The fit reports its own error on
  measurements it did not use: rows held out with ``--holdout``, every composite row (a
  transformer block's forward pass, ResNet-50), and a leave-one-shape-out pass over the GEMM
  shapes.
* :func:`import_vidur` -- Microsoft Vidur's operator profile (``mlp.csv``: one transformer
  layer's non-attention operators at num_tokens 1..4096 and tp 1, 2, 4, 8). Its operators map onto
  capsim's: attn_pre_proj -> qkv_proj, attn_post_proj -> o_proj, mlp_up_proj -> mlp_up (gate+up
  fused), mlp_down_proj -> mlp_down, mlp_act -> mlp_act, emb -> embed, attn_rope -> rope (scaled
  to capsim's rope_kv_write, which also writes the KV cache), and input_layernorm /
  post_attention_layernorm + add -> norm (capsim's norm is vLLM's fused residual-add + RMSNorm,
  called twice per layer: its time is the mean of Vidur's two norms plus one residual add).

Tables are thinned (Douglas-Peucker in log-log space) to the points needed to reproduce every
measured point within ``tolerance`` by log-log interpolation.

Writing goes through :func:`write_calibration` / :func:`write_new_entry`: the new file is
validated first, the previous file is kept as ``<file>.bak``, and both writes are atomic.
"""

from __future__ import annotations

import datetime as _dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from pydantic import ValidationError

from capsim.calibration import (
    Calibration,
    EfficiencyCurve,
    FitError,
    MeasuredPeaks,
    OpTable,
    Provenance,
)
from capsim.catalog import GIB, GPU, load_gpu_file
from capsim.errors import (
    InputError,
    atomic_write_bytes,
    atomic_write_text,
    format_validation_error,
    parse_model,
)
from capsim.models import TransformerModel

#: harness precision -> capsim math format (fp64 has none)
HARNESS_FORMATS = ("fp32", "tf32", "fp16", "bf16", "fp8", "int8")
#: harness GEMM element and output bytes (calibrate/work.py)
_ELEM = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "int8": 1}
_OUT = {"fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 2, "int8": 4}
#: the non-overhead part of a measured time is at least this share of it (as in the timer)
MIN_BODY = 0.3
COMPOSITE_KINDS = ("forward_block", "forward_resnet50")
#: harness kinds this fit uses; newer ones (conv2d, forward_llm_step, allreduce) are left out
#: with a note until capsim models them
USED_KINDS = frozenset({"launch", "bandwidth_copy", "bandwidth_read", "gemm", "attention_decode", "attention_prefill", *COMPOSITE_KINDS, "power_idle", "power_busy"})  # fmt: skip
DEFAULT_TOLERANCE = 0.05
MAX_CURVE_BINS = 24

# Vidur (microsoft/vidur) -------------------------------------------------------------------
VIDUR_COMMIT = "7d47513"
VIDUR_LICENCE = "MIT License, Copyright (c) Microsoft Corporation"
VIDUR_ATTRIBUTION = (
    "Vidur: A Large-Scale Simulation Framework For LLM Inference (Agrawal et al., MLSys 2024), "
    "github.com/microsoft/vidur"
)
VIDUR_UPSTREAM = "data/profiling/compute/{card}/meta-llama/Llama-2-7b-hf/mlp.csv"
#: capsim table -> Vidur column(s); a tuple of tuples is (mean of the first group) + the rest
VIDUR_TABLES: dict[str, Any] = {
    "qkv_proj": "attn_pre_proj",
    "o_proj": "attn_post_proj",
    "mlp_up": "mlp_up_proj",
    "mlp_down": "mlp_down_proj",
    "mlp_act": "mlp_act",
    "embed": "emb",
    "rope": "attn_rope",
    "norm": (("input_layernorm", "post_attention_layernorm"), "add"),
}
VIDUR_GEMMS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")
VIDUR_SHAPE = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")
VIDUR_KEYS = ("num_tokens", "num_tensor_parallel_workers")


def vidur_columns(table: str) -> list[str]:
    """The Vidur operators behind one capsim table."""
    spec = VIDUR_TABLES[table]
    if isinstance(spec, str):
        return [spec]
    return [*spec[0], *spec[1:]]


# --------------------------------------------------------------------------------------------
# Fitting primitives
# --------------------------------------------------------------------------------------------


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


def make_curve(kind: str, fmt: str, xname: str, x, eff) -> EfficiencyCurve:
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


# --------------------------------------------------------------------------------------------
# Composite predictions (held out of every fit)
# --------------------------------------------------------------------------------------------

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
    from capsim.service.llm import LLMEngineSettings, LLMServiceModel

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


# --------------------------------------------------------------------------------------------
# The harness: capsim-calibration/1 directories
# --------------------------------------------------------------------------------------------

_HOLDOUT_KEYS = {"precision", "m", "n", "k", "batch", "seq_len", "tokens", "buffer_bytes"}


@dataclass(frozen=True)
class Holdout:
    """Rows matching ``kind`` and every ``key=value`` are kept out of the fit."""

    kind: str
    where: tuple[tuple[str, Any], ...] = ()

    @classmethod
    def parse(cls, text: str, kinds: Iterable[str]) -> Holdout:
        """``KIND[:key=value,...]``, e.g. ``gemm:n=2752,k=1024`` or ``forward_block``."""
        kind, _, rest = text.strip().partition(":")
        kinds = tuple(kinds)
        if kind not in kinds:
            raise InputError(
                f"unknown kind {kind!r} in {text!r}; accepted: {', '.join(kinds)}",
                where="--holdout",
            )
        where = []
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in _HOLDOUT_KEYS:
                raise InputError(
                    f"{part!r} in {text!r}: expected key=value with key one of "
                    f"{', '.join(sorted(_HOLDOUT_KEYS))}",
                    where="--holdout",
                )
            if key != "precision":
                if not re.fullmatch(r"[0-9]+", value):
                    raise InputError(f"{key}={value!r} must be an integer", where="--holdout")
                where.append((key, int(value)))
            else:
                where.append((key, value))
        return cls(kind, tuple(where))

    def matches(self, row: dict[str, Any]) -> bool:
        return row["kind"] == self.kind and all(row.get(k) == v for k, v in self.where)

    def __str__(self) -> str:
        return self.kind + (":" + ",".join(f"{k}={v}" for k, v in self.where) if self.where else "")


@dataclass
class FitResult:
    """The fitted entry and the fit's report."""

    gpu: GPU
    calibration: Calibration
    predictions: list[dict[str, Any]]  # held-out rows: measured vs predicted
    notes: list[str] = field(default_factory=list)

    def to_text(self) -> str:
        cal = self.calibration
        lines = [f"{self.gpu.id}: {cal.summary()}"]
        lines += [f"  note: {n}" for n in self.notes]
        if cal.provenance.fit_errors:
            lines.append("error on measurements not used by the fit (predicted / measured - 1):")
            for e in cal.provenance.fit_errors:
                lines.append(
                    f"  {e.held_out:<46} {e.points:>4} points  median {e.median_abs_error:6.1%}"
                    f"  worst {e.worst_error:+7.1%}  {e.worst_point}"
                )
        if self.predictions:
            lines.append("")
            lines.append(
                f"{'held-out row':<44}{'measured ms':>12}{'predicted ms':>13}{'error':>8}  source"
            )
            for p in self.predictions:
                lines.append(
                    f"{p['label']:<44}{p['measured_s'] * 1e3:>12.3f}"
                    f"{p['predicted_s'] * 1e3:>13.3f}{p['error']:>+8.1%}  {p['source']}"
                )
        return "\n".join(lines)


def _format_of(row: dict[str, Any]) -> str | None:
    p = row["precision"]
    return p if p in HARNESS_FORMATS else None


def _gemm_label(r: dict[str, Any]) -> str:
    return f"gemm {r['precision']} m={r['m']} n={r['n']} k={r['k']}"


def _row_label(r: dict[str, Any]) -> str:
    kind = r["kind"]
    if kind == "gemm":
        return _gemm_label(r)
    if kind.startswith("attention"):
        return f"{kind} {r['precision']} b={r['batch']} L={r['seq_len']}"
    if kind == "forward_block":
        return f"forward_block {r['precision']} b={r['batch']} L={r['seq_len']}"
    if kind == "forward_resnet50":
        return f"forward_resnet50 {r['precision']} b={r['batch']}"
    if kind.startswith("bandwidth"):
        return f"{kind} {r['buffer_bytes'] // 2**20} MiB"
    return kind


_POINT_KEYS = ("kind", "precision", "m", "n", "k", "batch", "seq_len", "heads", "head_dim", "hidden", "ffn", "tokens", "buffer_bytes", "in_channels", "out_channels", "height", "width", "kernel", "stride", "groups", "layout", "layers", "kv_heads", "vocab", "phase", "message_bytes", "ranks", "impl")  # fmt: skip


def combine_runs(
    runs: Sequence[tuple[dict[str, Any], list[dict[str, Any]]]], names: Sequence[str]
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Several measurement runs of one machine as one: per point, the run with the fastest
    median (on a shared machine the slower runs are the disturbed ones); power rows: all kept.

    The runs must come from the same device and backend. Every returned row carries ``_where``
    (``<dir>/measurements.csv: row N``, for messages), and the returned meta ``runs``: per run,
    whether it was interrupted or ran out of budget (see :func:`run_notes`).
    """
    meta0, _ = runs[0]
    dev0 = (meta0.get("device") or {}).get("name"), meta0.get("backend")
    best: dict[tuple, dict[str, Any]] = {}
    power: list[dict[str, Any]] = []
    info = []
    for (meta, rows), name in zip(runs, names, strict=True):
        dev = (meta.get("device") or {}).get("name"), meta.get("backend")
        if dev != dev0:
            raise InputError(
                f"measured on {dev[0]} ({dev[1]}), but {names[0]} on {dev0[0]} ({dev0[1]}): "
                "combine only runs of one device",
                file=name,
            )
        info.append(_run_info(meta, name))
        csv_name = str(Path(name) / "measurements.csv")
        for i, r in enumerate(rows, start=1):
            r = {**r, "_where": f"{csv_name}: row {i}"}
            if r["kind"].startswith("power"):
                power.append(r)
                continue
            key = tuple(r.get(c) for c in _POINT_KEYS)
            if key not in best or r["median_s"] < best[key]["median_s"]:
                best[key] = r
    return {**meta0, "runs": info}, [*best.values(), *power]


def _run_info(meta: dict[str, Any], name: str) -> dict[str, Any]:
    budget = meta.get("budget") or {}
    skipped = meta.get("skipped") or []
    reasons = [str(s.get("reason", "")) for s in skipped if isinstance(s, dict)]
    return {
        "data": name,
        "interrupted": bool(meta.get("interrupted")),
        "budget_exhausted": bool(budget.get("exhausted")),
        "skipped_budget": sum(r.startswith("budget") for r in reasons),
        "skipped_interrupted": sum(r.startswith("interrupted") for r in reasons),
    }


def run_notes(meta: dict[str, Any], data: str) -> list[str]:
    """Notes on runs that did not measure their whole plan (meta.json ``interrupted`` and
    ``budget.exhausted``)."""
    notes = []
    for run in meta.get("runs") or [_run_info(meta, data)]:
        if run["interrupted"]:
            notes.append(
                f"{run['data']}: the run was interrupted (Ctrl-C); {run['skipped_interrupted']} "
                "planned points were not measured and the fit uses what was"
            )
        if run["budget_exhausted"]:
            notes.append(
                f"{run['data']}: the run's budget was exhausted; {run['skipped_budget']} planned "
                "points were skipped (meta.json -> skipped); a longer --budget-seconds measures more"
            )
    return notes


def _where(r: dict[str, Any]) -> str:
    """Where a row came from (``<dir>/measurements.csv: row N``), else what it is."""
    return str(r.get("_where") or _row_label(r))


def _median_by(rows: list[dict[str, Any]], key) -> dict[Any, float]:
    groups: dict[Any, list[float]] = {}
    for r in rows:
        groups.setdefault(key(r), []).append(r["median_s"])
    return {k: float(np.median(v)) for k, v in groups.items()}


def gemm_tables(rows: list[dict[str, Any]]) -> list[OpTable]:
    """One measured table per (format, n, k) of harness GEMM rows: time against m."""
    tables = []
    shapes = sorted({(_format_of(r), r["n"], r["k"]) for r in rows if _format_of(r)})
    for fmt, n, k in shapes:
        sel = [r for r in rows if (_format_of(r), r["n"], r["k"]) == (fmt, n, k)]
        by_m = _median_by(sel, lambda r: r["m"])
        ms = sorted(by_m)
        tables.append(
            OpTable(
                op="gemm",
                format=fmt,
                tp=1,
                n=n,
                k=k,
                kernels=1,
                flops_per_token=2.0 * n * k,
                bytes_fixed=float(n * k * _ELEM[fmt]),
                bytes_per_token=float(k * _ELEM[fmt] + n * _OUT[fmt]),
                measured_as=sel[0].get("impl") or "gemm",
                tokens=ms,
                time_us=[_round_us(by_m[m] * 1e6) for m in ms],
            )  # fmt: skip
        )
    return tables


def _checked(values: np.ndarray, sel: list[dict[str, Any]], what: str) -> np.ndarray:
    """``values`` (one per row of ``sel``) must be positive and finite: else the row is named."""
    bad = ~(np.isfinite(values) & (values > 0))
    if bad.any():
        r = sel[int(np.flatnonzero(bad)[0])]
        raise InputError(
            f"{_row_label(r)}: its {what} is {values[bad][0]:g}, which cannot be stored (flops "
            f"{r['flops']:g}, bytes {r['bytes']:g}, median_s {r['median_s']:g}); fix or remove "
            "this row",
            file=_where(r),
        )
    return values


def _curves(
    gpu: GPU, rows: list[dict[str, Any]], overhead_s: float, formats: Sequence[str]
) -> tuple[list[EfficiencyCurve], list[str]]:
    """The fitted curves, and notes on points that look disturbed."""
    curves, notes = [], []
    for fmt in formats:
        for kind, kinds in (("gemm", ("gemm",)), ("attention", ("attention_decode", "attention_prefill"))):  # fmt: skip
            sel = [r for r in rows if r["kind"] in kinds and _format_of(r) == fmt]
            if not sel:
                continue
            f = np.array([r["flops"] for r in sel], dtype=float)
            b = np.array([r["bytes"] for r in sel], dtype=float)
            t = np.array([r["median_s"] for r in sel], dtype=float)
            x = _checked(f / b, sel, "arithmetic intensity (flops / bytes)")
            eff = _checked(
                achieved_efficiency(gpu, f, b, fmt, t, overhead_s), sel, "achieved efficiency"
            )
            curve = make_curve(kind, fmt, "intensity", x, eff)
            curves.append(curve)
            notes += _outlier_notes(curve, x, eff, sel)
    bw = [r for r in rows if r["kind"] == "bandwidth_copy"] or [
        r for r in rows if r["kind"] == "bandwidth_read"
    ]
    if bw:
        b = np.array([r["bytes"] for r in bw], dtype=float)
        t = np.array([r["median_s"] for r in bw], dtype=float)
        roof = b / gpu.bandwidth
        eff = _checked(roof / np.maximum(t - overhead_s, MIN_BODY * t), bw, "achieved efficiency")
        fmt = next((f for f in formats), "fp32")
        curves.append(make_curve("memory", fmt, "bytes", b, eff))
    return curves, notes


#: a curve breakpoint resting on one point this many times below both neighbours is flagged
OUTLIER_FACTOR = 10.0


def _outlier_notes(
    curve: EfficiencyCurve, x: np.ndarray, eff: np.ndarray, sel: list[dict[str, Any]]
) -> list[str]:
    """Breakpoints that rest on a single measurement far below both neighbouring breakpoints:
    most likely a disturbed measurement (a bin of several points takes their median, which a
    single slow point does not move)."""
    notes = []
    e = curve.efficiency
    for i in range(1, len(e) - 1):
        if e[i] * OUTLIER_FACTOR > min(e[i - 1], e[i + 1]):
            continue
        near = np.abs(np.log(x) - math.log(curve.at[i]))
        j = int(near.argmin())
        if int((near < 1e-6 + near[j]).sum()) != 1:
            continue
        notes.append(
            f"{_where(sel[j])} ({_row_label(sel[j])}): achieved {eff[j]:.3g} of the roofline, "
            f"over {OUTLIER_FACTOR:g}x below its neighbours on the {curve.kind} {curve.format} "
            "curve: a disturbed measurement? Re-measure, or fit several runs together "
            "(capsim calibrate fit run1 run2 keeps each point's fastest median)"
        )
    return notes


def _launch_us(rows: list[dict[str, Any]]) -> float | None:
    launch = [r["median_s"] for r in rows if r["kind"] == "launch"]
    return float(np.median(launch)) * 1e6 if launch else None


def _power(rows: list[dict[str, Any]], kind: str) -> float | None:
    vals = [r["power_w"] for r in rows if r["kind"] == kind and r.get("power_w") is not None]
    return float(np.median(vals)) if vals else None


def _measured_peaks(rows: list[dict[str, Any]]) -> MeasuredPeaks:
    tflops: dict[str, float] = {}
    for r in rows:
        fmt = _format_of(r)
        if r["kind"] == "gemm" and fmt:
            rate = _checked(np.array([r["flops"] / r["median_s"]]), [r], "FLOP rate")[0]
            tflops[fmt] = max(tflops.get(fmt, 0.0), float(rate) / 1e12)
    bw_rows = [r for r in rows if r["kind"].startswith("bandwidth")]
    bw = [float(_checked(np.array([r["bytes"] / r["median_s"]]), [r], "bandwidth")[0]) / 1e9 for r in bw_rows]  # fmt: skip
    launch = _launch_us(rows)
    return MeasuredPeaks(
        bandwidth_gb_s=_sig(max(bw), 4) if bw else None,
        tflops={f: _sig(v, 4) for f, v in tflops.items() if v > 0},
        launch_us=_sig(launch, 4) if launch is not None else None,
        power_idle_w=_power(rows, "power_idle"),
        power_busy_w=_power(rows, "power_busy"),
    )


#: measurements faster than this share of an entry's spec peak are refused (the wrong --gpu)
SPEC_MARGIN = 1.05


def peaks_are_measured(gpu: GPU) -> bool:
    """True for entries whose peaks are measured rates (``--new-gpu``), not a spec sheet."""
    return str(gpu.sources.get("peak_tflops", "")).startswith("measured")


def check_spec_peaks(gpu: GPU, rows: list[dict[str, Any]], device: str | None = None) -> None:
    """Refuse measurements that beat ``gpu``'s spec peaks (per GEMM format, and the memory
    bandwidth) by more than 5%: no card runs faster than its spec sheet, so they come from another
    card (``--gpu`` names the wrong entry)."""
    on = f" (measured on {device})" if device else ""
    best: dict[str, tuple[float, dict[str, Any]]] = {}
    for r in rows:
        fmt = _format_of(r)
        if r.get("median_s") and r["kind"] == "gemm" and fmt and gpu.peak_flops(fmt):
            rate = r["flops"] / r["median_s"]
            if rate > best.get(fmt, (0.0, r))[0]:
                best[fmt] = (rate, r)
    for fmt, (rate, r) in best.items():
        peak = gpu.peak_flops(fmt)
        assert peak is not None
        if rate > SPEC_MARGIN * peak:
            raise InputError(
                f"{_where(r)} ({_row_label(r)}) ran at {rate / 1e12:.4g} TFLOP/s = "
                f"{rate / peak:.0%} of {gpu.id}'s spec {fmt} peak ({peak / 1e12:g} TFLOP/s): "
                f"measured faster than the card's spec peak -- wrong --gpu?{on}",
                where="--gpu",
            )
    bw = [(r["bytes"] / r["median_s"], r) for r in rows if r["kind"].startswith("bandwidth") and r.get("median_s")]  # fmt: skip
    if bw:
        rate, r = max(bw, key=lambda p: p[0])
        if rate > SPEC_MARGIN * gpu.bandwidth:
            raise InputError(
                f"{_where(r)} ({_row_label(r)}) moved {rate / 1e9:.4g} GB/s = "
                f"{rate / gpu.bandwidth:.0%} of {gpu.id}'s spec memory bandwidth "
                f"({gpu.bandwidth_gb_s:g} GB/s): measured faster than the card's spec -- wrong "
                f"--gpu?{on}",
                where="--gpu",
            )


def _predict_row(gpu: GPU, r: dict[str, Any]) -> tuple[float, str] | None:
    """Predicted seconds of one harness row from ``gpu``'s calibration, and the source."""
    from capsim.service.calibrated import timer_for

    fmt = _format_of(r)
    kind = r["kind"]
    timer = timer_for(gpu)
    if kind == "forward_block" and fmt and gpu.peak_flops(fmt):
        t, parts = predict_forward_block(
            gpu, batch=r["batch"], seq_len=r["seq_len"], hidden=r["hidden"], heads=r["heads"],
            ffn=r["ffn"], precision=fmt,
        )  # fmt: skip
        srcs = sorted({p["source"] for p in parts.values()})
        return t, "+".join(srcs)
    if kind == "forward_resnet50" and fmt and gpu.peak_flops(fmt):
        from capsim.models import load_model_card
        from capsim.service.fixed import FixedServiceModel

        svc = FixedServiceModel(gpu, load_model_card("resnet-50"), fmt)
        e = svc.batch(int(r["batch"]))
        return e.time_s, e.source
    if timer is None:
        return None
    if kind == "gemm" and fmt and gpu.peak_flops(fmt):
        tm = timer.evaluate("gemm", r["flops"], r["bytes"], fmt, 1, r["n"], r["k"], 1, np.array([float(r["m"])]))  # fmt: skip
    elif kind.startswith("attention") and fmt and gpu.peak_flops(fmt):
        name = "attn_decode" if kind == "attention_decode" else "attn_prefill"
        tm = timer.evaluate(name, r["flops"], r["bytes"], fmt, 1, 0, 0, 1, np.array([1.0]))
    elif kind.startswith("bandwidth"):
        f = gpu.supported_formats()[0]
        tm = timer.evaluate("copy", 0.0, r["bytes"], f, 1, 0, 0, 1, np.array([1.0]))
    else:
        return None
    op = tm.at(0, kind)
    return op.time_s, op.source


def _evaluate_rows(gpu: GPU, rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        pred = _predict_row(gpu, r)
        if pred is None:
            continue
        t, src = pred
        out.append(
            {
                "label": _row_label(r),
                "kind": r["kind"],
                "precision": r["precision"],
                "measured_s": r["median_s"],
                "predicted_s": t,
                "error": t / r["median_s"] - 1.0,
                "source": src,
            }
        )
    return out


def fit_measurements(
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    *,
    data: str,
    gpu: GPU | None = None,
    new_id: str | None = None,
    holdout: Sequence[Holdout] = (),
    price_usd_per_hour: float | None = None,
    power_w: tuple[float, float | None] | None = None,
    today: str | None = None,
) -> FitResult:
    """Fit a calibration from a loaded measurements directory.

    Either ``gpu`` (calibrate an existing entry: the curves are fractions of its spec peaks) or
    ``new_id`` (a new entry whose peaks are the best measured rates; it needs a price, and a
    power figure unless the harness measured board power). Measurements that beat a spec-sheet
    entry's peaks by more than 5% are refused (:func:`check_spec_peaks`). Raises
    :class:`InputError` (naming the row where one is to blame) for anything that cannot be fitted
    or stored.
    """
    if (gpu is None) == (new_id is None):
        raise ValueError("give exactly one of gpu and new_id")
    try:
        return _fit(meta, rows, data, gpu, new_id, holdout, price_usd_per_hour, power_w, today)
    except ValidationError as exc:  # a value the schema refuses that no check above caught
        err = format_validation_error(exc, file=data)
        raise InputError(f"cannot store the fitted calibration: {err.message}", file=data) from None


def _fit(meta, rows, data, gpu, new_id, holdout, price_usd_per_hour, power_w, today) -> FitResult:
    today = today or _today()
    notes: list[str] = run_notes(meta, data) + unused_kind_notes(rows)
    rows = [r for r in rows if r["kind"] in USED_KINDS]
    timed = [r for r in rows if r["kind"] != "power_idle" and r.get("median_s")]
    if gpu is not None and not peaks_are_measured(gpu):
        check_spec_peaks(gpu, timed, (meta.get("device") or {}).get("name"))
    if any(r["precision"] == "fp64" for r in timed):
        notes.append("fp64 rows ignored: capsim has no fp64 math format")
    held = [r for r in timed if any(h.matches(r) for h in holdout)]
    fit_rows = [
        r for r in timed if r not in held and r["kind"] not in COMPOSITE_KINDS and _usable(r)
    ]
    validate = held + [r for r in timed if r["kind"] in COMPOSITE_KINDS and r not in held]
    if not any(r["kind"] == "gemm" for r in fit_rows):
        raise InputError(
            "no GEMM measurements left to fit (in a capsim math format: "
            f"{', '.join(HARNESS_FORMATS)})",
            file=data,
        )
    launch_us = _launch_us(fit_rows)
    peaks = _measured_peaks(fit_rows)
    if new_id is not None:
        gpu = _new_gpu(new_id, meta, fit_rows, peaks, launch_us, data, price_usd_per_hour, power_w, today)  # fmt: skip
        overhead_us = gpu.kernel_overhead_us
    else:
        assert gpu is not None
        overhead_us = launch_us if launch_us is not None else gpu.kernel_overhead_us
    formats = [f for f in HARNESS_FORMATS if gpu.peak_flops(f) and any(_format_of(r) == f for r in fit_rows)]  # fmt: skip
    skipped = sorted({_format_of(r) for r in fit_rows if _format_of(r)} - set(formats))
    if skipped:
        notes.append(f"{gpu.id} has no peak for {', '.join(skipped)}: those rows are not fitted")
    fit_rows = [r for r in fit_rows if _format_of(r) in formats or r["kind"].startswith(("bandwidth", "launch"))]  # fmt: skip
    tables = gemm_tables([r for r in fit_rows if r["kind"] == "gemm"])
    curves, outliers = _curves(gpu, fit_rows, overhead_us * 1e-6, formats)
    notes += outliers
    dev = meta.get("device", {})
    host = meta.get("host", {}) or {}
    provenance = Provenance(
        source=f"capsim calibrate harness ({meta.get('backend')} backend)",
        method=(
            "GEMM rows -> measured tables (time vs m per format and n, k); GEMM, attention and "
            "bandwidth rows -> efficiency curves (median achieved fraction of the spec roofline "
            "in bins of log intensity / log bytes); launch rows -> per-kernel overhead"
        ),
        device=str(dev.get("name") or dev.get("kind")),
        host=host.get("hostname"),
        backend=meta.get("backend"),
        harness_version=meta.get("harness_version"),
        measured=meta.get("created_utc"),
        created=today,
        data=data,
    )
    cal = Calibration(
        provenance=provenance,
        kernel_overhead_us=_sig(overhead_us, 4),
        measured=peaks,
        curves=curves,
        tables=tables,
    )
    fitted = _with_calibration(gpu, cal, today)
    predictions = _evaluate_rows(fitted, validate)
    errors = []
    for group in _groups(predictions, holdout):
        errors.append(
            fit_error(
                group[0], np.array([p["error"] for p in group[1]]), [p["label"] for p in group[1]]
            )  # fmt: skip
        )
    errors += _leave_one_shape_out(fitted, fit_rows, overhead_us * 1e-6, formats)
    cal = cal.model_copy(
        update={"provenance": provenance.model_copy(update={"fit_errors": errors})}
    )
    fitted = _with_calibration(gpu, cal, today)
    return FitResult(fitted, cal, predictions, notes)


def unused_kind_notes(rows: list[dict[str, Any]]) -> list[str]:
    """One note per row kind that capsim cannot use yet (its rows are ignored, not refused)."""
    counts: dict[str, int] = {}
    for r in rows:
        if r["kind"] not in USED_KINDS:
            counts[r["kind"]] = counts.get(r["kind"], 0) + 1
    return [
        f"{n} {kind} rows ignored: capsim does not use {kind} measurements yet"
        for kind, n in sorted(counts.items())
    ]


def _usable(r: dict[str, Any]) -> bool:
    return r["kind"] in ("launch", "bandwidth_copy", "bandwidth_read") or _format_of(r) is not None


def _groups(predictions, holdout) -> list[tuple[str, list[dict[str, Any]]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for p in predictions:
        if p["kind"] in COMPOSITE_KINDS:
            key = f"{p['kind']} {p['precision']} (composite, never fitted)"
        else:
            key = f"{p['kind']} {p['precision']} (--holdout)"
        out.setdefault(key, []).append(p)
    return list(out.items())


def _leave_one_shape_out(
    gpu: GPU, fit_rows: list[dict[str, Any]], overhead_s: float, formats: Sequence[str]
) -> list[FitError]:
    """Each GEMM shape predicted by the curve fitted without it (formats with >= 2 shapes)."""
    from capsim.service.calibrated import CalibratedTimer

    out = []
    cal = gpu.calibration
    assert cal is not None
    for fmt in formats:
        gemm = [r for r in fit_rows if r["kind"] == "gemm" and _format_of(r) == fmt]
        shapes = sorted({(r["n"], r["k"]) for r in gemm})
        if len(shapes) < 2:
            continue
        errs, labels = [], []
        for shape in shapes:
            rest = [r for r in gemm if (r["n"], r["k"]) != shape]
            mine = [r for r in gemm if (r["n"], r["k"]) == shape]
            f = np.array([r["flops"] for r in rest], dtype=float)
            b = np.array([r["bytes"] for r in rest], dtype=float)
            t = np.array([r["median_s"] for r in rest], dtype=float)
            curve = make_curve("gemm", fmt, "intensity", f / b, achieved_efficiency(gpu, f, b, fmt, t, overhead_s))  # fmt: skip
            curves = [c for c in cal.curves if not (c.kind == "gemm" and c.format == fmt)]
            tables = [x for x in cal.tables if not (x.format == fmt and (x.n, x.k) == shape)]
            probe = gpu.model_copy(
                update={
                    "calibration": cal.model_copy(
                        update={"curves": [*curves, curve], "tables": tables}
                    )
                }  # fmt: skip
            )
            timer = CalibratedTimer(probe)
            for r in mine:
                tm = timer.evaluate("gemm", r["flops"], r["bytes"], fmt, 1, r["n"], r["k"], 1, np.array([float(r["m"])]))  # fmt: skip
                errs.append(float(tm.time_s[0]) / r["median_s"] - 1.0)
                labels.append(_gemm_label(r))
        out.append(fit_error(f"gemm {fmt}, each shape left out in turn", np.array(errs), labels))
    return out


def _with_calibration(gpu: GPU, cal: Calibration, today: str) -> GPU:
    sources = dict(gpu.sources)
    sources["calibration"] = calibration_source_line(cal)
    return GPU.model_validate(
        {
            **gpu.model_dump(exclude={"calibration", "sources"}),
            "sources": sources,
            "calibration": cal.model_dump(),
        }  # fmt: skip
    )


def calibration_source_line(cal: Calibration) -> str:
    """The ``sources.calibration`` text: provenance in one line."""
    p = cal.provenance
    parts = [p.source, f"device {p.device}"]
    if p.host:
        parts.append(f"host {p.host}")
    if p.harness_version:
        parts.append(f"harness {p.harness_version}")
    if p.measured:
        parts.append(f"measured {p.measured}")
    parts.append(f"fitted {p.created}")
    parts.append(f"data {p.data}")
    if p.commit:
        parts.append(f"commit {p.commit}")
    if p.licence:
        parts.append(f"licence: {p.licence}")
    if p.attribution:
        parts.append(f"attribution: {p.attribution}")
    return "; ".join(parts)


def _new_gpu(
    new_id: str,
    meta: dict[str, Any],
    rows: list[dict[str, Any]],
    peaks: MeasuredPeaks,
    launch_us: float | None,
    data: str,
    price: float | None,
    power_w: tuple[float, float | None] | None,
    today: str,
) -> GPU:
    """A catalog entry for an uncatalogued device from its measured peaks."""
    dev = meta.get("device", {}) or {}
    host = meta.get("host", {}) or {}
    if price is None:
        raise InputError(
            "a new entry needs a price: pass --price USD_PER_HOUR (what one device-hour costs "
            "you; the planner ranks by cost)",
            where="--price",
        )
    if peaks.bandwidth_gb_s is None:
        raise InputError("no bandwidth rows: cannot set the entry's memory bandwidth", file=data)
    if not peaks.tflops:
        raise InputError("no GEMM rows in a capsim math format: cannot set any peak", file=data)
    idle, busy = peaks.power_idle_w, peaks.power_busy_w
    if power_w is not None:
        max_w, idle_given = power_w
        power = {"idle_w": idle_given if idle_given is not None else round(0.2 * max_w, 1), "max_w": max_w}  # fmt: skip
        power_src = (
            f"given with --power-w (max {max_w:g} W"
            + (
                f", idle {idle_given:g} W)"
                if idle_given is not None
                else "; idle assumed 20% of max)"
            )  # fmt: skip
            + "; not measured"
        )
    elif busy is not None:
        power = {"idle_w": idle if idle is not None else 0.0, "max_w": busy}
        power_src = f"measured by the harness (NVML): idle {idle} W, busy {busy} W ({data})"
    else:
        raise InputError(
            "board power was not measured on this device (no NVML): pass --power-w MAX[,IDLE] "
            "in watts (e.g. the TDP)",
            where="--power-w",
        )
    power["warm_idle_w"] = power["idle_w"]
    mem = float(dev.get("memory_bytes") or host.get("memory_bytes") or 0) / GIB
    if mem <= 0:
        raise InputError("the measurements do not say the device's memory size", file=data)
    where = f"capsim calibrate fit {data} (harness {meta.get('harness_version')}, {meta.get('backend')} backend, host {host.get('hostname')}, {today})"  # fmt: skip
    cc = dev.get("compute_capability")
    fields = {
        "id": new_id,
        "name": str(dev.get("name") or new_id),
        "vendor": "nvidia" if dev.get("kind") == "cuda" else "cpu",
        "architecture": f"sm_{str(cc).replace('.', '')}" if cc else host.get("machine"),
        "memory_gib": round(mem, 2),
        "usable_memory_gib": round(mem, 2),
        "bandwidth_gb_s": peaks.bandwidth_gb_s,
        "peak_tflops": {
            f: peaks.tflops.get(f) for f in ("fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4")
        },  # fmt: skip
        "efficiency": {"compute": 1.0, "memory": 1.0},
        "kernel_overhead_us": _sig(launch_us, 4) if launch_us is not None else 5.0,
        "interconnect": {"kind": "none", "bandwidth_gb_s": 1.0, "max_gpus": 1},
        "power": power,
        "price": {"provider": "user", "usd_per_hour": price, "note": "given with --price"},
        "sources": {
            "memory_gib": f"measured: device memory {mem:.2f} GiB as the harness reported it; {where}",
            "usable_memory_gib": "assumed equal to memory_gib (what the harness reported)",
            "bandwidth_gb_s": f"measured: best bandwidth_copy/read rate; {where}",
            "peak_tflops": f"measured: best achieved GEMM rate per format (not a spec sheet); formats not measured are null; {where}",  # fmt: skip
            "efficiency": "1.0: the peaks are the best measured rates, not spec-sheet figures",
            "kernel_overhead_us": (
                f"measured: median launch row; {where}"
                if launch_us is not None
                else "not measured (no launch rows): assumed 5 us"
            ),  # fmt: skip
            "interconnect": "not measured: a single device (max_gpus 1, no tensor parallelism); bandwidth is a placeholder",  # fmt: skip
            "power": power_src,
            "price": f"given with --price {price:g} USD per hour (not a market price)",
        },
        "notes": f"Created by capsim calibrate fit --new-gpu on {today} from {data}.",
    }
    return parse_model(GPU, fields, file=data)


# --------------------------------------------------------------------------------------------
# Vidur import
# --------------------------------------------------------------------------------------------


@dataclass
class VidurImport:
    gpu: GPU
    calibration: Calibration
    comparison: Any  # pandas DataFrame: op, tp, num_tokens, measured_s, table_s, error
    notes: list[str] = field(default_factory=list)


def read_vidur(path: Path):
    """Vidur's ``mlp.csv``: medians per (num_tokens, tp) in seconds (duplicate rows merged by
    median), checked column by column; and the model shape."""
    import pandas as pd

    _check_vidur_path(path)
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"not a readable CSV: {exc}", file=path) from None
    needed = [*VIDUR_KEYS, *VIDUR_SHAPE] + [
        f"time_stats.{op}.median" for t in VIDUR_TABLES for op in vidur_columns(t)
    ]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputError(
            "not a Vidur mlp.csv profile: missing column(s) " + ", ".join(missing[:6]), file=path
        )
    if raw.empty:
        raise InputError("no rows", file=path)
    for c in needed:
        col = pd.to_numeric(raw[c], errors="coerce") if c != "use_gated_mlp" else raw[c]
        bad = col.isna() if c == "use_gated_mlp" else (col.isna() | (col < 0))
        if c.startswith("time_stats") or c in VIDUR_KEYS:
            bad = bad | (col <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"row {i + 1} (line {i + 2}): {raw[c].iloc[i]!r} is not a positive number",
                file=path,
                where=f"column '{c}'",
            )
        if c != "use_gated_mlp":
            raw[c] = col
    shapes = raw[list(VIDUR_SHAPE)].drop_duplicates()
    if len(shapes) != 1:
        raise InputError("rows describe more than one model shape", file=path)
    times = [f"time_stats.{op}.median" for t in VIDUR_TABLES for op in vidur_columns(t)]
    med = raw.groupby(list(VIDUR_KEYS))[list(dict.fromkeys(times))].median() * 1e-3
    med.columns = [c.split(".")[1] for c in med.columns]
    s = shapes.iloc[0]
    gated = str(s.use_gated_mlp).strip().lower() in ("true", "1", "1.0")
    model = TransformerModel(
        name="vidur-profile", layers=1, hidden_size=int(s.n_embd), attention_heads=int(s.n_head),
        kv_heads=int(s.n_kv_head), ffn_size=int(s.n_expanded_embd), vocab_size=int(s.vocab_size),
        gated_mlp=gated,
    )  # fmt: skip
    return med, model


def vidur_measured(med, table: str):
    """The measured seconds behind one capsim table (a Series over (num_tokens, tp))."""
    spec = VIDUR_TABLES[table]
    if isinstance(spec, str):
        return med[spec]
    means = sum(med[c] for c in spec[0]) / len(spec[0])
    return means + sum(med[c] for c in spec[1:])


def _capsim_costs(gpu: GPU, model: TransformerModel, tp: int) -> dict[str, dict[str, Any]]:
    """Cost coefficients (per token and fixed) of capsim's operators for ``model`` at fp16."""
    from capsim.service.llm import LLMEngineSettings, LLMServiceModel, Shard, default_op_timer

    svc = LLMServiceModel(
        gpu, model, "fp16", tp, LLMEngineSettings(max_num_batched_tokens=2), default_op_timer
    )
    t = np.array([0.0, 1.0])
    out = {}
    for op in svc._token_ops(t):
        f = np.broadcast_to(np.asarray(op.flops, dtype=float), t.shape)
        b = np.broadcast_to(np.asarray(op.bytes, dtype=float), t.shape)
        out[op.name] = dict(
            n=op.n, k=op.k, kernels=op.kernels, fmt=op.fmt,
            flops_per_token=float(f[1] - f[0]), bytes_fixed=float(b[0]),
            bytes_per_token=float(b[1] - b[0]),
        )  # fmt: skip
    sh = Shard.of(model, tp)
    # RoPE alone (the first of rope_kv_write's two kernels): read and write q and k
    out["rope"] = dict(
        n=0, k=0, kernels=1, fmt=out["norm"]["fmt"], flops_per_token=0.0, bytes_fixed=0.0,
        bytes_per_token=2.0 * (sh.q_heads + sh.kv_heads) * sh.head_dim * 2.0,
    )  # fmt: skip
    return out


def import_vidur(
    csv_path: str | Path,
    gpu: GPU,
    *,
    card: str | None = None,
    commit: str = VIDUR_COMMIT,
    tolerance: float = DEFAULT_TOLERANCE,
    today: str | None = None,
    force: bool = False,
) -> VidurImport:
    """Build ``gpu``'s calibration from a Vidur ``mlp.csv`` (see the module docstring).

    Refuses a profile whose file name (or ``card``) names another card than ``gpu`` unless
    ``force``, and always one whose best GEMM beats ``gpu``'s fp16 spec peak by more than 5%.
    """
    import pandas as pd

    path = Path(csv_path)
    today = today or _today()
    if not 0 < tolerance < 0.5:
        raise InputError(f"tolerance must be in (0, 0.5), got {tolerance}", where="--tolerance")
    if gpu.peak_flops("fp16") is None:
        raise InputError(f"{gpu.id} has no fp16 peak; Vidur profiles are fp16", where="--gpu")
    _check_vidur_path(path)
    notes = _check_vidur_card(path, card, gpu, force)
    med, model = read_vidur(path)
    card = card or _vidur_card(path)
    overhead_s = gpu.kernel_overhead_us * 1e-6
    tables: list[OpTable] = []
    compare = []
    gemm_pts: dict[str, list] = {"f": [], "b": [], "t": [], "key": [], "tok": []}
    mem_pts: dict[str, list] = {"b": [], "t": []}
    tps = sorted(int(v) for v in med.index.get_level_values(1).unique())
    for tp in tps:
        costs = _capsim_costs(gpu, model, tp)
        sub = med.xs(tp, level=1)
        tokens = sub.index.to_numpy(dtype=float)
        for name in VIDUR_TABLES:
            c = costs[name]
            secs = vidur_measured(sub, name).to_numpy(dtype=float)
            keep = thin_indices(tokens, secs, tolerance)
            tab = OpTable(
                op=name, format="fp16", tp=tp, n=c["n"], k=c["k"], kernels=c["kernels"],
                flops_per_token=c["flops_per_token"], bytes_fixed=c["bytes_fixed"],
                bytes_per_token=c["bytes_per_token"],
                measured_as="vidur " + " + ".join(vidur_columns(name)),
                tokens=[int(tokens[i]) for i in keep],
                time_us=[_round_us(secs[i] * 1e6) for i in keep],
            )  # fmt: skip
            tables.append(tab)
            back = tab.seconds(tokens)
            compare.append(
                pd.DataFrame(
                    {
                        "op": name,
                        "tp": tp,
                        "num_tokens": tokens.astype(int),
                        "measured_s": secs,
                        "table_s": back,
                    }
                )  # fmt: skip
            )
            f, b = tab.cost(tokens)
            if name in VIDUR_GEMMS:
                gemm_pts["f"].append(f)
                gemm_pts["b"].append(b)
                gemm_pts["t"].append(secs)
                gemm_pts["key"] += [(name, tp)] * len(tokens)
                gemm_pts["tok"] += [int(x) for x in tokens]
        # element-wise kernels one by one, with the bytes each one moves
        h = model.hidden_size
        for col, nbytes in (
            ("input_layernorm", 2.0 * h * 2.0),
            ("post_attention_layernorm", 2.0 * h * 2.0),
            ("add", 3.0 * h * 2.0),
            ("mlp_act", costs["mlp_act"]["bytes_per_token"]),
            ("attn_rope", costs["rope"]["bytes_per_token"]),
        ):
            mem_pts["b"].append(nbytes * tokens)
            mem_pts["t"].append(sub[col].to_numpy(dtype=float))
    comparison = pd.concat(compare, ignore_index=True)
    comparison["error"] = comparison.table_s / comparison.measured_s - 1.0
    gf, gb, gt = (np.concatenate(gemm_pts[k]) for k in ("f", "b", "t"))
    curves = [
        make_curve(
            "gemm",
            "fp16",
            "intensity",
            gf / gb,
            achieved_efficiency(gpu, gf, gb, "fp16", gt, overhead_s),
        ),  # fmt: skip
    ]
    mb, mt = np.concatenate(mem_pts["b"]), np.concatenate(mem_pts["t"])
    mem_eff = (mb / gpu.bandwidth) / np.maximum(mt - overhead_s, MIN_BODY * mt)
    curves.append(make_curve("memory", "fp16", "bytes", mb, mem_eff))
    errors = [
        fit_error(
            f"stored tables vs all {len(comparison)} measured points",
            comparison.error.to_numpy(),
            [f"{r.op} tp={r.tp} {r.num_tokens} tok" for r in comparison.itertuples()],
        ),
        _vidur_curve_cv(gpu, gf, gb, gt, gemm_pts["key"], overhead_s),
    ]
    peak16 = gpu.peak_flops("fp16")
    assert peak16 is not None
    i_best = int(np.argmax(gf / gt))
    best = float(gf[i_best] / gt[i_best]) / 1e12
    if best * 1e12 > SPEC_MARGIN * peak16:
        op, tp = gemm_pts["key"][i_best]
        tokens = gemm_pts["tok"][i_best]
        raise InputError(
            f"best fp16 GEMM ({op} tp={tp}, {tokens} tokens) ran at {best:.0f} TFLOP/s = "
            f"{best * 1e12 / peak16:.0%} of {gpu.id}'s spec fp16 peak ({peak16 / 1e12:g} "
            "TFLOP/s): measured faster than the card's spec peak -- wrong --gpu?",
            file=path,
        )
    provenance = Provenance(
        source=f"Vidur operator profile (microsoft/vidur {VIDUR_UPSTREAM.format(card=card)})",
        method=(
            "Vidur mlp.csv medians per (num_tokens, tp) mapped onto capsim operators "
            "(attn_pre_proj->qkv_proj, attn_post_proj->o_proj, mlp_up_proj->mlp_up, "
            "mlp_down_proj->mlp_down, mlp_act, emb->embed, attn_rope->rope, mean(input_layernorm, "
            "post_attention_layernorm)+add->norm); tables thinned to reproduce every point "
            f"within {tolerance:.0%}; GEMM curve = median achieved fraction of the fp16 roofline "
            "in bins of log intensity; memory curve from the element-wise kernels"
        ),
        device=f"{gpu.name} (Vidur profile '{card}', Llama-2-7B shapes, fp16)",
        created=today,
        data=str(path.name),
        licence=VIDUR_LICENCE,
        attribution=VIDUR_ATTRIBUTION,
        commit=commit,
        fit_errors=errors,
    )
    cal = Calibration(
        provenance=provenance,
        kernel_overhead_us=gpu.kernel_overhead_us,
        measured=MeasuredPeaks(tflops={"fp16": _sig(best, 4)}),
        curves=curves,
        tables=tables,
    )
    notes.append(
        f"{len(tables)} tables, {sum(len(t.tokens) for t in tables)} of "
        f"{len(comparison)} points kept (tolerance {tolerance:.0%}); best fp16 GEMM "
        f"{best:.0f} TFLOP/s = {best * 1e12 / peak16:.0%} of spec peak"
    )
    return VidurImport(_with_calibration(gpu, cal, today), cal, comparison, notes)


_VIDUR_CARDS = re.compile(r"(a100|h100|a40|h200|l40s?|a10g?)")


def _vidur_card(path: Path) -> str:
    m = _VIDUR_CARDS.search(path.name.lower())
    return m.group(1) if m else path.stem


def _check_vidur_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(
            "is a directory: give the profile file itself, e.g. mlp_a100_Llama-2-7b-hf.csv",
            file=path,
        )
    if not path.is_file():
        raise InputError("file not found", file=path)


def _check_vidur_card(path: Path, card: str | None, gpu: GPU, force: bool) -> list[str]:
    """A card named by the file name or ``--card`` must be the entry's (``a100`` for
    ``a100-80gb-sxm``); else refuse, or with ``force`` say so in a note."""
    named = []
    m = _VIDUR_CARDS.search(path.name.lower())
    if m:
        named.append((m.group(1), f"the file name names '{m.group(1)}'"))
    if card and _VIDUR_CARDS.fullmatch(card.lower()):
        named.append((card.lower(), f"--card is '{card}'"))
    wrong = [why for c, why in named if not (gpu.id == c or gpu.id.startswith(c + "-"))]
    if not wrong:
        return []
    text = f"{' and '.join(wrong)}, but --gpu is {gpu.id}"
    if not force:
        raise InputError(
            f"{text}: a profile of another card? Pass --force to import it anyway", file=path
        )
    return [f"--force: {text}"]


def _vidur_curve_cv(gpu, f, b, t, keys, overhead_s) -> FitError:
    """Each (GEMM operator, tp) table predicted by the curve fitted without it."""
    from capsim.service.calibrated import CalibratedTimer

    keys_arr = np.array([f"{k[0]} tp={k[1]}" for k in keys])
    errs, labels = [], []
    for key in dict.fromkeys(keys_arr.tolist()):
        mine = keys_arr == key
        rest = ~mine
        curve = make_curve(
            "gemm", "fp16", "intensity", f[rest] / b[rest],
            achieved_efficiency(gpu, f[rest], b[rest], "fp16", t[rest], overhead_s),
        )  # fmt: skip
        probe_cal = Calibration(
            provenance=Provenance(source="cv", method="cv", device="cv", created="cv", data="cv"),
            kernel_overhead_us=overhead_s * 1e6,
            curves=[curve],
        )
        probe = gpu.model_copy(update={"calibration": probe_cal})
        timer = CalibratedTimer(probe)
        tm = timer.evaluate("gemm", f[mine], b[mine], "fp16", 1, 1, 1, 1, np.ones(mine.sum()))
        errs.append(tm.time_s / t[mine] - 1.0)
        labels += [key] * int(mine.sum())
    return fit_error(
        "gemm curve, each (operator, tp) table left out in turn", np.concatenate(errs), labels
    )


# --------------------------------------------------------------------------------------------
# Writing catalog files
# --------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block-style mappings; lists of plain values on one (wrapped) line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    """YAML text of ``data`` in the catalog's style (safe types only)."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100,
        allow_unicode=True,
    )  # fmt: skip


def calibration_yaml(cal: Calibration) -> str:
    """The ``calibration:`` block as YAML text (lists of numbers on one line each)."""
    text = dump_yaml({"calibration": cal.model_dump(mode="json", exclude_none=True)})
    header = (
        "# calibration: measured tables and fitted efficiency curves, written by capsim calibrate\n"
        "# (see capsim/calibration.py for the schema); edit by re-running the fit or import.\n"
    )
    return header + text


_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:")


def splice_calibration(text: str, cal: Calibration) -> str:
    """``text`` of a catalog file with its calibration block (and ``sources.calibration``)
    replaced, keeping every other line -- and its comments -- as it was."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):  # drop an existing calibration block and its header comment
        line = lines[i]
        m = _TOP_KEY.match(line)
        if m and m.group(1) == "calibration":
            while out and out[-1].startswith("# calibration") or (out and out[-1].startswith("# (see capsim/calibration.py")):  # fmt: skip
                out.pop()
            i += 1
            while i < len(lines) and not _TOP_KEY.match(lines[i]):
                i += 1
            continue
        out.append(line)
        i += 1
    while out and not out[-1].strip():
        out.pop()
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out = _set_source(out, "calibration", calibration_source_line(cal))
    return "".join(out) + "\n" + calibration_yaml(cal)


def _set_source(lines: list[str], key: str, value: str) -> list[str]:
    start = next((i for i, ln in enumerate(lines) if re.match(r"^sources\s*:\s*(#.*)?$", ln)), None)
    if start is None:
        raise ValueError("no block-style 'sources:' mapping to add the calibration source to")
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    body = [j for j in range(start + 1, end) if lines[j].strip() and not lines[j].lstrip().startswith("#")]  # fmt: skip
    indent = re.match(r"^(\s*)", lines[body[0]]).group(1) if body else "  "
    new = indent + yaml.safe_dump({key: value}, width=10**6, allow_unicode=True).rstrip("\n") + "\n"
    for j in body:
        if re.match(rf"^{re.escape(indent)}{re.escape(key)}\s*:", lines[j]):
            # replace this entry (and any continuation lines)
            k = j + 1
            while k < end and lines[k].startswith(indent + " "):
                k += 1
            return lines[:j] + [new] + lines[k:]
    last = body[-1] + 1 if body else start + 1
    while last < end and lines[last].startswith(indent + " "):
        last += 1
    return lines[:last] + [new] + lines[last:]


def _check_text(text: str, path: Path) -> GPU:
    """Parse ``text`` as the catalog file ``path`` would be parsed."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - we wrote it
        raise InputError(
            f"internal error: generated YAML does not parse: {exc}", file=path
        ) from None
    gpu = parse_model(GPU, data, file=path)
    if gpu.id != path.stem:
        raise InputError(f"id '{gpu.id}' must match the file name '{path.stem}'", file=path)
    return gpu


def write_calibration(path: str | Path, cal: Calibration) -> tuple[GPU, Path]:
    """Put ``cal`` into the catalog file ``path``; keep the previous file as ``<path>.bak``.

    The new text is validated before anything is written, and it must leave every other field of
    the entry unchanged; both writes are atomic. Returns the new entry and the backup's path.
    """
    p = Path(path)
    old_gpu = load_gpu_file(p)
    old = p.read_bytes()
    try:
        text = splice_calibration(old.decode("utf-8"), cal)
    except ValueError:  # no block-style sources: rewrite the whole entry (comments are lost)
        data = old_gpu.model_dump(mode="json", exclude={"calibration"}, exclude_none=True)
        data["sources"]["calibration"] = calibration_source_line(cal)
        text = dump_yaml(data) + "\n" + calibration_yaml(cal)
    new_gpu = _check_text(text, p)
    before = old_gpu.model_dump(exclude={"calibration", "sources"})
    after = new_gpu.model_dump(exclude={"calibration", "sources"})
    if before != after:  # pragma: no cover - a bug in the splice, never write it
        raise InputError(
            "internal error: writing the calibration would change other fields", file=p
        )
    backup = backup_path(p)
    atomic_write_bytes(backup, old)
    atomic_write_text(p, text)
    return new_gpu, backup


def entry_yaml(gpu: GPU) -> str:
    """A whole catalog file for ``gpu`` (a new entry)."""
    data = {
        k: v
        for k, v in gpu.model_dump(mode="json", exclude={"calibration"}).items()
        if v is not None
    }
    head = (
        f"# {gpu.name}: created by capsim calibrate fit --new-gpu from measurements on this "
        "device.\n# Peaks are the best measured rates (efficiency 1.0); every number's source is "
        "below.\n"
    )
    text = head + dump_yaml(data)
    if gpu.calibration is not None:
        text += "\n" + calibration_yaml(gpu.calibration)
    return text


def write_new_entry(directory: str | Path, gpu: GPU) -> Path:
    """Write a new catalog file ``<directory>/<id>.yaml`` (refuses to replace one)."""
    d = Path(directory)
    p = d / f"{gpu.id}.yaml"
    if p.exists():
        raise InputError(
            f"{p} exists: use --gpu {gpu.id} to recalibrate an existing entry", where="--new-gpu"
        )
    text = entry_yaml(gpu)
    _check_text(text, p)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, text)
    return p


def backup_path(path: str | Path) -> Path:
    """Where :func:`write_calibration` keeps the previous file."""
    p = Path(path)
    return p.with_name(p.name + ".bak")


__all__ = [
    "FitResult",
    "Holdout",
    "VidurImport",
    "fit_measurements",
    "import_vidur",
    "predict_forward_block",
    "write_calibration",
    "write_new_entry",
]
