"""Per-operator times of a layered fixed-shape card: what the hardware does, layer by layer.

For a batch of ``b`` samples, each layer (one fused kernel, :mod:`capsim.spec.model_layers`) takes::

    compute  = b * FLOPs / (peak[fmt] * clock_ratio * eff_family * eff_shape)
    memory   = weight_bytes / (DRAM bw * eff_mem)
               + activation_bytes * (hit / L2 bw + (1 - hit) / (DRAM bw * eff_mem))
    time     = max(compute, memory) + kernels * kernel_overhead

* ``eff_shape``: tile and wave quantisation. The GEMM (a convolution as an implicit GEMM of
  M = b x H_out x W_out, N = C_out, K = C_in x kh x kw) is cut into output tiles; the tiles run
  in waves of ``sm_count``; a part-filled tile or a part-filled last wave is paid in full. Of a
  few tile shapes the best is taken (smaller tiles waste less but reuse less: TILES).
* ``hit``: the share of the layer's activations (input + output of the batch) that the card's
  L2 holds, ``min(1, L2 / activations)``; they move at L2 bandwidth instead of DRAM.
* ``clock_ratio``: a kernel keeping the tensor cores busy at the boost clock would draw more
  than the power limit; it runs at the clock the limit allows (:meth:`capsim.spec.chip.Chip.clock_ratio`,
  from the published sustained clock under full load).
* ``eff_family``: GEMM: the catalog's compute efficiency for the format (cited per card);
  convolution, attention: that x a generic family factor (FAMILY_FACTORS); depthwise convs and
  element-wise passes: CUDA cores (fp32 peak) at ``ELEMENTWISE_EFF``.

Calibration applies only where it was measured: a layer whose operator family and math format
match a fitted curve of the entry (GEMM layers and a ``gemm`` curve of the same format, attention
and an ``attention`` curve, element-wise passes and a ``memory`` curve) is timed by that curve;
every other layer by the model above, and :attr:`LayerTime.source` says which.

>>> from capsim.load import load_catalog, load_model_card
>>> rows = layer_times(load_catalog()["t4"], load_model_card("resnet-50"), "int8", 8)
>>> rows[1].name, rows[1].family, rows[1].source
('conv1', 'conv', 'model')
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from capsim.service.roofline import OpTime
from capsim.spec.catalog import GPU
from capsim.spec.chip import Chip
from capsim.spec.model_layers import LayerCost
from capsim.spec.models import FixedModel
from capsim.spec.precision import get_precision

#: (tile M, tile N, intrinsic efficiency relative to the 128x128 tile): assumption, the tile
#: shapes cuBLAS/CUTLASS/TensorRT kernels pick among; smaller tiles re-read more operands.
TILES = ((256, 128, 1.0), (128, 128, 1.0), (128, 64, 0.9), (64, 64, 0.75), (64, 32, 0.6))
#: achieved fraction of the GEMM efficiency by operator family (generic, not per card).
#: conv: fitted on the `fit` rows of the accuracy suite's MLPerf ResNet-50 Offline results only
#: (benchmarks/fixed_shape_accuracy.py: mean |log error| 0.074 at 0.90); attention: fused
#: attention kernels reach ~70% of GEMM throughput (FlashAttention-2 paper, Dao 2023: 50-73% of
#: peak on A100 vs ~80% for GEMM); not fitted.
FAMILY_FACTORS = {"gemm": 1.0, "conv": 0.9, "attention": 0.7}
#: CUDA-core work (depthwise convs, element-wise): fraction of the fp32 peak; assumption.
ELEMENTWISE_EFF = 0.5

MODEL, CURVE = "model", "fitted"


@dataclass(frozen=True)
class LayerTime:
    """Predicted time of one layer for a batch, and what decided it."""

    name: str
    kind: str
    family: str
    flops: float
    bytes: float
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: str
    efficiency: float
    clock_ratio: float
    l2_hit: float
    source: str
    efficiency_source: str


def _shape_efficiency(gemm: tuple[int, int, int, int], b: int, sm: int | None) -> float:
    """Best over TILES of useful / paid tile area (tile and wave quantisation).

    >>> round(_shape_efficiency((128, 128, 64, 1), 1, 108), 4)  # 64 tiles of 64x32, 108 SMs
    0.0444
    >>> _shape_efficiency((128 * 108, 128, 64, 1), 1, 108)
    1.0
    """
    m, n, _, groups = gemm
    m *= b
    if sm is None:
        return 1.0
    best = 0.0
    for tm, tn, intrinsic in TILES:
        tiles = math.ceil(m / tm) * math.ceil(n / tn) * groups
        waves = math.ceil(tiles / sm)
        best = max(best, intrinsic * (m * n * groups) / (waves * sm * tm * tn))
    return best


class LayerTimer:
    """Times every layer of one layered card on one card at one precision."""

    def __init__(self, gpu: GPU, model: FixedModel, precision: str):
        costs = model.layer_costs()
        if costs is None:
            raise ValueError(f"{model.name} has no layers (a totals-only card)")
        self.gpu, self.model, self.costs = gpu, model, costs
        self.precision = get_precision(precision)
        fmt = self.precision.math_format(gpu.peak_tflops)
        if fmt is None:
            raise ValueError(f"{gpu.id} has no math format for {precision}")
        self.fmt = fmt
        self.chip = gpu.chip or Chip()
        self.peak = gpu.peak_flops(fmt) or 0.0
        self.vector_peak = gpu.peak_flops("fp32") or self.peak / 16
        self.gemm_eff = gpu.efficiency.compute_for(fmt)
        self.gemm_eff_source = (
            f"catalog efficiency.compute_by_format[{fmt}]"
            if fmt in gpu.efficiency.compute_by_format
            else "catalog efficiency.compute"
        )

    def _curve(self, family: str):
        cal = self.gpu.calibration
        if cal is None:
            return None
        kind = {"gemm": "gemm", "attention": "attention", "elementwise": "memory"}.get(family)
        return cal.curve(kind, self.fmt) if kind else None

    def layer(self, c: LayerCost, b: int) -> LayerTime:
        """Time of one layer for a batch of ``b``."""
        gpu, p = self.gpu, self.precision
        flops = b * c.flops
        w_bytes = c.weight_read * p.weight_bytes
        a_bytes = b * c.act_elems * p.act_bytes
        nbytes = w_bytes + a_bytes
        curve = self._curve(c.family)
        if curve is not None:
            return self._fitted(c, curve, flops, nbytes)
        dram = gpu.bandwidth * gpu.efficiency.memory
        l2 = self.chip.l2_bytes
        hit = min(1.0, l2 / a_bytes) if l2 > 0 and a_bytes > 0 else 0.0
        memory = w_bytes / dram + a_bytes * (
            hit / self.chip.l2_bandwidth(gpu.bandwidth) + (1.0 - hit) / dram
        )
        shape = 1.0
        if c.family in ("gemm", "conv", "attention") and c.gemm is not None:
            fam = FAMILY_FACTORS[c.family]
            shape = _shape_efficiency(c.gemm, b, self.chip.sm_count)
            eff = self.gemm_eff * fam * shape
            src = self.gemm_eff_source + ("" if fam == 1.0 else f" x {c.family} factor {fam:g}")
            peak = self.peak
        else:
            eff, peak = ELEMENTWISE_EFF, self.vector_peak
            src = f"CUDA cores: fp32 peak x {ELEMENTWISE_EFF:g} (generic)"
        boost_compute = flops / (peak * eff) if flops else 0.0
        # power follows the useful tensor work (padding of part-filled tiles is not counted)
        busy = boost_compute * shape / max(boost_compute, memory, 1e-30)
        busy = busy if c.family != "elementwise" else 0.0
        ratio = self.chip.clock_ratio(busy) if busy else 1.0
        compute = boost_compute / ratio
        over = c.kernels * gpu.kernel_overhead_us * 1e-6
        return LayerTime(
            c.name, c.kind, c.family, flops, nbytes, max(compute, memory) + over, compute, memory,
            over, _bound(compute, memory, over), eff, ratio, hit, MODEL, src,
        )  # fmt: skip

    def _fitted(self, c: LayerCost, curve, flops: float, nbytes: float) -> LayerTime:
        """The entry's fitted curve of this family and format (as capsim calibrate fits it)."""
        gpu = self.gpu
        x = nbytes if curve.x == "bytes" else flops / max(nbytes, 1e-30)
        e = float(np.asarray(curve.evaluate(np.array([x])))[0])
        compute = flops / (self.peak * e)
        memory = nbytes / (gpu.bandwidth * e)
        over = c.kernels * gpu.calibration.kernel_overhead_us * 1e-6  # type: ignore[union-attr]
        return LayerTime(
            c.name, c.kind, c.family, flops, nbytes, max(compute, memory) + over, compute, memory,
            over, _bound(compute, memory, over), e, 1.0, 0.0, CURVE,
            f"calibration {curve.kind} curve ({curve.format})",
        )  # fmt: skip

    def batch(self, b: int) -> list[LayerTime]:
        return [self.layer(c, b) for c in self.costs]


