"""Catalog directories the calibrate commands write to: which one, and checks before work."""

from __future__ import annotations

from pathlib import Path

import click

from capsim.errors import InputError
from capsim.load import load_catalog
from capsim.paths import shipped_catalog_dir


def _catalog_dir(ctx: click.Context, given: Path | None) -> Path:
    if given is not None:
        return given
    root = (ctx.find_root().obj or {}).get("catalog") if ctx.find_root().obj else None
    if root is not None:
        return Path(root)
    return shipped_catalog_dir()


def _writable_dir(path: Path, option: str) -> Path:
    """A directory to write into (it may not exist yet): refuse one that is, or would have to be
    created under, a regular file -- before any work is done."""
    p = path
    while not p.exists():
        if p.parent == p:
            return path
        p = p.parent
    if not p.is_dir():
        below = "" if p == path else f", so {path} cannot be created"
        raise InputError(f"{p} is a file, not a directory{below}", where=option)
    return path


def _write_error(exc: OSError, path: Path) -> InputError:
    target = exc.filename or path
    return InputError(f"cannot write: {exc.strerror or exc}", file=target)


def _entry_path(cat_dir: Path, gpu_id: str, hint: str = "") -> Path:
    cat = load_catalog(cat_dir)
    if gpu_id not in cat.gpus:
        raise InputError(
            f"unknown GPU '{gpu_id}' in {cat_dir}; the catalog has: {', '.join(cat)}{hint}",
            where="--gpu",
        )
    return cat.files[gpu_id]
