"""CPU measurements with NumPy only (always available; never imports torch or cupy)."""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np

from .. import hostinfo, kernels_array
from ..errors import CalibrationError, Unsupported
from .base import Backend, Op, PrecisionSupport, precision_table

_DTYPES = {"fp64": np.float64, "fp32": np.float32}

_REASONS = {
    "tf32": "TF32 is an NVIDIA tensor-core format; CPUs have no TF32 math",
    "fp16": "NumPy float16 matmul is emulated in software on CPU (no BLAS): not representative",
    "bf16": "NumPy has no bfloat16 type",
    "fp8": "NumPy has no fp8 type",
    "int8": "NumPy integer matmul does not use BLAS: not representative",
}


class NumpyBackend(Backend):
    """NumPy on the host CPU. Bandwidth kernels use one thread per core; BLAS threads itself."""

    name = "numpy"
    kernel_precisions = ("fp32", "fp64")
    device_kind = "cpu"

    def __init__(self, device: str | None = None, seed: int = 0) -> None:
        if device not in (None, "cpu"):
            raise CalibrationError(f"the numpy backend runs on the CPU only, not on {device!r}")
        super().__init__(seed)
        self.rng = np.random.default_rng(seed)
        self.threads = os.cpu_count() or 1
        self._pool = ThreadPoolExecutor(max_workers=self.threads)

    def device_info(self) -> dict[str, Any]:
        """The CPU as the device."""
        return {
            "kind": "cpu",
            "name": hostinfo.cpu_model(),
            "index": None,
            "threads": self.threads,
            "memory_bytes": hostinfo.memory_bytes(),
            "cache_bytes": self.cache_bytes(),
            "blas": hostinfo.numpy_blas(),
            "thread_env": hostinfo.thread_env(),
        }

    def precision_support(self) -> dict[str, PrecisionSupport]:
        """fp64 and fp32 through the BLAS that NumPy links."""
        blas = hostinfo.numpy_blas() or "BLAS"
        methods = {p: f"numpy.matmul {np.dtype(d).name} ({blas})" for p, d in _DTYPES.items()}
        return precision_table(methods, _REASONS)

    def free_memory_bytes(self) -> int | None:
        """Available host memory."""
        return hostinfo.available_memory_bytes()

    def cache_bytes(self) -> int:
        """Last-level CPU cache."""
        return hostinfo.last_level_cache_bytes()

    def close(self) -> None:
        """Stop the bandwidth thread pool."""
        super().close()
        self._pool.shutdown(wait=True)

    # -- helpers -------------------------------------------------------------------------------
    def _normal(self, shape: tuple[int, ...], precision: str) -> np.ndarray:
        return self.rng.standard_normal(shape, dtype=np.float32).astype(_DTYPES[precision])

    def _dtype(self, precision: str) -> Any:
        if precision not in _DTYPES:
            raise Unsupported(_REASONS.get(precision, f"{precision} is not supported"))
        return _DTYPES[precision]

    def _chunks(self, n: int) -> list[slice]:
        step = -(-n // self.threads)
        return [slice(i, min(i + step, n)) for i in range(0, n, step)]

    # -- kernels -------------------------------------------------------------------------------
    def make_launch(self) -> Op:
        """``np.add`` on one-element arrays: the per-call overhead of a NumPy ufunc."""
        a, b, c = (np.ones(1, np.float32) for _ in range(3))

        def fn() -> None:
            for _ in range(100):
                np.add(a, b, out=c)

        return Op(fn, "numpy.add 1 element", inner=100, flush=False)

    def make_copy(self, buffer_bytes: int) -> Op:
        """``np.copyto`` split across one thread per core."""
        src = np.ones(buffer_bytes // 4, np.float32)
        dst = np.zeros_like(src)
        parts = [(dst[s], src[s]) for s in self._chunks(src.size)]

        def fn() -> None:
            list(self._pool.map(lambda p: np.copyto(*p), parts))

        return Op(fn, f"numpy.copyto x{len(parts)} threads", flush=False)

    def make_read(self, buffer_bytes: int) -> Op:
        """``ndarray.sum`` split across one thread per core."""
        src = np.ones(buffer_bytes // 4, np.float32)
        parts = [src[s] for s in self._chunks(src.size)]

        def fn() -> float:
            return sum(self._pool.map(np.sum, parts))

        return Op(fn, f"numpy.sum x{len(parts)} threads", flush=False)

    def make_gemm(self, m: int, n: int, k: int, precision: str) -> Op:
        """``np.matmul(A, W.T, out=C)``: weights stored (n, k) as in a linear layer."""
        dtype = self._dtype(precision)
        w = self.cached(("gemm", n, k, precision), lambda: self._normal((n, k), precision))
        a = self._normal((m, k), precision)
        c = np.empty((m, n), dtype)
        wt = w.T
        return Op(lambda: np.matmul(a, wt, out=c), "numpy.matmul", flush=False)

    def make_attention_decode(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """Explicit q.K^T, softmax, .V with batched matmul."""
        self._dtype(precision)
        q = self._normal((batch, heads, 1, head_dim), precision)
        k = self._normal((batch, heads, seq_len, head_dim), precision)
        v = self._normal((batch, heads, seq_len, head_dim), precision)
        return Op(lambda: kernels_array.attention(np, q, k, v), "numpy explicit", flush=False)

    def make_attention_prefill(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """Explicit attention with an additive causal mask (computes the full square)."""
        dtype = self._dtype(precision)
        q, k, v = (self._normal((batch, heads, seq_len, head_dim), precision) for _ in range(3))
        mask = kernels_array.causal_mask(np, seq_len, dtype)
        fn = lambda: kernels_array.attention(np, q, k, v, mask)  # noqa: E731
        return Op(fn, "numpy explicit causal", flush=False)

    def make_block(
        self, batch: int, seq_len: int, hidden: int, heads: int, ffn: int, precision: str
    ) -> Op:
        """The NumPy transformer block of :mod:`calibrate.kernels_array`."""
        dtype = self._dtype(precision)
        weights = kernels_array.init_block(
            np, lambda s: self._normal(s, precision), hidden, ffn, dtype
        )
        x = self._normal((batch, seq_len, hidden), precision)
        mask = kernels_array.causal_mask(np, seq_len, dtype)
        fn = lambda: kernels_array.block_forward(np, x, weights, heads, mask)  # noqa: E731
        return Op(fn, "numpy block", flush=False)
