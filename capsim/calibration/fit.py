"""Turning measurements into a catalog entry's calibration.

Two sources:

* :func:`fit_measurements` -- a ``capsim-calibration/1`` directory written by the harness
  (``calibrate/``; loaded by the CLI with ``calibrate.load_measurements``, which capsim imports
  only inside the ``capsim calibrate`` commands). GEMM rows become measured tables (one per
  format and ``(n, k)``, time against ``m``) and, with the attention and bandwidth rows, fitted
  efficiency curves; launch rows give the per-kernel overhead. The fit reports its own error on
  measurements it did not use: rows held out (``holdout``), every composite row (a
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

Writing goes through :mod:`capsim.calibration.writer`: the calibration goes to the entry's
sidecar ``<id>.calibration.yaml``, validated first, the previous sidecar kept as ``.bak``, every
write atomic.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from pydantic import ValidationError

from capsim.calibration.curves import (
    COMPOSITE_KINDS,
    USED_KINDS,
    _sig,
    _today,
    achieved_efficiency,
    fit_error,
    make_curve,
    predict_forward_block,
)
from capsim.calibration.rows import (
    FitResult,
    Holdout,
    _curves,
    _format_of,
    _gemm_label,
    _launch_us,
    _measured_peaks,
    _row_label,
    check_spec_peaks,
    gemm_tables,
    not_native,
    peaks_are_measured,
    run_notes,
)
from capsim.errors import (
    InputError,
    format_validation_error,
    parse_model,
)
from capsim.load import load_model_card
from capsim.service.calibrated import CalibratedTimer, timer_for
from capsim.service.fixed import FixedServiceModel
from capsim.spec.calibration import (
    Calibration,
    FitError,
    MeasuredPeaks,
    Provenance,
)
from capsim.spec.catalog import GIB, GPU
from capsim.spec.models import FixedModel
from capsim.spec.precision import HARNESS_FORMATS, MATH_FORMATS


def _predict_row(gpu: GPU, r: dict[str, Any]) -> tuple[float, str] | None:
    """Predicted seconds of one harness row from ``gpu``'s calibration, and the source."""
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
        card = load_model_card("resnet-50")
        assert isinstance(card, FixedModel)  # the shipped ResNet-50 card is a fixed model
        svc = FixedServiceModel(gpu, card, fmt)
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
    fit_rows, native_notes = not_native(meta, fit_rows)
    notes += native_notes
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
    skipped = sorted({fm for r in fit_rows if (fm := _format_of(r))} - set(formats))
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
            "a new entry needs a price in USD per device-hour (what one device-hour costs "
            "you; the planner ranks by cost)",
            param="price_usd_per_hour",
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
            "board power was not measured on this device (no NVML): give MAX[,IDLE] board power "
            "in watts (e.g. the TDP)",
            param="power_w",
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
        "peak_tflops": {f: peaks.tflops.get(f) for f in MATH_FORMATS},  # fmt: skip
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
