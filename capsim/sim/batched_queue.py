"""The batched engine's parts: its configuration and result, the batch log and the shared queue of dynamic batching."""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field

import numpy as np
import simpy

from capsim.sim.overload import WaitGrowth


@dataclass(frozen=True)
class EngineConfig:
    """Everything the engine needs for one configuration (no scenario objects)."""

    replicas: int
    batch_times: np.ndarray  # seconds for batch size b at index b; index 0 unused
    max_queue_delay_s: float = 0.0
    router: str = "shared_queue"  # shared_queue | round_robin | join_shortest_queue
    max_queue_length: int | None = None
    max_wait_s: float = math.inf  # alarm level of the wait-growth overload check
    jitter: np.ndarray | None = None  # multiplicative factor per batch (CRN), or None

    @property
    def max_batch(self) -> int:
        return len(self.batch_times) - 1


@dataclass
class RunResult:
    """Per-request arrays (request order) plus the batch log of one run."""

    arrival: np.ndarray
    start: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    batch_size: np.ndarray
    rejected: np.ndarray
    batch_start: np.ndarray
    batch_duration: np.ndarray
    batch_sizes: np.ndarray
    batch_replica: np.ndarray
    horizon: float
    end_time: float
    replicas: int
    unstable: bool = False
    unstable_reason: str = ""
    timeline: dict[str, np.ndarray] = field(default_factory=dict)

    @property
    def served(self) -> np.ndarray:
        return ~np.isnan(self.finish)

    @property
    def latency(self) -> np.ndarray:
        """End-to-end latency of served requests, in arrival order."""
        s = self.served
        return self.finish[s] - self.arrival[s]

    @property
    def wait(self) -> np.ndarray:
        s = self.served
        return self.start[s] - self.arrival[s]


_NORMAL = simpy.events.NORMAL


class _Done:
    """A batch-completion event: what SimPy's scheduler needs of an event, nothing more.

    ``Environment.step`` pops it at its time and calls its callbacks; a full ``Timeout`` would
    also carry a value, a delay and a ``__repr__`` we never use (and cost ~30% more per batch).
    """

    __slots__ = ("callbacks", "_ok", "_value", "_defused", "replica")

    def __init__(self, callback, replica: int) -> None:
        self.callbacks = [callback]
        self._ok = True
        self._value = None
        self.replica = replica


class _BatchLog:
    """Append-only log of batches, one Python list per column.

    Four ``list.append`` calls per batch are cheap, and four flat lists of floats/ints become
    numpy arrays far faster than a list of tuples would.
    """

    def __init__(self) -> None:
        self.start: list[float] = []
        self.dur: list[float] = []
        self.size: list[int] = []
        self.rep: list[int] = []

    def __len__(self) -> int:
        return len(self.start)

    def append(self, start: float, dur: float, size: int, rep: int) -> None:
        self.start.append(start)
        self.dur.append(dur)
        self.size.append(size)
        self.rep.append(rep)

    def take(self, order: np.ndarray) -> _BatchLog:
        """The same batches in another order."""
        out = _BatchLog()
        out.start = [self.start[j] for j in order]
        out.dur = [self.dur[j] for j in order]
        out.size = [self.size[j] for j in order]
        out.rep = [self.rep[j] for j in order]
        return out

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        return (
            np.asarray(self.start, dtype=float),
            np.asarray(self.dur, dtype=float),
            np.asarray(self.size, dtype=np.int64),
            np.asarray(self.rep, dtype=np.int64),
        )


