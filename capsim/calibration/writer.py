"""Writing calibrations: YAML of a calibration, a new catalog entry, atomic writes with a backup."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from capsim.calibration.fit import calibration_source_line
from capsim.errors import (
    InputError,
    atomic_write_bytes,
    atomic_write_text,
    parse_model,
)
from capsim.load import load_gpu_file
from capsim.spec.calibration import (
    Calibration,
)
from capsim.spec.catalog import GPU


class _Dumper(yaml.SafeDumper):
    """Block-style mappings; lists of plain values on one (wrapped) line."""


def _represent_list(dumper: yaml.SafeDumper, data: list) -> yaml.Node:
    flow = all(not isinstance(x, (list, dict)) for x in data)
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=flow)


_Dumper.add_representer(list, _represent_list)


def dump_yaml(data: Any) -> str:
    """YAML text of ``data`` in the catalog's style (safe types only)."""
    return yaml.dump(
        data, Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100,
        allow_unicode=True,
    )  # fmt: skip


def calibration_yaml(cal: Calibration) -> str:
    """The ``calibration:`` block as YAML text (lists of numbers on one line each)."""
    text = dump_yaml({"calibration": cal.model_dump(mode="json", exclude_none=True)})
    header = (
        "# calibration: measured tables and fitted efficiency curves, written by capsim calibrate\n"
        "# (see capsim/calibration.py for the schema); edit by re-running the fit or import.\n"
    )
    return header + text


_TOP_KEY = re.compile(r"^([A-Za-z_][\w-]*)\s*:")


def splice_calibration(text: str, cal: Calibration) -> str:
    """``text`` of a catalog file with its calibration block (and ``sources.calibration``)
    replaced, keeping every other line -- and its comments -- as it was."""
    lines = text.splitlines(keepends=True)
    out: list[str] = []
    i = 0
    while i < len(lines):  # drop an existing calibration block and its header comment
        line = lines[i]
        m = _TOP_KEY.match(line)
        if m and m.group(1) == "calibration":
            while out and out[-1].startswith("# calibration") or (out and out[-1].startswith("# (see capsim/calibration.py")):  # fmt: skip
                out.pop()
            i += 1
            while i < len(lines) and not _TOP_KEY.match(lines[i]):
                i += 1
            continue
        out.append(line)
        i += 1
    while out and not out[-1].strip():
        out.pop()
    if out and not out[-1].endswith("\n"):
        out[-1] += "\n"
    out = _set_source(out, "calibration", calibration_source_line(cal))
    return "".join(out) + "\n" + calibration_yaml(cal)


def _set_source(lines: list[str], key: str, value: str) -> list[str]:
    start = next((i for i, ln in enumerate(lines) if re.match(r"^sources\s*:\s*(#.*)?$", ln)), None)
    if start is None:
        raise ValueError("no block-style 'sources:' mapping to add the calibration source to")
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    body = [j for j in range(start + 1, end) if lines[j].strip() and not lines[j].lstrip().startswith("#")]  # fmt: skip
    indent = re.match(r"^(\s*)", lines[body[0]]).group(1) if body else "  "
    new = indent + yaml.safe_dump({key: value}, width=10**6, allow_unicode=True).rstrip("\n") + "\n"
    for j in body:
        if re.match(rf"^{re.escape(indent)}{re.escape(key)}\s*:", lines[j]):
            # replace this entry (and any continuation lines)
            k = j + 1
            while k < end and lines[k].startswith(indent + " "):
                k += 1
            return lines[:j] + [new] + lines[k:]
    last = body[-1] + 1 if body else start + 1
    while last < end and lines[last].startswith(indent + " "):
        last += 1
    return lines[:last] + [new] + lines[last:]


def _check_text(text: str, path: Path) -> GPU:
    """Parse ``text`` as the catalog file ``path`` would be parsed."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - we wrote it
        raise InputError(
            f"internal error: generated YAML does not parse: {exc}", file=path
        ) from None
    gpu = parse_model(GPU, data, file=path)
    if gpu.id != path.stem:
        raise InputError(f"id '{gpu.id}' must match the file name '{path.stem}'", file=path)
    return gpu


def write_calibration(path: str | Path, cal: Calibration) -> tuple[GPU, Path]:
    """Put ``cal`` into the catalog file ``path``; keep the previous file as ``<path>.bak``.

    The new text is validated before anything is written, and it must leave every other field of
    the entry unchanged; both writes are atomic. Returns the new entry and the backup's path.
    """
    p = Path(path)
    old_gpu = load_gpu_file(p)
    old = p.read_bytes()
    try:
        text = splice_calibration(old.decode("utf-8"), cal)
    except ValueError:  # no block-style sources: rewrite the whole entry (comments are lost)
        data = old_gpu.model_dump(mode="json", exclude={"calibration"}, exclude_none=True)
        data["sources"]["calibration"] = calibration_source_line(cal)
        text = dump_yaml(data) + "\n" + calibration_yaml(cal)
    new_gpu = _check_text(text, p)
    before = old_gpu.model_dump(exclude={"calibration", "sources"})
    after = new_gpu.model_dump(exclude={"calibration", "sources"})
    if before != after:  # pragma: no cover - a bug in the splice, never write it
        raise InputError(
            "internal error: writing the calibration would change other fields", file=p
        )
    backup = backup_path(p)
    atomic_write_bytes(backup, old)
    atomic_write_text(p, text)
    return new_gpu, backup


def entry_yaml(gpu: GPU) -> str:
    """A whole catalog file for ``gpu`` (a new entry)."""
    data = {
        k: v
        for k, v in gpu.model_dump(mode="json", exclude={"calibration"}).items()
        if v is not None
    }
    head = (
        f"# {gpu.name}: created by capsim calibrate fit --new-gpu from measurements on this "
        "device.\n# Peaks are the best measured rates (efficiency 1.0); every number's source is "
        "below.\n"
    )
    text = head + dump_yaml(data)
    if gpu.calibration is not None:
        text += "\n" + calibration_yaml(gpu.calibration)
    return text


def write_new_entry(directory: str | Path, gpu: GPU) -> Path:
    """Write a new catalog file ``<directory>/<id>.yaml`` (refuses to replace one)."""
    d = Path(directory)
    p = d / f"{gpu.id}.yaml"
    if p.exists():
        raise InputError(
            f"{p} exists: use --gpu {gpu.id} to recalibrate an existing entry", where="--new-gpu"
        )
    text = entry_yaml(gpu)
    _check_text(text, p)
    d.mkdir(parents=True, exist_ok=True)
    atomic_write_text(p, text)
    return p


def backup_path(path: str | Path) -> Path:
    """Where :func:`write_calibration` keeps the previous file."""
    p = Path(path)
    return p.with_name(p.name + ".bak")
