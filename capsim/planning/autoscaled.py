"""Autoscaled planning: tune the scenario's policy per candidate, against a fixed peak fleet.

``capsim plan`` on a scenario with ``autoscaling:`` first runs the static plan (compressed, fast):
it ranks the candidates and gives each its fixed replica count for the peak — the *baseline*.
Then, for the ``top`` cheapest feasible candidates, it tunes the policy's parameters in real time
(every request of the horizon, cold starts and billing included):

1. ``target`` — searched on a grid from the most aggressive (cheapest) to the safest setting;
   cost falls and latency rises monotonically along it (under common random numbers), so the
   search bisects, one replication per setting (point estimate against the target), for the
   most aggressive setting, then confirms it with every replication (the p99 upper confidence
   limit over the horizon and the rejection limit), stepping to safer settings if it fails;
2. ``max_replicas`` — the peak count plus one, then the peak count if that is still feasible;
3. ``min_replicas`` — the scenario's value, raised one at a time (up to two) only when no target
   meets the SLO (a floor that rides out the morning ramp while new replicas boot).

The saving against the baseline is the measured difference of billed cost over the horizon;
provisioning (cold-start) and idle (warm, not busy) cost are reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from capsim.errors import InputError
from capsim.planning.parallel import run_tasks
from capsim.planning.whatif import PolicyResult, evaluate_policy
from capsim.spec.autoscaling import (
    FixedSpec,
    HPASpec,
    KPASpec,
    PredictiveSpec,
    ScheduledSpec,
    ScheduleEntry,
)
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario
from capsim.workload.streams import check_traffic, real_time, sim_horizon

#: multipliers of the scenario's target, most aggressive (fewest replicas) first
FACTORS = (3.0, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5)
#: HPA utilization targets (percent), most aggressive first
UTILIZATION = (95.0, 90.0, 80.0, 70.0, 60.0, 50.0, 40.0)


@dataclass
class Trial:
    spec: Any
    result: PolicyResult

    @property
    def feasible(self) -> bool:
        return self.result.meets_slo

    @property
    def cost(self) -> float:
        return self.result.ci("cost_usd").mean


@dataclass
class AutoscaledCandidate:
    """One candidate: its fixed peak baseline and the tuned policy (if any met the SLO)."""

    gpu: str
    precision: str
    tp: int
    peak_replicas: int
    baseline_usd: float  # fixed peak fleet over the horizon
    baseline_usd_per_hour: float
    baseline_utilisation: float
    best: Trial | None
    trials: list[Trial] = field(default_factory=list)
    reason: str = ""

    def label(self) -> str:
        return f"{self.gpu} {self.precision}" + (f" tp{self.tp}" if self.tp > 1 else "")

    @property
    def saving_usd(self) -> float:
        return self.baseline_usd - self.best.cost if self.best else math.nan

    @property
    def saving_share(self) -> float:
        return self.saving_usd / self.baseline_usd if self.best and self.baseline_usd else math.nan


@dataclass
class AutoscaledPlan:
    kind: str
    horizon_s: float
    replications: int
    candidates: list[AutoscaledCandidate]
    recommendation: AutoscaledCandidate | None
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------- the knobs
def _with(spec, **changes):
    data = spec.model_dump()
    data.update(changes)
    return type(spec).model_validate(data)


def target_grid(spec) -> list[Any]:
    """Variants of ``spec`` from the most aggressive target to the safest."""
    if isinstance(spec, HPASpec) and spec.metric == "utilization":
        vals = sorted(set(UTILIZATION) | {spec.target}, reverse=True)
        return [_with(spec, target=v) for v in vals if v <= 100]
    if isinstance(spec, HPASpec | KPASpec):
        return [_with(spec, target=round(spec.target * f, 4)) for f in FACTORS]
    if isinstance(spec, PredictiveSpec):
        return [
            _with(spec, target_rps_per_replica=round(spec.target_rps_per_replica * f, 4))
            for f in FACTORS
        ]
    if isinstance(spec, ScheduledSpec):
        out = []
        for f in (0.6, 0.75, 0.9, 1.0, 1.25, 1.5):
            entries = [
                ScheduleEntry(hour=e.hour, replicas=max(1, math.ceil(e.replicas * f - 1e-9)))
                for e in spec.schedule
            ]
            out.append(_with(spec, schedule=[e.model_dump() for e in entries]))
        return out
    return [spec]


def _start_index(grid: list[Any], spec) -> int:
    """The grid position of the scenario's own setting (the search starts there)."""
    for i, g in enumerate(grid):
        if g.model_dump() == spec.model_dump():
            return i
    return len(grid) // 2


