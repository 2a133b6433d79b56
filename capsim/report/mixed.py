"""The mixed-fleet part of the plan report: the proposed mixes, each confirmed by simulation,
and whether the best mix beats the best single card type.

>>> format_mix_verdict(None, 4.0, "l4 fp8")
'No mix meets the SLO; the best single card type (l4 fp8, $4.00/h) stands.'
"""

from __future__ import annotations

from typing import Any

from capsim.planning.mixed import MixPlan
from capsim.planning.mixed_sim import fleet_p


def format_mix_verdict(best_usd: float | None, single_usd: float | None, single: str | None) -> str:
    """One sentence: does the best mix beat the best single card type, and by how much.

    >>> format_mix_verdict(3.0, 4.0, "h100-sxm fp8")
    'The best mix beats the best single card type (h100-sxm fp8, $4.00/h) by 25.0%: $3.00/h.'
    >>> format_mix_verdict(5.0, 4.0, "l4 fp8")
    'No mix beats the best single card type (l4 fp8, $4.00/h): the best mix costs $5.00/h (25.0% more).'
    """
    if best_usd is None:
        if single_usd is None:
            return "Neither a mix nor a single card type meets the SLO."
        return f"No mix meets the SLO; the best single card type ({single}, ${single_usd:.2f}/h) stands."
    if single_usd is None:
        return f"Only a mix meets the SLO: ${best_usd:.2f}/h (no single card type does)."
    if best_usd < single_usd - 1e-9:
        return (
            f"The best mix beats the best single card type ({single}, ${single_usd:.2f}/h) "
            f"by {1 - best_usd / single_usd:.1%}: ${best_usd:.2f}/h."
        )
    return (
        f"No mix beats the best single card type ({single}, ${single_usd:.2f}/h): the best mix "
        f"costs ${best_usd:.2f}/h ({best_usd / single_usd - 1:.1%} more)."
    )


def format_mix(m: MixPlan) -> str:
    """The mixes section of ``capsim plan``."""
    bounds = [0, *m.thresholds]
    names = [f"{lo}-{hi - 1}" for lo, hi in zip(bounds, m.thresholds, strict=False)] + [
        f">={m.thresholds[-1]}"
    ]
    lines = [
        "Mixed fleets (size-routed pools; Melange, arXiv:2404.14527): buckets of prompt + output "
        "tokens "
        + ", ".join(
            f"{i}: {n} ({sh:.1%})" for i, (n, sh) in enumerate(zip(names, m.shares, strict=True))
        ),
    ]
    if not m.proposals:
        lines.append("  the integer program proposed no mix of two or more card types")
    for i, p in enumerate(m.proposals, 1):
        milp = " + ".join(x.label() for x in p.pools_milp)
        lines.append(f"  {i}. MILP: {milp} (${p.usd_milp:.2f}/h at its capacity estimate)")
        if p.best is not None:
            e = p.best
            lines.append(
                f"     simulated: {e.label()}: ${e.usd_per_hour:.2f}/h, fleet-wide {fleet_p(e)} "
                f"(95% CI over {e.summary.replications} replications); {e.verdict}"
            )
        else:
            lines.append(f"     simulated: {p.reason}")
    lw = m.least_work
    if lw is not None:
        lines.append(
            f"  least-outstanding-work routing (work / pool speed) over the same cards: "
            f"{lw.label()}: ${lw.usd_per_hour:.2f}/h, fleet-wide {fleet_p(lw)} "
            f"(95% CI over {lw.summary.replications} replications); {lw.verdict}"
        )
    lines.append(format_mix_verdict(m.best_usd, m.single_usd, m.single_label))
    return "\n".join(lines)


def mix_dict(m: MixPlan) -> dict[str, Any]:
    """The mixes as JSON."""
    best = m.best.best if m.best is not None else None
    return {
        "thresholds": m.thresholds,
        "shares": m.shares,
        "proposals": [
            {
                "milp": [x.label() for x in p.pools_milp],
                "milp_usd_per_hour": p.usd_milp,
                "status": p.status,
                "reason": p.reason,
                "pools": [x.label() for x in p.best.pools] if p.best else None,
                "usd_per_hour": p.best.usd_per_hour if p.best else None,
            }
            for p in m.proposals
        ],
        "best_usd_per_hour": m.best_usd,
        "best_size_routed_usd_per_hour": best.usd_per_hour if best else None,
        "least_work": None
        if m.least_work is None
        else {
            "pools": [x.label() for x in m.least_work.pools],
            "usd_per_hour": m.least_work.usd_per_hour,
            "verdict": m.least_work.verdict,
        },
        "single_usd_per_hour": m.single_usd,
        "saving": m.saving,
    }
