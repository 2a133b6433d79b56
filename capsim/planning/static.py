"""The planner: for each card × precision × tensor parallelism, the fewest replicas that meet the
SLO; then the cheapest of those.

1. *Drop* what cannot run, with the reason: precision unsupported on the card, model does not
   fit in memory, a single request already slower than the target.
2. *Screen*: a capacity lower bound on the replica count (peak rate / the best throughput of
   one replica) so the search starts near the answer.
3. *Search*: grow the count until the SLO's upper confidence limit meets the target, then
   bisect between the last failing and the first meeting count. Under common random numbers
   p99 does not increase with the count, so bisection is valid.
4. *Rank* the feasible configurations by $/hour (same traffic, so also by $ per request).

>>> from capsim.load import load_scenario
>>> from capsim.planning.api import plan
>>> result = plan(load_scenario("scenarios/vision.yaml"))
>>> result.recommendation is not None
True
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from capsim.analysis.capacity import price_provider
from capsim.analysis.cost import price_per_gpu_hour
from capsim.evaluate import (
    Config,
    Evaluation,
    make_service,
    memory_fit,
    replica_capacity_rps,
    simulate,
)
from capsim.load import load_catalog
from capsim.service.fixed import Unsupported
from capsim.spec.catalog import Catalog
from capsim.spec.models import TransformerModel
from capsim.spec.scenario import Scenario
from capsim.workload.streams import peak_rate


@dataclass(frozen=True)
class Candidate:
    gpu: str
    precision: str
    tp: int = 1
    ep: int = 1

    def label(self) -> str:
        tp = (f" tp{self.tp}" if self.tp > 1 else "") + (f" ep{self.ep}" if self.ep > 1 else "")
        return f"{self.gpu} {self.precision}{tp}"


@dataclass
class CandidateResult:
    """Outcome for one card × precision × tp: the best feasible count, or why it lost."""

    candidate: Candidate
    status: str  # feasible | dropped | infeasible | skipped
    reason: str
    best: Evaluation | None = None
    evaluations: list[Evaluation] = field(default_factory=list)
    lower_bound: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class PlanResult:
    scenario: Scenario
    results: list[CandidateResult]
    recommendation: CandidateResult | None
    peak_rate_rps: float
    catalog: Catalog | None = None
    autoscaled: Any = None  # capsim.planning.autoscaled.AutoscaledPlan when the scenario autoscales
    trace: list[str] = field(default_factory=list)  # where the recommendation's numbers come from
    mixed: Any = None  # capsim.planning.mixed.MixPlan when the scenario has a mix section
    disagg: Any = None  # capsim.planning.disagg.DisaggPlan with a disaggregation section

    @property
    def feasible(self) -> list[CandidateResult]:
        return sorted(
            (r for r in self.results if r.status == "feasible"),
            key=_rank_key,
        )

    @property
    def lost(self) -> list[CandidateResult]:
        return [r for r in self.results if r.status != "feasible"]


def candidates(s: Scenario) -> list[Candidate]:
    c = s.candidates
    moe = isinstance(s.model, TransformerModel) and s.model.is_moe
    eps = c.expert_parallel if moe else [1]
    return [
        Candidate(g, p, t, e)
        for g in c.gpus
        for p in c.precisions
        for t in c.tensor_parallel
        for e in eps
        if t % e == 0  # tp x ep search: ep splits the experts among the tp GPUs
    ]


def _screen(s: Scenario, cat: Catalog, cand: Candidate) -> tuple[CandidateResult | None, object]:
    """Static checks: precision support, memory fit, single-request latency."""
    gpu = cat[cand.gpu]
    try:
        svc = make_service(s, gpu, cand.precision, cand.tp, cand.ep)
    except Unsupported as exc:
        return CandidateResult(cand, "dropped", f"precision unsupported: {exc}"), None
    fit = memory_fit(s, svc)
    if not fit.fits:
        return CandidateResult(cand, "dropped", f"does not fit: {fit.reason}"), None
    return None, svc


def replica_lower_bound(s: Scenario, svc, peak: float) -> int:
    """Fewest replicas whose best-case throughput covers the peak offered rate."""
    cap = replica_capacity_rps(s, svc)
    return max(1, math.ceil(peak / cap)) if cap > 0 else 1


def _min_latency_check(s: Scenario, svc) -> str | None:
    """A request alone on an idle replica already slower than the target cannot be fixed by scale."""
    return svc.idle_latency_violation(s)


def search_candidate(
    s: Scenario,
    cand: Candidate,
    catalog: Catalog | None = None,
    progress: Callable[[str], None] | None = None,
) -> CandidateResult:
    """Find the smallest replica count meeting the SLO for one candidate."""
    cat = catalog if catalog is not None else load_catalog()
    dropped, svc = _screen(s, cat, cand)
    if dropped is not None:
        return dropped
    slow = _min_latency_check(s, svc)
    if slow:
        return CandidateResult(cand, "infeasible", slow)
    peak = peak_rate(s)
    lo_bound = replica_lower_bound(s, svc, peak)
    cap = s.candidates.max_replicas
    res = CandidateResult(cand, "infeasible", "", lower_bound=lo_bound)
    if lo_bound > cap:
        res.reason = (
            f"needs at least {lo_bound} replicas for the peak {peak:.1f} req/s (max_replicas {cap})"
        )
        return res

    cache: dict[int, Evaluation] = {}

    def ev(n: int) -> Evaluation:
        if n not in cache:
            cfg = Config(cand.gpu, cand.precision, n, cand.tp, cand.ep)
            if progress:
                progress(f"{cand.label()}: {n} replicas")
            cache[n] = simulate(s, cfg, catalog=cat)
            res.evaluations.append(cache[n])
        return cache[n]

    # grow from the lower bound until feasible
    fail, n = lo_bound - 1, lo_bound
    while not ev(n).feasible:
        fail = n
        if n >= cap:
            e = ev(n)
            res.reason = f"cannot meet the target with up to {cap} replicas ({_miss(e)})"
            return res
        n = min(cap, max(n + 1, math.ceil(n * 1.5)))
    ok = n
    # bisect between the last failing and the first feasible count
    while ok - fail > 1:
        mid = (ok + fail) // 2
        if ev(mid).feasible:
            ok = mid
        else:
            fail = mid
    res.status, res.best = "feasible", ev(ok)
    res.reason = f"meets SLO with {_replicas(ok)}"
    res.evaluations.sort(key=lambda e: e.config.replicas)
    return res


def _miss(e: Evaluation) -> str:
    c = e.primary
    ci = c.ci
    if not math.isfinite(ci.mean):
        return e.verdict
    return (
        f"at {e.config.replicas}: p{c.percentile:g} {c.metric} {ci.mean * 1000:.1f} ms "
        f"[{ci.low * 1000:.1f}, {ci.high * 1000:.1f}] vs target {c.target_s * 1000:g} ms; {e.verdict}"
    )


def _replicas(n: int) -> str:
    return f"{n} replica" + ("" if n == 1 else "s")


def _rank_key(r: CandidateResult) -> tuple[float, int, float]:
    """Cheapest first; at equal price fewer GPUs, then the lower SLO upper limit."""
    e = r.best
    assert e is not None  # only feasible candidates are ranked
    return (round(e.usd_per_hour, 6), e.config.gpus, e.primary.ci.high / e.primary.target_s)


def _why_not_chosen(e: Evaluation, best: Evaluation) -> str:
    if round(e.usd_per_hour, 6) > round(best.usd_per_hour, 6):
        return (
            f"more expensive: ${e.usd_per_hour:.2f}/h vs ${best.usd_per_hour:.2f}/h "
            f"({_replicas(e.config.replicas)})"
        )
    same = f"same price (${e.usd_per_hour:.2f}/h)"
    if e.config.gpus > best.config.gpus:
        return f"{same} on more GPUs: {e.config.gpus} vs {best.config.gpus}"
    mine, theirs = e.primary, best.primary
    a, b = mine.ci.high / mine.target_s, theirs.ci.high / theirs.target_s
    if round(a, 4) == round(b, 4):
        return f"a tie: {same} and the same SLO headroom as the recommendation"
    return (
        f"{same} but less SLO headroom: p{mine.percentile:g} {mine.metric} upper limit "
        f"{a:.1%} of its target vs {b:.1%} ({mine.ci.high * 1000:.2f} ms vs "
        f"{theirs.ci.high * 1000:.2f} ms)"
    )


def _search_job(args: tuple[Scenario, Candidate, Catalog]) -> CandidateResult:
    s, cand, cat = args
    return search_candidate(s, cand, cat)


#: candidates are simulated in waves of this many, cheapest lower bound first; a candidate whose
#: capacity lower bound already costs more than the best feasible one is not simulated. Fixed
#: (not tied to --jobs) so that the result does not depend on the parallelism.
WAVE = 4


def lower_bound_cost(
    s: Scenario, cat: Catalog, cand: Candidate
) -> tuple[float, int, CandidateResult | None]:
    """($/hour at the capacity lower bound, that bound) — or the reason the candidate is out."""
    dropped, svc = _screen(s, cat, cand)
    if dropped is not None:
        return math.inf, 0, dropped
    slow = _min_latency_check(s, svc)
    if slow:
        return math.inf, 0, CandidateResult(cand, "infeasible", slow)
    lb = replica_lower_bound(s, svc, peak_rate(s))
    price = price_per_gpu_hour(cat[cand.gpu], price_provider(s)).usd_per_hour
    return price * lb * cand.tp, lb, None
