"""Progress reporting: events from the runner, and a plain stderr printer for the CLI."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import TextIO


@dataclass(frozen=True)
class ProgressEvent:
    """Where the run is. ``phase`` groups points (e.g. ``gemm fp16``); ``message`` is free text."""

    phase: str
    done: int
    total: int
    elapsed_s: float
    eta_s: float
    message: str = ""

    @property
    def percent(self) -> float:
        """Share of planned points done (measured or skipped)."""
        return 100.0 * self.done / self.total if self.total else 100.0

    def __str__(self) -> str:
        eta = _clock(self.eta_s)
        text = f"[{self.percent:3.0f}% {_clock(self.elapsed_s)} ETA {eta}] {self.phase}"
        return f"{text}: {self.message}" if self.message else text


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    return f"{seconds // 60}:{seconds % 60:02d}"


class StderrProgress:
    """Prints one line when the phase changes, at most every ``every_s`` within a phase."""

    def __init__(self, stream: TextIO | None = None, every_s: float = 5.0) -> None:
        self.stream = stream or sys.stderr
        self.every_s = every_s
        self._phase: str | None = None
        self._last = 0.0

    def __call__(self, event: ProgressEvent) -> None:
        now = time.monotonic()
        if event.phase == self._phase and now - self._last < self.every_s and event.message == "":
            return
        self._phase, self._last = event.phase, now
        print(f"calibrate {event}", file=self.stream, flush=True)
