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
    # 6 s: at 3 s a loaded machine (other jobs, pytest -n 2) ran out of budget before power_busy
    out = calibrate.run(tmp_path / "gpu", budget_seconds=6.0, precisions=["fp32"])
    meta, rows = load_measurements(out)
    power = {r["kind"]: r for r in rows if r["kind"].startswith("power")}
    assert power["power_idle"]["power_w"] == 20.0 and power["power_idle"]["median_s"] is None
    busy = power["power_busy"]
    assert busy["power_w"] == 60.0 and busy["m"] == 128 and busy["median_s"] > 0
    assert meta["device"]["driver_version"] == "550.1" and meta["device"]["clocks"]["sm_mhz"]
    assert meta["optional"]["power"] == {"available": True, "detail": "fake"}
    assert meta["precisions"]["fp64"]["note"] == "not requested (--precisions)"
    assert not meta["precisions"]["fp64"]["measured"]


def test_directory_modes_follow_the_umask_or_the_replaced_directory(tmp_path: Path) -> None:
    """The output directory is made with mkdtemp (0700): it must end up as mkdir would make it
    (0o777 & ~umask), or keep the mode of the directory it replaces; files as open() makes them."""
    import os
    import stat

    meta = {"format": calibrate.FORMAT, "n_rows": 0}
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    old = os.umask(0o027)
    try:
        out = write_directory(tmp_path / "d", meta, [], overwrite=False)
        assert mode(out) == 0o750
        assert mode(out / "meta.json") == mode(out / "measurements.csv") == 0o640
        os.chmod(out, 0o711)
        write_directory(out, meta, [], overwrite=True)
        assert mode(out) == 0o711
    finally:
        os.umask(old)


def test_unsupported_precisions_are_refused_before_measuring_or_reported(run_cli, tmp_path: Path) -> None:  # fmt: skip
    out = tmp_path / "x1"
    start = time.perf_counter()
    proc = run_cli("run", "--out", str(out), "--precisions", "bf16", "--backend", "numpy", "--quick")  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert time.perf_counter() - start < 20  # nothing measured (a quick run takes ~20 s here)
    err = proc.stderr.strip()
    assert len(err.splitlines()) == 1, err
    assert "none of the requested precisions (bf16) is supported by the numpy backend" in err
    assert "bf16: NumPy has no bfloat16 type" in err and "supported here: fp64, fp32" in err
    assert not out.exists() and not list(tmp_path.iterdir())
    # some supported: measured, and the others named on stderr (and in meta.json)
    out = tmp_path / "x2"
    proc = run_cli("run", "--out", str(out), "--precisions", "bf16,fp32", "--backend", "numpy", "--quick", "--budget-seconds", "2", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "warning: not measuring bf16 (unsupported by the numpy backend" in proc.stderr
    meta, rows = load_measurements(out)
    assert meta["precisions"]["bf16"]["note"].startswith("requested (--precisions) but not supported")  # fmt: skip
    assert {r["precision"] for r in rows if r["kind"] == "gemm"} <= {"fp32"}


def test_ctrl_c_writes_what_was_measured_and_exits_130(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys

    repo = Path(calibrate.__file__).resolve().parents[1]
    out = tmp_path / "int"
    cmd = [sys.executable, "-m", "calibrate", "run", "--out", str(out), "--backend", "numpy", "--quick"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, cwd=repo, env=dict(os.environ, PYTHONPATH=str(repo)), stderr=subprocess.PIPE,
        stdout=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # not ignored, as by `&`
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:  # the first progress line: the measurements have started
        if "plan:" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: wrote what was measured to" in stderr and "Traceback" not in stderr
    assert str(out) in stdout
    meta, rows = load_measurements(out)
    assert meta["interrupted"] is True and len(rows) == meta["n_rows"]
    assert any(s["reason"] == "interrupted" for s in meta["skipped"])


def test_threads_pins_blas_before_numpy_loads_and_is_recorded(run_cli, run_python, tmp_path: Path) -> None:  # fmt: skip
    proc = run_python("import sys, calibrate, calibrate.__main__; print('numpy' in sys.modules)")
    assert proc.returncode == 0 and proc.stdout.strip() == "False", proc.stderr
    out = tmp_path / "t"
    proc = run_cli("run", "--out", str(out), "--backend", "numpy", "--quick", "--budget-seconds", "2", "--precisions", "fp32", "--threads", "1", "--no-progress")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    meta, _ = load_measurements(out)
    dev = meta["device"]
    assert dev["blas_threads"] == 1 and dev["blas_threads_pinned_by"].startswith("environment")
    assert dev["thread_env"] == {"OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    assert meta["command"]["threads"] == 1
    # the BLAS really runs one thread: a big matmul after pin_threads(1) starts no thread
    code = (
        "from calibrate.threads import pin_threads\npin_threads(1)\nimport os, numpy as np\n"
        "a = np.ones((600, 600)); a @ a\nprint(len(os.listdir('/proc/self/task')))"
    )
    proc = run_python(code)
    assert proc.returncode == 0 and proc.stdout.strip() == "1", proc.stdout + proc.stderr
    proc = run_cli("run", "--out", str(tmp_path / "u"), "--threads", "0")
    assert proc.returncode == 2 and "--threads: must be a positive integer" in proc.stderr


def test_threads_after_numpy_loaded_needs_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib.util

    from calibrate import threads

    if importlib.util.find_spec("threadpoolctl") is not None:
        pytest.skip("threadpoolctl is installed: it pins the threads")
    for var in threads.THREAD_VARS:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setitem(threads._pinned, "threads", None)
    with pytest.raises(CalibrationError, match="NumPy is already loaded.*install threadpoolctl"):
        threads.pin_threads(3)
