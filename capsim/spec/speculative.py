"""Speculative decoding settings (``fleet.batching.engine.speculative``) and their acceptance law.

A proposer (a draft model, an EAGLE head, or n-gram lookup in the prompt) proposes ``k`` tokens;
the target model verifies them in one forward pass over ``k + 1`` positions per sequence and
keeps the accepted prefix plus one token of its own. With per-position acceptance rates
``a_1..a_k`` (``a_i``: the chance that token i is accepted once tokens 1..i-1 were), a verify
step emits N tokens, 1 <= N <= k + 1, with P(N > i) = a_1 ... a_i, so

    E[N] = 1 + sum_{i=1..k} prod_{j<=i} a_j,   constant a: (1 - a^(k+1)) / (1 - a)

(Leviathan et al. 2023, "Fast Inference from Transformers via Speculative Decoding",
arXiv:2211.17192, eq. 1).

>>> s = NgramSpec(kind="ngram", k=3, acceptance=0.5)
>>> s.expected_tokens()
1.875
"""

from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, field_validator, model_validator

from capsim.spec.models import TransformerModel
from capsim.strict import Strict


class _SpecBase(Strict):
    k: int = Field(ge=1, le=16, description="tokens proposed per verify step")
    acceptance: float | list[float] = Field(
        description=(
            "chance each proposed token is accepted given the ones before it were: one rate, "
            "or a list of k rates by position"
        )
    )

    @field_validator("acceptance")
    @classmethod
    def _rates(cls, v: float | list[float]) -> float | list[float]:
        rates = v if isinstance(v, list) else [v]
        if not rates or any(not (0.0 <= a <= 1.0) or math.isnan(a) for a in rates):
            raise ValueError("acceptance rates must lie in [0, 1]")
        return v

    @model_validator(mode="after")
    def _length(self) -> Any:
        if isinstance(self.acceptance, list) and len(self.acceptance) != self.k:
            raise ValueError(
                f"acceptance lists {len(self.acceptance)} rates; give one per proposed token "
                f"(k = {self.k}) or a single rate"
            )
        return self

    def rates(self) -> list[float]:
        """The k per-position acceptance rates.

        >>> NgramSpec(kind="ngram", k=2, acceptance=0.7).rates()
        [0.7, 0.7]
        """
        a = self.acceptance
        return list(a) if isinstance(a, list) else [float(a)] * self.k

    def survival(self) -> np.ndarray:
        """P(N > i) for i = 0..k: 1, a_1, a_1 a_2, ... (N: tokens emitted by a verify step).

        >>> NgramSpec(kind="ngram", k=2, acceptance=[0.5, 0.5]).survival().tolist()
        [1.0, 0.5, 0.25]
        """
        return np.concatenate([[1.0], np.cumprod(self.rates())])

    def expected_tokens(self) -> float:
        """E[N] = 1 + sum_i prod_{j<=i} a_j: tokens per sequence per verify step.

        >>> round(NgramSpec(kind="ngram", k=4, acceptance=0.8).expected_tokens(), 4)
        3.3616
        """
        return float(math.fsum(self.survival()))

    def pmf(self) -> np.ndarray:
        """P(N = n) for n = 1..k+1.

        >>> NgramSpec(kind="ngram", k=1, acceptance=0.25).pmf().tolist()
        [0.75, 0.25]
        """
        s = self.survival()
        return s - np.append(s[1:], 0.0)

    def sample_tokens(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """Tokens emitted by ``size`` verify steps, drawn from :meth:`pmf` with ``rng``.

        >>> s = NgramSpec(kind="ngram", k=3, acceptance=0.6)
        >>> a = s.sample_tokens(np.random.default_rng(1), 5)
        >>> (a == s.sample_tokens(np.random.default_rng(1), 5)).all() and a.min() >= 1
        np.True_
        """
        return rng.choice(np.arange(1, self.k + 2), size=size, p=self.pmf())


class DraftSpec(_SpecBase):
    """A separate draft model (a transformer card of the same tokenizer) proposes k tokens,
    one decode step each, on the same GPUs as the target."""

    kind: Literal["draft"]
    draft_model: str | TransformerModel = Field(
        description="model card name (looked up as the scenario's model is), or the card"
    )


class EagleSpec(_SpecBase):
    """An EAGLE-style head: about one decoder layer of the target (and the target's LM head)
    per proposed token, fed the target's hidden states."""

    kind: Literal["eagle"]


class NgramSpec(_SpecBase):
    """N-gram (prompt lookup) proposals: no model, host time only."""

    kind: Literal["ngram"]
    host_us_per_seq: float = Field(
        20.0,
        ge=0,
        description=(
            "host time of the lookup per sequence and verify step, microseconds (an estimate, "
            "not measured: vLLM V1 matches n-grams with a numba-compiled KMP on the CPU)"
        ),
    )


Speculative = Annotated[DraftSpec | EagleSpec | NgramSpec, Field(discriminator="kind")]
