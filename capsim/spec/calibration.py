"""The ``calibration`` block of a catalog entry: measured operator tables and fitted curves.

A calibrated entry carries what was measured on the real card, so that service times come from
measurements instead of the spec-sheet roofline (see :mod:`capsim.service.calibrated`):

* **tables** -- measured operator times: one :class:`OpTable` per operator, math format and
  tensor-parallel degree, ``time_us`` against ``tokens`` (rows through the operator, i.e. the
  GEMM's ``m``). Each table also states the operator's cost as a function of the tokens
  (``flops = flops_per_token * T``, ``bytes = bytes_fixed + bytes_per_token * T``, in capsim's
  own cost model) so a lookup knows when a capsim operator *is* the measured one: same name (any
  GEMM for GEMM tables), same format, same cost at the same tokens.
* **curves** -- fitted efficiency curves (:class:`EfficiencyCurve`): the achieved fraction of the
  card's spec roofline ``max(flops / peak[fmt], bytes / bandwidth)`` as a piecewise-linear
  function of log(arithmetic intensity) (GEMMs, attention) or of log(bytes moved) (memory-bound
  element-wise kernels). A fitted time is ``roofline(op) / efficiency(x) + kernels *
  kernel_overhead``. The curves are not forced to be monotone: real GEMMs lose efficiency at the
  ridge, where neither resource is saturated, and the curve keeps that dip.
* **provenance** -- where the numbers came from (harness run or imported profile, device, host,
  date, licence, attribution) and the fit's own error on held-out measurements.

This module only defines the schema and evaluates tables and curves; fitting and importing live
in :mod:`capsim.calibration`, the op timers in :mod:`capsim.service.calibrated`.

>>> c = EfficiencyCurve(kind="gemm", format="fp16", x="intensity", at=[1, 100], efficiency=[0.5, 0.8], points=2)
>>> [round(float(v), 3) for v in c.evaluate([0.5, 10, 1000])]
[0.5, 0.65, 0.8]
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from capsim.strict import Strict

#: Operator classes a curve can describe.
CurveKind = Literal["gemm", "attention", "memory"]


class FitError(Strict):
    """How well the calibration predicts measurements it was not fitted on."""

    held_out: str = Field(description="what was predicted, e.g. 'gemm fp32 n=2752 k=1024'")
    points: int = Field(ge=0)
    median_abs_error: float = Field(ge=0, description="median |predicted / measured - 1|")
    worst_error: float = Field(description="largest error, signed (negative = predicted too fast)")
    worst_point: str = ""


class Provenance(Strict):
    """Where a calibration came from; shown by ``capsim catalog show`` and in ``sources``."""

    source: str = Field(description="what produced the measurements")
    method: str = Field(description="how the tables and curves were made from them")
    device: str = Field(description="the device as the measurement reported it")
    host: str | None = None
    backend: str | None = None
    harness_version: str | None = None
    measured: str | None = Field(None, description="when measured (ISO 8601), if known")
    created: str = Field(description="date of the fit or import (YYYY-MM-DD)")
    data: str = Field(description="file or directory the measurements were read from")
    licence: str | None = None
    attribution: str | None = None
    commit: str | None = None
    fit_errors: list[FitError] = Field(default_factory=list)

    @field_validator("measured", "created", mode="before")
    @classmethod
    def _iso(cls, v: object) -> object:
        # a hand-edited `created: 2026-11-22` is a YAML date, not a string
        return v.isoformat() if isinstance(v, _dt.date) else v


class MeasuredPeaks(Strict):
    """Best rates seen in the measurements (informational; the curves are relative to the
    entry's spec peaks)."""

    bandwidth_gb_s: float | None = Field(None, gt=0)
    tflops: dict[str, float] = Field(default_factory=dict)
    launch_us: float | None = Field(None, ge=0)
    power_idle_w: float | None = Field(None, ge=0)
    power_busy_w: float | None = Field(None, ge=0)


#: The most a fitted curve may exceed the roofline (cache effects and boost clocks stay below).
MAX_CURVE_EFFICIENCY = 1.5


class EfficiencyCurve(Strict):
    """Achieved fraction of the spec roofline against intensity (FLOP/byte) or bytes.

    Piecewise linear in ``log(x)`` between the breakpoints ``at``; constant beyond the ends.
    Efficiencies may exceed 1 a little (data kept in a cache between calls, boost clocks: the
    shipped H100 curves reach 1.10); above :data:`MAX_CURVE_EFFICIENCY` the timings are wrong
    (units, a too-fast clock) and the curve is refused.
    """

    kind: CurveKind
    format: str = Field(description="math format the curve was measured in")
    x: Literal["intensity", "bytes"]
    at: list[float] = Field(min_length=1)
    efficiency: list[float] = Field(min_length=1)
    points: int = Field(ge=1, description="measurements behind the curve")

    @model_validator(mode="after")
    def _shape(self) -> EfficiencyCurve:
        if len(self.at) != len(self.efficiency):
            raise ValueError("'at' and 'efficiency' must have the same length")
        if any(a <= 0 for a in self.at) or any(
            b <= a for a, b in zip(self.at, self.at[1:], strict=False)
        ):
            raise ValueError("'at' must be positive and strictly increasing")
        if any(not e > 0 for e in self.efficiency):
            raise ValueError("efficiencies must be positive")
        if max(self.efficiency) > MAX_CURVE_EFFICIENCY:
            raise ValueError(
                f"{self.kind} {self.format} curve: efficiency {max(self.efficiency):.4g} is above "
                f"{MAX_CURVE_EFFICIENCY} of the roofline: the timings are faster than the card's "
                "peaks allow (check the time units, or re-create the entry with --new-gpu)"
            )
        return self

    def evaluate(self, x) -> np.ndarray:
        """Efficiency at ``x`` (array-like; values <= 0 take the first breakpoint's)."""
        lx = np.log(np.maximum(np.asarray(x, dtype=float), 1e-300))
        return np.interp(lx, np.log(self.at), self.efficiency)


class OpTable(Strict):
    """Measured median time of one operator against the tokens it processes."""

    op: str = Field(description="capsim operator name, or 'gemm' for a bare harness GEMM")
    format: str = Field(description="math format")
    tp: int = Field(1, ge=1, description="tensor-parallel degree it was measured at")
    n: int = Field(0, ge=0, description="GEMM output features on this GPU (0: not a GEMM)")
    k: int = Field(0, ge=0, description="GEMM input features on this GPU (0: not a GEMM)")
    kernels: int = Field(1, ge=1)
    flops_per_token: float = Field(ge=0)
    bytes_fixed: float = Field(0.0, ge=0, description="bytes moved independently of tokens")
    bytes_per_token: float = Field(ge=0)
    measured_as: str | None = Field(None, description="what the source called it")
    tokens: list[int] = Field(min_length=1)
    time_us: list[float] = Field(min_length=1, description="median time per call, microseconds")

    @model_validator(mode="after")
    def _shape(self) -> OpTable:
        if len(self.tokens) != len(self.time_us):
            raise ValueError(f"table {self.op}: 'tokens' and 'time_us' differ in length")
        t = self.tokens
        if t[0] < 1 or any(b <= a for a, b in zip(t, t[1:], strict=False)):
            raise ValueError(f"table {self.op}: tokens must be >= 1 and strictly increasing")
        if any(not v > 0 for v in self.time_us):
            raise ValueError(f"table {self.op}: times must be positive")
        return self

    @property
    def is_gemm(self) -> bool:
        return self.n > 0 and self.k > 0

    def cost(self, tokens) -> tuple[np.ndarray, np.ndarray]:
        """FLOPs and bytes of one call at ``tokens`` (capsim's cost model)."""
        t = np.asarray(tokens, dtype=float)
        return self.flops_per_token * t, self.bytes_fixed + self.bytes_per_token * t

    def seconds(self, tokens) -> np.ndarray:
        """Log-log interpolation inside the measured range; NaN outside it."""
        t = np.asarray(tokens, dtype=float)
        lx = np.log(np.maximum(t, 1e-300))
        lt = np.log(np.asarray(self.tokens, dtype=float))
        ly = np.log(np.asarray(self.time_us, dtype=float) * 1e-6)
        out = np.exp(np.interp(lx, lt, ly))
        inside = (t >= self.tokens[0]) & (t <= self.tokens[-1])
        return np.where(inside, out, np.nan)

    def label(self) -> str:
        shape = f" n={self.n} k={self.k}" if self.is_gemm else ""
        return f"{self.op} {self.format} tp={self.tp}{shape}"


class ServingFit(Strict):
    """What ``capsim calibrate fit-bench`` fitted over the measured calibration, from served runs.

    The harness measures operators one at a time in eager mode; a serving engine runs them in
    CUDA graphs, with its own fusions. These scale the calibration instead of being ignored by
    it: the calibrated timer divides a compute-bound time by ``compute_scale`` and a
    memory-bound one by ``memory_scale`` (a curve's efficiency times the scale, at most 1), and
    replaces the harness's per-kernel launch time by ``kernel_overhead_us`` when that is set.

    >>> ServingFit(compute_scale=1.1).memory_scale
    1.0
    """

    compute_scale: float = Field(1.0, gt=0, description="x the measured compute efficiency")
    memory_scale: float = Field(1.0, gt=0, description="x the measured memory efficiency")
    kernel_overhead_us: float | None = Field(
        None, ge=0, description="the engine's per-kernel cost (default: the measured launch time)"
    )
    source: str = Field("", description="the fit-bench run that set these (sources.bench_fit)")


class Calibration(Strict):
    """Measured tables and fitted curves of one card, with provenance."""

    provenance: Provenance
    kernel_overhead_us: float = Field(
        ge=0, description="per-kernel overhead used with the fitted curves (microseconds)"
    )
    measured: MeasuredPeaks = MeasuredPeaks()
    curves: list[EfficiencyCurve] = Field(default_factory=list)
    tables: list[OpTable] = Field(default_factory=list)
    serving: ServingFit | None = Field(
        None, description="fit-bench's scales over the measurements (served runs)"
    )

    def curve(self, kind: str, fmt: str) -> EfficiencyCurve | None:
        """The curve of this operator class and math format, if fitted."""
        for c in self.curves:
            if c.kind == kind and c.format == fmt:
                return c
        return None

    def formats(self) -> list[str]:
        """Math formats with a table or a curve."""
        seen: list[str] = []
        for f in [c.format for c in self.curves] + [t.format for t in self.tables]:
            if f not in seen:
                seen.append(f)
        return seen

    def summary(self) -> str:
        """One line: source, date, what is in it."""
        p = self.provenance
        pts = sum(len(t.tokens) for t in self.tables)
        return (
            f"{p.source} ({p.device}; {p.created}): {len(self.tables)} measured tables "
            f"({pts} points), curves for {', '.join(sorted({c.format for c in self.curves})) or 'none'}"
        )


class CalibrationFile(Calibration):
    """A calibration sidecar file, ``<entry id>.calibration.yaml`` beside the catalog entry: the
    calibration plus its one-line ``source`` (the entry's ``sources.calibration``)."""

    source: str = Field(description="where the measurements came from (sources.calibration)")
