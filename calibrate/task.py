"""One measurement point of the plan (shared by :mod:`calibrate.plan` and
:mod:`calibrate.plan_models`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .backends.base import Backend, Op


@dataclass
class Task:
    """One measurement point: what it is, what it costs, and how to build its op."""

    kind: str
    precision: str
    params: dict[str, int]
    tier: int
    flops: int
    bytes: int
    mem_bytes: int
    build: Callable[[Backend], Op] | None = field(default=None, repr=False)
    #: how the point is run when one shape is measured in several ways (e.g. ``cuda graph``)
    variant: str = ""
    #: values of the text columns of the row (conv2d ``layout``, forward_llm_step ``phase``)
    text: dict[str, str] = field(default_factory=dict)
    #: bytes to allocate and fill before the point (default ``mem_bytes``; less when the
    #: backend keeps the weights from the previous point)
    setup_bytes: int | None = None

    @property
    def phase(self) -> str:
        """Progress label of the group this task belongs to."""
        if self.kind in ("gemm", "conv2d"):
            return f"{self.kind} {self.precision}"
        return f"{self.kind} {self.variant}".strip()

    def label(self) -> str:
        """Human-readable point, e.g. ``gemm fp16 m=1 n=4096 k=4096``."""
        shape = " ".join(f"{k}={v}" for k, v in self.params.items())
        return f"{self.kind} {self.precision} {shape} {self.variant}".strip()

    def describe(self) -> dict[str, object]:
        """For the ``skipped`` list in ``meta.json``."""
        out = {"kind": self.kind, "precision": self.precision, "params": dict(self.params)}
        return out | ({"variant": self.variant} if self.variant else {})


def new_task(
    kind: str,
    prec: str,
    params: dict[str, int],
    tier: int,
    fb: tuple[int, int],
    mem: int,
    build: Callable[[Backend], Op],
) -> Task:
    """A task from its work as returned by :mod:`calibrate.work` (``(flops, bytes)``)."""
    return Task(kind, prec, params, tier, fb[0], fb[1], mem, build)
