"""Strict loader of a ``capsim-calibration/1`` measurements directory.

``load_measurements(dir)`` returns ``(meta, rows)``: ``meta`` is the parsed ``meta.json`` and
``rows`` a list of dicts, one per CSV row, with every column of the format as a key (``str`` for
kind/precision/impl, ``int`` or ``float`` for numbers, ``None`` for an empty cell). Anything that
does not match the format raises :class:`MeasurementsError`, whose message names the file, and the
row and column when there is one.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from .schema import (
    COLUMN_NAMES,
    COLUMN_TYPES,
    CSV_FILE,
    FORMAT,
    FORMAT_NAME,
    KINDS,
    META_FILE,
    NO_PRECISION,
    OPTIONAL_COLUMNS,
    PRECISIONS,
    REQUIRED_META_KEYS,
    SHAPE_COLUMNS,
    TEXT_VALUES,
    TIMED_KINDS,
    required_columns,
)

_INT = re.compile(r"^[+-]?[0-9]+$")


class MeasurementsError(ValueError):
    """A measurements directory that does not follow the format.

    ``file``, ``row`` (1-based data row) and ``column`` say where, when known.
    """

    def __init__(
        self, message: str, *, file: Path, row: int | None = None, column: str | None = None
    ) -> None:
        super().__init__(message)
        self.file, self.row, self.column = file, row, column


def _fail(
    file: Path,
    what: str,
    row: int | None = None,
    line: int | None = None,
    column: str | None = None,
) -> MeasurementsError:
    where = str(file)
    if row is not None:
        where += f": row {row}" + (f" (line {line})" if line is not None else "")
    if column is not None:
        where += f", column '{column}'"
    return MeasurementsError(f"{where}: {what}", file=file, row=row, column=column)


def load_measurements(directory: str | Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Read and validate ``meta.json`` and ``measurements.csv`` in ``directory``."""
    d = Path(directory)
    if not d.is_dir():
        raise _fail(d, "not a directory (expected a capsim calibration directory)")
    meta = load_meta(d / META_FILE)
    rows = load_rows(d / CSV_FILE)
    if meta["n_rows"] != len(rows):
        raise _fail(
            d / CSV_FILE,
            f"has {len(rows)} rows but {META_FILE} says n_rows = {meta['n_rows']} "
            "(truncated or mismatched files)",
        )
    return meta, rows


# -- meta.json ---------------------------------------------------------------------------------
#: Deepest nesting accepted in meta.json (the harness writes 3 levels).
MAX_DEPTH = 64


def _depth(data: Any) -> int:
    """Nesting depth of lists and objects, found without recursion.

    >>> _depth({"a": [1, {"b": []}]})
    4
    """
    deepest, stack = 0, [(data, 1)]
    while stack:
        item, d = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, d)
            stack.extend((v, d + 1) for v in (item.values() if isinstance(item, dict) else item))
    return deepest


def load_meta(path: Path) -> dict[str, Any]:
    """Parse ``meta.json`` and check its format name, version and required keys."""
    if not path.is_file():
        raise _fail(path, "missing: not a capsim calibration directory")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason})") from exc
    except json.JSONDecodeError as exc:
        raise _fail(
            path, f"not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"
        ) from None
    except RecursionError:
        raise _fail(
            path, f"lists and objects nested too deeply (the limit is {MAX_DEPTH})"
        ) from None
    if not isinstance(meta, dict):
        raise _fail(path, "must hold a JSON object")
    if _depth(meta) > MAX_DEPTH:
        raise _fail(path, f"lists and objects nested deeper than {MAX_DEPTH} levels")
    _check_format(path, meta.get("format"))
    missing = [k for k in REQUIRED_META_KEYS if k not in meta]
    if missing:
        raise _fail(path, "missing key(s) " + ", ".join(repr(k) for k in missing))
    _check_meta_types(path, meta)
    return meta


def _check_format(path: Path, fmt: object) -> None:
    if fmt is None:
        raise _fail(path, f"missing key 'format' (expected {FORMAT!r})")
    if not isinstance(fmt, str) or not fmt.startswith(FORMAT_NAME + "/"):
        raise _fail(path, f"format {fmt!r} is not a capsim calibration format ({FORMAT!r})")
    if fmt != FORMAT:
        raise _fail(path, f"format version {fmt!r} is not supported; this loader reads {FORMAT!r}")


