"""Runs to replay: files written by ``capsim bench import --out``, or raw result files.

A directory stands for the ``*.json`` files in it. A JSON file holding one normalised run (``schema_version`` and ``source`` at the top) is read
as it is; anything else goes through the importers. Settings given on the command line fill in
or override the file's either way (:func:`capsim.bench.detect.apply_settings`).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from capsim.bench.detect import apply_settings, read_files
from capsim.bench.model import BenchRun
from capsim.errors import InputError


def _normalised(path: Path) -> BenchRun | None:
    """The run in ``path`` if it is a file ``bench import --out`` wrote, else None."""
    if path.suffix != ".json" or not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None  # the importers read it again and say what is wrong
    if not (isinstance(data, dict) and "schema_version" in data and "source" in data):
        return None
    try:
        return BenchRun.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(x) for x in err["loc"])
        raise InputError(
            f"not a valid capsim run file: {err['msg']} (write it with capsim bench import --out)",
            file=path,
            where=where,
        ) from None


def load_runs(
    paths: Iterable[Path], given: Mapping[str, Any], fmt: str | None = None
) -> list[BenchRun]:
    """Every run in ``paths``, with the settings in ``given`` (None values ignored) applied."""
    runs: list[BenchRun] = []
    raw: list[Path] = []
    files: list[Path] = []
    for p in paths:
        if not p.exists():
            raise InputError("file not found", file=p)
        if p.is_dir():  # a folder bench import --out wrote
            found = sorted(p.glob("*.json"))
            if not found:
                raise InputError("no run files (*.json) in this directory", file=p)
            files.extend(found)
        else:
            files.append(p)
    for p in files:
        run = _normalised(p)
        if run is None:
            raw.append(p)
        else:
            runs.append(run)
    if raw:
        runs.extend(read_files(raw, fmt))
    return [apply_settings(r, given) for r in runs]