# --------------------------------------------------------------------------- one candidate
def tune_candidate(
    s: Scenario,
    cat: Catalog,
    gpu: str,
    precision: str,
    tp: int,
    peak: int,
    *,
    replications: int = 2,
    progress: Callable[[str], None] | None = None,
) -> tuple[Trial | None, list[Trial], str]:
    """The cheapest variant of the scenario's policy that meets the SLO, and every trial."""
    base = s.autoscaling
    assert base is not None
    trials: list[Trial] = []
    cache: dict[str, Trial] = {}

    def screen(spec) -> bool:
        """One replication: the point estimate decides where the search goes next."""
        key = spec.model_dump_json()
        if key not in cache:
            if progress:
                progress(f"{gpu} {precision}: {spec.kind} {knobs(spec)}")
            res = evaluate_policy(
                s, cat, gpu, precision, tp, spec, replications=1, abort_on_unstable=True
            )
            cache[key] = Trial(spec, res)
            trials.append(cache[key])
        r = cache[key].result
        return not r.unstable and r.screened(r.runs[0])

    def confirm(spec) -> Trial:
        """All replications: the confidence interval decides feasibility."""
        t = cache[spec.model_dump_json()]
        if len(t.result.runs) < replications and not t.result.unstable:
            t.result = evaluate_policy(
                s,
                cat,
                gpu,
                precision,
                tp,
                spec,
                replications=replications,
                abort_on_unstable=True,
                prior=t.result.runs,
            )
        return t

    def run(spec) -> Trial:
        screen(spec)
        return confirm(spec)

    max_r = min(s.candidates.max_replicas, max(peak + 1, base.min_replicas + 1))
    best: Trial | None = None
    min0 = base.min_replicas
    for min_r in (min0, min0 + 1, min0 + 2):
        if min_r > max_r:
            break
        seed = _with(base, min_replicas=min_r, max_replicas=max_r)
        grid = target_grid(seed)
        # bisect (on one replication each) for the most aggressive setting that meets the
        # target: grid[lo] misses, grid[hi] meets
        lo, hi = -1, len(grid)
        i = _start_index(grid, seed)
        if screen(grid[i]):
            hi = i
        else:
            lo = i
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if screen(grid[mid]):
                hi = mid
            else:
                lo = mid
        # confirm with every replication (upper confidence limit); else step to safer settings
        while hi < len(grid):
            t = run(grid[hi])
            if t.feasible:
                best = t
                break
            hi += 1
        if best is not None:
            break
    if best is None:
        return None, trials, "no setting met the SLO"
    # a tighter cap at the peak count (cheaper if the policy overshoots the peak)
    if not isinstance(base, ScheduledSpec) and max_r > peak >= best.spec.min_replicas:
        capped = _with(best.spec, max_replicas=peak)
        if screen(capped) and cache[capped.model_dump_json()].cost < best.cost:
            t = confirm(capped)
            if t.feasible and t.cost < best.cost:
                best = t
    return best, trials, "meets SLO"


def knobs(spec) -> str:
    """The tuned settings of a policy in a few words (``target 80, replicas 1-5``)."""
    if isinstance(spec, ScheduledSpec):
        return "schedule " + ",".join(str(e.replicas) for e in spec.schedule)
    tgt = getattr(spec, "target", None)
    if tgt is None:
        tgt = getattr(spec, "target_rps_per_replica", None)
    return f"target {tgt:g}, replicas {spec.min_replicas}-{spec.max_replicas}"


def _tune_job(args) -> tuple[Trial | None, list[Trial], str]:
    s, cat, gpu, precision, tp, peak, reps = args
    return tune_candidate(s, cat, gpu, precision, tp, peak, replications=reps)


# --------------------------------------------------------------------------- the plan
def plan_autoscaled(
    s: Scenario,
    static,
    catalog: Catalog,
    *,
    top: int = 2,
    replications: int = 2,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> AutoscaledPlan | None:
    """Tune ``s.autoscaling`` for the ``top`` cheapest feasible candidates of ``static``."""
    spec = s.autoscaling
    if spec is None or isinstance(spec, FixedSpec):
        return None
    horizon = sim_horizon(real_time(s))[0]
    finalists = static.feasible[:top]
    notes = []
    try:
        check_traffic(real_time(s))
    except InputError as exc:  # the static plan stands; the day in real time does not fit
        notes.append(f"autoscaling not tuned: in real time, {exc.message}")
        finalists = []
    jobs_args = [
        (
            s,
            catalog,
            r.candidate.gpu,
            r.candidate.precision,
            r.candidate.tp,
            r.best.config.replicas,
            replications,
        )
        for r in finalists
    ]
    if executor is not None or (jobs > 1 and len(jobs_args) > 1):
        outs = run_tasks(_tune_job, jobs_args, executor, jobs=jobs)
    else:  # in this process, with the tuner's own progress lines
        outs = [tune_candidate(*a[:6], replications=a[6], progress=progress) for a in jobs_args]
    cands = []
    for r, (best, trials, reason) in zip(finalists, outs, strict=True):
        e = r.best
        if progress:
            progress(f"autoscaled {r.candidate.label()}: {reason}")
        cands.append(
            AutoscaledCandidate(
                gpu=r.candidate.gpu,
                precision=r.candidate.precision,
                tp=r.candidate.tp,
                peak_replicas=e.config.replicas,
                baseline_usd=e.usd_per_hour * horizon / 3600,
                baseline_usd_per_hour=e.usd_per_hour,
                baseline_utilisation=e.summary.scalars["utilisation"].mean,
                best=best,
                trials=trials,
                reason=reason,
            )
        )
    for c in cands:  # a policy that costs more than the fixed peak fleet is not a saving
        if c.best is not None and c.best.cost >= c.baseline_usd:
            c.reason = (
                f"autoscaling does not pay: the cheapest setting meeting the SLO costs "
                f"${c.best.cost:.2f} vs ${c.baseline_usd:.2f} for {c.peak_replicas} fixed replicas"
            )
    ok = [c for c in cands if c.best is not None and c.best.cost < c.baseline_usd]
    rec = min(ok, key=lambda c: c.best.cost if c.best else math.inf, default=None)  # all have one
    if cands and rec is None:
        notes.append("no autoscaled setting beat the fixed fleet sized for the peak")
    return AutoscaledPlan(spec.kind, horizon, replications, cands, rec, notes)
