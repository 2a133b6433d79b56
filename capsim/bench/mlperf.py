"""MLPerf Inference LoadGen logs: ``mlperf_log_summary.txt`` and ``mlperf_log_detail.txt``.

The summary is ``key : value`` lines (latencies in ns); the detail log is one
``:::MLLOG {json}`` record per line with ``key``/``value`` (``result_*``, ``effective_*``,
``test_datetime``, ``loadgen_version``). Given a summary, a ``mlperf_log_detail.txt`` in the same
folder is merged in (date, LoadGen version, the TPOT percentiles). Scenarios map to loads:
Server = Poisson arrivals at the target QPS; SingleStream and MultiStream = one query in flight;
Offline = every sample at once.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from capsim.bench.common import pct_field, read_text, to_float, to_int, to_time
from capsim.bench.jsonio import loads
from capsim.bench.model import (
    BenchRun,
    ConcurrencyLoad,
    Dist,
    LengthDist,
    Measured,
    OfflineLoad,
    RateLoad,
    Source,
    Tool,
    Workload,
)
from capsim.errors import InputError

SUMMARY_MARK = "MLPerf Results Summary"
DETAIL_MARK = ":::MLLOG"
_LINE = re.compile(r"^\s*([^:*][^:]*?)\s*:\s*(\S.*?)\s*$")
_PCT = re.compile(r"^(\d+(?:\.\d+)?) percentile (latency|first token latency|time to output token)")
_MINMAX = re.compile(r"^(Min|Max|Mean) (latency|First Token latency|Time to Output Token)")
_WHICH = {
    "latency": "e2e_s",
    "first token latency": "ttft_s",
    "time to output token": "tpot_s",
}


def summary_fields(text: str, path: Path) -> dict[str, str]:
    """``key -> value`` of every ``key : value`` line (the first occurrence wins)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) not in out:
            out[m.group(1)] = m.group(2)
    if "Scenario" not in out:
        raise InputError(
            "missing 'Scenario : ...' line, which every mlperf_log_summary.txt has",
            file=path,
            where="Scenario",
        )
    return out


def detail_fields(text: str, path: Path) -> dict[str, Any]:
    """``key -> value`` of every ``:::MLLOG`` record; errors name the line."""
    out: dict[str, Any] = {}
    for n, line in enumerate(text.splitlines(), 1):
        if not line.startswith(DETAIL_MARK):
            continue
        try:
            rec = loads(line[len(DETAIL_MARK) :], path, where=f"line {n}")
        except json.JSONDecodeError as exc:
            raise InputError(
                f"not a valid MLLOG record: {exc.msg}", file=path, where=f"line {n}"
            ) from None
        if isinstance(rec, dict) and isinstance(rec.get("key"), str):
            out.setdefault(rec["key"], rec.get("value"))
    if "effective_scenario" not in out and "requested_scenario" not in out:
        raise InputError(
            "missing the 'effective_scenario' record, which every mlperf_log_detail.txt has",
            file=path,
            where="effective_scenario",
        )
    return out


def _summary_dists(fields: dict[str, str], path: Path) -> dict[str, Dist]:
    acc: dict[str, dict[str, float]] = {}
    for key, value in fields.items():
        if not key.endswith("(ns)"):
            continue
        name = key[: -len("(ns)")].strip()
        m, mm = _PCT.match(name), _MINMAX.match(name)
        if m:
            which, field = _WHICH[m.group(2).lower()], pct_field(m.group(1))
        elif mm:
            which, field = _WHICH[mm.group(2).lower()], mm.group(1).lower()
        else:
            continue
        x = to_time(value, file=path, where=key)
        if field and x is not None:
            acc.setdefault(which, {})[field] = x * 1e-9
    return {k: Dist(**v) for k, v in acc.items()}


_DETAIL_DIST = [
    (re.compile(r"^result_(\d+\.\d+)_percentile_latency_ns$"), "e2e_s"),
    (re.compile(r"^result_first_token_(\d+\.\d+)_percentile_latency_ns$"), "ttft_s"),
    (re.compile(r"^result_time_per_output_token_(\d+\.\d+)_percentile_ns$"), "tpot_s"),
]
_DETAIL_STAT = {
    "result_min_latency_ns": ("e2e_s", "min"),
    "result_max_latency_ns": ("e2e_s", "max"),
    "result_mean_latency_ns": ("e2e_s", "mean"),
    "result_first_token_min_latency_ns": ("ttft_s", "min"),
    "result_first_token_max_latency_ns": ("ttft_s", "max"),
    "result_first_token_mean_latency_ns": ("ttft_s", "mean"),
    "result_time_to_output_token_min": ("tpot_s", "min"),
    "result_time_to_output_token_max": ("tpot_s", "max"),
    "result_time_to_output_token_mean": ("tpot_s", "mean"),
}


def _detail_dists(fields: dict[str, Any], path: Path) -> dict[str, Dist]:
    acc: dict[str, dict[str, float]] = {}
    for key, value in fields.items():
        target = _DETAIL_STAT.get(key)
        if target is None:
            for rx, which in _DETAIL_DIST:
                m = rx.match(key)
                p = pct_field(m.group(1)) if m else None
                if p:
                    target = (which, p)
                    break
        if target is None:
            continue
        x = to_time(value, file=path, where=key)
        if x is not None:
            acc.setdefault(target[0], {})[target[1]] = x * 1e-9
    return {k: Dist(**v) for k, v in acc.items()}