def _check_meta_types(path: Path, meta: dict[str, Any]) -> None:
    expected = {
        "device": dict,
        "precisions": dict,
        "budget": dict,
        "skipped": list,
        "columns": dict,
        "backend": str,
        "harness_version": str,
        "created_utc": str,
    }
    for key, typ in expected.items():
        if not isinstance(meta[key], typ):
            raise _fail(path, f"key {key!r} must be a JSON {typ.__name__}")
    n = meta["n_rows"]
    if not isinstance(n, int) or isinstance(n, bool) or n < 0:
        raise _fail(path, f"key 'n_rows' must be a non-negative integer, not {n!r}")
    if meta["device"].get("kind") not in ("cpu", "cuda"):
        raise _fail(
            path, f"device.kind must be 'cpu' or 'cuda', not {meta['device'].get('kind')!r}"
        )
    name = meta["device"].get("name")
    if name is not None and not isinstance(name, str):
        raise _fail(path, f"device.name must be a JSON string or null, not {name!r}")


# -- measurements.csv --------------------------------------------------------------------------
def load_rows(path: Path) -> list[dict[str, Any]]:
    """Parse and validate every row of ``measurements.csv``."""
    if not path.is_file():
        raise _fail(path, "missing")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise _fail(path, f"not UTF-8 text ({exc.reason})") from exc
    if not text.strip():
        raise _fail(path, "empty file (expected a header line and one row per measurement)")
    reader = csv.reader(io.StringIO(text, newline=""))
    header = _check_header(path, next(reader), text)
    records = [(reader.line_num, fields) for fields in reader]
    if not text.endswith("\n"):
        n = len(records)
        raise _fail(
            path,
            "truncated last row (the file does not end with a newline)",
            row=n,
            line=records[-1][0] if records else None,
        )
    rows = []
    for i, (line, fields) in enumerate(records, start=1):
        if len(fields) != len(header):
            what = "truncated last row" if i == len(records) else "wrong number of fields"
            raise _fail(
                path, f"{what}: {len(fields)} fields, expected {len(header)}", row=i, line=line
            )
        rows.append(_parse_row(path, i, line, dict(zip(header, fields, strict=True))))
    return rows


def _check_header(path: Path, header: list[str], text: str) -> list[str]:
    if "\n" not in text:
        raise _fail(path, "truncated: only a partial header line and no rows")
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        raise _fail(path, "duplicate column(s) " + ", ".join(repr(c) for c in dupes))
    missing = [c for c in COLUMN_NAMES if c not in header and c not in OPTIONAL_COLUMNS]
    if missing:
        raise _fail(path, "missing column(s) " + ", ".join(repr(c) for c in missing))
    unknown = [c for c in header if c not in COLUMN_NAMES]
    if unknown:
        raise _fail(
            path, "unknown column(s) " + ", ".join(repr(c) for c in unknown) + f" (not in {FORMAT})"
        )
    return header


def _parse_row(path: Path, row: int, line: int, cells: dict[str, str]) -> dict[str, Any]:
    kind = cells["kind"].strip()
    if kind not in KINDS:
        raise _fail(
            path,
            f"unknown kind {kind!r} (one of {', '.join(KINDS)})",
            row=row,
            line=line,
            column="kind",
        )
    required = set(required_columns(kind))
    out: dict[str, Any] = {}
    for name in COLUMN_NAMES:
        raw = cells.get(name, "").strip()
        if raw == "":
            if name in required:
                raise _fail(
                    path,
                    f"missing value (required for kind {kind!r})",
                    row=row,
                    line=line,
                    column=name,
                )
            out[name] = None
            continue
        try:
            out[name] = _parse_cell(name, raw)
        except ValueError as exc:
            raise _fail(path, str(exc), row=row, line=line, column=name) from None
    _check_consistency(path, row, line, out)
    return out


