"""A whole decoder-only model in PyTorch (GQA, KV cache), for ``forward_llm_step`` rows.

Built from the block of :mod:`calibrate.kernels_torch` (same RMSNorm, fused QKV projection,
gated SiLU MLP, weights stored as in ``nn.Linear``), extended to grouped-query attention and a
KV cache, with an embedding lookup before and a final norm and an untied LM head after. Rotary
position embeddings are left out (element-wise work, not counted in the FLOPs either).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .kernels_torch import rmsnorm
from .work import LlmShape


@dataclass
class LlmLayer:
    """Weights of one layer, stored (out, in) as in ``nn.Linear``."""

    norm1: torch.Tensor
    wqkv: torch.Tensor
    wo: torch.Tensor
    norm2: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor


@dataclass
class LlmWeights:
    """All weights of the model."""

    embed: torch.Tensor
    layers: list[LlmLayer]
    norm: torch.Tensor
    lm_head: torch.Tensor


def init_llm(
    s: LlmShape, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> LlmWeights:
    """Random weights (normal, scaled by 1/sqrt(fan_in)) drawn from ``gen`` in ``dtype``."""

    def linear(fan_out: int, fan_in: int) -> torch.Tensor:
        w = torch.empty(fan_out, fan_in, device=device, dtype=dtype)
        return w.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=gen)

    def ones() -> torch.Tensor:
        return torch.ones(s.hidden, device=device, dtype=dtype)

    qkv = (s.heads + 2 * s.kv_heads) * s.head_dim
    layers = [
        LlmLayer(
            ones(),
            linear(qkv, s.hidden),
            linear(s.hidden, s.heads * s.head_dim),
            ones(),
            linear(s.ffn, s.hidden),
            linear(s.ffn, s.hidden),
            linear(s.hidden, s.ffn),
        )
        for _ in range(s.layers)
    ]
    embed = torch.empty(s.vocab, s.hidden, device=device, dtype=dtype).normal_(generator=gen)
    return LlmWeights(embed, layers, ones(), linear(s.vocab, s.hidden))


def init_cache(
    s: LlmShape, batch: int, seq_len: int, dtype: torch.dtype, device: torch.device, gen
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per layer, K and V caches of shape (batch, kv_heads, seq_len, head_dim), random."""
    shape = (batch, s.kv_heads, seq_len, s.head_dim)
    return [
        tuple(torch.empty(shape, device=device, dtype=dtype).normal_(generator=gen) for _ in "kv")
        for _ in range(s.layers)
    ]


def _mlp(x: torch.Tensor, w: LlmLayer) -> torch.Tensor:
    h = rmsnorm(x, w.norm2)
    return x + F.linear(F.silu(F.linear(h, w.w_gate)) * F.linear(h, w.w_up), w.w_down)


def _split_qkv(h: torch.Tensor, w: LlmLayer, s: LlmShape) -> tuple[torch.Tensor, ...]:
    """(batch, tokens, hidden) -> q (b, heads, t, d), k and v (b, kv_heads, t, d)."""
    b, t, _ = h.shape
    qkv = F.linear(h, w.wqkv)
    q, k, v = qkv.split([s.heads * s.head_dim, *(2 * [s.kv_heads * s.head_dim])], dim=-1)
    return tuple(
        x.view(b, t, n, s.head_dim).transpose(1, 2) for x, n in ((q, s.heads), (k, s.kv_heads), (v, s.kv_heads))
    )  # fmt: skip


def decode_step(
    tokens: torch.Tensor, w: LlmWeights, cache: list, s: LlmShape, pos: int
) -> torch.Tensor:
    """One new token per sequence (``tokens``: (batch,) ids) written at cache position ``pos``,
    attending to cache positions 0..pos; returns the logits (batch, vocab).

    Grouped-query decode without copying the cache: the ``heads / kv_heads`` query heads of a
    group are laid out as a short query sequence against their group's K and V (non-causal,
    as every one of them sees the whole cache).
    """
    batch = tokens.shape[0]
    group = s.heads // s.kv_heads
    x = F.embedding(tokens, w.embed).unsqueeze(1)  # (b, 1, hidden)
    for layer, (kc, vc) in zip(w.layers, cache, strict=True):
        q, k, v = _split_qkv(rmsnorm(x, layer.norm1), layer, s)
        kc[:, :, pos : pos + 1].copy_(k)
        vc[:, :, pos : pos + 1].copy_(v)
        qg = q.reshape(batch, s.kv_heads, group, s.head_dim)
        a = F.scaled_dot_product_attention(qg, kc[:, :, : pos + 1], vc[:, :, : pos + 1])
        x = x + F.linear(a.reshape(batch, 1, s.heads * s.head_dim), layer.wo)
        x = _mlp(x, layer)
    return F.linear(rmsnorm(x[:, -1], w.norm), w.lm_head)


def _causal_gqa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, group: int) -> torch.Tensor:
    """Causal SDPA with grouped K/V: ``enable_gqa`` when this torch has it, else K/V repeated."""
    try:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=group > 1)
    except TypeError:  # torch < 2.5
        k, v = (x.repeat_interleave(group, dim=1) for x in (k, v))
        return F.scaled_dot_product_attention(q, k, v, is_causal=True)


def prefill_step(tokens: torch.Tensor, w: LlmWeights, cache: list, s: LlmShape) -> torch.Tensor:
    """A whole prompt per sequence (``tokens``: (batch, seq_len) ids): causal attention, K and
    V written into the cache; returns the logits of each sequence's last token (batch, vocab)."""
    batch, seq = tokens.shape
    x = F.embedding(tokens, w.embed)
    for layer, (kc, vc) in zip(w.layers, cache, strict=True):
        q, k, v = _split_qkv(rmsnorm(x, layer.norm1), layer, s)
        kc[:, :, :seq].copy_(k)
        vc[:, :, :seq].copy_(v)
        a = _causal_gqa(q, k, v, s.heads // s.kv_heads)
        x = x + F.linear(a.transpose(1, 2).reshape(batch, seq, s.heads * s.head_dim), layer.wo)
        x = _mlp(x, layer)
    return F.linear(rmsnorm(x[:, -1], w.norm), w.lm_head)
