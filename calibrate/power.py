"""Board power through NVML (``pynvml``, from the ``nvidia-ml-py`` package), when available."""

from __future__ import annotations

import contextlib
import importlib
import os
import time
from collections.abc import Callable
from typing import Any


class PowerMeter:
    """Reads the power draw of one NVIDIA GPU; open with :meth:`open`."""

    def __init__(self, nvml: Any, handle: Any) -> None:
        self.nvml = nvml
        self.handle = handle

    @classmethod
    def open(cls, pci_bus_id: str | None, index: int) -> tuple[PowerMeter | None, str]:
        """``(meter, how)`` on success, ``(None, reason)`` when NVML cannot be used."""
        try:
            nvml = importlib.import_module("pynvml")
        except ImportError:
            return None, "pynvml is not installed (pip install nvidia-ml-py)"
        try:
            nvml.nvmlInit()
        except Exception as exc:  # noqa: BLE001 - any NVML failure means "no power readings"
            return None, f"NVML initialisation failed: {exc}"
        try:
            handle, how = _handle(nvml, pci_bus_id, index)
            nvml.nvmlDeviceGetPowerUsage(handle)
        except Exception as exc:  # noqa: BLE001
            _shutdown(nvml)
            return None, f"NVML cannot read this device's power: {exc}"
        return cls(nvml, handle), how

    def read_w(self) -> float:
        """Current board power, watts."""
        return self.nvml.nvmlDeviceGetPowerUsage(self.handle) / 1000.0

    def info(self) -> dict[str, Any]:
        """Driver, CUDA driver version, clocks and power limit, as far as NVML tells."""
        n, h = self.nvml, self.handle
        out: dict[str, Any] = {
            "driver_version": _try(lambda: _text(n.nvmlSystemGetDriverVersion())),
            "cuda_driver_version": _try(lambda: _cuda_version(n.nvmlSystemGetCudaDriverVersion())),
            "power_limit_w": _try(lambda: n.nvmlDeviceGetEnforcedPowerLimit(h) / 1000.0),
        }
        clocks = {
            "sm_mhz": _try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_SM)),
            "mem_mhz": _try(lambda: n.nvmlDeviceGetClockInfo(h, n.NVML_CLOCK_MEM)),
            "max_sm_mhz": _try(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_SM)),
            "max_mem_mhz": _try(lambda: n.nvmlDeviceGetMaxClockInfo(h, n.NVML_CLOCK_MEM)),
        }
        out["clocks"] = clocks
        return out

    def sample(
        self,
        seconds: float,
        interval_s: float = 0.05,
        work: Callable[[], object] | None = None,
        settle: float = 0.3,
    ) -> list[float]:
        """Power readings over ``seconds``; with ``work``, call it between readings.

        The first ``settle`` share of the window is discarded (NVML averages over ~1 s and
        clocks ramp up), unless that would leave no reading.
        """
        readings: list[tuple[float, float]] = []
        start = time.perf_counter()
        while (now := time.perf_counter()) - start < seconds:
            if work is not None:
                work()
            else:
                time.sleep(interval_s)
            readings.append((now - start, self.read_w()))
        kept = [w for t, w in readings if t >= settle * seconds]
        return kept or [w for _, w in readings]

    def close(self) -> None:
        """Shut NVML down."""
        _shutdown(self.nvml)


def _handle(nvml: Any, pci_bus_id: str | None, index: int) -> tuple[Any, str]:
    """NVML handle of the CUDA device: by PCI bus id when known (CUDA and NVML orders differ)."""
    if pci_bus_id:
        return nvml.nvmlDeviceGetHandleByPciBusId(pci_bus_id), f"NVML (PCI bus {pci_bus_id})"
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        raise RuntimeError("CUDA_VISIBLE_DEVICES is set and the device's PCI bus id is unknown")
    return nvml.nvmlDeviceGetHandleByIndex(index), f"NVML (index {index})"


def _shutdown(nvml: Any) -> None:
    with contextlib.suppress(Exception):
        nvml.nvmlShutdown()


def _try(fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except Exception:  # noqa: BLE001 - optional information
        return None


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _cuda_version(value: int) -> str:
    """NVML encodes CUDA 12.4 as 12040."""
    return f"{value // 1000}.{value % 1000 // 10}"
