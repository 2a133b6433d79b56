"""The normalised benchmark run: one format for every serving-benchmark tool capsim imports.

Every time is in **seconds**, every rate per second, every length in tokens. A field the source
file does not hold is ``None`` (never a guessed number); a number capsim computed from others in
the file (a mean output length from tokens/s over requests/s, say) says so in ``derived``.

>>> d = Dist(mean=0.1, p99=0.25)
>>> d.p99
0.25
>>> LengthDist(kind="fixed", value=128).mean_tokens()
128.0
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field

FORMATS = (
    "vllm",
    "sglang",
    "genai-perf-json",
    "genai-perf-csv",
    "aiperf-json",
    "aiperf-csv",
    "perf-analyzer",
    "mlperf-summary",
    "mlperf-detail",
    "capsim-csv",
)
Format = Literal[
    "vllm",
    "sglang",
    "genai-perf-json",
    "genai-perf-csv",
    "aiperf-json",
    "aiperf-csv",
    "perf-analyzer",
    "mlperf-summary",
    "mlperf-detail",
    "capsim-csv",
]
SETTING_KEYS = ("model", "gpu", "precision", "tp", "engine", "engine_version", "max_num_seqs")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Source(_Strict):
    """Where a run came from: the file, its format, its SHA-256, and the run's place in it."""

    file: str
    format: Format
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    index: int = Field(0, ge=0, description="the run's position in the file (row, line, record)")
    extra_files: list[str] = Field(
        default_factory=list, description="files merged in (an MLPerf detail log next to a summary)"
    )


class Tool(_Strict):
    """The benchmark client that produced the file."""

    name: str
    version: str | None = None


class Settings(_Strict):
    """What was served and how. ``gpu`` is a capsim catalog id once the CLI has filled it."""

    model: str | None = None
    gpu: str | None = None
    precision: str | None = None
    tp: int | None = Field(None, ge=1)
    engine: str | None = None
    engine_version: str | None = None
    max_num_seqs: int | None = Field(None, ge=1)
    extra: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="other engine settings the file records, verbatim"
    )


class RateLoad(_Strict):
    """Open-loop arrivals at ``rate_rps`` (Poisson when burstiness is 1), optionally capped."""

    kind: Literal["rate"] = "rate"
    rate_rps: float = Field(gt=0)
    burstiness: float | None = Field(None, gt=0, description="gamma shape; 1 = Poisson")
    max_concurrency: int | None = Field(None, ge=1)


class ConcurrencyLoad(_Strict):
    """Closed loop: ``concurrency`` clients, each sending its next request when one completes."""

    kind: Literal["concurrency"] = "concurrency"
    concurrency: int = Field(ge=1)


class OfflineLoad(_Strict):
    """Every request available at time zero (MLPerf Offline; an unthrottled burst)."""

    kind: Literal["offline"] = "offline"


Load = Annotated[RateLoad | ConcurrencyLoad | OfflineLoad, Field(discriminator="kind")]


Time = Annotated[float, Field(ge=0)]
"""A latency in seconds."""
Tokens = Annotated[int, Field(ge=0)]
"""A token count."""


class LengthDist(_Strict):
    """Prompt or output lengths: one fixed value, summary statistics, or one per request."""

    kind: Literal["fixed", "stats", "per_request"]
    value: int | None = Field(None, ge=0, description="kind fixed")
    mean: float | None = Field(None, ge=0)
    std: float | None = Field(None, ge=0)
    min: float | None = Field(None, ge=0)
    max: float | None = Field(None, ge=0)
    p50: float | None = Field(None, ge=0)
    p99: float | None = Field(None, ge=0)
    values: list[Tokens] | None = Field(None, description="kind per_request")
    derived: str | None = Field(None, description="how capsim computed it, when not read directly")

    def mean_tokens(self) -> float | None:
        """The mean length, whichever way it is given."""
        if self.kind == "fixed":
            return float(self.value) if self.value is not None else None
        if self.kind == "per_request" and self.values:
            return sum(self.values) / len(self.values)
        return self.mean


class Workload(_Strict):
    """What was offered: the load, how many requests, and their lengths."""

    load: Load | None = None
    scenario: str | None = Field(None, description="the tool's own name: MLPerf Server, ...")
    num_requests: int | None = Field(None, ge=0)
    completed: int | None = Field(None, ge=0)
    failed: int | None = Field(None, ge=0)
    duration_s: float | None = Field(None, ge=0)
    dataset: str | None = None
    input_len: LengthDist | None = None
    output_len: LengthDist | None = None
    prompts_cached_by: str | None = Field(
        None,
        description=(
            "an earlier run (its file) that sent the same prompts to the same server: with "
            "prefix caching on, their KV blocks were cached when this run began "
            "(capsim.bench.repeats)"
        ),
    )


class Dist(_Strict):
    """Summary statistics of one latency, in seconds (each as the file gives it; never negative)."""

    mean: Time | None = None
    std: Time | None = None
    min: Time | None = None
    max: Time | None = None
    p1: Time | None = None
    p5: Time | None = None
    p10: Time | None = None
    p25: Time | None = None
    p50: Time | None = None
    p75: Time | None = None
    p90: Time | None = None
    p95: Time | None = None
    p97: Time | None = None
    p99: Time | None = None
    p99_9: Time | None = None


class Samples(_Strict):
    """Per-request measurements, in request order, when the file saves them."""

    ttft_s: list[Time] | None = None
    itl_s: list[list[Time]] | None = None
    e2e_s: list[Time] | None = None
    input_len: list[Tokens] | None = None
    output_len: list[Tokens] | None = None


class IterationTime(_Strict):
    """One measured engine step: a prefill or decode iteration of ``batch_size`` sequences."""

    phase: Literal["prefill", "decode"]
    batch_size: int = Field(ge=1)
    seq_len: int = Field(ge=0, description="prompt tokens (prefill) or context tokens (decode)")
    time_s: float = Field(gt=0)


class Measured(_Strict):
    """What the benchmark measured."""

    request_throughput_rps: float | None = Field(None, ge=0)
    output_tokens_per_s: float | None = Field(None, ge=0)
    input_tokens_per_s: float | None = Field(None, ge=0)
    total_tokens_per_s: float | None = Field(None, ge=0)
    ttft_s: Dist | None = None
    tpot_s: Dist | None = None
    itl_s: Dist | None = None
    e2e_s: Dist | None = None
    samples: Samples | None = None
    iterations: list[IterationTime] | None = None
    valid: bool | None = Field(None, description="the tool's own verdict (MLPerf VALID/INVALID)")


Origin = Literal["file", "cli"]


class BenchRun(_Strict):
    """One measured run, normalised. ``origins`` says where each setting came from; a CLI value
    that replaced a different one in the file keeps the file's in ``overridden``."""

    schema_version: Literal[1] = 1
    source: Source
    tool: Tool
    date: str | None = None
    settings: Settings = Field(default_factory=Settings)
    origins: dict[str, Origin] = Field(default_factory=dict)
    overridden: dict[str, str | int | float | None] = Field(default_factory=dict)
    workload: Workload = Field(default_factory=Workload)
    measured: Measured = Field(default_factory=Measured)
    notes: list[str] = Field(default_factory=list)
