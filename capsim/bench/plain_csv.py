"""capsim's plain CSV for results no other parser reads (columns in :mod:`capsim.bench`).

Two layouts, told apart by the header: **runs** (one served run per row, with a
``rate_rps`` or ``concurrency`` column) and **iterations** (measured engine steps, with the
columns ``phase,batch_size,seq_len,time_ms``; the whole file is one run).
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Literal

from capsim.bench.common import check_row_width, check_unique_columns, to_float, to_int, to_time
from capsim.bench.model import (
    SETTING_KEYS,
    BenchRun,
    ConcurrencyLoad,
    Dist,
    IterationTime,
    LengthDist,
    Measured,
    RateLoad,
    Settings,
    Source,
    Tool,
    Workload,
)
from capsim.errors import InputError

_PHASES: dict[str, Literal["prefill", "decode"]] = {"prefill": "prefill", "decode": "decode"}

ITERATION_COLUMNS = ("phase", "batch_size", "seq_len", "time_ms")
METRICS = ("ttft", "tpot", "itl", "e2e")
STATS = ("mean", "p50", "p90", "p95", "p99")
RUN_COLUMNS = (
    *("rate_rps", "concurrency", "num_requests", "duration_s"),
    *("input_len", "output_len", "input_len_mean", "input_len_std"),
    *("output_len_mean", "output_len_std", "throughput_rps", "output_tokens_per_s"),
    *(f"{m}_{s}_ms" for m in METRICS for s in STATS),
    *SETTING_KEYS,
)


def _header(text: str) -> list[str]:
    lines = [ln for ln in text.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
    return [c.strip() for c in next(csv.reader([lines[0]]))] if lines else []


def looks_like(text: str) -> bool:
    """A header with a ``rate_rps`` or ``concurrency`` column, or the iteration columns."""
    cols = set(_header(text))
    return set(ITERATION_COLUMNS) <= cols or bool(cols & {"rate_rps", "concurrency"})


def _rows(text: str, path: Path) -> list[dict[str, str]]:
    body = "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    rows = list(csv.DictReader(io.StringIO(body)))
    for i, row in enumerate(rows):
        check_row_width(row, file=path, where=f"row {i + 2}")
    return rows


def parse(path: Path, text: str, sha: str) -> list[BenchRun]:
    """Runs (one per row) or one iteration-timing run."""
    cols = _header(text)
    check_unique_columns(cols, file=path)
    if set(ITERATION_COLUMNS) <= set(cols):
        return [_iterations(path, text, sha, cols)]
    unknown = [c for c in cols if c not in RUN_COLUMNS]
    if unknown:
        raise InputError(
            f"unknown column '{unknown[0]}'; accepted: {', '.join(RUN_COLUMNS)}",
            file=path,
            where="header",
        )
    runs = [_run(row, path, sha, i) for i, row in enumerate(_rows(text, path))]
    if not runs:
        raise InputError("the CSV has a header but no rows", file=path)
    return runs


def _iterations(path: Path, text: str, sha: str, cols: list[str]) -> BenchRun:
    extra = [c for c in cols if c not in ITERATION_COLUMNS and c not in SETTING_KEYS]
    if extra:
        raise InputError(
            f"unknown column '{extra[0]}'; accepted: {', '.join(ITERATION_COLUMNS + SETTING_KEYS)}",
            file=path,
            where="header",
        )
    steps: list[IterationTime] = []
    settings: dict = {}
    for i, row in enumerate(_rows(text, path)):
        where = f"row {i + 2}"
        raw = (row.get("phase") or "").strip()
        phase = _PHASES.get(raw)
        if phase is None:
            raise InputError(
                f"phase {raw!r}; expected prefill or decode",
                file=path,
                where=f"{where}, column 'phase'",
            )
        values = {
            c: (to_float if c == "time_ms" else to_int)(
                row.get(c), file=path, where=f"{where}, column '{c}'"
            )
            for c in ITERATION_COLUMNS[1:]
        }
        for c, v in values.items():
            if v is None:
                raise InputError("missing value", file=path, where=f"{where}, column '{c}'")
        steps.append(_step(phase, values, path, where))
        settings = settings or _settings(row, path, where)
    if not steps:
        raise InputError("the CSV has a header but no rows", file=path)
    return BenchRun(
        source=Source(file=str(path), format="capsim-csv", sha256=sha),
        tool=Tool(name="capsim plain CSV (iterations)"),
        settings=Settings(**settings),
        measured=Measured(iterations=steps),
    )


def _step(phase: Literal["prefill", "decode"], v: dict, path: Path, where: str) -> IterationTime:
    if not 0 < v["time_ms"] < math.inf or v["batch_size"] < 1 or v["seq_len"] < 0:
        raise InputError(
            "expected batch_size >= 1, seq_len >= 0 and a finite time_ms > 0",
            file=path,
            where=where,
        )
    return IterationTime(
        phase=phase,
        batch_size=int(v["batch_size"]),
        seq_len=int(v["seq_len"]),
        time_s=v["time_ms"] * 1e-3,
    )


def _settings(row: dict[str, str], path: Path, where: str) -> dict:
    out: dict = {}
    for key in SETTING_KEYS:
        value = (row.get(key) or "").strip()
        if not value:
            continue
        if key in ("tp", "max_num_seqs"):
            out[key] = to_int(value, file=path, where=f"{where}, column '{key}'")
        else:
            out[key] = value
    return out


def _length(row: dict[str, str], side: str, path: Path, where: str) -> LengthDist | None:
    fixed = to_int(row.get(f"{side}_len"), file=path, where=f"{where}, column '{side}_len'")
    if fixed is not None:
        return LengthDist(kind="fixed", value=fixed)
    mean = to_float(
        row.get(f"{side}_len_mean"), file=path, where=f"{where}, column '{side}_len_mean'"
    )
    std = to_float(row.get(f"{side}_len_std"), file=path, where=f"{where}, column '{side}_len_std'")
    return LengthDist(kind="stats", mean=mean, std=std) if mean is not None else None


def _run(row: dict[str, str], path: Path, sha: str, index: int) -> BenchRun:
    where = f"row {index + 2}"

    def num(col: str) -> float | None:
        return to_float(row.get(col), file=path, where=f"{where}, column '{col}'")

    def ms(col: str) -> float | None:
        return to_time(row.get(col), file=path, where=f"{where}, column '{col}'")

    rate, conc = (
        num("rate_rps"),
        to_int(row.get("concurrency"), file=path, where=f"{where}, column 'concurrency'"),
    )
    if (rate is None) == (conc is None):
        raise InputError("give exactly one of rate_rps and concurrency", file=path, where=where)
    if (rate is not None and rate <= 0) or (conc is not None and conc < 1):
        raise InputError("expected rate_rps > 0 or concurrency >= 1", file=path, where=where)
    load: RateLoad | ConcurrencyLoad
    if rate is not None:
        load = RateLoad(rate_rps=rate, burstiness=1.0)
    else:
        assert conc is not None  # exactly one of the two, checked above
        load = ConcurrencyLoad(concurrency=conc)
    dists: dict[str, Any] = {}  # keyword arguments of Measured, each a Dist
    for m in METRICS:
        stats = {s: ms(f"{m}_{s}_ms") for s in STATS}
        stats = {s: v * 1e-3 for s, v in stats.items() if v is not None}
        if stats:
            dists[f"{m}_s"] = Dist(**stats)
    return BenchRun(
        source=Source(file=str(path), format="capsim-csv", sha256=sha, index=index),
        tool=Tool(name="capsim plain CSV"),
        settings=Settings(**_settings(row, path, where)),
        workload=Workload(
            load=load,
            num_requests=to_int(
                row.get("num_requests"), file=path, where=f"{where}, column 'num_requests'"
            ),
            duration_s=num("duration_s"),
            input_len=_length(row, "input", path, where),
            output_len=_length(row, "output", path, where),
        ),
        measured=Measured(
            request_throughput_rps=num("throughput_rps"),
            output_tokens_per_s=num("output_tokens_per_s"),
            **dists,
        ),
    )
