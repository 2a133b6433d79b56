"""Mixed-fleet planning: an integer program proposes mixes, simulation confirms them.

The requests are split by size (prompt + output tokens) into buckets (``mix.size_thresholds``).
Each card configuration ``c`` has a capacity ``cap[c, b]`` for bucket ``b`` (requests/s per
replica: the optimistic capacity estimate for that bucket's mean prompt and output, times
``mix.utilisation``; 0 where an idle replica already misses the TTFT target for the bucket's
p-th percentile prompt). The allocation, as in Mélange (Griggs et al. 2024, arXiv:2404.14527),
is the integer program

    minimise    sum_c price_c * tp_c * n_c
    subject to  sum_c y[c, b] = 1                         (each bucket goes to one pool)
                sum_b load_b / cap[c, b] * y[c, b] <= n_c  (a pool covers its buckets' work)
                y binary, n integer >= 0

solved with ``scipy.optimize.milp``; the next-best proposals come from excluding each
assignment found. Each proposal that mixes card types is then searched by simulation (per
pool, the fewest replicas meeting the SLO on the pool's own requests) and the fleet is judged
on the merged latencies.

>>> import numpy as np
>>> allocate(np.array([10.0, 1.0]), np.array([[10.0, 0.1], [20.0, 2.0]]), np.array([1.0, 3.0]))[0]
(((0, 1), (1, 1)), {1: 1}, 3.0)
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from capsim.analysis.cost import price_per_gpu_hour
from capsim.evaluate import runnable_service, stream_for
from capsim.planning.mixed_sim import (
    MixEvaluation,
    Pool,
    evaluate_least_work,
    evaluate_mix,
    judge,
    run_pool,
)
from capsim.planning.static import Candidate, PlanResult, _screen, candidates
from capsim.sim.llm_adapter import LLMService
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario
from capsim.workload.arrivals import RequestStream
from capsim.workload.split import buckets
from capsim.workload.streams import peak_rate

#: an assignment: for each bucket, (bucket, candidate index)
Assignment = tuple[tuple[int, int], ...]


def allocate(
    load: np.ndarray, cap: np.ndarray, price: np.ndarray, k: int = 1
) -> list[tuple[Assignment, dict[int, int], float]]:
    """Up to ``k`` cheapest bucket→candidate assignments with their replica counts and $/hour.

    ``load[b]`` requests/s, ``cap[c, b]`` requests/s per replica (0: cannot serve),
    ``price[c]`` $/hour per replica.

    >>> a, n, usd = allocate(np.array([4.0]), np.array([[1.0], [3.0]]), np.array([1.0, 2.5]))[0]
    >>> a, n, usd
    (((0, 0),), {0: 4}, 4.0)
    """
    nc, nb = cap.shape
    ny = nc * nb  # y[c, b] at c * nb + b, then n[c]
    work = np.where(cap > 0, load[None, :] / np.where(cap > 0, cap, 1.0), 0.0)
    cost = np.concatenate([np.zeros(ny), price])
    rows: list[np.ndarray] = []
    lo: list[float] = []
    hi: list[float] = []
    for b in range(nb):  # each bucket to exactly one candidate
        r = np.zeros(ny + nc)
        r[[c * nb + b for c in range(nc)]] = 1
        rows.append(r)
        lo.append(1.0)
        hi.append(1.0)
    for c in range(nc):  # work of the buckets given to c within its replicas
        r = np.zeros(ny + nc)
        r[c * nb : (c + 1) * nb] = work[c]
        r[ny + c] = -1
        rows.append(r)
        lo.append(-np.inf)
        hi.append(0.0)
    ub = np.concatenate([np.where(cap > 0, 1.0, 0.0).ravel(), np.full(nc, np.inf)])
    out: list[tuple[Assignment, dict[int, int], float]] = []
    for _ in range(k):
        res = milp(
            cost,
            constraints=LinearConstraint(np.array(rows), lo, hi),
            integrality=np.ones(ny + nc),
            bounds=Bounds(np.zeros(ny + nc), ub),
        )
        if res.x is None:
            break
        y = np.round(res.x[:ny]).reshape(nc, nb)
        assign = tuple((b, int(np.argmax(y[:, b]))) for b in range(nb))
        n = {c: int(round(res.x[ny + c])) for c in sorted({c for _, c in assign})}
        out.append((assign, n, float(sum(price[c] * m for c, m in n.items()))))
        cut = np.zeros(ny + nc)  # exclude this assignment next time
        cut[[c * nb + b for b, c in assign]] = 1
        rows.append(cut)
        lo.append(-np.inf)
        hi.append(nb - 1.0)
    return out


@dataclass
class MixProposal:
    """One proposed mix: the MILP's counts, then the simulated search's outcome."""

    pools_milp: tuple[Pool, ...]
    usd_milp: float
    status: str = "proposed"  # feasible | infeasible | single
    reason: str = ""
    best: MixEvaluation | None = None


@dataclass
class MixPlan:
    """Mixes proposed and confirmed, and how the best compares with the best single card."""

    thresholds: list[int]
    shares: list[float]
    proposals: list[MixProposal]
    best: MixProposal | None
    single_usd: float | None
    single_label: str | None
    notes: list[str] = field(default_factory=list)
    least_work: MixEvaluation | None = None  # the best mix's cards behind a least-work router

    @property
    def best_usd(self) -> float | None:
        """$/hour of the cheapest feasible mix (size-routed or least-work-routed)."""
        c = [self.best.best.usd_per_hour] if self.best is not None and self.best.best else []
        if self.least_work is not None and self.least_work.feasible:
            c.append(self.least_work.usd_per_hour)
        return min(c) if c else None

    @property
    def saving(self) -> float | None:
        """Fraction saved by the best mix over the best single card (negative: it costs more)."""
        best = self.best_usd
        if best is None or not self.single_usd:
            return None
        return 1 - best / self.single_usd


def bucket_stats(s: Scenario) -> tuple[np.ndarray, list[tuple[float, float, int]]]:
    """Each bucket's peak load (req/s) and (mean prompt, mean output, p-th percentile prompt)."""
    assert s.mix is not None
    st = stream_for(s, 0)
    assert isinstance(st, RequestStream) and st.prompt_tokens is not None
    assert st.output_tokens is not None
    b = buckets(st, s.mix.size_thresholds)
    nb = len(s.mix.size_thresholds) + 1
    peak, stats = peak_rate(s), []
    load = np.zeros(nb)
    for i in range(nb):
        m = b == i
        load[i] = peak * m.mean() if len(b) else 0.0
        if m.any():
            p, o = st.prompt_tokens[m], st.output_tokens[m]
            stats.append(
                (float(p.mean()), float(o.mean()), int(np.percentile(p, s.slo.percentile)))
            )
        else:
            stats.append((1.0, 1.0, 1))
    return load, stats


