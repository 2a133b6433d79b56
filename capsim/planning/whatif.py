"""What-if: several autoscaling policies on the same traffic, in real time, side by side.

``whatif(scenario)`` runs each policy (the scenario's ``whatif.policies``, else its
``autoscaling`` policy and a fixed fleet sized for the peak) over the whole horizon without
compression, on the same request streams and service-time jitter (common random numbers), for
``replications`` independent replications. Per policy it measures, from the per-request arrays
and the replica records:

* SLO attainment: the fraction of requests (rejected ones count as misses) within the latency
  target, over the horizon and per hour;
* p50...p99.9 over the horizon with t-intervals over replications (non-stationary load: no
  warm-up deletion), p99 per window (by arrival time) and time in violation (windows whose p99
  exceeds the target);
* cost: GPU-seconds billed from request to release x price; GPU-hours; average and peak
  replicas; idle share (billed time not busy: warm idle plus provisioning);
* energy: busy batches at their power, warm idle between batches, provisioning at idle power.

>>> from capsim.load import load_scenario
>>> s = load_scenario("scenarios/embedding_autoscaled.yaml")
>>> [p.label for p in policies_for(s)][:2]
['fixed-peak', 'hpa-util']
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from capsim.analysis.capacity import capacity_prices, price_provider
from capsim.analysis.cost import price_per_gpu_hour
from capsim.analysis.stats import CI, t_interval
from capsim.analysis.whatif_metrics import AutoscaledRun
from capsim.errors import InputError
from capsim.evaluate import check_measurable, make_service, runnable_service, slo_targets
from capsim.load import load_catalog
from capsim.planning.parallel import run_tasks
from capsim.planning.static import Candidate, search_candidate
from capsim.planning.whatif_run import run_policy
from capsim.spec.autoscaling import FixedSpec
from capsim.spec.catalog import Catalog
from capsim.spec.precision import PRECISIONS
from capsim.spec.scenario import Scenario
from capsim.workload.streams import check_traffic, real_time, sim_horizon

#: what-if columns of a fleet with ``capacity:`` (cost by tier, spot interruptions)
CAPACITY_KEYS = (
    "cost_base_usd",
    "cost_burst_usd",
    "on_demand_cost_usd",
    "saving_vs_on_demand_usd",
    "interruptions",
    "requeued",
    "missed_notices",
)


# =========================================================================== summaries
@dataclass
class PolicyResult:
    """One policy over its replications.

    ``targets`` maps each SLO metric (``latency``; or ``ttft``, ``tpot``, ``e2e``) to its target
    in seconds; the policy meets the SLO when every metric's upper confidence limit does.
    """

    name: str
    spec: Any
    runs: list[AutoscaledRun]
    confidence: float
    targets: dict[str, float]
    percentile: float
    max_rejection_rate: float
    fixed_replicas: int | None = None
    saving: CI | None = None  # vs the baseline, $ over the horizon (paired differences)
    saving_share: float | None = None
    compression: float = 1.0  # > 1: screened on a day compressed this many times

    @classmethod
    def of(
        cls,
        s: Scenario,
        spec,
        runs: list[AutoscaledRun],
        fixed_replicas: int | None = None,
        compression: float = 1.0,
    ) -> PolicyResult:
        return cls(
            spec.label,
            spec,
            runs,
            s.simulation.confidence,
            dict(slo_targets(s)),
            s.slo.percentile,
            s.slo.max_rejection_rate,
            fixed_replicas,
            compression=compression,
        )

    def ci(self, key: str) -> CI:
        return t_interval([r.scalars[key] for r in self.runs], self.confidence)

    def q(self, p: float | None = None, metric: str | None = None) -> CI:
        """The ``p`` percentile (default: the SLO's) of ``metric`` (default: the binding one)."""
        p = self.percentile if p is None else p
        m = metric or self.primary
        return t_interval([r.quantiles[m][p] for r in self.runs], self.confidence)

    @property
    def primary(self) -> str:
        """The binding metric: the highest upper confidence limit relative to its target."""
        if len(self.targets) == 1:
            return next(iter(self.targets))
        return max(self.targets, key=lambda m: self.q(metric=m).high / self.targets[m])

    @property
    def target_s(self) -> float:
        return self.targets[self.primary]

    def screened(self, run: AutoscaledRun) -> bool:
        """One run's point estimates within every target and the rejection limit."""
        return (
            all(run.quantiles[m][self.percentile] <= t for m, t in self.targets.items())
            and run.scalars["rejection_rate"] <= self.max_rejection_rate
        )

    @property
    def unstable(self) -> bool:
        return any(r.unstable for r in self.runs)

    @property
    def unstable_reason(self) -> str:
        return next((r.unstable_reason for r in self.runs if r.unstable), "")

    def _too_high(self) -> list[str]:
        return [m for m, t in self.targets.items() if self.q(metric=m).high > t]

    @property
    def meets_slo(self) -> bool:
        """Every target met at the upper confidence limit over the horizon, rejections within
        the limit."""
        if self.unstable:
            return False
        return not self._too_high() and self.ci("rejection_rate").mean <= self.max_rejection_rate

    @property
    def verdict(self) -> str:
        pct = f"p{self.percentile:g}"
        if self.unstable:
            return f"unstable ({self.unstable_reason})"
        if len(self.runs) < 2:
            got = ", ".join(
                f"{pct} {m} {self.runs[0].quantiles[m][self.percentile] * 1000:.1f} ms"
                for m in self.targets
            )
            if self.compression > 1:
                return f"screened on one day compressed {self.compression:g}x: {got}"
            return f"screened on one replication: {got}"
        high = self._too_high()
        if high:
            return (
                f"{pct} {'/'.join(high)} too high" if len(self.targets) > 1 else f"{pct} too high"
            )
        if self.ci("rejection_rate").mean > self.max_rejection_rate:
            return "too many rejections"
        return "meets SLO"

    @property
    def hourly_attainment(self) -> np.ndarray:
        return np.nanmean(np.vstack([r.hourly_attainment for r in self.runs]), axis=0)

    @property
    def timeline(self) -> pd.DataFrame:
        """Per window, the mean over replications."""
        keys = self.runs[0].timeline.keys()
        return pd.DataFrame(
            {
                k: np.nanmean(np.vstack([r.timeline[k] for r in self.runs]), axis=0)
                if k != "t_s"
                else self.runs[0].timeline[k]
                for k in keys
            }
        )

    def samples(self, metric: str | None = None) -> np.ndarray:
        """Latency samples of ``metric`` (default: the binding one), all replications."""
        m = metric or self.primary
        return np.sort(np.concatenate([r.sample[m] for r in self.runs]))


@dataclass
class WhatIfResult:
    scenario: Scenario
    gpu: str
    precision: str
    tp: int
    policies: list[PolicyResult]
    baseline: str | None
    horizon_s: float
    window_s: float
    replications: int
    price_usd_per_gpu_hour: float
    notes: list[str] = field(default_factory=list)
    ep: int = 1

    def __getitem__(self, name: str) -> PolicyResult:
        for p in self.policies:
            if p.name == name:
                return p
        raise KeyError(name)

    def frame(self) -> pd.DataFrame:
        """One row per policy (means, with the CI of the SLO percentile and of the cost)."""
        rows = []
        pct, s = self.scenario.slo.percentile, self.scenario
        for p in self.policies:
            cost = p.ci("cost_usd")
            row: dict[str, Any] = {
                "policy": p.name,
                "kind": p.spec.kind,
                "meets_slo": p.meets_slo,
                "verdict": p.verdict,
                "attainment": p.ci("attainment").mean,
                "worst_hour_attainment": p.ci("worst_hour_attainment").mean,
            }
            for m in p.targets:
                c = p.q(metric=m)
                name = f"p{pct:g}" if m == "latency" else f"p{pct:g}_{m}"
                row |= {
                    f"{name}_ms": c.mean * 1000,
                    f"{name}_ci_low_ms": c.low * 1000,
                    f"{name}_ci_high_ms": c.high * 1000,
                }
            row |= {
                "violation_min": p.ci("violation_s").mean / 60,
                "rejected": p.ci("rejected").mean,
                "gpu_hours": p.ci("gpu_hours").mean,
                "cost_usd": cost.mean,
                "cost_ci_low_usd": cost.low,
                "cost_ci_high_usd": cost.high,
                "usd_per_hour": p.ci("usd_per_hour").mean,
                "provisioning_cost_usd": p.ci("provisioning_cost_usd").mean,
                "idle_cost_usd": p.ci("idle_cost_usd").mean,
                "replicas_avg": p.ci("replicas_avg").mean,
                "replicas_peak": max(r.scalars["replicas_peak"] for r in p.runs),
                "cold_starts": p.ci("cold_starts").mean,
                "idle_share": p.ci("idle_share").mean,
                "provisioning_share": p.ci("provisioning_share").mean,
                "energy_kwh": p.ci("energy_kwh").mean,
                "saving_usd": p.saving.mean if p.saving else math.nan,
                "saving_ci_low_usd": p.saving.low if p.saving else math.nan,
                "saving_ci_high_usd": p.saving.high if p.saving else math.nan,
                "saving_share": p.saving_share if p.saving_share is not None else math.nan,
                "replications": len(p.runs),
            }
            if s.capacity is not None:
                row |= {k: p.ci(k).mean for k in CAPACITY_KEYS}
            if "usd_per_1m_output_tokens" in p.runs[0].scalars:
                row["usd_per_1m_output_tokens"] = p.ci("usd_per_1m_output_tokens").mean
            rows.append(row)
        return pd.DataFrame(rows)

    def hourly_frame(self) -> pd.DataFrame:
        data = {"hour": np.arange(len(self.policies[0].hourly_attainment))}
        for p in self.policies:
            data[p.name] = p.hourly_attainment
        return pd.DataFrame(data)


# =========================================================================== the library call
def policies_for(s: Scenario) -> list:
    """The scenario's what-if policies, else its autoscaling policy plus a peak-sized fixed fleet."""
    if s.whatif is not None and s.whatif.policies:
        return list(s.whatif.policies)
    out: list = [FixedSpec(kind="fixed", name="fixed-peak", replicas="peak")]
    if s.autoscaling is not None and not isinstance(s.autoscaling, FixedSpec):
        out.append(s.autoscaling)
    return out


def pick_baseline(
    specs: Sequence[Any], named: str | None, scenario_baseline: str | None, own: bool
) -> tuple[str, str]:
    """The policy savings are measured against, and a line saying why it was chosen.

    ``named`` (the CLI's ``--baseline``) wins; else the scenario's ``whatif.baseline`` when its own
    policies run (``own``); else the first fixed policy; else the first policy.

    >>> from capsim.spec.autoscaling import KPASpec
    >>> specs = [KPASpec(kind="kpa", target=6), FixedSpec(kind="fixed", replicas="peak")]
    >>> pick_baseline(specs, None, "fixed-peak", own=False)[0]
    'fixed'
    >>> pick_baseline(specs[:1], None, None, own=False)
    ('kpa', 'baseline: kpa, the first policy (none is fixed)')
    """
    names = [sp.label for sp in specs]
    if named is not None:
        if named not in names:
            raise InputError(f"baseline '{named}' is not one of {names}", param="baseline")
        return named, f"baseline: {named}, as named"
    if own and scenario_baseline is not None:
        return scenario_baseline, f"baseline: {scenario_baseline} (whatif.baseline)"
    dropped = (
        f"; the scenario's whatif.baseline '{scenario_baseline}' is not used, as the policies "
        "given replace its own"
        if scenario_baseline is not None and not own
        else ""
    )
    fixed = next((sp.label for sp in specs if isinstance(sp, FixedSpec)), None)
    if fixed is not None:
        return fixed, f"baseline: {fixed}, the first fixed policy{dropped}"
    return names[0], f"baseline: {names[0]}, the first policy (none is fixed){dropped}"


def resolve_config(
    s: Scenario, gpu: str | None, precision: str | None, tp: int | None
) -> tuple[str, str, int]:
    w = s.whatif
    g = gpu or (w.gpu if w else None)
    p = precision or (w.precision if w else None)
    t = tp or (w.tp if w else 1)
    if g is None:
        if len(s.candidates.gpus) != 1:
            raise InputError(
                "which GPU? candidates.gpus lists several; set whatif.gpu or name the gpu to run",
                where="whatif.gpu",
            )
        g = s.candidates.gpus[0]
    if p is None:
        if len(s.candidates.precisions) != 1:
            raise InputError(
                "which precision? candidates.precisions lists several; set whatif.precision "
                "or name the precision to run",
                where="whatif.precision",
            )
        p = s.candidates.precisions[0]
    return g, p, t


def peak_fixed_replicas(
    s: Scenario, cat: Catalog, gpu: str, precision: str, tp: int, ep: int = 1
) -> int:
    """The static planner's replica count for this configuration (sized for the peak)."""
    r = search_candidate(s, Candidate(gpu, precision, tp, ep), cat)
    if r.best is None:
        raise InputError(
            f"cannot size a fixed fleet of {gpu} {precision} for the peak: {r.reason}",
            where="whatif (fixed, replicas: peak)",
        )
    return r.best.config.replicas


def evaluate_policy(
    s: Scenario,
    cat: Catalog,
    gpu: str,
    precision: str,
    tp: int,
    spec,
    *,
    replications: int,
    fixed_replicas: int | None = None,
    window_s: float = 300.0,
    abort_on_unstable: bool = False,
    prior: Sequence[AutoscaledRun] = (),
    compression: float = 1.0,
) -> PolicyResult:
    """One policy over ``replications`` real-time replications (sequentially, in this process);
    ``prior`` runs (replications 0, 1, ...) already made are reused. ``compression`` > 1 runs
    them on a compressed day instead (a screen: see :func:`capsim.planning.whatif_run.run_policy`)."""
    svc = make_service(s, cat[gpu], precision, tp)
    runs = list(prior) if prior else []
    for rep in range(len(runs), replications):
        runs.append(
            run_policy(
                s,
                cat[gpu],
                svc,
                spec,
                rep,
                tp=tp,
                fixed_replicas=fixed_replicas,
                window_s=window_s,
                abort_on_unstable=abort_on_unstable,
                compression=compression,
            )
        )
        if runs[-1].unstable and abort_on_unstable:
            break
    return PolicyResult.of(s, spec, runs, fixed_replicas, compression)


def _job(args) -> AutoscaledRun:
    s, cat, gpu, precision, tp, spec, rep, fixed_n, window_s, ep = args
    svc = make_service(s, cat[gpu], precision, tp, ep)
    return run_policy(s, cat[gpu], svc, spec, rep, tp=tp, fixed_replicas=fixed_n, window_s=window_s)


def whatif(
    scenario: Scenario,
    catalog: Catalog | None = None,
    policies: Sequence[Any] | None = None,
    *,
    gpu: str | None = None,
    precision: str | None = None,
    tp: int | None = None,
    ep: int | None = None,
    replications: int | None = None,
    window_s: float | None = None,
    baseline: str | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> WhatIfResult:
    """Run each policy over ``replications`` real-time replications of the same traffic."""
    s = scenario
    cat = catalog if catalog is not None else load_catalog()
    check_traffic(real_time(s), file="(what-if: the horizon in real time)", jobs=jobs)
    check_measurable(real_time(s))
    g, p, t = resolve_config(s, gpu, precision, tp)
    if g not in cat.gpus:
        raise InputError(
            f"unknown GPU '{g}'; the catalog has: {', '.join(cat)}",
            **({"param": "gpu"} if gpu else {"where": "whatif.gpu"}),
        )
    if p not in PRECISIONS:
        raise InputError(
            f"unknown precision '{p}'; accepted: {', '.join(PRECISIONS)}",
            **({"param": "precision"} if precision else {"where": "whatif.precision"}),
        )
    e = ep or (s.whatif.ep if s.whatif else 1)
    runnable_service(s, cat[g], p, t, e)  # Unsupported: the card lacks the precision, or no fit
    tiers = capacity_prices(cat[g], s.capacity, s.candidates.price_provider)  # InputError
    specs = list(policies) if policies is not None else policies_for(s)
    if not specs:
        raise InputError("no policies to compare", where="whatif.policies")
    names = [sp.label for sp in specs]
    if len(set(names)) != len(names):
        raise InputError(f"policy names must be unique: {names}", where="whatif.policies")
    w = s.whatif
    reps = (
        replications
        or (w.replications if w and w.replications else None)
        or max(2, s.simulation.replications)
    )
    win = window_s or (w.window_s if w else 300.0)
    base, why = pick_baseline(specs, baseline, w.baseline if w else None, policies is None)
    fixed_n = None
    if any(isinstance(sp, FixedSpec) and sp.replicas == "peak" for sp in specs):
        if progress:
            progress(f"sizing a fixed {g} {p} fleet for the peak (static plan)")
        fixed_n = peak_fixed_replicas(s, cat, g, p, t, e)
    tasks = [(s, cat, g, p, t, sp, rep, fixed_n, win, e) for rep in range(reps) for sp in specs]

    def done(i: int, n: int, r: AutoscaledRun) -> None:
        if progress:
            progress(f"[{i}/{n}] {r.policy} replication {r.replication + 1}")

    runs: list[AutoscaledRun] = run_tasks(_job, tasks, executor, done, jobs=jobs)
    results = []
    for sp in specs:
        mine = sorted((r for r in runs if r.policy == sp.label), key=lambda r: r.replication)
        results.append(
            PolicyResult.of(
                s,
                sp,
                mine,
                fixed_n if isinstance(sp, FixedSpec) and sp.replicas == "peak" else None,
            )
        )
    if base is not None:
        b = next(r for r in results if r.name == base)
        for r in results:
            if r is b:
                continue
            diff = [
                x.scalars["cost_usd"] - y.scalars["cost_usd"]
                for x, y in zip(b.runs, r.runs, strict=True)
            ]
            r.saving = t_interval(diff, s.simulation.confidence)
            bc = b.ci("cost_usd").mean
            r.saving_share = r.saving.mean / bc if bc > 0 else None
    price = price_per_gpu_hour(cat[g], price_provider(s)).usd_per_hour
    notes = [why]
    if s.capacity is not None:
        price = tiers.on_demand_usd
        notes.append(
            f"prices at {tiers.provider} per GPU-h: on demand ${tiers.on_demand_usd:g}, base "
            f"({tiers.base_tier}) ${tiers.base_usd:g}, burst ({tiers.burst_tier}) "
            f"${tiers.burst_usd:g}"
        )
    horizon = sim_horizon(real_time(s))[0]
    return WhatIfResult(s, g, p, t, results, base, horizon, win, reps, price, notes, e)
