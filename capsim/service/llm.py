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

>>> from capsim.load import load_catalog
>>> from capsim.load import load_model_card
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
from dataclasses import replace

import numpy as np

from capsim.service.calibrated import timer_for
from capsim.service.comm import (
    COMM_OPS,
    OpContext,
    OpTimer,
    collective_seconds,
    default_op_timer,
)
from capsim.service.llm_memory import (
    MemoryFit,
    Shard,
    _precision,
    embedding_bytes_per_param,
    memory_fit,
    parallelism_problem,
    precision_problem,
    stream_bytes,
)
from capsim.service.llm_moe import EXPERT_READ_OPS, moe_ops
from capsim.service.llm_ops import (
    IterationBreakdown,
    IterationShape,
    Num,
    OpLine,
    _formats,
    _gemm,
    _Op,
    _summed,
    prefill_work,
)
from capsim.service.roofline import OpCost, OpTime
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel
from capsim.spec.precision import Precision, kv_cache_bits


def _calibrated_timer(gpu: GPU) -> OpTimer | None:
    """The entry's calibrated timer (measured tables, fitted curves), None if uncalibrated."""
    if gpu.calibration is None:
        return None
    return timer_for(gpu)


def _expert_step_mix(
    iterations: float, tokens: float, logits: float, prefill: float
) -> list[tuple[float, float]]:
    """(iterations, tokens per iteration) of a run's two kinds of step, for the expert reads,
    which are concave in the tokens of a step: every iteration decodes the mean batch
    (decode tokens / iterations); one iteration per started prompt (at most all of them)
    adds its prompt's tokens. ``prefill``: prompt tokens computed; started prompts are the
    logits rows beyond the decode tokens.

    >>> _expert_step_mix(100.0, 3000.0, 2010.0, 1000.0)
    [(90.0, 20.0), (10.0, 120.0)]
    """
    if iterations <= 0:
        return []
    decode = max(tokens - prefill, 0.0)
    started = min(iterations, max(logits - decode, 0.0))
    dec = decode / iterations
    if started <= 0 or prefill <= 0:
        return [(iterations, tokens / iterations)]
    return [(iterations - started, dec), (started, dec + prefill / started)]