def capacity_table(
    s: Scenario, cat: Catalog, stats: list[tuple[float, float, int]]
) -> tuple[list[Candidate], np.ndarray, np.ndarray]:
    """The runnable candidates, their capacity per bucket at the SLO, and $/hour per replica."""
    assert s.mix is not None
    cands, caps, prices = [], [], []
    for c in candidates(s):
        dropped, svc = _screen(s, cat, c)
        if dropped is not None or not isinstance(svc, LLMService):
            continue
        row = []
        for mp, mo, pq in stats:
            slow = s.slo.ttft_ms is not None and svc.idle_ttft_s(pq) * 1000 > s.slo.ttft_ms
            row.append(0.0 if slow else s.mix.utilisation * svc.throughput_for(mp, mo))
        if max(row) <= 0:
            continue
        cands.append(c)
        caps.append(row)
        prices.append(
            price_per_gpu_hour(cat[c.gpu], s.candidates.price_provider).usd_per_hour * c.tp
        )
    return cands, np.array(caps).reshape(len(cands), -1), np.array(prices)


def _pools(cands: list[Candidate], assign: Assignment, n: dict[int, int]) -> tuple[Pool, ...]:
    by: dict[int, list[int]] = {}
    for b, c in assign:
        by.setdefault(c, []).append(b)
    return tuple(Pool(cands[c], tuple(bs), max(1, n[c])) for c, bs in sorted(by.items()))


def _pool_ok(s: Scenario, cat: Catalog, pool: Pool, cache: dict) -> bool:
    runs = []
    for rep in range(s.simulation.replications):
        if (pool, rep) not in cache:
            cache[(pool, rep)] = run_pool(s, cat, pool, rep)
        runs.append(cache[(pool, rep)].metrics)
        if runs[-1].unstable:
            return False
    return judge(s, runs)[2]


