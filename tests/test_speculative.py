"""Speculative decoding: the acceptance law, the verify-step cost, memory, the engine timer,
and the shipped scenario's gain at low load and loss at high load."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.cli import main
from capsim.errors import InputError
from capsim.evaluate import make_service, run_replication
from capsim.load import load_catalog, load_model_card, load_scenario
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import memory_fit, weight_bytes_per_gpu
from capsim.service.llm_spec import speculative_timer
from capsim.spec.catalog import GIB
from capsim.spec.engine import LLMEngineSettings, engine_settings
from capsim.spec.speculative import NgramSpec

SCENARIO = "scenarios/chatbot_specdec.yaml"


@pytest.fixture(scope="module")
def h100():
    return load_catalog()["h100-sxm"]


@pytest.fixture(scope="module")
def m8():
    return load_model_card("llama-3.1-8b")


def _settings(**spec) -> LLMEngineSettings:
    return LLMEngineSettings(speculative=spec)


# --- E[tokens per verify step] ------------------------------------------------------------


@pytest.mark.parametrize("k", [1, 2, 4, 8])
@pytest.mark.parametrize("a", [0.0, 0.3, 0.6, 0.9])
def test_expected_tokens_constant_rate_closed_form(k, a):
    """Leviathan et al. 2023 eq. 1: E = (1 - a^(k+1)) / (1 - a)."""
    s = NgramSpec(kind="ngram", k=k, acceptance=a)
    assert s.expected_tokens() == pytest.approx((1 - a ** (k + 1)) / (1 - a), rel=1e-12)


def test_expected_tokens_per_position_and_pmf():
    rates = [0.9, 0.7, 0.5, 0.2]
    s = NgramSpec(kind="ngram", k=4, acceptance=rates)
    # 1 + .9 + .9*.7 + .9*.7*.5 + .9*.7*.5*.2 = 2.908
    assert s.expected_tokens() == pytest.approx(1 + 0.9 + 0.63 + 0.315 + 0.063)
    pmf = s.pmf()
    assert pmf.sum() == pytest.approx(1.0) and (pmf >= 0).all()
    assert (np.arange(1, 6) * pmf).sum() == pytest.approx(s.expected_tokens())
    # a = 1: every proposal accepted, k + 1 tokens per step
    assert NgramSpec(kind="ngram", k=3, acceptance=1.0).expected_tokens() == 4.0


def test_sampled_accepted_counts_are_seeded_and_match_the_expectation():
    s = NgramSpec(kind="ngram", k=4, acceptance=[0.8, 0.6, 0.5, 0.4])
    a = s.sample_tokens(np.random.default_rng(7), 200_000)
    b = s.sample_tokens(np.random.default_rng(7), 200_000)
    assert (a == b).all()
    assert (a != s.sample_tokens(np.random.default_rng(8), 200_000)).any()
    # mean within 5 standard errors of E
    assert abs(a.mean() - s.expected_tokens()) < 5 * a.std() / math.sqrt(len(a))


def test_bad_settings_are_input_errors(m8):
    with pytest.raises(InputError, match="speculative.ngram.k"):
        engine_settings({"speculative": {"kind": "ngram", "k": 0, "acceptance": 0.5}})
    with pytest.raises(InputError, match="one per proposed token"):
        engine_settings({"speculative": {"kind": "eagle", "k": 3, "acceptance": [0.5, 0.4]}})
    with pytest.raises(InputError, match="does not match any of the expected tags"):
        engine_settings({"speculative": {"kind": "medusa", "k": 3, "acceptance": 0.5}})
    qwen = load_model_card("qwen2.5-7b")  # another tokenizer
    spec = {"kind": "draft", "k": 3, "acceptance": 0.5, "draft_model": qwen}
    with pytest.raises(InputError, match="share the target's tokenizer"):
        engine_settings({"speculative": spec}, m8)


# --- the verify step ----------------------------------------------------------------------


def _timer(gpu, model, precision="fp16", **spec):
    svc = LLMServiceModel(gpu, model, precision, 1, _settings(**spec))
    return svc, speculative_timer(svc, gpu, precision, 1)


def test_verify_step_reads_weights_once_and_computes_k_plus_1_times(h100, m8):
    svc, sp = _timer(h100, m8, kind="ngram", k=4, acceptance=0.7, host_us_per_seq=0.0)
    cpu = svc.cpu_overhead_s
    # batch 1: memory-bound, the 5 positions cost little more than 1 (weights read once)
    one, base1 = sp.verify_time(1, 1, 1000), svc.iteration_time(1, 1, 1000)
    assert base1 < one < 1.10 * base1
    # batch 1024 at a short context: the linear layers are compute-bound, ~5x the rows (the
    # kernel launches do not grow)
    c = 1024 * 16
    big, base_big = sp.verify_time(1024, 1024, c), svc.iteration_time(1024, 1024, c)
    assert 4.2 < (big - cpu(1024)) / (base_big - cpu(1024)) < 5.0
    # exactly: 5120 decode rows attending 5x the context, less the KV read 4 more times, and
    # the CPU overhead of 1024 sequences, not 5120
    kv_read = 32 * 2 * 8 * 128 * 2 / (h100.bandwidth * h100.efficiency.memory)
    five = svc.iteration_time(5120, 5120, 5 * c) - 4 * c * kv_read - cpu(5120) + cpu(1024)
    assert big == pytest.approx(five, rel=1e-9)
    # each sequence's KV is read once: longer contexts add what they add to a decode step
    for d in (1, 64):
        grow = sp.verify_time(d, d, d * 30000) - sp.verify_time(d, d, d * 20000)
        base = svc.iteration_time(d, d, d * 30000) - svc.iteration_time(d, d, d * 20000)
        assert grow == pytest.approx(base, rel=1e-9)
        kv = 2 * 8 * 128 * 2 * 32 * d * 10000  # bytes: K,V x heads x dim x 2 B x layers
        assert base == pytest.approx(kv / (h100.bandwidth * h100.efficiency.memory), rel=1e-9)


def test_proposer_costs(h100, m8):
    d, ctx = 16, 16 * 1200
    _, ngram = _timer(h100, m8, kind="ngram", k=4, acceptance=0.7, host_us_per_seq=0.0)
    bare = ngram.verify_time(d, d, ctx)
    _, host = _timer(h100, m8, kind="ngram", k=4, acceptance=0.7, host_us_per_seq=25.0)
    assert host.verify_time(d, d, ctx) - bare == pytest.approx(d * 25e-6)
    draft_card = load_model_card("llama-3.2-1b")
    _, draft = _timer(h100, m8, kind="draft", k=4, acceptance=0.7, draft_model=draft_card)
    assert draft.draft is not None and draft.draft.overhead.seconds(d) == 0.0
    step = draft.draft.iteration_time(d, d, ctx, 0.0, d)  # one decode step of the draft
    assert draft.verify_time(d, d, ctx) - bare == pytest.approx(4 * step, rel=1e-12)
    svc, eagle = _timer(h100, m8, kind="eagle", k=4, acceptance=0.7)
    extra = eagle.verify_time(d, d, ctx) - bare
    target_step = svc.iteration_time(d, d, ctx) - svc.cpu_overhead_s(d)
    # ~ one of 32 layers + the LM head per proposed token: far less than a target step
    assert 4 * target_step / 32 < extra < target_step


def test_engine_iteration_is_a_verify_step_over_E(h100, m8):
    svc, sp = _timer(h100, m8, kind="ngram", k=4, acceptance=0.7)
    e = (1 - 0.7**5) / 0.3
    assert sp.iteration_time(8, 8, 8000) == pytest.approx(sp.verify_time(8, 8, 8000) / e)
    # prefill only: no proposals, the target's time
    assert sp.iteration_time(512, 0, 0, 512 * 256.0) == pytest.approx(
        svc.iteration_time(512, 0, 0, 512 * 256.0)
    )
    # mixed: the chunk's share in full, the decodes' share over E
    full, dec = sp.verify_time(520, 8, 8000, 512 * 256.0), sp.verify_time(8, 8, 8000)
    mixed = sp.iteration_time(520, 8, 8000, 512 * 256.0)
    assert mixed == pytest.approx(full - dec * (1 - 1 / e))


def test_draft_memory_comes_out_of_the_kv_cache(h100, m8):
    draft = load_model_card("llama-3.2-1b")
    plain = memory_fit(h100, m8, "fp16", context=8192)
    st = _settings(kind="draft", k=4, acceptance=0.7, draft_model=draft)
    spec = memory_fit(h100, m8, "fp16", settings=st, context=8192)
    assert spec.weight_bytes - plain.weight_bytes == pytest.approx(
        weight_bytes_per_gpu(draft, "fp16")
    )
    # KV per token: target 2x32x8x128x2 + draft 2x16x8x64x2 bytes
    assert spec.kv_bytes_per_token == 131072 + 32768
    free = spec.usable_bytes - spec.weight_bytes
    assert spec.kv_tokens == int(free // (spec.kv_bytes_per_token * 16)) * 16
    assert (plain.kv_tokens - spec.kv_tokens) * 128 * 1024 / GIB > 2.3  # weights + KV share


# --- the estimate and the shipped scenario ------------------------------------------------


def test_estimate_shows_where_speculation_stops_paying(runner):
    args = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--precision", "fp8",
            "--batch", "1", "8", "256", "--prompt", "300", "--output", "250",
            "--spec-kind", "draft", "--draft-model", "llama-3.2-1b",
            "--spec-acceptance", "0.75,0.6,0.5,0.4"]  # fmt: skip
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    assert "spec ms/tok" in res.output and "stops paying at batch" in res.output
    rows = {int(r.split()[0]): r.split()[-1] for r in res.output.splitlines()
            if r.strip()[:1].isdigit() and r.strip().split()[-1].startswith("x")}  # fmt: skip
    assert float(rows[1][1:]) > 1.2 and float(rows[256][1:]) < 1.0
    bad = runner.invoke(main, [*args[:-2], "--spec-acceptance", "x"])
    assert bad.exit_code == 2 and "--spec-acceptance" in bad.output


def _without_speculation(s):
    eng = s.fleet.batching.engine.model_copy(update={"speculative": None})
    batching = s.fleet.batching.model_copy(update={"engine": eng})
    return s.model_copy(update={"fleet": s.fleet.model_copy(update={"batching": batching})})


def _tpot_p50(s, replicas: int) -> float:
    gpu = load_catalog()["h100-sxm"]
    m = run_replication(s, gpu, make_service(s, gpu, "fp8"), replicas, 0)
    assert not m.unstable
    return m.quantiles["tpot"][50.0]


def test_scenario_gains_at_low_load_and_loses_at_high_load():
    """20 replicas (2 req/s each, batches of ~3): TPOT falls ~1.3x; one replica (40 req/s,
    batches of ~200): TPOT rises, as vLLM measured (blog.vllm.ai/2024/10/17/spec-decode.html:
    up to 1.5x faster at 1 QPS, 1.4x slower at high QPS, Llama-3-70B + 0.5B draft, ShareGPT)."""
    s = load_scenario(SCENARIO)
    s = s.model_copy(update={"traffic": s.traffic.model_copy(update={"horizon_s": 30.0})})
    base = _without_speculation(s)
    low_spec, low_base = _tpot_p50(s, 20), _tpot_p50(base, 20)
    high_spec, high_base = _tpot_p50(s, 1), _tpot_p50(base, 1)
    assert low_spec < low_base / 1.2
    assert high_spec > high_base * 1.2


def test_speculative_runs_are_reproducible():
    s = load_scenario(SCENARIO)
    s = s.model_copy(update={"traffic": s.traffic.model_copy(update={"horizon_s": 10.0})})
    gpu = load_catalog()["h100-sxm"]
    runs = [run_replication(s, gpu, make_service(s, gpu, "fp8"), 2, 1) for _ in range(2)]
    assert runs[0].quantiles == runs[1].quantiles and runs[0].scalars == runs[1].scalars
