"""GenAI-Perf (``profile_export_genai_perf.json``/``.csv``) and AIPerf
(``profile_export_aiperf.json``/``.csv``) profile exports.

The JSON holds one object per metric - ``{"unit": "ms", "avg": ..., "p50": ..., "p99": ...}`` - and
the run's configuration under ``input_config`` (AIPerf adds ``aiperf_version``). The CSV holds a
table ``Metric,avg,min,max,...`` with names like ``Time To First Token (ms)`` and a second table
``Metric,Value`` for throughputs; it carries no load settings.

Both tools' ``inter_token_latency`` is per request, ``(request latency - TTFT) / (output tokens -
1)``: it is stored as TPOT. AIPerf's ``inter_chunk_latency`` (every gap between chunks) is the ITL.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from capsim.bench.common import DIST_FIELDS, to_float, to_int, to_time
from capsim.bench.jsonio import parse_json
from capsim.bench.model import (
    BenchRun,
    ConcurrencyLoad,
    Dist,
    Format,
    LengthDist,
    Measured,
    RateLoad,
    Settings,
    Source,
    Tool,
    Workload,
)
from capsim.errors import InputError

UNITS = {"ms": 1e-3, "sec": 1.0, "s": 1.0, "us": 1e-6, "ns": 1e-9}
_DISTS = {
    "time_to_first_token": "ttft_s",
    "inter_token_latency": "tpot_s",
    "inter_chunk_latency": "itl_s",
    "request_latency": "e2e_s",
}
_RATES = {
    "request_throughput": "request_throughput_rps",
    "output_token_throughput": "output_tokens_per_s",
    "total_token_throughput": "total_tokens_per_s",
}
_STAT_ALIASES = {"avg": "mean", "median": "p50"}
NOTE_TPOT = "inter_token_latency is per request ((latency - TTFT) / (tokens - 1)): stored as TPOT"


def is_export_json(doc: Any) -> bool:
    """A profile export: a ``time_to_first_token`` or ``request_latency`` metric object."""
    if not isinstance(doc, dict):
        return False
    metric = doc.get("request_latency") or doc.get("time_to_first_token")
    return isinstance(metric, dict) and "avg" in metric


def _dist(obj: Mapping[str, Any], scale: float, *, path: Path, where: str) -> Dist:
    out: dict[str, float] = {}
    for key, value in obj.items():
        field = _STAT_ALIASES.get(key, key)
        if field in DIST_FIELDS:
            x = to_time(value, file=path, where=f"{where}.{key}")
            if x is not None:
                out[field] = x * scale
    return Dist(**out)


def _scale(obj: Mapping[str, Any], *, path: Path, where: str) -> float:
    unit = str(obj.get("unit", "")).strip().lower()
    if unit not in UNITS:
        raise InputError(
            f"unknown unit {obj.get('unit')!r}; expected one of {', '.join(UNITS)}",
            file=path,
            where=f"{where}.unit",
        )
    return UNITS[unit]


def _length(obj: Any, *, path: Path, where: str) -> LengthDist | None:
    if not isinstance(obj, Mapping):
        return None
    d = _dist(obj, 1.0, path=path, where=where)
    return LengthDist(
        kind="stats", mean=d.mean, std=d.std, min=d.min, max=d.max, p50=d.p50, p99=d.p99
    )


def _find(obj: Any, key: str) -> Any:
    """The first value under ``key`` anywhere in nested dicts and lists (depth first)."""
    if isinstance(obj, Mapping):
        if key in obj and obj[key] is not None:
            return obj[key]
        children: Any = obj.values()
    elif isinstance(obj, list):
        children = obj
    else:
        return None
    for child in children:
        found = _find(child, key)
        if found is not None:
            return found
    return None


def _profiling_config(cfg: Mapping[str, Any]) -> Mapping[str, Any]:
    """AIPerf >= 0.10 lists phases; the ``profiling`` phase holds the measured load."""
    phases = cfg.get("phases")
    if isinstance(phases, list):
        for phase in phases:
            if isinstance(phase, Mapping) and phase.get("name") == "profiling":
                return phase
    return cfg


def _load(cfg: Mapping[str, Any], path: Path):
    scope = _profiling_config(cfg)
    conc = _find(scope, "concurrency")
    rate = _find(scope, "request_rate")
    if rate is not None:
        r = to_float(rate, file=path, where="input_config.request_rate")
        if r and r > 0:
            cap = to_int(conc, file=path, where="input_config.concurrency") if conc else None
            return RateLoad(rate_rps=r, max_concurrency=cap)
    if conc is not None:
        n = to_int(conc, file=path, where="input_config.concurrency")
        return ConcurrencyLoad(concurrency=n) if n else None
    return None


def _model(cfg: Mapping[str, Any]) -> str | None:
    for key in ("model_names", "model", "models"):
        value = _find(cfg, key)
        if isinstance(value, Mapping) and isinstance(value.get("items"), list):
            value = value["items"]  # AIPerf: models: {items: [{name: ...}]}
        if isinstance(value, list) and value:
            value = value[0]
        if isinstance(value, Mapping):
            value = value.get("name")
        if isinstance(value, str):
            return value
    return None


def parse_json_export(path: Path, text: str, sha: str) -> list[BenchRun]:
    """A GenAI-Perf or AIPerf ``profile_export_*.json``."""
    doc = parse_json(text, path)
    if not is_export_json(doc):
        raise InputError(
            "expected a GenAI-Perf/AIPerf profile export (metric objects such as "
            "time_to_first_token: {unit, avg, p99, ...})",
            file=path,
            where="time_to_first_token",
        )
    aiperf = "aiperf_version" in doc
    measured: dict[str, Any] = {}
    for key, field in _DISTS.items():
        if isinstance(doc.get(key), Mapping):
            measured[field] = _dist(
                doc[key], _scale(doc[key], path=path, where=key), path=path, where=key
            )
    for key, field in _RATES.items():
        if isinstance(doc.get(key), Mapping):
            measured[field] = to_float(doc[key].get("avg"), file=path, where=f"{key}.avg")
    cfg = doc.get("input_config") if isinstance(doc.get("input_config"), Mapping) else {}
    count = doc.get("request_count")
    duration = doc.get("benchmark_duration")
    workload = Workload(
        load=_load(cfg, path),
        completed=to_int(count.get("avg"), file=path, where="request_count.avg")
        if isinstance(count, Mapping)
        else None,
        duration_s=to_float(duration.get("avg"), file=path, where="benchmark_duration.avg")
        if isinstance(duration, Mapping)
        else None,
        input_len=_length(
            doc.get("input_sequence_length"), path=path, where="input_sequence_length"
        ),
        output_len=_length(
            doc.get("output_sequence_length"), path=path, where="output_sequence_length"
        ),
    )
    fmt: Format = "aiperf-json" if aiperf else "genai-perf-json"
    version = doc.get("aiperf_version") if aiperf else None
    date = doc.get("start_time") if isinstance(doc.get("start_time"), str) else None
    return [
        BenchRun(
            source=Source(file=str(path), format=fmt, sha256=sha),
            tool=Tool(name="AIPerf" if aiperf else "GenAI-Perf", version=version),
            date=date,
            settings=Settings(model=_model(cfg)),
            workload=workload,
            measured=Measured(**measured),
            notes=[NOTE_TPOT],
        )
    ]


_NAME = re.compile(r"^(.*?)\s*(?:\(([^()]*)\))?$")


def _csv_key(name: str) -> tuple[str, str | None]:
    """``Time To First Token (ms)`` -> ``('time_to_first_token', 'ms')``."""
    m = _NAME.match(name.strip())
    base, unit = (m.group(1), m.group(2)) if m else (name, None)
    return re.sub(r"[^a-z0-9]+", "_", base.lower()).strip("_"), unit


def is_export_csv(text: str) -> bool:
    """The first table's header starts ``Metric,avg`` and a TTFT or latency row follows."""
    head = text.lstrip().splitlines()[:1]
    return bool(head) and head[0].replace(" ", "").lower().startswith("metric,avg")


