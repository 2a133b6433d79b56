"""How the fleet's capacity is bought: a base of never-interrupted replicas (committed or on
demand) plus the autoscaled burst (on demand or spot), and how spot replicas are interrupted.

The scenario's ``capacity:`` block::

    capacity:
      provider: gcp               # whose prices (hardware_catalog/*.yaml price tiers)
      base: {replicas: 2, tier: committed_1y}   # billed for the whole horizon, never interrupted
      burst: spot                 # the autoscaled replicas above the base
      interruptions: {kind: poisson, rate_per_hour: 0.2}   # per spot replica-hour
      notice_s: 30                # GCP: 30 s preemption notice; AWS: 2 min

Spot interruptions are a Poisson process per spot replica (``rate_per_hour`` per ready
replica-hour), or a trace of notice times (each interrupts the oldest ready spot replica). At a
notice the replica takes no new work and a replacement is requested (cold start); at the end of
the notice whatever it still holds is re-queued (an LLM request is recomputed, prefill again).
With ``drain_on_notice: false`` (no termination handler) the replica serves on until it is
reclaimed, and is replaced only then.

>>> c = Capacity(burst="spot", interruptions={"kind": "poisson", "rate_per_hour": 0.5})
>>> c.base.replicas, c.notice_s, c.interruptions.rate_per_hour
(0, 120.0, 0.5)
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, model_validator

from capsim.strict import Strict

#: Notice before a spot replica is reclaimed: AWS EC2 "two minutes"
#: (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/spot-instance-termination-notices.html);
#: GCP Compute Engine Spot VMs 30 s (https://cloud.google.com/compute/docs/instances/spot,
#: "Preemption process"); Azure Spot VMs at least 30 s through Scheduled Events
#: (https://learn.microsoft.com/azure/virtual-machines/linux/scheduled-events).
NOTICE_S = {"aws": 120.0, "gcp": 30.0, "azure": 30.0}


class PoissonInterruptions(Strict):
    """Interruption notices as a Poisson process: ``rate_per_hour`` per spot replica-hour."""

    kind: Literal["poisson"]
    rate_per_hour: float = Field(
        ge=0,
        le=60,
        description="interruptions per spot replica-hour (at most 60: one a minute)",
    )


class TraceInterruptions(Strict):
    """Interruption notices at given times (s); each takes the oldest ready spot replica."""

    kind: Literal["trace"]
    times_s: tuple[float, ...] = Field(strict=False, description="notice times, seconds")

    @model_validator(mode="after")
    def _sorted(self) -> TraceInterruptions:
        if any(t < 0 for t in self.times_s) or list(self.times_s) != sorted(self.times_s):
            raise ValueError("times_s must be non-negative and in increasing order")
        return self


Interruptions = Annotated[PoissonInterruptions | TraceInterruptions, Field(discriminator="kind")]


class Base(Strict):
    """Replicas held for the whole horizon and never interrupted (a committed-use base)."""

    replicas: int = Field(0, ge=0)
    tier: Literal["committed_1y", "committed_3y", "on_demand"] = "committed_1y"


class Capacity(Strict):
    """The purchase mix of an autoscaled fleet (see the module docstring)."""

    provider: str | None = Field(None, description="whose prices; None = the card's default")
    base: Base = Base()
    burst: Literal["on_demand", "spot"] = "on_demand"
    interruptions: Interruptions | None = Field(
        None, description="spot interruptions; None = none (spot priced, never interrupted)"
    )
    notice_s: float = Field(120.0, ge=0, description="warning before a spot replica is reclaimed")
    drain_on_notice: bool = Field(
        True,
        description="true: at the notice the replica takes no new work and its replacement is "
        "requested (a termination handler); false: it serves until reclaimed and is replaced then",
    )

    @model_validator(mode="after")
    def _spot_only(self) -> Capacity:
        if self.interruptions is not None and self.burst != "spot":
            raise ValueError("interruptions apply to spot replicas: set burst: spot")
        return self
