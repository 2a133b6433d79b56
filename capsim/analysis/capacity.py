"""Cost of an autoscaled fleet by purchase tier, and what spot interruptions did.

The base (``capacity.base.replicas``) is billed for the whole horizon at its tier's price
(a commitment is paid whether used or not); every replica-second above it is burst, billed at
the on-demand or spot price. ``on_demand_cost_usd`` is the same replica-seconds all at the
on-demand price, so ``saving_usd`` is what the purchase mix saves on this run (the replica-hours
themselves differ from an on-demand run's: interrupted replicas are replaced through cold start).

>>> p = TierPrices(provider="gcp", base_tier="committed_1y", base_usd=2.0,
...                burst_tier="spot", burst_usd=1.0, on_demand_usd=4.0)
>>> sorted(tier_costs(p, base_s=3600.0, burst_s=7200.0, tp=1).items())
[('cost_base_usd', 2.0), ('cost_burst_usd', 2.0), ('on_demand_cost_usd', 12.0), ('saving_vs_on_demand_usd', 8.0)]
"""

from __future__ import annotations

from dataclasses import dataclass

from capsim.analysis.cost import price_per_gpu_hour, tier_price
from capsim.errors import InputError
from capsim.spec.capacity import Capacity
from capsim.spec.catalog import GPU

HOUR = 3600.0


@dataclass(frozen=True)
class TierPrices:
    """Prices per GPU-hour of a fleet's base and burst, and the on-demand reference."""

    provider: str
    base_tier: str
    base_usd: float
    burst_tier: str
    burst_usd: float
    on_demand_usd: float


def price_provider(s) -> str | None:
    """The provider whose on-demand prices a scenario's fixed fleets are costed at: the
    ``capacity.provider`` where given, else ``candidates.price_provider`` (None: the card's
    default)."""
    cap = getattr(s, "capacity", None)
    if cap is not None and cap.provider is not None:
        return cap.provider
    return s.candidates.price_provider


def capacity_prices(gpu: GPU, cap: Capacity | None, provider: str | None = None) -> TierPrices:
    """The tier prices of ``cap`` for ``gpu`` (``cap`` None: everything on demand at
    ``provider``, the scenario's ``candidates.price_provider``).

    Raises :class:`InputError` naming ``capacity.base.tier`` or ``capacity.burst`` where the
    catalog has no public price for that tier at that provider.
    """
    if cap is None:
        p = price_per_gpu_hour(gpu, provider)
        return TierPrices(p.provider, "on_demand", p.usd_per_hour, "on_demand", p.usd_per_hour,
                          p.usd_per_hour)  # fmt: skip
    prov = cap.provider if cap.provider is not None else provider
    out = {}
    for where, tier in (("capacity.base.tier", cap.base.tier), ("capacity.burst", cap.burst),
                        ("capacity.provider", "on_demand")):  # fmt: skip
        if where == "capacity.base.tier" and cap.base.replicas == 0:
            tier = "on_demand"
        try:
            out[where] = tier_price(gpu, prov, tier)
        except ValueError as e:
            raise InputError(str(e), where=where) from None
    od = out["capacity.provider"]
    return TierPrices(
        provider=od.provider,
        base_tier=cap.base.tier,
        base_usd=out["capacity.base.tier"].usd_per_hour,
        burst_tier=cap.burst,
        burst_usd=out["capacity.burst"].usd_per_hour,
        on_demand_usd=od.usd_per_hour,
    )


def tier_costs(p: TierPrices, *, base_s: float, burst_s: float, tp: int) -> dict[str, float]:
    """Cost scalars of ``base_s`` base and ``burst_s`` burst replica-seconds (``tp`` GPUs each)."""
    base = base_s * tp / HOUR * p.base_usd
    burst = burst_s * tp / HOUR * p.burst_usd
    od = (base_s + burst_s) * tp / HOUR * p.on_demand_usd
    return {
        "cost_base_usd": base,
        "cost_burst_usd": burst,
        "on_demand_cost_usd": od,
        "saving_vs_on_demand_usd": od - (base + burst),
    }


def spot_scalars(lc, fleet) -> dict[str, float]:
    """Interruptions (notices), requests re-queued, notices that found no spot replica, and
    batches that outlasted their notice (batched engine)."""
    return {
        "interruptions": float(getattr(lc, "interruptions", 0)),
        "requeued": float(getattr(fleet, "requeued", 0)),
        "missed_notices": float(getattr(lc, "missed_notices", 0)),
        "notice_overruns": float(getattr(fleet, "notice_overruns", 0)),
    }
