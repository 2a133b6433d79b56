"""Closed-loop traffic on the LLM continuous-batching engine.

``N`` clients each have at most one request out; a client sends its next request when its
previous one completes (or is refused), after a think time. The send is an event on the
engine's own SimPy loop (:class:`ClosedLLMFleet` extends :class:`LLMFleet`): a request is
created when it is sent, its lengths are drawn then, and it is routed as an open-loop arrival
would be (dynamic routing: who serves it depends on the state at that instant). A request sent
at the instant an iteration ends joins the next iteration. Clients stop sending at the horizon;
requests already sent are served to the end.

>>> import numpy as np
>>> from capsim.spec.scenario import ClosedArrivals
>>> class Const:                       # 10 ms per iteration, whatever the batch
...     def iteration_time(self, *a, **k): return 0.01
>>> spec = ClosedArrivals(kind="closed", concurrency=1, think_time_s=0.0)
>>> draw = lambda k: (np.full(k, 100), np.full(k, 3))
>>> r = run_llm_closed(ClosedLoopClients(spec), draw, Const(), EngineLimits(), horizon=0.07,
...                    rng=np.random.default_rng(0))
>>> r.arrival.round(3).tolist(), r.finish.round(3).tolist()   # one after another, 3 steps each
([0.0, 0.03, 0.06], [0.03, 0.06, 0.09])
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import simpy

from capsim.sim.llm_engine import LLMFleet, run_result
from capsim.sim.llm_types import URGENT, EngineLimits, IterationTimer, LLMRunResult
from capsim.workload.closed_loop import ClosedLoopClients

_CHUNK = 1024  # lengths drawn this many at a time


class ClosedLLMFleet(LLMFleet):
    """The LLM fleet with a closed loop of clients in place of an arrival array."""

    def __init__(
        self,
        env: simpy.Environment,
        clients: ClosedLoopClients,
        draw: Callable[[int], tuple[np.ndarray, np.ndarray]],
        rng: np.random.Generator,
        horizon: float,
        max_requests: int,
        timer: IterationTimer,
        limits: EngineLimits,
        replicas: int,
        **kw,
    ):
        empty = np.zeros(0, dtype=np.int64)
        super().__init__(
            env, np.zeros(0), empty, empty, timer, limits, replicas, static=False, **kw
        )
        self.clients, self.draw, self.rng = clients, draw, rng
        self.horizon, self.max_requests = horizon, max_requests
        self.client: list[int] = []
        self._pool: tuple[list[int], list[int]] = ([], [])

    def _new_request(self, now: float, client: int) -> int:
        """Append request state for a request sent at ``now``; its index."""
        if not self._pool[0]:
            pa, oa = self.draw(_CHUNK)
            self._pool = (
                [max(int(x), 1) for x in pa][::-1],
                [max(int(x), 1) for x in oa][::-1],
            )
        p, o = self._pool[0].pop(), self._pool[1].pop()
        for name, v in (
            ("u", 0), ("g", 0), ("computed", 0), ("endit", -1), ("rep", -1), ("npre", 0),
            ("rejected", False), ("adm", math.nan), ("first", math.nan), ("fin", math.nan),
        ):  # fmt: skip
            getattr(self, name).append(v)
        self.P.append(p)
        self.O.append(o)
        self.refuse.append(self._refuses(p, o))
        self.target.append(p)
        self.arr.append(now)
        self.client.append(client)
        self.n += 1
        return self.n - 1

    def _send_later(self, client: int, completed_at: float) -> None:
        t = self.clients.next_send_time(completed_at, self.rng)
        self._schedule(t - self.env._now, self._on_send, client, URGENT)

    def _on_send(self, ev: simpy.Event) -> None:
        if self.done:
            return
        now, client = self.env._now, ev._value
        if now > self.horizon:
            return
        if self.n >= self.max_requests:
            self.unstable_reason = f"more than {self.max_requests:,} requests (max_requests)"
            self.done = True
            return
        i = self._new_request(now, client)
        self.route(i, now)
        if self.rejected[i]:
            self._send_later(client, now)

    def _finish(self, rp, i: int, now: float) -> None:
        super()._finish(rp, i, now)
        self._send_later(self.client[i], now)

    def start(self) -> None:
        for c, t in enumerate(self.clients.initial_send_times(self.rng)):
            self._schedule(float(t), self._on_send, c, URGENT)


def run_llm_closed(
    clients: ClosedLoopClients,
    draw: Callable[[int], tuple[np.ndarray, np.ndarray]],
    timer: IterationTimer,
    limits: EngineLimits,
    replicas: int = 1,
    *,
    horizon: float,
    rng: np.random.Generator,
    router: str = "round_robin",
    max_wait_s: float = math.inf,
    max_queue_length: int | None = None,
    max_requests: int = 60_000_000,
    fuse: bool = True,
) -> LLMRunResult:
    """Simulate ``replicas`` continuous-batching replicas under closed-loop ``clients`` who send
    until ``horizon``; ``draw(k)`` gives the next ``k`` (prompt, output) lengths and ``rng``
    the think times."""
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    env = simpy.Environment()
    fleet = ClosedLLMFleet(
        env, clients, draw, rng, horizon, max_requests, timer, limits, replicas,
        router=router, max_wait_s=max_wait_s, max_queue_length=max_queue_length, fuse=fuse,
    )  # fmt: skip
    fleet.start()
    env.run()
    arrival = np.asarray(fleet.arr, dtype=float)
    prompt = np.asarray(fleet.P, dtype=np.int64)
    output = np.asarray(fleet.O, dtype=np.int64)
    return run_result(fleet, arrival, prompt, output, horizon)
