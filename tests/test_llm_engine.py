"""The continuous-batching engine (capsim.sim.llm_engine): oracles, preemption, routers, CLI."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from capsim.errors import InputError
from capsim.load import load_catalog, load_model_card
from capsim.service.fixed import Unsupported
from capsim.sim.llm_adapter import LLMService
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_types import EngineLimits, _sum_max_lines
from capsim.spec.engine import LLMEngineSettings, engine_settings

from .conftest import ROOT, SHARED

AZURE = ROOT / "scenarios" / "traces" / "azure_conv_2023.csv"


class ConstTimer:
    """Every iteration takes ``c`` seconds, whatever is in it."""

    def __init__(self, c: float = 0.25):
        self.c = c
        self.calls = 0

    def iteration_time(self, *args, **kwargs) -> float:
        self.calls += 1
        return self.c

    def decode_lines(self, d: int):
        return (self.c, 0.0, self.c, 0.0)


class LinearTimer:
    """A decode step grows with the batch's total context; prefill with its tokens."""

    def iteration_time(self, num_tokens, num_decode=0, decode_context=0, prefill_work=0.0,
                       num_logits=None, prefill_kv=None):  # fmt: skip
        pre = num_tokens - num_decode
        return (
            0.01
            + 1e-5 * pre
            + max(2e-7 * decode_context, 1e-4 * num_decode + 1e-7 * decode_context)
        )

    # no decode_lines: the engine sums decode runs one iteration at a time


def _poisson(n: int, rate: float, seed: int = 1):
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(1 / rate, n))
    prompt = rng.integers(16, 600, n)
    output = rng.integers(1, 80, n)
    return arr, prompt, output


# ------------------------------------------------------------------------------- oracles
def test_unlimited_kv_no_waiting_ttft_is_prefill_time():
    """Arrivals on the iteration grid: admitted on arrival, TTFT = one iteration, e2e = O x c."""
    c = 0.25
    rng = np.random.default_rng(3)
    arr = np.unique(rng.integers(0, 4000, 600)) * c
    n = len(arr)
    prompt = rng.integers(1, 4000, n)
    output = rng.integers(1, 300, n)
    r = run_llm(arr, prompt, output, ConstTimer(c), EngineLimits(), 1)
    assert r.served.all() and not r.rejected.any()
    assert np.array_equal(r.admitted, arr)  # nobody waits
    assert np.array_equal(r.ttft, np.full(n, c))  # TTFT = the prefill iteration
    assert np.array_equal(r.e2e, output * c)
    assert np.allclose(r.tpot[output > 1], c)
    assert r.preemptions.sum() == 0


def test_unlimited_kv_poisson_waits_only_for_the_iteration_in_flight():
    c = 0.02
    arr, prompt, output = _poisson(3000, 40.0)
    r = run_llm(arr, prompt, output, ConstTimer(c), EngineLimits(), 1)
    wait = r.admitted - arr
    assert r.served.all()
    assert (wait >= 0).all() and (wait < c + 1e-12).all()
    assert np.allclose(r.ttft - wait, c, atol=1e-9)
    assert np.allclose(r.e2e - wait, output * c, atol=1e-9)
    # M/G/inf: the mean number in the system is lambda x E[T] (Little)
    span = r.finish.max() - arr[0]
    assert np.isclose(r.e2e.sum() / span, len(arr) / span * r.e2e.mean())


def test_small_kv_makes_requests_queue_and_ttft_grow():
    c = 0.02
    arr, prompt, output = _poisson(1500, 30.0, seed=5)
    means = []
    for blocks in (None, 4000, 1200, 500):
        lim = EngineLimits(kv_blocks=blocks, block_size=16)
        r = run_llm(arr, prompt, output, ConstTimer(c), lim, 1)
        assert r.served.all()
        means.append(float(np.mean(r.ttft)))
        if blocks == 500:
            assert (r.admitted - arr > c).mean() > 0.3  # many queued behind a full cache
    assert c <= means[0] < 2 * c  # unlimited: only the iteration in flight delays a request
    assert means == sorted(means) and means[-1] > 5 * means[0]


