"""The torch backend's model-level ops: conv2d, whole-model LLM steps and all-reduce.

Kept apart from :mod:`calibrate.backends.torch_backend` (its methods call these functions).
"""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from .. import collectives, kernels_llm
from ..errors import Unsupported
from ..work import LlmShape, allreduce
from .base import Op

if TYPE_CHECKING:
    from .torch_backend import TorchBackend


def conv_context(
    be: TorchBackend, precision: str
) -> Callable[[], contextlib.AbstractContextManager]:
    """Inference mode, ``cudnn.benchmark = True`` (cuDNN picks its fastest algorithm, as
    serving engines configure it) and cuDNN TF32 only for ``tf32``; flags restored after."""
    cudnn = torch.backends.cudnn

    @contextlib.contextmanager
    def ctx() -> Iterator[None]:
        old = cudnn.benchmark, cudnn.allow_tf32
        cudnn.benchmark, cudnn.allow_tf32 = True, precision == "tf32"
        try:
            with torch.inference_mode():
                yield
        finally:
            cudnn.benchmark, cudnn.allow_tf32 = old

    return ctx


def make_conv2d(
    be: TorchBackend,
    shape: tuple[int, int, int, int, int, int, int],
    layout: str,
    precision: str,
) -> Op:
    """``F.conv2d`` (no bias, padding ``(kernel - 1) // 2``) in ``layout`` (NHWC =
    ``torch.channels_last``)."""
    batch, cin, cout, hw, kernel, stride, groups = shape
    dtype = be._float(precision)
    fmt = torch.channels_last if layout == "NHWC" else torch.contiguous_format
    w = be._randn((cout, cin // groups, kernel, kernel), dtype).contiguous(memory_format=fmt)
    x = be._randn((batch, cin, hw, hw), dtype).contiguous(memory_format=fmt)
    pad = (kernel - 1) // 2

    def fn() -> torch.Tensor:
        return F.conv2d(x, w, stride=stride, padding=pad, groups=groups)

    where = "cudnn.benchmark=True" if be.cuda else "CPU"
    tf32 = ", allow_tf32" if precision == "tf32" else ""
    return Op(fn, f"torch conv2d ({where}, {layout}{tf32})", context=conv_context(be, precision))


def make_llm_step(
    be: TorchBackend,
    shape: LlmShape,
    batch: int,
    seq_len: int,
    phase: str,
    precision: str,
    graph: bool,
) -> Op:
    """One decode step (``batch`` new tokens against ``seq_len`` cached ones, optionally as a
    captured CUDA graph) or one prefill (``batch`` prompts of ``seq_len``) of the whole model."""
    if graph and not be.cuda:
        raise Unsupported("CUDA graphs need a CUDA device")
    dtype = be._float(precision)
    weights = be.cached(
        ("llm", shape, precision),
        lambda: kernels_llm.init_llm(shape, dtype, be.device, be.gen),
    )
    cache = kernels_llm.init_cache(shape, batch, seq_len, dtype, be.device, be.gen)
    ctx = be._context(precision)
    if phase == "prefill":
        ids = torch.randint(0, shape.vocab, (batch, seq_len), generator=be.gen, device=be.device)
        fn = lambda: kernels_llm.prefill_step(ids, weights, cache, shape)  # noqa: E731
        return Op(fn, "torch whole model prefill, eager (sdpa causal, gqa)", context=ctx)
    ids = torch.randint(0, shape.vocab, (batch,), generator=be.gen, device=be.device)
    fn = lambda: kernels_llm.decode_step(ids, weights, cache, shape, seq_len - 1)  # noqa: E731
    if not graph:
        return Op(fn, "torch whole model decode, eager (sdpa, gqa)", context=ctx)
    try:
        replay, keep = capture_graph(fn, ctx)
    except Exception as exc:  # noqa: BLE001 - the reason is recorded in meta.json
        raise Unsupported(f"CUDA graph capture failed: {type(exc).__name__}: {exc}") from exc
    return Op(replay, "torch whole model decode, CUDA graph (sdpa, gqa)", context=ctx, keep=keep)


def capture_graph(
    fn: Callable[[], Any], ctx: Callable[[], contextlib.AbstractContextManager]
) -> tuple[Callable[[], Any], list[Any]]:
    """Capture ``fn`` into a ``torch.cuda.CUDAGraph`` after warm-up calls on a side stream (as
    torch's documentation prescribes); returns the replay and the objects to keep alive."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with ctx(), torch.cuda.stream(side):
        for _ in range(2):
            fn()
    torch.cuda.current_stream().wait_stream(side)
    g = torch.cuda.CUDAGraph()
    with ctx(), torch.cuda.graph(g):
        out = fn()
    torch.cuda.synchronize()
    return g.replay, [g, out]


def make_allreduce(be: TorchBackend, message_bytes: int, sizes: tuple[int, ...]) -> Op:
    """An NCCL all-reduce over every visible GPU, measured (for all ``sizes`` at once, on the
    first call) in one process per GPU; the op carries the measured statistics."""
    gpus = torch.cuda.device_count() if be.cuda else 0
    if gpus < 2:
        raise Unsupported(
            f"{gpus} CUDA device(s) visible: an NCCL all-reduce needs at least 2 GPUs"
        )
    results = be.cached(("allreduce", sizes, gpus), lambda: _measure_all(sizes, gpus))
    stats = results[message_bytes]
    flops, bus = allreduce(message_bytes, gpus)
    impl = f"torch.distributed.all_reduce nccl fp32 sum, {gpus} processes x 1 GPU"
    return Op(lambda: None, impl, flush=False, stats=stats, row={"ranks": gpus, "bytes": bus})


def _measure_all(sizes: tuple[int, ...], gpus: int) -> dict[int, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        return collectives.measure_allreduce(sizes, gpus, "nccl", tmp)
