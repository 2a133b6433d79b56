"""The continuous-batching LLM engine with replicas that come and go (the autoscaler's view).

:class:`ScalableLLMFleet` is :class:`capsim.sim.llm_engine.LLMFleet` — the same vLLM-like replicas,
iterations and routers — implementing :class:`capsim.sim.lifecycle.ScalableFleet`:

* it runs on its own SimPy environment; ``sync(t)`` runs it up to ``t`` (the autoscaler's
  environment and the engine's meet only at ticks and at replica changes);
* a replica added at ``t`` joins the router's set and takes new arrivals from ``t``; requests
  already routed stay where they are (as with a proxy in front of vLLM servers);
* a retired replica takes no new requests and *drains*: it finishes every request routed to
  it (waiting ones included) and is released when the last one completes — the release time
  is learned then, and ``on_released`` is called at that moment. An idle one is preferred,
  else the one with the fewest outstanding requests;
* requests that arrive while no replica is ready wait in a buffer (as Knative's activator
  holds them) and all go to the first replica that becomes ready; a queue limit applies to the
  buffer too. What vLLM refuses (longer than ``max_model_len`` or the KV cache) is rejected.

The counters the autoscaler reads are running sums kept at arrivals, first admissions and
completions, so a sample costs O(replicas) whatever the length of the run. "Queued" means not
yet admitted to a batch; a request preempted later counts as in service.

>>> import numpy as np
>>> from capsim.sim.llm_types import EngineLimits
>>> class Const:                        # 10 ms per iteration, whatever the batch
...     def iteration_time(self, *a, **k): return 0.01
>>> f = ScalableLLMFleet(np.array([0.0, 0.5]), np.array([10, 10]), np.array([3, 3]), Const(),
...                      EngineLimits())
>>> f.sync(0.2)                         # no replica yet: the first request waits
>>> f.sample(0.2).queue
1
>>> _ = f.add_replica(0.2); f.sync(float("inf"))
>>> f.result(1.0).finish.round(2).tolist()
[0.23, 0.53]
"""

from __future__ import annotations

import gc
import heapq
import math
from collections import deque
from collections.abc import Callable

import numpy as np
import simpy

from capsim.sim.lifecycle import FleetSample
from capsim.sim.llm_engine import LLMFleet, run_result
from capsim.sim.llm_result import check_chains
from capsim.sim.llm_types import INF, EngineLimits, IterationTimer, LLMRunResult, _Replica
from capsim.workload.prefixes import Chain


