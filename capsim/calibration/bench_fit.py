"""Fit a catalog entry's engine-level coefficients to imported serving runs (``fit-bench``).

The coefficients (:data:`COEFFICIENTS`), each through a field that exists today:

* ``compute_scale`` multiplies the entry's ``efficiency.compute`` (and every
  ``compute_by_format`` override), capped so no efficiency exceeds 1;
* ``memory_scale`` multiplies ``efficiency.memory`` (same cap). On an entry with a measured
  calibration both scales also go to ``calibration.serving``, where they scale the measured
  tables and fitted curves (:mod:`capsim.service.calibrated`) instead of being ignored by them;
* ``kernel_overhead_us``: the engine's cost per kernel launch (``kernel_overhead_us``, or
  ``calibration.serving.kernel_overhead_us`` over a calibration's measured eager launch time):
  an engine replaying CUDA graphs pays much less per kernel than a harness launching eagerly;
* ``overhead_ms``: CPU time per iteration the GPU waits for -- the LLM engine's
  ``cpu_overhead.constant_ms``, or a fixed-shape fleet's ``batch_overhead_ms`` -- a scenario
  setting, not a catalog field: it is reported (and recorded in the provenance) for scenarios
  to use;
* ``per_seq_us``: the LLM engine's ``cpu_overhead.per_seq_us``, time per sequence per
  iteration (LLM runs only; a scenario setting too);
* ``collective_latency_us``: ``interconnect.latency_us``, fitted only when a run has tp > 1;
* ``frontend_ms``: a constant per-request front-end latency (HTTP, tokenisation, streaming:
  time the GPU loop never sees), added to the predicted TTFT and e2e
  (:func:`capsim.bench.backtest.with_frontend`), a scenario-side number like ``overhead_ms``.
  Being additive, it needs no simulation: for each trial of the others it is solved exactly (a
  bounded 1-D minimisation over the simulated rows).

Each per-iteration constant (CPU overhead, kernel launches, collective latency) costs the same
in every decode step, so runs of decode-dominated serving identify mostly their sum; the split
the fit reports between them is not unique (the report says so).

The loss is the mean log ratio of predicted to measured over every compared value of the
fitting runs (:func:`capsim.bench.backtest.backtest_run`; serving runs are simulated with
fixed seeds, so the loss is a deterministic function of the coefficients): squared for runs
of measured engine steps (direct timings of what the model computes), absolute as soon as a
served run is among them (:func:`robust_loss`): a served run's percentiles include values
the model does not explain (the TTFT tail of a burst, a front-end slowing under load), and
with squares one such value pulls every coefficient (on the public vLLM A100 sweep the
squared fit bought a 16 req/s TTFT p99 of -46% with a 20 ms front-end time that put every
other TTFT 12-20% long; benchmarks/README.md, 2026-12-06). It is minimised by
bounded Powell search. Held-out runs are only evaluated, before and after.

>>> fitted_efficiency(Efficiency(compute=0.7, memory=0.8), 2.0, 1.0).compute
1.0
>>> fitted_efficiency(Efficiency(compute=0.7, memory=0.8), 0.5, 1.1).memory
0.88
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import optimize

from capsim.bench.backtest import (
    FRONTEND_METRICS,
    Backtest,
    backtest_run,
    engine_preset,
    with_frontend,
)
from capsim.bench.model import BenchRun
from capsim.errors import InputError
from capsim.spec.calibration import ServingFit
from capsim.spec.catalog import GPU, Catalog, Efficiency
from capsim.spec.engine import CPU_PRESETS, LLMEngineSettings
from capsim.spec.scenario import Fleet

DEFAULT_OVERHEAD_MS = LLMEngineSettings().overhead.constant_ms
DEFAULT_BATCH_OVERHEAD_MS = Fleet().batch_overhead_ms


@dataclass(frozen=True)
class Coefficient:
    name: str
    start: float
    low: float
    high: float
    what: str


COEFFICIENTS = (
    Coefficient("compute_scale", 1.0, 0.2, 3.0, "x efficiency.compute (capped at 1)"),
    Coefficient("memory_scale", 1.0, 0.2, 3.0, "x efficiency.memory (capped at 1)"),
    Coefficient("overhead_ms", 0.0, 0.0, 30.0, "CPU time per iteration (scenario setting)"),
    Coefficient("per_seq_us", 0.0, 0.0, 500.0, "CPU time per sequence per iteration (scenario)"),
    Coefficient("collective_latency_us", 5.0, 0.0, 200.0, "interconnect.latency_us"),
    Coefficient("kernel_overhead_us", 4.0, 0.0, 20.0, "cost per kernel launch in the engine"),
)
#: solved exactly inside each trial of the others (see the module doc)
FRONTEND = Coefficient("frontend_ms", 0.0, 0.0, 1000.0, "front-end time per request (scenario)")


def fitted_efficiency(eff: Efficiency, compute_scale: float, memory_scale: float) -> Efficiency:
    """``eff`` scaled, each fraction capped at 1."""
    return Efficiency(
        compute=round(min(eff.compute * compute_scale, 1.0), 4),
        memory=round(min(eff.memory * memory_scale, 1.0), 4),
        compute_by_format={
            k: round(min(v * compute_scale, 1.0), 4) for k, v in eff.compute_by_format.items()
        },
    )


def kernel_overhead_of(gpu: GPU) -> float:
    """The per-kernel cost ``gpu``'s operators are timed with today (microseconds)."""
    cal = gpu.calibration
    if cal is None:
        return gpu.kernel_overhead_us
    if cal.serving is not None and cal.serving.kernel_overhead_us is not None:
        return cal.serving.kernel_overhead_us
    return cal.kernel_overhead_us


