"""Batch service times of fixed-shape models (one forward pass per request, batched).

A batch of ``b`` requests does ``b`` times the FLOPs and activation traffic of one request and
reads the weights once::

    compute  = b * flops_per_sample / (peak[fmt] * eff_compute)
    memory   = (weight_bytes + b * activation_bytes_per_sample) / (bandwidth * eff_memory)
    time(b)  = max(compute, memory) + kernels * kernel_overhead + batch_overhead

Small batches are memory- (or launch-) bound: the weights are read for a handful of requests.
Larger ones become compute-bound, which is why batching buys throughput.

>>> from capsim.load import load_catalog
>>> from capsim.load import load_model_card
>>> svc = FixedServiceModel(load_catalog()["t4"], load_model_card("resnet-50"), "fp16")
>>> svc.batch(1).time_s < svc.batch(8).time_s < 8 * svc.batch(1).time_s
True
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capsim.service.calibrated import fixed_timer_for
from capsim.service.layers import LayerTimer, batch_op_time
from capsim.service.roofline import OpCost, OpTime, power_fraction, roofline_op_time
from capsim.spec.catalog import GIB, GPU
from capsim.spec.models import FixedModel
from capsim.spec.precision import get_precision
from capsim.spec.scenario import Scenario

#: CUDA context + framework workspace held on every card (PyTorch/TensorRT measure ~0.3-1 GiB).
RESERVED_BYTES = 0.75 * GIB


class Unsupported(ValueError):
    """The card cannot run this configuration at all (reason in the message)."""


@dataclass(frozen=True)
class BatchEstimate:
    """Predicted time of one batch and what bounds it."""

    batch: int
    time_s: float
    compute_s: float
    memory_s: float
    overhead_s: float
    bound: str
    power_fraction: float
    source: str

    @property
    def throughput(self) -> float:
        """Requests per second while busy with batches of this size."""
        return self.batch / self.time_s


@dataclass(frozen=True)
class MemoryFit:
    weight_bytes: float
    activation_bytes: float
    reserved_bytes: float
    usable_bytes: float
    max_batch: int
    fits: bool
    reason: str

    @property
    def used_bytes(self) -> float:
        return self.weight_bytes + self.activation_bytes + self.reserved_bytes


class FixedServiceModel:
    """Batch times of a fixed-shape model on one card at one precision: the roofline, or the
    entry's fitted efficiency curves when it is calibrated (``timer``: force one, e.g.
    :func:`roofline_op_time`)."""

    source = "roofline"

    def __init__(
        self,
        gpu: GPU,
        model: FixedModel,
        precision: str,
        *,
        batch_overhead_s: float = 0.0,
        timer: Callable[[GPU, OpCost], OpTime] | None = None,
    ):
        self.gpu, self.model, self.batch_overhead_s = gpu, model, batch_overhead_s
        #: a layered card without a forced timer is timed layer by layer (capsim.service.layers)
        layered = timer is None and model.layers is not None
        if timer is None and not layered and gpu.calibration is not None:
            timer = fixed_timer_for(gpu)
        self.timer = timer or roofline_op_time
        self.precision = get_precision(precision)
        fmt = self.precision.math_format(gpu.peak_tflops)
        if fmt is None:
            raise Unsupported(
                f"{gpu.id} has no tensor-core format for {precision} "
                f"(needs {' or '.join(self.precision.math)}; card has {', '.join(gpu.supported_formats())})"
            )
        self.math_format = fmt
        self.layers = LayerTimer(gpu, model, precision) if layered else None
        self._batches: dict[int, BatchEstimate] = {}  # batch() memo: the model is fixed once built

    def op(self, b: int) -> OpCost:
        m, p = self.model, self.precision
        return OpCost(
            name=f"{m.name} forward x{b}",
            flops=b * m.flops_per_sample,
            bytes=m.params * p.weight_bytes + b * m.activation_elements_per_sample * p.act_bytes,
            math_format=self.math_format,
            kernels=m.kernels_per_forward,
        )

    def op_time(self, b: int) -> OpTime:
        if self.layers is not None:
            return batch_op_time(self.layers.batch(b), self.op(b).name)
        return self.timer(self.gpu, self.op(b))

    def batch(self, b: int) -> BatchEstimate:
        """Time of one batch of ``b`` requests (computed once per ``b``: a layered card's
        per-layer model takes milliseconds, and every run asks for every batch size)."""
        hit = self._batches.get(b)
        if hit is None:
            hit = self._batches[b] = self._batch(b)
        return hit

    def _batch(self, b: int) -> BatchEstimate:
        t = self.op_time(b)
        total = t.time_s + self.batch_overhead_s
        return BatchEstimate(
            batch=b,
            time_s=total,
            compute_s=t.compute_s,
            memory_s=t.memory_s,
            overhead_s=t.overhead_s + self.batch_overhead_s,
            bound=t.bound,
            power_fraction=power_fraction(
                OpTime(t.name, total, t.compute_s, t.memory_s, t.overhead_s, t.bound),
                self.gpu.power.memory_bound_fraction,
            ),
            source=t.source,
        )

    def batch_times(self, max_batch: int) -> np.ndarray:
        """``times[b]`` for b = 0..max_batch (``times[0]`` = 0), for the engine."""
        return np.array([0.0] + [self.batch(b).time_s for b in range(1, max_batch + 1)])

    def power_fractions(self, max_batch: int) -> np.ndarray:
        return np.array([0.0] + [self.batch(b).power_fraction for b in range(1, max_batch + 1)])

    def behaviour_key(self, max_batch: int) -> tuple:
        """What the engine sees of this replica: its batch times and power fractions (two
        precisions with equal keys simulate identically)."""
        return (self.batch_times(max_batch).tobytes(), self.power_fractions(max_batch).tobytes())

    def max_throughput_rps(self, s: Scenario) -> float:
        """Best throughput of one replica: full batches of up to ``fleet.max_batch``."""
        t = self.batch_times(s.fleet.max_batch)
        return max(b / t[b] for b in range(1, s.fleet.max_batch + 1))

    def time_scale_s(self, s: Scenario) -> float:
        """The workload's time scale for overload detection: one full batch's service time."""
        return float(self.batch(s.fleet.max_batch).time_s)

    def idle_latency_violation(self, s: Scenario) -> str | None:
        """A request alone on an idle replica already slower than the target (None if not)."""
        t1 = self.batch(1).time_s
        assert s.slo.latency_ms is not None  # Scenario requires it without an LLM model
        if t1 > s.slo.latency_ms / 1000:
            return (
                f"one request alone takes {t1 * 1000:.2f} ms > target {s.slo.latency_ms:g} ms "
                f"({self.batch(1).bound}-bound); more replicas cannot help"
            )
        return None

    def trace_lines(self, s: Scenario | None = None, mean_batch: float | None = None) -> list[str]:
        """The service time of the mean batch, with its bound and source."""
        mb = max(1, round(mean_batch)) if mean_batch else 1
        b = self.batch(mb)
        layered = []
        if self.layers is not None:  # a layered fixed-shape card
            layered.append(
                "per-layer model: tile/wave quantisation, L2 residency, power-limited clocks and "
                "calibration only per operator family and format (capsim estimate shows each "
                "layer kind)"
            )
        return [
            *layered,
            f"service time: batch of {mb} (mean batch size) = {b.time_s * 1e3:.2f} ms "
            f"({b.bound}-bound: compute {b.compute_s * 1e3:.2f} ms, memory {b.memory_s * 1e3:.2f} ms, "
            f"overhead {b.overhead_s * 1e3:.2f} ms); source: {b.source}",
        ]

    def memory_fit(self, max_batch: int) -> MemoryFit:
        """Weights + activations of the largest batch + reserved, against usable memory."""
        m, p = self.model, self.precision
        weights = m.params * p.weight_bytes
        per_sample = m.peak_activation_elements_per_sample * p.act_bytes  # live set incl. in+out
        usable = self.gpu.usable_memory_bytes
        room = usable - RESERVED_BYTES - weights
        largest = int(room // per_sample) if room > 0 else 0
        act = max_batch * per_sample
        fits = largest >= max_batch
        reason = (
            "fits"
            if fits
            else (
                f"weights {weights / GIB:.2f} GiB + activations {act / GIB:.2f} GiB (batch "
                f"{max_batch}) + reserved {RESERVED_BYTES / GIB:.2f} GiB > usable "
                f"{usable / GIB:.2f} GiB on {self.gpu.id} at {p.name}"
            )
        )
        return MemoryFit(weights, act, RESERVED_BYTES, usable, largest, fits, reason)
