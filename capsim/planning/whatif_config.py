"""What-if configuration: the policies compared, the baseline, the fleet's configuration.

>>> from capsim.load import load_scenario
>>> s = load_scenario("scenarios/embedding_autoscaled.yaml")
>>> [p.label for p in policies_for(s)][:2]
['fixed-peak', 'hpa-util']
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from capsim.errors import InputError
from capsim.planning.static import Candidate, search_candidate
from capsim.spec.autoscaling import FixedSpec, SplitSpec
from capsim.spec.catalog import Catalog
from capsim.spec.precision import PRECISIONS
from capsim.spec.scenario import Scenario


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


SERVING = ("colocated", "disaggregated", "both")


def serving_mode(s: Scenario, serving: str | None) -> str:
    """``colocated``, ``disaggregated`` or ``both`` (default: both with ``disaggregation:``).

    >>> from capsim.load import load_scenario
    >>> serving_mode(load_scenario("scenarios/chatbot_disagg.yaml"), None)
    'both'
    """
    mode = serving or ("both" if s.disaggregation is not None else "colocated")
    if mode not in SERVING:
        raise InputError(
            f"unknown serving '{mode}'; accepted: {', '.join(SERVING)}", param="serving"
        )
    if mode != "colocated":
        if not s.is_llm:
            raise InputError(
                "disaggregated serving splits an LLM's prefill and decode: the model is not a "
                "transformer",
                param="serving",
            )
        if s.capacity is not None:
            raise InputError(
                "spot and committed capacity (capacity:) is not modelled for a disaggregated "
                "fleet; run the what-if with --serving colocated",
                param="serving",
            )
    return mode


@dataclass(frozen=True)
class Row:
    """One what-if row: a policy on the co-located or the disaggregated fleet."""

    spec: Any
    name: str
    serving: str  # co-located | disaggregated

    @property
    def peak(self) -> bool:
        """A fixed fleet (in either pool) sized for the peak."""
        specs = (
            [getattr(self.spec, q) for q in ("prefill", "decode")] if self.split else [self.spec]
        )
        return any(isinstance(p, FixedSpec) and p.replicas == "peak" for p in specs)

    @property
    def split(self) -> bool:
        return isinstance(self.spec, SplitSpec)


def policy_rows(specs: Sequence[Any], mode: str) -> list[Row]:
    """The rows a what-if runs: each policy co-located (``split`` ones are skipped) and/or
    disaggregated; with both, a disaggregated row of a shared policy is named ``name [P/D]``.

    >>> from capsim.spec.autoscaling import HPASpec
    >>> hpa = HPASpec(kind="hpa", metric="inflight", target=30)
    >>> [(r.name, r.serving) for r in policy_rows([hpa], "both")]
    [('hpa', 'co-located'), ('hpa [P/D]', 'disaggregated')]
    """
    rows = []
    if mode in ("colocated", "both"):
        rows += [Row(sp, sp.label, "co-located") for sp in specs if not isinstance(sp, SplitSpec)]
    if mode in ("disaggregated", "both"):
        for sp in specs:
            tag = " [P/D]" if mode == "both" and not isinstance(sp, SplitSpec) else ""
            rows.append(Row(sp, sp.label + tag, "disaggregated"))
    if not rows:
        raise InputError(
            "every policy is split (per pool): they run on a disaggregated fleet only; use "
            "--serving disaggregated or both",
            where="whatif.policies",
        )
    return rows


def decode_config(
    s: Scenario, cat: Catalog, prefill: tuple[str, str, int], decode: tuple[Any, Any, Any]
) -> Candidate:
    """The decode pool's configuration: each of (gpu, precision, tp) given, else the prefill
    pool's."""
    g = decode[0] or prefill[0]
    p = decode[1] or prefill[1]
    t = int(decode[2] or prefill[2])
    if g not in cat.gpus:
        raise InputError(
            f"unknown GPU '{g}'; the catalog has: {', '.join(cat)}", param="decode_gpu"
        )
    if p not in PRECISIONS:
        raise InputError(
            f"unknown precision '{p}'; accepted: {', '.join(PRECISIONS)}", param="decode_precision"
        )
    return Candidate(g, p, t)
