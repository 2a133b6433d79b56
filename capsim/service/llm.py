"""Token-level service times and memory of a decoder-only LLM served by a vLLM-like engine.

One *replica* is a model copy on ``tp`` GPUs (tensor parallelism). Its engine runs *iterations*:
each one pushes a mix of prefill chunks (a prompt, or a piece of one, after ``context_before``
tokens already in the KV cache) and decoding sequences (one new token each) through every layer.
Per layer and GPU shard the operators are the QKV projection, RoPE + KV-cache write, attention
(prefill and decode), the output projection, the MLP (gate+up, activation, down), two fused
add+RMSNorms and, for ``tp > 1``, two ring all-reduces; then the LM head and the sampler run for
the rows that produce logits. Each operator is an :class:`~capsim.service.roofline.OpCost` timed
by an *op timer* (default: the roofline; a calibrated timer can be passed instead).

The engine calls :meth:`LLMServiceModel.iteration_time` once per iteration, so it is a table
lookup plus a few float operations on aggregates of the batch:

* ``num_tokens`` T -- new tokens (prefill chunk tokens + one per decoding sequence),
* ``num_decode`` D and ``decode_context`` -- decoding sequences and the sum of their contexts
  (KV tokens each one attends to, the new token included),
* ``prefill_work`` -- causal attention work, sum over chunks of ``chunk * (context_before +
  chunk / 2)`` (see :func:`prefill_work`),
* ``num_logits`` -- rows that go through the LM head (the last token of each prefill chunk that
  completes its prompt, plus each decoding sequence),
* ``prefill_kv`` -- sum over chunks of ``context_before + chunk`` (KV tokens prefill attention
  reads; default: no earlier context, i.e. the prefill tokens).

:meth:`LLMServiceModel.breakdown` gives the same time per operator, computed the slow and
explicit way from the list of chunks and contexts.

>>> from capsim.catalog import load_catalog
>>> from capsim.models import load_model_card
>>> svc = LLMServiceModel(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp16")
>>> decode = svc.iteration_time(32, num_decode=32, decode_context=32 * 1000, num_logits=32)
>>> prefill = svc.iteration_time(1024, prefill_work=prefill_work(1024, 0), num_logits=1)
>>> 0.005 < decode < prefill < 0.1
True
>>> memory_fit(load_catalog()["h100-sxm"], load_model_card("llama-3.1-70b"), "fp16").fits
False
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple

import numpy as np
from pydantic import Field, ValidationError

from capsim.catalog import GIB, GPU, Strict
from capsim.errors import InputError
from capsim.models import TransformerModel
from capsim.precision import Precision, get_precision
from capsim.service.roofline import OpCost, OpTime, roofline_op_time

# --------------------------------------------------------------------------------------------
# Engine settings
# --------------------------------------------------------------------------------------------


class LLMEngineSettings(Strict):
    """Knobs of the serving engine (vLLM names and defaults unless said otherwise).

    >>> LLMEngineSettings().block_size
    16
    >>> LLMEngineSettings(max_num_seqs=64).max_num_seqs
    64
    """

    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of each GPU's memory the engine may use (vLLM EngineArgs default 0.9)",
    )
    reserved_gib: float = Field(
        1.5,
        ge=0,
        description=(
            "per-GPU memory inside that share kept for activations of the profiling run (about "
            "0.5-1 GiB for 8192 batched tokens of a 7-8B model), CUDA graphs (0.2-1 GiB) and "
            "NCCL/non-torch buffers; vLLM measures it at start-up, 1-2 GiB is typical"
        ),
    )
    block_size: int = Field(
        16, ge=1, description="tokens per KV-cache block (vLLM default on CUDA: 16)"
    )
    max_num_batched_tokens: int = Field(
        8192,
        ge=1,
        description=(
            "token budget of one iteration. Unset: vLLM V1's default for the OpenAI server, "
            "8192 on GPUs with >= 70 GiB other than A100, 2048 elsewhere "
            "(EngineArgs.get_batch_defaults; see for_gpu)"
        ),
    )
    max_num_seqs: int = Field(
        256,
        ge=1,
        description=(
            "most sequences in one iteration. Unset: vLLM V1's default, 1024 on >= 70 GiB GPUs "
            "other than A100, 256 elsewhere (see for_gpu)"
        ),
    )
    chunked_prefill: bool = Field(
        True, description="split long prompts into chunks that share iterations (vLLM V1: on)"
    )
    max_model_len: int | None = Field(
        None,
        gt=0,
        description=(
            "longest context the engine must hold; None = the model's max_context, as vLLM, "
            "which refuses to start if one such sequence does not fit in the KV cache"
        ),
    )
    scheduler_overhead_ms: float = Field(
        2.0,
        ge=0,
        description=(
            "CPU time per iteration that the GPU waits for (scheduling, input preparation, "
            "output processing). vLLM 0.5 left ~4 ms GPU bubbles per decode step "
            "(vllm-project/vllm#6854); V1 with async scheduling overlaps most of it "
            "(vllm#23569): use ~0.5 for that"
        ),
    )

    def for_gpu(self, gpu: GPU) -> LLMEngineSettings:
        """These settings on ``gpu``: what was not set takes vLLM V1's card-dependent default
        (``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 on cards with >= 70 GiB
        other than A100, else 2048 and 256).

        >>> from capsim.catalog import load_catalog
        >>> cat = load_catalog()
        >>> LLMEngineSettings().for_gpu(cat["l4"]).max_num_batched_tokens
        2048
        >>> LLMEngineSettings().for_gpu(cat["h100-sxm"]).max_num_seqs
        1024
        >>> LLMEngineSettings(max_num_batched_tokens=4096).for_gpu(cat["l4"]).max_num_batched_tokens
        4096
        >>> LLMEngineSettings().for_gpu(cat["h100-sxm"]).for_gpu(cat["l4"]).max_num_seqs
        256
        """
        big = gpu.memory_gib >= 70 and "a100" not in f"{gpu.id} {gpu.name}".lower()
        update: dict[str, int] = {}
        if "max_num_batched_tokens" not in self.model_fields_set:
            update["max_num_batched_tokens"] = 8192 if big else 2048
        if "max_num_seqs" not in self.model_fields_set:
            update["max_num_seqs"] = 1024 if big else 256
        if not update:
            return self
        # the card's defaults are not the user's settings: resolving again for another card
        # gives that card's defaults
        return type(self).model_construct(
            _fields_set=set(self.model_fields_set), **{**self.model_dump(), **update}
        )


# --------------------------------------------------------------------------------------------
# Architecture: parameters, shards, weight and KV bytes
# --------------------------------------------------------------------------------------------


def param_count(model: TransformerModel) -> int:
    """Parameters from the architecture (biases ignored).

    Embeddings + per layer (Q, K, V, O projections with GQA; gate, up, down or up, down; two
    RMSNorm weight vectors) + final norm + LM head unless tied to the embeddings.

    >>> from capsim.models import load_model_card
    >>> round(param_count(load_model_card("llama-3.1-8b")) / 1e9, 2)
    8.03
    """
    h, d = model.hidden_size, model.dim_head
    attn = h * model.attention_heads * d * 2 + h * model.kv_heads * d * 2
    mlp = (3 if model.gated_mlp else 2) * h * model.ffn_size
    per_layer = attn + mlp + 2 * h
    embed = model.vocab_size * h
    head = 0 if model.tied_embeddings else embed
    return embed + model.layers * per_layer + h + head


@dataclass(frozen=True)
class Shard:
    """What one GPU of a ``tp``-way replica holds: head counts and MLP width per GPU.

    KV heads are divided among the GPUs; with more GPUs than KV heads each GPU keeps one
    (replicated), as vLLM does.

    >>> from capsim.models import load_model_card
    >>> s = Shard.of(load_model_card("llama-3.1-70b"), 8)
    >>> (s.q_heads, s.kv_heads, s.ffn)
    (8, 1, 3584)
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

    @classmethod
    def of(cls, model: TransformerModel, tp: int) -> Shard:
        return cls(
            tp=tp,
            q_heads=max(1, model.attention_heads // tp),
            kv_heads=max(1, model.kv_heads // tp),
            head_dim=model.dim_head,
            hidden=model.hidden_size,
            ffn=max(1, model.ffn_size // tp),
            vocab=-(-model.vocab_size // tp),
            layers=model.layers,
            gated=model.gated_mlp,
        )

    @property
    def qkv_width(self) -> int:
        """Output width of the fused QKV projection on this GPU."""
        return (self.q_heads + 2 * self.kv_heads) * self.head_dim

    @property
    def up_width(self) -> int:
        """Output width of the (fused gate+)up projection on this GPU."""
        return 2 * self.ffn if self.gated else self.ffn

    def layer_params(self) -> int:
        """Linear-layer weights of one layer on this GPU."""
        h = self.hidden
        return (
            h * self.qkv_width + self.q_heads * self.head_dim * h + h * (self.up_width + self.ffn)
        )


def embedding_bytes_per_param(precision: Precision) -> float:
    """Storage of the embedding table and LM head: quantized checkpoints (AWQ/GPTQ int4, FP8,
    W8A8 int8) keep both in 16 bits, as vLLM loads them; unquantized models use their format."""
    return precision.weight_bytes if precision.weight_bits >= 16 else 2.0


def stream_bytes(precision: Precision) -> float:
    """Bytes per element of the residual stream, attention inputs/outputs and all-reduces:
    at least 16 bits (FP8/INT8 models quantize only the GEMM inputs)."""
    return max(precision.act_bytes, 2.0)


def weight_bytes_per_gpu(model: TransformerModel, precision: str | Precision, tp: int = 1) -> float:
    """Weight bytes on each GPU of a ``tp``-way replica.

    Layer weights at the weight precision, divided by ``tp`` (K/V projections replicated when
    ``tp`` exceeds the KV heads); embeddings and LM head split ``tp`` ways (vocab-parallel) at
    :func:`embedding_bytes_per_param`; norm vectors replicated at 16 bits.

    >>> from capsim.models import load_model_card
    >>> round(weight_bytes_per_gpu(load_model_card("llama-3.1-8b"), "fp16") / GIB, 2)
    14.96
    """
    p = _precision(precision)
    s = Shard.of(model, tp)
    layers = model.layers * s.layer_params() * p.weight_bytes
    tables = (1 if model.tied_embeddings else 2) * s.vocab * s.hidden
    norms = (2 * model.layers + 1) * s.hidden * 2.0
    return layers + tables * embedding_bytes_per_param(p) + norms


def kv_bytes_per_token(model: TransformerModel, precision: str | Precision, tp: int = 1) -> float:
    """KV-cache bytes of one token on each GPU: 2 (K and V) x layers x KV heads per GPU x
    head_dim x KV bytes.

    >>> from capsim.models import load_model_card
    >>> kv_bytes_per_token(load_model_card("llama-3.1-8b"), "fp16")
    131072.0
    """
    p = _precision(precision)
    s = Shard.of(model, tp)
    return 2.0 * model.layers * s.kv_heads * s.head_dim * p.kv_bytes


def _precision(precision: str | Precision) -> Precision:
    return precision if isinstance(precision, Precision) else get_precision(precision)


# --------------------------------------------------------------------------------------------
# Feasibility and memory fit
# --------------------------------------------------------------------------------------------


def parallelism_problem(gpu: GPU, model: TransformerModel, tp: int) -> str | None:
    """Why ``tp`` GPUs of this card cannot hold one replica of ``model`` (None if they can).

    >>> from capsim.catalog import load_catalog
    >>> from capsim.models import load_model_card
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
    if model.ffn_size % tp:
        return f"ffn_size {model.ffn_size} does not divide among tp={tp} GPUs"
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
) -> MemoryFit:
    """Weights, KV capacity and the largest batch on each of ``tp`` GPUs.

    Fits when the precision runs on the card, ``tp`` is a valid split, the weights fit in the
    usable memory and the KV cache holds at least one sequence of ``context`` tokens (default:
    ``settings.max_model_len``, else the model's ``max_context``, as vLLM checks at start-up).

    >>> from capsim.catalog import load_catalog
    >>> from capsim.models import load_model_card
    >>> fit = memory_fit(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp16")
    >>> fit.fits, fit.kv_bytes_per_token
    (True, 131072.0)
    """
    st = (settings or LLMEngineSettings()).for_gpu(gpu)
    p = _precision(precision)
    ctx = int(context or st.max_model_len or model.max_context)
    usable = gpu.usable_memory_bytes * st.gpu_memory_utilization - st.reserved_gib * GIB
    weights = weight_bytes_per_gpu(model, p, tp if tp >= 1 else 1)
    kv_tok = kv_bytes_per_token(model, p, tp if tp >= 1 else 1)
    kv_cache = max(0.0, usable - weights)
    blocks = int(kv_cache // (kv_tok * st.block_size))
    tokens = blocks * st.block_size
    problem = precision_problem(gpu, p) or parallelism_problem(gpu, model, tp)
    where = f"on {gpu.id}" + (f" x{tp}" if tp > 1 else "") + f" at {p.name}"
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
    if fits:
        per_seq = tokens // max(1, -(-ctx // st.block_size) * st.block_size)
        problem = (
            f"fits {where}: weights {weights / GIB:.1f} GiB, KV cache {kv_cache / GIB:.1f} GiB "
            f"= {tokens:,} tokens ({kv_tok / 1024:g} KiB/token), {per_seq:,} sequences of "
            f"{ctx:,} tokens"
        )
    return MemoryFit(
        gpu=gpu.id,
        model=model.name,
        precision=p.name,
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
    )


# --------------------------------------------------------------------------------------------
# Op timers
# --------------------------------------------------------------------------------------------

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

    >>> from capsim.catalog import load_catalog
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


def _calibrated_timer(gpu: GPU) -> OpTimer | None:
    """The entry's calibrated timer (measured tables, fitted curves), None if uncalibrated."""
    if gpu.calibration is None:
        return None
    from capsim.service.calibrated import timer_for

    return timer_for(gpu)


# --------------------------------------------------------------------------------------------
# Operator costs
# --------------------------------------------------------------------------------------------

Num = Any  # float or numpy array (the linear-layer table is built with arrays of T)


@dataclass(frozen=True)
class _Op:
    """One operator, called ``count`` times per iteration, with its per-call cost."""

    name: str
    count: int
    flops: Num
    bytes: Num
    fmt: str
    kernels: int = 1
    n: int = 0
    k: int = 0


@dataclass(frozen=True)
class _Formats:
    gemm: str
    attn: str
    head: str


def _summed(parts: list[_Op]) -> _Op:
    """One operator doing the work of several calls of the same one (e.g. attention chunks)."""
    first = parts[0]
    flops = math.fsum(x.flops for x in parts)
    return replace(first, flops=flops, bytes=math.fsum(x.bytes for x in parts))


def _gemm(name: str, count: int, m: Num, n: int, k: int, w: float, a: float, o: float, fmt: str):
    """A (m x k) @ (k x n) GEMM: weights at ``w`` bytes, input at ``a``, output at ``o``."""
    return _Op(name, count, 2.0 * m * n * k, n * k * w + m * k * a + m * n * o, fmt, 1, n, k)


def prefill_work(chunk: int, context_before: int = 0) -> float:
    """Causal attention work of one prefill chunk: chunk x (context_before + chunk / 2).

    >>> prefill_work(1024), prefill_work(512, 512)
    (524288.0, 393216.0)
    """
    return chunk * (context_before + chunk / 2.0)


class IterationShape(NamedTuple):
    """The aggregates :meth:`LLMServiceModel.iteration_time` takes, in its argument order.

    >>> s = IterationShape.of(prefill=[(512, 0)], decode=[100, 200])
    >>> s.num_tokens, s.num_decode, s.decode_context, s.num_logits
    (514, 2, 300, 3)
    """

    num_tokens: int
    num_decode: int = 0
    decode_context: int = 0
    prefill_work: float = 0.0
    num_logits: int | None = None
    prefill_kv: int | None = None

    @classmethod
    def of(
        cls,
        prefill: Sequence[tuple[int, int]] = (),
        decode: Sequence[int] = (),
        num_logits: int | None = None,
    ) -> IterationShape:
        """Aggregates of prefill chunks ``(chunk, context_before)`` and decode contexts.

        ``num_logits`` defaults to one row per chunk and per decoding sequence.
        """
        chunks = sum(c for c, _ in prefill)
        return cls(
            num_tokens=chunks + len(decode),
            num_decode=len(decode),
            decode_context=int(sum(decode)),
            prefill_work=float(sum(prefill_work(c, p) for c, p in prefill)),
            num_logits=len(prefill) + len(decode) if num_logits is None else num_logits,
            prefill_kv=int(sum(c + p for c, p in prefill)),
        )


@dataclass(frozen=True)
class OpLine:
    """One operator of an iteration: time of one call, calls per iteration, what it was."""

    op: OpTime
    count: int
    context: OpContext

    @property
    def total_s(self) -> float:
        return self.op.time_s * self.count


@dataclass(frozen=True)
class IterationBreakdown:
    """Per-operator times of one iteration; ``total_s`` equals the fast path."""

    lines: tuple[OpLine, ...]
    scheduler_s: float
    shape: IterationShape

    @property
    def total_s(self) -> float:
        if not self.lines:
            return 0.0
        return math.fsum(line.total_s for line in self.lines) + self.scheduler_s

    def to_rows(self) -> list[dict[str, Any]]:
        """One dict per operator (and the scheduler): calls, total ms, share, bound."""
        total = self.total_s or 1.0
        rows = [
            {
                "op": ln.op.name,
                "calls": ln.count,
                "time_ms": ln.total_s * 1e3,
                "share": ln.total_s / total,
                "bound": ln.op.bound,
                "source": ln.op.source,
            }
            for ln in self.lines
        ]
        if self.lines:
            rows.append(
                {
                    "op": "scheduler",
                    "calls": 1,
                    "time_ms": self.scheduler_s * 1e3,
                    "share": self.scheduler_s / total,
                    "bound": "overhead",
                    "source": "settings.scheduler_overhead_ms",
                }
            )
        return rows

    def to_text(self, title: str = "") -> str:
        head = f"{'op':<15}{'calls':>7}{'time ms':>10}{'share':>8}  {'bound':<9}source"
        out = [title] if title else []
        out.append(head)
        for r in self.to_rows():
            out.append(
                f"{r['op']:<15}{r['calls']:>7}{r['time_ms']:>10.3f}{r['share']:>8.1%}  "
                f"{r['bound']:<9}{r['source']}"
            )
        out.append(f"{'total':<15}{'':>7}{self.total_s * 1e3:>10.3f}")
        return "\n".join(out)


# --------------------------------------------------------------------------------------------
# The service model
# --------------------------------------------------------------------------------------------


class LLMServiceModel:
    """Iteration times and memory of one replica: ``model`` at ``precision`` on ``tp`` GPUs.

    Building it precomputes the token-proportional operators (everything but attention and
    the LM head) for T = 0..max_num_batched_tokens; :meth:`iteration_time` then costs a table
    lookup and a few float operations (~1 us). Pass ``timer`` to replace the roofline by, e.g.,
    a calibrated timer that interpolates measured tables; with a custom timer the tables are
    filled by calling it for every T (once, at construction) and attention is timed per call.

    >>> from capsim.catalog import load_catalog
    >>> from capsim.models import load_model_card
    >>> svc = LLMServiceModel(load_catalog()["h100-sxm"], load_model_card("llama-2-7b"), "fp16")
    >>> svc.iteration_time(8) < svc.iteration_time(4096)
    True
    """

    def __init__(
        self,
        gpu: GPU,
        model: TransformerModel,
        precision: str | Precision,
        tp: int = 1,
        settings: LLMEngineSettings | None = None,
        timer: OpTimer | None = None,
    ):
        self.gpu = gpu
        self.model = model
        self.precision = _precision(precision)
        self.tp = tp
        self.settings = (settings or LLMEngineSettings()).for_gpu(gpu)
        # a calibrated catalog entry brings its own timer (capsim.service.calibrated)
        self.timer: OpTimer = timer or _calibrated_timer(gpu) or default_op_timer
        problem = precision_problem(gpu, self.precision) or parallelism_problem(gpu, model, tp)
        if problem:
            raise ValueError(problem)
        self.shard = Shard.of(model, tp)
        self.formats = _formats(gpu, self.precision)
        self._vectorized = self.timer is default_op_timer
        self._table_times = getattr(self.timer, "table_times", None)  # vectorised custom timer
        self._sched_s = self.settings.scheduler_overhead_ms * 1e-3
        size = self.settings.max_num_batched_tokens + 1
        self.token_table: np.ndarray = self._table(self._token_ops, size)
        self.logits_table: np.ndarray = self._table(self._logit_ops, size)
        self._tok = self.token_table.tolist()
        self._log = self.logits_table.tolist()
        self._size = size
        self._extra: dict[tuple[str, int], float] = {}
        roofline_attn = getattr(self.timer, "roofline_attention", None)
        fast_attn = self._vectorized or bool(roofline_attn and roofline_attn(self.formats.attn))
        self._attn = self._attention_coefficients() if fast_attn else None

    # -- memory ------------------------------------------------------------------------------

    def memory_fit(self, context: int | None = None) -> MemoryFit:
        """:func:`memory_fit` of this replica (``context`` default: max_model_len)."""
        return memory_fit(
            self.gpu, self.model, self.precision, self.tp, self.settings, context=context
        )

    # -- the fast path -----------------------------------------------------------------------

    def iteration_time(
        self,
        num_tokens: int,
        num_decode: int = 0,
        decode_context: float = 0,
        prefill_work: float = 0.0,
        num_logits: int | None = None,
        prefill_kv: float | None = None,
    ) -> float:
        """Seconds of one engine iteration, from the batch's aggregates (see module docstring).

        ``num_logits`` defaults to ``num_decode`` plus one if there are prefill tokens;
        ``prefill_kv`` to the prefill token count (no earlier context). An iteration with no
        tokens takes 0.
        """
        if num_tokens <= 0:
            return 0.0
        if num_logits is None:
            num_logits = num_decode + (1 if num_tokens > num_decode else 0)
        t = self._tok[num_tokens] if num_tokens < self._size else self._slow("tok", num_tokens)
        if num_logits:
            t += self._log[num_logits] if num_logits < self._size else self._slow("log", num_logits)
        n_pre = num_tokens - num_decode
        if self._attn is not None:
            per_flop, per_q, per_kv, ko, layers = self._attn
            if n_pre > 0:
                kv = n_pre if prefill_kv is None else prefill_kv
                t += layers * (max(prefill_work * per_flop, n_pre * per_q + kv * per_kv) + ko)
            if num_decode > 0:
                mem = num_decode * per_q + decode_context * per_kv
                t += layers * (max(decode_context * per_flop, mem) + ko)
        else:
            for op, ctx in self._attention_ops(
                n_pre, prefill_work, prefill_kv, num_decode, decode_context
            ):
                t += op.count * self._time_op(op, ctx).time_s
        return t + self._sched_s

    # -- the explicit breakdown --------------------------------------------------------------

    def breakdown(
        self,
        prefill: Sequence[tuple[int, int]] = (),
        decode: Sequence[int] = (),
        num_logits: int | None = None,
    ) -> IterationBreakdown:
        """Per-operator times of one iteration, computed op by op through the timer.

        ``prefill`` lists ``(chunk_tokens, context_before)``; ``decode`` lists each decoding
        sequence's context (KV tokens it attends to, the new one included); ``num_logits``
        defaults to one row per chunk and per sequence.

        >>> from capsim.catalog import load_catalog
        >>> from capsim.models import load_model_card
        >>> svc = LLMServiceModel(load_catalog()["h100-sxm"], load_model_card("llama-2-7b"), "fp16")
        >>> b = svc.breakdown(prefill=[(512, 0)], decode=[300] * 8)
        >>> abs(b.total_s - svc.iteration_time(*IterationShape.of([(512, 0)], [300] * 8))) < 1e-12
        True
        """
        shape = IterationShape.of(prefill, decode, num_logits)
        if shape.num_tokens <= 0:
            return IterationBreakdown((), 0.0, shape)
        ops = self._token_ops(shape.num_tokens)
        ops_ctx = [(op, self._context(op, shape.num_tokens)) for op in ops]
        ops_ctx += self._attention_ops_explicit(prefill, decode)
        if shape.num_logits:
            ops_ctx += [
                (op, self._context(op, shape.num_logits))
                for op in self._logit_ops(shape.num_logits)
            ]
        lines = tuple(OpLine(self._time_op(op, ctx), op.count, ctx) for op, ctx in ops_ctx)
        return IterationBreakdown(lines, self._sched_s, shape)

    # -- operator lists ----------------------------------------------------------------------

    def _token_ops(self, t: Num) -> list[_Op]:
        """Operators whose cost depends only on the number of new tokens ``t``."""
        s, p, f = self.shard, self.precision, self.formats
        w, a, o = p.weight_bytes, p.act_bytes, stream_bytes(p)
        kvb, d, h, L = p.kv_bytes, s.head_dim, s.hidden, s.layers
        qk = (s.q_heads + s.kv_heads) * d
        ops = [
            _Op("embed", 1, 0.0, 2.0 * t * h * o, f.gemm),
            _Op("norm", 2 * L + 1, 0.0, 4.0 * t * h * o, f.gemm),
            _gemm("qkv_proj", L, t, s.qkv_width, h, w, a, o, f.gemm),
            _Op(
                "rope_kv_write",
                L,
                0.0,
                t * (2.0 * qk * o + 2.0 * s.kv_heads * d * (o + kvb)),
                f.gemm,
                2,
            ),
            _gemm("o_proj", L, t, h, s.q_heads * d, w, a, o, f.gemm),
            _gemm("mlp_up", L, t, s.up_width, h, w, a, o, f.gemm),
            _Op("mlp_act", L, 0.0, t * (s.up_width * o + s.ffn * a), f.gemm),
            _gemm("mlp_down", L, t, h, s.ffn, w, a, o, f.gemm),
        ]
        if self.tp > 1:
            ops.append(_Op("all_reduce", 2 * L + 1, 0.0, t * h * o, f.gemm))
        return ops

    def _logit_ops(self, rows: Num) -> list[_Op]:
        """LM head, logits gather (tp > 1) and sampler for ``rows`` logits rows."""
        s, p, f = self.shard, self.precision, self.formats
        o, V = stream_bytes(p), self.model.vocab_size
        hb = embedding_bytes_per_param(p)
        ops = [_gemm("lm_head", 1, rows, s.vocab, s.hidden, hb, o, o, f.head)]
        if self.tp > 1:
            ops.append(_Op("logits_gather", 1, 0.0, rows * V * o, f.head))
        # fp32 logits: convert, softmax/top-p, sample ~ three passes over rows x vocab x 4 B
        ops.append(_Op("sampler", 1, 0.0, 12.0 * rows * V, f.head, 4))
        return ops

    def _attn_prefill_op(self, n_pre: float, work: float, kv: float) -> _Op:
        s, p = self.shard, self.precision
        o, d = stream_bytes(p), s.head_dim
        flops = 4.0 * s.q_heads * d * work
        nbytes = 2.0 * n_pre * s.q_heads * d * o + 2.0 * s.kv_heads * d * p.kv_bytes * kv
        return _Op("attn_prefill", s.layers, flops, nbytes, self.formats.attn)

    def _attn_decode_op(self, n_dec: float, ctx: float) -> _Op:
        s, p = self.shard, self.precision
        o, d = stream_bytes(p), s.head_dim
        flops = 4.0 * s.q_heads * d * ctx
        nbytes = 2.0 * n_dec * s.q_heads * d * o + 2.0 * s.kv_heads * d * p.kv_bytes * ctx
        return _Op("attn_decode", s.layers, flops, nbytes, self.formats.attn)

    def _attention_ops(
        self, n_pre: int, work: float, kv: float | None, n_dec: int, ctx: float
    ) -> list[tuple[_Op, OpContext]]:
        """Attention operators from the aggregates (for custom timers on the fast path)."""
        out = []
        if n_pre > 0:
            kv = n_pre if kv is None else kv
            op = self._attn_prefill_op(n_pre, work, kv)
            out.append(
                (op, OpContext(op.name, n_pre, self.tp, n_pre, kv_tokens=kv, attn_work=work))
            )
        if n_dec > 0:
            op = self._attn_decode_op(n_dec, ctx)
            c = OpContext(
                op.name, n_dec, self.tp, n_dec, num_seqs=n_dec, kv_tokens=ctx, attn_work=ctx
            )
            out.append((op, c))
        return out

    def _attention_ops_explicit(
        self, prefill: Sequence[tuple[int, int]], decode: Sequence[int]
    ) -> list[tuple[_Op, OpContext]]:
        """Attention operators summed chunk by chunk and sequence by sequence."""
        out = []
        if prefill:
            parts = [self._attn_prefill_op(c, prefill_work(c, b), c + b) for c, b in prefill]
            n, kv = sum(c for c, _ in prefill), float(sum(c + b for c, b in prefill))
            work = float(sum(prefill_work(c, b) for c, b in prefill))
            ctx = OpContext("attn_prefill", n, self.tp, n, 0, 0, len(prefill), kv, work)
            out.append((_summed(parts), ctx))
        if decode:
            parts = [self._attn_decode_op(1, c) for c in decode]
            n, kv = len(decode), float(sum(decode))
            out.append((_summed(parts), OpContext("attn_decode", n, self.tp, n, 0, 0, n, kv, kv)))
        return out

    # -- timing ------------------------------------------------------------------------------

    def _context(self, op: _Op, rows: int) -> OpContext:
        return OpContext(op.name, int(rows), self.tp, int(rows), op.n, op.k)

    def _time_op(self, op: _Op, ctx: OpContext) -> OpTime:
        cost = OpCost(op.name, float(op.flops), float(op.bytes), op.fmt, op.kernels)
        return self.timer(self.gpu, cost, ctx)

    def _table(self, ops_of: Callable[[Num], list[_Op]], size: int) -> np.ndarray:
        """Σ count x time over ``ops_of(T)`` for T = 0..size-1 (0 at T = 0)."""
        if self._vectorized:
            t = np.arange(size, dtype=float)
            total = np.zeros(size)
            for op in ops_of(t):
                total += op.count * self._vector_time(op, t)
        elif self._table_times is not None:
            t = np.arange(size, dtype=float)
            total = np.zeros(size)
            for op in ops_of(t):
                total += op.count * self._table_times(
                    self.gpu, op.name, op.flops, op.bytes, op.fmt, op.kernels, op.n, op.k,
                    self.tp, t,
                )  # fmt: skip
        else:
            total = np.array([self._scalar_total(ops_of, int(t)) for t in range(size)])
        total[0] = 0.0
        return total

    def _scalar_total(self, ops_of: Callable[[Num], list[_Op]], rows: int) -> float:
        if rows <= 0:
            return 0.0
        return math.fsum(
            op.count * self._time_op(op, self._context(op, rows)).time_s for op in ops_of(rows)
        )

    def _vector_time(self, op: _Op, t: np.ndarray) -> np.ndarray:
        """The default timer's formula applied to arrays (identical float operations)."""
        gpu = self.gpu
        nbytes = np.broadcast_to(np.asarray(op.bytes, dtype=float), t.shape)
        if op.name in COMM_OPS:
            ic = gpu.interconnect
            share = (2.0 if op.name == "all_reduce" else 1.0) * (self.tp - 1) / self.tp
            return share * nbytes / (ic.bandwidth_gb_s * 1e9 * ic.efficiency) + ic.latency_us * 1e-6
        peak = gpu.peak_flops(op.fmt)
        compute = np.asarray(op.flops, dtype=float) / (peak * gpu.efficiency.compute_for(op.fmt))
        memory = nbytes / (gpu.bandwidth * gpu.efficiency.memory)
        return np.maximum(compute, memory) + op.kernels * gpu.kernel_overhead_us * 1e-6

    def _slow(self, kind: str, rows: int) -> float:
        """Token or logits term beyond the table (memoized)."""
        key = (kind, rows)
        if key not in self._extra:
            ops_of = self._token_ops if kind == "tok" else self._logit_ops
            self._extra[key] = self._scalar_total(ops_of, rows)
        return self._extra[key]

    def _attention_coefficients(self) -> tuple[float, ...]:
        """Per-unit seconds of the roofline attention terms, for the inline fast path."""
        gpu, s, p = self.gpu, self.shard, self.precision
        peak = gpu.peak_flops(self.formats.attn) * gpu.efficiency.compute_for(self.formats.attn)
        bw = gpu.bandwidth * gpu.efficiency.memory
        d, o = s.head_dim, stream_bytes(p)
        flop_per_work = 4.0 * s.q_heads * d / peak
        q_bytes = 2.0 * s.q_heads * d * o / bw
        kv_bytes = 2.0 * s.kv_heads * d * p.kv_bytes / bw
        overhead = gpu.kernel_overhead_us * 1e-6
        return (flop_per_work, q_bytes, kv_bytes, overhead, s.layers)


def _formats(gpu: GPU, p: Precision) -> _Formats:
    """Math formats: GEMMs on the precision's format; attention and the (16-bit) LM head of a
    quantized model on FP16 (BF16 if the card lacks FP16)."""
    gemm = p.math_format(gpu.peak_tflops)
    if gemm is None:
        raise ValueError(precision_problem(gpu, p))
    if p.weight_bits >= 16:
        return _Formats(gemm, gemm, gemm)
    half = next((f for f in ("fp16", "bf16") if gpu.peak_tflops.get(f)), gemm)
    return _Formats(gemm, half, half)


# --------------------------------------------------------------------------------------------
# estimate: one configuration, one batch
# --------------------------------------------------------------------------------------------


def prefill_iterations(
    prompts: int, prompt: int, settings: LLMEngineSettings
) -> list[list[tuple[int, int, bool]]]:
    """How the engine packs ``prompts`` prompts of ``prompt`` tokens into iterations.

    Each iteration is a list of ``(chunk, context_before, completes_prompt)``. With chunked
    prefill the token budget is filled greedily, splitting prompts; without it whole prompts
    are packed (at least one per iteration).

    >>> [len(it) for it in prefill_iterations(3, 5000, LLMEngineSettings())]
    [2, 2]
    """
    budget, max_seqs = settings.max_num_batched_tokens, settings.max_num_seqs
    iterations: list[list[tuple[int, int, bool]]] = []
    done = [0] * prompts
    i = 0
    while i < prompts:
        room, it = budget, []
        j = i
        while j < prompts and room > 0 and len(it) < max_seqs:
            left = prompt - done[j]
            if not settings.chunked_prefill:
                if left > room and it:
                    break
                take = left
            else:
                take = min(left, room)
            it.append((take, done[j], done[j] + take == prompt))
            done[j] += take
            room -= take
            if done[j] < prompt:
                break
            j += 1
        iterations.append(it)
        while i < prompts and done[i] == prompt:
            i += 1
    return iterations


@dataclass(frozen=True)
class LLMEstimate:
    """Service time and memory of one batch on one replica (the ``capsim estimate`` answer).

    Times are ``None`` when the card cannot run the configuration at all (precision or tensor
    parallel split unsupported); when it only lacks memory the times are still given.
    """

    gpu: str
    model: str
    precision: str
    math_format: str | None
    tp: int
    batch: int
    prompt: int
    output: int
    decode_context: int
    fit: MemoryFit
    prefill_s: float | None
    prefill_iterations: int
    prefill_batch_s: float | None
    decode_step_s: float | None
    decode_tokens_per_s: float | None
    max_batch: int
    max_batch_step_s: float | None
    max_tokens_per_s: float | None
    request_latency_s: float | None
    decode_breakdown: IterationBreakdown | None = field(default=None, repr=False)
    prefill_breakdown: IterationBreakdown | None = field(default=None, repr=False)

    @property
    def batch_fits(self) -> bool:
        """Whether ``batch`` sequences of prompt + output tokens fit at once."""
        return 0 < self.batch <= self.max_batch

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready numbers (seconds, bytes, tokens) and per-operator breakdowns."""
        d = {k: v for k, v in self.__dict__.items() if not k.endswith("breakdown")}
        d["batch_fits"] = self.batch_fits
        d["fit"] = self.fit.to_dict()
        for name in ("decode_breakdown", "prefill_breakdown"):
            b = getattr(self, name)
            d[name] = b.to_rows() if b is not None else None
        return d

    def row(self) -> dict[str, Any]:
        """This batch size's line of a per-batch table (seconds)."""
        return {
            "batch": self.batch,
            "prefill_batch_s": self.prefill_batch_s,
            "decode_step_s": self.decode_step_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "request_latency_s": self.request_latency_s,
            "batch_fits": self.batch_fits,
        }

    def to_text(self) -> str:
        """A human summary and the per-operator table of one decode step."""
        f = self.fit
        gpus = f"{self.gpu}" + (f" x{self.tp} (tp={self.tp})" if self.tp > 1 else "")
        lines = [
            f"{self.model} on {gpus} at {self.precision} ({self.math_format or 'unsupported'} math)",
            f"memory   {f.reason}",
            f"         per GPU: weights {f.weight_bytes / GIB:.2f} GiB, usable "
            f"{f.usable_bytes / GIB:.2f} GiB, KV cache {f.kv_cache_bytes / GIB:.2f} GiB = "
            f"{f.kv_tokens:,} tokens ({f.kv_bytes_per_token / 1024:g} KiB/token)",
        ]
        if self.prefill_s is None:
            return "\n".join(lines)
        ms = 1e3
        lines += [
            f"prefill  1 prompt of {self.prompt:,} tokens: {self.prefill_s * ms:.2f} ms "
            f"({self.prefill_iterations} iteration{'s' * (self.prefill_iterations > 1)}); "
            f"{self.batch} prompts: {self.prefill_batch_s * ms:.2f} ms",
            f"decode   batch {self.batch} at context {self.decode_context:,}: "
            f"{self.decode_step_s * ms:.2f} ms/step = {self.decode_tokens_per_s:,.0f} tokens/s"
            + ("" if self.batch_fits else f" (but at most {self.max_batch} sequences fit)"),
        ]
        if self.max_batch and self.max_batch_step_s:
            lines.append(
                f"ceiling  batch {self.max_batch} (largest at {self.prompt + self.output:,} "
                f"tokens): {self.max_batch_step_s * ms:.2f} ms/step = "
                f"{self.max_tokens_per_s:,.0f} tokens/s"
            )
        else:
            lines.append("ceiling  0 tokens/s: no sequence of this length fits")
        lines.append(
            f"request  prefill + {self.output} decode steps at batch {self.batch} ~ "
            f"{self.request_latency_s:.3f} s"
        )
        if self.decode_breakdown is not None:
            lines += ["", self.decode_breakdown.to_text(f"decode step, batch {self.batch}")]
        if self.prefill_breakdown is not None:
            lines += ["", self.prefill_breakdown.to_text("prefill of one prompt (first iteration)")]
        return "\n".join(lines)


@dataclass
class LLMEstimates:
    """Several batch sizes of one configuration: a table of them, and the full estimate (memory,
    ceiling, per-operator breakdown) of the largest."""

    estimates: list[LLMEstimate]

    @property
    def largest(self) -> LLMEstimate:
        return self.estimates[-1]

    def __getattr__(self, name: str) -> Any:
        """Everything else is the largest batch's (``prefill_s``, ``fit``, breakdowns ...)."""
        if name.startswith("__") or name == "estimates":
            raise AttributeError(name)
        return getattr(self.largest, name)

    def to_dict(self) -> dict[str, Any]:
        return {**self.largest.to_dict(), "batches": [e.row() for e in self.estimates]}

    def to_text(self) -> str:
        e = self.largest
        if e.prefill_s is None or len(self.estimates) == 1:
            return e.to_text()
        ms = 1e3
        lines = e.to_text().splitlines()
        head = lines[:3]
        rows = [
            f"         {x.batch:>6}  {x.prefill_batch_s * ms:>12.2f}  {x.decode_step_s * ms:>14.2f}"
            f"  {x.decode_tokens_per_s:>12,.0f}  {x.request_latency_s:>9.3f}"
            + ("" if x.batch_fits else f"  (at most {x.max_batch} fit)")
            for x in self.estimates
        ]
        body = [
            f"prefill  1 prompt of {e.prompt:,} tokens: {e.prefill_s * ms:.2f} ms "
            f"({e.prefill_iterations} iteration{'s' * (e.prefill_iterations > 1)})",
            f"batches  decode at context {e.decode_context:,}; prefill of all the batch's "
            f"prompts; request = prefill + {e.output} decode steps",
            f"         {'batch':>6}  {'prefill ms':>12}  {'decode ms/step':>14}  "
            f"{'tokens/s':>12}  {'request s':>9}",
            *rows,
        ]
        tail = lines[3:]
        start = next(i for i, x in enumerate(tail) if x.startswith("ceiling"))
        end = next(i for i, x in enumerate(tail) if x.startswith("request"))
        return "\n".join(head + body + tail[start:end] + tail[end + 1 :])


def estimate_llm(
    gpu: GPU,
    model: TransformerModel,
    precision: str | Precision,
    tp: int = 1,
    batch: int = 1,
    prompt: int = 1024,
    output: int = 256,
    settings: LLMEngineSettings | None = None,
    timer: OpTimer | None = None,
) -> LLMEstimate:
    """Prefill and decode times, memory fit and throughput ceiling of one configuration.

    Decode runs ``batch`` sequences at context ≈ prompt + output / 2; the ceiling is decode
    throughput at the largest batch whose KV at prompt + output tokens fits (capped by
    max_num_seqs). Prefill times include the per-iteration scheduler overhead.

    >>> from capsim.catalog import load_catalog
    >>> from capsim.models import load_model_card
    >>> e = estimate_llm(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp8", batch=32)
    >>> e.fit.fits and e.max_tokens_per_s > e.decode_tokens_per_s > 0
    True
    """
    if batch < 1 or prompt < 1 or output < 0:
        raise ValueError(
            f"need batch >= 1, prompt >= 1, output >= 0 (got {batch}, {prompt}, {output})"
        )
    st = (settings or LLMEngineSettings()).for_gpu(gpu)
    p = _precision(precision)
    full = prompt + output
    fit = memory_fit(gpu, model, p, tp, st, context=full)
    ctx = prompt + output // 2
    base = dict(
        gpu=gpu.id, model=model.name, precision=p.name, math_format=p.math_format(gpu.peak_tflops),
        tp=tp, batch=batch, prompt=prompt, output=output, decode_context=ctx, fit=fit,
        max_batch=fit.max_batch,
    )  # fmt: skip
    if precision_problem(gpu, p) or parallelism_problem(gpu, model, tp):
        none = dict.fromkeys(
            ("prefill_s", "prefill_batch_s", "decode_step_s", "decode_tokens_per_s",
             "max_batch_step_s", "max_tokens_per_s", "request_latency_s"),
        )  # fmt: skip
        return LLMEstimate(**base, **none, prefill_iterations=0)
    svc = LLMServiceModel(gpu, model, p, tp, st, timer)
    one = prefill_iterations(1, prompt, st)
    prefill_s = _prefill_time(svc, one)
    prefill_batch_s = _prefill_time(svc, prefill_iterations(batch, prompt, st))
    step = _decode_step(svc, batch, ctx)
    top = fit.max_batch
    top_step = _decode_step(svc, top, ctx) if top else None
    return LLMEstimate(
        **base,
        prefill_s=prefill_s,
        prefill_iterations=len(one),
        prefill_batch_s=prefill_batch_s,
        decode_step_s=step,
        decode_tokens_per_s=batch / step,
        max_batch_step_s=top_step,
        max_tokens_per_s=top / top_step if top_step else 0.0,
        request_latency_s=prefill_s + output * step,
        decode_breakdown=svc.breakdown(decode=[ctx] * batch),
        prefill_breakdown=svc.breakdown(
            prefill=[(c, b) for c, b, _ in one[0]], num_logits=sum(e for *_, e in one[0])
        ),
    )


def _prefill_time(svc: LLMServiceModel, iterations: list[list[tuple[int, int, bool]]]) -> float:
    total = 0.0
    for it in iterations:
        shape = IterationShape.of([(c, b) for c, b, _ in it], num_logits=sum(e for *_, e in it))
        total += svc.iteration_time(*shape)
    return total


def _decode_step(svc: LLMServiceModel, batch: int, context: int) -> float:
    """One decode iteration of ``batch`` sequences at ``context`` tokens each."""
    return svc.iteration_time(batch, batch, batch * context, 0.0, batch)


def engine_settings(
    engine: dict[str, Any], model: TransformerModel | None = None, gpu: GPU | None = None
) -> LLMEngineSettings:
    """``fleet.batching.engine`` validated; errors name ``fleet.batching.engine.<field>``.

    With ``gpu``, the settings on that card (:meth:`LLMEngineSettings.for_gpu`). With
    ``model``, also what vLLM checks against the model at start-up: ``max_model_len`` at most
    the model's context, and without chunked prefill a token budget that holds a whole
    ``max_model_len`` prompt (else a long prompt could never be scheduled).
    """
    try:
        st = LLMEngineSettings(**engine)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        where = f"fleet.batching.engine.{loc}" if loc else "fleet.batching.engine"
        if err.get("type") == "extra_forbidden":
            accepted = ", ".join(sorted(LLMEngineSettings.model_fields))
            msg = f"unknown engine setting '{loc}'; accepted: {accepted}"
        else:
            msg = err.get("msg", "invalid value")
            if "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
        raise InputError(msg, where=where) from None
    if gpu is not None:
        st = st.for_gpu(gpu)
    if st.max_num_batched_tokens < st.max_num_seqs:
        raise InputError(
            f"max_num_batched_tokens ({st.max_num_batched_tokens}) must be >= max_num_seqs "
            f"({st.max_num_seqs}), as vLLM requires",
            where="fleet.batching.engine.max_num_batched_tokens",
        )
    if model is not None:
        mml = st.max_model_len or model.max_context
        if mml > model.max_context:
            raise InputError(
                f"max_model_len {mml:,} exceeds {model.name}'s context of "
                f"{model.max_context:,} tokens",
                where="fleet.batching.engine.max_model_len",
            )
        if not st.chunked_prefill and st.max_num_batched_tokens < mml:
            raise InputError(
                f"without chunked prefill max_num_batched_tokens ({st.max_num_batched_tokens:,}) "
                f"must be >= max_model_len ({mml:,}), as vLLM requires: a longer prompt could "
                "never be scheduled; raise the budget, lower max_model_len or chunk",
                where="fleet.batching.engine.max_num_batched_tokens",
            )
    return st
