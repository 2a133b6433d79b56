"""What a batched fleet reports (samples for the controller, the batch log, the service order), and its service-time jitter factors."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from capsim.sim.lifecycle import FleetSample


class Jitter:
    """Multiplicative service-time factors, drawn on demand in chunks from one generator.

    Chunked draws give the same sequence as one large draw, so factor k is the same for every
    policy (and equals ``capsim.evaluate``'s factor k for the fixed-fleet engine).
    """

    def __init__(self, rng: np.random.Generator, cv: float):
        self.rng, self.cv = rng, cv
        self.buf = np.empty(0)
        self.max_factor = 1.0

    def ensure(self, count: int) -> memoryview:
        if count > len(self.buf):
            more = max(count - len(self.buf), len(self.buf), 65536)
            shape = 1.0 / self.cv**2
            chunk = self.rng.gamma(shape, 1.0 / shape, size=more)
            self.max_factor = max(self.max_factor, float(chunk.max()))
            self.buf = np.concatenate([self.buf, chunk])
        return memoryview(self.buf)  # type: ignore[arg-type]  # numpy's stubs omit __buffer__ before 3.12


class FleetReadout:
    """Methods of :class:`BatchedFleet` (mixed in); they use its attributes, declared here for
    the type checker (set by ``BatchedFleet.__init__``)."""

    _adm_seen: Any
    _adm_sum: Any
    _carry: list[tuple[float, int]]
    _flush: Any
    _jsrc: Any
    _lt: Any
    _ls: Any
    _lb: Any
    _mv: Any
    _seen: Any
    _seen_sum: Any
    _sum_pending: Any
    adm: Any
    arr: Any
    blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]]
    bt: Any
    head: Any
    limit: Any
    max_factor: Any
    n: Any
    rejected: Any
    scanned: Any
    sum_bs: Any
    sum_btg: Any
    sum_s: Any

    @staticmethod
    def _new_log() -> tuple[list[float], list[float], list[int]]:
        """Empty lists for a loop's batches: start, duration, size."""
        return [], [], []

    def _keep_log(self, tl: list[float], sl: list[float], bl: list[int]) -> None:
        """Move a loop's batches into the pending log (C arrays: no float objects kept), one
        conversion per list."""
        if tl:
            self._lt.frombytes(np.array(tl, dtype=float).tobytes())
            self._ls.frombytes(np.array(sl, dtype=float).tobytes())
            self._lb.frombytes(np.array(bl, dtype=np.int64).tobytes())

    def _longest(self) -> float:
        f = self._jsrc.max_factor if self._jsrc is not None else self.max_factor
        return max(self.bt) * f

    # ------------------------------------------------------------------ observation
    def _arrived(self, t: float) -> int:
        hi = bisect_right(self._mv, t, self._seen)
        if hi > self._seen:
            self._seen_sum += float(self.arr[self._seen : hi].sum())
            self._seen = hi
        return hi

    def sample(self, t: float) -> FleetSample:
        """Counters since time 0, exact at ``t`` (call after ``sync(t)``).

        Only the batches logged since the last sample are looked at (plus those that were
        still running then), so a sample costs the same whatever the length of the run.
        """
        self._sum_pending(t)
        arrived = self._arrived(t)
        started = self.head
        carry = [x for x in self._carry if x[0] > t]
        self._carry = carry
        rem_sum = 0.0
        rem_req = 0.0
        in_service = 0
        for e, b in carry:
            rem_sum += e - t
            rem_req += b * (e - t)
            in_service += b
        if self.limit is not None:
            queue = len(self.adm) - started
            int_a = self._admitted_integral(t)
        else:
            queue = max(arrived - started, 0)
            int_a = arrived * t - self._seen_sum
        int_s = started * t - self.sum_btg
        int_d = started * t - (self.sum_btg + self.sum_bs) + rem_req
        return FleetSample(
            t=t,
            arrived=arrived,
            queue=queue,
            in_service=in_service,
            busy=len(carry),
            busy_seconds=self.sum_s - rem_sum,
            request_seconds=int_a - int_d,
            queue_seconds=int_a - int_s,
            rejected=self.rejected,
            oldest_wait=(t - self._mv[self._queue_head_index()]) if queue > 0 else 0.0,
        )

    def _queue_head_index(self) -> int:
        return self.adm[self.head] if self.limit is not None else self.head

    def _admitted_integral(self, t: float) -> float:
        k = len(self.adm)
        if k > self._adm_seen:
            idx = np.frombuffer(self.adm, dtype=np.int64, count=k)[self._adm_seen :]
            self._adm_sum += float(self.arr[idx].sum())
            self._adm_seen = k
        return k * t - self._adm_sum

    # ------------------------------------------------------------------ results
    def batch_log(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Start, duration and size of every batch, in start order."""
        self._flush(count=False)
        if not self.blocks:
            return np.zeros(0), np.zeros(0), np.zeros(0, np.int64)
        if len(self.blocks) > 1:
            start, dur, size = (np.concatenate(c) for c in zip(*self.blocks, strict=True))
            self.blocks = [(start, dur, size)]
        return self.blocks[0]

    @property
    def log_rows(self) -> list[tuple[float, float, int]]:
        """The batch log as tuples (start, duration, size) — for small runs and tests."""
        st, du, sz = self.batch_log()
        return list(zip(st.tolist(), du.tolist(), sz.tolist(), strict=True))

    def service_order(self) -> np.ndarray:
        """Request indices in the order they started (arrival order without a queue limit)."""
        if self.limit is not None:
            return np.frombuffer(self.adm, dtype=np.int64, count=len(self.adm)).copy()
        return np.arange(self.n)

    def rejected_mask(self) -> np.ndarray:
        mask = np.zeros(self.n, dtype=bool)
        if self.limit is not None:
            mask[: self.scanned] = True
            mask[self.service_order()] = False
        return mask
