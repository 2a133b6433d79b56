"""Closed-loop traffic: ``N`` clients, each sending its next request when its previous one has
completed and it has thought for a while (what concurrency sweeps and MLPerf SingleStream are).

``traffic.arrivals: {kind: closed, concurrency: N, think_time_s: Z}`` is :class:`ClosedArrivals`.
Unlike open-loop arrivals, closed-loop send times cannot be drawn up front as an array: each
depends on a completion. :class:`ClosedLoopClients` is the generator an engine drives - N first
send times, then one next send time per completion. :func:`simulate_closed_station` is a small
reference simulation of one c-server FCFS station under that generator; tests check it against
the exact M/M/c//N results in :mod:`capsim.analysis.finite_source`.

>>> spec = ClosedArrivals(kind="closed", concurrency=3, think_time_s=0.0)
>>> clients = ClosedLoopClients(spec)
>>> clients.initial_send_times(np.random.default_rng(0)).tolist()
[0.0, 0.0, 0.0]
>>> clients.next_send_time(1.5, np.random.default_rng(0))
1.5
"""

from __future__ import annotations

import heapq
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from capsim.spec.scenario import ClosedArrivals

__all__ = ["ClosedArrivals", "ClosedLoopClients", "ClosedRun", "simulate_closed_station"]


class ClosedLoopClients:
    """Send times for a closed loop: the generator an engine drives. No I/O, no global state."""

    def __init__(self, spec: ClosedArrivals):
        self.spec = spec

    def think(self, rng: np.random.Generator, size: int | None = None):
        """Think time(s) in seconds."""
        z = self.spec.think_time_s
        if z == 0:
            return 0.0 if size is None else np.zeros(size)
        if self.spec.think == "fixed":
            return z if size is None else np.full(size, z)
        return rng.exponential(z, size)

    def initial_send_times(self, rng: np.random.Generator) -> np.ndarray:
        """Each client's first send: after one think time from t = 0 (all at 0 without thinking)."""
        return np.asarray(self.think(rng, self.spec.concurrency), dtype=float)

    def next_send_time(self, completed_at: float, rng: np.random.Generator) -> float:
        """When the client whose request completed at ``completed_at`` sends its next one."""
        return float(completed_at + self.think(rng))


@dataclass(frozen=True)
class ClosedRun:
    """Response times (s) of the completions after warm-up, and the throughput over that span."""

    response_s: np.ndarray
    throughput_rps: float


def simulate_closed_station(
    clients: ClosedLoopClients,
    servers: int,
    service: Callable[[np.random.Generator], float],
    *,
    completions: int,
    warmup: int,
    rng: np.random.Generator,
) -> ClosedRun:
    """One FCFS station with ``servers`` servers fed by ``clients``; ``service(rng)`` draws a
    service time. Runs until ``warmup + completions`` requests have completed.

    >>> spec = ClosedArrivals(kind="closed", concurrency=2, think_time_s=0.0)
    >>> run = simulate_closed_station(ClosedLoopClients(spec), 1, lambda r: 0.5,
    ...                               completions=10, warmup=2, rng=np.random.default_rng(1))
    >>> run.throughput_rps, float(run.response_s.mean())   # 2 clients, 1 server busy: X = 1/S
    (2.0, 1.0)
    """
    if servers < 1 or completions < 1 or warmup < 0:
        raise ValueError("servers and completions must be >= 1, warmup >= 0")
    events: list[tuple[float, int, str, int]] = []  # (time, seq, kind, client)
    seq = 0
    for client, t in enumerate(clients.initial_send_times(rng)):
        events.append((float(t), seq, "send", client))
        seq += 1
    heapq.heapify(events)
    queue: deque[tuple[int, float]] = deque()
    sent_at: dict[int, float] = {}
    busy, done, t_start = 0, 0, 0.0
    responses: list[float] = []
    while done < warmup + completions:
        t, _, kind, client = heapq.heappop(events)
        if kind == "send":
            sent_at[client] = t
            queue.append((client, t))
        else:
            busy -= 1
            done += 1
            if done == warmup:
                t_start = t
            elif done > warmup:
                responses.append(t - sent_at[client])
            heapq.heappush(events, (clients.next_send_time(t, rng), seq, "send", client))
            seq += 1
        while busy < servers and queue:
            nxt, _ = queue.popleft()
            busy += 1
            heapq.heappush(events, (t + float(service(rng)), seq, "done", nxt))
            seq += 1
    return ClosedRun(np.asarray(responses), completions / (t - t_start))


@dataclass(frozen=True)
class ClosedStream:
    """One replication's closed-loop traffic: the clients, the horizon after which they stop
    sending, and the seeds of their think times and token lengths (drawn as the engine runs).

    It stands where a :class:`~capsim.workload.arrivals.RequestStream` stands for open-loop
    traffic; the engine returns the arrival times it generated.
    """

    spec: ClosedArrivals
    horizon: float
    think_seed: np.random.SeedSequence
    size_seed: np.random.SeedSequence
    tokens: Callable[[int, np.random.Generator], tuple[np.ndarray, np.ndarray]] | None = None
    time_scale: float = 1.0

    def __len__(self) -> int:  # nothing is generated up front
        return 0

    def clients(self) -> ClosedLoopClients:
        return ClosedLoopClients(self.spec)

    def think_rng(self) -> np.random.Generator:
        return np.random.default_rng(self.think_seed)

    def token_draw(self) -> Callable[[int], tuple[np.ndarray, np.ndarray]] | None:
        """``draw(k)``: the next ``k`` (prompt, output) lengths, from one seeded generator."""
        if self.tokens is None:
            return None
        rng, fn = np.random.default_rng(self.size_seed), self.tokens
        return lambda k: fn(k, rng)
