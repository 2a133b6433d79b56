"""Multi-turn sessions and shared system prompts (``traffic.sessions``, ``traffic.system_prompts``).

>>> Turns(kind="fixed", mean=3).max
64
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from capsim.strict import Strict

__all__ = ["MessageLengths", "Sessions", "SystemPrompts", "Turns"]


class Turns(Strict):
    """Turns per session: ``fixed`` (``mean`` turns each) or ``geometric`` (1, 2, ... with mean
    ``mean``, as when each turn is the last with probability 1 / mean); at most ``max``."""

    kind: Literal["fixed", "geometric"] = "geometric"
    mean: float = Field(ge=1, description="mean turns per session (fixed: the number)")
    max: int = Field(64, ge=1, description="most turns in one session")

    @model_validator(mode="after")
    def _whole(self) -> Turns:
        if self.kind == "fixed" and self.mean != int(self.mean):
            raise ValueError(f"fixed turns need a whole number (got mean {self.mean:g})")
        if self.mean > self.max:
            raise ValueError(f"mean turns {self.mean:g} is above max {self.max}")
        return self


class MessageLengths(Strict):
    """Tokens of the new user message of each turn (lognormal, clipped to [1, max])."""

    median: float = Field(gt=0)
    sigma: float = Field(0.0, ge=0)
    max: int = Field(4096, gt=0)


class Sessions(Strict):
    """Multi-turn sessions: ``traffic.arrivals`` gives the sessions' start times. Turn n's
    prompt is the system prompt (if any), the previous turns' messages and outputs, and a new
    message; its output follows ``traffic.tokens``. A session ends after its turns, or before
    a turn whose prompt would exceed ``traffic.tokens.prompt_max``."""

    turns: Turns
    think_time_s: float = Field(
        ge=0, description="mean time from one turn's send to the next (open loop)"
    )
    think: Literal["exponential", "fixed"] = "exponential"
    message: MessageLengths


class SystemPrompts(Strict):
    """K shared system prompts of the given lengths; prompt k is picked with probability
    proportional to 1 / k^zipf_exponent (k = 1 the most popular)."""

    lengths: list[int] = Field(min_length=1, description="tokens of each system prompt")
    zipf_exponent: float = Field(1.0, ge=0, description="popularity law (0: uniform)")

    @field_validator("lengths")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x < 1 for x in v):
            raise ValueError("system prompt lengths must be >= 1 token")
        return v
