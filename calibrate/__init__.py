"""capsim calibration harness: measure a (GPU) machine and write a ``capsim-calibration/1``
directory that capsim fits into a hardware-catalog entry.

Self-contained: needs only NumPy; PyTorch, CuPy, torchvision and pynvml are used when present and
asked for. Copy this folder to the machine and run ``python -m calibrate run --out DIR``.
"""

from __future__ import annotations

__version__ = "1.0.0"

from .errors import CalibrationError, Unsupported  # noqa: E402
from .measurements import MeasurementsError, load_measurements  # noqa: E402
from .runner import run  # noqa: E402
from .schema import FORMAT  # noqa: E402

__all__ = [
    "FORMAT",
    "CalibrationError",
    "MeasurementsError",
    "Unsupported",
    "__version__",
    "load_measurements",
    "run",
]