def test_tokens_conserved():
    arr, prompt, output = _poisson(2000, 25.0, seed=9)
    lim = EngineLimits(kv_blocks=900, block_size=16, max_num_batched_tokens=512, max_num_seqs=32)
    r = run_llm(arr, prompt, output, LinearTimer(), lim, 2, router="round_robin")
    assert r.served.all()
    # counted per iteration (one per decoding sequence, one per completed prefill)
    assert r.tokens_generated == int(output.sum())
    # prompt tokens computed: every prompt once, plus recomputation of preempted requests
    assert r.prefill_tokens >= int(prompt.sum())
    if r.preemptions.sum() == 0:
        assert r.prefill_tokens == int(prompt.sum())


def test_preemption_happens_and_is_recovered_from():
    """A tiny KV cache: decodes outgrow it, the newest request is preempted and recomputed."""
    rng = np.random.default_rng(2)
    n = 400
    arr = np.sort(rng.uniform(0, 20, n))
    prompt = rng.integers(50, 200, n)
    output = rng.integers(100, 300, n)
    lim = EngineLimits(kv_blocks=120, block_size=16, max_num_batched_tokens=1024)
    r = run_llm(arr, prompt, output, ConstTimer(0.01), lim, 1)
    assert r.preemptions.sum() > 0
    assert r.served.all()
    assert r.tokens_generated == int(output.sum())
    assert r.prefill_tokens > int(prompt.sum())  # recomputation
    peak = max(max(u) for _, u in r.kv_series.values())
    assert peak <= 120
    # a request preempted after its first token keeps that time; its TPOT includes the stall
    pre = r.preemptions > 0
    assert (r.tpot[pre] >= 0.01 - 1e-12).all() and (r.tpot[pre] > 0.0101).mean() > 0.5


def test_request_that_cannot_fit_is_rejected():
    arr = np.array([0.0, 1.0])
    r = run_llm(
        arr, np.array([100, 10_000]), np.array([10, 10]), ConstTimer(0.01),
        EngineLimits(kv_blocks=100, block_size=16), 1,
    )  # fmt: skip
    assert r.rejected.tolist() == [False, True]
    r = run_llm(
        arr, np.array([100, 600]), np.array([10, 10]), ConstTimer(0.01),
        EngineLimits(max_model_len=512), 1,
    )  # fmt: skip
    assert r.rejected.tolist() == [False, True]


def test_token_budget_chunks_long_prompts():
    arr = np.array([0.0])
    lim = EngineLimits(max_num_batched_tokens=1000)
    r = run_llm(arr, np.array([3500]), np.array([2]), ConstTimer(0.1), lim, 1)
    assert r.ttft[0] == pytest.approx(0.4)  # 4 chunked iterations: 1000 + 1000 + 1000 + 500
    nochunk = EngineLimits(max_num_batched_tokens=1000, chunked_prefill=False)
    r = run_llm(arr, np.array([3500]), np.array([2]), ConstTimer(0.1), nochunk, 1)
    assert r.rejected[0]  # a prompt above the budget cannot be admitted whole


