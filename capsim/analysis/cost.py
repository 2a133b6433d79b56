"""Money and energy: prices per GPU-hour from the catalog, and a linear power model.

Power while a batch runs is ``warm_idle + (max - warm_idle) * f`` where ``f`` is 1 for
compute-bound work and ``memory_bound_fraction`` for memory-bound work (see
:func:`capsim.service.roofline.power_fraction`); between batches a replica draws its warm-idle
power (it holds the model in memory).

>>> from capsim.load import load_catalog
>>> price_per_gpu_hour(load_catalog()["h100-sxm"]).usd_per_hour
6.88
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.spec.catalog import GPU, PriceOption


@dataclass(frozen=True)
class Price:
    usd_per_hour: float
    provider: str
    instance: str | None

    @property
    def label(self) -> str:
        inst = f" {self.instance}" if self.instance else ""
        return f"{self.provider}{inst} ${self.usd_per_hour:g}/GPU-h"


def price_per_gpu_hour(gpu: GPU, provider: str | None = None) -> Price:
    """The catalog's default price, or the named provider's when the card lists one."""
    options: list[PriceOption] = [gpu.price, *gpu.price.alternatives]
    chosen: PriceOption = gpu.price
    if provider is not None:
        for o in options:
            if o.provider == provider:
                chosen = o
                break
    return Price(chosen.usd_per_hour, chosen.provider, chosen.instance)


def _option(gpu: GPU, provider: str | None) -> PriceOption:
    if provider is None:
        return gpu.price
    for o in (gpu.price, *gpu.price.alternatives):
        if o.provider == provider:
            return o
    have = ", ".join(o.provider for o in (gpu.price, *gpu.price.alternatives))
    raise ValueError(f"no {provider} price for {gpu.id}; the catalog has: {have}")


def tier_price(gpu: GPU, provider: str | None, tier: str) -> Price:
    """The price per GPU-hour of one purchase tier (on_demand, committed_1y, committed_3y,
    spot) at ``provider`` (None: the card's default provider).

    Raises ``ValueError`` ("no spot price for X at Y") where the catalog has no public figure.

    >>> from capsim.load import load_catalog
    >>> tier_price(load_catalog()["h100-sxm"], "gcp", "spot").usd_per_hour
    6.571
    """
    o = _option(gpu, provider)
    usd = o.tier_usd_per_hour(tier)
    if usd is None:
        name = tier.replace("_", " ").replace("1y", "1-year").replace("3y", "3-year")
        raise ValueError(
            f"no {name} price for {gpu.id} at {o.provider} in the catalog "
            f"(give one with its source, or choose another provider or tier)"
        )
    return Price(usd, o.provider, o.instance)


def batch_energy_j(
    gpu: GPU, durations: np.ndarray, power_fractions: np.ndarray, gpus_per_replica: int = 1
) -> float:
    """Energy of the busy periods (J): each batch at its own power level.

    Summed by numpy's pairwise sum, not a BLAS dot product: a threaded BLAS splits long vectors
    by its thread count, so the last digits would depend on the machine a run lands on (a Dask
    worker runs single-threaded BLAS), and local and distributed plans must print the same.
    """
    p = gpu.power
    watts = p.warm_idle_w + (p.max_w - p.warm_idle_w) * power_fractions
    return float(np.sum(np.asarray(durations) * watts)) * gpus_per_replica


def llm_busy_energy_j(
    gpu: GPU, prefill_s: float, decode_s: float, gpus_per_replica: int = 1
) -> float:
    """Energy of LLM engine iterations (J): those with prefill work at max power (compute-bound),
    decode-only ones at the memory-bound level."""
    p = gpu.power
    watts_dec = p.warm_idle_w + (p.max_w - p.warm_idle_w) * p.memory_bound_fraction
    return (prefill_s * p.max_w + decode_s * watts_dec) * gpus_per_replica


def idle_energy_j(gpu: GPU, idle_seconds: float, gpus_per_replica: int = 1) -> float:
    """Energy of warm-idle replica time (J)."""
    return gpu.power.warm_idle_w * idle_seconds * gpus_per_replica
