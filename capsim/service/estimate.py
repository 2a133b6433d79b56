"""``capsim estimate``: the service time and memory fit of one model on one card.

For a fixed-shape model: per batch size, the batch time, throughput, what bounds it (compute,
memory or launch overhead) and the memory footprint. For a transformer, the LLM estimate
(prefill, decode per token, KV capacity) from :mod:`capsim.service.llm`.

>>> from capsim.load import load_catalog
>>> from capsim.load import load_model_card
>>> r = estimate(load_catalog()["t4"], load_model_card("resnet-50"), "int8", [1, 32])
>>> [row["batch"] for row in r.rows]
[1, 32]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from capsim.errors import InputError
from capsim.service.calibrated import source_of
from capsim.service.estimate_layers import format_rows, layer_report
from capsim.service.fixed import FixedServiceModel, Unsupported
from capsim.service.llm_estimate import LLMEstimates, estimate_llm
from capsim.spec.catalog import GIB, GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import FixedModel, TransformerModel
from capsim.spec.precision import PRECISIONS, math_units


@dataclass(frozen=True)
class FixedEstimate:
    gpu: str
    model: str
    precision: str
    math_format: str
    rows: list[dict[str, Any]]
    memory: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    vendor: str = "nvidia"
    layers: list[dict[str, Any]] = field(default_factory=list)  # per layer kind, largest batch

    def to_dict(self) -> dict[str, Any]:
        return {
            "gpu": self.gpu,
            "model": self.model,
            "precision": self.precision,
            "math_format": self.math_format,
            "batches": self.rows,
            "memory": self.memory,
            "notes": self.notes,
            **({"layers": self.layers} if self.layers else {}),
        }

    def to_text(self) -> str:
        sources = ", ".join(dict.fromkeys(str(r.get("source", "roofline")) for r in self.rows))
        head = (
            f"{self.model} on {self.gpu} at {self.precision} (math on "
            f"{math_units(self.math_format, self.vendor)}; source: {sources or 'roofline'})"
        )
        cols = [
            "batch",
            "time_ms",
            "throughput_rps",
            "bound",
            "compute_ms",
            "memory_ms",
            "overhead_ms",
            "memory_gib",
            "fits",
        ]
        table = [cols] + [[_fmt(r[c]) for c in cols] for r in self.rows]
        widths = [max(len(row[i]) for row in table) for i in range(len(cols))]
        lines = [head, ""]
        for j, row in enumerate(table):
            lines.append("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))
            if j == 0:
                lines.append("  ".join("-" * w for w in widths))
        m = self.memory
        lines += [
            "",
            f"memory: weights {m['weights_gib']:.2f} GiB, reserved {m['reserved_gib']:.2f} GiB, "
            f"usable {m['usable_gib']:.2f} GiB; largest batch that fits: {m['max_batch']}",
            *self.notes,
        ]
        if self.layers:
            lines += ["", f"per layer kind at batch {self.rows[-1]['batch']}:"]
            lines += format_rows(self.layers)
        return "\n".join(lines)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3f}" if v < 1000 else f"{v:.0f}"
    return str(v)


def estimate_fixed(
    gpu: GPU, model: FixedModel, precision: str, batches: list[int]
) -> FixedEstimate:
    svc = FixedServiceModel(gpu, model, precision)
    rows = []
    for b in batches:
        e = svc.batch(b)
        fit = svc.memory_fit(b)
        rows.append(
            {
                "batch": b,
                "time_ms": e.time_s * 1e3,
                "throughput_rps": e.throughput,
                "bound": e.bound,
                "compute_ms": e.compute_s * 1e3,
                "memory_ms": e.memory_s * 1e3,
                "overhead_ms": e.overhead_s * 1e3,
                "memory_gib": fit.used_bytes / GIB,
                "fits": fit.fits,
                "source": e.source,
            }
        )
    fit = svc.memory_fit(max(batches))
    layers: list[dict[str, Any]] = []
    if svc.layers is not None:
        layers, notes = layer_report(svc, batches[-1])
    else:
        notes = [
            f"roofline inputs: peak {gpu.peak_tflops_for(svc.math_format)} TFLOP/s x efficiency "
            f"{gpu.efficiency.compute}; {gpu.bandwidth_gb_s:g} GB/s x efficiency "
            f"{gpu.efficiency.memory}; {model.kernels_per_forward} kernels x "
            f"{gpu.kernel_overhead_us:g} us"
        ] + _calibration_notes(gpu)
    return FixedEstimate(
        gpu.id,
        model.name,
        precision,
        svc.math_format,
        rows,
        {
            "weights_gib": fit.weight_bytes / GIB,
            "reserved_gib": fit.reserved_bytes / GIB,
            "usable_gib": fit.usable_bytes / GIB,
            "max_batch": fit.max_batch,
        },
        notes,
        vendor=gpu.vendor,
        layers=layers,
    )


def _calibration_notes(gpu: GPU) -> list[str]:
    """What a calibrated entry's times come from (nothing for an uncalibrated one)."""
    if gpu.calibration is None:
        return []
    return [
        source_of(gpu),
        "fitted = spec roofline / fitted efficiency at this arithmetic intensity + kernels x "
        f"{gpu.calibration.kernel_overhead_us:g} us (capsim calibrate compare --gpu {gpu.id})",
    ]


def estimate(
    gpu: GPU,
    model: FixedModel | TransformerModel,
    precision: str,
    batches: list[int],
    *,
    tp: int = 1,
    ep: int = 1,
    prompt: int = 1024,
    output: int = 256,
    seq_len: int | None = None,
    engine: LLMEngineSettings | None = None,
):
    """Estimate for either kind of model; raises InputError/Unsupported on bad combinations.

    ``engine``: the LLM engine settings (default: vLLM V1's defaults and CPU overhead preset).
    """
    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision '{precision}'; accepted: {', '.join(PRECISIONS)}",
            param="precision",
        )
    if isinstance(model, FixedModel):
        if tp != 1:
            raise InputError("tensor parallelism applies to transformer models only", param="tp")
        if ep != 1:
            raise InputError("expert parallelism applies to MoE transformer cards", param="ep")
        try:
            model = model.at_sequence_length(seq_len)
        except ValueError as exc:
            raise InputError(str(exc), param="seq_len") from None
        return estimate_fixed(gpu, model, precision, batches)
    if seq_len is not None:
        raise InputError(
            "a sequence length applies to encoder cards; transformer cards take prompt/output",
            param="seq_len",
        )

    if prompt + output > model.max_context:
        raise InputError(
            f"prompt + output = {prompt + output:,} tokens exceeds {model.name}'s context of "
            f"{model.max_context:,}",
            param="prompt/output",
        )
    try:
        ests = [
            estimate_llm(
                gpu, model, precision, tp, b, prompt, output, engine or LLMEngineSettings(), ep=ep
            )
            for b in sorted(set(batches))
        ]
    except ValueError as exc:
        raise Unsupported(str(exc)) from None
    if ests[-1].prefill_s is None:  # the card cannot run it at all (precision or tp split)
        raise Unsupported(ests[-1].fit.reason)
    return LLMEstimates(ests)