def test_fused_decode_runs_equal_iteration_by_iteration():
    """Summing decode runs in closed form gives the same times as one event per iteration."""
    df = pd.read_csv(AZURE, nrows=1500)
    t = pd.to_datetime(df.TIMESTAMP)
    arr = (t - t.min()).dt.total_seconds().to_numpy()
    p, o = df.ContextTokens.to_numpy(), df.GeneratedTokens.to_numpy()
    svc = LLMService(load_catalog()["l4"], load_model_card("llama-3.1-8b"), "fp8", 1,
                     LLMEngineSettings(max_model_len=16384))  # fmt: skip
    lim = EngineLimits(kv_blocks=2500, block_size=16, max_num_batched_tokens=2048, max_num_seqs=64)
    for router, reps in (("least_outstanding_requests", 1), ("least_outstanding_tokens", 2)):
        a = run_llm(arr, p, o, svc, lim, reps, router=router)
        b = run_llm(arr, p, o, svc, lim, reps, router=router, fuse=False)
        assert a.events < b.events / 2
        assert a.preemptions.sum() == b.preemptions.sum()
        for f in ("admitted", "first_token", "finish"):
            assert np.allclose(getattr(a, f), getattr(b, f), rtol=0, atol=1e-9, equal_nan=True)
    # a timer without closed-form decode lines is summed one iteration at a time
    a = run_llm(arr[:300], p[:300], o[:300], LinearTimer(), lim, 1)
    b = run_llm(arr[:300], p[:300], o[:300], LinearTimer(), lim, 1, fuse=False)
    assert np.allclose(a.finish, b.finish, atol=1e-9)


def test_static_routing_equals_routing_at_arrival():
    """Round robin known in advance (no arrival events) gives the same run as routing live."""
    arr, prompt, output = _poisson(2500, 40.0, seed=8)
    lim = EngineLimits(kv_blocks=150, block_size=16, max_num_batched_tokens=512, max_num_seqs=48,
                       max_model_len=560)  # fmt: skip
    for reps in (1, 3):
        a = run_llm(arr, prompt, output, LinearTimer(), lim, reps, router="round_robin")
        b = run_llm(arr, prompt, output, LinearTimer(), lim, reps, router="round_robin",
                    static_routing=False)  # fmt: skip
        assert a.rejected.any() and a.preemptions.sum() > 0
        for f in ("replica", "rejected", "preemptions"):
            assert np.array_equal(getattr(a, f), getattr(b, f)), f
        for f in ("admitted", "first_token", "finish"):  # runs split elsewhere: float rounding
            assert np.allclose(getattr(a, f), getattr(b, f), rtol=0, atol=1e-9, equal_nan=True)


def test_sum_max_lines_matches_a_loop():
    rng = np.random.default_rng(0)
    for _ in range(200):
        a1, a2 = rng.uniform(0, 1, 2)
        b1, b2 = rng.uniform(0, 0.1, 2)
        j = int(rng.integers(0, 60))
        loop = sum(max(a1 + b1 * x, a2 + b2 * x) for x in range(j))
        assert _sum_max_lines(a1, b1, a2, b2, j) == pytest.approx(loop, rel=1e-12, abs=1e-12)


# ------------------------------------------------------------------------------- routers
def test_round_robin_router():
    arr, prompt, output = _poisson(300, 10.0)
    r = run_llm(arr, prompt, output, ConstTimer(0.02), EngineLimits(), 3, router="round_robin")
    assert r.replica.tolist() == [i % 3 for i in range(300)]


def test_least_outstanding_routers():
    # request 0 is long; the others are short and finish before the next arrives
    arr = np.array([0.0, 1.0, 2.0, 3.0])
    prompt = np.array([10, 10, 10, 10])
    output = np.array([1000, 5, 5, 5])
    lor = run_llm(arr, prompt, output, ConstTimer(0.01), EngineLimits(), 2,
                  router="least_outstanding_requests")  # fmt: skip
    assert lor.replica.tolist() == [0, 1, 1, 1]
    rr = run_llm(arr, prompt, output, ConstTimer(0.01), EngineLimits(), 2, router="round_robin")
    assert rr.replica.tolist() == [0, 1, 0, 1]
    # tokens: two long requests on different replicas; the next goes to the one with fewer tokens
    arr = np.array([0.0, 0.1, 0.2])
    lot = run_llm(arr, np.array([4000, 100, 10]), np.array([900, 900, 5]), ConstTimer(0.01),
                  EngineLimits(), 2, router="least_outstanding_tokens")  # fmt: skip
    assert lot.replica.tolist() == [0, 1, 1]
    lor = run_llm(arr, np.array([4000, 100, 10]), np.array([900, 900, 5]), ConstTimer(0.01),
                  EngineLimits(), 2, router="least_outstanding_requests")  # fmt: skip
    assert lor.replica.tolist()[:2] == [0, 1]


