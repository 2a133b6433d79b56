"""Autoscaled planning: tune the scenario's policy per candidate, against a fixed peak fleet.

``capsim plan`` on a scenario with ``autoscaling:`` first runs the static plan (compressed, fast):
it ranks the candidates and gives each its fixed replica count for the peak — the *baseline*.
Then, for the ``top`` cheapest feasible candidates, it tunes the policy's parameters:

1. ``target`` — searched on a grid from the most aggressive (cheapest) to the safest setting;
   cost falls and latency rises monotonically along it (under common random numbers), so the
   search bisects for the most aggressive setting whose one-replication point estimates meet
   the targets;
2. ``max_replicas`` — the peak count plus one, then the peak count if the screened policy went
   above it and the cap passes for less;
3. ``min_replicas`` — the scenario's value, raised one at a time (up to two) only when no target
   passes (a floor that rides out the morning ramp while new replicas boot).

**Screening on compressed days.** Each setting above is screened on one day compressed
``SCREEN_COMPRESSION`` times (16, or less where a policy's windows would leave their range):
the load pattern, the controller's periods and windows and the cold starts all run 16x faster,
the service times do not (a day of 24 h in 1.5 h of simulated time, a sixteenth of the
requests). Queues that build while replicas boot last a sixteenth as long, so a screen is
optimistic near the limit (measured in benchmarks/README.md, "Screening autoscaling
settings"). Hence the second stage: candidates in order of screened cost are **confirmed in
real time** (every request of the horizon, every replication in parallel; the p99 upper
confidence limit and the rejection limit decide), stepping to safer settings when the pick
fails; a later candidate is confirmed only when its screened cost is at least
``CONFIRM_MARGIN`` below the cheapest confirmed one (screens are within a few percent of the
real day, so a candidate screened level with the winner is not worth a real-time day).
Replayed traces cannot be compressed: their settings are screened in real time (and the
screen's run is the confirmation's first replication).
A finalist the engine would see exactly as an earlier one (another precision with the same
card, peak count, weights and service times) is not screened: its runs would repeat that one's.
Local confirmations pin replication k to worker k, so a second round reuses its stream.

The saving against the baseline is the measured difference of billed cost over the horizon;
provisioning (cold-start) and idle (warm, not busy) cost are reported beside it.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor
from contextlib import nullcontext
from dataclasses import dataclass, field
from typing import Any

from capsim.analysis.capacity import capacity_prices
from capsim.errors import InputError
from capsim.evaluate import make_service
from capsim.planning.autoscaled_screen import (
    FACTORS,
    SCREEN_COMPRESSION,
    UTILIZATION,
    Screened,
    Trial,
    knobs,
    screen_candidate,
    screen_compression,
    screen_job,
    target_grid,
)
from capsim.planning.parallel import PinnedPools, process_pool, run_tasks
from capsim.planning.whatif import PolicyResult
from capsim.planning.whatif_run import run_policy, weight_bytes
from capsim.spec.autoscaling import (
    FixedSpec,
)
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario
from capsim.workload.streams import check_traffic, real_time, sim_horizon

__all__ = [
    "FACTORS",
    "SCREEN_COMPRESSION",
    "UTILIZATION",
    "knobs",
    "plan_autoscaled",
    "screen_compression",
    "target_grid",
]

#: a later candidate is confirmed only when screened at least this much below the best confirmed
CONFIRM_MARGIN = 0.05


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
    screen_compression: float = 1.0  # settings screened on days compressed this many times


# --------------------------------------------------------------------------- confirming
def confirm_setting(
    s: Scenario,
    cat: Catalog,
    cand: tuple[str, str, int],
    spec,
    replications: int,
    executor: Executor | None,
    jobs: int,
    prior: list[Any],
    pools: PinnedPools | None = None,
) -> Trial:
    """Every replication of ``spec`` in real time (in parallel), reusing real-time ``prior`` runs;
    on ``pools``, replication ``k`` runs on worker ``k`` (which keeps its request stream)."""
    gpu, precision, tp = cand
    todo = [(s, cat, gpu, precision, tp, spec, rep) for rep in range(len(prior), replications)]
    if pools is not None:
        done = pools.run(_confirm_job, [(t[-1], t) for t in todo])
    else:
        done = run_tasks(_confirm_job, todo, executor, jobs=jobs)
    return Trial(spec, PolicyResult.of(s, spec, [*prior, *done]))


def _confirm_job(args):
    s, cat, gpu, precision, tp, spec, rep = args
    svc = make_service(s, cat[gpu], precision, tp)
    return run_policy(s, cat[gpu], svc, spec, rep, tp=tp, abort_on_unstable=True)


def confirm_candidate(
    s: Scenario,
    cat: Catalog,
    cand: tuple[str, str, int],
    sc: Screened,
    replications: int,
    executor: Executor | None = None,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    pools: PinnedPools | None = None,
) -> Trial | None:
    """The screened pick confirmed in real time, else the next safer setting that confirms."""
    for spec in [sc.pick, *sc.ladder]:
        screen = next((t for t in sc.trials if t.spec is spec), None)
        real = sc.compression == 1.0 and screen is not None  # its run is replication 0
        if progress:
            progress(f"{cand[0]} {cand[1]}: confirm {knobs(spec)} in real time")
        prior = screen.result.runs[:1] if real and screen is not None else []
        t = confirm_setting(s, cat, cand, spec, replications, executor, jobs, prior, pools)
        if real and screen is not None:  # one trial per setting: the screen, now confirmed
            screen.result, t = t.result, screen
        else:
            sc.trials.append(t)
        if t.feasible:
            return t
    return None


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
    if s.capacity is not None:  # a finalist with no price for the capacity's tiers: left out
        priced = []
        for r in finalists:
            try:
                capacity_prices(catalog[r.candidate.gpu], s.capacity, s.candidates.price_provider)
                priced.append(r)
            except InputError as exc:
                notes.append(f"{r.candidate.gpu} not autoscaled: {exc.message}")
        finalists = priced
    try:
        check_traffic(real_time(s))
    except InputError as exc:  # the static plan stands; the day in real time does not fit
        notes.append(f"autoscaling not tuned: in real time, {exc.message}")
        finalists = []
    cands = [
        AutoscaledCandidate(
            gpu=r.candidate.gpu,
            precision=r.candidate.precision,
            tp=r.candidate.tp,
            peak_replicas=r.best.config.replicas,
            baseline_usd=r.best.usd_per_hour * horizon / 3600,
            baseline_usd_per_hour=r.best.usd_per_hour,
            baseline_utilisation=r.best.summary.scalars["utilisation"].mean,
            best=None,
        )
        for r in finalists
    ]
    twins = _twins(s, catalog, cands)
    args = [
        (s, catalog, c.gpu, c.precision, c.tp, c.peak_replicas)
        for i, c in enumerate(cands)
        if i not in twins
    ]
    if executor is not None or (jobs > 1 and len(args) > 1):
        done = iter(run_tasks(screen_job, args, executor, jobs=jobs))
    else:  # in this process, with the screen's own progress lines (and a spare core's guesses)
        spare = process_pool(1) if jobs > 1 and executor is None else None
        try:
            done = iter([screen_candidate(*a, progress=progress, spare=spare) for a in args])
        finally:
            if spare is not None:
                spare.shutdown(wait=False, cancel_futures=True)
    screens: list[Screened] = []
    for i in range(len(cands)):  # twins come after their double (an earlier finalist)
        j = twins.get(i)
        screens.append(
            next(done)
            if j is None
            else Screened(
                None,
                [],
                [],
                screens[j].compression,
                f"not screened: simulated exactly as {cands[j].label()} (same card, replicas, "
                "weights and service times), whose setting stands for both",
            )
        )
    _confirm_cheapest(s, catalog, cands, screens, replications, executor, jobs, progress)
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
    comp = max((sc.compression for sc in screens), default=1.0)
    return AutoscaledPlan(spec.kind, horizon, replications, cands, rec, notes, comp)


def _twins(s: Scenario, catalog: Catalog, cands: list[AutoscaledCandidate]) -> dict[int, int]:
    """Finalists the engine would see exactly as an earlier one (another precision with the
    same card, peak count, weights and service times, e.g. fp8 and int8 on an L4): their screens
    and confirmations would repeat that one's run for run. Index -> the earlier one's index."""
    keys: list[tuple | None] = []
    out: dict[int, int] = {}
    for i, c in enumerate(cands):
        svc = make_service(s, catalog[c.gpu], c.precision, c.tp)
        view = svc.behaviour_key(s.fleet.max_batch)
        key = None if view is None else (c.gpu, c.tp, c.peak_replicas, weight_bytes(s, svc), view)
        same = [j for j, k in enumerate(keys) if key is not None and k == key]
        if same:
            out[i] = same[0]
        keys.append(key)
    return out


def _confirm_cheapest(s, catalog, cands, screens, replications, executor, jobs, progress) -> None:
    """Confirm candidates in order of screened cost: a later one only when its screen promises
    at least ``CONFIRM_MARGIN`` less than the best confirmed cost (e.g. when the first pick had
    to step to a safer, dearer setting in real time); the others are left screened. Local
    processes are pinned by replication, so a second round reuses each worker's stream."""
    pinned = executor is None and jobs > 1 and replications > 1
    with PinnedPools(min(jobs, replications)) if pinned else nullcontext() as pools:
        _confirm_in_order(s, catalog, cands, screens, replications, executor, jobs, progress, pools)


def _confirm_in_order(
    s, catalog, cands, screens, replications, executor, jobs, progress, pools
) -> None:
    best = math.inf
    for i in sorted(range(len(cands)), key=lambda i: screens[i].cost):
        c, sc = cands[i], screens[i]
        c.trials = sc.trials
        if sc.pick is None:
            c.reason = sc.reason
            continue
        if sc.cost >= best * (1 - CONFIRM_MARGIN):
            c.reason = (
                f"not confirmed: screened at ${sc.cost:.2f} ({knobs(sc.pick)}), not "
                f"{CONFIRM_MARGIN:.0%} below the confirmed ${best:.2f}"
            )
            continue
        key = (c.gpu, c.precision, c.tp)
        c.best = confirm_candidate(
            s, catalog, key, sc, replications, executor, jobs, progress, pools
        )
        c.reason = "meets SLO" if c.best else "no setting met the SLO in real time"
        if progress:
            progress(f"autoscaled {c.label()}: {c.reason}")
        if c.best is not None:
            best = min(best, c.best.cost)