class _SharedQueue:
    """One FIFO queue over the arrival array, served by a pool of free replicas.

    Callback-driven: :meth:`step` starts every batch it can and returns; it runs again when a
    replica is released or a timer (next arrival, batching deadline) fires. It also looks ahead:
    when the next arrival comes before any scheduled event (``env.peek()``), nothing can change
    in between, so it starts that batch at the arrival time without an event of its own.
    """

    def __init__(self, env: simpy.Environment, arrival: np.ndarray, cfg: EngineConfig):
        self.env, self.arr, self.cfg = env, arrival, cfg
        self.n = len(arrival)
        self.log = _BatchLog()
        self.free = list(range(cfg.replicas - 1, -1, -1))
        self.waiting_free = False
        self.timer_at = math.inf
        self.vnow = 0.0
        self.head = 0  # next request (service order) to start
        self.done = False
        self.unstable_reason = ""
        # admission (only with max_queue_length): positions admitted, in arrival order
        self.limit = cfg.max_queue_length
        self.admitted = np.empty(self.n if self.limit else 0, dtype=np.int64)  # empty: no limit
        self.adm_tail = 0
        self.scanned = 0
        self.arr_list = arrival.tolist()  # Python floats: cheaper to index one at a time
        self.bt = [float(x) for x in cfg.batch_times]  # Python floats: cheaper to index
        self.jitter = cfg.jitter.tolist() if cfg.jitter is not None else None
        self.K = cfg.max_batch
        self.growth = WaitGrowth(cfg.max_wait_s)

    # -- admission --------------------------------------------------------------------------
    def _admit_until(self, now: float) -> None:
        """Admit or reject the arrivals up to ``now`` (no batch started since the last call)."""
        hi = int(np.searchsorted(self.arr, now, side="right"))
        if hi <= self.scanned:
            return
        assert self.limit is not None  # called only with a queue limit
        room = max(self.limit - (self.adm_tail - self.head), 0)
        take = min(room, hi - self.scanned)
        self.admitted[self.adm_tail : self.adm_tail + take] = np.arange(
            self.scanned, self.scanned + take
        )
        self.adm_tail += take
        self.scanned = hi

    # -- replicas (an autoscaled fleet is capsim.sim.batched_fleet.BatchedFleet) -------------
    def release(self, r: int) -> None:
        """Replica ``r`` finished its batch: it takes work again."""
        self.free.append(r)
        if self.waiting_free:
            self.waiting_free = False
            self.step()

    def _on_done(self, event: _Done) -> None:
        self.release(event.replica)

    def _wait_until(self, t: float) -> None:
        if t < self.timer_at:
            self.timer_at = t
            self.env.timeout(t - self.env.now).callbacks.append(self._on_timer)

    def _on_timer(self, _ev: simpy.Event) -> None:
        self.timer_at = math.inf
        self.step()

    def _start(self, now: float, b: int) -> None:
        r = self.free.pop()
        log = self.log
        s = self.bt[b] if self.jitter is None else self.bt[b] * self.jitter[len(log.start)]
        log.start.append(now)
        log.dur.append(s)
        log.size.append(b)
        log.rep.append(r)
        self.head += b
        # a bare event scheduled like a Timeout, with this replica's release as its callback
        # _Done has what Environment.step uses of an Event; simpy's annotation asks for Event
        self.env.schedule(_Done(self._on_done, r), _NORMAL, now + s - self.env._now)  # type: ignore[arg-type]

    def step(self) -> None:
        """Start every batch that can start now (or before the next scheduled event)."""
        if self.done:
            return
        env, arr, n, free = self.env, self.arr_list, self.n, self.free
        queue = env._queue  # SimPy's event heap: queue[0][0] is the next event time
        K, delay, max_wait = self.K, self.cfg.max_queue_delay_s, self.cfg.max_wait_s
        limited = self.limit is not None
        now = self.vnow if self.vnow > env._now else env._now
        while free:
            head = self.head
            if limited:
                self._admit_until(now)
                if head == self.adm_tail:
                    if self.scanned >= n:
                        break
                    t_next = arr[self.scanned]
                    if not queue or t_next < queue[0][0]:
                        now = t_next
                        continue
                    self._wait_until(t_next)
                    break
                t0 = arr[self.admitted[head]]
            else:
                if head >= n:
                    break
                t0 = arr[head]
                if t0 > now:
                    if not queue or t0 < queue[0][0]:
                        now = t0
                    else:
                        self._wait_until(t0)
                        break
            if now - t0 > max_wait:
                reason = self.growth.check(now, now - t0)
                if reason:
                    self.unstable_reason = reason
                    self.done = True
                    break
            elif self.growth.armed:
                self.growth.calm()
            if K == 1:
                self._start(now, 1)
                continue
            if limited:
                avail = self.adm_tail - head
            else:
                avail = bisect_right(arr, now, head) - head
            if avail < K and delay > 0:
                t_go = t0 + delay
                if not limited and head + K - 1 < n:
                    t_go = min(t_go, arr[head + K - 1])
                if t_go > now:
                    if not queue or t_go < queue[0][0]:
                        now = t_go
                        continue
                    self._wait_until(t_go)
                    break
            self._start(now, avail if avail < K else K)
        else:
            self.waiting_free = True
        self.vnow = now
