"""Predicting how long a measurement point will take, to fit the sweep into the budget."""

from __future__ import annotations

import math

from .plan import Task
from .timing import TimingConfig


class CostModel:
    """Rough time of one call: a roofline with prior rates, corrected by what was measured.

    After each point the ratio measured / roofline is remembered per kind and precision; a new
    point uses the ratio of the measured point of the same kind (and precision, if any) whose
    roofline time is closest to its own.
    """

    def __init__(self, device_kind: str) -> None:
        gpu = device_kind == "cuda"
        self.flops = 1e13 if gpu else 2e10
        self.bandwidth = 2e11 if gpu else 4e9
        self.overhead = 2e-5 if gpu else 1e-5
        self.setup_rate = 2e10 if gpu else 1e9
        self.seen: dict[str, list[tuple[str, float, float]]] = {}

    def roofline_s(self, task: Task) -> float:
        """Seconds for one call at the prior rates."""
        return max(task.flops / self.flops, task.bytes / self.bandwidth) + self.overhead

    def call_s(self, task: Task) -> float:
        """Predicted seconds for one call of ``task``."""
        roof = self.roofline_s(task)
        seen = self.seen.get(task.kind, [])
        same = [e for e in seen if e[0] == task.precision] or seen
        if not same:
            return roof
        _, _, ratio = min(same, key=lambda e: abs(math.log(e[1] / roof)))
        return roof * ratio

    def setup_s(self, task: Task) -> float:
        """Predicted seconds to allocate and fill the inputs of ``task``."""
        return task.mem_bytes / self.setup_rate

    def cost_s(self, task: Task, timing: TimingConfig) -> float:
        """Predicted seconds for the whole measurement of ``task``."""
        call = self.call_s(task)
        sampling = min(max(timing.max_time_s, timing.min_repeats * call), timing.max_repeats * call)
        return self.setup_s(task) + timing.warmup * call + sampling

    def min_cost_s(self, task: Task, timing: TimingConfig) -> float:
        """Predicted seconds for the smallest useful measurement (one warm-up, min repeats)."""
        return self.setup_s(task) + (1 + timing.min_repeats) * self.call_s(task)

    def update(self, task: Task, median_s: float) -> None:
        """Remember how far this point was from the prior roofline."""
        if median_s > 0:
            roof = self.roofline_s(task)
            self.seen.setdefault(task.kind, []).append((task.precision, roof, median_s / roof))
