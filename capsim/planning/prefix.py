"""What prefix caching saves: the plan with ``enable_prefix_caching`` on and off, and the
recommended configuration simulated both ways on the same traffic (common random numbers).

>>> from capsim.load import load_scenario
>>> s = load_scenario("scenarios/chat_sessions.yaml")
>>> caching(s, False).fleet.batching.engine.enable_prefix_caching
False
"""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass

from capsim.errors import InputError
from capsim.evaluate import Evaluation, simulate
from capsim.planning.api import plan
from capsim.planning.static import PlanResult
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import ContinuousBatching, Scenario


@dataclass
class CachingComparison:
    """Plans with caching on and off; the on-plan's recommendation also simulated off."""

    on: PlanResult
    off: PlanResult
    rec_on: Evaluation | None  # the on-plan's recommendation, caching on
    rec_off: Evaluation | None  # the same configuration, caching off


def caching(s: Scenario, on: bool) -> Scenario:
    """Scenario ``s`` with ``enable_prefix_caching`` set to ``on``."""
    b = s.fleet.batching
    if not isinstance(b, ContinuousBatching):
        raise InputError(
            "prefix caching applies to LLM scenarios (fleet.batching.kind: continuous)",
            where="fleet.batching",
        )
    eng = b.engine.model_copy(update={"enable_prefix_caching": on})
    eng.model_fields_set.add("enable_prefix_caching")
    fleet = s.fleet.model_copy(update={"batching": b.model_copy(update={"engine": eng})})
    return s.model_copy(update={"fleet": fleet})


def compare_prefix_caching(
    s: Scenario,
    catalog: Catalog,
    *,
    jobs: int = 1,
    progress: Callable[[str], None] | None = None,
    executor: Executor | None = None,
) -> CachingComparison:
    """Plan ``s`` with prefix caching on and off (same streams), and simulate the on-plan's
    recommendation with caching off. Traffic without shared prefixes is refused: nothing
    could hit."""
    tr = s.traffic
    if tr.sessions is None and tr.system_prompts is None:
        raise InputError(
            "nothing to compare: only traffic with shared prefixes can hit the prefix cache; "
            "add traffic.sessions or traffic.system_prompts",
            where="traffic",
        )
    on, off = caching(s, True), caching(s, False)
    kw = dict(jobs=jobs, progress=progress, executor=executor)
    p_on = plan(on, catalog, **kw)  # type: ignore[arg-type]
    p_off = plan(off, catalog, **kw)  # type: ignore[arg-type]
    rec_on = rec_off = None
    if p_on.recommendation is not None and p_on.recommendation.best is not None:
        rec_on = p_on.recommendation.best
        rec_off = simulate(off, rec_on.config, catalog=catalog)
    return CachingComparison(p_on, p_off, rec_on, rec_off)
