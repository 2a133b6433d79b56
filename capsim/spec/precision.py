"""Numeric precisions: what is stored, and what the math runs on.

A precision names a *storage* format for weights and activations (which decides memory traffic
and footprint) and the tensor-core format the math runs on. The KV cache is stored apart: in the
model's activation dtype unless the engine's ``kv_cache_dtype`` says otherwise (see
:func:`kv_cache_bits`), as vLLM's ``--kv-cache-dtype`` does. The math format must
be one the card supports in hardware; when a precision lists several acceptable math formats, the
first one the card has is used. For example ``int4`` is W4A16 (AWQ/GPTQ style): weights move at
4 bits, the math runs on FP16 tensor cores (BF16 if the card lacks FP16).

>>> PRECISIONS["int4"].weight_bytes
0.5
>>> PRECISIONS["int4"].math_format({"fp16": 65.0, "int8": 130.0})
'fp16'
>>> PRECISIONS["fp8"].math_format({"fp16": 312.0}) is None
True
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeGuard, get_args

#: The one list of number formats (math formats and precision names share it), in this order.
MathFormat = Literal["fp32", "tf32", "fp16", "bf16", "fp8", "int8", "int4"]
MATH_FORMATS: tuple[MathFormat, ...] = get_args(MathFormat)
#: The formats the calibrate/ harness measures GEMMs in (it has no int4 kernel).
HARNESS_FORMATS: tuple[str, ...] = tuple(f for f in MATH_FORMATS if f != "int4")


def is_math_format(name: str) -> TypeGuard[MathFormat]:
    """Whether ``name`` is one of :data:`MATH_FORMATS` (narrows ``str`` to ``MathFormat``).

    >>> is_math_format("bf16"), is_math_format("bfloat16")
    (True, False)
    """
    return name in MATH_FORMATS


@dataclass(frozen=True)
class Precision:
    """Storage bits of weights / activations, acceptable math formats (in order) and ``kv_bits``:
    the KV cache under ``kv_cache_dtype: auto`` (the model's activation dtype: 16 bits for
    FP8/INT8/INT4 weight-quantized models, as vLLM's ``auto`` stores it)."""

    name: str
    weight_bits: int
    act_bits: int
    kv_bits: int
    math: tuple[str, ...]
    description: str

    @property
    def weight_bytes(self) -> float:
        return self.weight_bits / 8

    @property
    def act_bytes(self) -> float:
        return self.act_bits / 8

    @property
    def kv_bytes(self) -> float:
        return self.kv_bits / 8

    def math_format(self, peaks: Mapping[Any, float | None]) -> str | None:
        """The first acceptable math format with a (non-null) peak on this card, or None."""
        for fmt in self.math:
            if peaks.get(fmt):
                return fmt
        return None


PRECISIONS: dict[str, Precision] = {
    p.name: p
    for p in (
        Precision("fp32", 32, 32, 32, ("fp32",), "FP32 weights and math (CUDA cores)"),
        Precision("tf32", 32, 32, 32, ("tf32",), "FP32 storage, TF32 tensor-core math"),
        Precision("fp16", 16, 16, 16, ("fp16",), "FP16 weights, activations and KV cache"),
        Precision("bf16", 16, 16, 16, ("bf16",), "BF16 weights, activations and KV cache"),
        Precision(
            "fp8", 8, 8, 16, ("fp8",), "FP8 (E4M3) weights and activations, FP8 math, 16-bit KV"
        ),
        Precision(
            "int8", 8, 8, 16, ("int8",), "W8A8 (SmoothQuant style), INT8 math, FP16 KV cache"
        ),
        Precision(
            "int4", 4, 16, 16, ("fp16", "bf16"), "W4A16 (AWQ/GPTQ style): 4-bit weights, FP16 math"
        ),
    )
}


#: ``kv_cache_dtype`` values: ``auto`` (the model's activation dtype), or a quantized KV cache
KvCacheDtype = Literal["auto", "fp8", "int8"]
KV_CACHE_DTYPES: tuple[KvCacheDtype, ...] = get_args(KvCacheDtype)


def kv_cache_bits(precision: Precision, kv_cache_dtype: str = "auto") -> int:
    """Bits of one stored KV element: the precision's activation-dtype KV under ``auto``
    (vLLM: "if 'auto', will use model data type"), 8 for ``fp8`` (E4M3/E5M2) and ``int8``.

    >>> kv_cache_bits(PRECISIONS["fp8"]), kv_cache_bits(PRECISIONS["fp8"], "fp8")
    (16, 8)
    >>> kv_cache_bits(PRECISIONS["bf16"], "int8"), kv_cache_bits(PRECISIONS["fp32"])
    (8, 32)
    """
    if kv_cache_dtype == "auto":
        return precision.kv_bits
    if kv_cache_dtype in ("fp8", "int8"):
        return 8
    raise ValueError(
        f"unknown kv_cache_dtype {kv_cache_dtype!r}; accepted: {', '.join(KV_CACHE_DTYPES)}"
    )


def kv_dtype_label(precision: Precision, kv_cache_dtype: str = "auto") -> str:
    """The KV cache's storage in words: ``fp8``, ``int8``, or ``auto (16-bit)``.

    >>> kv_dtype_label(PRECISIONS["fp8"]), kv_dtype_label(PRECISIONS["fp16"], "fp8")
    ('auto (16-bit)', 'fp8')
    """
    if kv_cache_dtype == "auto":
        return f"auto ({precision.kv_bits}-bit)"
    return kv_cache_dtype


def math_units(fmt: str | None, vendor: str = "nvidia") -> str:
    """Where math in ``fmt`` runs, in words: ``fp16 tensor cores``, ``fp32 cores`` (FP32 runs
    on a GPU's CUDA cores, not its tensor cores), or ``fp32 math`` on a CPU entry.

    >>> math_units("fp8"), math_units("fp32"), math_units("fp32", "cpu")
    ('fp8 tensor cores', 'fp32 cores', 'fp32 math')
    """
    if fmt is None:
        return "no supported math format"
    if vendor == "cpu":
        return f"{fmt} math"
    return f"{fmt} cores" if fmt == "fp32" else f"{fmt} tensor cores"


def get_precision(name: str) -> Precision:
    """Look up a precision by name; KeyError lists the accepted names."""
    try:
        return PRECISIONS[name]
    except KeyError:
        raise KeyError(f"unknown precision {name!r}; accepted: {', '.join(PRECISIONS)}") from None
