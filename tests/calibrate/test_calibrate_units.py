"""Small parts of the harness: statistics, timing loop, plan, work formulas, layouts, NVML, CLI."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

from calibrate import CalibrationError, work
from calibrate.backends.base import Backend, Op
from calibrate.backends.cublas_layout import CUBLAS_OP_N, CUBLAS_OP_T, gemm_ex_layout
from calibrate.plan import build_plan, cpu_sweep, cuda_sweep
from calibrate.power import PowerMeter
from calibrate.runner import normalize_precisions
from calibrate.schema import COLUMN_NAMES, KINDS, required_columns
from calibrate.timing import TimingConfig, measure, summarize


def test_summarize_percentiles() -> None:
    s = summarize([5.0, 1.0, 2.0, 3.0, 4.0])
    assert (s.median_s, s.min_s, s.repeats) == (3.0, 1.0, 5)
    assert s.p10_s == pytest.approx(1.4) and s.p90_s == pytest.approx(4.6)
    assert s.std_s == pytest.approx(np.std([1, 2, 3, 4, 5], ddof=1))
    assert summarize([2.0]).std_s == 0.0
    with pytest.raises(ValueError):
        summarize([])


class _Clock(Backend):
    """A backend whose op 'takes' a fixed time, counted instead of measured."""

    name = "fake"

    def __init__(self, call_s: float) -> None:
        super().__init__()
        self.call_s, self.calls = call_s, 0

    def time_once(self, op: Op) -> float:
        self.calls += 1
        return self.call_s * op.inner

    def device_info(self):  # pragma: no cover - unused
        return {}

    def precision_support(self):  # pragma: no cover - unused
        return {}

    make_launch = make_copy = make_read = make_gemm = None  # type: ignore[assignment]
    make_attention_decode = make_attention_prefill = make_block = None  # type: ignore[assignment]


_Clock.__abstractmethods__ = frozenset()


def test_measure_stops_at_max_repeats_and_divides_by_inner() -> None:
    be = _Clock(1e-6)
    op = Op(lambda: None, "x", inner=10)
    stats = measure(
        be,
        op,
        TimingConfig(warmup=2, max_time_s=10, min_repeats=3, max_repeats=8),
        time.perf_counter() + 60,
    )
    assert stats.repeats == 8 and stats.median_s == pytest.approx(1e-6)
    assert be.calls == 2 + 8


def test_measure_respects_the_deadline() -> None:
    be = _Clock(1e-3)
    cfg = TimingConfig(warmup=3, max_time_s=10, min_repeats=5, max_repeats=1000)
    stats = measure(be, Op(lambda: None, "x"), cfg, time.perf_counter() - 1)
    assert stats.repeats == 1 and be.calls == 1  # the warm-up call is the only sample


def test_work_formulas() -> None:
    assert work.gemm(2, 3, 4, "fp16") == (48, (8 + 12) * 2 + 6 * 2)
    assert work.gemm(1, 8, 8, "int8")[1] == 8 + 64 + 8 * 4
    assert work.copy(100) == (0, 200)
    f, b = work.attention_decode(2, 10, 4, 8, "fp32")
    assert f == 4 * 2 * 4 * 10 * 8 and b == (2 * 2 * 4 * 10 * 8 + 2 * 2 * 4 * 8) * 4
    f, _ = work.attention_prefill(1, 3, 1, 1, "fp32")
    assert f == 2 * 3 * 4  # lower triangle incl. diagonal: 6 dot products, q.K and P.V
    f, b = work.forward_block(1, 1, 4, 2, 8, "fp32")
    assert f == 2 * (4 * 16 + 3 * 4 * 8) + 2 * 2 * 2 * 1 * 2
    assert b == (work.block_weights(4, 8) + 2 * 4) * 4


def test_required_columns_cover_every_kind() -> None:
    for kind in KINDS:
        assert set(required_columns(kind)) <= set(COLUMN_NAMES)
    assert "median_s" not in required_columns("power_idle")
    assert {"m", "n", "k", "power_w", "median_s"} <= set(required_columns("power_busy"))


def test_plan_tiers_put_a_usable_roofline_first() -> None:
    cfg = cpu_sweep(quick=False, cache_bytes=32 << 20)
    tasks = build_plan(cfg, ["fp64", "fp32"], "fp32", resnet=True)
    tiers = [t.tier for t in tasks]
    assert tiers == sorted(tiers)
    first = {t.kind for t in tasks if t.tier == 0}
    assert {"launch", "bandwidth_copy", "bandwidth_read", "gemm", "attention_decode"} <= first
    assert all(t.precision == "fp32" for t in tasks if t.tier == 0 and t.kind == "gemm")
    assert max(t.params.get("m", 0) for t in tasks if t.kind == "gemm") == 2048
    assert {t.kind for t in tasks} >= {"forward_block", "forward_resnet50", "attention_prefill"}
    assert all(size >= 4 * (32 << 20) for size in cfg.bandwidth_bytes)


def test_cuda_sweep_has_transformer_shapes() -> None:
    cfg = cuda_sweep(quick=False, cache_bytes=50 << 20)
    assert (4096, 4096) in cfg.gemm_shapes and (11008, 4096) in cfg.gemm_shapes
    assert cfg.gemm_m[0] == 1 and cfg.gemm_m[-1] == 4096
    assert cfg.bandwidth_bytes[0] >= 8 * (50 << 20)


def test_normalize_precisions() -> None:
    assert normalize_precisions(None) is None
    assert normalize_precisions(["fp16,bf16", "FP8", "fp16"]) == ["fp16", "bf16", "fp8"]
    with pytest.raises(CalibrationError, match="unknown precision 'fp4'"):
        normalize_precisions(["fp4"])
    with pytest.raises(CalibrationError):
        normalize_precisions([""])


def _colmajor_gemm(transa, transb, m, n, k, a, lda, b, ldb, ldc) -> np.ndarray:
    """Reference column-major GEMM on flat buffers, as cuBLAS defines it."""

    def mat(buf, rows, cols, ld):
        return np.array([[buf[i + j * ld] for j in range(cols)] for i in range(rows)])

    op_a = mat(a, k, m, lda).T if transa == CUBLAS_OP_T else mat(a, m, k, lda)
    op_b = mat(b, n, k, ldb).T if transb == CUBLAS_OP_T else mat(b, k, n, ldb)
    c = op_a @ op_b
    out = np.zeros(ldc * n)
    for j in range(n):
        out[j * ldc : j * ldc + m] = c[:, j]
    return out


def test_cublas_layout_computes_row_major_a_times_w_transposed() -> None:
    rng = np.random.default_rng(1)
    m, n, k = 3, 5, 4
    a, w = rng.integers(-3, 4, (m, k)), rng.integers(-3, 4, (n, k))
    lay = gemm_ex_layout(m, n, k)
    assert (lay["transa"], lay["transb"]) == (CUBLAS_OP_T, CUBLAS_OP_N)
    flat = _colmajor_gemm(
        lay["transa"],
        lay["transb"],
        lay["m"],
        lay["n"],
        lay["k"],
        w.ravel(),
        lay["lda"],
        a.ravel(),
        lay["ldb"],
        lay["ldc"],
    )
    np.testing.assert_array_equal(flat.reshape(m, n), a @ w.T)


def _fake_nvml(power_mw: list[int], fail_init: bool = False) -> types.ModuleType:
    nvml = types.ModuleType("pynvml")
    readings = iter(power_mw)
    nvml.NVML_CLOCK_SM, nvml.NVML_CLOCK_MEM = 1, 2
    nvml.shutdowns = 0

    def init() -> None:
        if fail_init:
            raise RuntimeError("NVML Shared Library Not Found")

    def shutdown() -> None:
        nvml.shutdowns += 1

    nvml.nvmlInit = init
    nvml.nvmlShutdown = shutdown
    nvml.nvmlDeviceGetHandleByPciBusId = lambda bus: ("handle", bus)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: ("handle", i)
    nvml.nvmlDeviceGetPowerUsage = lambda h: next(readings, power_mw[-1])
    nvml.nvmlSystemGetDriverVersion = lambda: b"550.54.15"
    nvml.nvmlSystemGetCudaDriverVersion = lambda: 12040
    nvml.nvmlDeviceGetEnforcedPowerLimit = lambda h: 72000
    nvml.nvmlDeviceGetClockInfo = lambda h, c: 1500 if c == 1 else 6000
    nvml.nvmlDeviceGetMaxClockInfo = lambda h, c: 2040 if c == 1 else 6251
    return nvml


def test_power_meter_with_fake_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    nvml = _fake_nvml([16000, 17000, 18000, 70000])
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    meter, how = PowerMeter.open("00000000:01:00.0", 0)
    assert meter is not None and "PCI bus 00000000:01:00.0" in how
    assert meter.read_w() == 17.0  # the first reading was the open() probe
    info = meter.info()
    assert info["driver_version"] == "550.54.15" and info["cuda_driver_version"] == "12.4"
    assert info["power_limit_w"] == 72.0 and info["clocks"]["max_sm_mhz"] == 2040
    calls: list[int] = []
    samples = meter.sample(0.05, work=lambda: (calls.append(1), time.sleep(0.005)), settle=0.0)
    assert samples and calls and all(w > 0 for w in samples)
    meter.close()
    assert nvml.shutdowns == 1


def test_power_meter_unavailable_reasons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([1], fail_init=True))
    meter, reason = PowerMeter.open(None, 0)
    assert meter is None and "NVML initialisation failed" in reason
    monkeypatch.setitem(sys.modules, "pynvml", _fake_nvml([1]))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1")
    meter, reason = PowerMeter.open(None, 0)
    assert meter is None and "CUDA_VISIBLE_DEVICES" in reason
    monkeypatch.setitem(sys.modules, "pynvml", None)  # import pynvml -> ImportError
    meter, reason = PowerMeter.open(None, 0)
    assert meter is None and "nvidia-ml-py" in reason


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["run"], "the following arguments are required: --out"),
        (["run", "--out", "x", "--backend", "tpu"], "invalid choice: 'tpu'"),
        (["run", "--out", "x", "--budget-seconds", "-3"], "must be a positive number"),
        (["run", "--out", "x", "--budget-seconds", "soon"], "not a number of seconds"),
        (["run", "--out", "x", "--device", "gpu"], "use cpu, cuda or cuda:N"),
        (["run", "--out", "x", "--precisions", "fp4"], "unknown precision 'fp4'"),
        (["run", "--out", "x", "--backend", "numpy", "--device", "cuda"], "CPU only"),
        (["fly"], "invalid choice: 'fly'"),
    ],
)
def test_cli_bad_arguments_exit_2_with_one_line(run_cli, tmp_path, args, expected) -> None:
    args = [str(tmp_path / a) if a == "x" else a for a in args]
    proc = run_cli(*args)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], proc.stderr
    assert "Traceback" not in proc.stderr and not (tmp_path / "x").exists()


def test_cli_refuses_a_non_empty_output(run_cli, tmp_path) -> None:
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    proc = run_cli("run", "--out", str(out), "--backend", "numpy", "--quick")
    assert proc.returncode == 2 and "not empty" in proc.stderr
    assert (out / "keep.txt").read_text() == "mine"


def test_cli_check_reports_an_invalid_directory(run_cli, tmp_path) -> None:
    proc = run_cli("check", str(tmp_path))
    assert proc.returncode == 1 and "meta.json" in proc.stderr and "Traceback" not in proc.stderr
