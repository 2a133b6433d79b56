"""capsim backtest: replay imported runs and compare predicted with measured."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner

from capsim.cli import main

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "tests" / "data" / "bench"
L4_SS = DATA / "mlperf" / "l4_resnet50_singlestream" / "mlperf_log_summary.txt"
H200_STEPS = ROOT / "benchmarks" / "gpu_runs" / "h200-2026-12-04-run2" / "iterations"


def _run(*args: str):
    return CliRunner().invoke(main, list(args))


def test_mlperf_singlestream_backtest_side_by_side_and_files(tmp_path):
    out = tmp_path / "bt"
    args = ["--gpu", "l4", "--model", "resnet-50", "--precision", "int8"]
    res = _run("backtest", str(L4_SS), *args, "--replications", "2", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "concurrency 1" in res.output
    assert "0.3725 ms" in res.output  # the measured p50 from the MLPerf log
    df = pd.read_csv(out / "backtest.csv")
    assert set(df["metric"]) == {"throughput_rps", "e2e"}
    row = df[(df["metric"] == "e2e") & (df["stat"] == "p50")].iloc[0]
    assert row["measured"] == pytest.approx(0.000372526)
    assert row["rel_error"] == pytest.approx((row["predicted"] - row["measured"]) / row["measured"])
    # a closed loop of one client: throughput is 1 / mean latency
    thr = df[df["metric"] == "throughput_rps"].iloc[0]["predicted"]
    assert 0.9 < thr * row["predicted"] < 1.1
    for name in ("backtest.json", "backtest_e2e_p99.png", "backtest_throughput_rps.png"):
        assert (out / name).is_file()
    data = json.loads((out / "backtest.json").read_text())
    assert data["summary"]["rows"] == 4


def test_imported_run_files_replay_the_same(tmp_path):
    runs = tmp_path / "runs"
    args = ["--gpu", "l4", "--model", "resnet-50", "--precision", "int8"]
    assert _run("bench", "import", str(L4_SS), *args, "--out", str(runs)).exit_code == 0
    files = sorted(str(p) for p in runs.glob("*.json"))
    a = _run("backtest", *files, "--format", "json", "--replications", "2")
    b = _run("backtest", str(L4_SS), *args, "--format", "json", "--replications", "2")
    assert a.exit_code == 0, a.output
    assert json.loads(a.output)[1:] == json.loads(b.output)[1:]  # same numbers (run names aside)


def test_iteration_run_backtest_compares_each_step():
    res = _run("backtest", str(H200_STEPS / "holdout.csv"), "--format", "json")
    assert res.exit_code == 0, res.output
    rows = json.loads(res.output)
    assert len(rows) == 8 and {r["metric"] for r in rows} == {"decode_step", "prefill_step"}
    assert all(0.5 < r["predicted"] / r["measured"] < 2 for r in rows)


@pytest.mark.parametrize(
    ("path", "args", "words"),
    [
        (DATA / "vllm" / "ascend_serving_llama8B_tp1_1.json", ["--gpu", "h100-sxm"], ["precision"]),
        (
            DATA / "sglang" / "h200x4_llama3.3-70b_online.jsonl",
            ["--gpu", "h200-sxm", "--precision", "bf16", "--model", "llama-3.3-70b"],
            ["unknown model 'llama-3.3-70b'", "--model", "llama-3.1-70b"],
        ),
        (
            DATA / "mlperf" / "h100x8_llama2-70b_server" / "mlperf_log_summary.txt",
            ["--gpu", "h100-sxm", "--model", "llama-2-70b", "--precision", "fp8", "--tp", "8"],
            ["missing", "prompt lengths"],
        ),
        (
            DATA / "mlperf" / "h100x8_llama2-70b_offline" / "mlperf_log_summary.txt",
            ["--gpu", "h100-sxm", "--model", "llama-2-70b", "--precision", "fp8"],
            ["offline load"],
        ),
    ],
)
def test_runs_capsim_cannot_reproduce_exit_2_naming_what_is_missing(path, args, words):
    res = _run("backtest", str(path), *args)
    assert res.exit_code == 2, res.output
    for w in words:
        assert w in res.output
    assert "Traceback" not in res.output


def test_broken_run_file_names_the_field(tmp_path):
    runs = tmp_path / "runs"
    args = ["--gpu", "l4", "--model", "resnet-50", "--precision", "int8"]
    _run("bench", "import", str(L4_SS), *args, "--out", str(runs))
    f = next(runs.glob("*.json"))
    data = json.loads(f.read_text())
    data["workload"]["load"]["concurrency"] = 0
    f.write_text(json.dumps(data))
    res = _run("backtest", str(f))
    assert res.exit_code == 2 and "concurrency" in res.output and f.name in res.output


SGLANG = DATA / "sglang" / "h200x4_llama3.3-70b_online.jsonl"
SGLANG_SETTINGS = {"gpu": "h200-sxm", "model": "llama-3.1-70b", "precision": "bf16", "tp": 4}


def test_public_sglang_run_error_band_before_and_after_fit_bench():
    """The 2 req/s run of the public SGLang Llama-3.3-70B 4x H200 sweep, held out of the fit in
    benchmarks/README.md (2026-12-05: fitted on the 1 and 4 req/s runs only), replayed with the
    shipped catalog and with the fitted coefficients. The bands are what capsim does, not the
    issue's target (10% latencies, 5% throughput), which e2e misses: before, TTFT is 34% short
    (no front-end time) and e2e 47% long; after, TTFT and throughput are within 10% and e2e is
    still ~25% long (the low-batch decode step is slower than SGLang's). A change that moves
    any of them is seen."""
    from capsim.bench import apply_settings, read_runs
    from capsim.bench.backtest import backtest_run
    from capsim.calibration.bench_fit import apply, with_entry
    from capsim.load import load_catalog

    run = apply_settings(read_runs(SGLANG)[1], SGLANG_SETTINGS)
    assert run.workload.load.rate_rps == 2.0
    cat = load_catalog()
    bt = backtest_run(run, cat, replications=2)
    err = {f"{r.metric} {r.stat}": r.rel_error for r in bt.rows}
    assert set(err) == {"output_tokens_per_s value", "ttft p50", "e2e p50"}
    assert abs(err["output_tokens_per_s value"]) < 0.08
    assert -0.45 < err["ttft p50"] < -0.25
    assert 0.35 < err["e2e p50"] < 0.60
    # the 2026-12-05 fit (python benchmarks/backtest_fit.py --sglang), rounded as printed
    fitted = {"compute_scale": 0.449, "memory_scale": 1.2314, "collective_latency_us": 12.7074,
              "kernel_overhead_us": 8.3924}  # fmt: skip
    cpu = {"constant_ms": 0.0263, "per_seq_us": 8.2321}
    gpu = apply(cat["h200-sxm"], fitted)
    bt = backtest_run(
        run, with_entry(cat, gpu), replications=2, engine={"cpu_overhead": cpu}, frontend_ms=10.5744
    )
    err = {f"{r.metric} {r.stat}": r.rel_error for r in bt.rows}
    assert abs(err["output_tokens_per_s value"]) < 0.05
    assert abs(err["ttft p50"]) < 0.10
    assert 0.15 < err["e2e p50"] < 0.35


A100_04 = (
    DATA / "vllm" / "a100x8_llama3.3-70b_tp8"
    / "serving_meta-llama-Llama-3.3-70B-Instruct_tp8_pp1_sharegpt_qps_04.json"
)  # fmt: skip
A100_SETTINGS = {"gpu": "a100-40gb-sxm", "model": "llama-3.1-70b", "precision": "bf16", "tp": 8,
                 "engine": "vllm", "engine_version": "0.8.3"}  # fmt: skip


def test_public_vllm_a100_run_error_band_before_and_after_fit_bench():
    """The 4 req/s run of the public vLLM 0.8.3 Llama-3.3-70B 8x A100-40GB sweep, held out of
    the fit in benchmarks/README.md (2026-12-06, finite replay, prompts cached by the 1 req/s
    run before it, robust loss: fitted on the 1 and 16 req/s runs only), replayed as the
    client ran it (200 requests, exponential gaps, served to completion; 20 seeded
    replications, as the README's table) with the shipped catalog and with the fitted
    coefficients. Untouched, every value is within 13%; after the fit throughput within 5%
    and every percentile within 10% (the issue's target). Replayed cold (as before the
    repeated prompts were seen), TTFT p99 is twice the measured; a change that moves any
    value is seen."""
    from capsim.bench import apply_settings, read_runs
    from capsim.bench.backtest import backtest_run
    from capsim.bench.repeats import cached_by
    from capsim.calibration.bench_fit import apply, with_entry
    from capsim.load import load_catalog

    cold = apply_settings(read_runs(A100_04)[0], A100_SETTINGS)
    run = cached_by(cold, "qps_01", "test")
    cat = load_catalog()
    bt = backtest_run(run, cat, replications=20)
    assert any(
        a.startswith("finite run as the client sent it: exactly 200") for a in bt.assumptions
    )
    assert any(a.startswith("prompts cached by qps_01: every prompt") for a in bt.assumptions)
    err = {f"{r.metric} {r.stat}": r.rel_error for r in bt.rows}
    assert -0.08 < err["throughput_rps value"] < -0.01
    assert -0.14 < err["ttft p50"] < -0.05 and -0.16 < err["ttft p99"] < -0.08
    assert 0.05 < err["tpot p50"] < 0.11 and 0.04 < err["tpot p99"] < 0.12
    assert 0.05 < err["e2e p50"] < 0.11 and 0.05 < err["e2e p99"] < 0.11
    # the 2026-12-06 fit (python benchmarks/backtest_fit.py --vllm-a100)
    fitted = {"compute_scale": 0.8354, "memory_scale": 1.2411, "collective_latency_us": 41.9771,
              "kernel_overhead_us": 4.2345}  # fmt: skip
    cpu = {"constant_ms": 1.2806, "per_seq_us": 55.9258}
    cat = with_entry(cat, apply(cat["a100-40gb-sxm"], fitted))
    bt = backtest_run(run, cat, replications=20, engine={"cpu_overhead": cpu}, frontend_ms=13.6233)
    err = {f"{r.metric} {r.stat}": r.rel_error for r in bt.rows}
    assert abs(err["throughput_rps value"]) < 0.04
    assert 0.03 < err["ttft p50"] < 0.10 and abs(err["ttft p99"]) < 0.05
    assert -0.06 < err["tpot p50"] < -0.01 and abs(err["tpot p99"]) < 0.05
    assert abs(err["e2e p50"]) < 0.05 and abs(err["e2e p99"]) < 0.05
    # one 200-request run's throughput spreads by ~5% across seeds (the measured is one sample)
    thr = next(r for r in bt.rows if r.metric == "throughput_rps")
    assert thr.spread is not None and 0.03 < thr.spread / thr.predicted < 0.08
    # the same run replayed cold: its long prompts' prefill makes the TTFT tail
    bt = backtest_run(cold, cat, replications=20, engine={"cpu_overhead": cpu}, frontend_ms=13.6233)
    err = {f"{r.metric} {r.stat}": r.rel_error for r in bt.rows}
    assert err["ttft p99"] > 0.5


def test_finite_replay_sends_exactly_n_and_measures_as_the_client(tmp_path):
    """A vLLM rate run with num_prompts is replayed as a finite run: exactly n requests, the
    first at t = 0, exponential gaps, every request served, throughput = n / duration; runs
    of other clients, or capped by a concurrency, keep the steady-state replay."""
    from dataclasses import replace

    import numpy as np

    from capsim.bench import apply_settings, read_runs
    from capsim.bench.backtest import replay_scenario
    from capsim.bench.finite import FiniteLoad, finite_load, replay_finite, send_times
    from capsim.bench.replay import require_replayable
    from capsim.evaluate import runnable_service
    from capsim.load import load_catalog

    run = apply_settings(read_runs(A100_04)[0], A100_SETTINGS)
    assert finite_load(run, True) == FiniteLoad(200, 4.0, 1.0)
    assert finite_load(run, False) is None  # fixed-shape models: steady state
    capped = run.model_copy(deep=True)
    capped.workload.load.max_concurrency = 8
    assert finite_load(capped, True) is None
    mlperf = read_runs(L4_SS)[0]
    assert finite_load(mlperf, True) is None
    # the gaps: exponential (cv 1) at the rate; gamma shape 4 (burstiness 4): cv 1/2
    for shape, cv in ((1.0, 1.0), (4.0, 0.5)):
        t, end = send_times(20_001, 4.0, shape, np.random.default_rng(1))
        gaps = np.diff(np.append(t, end))
        assert t[0] == 0.0 and len(t) == 20_001
        assert gaps.mean() == pytest.approx(0.25, rel=0.03)
        assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.05)
    plan = require_replayable(run)
    trace = tmp_path / "lengths.csv"
    trace.write_text("input_len,output_len\n" + "".join(f"{a},{b}\n" for a, b in plan.pairs))
    plan = replace(plan, tokens={**plan.tokens, "trace": str(trace)})
    scen = replay_scenario(run, plan)
    svc = runnable_service(scen, load_catalog()["a100-40gb-sxm"], "bf16", 8)
    fr = replay_finite(scen, svc, plan, FiniteLoad(200, 4.0, 1.0), replications=3)
    assert not fr.unstable and len(fr.scalars) == 3
    for x in fr.scalars:
        assert x["throughput_rps"] * x["duration_s"] == pytest.approx(200)
        assert x["output_tokens_per_s"] * x["duration_s"] == pytest.approx(42449)  # its outputs
    assert len({x["duration_s"] for x in fr.scalars}) == 3  # a new arrival sample per seed


def test_a_vllm_burst_is_replayed_as_sent_all_at_t0():
    # request rate inf: vLLM's client sends all num_prompts at once; replayed so, every
    # request served, throughput = n / (last completion); the same every seed
    import math

    import numpy as np

    from capsim.bench import apply_settings, read_runs
    from capsim.bench.backtest import backtest_run
    from capsim.bench.finite import finite_load, send_times
    from capsim.load import load_catalog

    burst = A100_04.with_name(A100_04.name.replace("qps_04", "qps_inf"))
    run = apply_settings(read_runs(burst)[0], A100_SETTINGS)
    load = finite_load(run, True)
    assert load is not None and load.n == 200 and math.isinf(load.rate_rps)
    t, end = send_times(200, math.inf, 1.0, np.random.default_rng(0))
    assert not t.any() and end == 0.0
    bt = backtest_run(run, load_catalog(), replications=2)
    assert any(a.startswith("finite run as the client sent it: all 200") for a in bt.assumptions)
    thr = next(r for r in bt.rows if r.metric == "throughput_rps")
    assert 0.8 < thr.predicted / thr.measured < 1.2 and thr.spread == 0.0


def test_frontend_latency_shifts_every_latency_percentile_by_itself(tmp_path):
    # a constant per-request front-end time adds to each e2e percentile exactly, and
    # throughput (a closed loop of one client here) is the GPU loop's, unchanged
    args = ["--gpu", "l4", "--model", "resnet-50", "--precision", "int8", "--replications", "2"]
    base = json.loads(_run("backtest", str(L4_SS), *args, "--format", "json").stdout)
    res = _run("backtest", str(L4_SS), *args, "--frontend-ms", "0.25", "--format", "json")
    assert res.exit_code == 0, res.output
    shifted = json.loads(res.stdout)
    for b, s in zip(base, shifted, strict=True):
        add = 0.25e-3 if b["metric"] == "e2e" else 0.0
        assert s["predicted"] == pytest.approx(b["predicted"] + add, rel=1e-12, abs=1e-15)


def test_sglang_random_lengths_replay_as_the_uniform_range_at_the_runs_mean():
    # SGLang's `random` dataset with range ratio 0 draws lengths uniformly from [1, 1024]; the
    # importer records that range and the realised mean, the replay keeps both (a lognormal
    # matched to the same mean and std has its median 13% lower: 444 against 509 tokens)
    import numpy as np

    from capsim.bench import apply_settings, read_runs
    from capsim.bench.replay import replay_plan
    from capsim.spec.scenario import UniformTokens
    from capsim.workload.tokens import token_lengths

    run = apply_settings(read_runs(SGLANG)[0], SGLANG_SETTINGS)
    plan = replay_plan(run)
    assert plan.tokens == {"kind": "uniform", "prompt_min": 1, "prompt_max": 1024,
                           "output_min": 23, "output_max": 1046}  # fmt: skip
    p, o = token_lengths(UniformTokens(**plan.tokens), 200_000, np.random.default_rng(0))
    assert p.min() == 1 and p.max() == 1024 and o.min() == 23 and o.max() == 1046
    assert o.mean() == pytest.approx(run.workload.output_len.mean, rel=0.01)  # 534.49
    # a run whose std is not a uniform's keeps the lognormal
    w = run.workload.model_copy(
        update={"output_len": run.workload.output_len.model_copy(update={"std": 100.0})}
    )
    assert replay_plan(run.model_copy(update={"workload": w})).tokens["kind"] == "lognormal"
