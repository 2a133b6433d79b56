"""Operator graphs of fixed-shape models: the layers of a model card and their per-sample costs.

A fixed-shape card may list its layers, one fused kernel each (a convolution with its folded
BatchNorm, activation and residual add; a GEMM with its bias; fused attention; an element-wise
pass). Each layer gives its shapes; FLOPs, weight elements and input/output activation elements
per sample follow from them (:meth:`Layer.cost`). Shapes that grow with the sequence of an encoder
are written ``seq`` and take the card's (or the scenario's) sequence length.

Kinds (``kind``), with FLOPs = 2 x multiply-accumulates:

* ``conv``: ``input: [C, H, W]``, ``output: [C, H, W]``, ``kernel: [kh, kw]``, ``groups``;
  an implicit GEMM of M = H_out x W_out, N = C_out / groups, K = C_in / groups x kh x kw.
  ``residual: true`` reads a shortcut tensor of the output's size (fused add).
* ``matmul``: ``m`` rows (per sample; ``seq`` for tokens) x ``k`` -> ``n``, plus a bias.
* ``attention``: fused attention (flash / TensorRT fMHA): QK^T and probabilities x V,
  4 x heads x q x kv x head_dim FLOPs; reads Q, K, V, writes the context; scores stay on chip.
* ``elementwise`` / ``norm``: ``rows`` x ``cols`` elements, ``inputs`` tensors read, one written.
* ``pool``: ``input`` -> ``output``, ``window`` input elements per output element.
* ``embedding``: gathers ``rows`` rows of ``dim`` from each table (``vocab`` sizes).

``extra_params`` counts parameters a layer carries besides its weights (folded BatchNorm gamma
and beta), so the card's parameter count is the sum over its layers.

>>> layer = Conv(name="c", input=(64, 56, 56), output=(64, 56, 56), kernel=(3, 3))
>>> c = layer.cost(None)
>>> c.flops == 2 * 56 * 56 * 64 * 64 * 9, c.gemm
(True, (3136, 64, 576, 1))
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import Field, TypeAdapter, ValidationError, model_validator

from capsim.strict import Strict

Dim = Annotated[int, Field(gt=0)] | Literal["seq"]

#: operator families: what a calibration curve or an efficiency is measured for
FAMILIES = ("gemm", "conv", "depthwise", "attention", "elementwise")


@dataclass(frozen=True)
class LayerCost:
    """Per-sample work of one layer at one sequence length.

    ``gemm`` is (M per sample, N, K, independent GEMMs per sample) for the tile model, or None
    for memory-bound kinds.
    """

    name: str
    kind: str
    family: str
    flops: float
    params: float
    weight_read: float
    in_elems: float
    out_elems: float
    kernels: int
    gemm: tuple[int, int, int, int] | None

    @property
    def act_elems(self) -> float:
        """Activation elements read + written per sample."""
        return self.in_elems + self.out_elems


def _dim(v: int | str, seq: int | None, name: str) -> int:
    if v == "seq":
        if seq is None:
            raise ValueError(f"layer {name!r} uses 'seq' but the card has no sequence_length")
        return seq
    return int(v)


class _Base(Strict):
    name: str
    kernels: int = Field(1, ge=0, description="kernel launches of this layer")
    extra_params: int = Field(0, ge=0, description="parameters besides weights (folded BN)")


class Conv(_Base):
    """A convolution (implicit GEMM), optionally grouped / depthwise, optionally with a fused
    residual add."""

    kind: Literal["conv"] = "conv"
    input: tuple[int, int, int] = Field(strict=False)
    output: tuple[int, int, int] = Field(strict=False)
    kernel: tuple[int, int] = Field(strict=False)
    groups: int = Field(1, gt=0)
    bias: bool = False
    residual: bool = False

    @model_validator(mode="after")
    def _groups(self) -> Conv:
        if self.input[0] % self.groups or self.output[0] % self.groups:
            raise ValueError("input and output channels must divide by groups")
        return self

    def cost(self, seq: int | None) -> LayerCost:
        (ci, hi, wi), (co, ho, wo), (kh, kw) = self.input, self.output, self.kernel
        k = ci // self.groups * kh * kw
        weights = co * k + (co if self.bias else 0)
        out = co * ho * wo
        family = "depthwise" if self.groups > 1 and ci // self.groups < 8 else "conv"
        return LayerCost(
            self.name, self.kind, family, 2.0 * out * k, weights + self.extra_params,
            weights + self.extra_params, ci * hi * wi + (out if self.residual else 0), out,
            self.kernels, (ho * wo, co // self.groups, k, self.groups),
        )  # fmt: skip


class Matmul(_Base):
    """A dense layer: ``m`` rows x ``k`` inputs -> ``n`` outputs (weights n x k, bias n).

    ``batch`` independent GEMMs per sample (e.g. one per head); ``weights: false`` when both
    operands are activations (Q x K^T of an unfused attention): the n x k operand is read as an
    activation and there are no parameters.
    """

    kind: Literal["matmul"] = "matmul"
    m: Dim
    n: int = Field(gt=0)
    k: int = Field(gt=0)
    bias: bool = True
    residual: bool = False
    batch: int = Field(1, gt=0)
    weights: bool = True

    def cost(self, seq: int | None) -> LayerCost:
        m, g = _dim(self.m, seq, self.name), self.batch
        out = g * m * self.n
        if self.weights:
            w = g * (self.n * self.k + (self.n if self.bias else 0)) + self.extra_params
            ins = g * m * self.k
        else:
            w = (g * self.n if self.bias else 0) + self.extra_params
            ins = g * (m * self.k + self.k * self.n)
        return LayerCost(
            self.name, self.kind, "gemm", 2.0 * g * m * self.n * self.k, w, w,
            ins + (out if self.residual else 0), out, self.kernels, (m, self.n, self.k, g),
        )  # fmt: skip


class Attention(_Base):
    """Fused multi-head attention: the scores never leave the chip."""

    kind: Literal["attention"] = "attention"
    heads: int = Field(gt=0)
    head_dim: int = Field(gt=0)
    q: Dim
    kv: Dim

    def cost(self, seq: int | None) -> LayerCost:
        q, kv = _dim(self.q, seq, self.name), _dim(self.kv, seq, self.name)
        hd = self.heads * self.head_dim
        return LayerCost(
            self.name, self.kind, "attention", 4.0 * self.heads * q * kv * self.head_dim,
            self.extra_params, self.extra_params, (q + 2 * kv) * hd, q * hd, self.kernels,
            (q, kv, self.head_dim, self.heads),
        )  # fmt: skip


class Elementwise(_Base):
    """An element-wise pass (activation, bias, residual add, softmax...) or a normalisation."""

    kind: Literal["elementwise", "norm"] = "elementwise"
    rows: Dim
    cols: int = Field(gt=0)
    inputs: int = Field(1, ge=1, description="tensors of rows x cols read")
    flops_per_element: float = Field(1.0, ge=0, strict=False)

    def cost(self, seq: int | None) -> LayerCost:
        n = _dim(self.rows, seq, self.name) * self.cols
        return LayerCost(
            self.name, self.kind, "elementwise", n * self.flops_per_element, self.extra_params,
            self.extra_params, n * self.inputs, n, self.kernels, None,
        )  # fmt: skip


class Pool(_Base):
    """Max or average pooling (global pooling: the window is the whole plane)."""

    kind: Literal["pool"] = "pool"
    input: tuple[int, int, int] = Field(strict=False)
    output: tuple[int, int, int] = Field(strict=False)
    window: int = Field(gt=0, description="input elements per output element")

    def cost(self, seq: int | None) -> LayerCost:
        out = math.prod(self.output)
        return LayerCost(
            self.name, self.kind, "elementwise", float(out * self.window), self.extra_params,
            self.extra_params, math.prod(self.input), out, self.kernels, None,
        )  # fmt: skip


class Embedding(_Base):
    """Table lookups: ``rows`` ids into each table of ``vocab`` rows, summed (BERT word +
    position + token type)."""

    kind: Literal["embedding"] = "embedding"
    rows: Dim
    dim: int = Field(gt=0)
    vocab: tuple[int, ...] = Field(strict=False, min_length=1)

    def cost(self, seq: int | None) -> LayerCost:
        r = _dim(self.rows, seq, self.name)
        gathered = r * self.dim * len(self.vocab)
        return LayerCost(
            self.name, self.kind, "elementwise", float(gathered), sum(self.vocab) * self.dim
            + self.extra_params, gathered + self.extra_params, r * len(self.vocab),
            r * self.dim, self.kernels, None,
        )  # fmt: skip


Layer = Annotated[
    Conv | Matmul | Attention | Elementwise | Pool | Embedding, Field(discriminator="kind")
]


@dataclass(frozen=True)
class Totals:
    """Whole-network per-sample totals of a layer list (the totals-only card fields)."""

    params: float
    flops: float
    act_elems: float
    peak_act_elems: float
    kernels: int


def layer_costs(layers, seq: int | None) -> list[LayerCost]:
    """Per-sample costs of every layer at sequence length ``seq``."""
    return [layer.cost(seq) for layer in layers]


def totals(costs: list[LayerCost]) -> Totals:
    """Sum a layer list into the totals a totals-only card gives.

    >>> t = totals(layer_costs([Matmul(name="fc", m=1, n=10, k=4)], None))
    >>> t.params, t.flops, t.act_elems, t.kernels
    (50, 80.0, 14, 1)
    """
    return Totals(
        params=sum(c.params for c in costs),
        flops=sum(c.flops for c in costs),
        act_elems=sum(c.act_elems for c in costs),
        peak_act_elems=max(c.act_elems for c in costs),
        kernels=sum(c.kernels for c in costs),
    )


TOTAL_FIELDS = {
    "params": "params",
    "flops_per_sample": "flops",
    "activation_elements_per_sample": "act_elems",
    "peak_activation_elements_per_sample": "peak_act_elems",
    "kernels_per_forward": "kernels",
}

_LAYERS = TypeAdapter(tuple[Layer, ...])


def fill_totals(data: object) -> object:
    """Raw card mapping with the totals fields computed from its ``layers`` (before validation).

    Totals the card states itself must agree with its layers within 0.5%. Invalid layers are
    left for field validation to report.
    """
    if not isinstance(data, dict) or data.get("layers") is None:
        return data
    try:
        layers = _LAYERS.validate_python(data["layers"])
    except ValidationError:
        return data
    seq = data.get("sequence_length")
    if any(layer_uses_seq(x) for x in layers) and not isinstance(seq, int):
        raise ValueError("layers use 'seq': the card needs sequence_length")
    t = totals(layer_costs(layers, seq))
    out = dict(data)
    for field, attr in TOTAL_FIELDS.items():
        value = getattr(t, attr)
        given = data.get(field)
        if isinstance(given, int | float) and abs(given - value) > 0.005 * value:
            raise ValueError(f"{field} = {given:g} disagrees with its layers' sum {value:g}")
        out[field] = int(value) if field == "kernels_per_forward" else float(value)
    return out


def layer_uses_seq(layer) -> bool:
    """Whether any shape of ``layer`` is the sequence length."""
    return any(getattr(layer, f, None) == "seq" for f in ("m", "q", "kv", "rows"))
