"""Scenario files: the traffic, the model, the SLO, the fleet options and the candidates.

A scenario is YAML validated by pydantic (unknown keys are errors). Alternatives are tagged by a
``kind`` field (arrival process, load pattern, batching). Minimal example::

    name: embedding-api
    model: bge-large-en               # a card in ./models/ or a shipped one
    traffic:
      arrivals: {kind: poisson, rate_rps: 200}
      horizon_s: 600
    slo: {percentile: 99, latency_ms: 50}
    fleet:
      batching: {kind: dynamic, max_batch_size: 32, max_queue_delay_ms: 2}
    candidates: {gpus: [t4, l4], precisions: [fp16, int8]}

>>> from capsim.load import load_scenario
>>> s = load_scenario("scenarios/embedding.yaml")
>>> s.slo.percentile
99.0
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Discriminator, Field, Tag, field_validator, model_validator

from capsim.spec.autoscaling import PolicySpec, WhatIf
from capsim.spec.capacity import Capacity
from capsim.spec.disagg import Disaggregation
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.mix import Mix
from capsim.spec.models import FixedModel, ModelCard, TransformerModel
from capsim.spec.precision import MathFormat
from capsim.spec.sessions import Sessions, SystemPrompts
from capsim.strict import Strict

PrecisionName = MathFormat


# --------------------------------------------------------------------------- load patterns
class Diurnal(Strict):
    """A daily sine: the rate swings between trough and peak around the mean ``rate_rps``.

    With ``peak_to_trough: 4`` the peak is 1.6x and the trough 0.4x the mean.
    """

    kind: Literal["diurnal"]
    peak_to_trough: float = Field(ge=1, description="peak rate / trough rate")
    peak_hour: float = Field(14.0, ge=0, lt=24, description="hour of day of the peak")
    period_s: float = Field(86400.0, gt=0)


class Piecewise(Strict):
    """Rate multipliers at given times (step or linear in between); the last one holds."""

    kind: Literal["piecewise"]
    times_s: list[float] = Field(min_length=1)
    multipliers: list[float] = Field(min_length=1)
    interpolation: Literal["step", "linear"] = "step"

    @model_validator(mode="after")
    def _shape(self) -> Piecewise:
        if len(self.times_s) != len(self.multipliers):
            raise ValueError("times_s and multipliers must have the same length")
        if any(b <= a for a, b in zip(self.times_s, self.times_s[1:], strict=False)):
            raise ValueError("times_s must be strictly increasing")
        if any(m < 0 for m in self.multipliers):
            raise ValueError("multipliers must be >= 0")
        return self


Pattern = Annotated[Diurnal | Piecewise, Field(discriminator="kind")]


class Burst(Strict):
    """A burst: the rate is multiplied by ``multiplier`` for ``duration_s`` from ``start_s``."""

    start_s: float = Field(ge=0)
    duration_s: float = Field(gt=0)
    multiplier: float = Field(gt=0)


# --------------------------------------------------------------------------- arrival processes
class _RateBased(Strict):
    rate_rps: float = Field(gt=0, description="mean arrival rate, requests per second")
    pattern: Pattern | None = None
    bursts: list[Burst] = Field(default_factory=list)


class Poisson(_RateBased):
    """Poisson arrivals (exponential inter-arrival times), optionally time-varying."""

    kind: Literal["poisson"]


class Renewal(_RateBased):
    """Renewal arrivals: gamma inter-arrival times with coefficient of variation ``cv``.

    ``cv`` = 1 is Poisson, < 1 smoother, > 1 burstier, 0 deterministic.
    """

    kind: Literal["renewal"]
    cv: float = Field(ge=0)


class Trace(Strict):
    """Replay a CSV trace (one row per request).

    ``speedup`` compresses time (2 = twice the rate, half the duration). ``rate_scale`` changes
    the rate but keeps the duration: below 1 it thins rows at random, above 1 it overlays
    randomly time-shifted copies of the trace (wrapping around its span).
    """

    kind: Literal["trace"]
    path: str
    timestamp_column: str = "TIMESTAMP"
    timestamp_format: Literal["auto", "seconds", "datetime"] = "auto"
    prompt_tokens_column: str | None = None
    output_tokens_column: str | None = None
    session_column: str | None = Field(
        None,
        description=(
            "conversation/session id: rows with one id are turns of one conversation, each "
            "prompt starting with the previous turn's prompt and output (prefix caching)"
        ),
    )
    speedup: float = Field(1.0, gt=0)
    rate_scale: float = Field(1.0, gt=0)
    start_s: float = Field(0.0, ge=0, description="skip this much of the trace")


class ClosedArrivals(Strict):
    """Closed loop: ``concurrency`` clients, each with at most one request out, sending the next
    one when the previous has completed and the client has thought for ``think_time_s``.

    This is what concurrency sweeps (``vllm bench serve --max-concurrency`` with an unbounded
    rate, perf_analyzer ``--concurrency-range``) and MLPerf SingleStream are. Send times depend
    on completions, so the engines generate them as they run.
    """

    kind: Literal["closed"]
    concurrency: int = Field(ge=1, description="clients, each with at most one request out")
    think_time_s: float = Field(0.0, ge=0, description="mean think time after each completion")
    think: Literal["exponential", "fixed"] = Field(
        "exponential", description="think-time distribution (ignored when think_time_s is 0)"
    )


Arrivals = Annotated[Poisson | Renewal | Trace | ClosedArrivals, Field(discriminator="kind")]


class TokenLengths(Strict):
    """Prompt/output token-length distributions for LLM traffic (lognormal, clipped)."""

    kind: Literal["lognormal"] = "lognormal"
    prompt_median: float = Field(gt=0)
    prompt_sigma: float = Field(ge=0)
    output_median: float = Field(gt=0)
    output_sigma: float = Field(ge=0)
    prompt_max: int = Field(8192, gt=0)
    output_max: int = Field(2048, gt=0)


class EmpiricalTokens(Strict):
    """Prompt/output token lengths drawn as (prompt, output) pairs from the rows of a CSV trace.

    Pairs are sampled jointly with replacement, so the correlation between prompt and output
    lengths in the trace is kept; lengths are clipped to [1, max].
    """

    kind: Literal["empirical"]
    trace: str = Field(description="CSV file (relative to the scenario file)")
    prompt_column: str = "ContextTokens"
    output_column: str = "GeneratedTokens"
    prompt_max: int = Field(8192, gt=0)
    output_max: int = Field(2048, gt=0)


class UniformTokens(Strict):
    """Prompt and output lengths drawn independently and uniformly from whole numbers in
    [min, max] (what benchmark clients such as SGLang's and vLLM's ``random`` dataset send).

    >>> UniformTokens(kind="uniform", prompt_min=1, prompt_max=1024, output_min=1, output_max=1024).output_max
    1024
    """

    kind: Literal["uniform"]
    prompt_min: int = Field(1, gt=0)
    prompt_max: int = Field(gt=0)
    output_min: int = Field(1, gt=0)
    output_max: int = Field(gt=0)

    @model_validator(mode="after")
    def _ordered(self) -> UniformTokens:
        if self.prompt_min > self.prompt_max or self.output_min > self.output_max:
            raise ValueError("uniform token lengths need min <= max (prompt and output)")
        return self


def _tokens_kind(v: Any) -> str:
    if isinstance(v, dict):
        return str(v.get("kind", "lognormal"))
    return getattr(v, "kind", "lognormal")


Tokens = Annotated[
    Annotated[TokenLengths, Tag("lognormal")]
    | Annotated[EmpiricalTokens, Tag("empirical")]
    | Annotated[UniformTokens, Tag("uniform")],
    Discriminator(_tokens_kind),
]


class Traffic(Strict):
    arrivals: Arrivals
    horizon_s: float | None = Field(
        None, gt=0, description="span of traffic to simulate (default: 1 h, or the trace span)"
    )
    tokens: Tokens | None = None
    sessions: Sessions | None = Field(
        None, description="multi-turn sessions (arrivals are session starts)"
    )
    system_prompts: SystemPrompts | None = Field(
        None, description="shared system prompts put in front of every prompt"
    )

    @model_validator(mode="after")
    def _prefixes(self) -> Traffic:
        if self.sessions is not None or self.system_prompts is not None:
            what = "traffic.sessions" if self.sessions is not None else "traffic.system_prompts"
            if isinstance(self.arrivals, ClosedArrivals):
                raise ValueError(
                    f"{what} needs open-loop arrivals (poisson, renewal or trace); closed-loop "
                    "clients already send their next request after the previous one"
                )
            if isinstance(self.arrivals, Trace) and self.arrivals.session_column is not None:
                raise ValueError(
                    f"{what} with a trace's session_column: the trace's rows already say which "
                    "requests share a conversation; use one or the other"
                )
            if self.sessions is not None and self.tokens is None:
                raise ValueError(
                    "traffic.sessions needs traffic.tokens: the output length of each turn "
                    "follows its output_median / output_sigma (or an empirical trace's outputs)"
                )
        return self


# --------------------------------------------------------------------------- SLO, fleet
class SLO(Strict):
    """Latency targets at one percentile (met when the CI's upper limit is below target)."""

    percentile: float = Field(99.0, gt=0, lt=100)
    latency_ms: float | None = Field(None, gt=0, description="end-to-end latency target")
    ttft_ms: float | None = Field(None, gt=0, description="time to first token (LLM)")
    tpot_ms: float | None = Field(None, gt=0, description="time per output token (LLM)")
    max_rejection_rate: float = Field(0.001, ge=0, le=1)

    @model_validator(mode="after")
    def _some_target(self) -> SLO:
        if self.latency_ms is None and self.ttft_ms is None and self.tpot_ms is None:
            raise ValueError("give at least one target: latency_ms, ttft_ms or tpot_ms")
        return self


class DynamicBatching(Strict):
    """Triton-style dynamic batching: start when the batch is full or the oldest waited enough."""

    kind: Literal["dynamic"]
    max_batch_size: int = Field(8, ge=1, le=4096)
    max_queue_delay_ms: float = Field(0.0, ge=0)


class NoBatching(Strict):
    """One request per forward pass."""

    kind: Literal["none"]


class ContinuousBatching(Strict):
    """vLLM-style continuous batching (LLM scenarios); engine settings in ``engine``."""

    kind: Literal["continuous"]
    engine: LLMEngineSettings = Field(default_factory=LLMEngineSettings)


Batching = Annotated[DynamicBatching | NoBatching | ContinuousBatching, Field(discriminator="kind")]


class Fleet(Strict):
    batching: Batching = DynamicBatching(kind="dynamic")
    router: Literal[
        "shared_queue",
        "round_robin",
        "join_shortest_queue",
        "least_outstanding_requests",  # LLM: fewest unfinished requests (see capsim.sim.llm_replica)
        "least_outstanding_tokens",  # LLM: fewest unfinished prompt + output tokens
    ] = "shared_queue"
    max_queue_length: int | None = Field(
        None, ge=1, description="queued requests beyond are rejected"
    )
    batch_overhead_ms: float = Field(
        0.1, ge=0, description="host/framework time per batch (scheduling, copies)"
    )
    service_time_cv: float = Field(
        0.0, ge=0, description="run-to-run jitter of batch times (gamma, mean 1)"
    )

    @property
    def max_batch(self) -> int:
        b = self.batching
        return b.max_batch_size if isinstance(b, DynamicBatching) else 1

    @property
    def max_queue_delay_s(self) -> float:
        b = self.batching
        return b.max_queue_delay_ms / 1000 if isinstance(b, DynamicBatching) else 0.0


class Candidates(Strict):
    gpus: list[str] = Field(min_length=1)
    precisions: list[PrecisionName] = Field(min_length=1)
    tensor_parallel: list[int] = Field(default_factory=lambda: [1])
    expert_parallel: list[int] = Field(
        default_factory=lambda: [1],
        description="MoE models: expert-parallel degrees tried inside each tp (ep divides tp)",
    )
    max_replicas: int = Field(64, ge=1)
    price_provider: str | None = Field(
        None, description="use this provider's price where the card lists one (default: catalog)"
    )

    @field_validator("gpus", "precisions")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        dup = sorted({x for x in v if v.count(x) > 1})
        if dup:
            raise ValueError(f"listed more than once: {', '.join(dup)}")
        return v

    @field_validator("expert_parallel")
    @classmethod
    def _ep(cls, v: list[int]) -> list[int]:
        if not v or any(e not in (1, 2, 4, 8) for e in v):
            raise ValueError("expert_parallel values must be among 1, 2, 4, 8")
        return v

    @field_validator("tensor_parallel")
    @classmethod
    def _tp(cls, v: list[int]) -> list[int]:
        if not v or any(t not in (1, 2, 4, 8) for t in v):
            raise ValueError("tensor_parallel values must be among 1, 2, 4, 8")
        return v


class Simulation(Strict):
    replications: int = Field(5, ge=2, description="independent replications (minimum)")
    max_replications: int = Field(20, ge=2, description="added while the CI straddles the target")
    seed: int = Field(0, ge=0)
    confidence: float = Field(0.95, gt=0.5, lt=1)
    warmup: Literal["auto", "none"] | float = Field(
        "auto",
        description="'auto' (drop the empty-start transient when the load is stationary), 'none', or seconds",
    )
    compress_to_s: float | None = Field(
        None,
        gt=0,
        description="simulate the horizon compressed into this many seconds (quasi-stationary)",
    )
    max_wait_s: float | None = Field(
        None,
        gt=0,
        description="alarm level (seconds) of the overload check: a run is overloaded when the "
        "oldest wait passes it and then doubles without falling back below it; default 100 "
        "mean service times, at least 60 s",
    )
    max_requests: int | None = Field(
        None,
        ge=1,
        description="most requests one replication may generate (default: what fits in half the "
        "available memory, ~300 bytes each, split over the parallel jobs)",
    )

    @field_validator("warmup")
    @classmethod
    def _warm(cls, v: Any) -> Any:
        if isinstance(v, float) and v < 0:
            raise ValueError("warmup seconds must be >= 0")
        return v


class Scenario(Strict):
    name: str
    description: str | None = None
    model: ModelCard
    sequence_length: int | None = Field(
        None, gt=0, description="tokens per request for an encoder card (default: the card's)"
    )
    traffic: Traffic
    slo: SLO
    fleet: Fleet = Fleet()
    candidates: Candidates
    simulation: Simulation = Simulation()
    autoscaling: PolicySpec | None = Field(
        None, description="autoscaling policy (and cold start) used by plan and whatif"
    )
    whatif: WhatIf | None = Field(None, description="policy variants for capsim whatif")
    capacity: Capacity | None = Field(
        None,
        description="purchase mix of an autoscaled fleet: committed/on-demand base, on-demand "
        "or spot burst, spot interruptions (capsim.spec.capacity); None = all on demand",
    )
    mix: Mix | None = Field(None, description="mixed fleets: size buckets routed to pools")
    disaggregation: Disaggregation | None = Field(
        None, description="also plan separate prefill and decode pools (capsim.spec.disagg)"
    )

    @model_validator(mode="after")
    def _coherent(self) -> Scenario:
        llm = isinstance(self.model, TransformerModel)
        if llm and not isinstance(self.fleet.batching, ContinuousBatching):
            raise ValueError("a transformer model needs fleet.batching.kind: continuous")
        if not llm and isinstance(self.fleet.batching, ContinuousBatching):
            raise ValueError("continuous batching is for transformer models; use kind: dynamic")
        if not llm and self.candidates.tensor_parallel != [1]:
            raise ValueError(
                "candidates.tensor_parallel applies to transformer models only (one replica of a "
                "fixed-shape model is one GPU)"
            )
        moe = isinstance(self.model, TransformerModel) and self.model.is_moe
        if not moe and self.candidates.expert_parallel != [1]:
            raise ValueError(
                "candidates.expert_parallel applies to mixture-of-experts models only (the card "
                "gives no experts)"
            )
        if not llm and (self.traffic.sessions or self.traffic.system_prompts):
            raise ValueError(
                "traffic.sessions and traffic.system_prompts are for transformer (LLM) models"
            )
        if not llm and self.slo.latency_ms is None:
            raise ValueError("slo.latency_ms is required for fixed-shape models")
        if self.simulation.max_replications < self.simulation.replications:
            raise ValueError("simulation.max_replications must be >= simulation.replications")
        closed = isinstance(self.traffic.arrivals, ClosedArrivals)
        if closed and (self.autoscaling is not None or self.whatif is not None):
            raise ValueError(
                "autoscaling and what-if need open-loop traffic (poisson, renewal or trace): "
                "closed-loop clients slow down with the fleet instead of queueing for new replicas"
            )
        shared = bool(self.traffic.sessions or self.traffic.system_prompts) or bool(
            getattr(self.traffic.arrivals, "session_column", None)
        )
        if self.mix is not None and shared:
            raise ValueError(
                "mix (size-routed pools) does not split shared-prefix traffic yet (sessions, "
                "system_prompts, a trace session_column): remove one or the other"
            )
        if self.disaggregation is not None and (not llm or closed):
            raise ValueError(
                "disaggregation (prefill and decode pools) needs a transformer model with "
                "open-loop traffic (poisson, renewal or trace)"
            )
        if self.mix is not None and (not llm or closed):
            raise ValueError(
                "mix (size-routed pools) needs a transformer model with open-loop traffic: "
                "requests are routed by their prompt + output tokens"
            )
        return self

    @property
    def is_llm(self) -> bool:
        return isinstance(self.model, TransformerModel)

    @property
    def fixed_model(self) -> FixedModel:
        assert isinstance(self.model, FixedModel)
        return self.model

    @property
    def stationary(self) -> bool:
        """True when the offered load does not change over time (warm-up deletion applies)."""
        a = self.traffic.arrivals
        if isinstance(a, ClosedArrivals):
            return True
        return isinstance(a, Poisson | Renewal) and a.pattern is None and not a.bursts
