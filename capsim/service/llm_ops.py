"""Operator costs of one LLM engine iteration: the per-layer GEMMs, attention, norms and the LM head."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, NamedTuple

from capsim.service.comm import OpContext
from capsim.service.llm_memory import precision_problem
from capsim.service.roofline import OpTime
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.precision import Precision

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
                    "source": "engine cpu_overhead (constant + per sequence)",
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
        room = budget
        it: list[tuple[int, int, bool]] = []
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
