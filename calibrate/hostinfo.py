"""What machine and software the measurements come from (no heavy imports)."""

from __future__ import annotations

import os
import platform
import socket
import sys
from importlib import metadata
from pathlib import Path
from typing import Any

_OPTIONAL = {
    "torch": "torch",
    "torchvision": "torchvision",
    "cupy": "cupy",
    "pynvml": "nvidia-ml-py",
}


def cpu_model() -> str:
    """CPU model name from /proc/cpuinfo, else what ``platform`` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith(("model name", "hardware", "cpu model")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown"


def memory_bytes() -> int | None:
    """Physical memory of the host."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo, else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return memory_bytes()


def _parse_size(text: str) -> int:
    text = text.strip().upper()
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    if text and text[-1] in units:
        return int(text[:-1]) * units[text[-1]]
    return int(text)


def last_level_cache_bytes(default: int = 32 << 20) -> int:
    """Largest CPU cache listed in sysfs (usually the shared L3), else ``default``."""
    sizes = []
    for index in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*"):
        try:
            sizes.append(_parse_size((index / "size").read_text()))
        except (OSError, ValueError):
            continue
    return max(sizes, default=default)


def numpy_blas() -> str | None:
    """Name and version of the BLAS NumPy was built against, when NumPy tells."""
    import numpy as np

    try:
        config = np.show_config(mode="dicts")
        blas = config["Build Dependencies"]["blas"]
        return f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
    except Exception:  # noqa: BLE001 - older NumPy has no dict mode; this is decoration only
        return None


def package_version(module: str) -> str | None:
    """Installed version of an optional package, read from its metadata without importing it."""
    mod = sys.modules.get(module)
    if mod is not None and getattr(mod, "__version__", None):
        return str(mod.__version__)
    for dist in (_OPTIONAL.get(module, module), module):
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            continue
    if module == "cupy":
        names = [d.metadata["Name"] for d in metadata.distributions()]
        for name in names:
            if name and name.lower().startswith("cupy"):
                return metadata.version(name)
    return None


def host_info() -> dict[str, Any]:
    """Host name, OS, CPU and memory."""
    return {
        "hostname": socket.gethostname(),
        "os": platform.system(),
        "os_release": platform.release(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "memory_bytes": memory_bytes(),
    }


def software_info() -> dict[str, Any]:
    """Python, NumPy and (installed, not necessarily imported) optional package versions."""
    import numpy as np

    info: dict[str, Any] = {
        "python": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "numpy": np.__version__,
        "numpy_blas": numpy_blas(),
    }
    for module in _OPTIONAL:
        info[module] = package_version(module)
    return info


def nvidia_driver_version() -> str | None:
    """NVIDIA kernel driver version from /proc/driver/nvidia/version (Linux), when present."""
    try:
        text = Path("/proc/driver/nvidia/version").read_text()
    except OSError:
        return None
    for word in text.split():
        parts = word.split(".")
        if len(parts) >= 2 and all(p.isdigit() for p in parts):
            return word
    return None


def cuda_hint() -> bool:
    """Cheap evidence of an NVIDIA GPU, checked before importing any GPU framework."""
    paths = ("/dev/nvidiactl", "/dev/nvidia0", "/proc/driver/nvidia/version", "/dev/dxg")
    if any(Path(p).exists() for p in paths):
        return True
    import shutil

    return shutil.which("nvidia-smi") is not None


def thread_env() -> dict[str, str]:
    """Environment variables that set BLAS / OpenMP thread counts (they change the results)."""
    names = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_CORETYPE")
    return {n: os.environ[n] for n in names if n in os.environ}
