"""The closed-form LLM estimate: time to first token, per-token latency and throughput at a batch size."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from capsim.service.comm import OpTimer
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import (
    MemoryFit,
    _precision,
    kv_bytes_per_token,
    memory_fit,
    parallelism_problem,
    precision_problem,
)
from capsim.service.llm_moe import experts_read, moe_summary
from capsim.service.llm_ops import IterationBreakdown, IterationShape, prefill_iterations
from capsim.service.llm_spec import SpeculativeTimer, speculative_timer
from capsim.spec.catalog import GIB, GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel
from capsim.spec.precision import Precision


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
    max_batch_prefill_s: float | None
    decode_cpu_s: float | None
    request_latency_s: float | None
    ep: int = 1
    moe_line: str = ""
    experts_read: float | None = None
    decode_breakdown: IterationBreakdown | None = field(default=None, repr=False)
    prefill_breakdown: IterationBreakdown | None = field(default=None, repr=False)
    speculative: str | None = None  # e.g. "draft llama-3.2-1b, k=4, acceptance 0.6"
    spec_expected_tokens: float | None = None  # E[tokens] per verify step
    spec_tpot_s: float | None = None  # seconds per output token at ``batch``, speculating
    spec_breakeven_batch: int | None = None  # smallest batch where speculation stops paying
    spec_max_tokens_per_s: float | None = None  # the ceiling's output rate, speculating
    kv_handoff: tuple[tuple[str, float], ...] = ()  # disaggregated: (link, seconds) per prompt
    kv_handoff_bytes: float = 0.0

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
        row = {
            "batch": self.batch,
            "prefill_batch_s": self.prefill_batch_s,
            "decode_step_s": self.decode_step_s,
            "decode_tokens_per_s": self.decode_tokens_per_s,
            "request_latency_s": self.request_latency_s,
            "batch_fits": self.batch_fits,
            "experts_read": self.experts_read,
        }
        if self.speculative is not None:
            row["spec_tpot_s"] = self.spec_tpot_s
        return row

    def spec_lines(self) -> list[str]:
        """Speculative decoding at this batch, and where it stops paying (none if off)."""
        if self.speculative is None or self.spec_tpot_s is None or not self.decode_step_s:
            return []
        gain = self.decode_step_s / self.spec_tpot_s
        be = self.spec_breakeven_batch
        where = (
            f"stops paying at batch {be:,} (TPOT with >= without)"
            if be is not None
            else "pays at every batch that fits"
        )
        lines = [
            f"specdec  {self.speculative}: E = {self.spec_expected_tokens:.2f} tokens per verify "
            f"step; batch {self.batch}: TPOT {self.spec_tpot_s * 1e3:.2f} ms vs "
            f"{self.decode_step_s * 1e3:.2f} ms without (x{gain:.2f}); {where}"
        ]
        if self.spec_max_tokens_per_s is not None and self.max_tokens_per_s:
            lines.append(
                f"         at the ceiling (batch {self.max_batch}): "
                f"{self.spec_max_tokens_per_s:,.0f} output tokens/s speculating vs "
                f"{self.max_tokens_per_s:,.0f} without"
            )
        return lines

    def to_text(self) -> str:
        """A human summary and the per-operator table of one decode step."""
        f = self.fit
        gpus = f"{self.gpu}" + (f" x{self.tp} (tp={self.tp})" if self.tp > 1 else "")
        gpus += f" ep={self.ep}" if self.ep > 1 else ""
        lines = [
            f"{self.model} on {gpus} at {self.precision} ({self.math_format or 'unsupported'} math)",
            f"memory   {f.reason}",
            f"         per GPU: weights {f.weight_bytes / GIB:.2f} GiB, usable "
            f"{f.usable_bytes / GIB:.2f} GiB, KV cache {f.kv_cache_bytes / GIB:.2f} GiB = "
            f"{f.kv_tokens:,} tokens ({f.kv_bytes_per_token / 1024:g} KiB/token, KV cache "
            f"{f.kv_cache_dtype})",
        ]
        if self.prefill_s is None:
            return "\n".join(lines)
        # the timings are all None (unsupported) or all numbers
        assert self.prefill_batch_s is not None and self.decode_step_s is not None
        ms = 1e3
        lines += [
            f"prefill  1 prompt of {self.prompt:,} tokens: {self.prefill_s * ms:.2f} ms "
            f"({self.prefill_iterations} iteration{'s' * (self.prefill_iterations > 1)}); "
            f"{self.batch} prompts: {self.prefill_batch_s * ms:.2f} ms",
            f"decode   batch {self.batch} at context {self.decode_context:,}: "
            f"{self.decode_step_s * ms:.2f} ms/step = {self.decode_tokens_per_s:,.0f} tokens/s"
            + ("" if self.batch_fits else f" (but at most {self.max_batch} sequences fit)"),
        ]
        lines += self.spec_lines()
        if self.max_batch and self.max_batch_step_s and self.max_batch_prefill_s is not None:
            lines.append(
                f"ceiling  batch {self.max_batch} (largest at {self.prompt + self.output:,} "
                f"tokens): {self.max_batch_step_s * ms:.2f} ms/step, prefill of "
                f"{self.max_batch:,} prompts {self.max_batch_prefill_s * ms:,.0f} ms = "
                f"{self.max_tokens_per_s:,.0f} output tokens/s"
            )
        else:
            lines.append("ceiling  0 tokens/s: no sequence of this length fits")
        lines.append(
            f"request  prefill + {self.output} decode steps at batch {self.batch} ~ "
            f"{self.request_latency_s:.3f} s"
        )
        if self.kv_handoff:
            lines.append(
                f"kv move  disaggregated hand-off of one prompt's KV cache "
                f"({self.kv_handoff_bytes / 2**20:,.1f} MiB): "
                + ", ".join(f"{s * ms:.2f} ms over {name}" for name, s in self.kv_handoff)
            )
        if self.moe_line:
            lines.append(self.moe_line)
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
        spec = e.speculative is not None
        rows = [
            f"         {x.batch:>6}  {_known(x.prefill_batch_s) * ms:>12.2f}  "
            f"{_known(x.decode_step_s) * ms:>14.2f}"
            f"  {x.decode_tokens_per_s:>12,.0f}  {x.request_latency_s:>9.3f}"
            + (
                f"  {_known(x.spec_tpot_s) * ms:>11.2f}  "
                f"x{_known(x.decode_step_s) / _known(x.spec_tpot_s):.2f}"
                if spec
                else ""
            )
            + (f"  {x.experts_read:>13.1f}" if x.experts_read is not None else "")
            + ("" if x.batch_fits else f"  (at most {x.max_batch} fit)")
            for x in self.estimates
        ]
        body = [
            f"prefill  1 prompt of {e.prompt:,} tokens: {e.prefill_s * ms:.2f} ms "
            f"({e.prefill_iterations} iteration{'s' * (e.prefill_iterations > 1)})",
            f"batches  decode at context {e.decode_context:,}; prefill of all the batch's "
            f"prompts; request = prefill + {e.output} decode steps",
            f"         {'batch':>6}  {'prefill ms':>12}  {'decode ms/step':>14}  "
            f"{'tokens/s':>12}  {'request s':>9}"
            + (f"  {'spec ms/tok':>11}  gain" if spec else "")
            + (f"  {'experts read':>13}" if e.experts_read is not None else ""),
            *rows,
        ]
        tail = lines[3:]
        start = next(i for i, x in enumerate(tail) if x.startswith(("specdec", "ceiling")))
        end = next(i for i, x in enumerate(tail) if x.startswith("request"))
        return "\n".join(head + body + tail[start:end] + tail[end + 1 :])


def _known(x: float | None) -> float:
    """A timing of a supported configuration (every estimate in a table is one)."""
    assert x is not None
    return x


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
    ep: int = 1,
) -> LLMEstimate:
    """Prefill and decode times, memory fit and throughput ceiling of one configuration.

    Decode runs ``batch`` sequences at context ≈ prompt + output / 2; the ceiling is the output
    token rate at the largest batch whose KV at prompt + output tokens fits (capped by
    max_num_seqs), each request paying its prompt's prefill and ``output`` decode steps at that
    batch. Prefill times include the per-iteration CPU overhead.

    >>> from capsim.load import load_catalog
    >>> from capsim.load import load_model_card
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
    fit = memory_fit(gpu, model, p, tp, st, context=full, ep=ep)
    ctx = prompt + output // 2
    base: dict[str, Any] = dict(
        gpu=gpu.id, model=model.name, precision=p.name, math_format=p.math_format(gpu.peak_tflops),
        tp=tp, ep=ep, batch=batch, prompt=prompt, output=output, decode_context=ctx, fit=fit,
        max_batch=fit.max_batch,
    )  # fmt: skip
    if precision_problem(gpu, p) or parallelism_problem(gpu, model, tp, ep):
        none: dict[str, Any] = dict.fromkeys(
            ("prefill_s", "prefill_batch_s", "decode_step_s", "decode_tokens_per_s",
             "max_batch_step_s", "max_tokens_per_s", "max_batch_prefill_s",
             "request_latency_s", "decode_cpu_s"),
        )  # fmt: skip
        return LLMEstimate(**base, **none, prefill_iterations=0)
    svc = LLMServiceModel(gpu, model, p, tp, st, timer, ep)
    spec = speculative_timer(svc, gpu, p, tp, timer)
    one = prefill_iterations(1, prompt, st)
    prefill_s = _prefill_time(svc, one)
    prefill_batch_s = _prefill_time(svc, prefill_iterations(batch, prompt, st))
    step = _decode_step(svc, batch, ctx)
    top = fit.max_batch
    top_step = _decode_step(svc, top, ctx) if top else None
    top_prefill = _prefill_time(svc, prefill_iterations(top, prompt, st)) if top else None
    e = LLMEstimate(
        **base,
        prefill_s=prefill_s,
        prefill_iterations=len(one),
        prefill_batch_s=prefill_batch_s,
        decode_step_s=step,
        decode_tokens_per_s=batch / step,
        max_batch_step_s=top_step,
        max_batch_prefill_s=top_prefill,
        decode_cpu_s=svc.cpu_overhead_s(batch),
        max_tokens_per_s=_ceiling(top, output, top_step, top_prefill),
        request_latency_s=prefill_s + output * step,
        moe_line=moe_summary(svc.shard, batch, top),
        experts_read=experts_read(svc.shard, batch),
        decode_breakdown=svc.breakdown(decode=[ctx] * batch),
        prefill_breakdown=svc.breakdown(
            prefill=[(c, b) for c, b, _ in one[0]], num_logits=sum(e for *_, e in one[0])
        ),
        **_spec_fields(spec, svc, batch, ctx, max(top, batch)),
        **_handoff(gpu, model, p, tp, st, prompt),
    )
    if spec is not None and top and e.spec_tpot_s is not None:
        pre = _prefill_time(spec, prefill_iterations(top, prompt, st))  # + the draft's prefill
        ceiling = _ceiling(top, output, spec.tpot_s(top, ctx), pre)
        e = replace(e, spec_max_tokens_per_s=ceiling)
    return e


