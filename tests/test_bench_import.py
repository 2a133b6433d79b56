"""``capsim bench import``: each real fixture parses to the numbers it holds (read by eye from the
files in tests/data/bench), formats are detected, bad files exit 2 naming file and field, and
command-line settings are recorded with where they came from."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from capsim.bench import BenchRun, apply_settings, detect, read_files, read_runs
from capsim.cli import main
from capsim.errors import InputError

DATA = Path(__file__).resolve().parent / "data" / "bench"
VLLM = DATA / "vllm" / "ascend_serving_llama8B_tp1_qps_inf.json"
ASCEND = DATA / "vllm" / "ascend_serving_llama8B_tp1_1.json"
SGLANG = DATA / "sglang" / "h200x4_llama3.3-70b_online.jsonl"
PERF = DATA / "perf_analyzer" / "inception_graphdef_concurrency.csv"
SERVER = DATA / "mlperf" / "h100x8_llama2-70b_server"
OFFLINE = DATA / "mlperf" / "h100x8_llama2-70b_offline" / "mlperf_log_summary.txt"
L4 = DATA / "mlperf" / "l4_resnet50_singlestream"
A100 = DATA / "vllm" / "a100x8_llama3.3-70b_tp8"
A100_RUNS = {
    q: A100 / f"serving_meta-llama-Llama-3.3-70B-Instruct_tp8_pp1_sharegpt_qps_{q}.json"
    for q in ("01", "04", "16", "inf")
}
FIXTURES = {
    VLLM: "vllm",
    ASCEND: "vllm",
    SGLANG: "sglang",
    PERF: "perf-analyzer",
    SERVER / "mlperf_log_summary.txt": "mlperf-summary",
    SERVER / "mlperf_log_detail.txt": "mlperf-detail",
    OFFLINE: "mlperf-summary",
    L4 / "mlperf_log_summary.txt": "mlperf-summary",
    L4 / "mlperf_log_detail.txt": "mlperf-detail",
    **{path: "vllm" for path in A100_RUNS.values()},
}


def one(path: Path) -> BenchRun:
    runs = read_runs(path)
    assert len(runs) == 1
    return runs[0]


# ---------------------------------------------------------------- provenance and detection
def test_readme_sha256_matches_every_fixture():
    readme = (DATA / "README.md").read_text()
    for path in FIXTURES:
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        assert f"{digest}  {path.relative_to(DATA)}" in readme, path


@pytest.mark.parametrize("path", list(FIXTURES), ids=lambda p: str(p.relative_to(DATA)))
def test_format_is_detected(path):
    assert detect(path, path.read_text()) == FIXTURES[path]
    for run in read_runs(path):
        assert run.source.format == FIXTURES[path]
        assert run.source.sha256 == hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------- vLLM
def test_vllm_benchmark_serving_offline_burst():
    r = one(VLLM)
    assert r.tool.name == "vllm benchmark_serving.py"
    assert r.date == "2025-02-27T02:53:38"
    assert r.settings.model.endswith("Meta-Llama-3-8B-Instruct") and r.settings.engine == "vllm"
    # request_rate "inf" and no max_concurrency: all 200 prompts sent at once
    assert r.workload.load.kind == "offline" and r.workload.num_requests == 200
    assert r.workload.input_len is None  # no token totals in this file: not invented
    m = r.measured
    assert m.request_throughput_rps is None and m.e2e_s is None and m.samples is None
    assert m.ttft_s.p50 == pytest.approx(14.025211746804416)
    assert m.ttft_s.p99 == pytest.approx(16.596106526181098)
    assert m.tpot_s.mean == pytest.approx(0.18377582653886833)
    assert m.itl_s.p99 == pytest.approx(0.1371021644771099)


def _bench_serve_doc() -> dict:
    """No licensed ``vllm bench serve`` file with these keys was found (see the README): the
    keys that release adds (endpoint type, a concurrency cap, totals, throughputs, e2el, the
    sweep's max_num_seqs) are added to a real benchmark_serving.py result."""
    doc = json.loads(VLLM.read_text())
    return doc | {
        "endpoint_type": "openai",
        "backend": "openai",
        "max_concurrency": 2,
        "max_num_seqs": 4,
        "completed": 200,
        "total_input_tokens": 6400,
        "total_output_tokens": 3200,
        "request_throughput": 5.18,
        "output_throughput": 82.9,
        "median_e2el_ms": 166.5,
        "p99_e2el_ms": 876.8,
    }


def test_vllm_bench_serve_keys(tmp_path):
    path = tmp_path / "bench_serve.json"
    path.write_text(json.dumps(_bench_serve_doc()))
    r = one(path)
    assert r.tool.name == "vllm bench serve"
    # request_rate "inf" with max_concurrency 2: two clients back to back
    assert r.workload.load.kind == "concurrency" and r.workload.load.concurrency == 2
    assert r.workload.input_len.mean == pytest.approx(32.0)
    assert r.settings.max_num_seqs == 4
    assert r.settings.engine is None  # client backend "openai": the engine is not recorded
    assert r.settings.extra["client_backend"] == "openai"
    assert r.measured.request_throughput_rps == pytest.approx(5.18)
    assert r.measured.e2e_s.p99 == pytest.approx(0.8768)
    assert r.measured.e2e_s.p50 == pytest.approx(0.1665)


def test_vllm_rate_run_without_throughput_fields():
    r = one(ASCEND)
    assert r.workload.load.kind == "rate" and r.workload.load.rate_rps == 1.0
    assert r.workload.load.burstiness == 1.0 and r.workload.num_requests == 200
    assert r.measured.request_throughput_rps is None  # not in the file: not invented
    assert r.measured.ttft_s.mean == pytest.approx(0.11123647520318627)
    assert r.measured.itl_s.p99 == pytest.approx(0.08389740884304047)
    assert r.tool.name == "vllm benchmark_serving.py"


def test_vllm_detailed_arrays_become_samples(tmp_path):
    """No real --save-detailed file was found (see the README): the arrays are added to a real
    summary so the per-request path is exercised."""
    doc = _bench_serve_doc()
    doc |= {
        "num_prompts": 2,
        "completed": 2,
        "input_lens": [32] * 2,
        "output_lens": [16, 15],
        "ttfts": [0.05, 0.06],
        "itls": [[0.01] * 15, [0.012] * 14],
    }
    path = tmp_path / "detailed.json"
    path.write_text(json.dumps(doc))
    r = one(path)
    assert r.measured.samples.ttft_s == [0.05, 0.06]
    assert len(r.measured.samples.itl_s[1]) == 14
    assert r.workload.output_len.kind == "per_request" and r.workload.output_len.values == [16, 15]


def test_vllm_a100_run_per_request_arrays_give_e2e_percentiles():
    """vLLM 0.8.3 saved per-request lengths, TTFTs and ITLs but no e2e statistics: the importer
    derives each request's e2e as TTFT + sum(ITLs) and its percentiles as numpy does."""
    np = pytest.importorskip("numpy")
    raw = json.loads(A100_RUNS["04"].read_text())
    r = one(A100_RUNS["04"])
    assert r.settings.model == "meta-llama/Llama-3.3-70B-Instruct"
    assert r.workload.load.rate_rps == 4.0 and r.workload.num_requests == 200
    m = r.measured
    assert m.request_throughput_rps == pytest.approx(3.1751913448302957)
    assert m.ttft_s.p50 == pytest.approx(0.04950005649993727)
    assert m.ttft_s.p99 == pytest.approx(0.06756385031015722)
    assert m.tpot_s.p99 == pytest.approx(0.027912823145449423)
    assert r.workload.input_len.values[:3] == [13, 25, 27]
    assert r.workload.output_len.values[:3] == [120, 770, 81]
    e2e = [t + sum(g) for t, g in zip(raw["ttfts"], raw["itls"], strict=True)]
    assert m.samples.e2e_s == pytest.approx(e2e)
    assert m.e2e_s.p50 == pytest.approx(float(np.percentile(e2e, 50)))
    assert m.e2e_s.p99 == pytest.approx(float(np.percentile(e2e, 99)))
    assert 4.0 < m.e2e_s.p50 < 4.3 and 20.0 < m.e2e_s.p99 < 22.0
    assert any("ttft + sum(itls)" in n for n in r.notes)
    # a file with e2el statistics keeps them and gets no note
    assert not any("sum(itls)" in n for n in one(VLLM).notes)


def test_vllm_a100_run_replays_its_own_length_pairs():
    from capsim.bench.replay import require_replayable

    given = {"gpu": "a100-40gb-sxm", "model": "llama-3.1-70b", "precision": "bf16", "tp": 8}
    plan = require_replayable(apply_settings(one(A100_RUNS["04"]), given))
    assert plan.arrivals == {"kind": "poisson", "rate_rps": 4.0} and plan.tp == 8
    assert plan.tokens["kind"] == "empirical" and len(plan.pairs) == 200
    assert plan.pairs[:2] == [(13, 120), (25, 770)]
    assert plan.tokens["output_max"] == max(b for _, b in plan.pairs)


# ---------------------------------------------------------------- SGLang
def test_sglang_bench_serving_jsonl():
    """A late-2024 SGLang JSONL (medians only, no server_info): seven runs in one file."""
    runs = read_runs(SGLANG)
    assert len(runs) == 7 and [r.source.index for r in runs] == list(range(7))
    assert [r.workload.load.rate_rps for r in runs] == [1.0, 2.0, 4.0, 8.0, 16.0, 4.0, 8.0]
    r = runs[0]
    assert r.tool.name == "sglang.bench_serving" and r.settings.engine is None
    assert r.workload.completed == 300 and r.workload.dataset == "random"
    # random 1024/1024 with range ratio 0: uniform in [1, 1024]; the mean from the totals
    inp = r.workload.input_len
    assert inp.kind == "stats" and inp.mean == pytest.approx(152612 / 300)
    assert inp.std == pytest.approx(1024 / 12**0.5) and (inp.min, inp.max) == (1, 1024)
    assert r.workload.output_len.mean == pytest.approx(160347 / 300)
    m = r.measured
    assert m.request_throughput_rps is None  # not in the file: not invented
    assert m.output_tokens_per_s == pytest.approx(537.4142851849319)
    assert m.ttft_s.p50 == pytest.approx(0.08574514742940664)
    assert m.itl_s.p50 == pytest.approx(0.013638956006616354)
    assert m.e2e_s.mean == pytest.approx(7.840616212638561)
    assert m.e2e_s.p50 == pytest.approx(7.819046192569658) and m.e2e_s.p99 is None
    share = runs[5]  # sharegpt: lengths are the dataset's, only their mean is known
    assert share.workload.dataset == "sharegpt" and share.workload.input_len.std is None


# ---------------------------------------------------------------- perf_analyzer
def test_perf_analyzer_concurrency_sweep():
    runs = read_runs(PERF)
    by_c = {r.workload.load.concurrency: r for r in runs}
    assert sorted(by_c) == [1, 2, 3, 4]
    assert by_c[1].measured.request_throughput_rps == 69.2
    assert by_c[1].measured.e2e_s.p50 == pytest.approx(13891e-6)
    assert by_c[3].measured.e2e_s.p99 == pytest.approx(51701e-6)
    assert by_c[2].measured.e2e_s.p95 == pytest.approx(29768e-6)
    assert "Server Queue 21673 us" in by_c[3].notes[1]


# ---------------------------------------------------------------- MLPerf
def test_mlperf_server_summary_merges_detail():
    r = one(SERVER / "mlperf_log_summary.txt")
    assert r.source.extra_files == [str(SERVER / "mlperf_log_detail.txt")]
    assert r.date == "2024-07-25T06:30:54Z" and r.tool.version == "4.1 @ a248595cf5"
    assert r.workload.scenario == "Server" and r.workload.load.rate_rps == 75
    assert r.measured.valid is True
    m = r.measured
    assert m.request_throughput_rps == 74.42 and m.output_tokens_per_s == 21589.17
    assert m.ttft_s.p99 == pytest.approx(0.473977293)
    assert m.ttft_s.mean == pytest.approx(0.288629985)
    assert m.tpot_s.p50 == pytest.approx(0.164284270)
    assert m.tpot_s.p99 == pytest.approx(0.179798757)  # from the detail log
    assert m.e2e_s.p99_9 == pytest.approx(175.205938410)
    assert r.workload.output_len.mean == pytest.approx(21589.17 / 74.42)


def test_mlperf_detail_alone():
    r = one(SERVER / "mlperf_log_detail.txt")
    assert r.measured.request_throughput_rps == pytest.approx(74.4157)
    assert r.measured.output_tokens_per_s == pytest.approx(21589.2)
    assert r.measured.ttft_s.p50 == pytest.approx(0.287614987)
    assert r.measured.e2e_s.p90 == pytest.approx(84.989216489)


def test_mlperf_summary_and_detail_together_give_one_run():
    runs = read_files([SERVER / "mlperf_log_summary.txt", SERVER / "mlperf_log_detail.txt"])
    assert len(runs) == 1 and runs[0].source.format == "mlperf-summary"


def test_mlperf_offline_and_single_stream():
    off = one(OFFLINE)
    assert off.workload.load.kind == "offline" and off.workload.num_requests == 211200
    assert off.measured.request_throughput_rps == pytest.approx(83.0253)
    assert off.measured.e2e_s.p50 == pytest.approx(1334.649259158)
    ss = one(L4 / "mlperf_log_summary.txt")
    assert ss.workload.load.kind == "concurrency" and ss.workload.load.concurrency == 1
    assert ss.measured.request_throughput_rps == pytest.approx(2634.40)
    assert ss.measured.e2e_s.p90 == pytest.approx(386822e-9)
    assert ss.measured.e2e_s.p99 == pytest.approx(394574e-9)
    assert ss.measured.ttft_s is None and ss.workload.output_len is None


# ---------------------------------------------------------------- GenAI-Perf / AIPerf
# No real export could be copied (see the README). These inputs are built in the test with the
# exporters' layout; the AIPerf numbers are an excerpt of a public export
# (anud18/qwen36-vllm-aiperf-benchmark, results/nvfp4/5090/agent/c2/profile_export_aiperf.json).
AIPERF = {
    "schema_version": "1.3",
    "aiperf_version": "0.10.0",
    "request_throughput": {"unit": "requests/sec", "avg": 0.7460502167796494},
    "request_latency": {
        "unit": "ms",
        "avg": 2617.75843253125,
        "p50": 1560.043837,
        "p99": 10438.0777106,
    },
    "request_count": {"unit": "requests", "avg": 96.0},
    "time_to_first_token": {"unit": "ms", "avg": 154.26432382291665, "p99": 292.49688644999986},
    "inter_token_latency": {"unit": "ms", "avg": 5.670039629867334, "p50": 5.566364894820418},
    "output_token_throughput": {"unit": "tokens/sec", "avg": 324.31424631925347},
    "input_sequence_length": {"unit": "tokens", "avg": 2854.96875, "std": 2303.579214383587},
    "benchmark_duration": {"unit": "sec", "avg": 128.677665177},
    "input_config": {
        "models": {"items": [{"name": "qwen3.6-nvfp4"}]},
        "phases": [
            {"name": "warmup", "type": "concurrency", "requests": 16, "concurrency": 2},
            {"name": "profiling", "type": "concurrency", "requests": 96, "concurrency": 2},
        ],
    },
    "start_time": "2026-07-03T05:16:02.949937",
}


def test_aiperf_json_export(tmp_path):
    path = tmp_path / "profile_export_aiperf.json"
    path.write_text(json.dumps(AIPERF))
    r = one(path)
    assert r.source.format == "aiperf-json" and r.tool.version == "0.10.0"
    assert r.settings.model == "qwen3.6-nvfp4"
    assert r.workload.load.kind == "concurrency" and r.workload.load.concurrency == 2
    assert r.workload.completed == 96 and r.workload.duration_s == pytest.approx(128.677665177)
    assert r.measured.ttft_s.p99 == pytest.approx(0.29249688644999986)
    assert r.measured.tpot_s.p50 == pytest.approx(0.005566364894820418)
    assert r.measured.e2e_s.p99 == pytest.approx(10.4380777106)
    assert r.workload.input_len.mean == pytest.approx(2854.96875)


def test_genai_perf_json_export_with_flat_input_config(tmp_path):
    doc = {k: v for k, v in AIPERF.items() if k not in ("aiperf_version", "schema_version")}
    doc["input_config"] = {"model": ["gpt2"], "concurrency": None, "request_rate": 4.0}
    path = tmp_path / "profile_export_genai_perf.json"
    path.write_text(json.dumps(doc))
    r = one(path)
    assert r.source.format == "genai-perf-json" and r.tool.name == "GenAI-Perf"
    assert r.workload.load.kind == "rate" and r.workload.load.rate_rps == 4.0
    assert r.settings.model == "gpt2"


def test_genai_perf_and_aiperf_csv_exports(tmp_path):
    genai = tmp_path / "profile_export_genai_perf.csv"
    genai.write_text(
        "Metric,avg,min,max,p99,p95,p90,p75,p50,p25\n"
        'Time To First Token (ms),"1,146.31",249.48,"3,485.23","3,457.97","3,349.56",'
        '"3,215.06","1,330.93",640.07,286.52\n'
        "Inter Token Latency (ms),7.16,6.0,9.0,8.5,8.0,7.9,7.5,7.1,6.9\n"
        "\nMetric,Value\nRequest Throughput (per sec),1.32\n"
        "Output Token Throughput (per sec),149.63\n"
    )
    r = one(genai)
    assert r.source.format == "genai-perf-csv"
    assert r.measured.ttft_s.mean == pytest.approx(1.14631)  # thousands separators read
    assert r.measured.ttft_s.p99 == pytest.approx(3.45797)
    assert r.measured.request_throughput_rps == pytest.approx(1.32)
    assert r.workload.load is None  # the CSV records no load
    aiperf = tmp_path / "profile_export_aiperf.csv"
    aiperf.write_text(
        "Metric,avg,min,max,sum,p1,p5,p10,p25,p50,p75,p90,p95,p99,std\n"
        "Request Latency (ms),2617.76,284.05,10683.64,251304.81,508.09,582.38,686.46,1038.46,"
        "1560.04,3393.58,5869.87,7053.48,10438.08,2294.58\n"
        "Time to First Token (ms),154.26,74.40,341.90,14809.38,78.61,88.37,92.10,117.29,136.49,"
        "189.90,224.47,248.81,292.50,53.98\n\n"
        "Metric,Value\nBenchmark Duration (sec),128.68\nRequest Count,96.00\n"
        "Request Throughput (requests/sec),0.75\n"
    )
    r = one(aiperf)
    assert r.source.format == "aiperf-csv" and r.workload.completed == 96
    assert r.measured.ttft_s.p50 == pytest.approx(0.13649)
    assert r.measured.e2e_s.std == pytest.approx(2.29458)


# ---------------------------------------------------------------- plain CSV
def test_plain_csv_runs_and_iterations(tmp_path):
    """Written from the SGLang fixture's numbers (capsim's own format has no public files)."""
    runs_csv = tmp_path / "runs.csv"
    runs_csv.write_text(
        "# from sglang/h200x4_llama3.3-70b_online.jsonl, line 1\n"
        "rate_rps,num_requests,input_len_mean,output_len_mean,output_tokens_per_s,"
        "ttft_p50_ms,e2e_p50_ms,model,tp\n"
        "1,300,508.71,534.49,537.41,85.75,7819.05,meta-llama/Llama-3.3-70B-Instruct,4\n"
    )
    r = one(runs_csv)
    assert r.source.format == "capsim-csv" and r.workload.load.rate_rps == 1
    assert r.measured.ttft_s.p50 == pytest.approx(0.08575)
    assert r.settings.tp == 4 and r.origins == {}
    steps = tmp_path / "steps.csv"
    steps.write_text("phase,batch_size,seq_len,time_ms\nprefill,1,512,21.5\ndecode,32,1024,14.2\n")
    r = one(steps)
    assert [s.phase for s in r.measured.iterations] == ["prefill", "decode"]
    assert r.measured.iterations[1].time_s == pytest.approx(0.0142)


# ---------------------------------------------------------------- settings and provenance
def test_cli_settings_fill_in_and_override_and_are_recorded(tmp_path):
    # the real SGLang file records no server settings: capsim's CSV carries tp and a version
    path = tmp_path / "runs.csv"
    path.write_text("rate_rps,ttft_p50_ms,model,tp,engine_version\n1,85.75,m,1,0.4.0\n")
    run = apply_settings(one(path), {"gpu": "h100-sxm", "tp": 2, "precision": "bf16"})
    assert run.settings.tp == 2 and run.overridden == {"tp": 1}
    assert run.origins["tp"] == "cli" and run.origins["gpu"] == "cli"
    assert run.origins["model"] == "file" and run.origins["engine_version"] == "file"
    same = apply_settings(one(path), {"tp": 1})
    assert same.overridden == {} and same.origins["tp"] == "cli"
    sg = apply_settings(read_runs(SGLANG)[0], {"tp": 4})
    assert sg.overridden == {} and sg.origins == {"tp": "cli"}


def test_cli_import_table_json_and_out(runner, tmp_path):
    args = ["bench", "import", str(SGLANG), str(PERF), "--gpu", "h100-sxm", "--tp", "2"]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 11 and "537.41 tok/s" in lines[0] and "gpu h100-sxm" in lines[0]
    res = runner.invoke(main, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    runs = [BenchRun.model_validate(d) for d in json.loads(res.output)]
    assert runs[0].overridden == {} and runs[10].origins == {"gpu": "cli", "tp": "cli"}
    out = tmp_path / "runs"
    res = runner.invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    files = sorted(out.iterdir())
    assert len(files) == 11 and all(f.suffix == ".json" for f in files)  # no temp files left
    back = BenchRun.model_validate_json(files[0].read_text())
    assert back.settings.gpu == "h100-sxm"


# ---------------------------------------------------------------- bad input
def _bad(runner, args, *needles):
    res = runner.invoke(main, ["bench", "import", *args])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output
    return res.output


def test_unrecognised_files_name_the_file_and_what_was_expected(runner, tmp_path):
    odd = tmp_path / "odd.json"
    odd.write_text('{"foo": 1}')
    _bad(runner, [str(odd), "--gpu", "l4"], "odd.json", "keys: foo", "vLLM bench serve")
    text = tmp_path / "notes.txt"
    text.write_text("hello\n")
    _bad(runner, [str(text), "--gpu", "l4"], "notes.txt", "MLPerf LoadGen")
    binary = tmp_path / "blob.bin"
    binary.write_bytes(b"\xff\xfe\x00\x81")
    _bad(runner, [str(binary), "--gpu", "l4"], "blob.bin", "UTF-8")
    _bad(runner, [str(tmp_path / "missing.json"), "--gpu", "l4"], "missing.json", "not found")
    _bad(runner, [str(tmp_path), "--gpu", "l4"], "directory")
    broken = tmp_path / "broken.json"
    broken.write_text(VLLM.read_text()[:200])
    _bad(runner, [str(broken), "--gpu", "l4"], "broken.json", "line")


def test_wrong_field_is_named(runner, tmp_path):
    doc = json.loads(VLLM.read_text())
    doc["request_throughput"] = "fast"
    bad = tmp_path / "bad_vllm.json"
    bad.write_text(json.dumps(doc))
    _bad(runner, [str(bad), "--gpu", "l4"], "bad_vllm.json", "request_throughput", "'fast'")
    csv_text = PERF.read_text().replace("84.2,279", "abc,279")
    bad_csv = tmp_path / "perf.csv"
    bad_csv.write_text(csv_text)
    _bad(runner, [str(bad_csv), "--gpu", "l4"], "perf.csv", "row 4", "Inferences/Second")


def test_value_out_of_range_is_named(runner, tmp_path):
    doc = json.loads(ASCEND.read_text())
    doc["request_throughput"] = -5.8
    bad = tmp_path / "negative.json"
    bad.write_text(json.dumps(doc))
    _bad(runner, [str(bad), "--gpu", "l4"], "negative.json", "request_throughput", "-5.8")


def test_missing_field_is_named(runner, tmp_path):
    summary = (SERVER / "mlperf_log_summary.txt").read_text().replace("Scenario : Server\n", "")
    d = tmp_path / "run"
    d.mkdir()
    (d / "mlperf_log_summary.txt").write_text(summary)
    _bad(runner, [str(d / "mlperf_log_summary.txt"), "--gpu", "h100-sxm"], "Scenario", "missing")
    plain = tmp_path / "plain.csv"
    plain.write_text("rate_rps,concurrency,ttft_p99_ms\n2,4,30\n")
    _bad(runner, [str(plain), "--gpu", "l4"], "plain.csv", "row 2", "exactly one of")
    typo = tmp_path / "typo.csv"
    typo.write_text("rate_rps,ttft_p99ms\n2,30\n")
    _bad(runner, [str(typo), "--gpu", "l4"], "typo.csv", "unknown column 'ttft_p99ms'")


@pytest.mark.parametrize("key", ["input_lens", "output_lens", "ttfts", "itls"])
def test_per_request_lists_of_different_lengths_are_refused(runner, tmp_path, key):
    """They pair up by request: a short one would silently drop the e2e statistics or replay
    lognormal lengths instead of the run's own."""
    doc = json.loads(A100_RUNS["04"].read_text())
    doc[key] = doc[key][:150]
    bad = tmp_path / "short.json"
    bad.write_text(json.dumps(doc))
    _bad(runner, [str(bad), "--gpu", "l4"], "short.json", key, "different lengths", "150")
    res = runner.invoke(main, ["backtest", str(bad), "--gpu", "l4"])
    assert res.exit_code == 2 and "different lengths" in res.output, res.output


def test_a_key_given_twice_is_refused(runner, tmp_path):
    """json.loads keeps the last of two equal keys: a file saying request_rate twice would be
    replayed at whichever came last, without a word."""
    text = A100_RUNS["04"].read_text()
    bad = tmp_path / "twice.json"
    bad.write_text(
        text.replace('"request_rate": 4.0', '"request_rate": 4.0, "request_rate": 16.0', 1)
    )
    assert bad.read_text() != text
    _bad(runner, [str(bad), "--gpu", "l4"], "twice.json", "'request_rate' appears twice")


def test_a_perf_analyzer_column_named_twice_is_refused(runner, tmp_path):
    lines = PERF.read_text().splitlines()
    head = lines[0].split(",")
    head[-2] = "p99 latency"  # the p95 column renamed: p99 twice
    bad = tmp_path / "twice.csv"
    bad.write_text("\n".join([",".join(head), *lines[1:]]) + "\n")
    _bad(runner, [str(bad), "--gpu", "l4"], "twice.csv", "header", "'p99 latency' appears twice")


def test_counts_that_contradict_num_prompts_are_refused(runner, tmp_path):
    """Per-request lists hold one entry per prompt sent, and no more can complete than were
    sent: a file that says otherwise is refused, not replayed with resampled lengths."""
    doc = json.loads(A100_RUNS["04"].read_text())
    for key in ("input_lens", "output_lens", "ttfts", "itls"):
        doc[key] = doc[key][:150]
    bad = tmp_path / "cut.json"
    bad.write_text(json.dumps(doc))
    _bad(runner, [str(bad), "--gpu", "l4"], "cut.json", "150 entries", "num_prompts 200")
    doc = json.loads(A100_RUNS["04"].read_text()) | {"completed": 201}
    bad.write_text(json.dumps(doc))
    _bad(runner, [str(bad), "--gpu", "l4"], "cut.json", "completed", "201", "of 200 sent")


@pytest.mark.parametrize(
    ("key", "index", "value", "needle"),
    [
        ("p99_ttft_ms", None, -5.0, "expected a time >= 0"),
        ("ttfts", 3, -1.0, "expected a time >= 0"),
        ("input_lens", 3, -5, "expected a token count >= 0"),
        ("output_lens", 0, -1, "expected a token count >= 0"),
    ],
)
def test_negative_latencies_and_lengths_are_refused(runner, tmp_path, key, index, value, needle):
    """A negative p99 gave a -3460% error in backtest; a negative TTFT dropped the request."""
    doc = json.loads(A100_RUNS["04"].read_text())
    if index is None:
        doc[key] = value
    else:
        doc[key][index] = value
    bad = tmp_path / "neg.json"
    bad.write_text(json.dumps(doc))
    where = key if index is None else f"{key}[{index}]"
    _bad(runner, [str(bad), "--gpu", "l4"], "neg.json", where, needle)


def test_negative_latency_in_a_csv_or_a_run_file_is_refused(runner, tmp_path):
    bad_csv = tmp_path / "perf.csv"
    bad_csv.write_text(PERF.read_text().replace(",51701\n", ",-51701\n"))
    _bad(runner, [str(bad_csv), "--gpu", "l4"], "perf.csv", "row 3", "p99 latency", "time >= 0")
    run = one(A100_RUNS["04"]).model_dump(mode="json")
    run["measured"]["ttft_s"]["p99"] = -0.005
    edited = tmp_path / "run.json"
    edited.write_text(json.dumps(run))
    res = runner.invoke(main, ["backtest", str(edited), "--gpu", "l4"])
    assert res.exit_code == 2 and "measured.ttft_s.p99" in res.output, res.output


def test_csv_rows_that_do_not_match_the_header_are_refused(runner, tmp_path):
    """A short or long row put its values under the wrong columns, silently."""
    short = tmp_path / "perf.csv"
    short.write_text(PERF.read_text().replace("\n3,84.2,237,", "\n3,84.2,"))
    _bad(runner, [str(short), "--gpu", "l4"], "perf.csv", "row 3", "has 12 fields", "13 columns")
    head = "phase,batch_size,seq_len,time_ms,model\n"
    for body, needle in [
        ("decode,1,2048,6.5,llama-3.1-8b\ndecode,8,2048,6.9\n", "row 3: has 4 fields"),
        ("decode,1,2048,6.5,llama-3.1-8b,bf16\n", "row 2: has 6 fields"),
        ("decode,4.5,2048,6.5,llama-3.1-8b\n", "expected a whole number, got '4.5'"),
        ("decode,4,2048,inf,llama-3.1-8b\n", "a finite time_ms > 0"),
    ]:
        it = tmp_path / "iterations.csv"
        it.write_text(head + body)
        _bad(runner, [str(it), "--gpu", "l4"], "iterations.csv", needle)
    twice = tmp_path / "twice.csv"
    twice.write_text("phase,phase,batch_size,seq_len,time_ms\ndecode,decode,1,2048,6.5\n")
    _bad(runner, [str(twice), "--gpu", "l4"], "twice.csv", "column 'phase' appears twice")


@pytest.mark.parametrize("text", ["NaN", '"nan"'])
def test_a_nan_request_rate_is_refused_not_read_as_an_offline_burst(runner, tmp_path, text):
    raw = A100_RUNS["04"].read_text().replace('"request_rate": 4.0', f'"request_rate": {text}')
    bad = tmp_path / "nan_rate.json"
    bad.write_text(raw)
    _bad(runner, [str(bad), "--gpu", "l4"], "nan_rate.json", "request_rate", "got NaN")


def test_json_nested_too_deeply_is_refused_not_a_recursion_error(runner, tmp_path):
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    _bad(runner, [str(deep), "--gpu", "l4"], "deep.json", "nested too deeply", "64 levels")
    lines = tmp_path / "deep.jsonl"
    lines.write_text('{"a": 1}\n' + "[" * 5000 + "]" * 5000 + "\n")
    _bad(runner, [str(lines), "--gpu", "l4"], "deep.jsonl", "line 2", "nested too deeply")
    res = runner.invoke(main, ["backtest", str(deep), "--gpu", "l4"])
    assert res.exit_code == 2 and "nested too deeply" in res.output, res.output
    detail = (SERVER / "mlperf_log_detail.txt").read_text()
    mllog = tmp_path / "mlperf_log_detail.txt"
    mllog.write_text(":::MLLOG " + "[" * 5000 + "]" * 5000 + "\n" + detail)
    _bad(runner, [str(mllog), "--gpu", "h100-sxm"], "line 1", "nested too deeply")


def test_bad_options(runner):
    _bad(runner, [str(VLLM), "--gpu", "h100"], "--gpu", "unknown GPU 'h100'", "h100-sxm")
    _bad(runner, [str(VLLM), "--gpu", "l4", "--precision", "fp7"], "fp7")
    _bad(
        runner,
        [str(VLLM), "--gpu", "l4", "--as", "sglang"],
        "ascend_serving_llama8B_tp1_qps_inf.json",
        "SGLang",
    )


def test_input_error_is_a_library_error_too():
    with pytest.raises(InputError, match="file not found"):
        read_runs(DATA / "nope.json")


# ---------------------------------------------------------------- replay plan
def test_replay_plan_of_real_runs():
    from capsim.bench.replay import replay_plan, require_replayable

    given = {"gpu": "h200-sxm", "model": "llama-3.1-70b", "precision": "bf16", "tp": 4}
    sglang = [apply_settings(r, given) for r in read_runs(SGLANG)]
    plan = require_replayable(sglang[0])
    assert plan.arrivals == {"kind": "poisson", "rate_rps": 1.0} and plan.tp == 4
    # uniform over the stated range [1, 1024], centred on the realised mean (clipped at 1)
    lo = max(1, round(152612 / 300 - 1023 / 2))
    assert plan.tokens["kind"] == "uniform"
    assert (plan.tokens["prompt_min"], plan.tokens["prompt_max"]) == (lo, lo + 1023)
    assert [a.split(":")[0] for a in plan.assumptions] == ["uniform lengths"]
    share = require_replayable(sglang[5])
    assert "prompt length spread not recorded: fixed at the mean" in share.assumptions
    rate = replay_plan(apply_settings(one(ASCEND), given))
    assert rate.arrivals == {"kind": "poisson", "rate_rps": 1.0}
    assert "prompt lengths" in rate.missing  # the file has no token totals
    server = replay_plan(one(SERVER / "mlperf_log_summary.txt"))
    assert server.arrivals == {"kind": "poisson", "rate_rps": 75.0}
    assert "model (give --model)" in server.missing and "prompt lengths" in server.missing
    assert "offline" in " ".join(replay_plan(one(OFFLINE)).missing)
    perf = replay_plan(apply_settings(read_runs(PERF)[0], given))
    assert perf.missing == [] and perf.tokens is None  # not an LLM run: no lengths needed
    with pytest.raises(InputError, match=r"run 0: cannot replay this run; missing: model"):
        require_replayable(one(SERVER / "mlperf_log_summary.txt"))
