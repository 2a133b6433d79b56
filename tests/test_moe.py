"""Mixture-of-experts cards, expert reads per step and expert parallelism, against formulas and
published figures."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.load import load_catalog, load_model_card
from capsim.service.comm import all_to_all_seconds
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import (
    kv_bytes_per_token,
    memory_fit,
    parallelism_problem,
    weight_bytes_per_gpu,
)
from capsim.service.moe import (
    expected_distinct_experts,
    param_count,
    simulate_distinct_experts,
)
from capsim.spec.catalog import GIB

MOE_CARDS = ["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3", "gpt-oss-120b"]


@pytest.mark.parametrize("name", MOE_CARDS)
def test_total_and_active_params_match_published(name):
    m = load_model_card(name)
    assert m.published_params and m.published_active_params
    assert param_count(m) == pytest.approx(m.published_params, rel=0.02)
    active = param_count(m, active=True)
    if m.published_active_excludes_embedding:
        active -= m.vocab_size * m.hidden_size
    assert active == pytest.approx(m.published_active_params, rel=0.02)


def test_mixtral_params_by_hand():
    # 32 x (attention 41,943,040 + 8 experts x 3 x 4096 x 14336 + router 4096 x 8 + 2 norms)
    # + 2 x 32000 x 4096 + final norm
    layer = 41_943_040 + 8 * 3 * 4096 * 14336 + 4096 * 8 + 2 * 4096
    assert param_count(load_model_card("mixtral-8x7b")) == 32 * layer + 2 * 32000 * 4096 + 4096


@pytest.mark.parametrize("n", [1, 2, 7, 33, 500])
@pytest.mark.parametrize("experts,k", [(8, 2), (128, 8), (256, 8)])
def test_uniform_distinct_experts_formula(n, experts, k):
    want = experts * (1 - (1 - k / experts) ** n)
    assert expected_distinct_experts(n, experts, k) == pytest.approx(want, rel=1e-12)


@pytest.mark.parametrize(
    "experts,k,skew", [(128, 8, 0.0), (128, 8, 1.0), (256, 8, 0.8), (8, 2, 0.0), (8, 2, 1.0)]
)
@pytest.mark.parametrize("n", [1, 4, 16, 64])
def test_distinct_experts_against_monte_carlo(experts, k, skew, n):
    mc = simulate_distinct_experts(n, experts, k, skew, np.random.default_rng(2026), 1000)
    # uniform: exact up to Monte Carlo noise (< 1.5%); skewed: the inclusion approximation,
    # within 1.5% (E=128/256) or 4% (E=8)
    tol = 0.015 if skew == 0 else (0.04 if experts == 8 else 0.015)
    assert expected_distinct_experts(n, experts, k, skew) == pytest.approx(mc, rel=tol)


def test_skew_reads_fewer_experts():
    assert expected_distinct_experts(16, 128, 8, 1.0) < 0.75 * expected_distinct_experts(16, 128, 8)


def test_decode_reads_few_experts_at_small_batch_and_all_at_large():
    gpu, m = load_catalog()["h100-sxm"], load_model_card("qwen3-30b-a3b")
    svc = LLMServiceModel(gpu, m, "fp16", timer=None)
    expert_bytes = 3 * 2048 * 768 * 2.0  # one expert's weights at fp16

    def reads(batch):
        ops = {op.name: op for op in svc._token_ops(float(batch))}
        up, down = ops["expert_up"], ops["expert_down"]
        rows = batch * 8
        act = rows * (2048 * 2 + 2 * 768 * 2) + rows * (768 * 2 + 2048 * 2)
        return (up.bytes + down.bytes - act) / expert_bytes

    assert reads(1) == pytest.approx(8, rel=1e-9)
    assert reads(512) == pytest.approx(128, rel=1e-6)
    small, large = (
        svc.iteration_time(1, 1, 1000, 0, 1),
        svc.iteration_time(512, 512, 512000, 0, 512),
    )
    assert large > 3 * small


def test_memory_holds_all_experts():
    m = load_model_card("mixtral-8x7b")
    one = weight_bytes_per_gpu(m, "fp16")
    assert one == pytest.approx(param_count(m) * 2.0, rel=1e-3)
    # tp=4: every GPU holds a quarter, whether experts are split (ep=4) or sliced (ep=1)
    assert weight_bytes_per_gpu(m, "fp16", 4, 4) == pytest.approx(one / 4, rel=0.01)
    assert weight_bytes_per_gpu(m, "fp16", 4, 4) == pytest.approx(
        weight_bytes_per_gpu(m, "fp16", 4, 1), rel=1e-3
    )


def test_mla_kv_cache_is_the_latent():
    m = load_model_card("deepseek-v3")
    assert kv_bytes_per_token(m, "fp16") == 61 * (512 + 64) * 2.0
    assert kv_bytes_per_token(m, "fp16", 8) == 61 * (512 + 64) * 2.0  # replicated across tp
    fit = memory_fit(load_catalog()["h200-sxm"], m, "fp8", 8, ep=8, context=8192)
    assert fit.fits, fit.reason
    assert fit.weight_bytes / GIB == pytest.approx(671e9 / 8 / GIB, rel=0.05)


def test_all_to_all_cost_formula():
    gpu, m = load_catalog()["h100-sxm"], load_model_card("mixtral-8x7b")
    svc = LLMServiceModel(gpu, m, "fp16", tp=4, ep=4)
    t = 64
    b = svc.breakdown(decode=[500] * t)
    line = next(ln for ln in b.lines if ln.op.name == "all_to_all")
    ic = gpu.interconnect
    payload = t * 2 * 4096 * 2.0  # tokens x k x hidden x activation bytes
    one = (
        ic.latency_us * 1e-6
        + ic.hop_us * 1e-6
        + 3 / 4 * payload / (ic.bandwidth_gb_s * 1e9 * ic.efficiency)
    )
    assert line.count == 2 * 32  # dispatch and combine per MoE layer
    assert line.op.time_s == pytest.approx(one, rel=1e-12)
    assert all_to_all_seconds(ic, payload, 4) == pytest.approx(one, rel=1e-12)
    # the fast path agrees with the breakdown
    fast = svc.iteration_time(t, t, 500 * t, 0.0, t)
    assert b.total_s == pytest.approx(fast, rel=1e-9)


def test_ep_problems():
    gpu = load_catalog()["h100-sxm"]
    assert "dense" in parallelism_problem(gpu, load_model_card("llama-3.1-8b"), 2, 2)
    assert "divide tp" in parallelism_problem(gpu, load_model_card("mixtral-8x7b"), 2, 4)
    assert parallelism_problem(gpu, load_model_card("mixtral-8x7b"), 8, 8) is None


def test_planner_searches_tp_by_ep():
    from capsim.load import load_scenario
    from capsim.planning.static import candidates

    s = load_scenario("scenarios/moe.yaml")
    pairs = {(c.gpu, c.tp, c.ep) for c in candidates(s)}
    # ep divides tp: (1,1), (2,1), (2,2), (4,1), (4,2), (4,4) on each card
    assert {(t, e) for g, t, e in pairs if g == "l4"} == {
        (1, 1), (2, 1), (2, 2), (4, 1), (4, 2), (4, 4)
    }  # fmt: skip
    dense = s.model_copy(update={"model": load_model_card("llama-3.1-8b")})
    assert {c.ep for c in candidates(dense)} == {1}


def test_expert_parallel_service_fits_and_labels():
    from capsim.evaluate import Config, make_service
    from capsim.load import load_scenario

    s = load_scenario("scenarios/moe.yaml")
    svc = make_service(s, load_catalog()["l4"], "fp8", 4, 4)
    assert svc.memory_fit().fits
    assert Config("l4", "fp8", 2, 4, 4).label() == "2 x l4 fp8 tp4 ep4"
