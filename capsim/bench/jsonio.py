"""JSON and JSON Lines readers whose errors name the file, line and column.

>>> json_records('{"a": 1}\\n{"a": 2}\\n', "f.jsonl", what="x")
[{'a': 1}, {'a': 2}]
>>> json_records('{"a": Infinity}', "f.json", what="x")[0]["a"]
inf
>>> parse_json('{"rate": 1, "rate": 4}', "f.json")
Traceback (most recent call last):
...
capsim.errors.InputError: f.json: key 'rate' appears twice in one object; expected each key once (a reader would silently keep one of the two values)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from capsim.errors import MAX_DEPTH, InputError, check_depth


class _Twice(ValueError):
    """A key repeated inside one JSON object."""


def _once(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k in seen:
                raise _Twice(k)
            seen.add(k)
    return out


def loads(text: str, path: Path | str, where: str = "") -> Any:
    """``json.loads``, with nesting deeper than :data:`~capsim.errors.MAX_DEPTH` levels an
    :class:`InputError` (the parser itself would raise ``RecursionError`` at ~1,000)."""
    try:
        data = json.loads(text, object_pairs_hook=_once)
    except _Twice as exc:
        raise InputError(
            f"key '{exc.args[0]}' appears twice in one object; expected each key once (a "
            "reader would silently keep one of the two values)",
            file=path,
            where=where,
        ) from None
    except RecursionError:
        raise InputError(
            f"lists and objects nested too deeply (the limit is {MAX_DEPTH} levels)",
            file=path,
            where=where,
        ) from None
    check_depth(data, file=path)
    return data


def parse_json(text: str, path: Path | str) -> Any:
    """One JSON document (NaN/Infinity allowed, as Python writes them)."""
    try:
        return loads(text, path)
    except json.JSONDecodeError as exc:
        raise InputError(
            f"not valid JSON: {exc.msg}", file=path, where=f"line {exc.lineno}, column {exc.colno}"
        ) from None


def json_records(text: str, path: Path | str, *, what: str) -> list[dict[str, Any]]:
    """The objects in a JSON file: one object, a list of objects, or one object per line."""
    stripped = text.strip()
    if not stripped:
        raise InputError(f"the file is empty; expected a {what}", file=path)
    try:
        doc = loads(stripped, path)
    except json.JSONDecodeError:
        doc = None
        records = []
        for n, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                records.append(loads(line, path, where=f"line {n}"))
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"not valid JSON or JSON Lines: {exc.msg}",
                    file=path,
                    where=f"line {n}, column {exc.colno}",
                ) from None
        doc = records
    items = doc if isinstance(doc, list) else [doc]
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise InputError(
                f"expected a JSON object, got {type(item).__name__}; expected a {what}",
                file=path,
                where=f"record {i + 1}",
            )
    return items
