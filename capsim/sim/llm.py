"""Continuous batching of LLM requests (vLLM-like), replica by replica, one event per step.

A *replica* (one model copy on ``tp`` GPUs) runs engine *iterations*. Each iteration the
scheduler decides what goes into the batch, in this order (vLLM's chunked-prefill scheduling,
decode first):

1. **Decodes.** Every running sequence that has its prompt in the KV cache generates one token.
2. **Prefill chunks in progress**, first admitted first, each taking what is left of its prompt up
   to the remaining token budget (``max_num_batched_tokens``).
3. **Admission (FCFS).** Waiting requests, oldest first, while the token budget lasts, the
   running set is below ``max_num_seqs`` and the KV cache has blocks for the chunk; the first
   request that does not fit stops admission (head-of-line, as vLLM). Without chunked prefill a
   prompt is admitted only whole.

A sequence holds ``ceil(tokens / block_size)`` KV blocks; blocks are allocated as tokens are
written (a chunk's tokens, then one per decode step) and freed when the request completes.
The iteration that finishes a prompt samples the first output token (time to first token);
every later iteration adds one token.

**Preemption (vLLM V1, recompute).** When the next iteration's running sequences need more KV
blocks than the cache has, the *newest* running request is preempted: its blocks are freed and
it goes back to the *front* of the waiting queue; when re-admitted it recomputes the prefill of
its prompt plus the tokens it had generated (the first of those recomputed iterations samples
its next token). Nothing is admitted in an iteration that preempted. A request that cannot fit
in the KV cache even alone, or whose prompt + output exceeds ``max_model_len``, is rejected at
arrival (vLLM refuses it).

**Routers** (decided at arrival, as a proxy in front of the replicas would): ``round_robin``;
``least_outstanding_requests`` (fewest requests routed there and not finished; ties go round
the replicas); ``least_outstanding_tokens`` (smallest sum of prompt + output tokens of those
requests, the work a proxy that knows ``max_tokens`` would see). ``shared_queue`` and
``join_shortest_queue`` mean ``least_outstanding_requests`` here: a continuous-batching replica
takes work as soon as it has KV room, so a central queue in front of it is a router by another
name.

**Speed.** Requests are indices into arrays; per-request state lives in Python lists. The
engine keeps running aggregates (number of decoding sequences, the sum of their context
offsets, KV blocks by residue) so an iteration costs O(1) in Python, and finds completions
with a heap of finishing iteration numbers (decodes advance one token per iteration, so a
sequence's last iteration is known when it starts decoding). A *step* is one SimPy event: one
iteration when it has prefill work, or a run of pure-decode iterations during which nothing
can change (no completion, no KV exhaustion, no arrival at this replica) whose total time is
summed in closed form (a decode iteration's time is the max of two lines in its total context,
which grows by the batch size each iteration). An arrival routed to a replica in the middle of
such a run cuts the run at the first iteration boundary after the arrival. The timing of every
request is the same as iterating one by one (tests check it).

>>> import numpy as np
>>> class Const:                       # 10 ms per iteration, whatever the batch
...     def iteration_time(self, *a, **k): return 0.01
...     def decode_lines(self, d): return (0.01, 0.0, 0.01, 0.0)
>>> r = run_llm(np.array([0.0, 0.005]), np.array([100, 100]), np.array([3, 3]), Const(),
...             EngineLimits())
>>> r.first_token.round(3).tolist(), r.finish.round(3).tolist()
([0.01, 0.02], [0.03, 0.04])
"""

from __future__ import annotations

import functools
import heapq
import math
from bisect import bisect_left
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import simpy

from capsim.catalog import GIB, GPU
from capsim.cost import idle_energy_j, llm_busy_energy_j
from capsim.errors import InputError
from capsim.metrics import RunMetrics, series_metrics, warmup_cut
from capsim.models import TransformerModel
from capsim.precision import math_units
from capsim.service.fixed import Unsupported
from capsim.service.llm import (
    LLMEngineSettings,
    LLMServiceModel,
    MemoryFit,
    engine_settings,
    parallelism_problem,
    precision_problem,
    prefill_work,
)

UNLIMITED = 1 << 60
URGENT = simpy.events.URGENT  # 0; replica steps use NORMAL (1)
ROUTERS = ("round_robin", "least_outstanding_requests", "least_outstanding_tokens")
ROUTER_ALIASES = {
    "shared_queue": "least_outstanding_requests",
    "join_shortest_queue": "least_outstanding_requests",
}
KV_SERIES_BINS = 240  # points of the KV-utilisation time series


# --------------------------------------------------------------------------------------------
# Engine inputs and outputs
# --------------------------------------------------------------------------------------------


class IterationTimer(Protocol):
    """What the engine needs from a service model (``LLMServiceModel`` has it).

    ``decode_lines(D)`` is optional: ``(a1, b1, a2, b2)`` such that a decode-only iteration of
    ``D`` sequences with total context ``C`` takes ``max(a1 + b1 C, a2 + b2 C)`` seconds.
    Without it, runs of decode iterations are summed one by one (still one event per run).
    """

    def iteration_time(
        self,
        num_tokens: int,
        num_decode: int = 0,
        decode_context: float = 0,
        prefill_work: float = 0.0,
        num_logits: int | None = None,
        prefill_kv: float | None = None,
    ) -> float: ...


@dataclass(frozen=True)
class EngineLimits:
    """Per-replica limits of the engine (defaults: unlimited KV, budget and sequences)."""

    kv_blocks: int | None = None  # KV-cache blocks per replica; None = unlimited
    block_size: int = 16
    max_num_batched_tokens: int | None = None  # token budget per iteration; None = unlimited
    max_num_seqs: int | None = None
    chunked_prefill: bool = True
    max_model_len: int | None = None

    @classmethod
    def of(cls, fit: MemoryFit, st: LLMEngineSettings, max_model_len: int) -> EngineLimits:
        return cls(
            kv_blocks=fit.kv_blocks,
            block_size=st.block_size,
            max_num_batched_tokens=st.max_num_batched_tokens,
            max_num_seqs=st.max_num_seqs,
            chunked_prefill=st.chunked_prefill,
            max_model_len=max_model_len,
        )


