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
request is the same as iterating one by one (tests check it). ``run_llm`` pops the event heap
itself, takes arrivals in its loop, and runs a replica's next step at once when it ends before
any other event (with one replica the heap stays empty); the order of events is SimPy's.

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

import gc
import heapq
import math
from collections.abc import Sequence

import numpy as np
import simpy

from capsim.sim.llm_replica import ReplicaOps
from capsim.sim.llm_result import as_chains, check_chains, run_result
from capsim.sim.llm_types import (
    INF,
    MASK,
    ROUTER_ALIASES,
    ROUTERS,
    UNLIMITED,
    URGENT,
    EngineLimits,
    IterationTimer,
    LLMRunResult,
    _Ev,
    _Lines,
    _Replica,
    packed_residues,
)
from capsim.sim.overload import WaitGrowth
from capsim.workload.prefixes import Chain

_heappush, _heappop = heapq.heappush, heapq.heappop


class LLMFleet(ReplicaOps):
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
        chains: Sequence[Chain | list[int] | None] | None = None,
        prefilled: np.ndarray | None = None,
    ):
        self.env = env
        self.timer = timer
        self.itime = timer.iteration_time
        self.lines_of = getattr(timer, "decode_lines", None)
        self._lines: dict[int, _Lines | None] = {}
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
        self.pre = self._prefilled(prefilled)  # disaggregated decode (see run_llm)
        # prefix caching: request i's full KV blocks along its sequence carry keys ch[i]
        self.pc = bool(limits.prefix_caching and chains is not None)
        self.ch: list[Chain | None] = as_chains(chains) if self.pc and chains else [None] * n
        self.pooled = [0] * n  # leading blocks of ch[i] that request i holds in the cache
        self.hit = [0] * n  # prompt tokens hit at the first admission
        self.saved = 0  # prompt tokens hit, all admissions
        bs = limits.block_size
        self.bs = bs
        self.V = packed_residues(bs)
        self.total = limits.kv_blocks if limits.kv_blocks is not None else UNLIMITED
        self.budget = limits.max_num_batched_tokens or UNLIMITED
        self.max_seqs = limits.max_num_seqs or UNLIMITED
        self.chunked = limits.chunked_prefill
        self.max_len = limits.max_model_len or UNLIMITED
        self.refuse = self._refusals(prompt, output)
        self.limits = limits
        if router in ROUTER_ALIASES:
            router = ROUTER_ALIASES[router]
        if router not in ROUTERS:
            raise ValueError(f"unknown router {router!r}; accepted: {', '.join(ROUTERS)}")
        self.router = router
        self.rr = 0
        self.max_wait = max_wait_s  # alarm level of the wait-growth overload check
        self.growth: dict[int, WaitGrowth] = {}
        self.max_queue = max_queue_length
        self.fuse = fuse
        self.inline = False  # run_llm: a step that ends before any other event runs at once
        self.ta = INF  # run_llm, routing at arrival: the next arrival's time
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
                rp.nxt = self.arr[rp.own[0]] if rp.own else INF

    # -- one step of one replica --------------------------------------------------------------
    def plan(self, rp: _Replica, now: float) -> None:
        """Schedule the next iteration (or run of decode iterations) of replica ``rp``."""
        t = self._plan(rp, now)
        if t is not None:
            env = self.env
            _heappush(env._queue, (t, 1, next(env._eid), _Ev(self._on_step, (rp, rp.gen))))

    def _plan(self, rp: _Replica, now: float) -> float | None:
        """Decide replica ``rp``'s next step from ``now``: the time it ends (None: idle)."""
        if self.done:
            rp.busy = False
            return None
        if rp.nxt <= now:  # static routing: take this replica's arrivals up to now
            own, pos, arr = rp.own, rp.pos, self.arr
            n_own = len(own)
            while pos < n_own and arr[own[pos]] <= now:
                self._accept(rp, own[pos])
                pos += 1
            rp.pos = pos
            rp.nxt = arr[own[pos]] if pos < n_own else INF
        waiting = rp.waiting
        if waiting:
            waited = now - self.arr[waiting[0]]
            if waited > self.max_wait:
                if self._unstable(rp, now, waited):
                    rp.busy = False
                    return None
            elif rp.idx in self.growth:
                self.growth[rp.idx].calm()
        elif not rp.prefilling and rp.running:
            return self._plan_decode(rp, now)
        return self._plan_batch(rp, now)

    def _plan_batch(self, rp: _Replica, now: float) -> float | None:
        """:meth:`_plan` in general: prefill chunks, admission, preemption, or idle."""
        waiting = rp.waiting
        bs, it, total0 = self.bs, rp.it, self.total
        computed, target = self.computed, self.target
        prefilling, running = rp.prefilling, rp.running
        sh = (it % bs) << 6
        preempted = False
        while True:
            total = total0 + rp.share  # need counts shared cached blocks once per holder
            D = rp.D
            need = (rp.sum_u + D * it + ((rp.corr >> sh) & MASK)) // bs if D else 0
            left = self.budget - D
            chunks = []
            for i in prefilling:
                if left <= 0:
                    need += -(-computed[i] // bs)
                    continue
                c = target[i] - computed[i]
                if c > left:
                    c = left
                left -= c
                chunks.append((i, c))
                need += -(-(computed[i] + c) // bs)
            if need <= total or not running:
                break
            self._preempt_newest(rp)
            preempted = True
        # admission, FCFS, while budget, sequences and KV blocks allow
        if not preempted and waiting:
            pc, ch, adm, max_seqs, pre = self.pc, self.ch, self.adm, self.max_seqs, self.pre
            while waiting and left > 0 and len(running) < max_seqs:
                i = waiting[0]
                if pre is not None and pre[i] and not self.npre[i]:
                    nb = self._prefilled_blocks(i)
                    if need + nb > total:
                        break
                    self._admit_prefilled(rp, i, now)
                    need += nb
                    left -= 1
                    continue
                h = a = 0
                chain = ch[i] if pc else None
                if chain is not None:  # the longest cached prefix (one token computed)
                    h, a = rp.cache.lookup(chain, min((target[i] - 1) // bs, chain.n))
                base = h * bs
                c = target[i] - base
                if c > left:
                    if not self.chunked:
                        break
                    c = left
                nb = -(-(base + c) // bs)
                if need + nb > total + a:
                    break
                first_adm = adm[i] != adm[i]  # NaN: first admission
                if chain is not None and h:
                    rp.cache.pin(chain, h)
                    self.pooled[i] = h
                    rp.share += a
                    total += a
                    computed[i] = base
                    self.saved += base
                    if first_adm:
                        self.hit[i] = base
                waiting.popleft()
                running[i] = None
                prefilling.append(i)
                chunks.append((i, c))
                need += nb
                left -= c
                if first_adm:
                    adm[i] = now
                    self.n_adm += 1
                    self.sum_adm += now
        if not running:
            rp.busy = False
            if self.track_kv:
                rp.kv_t.append(now)
                rp.kv_u.append(0.0)
            if rp.nxt < INF:  # static routing: wake up at the next arrival
                self._schedule(rp.nxt - now, self._on_wake, rp, URGENT)
            return None
        D = rp.D
        ctx = rp.sum_u + D * it
        if chunks:
            n_tok = logits = D
            work = 0.0
            kv = 0
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
            rp.seg_lines = rp.seg_cum = None
            self.seq_iterations += D + len(chunks)
            used = need
        else:
            k, dt = self._decode_run(rp, now, D, ctx, total, preempted)
            self.seq_iterations += D * k
            if k > 1 and self.track_kv:
                x = it + k - 1
                used = (
                    need + (rp.sum_u + D * x + ((rp.corr >> ((x % bs) << 6)) & MASK)) // bs
                ) / 2.0
            else:
                used = need
        if self.pc:  # evict cached free blocks (LRU first) to make room for what runs now
            end = need  # the blocks in use at the end of the step
            if k > 1:  # a decode run: its sequences grow by k - 1 tokens
                x, su, corr = it + k - 1, rp.sum_u, rp.corr
                end += (su + D * x + ((corr >> ((x % bs) << 6)) & MASK)) // bs - (
                    su + D * it + ((corr >> sh) & MASK)
                ) // bs
            room = total0 - end + rp.share
            if rp.cache.free > room:
                rp.cache.trim(room)
            used -= rp.share
        rp.chunks = chunks
        rp.seg_t0 = now
        rp.seg_k = k
        rp.busy = True
        rp.gen += 1
        if self.track_kv:
            rp.kv_t.append(now)
            rp.kv_u.append(used)
        return now + dt

    def _on_step(self, ev: simpy.Event) -> None:
        rp, gen = ev._value
        if gen != rp.gen or self.done:
            if self.done:
                rp.busy = False
            return
        env = self.env
        now, q, inline = env._now, env._queue, self.inline
        bs, endit = self.bs, self.endit
        computed, target, g, first = self.computed, self.target, self.g, self.first
        pc, ch, pooled = self.pc, self.ch, self.pooled
        heap = rp.heap
        events = iterations = tokens = prefill = 0  # added to the fleet's counters on leaving
        while True:
            events += 1
            k = rp.seg_k
            if rp.seg_decode:
                rp.busy_dec += now - rp.seg_t0
            else:
                rp.busy_pre += now - rp.seg_t0
            iterations += k
            tokens += rp.D * k  # one token per decoding sequence per iteration
            it = rp.it + k
            rp.it = it
            if rp.chunks:
                for i, c in rp.chunks:
                    computed[i] += c
                    prefill += c
                    if pc and ch[i] is not None:  # its new full blocks join the cache
                        chain = ch[i]
                        hi = computed[i] // bs
                        if hi > chain.n:
                            hi = chain.n
                        if hi > pooled[i]:
                            rp.share += rp.cache.pool(chain, pooled[i], hi)
                            pooled[i] = hi
                    if computed[i] == target[i]:
                        tokens += 1  # the prefill's last token samples one
                        rp.prefilling.remove(i)
                        g[i] += 1
                        if first[i] != first[i]:
                            first[i] = now
                        if g[i] >= self.O[i]:
                            endit[i] = -1
                            self._finish(rp, i, now)
                        else:
                            self._add_decode(rp, i, it)
                rp.chunks = []
            while heap and heap[0][0] <= it:
                e, i = _heappop(heap)
                if endit[i] == e:
                    self._remove_decode(rp, i)
                    self._finish(rp, i, now)
            if rp.waiting or rp.prefilling or not rp.running or rp.nxt <= now:
                t = self._plan(rp, now)
            else:  # what _plan would do (the run is not done: a step of it just ended)
                t = self._plan_decode(rp, now)
            if t is not None and inline and t < self.ta and (not q or t < q[0][0]):
                env._now = now = t  # nothing else happens first: go on here
                continue
            self.events += events
            self.iterations += iterations
            self.tokens_generated += tokens
            self.prefill_tokens += prefill
            if t is not None:
                _heappush(q, (t, 1, next(env._eid), _Ev(self._on_step, (rp, rp.gen))))
            return


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
    chains: Sequence[Chain | list[int] | None] | None = None,
    prefilled: np.ndarray | None = None,
    cached: Sequence[tuple[Chain, int]] | None = None,
) -> LLMRunResult:
    """Simulate ``replicas`` continuous-batching replicas on one request stream.

    ``fuse=False`` schedules every iteration as its own event (slow; for tests that check the
    fused runs give the same times). With round robin or one replica the routing is known in
    advance and each replica takes its arrivals itself (``static_routing``, faster; the same
    results as routing at each arrival, which ``static_routing=False`` forces).

    ``chains`` (prefix caching, with ``limits.prefix_caching``): per request, the chain of
    the full KV blocks along its prompt + output (at least ``(prompt + output) // block_size``
    blocks; a :class:`~capsim.workload.prefixes.Chain`, or a list of block keys), or None for
    a request that shares nothing.

    ``prefilled`` (disaggregated decode): per request, True when it arrives with its prompt's
    KV cache and first token; see :meth:`ReplicaOps._prefilled`.

    ``cached`` (with ``chains``): (chain, blocks) whose first blocks every replica's prefix
    cache holds, free, at the start (in this order, the last the most recent): a server that
    had already served these prompts (:meth:`~capsim.sim.prefix_cache.PrefixCache.warm`).
    """
    if replicas < 1:
        raise ValueError("replicas must be >= 1")
    if not (len(arrival) == len(prompt) == len(output)):
        raise ValueError("arrival, prompt and output need the same length")
    if len(prompt) and (np.min(prompt) < 1 or np.min(output) < 1):
        raise ValueError("prompt and output lengths must be >= 1 token")
    if chains is not None:
        check_chains(chains, prompt, output, limits.block_size)
    if prefilled is not None and (len(prefilled) != len(arrival) or chains is not None):
        raise ValueError("prefilled needs one entry per request, and no chains")
    env = simpy.Environment()
    fleet = LLMFleet(
        env, arrival, prompt, output, timer, limits, replicas, router, max_wait_s,
        max_queue_length, fuse, static_routing, chains, prefilled,
    )  # fmt: skip
    fleet.inline = True
    if cached is not None and fleet.pc:
        for rp in fleet.reps:
            for chain, blocks in cached:
                rp.cache.warm(chain, blocks)
    if fleet.static:
        fleet.start()
    elif len(arrival):  # arrivals are taken by the loop below, not as events
        fleet.ta = fleet.arr[0]
    q, pop = env._queue, heapq.heappop
    gc_was = gc.isenabled()
    gc.disable()  # the run allocates many small objects and frees none in cycles
    try:
        while True:  # SimPy's loop, less its checks (every event is an _Ev with one callback)
            ta = fleet.ta
            if q and q[0][0] < ta:  # (an arrival at the same time goes first, as URGENT)
                env._now, _, _, ev = pop(q)
                ev.callbacks[0](ev)
            elif ta < INF:
                env._now = ta
                fleet.ta = INF if fleet.done else fleet._arrive(ta)
            else:
                break
    finally:
        if gc_was:
            gc.enable()
    h = float(horizon) if horizon is not None else (float(arrival[-1]) if len(arrival) else 0.0)
    return run_result(fleet, arrival, prompt, output, h)