def test_least_outstanding_balances_better_than_round_robin():
    arr, prompt, output = _poisson(3000, 30.0, seed=4)
    output = np.where(np.arange(3000) % 4 == 0, output * 10, output)  # every 4th is long
    lim = EngineLimits(kv_blocks=1500, block_size=16)
    p99 = {}
    for router in ("round_robin", "least_outstanding_requests"):
        r = run_llm(arr, prompt, output, LinearTimer(), lim, 4, router=router)
        p99[router] = np.percentile(r.ttft, 99)
    assert p99["least_outstanding_requests"] < p99["round_robin"]


# ------------------------------------------------------------------------------- service, scenario
def test_engine_settings_errors_name_the_field():
    with pytest.raises(InputError, match=r"fleet\.batching\.engine\.max_num_seq"):
        engine_settings({"max_num_seq": 8})
    with pytest.raises(InputError, match=r"fleet\.batching\.engine\.block_size"):
        engine_settings({"block_size": 0})
    with pytest.raises(InputError, match="max_num_batched_tokens"):
        engine_settings({"max_num_batched_tokens": 64, "max_num_seqs": 128})


def test_service_unsupported_and_bounds():
    cat, card = load_catalog(), load_model_card("llama-3.1-8b")
    with pytest.raises(Unsupported, match="no fp8 math"):
        LLMService(cat["t4"], card, "fp8", 1, LLMEngineSettings())
    svc = LLMService(cat["t4"], card, "fp16", 1, LLMEngineSettings(max_model_len=8192))
    fit = svc.memory_fit()
    assert not fit.fits and "weights 15.0 GiB > usable" in fit.reason


def _small_chatbot(write_scenario, **over):
    data = {
        "name": "chat-small",
        "model": "llama-3.1-8b",
        "traffic": {
            "arrivals": {
                "kind": "poisson",
                "rate_rps": 6.0,
                "pattern": {"kind": "diurnal", "peak_to_trough": 3},
            },  # fmt: skip
            "horizon_s": 86400,
            "tokens": {
                "kind": "empirical",
                "trace": str(AZURE),
                "prompt_max": 8000,
                "output_max": 1000,
            },  # fmt: skip
        },
        "slo": {"percentile": 99, "ttft_ms": 2000, "tpot_ms": 100},
        "fleet": {
            "batching": {
                "kind": "continuous",
                "engine": {"max_model_len": 8192, "max_num_batched_tokens": 2048},
            },
            "router": "least_outstanding_requests",
        },  # fmt: skip
        "candidates": {
            "gpus": ["t4", "l4"],
            "precisions": ["fp16", "fp8"],
            "tensor_parallel": [1, 2],
            "max_replicas": 12,
        },  # fmt: skip
        "simulation": {"replications": 2, "max_replications": 3, "seed": 5, "compress_to_s": 60},
    }
    data.update(over)
    return write_scenario(data)


def test_empirical_tokens_are_trace_pairs(write_scenario):
    from capsim.load import load_scenario
    from capsim.workload.streams import make_stream

    s = load_scenario(_small_chatbot(write_scenario))
    st = make_stream(s, 0)
    df = pd.read_csv(AZURE)
    pairs = set(zip(df.ContextTokens.clip(upper=8000), df.GeneratedTokens, strict=True))
    assert all(pr in pairs for pr in zip(st.prompt_tokens, st.output_tokens, strict=True))
    assert abs(np.median(st.prompt_tokens) - 1020) < 150
    st2 = make_stream(s, 0)
    assert np.array_equal(st.prompt_tokens, st2.prompt_tokens)  # CRN: same stream


