"""capsim calibration harness: measure a (GPU) machine and write a ``capsim-calibration/1``
directory that capsim fits into a hardware-catalog entry.

Self-contained: needs only NumPy; PyTorch, CuPy, torchvision and pynvml are used when present and
asked for. Copy this folder to the machine and run ``python -m calibrate run --out DIR``.

Importing the package loads no NumPy: :func:`run` (and its measuring machinery) is imported on first
use, so that ``python -m calibrate run --threads N`` can pin the BLAS threads before NumPy loads.
"""

from __future__ import annotations

__version__ = "1.1.0"

from .errors import CalibrationError, Unsupported  # noqa: E402
from .measurements import MeasurementsError, load_measurements  # noqa: E402
from .schema import FORMAT  # noqa: E402


def __getattr__(name: str):
    if name == "run":  # lazily: the runner imports NumPy
        from .runner import run

        return run
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "FORMAT",
    "CalibrationError",
    "MeasurementsError",
    "Unsupported",
    "__version__",
    "load_measurements",
    "run",
]