def search_pool(s: Scenario, cat: Catalog, pool: Pool, cache: dict) -> Pool | None:
    """The fewest replicas (from the MILP's count, up or down) meeting the SLO on the pool's
    own requests; None when even ``max_replicas`` does not."""
    cap = s.candidates.max_replicas

    def at(n: int) -> Pool:
        return Pool(pool.candidate, pool.buckets, n)

    n = min(pool.replicas, cap)
    if _pool_ok(s, cat, at(n), cache):
        ok, fail = n, 0
        while ok - 1 > fail and _pool_ok(s, cat, at(ok - 1), cache):  # step down while it holds
            ok -= 1
        return at(ok)
    fail = n
    while True:
        if fail >= cap:
            return None
        n = min(cap, max(fail + 1, math.ceil(fail * 1.5)))
        if _pool_ok(s, cat, at(n), cache):
            break
        fail = n
    ok = n
    while ok - fail > 1:
        mid = (ok + fail) // 2
        if _pool_ok(s, cat, at(mid), cache):
            ok = mid
        else:
            fail = mid
    return at(ok)


def plan_mix(
    s: Scenario,
    cat: Catalog,
    single: PlanResult | None = None,
    progress: Callable[[str], None] | None = None,
) -> MixPlan:
    """Propose mixes with the MILP, confirm each by simulation, compare with ``single``'s best."""
    assert s.mix is not None
    load, stats = bucket_stats(s)
    cands, cap, price = capacity_table(s, cat, stats)
    props = allocate(load, cap, price, k=s.mix.proposals + 4) if cands else []
    rec = single.recommendation if single is not None else None
    single_usd = rec.best.usd_per_hour if rec is not None and rec.best is not None else None
    shares = (load / load.sum()).tolist() if load.sum() > 0 else [0.0] * len(load)
    plan = MixPlan(
        list(s.mix.size_thresholds), shares, [], None, single_usd,
        rec.candidate.label() if rec is not None else None,
    )  # fmt: skip
    cache: dict = {}
    for assign, n, usd in props:
        pools = _pools(cands, assign, n)
        if len(pools) < 2:
            continue  # one card type: the single-card plan covers it
        if len(plan.proposals) >= s.mix.proposals:
            break
        prop = MixProposal(pools, usd)
        plan.proposals.append(prop)
        if progress:
            progress(f"mix: {' + '.join(p.label() for p in pools)}")
        found = [search_pool(s, cat, p, cache) for p in pools]
        if any(p is None for p in found):
            prop.status, prop.reason = (
                "infeasible",
                "a pool cannot meet the SLO within max_replicas",
            )
            continue
        ev = evaluate_mix(s, cat, [p for p in found if p is not None], cache)
        prop.best = ev
        prop.status = "feasible" if ev.feasible else "infeasible"
        prop.reason = ev.verdict
    ok = [p for p in plan.proposals if p.status == "feasible" and p.best is not None]
    plan.best = min(ok, key=lambda p: p.best.usd_per_hour if p.best else math.inf, default=None)
    base = plan.best or next((p for p in plan.proposals if p.best is not None), None)
    if s.mix.routing == "least_work" and base is not None and base.best is not None:
        if progress:
            progress("mix: least-outstanding-work routing")
        plan.least_work = search_least_work(s, cat, base.best.pools)
    return plan


def search_least_work(
    s: Scenario, cat: Catalog, pools: tuple[Pool, ...], budget: int = 10
) -> MixEvaluation:
    """The same card types behind a least-outstanding-work router: from the size-routed
    counts, add a replica to the pool with the most capacity per dollar until the fleet meets
    the SLO, then take replicas away (dearest pool first) while it still does; at most
    ``budget`` fleet simulations."""
    cur = [Pool(p.candidate, (), p.replicas) for p in pools]
    ev = evaluate_least_work(s, cat, cur)
    used = 1
    value = []  # capacity per $ of one replica, for growing
    for p in cur:
        c = p.candidate
        svc = runnable_service(s, cat[c.gpu], c.precision, c.tp)
        price = price_per_gpu_hour(cat[c.gpu], s.candidates.price_provider).usd_per_hour * c.tp
        value.append(svc.max_throughput_rps(s) / price)
    grow = int(np.argmax(value))
    while not ev.feasible and used < budget and cur[grow].replicas < s.candidates.max_replicas:
        cur[grow] = Pool(cur[grow].candidate, (), cur[grow].replicas + 1)
        ev, used = evaluate_least_work(s, cat, cur), used + 1
    if not ev.feasible:
        return ev
    for i in sorted(range(len(cur)), key=lambda i: -value[i]):
        while cur[i].replicas > 1 and used < budget:
            trial = list(cur)
            trial[i] = Pool(cur[i].candidate, (), cur[i].replicas - 1)
            e, used = evaluate_least_work(s, cat, trial), used + 1
            if not e.feasible:
                break
            cur, ev = trial, e
    return ev
