"""One calibration run: the budgeted measurement loop over the planned tasks."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from . import work
from .backends import Backend, Op
from .backends.base import PrecisionSupport
from .cost import CostModel
from .errors import CalibrationError, Unsupported
from .metadata import build_meta
from .plan import SweepConfig, Task, build_plan, sweep_config
from .power import PowerMeter
from .progress import ProgressEvent
from .schema import DEVICE_KEYS, KINDS, PRECISIONS
from .timing import Stats, TimingConfig, measure, summarize
from .work import LlmShape

#: seconds kept back for writing the directory
RESERVE_S = 0.25

ProgressFn = Callable[[ProgressEvent], None]


def choose_primary(
    be: Backend, support: dict[str, PrecisionSupport], requested: list[str] | None
) -> str:
    """The precision of attention, block and ResNet rows: the device's natural serving format."""
    if be.device_kind == "cuda":
        order = ("bf16", "fp16", "fp32")
    else:
        order = ("fp32", "fp64", "bf16", "fp16")
    usable = [p for p in order if p in be.kernel_precisions and support[p].supported]
    if not usable:
        raise CalibrationError(f"the {be.name} backend supports none of {', '.join(order)}")
    wanted = [p for p in usable if requested and p in requested]
    return (wanted or usable)[0]


class Session:
    """One calibration run on one backend."""

    def __init__(
        self,
        be: Backend,
        quick: bool,
        requested: list[str] | None,
        budget_s: float,
        started: float,
        progress: ProgressFn | None,
        llm_shape: LlmShape | None = None,
    ) -> None:
        self.be, self.quick, self.requested = be, quick, requested
        self.budget_s, self.started = budget_s, started
        self.deadline = started + budget_s - RESERVE_S
        self.progress = progress
        self.device = {key: None for key in DEVICE_KEYS} | be.device_info()
        self.support = be.precision_support()
        self.primary = choose_primary(be, self.support, requested)
        self.gemm_precisions = [
            p for p in PRECISIONS if self.support[p].supported and (not requested or p in requested)
        ]
        self.unsupported = [p for p in requested or () if not self.support[p].supported]
        if requested and not self.gemm_precisions:
            raise CalibrationError(
                f"none of the requested precisions ({', '.join(requested)}) is supported by the "
                f"{be.name} backend on {be.device_kind}: {self._reasons()}; supported here: "
                f"{', '.join(self._supported()) or 'none'}"
            )
        self.cfg: SweepConfig = sweep_config(be.device_kind, quick, be.cache_bytes())
        if llm_shape is not None:
            self.cfg = replace(self.cfg, llm=llm_shape)
        self.meter, self.power_note = self._open_power()
        self.resnet_note = be.resnet50_unavailable()
        self.tasks = build_plan(
            self.cfg,
            self.gemm_precisions,
            self.primary,
            resnet=self.resnet_note is None,
            fused_attention=be.fused_attention,
            models=be.model_kinds,
        )
        self.tasks += self._power_tasks()
        self.tasks.sort(key=lambda t: t.tier)
        self.cost = CostModel(be.device_kind)
        self.rows: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.done = 0
        self.budget_hit = False
        self.interrupted = False
        self.warmed_up = be.device_kind != "cuda"
        self.predicted_s = self._predicted_total()
        #: share of the remaining time a point may use: all of it when the plan fits
        self.pace = 1.0 if self.predicted_s <= budget_s else 0.6
        self._eta_cache = (float("-inf"), 0.0)

    # -- setup ---------------------------------------------------------------------------------
    def _predicted_total(self) -> float:
        """Predicted seconds of the whole plan at the prior rates (before anything is measured)."""
        timing = self.cfg.timing
        total = sum(self.cost.cost_s(t, timing) for t in self.tasks if t.build is not None)
        power = self.cfg.idle_s + self.cfg.busy_s if self.meter is not None else 0.0
        return total + power + (0.0 if self.warmed_up else self.cfg.warmup_s)

    def _supported(self) -> list[str]:
        return [p for p in PRECISIONS if self.support[p].supported]

    def _reasons(self) -> str:
        return "; ".join(f"{p}: {self.support[p].detail}" for p in self.unsupported)

    def unsupported_notes(self) -> list[str]:
        """One line when some requested precisions cannot be measured here (they are skipped)."""
        if not self.unsupported:
            return []
        return [
            f"not measuring {', '.join(self.unsupported)} (unsupported by the {self.be.name} "
            f"backend on {self.be.device_kind}: {self._reasons()}); measuring "
            f"{', '.join(self.gemm_precisions)}; supported here: {', '.join(self._supported())}"
        ]

    def _open_power(self) -> tuple[PowerMeter | None, str]:
        if self.be.device_kind != "cuda":
            return None, "power is read through NVML on CUDA devices only"
        meter, note = PowerMeter.open(self.device.get("pci_bus_id"), self.device.get("index") or 0)
        if meter is not None:
            info = meter.info()
            clocks = {**(self.device.get("clocks") or {}), **_present(info.pop("clocks", {}))}
            self.device.update({k: v for k, v in info.items() if v is not None})
            self.device["clocks"] = clocks
        return meter, note

    def _power_tasks(self) -> list[Task]:
        if self.meter is None:
            return []
        n, prec = self.cfg.busy_gemm, self.primary
        f, b = work.gemm(n, n, n, prec)
        idle = Task("power_idle", "none", {}, -1, 0, 0, 0)
        busy = Task("power_busy", prec, {"m": n, "n": n, "k": n}, 0, f, b, b)
        return [idle, busy]

    # -- the loop ------------------------------------------------------------------------------
    def execute(self) -> list[dict[str, Any]]:
        """Measure every task that fits; returns the rows, sorted."""
        try:
            self._emit(
                "plan",
                f"{len(self.tasks)} points on {self.be.name}/{self.be.device_kind}, "
                f"predicted {self.predicted_s:.0f} s, budget {self.budget_s:.0f} s",
            )
            for task in self.tasks:
                self._run(task)
                self.done += 1
                self._emit(task.phase)
        except KeyboardInterrupt:
            self.interrupted = True
            for task in self.tasks[self.done :]:
                self._skip(task, "interrupted")
            self._emit("interrupted", "writing what was measured")
        finally:
            if self.meter is not None:
                self.device["clocks_end"] = _present(self.meter.info().get("clocks") or {})
                self.meter.close()
        self._emit("done", self._summary())
        return sorted(self.rows, key=_row_key)

    def _run(self, task: Task) -> None:
        timing = self._timing()
        left = self.deadline - time.perf_counter()
        need = self.cost.min_cost_s(task, timing) + self._pending_warmup(task)
        if task.kind == "power_idle":
            need = self.cfg.idle_s
        if need > left:
            self.budget_hit = True
            self._skip(task, f"budget: needs ~{need:.2f} s, {max(left, 0):.2f} s left")
            return
        free = self.be.free_memory_bytes()
        if free is not None and task.mem_bytes > 0.8 * free:
            self._skip(
                task,
                f"memory: needs ~{task.mem_bytes / 2**30:.2f} GiB, {free / 2**30:.2f} GiB free",
            )
            return
        try:
            self._measure(task, timing)
        except Unsupported as exc:
            self._skip(task, f"unsupported: {exc}")
        except (KeyboardInterrupt, SystemExit):
            raise
        except Exception as exc:  # noqa: BLE001 - one failed point must not end the run
            self.be.release()
            self._skip(task, f"error: {type(exc).__name__}: {exc}".splitlines()[0][:300])

    def _measure(self, task: Task, timing: TimingConfig) -> None:
        if task.kind == "power_idle":
            self._power_idle(task)
            return
        self._device_warmup()
        if task.kind == "power_busy":
            self._power_busy(task)
            return
        assert task.build is not None
        op = task.build(self.be)
        stats = op.stats or measure(self.be, op, timing, self.deadline)
        self.cost.update(task, stats.median_s)
        row = _row(task, op.impl, op.inner, stats)
        if op.row:
            row.update(op.row)
            median = max(stats.median_s, 1e-12)
            row.update(gflops_per_s=row["flops"] / median / 1e9)
            row.update(gbytes_per_s=row["bytes"] / median / 1e9)
        self.rows.append(row)

    def _timing(self) -> TimingConfig:
        """The per-point time shrinks when the budget would not cover the remaining points."""
        base = self.cfg.timing
        left = max(self.deadline - time.perf_counter(), 0.0)
        remaining = max(len(self.tasks) - self.done, 1)
        share = self.pace * left / remaining
        return base.with_time(min(base.max_time_s, max(share, base.max_time_s / 20)))

    def _pending_warmup(self, task: Task) -> float:
        return 0.0 if self.warmed_up or task.kind == "power_idle" else self.cfg.warmup_s

    # -- GPU warm-up and power -----------------------------------------------------------------
    def _busy_op(self) -> Op:
        n = self.cfg.busy_gemm
        return self.be.make_gemm(n, n, n, self.primary)

    def _device_warmup(self) -> None:
        """Run large GEMMs for a moment so that clocks are up before the first timed point."""
        if self.warmed_up:
            return
        self.warmed_up = True
        self._emit("warm-up", f"{self.cfg.warmup_s:.1f} s of {self.primary} GEMMs")
        try:
            op = self._busy_op()
            end = time.perf_counter() + self.cfg.warmup_s
            with op.entered():
                while time.perf_counter() < end:
                    op.fn()
                    self.be.synchronize()
        except Exception:  # noqa: BLE001 - warm-up is best effort
            self.be.release()

    def _power_idle(self, task: Task) -> None:
        assert self.meter is not None
        self.be.synchronize()
        samples = self.meter.sample(self.cfg.idle_s)
        row = _row(task, "NVML power, CUDA context open, no kernels (warm idle)", None, None)
        row.update(repeats=len(samples), power_w=float(np.median(samples)))
        self.rows.append(row)

    def _power_busy(self, task: Task) -> None:
        assert self.meter is not None
        op = self._busy_op()
        op.flush = False  # keep the device busy: no cache flush between the calls
        times: list[float] = []
        seconds = min(self.cfg.busy_s, max(self.deadline - time.perf_counter() - 0.1, 0.1))
        with op.entered():
            samples = self.meter.sample(seconds, work=lambda: times.append(self.be.time_once(op)))
        row = _row(task, f"NVML during back-to-back {op.impl}", op.inner, summarize(times))
        row.update(power_w=float(np.median(samples)))
        row["repeats"] = len(samples)
        self.rows.append(row)

    # -- bookkeeping ---------------------------------------------------------------------------
    def _skip(self, task: Task, reason: str) -> None:
        self.skipped.append(task.describe() | {"reason": reason})

    def _eta(self) -> float:
        """Predicted seconds left (recomputed at most once a second: plans have ~1000 points)."""
        now = time.perf_counter()
        at, rest = self._eta_cache
        if now - at >= 1.0:
            timing = self._timing()
            rest = sum(self.cost.cost_s(t, timing) for t in self.tasks[self.done :])
            self._eta_cache = (now, rest)
        else:
            rest -= now - at
        return min(max(rest, 0.0), max(self.deadline - now, 0.0))

    def _emit(self, phase: str, message: str = "") -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.started
        event = ProgressEvent(phase, self.done, len(self.tasks), elapsed, self._eta(), message)
        self.progress(event)

    def _summary(self) -> str:
        text = f"{len(self.rows)} rows, {len(self.skipped)} points skipped"
        return text + (" (budget spent)" if self.budget_hit else "")

    def meta(self, created: str, command: dict[str, Any], seed: int) -> dict[str, Any]:
        """Everything ``meta.json`` holds (see README.md)."""
        elapsed = time.perf_counter() - self.started
        return build_meta(self, created, command, seed, elapsed)


