"""The whole-model LLM step and conv2d in torch on the CPU, and the gloo all-reduce path."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from calibrate import Unsupported, kernels_llm  # noqa: E402
from calibrate.backends.torch_backend import TorchBackend  # noqa: E402
from calibrate.collectives import inner_calls, measure_allreduce  # noqa: E402
from calibrate.plan import TINY_LLM  # noqa: E402


def test_decode_with_gqa_cache_matches_prefill() -> None:
    """Prefill of S tokens and (prefill of S-1, then one decode step) give the same logits."""
    s = TINY_LLM
    gen = torch.Generator().manual_seed(1)
    cpu = torch.device("cpu")
    w = kernels_llm.init_llm(s, torch.float64, cpu, gen)
    ids = torch.randint(0, s.vocab, (2, 9), generator=gen)
    full = kernels_llm.prefill_step(ids, w, kernels_llm.init_cache(s, 2, 9, torch.float64, cpu, gen), s)  # fmt: skip
    cache = kernels_llm.init_cache(s, 2, 9, torch.float64, cpu, gen)
    kernels_llm.prefill_step(ids[:, :8], w, cache, s)
    step = kernels_llm.decode_step(ids[:, 8], w, cache, s, pos=8)
    assert full.shape == (2, s.vocab)
    torch.testing.assert_close(step, full, rtol=1e-9, atol=1e-9)


def test_conv_and_llm_ops_on_cpu() -> None:
    be = TorchBackend("cpu", seed=0)
    op = be.make_conv2d(2, 16, 32, 14, 3, 2, 1, "NCHW", "fp32")
    with op.entered():
        y = op.fn()
    assert y.shape == (2, 32, 7, 7) and "NCHW" in op.impl
    dw = be.make_conv2d(1, 16, 16, 8, 3, 1, 16, "NCHW", "fp32")
    with dw.entered():
        assert dw.fn().shape == (1, 16, 8, 8)
    op = be.make_llm_step(TINY_LLM, 3, 16, "decode", "fp32", graph=False)
    with op.entered():
        assert op.fn().shape == (3, TINY_LLM.vocab)
    with pytest.raises(Unsupported, match="CUDA graphs need a CUDA device"):
        be.make_llm_step(TINY_LLM, 1, 16, "decode", "fp32", graph=True)
    with pytest.raises(Unsupported, match="needs at least 2 GPUs"):
        be.make_allreduce(1024, (1024,))
    be.close()


@pytest.mark.slow
def test_gloo_allreduce_in_two_processes(tmp_path) -> None:
    stats = measure_allreduce((8, 4096), 2, "gloo", str(tmp_path))
    assert set(stats) == {8, 4096}
    for st in stats.values():
        assert 0 < st.min_s <= st.median_s < 0.5 and st.repeats >= 5
    assert inner_calls(8) == 20 and inner_calls(1 << 30) == 1