def apply(gpu: GPU, values: dict[str, float], source: str = "") -> GPU:
    """The entry with the fitted catalog coefficients in place (on a calibrated entry, the
    scales and the per-kernel cost also in ``calibration.serving``, composed with any
    earlier fit-bench scales there)."""
    cs, ms = values["compute_scale"], values["memory_scale"]
    eff = fitted_efficiency(gpu.efficiency, cs, ms)
    update: dict = {"efficiency": eff}
    ko = values.get("kernel_overhead_us")
    cal = gpu.calibration
    if cal is not None:
        old = cal.serving or ServingFit()
        serving = ServingFit(
            compute_scale=round(old.compute_scale * cs, 4),
            memory_scale=round(old.memory_scale * ms, 4),
            kernel_overhead_us=old.kernel_overhead_us if ko is None else round(ko, 3),
            source=source or old.source,
        )
        update["calibration"] = cal.model_copy(update={"serving": serving})
    elif ko is not None:
        update["kernel_overhead_us"] = round(ko, 3)
    if "collective_latency_us" in values:
        ic = gpu.interconnect.model_copy(
            update={"latency_us": round(values["collective_latency_us"], 3)}
        )
        update["interconnect"] = ic
    return gpu.model_copy(update=update)


def _bounds(c: Coefficient, gpu: GPU) -> tuple[float, float]:
    """A coefficient's search range; an efficiency scale stops where the fraction reaches 1."""
    eff = gpu.efficiency
    if c.name == "compute_scale":
        return c.low, min(c.high, 1.0 / max([eff.compute, *eff.compute_by_format.values()]))
    if c.name == "memory_scale":
        return c.low, min(c.high, 1.0 / eff.memory)
    return c.low, c.high


def with_entry(catalog: Catalog, gpu: GPU) -> Catalog:
    """``catalog`` with ``gpu`` replacing the entry of the same id."""
    return Catalog({**catalog.gpus, gpu.id: gpu}, dict(catalog.files))


def log_error(bts: list[Backtest], robust: bool = False) -> float:
    """Mean squared log(predicted / measured) over every compared value; with ``robust`` the
    mean absolute one (which one value outside the model cannot dominate).

    >>> from capsim.bench.backtest import Row
    >>> bt = Backtest(None, None, "rate", 1.0, rows=[Row("e2e", "p50", 1.0, 2.0), Row("e2e", "p99", 1.0, 1.0)])
    >>> round(log_error([bt]), 4), round(log_error([bt], robust=True), 4)
    (0.2402, 0.3466)
    """
    e = np.array(
        [
            math.log(r.predicted / r.measured)
            for bt in bts
            for r in bt.rows
            if r.measured > 0 and r.predicted > 0 and math.isfinite(r.predicted)
        ]
    )
    if not len(e):
        return math.inf
    return float(np.mean(np.abs(e))) if robust else float(np.mean(e**2))


