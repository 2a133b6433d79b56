"""What a batched fleet reports: samples of its state for the controller, the batch log, the service order."""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

import numpy as np

from capsim.sim.lifecycle import FleetSample


class FleetReadout:
    """Methods of :class:`BatchedFleet` (mixed in); they use its attributes, declared here for
    the type checker (set by ``BatchedFleet.__init__``)."""

    _adm_seen: Any
    _adm_sum: Any
    _carry: list[tuple[float, int]]
    _flush: Any
    _jsrc: Any
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