@dataclass
class LLMRunResult:
    """Per-request times (NaN when not reached) and per-replica totals of one run."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    admitted: np.ndarray  # first time scheduled (the end of queueing)
    first_token: np.ndarray
    finish: np.ndarray
    replica: np.ndarray
    rejected: np.ndarray
    preemptions: np.ndarray  # times each request was preempted
    horizon: float
    end_time: float
    replicas: int
    busy_prefill_s: np.ndarray  # per replica: time in iterations with prefill work
    busy_decode_s: np.ndarray  # per replica: time in decode-only iterations
    iterations: int
    seq_iterations: int  # sum over iterations of the sequences in the batch
    events: int  # SimPy events of replica steps (for the speed benchmark)
    tokens_generated: int  # counted per iteration: decoding sequences + completed prefills
    prefill_tokens: int  # prompt tokens computed, recomputation after preemption included
    kv_blocks: int | None
    kv_series: dict[int, tuple[list[float], list[float]]] = field(repr=False, default_factory=dict)
    unstable: bool = False
    unstable_reason: str = ""

    @property
    def served(self) -> np.ndarray:
        return ~np.isnan(self.finish)

    @property
    def ttft(self) -> np.ndarray:
        return self.first_token - self.arrival

    @property
    def e2e(self) -> np.ndarray:
        return self.finish - self.arrival

    @property
    def tpot(self) -> np.ndarray:
        """(finish - first token) / (output - 1); NaN for one-token outputs."""
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(
                self.output > 1, (self.finish - self.first_token) / (self.output - 1), np.nan
            )

    def kv_utilisation(self, t0: float, t1: float, bins: int = KV_SERIES_BINS):
        """Time-weighted KV-cache use (share of blocks, mean over replicas) on ``bins`` bins.

        Returns ``(bin starts, utilisation per bin, mean over [t0, t1], peak)``; zeros when the
        cache is unlimited.
        """
        edges = np.linspace(t0, t1, bins + 1)
        if not self.kv_blocks or t1 <= t0:
            return edges[:-1], np.zeros(bins), 0.0, 0.0
        total = np.zeros(bins)
        peak = 0.0
        n = max(1, len(self.kv_series))
        for ts, us in self.kv_series.values():
            if not ts:
                continue
            t = np.asarray(ts)
            u = np.asarray(us) / self.kv_blocks
            peak = max(peak, float(u.max()))
            # integral of the step function u(t) up to each edge
            seg_end = np.append(t[1:], max(t1, t[-1]))
            cum = np.concatenate([[0.0], np.cumsum(u * (seg_end - t))])
            knots = np.append(t, seg_end[-1])
            at = np.interp(edges, knots, cum, left=0.0, right=cum[-1])
            total += np.diff(at) / np.diff(edges)
        util = total / n
        mean = float(np.average(util))
        return edges[:-1], util, mean, peak


# --------------------------------------------------------------------------------------------
# Closed-form sums of decode runs
# --------------------------------------------------------------------------------------------


def _line_sum(alpha: float, beta: float, lo: int, hi: int) -> float:
    """Σ_{x=lo}^{hi-1} (alpha + beta x)."""
    n = hi - lo
    if n <= 0:
        return 0.0
    return n * alpha + beta * (n * (lo + hi - 1) / 2.0)


def _sum_max_lines(a1: float, b1: float, a2: float, b2: float, j: int) -> float:
    """Σ_{x=0}^{j-1} max(a1 + b1 x, a2 + b2 x), exactly (up to float rounding)."""
    if j <= 0:
        return 0.0
    if b1 == b2:
        return j * (a1 if a1 > a2 else a2) + b1 * (j * (j - 1) / 2.0)
    xs = (a2 - a1) / (b1 - b2)  # the lines cross here
    if b1 > b2:  # line 1 wins for x >= xs
        m = 0 if xs <= 0 else (j if xs >= j else math.ceil(xs))
        return _line_sum(a2, b2, 0, m) + _line_sum(a1, b1, m, j)
    if xs >= j:  # line 1 wins for x <= xs: everywhere
        return j * a1 + b1 * (j * (j - 1) / 2.0)
    if xs < 0:
        return j * a2 + b2 * (j * (j - 1) / 2.0)
    m = math.floor(xs) + 1
    return _line_sum(a1, b1, 0, m) + _line_sum(a2, b2, m, j)


# --------------------------------------------------------------------------------------------
# The fleet
# --------------------------------------------------------------------------------------------


class _Ev:
    """The least SimPy's event loop needs of an event: callbacks, ok flag, value."""

    __slots__ = ("callbacks", "_ok", "_value")

    def __init__(self, cb, value: Any):
        self.callbacks = [cb]
        self._ok = True
        self._value = value


