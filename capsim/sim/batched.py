"""The batched fleet: replicas serving fixed-shape requests with Triton-style dynamic batching.

Requests are not SimPy processes or Python objects: they are positions in a sorted numpy array of
arrival times. The FIFO queue is the range ``[head, arrived)`` of that array, so taking a batch
is moving ``head``; nothing per request happens in Python. One *batcher* process hands batches to
free replicas, and a replica's batch ends with one timeout event, so the cost of a run grows with
the number of batches, not requests. Per-request start and finish times are expanded from the
batch log at the end (``np.repeat``).

Dynamic batching as Triton does it: when a replica is free and requests wait, the batch starts at
once if ``max_batch`` requests are there; otherwise it waits until the oldest request has waited
``max_queue_delay`` (or the batch fills), then takes up to ``max_batch``. With zero delay the
batcher is greedy: an idle replica takes whatever is waiting.

>>> import numpy as np
>>> arr = np.array([0.0, 0.1, 0.2])
>>> r = run_batched(arr, EngineConfig(replicas=1, batch_times=np.array([0.0, 0.5, 0.6])))
>>> r.finish.round(2).tolist()   # first alone, then the two that waited go together
[0.5, 1.1, 1.1]
"""

from __future__ import annotations

import math

import numpy as np
import simpy

from capsim.sim.batched_queue import EngineConfig, RunResult, _BatchLog, _SharedQueue
from capsim.sim.overload import WaitGrowth


def _per_replica_streams(arrival: np.ndarray, cfg: EngineConfig) -> list[np.ndarray]:
    """Round-robin: request i goes to replica i mod c (decided at arrival, as a proxy would)."""
    c = cfg.replicas
    return [np.arange(r, len(arrival), c) for r in range(c)]


def _expand(
    arrival: np.ndarray,
    order: np.ndarray,
    log: _BatchLog,
    *,
    horizon: float,
    end_time: float,
    replicas: int,
    rejected: np.ndarray,
    unstable_reason: str,
) -> RunResult:
    n = len(arrival)
    bstart, bdur, bsize, brep = log.arrays()
    start = np.full(n, np.nan)
    finish = np.full(n, np.nan)
    replica = np.full(n, -1, dtype=np.int32)
    size = np.zeros(n, dtype=np.int32)
    served = int(bsize.sum())
    idx = order[:served]
    start[idx] = np.repeat(bstart, bsize)
    finish[idx] = np.repeat(bstart + bdur, bsize)
    replica[idx] = np.repeat(brep, bsize)
    size[idx] = np.repeat(bsize, bsize)
    return RunResult(
        arrival=arrival,
        start=start,
        finish=finish,
        replica=replica,
        batch_size=size,
        rejected=rejected,
        batch_start=bstart,
        batch_duration=bdur,
        batch_sizes=bsize,
        batch_replica=brep,
        horizon=horizon,
        end_time=end_time,
        replicas=replicas,
        unstable=bool(unstable_reason),
        unstable_reason=unstable_reason,
    )


def _run_shared(arrival: np.ndarray, cfg: EngineConfig, horizon: float) -> RunResult:
    env = simpy.Environment()
    q = _SharedQueue(env, arrival, cfg)
    q.step()
    env.run()
    n = len(arrival)
    if q.limit is not None:
        if not q.unstable_reason:
            q._admit_until(math.inf)
        order = q.admitted[: q.adm_tail]
        rejected = np.ones(n, dtype=bool)
        rejected[order] = False
        if q.unstable_reason:
            rejected[q.scanned :] = False  # never looked at: unserved, not rejected
    else:
        order = np.arange(n)
        rejected = np.zeros(n, dtype=bool)
    return _expand(
        arrival,
        order,
        q.log,
        horizon=horizon,
        end_time=env.now,
        replicas=cfg.replicas,
        rejected=rejected,
        unstable_reason=q.unstable_reason,
    )


def _run_round_robin(arrival: np.ndarray, cfg: EngineConfig, horizon: float) -> RunResult:
    """Each replica is its own single-server batcher on its share of the arrivals."""
    one = EngineConfig(
        replicas=1,
        batch_times=cfg.batch_times,
        max_queue_delay_s=cfg.max_queue_delay_s,
        max_queue_length=cfg.max_queue_length,
        max_wait_s=cfg.max_wait_s,
        jitter=cfg.jitter,
    )
    parts = [
        (_run_shared(arrival[idx], one, horizon), idx) for idx in _per_replica_streams(arrival, cfg)
    ]
    return _merge(arrival, parts, cfg, horizon)


