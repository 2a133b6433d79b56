"""CuPy on a CUDA device (imported only when this backend is chosen or probed).

GEMMs go straight to ``cublasGemmEx`` so that every precision cuBLAS offers without cuBLASLt can be
measured: fp32, tf32 (compute type 32F_FAST_TF32), fp16, bf16 (stored as uint16 bit patterns,
CuPy has no bfloat16 dtype) and int8 (int32 output). Each is validated against NumPy on a tiny
problem before it is declared supported.
"""

from __future__ import annotations

from typing import Any

import cupy as cp
import numpy as np
from cupy.cuda import device as cp_device

try:
    from cupy_backends.cuda.libs import cublas
except ImportError:  # older CuPy
    from cupy.cuda import cublas  # type: ignore[no-redef]

from .. import hostinfo, kernels_array
from ..errors import CalibrationError, Unsupported
from .base import Backend, Op, PrecisionSupport, precision_table
from .cublas_layout import (
    CUBLAS_COMPUTE_32F,
    CUBLAS_COMPUTE_32F_FAST_TF32,
    CUBLAS_COMPUTE_32I,
    CUBLAS_GEMM_DEFAULT,
    CUDA_R_8I,
    CUDA_R_16BF,
    CUDA_R_16F,
    CUDA_R_32F,
    CUDA_R_32I,
    gemm_ex_layout,
)

#: precision -> (input type, output type, compute type, scalar dtype, NumPy storage dtype)
_GEMM_TYPES: dict[str, tuple[int, int, int, Any, Any]] = {
    "fp32": (CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F, np.float32, np.float32),
    "tf32": (CUDA_R_32F, CUDA_R_32F, CUBLAS_COMPUTE_32F_FAST_TF32, np.float32, np.float32),
    "fp16": (CUDA_R_16F, CUDA_R_16F, CUBLAS_COMPUTE_32F, np.float32, np.float16),
    "bf16": (CUDA_R_16BF, CUDA_R_16BF, CUBLAS_COMPUTE_32F, np.float32, np.uint16),
    "int8": (CUDA_R_8I, CUDA_R_32I, CUBLAS_COMPUTE_32I, np.int32, np.int8),
}
_OUT_STORAGE = {"int8": np.int32}
_FLOAT_STORAGE = {"fp32": np.float32, "fp16": np.float16}


def _bf16_bits(x: Any) -> Any:
    """float32 array -> bfloat16 bit patterns (uint16), by truncation."""
    return (x.astype(np.float32).view(np.uint32) >> 16).astype(np.uint16)


def _bf16_value(bits: Any) -> Any:
    """bfloat16 bit patterns (uint16) -> float32 values."""
    return (bits.astype(np.uint32) << 16).view(np.float32)


