"""GPU paths: CUDA events, fp8 ``torch._scaled_mm``, int8 ``torch._int_mm``, NVML, CuPy.

Every test here is marked ``gpu`` and skipped (by conftest.py) when no CUDA device is usable.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

import calibrate
from calibrate import load_measurements
from calibrate.power import PowerMeter
from calibrate.timing import TimingConfig, measure

pytestmark = pytest.mark.gpu


def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("this torch has no usable CUDA device")
    return torch


@pytest.fixture
def cuda_backend():
    _torch_cuda()
    from calibrate.backends.torch_backend import TorchBackend

    be = TorchBackend("cuda")
    yield be
    be.close()


def test_cuda_events_time_a_gemm(cuda_backend) -> None:
    torch = _torch_cuda()
    be = cuda_backend
    assert be.device_kind == "cuda" and be.timing_method == "cuda_events"
    op = be.make_gemm(256, 1024, 1024, "fp16")
    assert 0 < be.time_once(op) < 1
    stats = measure(be, op, TimingConfig(2, 0.05, 5, 50), time.perf_counter() + 10)
    assert stats.repeats >= 5 and 0 < stats.min_s <= stats.median_s <= stats.p90_s
    big = be.make_gemm(8192, 8192, 8192, "fp16")
    with big.entered():
        big.fn()
        events = be.time_once(big)
        torch.cuda.synchronize()
        start = time.perf_counter()
        big.fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    assert events == pytest.approx(wall, rel=0.5)


def test_tf32_flag_is_scoped(cuda_backend) -> None:
    torch = _torch_cuda()
    if torch.cuda.get_device_capability() < (8, 0):
        pytest.skip("TF32 needs compute capability 8.0")
    op = cuda_backend.make_gemm(64, 256, 256, "tf32")
    with op.entered():
        assert torch.backends.cuda.matmul.allow_tf32 is True
    assert torch.backends.cuda.matmul.allow_tf32 is False


def test_fp8_scaled_mm(cuda_backend) -> None:
    torch = _torch_cuda()
    if torch.cuda.get_device_capability() < (8, 9):
        pytest.skip("fp8 needs compute capability 8.9")
    support = cuda_backend.precision_support()["fp8"]
    assert support.supported, support.detail
    op = cuda_backend.make_gemm(64, 256, 512, "fp8")
    with op.entered():
        out = op.fn()
    out = out[0] if isinstance(out, tuple) else out  # torch < 2.4 also returned amax
    assert out.dtype == torch.bfloat16 and tuple(out.shape) == (64, 256)
    assert torch.isfinite(out.float()).all()
    assert cuda_backend.time_once(op) > 0


def test_int8_int_mm(cuda_backend) -> None:
    torch = _torch_cuda()
    support = cuda_backend.precision_support()["int8"]
    if not support.supported:
        pytest.skip(support.detail)
    op = cuda_backend.make_gemm(32, 64, 128, "int8")
    with op.entered():
        out = op.fn()
    assert out.dtype == torch.int32 and tuple(out.shape) == (32, 64)
    small = cuda_backend.make_gemm(1, 64, 128, "int8")  # padded to M = 32, as an engine does
    with small.entered():
        assert tuple(small.fn().shape) == (32, 64)
    assert small.impl.endswith("(M padded 1 -> 32)")


def test_conv2d_channels_last_and_cudnn_benchmark(cuda_backend) -> None:
    torch = _torch_cuda()
    op = cuda_backend.make_conv2d(8, 64, 128, 28, 3, 2, 1, "NHWC", "bf16")
    assert "cudnn.benchmark=True" in op.impl
    with op.entered():
        assert torch.backends.cudnn.benchmark is True
        y = op.fn()
    assert tuple(y.shape) == (8, 128, 14, 14)
    assert y.is_contiguous(memory_format=torch.channels_last)


def test_llm_decode_graph_replays_the_eager_step(cuda_backend) -> None:
    from calibrate.plan import TINY_LLM

    be = cuda_backend
    eager = be.make_llm_step(TINY_LLM, 4, 128, "decode", "bf16", graph=False)
    graph = be.make_llm_step(TINY_LLM, 4, 128, "decode", "bf16", graph=True)
    assert "CUDA graph" in graph.impl and "eager" in eager.impl
    with graph.entered():
        graph.fn()
    be.synchronize()
    prefill = be.make_llm_step(TINY_LLM, 2, 256, "prefill", "bf16", graph=False)
    with prefill.entered():
        assert tuple(prefill.fn().shape) == (2, TINY_LLM.vocab)


def test_resnet50_when_torchvision_is_there(cuda_backend) -> None:
    pytest.importorskip("torchvision")
    op = cuda_backend.make_resnet50(2, cuda_backend_primary(cuda_backend))
    assert cuda_backend.time_once(op) > 0


def cuda_backend_primary(be) -> str:
    support = be.precision_support()
    return next(p for p in ("bf16", "fp16", "fp32") if support[p].supported)


def test_nvml_power(cuda_backend) -> None:
    pytest.importorskip("pynvml")
    info = cuda_backend.device_info()
    meter, how = PowerMeter.open(info.get("pci_bus_id"), info["index"])
    assert meter is not None, how
    try:
        assert 1.0 < meter.read_w() < 2000.0
        assert meter.sample(0.3, settle=0.0)
        assert meter.info()["driver_version"]
    finally:
        meter.close()


@pytest.mark.slow
def test_quick_run_on_cuda(tmp_path: Path) -> None:
    out = calibrate.run(tmp_path / "gpu", backend="auto", quick=True, budget_seconds=45)
    meta, rows = load_measurements(out)
    assert meta["device"]["kind"] == "cuda" and meta["device"]["compute_capability"]
    assert meta["timing"]["method"] == "cuda_events" and meta["timing"]["cache_flush"] is True
    kinds = {r["kind"] for r in rows}
    assert {"launch", "bandwidth_copy", "bandwidth_read", "gemm"} <= kinds
    for entry in meta["precisions"].values():
        assert entry.get("method") if entry["supported"] else entry.get("reason")
    if meta["optional"]["power"]["available"]:
        assert "power_idle" in kinds


def test_cupy_backend() -> None:
    pytest.importorskip("cupy")
    from calibrate.backends.cupy_backend import CupyBackend

    be = CupyBackend("cuda")
    try:
        support = be.precision_support()
        assert support["fp32"].supported, support["fp32"].detail
        assert support["fp16"].supported, support["fp16"].detail
        assert be.time_once(be.make_gemm(64, 256, 256, "fp16")) > 0
        for prec in ("tf32", "bf16", "int8"):
            if support[prec].supported:
                assert be.time_once(be.make_gemm(32, 64, 64, prec)) > 0
        assert be.time_once(be.make_attention_decode(2, 128, 4, 64, "fp16")) > 0
        assert be.time_once(be.make_block(1, 16, 256, 4, 512, "fp16")) > 0
    finally:
        be.close()
