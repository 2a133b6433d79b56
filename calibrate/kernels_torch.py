"""The transformer block in PyTorch (imported only by the torch backend)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class TorchBlock:
    """Weights of a pre-norm decoder block, stored (out, in) as in ``nn.Linear``."""

    norm1: torch.Tensor
    wqkv: torch.Tensor
    wo: torch.Tensor
    norm2: torch.Tensor
    w_gate: torch.Tensor
    w_up: torch.Tensor
    w_down: torch.Tensor


def init_block(
    hidden: int, ffn: int, dtype: torch.dtype, device: torch.device, gen: torch.Generator
) -> TorchBlock:
    """Random weights scaled by 1/sqrt(fan_in), drawn from ``gen`` (no global RNG)."""

    def linear(fan_out: int, fan_in: int) -> torch.Tensor:
        w = torch.randn(fan_out, fan_in, generator=gen, device=device, dtype=torch.float32)
        return (w / math.sqrt(fan_in)).to(dtype)

    ones = torch.ones(hidden, device=device, dtype=dtype)
    return TorchBlock(
        norm1=ones,
        wqkv=linear(3 * hidden, hidden),
        wo=linear(hidden, hidden),
        norm2=ones.clone(),
        w_gate=linear(ffn, hidden),
        w_up=linear(ffn, hidden),
        w_down=linear(hidden, ffn),
    )


def rmsnorm(x: torch.Tensor, weight: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Root-mean-square normalisation over the last dimension (computed in fp32)."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps)
    return normed.to(x.dtype) * weight


def block_forward(x: torch.Tensor, w: TorchBlock, heads: int) -> torch.Tensor:
    """One block over x of shape (batch, seq_len, hidden) with causal SDPA attention."""
    batch, seq_len, hidden = x.shape
    head_dim = hidden // heads
    h = rmsnorm(x, w.norm1)
    qkv = F.linear(h, w.wqkv).view(batch, seq_len, 3, heads, head_dim)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    x = x + F.linear(a.transpose(1, 2).reshape(batch, seq_len, hidden), w.wo)
    h = rmsnorm(x, w.norm2)
    gated = F.silu(F.linear(h, w.w_gate)) * F.linear(h, w.w_up)
    return x + F.linear(gated, w.w_down)
