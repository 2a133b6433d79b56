"""The ``mix:`` section of a scenario: mixed fleets of size-routed pools (see
capsim.planning.mixed).

>>> Mix(size_thresholds=[3000]).routing
'size'
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from capsim.strict import Strict


class Mix(Strict):
    """Mixed fleets (``capsim plan``): route requests by size to pools of different cards.

    A request whose prompt + output tokens is below ``size_thresholds[0]`` falls in bucket 0,
    and so on (the routing of Mélange, Griggs et al. 2024, arXiv:2404.14527).
    """

    size_thresholds: list[int] = Field(
        min_length=1, description="bucket bounds on prompt + output tokens, increasing"
    )
    proposals: int = Field(3, ge=1, le=10, description="mixes proposed by the MILP and simulated")
    routing: Literal["size", "least_work"] = Field(
        "size",
        description="size: thresholds only; least_work: also the best size mix's card types "
        "behind a least-outstanding-work router (work normalised by each pool's speed)",
    )
    utilisation: float = Field(
        0.8, gt=0, le=1, description="share of a replica's optimistic capacity usable at the SLO"
    )

    @field_validator("size_thresholds")
    @classmethod
    def _increasing(cls, v: list[int]) -> list[int]:
        if v[0] < 1 or any(b <= a for a, b in zip(v, v[1:], strict=False)):
            raise ValueError("size_thresholds must be positive and strictly increasing")
        return v