def _spec_fields(
    spec: SpeculativeTimer | None, svc: LLMServiceModel, batch: int, ctx: int, most: int
) -> dict[str, Any]:
    """The speculative columns of an estimate: TPOT at ``batch`` and the first batch (up to
    ``most``) where speculating is no faster than decoding one token per step."""
    if spec is None:
        return {}
    sp = spec.spec
    what = f"draft {sp.draft_model.name}" if sp.kind == "draft" else sp.kind  # type: ignore[union-attr]

    def loses(b: int) -> bool:
        return spec.tpot_s(b, ctx) >= _decode_step(svc, b, ctx)

    # the loss grows with the batch: double until it loses, then bisect
    hi = 1
    while hi < most and not loses(hi):
        hi = min(most, 2 * hi)
    breakeven = None
    if loses(hi):
        lo = hi // 2 + 1 if hi > 1 else 1
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (lo, mid) if loses(mid) else (mid + 1, hi)
        breakeven = hi
    return dict(
        speculative=f"{what}, k={sp.k}, acceptance {sp.acceptance}",
        spec_expected_tokens=spec.expected,
        spec_tpot_s=spec.tpot_s(batch, ctx),
        spec_breakeven_batch=breakeven,
    )


def _handoff(
    gpu: GPU, model: TransformerModel, p: Precision, tp: int, st: LLMEngineSettings, prompt: int
) -> dict[str, Any]:
    """The KV cache of one prompt moved to a decode replica of the same tp (disaggregated
    serving, see capsim.sim.llm_disagg): latency + bytes / (tp GPU links x bandwidth x
    efficiency), within a node (``interconnect``) and across nodes (``interconnect.network``).

    >>> from capsim.load import load_catalog, load_model_card
    >>> h = _handoff(load_catalog()["h100-sxm"], load_model_card("llama-3.1-8b"),
    ...              _precision("fp16"), 1, LLMEngineSettings(), 4096)
    >>> h["kv_handoff_bytes"] / 2**20, [(n, round(s * 1e3, 2)) for n, s in h["kv_handoff"]]
    (512.0, [('nvlink', 1.33), ('ethernet', 35.8)])
    """
    nbytes = kv_bytes_per_token(model, p, 1, st.kv_cache_dtype) * prompt
    ic = gpu.interconnect
    links: list[tuple[str, float, float, float]] = []
    if ic.kind != "none":
        links.append((ic.kind, ic.latency_us, ic.bandwidth_gb_s, ic.efficiency))
    if ic.network is not None:
        n = ic.network
        links.append((n.kind, n.latency_us, n.bandwidth_gb_s, n.efficiency))
    moves = tuple(
        (name, lat * 1e-6 + nbytes / (tp * bw * 1e9 * eff)) for name, lat, bw, eff in links
    )
    return {"kv_handoff": moves, "kv_handoff_bytes": nbytes}


def _ceiling(top: int, output: int, step: float | None, prefill: float | None) -> float:
    """Output tokens/s of a replica that keeps ``top`` sequences running: every request costs
    its share of the prefill of ``top`` prompts plus ``output`` decode steps at batch ``top``.

    >>> round(_ceiling(100, 100, 0.02, 1.0))   # 10,000 tokens in 1 s prefill + 2 s decode
    3333
    >>> _ceiling(0, 100, None, None)
    0.0
    """
    if not top or not step or output <= 0:
        return 0.0
    return top * output / ((prefill or 0.0) + output * step)


def _prefill_time(
    svc: LLMServiceModel | SpeculativeTimer, iterations: list[list[tuple[int, int, bool]]]
) -> float:
    total = 0.0
    for it in iterations:
        shape = IterationShape.of([(c, b) for c, b, _ in it], num_logits=sum(e for *_, e in it))
        total += svc.iteration_time(*shape)
    return total


def _decode_step(svc: LLMServiceModel, batch: int, context: int) -> float:
    """One decode iteration of ``batch`` sequences at ``context`` tokens each."""
    return svc.iteration_time(batch, batch, batch * context, 0.0, batch)
