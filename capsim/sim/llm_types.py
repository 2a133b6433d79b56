"""Types of the LLM engine: the iteration-timer protocol, engine limits, run results, replica state."""

from __future__ import annotations

import math
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import simpy

from capsim.service.llm_memory import MemoryFit
from capsim.sim.prefix_cache import PrefixCache
from capsim.spec.engine import LLMEngineSettings

UNLIMITED = 1 << 60
INF = math.inf


MASK = (1 << 64) - 1  # one 64-bit field of a replica's packed KV-rounding sums (``corr``)

#: ``decode_lines(D)``: (a1, b1, a2, b2), a decode iteration at total context C takes
#: max(a1 + b1 C, a2 + b2 C) seconds
_Lines = tuple[float, float, float, float]


def packed_residues(bs: int) -> list[int]:
    """Per residue r = u mod bs, the packed field m = ``(-(r + m)) mod bs`` (m < bs) that a
    sequence of context u adds to ``corr``.

    >>> [[(v >> (64 * m)) & MASK for m in range(4)] for v in packed_residues(4)]
    [[0, 3, 2, 1], [3, 2, 1, 0], [2, 1, 0, 3], [1, 0, 3, 2]]
    """
    return [sum(((-(r + m)) % bs) << (64 * m) for m in range(bs)) for r in range(bs)]


URGENT = simpy.events.URGENT  # 0; replica steps use NORMAL (1)


ROUTERS = ("round_robin", "least_outstanding_requests", "least_outstanding_tokens")


ROUTER_ALIASES = {
    "shared_queue": "least_outstanding_requests",
    "join_shortest_queue": "least_outstanding_requests",
}


KV_SERIES_BINS = 240  # points of the KV-utilisation time series


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
    prefix_caching: bool = False  # reuse cached KV blocks of requests that carry a hash chain

    @classmethod
    def of(cls, fit: MemoryFit, st: LLMEngineSettings, max_model_len: int) -> EngineLimits:
        return cls(
            kv_blocks=fit.kv_blocks,
            block_size=st.block_size,
            max_num_batched_tokens=st.max_num_batched_tokens,
            max_num_seqs=st.max_num_seqs,
            chunked_prefill=st.chunked_prefill,
            max_model_len=max_model_len,
            prefix_caching=st.enable_prefix_caching,
        )


class RequestTimes:
    """TTFT, e2e and TPOT per request from arrival, first-token and finish times (a mixin)."""

    arrival: np.ndarray
    output: np.ndarray
    first_token: np.ndarray
    finish: np.ndarray

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


@dataclass
class LLMRunResult(RequestTimes):
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
    prefix_caching: bool = False  # on, and the requests carried hash chains
    cached_tokens: np.ndarray | None = None  # per request: prompt tokens hit at first admission
    prefill_saved: int = 0  # prompt tokens not computed thanks to hits (re-admissions included)
    cache_evictions: int = 0  # cached free blocks evicted to make room

    @property
    def served(self) -> np.ndarray:
        return ~np.isnan(self.finish)

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
        "cache", "share", "nxt",
    )  # fmt: skip

    def __init__(self, idx: int, bs: int):
        self.idx = idx
        self.waiting: deque[int] = deque()
        self.running: dict[int, None] = {}  # admission order; popitem() = newest
        self.prefilling: list[int] = []  # running requests whose prompt is not all computed
        self.chunks: list[tuple[int, int]] = []  # (request, chunk) of the step in flight
        self.D = 0  # decoding sequences
        self.sum_u = 0  # Σ u_i, context of i at iteration x is u_i + x
        self.corr = 0  # KV block rounding by residue, packed (see LLMFleet._blocks)
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
        self.nxt = INF  # static routing: its arrival time (INF: none, or routing at arrival)
        self.cache = PrefixCache()  # prefix caching: this replica's cached KV blocks
        self.share = 0  # blocks counted twice in sum ceil(tokens / bs): shared cached blocks
