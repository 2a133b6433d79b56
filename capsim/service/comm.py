"""Operator names, the op-timer protocol and the ring all-reduce / gather time of tensor parallelism."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capsim.service.roofline import OpCost, OpTime, roofline_op_time
from capsim.spec.catalog import GPU, Interconnect

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
    "router",
    "expert_up",
    "expert_act",
    "expert_down",
    "shared_up",
    "shared_act",
    "shared_down",
    "all_to_all",
    "all_reduce",
    "lm_head",
    "logits_gather",
    "sampler",
)


COMM_OPS = frozenset({"all_reduce", "logits_gather", "all_to_all"})


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
    ep: int = 1

    @property
    def ranks(self) -> int:
        """GPUs a collective of this operator spans: ``ep`` for the expert all-to-all, else ``tp``."""
        return self.ep if self.op == "all_to_all" else self.tp


#: An op timer: the time of one call of one operator on one GPU (of a ``tp``-way replica).
OpTimer = Callable[[GPU, OpCost, OpContext], OpTime]


def collective_seconds(ic: Interconnect, op: str, nbytes, ranks: int):
    """Time of one ring collective of ``nbytes`` (float or array) over ``ranks`` GPUs.

    The alpha-beta model: alpha (``latency_us``, the fixed cost of a call) plus one
    ``hop_us`` per ring step (2(p-1) for an all-reduce, p-1 for a gather), plus the bytes each
    GPU sends, 2(p-1)/p x n for an all-reduce and (p-1)/p x n for a gather, at the link's
    ``bandwidth x efficiency``. Wider than a node (``ranks > max_gpus`` with a ``network``):
    hierarchical -- reduce inside each node over the GPU link while the node's NICs carry
    2(N-1)/N x n / g per GPU between the N nodes of g GPUs (whichever is slower), with the
    network's alpha and its hops. An ``all_to_all`` (MoE dispatch or combine of ``nbytes`` per
    GPU) is one alpha and one hop plus the (p-1)/p share that leaves the GPU. One rank costs
    nothing.

    >>> from capsim.spec.catalog import Interconnect
    >>> ic = Interconnect(kind="nvlink", bandwidth_gb_s=450, latency_us=10, efficiency=0.8)
    >>> round(collective_seconds(ic, "all_reduce", 1e6, 2) * 1e6, 3)  # 10 + 2 x 0.6 + 1e6/360e3
    13.978
    >>> round(collective_seconds(ic, "all_reduce", 8192, 8) * 1e6, 2)  # latency-bound
    18.44
    >>> collective_seconds(ic, "all_reduce", 1e6, 1)
    0.0
    >>> round(collective_seconds(ic, "all_to_all", 1e6, 4) * 1e6, 3)  # 10 + 0.6 + 0.75e6/360e3
    12.683
    """
    if ranks <= 1:
        return 0.0 * nbytes
    if op == "all_to_all":
        return all_to_all_seconds(ic, nbytes, ranks)
    ar = op == "all_reduce"
    steps = (2.0 if ar else 1.0) * (ranks - 1)
    link = ic.bandwidth_gb_s * 1e9 * ic.efficiency
    net = ic.network
    if ranks <= ic.max_gpus or net is None:
        return ic.latency_us * 1e-6 + steps * ic.hop_us * 1e-6 + steps / ranks * nbytes / link
    g = ic.max_gpus
    nodes = -(-ranks // g)
    inside = (2.0 if ar else 1.0) * (g - 1) / g * nbytes / link
    across = (2.0 if ar else 1.0) * (nodes - 1) / nodes * nbytes / g
    across = across / (net.bandwidth_gb_s * 1e9 * net.efficiency)
    hops = (2.0 if ar else 1.0) * ((g - 1) * ic.hop_us + (nodes - 1) * net.hop_latency_us)
    return net.latency_us * 1e-6 + hops * 1e-6 + np.maximum(inside, across)


def all_to_all_seconds(ic: Interconnect, nbytes, ranks: int):
    """Time of one all-to-all in which each of ``ranks`` GPUs holds ``nbytes`` and sends the
    (ranks-1)/ranks of it bound for the others: alpha + one hop + bytes at the link's
    ``bandwidth x efficiency`` (pairwise transfers run concurrently; across nodes the
    network's bandwidth and alpha).

    >>> from capsim.spec.catalog import Interconnect
    >>> ic = Interconnect(kind="nvlink", bandwidth_gb_s=450, latency_us=10, efficiency=0.8)
    >>> round(all_to_all_seconds(ic, 3.6e6, 2) * 1e6, 3)  # 10 + 0.6 + 1.8e6 / 360e3
    15.6
    """
    if ranks <= 1:
        return 0.0 * nbytes
    sent = (ranks - 1) / ranks * nbytes
    net = ic.network
    if ranks > ic.max_gpus and net is not None:
        bw = net.bandwidth_gb_s * 1e9 * net.efficiency
        return net.latency_us * 1e-6 + net.hop_latency_us * 1e-6 + sent / bw
    link = ic.bandwidth_gb_s * 1e9 * ic.efficiency
    return ic.latency_us * 1e-6 + ic.hop_us * 1e-6 + sent / link


def comm_op_time(gpu: GPU, op: str, nbytes: float, tp: int) -> OpTime:
    """:func:`collective_seconds` of one TP collective as an :class:`OpTime`.

    >>> from capsim.load import load_catalog
    >>> t = comm_op_time(load_catalog()["h100-sxm"], "all_reduce", 1e6, 2)
    >>> t.time_s > t.overhead_s > 0
    True
    """
    ic = gpu.interconnect
    total = float(collective_seconds(ic, op, nbytes, tp))
    latency = float(collective_seconds(ic, op, 0.0, tp))
    return OpTime(
        op, total, 0.0, total - latency, latency, "overhead" if latency > total / 2 else "memory",
        f"{'pairwise' if op == 'all_to_all' else 'ring'} {op} over {ic.kind}: alpha {ic.latency_us:g} us + {ic.hop_us:g} us/step",
    )  # fmt: skip


def default_op_timer(gpu: GPU, cost: OpCost, ctx: OpContext) -> OpTime:
    """Roofline for compute and memory operators, alpha-beta ring collectives for communication."""
    if ctx.op in COMM_OPS:
        return comm_op_time(gpu, ctx.op, cost.bytes, ctx.ranks)
    return roofline_op_time(gpu, cost)
