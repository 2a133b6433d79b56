"""Mixture-of-experts arithmetic: parameter counts, expected distinct experts per step, and the
per-GPU share of expert work under expert parallelism.

Routing model. Expert ``i`` (of ``E``, ranked by popularity) has popularity ``p_i`` proportional
to ``1 / (i + 1) ** s`` (Zipf, exponent ``s`` = the card's ``routing_skew``; ``s = 0`` is
uniform). Each token picks ``k`` distinct experts with chances proportional to ``p_i``. The
chance ``q_i`` that a token's top-k includes expert ``i`` is approximated by
``q_i = 1 - exp(-lambda p_i)`` with ``lambda`` set so that ``sum_i q_i = k`` (the usual
approximation of inclusion in weighted sampling without replacement); tokens are independent,
so over a step of ``n`` tokens

    E[distinct experts] = sum_i 1 - (1 - q_i) ** n,

which for uniform routing (``q_i = k / E``) is exact: ``E x (1 - (1 - k / E) ** n)``.
tests/test_moe.py checks it against a seeded Monte Carlo of Gumbel top-k routing. With ``ep`` expert-parallel
ranks the experts are dealt round robin by popularity (expert ``i`` on rank ``i mod ep``) and a
step lasts as long as its busiest rank: the distinct experts and the routed token copies of the
rank with the largest sum.

>>> round(float(expected_distinct_experts(1, 128, 8)), 6), round(float(expected_distinct_experts(64, 128, 8)), 1)
(8.0, 125.9)
"""

from __future__ import annotations

import numpy as np

from capsim.spec.models import TransformerModel


def expert_popularity(experts: int, skew: float = 0.0) -> np.ndarray:
    """Routing probability of each expert (sums to 1): Zipf with exponent ``skew``.

    >>> expert_popularity(4).tolist()
    [0.25, 0.25, 0.25, 0.25]
    >>> [round(float(x), 3) for x in expert_popularity(3, 1.0)]
    [0.545, 0.273, 0.182]
    """
    w = 1.0 / np.arange(1, experts + 1, dtype=float) ** skew
    return w / w.sum()


def pick_probability(experts: int, k: int, skew: float = 0.0) -> np.ndarray:
    """Approximate chance that one token's top-k includes each expert: ``1 - exp(-lambda p_i)``
    with ``sum = k`` (``k / E`` each under uniform routing).

    >>> pick_probability(8, 2).tolist()
    [0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25, 0.25]
    >>> q = pick_probability(128, 8, 1.0)
    >>> round(float(q.sum()), 9), round(float(q[0]), 3) < 1.0
    (8.0, True)
    """
    if skew == 0.0 or k >= experts:
        return np.full(experts, min(1.0, k / experts))
    p = expert_popularity(experts, skew)
    lo, hi = 0.0, float(k)
    while (1.0 - np.exp(-hi * p)).sum() < k:
        hi *= 2.0
    for _ in range(100):  # bisection to double precision
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if (1.0 - np.exp(-mid * p)).sum() < k else (lo, mid)
    return 1.0 - np.exp(-hi * p)


def _rank_of(experts: int, ranks: int) -> np.ndarray:
    return np.arange(experts) % max(1, ranks)


def expected_distinct_experts(n, experts: int, k: int, skew: float = 0.0, ranks: int = 1):
    """Expected distinct experts touched by ``n`` tokens (float or array), on the busiest of
    ``ranks`` expert-parallel ranks (``ranks=1``: all of them).

    >>> round(float(expected_distinct_experts(1000, 8, 2)), 3)   # every Mixtral expert
    8.0
    >>> round(float(expected_distinct_experts(4, 128, 8, ranks=4)), 2)  # 32 experts per rank
    7.28
    """
    q = pick_probability(experts, k, skew)
    nn = np.asarray(n, dtype=float)
    touched = 1.0 - (1.0 - q[:, None]) ** nn.reshape(1, -1)
    rank = _rank_of(experts, ranks)
    per_rank = np.stack([touched[rank == r].sum(axis=0) for r in range(max(1, ranks))])
    out = per_rank.max(axis=0)
    return float(out[0]) if nn.ndim == 0 else out.reshape(nn.shape)


