"""KV-cache bookkeeping, preemption and request routing of the LLM fleet's replicas."""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left
from typing import Any, Literal

import numpy as np
import simpy

from capsim.sim.llm_types import (
    INF,
    MASK,
    UNLIMITED,
    URGENT,
    _Ev,
    _Lines,
    _Replica,
    _sum_max_lines,
)
from capsim.sim.overload import WaitGrowth


class ReplicaOps:
    """Methods of :class:`LLMFleet` (mixed in); they use its attributes, declared here for
    the type checker (set by ``LLMFleet.__init__``)."""

    O: Any  # noqa: E741 (the host's name for the output-length array)
    P: Any
    V: Any
    _lines: Any
    lines_of: Any
    growth: Any
    max_wait: Any
    unstable_reason: Any
    _any_retired: Any
    _live: Any
    refuse: list[bool]
    adm: Any
    first: Any
    n_adm: Any
    sum_adm: Any
    _on_step: Any
    arr: Any
    bs: Any
    budget: Any
    chunked: Any
    ch: Any
    computed: Any
    done: Any
    endit: Any
    env: Any
    fin: Any
    g: Any
    max_len: Any
    max_queue: Any
    n: Any
    next_arrival: Any
    pc: Any
    pooled: Any
    npre: Any
    plan: Any
    rejected: Any
    rep: Any
    reps: list[_Replica]
    router: Any
    rr: Any
    seq_iterations: Any
    target: Any
    total: Any
    u: Any
    static: Any
    fuse: Any
    itime: Any
    _plan_batch: Any
    track_kv: Any

    # -- scheduling helpers -------------------------------------------------------------------
    def _schedule(self, delay: float, cb, value: Any = None, priority: int = 1) -> None:
        """A bare event ``delay`` from now with callback ``cb`` (cheaper than a Timeout).

        Arrivals use priority 0 (SimPy's URGENT): an arrival at the instant an iteration ends
        is routed before the replica schedules its next iteration, so it can join it.
        """
        env = self.env
        heapq.heappush(env._queue, (env._now + delay, priority, next(env._eid), _Ev(cb, value)))

    def _decode_lines(self, d: int) -> _Lines | None:
        lines: _Lines | None | Literal[False] = self._lines.get(d, False)  # False: not yet asked
        if lines is False:
            lines = self.lines_of(d) if self.lines_of is not None else None
            self._lines[d] = lines
        return lines

    def _unstable(self, rp: _Replica, now: float, waited: float) -> bool:
        """The wait-growth check of replica ``rp``'s queue (True: the run is overloaded)."""
        g = self.growth.get(rp.idx)
        if g is None:
            g = self.growth[rp.idx] = WaitGrowth(self.max_wait)
        reason = g.check(now, waited)
        if reason:
            self.unstable_reason = reason
            self.done = True
        return bool(reason)

    _any_retired = False

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

    def _plan_decode(self, rp: _Replica, now: float) -> float | None:
        """:meth:`_plan` with nothing waiting and nothing to prefill: a run of decodes."""
        bs, it, D = self.bs, rp.it, rp.D
        need = (rp.sum_u + D * it + ((rp.corr >> ((it % bs) << 6)) & MASK)) // bs
        total = self.total + rp.share
        if need > total:  # preemption
            return self._plan_batch(rp, now)
        k, dt = self._decode_run(rp, now, D, rp.sum_u + D * it, total, False)
        self.seq_iterations += D * k
        end = used = need  # the blocks in use at the end of the run, and on average
        if k > 1:
            x = it + k - 1
            end = (rp.sum_u + D * x + ((rp.corr >> ((x % bs) << 6)) & MASK)) // bs
            used = (need + end) / 2.0
        if self.pc:  # evict cached free blocks (LRU first) to make room for the run
            room = self.total - end + rp.share
            if rp.cache.free > room:
                rp.cache.trim(room)
            used -= rp.share
        rp.chunks = []
        rp.seg_t0 = now
        rp.seg_k = k
        rp.busy = True
        rp.gen += 1
        if self.track_kv:
            rp.kv_t.append(now)
            rp.kv_u.append(used)
        return now + dt

    def _decode_run(
        self, rp: _Replica, now: float, D: int, ctx: int, total: int, preempted: bool
    ) -> tuple[int, float]:
        """A run of k pure-decode iterations until a completion, KV exhaustion or the next
        arrival (k = 1 after a preemption or unfused): (k, its time)."""
        heap, endit, it = rp.heap, self.endit, rp.it
        while heap and endit[heap[0][1]] != heap[0][0]:
            heapq.heappop(heap)
        k = heap[0][0] - it
        if preempted or not self.fuse:
            k = 1
        if k > 1 and total < UNLIMITED:
            x = it + k - 1
            if (rp.sum_u + D * x + ((rp.corr >> ((x % self.bs) << 6)) & MASK)) // self.bs > total:
                lo, hi = 1, k - 1  # largest k' with blocks(it + k' - 1) <= total
                while lo < hi:
                    mid = (lo + hi + 1) // 2
                    if self._blocks(rp, it + mid - 1) <= total:
                        lo = mid
                    else:
                        hi = mid - 1
                k = lo
        lines: _Lines | None | Literal[False] = self._lines.get(D, False)
        if lines is False:
            lines = self._decode_lines(D)
        rp.seg_lines = rp.seg_cum = None
        if lines is not None:
            a1, b1, a2, b2 = lines
            s1, s3 = a1 + b1 * ctx, a2 + b2 * ctx
            if k == 1:  # _sum_max_lines(..., 1), exactly
                dt = s1 if s1 > s3 else s3
            else:
                s2, s4 = b1 * D, b2 * D
                rp.seg_lines = (s1, s2, s3, s4)
                wait = rp.nxt - now  # static routing: the replica's next arrival (or INF)
                if wait < 0.999999 * k * (s1 if s1 > s3 else s3) and s2 >= 0.0 and s4 >= 0.0:
                    # it comes before the run's end (its iterations take at least the first
                    # one's time), so the run is cut there: no need to sum the whole run
                    rp.seg_k = k
                    k, dt = self._boundary_after(rp, wait)
                    if k == 1:
                        rp.seg_lines = None
                    rp.seg_decode = True
                    return k, dt
                dt = _sum_max_lines(s1, s2, s3, s4, k)
        else:
            cum, tsum, tm = [], 0.0, self.itime
            for x in range(k):
                tsum += tm(D, D, ctx + D * x, 0.0, D)
                cum.append(tsum)
            dt = tsum
            if k > 1:
                rp.seg_cum = cum
        if k > 1 and rp.nxt < INF:  # static routing: the replica's next arrival
            wait = rp.nxt - now
            if wait < dt:  # end the run at the first boundary at or after that arrival
                rp.seg_k = k
                k, dt = self._boundary_after(rp, wait)
                if k == 1:
                    rp.seg_lines = rp.seg_cum = None
        rp.seg_decode = True
        return k, dt

    def _blocks(self, rp: _Replica, x: int) -> int:
        """KV blocks the decoding sequences hold after iteration ``x`` (contexts u_i + x).

        Σ ceil((u_i + x) / bs) = (Σ u_i + D x + Σ_i ((-(u_i + x)) mod bs)) / bs, where the last
        sum depends only on x mod bs and the residues u_i mod bs (kept in ``corr``, packed: the
        sum for x mod bs = m is bits 64 m .. 64 m + 63 of one integer).
        """
        if rp.D == 0:
            return 0
        return (rp.sum_u + rp.D * x + ((rp.corr >> ((x % self.bs) << 6)) & MASK)) // self.bs

    def _add_decode(self, rp: _Replica, i: int, s: int) -> None:
        """Request i decodes from iteration ``s`` on, having generated g[i] tokens."""
        g = self.g[i]
        u = self.P[i] + g - s
        self.u[i] = u
        rp.D += 1
        rp.sum_u += u
        if self.bs > 1:
            rp.corr += self.V[u % self.bs]
        e = s + self.O[i] - g
        self.endit[i] = e
        heapq.heappush(rp.heap, (e, i))

    def _prefilled(self, prefilled: Any) -> list[bool] | None:
        """Disaggregated decode (:mod:`capsim.sim.llm_disagg`): a prefilled request arrives
        with its prompt's KV cache and its first output token, sampled by a prefill pool (its
        first token counts at arrival). It is admitted straight into the decodes (KV blocks for
        prompt + 1 tokens, one token of the iteration's budget); if preempted, it recomputes
        its prompt and tokens here, as vLLM does."""
        if prefilled is None:
            return None
        pre = [bool(x) for x in prefilled.tolist()]
        for i, p in enumerate(pre):
            if p:
                self.g[i] = 1
                self.first[i] = self.arr[i]
        return pre

    def _prefilled_blocks(self, i: int) -> int:
        """KV blocks a prefilled request holds once it decodes: prompt + its first token."""
        return -(-(self.P[i] + 1) // self.bs)

    def _admit_prefilled(self, rp: _Replica, i: int, now: float) -> None:
        """Admit prefilled request i (disaggregated decode): it decodes from this iteration."""
        rp.waiting.popleft()
        rp.running[i] = None
        self._add_decode(rp, i, rp.it)
        self.adm[i] = now
        self.n_adm += 1
        self.sum_adm += now

    def _remove_decode(self, rp: _Replica, i: int) -> None:
        u = self.u[i]
        rp.D -= 1
        rp.sum_u -= u
        if self.bs > 1:
            rp.corr -= self.V[u % self.bs]
        self.endit[i] = -1

    def _release(self, rp: _Replica, i: int, tokens: int) -> None:
        """Prefix caching: request i, holding ``tokens`` in its KV blocks, frees them into
        its replica's cache (full blocks stay cached until evicted)."""
        chain = self.ch[i]
        if chain is not None:
            full = min(tokens // self.bs, chain.n)
            rp.share += rp.cache.release(chain, self.pooled[i], full)
            self.pooled[i] = 0

    def _finish(self, rp: _Replica, i: int, now: float) -> None:
        if self.pc:
            self._release(rp, i, self.P[i] + self.O[i] - 1)
        self.fin[i] = now
        del rp.running[i]
        rp.n_out -= 1
        rp.tok_out -= self.P[i] + self.O[i]

    def _preempt_newest(self, rp: _Replica) -> None:
        i, _ = rp.running.popitem()
        if self.endit[i] >= 0:  # decoding: tokens generated so far from its context
            self.g[i] = self.u[i] + rp.it - self.P[i]
            self._remove_decode(rp, i)
            held = self.P[i] + self.g[i] - 1
        else:
            rp.prefilling.remove(i)
            held = self.computed[i]
        if self.pc:
            self._release(rp, i, held)
        self.target[i] = self.P[i] + self.g[i]
        self.computed[i] = 0
        self.npre[i] += 1
        rp.waiting.appendleft(i)

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
        assert cum is not None  # a run without lines has its cumulative times
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
        reps = self._live if self._any_retired else self.reps  # _live: the active ones
        if not reps:
            return None
        c = len(reps)
        if self.router == "round_robin":
            rp = reps[self.rr % c]
            self.rr += 1
            return rp
        start = self.rr % c
        self.rr += 1
        tokens = self.router == "least_outstanding_tokens"
        best = reps[start]
        key = best.tok_out if tokens else best.n_out
        for j in range(start + 1, start + c):  # the first least loaded from ``start`` on
            rp = reps[j % c]
            v = rp.tok_out if tokens else rp.n_out
            if v < key:
                best, key = rp, v
        return best

    def _refusals(self, prompt: np.ndarray, output: np.ndarray) -> list[bool]:
        """What every replica refuses at arrival (vLLM), per request: longer than
        ``max_model_len`` or than the whole KV cache, or (without chunked prefill) a prompt
        over the token budget. Fixed for the run: computed once (``self.refuse``)."""
        p = np.asarray(prompt).astype(np.int64)
        po = p + np.asarray(output).astype(np.int64)
        out = (po > self.max_len) | (-(-po // self.bs) > self.total)
        if not self.chunked:
            out |= p > self.budget
        return out.tolist()

    def _refused(self, i: int) -> bool:
        """Request ``i`` is refused by every replica (see :meth:`_refusals`)."""
        return self.refuse[i]

    def _refuses(self, p: int, o: int) -> bool:
        """:meth:`_refusals` of one request of ``p`` prompt and ``o`` output tokens."""
        return (
            p + o > self.max_len
            or -(-(p + o) // self.bs) > self.total
            or (not self.chunked and p > self.budget)
        )

    def _accept(self, rp: _Replica, i: int) -> bool:
        """Request i reaches replica rp: queue it, or reject it (too long, queue full)."""
        if self.refuse[i] or (self.max_queue is not None and len(rp.waiting) >= self.max_queue):
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

    def _arrive(self, now: float) -> float:
        """run_llm's loop: route the arrivals at ``now``; the time of the next (INF: none),
        as :meth:`_on_arrival` would schedule it."""
        arr, n, j = self.arr, self.n, self.next_arrival
        while j < n and arr[j] <= now:
            self.route(j, now)
            j += 1
            if self.done:
                return INF
        self.next_arrival = j
        return now + (arr[j] - now) if j < n else INF

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
