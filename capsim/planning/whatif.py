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
from capsim.planning.static import Candidate
from capsim.planning.whatif_config import (
    decode_config,
    peak_fixed_replicas,
    pick_baseline,
    policies_for,
    policy_rows,
    resolve_config,
    serving_mode,
)
from capsim.planning.whatif_disagg import disagg_setup, pool_sizes_note, run_disagg_policy
from capsim.planning.whatif_run import run_policy
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
    serving: str = "co-located"  # or "disaggregated" (a prefill pool and a decode pool)
    pools: tuple[int, int] | None = None  # disaggregated, replicas: peak: (prefill, decode)

    @classmethod
    def of(
        cls,
        s: Scenario,
        spec,
        runs: list[AutoscaledRun],
        fixed_replicas: int | None = None,
        compression: float = 1.0,
        name: str | None = None,
    ) -> PolicyResult:
        return cls(
            name or spec.label,
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
    s, cat, gpu, precision, tp, spec, rep, fixed_n, window_s, ep, setup, name, serving = args
    if serving == "disaggregated":
        return run_disagg_policy(s, cat, setup, spec, rep, label=name, window_s=window_s)
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
    serving: str | None = None,
    decode: tuple[str | None, str | None, int | None] = (None, None, None),
    placement: str | None = None,
) -> WhatIfResult:
    """Run each policy over ``replications`` real-time replications of the same traffic.

    ``serving``: ``colocated``, ``disaggregated`` or ``both`` (default: both when the scenario
    has ``disaggregation:``, else co-located). A disaggregated fleet's prefill pool runs the
    configuration above and its decode pool ``decode`` = (gpu, precision, tp), each defaulting
    to the prefill pool's; ``placement`` defaults to ``disaggregation.placement``."""
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
    mode = serving_mode(s, serving)
    rows = policy_rows(specs, mode)
    dcfg = decode_config(s, cat, (g, p, t), decode) if mode != "colocated" else None
    w = s.whatif
    reps = (
        replications
        or (w.replications if w and w.replications else None)
        or max(2, s.simulation.replications)
    )
    win = window_s or (w.window_s if w else 300.0)
    base, why = pick_baseline(specs, baseline, w.baseline if w else None, policies is None)
    notes = [why]
    setup = None
    if dcfg is not None:
        if progress and any(r.serving == "disaggregated" and r.peak for r in rows):
            progress("sizing the prefill and decode pools for the peak (disaggregated plan)")
        setup = disagg_setup(
            s, cat, Candidate(g, p, t, e), dcfg,
            placement or (s.disaggregation.placement if s.disaggregation else "auto"),
            [r.spec for r in rows if r.serving == "disaggregated"],
        )  # fmt: skip
        notes.append(pool_sizes_note(setup))
    fixed_n = None
    if any(r.serving == "co-located" and r.peak for r in rows):
        if progress:
            progress(f"sizing a fixed {g} {p} fleet for the peak (static plan)")
        fixed_n = peak_fixed_replicas(s, cat, g, p, t, e)
    skipped = [sp.label for sp in specs if not any(r.spec is sp for r in rows)]
    if skipped:
        notes.append(f"not run co-located (split policies are for disaggregated fleets): {skipped}")
    tasks = [
        (s, cat, g, p, t, r.spec, rep, fixed_n, win, e, setup, r.name, r.serving)
        for rep in range(reps)
        for r in rows
    ]

    def done(i: int, n: int, r: AutoscaledRun) -> None:
        if progress:
            progress(f"[{i}/{n}] {r.policy} replication {r.replication + 1}")

    runs: list[AutoscaledRun] = run_tasks(_job, tasks, executor, done, jobs=jobs)
    results = []
    for row in rows:
        mine = sorted((x for x in runs if x.policy == row.name), key=lambda x: x.replication)
        res = PolicyResult.of(
            s, row.spec, mine, fixed_n if row.serving == "co-located" and row.peak else None,
            name=row.name,
        )  # fmt: skip
        res.serving = row.serving
        if row.serving == "disaggregated" and setup is not None:
            res.pools = setup.peak
        results.append(res)
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
    if s.capacity is not None:
        price = tiers.on_demand_usd
        notes.append(
            f"prices at {tiers.provider} per GPU-h: on demand ${tiers.on_demand_usd:g}, base "
            f"({tiers.base_tier}) ${tiers.base_usd:g}, burst ({tiers.burst_tier}) "
            f"${tiers.burst_usd:g}"
        )
    horizon = sim_horizon(real_time(s))[0]
    return WhatIfResult(s, g, p, t, results, base, horizon, win, reps, price, notes, e)