def test_simulate_is_deterministic_and_reports_llm_metrics(write_scenario, tmp_path):
    from capsim.evaluate import Config, simulate
    from capsim.load import load_scenario
    from capsim.report.files import write_evaluation

    s = load_scenario(_small_chatbot(write_scenario))
    a = simulate(s, Config("l4", "fp8", 2), replications=2)
    b = simulate(s, Config("l4", "fp8", 2), replications=2)
    assert a.summary.q("ttft", 99).mean == b.summary.q("ttft", 99).mean
    assert a.summary.scalars["output_tokens"].mean == b.summary.scalars["output_tokens"].mean
    assert set(a.summary.quantiles) == {"ttft", "tpot", "e2e"}
    for k in ("usd_per_1m_output_tokens", "usd_per_1m_tokens", "joules_per_token",
              "output_tokens_per_s", "kv_utilisation"):  # fmt: skip
        assert k in a.extra and a.extra[k] > 0
    sc = a.summary.scalars
    assert 0 < sc["kv_utilisation_mean"].mean <= sc["kv_utilisation_peak"].mean <= 1
    paths = write_evaluation(tmp_path / "out", a)
    ts = pd.read_csv(tmp_path / "out" / "timeseries.csv")
    assert any(p.name == "timeseries.csv" for p in paths)
    assert list(ts.columns) == ["time_s", "kv_utilisation"] and len(ts) > 100


def test_bad_engine_key_in_scenario(write_scenario, runner):
    from capsim.cli import main

    path = _small_chatbot(
        write_scenario,
        fleet={"batching": {"kind": "continuous", "engine": {"max_batch_tokens": 4096}}},
    )
    res = runner.invoke(main, ["simulate", str(path), "--gpu", "l4", "--precision", "fp8",
                               "--replicas", "2"])  # fmt: skip
    assert res.exit_code == 2
    assert "fleet.batching.engine" in res.output
    assert "unknown field 'max_batch_tokens'" in res.output
    assert "max_num_batched_tokens" in res.output  # the accepted names are listed


