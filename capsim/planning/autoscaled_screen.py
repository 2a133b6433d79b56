"""Screening autoscaling settings on compressed days: the search over a policy's knobs.

See :mod:`capsim.planning.autoscaled` (module docstring) for the method; this module holds the
grid of settings, one candidate's search and the trial records.

>>> [f for f in FACTORS][:3]
[3.0, 2.0, 1.5]
"""

from __future__ import annotations

import math
from collections.abc import Callable
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any

from capsim.planning.whatif import PolicyResult, evaluate_policy
from capsim.planning.whatif_run import screen_setup
from capsim.spec.autoscaling import HPASpec, KPASpec, PredictiveSpec, ScheduledSpec, ScheduleEntry
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario

#: multipliers of the scenario's target, most aggressive (fewest replicas) first
FACTORS = (3.0, 2.0, 1.5, 1.25, 1.0, 0.75, 0.5)
#: HPA utilization targets (percent), most aggressive first
UTILIZATION = (95.0, 90.0, 80.0, 70.0, 60.0, 50.0, 40.0)
#: settings are screened on a day this many times shorter, the first a policy allows (see the
#: module docstring)
SCREEN_COMPRESSION = (16.0, 8.0, 4.0, 2.0)


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


# --------------------------------------------------------------------------- screening
@dataclass
class Screened:
    """One candidate's screen: the setting to confirm first and the safer ones after it."""

    pick: Any | None
    ladder: list[Any]
    trials: list[Trial]
    compression: float
    reason: str

    @property
    def cost(self) -> float:
        """The pick's screened cost over the real horizon (inf without a pick)."""
        t = next((t for t in self.trials if t.spec is self.pick), None)
        return t.cost if t is not None else math.inf


def screen_compression(s: Scenario, spec) -> float:
    """The largest of ``SCREEN_COMPRESSION`` by which the day and the policy can be compressed
    (a KPA stable window may not go under 6 s), else 1 (real time)."""
    for factor in SCREEN_COMPRESSION:
        try:
            screen_setup(s, spec, factor)
        except ValueError:
            continue
        return factor
    return 1.0


def screen_candidate(
    s: Scenario,
    cat: Catalog,
    gpu: str,
    precision: str,
    tp: int,
    peak: int,
    *,
    progress: Callable[[str], None] | None = None,
    spare: Executor | None = None,
) -> Screened:
    """Search the policy's settings on one compressed day each (see the module docstring).

    With a ``spare`` worker, the setting the search would screen next if the current one
    failed (else its cap) is screened there at the same time (here, when the current one is
    itself still running there as an earlier guess): the search and its result are those of
    the sequential search; a guess it does not use is dropped.
    """
    base = s.autoscaling
    assert base is not None
    comp = screen_compression(s, base)
    trials: list[Trial] = []
    cache: dict[str, Trial] = {}
    ahead: dict[str, Future] = {}

    def screen(spec, guess=None) -> bool:
        key = spec.model_dump_json()
        if key not in cache:
            if progress:
                progress(f"{gpu} {precision}: screen {spec.kind} {knobs(spec)}")
            gkey = guess.model_dump_json() if guess is not None else None
            fut = ahead.pop(key, None)
            if spare is not None and gkey is not None and gkey not in cache and gkey not in ahead:
                gargs = (s, cat, gpu, precision, tp, guess, comp)
                if fut is not None and not fut.done():  # this one runs there: guess here
                    ahead[gkey] = _done(screen_one(gargs))
                else:
                    ahead[gkey] = spare.submit(screen_one, gargs)
            args = (s, cat, gpu, precision, tp, spec, comp)
            res = fut.result() if fut is not None else screen_one(args)
            cache[key] = Trial(spec, res)
            trials.append(cache[key])
        r = cache[key].result
        return not r.unstable and r.screened(r.runs[0])

    max_r = min(s.candidates.max_replicas, max(peak + 1, base.min_replicas + 1))
    min0 = base.min_replicas
    for min_r in (min0, min0 + 1, min0 + 2):
        if min_r > max_r:
            break
        seed = _with(base, min_replicas=min_r, max_replicas=max_r)
        grid = target_grid(seed)
        # bisect for the most aggressive setting that passes: grid[lo] fails, grid[hi] passes
        lo, hi = -1, len(grid)
        i = _start_index(grid, seed)
        if screen(grid[i], grid[(i - 1) // 2] if i > 0 else None):  # guess: it passes
            hi = i
        else:
            lo = i
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if hi - mid > 1:  # guess: mid fails
                guess = grid[(mid + hi) // 2]
            else:  # then hi is the pick: guess its cap
                guess = _cap_variant(grid[hi], peak, cache) if hi < len(grid) else None
            if screen(grid[mid], guess):
                hi = mid
            else:
                lo = mid
        if hi < len(grid):
            pick, ladder = grid[hi], grid[hi + 1 :]
            pick, ladder = _try_cap(pick, ladder, peak, screen, cache)
            return Screened(pick, ladder, trials, comp, "passed the screen")
    return Screened(None, [], trials, comp, "no setting met the SLO")


def _done(value: Any) -> Future:
    """A future that already holds ``value``.

    >>> _done(3).result()
    3
    """
    fut: Future = Future()
    fut.set_result(value)
    return fut


def screen_one(args) -> PolicyResult:
    """One setting on one compressed day (``comp`` times shorter)."""
    s, cat, gpu, precision, tp, spec, comp = args
    return evaluate_policy(
        s, cat, gpu, precision, tp, spec, replications=1, abort_on_unstable=True, compression=comp
    )


def _cap_variant(pick, peak: int, cache: dict[str, Trial]) -> Any | None:
    """``pick`` capped at the peak count, where its screen went above it (else None)."""
    t = cache.get(pick.model_dump_json())
    if t is None or isinstance(pick, ScheduledSpec):
        return None
    if not pick.max_replicas > peak >= pick.min_replicas:
        return None
    if t.result.runs[0].scalars["replicas_peak"] <= peak:  # the cap would not bind
        return None
    return _with(pick, max_replicas=peak)


def _try_cap(pick, ladder: list[Any], peak: int, screen, cache) -> tuple[Any, list[Any]]:
    """A tighter cap at the peak count, when the screened policy went above it and the cap
    passes the screen for less."""
    capped = _cap_variant(pick, peak, cache)
    if capped is None:
        return pick, ladder
    if screen(capped) and cache[capped.model_dump_json()].cost < cache[pick.model_dump_json()].cost:
        return capped, [pick, *ladder]
    return pick, ladder


def knobs(spec) -> str:
    """The tuned settings of a policy in a few words (``target 80, replicas 1-5``)."""
    if isinstance(spec, ScheduledSpec):
        return "schedule " + ",".join(str(e.replicas) for e in spec.schedule)
    tgt = getattr(spec, "target", None)
    if tgt is None:
        tgt = getattr(spec, "target_rps_per_replica", None)
    return f"target {tgt:g}, replicas {spec.min_replicas}-{spec.max_replicas}"


def screen_job(args) -> Screened:
    s, cat, gpu, precision, tp, peak = args
    return screen_candidate(s, cat, gpu, precision, tp, peak)