def _load(scenario: str, target_qps: float | None, path: Path):
    s = scenario.lower().replace(" ", "")
    if s == "server":
        if not target_qps:
            raise InputError("a Server run needs target_qps", file=path, where="target_qps")
        return RateLoad(rate_rps=target_qps, burstiness=1.0)
    if s in ("singlestream", "multistream"):
        return ConcurrencyLoad(concurrency=1)
    if s == "offline":
        return OfflineLoad()
    raise InputError(
        f"unknown scenario {scenario!r}; expected Server, Offline, SingleStream or MultiStream",
        file=path,
        where="Scenario",
    )


def _pick(fields: dict[str, str], path: Path, *keys: str) -> float | None:
    for key in keys:
        if key in fields:
            return to_float(fields[key], file=path, where=key)
    return None


def parse_summary(path: Path, text: str, sha: str) -> list[BenchRun]:
    """The run in a summary log, with the detail log next to it merged in when present."""
    f = summary_fields(text, path)
    scenario = f["Scenario"]
    samples_s = _pick(
        f, path, "Completed samples per second", "Samples per second", "QPS w/ loadgen overhead"
    )
    tokens_s = _pick(f, path, "Completed tokens per second", "Tokens per second")
    target = _pick(f, path, "target_qps")
    dists = _summary_dists(f, path)
    detail_path = path.with_name("mlperf_log_detail.txt")
    extra_files, date, version = [], None, None
    if path.name != detail_path.name and detail_path.is_file():
        dtext, _ = read_text(detail_path)
        d = detail_fields(dtext, detail_path)
        for which, dist in _detail_dists(d, detail_path).items():
            mine = dists.get(which)
            merged = dist.model_dump(exclude_none=True) | (
                mine.model_dump(exclude_none=True) if mine else {}
            )
            dists[which] = Dist(**merged)
        extra_files, date, version = (
            [str(detail_path)],
            d.get("test_datetime"),
            d.get("loadgen_version"),
        )
    run = _build(path, sha, scenario, samples_s, tokens_s, target, dists, "mlperf-summary")
    run.source.extra_files = extra_files
    run.date, run.tool.version = date, version
    run.measured.valid = f.get("Result is", "").upper() == "VALID" if "Result is" in f else None
    run.workload.num_requests = to_int(
        f.get("samples_per_query") if scenario.lower() == "offline" else None,
        file=path,
        where="samples_per_query",
    )
    run.notes.append(f"SUT name: {f.get('SUT name', '?')}; mode: {f.get('Mode', '?')}")
    return [run]


def parse_detail(path: Path, text: str, sha: str) -> list[BenchRun]:
    """The run in a detail log alone (no summary next to it was given)."""
    d = detail_fields(text, path)
    scenario = str(d.get("effective_scenario") or d.get("requested_scenario"))
    samples_s = to_float(
        d.get("result_completed_samples_per_sec"),
        file=path,
        where="result_completed_samples_per_sec",
    )
    if samples_s is None:
        samples_s = to_float(
            d.get("result_samples_per_second"), file=path, where="result_samples_per_second"
        )
    if samples_s is None:
        samples_s = to_float(
            d.get("result_qps_with_loadgen_overhead"),
            file=path,
            where="result_qps_with_loadgen_overhead",
        )
    tokens_s = to_float(
        d.get("result_completed_tokens_per_second"),
        file=path,
        where="result_completed_tokens_per_second",
    )
    if tokens_s is None:
        tokens_s = to_float(
            d.get("result_tokens_per_second"), file=path, where="result_tokens_per_second"
        )
    target = to_float(d.get("effective_target_qps"), file=path, where="effective_target_qps")
    run = _build(
        path, sha, scenario, samples_s, tokens_s, target, _detail_dists(d, path), "mlperf-detail"
    )
    run.date, run.tool.version = d.get("test_datetime"), d.get("loadgen_version")
    validity = d.get("result_validity")
    run.measured.valid = validity == "VALID" if isinstance(validity, str) else None
    if scenario.lower() == "offline":
        run.workload.num_requests = to_int(
            d.get("effective_samples_per_query"), file=path, where="effective_samples_per_query"
        )
    return [run]


def _build(path, sha, scenario, samples_s, tokens_s, target, dists, fmt) -> BenchRun:
    output_len = None
    if samples_s and tokens_s:
        output_len = LengthDist(
            kind="stats",
            mean=tokens_s / samples_s,
            derived="tokens per second / samples per second",
        )
    return BenchRun(
        source=Source(file=str(path), format=fmt, sha256=sha),
        tool=Tool(name="MLPerf LoadGen"),
        workload=Workload(
            load=_load(scenario, target, path), scenario=scenario, output_len=output_len
        ),
        measured=Measured(
            request_throughput_rps=samples_s,
            output_tokens_per_s=tokens_s,
            ttft_s=dists.get("ttft_s"),
            tpot_s=dists.get("tpot_s"),
            e2e_s=dists.get("e2e_s"),
        ),
    )
