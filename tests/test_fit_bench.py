"""capsim calibrate fit-bench: fit an entry's engine-level coefficients to imported runs."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from capsim.cli import main
from capsim.load import load_catalog

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "benchmarks" / "gpu_runs" / "h200-2026-12-04-run2" / "iterations"
L4_SS = ROOT / "tests" / "data" / "bench" / "mlperf" / "l4_resnet50_singlestream"


@pytest.fixture
def catalog(tmp_path) -> Path:
    d = tmp_path / "cat"
    shutil.copytree(ROOT / "hardware_catalog", d)
    return d


def _import(tmp_path: Path, csv: Path, name: str) -> Path:
    out = tmp_path / name
    res = CliRunner().invoke(main, ["bench", "import", str(csv), "--gpu", "h200-sxm", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    return out


def test_fit_on_h200_steps_improves_held_out_lengths_and_writes_with_backup(tmp_path, catalog):
    # the roofline entry: the shipped H200 calibration's per-op curves take precedence over the
    # efficiency scales (see the test below), so the scales are fitted without them here
    (catalog / "h200-sxm.calibration.yaml").unlink()
    fit, held = _import(tmp_path, STEPS / "fit.csv", "fit"), _import(tmp_path, STEPS / "holdout.csv", "held")  # fmt: skip
    before_text = (catalog / "h200-sxm.yaml").read_text()
    args = ["--catalog", str(catalog), "calibrate", "fit-bench", str(fit), "--holdout", str(held)]
    res = CliRunner().invoke(main, [*args, "--gpu", "h200-sxm", "--format", "json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    held_out = out["held_out_runs"]
    assert held_out["after"]["median_abs_error"] < held_out["before"]["median_abs_error"]
    assert held_out["after"]["median_abs_error"] < 0.05
    assert (catalog / "h200-sxm.yaml.bak").read_text() == before_text
    gpu = load_catalog(catalog)["h200-sxm"]
    assert gpu.efficiency.compute == pytest.approx(out["efficiency_after"]["compute"])
    assert "fit-bench" in gpu.sources["bench_fit"] and "holdout.csv" in gpu.sources["bench_fit"]
    # nothing else in the entry changed
    old = yaml.safe_load(before_text)
    new = yaml.safe_load((catalog / "h200-sxm.yaml").read_text())
    for key in set(old) - {"efficiency", "kernel_overhead_us", "sources"}:
        assert old[key] == new[key], key


def test_table_reports_before_beside_after_and_dry_run_writes_nothing(tmp_path, catalog):
    held = _import(tmp_path, STEPS / "holdout.csv", "held")
    args = ["--catalog", str(catalog), "calibrate", "fit-bench", str(held), "--gpu", "h200-sxm"]
    res = CliRunner().invoke(main, [*args, "--dry-run", "--max-evaluations", "20"])
    assert res.exit_code == 0, res.output
    assert "before (untouched roofline)" in res.output and "after" in res.output
    assert "none given" in res.output  # no held-out runs: said so
    assert "loss: mean squared log" in res.output  # measured engine steps: least squares (auto)
    assert not (catalog / "h200-sxm.yaml.bak").exists()
    res = CliRunner().invoke(main, [*args, "--dry-run", "--max-evaluations", "10", "--loss", "absolute"])  # fmt: skip
    assert res.exit_code == 0 and "loss: mean |log(predicted / measured)|" in res.output


def test_runs_from_another_gpu_exit_2(tmp_path, catalog):
    runs = tmp_path / "runs"
    args = ["--gpu", "l4", "--model", "resnet-50", "--precision", "int8", "--out", str(runs)]
    CliRunner().invoke(main, ["bench", "import", str(L4_SS / "mlperf_log_summary.txt"), *args])
    f = next(runs.glob("*.json"))
    res = CliRunner().invoke(
        main, ["--catalog", str(catalog), "calibrate", "fit-bench", str(f), "--gpu", "h200-sxm"]
    )
    assert res.exit_code == 2 and "measured on l4 cannot fit h200-sxm" in res.output
    res = CliRunner().invoke(
        main, ["--catalog", str(catalog), "calibrate", "fit-bench", str(f), "--gpu", "v100"]
    )
    assert res.exit_code == 2 and "v100" in res.output


def test_calibrated_entry_takes_the_scales_in_its_serving_block(tmp_path, catalog):
    # the scales and the per-kernel cost compose with the measured calibration (they used to
    # be ignored by it): written to the sidecar's serving block, and they change the times
    held = _import(tmp_path, STEPS / "holdout.csv", "held")
    args = ["--catalog", str(catalog), "calibrate", "fit-bench", str(held), "--gpu", "h200-sxm"]
    res = CliRunner().invoke(main, [*args, "--max-evaluations", "20"])
    assert res.exit_code == 0, res.output
    assert "'serving' part" in res.output
    assert (catalog / "h200-sxm.calibration.yaml.bak").exists()
    cal = load_catalog(catalog)["h200-sxm"].calibration
    assert cal is not None and cal.serving is not None
    assert "fit-bench" in cal.serving.source
    moved = (cal.serving.compute_scale, cal.serving.memory_scale, cal.serving.kernel_overhead_us)
    assert moved != (1.0, 1.0, cal.kernel_overhead_us)


def test_serving_scales_divide_calibrated_times_by_their_bound():
    from capsim.calibration.bench_fit import apply
    from capsim.load import load_model_card
    from capsim.service.llm import LLMServiceModel

    gpu = load_catalog()["h200-sxm"]
    model = load_model_card("llama-3.1-70b")
    base = LLMServiceModel(gpu, model, "bf16", tp=4).breakdown(decode=[600] * 8)
    vals = {"compute_scale": 1.0, "memory_scale": 1.1, "kernel_overhead_us": 2.0}
    fast = LLMServiceModel(apply(gpu, vals), model, "bf16", tp=4).breakdown(decode=[600] * 8)
    up0 = next(ln.op for ln in base.lines if ln.op.name == "mlp_up")  # memory-bound at batch 8
    up1 = next(ln.op for ln in fast.lines if ln.op.name == "mlp_up")
    k0 = gpu.calibration.kernel_overhead_us * 1e-6
    assert up1.time_s == pytest.approx((up0.time_s - k0) / 1.1 + 2e-6, rel=1e-6)


def test_served_runs_are_fitted_with_the_robust_loss():
    # a served run's percentiles hold values outside the model (a burst's TTFT tail): with any
    # such run the fit minimises mean |log ratio|, which one bad value cannot dominate
    from capsim.bench import apply_settings, read_runs
    from capsim.bench.backtest import Backtest, Row
    from capsim.calibration.bench_fit import log_error, robust_loss

    served = apply_settings(read_runs(L4_SS / "mlperf_log_summary.txt")[0], {"gpu": "l4"})
    steps = read_runs(STEPS / "holdout.csv")[0]
    assert robust_loss([served]) and robust_loss([steps, served]) and not robust_loss([steps])
    rows = [
        Row("ttft", "p50", 1.0, 1.0),
        Row("ttft", "p90", 1.0, 1.0),
        Row("ttft", "p99", 1.0, 0.5),
    ]
    bt = Backtest(served, None, "rate", 1.0, rows=rows)  # type: ignore[arg-type]
    shifted = Backtest(served, None, "rate", 1.0, rows=[Row(r.metric, r.stat, 1.0, r.predicted * 1.2) for r in rows])  # type: ignore[arg-type]  # fmt: skip
    # squares prefer raising every value to halve the one miss; absolute errors do not
    assert log_error([shifted]) < log_error([bt])
    assert log_error([bt], robust=True) < log_error([shifted], robust=True)
