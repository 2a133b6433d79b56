"""The hardware catalog: one YAML file per GPU, every number with its source.

Units are in the field names: ``*_gib`` is GiB (2**30 bytes), ``*_gb_s`` is 10**9 bytes per
second, ``peak_tflops`` is dense (non-sparse) TFLOP/s or TOP/s per math format, ``*_w`` watts,
``*_us`` microseconds. A precision the card lacks in hardware is absent or ``null``; it is never
derived from another one.

>>> from capsim.load import load_catalog
>>> cat = load_catalog()
>>> gpu = cat["h100-sxm"]
>>> gpu.peak_flops("fp8") / 1e12
1979.0
>>> gpu.peak_flops("int4") is None
True
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from capsim.spec.calibration import Calibration
from capsim.spec.chip import Chip
from capsim.spec.precision import MathFormat, is_math_format
from capsim.strict import Strict

GIB = 2**30
#: A fraction of a peak that can be achieved: above 0, at most 1.
Fraction = Annotated[float, Field(gt=0, le=1)]


class Efficiency(Strict):
    """Achievable fraction of peak for the roofline (defaults when nothing was measured)."""

    compute: float = Field(0.7, gt=0, le=1, description="fraction of dense peak FLOP/s")
    memory: float = Field(0.8, gt=0, le=1, description="fraction of peak memory bandwidth")
    compute_by_format: dict[MathFormat, Fraction] = Field(
        default_factory=dict,
        description="per math format overrides of `compute` (e.g. fp8: 0.709 on H100)",
    )

    def compute_for(self, fmt: str) -> float:
        """Compute efficiency for one math format (the override, else the default)."""
        return next((v for k, v in self.compute_by_format.items() if k == fmt), self.compute)


#: Per-step latency of NCCL's ring/LL protocol by link (``hwLat``, Ring, LL column, in
#: https://github.com/NVIDIA/nccl/blob/master/src/graph/tuning.cc): NVLink 0.6 us, PCIe 1.0 us,
#: network 2.7 us. Used when an entry gives no ``hop_latency_us``.
NCCL_RING_LL_HOP_US = {"nvlink": 0.6, "infinity_fabric": 0.6, "pcie": 1.0, "none": 0.0, "net": 2.7}


class Network(Strict):
    """The link between nodes (InfiniBand / Ethernet NICs), for collectives wider than a node."""

    kind: Literal["infiniband", "ethernet"]
    bandwidth_gb_s: float = Field(gt=0, description="NIC bandwidth per GPU, per direction, GB/s")
    latency_us: float = Field(ge=0, description="alpha: fixed time of one cross-node collective")
    hop_latency_us: float = Field(
        NCCL_RING_LL_HOP_US["net"], ge=0, description="latency of one ring step over the network"
    )
    efficiency: float = Field(0.7, gt=0, le=1, description="achieved fraction of NIC bandwidth")


class Interconnect(Strict):
    """GPU-to-GPU links used by tensor-parallel collectives (alpha-beta model, see
    :func:`capsim.service.comm.collective_seconds`).

    ``latency_us`` is alpha, the fixed time of one collective call (launch, synchronisation,
    protocol set-up); each of the 2(p-1) ring steps adds ``hop_latency_us``; the bytes move at
    ``bandwidth_gb_s x efficiency`` (beta). ``network`` is the link between nodes.
    """

    kind: Literal["nvlink", "pcie", "infinity_fabric", "none"]
    bandwidth_gb_s: float = Field(gt=0, description="per-GPU, per-direction GB/s")
    latency_us: float = Field(
        6.6,
        ge=0,
        description="alpha: fixed time of one collective call (default: NCCL's Ring/LL baseLat)",
    )
    hop_latency_us: float | None = Field(
        None, ge=0, description="per ring step; None = NCCL's Ring/LL hwLat for the link kind"
    )
    efficiency: float = Field(0.7, gt=0, le=1, description="achieved fraction of link bandwidth")
    max_gpus: int = Field(8, ge=1, description="largest tensor-parallel group on one node")
    network: Network | None = Field(None, description="link between nodes; None = single node")

    @property
    def hop_us(self) -> float:
        """Latency of one ring step on this link (the entry's, else NCCL's for the kind)."""
        if self.hop_latency_us is not None:
            return self.hop_latency_us
        return NCCL_RING_LL_HOP_US[self.kind]


class Power(Strict):
    """Linear power model P(u) = idle + (max - idle) * u, plus the warm-idle state."""

    idle_w: float = Field(ge=0, description="parked: no process holds the card")
    warm_idle_w: float = Field(ge=0, description="a serving process holds the model, no work")
    max_w: float = Field(gt=0, description="board power limit (TDP)")
    memory_bound_fraction: float = Field(
        0.55, ge=0, le=1, description="share of (max - idle) drawn by memory-bound work"
    )

    @model_validator(mode="after")
    def _ordered(self) -> Power:
        if not self.idle_w <= self.max_w or not self.warm_idle_w <= self.max_w:
            raise ValueError("idle_w and warm_idle_w must not exceed max_w")
        return self


#: Purchase tiers a price can be given for (``on_demand`` is ``usd_per_hour``).
TIERS = ("on_demand", "committed_1y", "committed_3y", "spot")


class PriceOption(Strict):
    """One provider's price per GPU-hour: on demand, and optionally committed (1- and 3-year
    terms) and spot. A tier with no public figure is left out (``None``): the code then says
    so rather than guess. Tier prices need ``source`` (a URL) and ``as_of`` (the date read)."""

    provider: str
    usd_per_hour: float = Field(ge=0, description="per GPU, on demand (0: already paid for)")
    committed_1y_usd_per_hour: float | None = Field(None, ge=0, description="1-year commitment")
    committed_3y_usd_per_hour: float | None = Field(None, ge=0, description="3-year commitment")
    spot_usd_per_hour: float | None = Field(None, ge=0, description="spot / preemptible")
    source: str | None = Field(None, description="URL of the public price page")
    as_of: str | None = Field(
        None, pattern=r"^\d{4}-\d{2}-\d{2}$", description="date the prices were read"
    )
    instance: str | None = None
    note: str | None = None

    @model_validator(mode="after")
    def _tier_sources(self) -> PriceOption:
        tiers = (self.committed_1y_usd_per_hour, self.committed_3y_usd_per_hour,
                 self.spot_usd_per_hour)  # fmt: skip
        if any(t is not None for t in tiers) and (self.source is None or self.as_of is None):
            raise ValueError(
                "committed and spot prices need `source` (the price page URL) and `as_of` "
                "(YYYY-MM-DD, when it was read)"
            )
        return self

    def tier_usd_per_hour(self, tier: str) -> float | None:
        """The price of one tier (``TIERS``), None where the catalog has none.

        >>> PriceOption(provider="x", usd_per_hour=2.0).tier_usd_per_hour("on_demand")
        2.0
        """
        if tier == "on_demand":
            return self.usd_per_hour
        if tier not in TIERS:
            raise ValueError(f"unknown price tier {tier!r}; accepted: {', '.join(TIERS)}")
        return getattr(self, f"{tier}_usd_per_hour")


class Pricing(PriceOption):
    """The default on-demand price per GPU-hour, and alternatives by provider."""

    alternatives: tuple[PriceOption, ...] = Field((), strict=False)  # a YAML list


SOURCED_FIELDS = (
    "memory_gib",
    "usable_memory_gib",
    "bandwidth_gb_s",
    "peak_tflops",
    "efficiency",
    "kernel_overhead_us",
    "interconnect",
    "power",
    "price",
)


class GPU(Strict):
    """One catalog entry (one card)."""

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9._-]*$")
    name: str
    vendor: str = "nvidia"
    architecture: str | None = None
    memory_gib: float = Field(gt=0)
    usable_memory_gib: float = Field(gt=0, description="what the driver exposes to a process")
    bandwidth_gb_s: float = Field(gt=0)
    peak_tflops: dict[MathFormat, float | None]
    efficiency: Efficiency = Efficiency()
    kernel_overhead_us: float = Field(ge=0, description="fixed cost per kernel launch")
    interconnect: Interconnect
    power: Power
    price: Pricing
    sources: dict[str, str] = Field(description="field name -> where its number came from")
    notes: str | None = None
    calibration: Calibration | None = Field(
        None,
        description="measured tables and fitted curves (capsim calibrate); absent = roofline only",
    )
    chip: Chip | None = Field(None, description="SMs, L2 and clocks (capsim.spec.chip); optional")

    @field_validator("peak_tflops")
    @classmethod
    def _positive_peaks(cls, v: dict[str, float | None]) -> dict[str, float | None]:
        for fmt, val in v.items():
            if val is not None and val <= 0:
                raise ValueError(f"peak for {fmt} must be positive or null (unsupported)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> GPU:
        if self.usable_memory_gib > self.memory_gib:
            raise ValueError("usable_memory_gib cannot exceed memory_gib")
        missing = [f for f in SOURCED_FIELDS if f not in self.sources]
        if missing:
            raise ValueError(f"sources must name where each number came from; missing: {missing}")
        if self.calibration is not None and "calibration" not in self.sources:
            raise ValueError("sources must have a 'calibration' entry when calibration is given")
        if self.chip is not None and "chip" not in self.sources:
            raise ValueError("sources must have a 'chip' entry when chip is given")
        return self

    def peak_tflops_for(self, fmt: str) -> float | None:
        """``peak_tflops[fmt]``: None if the card lacks the format or ``fmt`` names none."""
        return self.peak_tflops.get(fmt) if is_math_format(fmt) else None

    def peak_flops(self, fmt: str) -> float | None:
        """Dense peak in FLOP/s (or OP/s) for a math format, None if unsupported."""
        tf = self.peak_tflops_for(fmt)
        return tf * 1e12 if tf else None

    @property
    def bandwidth(self) -> float:
        """Peak memory bandwidth in bytes/s."""
        return self.bandwidth_gb_s * 1e9

    @property
    def usable_memory_bytes(self) -> float:
        return self.usable_memory_gib * GIB

    def supported_formats(self) -> list[str]:
        return [f for f, v in self.peak_tflops.items() if v]


@dataclass(frozen=True)
class Catalog(Mapping[str, GPU]):
    """GPUs by id, plus the file each came from."""

    gpus: dict[str, GPU]
    files: dict[str, Path]

    def __getitem__(self, key: str) -> GPU:
        try:
            return self.gpus[key]
        except KeyError:
            raise KeyError(
                f"unknown GPU {key!r}; the catalog has: {', '.join(sorted(self.gpus))}"
            ) from None

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self.gpus))

    def __len__(self) -> int:
        return len(self.gpus)
