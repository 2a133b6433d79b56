"""Writing a measurements directory atomically: a temporary sibling directory, then a rename."""

from __future__ import annotations

import csv
import json
import os
import shutil
import stat
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from .errors import CalibrationError
from .schema import COLUMN_NAMES, CSV_FILE, META_FILE


def check_target(out: Path, overwrite: bool) -> None:
    """Fail early (before measuring) when ``out`` cannot be written."""
    if out.exists() and not out.is_dir():
        raise CalibrationError(f"{out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise CalibrationError(f"{out} exists and is not empty (pass --overwrite to replace it)")
    parent = out.parent if str(out.parent) else Path(".")
    if not parent.is_dir():
        raise CalibrationError(f"the parent directory {parent} does not exist")
    if not os.access(parent, os.W_OK):
        raise CalibrationError(f"cannot write into {parent}")


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return repr(value)
    return str(value)


def write_csv(path: Path, rows: Iterable[Mapping[str, Any]]) -> int:
    """Write ``rows`` with the format's columns in order; missing keys become empty cells."""
    count = 0
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(COLUMN_NAMES)
        for row in rows:
            unknown = set(row) - set(COLUMN_NAMES)
            if unknown:
                raise ValueError(f"row has columns outside the format: {sorted(unknown)}")
            writer.writerow([_cell(row.get(name)) for name in COLUMN_NAMES])
            count += 1
        f.flush()
        os.fsync(f.fileno())
    return count


def _write_json(path: Path, data: Mapping[str, Any]) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, sort_keys=False, allow_nan=False)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def write_directory(
    out: Path, meta: Mapping[str, Any], rows: list[Mapping[str, Any]], overwrite: bool
) -> Path:
    """Write ``meta.json`` and ``measurements.csv`` into ``out`` atomically; returns ``out``."""
    out = Path(out)
    check_target(out, overwrite)
    mode = _dir_mode(out)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent or "."))
    try:
        write_csv(tmp / CSV_FILE, rows)
        _write_json(tmp / META_FILE, meta)
        os.chmod(tmp, mode)  # mkdtemp makes it private (0700)
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace(tmp: Path, out: Path) -> None:
    """Move ``tmp`` to ``out``; an existing ``out`` is moved aside first and removed after."""
    old = None
    if out.exists():
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        else:
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
    try:
        os.replace(tmp, out)
    except BaseException:
        if old is not None:
            os.replace(old, out)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def umask() -> int:
    """The process umask, read without changing it where the OS allows (Linux: /proc)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it: set it and restore it at once
    os.umask(mask)
    return mask


def _dir_mode(out: Path) -> int:
    """The mode of the directory being replaced, else what ``mkdir`` gives: 0o777 & ~umask.

    The files inside are created with ``open()`` and so get ``0o666 & ~umask`` already.
    """
    try:
        if out.is_dir():
            return stat.S_IMODE(out.stat().st_mode)
    except OSError:
        pass
    return 0o777 & ~umask()
