"""``vllm bench serve`` / ``benchmarks/benchmark_serving.py`` result JSON (``--save-result``).

One JSON object per run (``--append-result`` writes one per line). Latencies are in ms
(``mean_ttft_ms``, ``p99_itl_ms``, ``median_e2el_ms`` ...); ``--save-detailed`` adds per-request
``ttfts`` and ``itls`` (seconds), ``input_lens`` and ``output_lens``. ``request_rate`` is a number
or ``"inf"``; with ``max_concurrency`` an infinite rate means N clients back to back.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsim.bench.common import compact_date, to_float, to_int
from capsim.bench.jsonio import json_records
from capsim.bench.model import BenchRun, Settings, Source, Tool, Workload
from capsim.bench.serving_common import (
    E2E_FROM_SAMPLES,
    ENGINES,
    check_per_request,
    length_from,
    load_from,
    measured_from,
    precision_from,
)
from capsim.errors import InputError

WHAT = "vLLM bench serve result"
_ENGINE_KEYS = (
    "tensor_parallel_size",
    "max_num_batched_tokens",
    "gpu_memory_utilization",
    "kv_cache_dtype",
    "enable_prefix_caching",
    "enable_chunked_prefill",
    "dtype",
    "quantization",
)


def looks_like(record: Mapping[str, Any]) -> bool:
    """A benchmark_serving result: throughput or TTFT keys, and none of SGLang's own."""
    has = ("request_throughput" in record or "mean_ttft_ms" in record) and "backend" in record
    sglang = (
        "server_info" in record or "mean_e2e_latency_ms" in record or "total_throughput" in record
    )
    return has and not sglang


def parse(path: Path, text: str, sha: str) -> list[BenchRun]:
    """Every run in the file."""
    return [_run(rec, path, sha, i) for i, rec in enumerate(json_records(text, path, what=WHAT))]


def _run(d: Mapping[str, Any], path: Path, sha: str, index: int) -> BenchRun:
    where = f"record {index + 1}" if index else ""
    if not looks_like(d):
        raise InputError(
            "expected a vLLM bench serve result object (keys backend, request_throughput, "
            "mean_ttft_ms, ...)",
            file=path,
            where=where,
        )
    check_per_request(d, file=path)  # before the lengths are read: they pair up by request
    backend = d.get("backend")
    engine = backend if isinstance(backend, str) and backend in ENGINES else None
    extra: dict[str, Any] = {"client_backend": backend} if backend is not None else {}
    extra |= {k: d[k] for k in _ENGINE_KEYS if isinstance(d.get(k), str | int | float | bool)}
    settings = Settings(
        model=d.get("model_id") if isinstance(d.get("model_id"), str) else None,
        engine=engine,
        tp=to_int(d.get("tensor_parallel_size"), file=path, where="tensor_parallel_size"),
        max_num_seqs=to_int(d.get("max_num_seqs"), file=path, where="max_num_seqs"),
        precision=precision_from(d.get("dtype"), d.get("quantization")),
        extra=extra,
    )
    has_rate = "request_rate" in d or "max_concurrency" in d
    load = (
        load_from(d.get("request_rate"), d.get("max_concurrency"), d.get("burstiness"), file=path)
        if has_rate
        else None
    )
    workload = Workload(
        load=load,
        num_requests=to_int(d.get("num_prompts"), file=path, where="num_prompts"),
        completed=to_int(d.get("completed"), file=path, where="completed"),
        failed=to_int(d.get("failed"), file=path, where="failed"),
        duration_s=to_float(d.get("duration"), file=path, where="duration"),
        input_len=length_from(d, "input_lens", "total_input_tokens", file=path),
        output_len=length_from(d, "output_lens", "total_output_tokens", file=path),
    )
    tool = "vllm bench serve" if "endpoint_type" in d else "vllm benchmark_serving.py"
    measured = measured_from(d, "e2el", file=path)
    derived = measured.samples is not None and measured.samples.e2e_s is not None
    notes = [E2E_FROM_SAMPLES] if derived and not any(k.endswith("_e2el_ms") for k in d) else []
    return BenchRun(
        source=Source(file=str(path), format="vllm", sha256=sha, index=index),
        tool=Tool(name=tool),
        date=compact_date(d.get("date") if isinstance(d.get("date"), str) else None),
        settings=settings,
        workload=workload,
        measured=measured,
        notes=notes,
    )
