"""The LLM service adapter: a scenario's model, card and engine settings turned into engine inputs."""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np

from capsim.analysis.metrics import RunMetrics
from capsim.errors import InputError
from capsim.service.fixed import Unsupported
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import MemoryFit, parallelism_problem, precision_problem
from capsim.service.llm_ops import prefill_work
from capsim.service.llm_spec import speculative_timer
from capsim.sim.llm_closed import run_llm_closed
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_measure import measure
from capsim.sim.llm_types import EngineLimits
from capsim.sim.overload import alarm_level
from capsim.spec.catalog import GIB, GPU
from capsim.spec.engine import LLMEngineSettings, engine_settings
from capsim.spec.models import TransformerModel
from capsim.spec.precision import math_units
from capsim.spec.scenario import Scenario
from capsim.workload.arrivals import RequestStream
from capsim.workload.closed_loop import ClosedStream
from capsim.workload.streams import make_stream, memory_limit_requests


@functools.lru_cache(maxsize=16)
def _token_sample(key: str) -> tuple[np.ndarray, np.ndarray]:
    s = Scenario.model_validate_json(key)
    st = make_stream(s, 0)
    if isinstance(st, ClosedStream):
        draw = st.token_draw()
        return draw(4096) if draw is not None else (np.array([1024]), np.array([256]))
    if st.prompt_tokens is None or st.output_tokens is None or not len(st):
        return np.array([1024]), np.array([256])
    return np.asarray(st.prompt_tokens), np.asarray(st.output_tokens)


def token_sample(s) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths of replication 0's stream (for bounds and idle checks)."""
    return _token_sample(s.model_dump_json())


@functools.lru_cache(maxsize=16)
def _prefill_sample(key: str, bs: int) -> np.ndarray:
    s = Scenario.model_validate_json(key)
    st = make_stream(s, 0)
    p, o = token_sample(s)
    pre = getattr(st, "prefixes", None)
    if pre is None or len(p) != len(st):
        return p
    return pre.uncached_prompts(p, o, bs)


def prefill_sample(s, st: LLMEngineSettings) -> np.ndarray:
    """Prompt tokens each request of replication 0 must at least compute: the whole prompt,
    or with prefix caching on shared-prefix traffic its part past what the cache could hold
    (optimistic: for capacity bounds and the idle-replica TTFT check, which must not rule out
    a configuration that caching makes feasible)."""
    if not st.enable_prefix_caching:
        return token_sample(s)[0]
    return _prefill_sample(s.model_dump_json(), st.block_size)