def parse_csv_export(path: Path, text: str, sha: str) -> list[BenchRun]:
    """A GenAI-Perf or AIPerf ``profile_export_*.csv`` (statistics table + value table)."""
    rows = list(csv.reader(io.StringIO(text)))
    stats: dict[str, tuple[str | None, dict[str, str]]] = {}
    values: dict[str, str] = {}
    header: list[str] | None = None
    for row in rows:
        if not row or not any(c.strip() for c in row):
            header = None
            continue
        if row[0].strip() == "Metric" or (header is None and len(row) > 1):
            header = [c.strip() for c in row]
            continue
        if header is None:
            continue
        key, unit = _csv_key(row[0])
        if header[:2] == ["Metric", "Value"]:
            values[key] = row[1] if len(row) > 1 else ""
        elif header[0] == "Metric":
            stats[key] = (unit, dict(zip(header[1:], row[1:], strict=False)))
    if "time_to_first_token" not in stats and "request_latency" not in stats:
        raise InputError(
            "expected a GenAI-Perf/AIPerf CSV export with a 'Time To First Token (ms)' or "
            "'Request Latency (ms)' row",
            file=path,
            where="Metric",
        )
    aiperf = "sum" in next(iter(stats.values()))[1] or "time_to_first_output_token" in stats
    measured: dict[str, Any] = {}
    for key, field in _DISTS.items():
        if key in stats:
            unit, cells = stats[key]
            scale = UNITS.get((unit or "").lower())
            if scale is None:
                raise InputError(f"unknown unit {unit!r}", file=path, where=f"{key} row")
            measured[field] = _dist(cells, scale, path=path, where=key)
    for key, field in _RATES.items():
        if key in values:
            measured[field] = to_float(values[key], file=path, where=f"{key} row")
    lengths = {
        k: _length(stats[k][1], path=path, where=k) if k in stats else None
        for k in ("input_sequence_length", "output_sequence_length")
    }
    workload = Workload(
        completed=to_int(values.get("request_count"), file=path, where="Request Count row"),
        duration_s=to_float(
            values.get("benchmark_duration"), file=path, where="Benchmark Duration row"
        ),
        input_len=lengths["input_sequence_length"],
        output_len=lengths["output_sequence_length"],
    )
    tool = "AIPerf" if aiperf else "GenAI-Perf"
    return [
        BenchRun(
            source=Source(
                file=str(path), format="aiperf-csv" if aiperf else "genai-perf-csv", sha256=sha
            ),
            tool=Tool(name=tool),
            workload=workload,
            measured=Measured(**measured),
            notes=[
                NOTE_TPOT,
                "the CSV export records no load (concurrency/rate): use the JSON export",
            ],
        )
    ]
