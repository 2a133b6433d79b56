"""A batched fleet whose replicas come and go: the engine side of autoscaling (fixed-shape models).

Same queueing as :mod:`capsim.sim.batched` (one shared FIFO queue over the arrival array,
Triton-style dynamic batching with ``max_batch`` and ``max_queue_delay``, optional queue limit
with rejections, per-batch service-time jitter indexed by batch number so that every policy sees
the same factors) but driven differently, for speed: the fleet has no SimPy events of its own.
Between two events of the autoscaler's SimPy environment (a tick, a replica becoming ready)
nothing outside the fleet changes, so :meth:`BatchedFleet.sync` runs every batch that starts
before the next event in a plain loop — the virtual-time lookahead of ``_SharedQueue.step``
extended from arrivals to batch completions. A replica added at time ``t`` takes work from ``t``.

Per batch the loop does a handful of list operations and no event: the replicas are a heap of
free-at times (a batch goes to the replica that frees first), the arrivals a window of Python
floats, the log three plain lists. With a fixed replica count the batches, their start times
and sizes are exactly those of ``run_batched(router="shared_queue")``.

>>> import numpy as np
>>> f = BatchedFleet(np.array([0.0, 0.1, 0.2]), np.array([0.0, 0.5, 0.6]))
>>> _ = f.add_replica(0.0); f.sync(float("inf"))
>>> [round(b[0] + b[1], 2) for b in f.log_rows]     # first alone, then the two that waited
[0.5, 1.1]
"""

from __future__ import annotations

import gc
import heapq
import math
from array import array
from bisect import bisect_right
from collections.abc import Callable
from operator import mul

import numpy as np

from capsim.sim.batched_readout import FleetReadout, Jitter

_SCHEDULES: dict[tuple[int, int, int, float], tuple[np.ndarray, tuple]] = {}


def greedy_schedule(arrival: np.ndarray, K: int, d: float) -> tuple:
    """The batches the queue forms when a replica is always free: (heads, ready times, sizes).

    A batch headed by request ``h`` starts when it is full or its oldest request has waited
    ``d``: ``ready = min(a[h] + d, a[h + K - 1])`` and takes the requests up to then (at most
    ``K``). After a gap longer than ``d`` between two arrivals a new batch must start, so the
    stream splits at those gaps into independent segments; each segment's chain of heads is
    followed for all segments at once (numpy). Depends only on the arrivals: computed once per
    stream and shared by every policy (cached).
    """
    key = (id(arrival), len(arrival), K, d)
    hit = _SCHEDULES.get(key)
    if hit is not None and hit[0] is arrival:
        return hit[1]
    a = arrival
    n = len(a)
    is_head = np.zeros(n, dtype=bool)
    if n:
        cur = np.concatenate([[0], np.flatnonzero(np.diff(a) > d) + 1])
        end = np.append(cur[1:], n)
        while len(cur):
            is_head[cur] = True
            cur = np.minimum(np.searchsorted(a, a[cur] + d, side="right"), cur + K)
            keep = cur < end
            cur, end = cur[keep], end[keep]
    heads = np.flatnonzero(is_head)
    hk = heads + K - 1
    full = hk < n
    ready = a[heads] + d
    ready[full] = np.minimum(ready[full], a[hk[full]])
    sizes = np.diff(np.append(heads, n))
    out = (heads, ready, sizes, is_head.view(np.uint8).tobytes())
    if len(_SCHEDULES) >= 4:
        _SCHEDULES.clear()
    _SCHEDULES[key] = (arrival, out)
    return out


