"""What every parser shares: reading numbers with errors that name the file and field.

>>> pct_field("99.9")
'p99_9'
>>> pct_field("50.00")
'p50'
>>> dist_from_keys({"mean_ttft_ms": 20.0, "p99_ttft_ms": 40.0}, "ttft", 1e-3, file="f").p99
0.04
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from capsim.bench.model import Dist
from capsim.errors import InputError

DIST_FIELDS = set(Dist.model_fields)


def sha256_of(data: bytes) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(data).hexdigest()


def read_text(path: Path) -> tuple[str, str]:
    """(text, sha256) of a result file; errors name the file."""
    if not path.exists():
        raise InputError("file not found", file=path)
    if path.is_dir():
        raise InputError("expected a benchmark result file, got a directory", file=path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise InputError(f"cannot read file: {exc}", file=path) from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InputError(
            "not a text file (not UTF-8); expected a JSON, JSONL, CSV or text result file",
            file=path,
        ) from None
    return text, sha256_of(data)


def pct_field(p: str) -> str | None:
    """The :class:`Dist` field for a percentile written ``"99"``, ``"99.90"``, ``"50.00"``."""
    try:
        value = float(p)
    except ValueError:
        return None
    text = f"{value:g}".replace(".", "_")
    name = f"p{text}"
    return name if name in DIST_FIELDS else None


def to_float(value: Any, *, file: Path | str, where: str) -> float | None:
    """A number from a parsed file (``None`` stays ``None``); anything else is a user error.

    Accepts ints, floats and numeric strings (``"1,146.31"`` with thousands separators, ``inf``).
    """
    if value is None:
        return None
    if isinstance(value, bool):
        raise InputError(f"expected a number, got {value!r}", file=file, where=where)
    if isinstance(value, int | float):
        return finite_or_none(float(value))
    if isinstance(value, str):
        text = value.strip().replace(",", "")
        if text == "":
            return None
        try:
            return finite_or_none(float(text))
        except ValueError:
            pass
    raise InputError(f"expected a number, got {value!r}", file=file, where=where)


def to_time(value: Any, *, file: Path | str, where: str) -> float | None:
    """A latency (any unit): a number as :func:`to_float` reads it, and never negative.

    >>> to_time("-5.0", file="f.json", where="p99_ttft_ms")
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: f.json: p99_ttft_ms: expected a time >= 0, got '-5.0'
    """
    x = to_float(value, file=file, where=where)
    if x is not None and x < 0:
        raise InputError(f"expected a time >= 0, got {value!r}", file=file, where=where)
    return x


def check_row_width(row: Mapping[Any, Any], *, file: Path | str, where: str) -> None:
    """Refuse a ``csv.DictReader`` row with more or fewer fields than the header: its values
    would land in the wrong columns.

    >>> check_row_width({"a": "1", "b": None}, file="f.csv", where="row 2")
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: f.csv: row 2: has 1 fields but the header has 2 columns; expected one value per column (empty for none)
    """
    extra = row.get(None) or []
    missing = sum(1 for k, v in row.items() if k is not None and v is None)
    if extra or missing:
        width = sum(1 for k in row if k is not None)
        raise InputError(
            f"has {width - missing + len(extra)} fields but the header has {width} columns; "
            "expected one value per column (empty for none)",
            file=file,
            where=where,
        )


def check_unique_columns(cols: list[str], *, file: Path | str) -> None:
    """Refuse a CSV header that names a column twice (a reader keeps one of the two values).

    >>> check_unique_columns(["a", "b", "a"], file="f.csv")
    Traceback (most recent call last):
    ...
    capsim.errors.InputError: f.csv: header: column 'a' appears twice; each column may appear once
    """
    twice = [c for c in cols if cols.count(c) > 1]
    if twice:
        raise InputError(
            f"column '{twice[0]}' appears twice; each column may appear once",
            file=file,
            where="header",
        )


def finite_or_none(x: float | None) -> float | None:
    """``None`` for NaN; infinities are kept for the caller to interpret (rate ``inf``)."""
    return None if x is None or math.isnan(x) else x


def require(d: Mapping[str, Any], key: str, *, file: Path | str, what: str) -> Any:
    """``d[key]``, or an error naming the missing field and the format expected."""
    if key not in d or d[key] is None:
        raise InputError(f"missing field '{key}', which every {what} has", file=file, where=key)
    return d[key]


def to_int(value: Any, *, file: Path | str, where: str) -> int | None:
    """A whole number (``12`` or ``12.0``); errors name the field."""
    x = to_float(value, file=file, where=where)
    if x is None:
        return None
    if not math.isfinite(x) or x != int(x):
        raise InputError(f"expected a whole number, got {value!r}", file=file, where=where)
    return int(x)


_STAT = re.compile(r"^(mean|median|std|min|max|p(\d+(?:\.\d+)?))_(.+)$")


def dist_from_keys(
    d: Mapping[str, Any], metric: str, scale: float, *, file: Path | str, suffix: str = "_ms"
) -> Dist | None:
    """Collect ``mean_<metric>_ms``, ``median_...``, ``p99_...`` style keys into a :class:`Dist`.

    ``scale`` turns the file's unit into seconds (1e-3 for ms). ``None`` when no key matches.
    """
    out: dict[str, float] = {}
    for key, value in d.items():
        if not key.endswith(suffix):
            continue
        m = _STAT.match(key[: len(key) - len(suffix)])
        if not m or m.group(3) != metric:
            continue
        stat = m.group(1)
        field = "p50" if stat == "median" else (pct_field(m.group(2)) if m.group(2) else stat)
        x = to_time(value, file=file, where=key)
        if field is None or x is None:
            continue
        out[field] = x * scale
    return Dist(**out) if out else None


def compact_date(text: str | None) -> str | None:
    """vLLM/SGLang's ``20250304-014141`` as ISO 8601; other text is returned unchanged.

    >>> compact_date("20250304-014141")
    '2025-03-04T01:41:41'
    """
    if not text:
        return None
    try:
        return datetime.strptime(text, "%Y%m%d-%H%M%S").isoformat()
    except ValueError:
        return text
