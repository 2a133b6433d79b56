"""The LLM engine settings (``fleet.batching.engine``): vLLM's scheduler knobs, typed."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, ValidationError

from capsim.errors import InputError
from capsim.spec.catalog import GPU
from capsim.spec.models import TransformerModel
from capsim.spec.precision import KvCacheDtype
from capsim.spec.speculative import Speculative
from capsim.strict import Strict


class CpuOverhead(Strict):
    """Host time per engine iteration that the GPU waits for: ``constant_ms`` + ``per_seq_us``
    x sequences in the iteration (scheduling, input preparation, sampling bookkeeping,
    detokenisation and output processing grow with the batch).

    >>> CpuOverhead(constant_ms=1, per_seq_us=10).seconds(100)
    0.002
    """

    constant_ms: float = Field(ge=0, description="per iteration, whatever its size")
    per_seq_us: float = Field(0.0, ge=0, description="per sequence in the iteration")
    source: str = Field("set in the scenario", description="where these numbers came from")

    def seconds(self, seqs: float) -> float:
        """Overhead of one iteration holding ``seqs`` sequences, in seconds."""
        return self.constant_ms * 1e-3 + self.per_seq_us * 1e-6 * seqs


#: Engine presets: per-iteration host overhead as each engine is reported to leave it.
CPU_PRESETS: dict[str, CpuOverhead] = {
    "none": CpuOverhead(
        constant_ms=0.0,
        source="no engine: a bare forward pass (kernel benchmarks, CUDA-graph replays)",
    ),
    "vllm-v0": CpuOverhead(
        constant_ms=4.0,
        per_seq_us=20.0,
        source=(
            "vLLM 0.5: ~4 ms GPU idle gaps between decode steps (github.com/vllm-project/vllm "
            "issue 6854); 62% of the time outside the forward pass for Llama-3-8B on one H100, "
            "scheduling and output processing growing with the batch (blog.vllm.ai/2024/09/05/"
            "perf-update.html). per_seq_us 20: not fitted, set so 256 sequences add ~5 ms (the "
            "3-8 ms per step engines show for a 70B model at TP4, capsim issue 10)"
        ),
    ),
    "vllm-v1": CpuOverhead(
        constant_ms=1.5,
        per_seq_us=5.0,
        source=(
            "vLLM V1 (0.8+): scheduler and detokeniser in separate processes, persistent batch "
            "and piecewise CUDA graphs cut per-step host time (blog.vllm.ai/2025/01/27/v1-alpha-"
            "release.html); with --async-scheduling most of the rest overlaps (vllm PR 23569): "
            "use cpu_overhead {constant_ms: 0.5} then. Values are estimates, not fitted"
        ),
    ),
    "sglang": CpuOverhead(
        constant_ms=0.3,
        per_seq_us=2.0,
        source=(
            "SGLang 0.4 overlap ('zero-overhead') scheduler: the CPU prepares batch n+1 while "
            "the GPU runs batch n, leaving no idle gap in Nsight profiles (lmsys.org/blog/"
            "2024-12-04-sglang-v0-4). Residual values are estimates, not fitted"
        ),
    ),
    "tensorrt-llm": CpuOverhead(
        constant_ms=0.3,
        per_seq_us=2.0,
        source=(
            "TensorRT-LLM C++ executor with in-flight batching and CUDA graphs; no public "
            "per-step figure. Checked against the split=fit llm_throughput / llm_static_batch "
            "rows of benchmarks/accuracy/measurements.csv (TensorRT-LLM perf-overview), not "
            "tuned on test rows. Values are estimates"
        ),
    ),
    "tensorrt-llm-0.6": CpuOverhead(
        constant_ms=0.89,
        per_seq_us=2.0,
        source=(
            "TensorRT-LLM before 0.8, GptSession (the v0.5/v0.6 gptSessionBenchmark tables): "
            "constant_ms 0.89 fitted with DECODE_KV_READS by benchmarks/accuracy/"
            "fit_decode_attention.py on the split=fit llm_prefill and llm_static_batch rows of "
            "those tables (L40S, H100 TP2); per_seq_us the tensorrt-llm estimate"
        ),
    ),
}

#: Engines whose decode attention reads each KV head's cache more than once per step for a
#: grouped-query model: (reads per KV head per step, source). Every other preset: once.
DECODE_KV_READS: dict[str, tuple[float, str]] = {
    "tensorrt-llm-0.6": (
        4.99,
        "TensorRT-LLM before 0.8 decodes GQA with the masked MHA kernel, one thread block per "
        "query head, so each KV head's cache is read once per query head sharing it (up to 8 "
        "for Llama-2-70B) less L2 hits; the XQA kernel that reads it once came in 0.8 (NVIDIA "
        "TensorRT-LLM docs/source/blogs/XQA-kernel.md: Llama-70B 128/2048 on H200 1,227 -> "
        "2,941 tok/s/GPU). 4.99 fitted by benchmarks/accuracy/fit_decode_attention.py with the "
        "preset's constant_ms on the split=fit TensorRT-LLM v0.5/v0.6 rows (its 3 Llama-2-70B "
        "llm_static_batch rows, H100 TP2, set it)",
    ),
}

#: The preset used when a scenario names none (documented in docs and the field description).
DEFAULT_PRESET: Literal["vllm-v1"] = "vllm-v1"


class LLMEngineSettings(Strict):
    """Knobs of the serving engine (vLLM names and defaults unless said otherwise).

    >>> LLMEngineSettings().block_size
    16
    >>> LLMEngineSettings(max_num_seqs=64).max_num_seqs
    64
    """

    gpu_memory_utilization: float = Field(
        0.9,
        gt=0,
        le=1,
        description="share of each GPU's memory the engine may use (vLLM EngineArgs default 0.9)",
    )
    reserved_gib: float = Field(
        1.5,
        ge=0,
        description=(
            "per-GPU memory inside that share kept for activations of the profiling run (about "
            "0.5-1 GiB for 8192 batched tokens of a 7-8B model), CUDA graphs (0.2-1 GiB) and "
            "NCCL/non-torch buffers; vLLM measures it at start-up, 1-2 GiB is typical"
        ),
    )
    block_size: int = Field(
        16, ge=1, description="tokens per KV-cache block (vLLM default on CUDA: 16)"
    )
    max_num_batched_tokens: int = Field(
        8192,
        ge=1,
        description=(
            "token budget of one iteration. Unset: vLLM V1's default for the OpenAI server, "
            "8192 on GPUs with >= 70 GiB other than A100, 2048 elsewhere "
            "(EngineArgs.get_batch_defaults; see for_gpu)"
        ),
    )
    max_num_seqs: int = Field(
        256,
        ge=1,
        description=(
            "most sequences in one iteration. Unset: vLLM V1's default, 1024 on >= 70 GiB GPUs "
            "other than A100, 256 elsewhere (see for_gpu)"
        ),
    )
    chunked_prefill: bool = Field(
        True, description="split long prompts into chunks that share iterations (vLLM V1: on)"
    )
    enable_prefix_caching: bool = Field(
        True,
        description=(
            "reuse the cached KV blocks of a shared prompt prefix (vLLM's automatic prefix "
            "caching; on by default in vLLM V1). Only traffic with shared prefixes "
            "(traffic.sessions, traffic.system_prompts, a trace's session column) can hit; other "
            "requests behave as with caching off"
        ),
    )
    max_model_len: int | None = Field(
        None,
        gt=0,
        description=(
            "longest context the engine must hold; None = the model's max_context, as vLLM, "
            "which refuses to start if one such sequence does not fit in the KV cache"
        ),
    )
    kv_cache_dtype: KvCacheDtype = Field(
        "auto",
        description=(
            "KV-cache storage, as vLLM's --kv-cache-dtype: auto = the model's activation dtype "
            "(16-bit, also for FP8/INT8/INT4 weight-quantized models), fp8 (E4M3/E5M2) or int8 "
            "(TensorRT-LLM, LMDeploy): 8 bits, half the KV bytes per token"
        ),
    )
    speculative: Speculative | None = Field(
        None,
        description=(
            "speculative decoding: {kind: draft | eagle | ngram, k, acceptance (one rate or k "
            "by position), draft_model (kind draft)}; off when unset"
        ),
    )
    preset: Literal["none", "vllm-v0", "vllm-v1", "sglang", "tensorrt-llm", "tensorrt-llm-0.6"] = (
        Field(
            DEFAULT_PRESET,
            description=(
                "engine whose per-iteration CPU overhead applies (CPU_PRESETS: vllm-v0, vllm-v1, "
                "sglang, tensorrt-llm, tensorrt-llm-0.6 (before XQA: GQA decode re-reads the KV "
                "cache, DECODE_KV_READS), or none for a bare forward pass); default vllm-v1"
            ),
        )
    )
    decode_kv_reads: float | None = Field(
        None,
        ge=1,
        description=(
            "times decode attention reads each KV head's cache per step (capped at the query "
            "heads per KV head): 1 for a grouped kernel (FlashAttention, FlashInfer, XQA); "
            "overrides the preset's (DECODE_KV_READS)"
        ),
    )
    cpu_overhead: CpuOverhead | None = Field(
        None,
        description=(
            "per-iteration host overhead {constant_ms, per_seq_us}; overrides the preset's"
        ),
    )
    scheduler_overhead_ms: float | None = Field(
        None,
        ge=0,
        description=(
            "deprecated: a constant per-iteration overhead, same as cpu_overhead "
            "{constant_ms: X, per_seq_us: 0}"
        ),
    )

    @property
    def overhead(self) -> CpuOverhead:
        """The CPU overhead that applies: ``cpu_overhead``, else ``scheduler_overhead_ms``,
        else the preset's.

        >>> LLMEngineSettings().overhead.constant_ms
        1.5
        >>> LLMEngineSettings(preset="vllm-v0").overhead.seconds(256)
        0.00912
        >>> LLMEngineSettings(scheduler_overhead_ms=2).overhead.per_seq_us
        0.0
        """
        if self.cpu_overhead is not None:
            return self.cpu_overhead
        if self.scheduler_overhead_ms is not None:
            return CpuOverhead(
                constant_ms=self.scheduler_overhead_ms, source="settings.scheduler_overhead_ms"
            )
        return CPU_PRESETS[self.preset]

    @property
    def kv_reads(self) -> tuple[float, str]:
        """(reads of each KV head's cache per decode step, where that came from).

        >>> LLMEngineSettings().kv_reads
        (1.0, '')
        >>> LLMEngineSettings(preset="tensorrt-llm-0.6").kv_reads[0]
        4.99
        >>> LLMEngineSettings(decode_kv_reads=2).kv_reads
        (2.0, 'settings.decode_kv_reads')
        """
        if self.decode_kv_reads is not None:
            return float(self.decode_kv_reads), "settings.decode_kv_reads"
        return DECODE_KV_READS.get(self.preset, (1.0, ""))

    def for_gpu(self, gpu: GPU) -> LLMEngineSettings:
        """These settings on ``gpu``: what was not set takes vLLM V1's card-dependent default
        (``max_num_batched_tokens`` 8192 and ``max_num_seqs`` 1024 on cards with >= 70 GiB
        other than A100, else 2048 and 256).

        >>> from capsim.load import load_catalog
        >>> cat = load_catalog()
        >>> LLMEngineSettings().for_gpu(cat["l4"]).max_num_batched_tokens
        2048
        >>> LLMEngineSettings().for_gpu(cat["h100-sxm"]).max_num_seqs
        1024
        >>> LLMEngineSettings(max_num_batched_tokens=4096).for_gpu(cat["l4"]).max_num_batched_tokens
        4096
        >>> LLMEngineSettings().for_gpu(cat["h100-sxm"]).for_gpu(cat["l4"]).max_num_seqs
        256
        """
        big = gpu.memory_gib >= 70 and "a100" not in f"{gpu.id} {gpu.name}".lower()
        update: dict[str, int] = {}
        if "max_num_batched_tokens" not in self.model_fields_set:
            update["max_num_batched_tokens"] = 8192 if big else 2048
        if "max_num_seqs" not in self.model_fields_set:
            update["max_num_seqs"] = 1024 if big else 256
        if not update:
            return self
        # the card's defaults are not the user's settings: resolving again for another card
        # gives that card's defaults
        return type(self).model_construct(
            _fields_set=set(self.model_fields_set), **{**dict(self), **update}
        )


def engine_settings(
    engine: dict[str, Any] | LLMEngineSettings,
    model: TransformerModel | None = None,
    gpu: GPU | None = None,
) -> LLMEngineSettings:
    """``fleet.batching.engine`` validated; errors name ``fleet.batching.engine.<field>``.

    With ``gpu``, the settings on that card (:meth:`LLMEngineSettings.for_gpu`). With
    ``model``, also what vLLM checks against the model at start-up: ``max_model_len`` at most
    the model's context, and without chunked prefill a token budget that holds a whole
    ``max_model_len`` prompt (else a long prompt could never be scheduled).
    """
    if isinstance(engine, LLMEngineSettings):  # a scenario's typed settings: only what it set
        engine = engine.model_dump(exclude_unset=True)
    try:
        st = LLMEngineSettings(**engine)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err.get("loc", ()))
        where = f"fleet.batching.engine.{loc}" if loc else "fleet.batching.engine"
        if err.get("type") == "extra_forbidden":
            accepted = ", ".join(sorted(LLMEngineSettings.model_fields))
            msg = f"unknown engine setting '{loc}'; accepted: {accepted}"
        else:
            msg = err.get("msg", "invalid value")
            if "input" in err and not isinstance(err["input"], dict | list):
                msg += f" (got {err['input']!r})"
        raise InputError(msg, where=where) from None
    if gpu is not None:
        st = st.for_gpu(gpu)
    if st.max_num_batched_tokens < st.max_num_seqs:
        raise InputError(
            f"max_num_batched_tokens ({st.max_num_batched_tokens}) must be >= max_num_seqs "
            f"({st.max_num_seqs}), as vLLM requires",
            where="fleet.batching.engine.max_num_batched_tokens",
        )
    spec = st.speculative
    if model is not None and spec is not None and spec.kind == "draft":
        draft = spec.draft_model
        if not isinstance(draft, str) and draft.vocab_size != model.vocab_size:
            raise InputError(
                f"draft model {draft.name} has a vocabulary of {draft.vocab_size:,} tokens, "
                f"{model.name} {model.vocab_size:,}: a draft must share the target's tokenizer",
                where="fleet.batching.engine.speculative.draft_model",
            )
    if model is not None:
        mml = st.max_model_len or model.max_context
        if mml > model.max_context:
            raise InputError(
                f"max_model_len {mml:,} exceeds {model.name}'s context of "
                f"{model.max_context:,} tokens",
                where="fleet.batching.engine.max_model_len",
            )
        if not st.chunked_prefill and st.max_num_batched_tokens < mml:
            raise InputError(
                f"without chunked prefill max_num_batched_tokens ({st.max_num_batched_tokens:,}) "
                f"must be >= max_model_len ({mml:,}), as vLLM requires: a longer prompt could "
                "never be scheduled; raise the budget, lower max_model_len or chunk",
                where="fleet.batching.engine.max_num_batched_tokens",
            )
    return st
