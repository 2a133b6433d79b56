"""The small interface every backend implements.

A backend turns a measurement point into an :class:`Op` (a prepared zero-argument callable whose
inputs are already allocated on the device) and times one call of it. Everything else (planning,
repeats, statistics, budget, output) is backend-independent.
"""

from __future__ import annotations

import contextlib
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any, ClassVar

from ..schema import PRECISIONS


@dataclass
class Op:
    """A prepared kernel call.

    ``fn`` does ``inner`` calls of the kernel; ``context`` (if given) is entered around warm-up and
    timing (e.g. to enable TF32 or inference mode); ``flush`` asks the backend to evict the device
    cache before each timed sample so weights are read from memory, as in a real forward pass.
    """

    fn: Callable[[], Any]
    impl: str
    inner: int = 1
    flush: bool = True
    context: Callable[[], AbstractContextManager[Any]] | None = None
    keep: list[Any] = field(default_factory=list)
    #: cells the op decides when it runs (e.g. an all-reduce's ``ranks`` and ``bytes``)
    row: dict[str, Any] = field(default_factory=dict)
    #: statistics the op measured itself (in other processes: all-reduce); not timed again
    stats: Any = None

    def entered(self) -> AbstractContextManager[Any]:
        """The context to run this op in (a no-op when none was given)."""
        return self.context() if self.context else contextlib.nullcontext()


@dataclass(frozen=True)
class PrecisionSupport:
    """Whether a precision can be measured here, and how (``detail``) or why not."""

    supported: bool
    detail: str


class Backend(ABC):
    """One way of running kernels on one device."""

    name: ClassVar[str]
    #: float precisions that the attention and block kernels can run in
    kernel_precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    #: attention does not materialise the (seq x seq) scores (flash / memory-efficient kernels)
    fused_attention: ClassVar[bool] = False
    #: runs conv2d, whole-model LLM steps and all-reduce (planned only then)
    model_kinds: ClassVar[bool] = False
    device_kind: str = "cpu"
    timing_method: str = "perf_counter"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed
        self.selection_notes: list[str] = []
        self._cache_key: object = None
        self._cache_value: Any = None

    # -- description ---------------------------------------------------------------------------
    @abstractmethod
    def device_info(self) -> dict[str, Any]:
        """Device description for ``meta.json`` (name, memory, clocks, ...)."""

    @abstractmethod
    def precision_support(self) -> dict[str, PrecisionSupport]:
        """Support of every precision in :data:`calibrate.schema.PRECISIONS`."""

    def resnet50_unavailable(self) -> str | None:
        """Why ResNet-50 cannot be measured, or None when it can."""
        return (
            f"the {self.name} backend has no ResNet-50 implementation (needs torch + torchvision)"
        )

    def free_memory_bytes(self) -> int | None:
        """Memory that new buffers may use, or None when unknown."""
        return None

    def cache_bytes(self) -> int:
        """Size of the last-level cache that bandwidth buffers must exceed."""
        return 32 << 20

    # -- timing --------------------------------------------------------------------------------
    def time_once(self, op: Op) -> float:
        """Seconds taken by one ``op.fn()`` (all ``inner`` calls), wall clock."""
        start = time.perf_counter()
        op.fn()
        return time.perf_counter() - start

    def synchronize(self) -> None:
        """Wait for queued device work (no-op on CPU)."""
        return None

    def release(self) -> None:
        """Drop cached buffers (between measurements and on errors)."""
        self._cache_key, self._cache_value = None, None

    def close(self) -> None:
        """Free everything; the backend is not used afterwards."""
        self.release()

    def cached(self, key: object, factory: Callable[[], Any]) -> Any:
        """Keep one expensive input (e.g. GEMM weights) across consecutive points."""
        if key != self._cache_key:
            self._cache_key, self._cache_value = None, None
            self._cache_value, self._cache_key = factory(), key
        return self._cache_value

    # -- kernels -------------------------------------------------------------------------------
    @abstractmethod
    def make_launch(self) -> Op:
        """The smallest op the framework can issue (launch / dispatch overhead)."""

    @abstractmethod
    def make_copy(self, buffer_bytes: int) -> Op:
        """Copy a buffer of ``buffer_bytes`` into another one."""

    @abstractmethod
    def make_read(self, buffer_bytes: int) -> Op:
        """Sum a buffer of ``buffer_bytes`` (streaming read)."""

    @abstractmethod
    def make_gemm(self, m: int, n: int, k: int, precision: str) -> Op:
        """C[m,n] = A[m,k] @ W[n,k]^T in ``precision``."""

    @abstractmethod
    def make_attention_decode(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """One query token per sequence against a KV cache of ``seq_len``."""

    @abstractmethod
    def make_attention_prefill(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """Causal self-attention over a prompt of ``seq_len`` tokens."""

    @abstractmethod
    def make_block(
        self, batch: int, seq_len: int, hidden: int, heads: int, ffn: int, precision: str
    ) -> Op:
        """Forward pass of one pre-norm transformer block (RMSNorm, attention, gated MLP)."""

    def make_conv2d(
        self,
        batch: int,
        cin: int,
        cout: int,
        hw: int,
        kernel: int,
        stride: int,
        groups: int,
        layout: str,
        precision: str,
    ) -> Op:
        """One 2-D convolution (padding ``(kernel - 1) // 2``, no bias)."""
        from ..errors import Unsupported

        raise Unsupported(f"the {self.name} backend has no conv2d (needs torch)")

    def make_llm_step(
        self, shape: Any, batch: int, seq_len: int, phase: str, precision: str, graph: bool
    ) -> Op:
        """One decode or prefill step of a whole decoder-only model (``work.LlmShape``)."""
        from ..errors import Unsupported

        raise Unsupported(f"the {self.name} backend has no whole-model LLM step (needs torch)")

    def make_allreduce(self, message_bytes: int, sizes: tuple[int, ...]) -> Op:
        """An all-reduce of ``message_bytes`` over every visible GPU (``sizes``: the sweep)."""
        from ..errors import Unsupported

        raise Unsupported(f"the {self.name} backend has no all-reduce (needs torch.distributed)")

    def make_resnet50(self, batch: int, precision: str) -> Op:
        """Forward pass of ResNet-50 on ``batch`` 224x224 images."""
        from ..errors import Unsupported

        raise Unsupported(self.resnet50_unavailable() or "not implemented")


def precision_table(supported: dict[str, str], reasons: dict[str, str]) -> dict:
    """A full precision table from ``{precision: method}`` and ``{precision: reason}``."""
    table: dict[str, PrecisionSupport] = {}
    for p in PRECISIONS:
        if p in supported:
            table[p] = PrecisionSupport(True, supported[p])
        else:
            table[p] = PrecisionSupport(False, reasons.get(p, "not available on this backend"))
    return table
