"""Memory of an LLM replica: weights per GPU shard, KV cache per token, and whether it fits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from capsim.service.moe import attention_params, param_count  # noqa: F401  (re-exported)
from capsim.spec.catalog import GIB, GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel
from capsim.spec.precision import Precision, get_precision, kv_cache_bits, kv_dtype_label


@dataclass(frozen=True)
class Shard:
    """What one GPU of a ``tp``-way replica holds: head counts and MLP width per GPU.

    KV heads are divided among the GPUs; with more GPUs than KV heads each GPU keeps one
    (replicated), as vLLM does. MLA keeps one latent KV per token, replicated on every GPU.
    MoE layers split their experts ``ep`` ways and each expert ``tp / ep`` ways (``ep`` divides
    ``tp``: expert parallelism inside the tensor-parallel group, SGLang's ``--ep-size``).

    >>> from capsim.load import load_model_card
    >>> s = Shard.of(load_model_card("llama-3.1-70b"), 8)
    >>> (s.q_heads, s.kv_heads, s.ffn)
    (8, 1, 3584)
    >>> m = Shard.of(load_model_card("qwen3-30b-a3b"), 4, ep=4)
    >>> (m.local_experts, m.expert_ffn, m.moe_layers, m.dense_layers)
    (32, 768, 48, 0)
    """

    tp: int
    q_heads: int
    kv_heads: int
    head_dim: int
    hidden: int
    ffn: int
    vocab: int
    layers: int
    gated: bool
    ep: int = 1
    attn_dim: int = 0
    kv_width: int = 0
    o_in: int = 0
    attn_params: int = 0
    dense_layers: int = 0
    moe_layers: int = 0
    experts: int = 0
    top_k: int = 0
    local_experts: int = 0
    expert_ffn: int = 0
    shared_ffn: int = 0
    skew: float = 0.0

    @classmethod
    def of(cls, model: TransformerModel, tp: int, ep: int = 1) -> Shard:
        q = max(1, model.attention_heads // tp)
        kv = max(1, model.kv_heads // tp)
        d = model.dim_head
        if model.is_mla:
            rope, lora = model.qk_rope_head_dim or 0, model.kv_lora_rank or 0
            # absorbed MLA: each head scores q.(latent + rope key) and sums over the latent
            attn_dim, kv_width = lora + rope // 2, lora + rope
            o_in = q * (model.v_head_dim or d)
            low = model.hidden_size * ((model.q_lora_rank or 0) + lora + rope)  # replicated
            attn = low + (attention_params(model) - low) // tp
        else:
            attn_dim, kv_width, o_in = d, 2 * kv * d, q * d
            attn = model.hidden_size * (q + 2 * kv) * d + o_in * model.hidden_size
        e_tp = max(1, tp // max(1, ep))
        return cls(
            tp=tp,
            q_heads=q,
            kv_heads=kv,
            head_dim=d,
            hidden=model.hidden_size,
            ffn=max(1, model.ffn_size // tp),
            vocab=-(-model.vocab_size // tp),
            layers=model.layers,
            gated=model.gated_mlp,
            ep=ep,
            attn_dim=attn_dim,
            kv_width=kv_width,
            o_in=o_in,
            attn_params=attn,
            dense_layers=model.layers - model.moe_layers,
            moe_layers=model.moe_layers,
            experts=model.experts,
            top_k=model.experts_per_token,
            local_experts=-(-model.experts // max(1, ep)) if model.is_moe else 0,
            expert_ffn=(model.expert_ffn_size or 0) // e_tp,
            shared_ffn=model.shared_experts * model.shared_ffn // tp if model.is_moe else 0,
            skew=model.routing_skew,
        )

    @property
    def mult(self) -> int:
        """Weight matrices per MLP: 3 gated (gate, up, down), else 2."""
        return 3 if self.gated else 2

    @property
    def qkv_width(self) -> int:
        """Output width of the fused QKV projection on this GPU (MLA: its projections' weights
        over the hidden size)."""
        return (self.attn_params - self.o_in * self.hidden) // self.hidden

    @property
    def up_width(self) -> int:
        """Output width of the (fused gate+)up projection on this GPU."""
        return 2 * self.ffn if self.gated else self.ffn

    def layer_params(self) -> int:
        """Attention and dense-MLP weights of one dense layer on this GPU."""
        return self.attn_params + self.mult * self.hidden * self.ffn

    def moe_layer_params(self) -> int:
        """Weights of one MoE layer's MLP on this GPU: its experts' slices, the shared experts'
        slice and the (replicated) router."""
        h = self.hidden
        return self.mult * h * (self.local_experts * self.expert_ffn + self.shared_ffn) + h * (
            self.experts
        )

    def layer_weight_params(self) -> int:
        """Linear-layer weights of all layers on this GPU."""
        dense = self.dense_layers * self.layer_params()
        return dense + self.moe_layers * (self.attn_params + self.moe_layer_params())


def embedding_bytes_per_param(precision: Precision) -> float:
    """Storage of the embedding table and LM head: quantized checkpoints (AWQ/GPTQ int4, FP8,
    W8A8 int8) keep both in 16 bits, as vLLM loads them; unquantized models use their format."""
    return precision.weight_bytes if precision.weight_bits >= 16 else 2.0


def stream_bytes(precision: Precision) -> float:
    """Bytes per element of the residual stream, attention inputs/outputs and all-reduces:
    at least 16 bits (FP8/INT8 models quantize only the GEMM inputs)."""
    return max(precision.act_bytes, 2.0)


def weight_bytes_per_gpu(
    model: TransformerModel, precision: str | Precision, tp: int = 1, ep: int = 1
) -> float:
    """Weight bytes on each GPU of a ``tp``-way replica.

    Layer weights at the weight precision, divided by ``tp`` (K/V projections replicated when
    ``tp`` exceeds the KV heads); embeddings and LM head split ``tp`` ways (vocab-parallel) at
    :func:`embedding_bytes_per_param`; norm vectors replicated at 16 bits. A MoE layer holds
    all its experts: ``ceil(E / ep)`` experts per GPU, each split ``tp / ep`` ways.

    >>> from capsim.load import load_model_card
    >>> round(weight_bytes_per_gpu(load_model_card("llama-3.1-8b"), "fp16") / GIB, 2)
    14.96
    >>> round(weight_bytes_per_gpu(load_model_card("qwen3-30b-a3b"), "fp16", 2, 2) / GIB, 2)
    28.45
    """
    p = _precision(precision)
    s = Shard.of(model, tp, ep)
    layers = s.layer_weight_params() * p.weight_bytes
    tables = (1 if model.tied_embeddings else 2) * s.vocab * s.hidden
    norms = (2 * model.layers + 1) * s.hidden * 2.0
    return layers + tables * embedding_bytes_per_param(p) + norms


def kv_bytes_per_token(
    model: TransformerModel, precision: str | Precision, tp: int = 1, kv_cache_dtype: str = "auto"
) -> float:
    """KV-cache bytes of one token on each GPU: 2 (K and V) x layers x KV heads per GPU x
    head_dim x KV bytes (from ``kv_cache_dtype``, see :func:`~capsim.spec.precision.kv_cache_bits`);
    MLA: layers x (kv_lora_rank + qk_rope_head_dim) x KV bytes on every GPU (the latent is not
    split by tensor parallelism).

    >>> from capsim.load import load_model_card
    >>> m = load_model_card("llama-3.1-8b")
    >>> kv_bytes_per_token(m, "fp16"), kv_bytes_per_token(m, "fp8"), kv_bytes_per_token(m, "fp8", 1, "fp8")
    (131072.0, 131072.0, 65536.0)
    """
    p = _precision(precision)
    s = Shard.of(model, tp)
    return 1.0 * model.layers * s.kv_width * kv_cache_bits(p, kv_cache_dtype) / 8


def draft_card(spec: Any) -> TransformerModel:
    """The draft model card of a ``kind: draft`` speculative setting (resolved by the loader)."""
    card = spec.draft_model
    if not isinstance(card, TransformerModel):
        raise ValueError(
            f"draft model {card!r} is not resolved to a card: load the scenario with "
            "load_scenario (or pass the card itself)"
        )
    return card


def speculative_memory(
    model: TransformerModel, precision: str | Precision, tp: int, settings: LLMEngineSettings
) -> tuple[float, float]:
    """(weight bytes, KV bytes per token) on each GPU that speculative decoding adds: a draft
    model's weights and KV cache (same precision, KV dtype and ``tp``; vLLM keeps both models'
    KV in one block pool), an EAGLE head's one decoder layer (+ its 2h x h input projection) and
    one layer of KV, nothing for n-gram lookup.

    >>> from capsim.load import load_model_card
    >>> st = LLMEngineSettings(speculative={"kind": "eagle", "k": 3, "acceptance": 0.7})
    >>> w, kv = speculative_memory(load_model_card("llama-3.1-8b"), "fp16", 1, st)
    >>> round(w / 2**20), kv                 # 218 M + 33.6 M parameters x 2 B; 131072 / 32
    (480, 4096.0)
    """
    spec = settings.speculative
    p = _precision(precision)
    if spec is None or spec.kind == "ngram":
        return 0.0, 0.0
    if spec.kind == "draft":
        draft = draft_card(spec)
        return (
            weight_bytes_per_gpu(draft, p, tp),
            kv_bytes_per_token(draft, p, tp, settings.kv_cache_dtype),
        )
    s = Shard.of(model, tp)
    head = (s.layer_params() + 2 * s.hidden * s.hidden // tp) * p.weight_bytes
    kv = kv_bytes_per_token(model, p, tp, settings.kv_cache_dtype) / model.layers
    return head + 2 * s.hidden * 2.0, kv


def _precision(precision: str | Precision) -> Precision:
    return precision if isinstance(precision, Precision) else get_precision(precision)


def parallelism_problem(gpu: GPU, model: TransformerModel, tp: int, ep: int = 1) -> str | None:
    """Why ``tp`` GPUs of this card (experts split ``ep`` ways) cannot hold one replica of
    ``model`` (None if they can).

    >>> from capsim.load import load_catalog
    >>> from capsim.load import load_model_card
    >>> parallelism_problem(load_catalog()["h100-sxm"], load_model_card("llama-2-7b"), 3)
    '32 attention heads do not divide among tp=3 GPUs'
    """
    if tp < 1:
        return f"tp must be at least 1 (got {tp})"
    ic = gpu.interconnect
    if tp > ic.max_gpus:
        return f"tp={tp} exceeds the {ic.max_gpus} GPUs one {gpu.id} {ic.kind} group joins"
    if model.attention_heads % tp:
        return f"{model.attention_heads} attention heads do not divide among tp={tp} GPUs"
    if model.kv_heads % tp and tp % model.kv_heads:
        return f"{model.kv_heads} KV heads and tp={tp}: one must divide the other"
    if model.ffn_size % tp and model.layers > model.moe_layers:
        return f"ffn_size {model.ffn_size} does not divide among tp={tp} GPUs"
    return _expert_problem(model, tp, ep)


def _expert_problem(model: TransformerModel, tp: int, ep: int) -> str | None:
    """Why the experts cannot be split ``ep`` ways inside a ``tp`` group (None if they can).

    >>> from capsim.load import load_model_card
    >>> _expert_problem(load_model_card("llama-3.1-8b"), 2, 2)
    'ep=2 needs a mixture-of-experts model (llama-3.1-8b is dense)'
    >>> _expert_problem(load_model_card("mixtral-8x7b"), 2, 4)
    'ep=4 must divide tp=2 (experts are split among the tensor-parallel GPUs)'
    """
    if ep < 1:
        return f"ep must be at least 1 (got {ep})"
    if ep > 1 and not model.is_moe:
        return f"ep={ep} needs a mixture-of-experts model ({model.name} is dense)"
    if tp % ep:
        return f"ep={ep} must divide tp={tp} (experts are split among the tensor-parallel GPUs)"
    if model.is_moe and model.experts % ep:
        return f"{model.experts} experts do not divide among ep={ep} GPUs"
    e_tp = tp // ep
    if model.is_moe and (model.expert_ffn_size or 0) % e_tp:
        return f"expert_ffn_size {model.expert_ffn_size} does not divide among tp/ep={e_tp} GPUs"
    return None


def precision_problem(gpu: GPU, precision: str | Precision) -> str | None:
    """Why the card cannot run this precision (None if it can)."""
    p = _precision(precision)
    if p.math_format(gpu.peak_tflops) is None:
        return (
            f"{gpu.id} has no {'/'.join(p.math)} math for {p.name} "
            f"(supported: {', '.join(gpu.supported_formats())})"
        )
    return None


@dataclass(frozen=True)
class MemoryFit:
    """Memory budget of each GPU of one replica, and whether a sequence of ``context`` fits.

    All byte figures are per GPU. ``usable_bytes`` = usable memory x gpu_memory_utilization -
    reserved; the KV cache gets what the weights leave, in whole blocks of ``block_size``
    tokens.
    """

    gpu: str
    model: str
    precision: str
    kv_cache_dtype: str
    tp: int
    context: int
    fits: bool
    reason: str
    usable_bytes: float
    reserved_bytes: float
    weight_bytes: float
    kv_bytes_per_token: float
    kv_cache_bytes: float
    kv_blocks: int
    kv_tokens: int
    block_size: int
    max_num_seqs: int
    ep: int = 1

    @property
    def max_batch_memory(self) -> int:
        """Sequences of ``context`` tokens whose KV fits (memory only, no engine cap)."""
        return self.max_batch_memory_for(self.context)

    @property
    def max_batch(self) -> int:
        """Largest concurrent batch at ``context``: memory, capped by max_num_seqs."""
        return self.max_batch_for(self.context)

    def max_batch_memory_for(self, context: int) -> int:
        """Sequences of ``context`` tokens whose KV blocks fit in the cache."""
        blocks_per_seq = max(1, -(-int(context) // self.block_size))
        return self.kv_blocks // blocks_per_seq

    def max_batch_for(self, context: int) -> int:
        """Largest concurrent batch of sequences of ``context`` tokens (0 if it does not fit)."""
        if not self.fits:
            return 0
        return min(self.max_num_seqs, self.max_batch_memory_for(context))

    def to_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["max_batch"] = self.max_batch
        d["max_batch_memory"] = self.max_batch_memory
        return d


def memory_fit(
    gpu: GPU,
    model: TransformerModel,
    precision: str | Precision,
    tp: int = 1,
    settings: LLMEngineSettings | None = None,
    *,
    context: int | None = None,
    ep: int = 1,
) -> MemoryFit:
    """Weights, KV capacity and the largest batch on each of ``tp`` GPUs.

    Fits when the precision runs on the card, ``tp`` is a valid split, the weights fit in the
    usable memory and the KV cache holds at least one sequence of ``context`` tokens (default:
    ``settings.max_model_len``, else the model's ``max_context``, as vLLM checks at start-up).

    >>> from capsim.load import load_catalog
    >>> from capsim.load import load_model_card
    >>> fit = memory_fit(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp16")
    >>> fit.fits, fit.kv_bytes_per_token
    (True, 131072.0)
    """
    st = (settings or LLMEngineSettings()).for_gpu(gpu)
    p = _precision(precision)
    ctx = int(context or st.max_model_len or model.max_context)
    usable = gpu.usable_memory_bytes * st.gpu_memory_utilization - st.reserved_gib * GIB
    spec_w, spec_kv = speculative_memory(model, p, tp if tp >= 1 else 1, st)
    weights = weight_bytes_per_gpu(model, p, tp if tp >= 1 else 1, ep if ep >= 1 else 1) + spec_w
    kv_tok = kv_bytes_per_token(model, p, tp if tp >= 1 else 1, st.kv_cache_dtype) + spec_kv
    kv_label = kv_dtype_label(p, st.kv_cache_dtype)
    kv_cache = max(0.0, usable - weights)
    blocks = int(kv_cache // (kv_tok * st.block_size))
    tokens = blocks * st.block_size
    problem = precision_problem(gpu, p) or parallelism_problem(gpu, model, tp, ep)
    where = (
        f"on {gpu.id}"
        + (f" x{tp}" if tp > 1 else "")
        + (f" ep{ep}" if ep > 1 else "")
        + f" at {p.name}"
    )
    if problem is None and weights > usable:
        problem = (
            f"weights {weights / GIB:.1f} GiB > usable {usable / GIB:.1f} GiB {where} "
            f"({gpu.usable_memory_gib:.1f} GiB x {st.gpu_memory_utilization:g} - "
            f"{st.reserved_gib:g} GiB reserved per GPU)"
        )
    if problem is None and tokens < ctx:
        problem = (
            f"KV cache {kv_cache / GIB:.1f} GiB holds {tokens:,} tokens < one sequence of "
            f"{ctx:,} tokens {where} (weights {weights / GIB:.1f} GiB of {usable / GIB:.1f} GiB "
            "usable); lower max_model_len or use more GPUs"
        )
    fits = problem is None
    if problem is None:
        per_seq = tokens // max(1, -(-ctx // st.block_size) * st.block_size)
        problem = (
            f"fits {where}: weights {weights / GIB:.1f} GiB, KV cache {kv_cache / GIB:.1f} GiB "
            f"= {tokens:,} tokens ({kv_tok / 1024:g} KiB/token, KV {kv_label}), {per_seq:,} "
            "sequences of "
            f"{ctx:,} tokens"
        )
    return MemoryFit(
        gpu=gpu.id,
        model=model.name,
        precision=p.name,
        kv_cache_dtype=kv_label,
        tp=tp,
        context=ctx,
        fits=fits,
        reason=problem,
        usable_bytes=usable,
        reserved_bytes=st.reserved_gib * GIB,
        weight_bytes=weights,
        kv_bytes_per_token=kv_tok,
        kv_cache_bytes=kv_cache,
        kv_blocks=blocks,
        kv_tokens=tokens,
        block_size=st.block_size,
        max_num_seqs=st.max_num_seqs,
        ep=ep,
    )
