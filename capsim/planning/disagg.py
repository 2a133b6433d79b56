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
from capsim.sim.llm_disagg import handoff, run_prefill_pool
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


class Hopeless(Exception):
    """More replicas of this pool cannot meet the SLO (the reason is the message)."""


class _Searcher:
    """Runs shared by the pool searches (prefill runs cached by configuration and count)."""

    def __init__(self, s: Scenario, cat: Catalog, placement: str):
        self.s, self.cat, self.placement = s, cat, placement
        self.runs: dict[tuple[Candidate, int, int], Any] = {}
        self.evals: dict[DisaggFleet, DisaggEvaluation] = {}
        self.last_miss: dict[Candidate, str] = {}  # the last failing verdict per configuration

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
                self.last_miss[c] = f"overloaded at {x} replicas ({pre.unstable_reason})"
                return False
            _, output = llm_tokens(stream_for(s, rep))
            hand = handoff(
                pre, output, transfer_bytes_per_token(s, f), link,
                alarm_level(s.simulation.max_wait_s, 1.0),
            )  # fmt: skip
            if hand.reason:
                self.last_miss[c] = f"{hand.reason} at {x} replicas"
                return False
            first = hand.first
            ok = ~np.isnan(first)
            ttft = (first - pre.arrival)[ok]
            cut = warmup_cut(ttft, s.simulation.warmup, pre.arrival[ok]) if s.stationary else 0
            q, _, _ = series_metrics({"ttft": ttft[cut:]}, [s.slo.percentile])
            runs.append(RunMetrics(q, {}))
        ci = summarise(runs, s.simulation.confidence).q("ttft", s.slo.percentile)
        if decide(ci, target) == "meets":
            return True
        self.last_miss[c] = (
            f"p{s.slo.percentile:g} TTFT {ci.mean * 1000:.0f} ms [{ci.low * 1000:.0f}, "
            f"{ci.high * 1000:.0f}] vs {target * 1000:g} ms at {x} replicas"
        )
        return False

    def evaluate(self, f: DisaggFleet) -> DisaggEvaluation:
        if f not in self.evals:
            self.evals[f] = evaluate_disagg(
                self.s, self.cat, f, self.placement, prefill_runs=self.prefill_run
            )
        return self.evals[f]


def idle_miss(s: Scenario, svc: Any, phase: str) -> str:
    """Why an idle replica of this pool already misses its own target ('' if it does not):
    the prefill of the p-th percentile prompt against TTFT, or one decode step at batch 1
    and that prompt + output's context against TPOT."""
    p, o = token_sample(s)
    q = s.slo.percentile
    pq = int(np.percentile(p, q))
    if phase == "prefill" and s.slo.ttft_ms is not None:
        t = svc.idle_ttft_s(pq)
        if t * 1000 > s.slo.ttft_ms:
            return (
                f"an idle replica takes {t * 1000:.0f} ms to prefill the p{q:g} prompt "
                f"({pq:,} tokens) > TTFT target {s.slo.ttft_ms:g} ms"
            )
    if phase == "decode" and s.slo.tpot_ms is not None:
        ctx = pq + float(np.percentile(o, q))
        t = svc._decode_step(1, ctx)
        if t * 1000 > s.slo.tpot_ms:
            return (
                f"an idle replica takes {t * 1000:.1f} ms per output token (batch 1, context "
                f"{ctx:,.0f}) > TPOT target {s.slo.tpot_ms:g} ms"
            )
    return ""


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
        why = idle_miss(s, svc, phase)
        if why:
            dropped.append(PoolSizing(c, "dropped", why))
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
    last_miss: dict[Candidate, str],
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
        except Hopeless as exc:
            out.append(PoolSizing(c, "infeasible", str(exc), None, None, lb))
            continue
        if n is None:
            miss = last_miss.get(c, f"misses the SLO at {hi} replicas")
            out.append(PoolSizing(c, "infeasible", miss, None, None, lb))
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
    colocated: PlanResult | None,
    progress: Callable[[str], None] | None = None,
) -> DisaggPlan:
    """Size the prefill and decode pools, simulate the best pairs, compare with co-located
    (``colocated``: the co-located plan; None: the pools alone, as what-if sizes them)."""
    d = s.disaggregation
    assert d is not None
    sr = _Searcher(s, cat, d.placement)
    p_drop, p_ok = _screened(s, cat, d.prefill, "prefill")
    pre = _size(
        s, cat, p_ok, d.prefill.max_replicas, sr.ttft_meets, progress, "prefill", sr.last_miss
    )
    sized_p = sorted((r for r in pre if r.status == "sized"), key=lambda r: r.usd_per_hour or 0)
    d_drop, d_ok = _screened(s, cat, d.decode, "decode")
    dec: list[PoolSizing] = []
    if sized_p:
        top = sized_p[0]
        assert top.replicas is not None

        def fleet_ok(c: Candidate, y: int) -> bool:
            e = sr.evaluate(DisaggFleet(top.candidate, top.replicas or 1, c, y))
            ttft = e.check("ttft")
            if not e.feasible and ttft is not None and ttft.verdict != "meets":
                raise Hopeless(  # more decode replicas do not move the prefill or the link
                    f"p{ttft.percentile:g} TTFT {ttft.ci.mean * 1000:.0f} ms "
                    f"[{ttft.ci.low * 1000:.0f}, {ttft.ci.high * 1000:.0f}] not within "
                    f"{ttft.target_s * 1000:g} ms behind {top.replicas} x "
                    f"{top.candidate.label()} with the KV transfer "
                    f"({e.placement.replace('_', ' ')}, p99 "
                    f"{e.summary.scalars['kv_transfer_p99_s'].mean * 1000:.0f} ms)"
                )
            if not e.feasible:
                sr.last_miss[c] = f"{e.verdict} at {y} replicas"
            return e.feasible

        dec = _size(s, cat, d_ok, d.decode.max_replicas, fleet_ok, progress, "decode", sr.last_miss)
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
    if colocated is None:
        return DisaggPlan(p_drop + pre, d_drop + dec, tried, best, None, "", "")
    colo = colocated.recommendation.best if colocated.recommendation is not None else None
    winner, reason = compare(s, colo, best, colocated)
    return DisaggPlan(p_drop + pre, d_drop + dec, tried, best, colo, winner, reason)


