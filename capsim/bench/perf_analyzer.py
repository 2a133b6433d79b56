"""Triton ``perf_analyzer -f result.csv``: one row per concurrency or request-rate level.

The first column is ``Concurrency`` (``--concurrency-range``) or ``Request Rate``
(``--request-rate-range``); ``Inferences/Second`` is the throughput; latency columns
(``p50 latency`` ... ``p99 latency``, ``Avg latency`` where present) and the latency breakdown
(``Client Send``, ``Server Queue``, ``Server Compute Infer`` ...) are in microseconds. Rows are
sorted by throughput, not by load, as perf_analyzer writes them.
"""

from __future__ import annotations

import csv
import io
import re
from pathlib import Path

from capsim.bench.common import (
    check_row_width,
    check_unique_columns,
    pct_field,
    to_float,
    to_int,
    to_time,
)
from capsim.bench.model import (
    BenchRun,
    ConcurrencyLoad,
    Dist,
    Measured,
    RateLoad,
    Source,
    Tool,
    Workload,
)
from capsim.errors import InputError

LOAD_COLUMNS = ("Concurrency", "Request Rate")
THROUGHPUT = "Inferences/Second"
_PCT = re.compile(r"^p(\d+(?:\.\d+)?) latency$")
_BREAKDOWN = (
    "Client Send",
    "Network+Server Send/Recv",
    "Server Queue",
    "Server Compute Input",
    "Server Compute Infer",
    "Server Compute Output",
    "Server Compute",
    "Client Recv",
)


def looks_like(text: str) -> bool:
    """Header starts ``Concurrency,Inferences/Second`` or ``Request Rate,Inferences/Second``."""
    head = text.lstrip().splitlines()[:1]
    return bool(head) and any(head[0].startswith(f"{c},{THROUGHPUT}") for c in LOAD_COLUMNS)


def parse(path: Path, text: str, sha: str) -> list[BenchRun]:
    """One run per row."""
    reader = csv.DictReader(io.StringIO(text.lstrip()))
    header = reader.fieldnames or []
    load_col = header[0] if header and header[0] in LOAD_COLUMNS else None
    if load_col is None or THROUGHPUT not in header:
        raise InputError(
            f"expected a perf_analyzer CSV whose header starts 'Concurrency,{THROUGHPUT}' or "
            f"'Request Rate,{THROUGHPUT}'",
            file=path,
            where="header",
        )
    check_unique_columns(list(header), file=path)
    runs = []
    for i, row in enumerate(reader):
        where = f"row {i + 2}"
        check_row_width(row, file=path, where=where)
        runs.append(_run(row, load_col, path, sha, i, where))
    if not runs:
        raise InputError("the CSV has a header but no rows", file=path)
    return runs


def _run(row: dict, load_col: str, path: Path, sha: str, index: int, where: str) -> BenchRun:
    def num(col: str) -> float | None:
        return to_float(row.get(col), file=path, where=f"{where}, column '{col}'")

    load: ConcurrencyLoad | RateLoad
    if load_col == "Concurrency":
        n = to_int(row.get(load_col), file=path, where=f"{where}, column '{load_col}'")
        if not n or n < 1:
            raise InputError(
                "expected a concurrency >= 1", file=path, where=f"{where}, column '{load_col}'"
            )
        load = ConcurrencyLoad(concurrency=n)
    else:
        rate = num(load_col)
        if not rate or rate <= 0:
            raise InputError(
                "expected a rate > 0", file=path, where=f"{where}, column '{load_col}'"
            )
        load = RateLoad(rate_rps=rate)
    stats: dict[str, float] = {}
    for col in row:
        m = _PCT.match(col or "")
        field = pct_field(m.group(1)) if m else ("mean" if col == "Avg latency" else None)
        x = to_time(row.get(col), file=path, where=f"{where}, column '{col}'") if field else None
        if field and x is not None:
            stats[field] = x * 1e-6
    parts = [f"{c} {row[c]} us" for c in _BREAKDOWN if row.get(c) not in (None, "")]
    throughput = num(THROUGHPUT)
    if throughput is None:
        raise InputError("missing value", file=path, where=f"{where}, column '{THROUGHPUT}'")
    return BenchRun(
        source=Source(file=str(path), format="perf-analyzer", sha256=sha, index=index),
        tool=Tool(name="perf_analyzer"),
        workload=Workload(load=load),
        measured=Measured(
            request_throughput_rps=throughput, e2e_s=Dist(**stats) if stats else None
        ),
        notes=[
            "throughput is inferences/s (requests x batch size; the CSV does not record the batch)",
            "latency breakdown: " + ", ".join(parts) if parts else "no latency breakdown",
        ],
    )