def robust_loss(runs: list[BenchRun]) -> bool:
    """Whether the fit to ``runs`` uses the robust loss: when any is a served run (percentiles
    of whole requests, whose tails hold effects outside the model: a burst's queue, a
    front-end under load), not only measured engine steps (direct, low-noise timings of what
    the model computes, where least squares is the natural fit)."""
    return any(not r.measured.iterations for r in runs)


@dataclass
class BenchFit:
    """The fit: coefficient values, the entry before and after, and the backtests."""

    gpu_before: GPU
    gpu_after: GPU
    values: dict[str, float]
    before_fit: list[Backtest]
    after_fit: list[Backtest]
    before_holdout: list[Backtest]
    after_holdout: list[Backtest]
    evaluations: int = 0
    notes: list[str] = field(default_factory=list)

    @property
    def overhead_setting(self) -> str:
        return f"scheduler_overhead_ms / batch_overhead_ms: {self.values['overhead_ms']:.3g}"


def best_frontend(bts: list[Backtest], robust: bool = False) -> float:
    """The front-end latency (ms, within :data:`FRONTEND`'s bounds) that minimises
    :func:`log_error` of ``bts`` once added to their TTFT and e2e; 0 when they have none."""
    if not any(r.metric in FRONTEND_METRICS for bt in bts for r in bt.rows):
        return 0.0

    def loss(ms: float) -> float:
        return log_error([_shifted(bt, ms) for bt in bts], robust)

    res = optimize.minimize_scalar(
        loss, bounds=(FRONTEND.low, FRONTEND.high), method="bounded", options={"xatol": 0.01}
    )
    best = float(res.x)
    return best if loss(best) <= loss(0.0) else 0.0


def _shifted(bt: Backtest, frontend_ms: float) -> Backtest:
    """``bt`` with the front-end latency added to its rows (a copy)."""
    out = Backtest(bt.run, bt.config, bt.load_kind, bt.load, assumptions=bt.assumptions)
    out.rows, out.unstable = with_frontend(bt.rows, frontend_ms), bt.unstable
    return out


def _runner(
    runs: list[BenchRun], catalog: Catalog, gpu: GPU, replications: int
) -> Callable[[dict[str, float]], list[Backtest]]:
    """Backtests of ``runs`` with the coefficients ``values`` (no front-end latency: it is
    added afterwards, :func:`_shifted`)."""

    def run_all(values: dict[str, float]) -> list[Backtest]:
        cat = with_entry(catalog, apply(gpu, values))
        ms, per_seq = values["overhead_ms"], values.get("per_seq_us", 0.0)
        cpu = {"constant_ms": ms, "per_seq_us": per_seq, "source": "calibrate fit-bench"}
        return [
            backtest_run(
                r,
                cat,
                replications=replications,
                engine={"cpu_overhead": cpu},
                overhead_ms=ms,
            )  # fmt: skip
            for r in runs
        ]

    return run_all


def _coefficients(runs: list[BenchRun], llm: bool) -> list[Coefficient]:
    """The coefficients the runs can inform (collective latency: only with a tp > 1 run;
    the per-sequence CPU time: only for LLM runs)."""
    skip = {"collective_latency_us"} if not any((r.settings.tp or 1) > 1 for r in runs) else set()
    if not llm:
        skip.add("per_seq_us")
    return [c for c in COEFFICIENTS if c.name not in skip]


def _start_cpu(runs: list[BenchRun], llm: bool) -> tuple[float, float]:
    """(constant ms, per-sequence us) the fit starts from: the first run's engine preset (what
    its untouched backtest uses), else the engine default, or a fixed-shape fleet's overhead."""
    if not llm:
        return DEFAULT_BATCH_OVERHEAD_MS, 0.0
    s = runs[0].settings if runs else None
    preset = engine_preset(s.engine, s.engine_version) if s is not None else None
    cpu = CPU_PRESETS[preset] if preset in CPU_PRESETS else LLMEngineSettings().overhead
    return cpu.constant_ms, cpu.per_seq_us


