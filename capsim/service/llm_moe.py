"""The MoE layer's operators of one engine iteration: router, expert GEMMs (grouped), shared
experts and the expert-parallel all-to-all.

A step of ``t`` tokens routes ``t x k`` token copies. The busiest expert-parallel rank computes
its share of them (:func:`~capsim.service.moe.busiest_rank_share`) and reads the weights of the
distinct experts they touch (:func:`~capsim.service.moe.expected_distinct_experts`), each a
``1 / (tp / ep)`` slice. So a decode step of a few sequences reads a few experts and one of
hundreds of sequences reads them all: the reason MoE decode is cheap at small batch only.
"""

from __future__ import annotations

from capsim.service.llm_memory import Shard
from capsim.service.llm_ops import Num, _Op
from capsim.service.moe import busiest_rank_share, expected_distinct_experts

#: Operators whose weight reads follow the distinct experts of the step (not linear in tokens).
EXPERT_READ_OPS = frozenset({"expert_up", "expert_down"})


def moe_ops(s: Shard, t: Num, w: float, a: float, o: float, fmt: str) -> list[_Op]:
    """Router, expert up / activation / down, shared experts and (``ep > 1``) the all-to-all
    dispatch and combine, per MoE layer, for ``t`` new tokens on the busiest GPU.

    The all-to-all moves ``t x k x hidden x act bytes`` per GPU each way, of which the
    (ep-1)/ep bound for other GPUs is timed on the link (:func:`~capsim.service.comm.all_to_all_seconds`).

    >>> from capsim.load import load_model_card
    >>> s = Shard.of(load_model_card("qwen3-30b-a3b"), 1)
    >>> up = {op.name: op for op in moe_ops(s, 1.0, 2.0, 2.0, 2.0, "fp16")}["expert_up"]
    >>> up.bytes / (2 * 768 * 2048 * 2.0)   # one token reads its 8 experts (+ its activations)
    8.00...
    """
    L, h, k = s.moe_layers, s.hidden, s.top_k
    distinct = expected_distinct_experts(t, s.experts, k, s.skew, s.ep)
    rows = t * k * busiest_rank_share(s.experts, k, s.skew, s.ep)
    f = s.expert_ffn
    up = 2 * f if s.gated else f
    ops = [
        _Op("router", L, 2.0 * t * s.experts * h, s.experts * h * w + t * h * a, fmt, 1),
        _Op("expert_up", L, 2.0 * rows * up * h,
            distinct * up * h * w + rows * (h * a + up * o), fmt, 1, up, h),
        _Op("expert_act", L, 0.0, rows * (up * o + f * a), fmt),
        _Op("expert_down", L, 2.0 * rows * h * f,
            distinct * h * f * w + rows * (f * a + h * o), fmt, 1, h, f),
    ]  # fmt: skip
    if s.shared_ffn:
        g = s.shared_ffn
        sup = 2 * g if s.gated else g
        ops += [
            _Op("shared_up", L, 2.0 * t * sup * h, sup * h * w + t * (h * a + sup * o), fmt, 1,
                sup, h),
            _Op("shared_act", L, 0.0, t * (sup * o + g * a), fmt),
            _Op("shared_down", L, 2.0 * t * h * g, h * g * w + t * (g * a + h * o), fmt, 1, h, g),
        ]  # fmt: skip
    if s.ep > 1:
        ops.append(_Op("all_to_all", 2 * L, 0.0, t * k * h * a, fmt))
    return ops


def moe_summary(s: Shard, batch: int, top: int) -> str:
    """One line of the estimate: distinct experts a decode step reads per MoE layer on the
    busiest GPU, at ``batch`` and at the largest batch ``top`` (empty for a dense model).

    >>> from capsim.load import load_model_card
    >>> moe_summary(Shard.of(load_model_card("qwen3-30b-a3b"), 1), 1, 256)[:60]
    'experts  decode reads 8.0 of 128 experts per MoE layer at ba'
    """
    if not s.moe_layers:
        return ""
    k, E = s.top_k, s.experts

    def reads(n: int) -> float:
        return experts_read(s, n) or 0.0

    local = f" (busiest of ep={s.ep} GPUs, {s.local_experts} experts each)" if s.ep > 1 else ""
    at_top = f", {reads(top):.1f} at batch {top}" if top and top != batch else ""
    skew = f", routing skew {s.skew:g}" if s.skew else ", uniform routing"
    return (
        f"experts  decode reads {reads(batch):.1f} of {s.local_experts if s.ep > 1 else E} "
        f"experts per MoE layer at batch {batch}{at_top}{local}; top-{k}{skew}"
    )


def experts_read(s: Shard, batch: int) -> float | None:
    """Expected distinct experts a decode step of ``batch`` sequences reads per MoE layer on
    the busiest GPU (None for a dense model).

    >>> from capsim.load import load_model_card
    >>> round(experts_read(Shard.of(load_model_card("mixtral-8x7b"), 1), 2), 2)  # 8 x (1 - 0.75^2)
    3.5
    """
    if not s.moe_layers:
        return None
    return float(expected_distinct_experts(max(batch, 0), s.experts, s.top_k, s.skew, s.ep))