def _binding(checks) -> Any:
    return max(checks, key=lambda c: c.ci.high / c.target_s) if checks else None


def _check_txt(c: Any) -> str:
    return (
        f"p{c.percentile:g} {c.metric} {c.ci.mean * 1000:.0f} ms (target {c.target_s * 1000:g} ms)"
    )


def same_card_colocated(colocated: PlanResult | None, c: Candidate) -> str:
    """What the co-located plan found for the decode pool's configuration, as evidence."""
    if colocated is None:
        return ""
    r = next((r for r in colocated.results if r.candidate == c), None)
    if r is None:
        return ""
    if r.status == "feasible" and r.best is not None:
        cb = _binding(r.best.checks)
        held = f" to hold {_check_txt(cb)}" if cb else ""
        return f"co-located {c.label()} needs {r.best.config.replicas} replicas{held}"
    return f"co-located {c.label()} is {r.status}: {r.reason}"


def compare(
    s: Scenario,
    colo: Evaluation | None,
    dis: DisaggEvaluation | None,
    colocated: PlanResult | None = None,
) -> tuple[str, str]:
    """(winner, why) of co-located against disaggregated serving at the same SLO; the plan of
    the co-located candidates (``colocated``) gives the evidence for the decode pool's card."""
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
    c_txt = _check_txt(cb) if cb else "its SLO"
    evidence = same_card_colocated(colocated, f.decode)
    if dis.usd_per_hour < colo.usd_per_hour - 1e-9:
        gain = 1 - dis.usd_per_hour / colo.usd_per_hour
        why = (
            f"disaggregated is {gain:.1%} cheaper (${dis.usd_per_hour:.2f}/h, {f.gpus} GPUs vs "
            f"${colo.usd_per_hour:.2f}/h for {colo.config.label()}, binding {c_txt})"
        )
        if evidence and not evidence.startswith(f"co-located {colo.config.gpu} "):
            why += f"; {evidence}"
        why += (
            ". In a co-located replica prefill chunks share iterations with decodes and stretch "
            "decode steps, and prefills queue behind decodes; split, the decode pool runs "
            "decode-only iterations and the prefill pool is sized for TTFT alone "
            f"(KV transfer p99 {kv:.1f} ms, {dis.placement.replace('_', ' ')})"
        )
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
