"""Which parser reads a file, and the settings given on the command line.

A file that no parser recognises, or whose fields are missing or of the wrong type, raises
:class:`~capsim.errors.InputError` naming the file, the field and what was expected.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capsim.bench import genai_perf, mlperf, perf_analyzer, plain_csv, sglang, vllm
from capsim.bench.common import read_text
from capsim.bench.jsonio import json_records
from capsim.bench.model import FORMATS, SETTING_KEYS, BenchRun
from capsim.errors import InputError, format_validation_error

Parser = Callable[[Path, str, str], list[BenchRun]]
PARSERS: dict[str, Parser] = {
    "vllm": vllm.parse,
    "sglang": sglang.parse,
    "genai-perf-json": genai_perf.parse_json_export,
    "aiperf-json": genai_perf.parse_json_export,
    "genai-perf-csv": genai_perf.parse_csv_export,
    "aiperf-csv": genai_perf.parse_csv_export,
    "perf-analyzer": perf_analyzer.parse,
    "mlperf-summary": mlperf.parse_summary,
    "mlperf-detail": mlperf.parse_detail,
    "capsim-csv": plain_csv.parse,
}
EXPECTED = (
    "expected one of: a vLLM bench serve / benchmark_serving.py result JSON (request_throughput, "
    "mean_ttft_ms, ...); an SGLang bench_serving JSONL line (plus mean_e2e_latency_ms, "
    "server_info); a GenAI-Perf or AIPerf profile_export JSON or CSV (time_to_first_token, "
    "request_latency); a Triton perf_analyzer -f CSV (header 'Concurrency,Inferences/Second' or "
    "'Request Rate,Inferences/Second'); an MLPerf LoadGen mlperf_log_summary.txt or "
    "mlperf_log_detail.txt; or capsim's plain CSV (columns listed in the capsim.bench docs)"
)


def _json_format(path: Path, text: str) -> str:
    records = json_records(text, path, what="benchmark result")
    first = records[0]
    if sglang.looks_like(first):
        return "sglang"
    if vllm.looks_like(first):
        return "vllm"
    if genai_perf.is_export_json(first):
        return "aiperf-json" if "aiperf_version" in first else "genai-perf-json"
    keys = ", ".join(sorted(first)[:12])
    raise InputError(f"a JSON file capsim does not recognise (keys: {keys}); {EXPECTED}", file=path)


def detect(path: Path, text: str) -> str:
    """The format of ``text`` (read from ``path``), or an :class:`InputError` saying why not."""
    stripped = text.lstrip()
    if not stripped:
        raise InputError(f"the file is empty; {EXPECTED}", file=path)
    if mlperf.SUMMARY_MARK in text[:4000]:
        return "mlperf-summary"
    if stripped.startswith(mlperf.DETAIL_MARK):
        return "mlperf-detail"
    if stripped[0] in "{[":
        return _json_format(path, text)
    if perf_analyzer.looks_like(text):
        return "perf-analyzer"
    if genai_perf.is_export_csv(text):
        return "aiperf-csv" if ",sum," in stripped.splitlines()[0] else "genai-perf-csv"
    if plain_csv.looks_like(text):
        return "capsim-csv"
    raise InputError(f"not a benchmark result capsim recognises; {EXPECTED}", file=path)


def read_runs(path: Path, fmt: str | None = None) -> list[BenchRun]:
    """Every run in one file, in ``fmt`` or the detected format."""
    text, sha = read_text(path)
    if fmt is not None and fmt not in PARSERS:
        raise InputError(f"unknown format {fmt!r}; accepted: {', '.join(FORMATS)}", param="fmt")
    chosen = fmt or detect(path, text)
    try:
        return PARSERS[chosen](path, text, sha)
    except ValidationError as exc:  # a value out of range (a negative throughput, ...)
        err = format_validation_error(exc, file=path, model=BenchRun)
        raise InputError(f"{err.message} (as read from a {chosen} file)", file=path) from None


def read_files(paths: Iterable[Path], fmt: str | None = None) -> list[BenchRun]:
    """Every run in every file. An MLPerf detail log whose summary is also given is merged into
    the summary's run (not imported twice)."""
    paths = list(paths)
    summaries = {p.resolve().parent for p in paths if p.name == "mlperf_log_summary.txt"}
    runs: list[BenchRun] = []
    for p in paths:
        if p.name == "mlperf_log_detail.txt" and p.resolve().parent in summaries and fmt is None:
            continue
        runs.extend(read_runs(p, fmt))
    return runs


def apply_settings(run: BenchRun, given: Mapping[str, Any]) -> BenchRun:
    """``run`` with the CLI's settings filled in or overriding the file's, and where each came from.

    >>> from capsim.bench.model import Source, Tool, Settings
    >>> r = BenchRun(source=Source(file="f", format="vllm", sha256="0" * 64), tool=Tool(name="t"),
    ...              settings=Settings(model="a", tp=2))
    >>> r = apply_settings(r, {"gpu": "h100-sxm", "tp": 4, "model": None})
    >>> r.settings.tp, r.origins["tp"], r.origins["model"], r.overridden
    (4, 'cli', 'file', {'tp': 2})
    """
    settings = run.settings.model_copy()
    origins = {k: "file" for k in SETTING_KEYS if getattr(settings, k) is not None}
    overridden = dict(run.overridden)
    for key, value in given.items():
        if key not in SETTING_KEYS:
            raise ValueError(f"not a setting: {key}")
        if value is None:
            continue
        old = getattr(settings, key)
        if old is not None and old != value:
            overridden[key] = old
        setattr(settings, key, value)
        origins[key] = "cli"
    return run.model_copy(
        update={"settings": settings, "origins": origins, "overridden": overridden}
    )
