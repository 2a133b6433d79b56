"""Attention and a transformer block written against the NumPy array API.

``xp`` is the array module: ``numpy`` for the CPU backend, ``cupy`` for the CuPy backend. Nothing
here imports either; the caller passes it in.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any


def softmax(xp: Any, s: Any) -> Any:
    """Numerically stable softmax over the last axis."""
    e = xp.exp(s - s.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def causal_mask(xp: Any, seq_len: int, dtype: Any) -> Any:
    """Additive mask: 0 on and below the diagonal, -inf above it."""
    upper = xp.triu(xp.ones((seq_len, seq_len), dtype=bool), k=1)
    return xp.where(upper, -xp.inf, 0.0).astype(dtype)


def attention(xp: Any, q: Any, k: Any, v: Any, mask: Any = None) -> Any:
    """softmax(q.K^T / sqrt(d) + mask).V over (batch, heads, tokens, head_dim) arrays."""
    s = xp.matmul(q, k.swapaxes(-1, -2)) * (1.0 / math.sqrt(q.shape[-1]))
    if mask is not None:
        s = s + mask
    return xp.matmul(softmax(xp, s), v)


def rmsnorm(xp: Any, x: Any, weight: Any, eps: float = 1e-6) -> Any:
    """Root-mean-square normalisation over the last axis."""
    return x * (1.0 / xp.sqrt((x * x).mean(axis=-1, keepdims=True) + eps)) * weight


def silu(xp: Any, x: Any) -> Any:
    """x * sigmoid(x)."""
    return x / (1.0 + xp.exp(-x))


@dataclass
class BlockWeights:
    """Weights of a pre-norm decoder block (Llama-style, no biases)."""

    norm1: Any
    wqkv: Any
    wo: Any
    norm2: Any
    w_gate: Any
    w_up: Any
    w_down: Any


def init_block(xp: Any, normal: Any, hidden: int, ffn: int, dtype: Any) -> BlockWeights:
    """Random weights scaled by 1/sqrt(fan_in); ``normal(shape)`` draws standard normals.

    Weights are stored (fan_out, fan_in) as in ``nn.Linear`` and as the GEMM rows' ``W[n, k]``,
    so the block's GEMMs are the kernels the GEMM sweep measures.
    """

    def linear(fan_in: int, fan_out: int) -> Any:
        return (normal((fan_out, fan_in)) * (1.0 / math.sqrt(fan_in))).astype(dtype)

    ones = xp.ones(hidden, dtype=dtype)
    return BlockWeights(
        norm1=ones,
        wqkv=linear(hidden, 3 * hidden),
        wo=linear(hidden, hidden),
        norm2=ones.copy(),
        w_gate=linear(hidden, ffn),
        w_up=linear(hidden, ffn),
        w_down=linear(ffn, hidden),
    )


def linear(xp: Any, x: Any, weight: Any) -> Any:
    """x @ weight.T over the last axis (weight stored (out, in)) as ONE GEMM of
    (batch * seq_len) rows, as torch's ``F.linear`` and serving engines do (``matmul`` of a
    3-D array would run one GEMM per sequence)."""
    out = xp.matmul(x.reshape(-1, x.shape[-1]), weight.T)
    return out.reshape(*x.shape[:-1], weight.shape[0])


def block_forward(xp: Any, x: Any, w: BlockWeights, heads: int, mask: Any) -> Any:
    """One block over x of shape (batch, seq_len, hidden) with causal attention."""
    batch, seq_len, hidden = x.shape
    head_dim = hidden // heads
    h = rmsnorm(xp, x, w.norm1)
    qkv = linear(xp, h, w.wqkv).reshape(batch, seq_len, 3, heads, head_dim)
    q, k, v = qkv.transpose(2, 0, 3, 1, 4)
    a = attention(xp, q, k, v, mask).transpose(0, 2, 1, 3).reshape(batch, seq_len, hidden)
    x = x + linear(xp, a, w.wo)
    h = rmsnorm(xp, x, w.norm2)
    gated = silu(xp, linear(xp, h, w.w_gate)) * linear(xp, h, w.w_up)
    return x + linear(xp, gated, w.w_down)