def _parse_cell(name: str, raw: str) -> Any:
    typ = COLUMN_TYPES[name]
    if typ == "str":
        if name == "precision" and raw not in PRECISIONS + (NO_PRECISION,):
            raise ValueError(f"unknown precision {raw!r} (one of {', '.join(PRECISIONS)}, none)")
        if name in TEXT_VALUES and raw not in TEXT_VALUES[name]:
            raise ValueError(f"unknown {name} {raw!r} (one of {', '.join(TEXT_VALUES[name])})")
        return raw
    if typ == "int":
        if not _INT.match(raw):
            raise ValueError(f"{raw!r} is not an integer")
        value: float = int(raw)
    else:
        try:
            value = float(raw)
        except ValueError:
            raise ValueError(f"{raw!r} is not a number") from None
        if math.isnan(value):
            raise ValueError("NaN is not allowed")
        if math.isinf(value):
            raise ValueError(f"{raw!r} is not finite")
    if value < 0:
        raise ValueError(f"negative value {raw}")
    return value


#: kinds whose ``flops`` and ``bytes`` are the roofline inputs of a fit (both must be positive)
_WORK_KINDS = frozenset({"gemm", "attention_decode", "attention_prefill", "forward_block", "forward_resnet50", "conv2d", "forward_llm_step"})  # fmt: skip


def _check_consistency(path: Path, row: int, line: int, r: dict[str, Any]) -> None:
    def fail(what: str, column: str) -> MeasurementsError:
        return _fail(path, what, row=row, line=line, column=column)

    kind = r["kind"]
    for name in SHAPE_COLUMNS[kind]:
        if r[name] < 1:
            raise fail(f"must be at least 1 (a size of a {kind} row), not {r[name]}", name)
    if kind.startswith("bandwidth") and not r["bytes"] > 0:
        raise fail(f"must be positive: a {kind} row moves bytes (got {r['bytes']})", "bytes")
    if kind in _WORK_KINDS:
        for name in ("flops", "bytes"):
            if not r[name] > 0:
                raise fail(f"must be positive for a {kind} row (got {r[name]})", name)
    if kind == "forward_block":
        h, d = r["heads"], r["head_dim"]
        if r["hidden"] != h * d:
            raise fail(
                f"{r['hidden']} is not heads x head_dim = {h} x {d} = {h * d} "
                "(the block's width is split evenly over its heads)",
                "hidden",
            )
        if r["tokens"] != r["batch"] * r["seq_len"]:
            raise fail(
                f"{r['tokens']} is not batch x seq_len = {r['batch']} x {r['seq_len']}", "tokens"
            )
    _check_new_kinds(r, fail)
    if kind not in TIMED_KINDS:
        return
    if r["repeats"] < 1:
        raise fail("a timed row needs at least 1 repeat", "repeats")
    if r["inner"] < 1:
        raise fail("must be at least 1", "inner")
    if not r["median_s"] > 0:
        raise fail(f"a timed row's median time must be positive, not {r['median_s']}", "median_s")
    order = ("min_s", "p10_s", "median_s", "p90_s")
    for lo, hi in zip(order, order[1:], strict=False):
        if r[lo] > r[hi] * (1 + 1e-9) + 1e-15:
            raise fail(f"{r[lo]} is greater than {hi} = {r[hi]}", lo)


def _check_new_kinds(r: dict[str, Any], fail: Any) -> None:
    """Shape rules of conv2d, forward_llm_step and allreduce rows."""
    kind = r["kind"]
    if kind == "conv2d":
        g = r["groups"]
        for name in ("in_channels", "out_channels"):
            if r[name] % g:
                raise fail(f"{r[name]} is not a multiple of groups = {g}", name)
    if kind == "forward_llm_step":
        if r["heads"] % r["kv_heads"]:
            raise fail(f"heads = {r['heads']} is not a multiple of kv_heads", "kv_heads")
        per_seq = 1 if r["phase"] == "decode" else r["seq_len"]
        if r["tokens"] != r["batch"] * per_seq:
            raise fail(
                f"{r['tokens']} is not the new tokens of a {r['phase']} step "
                f"(batch x {'1' if per_seq == 1 else 'seq_len'} = {r['batch'] * per_seq})",
                "tokens",
            )
    if kind == "allreduce" and not r["bytes"] > 0 and r["ranks"] > 1:
        raise fail(f"must be positive for an allreduce over {r['ranks']} ranks", "bytes")
