"""Writing calibrations: the sidecar file beside an entry, a new catalog entry, atomic writes.

The calibration of entry ``<id>.yaml`` lives in ``<id>.calibration.yaml`` (see
:func:`capsim.load.calibration_path`), so the entry stays human-sized and is never rewritten by a
fit: writers serialise data (``yaml.dump``); they never splice YAML text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from capsim.calibration.fit import calibration_source_line
from capsim.errors import (
    InputError,
    atomic_create_bytes,
    atomic_write_bytes,
    atomic_write_text,
    load_yaml,
    parse_model,
)
from capsim.load import calibration_path, load_gpu_file
from capsim.spec.calibration import Calibration, CalibrationFile
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
    """The calibration sidecar file as YAML text: its ``source`` line, then the calibration
    (lists of numbers on one line each)."""
    data = {
        "source": calibration_source_line(cal),
        **cal.model_dump(mode="json", exclude_none=True),
    }
    header = (
        "# calibration: measured tables and fitted efficiency curves, written by capsim calibrate\n"
        "# (schema: capsim/spec/calibration.py, CalibrationFile); edit by re-running the fit or "
        "import.\n"
    )
    return header + dump_yaml(data)


def _check_sidecar(entry: Path, data: dict[str, Any], text: str) -> GPU:
    """Entry ``data`` (of file ``entry``) as it will load with ``text`` as its sidecar."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:  # pragma: no cover - we wrote it
        raise InputError(
            f"internal error: generated YAML does not parse: {exc}", file=entry
        ) from None
    parse_model(CalibrationFile, raw, file=calibration_path(entry))
    srcs = {**data.get("sources", {}), "calibration": raw["source"]}
    cal = {k: v for k, v in raw.items() if k != "source"}
    return parse_model(GPU, {**data, "sources": srcs, "calibration": cal}, file=entry)


def write_calibration(path: str | Path, cal: Calibration) -> tuple[GPU, Path, Path | None]:
    """Write ``cal`` to the sidecar of catalog entry ``path`` (``<id>.calibration.yaml``).

    The entry itself is not touched. A previous sidecar is kept as ``<sidecar>.bak``. The new
    file is validated with the entry before anything is written, and every write is atomic.
    Returns the new entry, the sidecar's path and the backup's path (None for a first one).
    """
    p = Path(path)
    old_gpu = load_gpu_file(p)
    if old_gpu.calibration is not None and "calibration" in (load_yaml(p) or {}):
        raise InputError(
            f"this entry keeps its calibration inline; move the 'calibration:' block and "
            f"sources.calibration to {calibration_path(p).name} (or delete them) and re-run",
            file=p,
            where="calibration",
        )
    text = calibration_yaml(cal)
    new_gpu = _check_sidecar(p, load_yaml(p), text)
    before = old_gpu.model_dump(exclude={"calibration", "sources"})
    if before != new_gpu.model_dump(exclude={"calibration", "sources"}):  # pragma: no cover
        raise InputError("internal error: the calibration would change other fields", file=p)
    side = calibration_path(p)
    backup = None
    if side.exists():
        backup = backup_path(side)
        atomic_write_bytes(backup, side.read_bytes())
    atomic_write_text(side, text)
    return new_gpu, side, backup


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


def entry_yaml(gpu: GPU) -> str:
    """A whole catalog file for ``gpu`` (a new entry)."""
    data = {
        k: v
        for k, v in gpu.model_dump(mode="json", exclude={"calibration"}).items()
        if v is not None
    }
    data["sources"] = {k: v for k, v in data["sources"].items() if k != "calibration"}
    head = (
        f"# {gpu.name}: created by capsim calibrate fit --new-gpu from measurements on this "
        "device.\n# Peaks are the best measured rates (efficiency 1.0); every number's source is "
        "below.\n"
    )
    text = head + dump_yaml(data)
    if gpu.calibration is not None:
        text += (
            f"\n# calibration: measured tables and fitted curves in {gpu.id}.calibration.yaml "
            "beside this file\n"
        )
    return text


def write_new_entry(directory: str | Path, gpu: GPU) -> list[Path]:
    """Write a new catalog entry ``<directory>/<id>.yaml`` and, if calibrated, its sidecar
    (refuses to replace an entry). Returns the files written."""
    d = Path(directory)
    p = d / f"{gpu.id}.yaml"
    if calibration_path(p).exists() and not p.exists():
        raise InputError(
            f"{calibration_path(p)} exists without its entry: delete it or restore {p.name}",
            param="new_id",
        )
    if p.exists() or p.is_symlink():
        raise InputError(
            f"{p} exists: recalibrate {gpu.id} as an existing entry instead of a new one",
            param="new_id",
        )
    text = entry_yaml(gpu)
    _check_text(text, p)
    side_text = calibration_yaml(gpu.calibration) if gpu.calibration is not None else None
    if side_text is not None:
        _check_sidecar(p, yaml.safe_load(text), side_text)
    d.mkdir(parents=True, exist_ok=True)
    written = []
    if side_text is not None:  # the sidecar first: without its entry it is never read
        atomic_write_text(calibration_path(p), side_text)
        written.append(calibration_path(p))
    try:
        atomic_create_bytes(p, text.encode("utf-8"))  # exclusive: never replaces an entry
    except FileExistsError:
        for w in written:
            w.unlink(missing_ok=True)
        raise InputError(
            f"{p} appeared while writing: recalibrate {gpu.id} as an existing entry instead",
            param="new_id",
        ) from None
    return [p, *written]


def backup_path(path: str | Path) -> Path:
    """Where :func:`write_calibration` keeps the previous sidecar."""
    p = Path(path)
    return p.with_name(p.name + ".bak")
