"""The on-disk format ``capsim-calibration/1``: names, columns and what each kind of row needs.

This module is the single source of truth shared by the writer (:mod:`calibrate.output`) and the
strict loader (:mod:`calibrate.measurements`). ``calibrate/README.md`` documents the same columns
for people.
"""

from __future__ import annotations

from dataclasses import dataclass

FORMAT_NAME = "capsim-calibration"
FORMAT_VERSION = 1
FORMAT = f"{FORMAT_NAME}/{FORMAT_VERSION}"

META_FILE = "meta.json"
CSV_FILE = "measurements.csv"

#: Precisions in the order they are reported. ``none`` is used by rows that compute nothing.
PRECISIONS = ("fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "int8")
NO_PRECISION = "none"

#: Kinds of rows, in the order the CSV is sorted.
KINDS = (
    "launch",
    "bandwidth_copy",
    "bandwidth_read",
    "gemm",
    "attention_decode",
    "attention_prefill",
    "forward_block",
    "forward_resnet50",
    "conv2d",
    "forward_llm_step",
    "allreduce",
    "power_idle",
    "power_busy",
)

TIMED_KINDS = frozenset(KINDS) - {"power_idle"}
POWER_KINDS = frozenset({"power_idle", "power_busy"})


@dataclass(frozen=True)
class Column:
    """One CSV column: its name, value type (``str``, ``int`` or ``float``) and meaning."""

    name: str
    type: str
    doc: str


COLUMNS: tuple[Column, ...] = (
    Column("kind", "str", "what was measured; one of KINDS"),
    Column(
        "precision", "str", "number format of the math (fp64 fp32 tf32 fp16 bf16 fp8 int8 none)"
    ),
    Column("impl", "str", "the call that did the work, e.g. numpy.matmul, torch._scaled_mm"),
    Column("m", "int", "GEMM rows of A and C (tokens or batch); gemm and power_busy"),
    Column("n", "int", "GEMM columns of B and C (output features); gemm and power_busy"),
    Column("k", "int", "GEMM inner dimension (input features); gemm and power_busy"),
    Column("batch", "int", "sequences (attention, forward_block) or images (resnet50)"),
    Column("seq_len", "int", "context length L (decode) or prompt length (prefill, block)"),
    Column("heads", "int", "attention (query) heads; = KV heads except in forward_llm_step"),
    Column("head_dim", "int", "size of one attention head"),
    Column("hidden", "int", "model width of forward_block (= heads * head_dim)"),
    Column("ffn", "int", "gated-MLP intermediate size of forward_block"),
    Column("tokens", "int", "tokens processed by one forward_block call (= batch * seq_len)"),
    Column("buffer_bytes", "int", "size of the buffer a bandwidth row streams through"),
    Column("flops", "float", "floating-point (or integer) operations of one call, FLOP"),
    Column("bytes", "float", "minimum bytes read + written by one call (roofline traffic)"),
    Column("median_s", "float", "median time of one call, seconds"),
    Column("min_s", "float", "fastest call, seconds"),
    Column("p10_s", "float", "10th percentile, seconds"),
    Column("p90_s", "float", "90th percentile, seconds"),
    Column("std_s", "float", "standard deviation of the call times, seconds"),
    Column("repeats", "int", "timed samples (power rows: power samples)"),
    Column("inner", "int", "calls per timed sample (times are already divided by it)"),
    Column("gflops_per_s", "float", "derived: flops / median_s / 1e9"),
    Column("gbytes_per_s", "float", "derived: bytes / median_s / 1e9"),
    Column("power_w", "float", "median board power during the window, watts (power rows)"),
    # added in harness 1.1 (optional in the header: older files lack them)
    Column("in_channels", "int", "conv2d input channels"),
    Column("out_channels", "int", "conv2d output channels"),
    Column("height", "int", "conv2d input height"),
    Column("width", "int", "conv2d input width"),
    Column("kernel", "int", "conv2d square kernel size (padding (kernel - 1) // 2)"),
    Column("stride", "int", "conv2d stride"),
    Column("groups", "int", "conv2d groups (in_channels = depthwise)"),
    Column("layout", "str", "conv2d memory layout: NCHW or NHWC (channels-last)"),
    Column("layers", "int", "forward_llm_step decoder layers"),
    Column("kv_heads", "int", "forward_llm_step key/value heads (GQA; heads = query heads)"),
    Column("vocab", "int", "forward_llm_step vocabulary size (embedding and LM head)"),
    Column("phase", "str", "forward_llm_step phase: decode or prefill"),
    Column("message_bytes", "int", "allreduce message size per rank, bytes"),
    Column("ranks", "int", "allreduce participating ranks (GPUs or processes)"),
)

#: columns a file may lack (added after the first version of the format); read as empty cells
OPTIONAL_COLUMNS = frozenset(
    {
        "in_channels", "out_channels", "height", "width", "kernel", "stride", "groups", "layout",
        "layers", "kv_heads", "vocab", "phase", "message_bytes", "ranks",
    }
)  # fmt: skip

COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in COLUMNS)
COLUMN_TYPES: dict[str, str] = {c.name: c.type for c in COLUMNS}
TIMING_COLUMNS = ("median_s", "min_s", "p10_s", "p90_s", "std_s", "inner")