class _Replica:
    __slots__ = (
        "idx", "waiting", "running", "prefilling", "chunks", "D", "sum_u", "corr", "heap",
        "it", "busy", "seg_t0", "seg_k", "seg_lines", "seg_cum", "seg_decode", "gen",
        "n_out", "tok_out", "busy_pre", "busy_dec", "kv_t", "kv_u", "active", "own", "pos",
    )  # fmt: skip

    def __init__(self, idx: int, bs: int):
        self.idx = idx
        self.waiting: deque[int] = deque()
        self.running: dict[int, None] = {}  # admission order; popitem() = newest
        self.prefilling: list[int] = []  # running requests whose prompt is not all computed
        self.chunks: list[tuple[int, int]] = []  # (request, chunk) of the step in flight
        self.D = 0  # decoding sequences
        self.sum_u = 0  # Σ u_i, context of i at iteration x is u_i + x
        self.corr = [0] * bs  # KV block rounding by residue (see LLMFleet._blocks)
        self.heap: list[tuple[int, int]] = []  # (iteration count when done, request)
        self.it = 0  # iterations completed
        self.busy = False  # a step is scheduled
        self.seg_t0 = 0.0
        self.seg_k = 0
        self.seg_lines: tuple[float, float, float, float] | None = None
        self.seg_cum: list[float] | None = None
        self.seg_decode = False
        self.gen = 0  # generation of the scheduled step (stale events are ignored)
        self.n_out = 0  # routed and not finished
        self.tok_out = 0  # their prompt + output tokens
        self.busy_pre = 0.0
        self.busy_dec = 0.0
        self.kv_t: list[float] = []
        self.kv_u: list[float] = []
        self.active = True  # takes new requests (False once retired)
        self.own: list[int] = []  # static routing: this replica's requests, in arrival order
        self.pos = 0  # static routing: the next of them to arrive


