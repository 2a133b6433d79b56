"""Disaggregated prefill/decode serving: a prefill pool, KV-cache transfers, a decode pool.

Each request's prompt runs in the **prefill pool** (continuous batching of prefills only; the
iteration that finishes the prompt samples the first output token). Its KV cache then moves
over the link to the **decode pool** (:func:`kv_transfer`), where it joins a decode replica's
continuous batch as a *prefilled* request (no prefill there; KV admission is limited by the
decode replica's cache as for any request). This is the xPyD layout of DistServe (Zhong et
al., OSDI 2024), Splitwise, vLLM's disaggregated prefill, llm-d and NVIDIA Dynamo.

Times seen by the user:

* TTFT = queueing + prefill in the prefill pool + the KV transfer (the first token is delivered
  with the hand-off);
* TPOT = (finish - first token) / (output - 1): waiting for a decode slot, then one decode
  iteration per token;
* a request with one output token is complete after its prefill (nothing moves).

The pools do not feed back into each other (a decode replica's queue does not stop the
prefill pool), so the run is exact as two engine runs in sequence: the prefill pool on the
arrival stream, then the decode pool on the KV arrival times.

**KV transfer.** A request with prompt ``p`` sends ``p x kv_bytes_per_token`` bytes. The
prefill replica's ``streams`` GPUs each send their share in parallel (``min(tp_prefill,
tp_decode)`` GPU pairs), and one prefill replica's transfers go one after another (first
ready, first sent): ``latency + bytes / (streams x bandwidth)``. Transfers are not overlapped
with the prefill (vLLM's connectors send after the prefill; layer-wise overlap as in Splitwise
would hide part of it).

>>> import numpy as np
>>> link = KVLink(bandwidth_b_s=1e9, latency_s=1e-4, streams=2)
>>> start, end = kv_transfer(np.array([0.0, 0.0, 0.5]), np.array([0, 0, 1]),
...                          np.array([1e8, 1e8, 1e8]), link)
>>> end.round(4).tolist()              # 0.0501 each; the second waits for the first
[0.0501, 0.1002, 0.5501]
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_types import EngineLimits, IterationTimer, LLMRunResult, RequestTimes
from capsim.workload.prefixes import Chain


@dataclass(frozen=True)
class KVLink:
    """The path of one prefill replica's KV transfers: ``streams`` GPU links in parallel, each
    moving ``bandwidth_b_s`` bytes/s (after efficiency) after a fixed ``latency_s``."""

    bandwidth_b_s: float
    latency_s: float
    streams: int = 1

    def seconds(self, nbytes: float) -> float:
        """Time of one transfer of ``nbytes``.

        >>> KVLink(25e9, 1e-4, 1).seconds(2.5e8)
        0.0101
        """
        return self.latency_s + nbytes / (self.streams * self.bandwidth_b_s)


@dataclass(frozen=True)
class PoolSetup:
    """One pool of a disaggregated fleet as the engine needs it."""

    timer: IterationTimer
    limits: EngineLimits
    replicas: int


def kv_transfer(
    ready: np.ndarray, replica: np.ndarray, nbytes: np.ndarray, link: KVLink
) -> tuple[np.ndarray, np.ndarray]:
    """(start, end) of each request's KV transfer: FIFO per sending (prefill) replica.

    ``ready`` is when the prefill finished (NaN: never, then NaN out); ``replica`` the prefill
    replica that ran it.
    """
    start = np.full(len(ready), math.nan)
    end = np.full(len(ready), math.nan)
    ok = np.flatnonzero(~np.isnan(ready))
    order = ok[np.lexsort((ready[ok], replica[ok]))]  # by replica, then by ready time
    dur = link.latency_s + nbytes / (link.streams * link.bandwidth_b_s)
    free: dict[int, float] = {}
    rd, rp, du = ready.tolist(), replica.tolist(), dur.tolist()
    for i in order.tolist():
        r = rp[i]
        t0 = max(rd[i], free.get(r, -math.inf))
        start[i] = t0
        free[r] = end[i] = t0 + du[i]
    return start, end


@dataclass
class DisaggRunResult(RequestTimes):
    """One run of a disaggregated fleet: both pools' engine runs, and per request (arrival
    order) the fleet-level times."""

    prefill: LLMRunResult
    decode: LLMRunResult
    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    transfer_s: np.ndarray  # KV transfer time incl. waiting for the link (NaN: none)
    first_token: np.ndarray  # delivered to the user: prefill + transfer
    finish: np.ndarray
    rejected: np.ndarray
    kv_bytes: np.ndarray
    link_reason: str = ""  # the KV link cannot keep up (its queue outgrows the alarm level)

    @property
    def unstable(self) -> bool:
        return self.prefill.unstable or self.decode.unstable or bool(self.link_reason)

    @property
    def unstable_reason(self) -> str:
        for name, r in (("prefill", self.prefill), ("decode", self.decode)):
            if r.unstable:
                return f"{name} pool: {r.unstable_reason}"
        return self.link_reason

    @property
    def served(self) -> np.ndarray:
        return ~np.isnan(self.finish) & ~self.rejected


def run_prefill_pool(
    arrival: np.ndarray,
    prompt: np.ndarray,
    prefill: PoolSetup,
    *,
    router: str = "round_robin",
    max_wait_s: float = math.inf,
    max_queue_length: int | None = None,
    horizon: float | None = None,
    chains: Sequence[Chain | list[int] | None] | None = None,
) -> LLMRunResult:
    """The prefill pool alone: every request is its prompt and one output token (the first,
    sampled by the iteration that finishes the prompt; ``first_token`` is when it is ready).
    With prefix caching, ``chains`` as for :func:`~capsim.sim.llm_engine.run_llm`: the prefill
    pool reuses cached prompt blocks."""
    n = len(arrival)
    h = float(horizon) if horizon is not None else (float(arrival[-1]) if n else 0.0)
    return run_llm(
        arrival, prompt, np.ones(n, dtype=np.int64), prefill.timer, prefill.limits,
        prefill.replicas, router=router, max_wait_s=max_wait_s,
        max_queue_length=max_queue_length, horizon=h, chains=chains,
    )  # fmt: skip


def first_tokens(
    pre: LLMRunResult, output: np.ndarray, kv_bytes_per_token: float, link: KVLink
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """After the prefill pool: (first token delivered, KV transfer time, bytes) per request.

    A request with more than one output token moves its KV cache (:func:`kv_transfer`); its
    first token is delivered when the transfer ends. One output token: done at the prefill.
    """
    done = pre.first_token
    nbytes = np.asarray(pre.prompt, dtype=float) * kv_bytes_per_token
    moves = (np.asarray(output) > 1) & ~np.isnan(done)
    _t0, t1 = kv_transfer(np.where(moves, done, math.nan), pre.replica, nbytes, link)
    return np.where(moves, t1, done), t1 - done, nbytes


def run_disagg(
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
    prefill: PoolSetup | LLMRunResult,
    decode: PoolSetup,
    kv_bytes_per_token: float,
    link: KVLink,
    *,
    router: str = "round_robin",
    max_wait_s: float = math.inf,
    max_queue_length: int | None = None,
    horizon: float | None = None,
    chains: Sequence[Chain | list[int] | None] | None = None,
) -> DisaggRunResult:
    """Simulate a disaggregated fleet on one request stream (see the module docstring);
    ``prefill`` may be a finished :func:`run_prefill_pool` run of the same stream.

    >>> import numpy as np
    >>> class Const:                       # 10 ms per iteration, whatever the batch
    ...     def iteration_time(self, *a, **k): return 0.01
    ...     def decode_lines(self, d): return (0.01, 0.0, 0.01, 0.0)
    >>> pool = PoolSetup(Const(), EngineLimits(), 1)
    >>> r = run_disagg(np.array([0.0]), np.array([100]), np.array([3]), pool, pool,
    ...                1e6, KVLink(1e10, 0.0))
    >>> r.ttft.round(3).tolist(), r.e2e.round(3).tolist()   # 10 ms prefill + 10 ms transfer
    ([0.02], [0.04])
    """
    n = len(arrival)
    h = float(horizon) if horizon is not None else (float(arrival[-1]) if n else 0.0)
    kw = dict(router=router, max_wait_s=max_wait_s, max_queue_length=max_queue_length)
    pre = prefill
    if isinstance(pre, PoolSetup):
        pre = run_prefill_pool(arrival, prompt, pre, horizon=h, chains=chains, **kw)  # type: ignore[arg-type]
    hand = handoff(pre, output, kv_bytes_per_token, link, max_wait_s)
    t_kv = hand.kv_arrival
    dec = run_llm(
        t_kv, prompt[hand.idx], output[hand.idx], decode.timer, decode.limits, decode.replicas,
        horizon=max(h, float(t_kv[-1]) if len(t_kv) else h),
        prefilled=np.ones(len(t_kv), dtype=bool), **kw,  # type: ignore[arg-type]
    )  # fmt: skip
    return combine(pre, dec, hand, arrival, prompt, output)


@dataclass(frozen=True)
class Handoff:
    """The prefill pool's output for the decode pool: per request (arrival order) the first
    token delivered, the KV transfer time and bytes; ``idx``: the requests that move, in the
    order their KV caches reach the decode pool; ``reason``: why the link is overloaded."""

    first: np.ndarray
    moved: np.ndarray
    nbytes: np.ndarray
    idx: np.ndarray
    reason: str

    @property
    def kv_arrival(self) -> np.ndarray:
        """When each moving request's KV cache reaches the decode pool (sorted)."""
        return self.first[self.idx]


