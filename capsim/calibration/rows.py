"""Harness result rows: hold-out selection, combining runs, GEMM tables, peaks and outliers."""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capsim.calibration.curves import (
    _ELEM,
    _OUT,
    MIN_BODY,
    _round_us,
    _sig,
    achieved_efficiency,
    make_curve,
)
from capsim.errors import (
    InputError,
)
from capsim.spec.calibration import (
    MAX_CURVE_EFFICIENCY,
    Calibration,
    CurveKind,
    EfficiencyCurve,
    MeasuredPeaks,
    OpTable,
)
from capsim.spec.catalog import GPU
from capsim.spec.precision import HARNESS_FORMATS

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
                param="holdout",
            )
        where: list[tuple[str, Any]] = []
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            if not eq or key not in _HOLDOUT_KEYS:
                raise InputError(
                    f"{part!r} in {text!r}: expected key=value with key one of "
                    f"{', '.join(sorted(_HOLDOUT_KEYS))}",
                    param="holdout",
                )
            if key != "precision":
                if not re.fullmatch(r"[0-9]+", value):
                    raise InputError(f"{key}={value!r} must be an integer", param="holdout")
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


#: Harness kernels that do not run the card's own tensor-core path from some compute capability
#: on: (kernel name as the harness writes it in ``impl``, lowest compute capability, why). Their
#: rows stay in the measurements but are not fitted, so the entry keeps its spec roofline for that
#: format instead of a curve that describes the framework, not the card.
NOT_NATIVE_KERNELS = (
    (
        "torch._int_mm",
        9.0,
        "torch._int_mm reaches about half the INT8 peak on Hopper (H200 run 2026-12-04: 952 TOP/s "
        "of 1,979) where torch._scaled_mm FP8 reaches 0.66-0.72 of the same dense peak (H100 "
        "whitepaper: FP8 and INT8 both 1,979 dense); TensorRT's INT8 kernels run MLPerf BERT as "
        "fast on the H200 as on the H100 SXM; on sm_103 torch dispatches _int_mm to Ampere-era "
        "cutlass_80 kernels (github.com/pytorch/pytorch/issues/187094)",
    ),
)


def not_native(
    meta: dict[str, Any], rows: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], list[str]]:
    """``rows`` without those of :data:`NOT_NATIVE_KERNELS` on this device, and a note per kernel
    left out (the device's ``compute_capability`` from meta.json; none known: nothing left out)."""
    text = str((meta.get("device") or {}).get("compute_capability") or "0")
    try:
        cc = float(text)
    except ValueError:
        cc = 0.0
    notes, keep = [], rows
    for kernel, from_cc, why in NOT_NATIVE_KERNELS:
        if cc < from_cc:
            continue
        native = [not str(r.get("impl") or "").startswith(kernel) for r in keep]
        out = [r for r, ok in zip(keep, native, strict=True) if not ok]
        if out:
            keep = [r for r, ok in zip(keep, native, strict=True) if ok]
            notes.append(
                f"{len(out)} {kernel} rows not fitted on compute capability {text} (the format "
                f"keeps the spec roofline): {why}"
            )
    return keep, notes


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
    shapes = sorted({(f, r["n"], r["k"]) for r in rows if (f := _format_of(r))})
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
        kinds_of: dict[CurveKind, tuple[str, ...]] = {"gemm": ("gemm",), "attention": ("attention_decode", "attention_prefill")}  # fmt: skip
        for kind, kinds in kinds_of.items():
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
            if peaks_are_measured(gpu):
                eff, note = _clip_cached(eff, kind, fmt)
                notes += note
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


def _clip_cached(eff: np.ndarray, kind: str, fmt: str) -> tuple[np.ndarray, list[str]]:
    """Efficiencies over :data:`MAX_CURVE_EFFICIENCY` of an entry whose peaks were measured in
    the same run, clipped there, with a note. Such points are small operands held in a cache,
    read faster than the measured memory bandwidth (a host CPU's large last-level cache, or a
    bandwidth test slowed by other work); units cannot be wrong, as the peaks come from the same
    timings.

    >>> e, notes = _clip_cached(np.array([0.8, 1.9]), "gemm", "fp32")
    >>> e.tolist(), notes[0][:44]
    ([0.8, 1.5], '1 gemm fp32 point(s) ran 1.9x the roofline o')
    """
    over = eff > MAX_CURVE_EFFICIENCY
    if not over.any():
        return eff, []
    note = (
        f"{int(over.sum())} {kind} {fmt} point(s) ran {float(eff.max()):.2g}x the roofline of the "
        "measured peaks (operands held in a cache, faster than the measured memory bandwidth, or "
        f"a bandwidth test slowed by other work): clipped at {MAX_CURVE_EFFICIENCY:g}"
    )
    return np.minimum(eff, MAX_CURVE_EFFICIENCY), [note]


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
    """True for entries whose peaks are measured rates (a new entry fitted), not a spec sheet."""
    return str(gpu.sources.get("peak_tflops", "")).startswith("measured")


def check_spec_peaks(gpu: GPU, rows: list[dict[str, Any]], device: str | None = None) -> None:
    """Refuse measurements that beat ``gpu``'s spec peaks (per GEMM format, and the memory
    bandwidth) by more than 5%: no card runs faster than its spec sheet, so they come from another
    card (``gpu`` is the wrong entry)."""
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
                f"measured faster than the card's spec peak -- wrong GPU entry?{on}",
                param="gpu",
            )
    bw = [(r["bytes"] / r["median_s"], r) for r in rows if r["kind"].startswith("bandwidth") and r.get("median_s")]  # fmt: skip
    if bw:
        rate, r = max(bw, key=lambda p: p[0])
        if rate > SPEC_MARGIN * gpu.bandwidth:
            raise InputError(
                f"{_where(r)} ({_row_label(r)}) moved {rate / 1e9:.4g} GB/s = "
                f"{rate / gpu.bandwidth:.0%} of {gpu.id}'s spec memory bandwidth "
                f"({gpu.bandwidth_gb_s:g} GB/s): measured faster than the card's spec -- wrong GPU "
                f"entry?{on}",
                param="gpu",
            )
