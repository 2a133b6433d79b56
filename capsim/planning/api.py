"""The planner's entry point: the static search, then the autoscaling tuning when the scenario asks."""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor

from capsim.evaluate import check_measurable
from capsim.load import load_catalog
from capsim.planning.autoscaled import plan_autoscaled
from capsim.planning.disagg import plan_disagg
from capsim.planning.explain import trace_lines
from capsim.planning.mixed import plan_mix
from capsim.planning.parallel import local_executor, run_tasks
from capsim.planning.static import (
    WAVE,
    Candidate,
    CandidateResult,
    PlanResult,
    _rank_key,
    _replicas,
    _search_job,
    _why_not_chosen,
    candidates,
    lower_bound_cost,
)
from capsim.spec.catalog import Catalog
from capsim.spec.precision import get_precision
from capsim.spec.scenario import Scenario
from capsim.workload.streams import peak_rate


def plan(
    s: Scenario,
    catalog: Catalog | None = None,
    *,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> PlanResult:
    """Search every candidate; the recommendation is the cheapest feasible configuration.

    Candidates that cannot run are dropped with their reason; the others are simulated in
    order of their lower-bound cost, and those that cannot beat the best found so far even at
    their capacity lower bound are reported as such without being simulated.
    """
    cat = catalog if catalog is not None else load_catalog()
    check_measurable(s)
    cands = candidates(s)
    for c in cands:
        get_precision(c.precision)
    results: list[CandidateResult] = []
    queue: list[tuple[float, int, int, Candidate]] = []
    for i, c in enumerate(cands):
        cost, lb, out = lower_bound_cost(s, cat, c)
        if out is not None:
            results.append(out)
        else:
            queue.append((cost, i, lb, c))
    queue.sort()
    best_cost = math.inf
    pool = executor if executor is not None else local_executor(jobs, len(queue))
    done = len(results)
    try:
        for w in range(0, len(queue), WAVE):
            todo = []
            for cost, _, lb, c in queue[w : w + WAVE]:
                if cost > best_cost + 1e-9:
                    results.append(
                        CandidateResult(
                            c,
                            "skipped",
                            f"more expensive even at its capacity lower bound: {_replicas(lb)} "
                            f"= ${cost:.2f}/h > ${best_cost:.2f}/h (not simulated)",
                            lower_bound=lb,
                        )
                    )
                else:
                    todo.append(c)
            wave = run_tasks(_search_job, [(s, c, cat) for c in todo], pool)
            for r in wave:
                done += 1
                if progress:
                    progress(f"[{done}/{len(cands)}] {r.candidate.label()}: {r.reason}")
                if r.status == "feasible":
                    assert r.best is not None  # a feasible candidate has its cheapest setting
                    best_cost = min(best_cost, r.best.usd_per_hour)
            results.extend(wave)
    finally:
        if pool is not None and executor is None:
            pool.shutdown()
    order = {c: i for i, c in enumerate(cands)}
    results.sort(key=lambda r: order[r.candidate])
    feasible = [r for r in results if r.status == "feasible"]
    best = min(feasible, key=_rank_key, default=None)
    for r in feasible:
        if r is not best:
            assert best is not None and r.best is not None and best.best is not None
            r.reason = _why_not_chosen(r.best, best.best)
    result = PlanResult(s, results, best, peak_rate(s), cat)
    if best is not None:
        result.trace = trace_lines(result)
    if s.mix is not None:  # size-routed pools of different cards, against the best single card
        result.mixed = plan_mix(s, cat, result, progress=progress)
    if s.disaggregation is not None:  # prefill and decode pools, against co-located
        result.disagg = plan_disagg(s, cat, result, progress=progress)
    if s.autoscaling is not None:  # tune the policy per finalist, against the fixed baseline
        result.autoscaled = plan_autoscaled(
            s, result, cat, jobs=jobs, progress=progress, executor=executor
        )
    return result
