"""Plan disaggregated prefill/decode fleets (xPyD) and compare them with co-located serving.

The pools do not feed back into each other, so they are sized one after the other:

1. **Prefill pool.** Each prefill configuration (card x precision x tp) that can run is sized
   to the fewest replicas whose p99 TTFT (queueing + prefill + KV transfer) meets the target;
   the configurations are tried cheapest lower bound first, and one that cannot beat the
   cheapest sized pool even at its bound is skipped.
2. **Decode pool.** Behind the cheapest prefill pool, each decode configuration is sized to
   the fewest replicas for which the whole fleet meets every target (TPOT, e2e, rejections).
3. **Pairs.** The best ``pairs`` prefill x decode combinations are simulated whole (the link
   depends on both: same node or across nodes) and the cheapest feasible one is the answer.
4. **Compare** with the cheapest co-located configuration of the same plan (same streams:
   common random numbers) and say why the winner wins.

Replica counts are searched as in the co-located planner: grow until the SLO's upper
confidence limit meets the target, then bisect; a count whose interval straddles the target
counts as failing (no replications are added).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from capsim.analysis.metrics import RunMetrics, series_metrics, summarise, warmup_cut
from capsim.analysis.stats import decide
from capsim.evaluate import Evaluation, stream_for
from capsim.planning.disagg_sim import (
    DisaggEvaluation,
    DisaggFleet,
    LinkProblem,
    _pool,
    evaluate_disagg,
    fleet_price,
    kv_link,
    prefill_chains,
    resolve_placement,
    transfer_bytes_per_token,
)
from capsim.planning.static import Candidate, PlanResult, _screen
from capsim.sim.llm_adapter import llm_tokens, token_sample
from capsim.sim.llm_disagg import first_tokens, link_overload, run_prefill_pool
from capsim.sim.overload import alarm_level
from capsim.spec.catalog import Catalog
from capsim.spec.disagg import PoolChoices
from capsim.spec.scenario import Scenario
from capsim.workload.arrivals import RequestStream
from capsim.workload.streams import peak_rate


@dataclass
class PoolSizing:
    """One pool configuration: its replica count, or why it has none."""

    candidate: Candidate
    status: str  # sized | dropped | infeasible | skipped
    reason: str
    replicas: int | None = None
    usd_per_hour: float | None = None
    lower_bound: int = 1


@dataclass
class DisaggPlan:
    """The disaggregated search and its comparison with co-located serving."""

    prefill: list[PoolSizing]
    decode: list[PoolSizing]
    tried: list[DisaggEvaluation]
    best: DisaggEvaluation | None
    colocated: Evaluation | None
    winner: str  # disaggregated | co-located | neither
    reason: str
    notes: list[str] = field(default_factory=list)


def pool_candidates(s: Scenario, choices: PoolChoices) -> list[Candidate]:
    """Card x precision x tp of one pool (``None`` lists: the scenario's candidates)."""
    c = s.candidates
    return [
        Candidate(g, p, t)
        for g in choices.gpus or c.gpus
        for p in choices.precisions or c.precisions
        for t in choices.tensor_parallel or c.tensor_parallel
    ]


def _price(s: Scenario, cat: Catalog, c: Candidate, n: int) -> float:
    return fleet_price(s, cat, DisaggFleet(c, n, c, 0))["prefill"]


def smallest(ok: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The smallest n in [lo, hi] with ok(n), for ok monotone in n: grow, then bisect.

    >>> smallest(lambda n: n >= 7, 1, 64)
    7
    >>> smallest(lambda n: False, 1, 8) is None
    True
    """
    bad, n = lo - 1, lo
    while n <= hi and not ok(n):
        bad, n = n, min(hi + 1, n + max(1, n - lo + 1))
    if n > hi:
        return None
    good = n
    while good - bad > 1:
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good


class _Searcher:
    """Runs shared by the pool searches (prefill runs cached by configuration and count)."""

    def __init__(self, s: Scenario, cat: Catalog, placement: str):
        self.s, self.cat, self.placement = s, cat, placement
        self.runs: dict[tuple[Candidate, int, int], Any] = {}
        self.evals: dict[DisaggFleet, DisaggEvaluation] = {}

    def prefill_run(self, c: Candidate, x: int, rep: int):
        key = (c, x, rep)
        if key not in self.runs:
            s = self.s
            st = stream_for(s, rep)
            assert isinstance(st, RequestStream)  # open-loop traffic (the scenario checks)
            prompt, output = llm_tokens(st)
            pool, svc = _pool(s, self.cat, c, x)
            self.runs[key] = run_prefill_pool(
                st.arrival, prompt, pool, router=s.fleet.router,
                max_wait_s=alarm_level(s.simulation.max_wait_s, svc.time_scale_s(s)),  # type: ignore[attr-defined]
                max_queue_length=s.fleet.max_queue_length, horizon=st.horizon,
                chains=prefill_chains(s, st, svc, prompt, output),
            )  # fmt: skip
        return self.runs[key]

    def ttft_meets(self, c: Candidate, x: int) -> bool:
        """The prefill pool alone (+ the KV transfer to a decode pool of the same
        configuration and size) meets the TTFT target."""
        s = self.s
        target = s.slo.ttft_ms / 1000 if s.slo.ttft_ms is not None else math.inf
        f = DisaggFleet(c, x, c, x)
        link = kv_link(self.cat, f, resolve_placement(self.cat, f, self.placement))
        runs = []
        for rep in range(s.simulation.replications):
            pre = self.prefill_run(c, x, rep)
            if pre.unstable:
                return False
            _, output = llm_tokens(stream_for(s, rep))
            first, moved, nbytes = first_tokens(pre, output, transfer_bytes_per_token(s, f), link)
            if link_overload(moved, nbytes, link, alarm_level(s.simulation.max_wait_s, 1.0)):
                return False
            ok = ~np.isnan(first)
            ttft = (first - pre.arrival)[ok]
            cut = warmup_cut(ttft, s.simulation.warmup, pre.arrival[ok]) if s.stationary else 0
            q, _, _ = series_metrics({"ttft": ttft[cut:]}, [s.slo.percentile])
            runs.append(RunMetrics(q, {}))
        ci = summarise(runs, s.simulation.confidence).q("ttft", s.slo.percentile)
        return decide(ci, target) == "meets"

    def evaluate(self, f: DisaggFleet) -> DisaggEvaluation:
        if f not in self.evals:
            self.evals[f] = evaluate_disagg(
                self.s, self.cat, f, self.placement, prefill_runs=self.prefill_run
            )
        return self.evals[f]


def _screened(s: Scenario, cat: Catalog, choices: PoolChoices, phase: str):
    """(sizings of dropped configurations, [(candidate, svc, lower bound)] of the others)."""
    peak = peak_rate(s)
    p, o = token_sample(s)
    mp, mo = float(np.mean(p)), float(np.mean(o))
    dropped, ok = [], []
    for c in pool_candidates(s, choices):
        out, svc = _screen(s, cat, c)
        if out is not None:
            dropped.append(PoolSizing(c, "dropped", out.reason))
            continue
        if phase == "prefill":
            cap = svc.throughput_for(mp, 1)  # type: ignore[attr-defined]
        else:
            cap = svc.throughput_for(mp, mo, computed=0)  # type: ignore[attr-defined]
        lb = max(1, math.ceil(peak / cap)) if cap > 0 else 1
        ok.append((c, svc, lb))
    ok.sort(key=lambda t: (_price(s, cat, t[0], t[2]), t[0].tp))
    return dropped, ok


def _size(
    s: Scenario,
    cat: Catalog,
    screened,
    hi: int,
    ok_at: Callable[[Candidate, int], bool],
    progress: Callable[[str], None] | None,
    phase: str,
) -> list[PoolSizing]:
    out: list[PoolSizing] = []
    best = math.inf
    for c, _svc, lb in screened:
        lb_usd = _price(s, cat, c, lb)
        if lb_usd > best + 1e-9:
            out.append(PoolSizing(c, "skipped", f"${lb_usd:.2f}/h at its lower bound", None,
                                  None, lb))  # fmt: skip
            continue
        try:
            n = smallest(functools.partial(ok_at, c), lb, hi)
        except LinkProblem as exc:
            out.append(PoolSizing(c, "dropped", str(exc), None, None, lb))
            continue
        if n is None:
            out.append(PoolSizing(c, "infeasible", f"misses the SLO at {hi} replicas", None,
                                  None, lb))  # fmt: skip
        else:
            usd = _price(s, cat, c, n)
            best = min(best, usd)
            out.append(PoolSizing(c, "sized", f"{n} replicas", n, usd, lb))
        if progress:
            progress(f"[disaggregated {phase}] {c.label()}: {out[-1].reason}")
    return out


def plan_disagg(
    s: Scenario,
    cat: Catalog,
    colocated: PlanResult,
    progress: Callable[[str], None] | None = None,
) -> DisaggPlan:
    """Size the prefill and decode pools, simulate the best pairs, compare with co-located."""
    d = s.disaggregation
    assert d is not None
    sr = _Searcher(s, cat, d.placement)
    p_drop, p_ok = _screened(s, cat, d.prefill, "prefill")
    pre = _size(s, cat, p_ok, d.prefill.max_replicas, sr.ttft_meets, progress, "prefill")
    sized_p = sorted((r for r in pre if r.status == "sized"), key=lambda r: r.usd_per_hour or 0)
    d_drop, d_ok = _screened(s, cat, d.decode, "decode")
    dec: list[PoolSizing] = []
    if sized_p:
        top = sized_p[0]
        assert top.replicas is not None

        def fleet_ok(c: Candidate, y: int) -> bool:
            return sr.evaluate(DisaggFleet(top.candidate, top.replicas or 1, c, y)).feasible

        dec = _size(s, cat, d_ok, d.decode.max_replicas, fleet_ok, progress, "decode")
    sized_d = sorted((r for r in dec if r.status == "sized"), key=lambda r: r.usd_per_hour or 0)
    tried: list[DisaggEvaluation] = []
    for pr in sized_p[:2]:
        for dr in sized_d[:2]:
            if len(tried) >= d.pairs:
                break
            assert pr.replicas is not None and dr.replicas is not None
            try:
                tried.append(sr.evaluate(DisaggFleet(pr.candidate, pr.replicas, dr.candidate,
                                                     dr.replicas)))  # fmt: skip
            except LinkProblem:
                continue
    feasible = [e for e in tried if e.feasible]
    best = min(feasible, key=lambda e: (e.usd_per_hour, e.fleet.gpus), default=None)
    colo = colocated.recommendation.best if colocated.recommendation is not None else None
    winner, reason = compare(s, colo, best)
    return DisaggPlan(p_drop + pre, d_drop + dec, tried, best, colo, winner, reason)


def _binding(checks) -> Any:
    return max(checks, key=lambda c: c.ci.high / c.target_s) if checks else None


def compare(s: Scenario, colo: Evaluation | None, dis: DisaggEvaluation | None) -> tuple[str, str]:
    """(winner, why) of co-located against disaggregated serving at the same SLO."""
    if colo is None and dis is None:
        return "neither", "neither co-located nor disaggregated serving meets the SLO"
    if dis is None:
        return "co-located", "no disaggregated fleet meets the SLO within the searched sizes"
    if colo is None:
        return "disaggregated", "no co-located configuration meets the SLO"
    f = dis.fleet
    sc = dis.summary.scalars
    kv = sc["kv_transfer_p99_s"].mean * 1000
    cb = _binding(colo.checks)
    c_txt = (
        f"p{cb.percentile:g} {cb.metric} {cb.ci.mean * 1000:.0f} ms (target {cb.target_s * 1000:g} ms)"
        if cb
        else "its SLO"
    )
    if dis.usd_per_hour < colo.usd_per_hour - 1e-9:
        gain = 1 - dis.usd_per_hour / colo.usd_per_hour
        why = (
            f"disaggregated is {gain:.1%} cheaper (${dis.usd_per_hour:.2f}/h, {f.gpus} GPUs vs "
            f"${colo.usd_per_hour:.2f}/h, {colo.config.gpus} GPUs): co-located replicas are sized "
            f"by {c_txt}"
        )
        if cb is not None and cb.metric == "tpot":
            why += (
                " because prefill chunks share iterations with decodes and stretch every "
                "decode step; the decode pool runs decode-only iterations"
            )
        why += f" (KV transfer p99 {kv:.1f} ms, {dis.placement.replace('_', ' ')})"
        return "disaggregated", why
    loss = dis.usd_per_hour / colo.usd_per_hour - 1
    more = f"{loss:.1%} more" if loss > 1e-9 else "the same: the simpler fleet stands"
    why = (
        f"co-located costs no more (${colo.usd_per_hour:.2f}/h, {colo.config.gpus} GPUs vs "
        f"${dis.usd_per_hour:.2f}/h, {f.gpus} GPUs for the best split, {more}): one "
        f"pool shares every GPU between prefill and decode, while split pools are each sized "
        f"for their own peak (prefill busy {sc['prefill_busy_share'].mean:.0%}) and the KV "
        f"transfer adds {kv:.1f} ms to p99 TTFT; co-located meets {c_txt}"
    )
    return "co-located", why