class LLMFleet:
    """Replicas, the router and the arrival dispatcher on one SimPy environment."""

    def __init__(
        self,
        env: simpy.Environment,
        arrival: np.ndarray,
        prompt: np.ndarray,
        output: np.ndarray,
        timer: IterationTimer,
        limits: EngineLimits,
        replicas: int,
        router: str,
        max_wait_s: float,
        max_queue_length: int | None,
        fuse: bool,
        static: bool = False,
    ):
        self.env = env
        self.timer = timer
        self.itime = timer.iteration_time
        self.lines_of = getattr(timer, "decode_lines", None)
        self._lines: dict[int, tuple[float, float, float, float] | None] = {}
        self.n = len(arrival)
        self.arr = arrival.tolist()
        self.P = [int(x) for x in prompt.tolist()]
        self.O = [int(x) for x in output.tolist()]
        n = self.n
        self.u = [0] * n
        self.g = [0] * n  # tokens generated (at the last prefill; decodes: from u)
        self.target = self.P[:]  # prefill target: prompt (+ generated, after a preemption)
        self.computed = [0] * n
        self.endit = [-1] * n
        nan = math.nan
        self.adm = [nan] * n
        self.first = [nan] * n
        self.fin = [nan] * n
        self.rep = [-1] * n
        self.npre = [0] * n
        self.rejected = [False] * n
        bs = limits.block_size
        self.bs = bs
        self.V = [[(-(r + m)) % bs for m in range(bs)] for r in range(bs)]
        self.total = limits.kv_blocks if limits.kv_blocks is not None else UNLIMITED
        self.budget = limits.max_num_batched_tokens or UNLIMITED
        self.max_seqs = limits.max_num_seqs or UNLIMITED
        self.chunked = limits.chunked_prefill
        self.max_len = limits.max_model_len or UNLIMITED
        self.limits = limits
        if router in ROUTER_ALIASES:
            router = ROUTER_ALIASES[router]
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; accepted: {', '.join(ROUTERS)}")
        self.router = router
        self.rr = 0
        self.max_wait = max_wait_s
        self.max_queue = max_queue_length
        self.fuse = fuse
        self.reps: list[_Replica] = [_Replica(r, bs) for r in range(replicas)]
        self.next_arrival = 0
        self.done = False
        self.unstable_reason = ""
        self.iterations = 0
        self.seq_iterations = 0
        self.events = 0
        self.tokens_generated = 0
        self.prefill_tokens = 0
        self.n_adm = 0  # requests admitted at least once, and the sum of their admission times
        self.sum_adm = 0.0
        self.track_kv = limits.kv_blocks is not None
        # static routing (round robin, or one replica): who serves a request is known before
        # it arrives, so each replica takes its own arrivals at its iteration boundaries and
        # no arrival events are needed (the results are the same as routing at arrival)
        self.static = static and (router == "round_robin" or replicas == 1)
        if self.static:
            for r, rp in enumerate(self.reps):
                rp.own = list(range(r, self.n, replicas))

    # -- scheduling helpers -------------------------------------------------------------------
    def _schedule(self, delay: float, cb, value: Any = None, priority: int = 1) -> None:
        """A bare event ``delay`` from now with callback ``cb`` (cheaper than a Timeout).

        Arrivals use priority 0 (SimPy's URGENT): an arrival at the instant an iteration ends
        is routed before the replica schedules its next iteration, so it can join it.
        """
        env = self.env
        heapq.heappush(env._queue, (env._now + delay, priority, next(env._eid), _Ev(cb, value)))

    def _decode_lines(self, d: int) -> tuple[float, float, float, float] | None:
        lines = self._lines.get(d, False)
        if lines is False:
            lines = self.lines_of(d) if self.lines_of is not None else None
            self._lines[d] = lines
        return lines

    def _blocks(self, rp: _Replica, x: int) -> int:
        """KV blocks the decoding sequences hold after iteration ``x`` (contexts u_i + x).

        Σ ceil((u_i + x) / bs) = (Σ u_i + D x + Σ_i ((-(u_i + x)) mod bs)) / bs, where the last
        sum depends only on x mod bs and the residues u_i mod bs (kept in ``corr``).
        """
        if rp.D == 0:
            return 0
        return (rp.sum_u + rp.D * x + rp.corr[x % self.bs]) // self.bs

    def _add_decode(self, rp: _Replica, i: int, s: int) -> None:
        """Request i decodes from iteration ``s`` on, having generated g[i] tokens."""
        g = self.g[i]
        u = self.P[i] + g - s
        self.u[i] = u
        rp.D += 1
        rp.sum_u += u
        if self.bs > 1:
            v = self.V[u % self.bs]
            rp.corr = [a + b for a, b in zip(rp.corr, v, strict=True)]
        e = s + self.O[i] - g
        self.endit[i] = e
        heapq.heappush(rp.heap, (e, i))

    def _remove_decode(self, rp: _Replica, i: int) -> None:
        u = self.u[i]
        rp.D -= 1
        rp.sum_u -= u
        if self.bs > 1:
            v = self.V[u % self.bs]
            rp.corr = [a - b for a, b in zip(rp.corr, v, strict=True)]
        self.endit[i] = -1

    def _finish(self, rp: _Replica, i: int, now: float) -> None:
        self.fin[i] = now
        del rp.running[i]
        rp.n_out -= 1
        rp.tok_out -= self.P[i] + self.O[i]

    def _preempt_newest(self, rp: _Replica) -> None:
        i, _ = rp.running.popitem()
        if self.endit[i] >= 0:  # decoding: tokens generated so far from its context
            self.g[i] = self.u[i] + rp.it - self.P[i]
            self._remove_decode(rp, i)
        else:
            rp.prefilling.remove(i)
        self.target[i] = self.P[i] + self.g[i]
        self.computed[i] = 0
        self.npre[i] += 1
        rp.waiting.appendleft(i)

    def _unstable(self, now: float, waited: float) -> None:
        self.unstable_reason = (
            f"overloaded: at t={now:.1f}s a request had waited {waited:.1f}s "
            f"(> max_wait_s {self.max_wait:g}); the queue grows without bound"
        )
        self.done = True

    # -- one step of one replica --------------------------------------------------------------
    def plan(self, rp: _Replica, now: float) -> None:
        """Schedule the next iteration (or run of decode iterations) of replica ``rp``."""
        if self.done:
            rp.busy = False
            return
        if self.static:  # take this replica's arrivals up to now (in arrival order)
            own, pos, arr = rp.own, rp.pos, self.arr
            while pos < len(own) and arr[own[pos]] <= now:
                self._accept(rp, own[pos])
                pos += 1
            rp.pos = pos
        waiting = rp.waiting
        if waiting:
            waited = now - self.arr[waiting[0]]
            if waited > self.max_wait:
                self._unstable(now, waited)
                rp.busy = False
                return
        bs, it, total = self.bs, rp.it, self.total
        computed, target = self.computed, self.target
        preempted = False
        while True:
            D = rp.D
            need = (rp.sum_u + D * it + rp.corr[it % bs]) // bs if D else 0
            left = self.budget - D
            chunks = []
            for i in rp.prefilling:
                if left <= 0:
                    need += -(-computed[i] // bs)
                    continue
                c = target[i] - computed[i]
                if c > left:
                    c = left
                left -= c
                chunks.append((i, c))
                need += -(-(computed[i] + c) // bs)
            if need <= total or not rp.running:
                break
            self._preempt_newest(rp)
            preempted = True
        # admission, FCFS, while budget, sequences and KV blocks allow
        if not preempted and waiting:
            running = rp.running
            while waiting and left > 0 and len(running) < self.max_seqs:
                i = waiting[0]
                c = target[i] - computed[i]
                if c > left:
                    if not self.chunked:
                        break
                    c = left
                nb = -(-c // bs)
                if need + nb > total:
                    break
                waiting.popleft()
                running[i] = None
                rp.prefilling.append(i)
                chunks.append((i, c))
                need += nb
                left -= c
                if self.adm[i] != self.adm[i]:  # NaN: first admission
                    self.adm[i] = now
                    self.n_adm += 1
                    self.sum_adm += now
        if not rp.running:
            rp.busy = False
            if self.track_kv:
                rp.kv_t.append(now)
                rp.kv_u.append(0.0)
            if self.static and rp.pos < len(rp.own):
                self._schedule(self.arr[rp.own[rp.pos]] - now, self._on_wake, rp, URGENT)
            return
        D = rp.D
        ctx = rp.sum_u + D * it
        if chunks:
            n_tok = D
            work = 0.0
            kv = 0
            logits = D
            for i, c in chunks:
                b = computed[i]
                n_tok += c
                work += c * (b + c / 2.0)  # prefill_work(c, b)
                kv += b + c
                if b + c == target[i]:
                    logits += 1
            dt = self.itime(n_tok, D, ctx, work, logits, kv)
            k = 1
            rp.seg_decode = False
            rp.seg_lines = None
            rp.seg_cum = None
            self.seq_iterations += D + len(chunks)
            used = need
        else:
            # pure decode: a run of k iterations until a completion, KV exhaustion (or k = 1)
            heap, endit = rp.heap, self.endit
            while heap and endit[heap[0][1]] != heap[0][0]:
                heapq.heappop(heap)
            k = heap[0][0] - it
            if preempted or not self.fuse:
                k = 1
            if (
                k > 1
                and total < UNLIMITED
                and (rp.sum_u + D * (it + k - 1) + rp.corr[(it + k - 1) % bs]) // bs > total
            ):
                lo, hi = 1, k - 1  # largest k' with blocks(it + k' - 1) <= total
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self._blocks(rp, it + mid - 1) <= total:
                        lo = mid
                    else:
                        hi = mid - 1
                k = lo
            lines = self._lines.get(D, False)
            if lines is False:
                lines = self._decode_lines(D)
            rp.seg_lines = None
            rp.seg_cum = None
            if lines is not None:
                a1, b1, a2, b2 = lines
                seg = (a1 + b1 * ctx, b1 * D, a2 + b2 * ctx, b2 * D)
                dt = _sum_max_lines(*seg, k)
                if k > 1:
                    rp.seg_lines = seg
            else:
                cum, tsum, tm = [], 0.0, self.itime
                for x in range(k):
                    tsum += tm(D, D, ctx + D * x, 0.0, D)
                    cum.append(tsum)
                dt = tsum
                if k > 1:
                    rp.seg_cum = cum
            if k > 1 and self.static and rp.pos < len(rp.own):
                wait = self.arr[rp.own[rp.pos]] - now
                if wait < dt:  # end the run at the first boundary at or after that arrival
                    rp.seg_k = k
                    j, end = self._boundary_after(rp, wait)
                    k, dt = j, end
                    if k == 1:
                        rp.seg_lines = rp.seg_cum = None
            rp.seg_decode = True
            self.seq_iterations += D * k
            if k > 1 and self.track_kv:
                x = it + k - 1
                used = (need + (rp.sum_u + D * x + rp.corr[x % bs]) // bs) / 2.0
            else:
                used = need
        rp.chunks = chunks
        rp.seg_t0 = now
        rp.seg_k = k
        rp.busy = True
        gen = rp.gen = rp.gen + 1
        if self.track_kv:
            rp.kv_t.append(now)
            rp.kv_u.append(used)
        env = self.env  # self._schedule(dt, self._on_step, (rp, gen)), inlined
        heapq.heappush(env._queue, (now + dt, 1, next(env._eid), _Ev(self._on_step, (rp, gen))))

    def _on_step(self, ev: simpy.Event) -> None:
        rp, gen = ev._value
        if gen != rp.gen or self.done:
            if self.done:
                rp.busy = False
            return
        self.events += 1
        now = self.env._now
        k = rp.seg_k
        dt = now - rp.seg_t0
        if rp.seg_decode:
            rp.busy_dec += dt
        else:
            rp.busy_pre += dt
        self.iterations += k
        self.tokens_generated += rp.D * k  # one token per decoding sequence per iteration
        it = rp.it + k
        rp.it = it
        if rp.chunks:
            computed, target, g, first = self.computed, self.target, self.g, self.first
            for i, c in rp.chunks:
                computed[i] += c
                self.prefill_tokens += c
                if computed[i] == target[i]:
                    self.tokens_generated += 1  # the prefill's last token samples one
                    rp.prefilling.remove(i)
                    g[i] += 1
                    if first[i] != first[i]:
                        first[i] = now
                    if g[i] >= self.O[i]:
                        self.endit[i] = -1
                        self._finish(rp, i, now)
                    else:
                        self._add_decode(rp, i, it)
            rp.chunks = []
        heap, endit = rp.heap, self.endit
        while heap and heap[0][0] <= it:
            e, i = heapq.heappop(heap)
            if endit[i] == e:
                self._remove_decode(rp, i)
                self._finish(rp, i, now)
        self.plan(rp, now)

    def _boundary_after(self, rp: _Replica, dt: float) -> tuple[int, float]:
        """The first iteration boundary of rp's decode run at or after ``dt`` into it:
        (iterations, their total time)."""
        k = rp.seg_k
        if rp.seg_lines is not None:
            a1, b1, a2, b2 = rp.seg_lines
            first = a1 if a1 > a2 else a2
            last = max(a1 + b1 * (k - 1), a2 + b2 * (k - 1))
            # iteration times grow from first to last: the answer lies in [dt/last, dt/first]
            hi = min(k, max(1, math.ceil(dt / first))) if first > 0 else 1
            lo = min(hi, max(1, math.floor(dt / last))) if last > 0 else 1
            while lo < hi:  # smallest j with cum(j) >= dt
                mid = (lo + hi) // 2
                if _sum_max_lines(a1, b1, a2, b2, mid) >= dt:
                    hi = mid
                else:
                    lo = mid + 1
            return lo, _sum_max_lines(a1, b1, a2, b2, lo)
        cum = rp.seg_cum
        j = min(bisect_left(cum, dt) + 1, k)
        return j, cum[j - 1]

    def _cut(self, rp: _Replica, now: float) -> None:
        """A request joined ``rp`` during a run of decode iterations: end the run at the first
        iteration boundary at or after ``now``."""
        k = rp.seg_k
        j, end = self._boundary_after(rp, now - rp.seg_t0)
        if j >= k:
            return
        # the run now ends after j iterations; adjust the sequence-iteration count
        self.seq_iterations -= rp.D * (k - j)
        rp.seg_k = j
        rp.gen += 1
        self._schedule(rp.seg_t0 + end - now, self._on_step, (rp, rp.gen))

    # -- arrivals and routing -----------------------------------------------------------------
    def _pick(self, i: int) -> _Replica | None:
        reps = [r for r in self.reps if r.active] if self._any_retired else self.reps
        if not reps:
            return None
        c = len(reps)
        if self.router == "round_robin":
            rp = reps[self.rr % c]
            self.rr += 1
            return rp
        start = self.rr % c
        self.rr += 1
        best, key = None, None
        tokens = self.router == "least_outstanding_tokens"
        for j in range(c):
            rp = reps[(start + j) % c]
            v = rp.tok_out if tokens else rp.n_out
            if key is None or v < key:
                best, key = rp, v
        return best

    _any_retired = False

    def _refused(self, i: int) -> bool:
        """What every replica refuses at arrival (vLLM): longer than ``max_model_len`` or than
        the whole KV cache, or (without chunked prefill) a prompt over the token budget."""
        p, o = self.P[i], self.O[i]
        return (
            p + o > self.max_len
            or -(-(p + o) // self.bs) > self.total
            or (not self.chunked and p > self.budget)
        )

    def _accept(self, rp: _Replica, i: int) -> bool:
        """Request i reaches replica rp: queue it, or reject it (too long, queue full)."""
        if self._refused(i) or (self.max_queue is not None and len(rp.waiting) >= self.max_queue):
            self.rejected[i] = True
            return False
        self.rep[i] = rp.idx
        rp.waiting.append(i)
        rp.n_out += 1
        rp.tok_out += self.P[i] + self.O[i]
        return True

    def route(self, i: int, now: float) -> None:
        rp = self._pick(i)
        if rp is None:
            self.rejected[i] = True
            return
        if not self._accept(rp, i):
            return
        if not rp.busy:
            self.plan(rp, now)
        elif rp.seg_k > 1:
            self._cut(rp, now)

    def _on_arrival(self, ev: simpy.Event) -> None:
        if self.done:
            return
        now = self.env._now
        arr, n, j = self.arr, self.n, self.next_arrival
        while j < n and arr[j] <= now:
            self.route(j, now)
            j += 1
            if self.done:
                return
        self.next_arrival = j
        if j < n:
            self._schedule(arr[j] - now, self._on_arrival, None, URGENT)

    def start(self) -> None:
        if self.static:
            for rp in self.reps:
                if rp.own:
                    self._schedule(self.arr[rp.own[0]], self._on_wake, rp, URGENT)
        elif self.n:
            self._schedule(self.arr[0], self._on_arrival, None, URGENT)

    def _on_wake(self, ev) -> None:
        """Static routing: an idle replica's next request arrives."""
        rp = ev._value
        if not rp.busy and not self.done:
            self.plan(rp, self.env._now)


def run_llm(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    timer: IterationTimer,
    limits: EngineLimits,
    replicas: int = 1,
    *,
    router: str = "round_robin",
    max_wait_s: float = math.inf,
    max_queue_length: int | None = None,
    horizon: float | None = None,
    fuse: bool = True,
    static_routing: bool = True,
) -> LLMRunResult:
    """Simulate ``replicas`` continuous-batching replicas on one request stream.

    ``fuse=False`` schedules every iteration as its own event (slow; for tests that check the
    fused runs give the same times). With round robin or one replica the routing is known in
    advance and each replica takes its arrivals itself (``static_routing``, faster; the same
    results as routing at each arrival, which ``static_routing=False`` forces).
    """
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    if not (len(arrival) == len(prompt) == len(output)):
        raise ValueError("arrival, prompt and output need the same length")
    if len(prompt) and (np.min(prompt) < 1 or np.min(output) < 1):
        raise ValueError("prompt and output lengths must be >= 1 token")
    env = simpy.Environment()
    fleet = LLMFleet(
        env, arrival, prompt, output, timer, limits, replicas, router, max_wait_s,
        max_queue_length, fuse, static_routing,
    )  # fmt: skip
    fleet.start()
    env.run()
    h = float(horizon) if horizon is not None else (float(arrival[-1]) if len(arrival) else 0.0)
    return run_result(fleet, arrival, prompt, output, h)


def run_result(
    fleet: LLMFleet, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, horizon: float
) -> LLMRunResult:
    """The per-request arrays and per-replica totals of a finished run of ``fleet``.

    A run that ended with requests neither served nor rejected is unstable: the engine could
    not schedule them (a safety net; the settings checks should make it impossible).
    """
    limits, env, h = fleet.limits, fleet.env, horizon
    finish, rejected = np.asarray(fleet.fin), np.asarray(fleet.rejected, dtype=bool)
    stuck = int(np.count_nonzero(np.isnan(finish) & ~rejected))
    if stuck and not fleet.unstable_reason:
        fleet.unstable_reason = (
            f"{stuck} requests were never served: the engine could not schedule them"
        )
    return LLMRunResult(
        arrival=np.asarray(arrival, dtype=float),
        prompt=np.asarray(prompt),
        output=np.asarray(output),
        admitted=np.asarray(fleet.adm),
        first_token=np.asarray(fleet.first),
        finish=finish,
        replica=np.asarray(fleet.rep, dtype=np.int32),
        rejected=rejected,
        preemptions=np.asarray(fleet.npre, dtype=np.int32),
        horizon=h,
        end_time=float(env.now),
        replicas=len(fleet.reps),
        busy_prefill_s=np.array([r.busy_pre for r in fleet.reps]),
        busy_decode_s=np.array([r.busy_dec for r in fleet.reps]),
        iterations=fleet.iterations,
        seq_iterations=fleet.seq_iterations,
        events=fleet.events,
        tokens_generated=fleet.tokens_generated,
        prefill_tokens=fleet.prefill_tokens,
        kv_blocks=limits.kv_blocks,
        kv_series={r.idx: (r.kv_t, r.kv_u) for r in fleet.reps},
        unstable=bool(fleet.unstable_reason),
        unstable_reason=fleet.unstable_reason,
    )


# --------------------------------------------------------------------------------------------
# The service a scenario uses: settings, memory, bounds, trace lines
# --------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=16)
def _token_sample(key: str) -> tuple[np.ndarray, np.ndarray]:
    from capsim.scenario import Scenario
    from capsim.workload import make_stream

    s = Scenario.model_validate_json(key)
    st = make_stream(s, 0)
    if st.prompt_tokens is None or st.output_tokens is None or not len(st):
        return np.array([1024]), np.array([256])
    return np.asarray(st.prompt_tokens), np.asarray(st.output_tokens)


def token_sample(s) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths of replication 0's stream (for bounds and idle checks)."""
    return _token_sample(s.model_dump_json())


class LLMService:
    """One replica's service model for the planner and the engine (see :func:`make_llm_service`)."""

    def __init__(
        self, gpu: GPU, model: TransformerModel, precision: str, tp: int, st: LLMEngineSettings
    ):
        problem = precision_problem(gpu, precision)
        if problem:
            raise Unsupported(problem)
        problem = parallelism_problem(gpu, model, tp)
        if problem:
            raise Unsupported(problem)
        self.gpu, self.model, self.tp, self.settings = gpu, model, tp, st
        self.svc = LLMServiceModel(gpu, model, precision, tp, st)
        self.iteration_time = self.svc.iteration_time  # the engine's timer (bound: no wrapper)
        self.precision = self.svc.precision
        self.math_format = self.svc.formats.gemm
        self.max_model_len = int(st.max_model_len or model.max_context)
        self._fit = self.svc.memory_fit(self.max_model_len)
        self._lines: dict[int, tuple[float, float, float, float] | None] = {}
        self._notes: dict[str, Any] = {}
        self.scenario = None  # set by make_llm_service (trace lines use its token lengths)

    # -- engine interface (iteration_time is the service model's, bound in __init__) ---------
    def decode_lines(self, d: int) -> tuple[float, float, float, float] | None:
        """A decode-only iteration of ``d`` sequences at total context C takes
        max(a1 + b1 C, a2 + b2 C) with the roofline timer (None for custom timers)."""
        attn = self.svc._attn
        if attn is None:
            return None
        per_flop, per_q, per_kv, _ko, layers = attn
        a2 = self.svc.iteration_time(d, d, 0.0, 0.0, d)
        return (a2 - layers * d * per_q, layers * per_flop, a2, layers * per_kv)

    @property
    def limits(self) -> EngineLimits:
        return EngineLimits.of(self._fit, self.settings, self.max_model_len)

    # -- planner hooks -----------------------------------------------------------------------
    def memory_fit(self, context: int | None = None) -> MemoryFit:
        return self._fit if context is None else self.svc.memory_fit(context)

    def _decode_step(self, batch: int, context: float) -> float:
        return self.svc.iteration_time(batch, batch, batch * context, 0.0, batch)

    def _prefill_time(self, prompt: int) -> float:
        """Idle replica: the iterations that prefill one prompt (chunks of the budget)."""
        budget = self.settings.max_num_batched_tokens
        t, done = 0.0, 0
        while done < prompt:
            c = min(prompt - done, budget) if self.settings.chunked_prefill else prompt
            last = done + c == prompt
            t += self.svc.iteration_time(c, 0, 0, prefill_work(c, done), int(last), done + c)
            done += c
        return t

    def max_throughput_rps(self, s) -> float:
        """An optimistic capacity of one replica (requests/s), for the planner's lower bound.

        A request costs at least the larger of (a) its prompt + output tokens through the
        linear layers at the cheapest per-token cost of any iteration size the budget allows
        (compute), and (b) its output tokens at the decode step of the largest batch whose KV
        fits at the mean context (capped by max_num_seqs), per sequence (weights and KV reads).
        Mixed iterations overlap the two, so the sum would over-state the time.
        """
        p, o = token_sample(s)
        mp, mo = float(np.mean(p)), float(np.mean(o))
        st = self.settings
        ctx = mp + mo / 2
        batch = max(1, min(st.max_num_seqs, self._fit.max_batch_memory_for(int(ctx))))
        step = self._decode_step(batch, ctx)
        table = self.svc.token_table[1:]
        per_token = float(np.min(table / np.arange(1, len(table) + 1)))
        per_req = max((mp + mo) * per_token, mo * step / batch)
        return 1.0 / per_req if per_req > 0 else math.inf

    def idle_latency_violation(self, s) -> str | None:
        """Why even an idle replica misses the TTFT or TPOT target (None if it does not)."""
        p, o = token_sample(s)
        q = s.slo.percentile
        pq = int(np.percentile(p, q))
        ms = 1e3
        if s.slo.ttft_ms is not None:
            t = self._prefill_time(pq)
            self._notes["idle_ttft"] = (pq, t)
            if t * ms > s.slo.ttft_ms:
                return (
                    f"an idle replica takes {t * ms:.0f} ms to prefill the p{q:g} prompt "
                    f"({pq:,} tokens) > TTFT target {s.slo.ttft_ms:g} ms; more replicas cannot help"
                )
        if s.slo.tpot_ms is not None:
            ctx = pq + float(np.percentile(o, q))
            t = self._decode_step(1, ctx)
            if t * ms > s.slo.tpot_ms:
                return (
                    f"an idle replica takes {t * ms:.1f} ms per output token (batch 1, context "
                    f"{ctx:,.0f}) > TPOT target {s.slo.tpot_ms:g} ms; more replicas cannot help"
                )
        return None

    def trace_lines(self, s=None, mean_batch: float | None = None) -> list[str]:
        """Where the numbers come from: memory, formats, efficiencies, prefill and decode times
        (the latter from scenario ``s``'s mean prompt and output, at ``mean_batch``)."""
        gpu, f, st = self.gpu, self._fit, self.settings
        s = s if s is not None else self.scenario
        fmt = self.math_format
        eff = gpu.efficiency.compute_for(fmt)
        out = [
            f"memory per GPU: weights {f.weight_bytes / GIB:.2f} GiB, KV cache "
            f"{f.kv_cache_bytes / GIB:.2f} GiB = {f.kv_tokens:,} tokens "
            f"({f.kv_bytes_per_token / 1024:g} KiB/token, blocks of {st.block_size}); "
            f"usable {f.usable_bytes / GIB:.2f} GiB = {gpu.usable_memory_gib:g} GiB x "
            f"{st.gpu_memory_utilization:g} - {st.reserved_gib:g} GiB reserved",
            f"math: {self.precision.name} GEMMs on {math_units(fmt, gpu.vendor)} at "
            f"{gpu.peak_tflops.get(fmt)} TFLOP/s x efficiency {eff:g}; attention on "
            f"{self.svc.formats.attn}; memory {gpu.bandwidth_gb_s:g} GB/s x "
            f"{gpu.efficiency.memory:g}"
            + (
                f"; tp={self.tp} all-reduce over {gpu.interconnect.kind} "
                f"{gpu.interconnect.bandwidth_gb_s:g} GB/s x {gpu.interconnect.efficiency:g}"
                if self.tp > 1
                else ""
            ),
            f"engine: max_num_batched_tokens {st.max_num_batched_tokens}, max_num_seqs "
            f"{st.max_num_seqs}, chunked prefill {'on' if st.chunked_prefill else 'off'}, "
            f"scheduler overhead {st.scheduler_overhead_ms:g} ms/iteration, max_model_len "
            f"{self.max_model_len:,}",
        ]
        if s is not None:
            p, o = token_sample(s)
            mp, mo = int(np.mean(p)), int(np.mean(o))
            pre = self._prefill_time(mp)
            b = max(1, round(mean_batch)) if mean_batch else 1
            ctx = mp + mo / 2
            step = self._decode_step(b, ctx)
            out.append(
                f"service times: prefill of the mean prompt ({mp:,} tokens) {pre * 1e3:.1f} ms "
                f"on an idle replica; decode step at batch {b} (mean batch), context "
                f"{ctx:,.0f}: {step * 1e3:.2f} ms = {b / step:,.0f} tokens/s"
            )
        return out


def make_llm_service(s, gpu: GPU, precision: str, tp: int) -> LLMService:
    """The LLM service of scenario ``s`` on ``tp`` x ``gpu`` at ``precision``.

    Raises :class:`InputError` for bad ``fleet.batching.engine`` keys and
    :class:`~capsim.service.fixed.Unsupported` when the card lacks the precision or ``tp``
    does not split the model.
    """
    st = engine_settings(getattr(s.fleet.batching, "engine", {}) or {}, s.model, gpu)
    svc = LLMService(gpu, s.model, precision, tp, st)
    svc.scenario = s
    return svc


# --------------------------------------------------------------------------------------------
# One replication, measured
# --------------------------------------------------------------------------------------------


def _power_energy(gpu: GPU, res: LLMRunResult, tp: int, span: float) -> float:
    """Energy (J): prefill iterations at max power, decode at the memory-bound level, the rest
    of each replica's span at warm idle; times ``tp`` GPUs."""
    pre = float(res.busy_prefill_s.sum())
    dec = float(res.busy_decode_s.sum())
    idle = max(res.replicas * span - pre - dec, 0.0)
    return llm_busy_energy_j(gpu, pre, dec, tp) + idle_energy_j(gpu, idle, tp)


def llm_tokens(stream) -> tuple[np.ndarray, np.ndarray]:
    """Prompt and output lengths of a request stream (at least one token each)."""
    if stream.prompt_tokens is None or stream.output_tokens is None:
        raise InputError(
            "LLM traffic needs token lengths: give traffic.tokens, or prompt_tokens_column and "
            "output_tokens_column for a trace",
            where="traffic.tokens",
        )
    return (
        np.maximum(np.asarray(stream.prompt_tokens), 1),
        np.maximum(np.asarray(stream.output_tokens), 1),
    )


def run_llm_replication(
    s, gpu: GPU, svc: LLMService, replicas: int, replication: int, stream
) -> RunMetrics:
    """Simulate one replication of an LLM configuration and measure TTFT, TPOT, e2e, cost."""
    prompt, output = llm_tokens(stream)
    res = run_llm(
        stream.arrival,
        prompt,
        output,
        svc,
        svc.limits,
        replicas,
        router=s.fleet.router,
        max_wait_s=s.simulation.max_wait_s,
        max_queue_length=s.fleet.max_queue_length,
        horizon=stream.horizon,
    )
    return measure(s, gpu, svc.tp, res, stream.horizon)


def measure(s, gpu: GPU, tp: int, res: LLMRunResult, horizon: float) -> RunMetrics:
    """RunMetrics of an LLM run: ``ttft``, ``tpot``, ``e2e`` series and the scalars."""
    served = res.served
    e2e_all = res.e2e
    cut = 0
    if s.stationary and not res.unstable and served.any():
        cut = warmup_cut(e2e_all[served], s.simulation.warmup, res.arrival[served])
    keep = np.flatnonzero(served)[cut:]
    t_first = float(res.arrival[keep[0]]) if len(keep) else 0.0
    # an overloaded run stops early: its rates are over the time it ran
    span = (res.end_time if res.unstable else max(res.end_time, horizon)) - t_first
    ttft = res.ttft[keep]
    e2e = e2e_all[keep]
    tpot = res.tpot[keep]
    tpot = tpot[~np.isnan(tpot)]
    if not len(tpot):
        tpot = np.zeros(1)
    arrived = len(res.arrival) - int(np.searchsorted(res.arrival, t_first))
    late = res.arrival >= t_first
    rejected = int(res.rejected[late].sum())
    out_tok = float(res.output[keep].sum())
    tot_tok = out_tok + float(res.prompt[keep].sum())
    energy = _power_energy(gpu, res, tp, span)
    busy = float(res.busy_prefill_s.sum() + res.busy_decode_s.sum())
    q, samples, bq = series_metrics(
        {"ttft": ttft, "tpot": tpot, "e2e": e2e},
        [s.slo.percentile],
        batch_ci_confidence=s.simulation.confidence if _replayed_as_is(s) else None,
    )
    t_bins, util, kv_mean, kv_peak = res.kv_utilisation(0.0, max(res.end_time, horizon))
    scalars = {
        "arrived": float(arrived),
        "served": float(len(keep)),
        "rejected": float(rejected),
        "rejection_rate": rejected / arrived if arrived else 0.0,
        "throughput_rps": len(keep) / span if span > 0 else 0.0,
        "utilisation": busy / (res.replicas * span) if span > 0 else 0.0,
        "mean_batch": res.seq_iterations / res.iterations if res.iterations else 0.0,
        "mean_ttft_s": float(ttft.mean()) if len(ttft) else math.nan,
        "mean_queue_s": float(np.nanmean(res.admitted[keep] - res.arrival[keep]))
        if len(keep)
        else math.nan,
        "output_tokens": out_tok,
        "total_tokens": tot_tok,
        "output_tokens_per_s": out_tok / span if span > 0 else 0.0,
        "preemptions": float(res.preemptions[keep].sum()),
        "kv_utilisation_mean": kv_mean,
        "kv_utilisation_peak": kv_peak,
        "energy_j": energy,
        "span_s": span,
        "warmup_deleted": float(cut),
    }
    series = {"time_s": t_bins, "kv_utilisation": util}
    return RunMetrics(q, scalars, res.unstable, res.unstable_reason, samples, bq, series)


def _replayed_as_is(s) -> bool:
    """A trace replayed unchanged: one run, batch-quantile intervals (as simulate decides)."""
    from capsim.scenario import Trace

    a = s.traffic.arrivals
    return isinstance(a, Trace) and a.rate_scale == 1.0 and s.fleet.service_time_cv == 0
