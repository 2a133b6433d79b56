"""Predicting how long a measurement point will take, to fit the sweep into the budget.

Prior rates (GPU) are those of an H100/H200-class device, from the harness's first GPU run
(benchmarks/gpu_runs/h200-2026-12-04: best GEMM rate per precision, copy bandwidth, and the
wall time of the run against the sum of its timed calls: about 0.1 ms per timed sample for the
L2 flush, the CUDA events and the synchronisation). On slower devices the first measured point
of each kind corrects them (the ratio measured / prior of the closest measured point is used).
"""

from __future__ import annotations

import bisect
import math

from .task import Task
from .timing import TimingConfig

#: FLOP/s of the GPU prior, per precision (H200, 2026-12-04: 52, 388, 714, 764, 1311, 952 TFLOP/s
#: measured; rounded down as small shapes rarely reach the peak)
GPU_FLOPS = {"fp32": 4e13, "tf32": 3e14, "fp16": 5e14, "bf16": 5e14, "fp8": 8e14, "int8": 7e14}
#: seconds per point beyond its calls: building inputs, Python, and the per-kind extras (cuDNN
#: benchmark mode tries several algorithms on the first call of a shape; a graph is captured)
GPU_POINT_S = {"conv2d": 0.08, "forward_llm_step": 0.3, "forward_resnet50": 0.5}


class CostModel:
    """Rough time of one call: a roofline with prior rates, corrected by what was measured.

    After each point the ratio measured / roofline is remembered per kind and precision; a new
    point uses the ratio of the measured point of the same kind (and precision, if any) whose
    roofline time is closest to its own.
    """

    def __init__(self, device_kind: str) -> None:
        self.gpu = device_kind == "cuda"
        self.flops = 3e14 if self.gpu else 2e10
        self.bandwidth = 3.5e12 if self.gpu else 4e9
        self.overhead = 1.5e-5 if self.gpu else 1e-5
        self.sample_overhead = 1e-4 if self.gpu else 5e-6
        self.point_s = 0.005 if self.gpu else 0.005
        self.setup_rate = 2e11 if self.gpu else 1e9
        #: (kind,) and (kind, precision) -> sorted log roofline times and their ratios
        self.seen: dict[tuple[str, ...], tuple[list[float], list[float]]] = {}

    def roofline_s(self, task: Task) -> float:
        """Seconds for one call at the prior rates."""
        flops = GPU_FLOPS.get(task.precision, self.flops) if self.gpu else self.flops
        return max(task.flops / flops, task.bytes / self.bandwidth) + self.overhead

    def call_s(self, task: Task) -> float:
        """Predicted seconds for one call of ``task``."""
        roof = self.roofline_s(task)
        seen = self.seen.get((task.kind, task.precision)) or self.seen.get((task.kind,))
        if not seen:
            return roof
        logs, ratios = seen
        x = math.log(roof)
        i = bisect.bisect_left(logs, x)
        near = min((j for j in (i - 1, i) if 0 <= j < len(logs)), key=lambda j: abs(logs[j] - x))
        return roof * ratios[near]

    def setup_s(self, task: Task) -> float:
        """Predicted seconds to allocate and fill the inputs of ``task``, and the fixed cost."""
        setup = task.mem_bytes if task.setup_bytes is None else task.setup_bytes
        extra = GPU_POINT_S.get(task.kind, 0.0) if self.gpu else 0.0
        return setup / self.setup_rate + self.point_s + extra

    def samples(self, task: Task, timing: TimingConfig) -> int:
        """Timed samples the loop of :func:`calibrate.timing.measure` will take."""
        per = self.call_s(task) + self.sample_overhead
        want = math.ceil(timing.max_time_s / per)
        return max(timing.min_repeats, min(want, timing.max_repeats))

    def cost_s(self, task: Task, timing: TimingConfig) -> float:
        """Predicted seconds for the whole measurement of ``task``."""
        per = self.call_s(task) + self.sample_overhead
        warm = 1 if per >= timing.max_time_s else timing.warmup
        return self.setup_s(task) + (warm + self.samples(task, timing)) * per

    def min_cost_s(self, task: Task, timing: TimingConfig) -> float:
        """Predicted seconds for the smallest useful measurement (one warm-up, min repeats)."""
        per = self.call_s(task) + self.sample_overhead
        return self.setup_s(task) + (1 + timing.min_repeats) * per

    def update(self, task: Task, median_s: float) -> None:
        """Remember how far this point was from the prior roofline."""
        if median_s > 0:
            roof = self.roofline_s(task)
            x = math.log(roof)
            for key in ((task.kind,), (task.kind, task.precision)):
                logs, ratios = self.seen.setdefault(key, ([], []))
                i = bisect.bisect_left(logs, x)
                logs.insert(i, x)
                ratios.insert(i, median_s / roof)