class BatchedFleet(FleetReadout):
    """Replicas serving a shared queue with dynamic batching; implements ``ScalableFleet``.

    ``jitter`` is an array of per-batch factors (at least one per request) or a :class:`Jitter`.

    Two exact ways of advancing, chosen as it goes (without a queue limit):

    * *vector*: while every batch finds a free replica at its ready time, the batches are those
      of :func:`greedy_schedule`; a block of them is taken at once (numpy) up to the first batch
      that would find every replica busy;
    * *loop*: from there, batch by batch in plain Python, until a batch again starts at its own
      ready time on a head of the schedule — then back to vector.
    """

    BLOCK = 4096
    MIN_LOOP = 64
    WORTH = 512

    def __init__(
        self,
        arrival: np.ndarray,
        batch_times: np.ndarray,
        *,
        max_queue_delay_s: float = 0.0,
        max_queue_length: int | None = None,
        jitter: np.ndarray | Jitter | None = None,
        vectorise: bool = False,
    ):
        self.arr = np.ascontiguousarray(arrival, dtype=float)
        self.n = len(self.arr)
        self._mv = memoryview(self.arr)  # Python floats on indexing, no list of 10^7 objects
        self.bt = [float(x) for x in batch_times]
        self._bt = np.asarray(self.bt)
        self.K = len(self.bt) - 1
        self.d = float(max_queue_delay_s)
        self.limit = max_queue_length
        self._jsrc: Jitter | None = None
        self._jarr: np.ndarray | None = None
        if isinstance(jitter, Jitter):
            self._jsrc = jitter
        elif jitter is not None:
            if len(jitter) < self.n:
                raise ValueError("jitter needs one factor per possible batch (len >= requests)")
            self._jarr = np.ascontiguousarray(jitter, dtype=float)
        # replicas taking work: a heap of free-at times, and their ids (interchangeable)
        self.ends: list[float] = []
        self.ids: list[int] = []
        self.next_id = 0
        self.head = 0  # next request (service order) to start
        self.now = 0.0  # start time of the last batch (batches start in time order)
        self.nb = 0  # batches started
        self.blocks: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # start, dur, size
        # batches not yet in a block: start, duration, size (C arrays: no float objects kept)
        self._lt, self._ls, self._lb = array("d"), array("d"), array("q")
        self._win: list[float] = []  # arrivals [self._base, self._base + len) as Python floats
        self._base = 0
        self._jwin: list[float] = []  # jitter factors of batches [self._jbase, ...)
        self._jbase = 0
        self._sampled = 0  # pending log entries already seen by sample()
        self._carry: list[tuple[float, int]] = []  # (end, size): batches that may still run
        self.max_factor = (
            float(np.max(jitter, initial=1.0)) if isinstance(jitter, np.ndarray) else 1.0
        )
        self._logged = 0  # batches in self.blocks
        self.sum_s = 0.0  # durations (of the batches sample() has seen)
        self.sum_btg = 0.0  # size x start
        self.sum_bs = 0.0  # size x duration
        # arrival bookkeeping for samples
        self._seen = 0
        self._seen_sum = 0.0
        # queue limit: admitted positions in arrival order, rejections
        self.adm = array("q") if self.limit is not None else None
        self.scanned = 0
        self.rejected = 0
        self._adm_seen = 0
        self._adm_sum = 0.0
        self.stopped = False
        self.requeued = 0  # requests re-queued by spot interruptions (none here: see below)
        self.notice_overruns = 0  # batches still running when their replica was reclaimed
        # vector mode (no queue limit): position in the greedy schedule, or -1 in loop mode
        self._sched: tuple | None = None
        self._k = -1
        self._loop_min = self.MIN_LOOP
        if vectorise and self.limit is None and self.n:
            self._sched = greedy_schedule(self.arr, self.K, self.d)
            self._k = 0

    # ------------------------------------------------------------------ ScalableFleet
    @property
    def serving(self) -> int:
        return len(self.ends)

    def add_replica(self, now: float) -> int:
        """A ready replica joins; it takes work from ``now`` (call after ``sync(now)``)."""
        r = self.next_id
        self.next_id += 1
        heapq.heappush(self.ends, now)
        self.ids.append(r)
        if now > self.now:
            self.now = now
        return r

    def retire_replica(self, now: float, on_released: Callable[[int, float], None]) -> int | None:
        """Stop giving work to one replica: an idle one (released now), else the one whose
        batch ends first (draining until then). Calls ``on_released(id, time)``.

        Replicas are interchangeable, so the id given back is the newest (as a ReplicaSet
        scales down); only the release time comes from the engine."""
        if not self.ends:
            return None
        end = heapq.heappop(self.ends)
        r = self.ids.pop()
        on_released(r, max(end, now))
        return r

    def interrupt_replica(
        self, fid: int, now: float, deadline: float, on_released: Callable[[int, float], None]
    ) -> int | None:
        """A spot notice: the replica drains like a retired one (replicas are interchangeable,
        so the id released may be another). A batch lasts milliseconds to seconds, far below a
        30 s or 2 min notice, so nothing is re-queued; a batch still running at ``deadline``
        is counted in ``notice_overruns`` (and kept: not re-run)."""

        def cb(r: int, when: float) -> None:
            if when > deadline:
                self.notice_overruns += 1
            on_released(r, when)

        return self.retire_replica(now, cb)

    def stop(self) -> None:
        """Give up: no more batches start (an overloaded run that is aborted)."""
        self.stopped = True

    # ------------------------------------------------------------------ advancing
    def _jitter_upto(self, count: int) -> np.ndarray | None:
        if self._jsrc is not None:
            self._jsrc.ensure(count)
            return self._jsrc.buf
        return self._jarr

    def sync(self, until: float) -> None:
        """Start every batch that starts before ``until`` (state is then exact at ``until``)."""
        if self.stopped:
            return
        if self.limit is not None:
            self._sync_limited(until)
            return
        while self.ends and self.head < self.n:
            if self._k >= 0:
                if self._vector(until):
                    return
            elif self._loop(until):
                return

    def _vector(self, until: float) -> bool:
        """Take schedule blocks while uncongested; True when ``until`` is reached."""
        assert self._sched is not None  # vector mode (self._k >= 0) has the schedule
        heads, ready, sizes, _ = self._sched
        nh = len(heads)
        k = self._k
        k_end = int(np.searchsorted(ready, until, side="left"))
        c = len(self.ends)
        while k < k_end:
            hi = min(k_end, k + self.BLOCK)
            m = hi - k
            R = ready[k:hi]
            B = sizes[k:hi]
            jit = self._jitter_upto(self.nb + m)
            S = self._bt[B] if jit is None else self._bt[B] * jit[self.nb : self.nb + m]
            E = R + S
            old = np.sort(np.asarray(self.ends))
            self._flush()  # keep the log in start order
            busy = (c - np.searchsorted(old, R, side="right")) + (
                np.arange(m) - np.searchsorted(np.sort(E), R, side="right")
            )
            viol = np.flatnonzero(busy >= c)
            acc = int(viol[0]) if len(viol) else m
            if acc:
                blk = (R[:acc].copy(), S[:acc].copy(), B[:acc].astype(np.int64))
                self._add_block(blk)
                self._sum_block(blk)
                self.nb += acc
                k += acc
                self.head = int(heads[k]) if k < nh else self.n
                now = float(R[acc - 1])
                self.now = now
                allends = np.concatenate([old, E[:acc]])
                still = np.sort(allends[allends > now])
                self.ends = [now] * (c - len(still)) + still.tolist()  # sorted: a heap
            if acc < m:
                self._k = -1  # batch k finds every replica busy: loop from here
                # a block costs ~100 us of numpy: worth it only for long uncongested runs
                self._loop_min = (
                    self.MIN_LOOP if acc >= self.WORTH else min(1 << 16, self._loop_min * 4)
                )
                return False
        self._k = k
        return True

    def _window(self, until: float) -> tuple[list[float], int]:
        """Arrivals as Python floats from the queue head to ``K`` past ``until`` (local list)."""
        head = self.head
        top = (
            self.n
            if until == math.inf
            else min(self.n, bisect_right(self._mv, until, head) + self.K)
        )
        win, base = self._win, self._base
        if head - base > max(len(win) // 2, 4096):  # drop what was consumed
            del win[: head - base]
            base = self._base = head
        have = base + len(win)
        if top > have:
            win.extend(self.arr[have:top].tolist())
        return win, base

    def _loop(self, until: float) -> bool:
        """Batch by batch; True when ``until`` is reached, False when back on the schedule."""
        ends = self.ends
        arr, base = self._window(until)
        K, d, bt = self.K, self.d, self.bt
        n = len(arr)  # local: covers every head that can start before until (+K lookahead)
        last = n - 1
        head, now, nb = self.head - base, self.now, self.nb
        jit, j0 = self._jitter_list(until)
        ishead = self._sched[3] if self._sched is not None else None
        # the batches go to plain lists (array.append parses its argument: ~3x slower)
        tl, sl, bl = self._new_log()
        lt, ls, lb = tl.append, sl.append, bl.append
        hr = heapq.heapreplace
        Km1 = K - 1
        resync = nb + self._loop_min
        reached = True
        gc_was = gc.isenabled()
        gc.disable()
        try:
            while head < n:
                ready = arr[head] + d
                hk = head + Km1
                if hk < n:
                    tk = arr[hk]
                    if tk < ready:
                        ready = tk
                else:
                    hk = last
                    tk = arr[hk]
                m = ends[0]
                tg = ready if ready > m else m
                if tg < now:
                    tg = now
                if tg >= until:
                    break
                if tg == ready and ishead is not None and nb >= resync and ishead[head + base]:
                    reached = False  # uncongested again, on a head of the schedule
                    break
                if tk <= tg:
                    b = hk + 1 - head
                else:
                    b = bisect_right(arr, tg, head, hk) - head
                s = bt[b] if jit is None else bt[b] * jit[nb - j0]
                lt(tg)
                ls(s)
                lb(b)
                hr(ends, tg + s)
                nb += 1
                head += b
                now = tg
        finally:
            if gc_was:
                gc.enable()
            self._keep_log(tl, sl, bl)
        self.head, self.now, self.nb = head + base, now, nb
        if self._sched is not None and (not reached or self.head >= self.n):
            self._k = int(np.searchsorted(self._sched[0], self.head))
        return reached

    def _jitter_list(self, until: float) -> tuple[list[float] | None, int]:
        """Factors for every batch that can start before ``until`` (at most one per request),
        as a Python list kept across calls, and the batch number of its first element."""
        if self._jsrc is None and self._jarr is None:
            return None, 0
        top = self.n if until == math.inf else bisect_right(self._mv, until, self.head)
        need = self.nb + max(top - self.head, 0) + 1
        jw, jbase = self._jwin, self._jbase
        if self.nb - jbase > max(len(jw) // 2, 4096):
            del jw[: self.nb - jbase]
            jbase = self._jbase = self.nb
        have = jbase + len(jw)
        if need > have:
            src = self._jitter_upto(need)
            assert src is not None  # a jitter source exists (checked at the top)
            jw.extend(src[have:need].tolist())
        return jw, jbase

    # ------------------------------------------------------------------ queue limit
    def _admit(self, t: float) -> None:
        """Admit or reject the arrivals up to ``t`` (no batch starts in between)."""
        hi = bisect_right(self._mv, t, self.scanned)
        if hi <= self.scanned:
            return
        room = max(self.limit - (len(self.adm) - self.head), 0)
        take = min(room, hi - self.scanned)
        self.adm.extend(range(self.scanned, self.scanned + take))
        self.rejected += hi - self.scanned - take
        self.scanned = hi

    def _sync_limited(self, until: float) -> None:
        arr, n, K, d, bt = self._mv, self.n, self.K, self.d, self.bt
        adm, limit, ends = self.adm, self.limit, self.ends
        jitarr = self._jitter_upto(self.nb + n - self.head + 1)
        # numpy's stubs omit ndarray.__buffer__ before Python 3.12
        jit = memoryview(jitarr) if jitarr is not None else None  # type: ignore[arg-type]
        while ends:
            head = self.head
            qlen = len(adm) - head
            if qlen == 0:
                if self.scanned >= n or arr[self.scanned] >= until:
                    break
                self._admit(arr[self.scanned])
                continue
            t0 = arr[adm[head]]
            ready = t0 + d
            if qlen >= K:
                ready = min(ready, arr[adm[head + K - 1]])
            elif limit >= K:
                j = self.scanned + K - qlen - 1
                if j < n:
                    ready = min(ready, arr[j])
            m = ends[0]
            tg = max(ready, m, self.now)
            if tg >= until:
                break
            self._admit(tg)
            b = min(K, len(adm) - head)
            s = bt[b] if jit is None else bt[b] * jit[self.nb]
            self.nb += 1
            self._lt.append(tg)
            self._ls.append(s)
            self._lb.append(b)
            heapq.heapreplace(ends, tg + s)
            self.head += b
            self.now = tg
        if until < math.inf:
            self._admit(until)

    # ------------------------------------------------------------------ the batch log
    def _add_block(self, blk: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        self.blocks.append(blk)
        self._logged += len(blk[0])

    def _flush(self, count: bool = True) -> None:
        """Move the pending Python-list log into a numpy block (sums counted first)."""
        if self._lt:
            if count:
                self._sum_pending(math.inf)
            k = len(self._lt)
            blk = (
                np.frombuffer(self._lt, float, k),
                np.frombuffer(self._ls, float, k),
                np.frombuffer(self._lb, np.int64, k),
            )
            self._lt, self._ls, self._lb = array("d"), array("d"), array("q")
            self._sampled = 0
            self._add_block(blk)

    def _sum_block(self, blk: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Add a numpy block's batches to the sums and the running set (vector mode)."""
        st, du, sz = blk
        self.sum_s += float(du.sum())
        self.sum_btg += float(sz @ st)
        self.sum_bs += float(sz @ du)
        lo = int(np.searchsorted(st, st[-1] - self._longest(), side="left"))
        end = st[lo:] + du[lo:]
        for e, b in zip(end.tolist(), sz[lo:].tolist(), strict=True):
            self._carry.append((e, int(b)))

    def _sum_pending(self, t: float) -> None:
        """Add the pending log entries not yet counted to the sums and the running set."""
        i = self._sampled
        lt, ls, lb = self._lt, self._ls, self._lb
        if i >= len(lt):
            return
        nt, ns, nbz = lt[i:], ls[i:], lb[i:]
        if len(nt) > 64:  # numpy pays off beyond a few dozen
            at, as_ = np.frombuffer(nt, float), np.frombuffer(ns, float)
            ab = np.frombuffer(nbz, np.int64).astype(float)
            self.sum_s += float(as_.sum())
            self.sum_btg += float(ab @ at)
            self.sum_bs += float(ab @ as_)
        else:
            self.sum_s += sum(ns)
            self.sum_btg += sum(map(mul, nbz, nt))
            self.sum_bs += sum(map(mul, nbz, ns))
        self._sampled = len(lt)
        # batches that can still run: those that started within the longest batch time
        horizon = nt[-1] - self._longest()
        carry = self._carry
        j = len(nt) - 1
        while j >= 0 and nt[j] >= horizon:
            carry.append((nt[j] + ns[j], nbz[j]))
            j -= 1
