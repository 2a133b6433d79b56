"""Fit a catalog entry's engine-level coefficients to imported serving runs (``fit-bench``).

The coefficients (:data:`COEFFICIENTS`), each through a field that exists today:

* ``compute_scale`` multiplies the entry's ``efficiency.compute`` (and every
  ``compute_by_format`` override), capped so no efficiency exceeds 1;
* ``memory_scale`` multiplies ``efficiency.memory`` (same cap);
* ``overhead_ms``: CPU time per iteration the GPU waits for -- the LLM engine's
  ``scheduler_overhead_ms``, or a fixed-shape fleet's ``batch_overhead_ms`` -- a scenario
  setting, not a catalog field: it is reported (and recorded in the provenance) for scenarios
  to use;
* ``collective_latency_us``: ``interconnect.latency_us``, fitted only when a run has tp > 1.

A per-sequence CPU overhead is not fitted: this branch's engine has no such field (add it to
:data:`COEFFICIENTS` with its setter when it has one).

The loss is the mean squared log ratio of predicted to measured over every compared value of
the fitting runs (:func:`capsim.bench.backtest.backtest_run`; serving runs are simulated with
fixed seeds, so the loss is a deterministic function of the coefficients). It is minimised by
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

from capsim.bench.backtest import Backtest, backtest_run
from capsim.bench.model import BenchRun
from capsim.errors import InputError
from capsim.spec.catalog import GPU, Catalog, Efficiency
from capsim.spec.engine import LLMEngineSettings
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
    Coefficient("collective_latency_us", 5.0, 0.0, 500.0, "interconnect.latency_us"),
)


def fitted_efficiency(eff: Efficiency, compute_scale: float, memory_scale: float) -> Efficiency:
    """``eff`` scaled, each fraction capped at 1."""
    return Efficiency(
        compute=round(min(eff.compute * compute_scale, 1.0), 4),
        memory=round(min(eff.memory * memory_scale, 1.0), 4),
        compute_by_format={
            k: round(min(v * compute_scale, 1.0), 4) for k, v in eff.compute_by_format.items()
        },
    )


def apply(gpu: GPU, values: dict[str, float]) -> GPU:
    """The entry with the fitted catalog coefficients in place."""
    eff = fitted_efficiency(gpu.efficiency, values["compute_scale"], values["memory_scale"])
    update: dict = {"efficiency": eff}
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


def log_error(bts: list[Backtest]) -> float:
    """Mean squared log(predicted / measured) over every compared value."""
    e = [
        math.log(r.predicted / r.measured) ** 2
        for bt in bts
        for r in bt.rows
        if r.measured > 0 and r.predicted > 0 and math.isfinite(r.predicted)
    ]
    return float(np.mean(e)) if e else math.inf


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


def _runner(
    runs: list[BenchRun], catalog: Catalog, gpu: GPU, replications: int
) -> Callable[[dict[str, float]], list[Backtest]]:
    def run_all(values: dict[str, float]) -> list[Backtest]:
        cat = with_entry(catalog, apply(gpu, values))
        ms = values["overhead_ms"]
        return [
            backtest_run(
                r,
                cat,
                replications=replications,
                engine={"scheduler_overhead_ms": ms},
                overhead_ms=ms,
            )  # fmt: skip
            for r in runs
        ]

    return run_all


def fit_bench(
    runs: list[BenchRun],
    holdout: list[BenchRun],
    catalog: Catalog,
    gpu_id: str,
    *,
    replications: int = 2,
    max_evaluations: int = 200,
) -> BenchFit:
    """Fit :data:`COEFFICIENTS` for ``gpu_id`` on ``runs``; evaluate ``holdout`` too."""
    if gpu_id not in catalog:
        raise InputError(f"unknown GPU {gpu_id!r}; the catalog has: {', '.join(catalog)}")
    other = sorted({str(r.settings.gpu) for r in runs + holdout if r.settings.gpu != gpu_id})
    if other:
        raise InputError(f"runs measured on {', '.join(other)} cannot fit {gpu_id}", where="--gpu")
    gpu = catalog[gpu_id]
    coefs = [c for c in COEFFICIENTS if c.name != "collective_latency_us"]
    if any((r.settings.tp or 1) > 1 for r in runs):
        coefs.append(next(c for c in COEFFICIENTS if c.name == "collective_latency_us"))
    start = {c.name: c.start for c in coefs}
    start["collective_latency_us"] = gpu.interconnect.latency_us
    # the fit starts at "before": the engine's (or a fixed-shape fleet's) default overhead
    llm = any(r.measured.iterations or r.workload.input_len for r in runs)
    start["overhead_ms"] = DEFAULT_OVERHEAD_MS if llm else DEFAULT_BATCH_OVERHEAD_MS
    base = {c.name: c.start for c in COEFFICIENTS} | start
    fit_runner = _runner(runs, catalog, gpu, replications)
    hold_runner = _runner(holdout, catalog, gpu, replications)
    # "before" is the untouched entry with the engine's default overhead (each run's replay)
    before_fit = [backtest_run(r, catalog, replications=replications) for r in runs]
    before_hold = [backtest_run(r, catalog, replications=replications) for r in holdout]
    count = [0]

    def loss(x: np.ndarray) -> float:
        count[0] += 1
        values = base | {c.name: float(v) for c, v in zip(coefs, x, strict=True)}
        return log_error(fit_runner(values))

    x0 = np.array([start[c.name] for c in coefs])
    bounds = [_bounds(c, gpu) for c in coefs]
    res = optimize.minimize(
        loss, x0, method="Powell", bounds=bounds,
        options={"maxfev": max_evaluations, "xtol": 1e-3, "ftol": 1e-6},
    )  # fmt: skip
    values = base | {c.name: float(v) for c, v in zip(coefs, res.x, strict=True)}
    if not res.fun <= loss(x0):  # never worse than where it started
        values = base | {c.name: float(v) for c, v in zip(coefs, x0, strict=True)}
    fit = BenchFit(
        gpu_before=gpu,
        gpu_after=apply(gpu, values),
        values=values,
        before_fit=before_fit,
        after_fit=fit_runner(values),
        before_holdout=before_hold,
        after_holdout=hold_runner(values) if holdout else [],
        evaluations=count[0],
    )
    if "collective_latency_us" not in {c.name for c in coefs}:
        fit.notes.append("collective latency not fitted: no run with tp > 1")
    fit.notes.append("per-sequence CPU overhead not fitted: the engine has no such field yet")
    if gpu.calibration is not None:
        fit.notes.append(
            f"{gpu_id} has a calibration block: its fitted curves take precedence over the "
            "efficiency scales for the operators they cover"
        )
    return fit
