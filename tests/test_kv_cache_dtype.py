"""KV-cache precision apart from the weights (``fleet.batching.engine.kv_cache_dtype``)."""

from __future__ import annotations

import pytest

from capsim.cli import main
from capsim.errors import InputError
from capsim.load import load_catalog, load_model_card
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import memory_fit
from capsim.spec.catalog import GIB
from capsim.spec.engine import LLMEngineSettings, engine_settings


@pytest.fixture(scope="module")
def h100():
    return load_catalog()["h100-sxm"]


@pytest.fixture(scope="module")
def m8():
    return load_model_card("llama-3.1-8b")


@pytest.mark.parametrize("precision", ["fp16", "fp8", "int4"])
def test_fp8_kv_doubles_token_capacity_as_the_formula_says(h100, m8, precision):
    auto = memory_fit(h100, m8, precision, settings=LLMEngineSettings(), context=8192)
    fp8 = memory_fit(
        h100, m8, precision, settings=LLMEngineSettings(kv_cache_dtype="fp8"), context=8192
    )
    # the weights and the free memory do not change with the KV dtype
    assert fp8.weight_bytes == auto.weight_bytes and fp8.kv_cache_bytes == auto.kv_cache_bytes
    free = auto.usable_bytes - auto.weight_bytes
    for fit, kv_bytes in ((auto, 2), (fp8, 1)):
        per_token = 2 * m8.layers * m8.kv_heads * m8.dim_head * kv_bytes  # 2 x 32 x 8 x 128 x B
        assert fit.kv_bytes_per_token == per_token
        # capacity = free memory / per-token bytes, in whole blocks of 16 tokens
        assert fit.kv_tokens == int(free // (per_token * 16)) * 16
    assert fp8.kv_tokens / auto.kv_tokens == pytest.approx(2.0, abs=1e-4)
    assert auto.kv_cache_dtype == "auto (16-bit)" and fp8.kv_cache_dtype == "fp8"
    assert fp8.max_batch_memory >= 2 * auto.max_batch_memory


def test_int8_kv_is_also_one_byte(h100, m8):
    st = LLMEngineSettings(kv_cache_dtype="int8")
    assert memory_fit(h100, m8, "bf16", settings=st).kv_bytes_per_token == 65536


def test_fp8_weights_no_longer_imply_fp8_kv(h100, m8):
    fp16 = memory_fit(h100, m8, "fp16", context=8192)
    fp8 = memory_fit(h100, m8, "fp8", context=8192)
    assert fp8.kv_bytes_per_token == fp16.kv_bytes_per_token == 131072
    # the capacity gain of fp8 weights alone is only the weights they free: ~7 GiB / 128 KiB
    gain = (fp8.kv_tokens - fp16.kv_tokens) * 131072 / GIB
    assert gain == pytest.approx((fp16.weight_bytes - fp8.weight_bytes) / GIB, abs=0.01)


def test_attention_at_long_context_follows_the_kv_bytes(h100, m8):
    """Decode attention at long context is KV-read bound: halving the KV bytes halves it."""
    auto = LLMServiceModel(h100, m8, "fp16", settings=LLMEngineSettings())
    fp8 = LLMServiceModel(h100, m8, "fp16", settings=LLMEngineSettings(kv_cache_dtype="fp8"))
    ctx = [32768] * 16

    def attn_ms(svc):
        rows = {r["op"]: r for r in svc.breakdown(decode=ctx).to_rows()}
        assert rows["attn_decode"]["bound"] == "memory"
        return rows["attn_decode"]["time_ms"]

    a, f = attn_ms(auto), attn_ms(fp8)
    # bytes: KV 2 x 8 x 128 x B per token and layer, plus 16-bit queries (small at 32k)
    kv = 2 * 8 * 128 * 32768 * 16
    q = 2 * 16 * 32 * 128 * 2
    overhead = 32 * h100.kernel_overhead_us * 1e-3
    assert (f - overhead) / (a - overhead) == pytest.approx((kv * 1 + q) / (kv * 2 + q), rel=1e-9)
    # and so the whole decode step is faster (the fast path agrees with the breakdown)
    step = {s: s.iteration_time(16, 16, sum(ctx), 0.0, 16) for s in (auto, fp8)}
    assert step[fp8] < step[auto] - (a - f) * 1e-3 * 0.99
    assert step[fp8] == pytest.approx(fp8.breakdown(decode=ctx).total_s, rel=1e-12)


def test_bad_kv_cache_dtype_is_a_clear_input_error():
    with pytest.raises(InputError) as exc:
        engine_settings({"kv_cache_dtype": "fp4"})
    text = str(exc.value)
    assert "fleet.batching.engine.kv_cache_dtype" in text
    assert "'auto', 'fp8' or 'int8'" in text and "fp4" in text


def test_estimate_shows_the_kv_dtype_and_capacity(runner):
    args = ["estimate", "--model", "llama-3.1-8b", "--gpu", "h100-sxm", "--precision", "fp8",
            "--batch", "8"]  # fmt: skip
    auto = runner.invoke(main, args)
    fp8 = runner.invoke(main, [*args, "--kv-cache-dtype", "fp8"])
    assert auto.exit_code == 0 and fp8.exit_code == 0, auto.output + fp8.output
    assert "128 KiB/token, KV cache auto (16-bit)" in auto.output
    assert "64 KiB/token, KV cache fp8" in fp8.output
    bad = runner.invoke(main, [*args, "--kv-cache-dtype", "fp4"])
    assert bad.exit_code == 2
