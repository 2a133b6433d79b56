"""SGLang ``python -m sglang.bench_serving`` output: JSON Lines, one run per line.

Each line holds the run's settings (``backend``, ``dataset_name``, ``request_rate`` - ``Infinity``
for none -, ``max_concurrency``, ``random_input_len``/``random_output_len``/``random_range_ratio``),
the results in ms (``mean_ttft_ms``, ``p99_itl_ms``, ``median_e2e_latency_ms`` ...) and, with a
server that reports it, ``server_info`` (the server's arguments: ``model_path``, ``tp_size``,
``dtype``, ``quantization``, ``max_running_requests``, ``version``). ``--output-details`` adds
per-request ``ttfts``, ``itls``, ``input_lens`` and ``output_lens``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsim.bench.common import to_float, to_int
from capsim.bench.jsonio import json_records
from capsim.bench.model import BenchRun, LengthDist, Settings, Source, Tool, Workload
from capsim.bench.serving_common import (
    check_per_request,
    length_from,
    load_from,
    measured_from,
    precision_from,
)
from capsim.errors import InputError

WHAT = "SGLang bench_serving result line"
_SERVER_KEYS = (
    "kv_cache_dtype",
    "chunked_prefill_size",
    "max_prefill_tokens",
    "mem_fraction_static",
    "schedule_policy",
    "page_size",
    "dp_size",
    "pp_size",
    "attention_backend",
    "disaggregation_mode",
)


def looks_like(record: Mapping[str, Any]) -> bool:
    """SGLang's keys: ``server_info``, ``mean_e2e_latency_ms`` or ``total_throughput``.

    Lines written by late-2024 releases (0.3/0.4) carry only medians (``median_ttft_ms``,
    ``median_itl_ms``) and ``output_throughput``: they are SGLang lines too.

    >>> looks_like({"median_ttft_ms": 85.7, "mean_e2e_latency_ms": 7840.6})
    True
    >>> looks_like({"request_throughput": 5.2, "mean_ttft_ms": 55.7, "backend": "vllm"})
    False
    """
    has = any(k in record for k in ("request_throughput", "mean_ttft_ms", "median_ttft_ms"))
    own = "server_info" in record or "mean_e2e_latency_ms" in record or "total_throughput" in record
    return has and own


def parse(path: Path, text: str, sha: str) -> list[BenchRun]:
    """Every run (line) in the file."""
    return [_run(rec, path, sha, i) for i, rec in enumerate(json_records(text, path, what=WHAT))]


def _settings(d: Mapping[str, Any], path: Path) -> tuple[Settings, str | None]:
    info = d.get("server_info")
    info = info if isinstance(info, Mapping) else {}
    version = info.get("version") if isinstance(info.get("version"), str) else None
    model = info.get("model_path") or info.get("served_model_name")
    extra = {k: info[k] for k in _SERVER_KEYS if isinstance(info.get(k), str | int | float | bool)}
    extra["client_backend"] = d.get("backend")
    settings = Settings(
        model=model if isinstance(model, str) else None,
        engine="sglang" if info else None,
        engine_version=version,
        tp=to_int(info.get("tp_size"), file=path, where="server_info.tp_size"),
        max_num_seqs=to_int(
            info.get("max_running_requests"), file=path, where="server_info.max_running_requests"
        ),
        precision=precision_from(info.get("dtype"), info.get("quantization")),
        extra=extra,
    )
    return settings, version


def _random_length(d: Mapping[str, Any], side: str, found: LengthDist | None, path: Path):
    """Lengths of the ``random`` dataset: fixed at range ratio 1, else uniform.

    ``bench_serving`` draws each length uniformly from ``[max(int(L * ratio), 1), L]``; the
    mean stays the one measured (from the totals), the spread is that uniform's
    ``(hi - lo + 1) / sqrt(12)``.
    """
    if d.get("dataset_name") != "random" or (found is not None and found.kind == "per_request"):
        return found
    length = to_int(d.get(f"random_{side}_len"), file=path, where=f"random_{side}_len")
    ratio = to_float(d.get("random_range_ratio"), file=path, where="random_range_ratio")
    if length is None or ratio is None:
        return found
    if ratio == 1.0:
        return LengthDist(kind="fixed", value=length)
    lo = max(int(length * ratio), 1)
    mean = found.mean if found is not None and found.mean is not None else (lo + length) / 2
    return LengthDist(
        kind="stats",
        mean=mean,
        std=(length - lo + 1) / math.sqrt(12),
        min=lo,
        max=length,
        derived=f"uniform [{lo}, {length}] (random_range_ratio {ratio:g}); mean from the totals",
    )


def _run(d: Mapping[str, Any], path: Path, sha: str, index: int) -> BenchRun:
    if not looks_like(d):
        raise InputError(
            "expected an SGLang bench_serving result (keys request_throughput, mean_ttft_ms, "
            "mean_e2e_latency_ms, server_info ...)",
            file=path,
            where=f"line {index + 1}",
        )
    check_per_request(d, file=path)  # before the lengths are read: they pair up by request
    settings, version = _settings(d, path)
    inp = length_from(d, "input_lens", "total_input_tokens", file=path)
    out = length_from(d, "output_lens", "total_output_tokens", file=path)
    workload = Workload(
        load=load_from(d.get("request_rate"), d.get("max_concurrency"), None, file=path),
        num_requests=to_int(d.get("num_prompts"), file=path, where="num_prompts"),
        completed=to_int(d.get("completed"), file=path, where="completed"),
        duration_s=to_float(d.get("duration"), file=path, where="duration"),
        dataset=d.get("dataset_name") if isinstance(d.get("dataset_name"), str) else None,
        input_len=_random_length(d, "input", inp, path),
        output_len=_random_length(d, "output", out, path),
    )
    notes = [f"tag: {d['tag']}"] if isinstance(d.get("tag"), str) else []
    return BenchRun(
        source=Source(file=str(path), format="sglang", sha256=sha, index=index),
        tool=Tool(name="sglang.bench_serving", version=version),
        settings=settings,
        workload=workload,
        measured=measured_from(d, "e2e_latency", file=path),
        notes=notes,
    )
