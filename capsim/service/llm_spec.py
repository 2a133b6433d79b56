"""Speculative decoding on an LLM replica: the cost of a verify step and the engine's timer.

A *verify step* runs the target model once over every prefill chunk and ``k + 1`` positions
of each decoding sequence: the weights are read once, each sequence's KV cache is read once,
and the linear layers, the LM head and the attention math do ``k + 1`` times a decode step's
work. Before it the proposer runs: ``k`` sequential decode steps of the draft card (kind
``draft``; it also prefills the prompt chunks), ``k`` passes of about one target decoder
layer plus the LM head (``eagle``), or host time only (``ngram``).

**Expectation, not sampling.** Each decoding sequence gains E[N] tokens per verify step on
average (:meth:`~capsim.spec.speculative._SpecBase.expected_tokens`). The engine keeps its
one-token-per-iteration bookkeeping, so :meth:`SpeculativeTimer.iteration_time` charges each
engine iteration 1 / E of a verify step: a decode-only iteration costs verify / E; an
iteration with prefill chunks costs what the chunks add to the verify step in full plus 1 / E
of the decode-only verify step. KV blocks, contexts, TTFT and TPOT then follow in expectation;
the spread of accepted counts between sequences and steps is not simulated.
"""

from __future__ import annotations

from dataclasses import replace

from capsim.service.comm import OpContext, OpTimer
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import draft_card
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel
from capsim.spec.precision import Precision