def test_chatbot_plan_cli_reduced(write_scenario, runner):
    from capsim.cli import main

    path = _small_chatbot(write_scenario)
    res = runner.invoke(main, ["plan", str(path), "--jobs", "1", "-q"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Recommendation:" in out and "per 1M output tokens" in out
    assert "precision unsupported: t4 has no fp8 math" in out
    assert "does not fit: weights 15.0 GiB > usable 11.8 GiB on t4 at fp16" in out
    assert "memory per GPU" in out and "decode step at batch" in out
    res = runner.invoke(main, ["plan", str(path), "--jobs", "1", "-q", "--format", "json"])
    plan = json.loads(res.output)
    assert plan["recommendation"]["status"] == "feasible"
    assert plan["recommendation"]["best"]["usd_per_1m_output_tokens"] > 0


def test_shipped_chatbot_scenarios_validate(runner):
    from capsim.cli import main

    for name in ("chatbot.yaml", "chatbot_trace.yaml"):
        res = runner.invoke(main, ["validate", str(ROOT / "scenarios" / name)])
        assert res.exit_code == 0, res.output


def test_shipped_trace_is_the_azure_conversation_trace():
    assert (ROOT / "scenarios" / "traces" / "README.md").read_text().count("CC-BY-4.0") >= 1
    shared = SHARED / "data" / "azure_llm_trace_2023" / "AzureLLMInferenceTrace_conv.csv"
    if shared.is_file():
        assert shared.read_bytes() == AZURE.read_bytes()


# ------------------------------------------------------------------------------- estimate
def test_estimate_llm_text_and_json(runner):
    from capsim.cli import main

    args = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--precision", "fp8",
            "--batch", "32", "--prompt", "1024", "--output", "256"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    for word in ("prefill", "decode   batch 32", "ms/step", "KV cache", "ceiling", "tokens/s"):
        assert word in res.output
    res = runner.invoke(main, [*args, "--tp", "2", "--format", "json"])
    d = json.loads(res.output)
    assert d["tp"] == 2 and d["prefill_s"] > 0 and d["decode_step_s"] > 0
    assert d["fit"]["kv_tokens"] > 0 and d["max_batch"] > 0 and d["max_tokens_per_s"] > 0
    res = runner.invoke(main, ["estimate", "--model", "llama-3.1-8b", "--gpu", "t4",
                               "--precision", "fp8", "--batch", "8"])  # fmt: skip
    assert res.exit_code == 2 and "no fp8 math" in res.output


# ------------------------------------------------------------------------------- fixes
def test_requests_the_engine_cannot_schedule_mark_the_run_unstable():
    """Without chunked prefill, a preempted request whose recompute exceeds the token budget
    can never be admitted again; the run must say so, not drop the requests silently."""
    rng = np.random.default_rng(0)
    arr = np.sort(rng.uniform(0, 1, 60))
    lim = EngineLimits(kv_blocks=200, block_size=16, max_num_batched_tokens=512,
                       chunked_prefill=False)  # fmt: skip
    r = run_llm(arr, np.full(60, 500), np.full(60, 300), ConstTimer(0.01), lim, 1)
    assert not r.served.all()
    assert r.unstable and "never served" in r.unstable_reason


def test_no_chunking_needs_a_budget_that_holds_max_model_len(runner, tmp_path):
    import yaml

    from capsim.cli import main

    data = yaml.safe_load((ROOT / "scenarios" / "chatbot.yaml").read_text())
    data["traffic"]["tokens"]["trace"] = str(AZURE)
    engine = data["fleet"]["batching"]["engine"]
    engine["chunked_prefill"] = False  # budget 2048 < max_model_len 8192
    p = tmp_path / "nochunk.yaml"
    p.write_text(yaml.safe_dump(data))
    res = runner.invoke(main, ["validate", str(p)])
    assert res.exit_code == 2 and "max_num_batched_tokens" in res.output
    assert "max_model_len" in res.output and "Traceback" not in res.output
    engine["chunked_prefill"], engine["max_model_len"] = True, 1_000_000  # > 131,072 context
    p.write_text(yaml.safe_dump(data))
    res = runner.invoke(main, ["validate", str(p)])
    assert res.exit_code == 2 and "context" in res.output, res.output


def test_simulate_refuses_a_configuration_that_does_not_fit(runner):
    from capsim.cli import main

    res = runner.invoke(main, ["simulate", "scenarios/chatbot_trace.yaml", "--gpu", "t4",
                               "--precision", "fp16", "--replicas", "4"])  # fmt: skip
    assert res.exit_code == 2 and "does not fit" in res.output, res.output


def test_estimate_llm_prints_every_batch_size(runner):
    from capsim.cli import main

    args = ["estimate", "--model", "llama-3.1-8b", "--gpu", "l4", "--precision", "fp8",
            "--batch", "1", "8", "32"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = [ln.split() for ln in res.output.splitlines() if ln.strip()[:2] in ("1 ", "8 ", "32")]
    assert [r[0] for r in rows] == ["1", "8", "32"]
    steps = [float(r[2]) for r in rows]
    assert steps == sorted(steps)  # a larger batch reads more KV per step
    d = json.loads(runner.invoke(main, [*args, "--format", "json"]).output)
    assert [b["batch"] for b in d["batches"]] == [1, 8, 32] and d["batch"] == 32
    res = runner.invoke(main, ["estimate", "--model", "llama-2-7b", "--gpu", "l4",
                               "--precision", "fp8", "--prompt", "8000"])  # fmt: skip
    assert res.exit_code == 2 and "context" in res.output