def _bound(compute: float, memory: float, over: float) -> str:
    if over > max(compute, memory):
        return "overhead"
    return "compute" if compute >= memory else "memory"


def layer_times(gpu: GPU, model: FixedModel, precision: str, b: int) -> list[LayerTime]:
    """Per-layer times of a batch of ``b`` (see the module docstring)."""
    return LayerTimer(gpu, model, precision).batch(b)


def summarize(rows: list[LayerTime]) -> list[dict]:
    """Per (layer kind, family, source, efficiency source): layers, time, share, bounds."""
    total = sum(r.time_s for r in rows) or 1.0
    groups: dict[tuple, list[LayerTime]] = {}
    for r in rows:
        groups.setdefault((r.kind, r.family, r.source, r.efficiency_source), []).append(r)
    out = []
    for (kind, family, source, esrc), rs in groups.items():
        t = sum(r.time_s for r in rs)
        bounds = {b: sum(1 for r in rs if r.bound == b) for b in ("compute", "memory", "overhead")}
        out.append(
            {
                "kind": kind,
                "family": family,
                "layers": len(rs),
                "time_ms": t * 1e3,
                "share": t / total,
                "bound": ", ".join(f"{k} {v}" for k, v in bounds.items() if v),
                "min_clock": min(r.clock_ratio for r in rs),
                "l2_hit": float(np.mean([r.l2_hit for r in rs])),
                "source": source,
                "efficiency_source": esrc,
            }
        )
    return sorted(out, key=lambda d: -d["time_ms"])


def batch_op_time(rows: list[LayerTime], name: str) -> OpTime:
    """The whole forward pass as one :class:`OpTime`: times summed, ``bound`` the class of layers
    taking the most time, ``source`` ``layers`` (or ``layers+fitted`` when a calibration curve
    timed some)."""
    by_bound: dict[str, float] = {}
    for r in rows:
        by_bound[r.bound] = by_bound.get(r.bound, 0.0) + r.time_s
    bound = max(by_bound, key=lambda k: by_bound[k])
    src = "layers+fitted" if any(r.source == CURVE for r in rows) else "layers"
    return OpTime(
        name, sum(r.time_s for r in rows), sum(r.compute_s for r in rows),
        sum(r.memory_s for r in rows), sum(r.overhead_s for r in rows), bound, src,  # type: ignore[arg-type]
    )  # fmt: skip
