"""Replay a finite, rate-driven benchmark run the way its client ran it.

vLLM's ``benchmark_serving.py`` (0.8.x) and SGLang's ``bench_serving`` send a fixed number of
requests ``n``: the first at once, each next one after a gap drawn from
``np.random.gamma(shape=burstiness, scale=1 / (rate * burstiness))`` (exponential when
burstiness is 1); after the last send the generator sleeps one more gap before it ends. The
run's ``duration`` is from the first send until every request has completed (and that last
sleep is over), and ``request_throughput = completed / duration``,
``output_throughput = output tokens / duration``; the latency percentiles are over all ``n``
requests (``numpy.percentile``). Such a run is not a steady state: at 16 req/s above capacity
it is a burst that then drains, and below capacity its throughput is the realised rate of
its own ``n - 1`` gaps (a sample; its spread is what :func:`replay_finite` reports).

:func:`replay_finite` does the same in capsim: exactly ``n`` arrivals with those gaps from a
seeded :class:`numpy.random.Generator` (one per replication, from
:func:`capsim.workload.streams.seed_children`), the run's own (prompt, output) pairs in the
order they were sent when it saved them (else ``n`` lengths drawn from the replay's token
distribution), no warm-up cut, no overload stop (every request is served to completion), and
the client's definitions of throughput and percentiles. Each value is the mean over the
replications; its standard deviation across them is the sampling spread of one run.

>>> import numpy as np
>>> t, end = send_times(4, 2.0, 1.0, np.random.default_rng(0))
>>> len(t), float(t[0]), bool(end > t[-1])
(4, 0.0, True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from capsim.bench.model import BenchRun
from capsim.bench.replay import FINITE_FORMATS, ReplayPlan, finite_burst
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_types import EngineLimits
from capsim.spec.scenario import Scenario
from capsim.workload.prefixes import Chain
from capsim.workload.streams import seed_children
from capsim.workload.tokens import token_lengths

STATS = (("p50", 50.0), ("p90", 90.0), ("p99", 99.0))


@dataclass(frozen=True)
class FiniteLoad:
    """A finite open-loop run: ``n`` requests at ``rate_rps``, gamma gaps of shape ``shape``
    (``rate_rps`` inf: all at once)."""

    n: int
    rate_rps: float
    shape: float = 1.0

    def describe(self) -> str:
        if math.isinf(self.rate_rps):
            return (
                f"finite run as the client sent it: all {self.n} requests at t = 0, each "
                f"served to completion; throughput = {self.n} / (end of the run)"
            )
        gaps = "exponential" if self.shape == 1.0 else f"gamma (shape {self.shape:g})"
        return (
            f"finite run as the client sent it: exactly {self.n} requests at {self.rate_rps:g} "
            f"req/s ({gaps} gaps, the first at t = 0), each served to completion, no warm-up "
            f"cut; throughput = {self.n} / (end of the run - first send)"
        )


def finite_load(run: BenchRun, llm: bool) -> FiniteLoad | None:
    """The finite load of ``run`` when its client sent a fixed number of requests at a rate or
    all at once (see :data:`FINITE_FORMATS`; LLM runs only), else None (the steady-state
    replay)."""
    load, w = run.workload.load, run.workload
    n = w.num_requests or w.completed
    if not llm or load is None or run.source.format not in FINITE_FORMATS or not n or n < 2:
        return None
    if load.kind == "offline":
        return FiniteLoad(int(n), math.inf) if finite_burst(run) else None
    if load.kind != "rate" or load.max_concurrency:
        return None
    return FiniteLoad(int(n), float(load.rate_rps), float(load.burstiness or 1.0))


def send_times(
    n: int, rate_rps: float, shape: float, rng: np.random.Generator
) -> tuple[np.ndarray, float]:
    """(send times of ``n`` requests from t = 0, the time the client's generator ends): ``n``
    gaps ``gamma(shape, 1 / (rate * shape))``, the i-th request sent after the first i; at an
    infinite rate all at t = 0 (and the generator ends then)."""
    if math.isinf(rate_rps):
        return np.zeros(n), 0.0
    gaps = rng.gamma(shape, 1.0 / (rate_rps * shape), size=n)
    ends = np.cumsum(gaps)
    return np.concatenate([[0.0], ends[:-1]]), float(ends[-1])


def _lengths(
    s: Scenario, plan: ReplayPlan, n: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """The run's own pairs in send order when it saved ``n`` of them, else ``n`` draws."""
    if plan.pairs is not None and len(plan.pairs) == n:
        a = np.asarray(plan.pairs, dtype=np.int64)
        return a[:, 0], a[:, 1]
    p, o = token_lengths(s.traffic.tokens, n, rng)  # type: ignore[arg-type]
    return np.maximum(p, 1), np.maximum(o, 1)


def _pct(x: np.ndarray) -> dict[float, float]:
    x = x[~np.isnan(x)]
    return {p: float(np.percentile(x, p)) if len(x) else math.nan for _, p in STATS}


@dataclass
class FiniteResult:
    """Per replication: the series percentiles and the scalars, as the client computes them."""

    quantiles: list[dict[str, dict[float, float]]]
    scalars: list[dict[str, float]]
    unstable: str = ""

    def mean_std(self) -> tuple[dict, dict, dict, dict]:
        """(mean quantiles, their std, mean scalars, their std) over the replications (std 0
        with one replication)."""

        def ms(vals: list[float]) -> tuple[float, float]:
            v = np.asarray(vals, dtype=float)
            return float(np.mean(v)), float(np.std(v, ddof=1)) if len(v) > 1 else 0.0

        qm: dict = {}
        qs: dict = {}
        for name in self.quantiles[0]:
            qm[name], qs[name] = {}, {}
            for p in self.quantiles[0][name]:
                qm[name][p], qs[name][p] = ms([q[name][p] for q in self.quantiles])
        sm: dict = {}
        ss: dict = {}
        for key in self.scalars[0]:
            sm[key], ss[key] = ms([x[key] for x in self.scalars])
        return qm, qs, sm, ss


def warm_prompts(
    prompt: np.ndarray, output: np.ndarray, limits: EngineLimits
) -> tuple[list[Chain | None] | None, list[tuple[Chain, int]] | None]:
    """(chains, cached) for :func:`~capsim.sim.llm_engine.run_llm` when every prompt was
    served before: request i's blocks are a chain of their own (prompts share nothing with
    each other), and the full blocks of its prompt are cached, in send order. (None, None) with
    prefix caching off.

    >>> from capsim.sim.llm_types import EngineLimits
    >>> ch, warm = warm_prompts(np.array([40, 8]), np.array([10, 30]), EngineLimits(prefix_caching=True))
    >>> [c.segs for c in ch], [(c.segs, k) for c, k in warm]
    ([[(0, 3)], [(1, 2)]], [([(0, 3)], 2), ([(1, 2)], 0)])
    """
    if not limits.prefix_caching:
        return None, None
    bs = limits.block_size
    p, o = prompt.tolist(), output.tolist()
    chains = [Chain([(i, (a + b) // bs)]) for i, (a, b) in enumerate(zip(p, o, strict=True))]
    warm = [(c, a // bs) for c, a in zip(chains, p, strict=True)]
    return list[Chain | None](chains), warm


def replay_finite(
    s: Scenario,
    svc,
    plan: ReplayPlan,
    load: FiniteLoad,
    *,
    replicas: int = 1,
    seed: int = 0,
    replications: int = 3,
    cached: bool = False,
) -> FiniteResult:
    """Simulate ``replications`` finite runs of ``load`` on the LLM service ``svc`` (see the
    module doc). ``cached``: the server had served these prompts before (an earlier run of a
    sweep, :mod:`capsim.bench.repeats`): with prefix caching on, each prompt's full KV blocks
    are in the cache at the start (:func:`warm_prompts`)."""
    res_q, res_s, unstable = [], [], ""
    for rep in range(replications):
        arr_seq, size_seq = seed_children(seed, rep)[:2]
        t, gen_end = send_times(load.n, load.rate_rps, load.shape, np.random.default_rng(arr_seq))
        prompt, output = _lengths(s, plan, load.n, np.random.default_rng(size_seq))
        chains, warm = warm_prompts(prompt, output, svc.limits) if cached else (None, None)
        res = run_llm(
            t, prompt, output, svc, svc.limits, replicas,
            router=s.fleet.router, max_wait_s=math.inf, horizon=gen_end,
            chains=chains, cached=warm,
        )  # fmt: skip
        if not res.served.all():
            unstable = res.unstable_reason or f"{int((~res.served).sum())} requests not served"
        duration = max(float(np.nanmax(res.finish)), gen_end) - float(t[0])
        res_q.append({"ttft": _pct(res.ttft), "tpot": _pct(res.tpot), "e2e": _pct(res.e2e)})
        res_s.append(
            {
                "throughput_rps": float(res.served.sum()) / duration,
                "output_tokens_per_s": float(output[res.served].sum()) / duration,
                "duration_s": duration,
            }
        )
    return FiniteResult(res_q, res_s, unstable)
