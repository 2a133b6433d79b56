"""What ``capsim estimate`` says about a layered fixed-shape card: per layer kind, which model
timed it (the per-layer hardware model or a calibration curve of the same operator family and
format) and which efficiency applied.

>>> from capsim.load import load_catalog, load_model_card
>>> from capsim.service.fixed import FixedServiceModel
>>> svc = FixedServiceModel(load_catalog()["t4"], load_model_card("resnet-50"), "int8")
>>> rows, notes = layer_report(svc, 32)
>>> rows[0]["kind"], rows[0]["source"]
('conv', 'model')
"""

from __future__ import annotations

from typing import Any

from capsim.service.calibrated import source_of
from capsim.service.fixed import FixedServiceModel
from capsim.service.layers import ELEMENTWISE_EFF, FAMILY_FACTORS, summarize
from capsim.spec.chip import L2_BANDWIDTH_X

COLUMNS = (
    "kind", "family", "layers", "time_ms", "share", "bound", "min_clock", "l2_hit", "source",
    "efficiency_source",
)  # fmt: skip


def layer_report(svc: FixedServiceModel, batch: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Per layer-kind summary at ``batch`` and notes on the model's inputs."""
    assert svc.layers is not None
    gpu, model = svc.gpu, svc.model
    rows = summarize(svc.layers.batch(batch))
    chip = gpu.chip
    notes = [
        f"per-layer model ({len(svc.layers.costs)} layers"
        + (f", sequence length {model.sequence_length}" if model.sequence_length else "")
        + f"): per layer max(compute, memory) + kernels x {gpu.kernel_overhead_us:g} us",
        f"compute: peak {gpu.peak_tflops_for(svc.math_format)} TFLOP/s x clock ratio x "
        f"{svc.layers.gemm_eff_source} {svc.layers.gemm_eff:g} x family factor "
        f"({', '.join(f'{k} {v:g}' for k, v in FAMILY_FACTORS.items())}, generic) x tile/wave "
        f"quantisation over {chip.sm_count if chip and chip.sm_count else 'unknown (none)'} SMs;"
        f" depthwise/element-wise on CUDA cores at {ELEMENTWISE_EFF:g} x fp32 peak",
        _l2_note(svc),
        _clock_note(svc),
    ]
    sources = {r["source"] for r in rows}
    if gpu.calibration is not None:
        notes.append(source_of(gpu))
        notes.append(
            "calibration applies per operator family and format only: "
            + (
                "some layers use a fitted curve (source 'fitted')"
                if "fitted" in sources
                else f"no fitted curve for these layers' families at {svc.math_format}: "
                "all timed by the per-layer model (unmeasured -> model)"
            )
        )
    return rows, notes


def _l2_note(svc: FixedServiceModel) -> str:
    chip, gpu = svc.gpu.chip, svc.gpu
    if chip is None or not chip.l2_mib:
        return "L2 residency: no L2 size in the catalog entry, every activation from DRAM"
    bw = (
        f"{chip.l2_bandwidth_gb_s:g} GB/s (catalog)"
        if chip.l2_bandwidth_gb_s
        else f"{L2_BANDWIDTH_X:g} x DRAM = {L2_BANDWIDTH_X * gpu.bandwidth_gb_s:g} GB/s (assumed)"
    )
    return (
        f"L2 residency: the share of a layer's activations that fits {chip.l2_mib:g} MiB of L2 "
        f"moves at {bw}; weights and the rest from DRAM at {gpu.bandwidth_gb_s:g} GB/s x "
        f"{gpu.efficiency.memory:g}"
    )


def _clock_note(svc: FixedServiceModel) -> str:
    chip = svc.gpu.chip
    if chip is None or chip.sustained_clock_mhz is None:
        return "clocks: no published sustained clock under load: boost assumed"
    return (
        f"clocks: power-limited, {chip.sustained_clock_mhz:g} MHz sustained under full tensor "
        f"load vs {chip.boost_clock_mhz:g} MHz boost (min_clock = clock / boost per kind)"
    )


def format_rows(rows: list[dict[str, Any]]) -> list[str]:
    """The summary as an aligned text table."""
    table = [list(COLUMNS)] + [[_fmt(r[c]) for c in COLUMNS] for r in rows]
    widths = [max(len(row[i]) for row in table) for i in range(len(COLUMNS))]
    lines = []
    for j, row in enumerate(table):
        lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _fmt(v: Any) -> str:
    return f"{v:.3f}" if isinstance(v, float) else str(v)