def busiest_rank_share(experts: int, k: int, skew: float = 0.0, ranks: int = 1) -> float:
    """Share of a step's ``n x k`` routed token copies that the busiest rank computes.

    >>> busiest_rank_share(128, 8, 0.0, 4)
    0.25
    """
    q = pick_probability(experts, k, skew)
    rank = _rank_of(experts, ranks)
    return float(max(q[rank == r].sum() for r in range(max(1, ranks))) / q.sum())


def simulate_distinct_experts(
    n: int, experts: int, k: int, skew: float, rng: np.random.Generator, steps: int = 2000
) -> float:
    """Monte Carlo mean of distinct experts touched by ``n`` tokens, each drawing ``k`` distinct
    experts with probability proportional to the Zipf popularity (Gumbel top-k sampling).

    >>> round(simulate_distinct_experts(1, 16, 2, 0.0, np.random.default_rng(0), 100), 1)
    2.0
    """
    logp = np.log(expert_popularity(experts, skew))
    total, chunk = 0, max(1, 2_000_000 // max(1, n * experts))
    for start in range(0, steps, chunk):
        m = min(chunk, steps - start)
        keys = logp + rng.gumbel(size=(m, n, experts))
        picks = np.argpartition(-keys, k - 1, axis=2)[:, :, :k].reshape(m, -1)
        touched = np.zeros((m, experts), dtype=bool)
        touched[np.arange(m)[:, None], picks] = True
        total += int(touched.sum())
    return total / steps


# ----------------------------------------------------------------------------- parameter counts


def _mult(model: TransformerModel) -> int:
    return 3 if model.gated_mlp else 2


def attention_params(model: TransformerModel) -> int:
    """Attention weights of one layer: Q, K, V, O with GQA, or MLA's low-rank projections
    (q_a, q_b, kv_a with the RoPE key, kv_b, o and the two latent norms).

    >>> from capsim.load import load_model_card
    >>> attention_params(load_model_card("llama-3.1-8b"))
    41943040
    """
    h, H = model.hidden_size, model.attention_heads
    if model.kv_lora_rank is None:
        d = model.dim_head
        return h * H * d * 2 + h * model.kv_heads * d * 2
    rope, nope = model.qk_rope_head_dim or 0, model.qk_nope_head_dim or 0
    v, kvl, ql = model.v_head_dim or 0, model.kv_lora_rank, model.q_lora_rank
    q = h * ql + ql + ql * H * (nope + rope) if ql else h * H * (nope + rope)
    kv = h * (kvl + rope) + kvl + kvl * H * (nope + v)
    return q + kv + H * v * h


def expert_params(model: TransformerModel) -> int:
    """Weights of one routed expert (gate, up, down or up, down)."""
    return _mult(model) * model.hidden_size * (model.expert_ffn_size or 0)


def shared_params(model: TransformerModel) -> int:
    """Weights of the shared experts of one MoE layer."""
    return model.shared_experts * _mult(model) * model.hidden_size * model.shared_ffn


def mlp_params(model: TransformerModel, active: bool = False) -> int:
    """MLP weights over all layers: dense layers + MoE layers (all experts, or with
    ``active`` the ``k`` routed ones) with their shared experts and router."""
    h = model.hidden_size
    dense_layers = model.layers - model.moe_layers
    total = dense_layers * _mult(model) * h * model.ffn_size
    if model.is_moe:
        routed = model.experts_per_token if active else model.experts
        per = routed * expert_params(model) + shared_params(model) + h * model.experts
        total += model.moe_layers * per
    return total


def param_count(model: TransformerModel, active: bool = False) -> int:
    """Parameters from the architecture (biases ignored): embeddings + per layer attention,
    MLP (dense or experts + shared + router) and two RMSNorms + final norm + LM head unless
    tied. ``active``: the parameters one token uses (``k`` routed experts).

    >>> from capsim.load import load_model_card
    >>> round(param_count(load_model_card("llama-3.1-8b")) / 1e9, 2)
    8.03
    >>> round(param_count(load_model_card("mixtral-8x7b"), active=True) / 1e9, 1)
    12.9
    """
    h = model.hidden_size
    embed = model.vocab_size * h
    head = 0 if model.tied_embeddings else embed
    per_layer = attention_params(model) + 2 * h
    return embed + model.layers * per_layer + mlp_params(model, active) + h + head
