"""Operator names, the op-timer protocol and the ring all-reduce / gather time of tensor parallelism."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from capsim.service.roofline import OpCost, OpTime, roofline_op_time
from capsim.spec.catalog import GPU

#: Operator names, as an op timer sees them in :attr:`OpContext.op`. Vidur's profiler calls
#: qkv_proj ``attn_pre_proj``, o_proj ``attn_post_proj``, mlp_up ``mlp_up_proj`` (gate and up
#: fused) and mlp_down ``mlp_down_proj``.
OP_NAMES = (
    "embed",
    "norm",
    "qkv_proj",
    "rope_kv_write",
    "attn_prefill",
    "attn_decode",
    "o_proj",
    "mlp_up",
    "mlp_act",
    "mlp_down",
    "all_reduce",
    "lm_head",
    "logits_gather",
    "sampler",
)


COMM_OPS = frozenset({"all_reduce", "logits_gather"})


@dataclass(frozen=True, slots=True)
class OpContext:
    """What an op timer may need besides the cost: which operator, at what size.

    ``num_tokens`` are the rows through the operator (for a GEMM, ``m``); ``n`` and ``k`` are
    the GEMM's other dimensions on this GPU (0 for other operators). For attention,
    ``num_seqs`` and ``kv_tokens`` (KV tokens read) and ``attn_work`` (prefill: sum of chunk x
    (context_before + chunk / 2); decode: = kv_tokens).
    """

    op: str
    num_tokens: int
    tp: int
    m: int = 0
    n: int = 0
    k: int = 0
    num_seqs: int = 0
    kv_tokens: float = 0.0
    attn_work: float = 0.0


#: An op timer: the time of one call of one operator on one GPU (of a ``tp``-way replica).
OpTimer = Callable[[GPU, OpCost, OpContext], OpTime]


def comm_op_time(gpu: GPU, op: str, nbytes: float, tp: int) -> OpTime:
    """Ring collective over the card's interconnect for a message of ``nbytes``.

    all-reduce moves 2(tp-1)/tp of the message per GPU, a gather (tp-1)/tp; each at the link's
    per-direction bandwidth x efficiency, plus a fixed latency.

    >>> from capsim.load import load_catalog
    >>> t = comm_op_time(load_catalog()["h100-sxm"], "all_reduce", 1e6, 2)
    >>> round(t.time_s * 1e6, 2)   # 1 MB / (450 GB/s x 0.7) + 5 us
    8.17
    """
    ic = gpu.interconnect
    share = (2.0 if op == "all_reduce" else 1.0) * (tp - 1) / tp
    transfer = share * nbytes / (ic.bandwidth_gb_s * 1e9 * ic.efficiency)
    latency = ic.latency_us * 1e-6
    return OpTime(
        op, transfer + latency, 0.0, transfer, latency, "memory", f"ring {op} over {ic.kind}"
    )


def default_op_timer(gpu: GPU, cost: OpCost, ctx: OpContext) -> OpTime:
    """Roofline for compute and memory operators, ring collectives for communication."""
    if ctx.op in COMM_OPS:
        return comm_op_time(gpu, ctx.op, cost.bytes, ctx.tp)
    return roofline_op_time(gpu, cost)