def _merge(
    arrival: np.ndarray,
    parts: list[tuple[RunResult, np.ndarray]],
    cfg: EngineConfig,
    horizon: float,
) -> RunResult:
    n = len(arrival)
    out = RunResult(
        arrival=arrival,
        start=np.full(n, np.nan),
        finish=np.full(n, np.nan),
        replica=np.full(n, -1, dtype=np.int32),
        batch_size=np.zeros(n, dtype=np.int32),
        rejected=np.zeros(n, dtype=bool),
        batch_start=np.concatenate([p.batch_start for p, _ in parts]),
        batch_duration=np.concatenate([p.batch_duration for p, _ in parts]),
        batch_sizes=np.concatenate([p.batch_sizes for p, _ in parts]),
        batch_replica=np.concatenate(
            [np.full(len(p.batch_start), r) for r, (p, _) in enumerate(parts)]
        ),
        horizon=horizon,
        end_time=max(p.end_time for p, _ in parts),
        replicas=cfg.replicas,
    )
    reasons = []
    for r, (p, idx) in enumerate(parts):
        out.start[idx] = p.start
        out.finish[idx] = p.finish
        out.replica[idx] = np.where(p.replica >= 0, r, -1)
        out.batch_size[idx] = p.batch_size
        out.rejected[idx] = p.rejected
        if p.unstable:
            reasons.append(f"replica {r}: {p.unstable_reason}")
    out.unstable = bool(reasons)
    out.unstable_reason = reasons[0] if reasons else ""
    order = np.argsort(out.batch_start, kind="stable")
    out.batch_start, out.batch_duration = out.batch_start[order], out.batch_duration[order]
    out.batch_sizes, out.batch_replica = out.batch_sizes[order], out.batch_replica[order]
    return out


def _run_jsq(arrival: np.ndarray, cfg: EngineConfig, horizon: float) -> RunResult:
    """Join-shortest-queue: each arrival goes to the replica with the fewest outstanding requests.

    The decision needs the state at every arrival, so this router walks the arrivals one by one
    (a Python loop, not a SimPy process per request): each replica is a single server with its
    own FIFO queue and greedy/delayed batching, advanced lazily to the next arrival time.
    """
    c, n = cfg.replicas, len(arrival)
    bt, K, delay = cfg.batch_times, cfg.max_batch, cfg.max_queue_delay_s
    jitter, limit = cfg.jitter, cfg.max_queue_length
    queues: list[list[int]] = [[] for _ in range(c)]  # waiting request ids per replica
    qhead = [0] * c
    busy_until = [0.0] * c
    in_service = [0] * c
    log = _BatchLog()
    order: list[int] = []
    rejected = np.zeros(n, dtype=bool)
    unstable_reason = ""
    growth = [WaitGrowth(cfg.max_wait_s) for _ in range(c)]
    nb = 0

    def advance(r: int, until: float) -> None:
        """Run replica r's batching decisions that happen strictly before ``until``."""
        nonlocal nb, unstable_reason
        q = queues[r]
        while qhead[r] < len(q):
            t_free = busy_until[r]
            t0 = arrival[q[qhead[r]]]
            t = max(t_free, t0)
            waiting_at = qhead[r]
            # requests in queue that have arrived by t
            avail = len(q) - waiting_at
            b = min(avail, K)
            if b < K and delay > 0:
                t = max(t, t0 + delay)
                if len(q) - waiting_at >= K:
                    t = max(t_free, arrival[q[waiting_at + K - 1]])
            if t >= until:
                return
            if t - t0 > cfg.max_wait_s and not unstable_reason:
                why = growth[r].check(t, t - t0)
                unstable_reason = f"replica {r}: {why}" if why else ""
            elif growth[r].armed:
                growth[r].calm()
            s = bt[b] if jitter is None else bt[b] * jitter[nb]
            nb += 1
            log.append(t, s, b, r)
            order.extend(q[waiting_at : waiting_at + b])
            qhead[r] += b
            busy_until[r] = t + s
            in_service[r] = b

    for i in range(n):
        t = arrival[i]
        best, best_len = 0, math.inf
        for r in range(c):
            advance(r, t)
            outstanding = len(queues[r]) - qhead[r] + (in_service[r] if busy_until[r] > t else 0)
            if outstanding < best_len:
                best, best_len = r, outstanding
        if limit is not None and len(queues[best]) - qhead[best] >= limit:
            rejected[i] = True
            continue
        queues[best].append(i)
        if unstable_reason:
            break
    for r in range(c):
        advance(r, math.inf)
    # the batch log is in per-replica order: sort by start, keeping each batch's members
    starts, durs, sizes, reps = log.arrays()
    first = np.concatenate([[0], np.cumsum(sizes)[:-1]]) if len(sizes) else np.zeros(0, np.int64)
    srt = np.argsort(starts, kind="stable")
    ord_arr = np.asarray(order, dtype=np.int64)
    new_order = (
        np.concatenate([ord_arr[first[j] : first[j] + sizes[j]] for j in srt])
        if len(srt)
        else ord_arr
    )
    log2 = log.take(srt)
    end = float((starts + durs).max()) if len(starts) else 0.0
    return _expand(
        arrival,
        new_order,
        log2,
        horizon=horizon,
        end_time=end,
        replicas=c,
        rejected=rejected,
        unstable_reason=unstable_reason,
    )


def run_batched(arrival: np.ndarray, cfg: EngineConfig, horizon: float | None = None) -> RunResult:
    """Simulate one configuration on one request stream; arrays in, arrays out."""
    if cfg.replicas < 1:
        raise ValueError("replicas must be >= 1")
    if cfg.jitter is not None and len(cfg.jitter) < len(arrival):
        raise ValueError("jitter needs one factor per possible batch (len >= number of requests)")
    h = float(horizon) if horizon is not None else (float(arrival[-1]) if len(arrival) else 0.0)
    if cfg.router == "shared_queue":
        return _run_shared(arrival, cfg, h)
    if cfg.router == "round_robin":
        return _run_round_robin(arrival, cfg, h)
    if cfg.router == "join_shortest_queue":
        return _run_jsq(arrival, cfg, h)
    raise ValueError(f"unknown router {cfg.router!r}")