def handoff(
    pre: LLMRunResult,
    output: np.ndarray,
    kv_bytes_per_token: float,
    link: KVLink,
    max_wait_s: float,
) -> Handoff:
    """:func:`first_tokens` and the decode pool's arrivals after a prefill pool run."""
    first, moved, nbytes = first_tokens(pre, output, kv_bytes_per_token, link)
    why = link_overload(moved, nbytes, link, max_wait_s)
    idx = np.flatnonzero(~np.isnan(moved))
    idx = idx[np.argsort(first[idx], kind="stable")]
    return Handoff(first, moved, nbytes, idx, why)


def combine(
    pre: LLMRunResult,
    dec: LLMRunResult,
    hand: Handoff,
    arrival: np.ndarray,
    prompt: np.ndarray,
    output: np.ndarray,
) -> DisaggRunResult:
    """The fleet-level result of a prefill pool run and the decode pool's run of ``hand``."""
    finish = np.where(np.asarray(output) > 1, math.nan, pre.first_token)
    finish[hand.idx] = dec.finish
    rejected = pre.rejected.copy()
    rejected[hand.idx] |= dec.rejected
    return DisaggRunResult(
        pre, dec, np.asarray(arrival, dtype=float), np.asarray(prompt), np.asarray(output),
        hand.moved, hand.first, finish, rejected, hand.nbytes, hand.reason,
    )  # fmt: skip


def link_overload(moved: np.ndarray, nbytes: np.ndarray, link: KVLink, max_wait_s: float) -> str:
    """Why the KV link is overloaded ('' if it is not): a transfer waited for the link longer
    than the alarm level ``max_wait_s`` (its queue grows faster than it drains).

    >>> link_overload(np.array([0.5, 90.0]), np.array([1e8, 1e8]), KVLink(1e9, 0.0), 30.0)[:40]
    'KV link overloaded: a transfer waited 89'
    """
    ok = ~np.isnan(moved)
    if not ok.any():
        return ""
    wait = moved[ok] - (link.latency_s + nbytes[ok] / (link.streams * link.bandwidth_b_s))
    worst = float(wait.max())
    if worst <= max_wait_s:
        return ""
    return (
        f"KV link overloaded: a transfer waited {worst:.1f} s for the link (alarm level "
        f"{max_wait_s:g} s); {float(nbytes[ok].mean()) / 2**20:.0f} MiB per request at "
        f"{link.streams} x {link.bandwidth_b_s / 1e9:.2f} GB/s"
    )
