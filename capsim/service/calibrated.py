"""Calibrated op timers: measured tables first, then fitted efficiency curves, then the roofline.

When a catalog entry has a ``calibration`` block (:mod:`capsim.calibration`), every operator is
timed by the first rule that applies, and :attr:`OpTime.source` says which:

1. ``measured`` -- a measured table describes this very operator: same name (for GEMMs: any
   GEMM table with the same ``n``, ``k``), same math format and the same FLOPs and bytes at these
   tokens, and the tokens lie inside the measured range. The time is the log-log interpolation
   of the table. Several tables match when shapes repeat (a Llama-3.1-8B QKV projection at tp=1
   has the shape of Llama-2-7B's at tp=2); the one measured at the same tp is preferred.
2. ``fitted`` -- otherwise:

   * GEMMs (and whole fixed-shape networks, which are GEMM/convolution bound): the fitted GEMM
     curve of the math format, ``roofline / efficiency(intensity) + kernels * overhead``, where
     ``roofline = max(flops / peak[fmt], bytes / bandwidth)`` with the entry's spec peaks. A
     format without its own curve uses another format's curve at the same *ridge-normalised*
     intensity (intensity x peak_ref / peak_fmt; an FP8 GEMM on H100 is assumed to reach the
     fraction of its roofline an FP16 GEMM reaches at the same distance from the ridge).
   * Element-wise operators with a measured table of the same name but another cost (another
     model's hidden size, the RoPE table for ``rope_kv_write``), or outside the measured token
     range: the measured time at the same (clipped) tokens, scaled by the ratio of the two
     roofline times -- i.e. the measured achieved fraction of the roofline at these tokens,
     applied to this operator. Otherwise the fitted memory curve (efficiency against bytes).
   * Attention: the fitted attention curve of the format, if the calibration has one.
3. ``roofline`` -- nothing calibrated applies: the spec-sheet roofline with the entry's default
   efficiencies, exactly as for an uncalibrated entry (and ring collectives for communication).

Served runs (``capsim calibrate fit-bench``) may add ``calibration.serving``: scales over the
measured and fitted efficiencies (a compute-bound time over ``compute_scale``, a memory-bound one
over ``memory_scale``) and the engine's per-kernel cost in place of the harness's launch time.
They compose with the measurements instead of being ignored by them.

:func:`timer_for` gives the timer of a calibrated entry (None for an uncalibrated one);
:class:`~capsim.service.llm.LLMServiceModel` and :class:`~capsim.service.fixed.FixedServiceModel`
use it automatically. Pass ``timer=default_op_timer`` (LLM) or ``timer=roofline_op_time`` (fixed)
to force the roofline.

>>> from capsim.load import load_catalog
>>> from capsim.load import load_model_card
>>> from capsim.service.llm import LLMServiceModel
>>> gpu = load_catalog()["a100-80gb-sxm"]
>>> svc = LLMServiceModel(gpu, load_model_card("llama-2-7b"), "fp16")
>>> {ln.op.name: ln.op.source for ln in svc.breakdown(prefill=[(512, 0)]).lines}["mlp_up"]
'measured'
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capsim.service.comm import COMM_OPS as COMM_OPS_ALL
from capsim.service.comm import collective_seconds, comm_op_time
from capsim.service.roofline import OpCost, OpTime, roofline_op_time
from capsim.spec.calibration import Calibration, EfficiencyCurve, OpTable
from capsim.spec.catalog import GPU

MEASURED, FITTED, ROOFLINE = "measured", "fitted", "roofline"
_SOURCES = (MEASURED, FITTED, ROOFLINE)

#: capsim operator -> names of tables whose measurements may be scaled to it.
ALIASES: dict[str, tuple[str, ...]] = {"rope_kv_write": ("rope_kv_write", "rope")}
ATTENTION_OPS = frozenset({"attn_prefill", "attn_decode"})
COMM_OPS = COMM_OPS_ALL  # collectives are timed by the link model, never by tables
#: the non-overhead part of a measured time is at least this share of it when scaling
_MIN_BODY = 0.3
#: twin formats for curve transfer (same width, same tensor cores)
_TWINS = {
    "fp16": "bf16",
    "bf16": "fp16",
    "fp32": "tf32",
    "tf32": "fp32",
    "fp8": "int8",
    "int8": "fp8",
}


@dataclass
class Timing:
    """Per-element times of one operator over an array of token counts."""

    time_s: np.ndarray
    compute_s: np.ndarray
    memory_s: np.ndarray
    overhead_s: np.ndarray
    source: np.ndarray  # 0 measured, 1 fitted, 2 roofline

    def at(self, i: int, name: str) -> OpTime:
        src = _SOURCES[int(self.source[i])]
        t, c, m, o = (
            float(a[i]) for a in (self.time_s, self.compute_s, self.memory_s, self.overhead_s)
        )
        if src == MEASURED:
            bound = "measured"
        elif o > max(c, m):
            bound = "overhead"
        else:
            bound = "compute" if c >= m else "memory"
        return OpTime(name, t, c, m, o, bound, src)  # type: ignore[arg-type]


class CalibratedTimer:
    """Op timer of one calibrated catalog entry (see the module docstring for the rules).

    Callable as an LLM op timer ``timer(gpu, cost, ctx)``; :meth:`fixed` is the fixed-shape
    timer ``timer(gpu, cost)``; :meth:`table_times` evaluates a whole array of token counts at
    once (the LLM service model builds its tables with it).
    """

    def __init__(self, gpu: GPU):
        if gpu.calibration is None:
            raise ValueError(f"{gpu.id} has no calibration")
        self.gpu = gpu
        self.cal: Calibration = gpu.calibration
        #: the harness's measured launch time (inside every measured time) and the per-kernel
        #: cost added to fitted times: the serving engine's when fit-bench set one
        self.harness_overhead = self.cal.kernel_overhead_us * 1e-6
        sv = self.cal.serving
        engine_us = sv.kernel_overhead_us if sv is not None else None
        self.overhead = self.harness_overhead if engine_us is None else engine_us * 1e-6
        self.scales = (sv.compute_scale, sv.memory_scale) if sv is not None else None
        self.tables = list(self.cal.tables)
        self._gemm: dict[tuple[int, int, str], list[OpTable]] = {}
        self._named: dict[str, list[OpTable]] = {}
        for t in self.tables:
            if t.is_gemm:
                self._gemm.setdefault((t.n, t.k, t.format), []).append(t)
            self._named.setdefault(t.op, []).append(t)
        self._lt = {id(t): np.log(np.asarray(t.tokens, dtype=float)) for t in self.tables}
        self._ly = {id(t): np.log(np.asarray(t.time_us, dtype=float) * 1e-6) for t in self.tables}

    # -- the timer protocols -----------------------------------------------------------------

    def __call__(self, gpu: GPU, cost: OpCost, ctx) -> OpTime:
        if ctx.op in COMM_OPS:
            return comm_op_time(gpu, ctx.op, cost.bytes, ctx.ranks)
        tm = self.evaluate(
            ctx.op, cost.flops, cost.bytes, cost.math_format, cost.kernels, ctx.n, ctx.k, ctx.tp,
            np.array([float(ctx.num_tokens)]),
        )  # fmt: skip
        return tm.at(0, cost.name)

    def fixed(self, gpu: GPU, op: OpCost) -> OpTime:
        """Fixed-shape timer (totals-only card): a whole forward pass as one GEMM-class operator,
        timed by the GEMM curve fitted at its own math format; with none, the roofline (a
        Llama FP16 GEMM curve never rescales an INT8 network)."""
        if self.cal.curve("gemm", op.math_format) is None:
            return roofline_op_time(gpu, op)
        return self.evaluate(
            op.name, op.flops, op.bytes, op.math_format, op.kernels, 0, 0, 1, np.array([1.0])
        ).at(0, op.name)

    def table_times(
        self, gpu: GPU, name: str, flops, nbytes, fmt: str, kernels: int, n: int, k: int,
        tp: int, tokens: np.ndarray,
    ) -> np.ndarray:  # fmt: skip
        """Seconds of one call for every entry of ``tokens`` (vectorised :meth:`__call__`)."""
        if name in COMM_OPS:
            b = np.broadcast_to(np.asarray(nbytes, dtype=float), np.shape(tokens))
            return collective_seconds(gpu.interconnect, name, b, tp)
        return self.evaluate(name, flops, nbytes, fmt, kernels, n, k, tp, tokens).time_s

    def roofline_attention(self, fmt: str) -> bool:
        """Whether attention in ``fmt`` is timed by the plain roofline (no attention curve)."""
        return self.cal.curve("attention", fmt) is None

    # -- the rules ---------------------------------------------------------------------------

    def evaluate(
        self, name: str, flops, nbytes, fmt: str, kernels: int, n: int, k: int, tp: int,
        tokens: np.ndarray,
    ) -> Timing:  # fmt: skip
        """Time one operator at every entry of ``tokens`` (FLOPs and bytes broadcast)."""
        tk = np.asarray(tokens, dtype=float)
        F = np.broadcast_to(np.asarray(flops, dtype=float), tk.shape).astype(float)
        B = np.broadcast_to(np.asarray(nbytes, dtype=float), tk.shape).astype(float)
        nan = np.full(tk.shape, np.nan)
        out = Timing(nan.copy(), nan.copy(), nan.copy(), nan.copy(), np.full(tk.shape, 2))
        todo = np.ones(tk.shape, dtype=bool)
        is_gemm = n > 0 and k > 0
        # 1. measured tables of this very operator
        for tab in self._exact_candidates(name, fmt, n, k, kernels, tp, is_gemm):
            tf, tb = tab.cost(tk)
            same = todo & np.isclose(tf, F, rtol=1e-9, atol=1e-3) & np.isclose(tb, B, rtol=1e-9)
            if not same.any():
                continue
            lo, hi = float(tab.tokens[0]), float(tab.tokens[-1])
            inside = same & (tk >= lo) & (tk <= hi)
            if inside.any():
                self._put_measured(out, inside, self._interp(tab, tk), F, B, fmt, kernels)
            beyond = same & ~inside
            if beyond.any():
                self._put_scaled(out, beyond, tab, tk, F, B, fmt, kernels)
            todo &= ~same
            if not todo.any():
                return out
        # 2. fitted
        if name in ATTENTION_OPS:
            curve = self.cal.curve("attention", fmt)
            if curve is not None:
                self._put_curve(out, todo, curve, fmt, tk, F, B, kernels, fmt)
                todo[:] = False
        elif is_gemm or (F > 0).any():
            curve, cfmt = self._gemm_curve(fmt)
            if curve is not None:
                self._put_curve(out, todo, curve, cfmt, tk, F, B, kernels, fmt)
                todo[:] = False
        else:
            ref = self._scaled_reference(name, fmt, tp, B, tk)
            if ref is not None:
                self._put_scaled(out, todo, ref, tk, F, B, fmt, kernels)
                todo[:] = False
            else:
                curve = next((c for c in self.cal.curves if c.kind == "memory"), None)
                if curve is not None:
                    self._put_curve(out, todo, curve, curve.format, tk, F, B, kernels, fmt)
                    todo[:] = False
        # 3. roofline with the entry's defaults
        if todo.any():
            self._put_roofline(out, todo, F, B, fmt, kernels)
        return out

    def _exact_candidates(
        self, name: str, fmt: str, n: int, k: int, kernels: int, tp: int, is_gemm: bool
    ) -> list[OpTable]:
        if is_gemm:
            cands = [t for t in self._gemm.get((n, k, fmt), []) if t.kernels == kernels]
        else:  # element-wise kernels do not use the math format: the cost decides
            cands = [t for t in self._named.get(name, []) if t.kernels == kernels]
        # same tp first, then same name, same format, then the most points
        return sorted(
            cands, key=lambda t: (t.tp != tp, t.op != name, t.format != fmt, -len(t.tokens))
        )

    def _scaled_reference(
        self, name: str, fmt: str, tp: int, B: np.ndarray, tk: np.ndarray
    ) -> OpTable | None:
        """A same-name element-wise table to scale: same format and tp preferred, then the
        nearest bytes per token."""
        cands = [t for a in ALIASES.get(name, (name,)) for t in self._named.get(a, [])]
        cands = [t for t in cands if not t.is_gemm]
        if not cands:
            return None
        per_tok = float(np.median(B / np.maximum(tk, 1.0)))
        return min(
            cands,
            key=lambda t: (
                t.tp != tp,
                abs(math.log(max(t.bytes_per_token, 1e-9) / max(per_tok, 1e-9))),
            ),
        )

    def _gemm_curve(self, fmt: str) -> tuple[EfficiencyCurve | None, str]:
        c = self.cal.curve("gemm", fmt)
        if c is not None:
            return c, fmt
        gemms = [c for c in self.cal.curves if c.kind == "gemm" and self.gpu.peak_flops(c.format)]
        if not gemms:
            return None, fmt
        twin = next((c for c in gemms if c.format == _TWINS.get(fmt)), None)
        best = twin or max(gemms, key=lambda c: c.points)
        return best, best.format

    # -- writers -----------------------------------------------------------------------------

    def _unit(self, F: np.ndarray, B: np.ndarray, fmt: str) -> tuple[np.ndarray, np.ndarray]:
        """Roofline compute and memory times at 100% of the spec peaks."""
        peak = self.gpu.peak_flops(fmt)
        if peak is None:
            raise ValueError(f"{self.gpu.id} has no {fmt} math")
        return F / peak, B / self.gpu.bandwidth

    def _interp(self, tab: OpTable, tk: np.ndarray) -> np.ndarray:
        lx = np.log(np.maximum(tk, 1e-300))
        return np.exp(np.interp(lx, self._lt[id(tab)], self._ly[id(tab)]))

    def _bound_scale(self, rc, rm):
        """fit-bench's scale of each element: compute-bound -> compute, else memory (1: none)."""
        if self.scales is None:
            return 1.0
        return np.where(rc >= rm, self.scales[0], self.scales[1])

    def _served(self, t, rc, rm, kernels: int):
        """A measured time as the serving engine runs it: the body (the time less the
        harness's launches) over the fitted scale, plus the engine's per-kernel cost; the
        time itself when fit-bench set nothing."""
        if self.scales is None:
            return t
        body = np.maximum(t - kernels * self.harness_overhead, _MIN_BODY * t)
        return body / self._bound_scale(rc, rm) + kernels * self.overhead

    def _put_measured(self, out: Timing, mask, t, F, B, fmt, kernels: int = 1) -> None:
        rc, rm = self._unit(F, B, fmt)
        r = np.maximum(np.maximum(rc, rm), 1e-300)
        t = self._served(t, rc, rm, kernels)
        out.time_s[mask] = t[mask]
        out.compute_s[mask] = (t * rc / r)[mask]
        out.memory_s[mask] = (t * rm / r)[mask]
        out.overhead_s[mask] = 0.0
        out.source[mask] = 0

    def _put_scaled(self, out: Timing, mask, tab: OpTable, tk, F, B, fmt, kernels) -> None:
        """The table's achieved fraction of its roofline at the (clipped) tokens, applied to
        this operator's roofline; the per-kernel overhead is carried separately."""
        tc = np.clip(tk, tab.tokens[0], tab.tokens[-1])
        t_ref = self._interp(tab, tc)
        fr, br = tab.cost(tc)
        rc0, rm0 = self._unit(fr, br, tab.format)
        rc, rm = self._unit(F, B, fmt)
        body_ref = np.maximum(t_ref - tab.kernels * self.harness_overhead, _MIN_BODY * t_ref)
        body_ref = body_ref / self._bound_scale(rc, rm)
        ratio = np.maximum(rc, rm) / np.maximum(np.maximum(rc0, rm0), 1e-300)
        scale = body_ref / np.maximum(np.maximum(rc, rm), 1e-300)
        over = kernels * self.overhead
        out.compute_s[mask] = (rc * scale)[mask]
        out.memory_s[mask] = (rm * scale)[mask]
        out.overhead_s[mask] = over
        out.time_s[mask] = (over + body_ref * ratio)[mask]
        out.source[mask] = 1

    def _put_curve(
        self, out: Timing, mask, curve: EfficiencyCurve, cfmt: str, tk, F, B, kernels, fmt
    ) -> None:
        rc, rm = self._unit(F, B, fmt)
        if curve.x == "bytes":
            x = B
        else:
            x = F / np.maximum(B, 1e-300)
            if cfmt != fmt:  # the same distance from the ridge in the curve's format
                x = x * self.gpu.peak_flops(cfmt) / self.gpu.peak_flops(fmt)
        e = curve.evaluate(x)
        c, m = rc / e, rm / e
        if self.scales is not None:  # fit-bench's scales, never past 100% (or the curve)
            c = rc / np.minimum(e * self.scales[0], np.maximum(e, 1.0))
            m = rm / np.minimum(e * self.scales[1], np.maximum(e, 1.0))
        over = kernels * self.overhead
        out.compute_s[mask] = c[mask]
        out.memory_s[mask] = m[mask]
        out.overhead_s[mask] = over
        out.time_s[mask] = (np.maximum(c, m) + over)[mask]
        out.source[mask] = 1

    def _put_roofline(self, out: Timing, mask, F, B, fmt, kernels) -> None:
        gpu = self.gpu
        peak = gpu.peak_flops(fmt)
        if peak is None:
            raise ValueError(f"{gpu.id} has no {fmt} math (supported: {gpu.supported_formats()})")
        compute = F / (peak * gpu.efficiency.compute_for(fmt))
        memory = B / (gpu.bandwidth * gpu.efficiency.memory)
        over = kernels * gpu.kernel_overhead_us * 1e-6
        out.compute_s[mask] = compute[mask]
        out.memory_s[mask] = memory[mask]
        out.overhead_s[mask] = over
        out.time_s[mask] = (np.maximum(compute, memory) + over)[mask]
        out.source[mask] = 2


