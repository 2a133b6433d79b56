"""The PyTorch backend on the CPU (skipped when torch is not installed)."""

from __future__ import annotations

import time
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")

import calibrate  # noqa: E402
from calibrate import CalibrationError, Unsupported, load_measurements  # noqa: E402
from calibrate.backends import select_backend  # noqa: E402
from calibrate.backends.torch_backend import TorchBackend, cuda_candidates, pci_bus_id  # noqa: E402
from calibrate.timing import TimingConfig, measure  # noqa: E402


def test_torch_cpu_quick_run(tmp_path: Path) -> None:
    out = calibrate.run(tmp_path / "t", backend="torch", device="cpu", quick=True, budget_seconds=8)
    meta, rows = load_measurements(out)
    assert meta["backend"] == "torch" and meta["device"]["kind"] == "cpu"
    assert meta["timing"]["method"] == "perf_counter"
    prec = meta["precisions"]
    assert prec["fp32"]["supported"] and not prec["fp8"]["supported"]
    assert "compute capability >= 8.9" in prec["fp8"]["reason"]
    assert not prec["int8"]["supported"] and not prec["tf32"]["supported"]
    gemm_precisions = {r["precision"] for r in rows if r["kind"] == "gemm"}
    expected = {p for p, e in prec.items() if e["supported"]}
    assert "fp32" in gemm_precisions and gemm_precisions <= expected
    planned = {s["precision"] for s in meta["skipped"] if s["kind"] == "gemm"}
    assert gemm_precisions | planned == expected  # every supported precision was planned
    impls = {r["kind"]: r["impl"] for r in rows}
    assert impls["attention_decode"] == "torch sdpa"
    assert impls["forward_block"] == "torch block (sdpa)"
    assert torch.backends.cuda.matmul.allow_tf32 is False  # flags restored


def test_gemm_block_and_attention_compute_something() -> None:
    be = TorchBackend("cpu")
    try:
        op = be.make_gemm(4, 16, 32, "fp32")
        with op.entered():
            out = op.fn()
        assert out.shape == (4, 16) and torch.isfinite(out).all()
        block = be.make_block(2, 8, 64, 4, 96, "fp32")
        with block.entered():
            y = block.fn()
        assert y.shape == (2, 8, 64) and torch.isfinite(y).all()
        stats = measure(
            be,
            be.make_attention_decode(2, 16, 2, 8, "fp32"),
            TimingConfig(1, 0.01, 3, 5),
            time.perf_counter() + 5,
        )
        assert stats.repeats >= 3 and stats.median_s > 0
    finally:
        be.close()


def test_cpu_refuses_cuda_only_precisions() -> None:
    be = TorchBackend("cpu")
    try:
        with pytest.raises(Unsupported, match="compute capability"):
            be.make_gemm(32, 64, 64, "fp8")
        with pytest.raises(Unsupported, match="CUDA devices only"):
            be.make_gemm(32, 64, 64, "int8")
        if be.resnet50_unavailable():
            with pytest.raises(Unsupported, match="torchvision"):
                be.make_resnet50(1, "fp32")
    finally:
        be.close()


def test_device_errors_are_usage_errors() -> None:
    with pytest.raises(CalibrationError, match="cpu, cuda or cuda:N"):
        TorchBackend("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(CalibrationError, match="sees no CUDA device"):
            select_backend("torch", "cuda")


@pytest.mark.parametrize(
    ("cc", "supported", "unsupported"),
    [
        ((7, 5), {"fp32", "fp16", "int8"}, {"tf32", "bf16", "fp8", "fp64"}),
        ((8, 0), {"fp32", "tf32", "fp16", "bf16", "int8"}, {"fp8", "fp64"}),
        ((8, 9), {"fp32", "tf32", "fp16", "bf16", "fp8", "int8"}, {"fp64"}),
        ((9, 0), {"fp32", "tf32", "fp16", "bf16", "fp8", "int8"}, {"fp64"}),
    ],
)
def test_cuda_candidates_follow_compute_capability(cc, supported, unsupported) -> None:
    methods, reasons = cuda_candidates(cc, f"{cc[0]}.{cc[1]}")
    assert set(methods) == supported and set(reasons) == unsupported
    if "fp8" in reasons and cc < (8, 9):
        assert f"this device: {cc[0]}.{cc[1]}" in reasons["fp8"]


def test_pci_bus_id_formatting() -> None:
    props = SimpleNamespace(pci_domain_id=0, pci_bus_id=0x3B, pci_device_id=0)
    assert pci_bus_id(props) == "00000000:3b:00.0"
    assert pci_bus_id(SimpleNamespace()) is None
