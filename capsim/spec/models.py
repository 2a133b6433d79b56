"""Model cards: what one inference costs in FLOPs and bytes.

Two kinds, told apart by ``kind``:

* ``fixed`` — a fixed-shape network (ResNet-50, BERT, an embedding model): one forward pass per
  request, FLOPs and activation traffic per sample, weights read once per batch.
* ``transformer`` — a decoder-only LLM given by its architecture; FLOPs, weight bytes and
  KV-cache bytes per token follow from it (see :mod:`capsim.service.llm`).

A scenario names a card (``model: resnet-50``, looked up in the scenario's ``models/`` folder and
then in the shipped cards) or gives it inline.

>>> from capsim.load import load_model_card
>>> m = load_model_card("resnet-50")
>>> round(m.flops_per_sample / 1e9, 1)
8.2
"""

from __future__ import annotations

import os
from typing import Annotated, Literal

from pydantic import Field, model_validator

from capsim.errors import InputError, parse_model
from capsim.spec.model_layers import Layer, LayerCost, fill_totals, layer_costs
from capsim.strict import Strict


class FixedModel(Strict):
    """A fixed-shape network: every request costs the same."""

    kind: Literal["fixed"] = "fixed"
    name: str
    task: str | None = Field(None, description="e.g. image classification, sentence embedding")
    params: float = Field(gt=0, description="parameter count")
    flops_per_sample: float = Field(gt=0, description="forward FLOPs for one request (2 x MACs)")
    activation_elements_per_sample: float = Field(
        gt=0, description="activation elements read+written per sample across all layers"
    )
    peak_activation_elements_per_sample: float = Field(
        gt=0, description="largest live activation set per sample (memory footprint)"
    )
    kernels_per_forward: int = Field(gt=0, description="kernel launches per forward pass")
    input: str = Field(description="input shape, e.g. '3x224x224 image' or '128 tokens'")
    output: str = Field(description="output shape, e.g. '1000 logits'")
    sources: dict[str, str] = Field(description="field name -> where its number came from")
    sequence_length: int | None = Field(None, gt=0, description="tokens per request (encoders)")
    max_sequence_length: int | None = Field(None, gt=0, description="longest accepted sequence")
    layers: tuple[Layer, ...] | None = Field(
        None, strict=False, description="operator graph; the totals above follow from it"
    )

    @model_validator(mode="before")
    @classmethod
    def _totals_from_layers(cls, data: object) -> object:
        return fill_totals(data)

    def layer_costs(self) -> list[LayerCost] | None:
        """Per-sample costs of the card's layers (None for a totals-only card)."""
        return None if self.layers is None else layer_costs(self.layers, self.sequence_length)

    def at_sequence_length(self, seq: int | None) -> FixedModel:
        """The card at another sequence length (``None``: unchanged); totals recomputed."""
        if seq is None or seq == self.sequence_length:
            return self
        if self.sequence_length is None or self.layers is None:
            raise ValueError(f"{self.name} takes no sequence length (not a layered encoder card)")
        if self.max_sequence_length is not None and seq > self.max_sequence_length:
            raise ValueError(f"{self.name} accepts at most {self.max_sequence_length} tokens")
        data = self.model_dump(
            exclude={
                "params",
                "flops_per_sample",
                "kernels_per_forward",
                "activation_elements_per_sample",
                "peak_activation_elements_per_sample",
            }
        )
        data.update(sequence_length=seq, input=f"{seq} tokens")
        return FixedModel.model_validate(data, strict=False)

    @model_validator(mode="after")
    def _sourced(self) -> FixedModel:
        missing = [
            f
            for f in ("params", "flops_per_sample", "activation_elements_per_sample")
            if f not in self.sources
        ]
        if missing:
            raise ValueError(f"sources must name where each number came from; missing: {missing}")
        return self


