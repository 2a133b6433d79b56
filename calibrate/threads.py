"""Pinning the BLAS / OpenMP thread count of a run (``--threads N``).

Multithreaded BLAS on a small machine shared with other jobs makes small GEMMs 10-100x noisier;
pinning it (one thread is the steadiest) makes CPU measurements repeatable. The thread count of
OpenBLAS, OpenMP and MKL is read from ``OPENBLAS_NUM_THREADS``, ``OMP_NUM_THREADS`` and
``MKL_NUM_THREADS`` when the library is loaded, so :func:`pin_threads` sets them *before* NumPy (or
torch) is imported -- ``python -m calibrate run --threads N`` does that first thing. In a process
that has loaded NumPy already it uses ``threadpoolctl`` when that is installed, and otherwise
refuses (a pin that silently does nothing would be worse than none).

This module imports nothing heavy.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from .errors import CalibrationError

THREAD_VARS = ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")
#: modules that load a BLAS / OpenMP runtime when imported
_BLAS_MODULES = ("numpy", "scipy", "torch", "cupy")

_pinned: dict[str, Any] = {"threads": None, "how": None, "limiter": None}


def blas_loaded() -> bool:
    """True once NumPy (or another BLAS user) is imported in this process."""
    return any(m in sys.modules for m in _BLAS_MODULES)


def pinned() -> tuple[int | None, str | None]:
    """The thread count pinned by :func:`pin_threads` in this process, and how."""
    return _pinned["threads"], _pinned["how"]


def pin_threads(n: int) -> str:
    """Limit BLAS / OpenMP to ``n`` threads; returns how (for ``meta.json``).

    Raises :class:`CalibrationError` when ``n`` is not a positive integer, or when NumPy is
    already loaded, the environment does not already say ``n`` and threadpoolctl is missing.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise CalibrationError(f"--threads must be a positive integer, not {n!r}")
    if _pinned["threads"] == n:
        return str(_pinned["how"])
    value = str(n)
    if not blas_loaded():
        how = "environment, set before NumPy was loaded"
    elif all(os.environ.get(v) == value for v in THREAD_VARS):
        how = "environment (already set when the process started)"
    else:
        try:
            import threadpoolctl
        except ImportError:
            raise CalibrationError(
                f"--threads {n}: NumPy is already loaded in this process, so its BLAS thread "
                "count can no longer be set through the environment; run `python -m calibrate "
                f"run --threads {n} ...`, or set OPENBLAS_NUM_THREADS={n} OMP_NUM_THREADS={n} "
                f"MKL_NUM_THREADS={n} before starting Python, or install threadpoolctl"
            ) from None
        _pinned["limiter"] = threadpoolctl.threadpool_limits(limits=n)
        how = f"threadpoolctl {getattr(threadpoolctl, '__version__', '')}".strip()
    for var in THREAD_VARS:  # also for child processes and for meta.json's thread_env
        os.environ[var] = value
    _pinned.update(threads=n, how=how)
    return how