class LLMService:
    """One replica's service model for the planner and the engine (see :func:`make_llm_service`)."""

    def __init__(
        self,
        gpu: GPU,
        model: TransformerModel,
        precision: str,
        tp: int,
        st: LLMEngineSettings,
        ep: int = 1,
    ):
        problem = precision_problem(gpu, precision)
        if problem:
            raise Unsupported(problem)
        problem = parallelism_problem(gpu, model, tp, ep)
        if problem:
            raise Unsupported(problem)
        self.gpu, self.model, self.tp, self.settings, self.ep = gpu, model, tp, st, ep
        self.svc = LLMServiceModel(gpu, model, precision, tp, st, ep=ep)
        self.iteration_time = self.svc.iteration_time  # the engine's timer (bound: no wrapper)
        try:
            self.spec = speculative_timer(self.svc, gpu, precision, tp)
        except ValueError as exc:  # the draft model cannot run here (tp split, precision)
            raise Unsupported(f"speculative draft model: {exc}") from None
        if self.spec is not None:  # each iteration is 1 / E of a verify step (llm_spec)
            self.iteration_time = self.spec.iteration_time
        self.precision = self.svc.precision
        self.math_format = self.svc.formats.gemm
        self.max_model_len = int(st.max_model_len or model.max_context)
        self._fit = self.svc.memory_fit(self.max_model_len)
        self._lines: dict[int, tuple[float, float, float, float] | None] = {}
        self._notes: dict[str, Any] = {}
        self.scenario = None  # set by make_llm_service (trace lines use its token lengths)

    # -- engine interface (iteration_time is the service model's, bound in __init__) ---------
    def decode_lines(self, d: int) -> tuple[float, float, float, float] | None:
        """A decode-only iteration of ``d`` sequences at total context C takes
        max(a1 + b1 C, a2 + b2 C) with the roofline timer (None for custom timers)."""
        attn = self.svc._attn
        if attn is None or self.spec is not None:
            return None
        per_flop, per_q, per_kv, _ko, layers = attn
        a2 = self.svc.iteration_time(d, d, 0.0, 0.0, d)
        return (a2 - layers * d * per_q, layers * per_flop, a2, layers * per_kv)

    def behaviour_key(self, max_batch: int = 0) -> tuple | None:
        """What the engine sees of this replica: the iteration-time tables and coefficients,
        the host overhead, the limits and the weights (two precisions with equal keys simulate
        identically); None for a timer that is not tabulated (custom attention, a speculative
        draft). ``max_batch`` is unused (the fixed-shape models' signature)."""
        m = self.svc
        if m._attn is None or self.spec is not None:
            return None
        return (
            m.token_table.tobytes(),
            m.logits_table.tobytes(),
            tuple(m._attn),
            m._cpu_const,
            m._cpu_seq,
            self.limits,
            self.settings.model_dump_json(),
            self._fit.weight_bytes,
        )

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits.of(self._fit, self.settings, self.max_model_len)

    # -- planner hooks -----------------------------------------------------------------------
    def memory_fit(self, context: int | None = None) -> MemoryFit:
        return self._fit if context is None else self.svc.memory_fit(context)

    def _decode_step(self, batch: int, context: float) -> float:
        """Seconds per output token of ``batch`` sequences (speculative: in expectation)."""
        return self.iteration_time(batch, batch, batch * context, 0.0, batch)

    def _prefill_time(self, prompt: int) -> float:
        """Idle replica: the iterations that prefill one prompt (chunks of the budget)."""
        budget = self.settings.max_num_batched_tokens
        t, done = 0.0, 0
        while done < prompt:
            c = min(prompt - done, budget) if self.settings.chunked_prefill else prompt
            last = done + c == prompt
            t += self.iteration_time(c, 0, 0, prefill_work(c, done), int(last), done + c)
            done += c
        return t

    def max_throughput_rps(self, s) -> float:
        """An optimistic capacity of one replica (requests/s), for the planner's lower bound.

        A request costs at least the larger of (a) its prompt + output tokens through the
        linear layers at the cheapest per-token cost of any iteration size the budget allows
        (compute), and (b) its output tokens at the decode step of the largest batch whose KV
        fits at the mean context (capped by max_num_seqs), per sequence (weights and KV reads).
        Mixed iterations overlap the two, so the sum would over-state the time.
        """
        p, o = token_sample(s)
        computed = float(np.mean(prefill_sample(s, self.settings)))  # what caching cannot save
        return self.throughput_for(float(np.mean(p)), float(np.mean(o)), computed)

    def throughput_for(self, mp: float, mo: float, computed: float | None = None) -> float:
        """:meth:`max_throughput_rps` for a mean prompt ``mp`` and mean output ``mo`` (tokens),
        of which ``computed`` prompt tokens are prefilled (default: all; fewer with caching)."""
        st = self.settings
        ctx = mp + mo / 2
        mp = mp if computed is None else computed
        batch = max(1, min(st.max_num_seqs, self._fit.max_batch_memory_for(int(ctx))))
        step = self._decode_step(batch, ctx)
        table = self.svc.token_table[1:]
        per_token = float(np.min(table / np.arange(1, len(table) + 1)))
        per_req = max((mp + mo) * per_token, mo * step / batch)
        return 1.0 / per_req if per_req > 0 else math.inf

    def idle_ttft_s(self, prompt: int) -> float:
        """Time to prefill ``prompt`` tokens on an idle replica (seconds)."""
        return self._prefill_time(max(1, int(prompt)))

    def time_scale_s(self, s) -> float:
        """The workload's time scale for overload detection: a mean request alone on an idle
        replica (its prompt's prefill, then its output tokens at batch 1)."""
        p, o = token_sample(s)
        mp, mo = float(np.mean(p)), float(np.mean(o))
        return self._prefill_time(max(1, round(mp))) + mo * self._decode_step(1, mp + mo / 2)

    def idle_latency_violation(self, s) -> str | None:
        """Why even an idle replica misses the TTFT or TPOT target (None if it does not)."""
        p, o = token_sample(s)
        q = s.slo.percentile
        pq = int(np.percentile(prefill_sample(s, self.settings), q))
        ms = 1e3
        if s.slo.ttft_ms is not None:
            t = self._prefill_time(pq)
            self._notes["idle_ttft"] = (pq, t)
            if t * ms > s.slo.ttft_ms:
                return (
                    f"an idle replica takes {t * ms:.0f} ms to prefill the p{q:g} prompt "
                    f"({pq:,} tokens) > TTFT target {s.slo.ttft_ms:g} ms; more replicas cannot help"
                )
        if s.slo.tpot_ms is not None:
            ctx = pq + float(np.percentile(o, q))
            t = self._decode_step(1, ctx)
            if t * ms > s.slo.tpot_ms:
                return (
                    f"an idle replica takes {t * ms:.1f} ms per output token (batch 1, context "
                    f"{ctx:,.0f}) > TPOT target {s.slo.tpot_ms:g} ms; more replicas cannot help"
                )
        return None

    def trace_lines(self, s=None, mean_batch: float | None = None) -> list[str]:
        """Where the numbers come from: memory, formats, efficiencies, prefill and decode times
        (the latter from scenario ``s``'s mean prompt and output, at ``mean_batch``)."""
        gpu, f, st = self.gpu, self._fit, self.settings
        s = s if s is not None else self.scenario
        fmt = self.math_format
        eff = gpu.efficiency.compute_for(fmt)
        out = [
            f"memory per GPU: weights {f.weight_bytes / GIB:.2f} GiB, KV cache "
            f"{f.kv_cache_bytes / GIB:.2f} GiB = {f.kv_tokens:,} tokens "
            f"({f.kv_bytes_per_token / 1024:g} KiB/token, KV {f.kv_cache_dtype}, blocks of "
            f"{st.block_size}); "
            f"usable {f.usable_bytes / GIB:.2f} GiB = {gpu.usable_memory_gib:g} GiB x "
            f"{st.gpu_memory_utilization:g} - {st.reserved_gib:g} GiB reserved",
            f"math: {self.precision.name} GEMMs on {math_units(fmt, gpu.vendor)} at "
            f"{gpu.peak_tflops_for(fmt)} TFLOP/s x efficiency {eff:g}; attention on "
            f"{self.svc.formats.attn}; memory {gpu.bandwidth_gb_s:g} GB/s x "
            f"{gpu.efficiency.memory:g}"
            + (
                f"; tp={self.tp} all-reduce over {gpu.interconnect.kind} "
                f"{gpu.interconnect.bandwidth_gb_s:g} GB/s x {gpu.interconnect.efficiency:g}, "
                f"alpha {gpu.interconnect.latency_us:g} us + {gpu.interconnect.hop_us:g} us/step"
                if self.tp > 1
                else ""
            ),
            f"engine: max_num_batched_tokens {st.max_num_batched_tokens}, max_num_seqs "
            f"{st.max_num_seqs}, chunked prefill {'on' if st.chunked_prefill else 'off'}, "
            f"CPU overhead {st.overhead.constant_ms:g} ms + {st.overhead.per_seq_us:g} us/sequence "
            f"per iteration ({st.preset if st.cpu_overhead is None else 'cpu_overhead'}), "
            "max_model_len "
            f"{self.max_model_len:,}",
        ]
        if self.spec is not None:
            sp = self.spec.spec
            what = f"draft {sp.draft_model.name}" if sp.kind == "draft" else sp.kind  # type: ignore[union-attr]
            out.append(
                f"speculative decoding: {what}, k={sp.k}, acceptance {sp.acceptance}: "
                f"E = {self.spec.expected:.2f} tokens per verify step (TPOT in expectation)"
            )
        if s is not None:
            p, o = token_sample(s)
            mp, mo = int(np.mean(p)), int(np.mean(o))
            pre = self._prefill_time(mp)
            b = max(1, round(mean_batch)) if mean_batch else 1
            ctx = mp + mo / 2
            step = self._decode_step(b, ctx)
            out.append(
                f"service times: prefill of the mean prompt ({mp:,} tokens) {pre * 1e3:.1f} ms "
                f"on an idle replica; decode step at batch {b} (mean batch), context "
                f"{ctx:,.0f}: {step * 1e3:.2f} ms = {b / step:,.0f} tokens/s"
            )
        return out


