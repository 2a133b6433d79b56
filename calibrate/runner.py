"""``run()``: pick a backend, plan the sweep, measure within the budget, write the directory."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from .backends import select_backend
from .errors import CalibrationError
from .metadata import utc_now
from .output import check_target, write_directory
from .schema import META_FILE, PRECISIONS
from .session import ProgressFn, Session
from .threads import pin_threads
from .work import LlmShape

DEFAULT_BUDGET_S = 900.0
DEFAULT_QUICK_BUDGET_S = 30.0


def run(
    out_dir: str | Path,
    backend: str = "auto",
    device: str | None = None,
    budget_seconds: float | None = None,
    quick: bool = False,
    precisions: Sequence[str] | None = None,
    progress: ProgressFn | None = None,
    *,
    overwrite: bool = False,
    seed: int = 0,
    threads: int | None = None,
    warn: Callable[[str], None] | None = None,
    llm_shape: Sequence[int] | None = None,
) -> Path:
    """Measure this machine and write a ``capsim-calibration/1`` directory to ``out_dir``.

    ``budget_seconds`` bounds the whole run (default 900 s, or 30 s with ``quick``);
    ``precisions`` restricts the GEMM sweep (default: every supported one; when none of them is
    supported on the device the run is refused, when some are not ``warn`` is told -- default:
    a line on stderr); ``progress`` receives :class:`~calibrate.progress.ProgressEvent` objects;
    ``threads`` pins the BLAS / OpenMP threads (see :mod:`calibrate.threads`); ``llm_shape``
    (layers, hidden, heads, kv_heads, head_dim, ffn, vocab) replaces the default model of the
    ``forward_llm_step`` rows (Llama-3.1-8B on GPUs, a tiny one on CPUs). Raises
    :class:`CalibrationError` on bad arguments, an unusable backend or an existing non-empty
    ``out_dir`` (unless ``overwrite``). Returns the directory written; when Ctrl-C ended the
    measurements early it still holds what was measured (see :func:`was_interrupted`).
    """
    started = time.perf_counter()
    created = utc_now()
    out = Path(out_dir)
    budget = _budget(budget_seconds, quick)
    requested = normalize_precisions(precisions)
    shape = parse_llm_shape(llm_shape)
    check_target(out, overwrite)
    pinned_by = pin_threads(threads) if threads is not None else None
    be = select_backend(backend, device, seed)
    try:
        session = Session(be, quick, requested, budget, started, progress, llm_shape=shape)
        for line in session.unsupported_notes():
            (warn or _stderr)(line)
        session.device.update(blas_threads=threads, blas_threads_pinned_by=pinned_by)
        rows = session.execute()
        command = {"backend": backend, "device": device, "threads": threads}
        command["llm_shape"] = list(llm_shape) if llm_shape is not None else None
        meta = session.meta(created, command, seed)
    finally:
        be.close()
    return write_directory(out, meta, rows, overwrite)


def was_interrupted(out_dir: str | Path) -> bool:
    """True when the run that wrote ``out_dir`` was ended early by Ctrl-C (``meta.json``)."""
    try:
        meta = json.loads((Path(out_dir) / META_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and meta.get("interrupted") is True


def _stderr(line: str) -> None:
    print(f"calibrate: warning: {line}", file=sys.stderr, flush=True)


def parse_llm_shape(values: Sequence[int] | None) -> LlmShape | None:
    """``(layers, hidden, heads, kv_heads, head_dim, ffn, vocab)`` as an :class:`LlmShape`.

    >>> parse_llm_shape([2, 256, 4, 2, 64, 512, 1000]).kv_heads
    2
    """
    if values is None:
        return None
    names = ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab")
    if len(values) != len(names):
        raise CalibrationError(
            f"--llm-shape needs {len(names)} integers ({','.join(names)}), got {len(values)}"
        )
    bad = [f"{n}={v}" for n, v in zip(names, values, strict=True) if int(v) != v or v < 1]
    if bad:
        raise CalibrationError(f"--llm-shape: sizes must be integers >= 1 ({', '.join(bad)})")
    shape = LlmShape(*(int(v) for v in values))
    if shape.heads % shape.kv_heads:
        raise CalibrationError(
            f"--llm-shape: heads ({shape.heads}) must be a multiple of kv_heads ({shape.kv_heads})"
        )
    return shape


def normalize_precisions(precisions: Iterable[str] | None) -> list[str] | None:
    """``["fp16,bf16", "int8"]`` -> ``["fp16", "bf16", "int8"]``; unknown names are an error."""
    if precisions is None:
        return None
    names: list[str] = []
    for item in precisions:
        for name in str(item).replace(",", " ").split():
            name = name.strip().lower()
            if name not in PRECISIONS:
                raise CalibrationError(
                    f"unknown precision {name!r}: choose from {', '.join(PRECISIONS)}"
                )
            if name not in names:
                names.append(name)
    if not names:
        raise CalibrationError("--precisions needs at least one precision")
    return names


def _budget(budget_seconds: float | None, quick: bool) -> float:
    if budget_seconds is None:
        return DEFAULT_QUICK_BUDGET_S if quick else DEFAULT_BUDGET_S
    budget = float(budget_seconds)
    if not budget > 0 or budget == float("inf"):
        raise CalibrationError(f"the budget must be a positive number of seconds, not {budget}")
    return budget