class TransformerModel(Strict):
    """A decoder-only transformer by architecture (Llama-style)."""

    kind: Literal["transformer"] = "transformer"
    name: str
    layers: int = Field(gt=0)
    hidden_size: int = Field(gt=0)
    attention_heads: int = Field(gt=0)
    kv_heads: int = Field(gt=0)
    head_dim: int | None = Field(None, gt=0, description="default hidden_size / attention_heads")
    ffn_size: int = Field(gt=0, description="intermediate size of the MLP")
    vocab_size: int = Field(gt=0)
    gated_mlp: bool = Field(True, description="SwiGLU-style gate + up projections")
    tied_embeddings: bool = False
    max_context: int = Field(4096, gt=0)
    published_params: float | None = Field(None, gt=0, description="published parameter count")
    published_active_params: float | None = Field(
        None, gt=0, description="published parameters active per token (mixture of experts)"
    )
    published_active_excludes_embedding: bool = Field(
        False, description="the published active count leaves out the input embedding table"
    )
    # -- mixture of experts (0 experts: a dense model) --
    experts: int = Field(0, ge=0, description="routed experts per MoE layer (0: dense MLP)")
    experts_per_token: int = Field(0, ge=0, description="routed experts each token uses (top-k)")
    shared_experts: int = Field(0, ge=0, description="experts every token uses")
    expert_ffn_size: int | None = Field(None, gt=0, description="intermediate size of one expert")
    shared_expert_ffn_size: int | None = Field(
        None, gt=0, description="intermediate size of one shared expert (default expert_ffn_size)"
    )
    first_dense_layers: int = Field(
        0, ge=0, description="leading layers with a dense MLP of ffn_size (first_k_dense_replace)"
    )
    routing_skew: float = Field(
        0.0, ge=0, description="Zipf exponent of expert popularity (0: uniform routing)"
    )
    # -- multi-head latent attention (DeepSeek-V2/V3): KV cache of kv_lora_rank + rope dims --
    kv_lora_rank: int | None = Field(None, gt=0, description="MLA compressed KV width")
    q_lora_rank: int | None = Field(None, gt=0, description="MLA compressed query width")
    qk_rope_head_dim: int | None = Field(None, gt=0, description="MLA decoupled RoPE key dims")
    qk_nope_head_dim: int | None = Field(None, gt=0, description="MLA per-head non-RoPE dims")
    v_head_dim: int | None = Field(None, gt=0, description="MLA per-head value dims")
    sources: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _heads(self) -> TransformerModel:
        if self.attention_heads % self.kv_heads:
            raise ValueError("attention_heads must be a multiple of kv_heads")
        if self.head_dim is None and self.hidden_size % self.attention_heads:
            raise ValueError("hidden_size must divide by attention_heads (or give head_dim)")
        if self.experts:
            if not 1 <= self.experts_per_token <= self.experts or self.expert_ffn_size is None:
                raise ValueError(
                    "a MoE card needs experts_per_token between 1 and experts and expert_ffn_size"
                )
            if self.first_dense_layers >= self.layers:
                raise ValueError("first_dense_layers must be fewer than layers")
        elif self.experts_per_token or self.shared_experts or self.first_dense_layers:
            raise ValueError("experts_per_token, shared_experts, first_dense_layers need experts")
        mla = (self.kv_lora_rank, self.qk_rope_head_dim, self.qk_nope_head_dim, self.v_head_dim)
        if any(x is not None for x in mla) and any(x is None for x in mla):
            raise ValueError(
                "MLA needs kv_lora_rank, qk_rope_head_dim, qk_nope_head_dim and v_head_dim"
            )
        return self

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.hidden_size // self.attention_heads

    @property
    def is_moe(self) -> bool:
        """Whether the MLP of (most) layers is a mixture of experts."""
        return self.experts > 0

    @property
    def is_mla(self) -> bool:
        """Whether attention is multi-head latent attention (compressed KV)."""
        return self.kv_lora_rank is not None

    @property
    def moe_layers(self) -> int:
        """Layers whose MLP is a mixture of experts (0 for a dense model)."""
        return self.layers - self.first_dense_layers if self.experts else 0

    @property
    def shared_ffn(self) -> int:
        """Intermediate size of one shared expert."""
        return self.shared_expert_ffn_size or self.expert_ffn_size or self.ffn_size


ModelCard = Annotated[FixedModel | TransformerModel, Field(discriminator="kind")]


class _CardFile(Strict):
    card: ModelCard


def parse_model_card(
    data: object, *, file: str | os.PathLike | None
) -> FixedModel | TransformerModel:
    """Validate a model card given as a mapping (from YAML or inline in a scenario)."""
    if not isinstance(data, dict):
        raise InputError("a model card must be a mapping", file=file)
    return parse_model(_CardFile, {"card": data}, file=file).card
