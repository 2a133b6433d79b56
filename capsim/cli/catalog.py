"""``capsim catalog list|show|validate``: the hardware catalog in use."""

from __future__ import annotations

import json
from pathlib import Path

import click

from capsim.cli.options import (
    catalog_of,
    emit,
    handle_errors,
)
from capsim.errors import InputError
from capsim.load import load_catalog
from capsim.report.catalog import catalog_rows, format_catalog


# --------------------------------------------------------------------------- catalog
@click.group()
def catalog() -> None:
    """List, show and validate hardware catalog entries.

    \b
    Example:
      capsim catalog list
    """


@catalog.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@handle_errors
def catalog_list(ctx, fmt: str) -> None:
    """One line per card: memory, bandwidth, peaks, power, price.

    \b
    Example:
      capsim catalog list --format json
    """
    cat = catalog_of(ctx)
    if fmt == "json":
        emit(json.dumps(catalog_rows(cat), indent=2))
    else:
        emit(format_catalog(cat))


@catalog.command("show")
@click.argument("gpu_id")
@click.pass_context
@handle_errors
def catalog_show(ctx, gpu_id: str) -> None:
    """Every field of one entry, with its sources.

    \b
    Example:
      capsim catalog show h100-sxm
    """
    import yaml

    cat = catalog_of(ctx)
    if gpu_id not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu_id}'; the catalog has: {', '.join(cat)}")
    data = cat[gpu_id].model_dump(exclude_none=False)
    emit(f"# {cat.files[gpu_id]}\n" + yaml.safe_dump(data, sort_keys=False, width=100))


@catalog.command("validate")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.pass_context
@handle_errors
def catalog_validate(ctx, directory: Path | None) -> None:
    """Validate every entry of a catalog directory (default: the one in use).

    \b
    Example:
      capsim catalog validate my_catalog/
    """
    cat = load_catalog(directory) if directory else catalog_of(ctx)
    emit(f"ok: {len(cat)} entries ({', '.join(cat)})")
