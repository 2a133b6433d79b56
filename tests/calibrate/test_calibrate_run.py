"""End-to-end runs of the harness on the NumPy backend (and a fake GPU for the power path)."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest

import calibrate
from calibrate import CalibrationError, load_measurements, runner, session
from calibrate.backends.numpy_backend import NumpyBackend
from calibrate.output import write_directory
from calibrate.plan import cpu_sweep
from calibrate.progress import ProgressEvent

NO_GPU_FRAMEWORK = """
import sys
from calibrate.__main__ import main
rc = main({argv!r})
loaded = sorted(m for m in ("torch", "cupy", "torchvision", "pynvml") if m in sys.modules)
print("LOADED", loaded)
sys.exit(rc)
"""


def test_cli_numpy_quick_end_to_end_without_gpu_frameworks(run_python, tmp_path: Path) -> None:
    out = tmp_path / "cpu"
    argv = ["run", "--out", str(out), "--backend", "numpy", "--quick", "--budget-seconds", "40"]
    start = time.perf_counter()
    # The budget is generous: this machine's L3 is 480 MiB, so the bandwidth buffers (4x the
    # last-level cache, to measure DRAM and not cache) take seconds of page faults to allocate.
    proc = run_python(NO_GPU_FRAMEWORK.format(argv=argv), timeout=90)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, "the numpy path imported a GPU framework"
    assert str(out) in proc.stdout and "ETA" in proc.stderr and "done:" in proc.stderr
    assert elapsed < 60
    meta, rows = load_measurements(out)
    assert meta["format"] == "capsim-calibration/1" and meta["backend"] == "numpy"
    assert meta["device"]["kind"] == "cpu" and meta["host"]["cpu_count"] >= 1
    kinds = {r["kind"] for r in rows}
    assert {"launch", "bandwidth_copy", "bandwidth_read", "gemm"} <= kinds
    assert {"attention_decode", "attention_prefill", "forward_block"} <= kinds
    precisions = meta["precisions"]
    assert precisions["fp32"]["supported"] and precisions["fp64"]["measured"]
    assert not precisions["fp16"]["supported"] and "emulated" in precisions["fp16"]["reason"]
    assert meta["optional"]["power"]["available"] is False
    assert meta["optional"]["resnet50"]["available"] is False
    for r in rows:
        assert r["median_s"] > 0 and r["repeats"] >= 1
        assert r["gflops_per_s"] == pytest.approx(r["flops"] / r["median_s"] / 1e9)
    block = next(r for r in rows if r["kind"] == "forward_block")
    assert block["tokens"] == block["batch"] * block["seq_len"]
    assert block["hidden"] == block["heads"] * block["head_dim"]
    assert not list(tmp_path.glob(".*tmp*")), "temporary directory left behind"


def test_auto_without_gpu_signs_uses_numpy_and_imports_nothing(run_python) -> None:
    code = (
        "import sys\n"
        "import calibrate.backends as b\n"
        "b.cuda_hint = lambda: False\n"
        "be = b.select_backend('auto')\n"
        "print(be.name, be.device_kind, 'torch' in sys.modules, 'cupy' in sys.modules)\n"
        "be.close()\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy", "cpu", "False", "False"]


def test_small_budget_stops_cleanly_and_says_what_was_skipped(tmp_path: Path) -> None:
    events: list[ProgressEvent] = []
    start = time.perf_counter()
    out = calibrate.run(
        tmp_path / "tight", backend="numpy", budget_seconds=2.0, quick=True, progress=events.append
    )
    elapsed = time.perf_counter() - start
    assert elapsed < 4.0
    meta, rows = load_measurements(out)
    assert meta["budget"]["exhausted"] is True and meta["budget"]["budget_seconds"] == 2.0
    reasons = [s["reason"] for s in meta["skipped"]]
    assert reasons and all(r.startswith("budget:") for r in reasons)
    assert meta["budget"]["measured"] + meta["budget"]["skipped"] == meta["budget"]["planned"]
    assert rows and rows[0]["kind"] == "launch"  # tier 0 comes first
    assert events[0].phase == "plan" and events[-1].phase == "done"
    assert events[-1].percent == 100.0


def test_failed_point_is_skipped_and_interrupt_writes_partial_results(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def boom(self, buffer_bytes):
        raise RuntimeError("no memory for you\nsecond line")

    def interrupt(self, m, n, k, precision):
        raise KeyboardInterrupt

    monkeypatch.setattr(NumpyBackend, "make_copy", boom)
    monkeypatch.setattr(NumpyBackend, "make_gemm", interrupt)
    out = calibrate.run(tmp_path / "partial", backend="numpy", quick=True, budget_seconds=20)
    meta, rows = load_measurements(out)
    assert meta["interrupted"] is True
    skipped = {(s["kind"], s["reason"].split(":")[0]) for s in meta["skipped"]}
    assert ("bandwidth_copy", "error") in skipped and ("gemm", "interrupted") in skipped
    errors = [s["reason"] for s in meta["skipped"] if s["kind"] == "bandwidth_copy"]
    assert errors[0] == "error: RuntimeError: no memory for you"
    assert {r["kind"] for r in rows} == {"launch", "bandwidth_read"}


def test_output_is_atomic_and_refuses_to_clobber(tmp_path: Path) -> None:
    meta = {"format": calibrate.FORMAT, "n_rows": 0}
    out = write_directory(tmp_path / "d", meta, [], overwrite=False)
    assert sorted(p.name for p in out.iterdir()) == ["measurements.csv", "meta.json"]
    with pytest.raises(CalibrationError, match="not empty"):
        write_directory(out, meta, [], overwrite=False)
    with pytest.raises(ValueError, match="outside the format"):
        write_directory(out, meta, [{"kind": "gemm", "bogus": 1}], overwrite=True)
    assert json.loads((out / "meta.json").read_text())["n_rows"] == 0  # old one intact
    write_directory(out, meta | {"n_rows": 0, "x": 1}, [], overwrite=True)
    assert json.loads((out / "meta.json").read_text())["x"] == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]  # no temp or backup dirs
    with pytest.raises(CalibrationError, match="does not exist"):
        calibrate.run(tmp_path / "no" / "such" / "dir", backend="numpy", quick=True)


class _FakeMeter:
    """Stands in for NVML: idle 20 W, 60 W while work runs."""

    def sample(self, seconds, interval_s=0.05, work=None, settle=0.3):
        out, end = [], time.perf_counter() + seconds
        while time.perf_counter() < end:
            if work is not None:
                work()
            else:
                time.sleep(0.01)
            out.append(60.0 if work else 20.0)
        return out

    def info(self):
        return {"driver_version": "550.1", "clocks": {"sm_mhz": 1500}, "power_limit_w": 72.0}

    def close(self):
        pass


class _FakeCuda(NumpyBackend):
    """NumPy pretending to be a CUDA device, to exercise the GPU-only runner paths."""

    device_kind = "cuda"
    timing_method = "fake_events"


def test_gpu_only_runner_paths_with_a_fake_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    small = dataclasses.replace(
        cpu_sweep(True, 1 << 20),
        busy_gemm=128,
        idle_s=0.2,
        busy_s=0.3,
        warmup_s=0.1,
        bandwidth_bytes=(8 << 20,),
    )
    monkeypatch.setattr(session, "sweep_config", lambda kind, quick, cache: small)
    monkeypatch.setattr(runner, "select_backend", lambda name, device, seed: _FakeCuda())
    monkeypatch.setattr(session.PowerMeter, "open", lambda bus, index: (_FakeMeter(), "fake"))
    monkeypatch.setattr(session, "choose_primary", lambda be, support, requested: "fp32")
    out = calibrate.run(tmp_path / "gpu", budget_seconds=3.0, precisions=["fp32"])
    meta, rows = load_measurements(out)
    power = {r["kind"]: r for r in rows if r["kind"].startswith("power")}
    assert power["power_idle"]["power_w"] == 20.0 and power["power_idle"]["median_s"] is None
    busy = power["power_busy"]
    assert busy["power_w"] == 60.0 and busy["m"] == 128 and busy["median_s"] > 0
    assert meta["device"]["driver_version"] == "550.1" and meta["device"]["clocks"]["sm_mhz"]
    assert meta["optional"]["power"] == {"available": True, "detail": "fake"}
    assert meta["precisions"]["fp64"]["note"] == "not requested (--precisions)"
    assert not meta["precisions"]["fp64"]["measured"]