def _present(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None}


def _row(task: Task, impl: str, inner: int | None, stats: Stats | None) -> dict[str, Any]:
    row: dict[str, Any] = {"kind": task.kind, "precision": task.precision, "impl": impl}
    row.update(task.params)
    row.update(task.text)
    row.update(flops=task.flops, bytes=task.bytes)
    if stats is not None:
        median = max(stats.median_s, 1e-12)
        row.update(
            median_s=stats.median_s,
            min_s=stats.min_s,
            p10_s=stats.p10_s,
            p90_s=stats.p90_s,
            std_s=stats.std_s,
            repeats=stats.repeats,
            inner=inner,
            gflops_per_s=task.flops / median / 1e9,
            gbytes_per_s=task.bytes / median / 1e9,
        )
    return row


_SORT_PARAMS = ("n", "k", "m", "layers", "in_channels", "out_channels", "height", "kernel", "stride", "batch", "seq_len", "hidden", "buffer_bytes", "message_bytes")  # fmt: skip


def _row_key(row: dict[str, Any]) -> tuple:
    prec = PRECISIONS.index(row["precision"]) if row["precision"] in PRECISIONS else len(PRECISIONS)
    params = tuple(row.get(p) or 0 for p in _SORT_PARAMS)
    text = (row.get("phase") or "", row.get("layout") or "", row["impl"] or "")
    return (KINDS.index(row["kind"]), prec, *text[:2], *params, text[2])