def fit_bench(
    runs: list[BenchRun],
    holdout: list[BenchRun],
    catalog: Catalog,
    gpu_id: str,
    *,
    replications: int = 2,
    max_evaluations: int = 200,
    loss: str = "auto",
) -> BenchFit:
    """Fit :data:`COEFFICIENTS` (and :data:`FRONTEND`) for ``gpu_id`` on ``runs``; evaluate
    ``holdout`` too, with the coefficients fitted on ``runs`` only. ``loss``: ``squared`` or
    ``absolute`` log error, or ``auto`` (:func:`robust_loss`)."""
    if gpu_id not in catalog:
        raise InputError(f"unknown GPU {gpu_id!r}; the catalog has: {', '.join(catalog)}")
    other = sorted({str(r.settings.gpu) for r in runs + holdout if r.settings.gpu != gpu_id})
    if other:
        raise InputError(f"runs measured on {', '.join(other)} cannot fit {gpu_id}", where="--gpu")
    gpu = catalog[gpu_id]
    llm = any(r.measured.iterations or r.workload.input_len for r in runs)
    coefs = _coefficients(runs, llm)
    robust = robust_loss(runs) if loss == "auto" else loss == "absolute"
    start = {c.name: c.start for c in COEFFICIENTS}
    start["collective_latency_us"] = gpu.interconnect.latency_us
    start["kernel_overhead_us"] = kernel_overhead_of(gpu)
    # the fit starts at "before": the runs' engine preset (or a fixed-shape fleet's) overhead
    start["overhead_ms"], start["per_seq_us"] = _start_cpu(runs, llm)
    base = {c.name: c.start for c in COEFFICIENTS} | start
    fit_runner = _runner(runs, catalog, gpu, replications)
    hold_runner = _runner(holdout, catalog, gpu, replications)
    # "before" is the untouched entry with the engine's default overhead (each run's replay)
    before_fit = [backtest_run(r, catalog, replications=replications) for r in runs]
    before_hold = [backtest_run(r, catalog, replications=replications) for r in holdout]
    count = [0]

    x0 = np.array([start[c.name] for c in coefs])
    bounds = [_bounds(c, gpu) for c in coefs]
    lo = np.array([min(b[0], x) for b, x in zip(bounds, x0, strict=True)])
    hi = np.array([max(b[1], x) for b, x in zip(bounds, x0, strict=True)])
    span = np.where(hi > lo, hi - lo, 1.0)

    def values_of(u: np.ndarray) -> dict[str, float]:  # u: each coefficient mapped to [0, 1]
        x = lo + np.asarray(u) * span
        return base | {c.name: float(v) for c, v in zip(coefs, x, strict=True)}

    def objective(x: np.ndarray) -> float:
        count[0] += 1
        bts = fit_runner(values_of(x))
        return log_error([_shifted(bt, best_frontend(bts, robust)) for bt in bts], robust)

    u0 = (x0 - lo) / span
    res = optimize.minimize(
        objective, u0, method="Powell", bounds=[(0.0, 1.0)] * len(coefs),
        options={"maxfev": max_evaluations, "xtol": 1e-3, "ftol": 1e-6},
    )  # fmt: skip
    values = values_of(res.x)
    if not res.fun <= objective(u0):  # never worse than where it started
        values = values_of(u0)
    after_raw = fit_runner(values)
    values["frontend_ms"] = best_frontend(after_raw, robust)
    fit = BenchFit(
        gpu_before=gpu,
        gpu_after=apply(gpu, values),
        values=values,
        before_fit=before_fit,
        after_fit=[_shifted(bt, values["frontend_ms"]) for bt in after_raw],
        before_holdout=before_hold,
        after_holdout=[_shifted(bt, values["frontend_ms"]) for bt in hold_runner(values)]
        if holdout
        else [],
        evaluations=count[0],
    )
    fit.notes.append(
        "loss: mean |log(predicted / measured)| (robust to values the model cannot follow)"
        if robust
        else "loss: mean squared log(predicted / measured)"
    )
    if "collective_latency_us" not in {c.name for c in coefs}:
        fit.notes.append("collective latency not fitted: no run with tp > 1")
    if "kernel_overhead_us" in {c.name for c in coefs} and llm:
        fit.notes.append(
            "the per-iteration constants (CPU overhead, per-kernel cost, collective latency) "
            "cost alike in every decode step: their sum is what the runs pin down, not the split"
        )
    if gpu.calibration is not None:
        fit.notes.append(
            f"{gpu_id} has a calibration block: the scales and the per-kernel cost go to its "
            "'serving' part, over the measured tables and curves"
        )
    return fit
