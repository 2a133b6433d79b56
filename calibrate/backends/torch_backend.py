"""PyTorch on the CPU or on a CUDA device (imported only when this backend is chosen)."""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from .. import hostinfo, kernels_torch
from ..errors import CalibrationError, Unsupported
from . import torch_models
from .base import Backend, Op, PrecisionSupport, precision_table

_FLOAT = {
    "fp64": torch.float64,
    "fp32": torch.float32,
    "tf32": torch.float32,
    "fp16": torch.float16,
    "bf16": torch.bfloat16,
}
_CPU_REASONS = {
    "fp64": "not an inference precision; the numpy backend measures fp64 on CPU",
    "tf32": "TF32 is an NVIDIA tensor-core format; CPUs have no TF32 math",
    "fp8": "torch._scaled_mm (fp8) needs a CUDA device with compute capability >= 8.9",
    "int8": "torch._int_mm is measured on CUDA devices only",
}
#: torch._int_mm needs M > 16; smaller M is padded to this (what an engine does)
INT_MM_MIN_M = 32
#: a reduced precision counts as "fast" on CPU when its matmul is at most this much slower than fp32
CPU_SLOWDOWN_LIMIT = 2.0


def parse_device(device: str | None) -> torch.device:
    """``None`` (CUDA when available, else CPU), ``cpu``, ``cuda`` or ``cuda:N``."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise CalibrationError(f"bad device {device!r}: use cpu, cuda or cuda:N") from exc
    if dev.type not in ("cpu", "cuda"):
        raise CalibrationError(f"bad device {device!r}: use cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise CalibrationError(
                f"torch {torch.__version__} sees no CUDA device (built for CUDA {torch.version.cuda})"
            )
        index = torch.cuda.current_device() if dev.index is None else dev.index
        if index >= torch.cuda.device_count():
            raise CalibrationError(f"no CUDA device {index}: {torch.cuda.device_count()} visible")
        dev = torch.device("cuda", index)
    return dev


class TorchBackend(Backend):
    """PyTorch kernels; CUDA timing with CUDA events and an L2 flush before each sample."""

    name = "torch"
    kernel_precisions = ("fp32", "fp16", "bf16", "fp64")
    fused_attention = True
    model_kinds = True

    def __init__(self, device: str | None = None, seed: int = 0) -> None:
        super().__init__(seed)
        self.device = parse_device(device)
        self.cuda = self.device.type == "cuda"
        self.device_kind = "cuda" if self.cuda else "cpu"
        self.timing_method = "cuda_events" if self.cuda else "perf_counter"
        if self.cuda:
            torch.cuda.set_device(self.device)
        self.gen = torch.Generator(device=self.device).manual_seed(seed)
        self._flags = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32; tf32 is its own row
        torch.backends.cudnn.allow_tf32 = False
        self._flush_buf: torch.Tensor | None = None
        self._events: tuple[Any, Any] | None = None
        self._support: dict[str, PrecisionSupport] | None = None

    # -- description ---------------------------------------------------------------------------
    def capability(self) -> tuple[int, int] | None:
        """CUDA compute capability, None on CPU."""
        return torch.cuda.get_device_capability(self.device) if self.cuda else None

    def device_info(self) -> dict[str, Any]:
        """CPU or CUDA device properties."""
        base = {"kind": self.device_kind, "torch_threads": torch.get_num_threads()}
        if not self.cuda:
            return base | {
                "name": hostinfo.cpu_model(),
                "index": None,
                "memory_bytes": hostinfo.memory_bytes(),
                "cache_bytes": self.cache_bytes(),
            }
        p = torch.cuda.get_device_properties(self.device)
        cc = self.capability()
        return base | {
            "name": p.name,
            "index": self.device.index,
            "compute_capability": f"{cc[0]}.{cc[1]}",
            "memory_bytes": int(p.total_memory),
            "multiprocessors": p.multi_processor_count,
            "cache_bytes": getattr(p, "L2_cache_size", None),
            "pci_bus_id": pci_bus_id(p),
            "cuda_version": torch.version.cuda,
            "cudnn_version": torch.backends.cudnn.version(),
            "driver_version": hostinfo.nvidia_driver_version(),
        }

    def precision_support(self) -> dict[str, PrecisionSupport]:
        """Static capability checks plus a tiny probe run of each candidate precision."""
        if self._support is None:
            self._support = self._cuda_support() if self.cuda else self._cpu_support()
        return self._support

    def _cpu_support(self) -> dict[str, PrecisionSupport]:
        threads = torch.get_num_threads()
        methods = {"fp32": f"torch.mm float32 (CPU, {threads} threads)"}
        reasons = dict(_CPU_REASONS)
        base = _probe_seconds(lambda: self.make_gemm(256, 1024, 1024, "fp32"))
        for prec in ("bf16", "fp16"):
            t = _probe_seconds(lambda p=prec: self.make_gemm(256, 1024, 1024, p))
            ratio = t / base
            if ratio <= CPU_SLOWDOWN_LIMIT:
                name = str(_FLOAT[prec]).removeprefix("torch.")
                methods[prec] = f"torch.mm {name} (CPU; {ratio:.2f}x the fp32 time)"
            else:
                reasons[prec] = (
                    f"{prec} matmul takes {ratio:.1f}x the fp32 time on this CPU "
                    "(no native support): not representative"
                )
        self.release()
        return precision_table(methods, reasons)

    def _cuda_support(self) -> dict[str, PrecisionSupport]:
        cc = self.capability()
        assert cc is not None
        ccs = f"{cc[0]}.{cc[1]}"
        candidates, reasons = cuda_candidates(cc, ccs)
        methods = {}
        for prec, method in candidates.items():
            try:
                op = self.make_gemm(32, 64, 64, prec)
                with op.entered():
                    op.fn()
                self.synchronize()
                methods[prec] = method
            except Exception as exc:  # noqa: BLE001 - the reason is recorded
                reasons[prec] = f"probe failed: {type(exc).__name__}: {exc}".splitlines()[0]
        self.release()
        return precision_table(methods, reasons)

    def resnet50_unavailable(self) -> str | None:
        """None when torchvision imports."""
        try:
            importlib.import_module("torchvision.models")
        except Exception as exc:  # noqa: BLE001 - any import failure means "not available"
            return f"torchvision is not importable ({type(exc).__name__}: {exc})"
        return None

    def free_memory_bytes(self) -> int | None:
        """Free device memory plus what torch's allocator holds but does not use."""
        if not self.cuda:
            return hostinfo.available_memory_bytes()
        free, _ = torch.cuda.mem_get_info(self.device)
        cached = torch.cuda.memory_reserved(self.device) - torch.cuda.memory_allocated(self.device)
        return int(free + cached)

    def cache_bytes(self) -> int:
        """L2 size on CUDA (64 MiB when unknown), the CPU's last-level cache otherwise."""
        if not self.cuda:
            return hostinfo.last_level_cache_bytes()
        p = torch.cuda.get_device_properties(self.device)
        return int(getattr(p, "L2_cache_size", 0) or (64 << 20))

    # -- timing --------------------------------------------------------------------------------
    def time_once(self, op: Op) -> float:
        """perf_counter on CPU; CUDA events around the call (after an L2 flush) on a GPU."""
        if not self.cuda:
            return super().time_once(op)
        if op.flush:
            self._flush()
        if self._events is None:
            self._events = tuple(torch.cuda.Event(enable_timing=True) for _ in range(2))
        start, end = self._events
        start.record()
        op.fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000.0

    def _flush(self) -> None:
        if self._flush_buf is None:
            n = max(2 * self.cache_bytes(), 64 << 20) // 4
            self._flush_buf = torch.empty(n, dtype=torch.int32, device=self.device)
        self._flush_buf.zero_()

    def synchronize(self) -> None:
        """Wait for the device."""
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def release(self) -> None:
        """Drop cached inputs and return cached memory to the driver."""
        super().release()
        if self.cuda:
            torch.cuda.empty_cache()

    def close(self) -> None:
        """Restore the TF32 flags and free memory."""
        self._flush_buf = None
        super().close()
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = self._flags

    # -- helpers -------------------------------------------------------------------------------
    def _randn(self, shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        x = torch.randn(shape, generator=self.gen, device=self.device, dtype=torch.float32)
        return x.to(dtype)

    def _context(self, precision: str) -> Callable[[], contextlib.AbstractContextManager]:
        tf32 = precision == "tf32"

        @contextlib.contextmanager
        def ctx() -> Any:
            old = torch.backends.cuda.matmul.allow_tf32
            torch.backends.cuda.matmul.allow_tf32 = tf32
            try:
                with torch.inference_mode():
                    yield
            finally:
                torch.backends.cuda.matmul.allow_tf32 = old

        return ctx

    def _float(self, precision: str) -> torch.dtype:
        if precision not in _FLOAT:
            raise Unsupported(f"{precision} is not a floating-point format for this kernel")
        return _FLOAT[precision]

    # -- kernels -------------------------------------------------------------------------------
    def make_launch(self) -> Op:
        """``torch.add`` on one-element tensors, 100 per sample."""
        a, b, c = (torch.ones(1, device=self.device) for _ in range(3))

        def fn() -> None:
            for _ in range(100):
                torch.add(a, b, out=c)

        return Op(fn, f"torch.add 1 element ({self.device.type})", inner=100, flush=False)

    def make_copy(self, buffer_bytes: int) -> Op:
        """``dst.copy_(src)``."""
        src = torch.ones(buffer_bytes // 4, device=self.device)
        dst = torch.zeros_like(src)
        return Op(lambda: dst.copy_(src), "torch.Tensor.copy_", flush=False)

    def make_read(self, buffer_bytes: int) -> Op:
        """``src.sum()``."""
        src = torch.ones(buffer_bytes // 4, device=self.device)
        return Op(lambda: src.sum(), "torch.sum", flush=False)

    def make_gemm(self, m: int, n: int, k: int, precision: str) -> Op:
        """A @ W^T with W stored (n, k); fp8 via ``torch._scaled_mm``, int8 via ``torch._int_mm``."""
        if precision == "fp8":
            return self._gemm_fp8(m, n, k)
        if precision == "int8":
            return self._gemm_int8(m, n, k)
        dtype = self._float(precision)
        w = self.cached(("gemm", n, k, precision), lambda: self._randn((n, k), dtype))
        a = self._randn((m, k), dtype)
        c = torch.empty((m, n), device=self.device, dtype=dtype)
        wt = w.t()
        impl = "torch.mm" + (" (allow_tf32)" if precision == "tf32" else "")
        return Op(lambda: torch.mm(a, wt, out=c), impl, context=self._context(precision))

    def _gemm_fp8(self, m: int, n: int, k: int) -> Op:
        if not self.cuda:
            raise Unsupported(_CPU_REASONS["fp8"])
        e4m3 = torch.float8_e4m3fn
        w = self.cached(("gemm", n, k, "fp8"), lambda: self._randn((n, k), e4m3))
        a = self._randn((m, k), e4m3)
        one = torch.ones((), device=self.device, dtype=torch.float32)
        wt = w.t()  # column-major, as _scaled_mm requires

        def fn() -> Any:
            return torch._scaled_mm(a, wt, scale_a=one, scale_b=one, out_dtype=torch.bfloat16)

        return Op(fn, "torch._scaled_mm e4m3 -> bf16", context=self._context("fp8"))

    def _gemm_int8(self, m: int, n: int, k: int) -> Op:
        if not self.cuda:
            raise Unsupported(_CPU_REASONS["int8"])
        rows = max(m, INT_MM_MIN_M)  # torch._int_mm needs M > 16: pad as an engine would
        w = self.cached(
            ("gemm", n, k, "int8"),
            lambda: torch.randint(
                -8, 8, (n, k), generator=self.gen, device=self.device, dtype=torch.int8
            ),
        )
        a = torch.randint(
            -8, 8, (rows, k), generator=self.gen, device=self.device, dtype=torch.int8
        )
        wt = w.t()
        pad = f" (M padded {m} -> {rows})" if rows != m else ""
        return Op(
            lambda: torch._int_mm(a, wt),
            "torch._int_mm int8 -> int32" + pad,
            context=self._context("int8"),
        )

    def make_attention_decode(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """``scaled_dot_product_attention`` with one query per sequence."""
        dtype = self._float(precision)
        q = self._randn((batch, heads, 1, head_dim), dtype)
        k = self._randn((batch, heads, seq_len, head_dim), dtype)
        v = self._randn((batch, heads, seq_len, head_dim), dtype)
        fn = lambda: F.scaled_dot_product_attention(q, k, v)  # noqa: E731
        return Op(fn, "torch sdpa", context=self._context(precision))

    def make_attention_prefill(
        self, batch: int, seq_len: int, heads: int, head_dim: int, precision: str
    ) -> Op:
        """``scaled_dot_product_attention(is_causal=True)`` over the prompt."""
        dtype = self._float(precision)
        q, k, v = (self._randn((batch, heads, seq_len, head_dim), dtype) for _ in range(3))
        fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True)  # noqa: E731
        return Op(fn, "torch sdpa causal", context=self._context(precision))

    def make_block(
        self, batch: int, seq_len: int, hidden: int, heads: int, ffn: int, precision: str
    ) -> Op:
        """The block of :mod:`calibrate.kernels_torch`."""
        dtype = self._float(precision)
        w = kernels_torch.init_block(hidden, ffn, dtype, self.device, self.gen)
        x = self._randn((batch, seq_len, hidden), dtype)
        fn = lambda: kernels_torch.block_forward(x, w, heads)  # noqa: E731
        return Op(fn, "torch block (sdpa)", context=self._context(precision))

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
        """See :func:`calibrate.backends.torch_models.make_conv2d`."""
        shape = (batch, cin, cout, hw, kernel, stride, groups)
        return torch_models.make_conv2d(self, shape, layout, precision)

    def make_llm_step(
        self, shape: Any, batch: int, seq_len: int, phase: str, precision: str, graph: bool
    ) -> Op:
        """See :func:`calibrate.backends.torch_models.make_llm_step`."""
        return torch_models.make_llm_step(self, shape, batch, seq_len, phase, precision, graph)

    def make_allreduce(self, message_bytes: int, sizes: tuple[int, ...]) -> Op:
        """See :func:`calibrate.backends.torch_models.make_allreduce`."""
        return torch_models.make_allreduce(self, message_bytes, sizes)

    def make_resnet50(self, batch: int, precision: str) -> Op:
        """torchvision ResNet-50 (random weights, eval mode; channels-last on CUDA)."""
        reason = self.resnet50_unavailable()
        if reason:
            raise Unsupported(reason)
        models = importlib.import_module("torchvision.models")
        dtype = self._float(precision)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)  # torchvision initialises from the global RNG
            model = models.resnet50(weights=None).eval()
        fmt = torch.channels_last if self.cuda else torch.contiguous_format
        model = model.to(device=self.device, dtype=dtype, memory_format=fmt)
        x = self._randn((batch, 3, 224, 224), dtype).contiguous(memory_format=fmt)
        return Op(lambda: model(x), "torchvision resnet50", context=self._context(precision))


def cuda_candidates(cc: tuple[int, int], ccs: str) -> tuple[dict[str, str], dict[str, str]]:
    """Precisions worth probing on a device of compute capability ``cc``, and the others' reasons."""
    methods = {"fp32": "torch.mm float32 (TF32 off)", "fp16": "torch.mm float16"}
    reasons = {"fp64": "not an inference precision (not measured on GPUs)"}
    if cc >= (8, 0):
        methods["tf32"] = "torch.mm float32 with allow_tf32"
        methods["bf16"] = "torch.mm bfloat16"
    else:
        reasons["tf32"] = f"TF32 tensor cores need compute capability >= 8.0 (this device: {ccs})"
        reasons["bf16"] = f"no bf16 hardware before compute capability 8.0 (this device: {ccs})"
    if not (hasattr(torch, "_scaled_mm") and hasattr(torch, "float8_e4m3fn")):
        reasons["fp8"] = f"torch {torch.__version__} has no torch._scaled_mm / float8_e4m3fn"
    elif cc < (8, 9):
        reasons["fp8"] = f"fp8 tensor cores need compute capability >= 8.9 (this device: {ccs})"
    else:
        methods["fp8"] = "torch._scaled_mm float8_e4m3fn -> bf16"
    if hasattr(torch, "_int_mm"):
        methods["int8"] = "torch._int_mm int8 -> int32 (M <= 16 padded to 32, as engines do)"
    else:
        reasons["int8"] = f"torch {torch.__version__} has no torch._int_mm"
    return methods, reasons


def pci_bus_id(props: Any) -> str | None:
    """``dddddddd:bb:dd.0`` from torch device properties, when this torch exposes them."""
    try:
        return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"
    except (AttributeError, TypeError, ValueError):
        return None


def _probe_seconds(make: Callable[[], Op], repeats: int = 3) -> float:
    """Best of ``repeats`` timed calls after one warm-up (CPU precision probe)."""
    op = make()
    with op.entered():
        op.fn()
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            op.fn()
            best = min(best, time.perf_counter() - start)
    return best