class LLMServiceModel:
    """Iteration times and memory of one replica: ``model`` at ``precision`` on ``tp`` GPUs.

    Building it precomputes the token-proportional operators (everything but attention and
    the LM head) for T = 0..max_num_batched_tokens; :meth:`iteration_time` then costs a table
    lookup and a few float operations (~1 us). Pass ``timer`` to replace the roofline by, e.g.,
    a calibrated timer that interpolates measured tables; with a custom timer the tables are
    filled by calling it for every T (once, at construction) and attention is timed per call.

    >>> from capsim.load import load_catalog
    >>> from capsim.load import load_model_card
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
        ep: int = 1,
    ):
        self.gpu = gpu
        self.ep = ep
        self.model = model
        self.precision = _precision(precision)
        self.tp = tp
        self.settings = (settings or LLMEngineSettings()).for_gpu(gpu)
        # a calibrated catalog entry brings its own timer (capsim.service.calibrated)
        self.timer: OpTimer = timer or _calibrated_timer(gpu) or default_op_timer
        problem = precision_problem(gpu, self.precision) or parallelism_problem(gpu, model, tp, ep)
        if problem:
            raise ValueError(problem)
        self.shard = Shard.of(model, tp, ep)
        #: bytes of one stored KV element (``settings.kv_cache_dtype``): KV writes and reads
        self.kv_bytes = kv_cache_bits(self.precision, self.settings.kv_cache_dtype) / 8
        self.formats = _formats(gpu, self.precision)
        #: reads of each KV head's cache per decode step (engine; capped at the group size)
        reads, self.kv_reads_source = self.settings.kv_reads
        group = self.shard.q_heads / max(self.shard.kv_heads, 1)
        self.kv_reads = max(1.0, min(reads, group))
        self._vectorized = self.timer is default_op_timer
        self._table_times = getattr(self.timer, "table_times", None)  # vectorised custom timer
        self.overhead = self.settings.overhead
        self._cpu_const = self.overhead.constant_ms * 1e-3
        self._cpu_seq = self.overhead.per_seq_us * 1e-6
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
            self.gpu,
            self.model,
            self.precision,
            self.tp,
            self.settings,
            context=context,
            ep=self.ep,
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
                mem = num_decode * per_q + decode_context * per_kv * self.kv_reads
                t += layers * (max(decode_context * per_flop, mem) + ko)
        else:
            for op, ctx in self._attention_ops(
                n_pre, prefill_work, prefill_kv, num_decode, decode_context
            ):
                t += op.count * self._time_op(op, ctx).time_s
        return t + self.cpu_overhead_s(max(num_logits, num_decode))

    def cpu_overhead_s(self, seqs: float) -> float:
        """Host time of one iteration with ``seqs`` sequences (``settings.overhead``)."""
        return self._cpu_const + self._cpu_seq * seqs

    def work_per_gpu(
        self,
        iterations: float,
        tokens: float,
        logits: float,
        decode_context: float,
        prefill_work: float,
        prefill_kv: float,
    ) -> tuple[float, float]:
        """(FLOPs, bytes) one GPU of the replica moves over a run, from its aggregates.

        ``iterations`` read the weights once each; ``tokens`` (new tokens: prompt tokens and one
        per decoding sequence) go through every token operator, ``logits`` rows through the LM
        head and sampler; attention adds its FLOPs (``decode_context`` and ``prefill_work``, see
        :func:`~capsim.service.llm_ops.prefill_work`) and KV reads (``decode_context`` +
        ``prefill_kv`` tokens). The same operator costs as the timer's, so achieved FLOP/s and
        bytes/s divided by the card's peaks are the compute and memory-bandwidth utilisation.

        >>> from capsim.load import load_catalog, load_model_card
        >>> svc = LLMServiceModel(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp16")
        >>> f, b = svc.work_per_gpu(1, 1, 1, 1000, 0, 0)
        >>> 15e9 < f < 17e9 and 14e9 < b < 17e9   # ~2 x 8B FLOPs, ~15 GB of weights read
        True
        """
        flops = nbytes = 0.0
        for ops_of, rows in ((self._token_ops, tokens), (self._logit_ops, logits)):
            zero = {o.name: o for o in ops_of(0.0)}
            for op in ops_of(1.0):
                if op.name in COMM_OPS:
                    continue
                if op.name in EXPERT_READ_OPS:  # reads grow with distinct experts, not rows
                    for n_it, per in _expert_step_mix(iterations, rows, logits, prefill_kv):
                        x = next(x for x in ops_of(per) if x.name == op.name)
                        flops += op.count * float(x.flops) * n_it
                        nbytes += op.count * float(x.bytes) * n_it
                    continue
                base = zero[op.name]
                per_row_f = float(op.flops) - float(base.flops)
                per_row_b = float(op.bytes) - float(base.bytes)
                flops += op.count * (float(base.flops) * iterations + per_row_f * rows)
                nbytes += op.count * (float(base.bytes) * iterations + per_row_b * rows)
        s = self.shard
        flops += s.layers * 4.0 * s.q_heads * s.attn_dim * (decode_context + prefill_work)
        nbytes += (
            s.layers * s.kv_width * self.kv_bytes * (decode_context * self.kv_reads + prefill_kv)
        )
        return flops, nbytes

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

        >>> from capsim.load import load_catalog
        >>> from capsim.load import load_model_card
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
        lines = tuple(OpLine(self._labelled(op, ctx), op.count, ctx) for op, ctx in ops_ctx)
        cpu = self.cpu_overhead_s(max(shape.num_logits or 0, len(decode)))
        return IterationBreakdown(lines, cpu, shape)

    # -- operator lists ----------------------------------------------------------------------

    def _token_ops(self, t: Num) -> list[_Op]:
        """Operators whose cost depends only on the number of new tokens ``t``."""
        s, p, f = self.shard, self.precision, self.formats
        w, a, o = p.weight_bytes, p.act_bytes, stream_bytes(p)
        kvb, d, h, L = self.kv_bytes, s.head_dim, s.hidden, s.layers
        qk = (s.q_heads + s.kv_heads) * d
        Ld = s.dense_layers
        ops = [
            _Op("embed", 1, 0.0, 2.0 * t * h * o, f.gemm),
            _Op("norm", 2 * L + 1, 0.0, 4.0 * t * h * o, f.gemm),
            _gemm("qkv_proj", L, t, s.qkv_width, h, w, a, o, f.gemm),
            _Op("rope_kv_write", L, 0.0, t * (2.0 * qk * o + s.kv_width * (o + kvb)), f.gemm, 2),
            _gemm("o_proj", L, t, h, s.o_in, w, a, o, f.gemm),
        ]
        if Ld:
            ops += [
                _gemm("mlp_up", Ld, t, s.up_width, h, w, a, o, f.gemm),
                _Op("mlp_act", Ld, 0.0, t * (s.up_width * o + s.ffn * a), f.gemm),
                _gemm("mlp_down", Ld, t, h, s.ffn, w, a, o, f.gemm),
            ]
        if s.moe_layers:
            ops += moe_ops(s, t, w, a, o, f.gemm)
        if self.tp > 1:
            # with ep > 1 the MoE layers combine by all-to-all instead of an all-reduce
            reduces = 2 * L + 1 if self.ep == 1 else L + Ld + 1
            ops.append(_Op("all_reduce", reduces, 0.0, t * h * o, f.gemm))
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
        flops = 4.0 * s.q_heads * s.attn_dim * work
        nbytes = 2.0 * n_pre * s.q_heads * d * o + s.kv_width * self.kv_bytes * kv
        return _Op("attn_prefill", s.layers, flops, nbytes, self.formats.attn)

    def _attn_decode_op(self, n_dec: float, ctx: float) -> _Op:
        s, p = self.shard, self.precision
        o, d = stream_bytes(p), s.head_dim
        flops = 4.0 * s.q_heads * s.attn_dim * ctx
        nbytes = 2.0 * n_dec * s.q_heads * d * o + s.kv_width * self.kv_bytes * ctx * self.kv_reads
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
        return OpContext(op.name, int(rows), self.tp, int(rows), op.n, op.k, ep=self.ep)

    def _labelled(self, op: _Op, ctx: OpContext) -> OpTime:
        """:meth:`_time_op`, its source naming the engine's KV re-reads where they apply."""
        t = self._time_op(op, ctx)
        if op.name != "attn_decode" or self.kv_reads == 1.0:
            return t
        by = self.kv_reads_source if self.settings.decode_kv_reads else self.settings.preset
        why = f"{t.source}, GQA KV read x{self.kv_reads:.2f}/step ({by})"
        return replace(t, source=why)

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
                    self.ep if op.name == "all_to_all" else self.tp, t,
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
            ranks = self.ep if op.name == "all_to_all" else self.tp
            return collective_seconds(gpu.interconnect, op.name, nbytes, ranks)
        peak = gpu.peak_flops(op.fmt)
        assert peak is not None  # the model is built only for formats the card supports
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
        attn_peak = gpu.peak_flops(self.formats.attn)
        assert attn_peak is not None  # the model is built only for formats the card supports
        peak = attn_peak * gpu.efficiency.compute_for(self.formats.attn)
        bw = gpu.bandwidth * gpu.efficiency.memory
        d, o = s.head_dim, stream_bytes(p)
        flop_per_work = 4.0 * s.q_heads * s.attn_dim / peak
        q_bytes = 2.0 * s.q_heads * d * o / bw
        kv_bytes = s.kv_width * self.kv_bytes / bw
        overhead = gpu.kernel_overhead_us * 1e-6
        return (flop_per_work, q_bytes, kv_bytes, overhead, s.layers)
