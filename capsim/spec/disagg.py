"""The ``disaggregation:`` section of a scenario: separate prefill and decode pools (xPyD).

``capsim plan`` then searches the pools' cards, precisions, tensor parallelism and replica
counts (x prefill : y decode) and compares the cheapest disaggregated fleet with the cheapest
co-located one on the same SLO and traffic; ``capsim simulate --decode-replicas`` simulates
one disaggregated fleet. See :mod:`capsim.sim.llm_disagg` for the model.

>>> d = Disaggregation(prefill={"gpus": ["h100-sxm"]})
>>> d.placement, d.prefill.gpus, d.decode.gpus
('auto', ['h100-sxm'], None)
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from capsim.spec.precision import MathFormat
from capsim.strict import Strict


class PoolChoices(Strict):
    """What one pool may use; a list left out means the scenario's ``candidates``."""

    gpus: list[str] | None = Field(None, min_length=1)
    precisions: list[MathFormat] | None = Field(None, min_length=1)
    tensor_parallel: list[int] | None = Field(None, min_length=1)
    max_replicas: int = Field(32, ge=1, description="largest replica count tried for this pool")

    @field_validator("tensor_parallel")
    @classmethod
    def _tp(cls, v: list[int] | None) -> list[int] | None:
        if v is not None and any(t not in (1, 2, 4, 8) for t in v):
            raise ValueError("tensor_parallel values must be among 1, 2, 4, 8")
        return v


class Disaggregation(Strict):
    """Disaggregated prefill/decode serving (DistServe, Splitwise, llm-d, NVIDIA Dynamo).

    ``placement``: where the KV cache travels. ``same_node``: over the card's GPU-to-GPU link
    (``interconnect``: NVLink, or PCIe); ``cross_node``: over the NICs (``interconnect.network``:
    InfiniBand or Ethernet); ``auto``: same node when both pools use one card type and the
    whole fleet fits in one node (``interconnect.max_gpus``), else across nodes.
    """

    placement: Literal["auto", "same_node", "cross_node"] = "auto"
    prefill: PoolChoices = Field(default_factory=PoolChoices)
    decode: PoolChoices = Field(default_factory=PoolChoices)
    pairs: int = Field(
        4,
        ge=1,
        le=50,
        description="prefill/decode configuration pairs simulated (cheapest lower bounds first)",
    )