class CupyBackend(Backend):
    """CuPy kernels timed with CUDA events, L2 flushed before each sample."""

    name = "cupy"
    kernel_precisions = ("fp32", "fp16")
    device_kind = "cuda"
    timing_method = "cuda_events"

    def __init__(self, device: str | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        self.index = _parse_index(device)
        try:
            count = cp.cuda.runtime.getDeviceCount()
        except cp.cuda.runtime.CUDARuntimeError as exc:
            raise CalibrationError(f"CuPy finds no CUDA device: {exc}") from exc
        if self.index >= count:
            raise CalibrationError(f"no CUDA device {self.index}: {count} visible")
        self.dev = cp.cuda.Device(self.index)
        self.dev.use()
        self.props = cp.cuda.runtime.getDeviceProperties(self.index)
        self.rs = cp.random.RandomState(seed)
        self._flush_buf: Any = None
        self._support: dict[str, PrecisionSupport] | None = None

    # -- description ---------------------------------------------------------------------------
    def capability(self) -> tuple[int, int]:
        """Compute capability (major, minor)."""
        return int(self.props["major"]), int(self.props["minor"])

    def device_info(self) -> dict[str, Any]:
        """Device properties from the CUDA runtime."""
        p, (major, minor) = self.props, self.capability()
        name = p["name"].decode() if isinstance(p["name"], bytes) else str(p["name"])
        return {
            "kind": "cuda",
            "name": name,
            "index": self.index,
            "compute_capability": f"{major}.{minor}",
            "memory_bytes": int(p["totalGlobalMem"]),
            "multiprocessors": int(p["multiProcessorCount"]),
            "cache_bytes": int(p.get("l2CacheSize", 0)) or None,
            "pci_bus_id": _pci(p),
            "cuda_version": _version(cp.cuda.runtime.runtimeGetVersion()),
            "cuda_driver_version": _version(cp.cuda.runtime.driverGetVersion()),
            "driver_version": hostinfo.nvidia_driver_version(),
            "clocks": {
                "sm_mhz": _khz_to_mhz(p.get("clockRate")),
                "mem_mhz": _khz_to_mhz(p.get("memoryClockRate")),
            },
        }

    def precision_support(self) -> dict[str, PrecisionSupport]:
        """Candidates by compute capability, each validated on a tiny GEMM."""
        if self._support is None:
            self._support = self._probe_all()
        return self._support

    def _probe_all(self) -> dict[str, PrecisionSupport]:
        cc = self.capability()
        ccs = f"{cc[0]}.{cc[1]}"
        reasons = {
            "fp64": "not an inference precision (not measured on GPUs)",
            "fp8": "fp8 GEMM needs cuBLASLt, which CuPy does not expose: use the torch backend",
        }
        candidates = ["fp32", "fp16", "int8"]
        if cc >= (8, 0):
            candidates[1:1] = ["tf32", "bf16"]
        else:
            reasons["tf32"] = f"TF32 needs compute capability >= 8.0 (this device: {ccs})"
            reasons["bf16"] = f"bf16 needs compute capability >= 8.0 (this device: {ccs})"
        methods = {}
        for prec in candidates:
            problem = self._validate(prec)
            if problem is None:
                methods[prec] = f"cublasGemmEx {prec} (TN)"
            else:
                reasons[prec] = problem
        self.release()
        return precision_table(methods, reasons)

    def _validate(self, precision: str) -> str | None:
        """None when a 32x64x64 GEMM in ``precision`` matches NumPy, else the reason."""
        m, n, k = 32, 64, 64
        rng = np.random.default_rng(self.seed)
        a = rng.integers(-3, 4, (m, k)).astype(np.float32)
        w = rng.integers(-3, 4, (n, k)).astype(np.float32)
        try:
            op, out = self._gemm_op(
                cp.asarray(self._store(a, precision)),
                cp.asarray(self._store(w, precision)),
                precision,
            )
            op.fn()
            self.synchronize()
            got = cp.asnumpy(out)
        except Exception as exc:  # noqa: BLE001 - the reason is recorded
            return f"probe failed: {type(exc).__name__}: {exc}".splitlines()[0]
        got = _bf16_value(got) if precision == "bf16" else got.astype(np.float32)
        if not np.allclose(got, a @ w.T, rtol=2e-2, atol=1.0):
            return "probe gave wrong results (cublasGemmEx layout or type not supported here)"
        return None

    def free_memory_bytes(self) -> int | None:
        """Free device memory plus CuPy's pooled free blocks."""
        free, _ = cp.cuda.runtime.memGetInfo()
        return int(free + cp.get_default_memory_pool().free_bytes())

    def cache_bytes(self) -> int:
        """L2 size (64 MiB when unknown)."""
        return int(self.props.get("l2CacheSize", 0) or (64 << 20))

    # -- timing --------------------------------------------------------------------------------
    def time_once(self, op: Op) -> float:
        """CUDA events around one call, after an L2 flush when ``op.flush``."""
        if op.flush:
            self._flush()
        start, end = cp.cuda.Event(), cp.cuda.Event()
        start.record()
        op.fn()
        end.record()
        end.synchronize()
        return cp.cuda.get_elapsed_time(start, end) / 1000.0

    def _flush(self) -> None:
        if self._flush_buf is None:
            self._flush_buf = cp.empty(max(2 * self.cache_bytes(), 64 << 20) // 4, cp.int32)
        self._flush_buf.fill(0)

    def synchronize(self) -> None:
        """Wait for the device."""
        cp.cuda.Device(self.index).synchronize()

    def release(self) -> None:
        """Drop cached inputs and return pooled memory."""
        super().release()
        cp.get_default_memory_pool().free_all_blocks()

    def close(self) -> None:
        """Free everything."""
        self._flush_buf = None
        super().close()

    # -- helpers -------------------------------------------------------------------------------
    def _normal(self, shape: tuple[int, ...], precision: str) -> Any:
        if precision not in _FLOAT_STORAGE:
            raise Unsupported(f"{precision} attention/blocks are not available with CuPy")
        x = self.rs.standard_normal(shape, dtype=cp.float32)
        return x.astype(_FLOAT_STORAGE[precision])

    def _store(self, x: Any, precision: str) -> Any:
        """Values (NumPy or CuPy float32) in the storage type of ``precision``."""
        if precision == "bf16":
            return _bf16_bits(x)
        return x.astype(_GEMM_TYPES[precision][4])

    def _gemm_op(self, a: Any, w: Any, precision: str) -> tuple[Op, Any]:
        (m, k), n = a.shape, w.shape[0]
        in_t, out_t, compute, scalar, storage = _GEMM_TYPES[precision]
        c = cp.empty((m, n), dtype=_OUT_STORAGE.get(precision, storage))
        alpha, beta = np.ones((), scalar), np.zeros((), scalar)
        lay = gemm_ex_layout(m, n, k)
        handle = cp_device.get_cublas_handle()
        args = (
            handle,
            lay["transa"],
            lay["transb"],
            lay["m"],
            lay["n"],
            lay["k"],
            alpha.ctypes.data,
            w.data.ptr,
            in_t,
            lay["lda"],
            a.data.ptr,
            in_t,
            lay["ldb"],
            beta.ctypes.data,
            c.data.ptr,
            out_t,
            lay["ldc"],
            compute,
            CUBLAS_GEMM_DEFAULT,
        )

        def fn() -> None:
            cublas.gemmEx(*args)

        return Op(fn, f"cublasGemmEx {precision}", keep=[a, w, c, alpha, beta]), c

    # -- kernels -------------------------------------------------------------------------------
    def make_launch(self) -> Op:
        """``cupy.add`` on one-element arrays, 100 per sample."""
        a, b, c = (cp.ones(1, cp.float32) for _ in range(3))

        def fn() -> None:
            for _ in range(100):
                cp.add(a, b, out=c)

        return Op(fn, "cupy.add 1 element", inner=100, flush=False)

    def make_copy(self, buffer_bytes: int) -> Op:
        """Device-to-device memcpy."""
        src = cp.ones(buffer_bytes // 4, cp.float32)
        dst = cp.zeros_like(src)
        fn = lambda: dst.data.copy_from_device_async(src.data, src.nbytes)  # noqa: E731
        return Op(fn, "cudaMemcpyAsync D2D", flush=False)

    def make_read(self, buffer_bytes: int) -> Op:
        """``cupy.sum``."""
        src = cp.ones(buffer_bytes // 4, cp.float32)
        return Op(lambda: src.sum(), "cupy.sum", flush=False)

    def make_gemm(self, m: int, n: int, k: int, precision: str) -> Op:
        """``cublasGemmEx`` in the TN layout (weights stored (n, k))."""
        support = self.precision_support().get(precision)
        if support is None or not support.supported:
            raise Unsupported(support.detail if support else f"unknown precision {precision}")
        if precision == "int8":
            make = lambda s: self.rs.randint(-8, 8, s, dtype=cp.int32).astype(cp.int8)  # noqa: E731
        else:
            make = lambda s: self._store(self.rs.standard_normal(s, dtype=cp.float32), precision)  # noqa: E731
        w = self.cached(("gemm", n, k, precision), lambda: make((n, k)))
        op, _ = self._gemm_op(make((m, k)), w, precision)
        return op

    def make_attention_decode(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """Explicit q.K^T, softmax, .V with batched ``cupy.matmul``."""
        q = self._normal((batch, heads, 1, head_dim), precision)
        k = self._normal((batch, heads, seq_len, head_dim), precision)
        v = self._normal((batch, heads, seq_len, head_dim), precision)
        return Op(lambda: kernels_array.attention(cp, q, k, v), "cupy explicit")

    def make_attention_prefill(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """Explicit attention with an additive causal mask (computes the full square)."""
        q, k, v = (self._normal((batch, heads, seq_len, head_dim), precision) for _ in range(3))
        mask = kernels_array.causal_mask(cp, seq_len, q.dtype)
        fn = lambda: kernels_array.attention(cp, q, k, v, mask)  # noqa: E731
        return Op(fn, "cupy explicit causal")

    def make_block(
        self, batch: int, seq_len: int, hidden: int, heads: int, ffn: int, precision: str
    ) -> Op:
        """The array-API transformer block of :mod:`calibrate.kernels_array` on CuPy."""
        x = self._normal((batch, seq_len, hidden), precision)
        weights = kernels_array.init_block(
            cp, lambda s: self._normal(s, precision), hidden, ffn, x.dtype
        )
        mask = kernels_array.causal_mask(cp, seq_len, x.dtype)
        fn = lambda: kernels_array.block_forward(cp, x, weights, heads, mask)  # noqa: E731
        return Op(fn, "cupy block")


def _parse_index(device: str | None) -> int:
    if device in (None, "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise CalibrationError(f"the cupy backend runs on CUDA devices only, not on {device!r}")


def _pci(p: dict[str, Any]) -> str | None:
    try:
        return f"{p['pciDomainID']:08x}:{p['pciBusID']:02x}:{p['pciDeviceID']:02x}.0"
    except (KeyError, TypeError, ValueError):
        return None


def _version(v: int) -> str:
    """CUDA encodes 12.4 as 12040."""
    return f"{v // 1000}.{v % 1000 // 10}"


def _khz_to_mhz(v: Any) -> float | None:
    return round(v / 1000.0, 1) if isinstance(v, int | float) and v else None