_CACHE: dict[int, tuple[GPU, CalibratedTimer]] = {}


def timer_for(gpu: GPU) -> CalibratedTimer | None:
    """The calibrated op timer of ``gpu``, or None when the entry has no calibration.

    This is the one place that decides: LLM and fixed-shape service models call it when no timer
    is passed, so the planner, the simulator and ``capsim estimate`` use calibration whenever the
    catalog entry has it.
    """
    if gpu.calibration is None:
        return None
    hit = _CACHE.get(id(gpu))
    if hit is not None and hit[0] is gpu:
        return hit[1]
    timer = CalibratedTimer(gpu)
    if len(_CACHE) > 64:
        _CACHE.clear()
    _CACHE[id(gpu)] = (gpu, timer)
    return timer


def fixed_timer_for(gpu: GPU) -> Callable[[GPU, OpCost], OpTime] | None:
    """The fixed-shape timer of a calibrated entry (None: use :func:`roofline_op_time`)."""
    timer = timer_for(gpu)
    return timer.fixed if timer is not None else None


def source_of(gpu: GPU) -> str:
    """A short description of where ``gpu``'s service times come from."""
    if gpu.calibration is None:
        return "roofline (spec sheet x catalog efficiencies)"
    return "calibration: " + gpu.calibration.summary()


__all__ = [
    "ALIASES",
    "CalibratedTimer",
    "fixed_timer_for",
    "roofline_op_time",
    "source_of",
    "timer_for",
]
