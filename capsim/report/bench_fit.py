"""The ``calibrate fit-bench`` report: coefficients, and errors before and after the fit on the
fitting runs and, separately, on the held-out runs."""

from __future__ import annotations

import datetime as _dt
import math

import numpy as np

from capsim.bench.backtest import Backtest
from capsim.calibration.bench_fit import BenchFit


def abs_errors(bts: list[Backtest]) -> np.ndarray:
    return np.array([abs(r.rel_error) for bt in bts for r in bt.rows if math.isfinite(r.rel_error)])


def _med(bts: list[Backtest]) -> str:
    e = abs_errors(bts)
    return f"{np.median(e):.1%} median, {e.max():.1%} largest" if len(e) else "n/a"


def _rows(before: list[Backtest], after: list[Backtest]) -> list[str]:
    out = [f"    {'run / value':<52}{'measured':>11}{'before':>9}{'after':>9}"]
    for b, a in zip(before, after, strict=True):
        for rb, ra in zip(b.rows, a.rows, strict=True):
            name = f"{b.label.split('/')[-1]} {rb.metric} {rb.stat}".replace(" value", "")
            out.append(
                f"    {name[:52]:<52}{rb.measured:>11.4g}{rb.rel_error:>+9.1%}{ra.rel_error:>+9.1%}"
            )
    return out


def summary(fit: BenchFit) -> dict:
    """The numbers of the report, for JSON."""

    def stats(bts):
        e = abs_errors(bts)
        return (
            {"median_abs_error": float(np.median(e)), "max_abs_error": float(e.max())}
            if len(e)
            else {}
        )

    return {
        "gpu": fit.gpu_after.id,
        "values": fit.values,
        "efficiency_before": fit.gpu_before.efficiency.model_dump(),
        "efficiency_after": fit.gpu_after.efficiency.model_dump(),
        "fitting_runs": {"before": stats(fit.before_fit), "after": stats(fit.after_fit)},
        "held_out_runs": {"before": stats(fit.before_holdout), "after": stats(fit.after_holdout)},
        "evaluations": fit.evaluations,
        "notes": fit.notes,
    }


def provenance(fit: BenchFit, runs, holdout) -> str:
    """The ``sources.bench_fit`` line: what was fitted on what, and how well."""

    def desc(r) -> str:
        s = r.settings
        eng = " ".join(x for x in (s.engine, s.engine_version) if x) or "engine not recorded"
        return f"{r.source.file}#{r.source.index} ({r.date or 'undated'}, {eng})"

    v = fit.values
    text = (
        f"capsim calibrate fit-bench {_dt.date.today().isoformat()} on "
        f"{'; '.join(desc(r) for r in runs)}: compute x{v['compute_scale']:.4g}, memory "
        f"x{v['memory_scale']:.4g}, per-kernel cost {v['kernel_overhead_us']:.3g} us, "
        f"per-iteration CPU overhead {v['overhead_ms']:.3g} ms + "
        f"{v.get('per_seq_us', 0.0):.3g} us per sequence and front-end latency "
        f"{v.get('frontend_ms', 0.0):.3g} ms per request (scenario settings)"
    )
    if "collective latency not fitted: no run with tp > 1" not in fit.notes:
        text += f", collective latency {v['collective_latency_us']:.3g} us"
    text += f"; fitting runs |error| before {_med(fit.before_fit)}, after {_med(fit.after_fit)}"
    if holdout:
        text += (
            f"; held out {'; '.join(desc(r) for r in holdout)}: before "
            f"{_med(fit.before_holdout)}, after {_med(fit.after_holdout)}"
        )
    return text


def _kernel_us(gpu) -> float:
    cal = gpu.calibration
    if cal is not None and cal.serving is not None and cal.serving.kernel_overhead_us is not None:
        return cal.serving.kernel_overhead_us
    return cal.kernel_overhead_us if cal is not None else gpu.kernel_overhead_us


def report_lines(fit: BenchFit) -> list[str]:
    """The text report."""
    v, e0, e1 = fit.values, fit.gpu_before.efficiency, fit.gpu_after.efficiency
    out = [
        f"capsim calibrate fit-bench: {fit.gpu_after.id} ({fit.evaluations} evaluations)",
        f"  efficiency.compute {e0.compute:g} -> {e1.compute:g} (x{v['compute_scale']:.4g}), "
        f"efficiency.memory {e0.memory:g} -> {e1.memory:g} (x{v['memory_scale']:.4g})",
        f"  per-iteration CPU overhead {v['overhead_ms']:.3g} ms + {v.get('per_seq_us', 0.0):.3g} "
        "us per sequence: set them in scenarios as fleet.batching.engine.cpu_overhead "
        "{constant_ms, per_seq_us} (LLM) or fleet.batch_overhead_ms, and pass them to capsim "
        "backtest --overhead-ms --per-seq-us",
        f"  front-end latency {v.get('frontend_ms', 0.0):.3g} ms per request (TTFT and e2e): "
        "pass it to capsim backtest --frontend-ms",
        f"  per-kernel cost {_kernel_us(fit.gpu_before):g} -> {_kernel_us(fit.gpu_after):g} us",
    ]
    if fit.gpu_after.interconnect.latency_us != fit.gpu_before.interconnect.latency_us:
        out.append(
            f"  interconnect.latency_us {fit.gpu_before.interconnect.latency_us:g} -> "
            f"{fit.gpu_after.interconnect.latency_us:g}"
        )
    out.append(f"  fitting runs: |error| before (untouched roofline) {_med(fit.before_fit)}; "
               f"after {_med(fit.after_fit)}")  # fmt: skip
    out += _rows(fit.before_fit, fit.after_fit)
    if fit.before_holdout:
        out.append(f"  held-out runs: |error| before {_med(fit.before_holdout)}; "
                   f"after {_med(fit.after_holdout)}")  # fmt: skip
        out += _rows(fit.before_holdout, fit.after_holdout)
    else:
        out.append("  held-out runs: none given (--holdout RUN): the errors above are in-sample")
    out += [f"  note: {n}" for n in fit.notes]
    return out
