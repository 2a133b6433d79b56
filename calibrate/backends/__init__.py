"""Backend selection. Only the chosen backend's module (and framework) is imported."""

from __future__ import annotations

import importlib

from ..errors import CalibrationError
from ..hostinfo import cuda_hint
from .base import Backend, Op, PrecisionSupport

BACKENDS = ("auto", "numpy", "torch", "cupy")
DEVICES = ("cpu", "cuda")

_CLASSES = {"numpy": "NumpyBackend", "torch": "TorchBackend", "cupy": "CupyBackend"}

__all__ = ["BACKENDS", "DEVICES", "Backend", "Op", "PrecisionSupport", "select_backend"]


def _load(name: str) -> type[Backend]:
    """Import ``backends/<name>_backend.py``; a missing framework is a usage error."""
    try:
        module = importlib.import_module(f"{__name__}.{name}_backend")
    except ImportError as exc:
        raise CalibrationError(
            f"the {name} backend needs the {name} package, which is not importable ({exc})"
        ) from exc
    return getattr(module, _CLASSES[name])


def _auto(device: str | None, seed: int) -> Backend:
    """CUDA via torch, else CUDA via CuPy, else NumPy on the CPU (never imports a GPU framework
    when there is no sign of an NVIDIA GPU or when ``device`` is ``cpu``)."""
    notes: list[str] = []
    if device == "cpu":
        notes.append("--device cpu: numpy")
    elif device is None and not cuda_hint():
        notes.append("no NVIDIA device node or nvidia-smi: numpy on the CPU")
    else:
        for name in ("torch", "cupy"):
            try:
                backend = _load(name)(device or "cuda", seed)
            except Exception as exc:  # noqa: BLE001 - auto falls back, and says why
                notes.append(f"{name}: {type(exc).__name__}: {exc}".splitlines()[0])
                continue
            backend.selection_notes = notes
            return backend
        if device is not None:
            raise CalibrationError(
                f"--device {device}: no usable CUDA backend ({'; '.join(notes)})"
            )
    backend = _load("numpy")(None, seed)
    backend.selection_notes = notes
    return backend


def select_backend(name: str = "auto", device: str | None = None, seed: int = 0) -> Backend:
    """Build the backend ``name`` on ``device`` (None = the backend's default device)."""
    if name not in BACKENDS:
        raise CalibrationError(f"unknown backend {name!r}: choose from {', '.join(BACKENDS)}")
    if device is not None and device.split(":")[0] not in DEVICES:
        raise CalibrationError(f"unknown device {device!r}: use cpu, cuda or cuda:N")
    if name == "auto":
        return _auto(device, seed)
    return _load(name)(device, seed)