#: size columns of each kind (required, integers >= 1)
SHAPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "launch": (),
    "bandwidth_copy": ("buffer_bytes",),
    "bandwidth_read": ("buffer_bytes",),
    "gemm": ("m", "n", "k"),
    "attention_decode": ("batch", "seq_len", "heads", "head_dim"),
    "attention_prefill": ("batch", "seq_len", "heads", "head_dim"),
    "forward_block": ("batch", "seq_len", "heads", "head_dim", "hidden", "ffn", "tokens"),
    "forward_resnet50": ("batch",),
    "conv2d": (
        "batch",
        "in_channels",
        "out_channels",
        "height",
        "width",
        "kernel",
        "stride",
        "groups",
    ),
    "forward_llm_step": (
        "layers",
        "hidden",
        "heads",
        "kv_heads",
        "head_dim",
        "ffn",
        "vocab",
        "batch",
        "seq_len",
        "tokens",
    ),
    "allreduce": ("message_bytes", "ranks"),
    "power_idle": (),
    "power_busy": ("m", "n", "k"),
}


#: required text columns of each kind, and their accepted values
TEXT_COLUMNS: dict[str, tuple[str, ...]] = {"conv2d": ("layout",), "forward_llm_step": ("phase",)}
TEXT_VALUES: dict[str, tuple[str, ...]] = {
    "layout": ("NCHW", "NHWC"),
    "phase": ("decode", "prefill"),
}


def required_columns(kind: str) -> tuple[str, ...]:
    """Columns that must be non-empty in a row of ``kind``; the others may be empty."""
    base = ("kind", "precision", "flops", "bytes", "repeats")
    timing = TIMING_COLUMNS + ("gflops_per_s", "gbytes_per_s") if kind in TIMED_KINDS else ()
    power = ("power_w",) if kind in POWER_KINDS else ()
    text = TEXT_COLUMNS.get(kind, ())
    return base + SHAPE_COLUMNS[kind] + text + timing + power


def columns_doc() -> dict[str, str]:
    """``{column: "type; meaning"}`` as written into ``meta.json``."""
    return {c.name: f"{c.type}; {c.doc}" for c in COLUMNS}


#: Keys that every ``meta.json`` has (the loader checks them).
REQUIRED_META_KEYS = (
    "format",
    "harness_version",
    "created_utc",
    "backend",
    "device",
    "precisions",
    "budget",
    "skipped",
    "n_rows",
    "columns",
)

#: Keys that ``meta.json``'s ``device`` object always has (``null`` when unknown or not relevant).
DEVICE_KEYS = (
    "kind",
    "name",
    "index",
    "compute_capability",
    "memory_bytes",
    "multiprocessors",
    "cache_bytes",
    "pci_bus_id",
    "driver_version",
    "cuda_version",
    "cuda_driver_version",
    "clocks",
    "power_limit_w",
)
