"""Fixtures for the calibration-harness tests; ``gpu`` tests skip without a CUDA device."""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@functools.cache
def cuda_available() -> bool:
    """True when torch or CuPy can use a CUDA device (GPU tests run only then)."""
    from calibrate.hostinfo import cuda_hint

    if not cuda_hint():
        return False
    if importlib.util.find_spec("torch") is not None:
        import torch

        if torch.cuda.is_available():
            return True
    if importlib.util.find_spec("cupy") is not None:
        try:
            import cupy

            return cupy.cuda.runtime.getDeviceCount() > 0
        except Exception:  # noqa: BLE001 - no usable device
            return False
    return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        mine = "tests/calibrate" in str(item.fspath).replace(os.sep, "/")
        if mine and "gpu" in item.keywords and not cuda_available():
            item.add_marker(skip)


def _run_python(code: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -c code`` from the repository root (so ``import calibrate`` works)."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _run_cli(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """Run ``python -m calibrate ARGS`` from the repository root."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "calibrate", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.fixture
def run_python():
    """``run_python(code)``: a fresh interpreter running ``code`` from the repository root."""
    return _run_python


@pytest.fixture
def run_cli():
    """``run_cli(*args)``: ``python -m calibrate ARGS`` in a fresh interpreter."""
    return _run_cli