def make_llm_service(s, gpu: GPU, precision: str, tp: int, ep: int = 1) -> LLMService:
    """The LLM service of scenario ``s`` on ``tp`` x ``gpu`` at ``precision``.

    Raises :class:`InputError` for bad ``fleet.batching.engine`` keys and
    :class:`~capsim.service.fixed.Unsupported` when the card lacks the precision or ``tp``
    does not split the model.
    """
    st = engine_settings(getattr(s.fleet.batching, "engine", {}), s.model, gpu)
    svc = LLMService(gpu, s.model, precision, tp, st, ep)
    svc.scenario = s
    return svc


def llm_tokens(stream) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths of a request stream (at least one token each)."""
    if stream.prompt_tokens is None or stream.output_tokens is None:
        raise InputError(
            "LLM traffic needs token lengths: give traffic.tokens, or prompt_tokens_column and "
            "output_tokens_column for a trace",
            where="traffic.tokens",
        )
    return (
        np.maximum(np.asarray(stream.prompt_tokens), 1),
        np.maximum(np.asarray(stream.output_tokens), 1),
    )


def run_llm_replication(
    s, gpu: GPU, svc: LLMService, replicas: int, replication: int, stream
) -> RunMetrics:
    """Simulate one replication of an LLM configuration and measure TTFT, TPOT, e2e, cost."""
    if isinstance(stream, ClosedStream):  # send times come from completions
        draw = stream.token_draw()
        if draw is None:
            llm_tokens(RequestStream(np.zeros(0), stream.horizon))  # the missing-tokens message
            raise AssertionError("llm_tokens refuses a stream without tokens")
        res = run_llm_closed(
            stream.clients(),
            draw,
            svc,
            svc.limits,
            replicas,
            horizon=stream.horizon,
            rng=stream.think_rng(),
            router=s.fleet.router,
            max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
            max_queue_length=s.fleet.max_queue_length,
            max_requests=memory_limit_requests(s)[0],
        )
        return measure(s, gpu, svc.tp, res, stream.horizon)
    prompt, output = llm_tokens(stream)
    chains = None
    if stream.prefixes is not None and svc.settings.enable_prefix_caching:
        chains = stream.prefixes.chains(prompt, output, svc.settings.block_size)
    res = run_llm(
        stream.arrival,
        prompt,
        output,
        svc,
        svc.limits,
        replicas,
        router=s.fleet.router,
        max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),
        max_queue_length=s.fleet.max_queue_length,
        horizon=stream.horizon,
        chains=chains,
    )
    return measure(s, gpu, svc.tp, res, stream.horizon, svc.svc.work_per_gpu, svc.svc.formats.gemm)