class SpeculativeTimer:
    """Iteration times of a replica that decodes speculatively (``svc.settings.speculative``).

    >>> from capsim.load import load_catalog, load_model_card
    >>> st = LLMEngineSettings(speculative={"kind": "ngram", "k": 4, "acceptance": 0.7})
    >>> svc = LLMServiceModel(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"), "fp16", 1, st)
    >>> spec = SpeculativeTimer(svc)
    >>> spec.iteration_time(1, 1, 1000) < svc.iteration_time(1, 1, 1000)  # batch 1 gains
    True
    """

    def __init__(self, svc: LLMServiceModel, draft: LLMServiceModel | None = None):
        spec = svc.settings.speculative
        if spec is None:
            raise ValueError("the engine settings have no speculative decoding")
        if spec.kind == "draft" and draft is None:
            raise ValueError("speculative kind draft needs the draft model's service model")
        self.svc, self.spec, self.draft = svc, spec, draft
        self.k = spec.k
        self.q = spec.k + 1  # positions each decoding sequence runs through the target
        self.expected = spec.expected_tokens()
        self.host_s = spec.host_us_per_seq * 1e-6 if spec.kind == "ngram" else 0.0

    # -- the engine's timer ------------------------------------------------------------------
    def iteration_time(
        self,
        num_tokens: int,
        num_decode: int = 0,
        decode_context: float = 0,
        prefill_work: float = 0.0,
        num_logits: int | None = None,
        prefill_kv: float | None = None,
    ) -> float:
        """Seconds the engine charges one iteration (one token per decoding sequence): see
        the module docstring. Arguments as :meth:`LLMServiceModel.iteration_time`."""
        if num_tokens <= 0:
            return 0.0
        full = self.verify_time(
            num_tokens, num_decode, decode_context, prefill_work, num_logits, prefill_kv
        )
        if num_decode <= 0:
            return full
        if num_tokens == num_decode:  # decode only
            return full / self.expected
        dec = self.verify_time(num_decode, num_decode, decode_context, 0.0, num_decode)
        return full - dec * (1.0 - 1.0 / self.expected)

    def tpot_s(self, batch: int, context: float) -> float:
        """Expected seconds per output token of ``batch`` sequences at ``context`` tokens."""
        return self.iteration_time(batch, batch, batch * context, 0.0, batch)

    # -- one real step -----------------------------------------------------------------------
    def verify_time(
        self,
        num_tokens: int,
        num_decode: int = 0,
        decode_context: float = 0,
        prefill_work: float = 0.0,
        num_logits: int | None = None,
        prefill_kv: float | None = None,
    ) -> float:
        """Seconds of one real step: proposals, then the target over the prefill chunks and
        ``k + 1`` positions per decoding sequence (its CPU overhead per sequence)."""
        svc, d = self.svc, num_decode
        n_pre = num_tokens - d
        if num_logits is None:
            num_logits = d + (1 if n_pre > 0 else 0)
        pre_logits = num_logits - d
        rows, logits = n_pre + d * self.q, pre_logits + d * self.q
        t = svc._tok[rows] if rows < svc._size else svc._slow("tok", rows)
        if logits:
            t += svc._log[logits] if logits < svc._size else svc._slow("log", logits)
        t += self._attention(n_pre, prefill_work, prefill_kv, d, decode_context)
        t += svc.cpu_overhead_s(max(num_logits, d))
        return t + self.propose_time(n_pre, d, decode_context, prefill_work, pre_logits, prefill_kv)

    def propose_time(
        self,
        n_pre: int,
        d: int,
        ctx: float,
        work: float = 0.0,
        pre_logits: int = 0,
        kv: float | None = None,
    ) -> float:
        """Seconds the proposer adds to a step with ``n_pre`` prefill tokens and ``d``
        decoding sequences of total context ``ctx``."""
        kind = self.spec.kind
        if kind == "ngram":
            return d * self.host_s
        if kind == "draft":
            draft = self.draft
            assert draft is not None  # checked in __init__
            t = self.k * draft.iteration_time(d, d, ctx, 0.0, d) if d else 0.0
            if n_pre:
                t += draft.iteration_time(n_pre, 0, 0.0, work, pre_logits, kv)
            return t
        # eagle: ~ one target decoder layer + the LM head per proposed token
        svc = self.svc
        layers = svc.shard.layers
        t = 0.0
        if d:
            layer = (svc.iteration_time(d, d, ctx, 0.0, 0) - svc.cpu_overhead_s(d)) / layers
            head = svc._log[d] if d < svc._size else svc._slow("log", d)
            t += self.k * (layer + head)
        if n_pre:
            body = svc.iteration_time(n_pre, 0, 0.0, work, 0, kv) - svc.cpu_overhead_s(0)
            t += body / layers
        return t

    def _attention(self, n_pre: int, work: float, kv: float | None, d: int, ctx: float) -> float:
        """Attention of the prefill chunks, and of k + 1 queries per decoding sequence against
        its context (KV read once, math x (k + 1))."""
        svc, q = self.svc, self.q
        if svc._attn is not None:
            per_flop, per_q, per_kv, ko, layers = svc._attn
            t = 0.0
            if n_pre > 0:
                pkv = n_pre if kv is None else kv
                t += layers * (max(work * per_flop, n_pre * per_q + pkv * per_kv) + ko)
            if d > 0:
                mem = d * q * per_q + ctx * per_kv
                t += layers * (max(q * ctx * per_flop, mem) + ko)
            return t
        t = 0.0
        for op, c in svc._attention_ops(n_pre, work, kv, 0, 0.0):
            t += op.count * svc._time_op(op, c).time_s
        if d > 0:
            op = svc._attn_decode_op(d * q, ctx)
            op = replace(op, flops=op.flops * q)
            c = OpContext(
                op.name, d * q, svc.tp, d * q, num_seqs=d, kv_tokens=ctx, attn_work=ctx * q
            )
            t += op.count * svc._time_op(op, c).time_s
        return t


def speculative_timer(
    svc: LLMServiceModel,
    gpu: GPU,
    precision: str | Precision,
    tp: int,
    timer: OpTimer | None = None,
) -> SpeculativeTimer | None:
    """The speculative timer of ``svc`` (None when its settings have no speculation): for a
    draft model, its own service model on the same GPUs at the same precision and KV dtype,
    with no engine CPU overhead of its own (it runs inside the target's step)."""
    spec = svc.settings.speculative
    if spec is None:
        return None
    draft = None
    if spec.kind == "draft":
        card: TransformerModel = draft_card(spec)
        st: LLMEngineSettings = svc.settings.model_copy(
            update={"speculative": None, "preset": "none", "cpu_overhead": None,
                    "scheduler_overhead_ms": None}
        )  # fmt: skip
        draft = LLMServiceModel(gpu, card, precision, tp, st, timer)
    return SpeculativeTimer(svc, draft)
