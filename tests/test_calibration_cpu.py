"""End to end on this CPU: harness -> fit -> held-out predictions -> estimate -> plan; and bad input.

The harness runs as a subprocess (``capsim calibrate run --backend numpy --quick``) with BLAS
pinned to one thread (``OPENBLAS_NUM_THREADS=1``): multithreaded OpenBLAS on a 2-core VM shared
with other jobs makes small GEMMs 10-100x noisier. Held-out work is measured in the same runs as
the fitted work and compared by medians. The machine is shared with other jobs, so the harness
runs twice and ``capsim calibrate fit run1 run2`` keeps each point's faster median (a single
quick run misses 25% on about one point in two runs here: one disturbed 3-sample median moves a
curve breakpoint); if that still misses, a third run is added (the errors of every attempt are in
the failure message).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from capsim.calibration.curves import predict_forward_block
from capsim.cli import main
from capsim.load import load_gpu_file
from capsim.paths import shipped_catalog_dir
from capsim.service.calibrated import CalibratedTimer

TOLERANCE = 0.25
FIT = ["--new-gpu", "local-cpu", "--price", "0.05", "--power-w", "65"]


def run_harness(out: Path) -> Path:
    """``capsim calibrate run`` on the CPU with the numpy backend, quick sweep, ~20 s budget."""
    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}  # fmt: skip
    cmd = [
        sys.executable, "-c", "from capsim.cli import main; main()", "calibrate", "run",
        "--out", str(out), "--backend", "numpy", "--quick", "--budget-seconds", "20",
        "--precisions", "fp32", "--no-progress",
    ]  # fmt: skip
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "torch" not in res.stderr
    return out


def _rows(runs: list[Path]) -> list[dict]:
    """The rows as the fit sees them: several runs combined point by point."""
    from calibrate import load_measurements
    from capsim.calibration.rows import combine_runs

    return combine_runs([load_measurements(d) for d in runs], [str(d) for d in runs])[1]


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> list[Path]:
    root = tmp_path_factory.mktemp("cpu")
    return [run_harness(root / "run1"), run_harness(root / "run2")]


@pytest.fixture(scope="module")
def measured(runs) -> Path:
    return runs[0]


def _held_out_errors(runs: list[Path], tmp: Path, runner) -> dict[str, float]:
    """Fit twice from the same runs and predict what each fit did not see."""
    rows = _rows(runs)
    meas = [str(d) for d in runs]
    errors: dict[str, float] = {}
    # (a) the whole 2752 x 1024 GEMM shape held out of the stored entry
    cat_a = tmp / "a"
    res = runner.invoke(main, ["calibrate", "fit", *meas, *FIT, "--catalog-dir", str(cat_a), "--holdout", "gemm:n=2752,k=1024"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "gemm fp32 (--holdout)" in res.output
    gpu = load_gpu_file(cat_a / "local-cpu.yaml")
    assert {(t.n, t.k) for t in gpu.calibration.tables} == {(1024, 1024)}
    timer = CalibratedTimer(gpu)
    for r in rows:
        if r["kind"] == "gemm" and r["precision"] == "fp32" and r["n"] == 2752:
            tm = timer.evaluate("gemm", r["flops"], r["bytes"], "fp32", 1, r["n"], r["k"], 1, np.array([float(r["m"])]))  # fmt: skip
            assert tm.at(0, "gemm").source == "fitted"
            errors[f"gemm m={r['m']} n=2752 k=1024"] = float(tm.time_s[0]) / r["median_s"] - 1
    # (b) every GEMM fitted; the transformer block (never fitted) predicted by capsim's LLM
    # operator model on the stored entry
    cat_b = tmp / "b"
    res = runner.invoke(main, ["calibrate", "fit", *meas, *FIT, "--catalog-dir", str(cat_b)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "forward_block fp32 (composite, never fitted)" in res.output
    assert "gemm fp32, each shape left out in turn" in res.output
    gpu = load_gpu_file(cat_b / "local-cpu.yaml")
    for r in rows:
        if r["kind"] == "forward_block":
            t, parts = predict_forward_block(
                gpu, batch=r["batch"], seq_len=r["seq_len"], hidden=r["hidden"],
                heads=r["heads"], ffn=r["ffn"], precision="fp32",
            )  # fmt: skip
            assert {p["source"] for p in parts.values()} <= {"measured", "fitted"}
            errors[f"forward_block batch={r['batch']} x {r['seq_len']} tokens"] = t / r["median_s"] - 1  # fmt: skip
    return errors


def test_cpu_end_to_end_predicts_held_out_work_within_25_percent(runs, tmp_path, runner):
    """The acceptance test of issue 5: the local CPU calibrated as a device predicts GEMM shapes
    and a transformer-block forward pass that were not in the fitted set within 25%.
    Recorded in benchmarks/README.md (calibration section)."""
    attempts = []
    runs = list(runs)
    for attempt in range(2):
        errors = _held_out_errors(runs, tmp_path / f"try{attempt}", runner)
        attempts.append(errors)
        print(f"\nattempt {attempt}: " + ", ".join(f"{k} {v:+.1%}" for k, v in errors.items()))
        if all(abs(e) <= TOLERANCE for e in errors.values()) or attempt:
            break
        runs.append(run_harness(tmp_path / "run3"))  # a busy stretch: one more run
    assert len(errors) == 4 + 2, errors  # quick sweep: m = 1, 8, 64, 512; blocks of batch 1, 4
    assert all(abs(e) <= TOLERANCE for e in errors.values()), attempts


def test_cpu_entry_estimate_and_plan_with_calibrated_and_roofline_entries(measured, tmp_path, runner):  # fmt: skip
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)  # calibrated a100/h100, roofline others
    res = runner.invoke(main, ["calibrate", "fit", str(measured), *FIT, "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 0, res.output
    gpu = load_gpu_file(cat / "local-cpu.yaml")
    assert gpu.price.usd_per_hour == 0.05 and "given with --price" in gpu.sources["price"]
    assert "not measured" in gpu.sources["power"] and gpu.power.max_w == 65
    assert gpu.peak_tflops["fp32"] and gpu.peak_tflops["fp16"] is None
    assert gpu.interconnect.max_gpus == 1 and gpu.vendor == "cpu"
    # capsim estimate on the new entry: per-operator sources from its calibration
    res = runner.invoke(main, ["--catalog", str(cat), "estimate", "--gpu", "local-cpu", "--model", "llama-2-7b", "--precision", "fp32", "--batch", "1", "--prompt", "64", "--output", "4"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "fitted" in res.output and "qkv_proj" in res.output
    res = runner.invoke(main, ["--catalog", str(cat), "estimate", "--gpu", "local-cpu", "--model", "mobilenet-v2", "--precision", "fp32", "--batch", "1", "4"])  # fmt: skip
    assert res.exit_code == 0 and "source: layers+fitted" in res.output  # fp32 curves apply
    # the library call behind capsim estimate gives the block prediction used above
    from capsim.service.estimate import estimate
    from capsim.spec.models import TransformerModel

    block = TransformerModel(name="b", layers=1, hidden_size=1024, attention_heads=8, kv_heads=8, ffn_size=2752, vocab_size=1, max_context=128)  # fmt: skip
    est = estimate(gpu, block, "fp32", [1], prompt=64, output=1)
    ops = {ln.op.name: ln for ln in est.prefill_breakdown.lines}
    via_estimate = sum((2 if n == "norm" else ln.count) * ln.op.time_s for n, ln in ops.items() if n in ("norm", "qkv_proj", "attn_prefill", "o_proj", "mlp_up", "mlp_act", "mlp_down"))  # fmt: skip
    direct, _ = predict_forward_block(gpu, batch=1, seq_len=64, hidden=1024, heads=8, ffn=2752, precision="fp32")  # fmt: skip
    assert via_estimate == pytest.approx(direct, rel=1e-12)
    # plan, fixed-shape model: the calibrated CPU entry against a roofline T4
    fixed = {
        "name": "cpu-vs-t4", "model": "mobilenet-v2",
        "traffic": {"arrivals": {"kind": "poisson", "rate_rps": 20.0}, "horizon_s": 120.0},
        "slo": {"percentile": 99, "latency_ms": 500},
        "fleet": {"batching": {"kind": "dynamic", "max_batch_size": 4, "max_queue_delay_ms": 5}},
        "candidates": {"gpus": ["local-cpu", "t4"], "precisions": ["fp32", "fp16"], "max_replicas": 16},  # fmt: skip
        "simulation": {"replications": 2, "max_replications": 3, "seed": 3},
    }  # fmt: skip
    (tmp_path / "fixed.yaml").write_text(yaml.safe_dump(fixed, sort_keys=False))
    res = runner.invoke(main, ["--catalog", str(cat), "plan", str(tmp_path / "fixed.yaml"), "--jobs", "1", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "local-cpu fp32" in res.output and "t4 fp16" in res.output
    # plan, LLM: a calibrated A100 (Vidur tables) against a roofline L4
    chat = {
        "name": "chat-calibrated", "model": "llama-3.1-8b",
        "traffic": {
            "arrivals": {"kind": "poisson", "rate_rps": 6.0}, "horizon_s": 3600,
            "tokens": {"kind": "lognormal", "prompt_median": 1020, "prompt_sigma": 0.9,
                       "output_median": 129, "output_sigma": 0.8, "prompt_max": 4000,
                       "output_max": 1000},
        },
        "slo": {"percentile": 99, "ttft_ms": 2000, "tpot_ms": 100},
        "fleet": {"batching": {"kind": "continuous", "engine": {"max_model_len": 8192, "max_num_batched_tokens": 2048}}},  # fmt: skip
        "candidates": {"gpus": ["a100-80gb-sxm", "l4"], "precisions": ["fp16"], "tensor_parallel": [1], "max_replicas": 8},  # fmt: skip
        "simulation": {"replications": 2, "max_replications": 3, "seed": 5, "compress_to_s": 60},
    }  # fmt: skip
    (tmp_path / "chat.yaml").write_text(yaml.safe_dump(chat, sort_keys=False))
    res = runner.invoke(main, ["--catalog", str(cat), "plan", str(tmp_path / "chat.yaml"), "--jobs", "1", "-q"])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "a100-80gb-sxm fp16" in res.output and "l4 fp16" in res.output
    assert "calibration: Vidur" in res.output  # the recommendation says where its times came from


def _corruptions(good: Path, root: Path):
    """(name, directory) pairs: damaged copies of a valid measurements directory."""
    csv = (good / "measurements.csv").read_text()
    meta = (good / "meta.json").read_text()

    def copy(name: str) -> Path:
        d = root / name
        shutil.copytree(good, d)
        return d

    d = copy("truncated")  # an interrupted write: the last row cut short
    (d / "measurements.csv").write_text(csv[: len(csv) - 40])
    yield "truncated last row", d
    d = copy("nan")
    lines = csv.splitlines(keepends=True)
    head = lines[0].rstrip("\n").split(",")
    cells = lines[3].rstrip("\n").split(",")
    cells[head.index("median_s")] = "nan"
    (d / "measurements.csv").write_text("".join(lines[:3]) + ",".join(cells) + "\n" + "".join(lines[4:]))  # fmt: skip
    yield "NaN is not allowed", d
    d = copy("missing_meta")
    (d / "meta.json").unlink()
    yield "meta.json", d
    d = copy("rows_dropped")  # a partial file that still ends with a newline
    (d / "measurements.csv").write_text("".join(lines[:-2]))
    yield "n_rows", d
    d = copy("bad_json")
    (d / "meta.json").write_text(meta[: len(meta) // 2])
    yield "not valid JSON", d
    d = copy("future_format")
    (d / "meta.json").write_text(meta.replace("capsim-calibration/1", "capsim-calibration/2"))
    yield "not supported", d


def test_corrupted_or_partial_measurements_exit_2_and_leave_the_catalog_untouched(measured, tmp_path, runner):  # fmt: skip
    cat = tmp_path / "cat"
    res = runner.invoke(main, ["calibrate", "fit", str(measured), *FIT, "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 0, res.output

    def snapshot() -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(cat.iterdir())}

    before = snapshot()
    for needle, bad in _corruptions(measured, tmp_path / "bad"):
        for args in (["--gpu", "local-cpu"], ["--new-gpu", "other-cpu", "--price", "1", "--power-w", "65"]):  # fmt: skip
            res = runner.invoke(main, ["calibrate", "fit", str(bad), *args, "--catalog-dir", str(cat)])  # fmt: skip
            assert res.exit_code == 2, (bad.name, res.output)
            assert "Traceback" not in res.output
            assert "invalid measurements" in res.output and needle in res.output, res.output
            assert snapshot() == before, bad.name  # byte-identical, no .bak, no new entry
        res = runner.invoke(main, ["calibrate", "compare", str(bad)])
        assert res.exit_code == 2 and needle in res.output
    # a good re-fit of the existing entry keeps the previous sidecar as .bak, the entry as it was
    res = runner.invoke(main, ["calibrate", "fit", str(measured), "--gpu", "local-cpu", "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert (cat / "local-cpu.calibration.yaml.bak").read_bytes() == before["local-cpu.calibration.yaml"]  # fmt: skip
    assert (cat / "local-cpu.yaml").read_bytes() == before["local-cpu.yaml"]


def test_fit_argument_errors(measured, tmp_path, runner):
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)
    cases = [
        (["--gpu", "l4", "--new-gpu", "x"], "exactly one of"),
        (["--new-gpu", "cpu2"], "needs a price"),
        (["--new-gpu", "cpu2", "--price", "1"], "--power-w"),
        (["--new-gpu", "cpu2", "--price", "1", "--power-w", "10,20"], "IDLE <= MAX"),
        (["--new-gpu", "t4", "--price", "1", "--power-w", "65"], "exists"),
        (["--gpu", "nope"], "unknown GPU 'nope'"),
        (["--gpu", "l4"], "from a CPU"),  # CPU measurements into a GPU's entry
        (
            ["--new-gpu", "cpu2", "--price", "1", "--power-w", "65", "--holdout", "gemm:q=1"],
            "key=value",
        ),  # fmt: skip
        (
            [
                "--new-gpu",
                "cpu2",
                "--price",
                "1",
                "--power-w",
                "65",
                "--holdout",
                "gemm:precision=fp32",
            ],
            "no GEMM measurements left",
        ),  # fmt: skip
    ]
    before = {p.name: p.read_bytes() for p in cat.iterdir()}
    for args, needle in cases:
        res = runner.invoke(main, ["calibrate", "fit", str(measured), *args, "--catalog-dir", str(cat)])  # fmt: skip
        assert res.exit_code == 2, (args, res.output)
        assert needle in res.output, (args, res.output)
    assert {p.name: p.read_bytes() for p in cat.iterdir()} == before


def test_compare_a_measurements_directory(measured, tmp_path, runner):
    out = tmp_path / "cmp"
    res = runner.invoke(main, ["calibrate", "compare", str(measured), "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "gemm" in res.output and "forward_block" in res.output
    assert (out / "roofline.png").exists() and (out / "compare.csv").exists()


def test_capsim_calibrate_run_threads_and_ctrl_c(tmp_path, runner):
    """``--threads N`` pins BLAS in a fresh harness process (capsim has loaded NumPy already);
    Ctrl-C writes what was measured and exits 130."""
    import json
    import signal

    out = tmp_path / "pinned"
    args = ["calibrate", "run", "--out", str(out), "--backend", "numpy", "--quick", "--budget-seconds", "2", "--precisions", "fp32", "--threads", "1", "--no-progress"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert str(out) in res.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["device"]["blas_threads"] == 1 and meta["command"]["threads"] == 1
    assert meta["device"]["thread_env"]["OPENBLAS_NUM_THREADS"] == "1"
    res = runner.invoke(main, ["calibrate", "run", "--out", str(tmp_path / "p2"), "--backend", "numpy", "--precisions", "bf16", "--threads", "1"])  # fmt: skip
    assert res.exit_code == 2 and "none of the requested precisions (bf16)" in res.output
    # Ctrl-C in the middle of the measurements
    out = tmp_path / "interrupted"
    cmd = [sys.executable, "-c", "from capsim.cli import main; main()", "calibrate", "run", "--out", str(out), "--backend", "numpy", "--quick"]  # fmt: skip
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    assert proc.stderr is not None
    for line in proc.stderr:
        if "plan:" in line:
            proc.send_signal(signal.SIGINT)
            break
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "interrupted: wrote what was measured" in stderr and "Traceback" not in stderr
    assert json.loads((out / "meta.json").read_text())["interrupted"] is True
