"""The roofline: an operator takes as long as its slower resource, plus launch overhead.

For one operator (a GEMM, an attention kernel, a whole fixed-shape network's forward pass)::

    time = max(FLOPs / (peak[fmt] * eff_compute), bytes / (bandwidth * eff_memory))
           + kernels * kernel_overhead

where ``peak[fmt]`` is the card's dense peak for the math format actually used (see
:mod:`capsim.spec.precision`) and the efficiencies come from the catalog entry.

>>> from capsim.load import load_catalog
>>> gpu = load_catalog()["h100-sxm"]
>>> t = roofline_op_time(gpu, OpCost("gemv", flops=2 * 4096 * 4096, bytes=2 * 4096 * 4096, math_format="fp16"))
>>> t.bound
'memory'
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from capsim.spec.catalog import GPU


@dataclass(frozen=True)
class OpCost:
    """Work of one operator: FLOPs, bytes moved, math format, kernel launches."""

    name: str
    flops: float
    bytes: float
    math_format: str
    kernels: int = 1


@dataclass(frozen=True)
class OpTime:
    """Predicted time of one operator and where the number came from."""

    name: str
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: Literal["compute", "memory", "overhead", "measured"]
    source: str = "roofline"


def roofline_op_time(
    gpu: GPU,
    op: OpCost,
    *,
    compute_efficiency: float | None = None,
    memory_efficiency: float | None = None,
) -> OpTime:
    """Roofline time of one operator on one card (efficiencies default to the catalog's)."""
    peak = gpu.peak_flops(op.math_format)
    if peak is None:
        raise ValueError(
            f"{gpu.id} has no {op.math_format} math (supported: {gpu.supported_formats()})"
        )
    eff_c = (
        compute_efficiency
        if compute_efficiency is not None
        else gpu.efficiency.compute_for(op.math_format)
    )
    eff_m = memory_efficiency if memory_efficiency is not None else gpu.efficiency.memory
    compute = op.flops / (peak * eff_c)
    memory = op.bytes / (gpu.bandwidth * eff_m)
    overhead = op.kernels * gpu.kernel_overhead_us * 1e-6
    body = max(compute, memory)
    bound: Literal["compute", "memory", "overhead"]
    if overhead > body:
        bound = "overhead"
    else:
        bound = "compute" if compute >= memory else "memory"
    return OpTime(op.name, body + overhead, compute, memory, overhead, bound)


def power_fraction(t: OpTime, memory_bound_fraction: float) -> float:
    """Share of (max - idle) power while ``t`` runs: 1 when compute-bound, less when memory-bound.

    Memory-bound work draws ``memory_bound_fraction`` of the span (Splitwise: A100 decode 250 W vs
    prefill 400 W over a 63 W idle, so (250-63)/(400-63) = 0.55). Launch overhead counts as
    memory-bound.
    """
    if t.time_s <= 0:
        return 0.0
    c = t.compute_s / t.time_s
    return min(1.0, max(c, memory_bound_fraction))
