"""Closed-loop traffic on the batched (fixed-shape) engine.

``N`` clients each have at most one request out; a client sends its next request when the
previous one completes (or is rejected), after a think time (:class:`ClosedLoopClients`). Send
times depend on completions, so they are generated inside the event loop, not up front.

The replicas share one FIFO queue and batch as the open-loop shared queue does (Triton dynamic
batching: start at once when ``max_batch`` requests wait or the delay is zero, otherwise when
the oldest has waited ``max_queue_delay``). With a closed loop the queue never holds more than
``N`` requests, so routing at arrival (round robin, join-shortest-queue) is not modelled: every
router means the shared queue here. Clients stop sending at the horizon; requests already sent
are served to the end.

>>> from capsim.spec.scenario import ClosedArrivals
>>> spec = ClosedArrivals(kind="closed", concurrency=2, think_time_s=0.0)
>>> cfg = EngineConfig(replicas=1, batch_times=np.array([0.0, 0.5, 0.6]))
>>> r = run_batched_closed(ClosedLoopClients(spec), cfg, 1.0, np.random.default_rng(0))
>>> r.arrival.tolist(), r.finish.round(2).tolist()   # both go together, twice
([0.0, 0.0, 0.6, 0.6], [0.6, 0.6, 1.2, 1.2])
"""

from __future__ import annotations

import heapq
import math
from collections import deque
from typing import cast

import numpy as np

from capsim.sim.batched import _expand
from capsim.sim.batched_queue import EngineConfig, RunResult, _BatchLog
from capsim.workload.closed_loop import ClosedLoopClients

_SEND, _DONE, _TIMER = 0, 1, 2


class _ClosedBatcher:
    """The event loop's state: requests are indices into growing lists."""

    def __init__(self, clients, cfg, horizon, rng, jitter_cv, max_requests):
        self.clients, self.cfg, self.horizon, self.rng = clients, cfg, horizon, rng
        self.shape = 1.0 / jitter_cv**2 if jitter_cv > 0 else 0.0
        self.max_requests = max_requests
        self.arrival: list[float] = []
        self.client: list[int] = []
        self.rejected: list[bool] = []
        self.order: list[int] = []
        self.queue: deque[int] = deque()
        self.free = list(range(cfg.replicas))
        self.log = _BatchLog()
        self.events: list[tuple[float, int, int, object]] = []
        self.seq = 0
        self.timer_at = math.inf
        self.unstable_reason = ""
        self.now = 0.0

    def push(self, t: float, kind: int, payload: object) -> None:
        heapq.heappush(self.events, (t, self.seq, kind, payload))
        self.seq += 1

    def send(self, t: float, c: int) -> None:
        """Client ``c`` sends a request at ``t`` (or stops, past the horizon)."""
        if t > self.horizon:
            return
        if len(self.arrival) >= self.max_requests:
            self.unstable_reason = (
                f"more than {self.max_requests:,} requests (simulation.max_requests)"
            )
            return
        i = len(self.arrival)
        self.arrival.append(t)
        self.client.append(c)
        limit = self.cfg.max_queue_length
        rejected = limit is not None and len(self.queue) >= limit
        self.rejected.append(rejected)
        if rejected:
            self.push(self.clients.next_send_time(t, self.rng), _SEND, c)
        else:
            self.queue.append(i)

    def dispatch(self, t: float) -> None:
        """Start batches on free replicas while the batching rule allows."""
        cfg, q = self.cfg, self.queue
        k, delay = cfg.max_batch, cfg.max_queue_delay_s
        while self.free and q:
            oldest = self.arrival[q[0]]
            if len(q) < k and delay > 0 and t < oldest + delay:
                if self.timer_at != oldest + delay:
                    self.timer_at = oldest + delay
                    self.push(oldest + delay, _TIMER, None)
                return
            if t - oldest > cfg.max_wait_s:
                self.unstable_reason = (
                    f"overloaded: at t={t:.1f}s a request had waited {t - oldest:.1f}s "
                    f"(> max_wait_s {cfg.max_wait_s:g})"
                )
                return
            b = min(k, len(q))
            ids = [q.popleft() for _ in range(b)]
            r = self.free.pop(0)
            s = float(cfg.batch_times[b])
            if self.shape:
                s *= self.rng.gamma(self.shape, 1.0 / self.shape)
            self.log.append(t, s, b, r)
            self.order.extend(ids)
            self.push(t + s, _DONE, (r, ids))

    def run(self) -> None:
        for c, t in enumerate(self.clients.initial_send_times(self.rng)):
            self.push(float(t), _SEND, c)
        while self.events and not self.unstable_reason:
            t, _, kind, payload = heapq.heappop(self.events)
            self.now = t
            if kind == _SEND:
                self.send(t, cast(int, payload))
            elif kind == _DONE:
                r, ids = cast(tuple[int, list[int]], payload)
                self.free.append(r)
                self.free.sort()
                for i in ids:
                    self.push(self.clients.next_send_time(t, self.rng), _SEND, self.client[i])
            if not self.events or self.events[0][0] > t:  # every event at t handled
                self.dispatch(t)


def run_batched_closed(
    clients: ClosedLoopClients,
    cfg: EngineConfig,
    horizon: float,
    rng: np.random.Generator,
    *,
    jitter_cv: float = 0.0,
    max_requests: int = 60_000_000,
) -> RunResult:
    """Simulate ``cfg`` under closed-loop ``clients`` sending until ``horizon``; ``rng`` draws
    think times and (with ``jitter_cv`` > 0) gamma batch-time jitter of mean 1."""
    if cfg.replicas < 1:
        raise ValueError("replicas must be >= 1")
    b = _ClosedBatcher(clients, cfg, horizon, rng, jitter_cv, max_requests)
    b.run()
    arrival = np.asarray(b.arrival, dtype=float)
    rejected = np.asarray(b.rejected, dtype=bool)
    order = np.asarray(b.order, dtype=np.int64)
    starts, durs, _, _ = b.log.arrays()
    end = max(b.now, float((starts + durs).max()) if len(starts) else 0.0)
    return _expand(
        arrival,
        order,
        b.log,
        horizon=horizon,
        end_time=end,
        replicas=cfg.replicas,
        rejected=rejected,
        unstable_reason=b.unstable_reason,
    )