class ScalableLLMFleet(LLMFleet):
    """LLM replicas under an autoscaler (see the module docstring)."""

    def __init__(
        self,
        arrival: np.ndarray,
        prompt: np.ndarray,
        output: np.ndarray,
        timer: IterationTimer,
        limits: EngineLimits,
        *,
        router: str = "least_outstanding_requests",
        max_wait_s: float = math.inf,
        max_queue_length: int | None = None,
        chains: list[Chain | None] | None = None,
        prefilled: np.ndarray | None = None,
    ):
        if chains is not None:
            check_chains(chains, prompt, output, limits.block_size)
        super().__init__(
            simpy.Environment(), arrival, prompt, output, timer, limits, 0, router,
            max_wait_s, max_queue_length, fuse=True, static=False, chains=chains,
            prefilled=prefilled,
        )  # fmt: skip
        self.inputs = (arrival, prompt, output)
        self.buffer: deque[int] = deque()  # arrived while no replica was ready
        self.n_active = 0
        self.on_release: dict[int, Callable[[int, float], None]] = {}  # draining replicas
        self.n_in = 0  # requests accepted (routed or buffered), and their arrival times
        self.sum_arr = 0.0
        self.n_fin = 0  # requests finished, and their finish times
        self.sum_fin = 0.0
        self.n_rej = 0
        self.started = False
        self.requeued = 0  # requests taken back from reclaimed spot replicas and re-routed
        self.ticks: dict[str, list[float]] = {"t": [], "busy_s": [], "queue_s": []}
        self.inline = True  # sync: a step that ends first runs at once
        self.na = INF  # the next arrival's time (INF: none left, or not started)
        self._live: list[_Replica] = []  # the active replicas, in index order (the router's)

    # ------------------------------------------------------------------ ScalableFleet
    def sync(self, until: float) -> None:
        """Run the engine up to ``until`` (to the end of the stream when it is infinite).

        ``run_llm``'s loop, bounded: it pops the event heap itself, takes arrivals in the loop
        and runs a replica's next step at once when it ends before any other event and before
        ``until``. The order of events is that of ``env.run(until=until)``: a step at the
        stop time waits for the next call, an arrival there is taken when it was scheduled
        before this call (SimPy's stop event is urgent and comes after it)."""
        env = self.env
        if not self.started:
            self.started = True
            self.na = self.arr[0] if self.n else INF
        if math.isinf(until):
            stop = INF
        elif until > env._now:
            stop = env._now + (until - env._now)  # where SimPy's stop event lands
        else:
            return
        q, pop = env._queue, heapq.heappop
        first = True  # the pending arrival was scheduled before this call
        gc_was = gc.isenabled()
        gc.disable()  # many small objects, none freed in cycles
        try:
            while True:
                na = self.na  # steps do not change it: only arrivals do
                arrive = na < stop or (first and na == stop)
                bound = self.ta = na if arrive else stop  # a step inline only before it
                while q and q[0][0] < bound:  # an arrival at the same time goes first (URGENT)
                    env._now, _, _, ev = pop(q)
                    ev.callbacks[0](ev)
                if not arrive or na == INF:
                    break
                env._now = na
                self.na = INF if self.done else self._arrive(na)
                first = False
        finally:
            if gc_was:
                gc.enable()
        if stop < INF:
            env._now = stop

    def add_replica(self, now: float) -> int:
        """A ready replica joins at ``now`` (after ``sync(now)``); buffered requests go to it."""
        rp = _Replica(len(self.reps), self.bs)
        self.reps.append(rp)
        self._live.append(rp)
        self.n_active += 1
        while self.buffer:
            i = self.buffer.popleft()
            if not self._accept(rp, i):  # pragma: no cover - checked when buffered
                self._uncount(i)
        if rp.waiting and not self.done:
            self.plan(rp, now)
        return rp.idx

    def retire_replica(self, now: float, on_released: Callable[[int, float], None]) -> int | None:
        """Stop routing to one replica (idle if any, else the least loaded); it drains."""
        active = self._live
        if not active:
            return None
        rp = min(reversed(active), key=lambda r: r.n_out)  # ties: the newest
        rp.active = False
        active.remove(rp)
        self._any_retired = True
        self.n_active -= 1
        if rp.n_out == 0:
            on_released(rp.idx, now)
        else:
            self.on_release[rp.idx] = on_released
        return rp.idx

    def interrupt_replica(
        self, fid: int, now: float, deadline: float, on_released: Callable[[int, float], None]
    ) -> int | None:
        """A spot notice at ``now`` (after ``sync(now)``): replica ``fid`` takes no new requests
        and drains; if it still holds requests at ``deadline`` it is reclaimed — the iteration
        in flight is lost and every request it holds is re-queued (:meth:`_reclaim`)."""
        rp = self.reps[fid]
        if rp.active:
            rp.active = False
            self._live.remove(rp)
            self._any_retired = True
            self.n_active -= 1
        if rp.n_out == 0:
            on_released(fid, now)
        else:
            self.on_release[fid] = on_released
            self._schedule(deadline - now, self._on_reclaim, rp)
        return fid

    def _on_reclaim(self, ev) -> None:
        rp = ev._value
        cb = self.on_release.pop(rp.idx, None)
        if cb is None:  # drained within the notice
            return
        now = self.env._now
        for i in self._reclaim(rp, now):
            self._requeue(i, now)
        cb(rp.idx, now)

    def _reclaim(self, rp: _Replica, now: float) -> list[int]:
        """Take every request back from a reclaimed replica. The run of iterations in flight is
        lost (its time counts as busy); a running request keeps the tokens generated before it
        and must compute its prompt and those tokens again (prefill, as vLLM's recompute)."""
        rp.gen += 1  # its scheduled step is void
        if rp.busy:
            if rp.seg_decode:
                rp.busy_dec += now - rp.seg_t0
            else:
                rp.busy_pre += now - rp.seg_t0
            rp.busy = False
        rp.chunks = []
        while rp.running:
            i, _ = rp.running.popitem()
            if self.endit[i] >= 0:  # decoding: tokens generated by the last completed step
                self.g[i] = self.u[i] + rp.it - self.P[i]
                self._remove_decode(rp, i)
            else:
                rp.prefilling.remove(i)
            self.target[i] = self.P[i] + self.g[i]
            self.computed[i] = 0
            rp.waiting.appendleft(i)
        ids = list(rp.waiting)
        rp.waiting.clear()
        rp.heap.clear()
        rp.n_out = rp.tok_out = 0
        return ids

    def _requeue(self, i: int, now: float) -> None:
        """Route a request taken from a reclaimed replica again (no replica ready: buffer)."""
        self.requeued += 1
        rp = self._pick(i)
        if rp is None:
            self.buffer.append(i)
            return
        self.rep[i] = rp.idx
        rp.waiting.append(i)
        rp.n_out += 1
        rp.tok_out += self.P[i] + self.O[i]
        if not rp.busy:
            self.plan(rp, now)
        elif rp.seg_k > 1:
            self._cut(rp, now)

    def stop(self) -> None:
        """Give up (an overloaded run that is aborted): nothing more is scheduled."""
        self.done = True

    def sample(self, t: float) -> FleetSample:
        """Cumulative counters at ``t`` (after ``sync(t)``), from the running sums."""
        busy_s, busy, oldest = 0.0, 0, math.inf
        for rp in self.reps:
            busy_s += rp.busy_pre + rp.busy_dec
            if rp.busy:
                busy += 1
                busy_s += t - rp.seg_t0
            if rp.waiting:
                oldest = min(oldest, self.arr[rp.waiting[0]])
        if self.buffer:
            oldest = min(oldest, self.arr[self.buffer[0]])
        in_system = self.n_in - self.n_fin
        queued = self.n_in - self.n_adm
        queue_s = self.sum_adm + queued * t - self.sum_arr
        tk = self.ticks
        tk["t"].append(t)
        tk["busy_s"].append(busy_s)
        tk["queue_s"].append(queue_s)
        return FleetSample(
            t=t,
            arrived=self.next_arrival,
            queue=queued,
            in_service=in_system - queued,
            busy=busy,
            busy_seconds=busy_s,
            request_seconds=self.sum_fin + in_system * t - self.sum_arr,
            queue_seconds=queue_s,
            rejected=self.n_rej,
            oldest_wait=t - oldest if oldest < math.inf else 0.0,
        )

    # ------------------------------------------------------------------ engine hooks
    def route(self, i: int, now: float) -> None:
        """Route arrival ``i``; with no replica ready it waits in the buffer."""
        if self.n_active == 0:
            if self._refused(i) or (
                self.max_queue is not None and len(self.buffer) >= self.max_queue
            ):
                self.rejected[i] = True
                self.n_rej += 1
                return
            self.buffer.append(i)
            self._count(i)
            return
        rp = self._pick(i)
        assert rp is not None  # a replica is active
        if not self._accept(rp, i):
            self.n_rej += 1
            return
        self._count(i)
        if not rp.busy:
            self.plan(rp, now)
        elif rp.seg_k > 1:
            self._cut(rp, now)

    def _finish(self, rp, i: int, now: float) -> None:
        super()._finish(rp, i, now)
        self.n_fin += 1
        self.sum_fin += now
        if not rp.active and rp.n_out == 0:
            cb = self.on_release.pop(rp.idx, None)
            if cb is not None:
                cb(rp.idx, now)

    # ------------------------------------------------------------------ helpers
    def _count(self, i: int) -> None:
        self.n_in += 1
        self.sum_arr += self.arr[i]

    def _uncount(self, i: int) -> None:  # pragma: no cover - see add_replica
        self.n_in -= 1
        self.sum_arr -= self.arr[i]
        self.n_rej += 1

    # ------------------------------------------------------------------ results
    def result(self, horizon: float) -> LLMRunResult:
        """Per-request arrays of the run (call after ``sync(inf)``)."""
        return run_result(self, *self.inputs, horizon)

    def busy_queue_at(self, edges: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Cumulative busy replica-seconds and queue-seconds at ``edges``, interpolated
        linearly between the autoscaler's samples (exact at the samples)."""
        tk = self.ticks
        t = np.concatenate([[0.0], tk["t"]])
        b = np.concatenate([[0.0], tk["busy_s"]])
        q = np.concatenate([[0.0], tk["queue_s"]])
        return np.interp(edges, t, b), np.interp(edges, t, q)
