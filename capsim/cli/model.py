"""``capsim model import``: a layered fixed-shape card from an ONNX file (a thin click command).

Registered in :data:`capsim.cli.COMMANDS` as ``model``.
"""

from __future__ import annotations

import json
from pathlib import Path

import click
import yaml

from capsim.cli.options import emit, handle_errors
from capsim.errors import InputError, atomic_write_text
from capsim.onnx_import import import_onnx
from capsim.spec.models import FixedModel, parse_model_card


def parse_dims(items: tuple[str, ...]) -> dict[str, int]:
    """``NAME=VALUE`` options -> {name: value} (errors name the option).

    >>> parse_dims(("seq=128", "batch=1"))
    {'seq': 128, 'batch': 1}
    """
    dims = {}
    for item in items:
        key, eq, value = item.partition("=")
        if not eq or not key.strip() or not value.strip().isdigit() or int(value) < 1:
            raise InputError(
                f"'{item}': expected NAME=VALUE with a positive integer", where="--dim"
            )
        dims[key.strip()] = int(value)
    return dims


def card_text(card: dict) -> str:
    """YAML of an imported card: the fields, then one layer per line."""
    head = {k: v for k, v in card.items() if k != "layers"}
    lines = [
        "# Imported by `capsim model import` (ONNX shape inference; one layer per fused kernel).",
        yaml.safe_dump(head, sort_keys=False, width=100).rstrip(),
        "layers:",
    ]
    lines += ["  - " + json.dumps(layer, separators=(", ", ": ")) for layer in card["layers"]]
    return "\n".join(lines) + "\n"


@click.group("model")
def model_group() -> None:
    """Model cards: import an ONNX graph as a layered card.

    \b
    Example:
      capsim model import resnet50.onnx --dim batch=1 --out models/resnet50.yaml
    """


@model_group.command("import")
@click.argument("onnx_file", type=click.Path(path_type=Path))
@click.option("--name", help="Card name (default: the file's stem).")
@click.option("--dim", "dims", multiple=True, help="Value of a symbolic input dimension, NAME=N.")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), help="Card file to write.")
@handle_errors
def import_cmd(onnx_file: Path, name: str | None, dims: tuple[str, ...], out: Path | None) -> None:
    """Build a fixed-shape card (layers, FLOPs, bytes per sample) from an ONNX model.

    \b
    Example:
      capsim model import resnet50.onnx --out models/resnet50.yaml
    """
    if not onnx_file.is_file():
        raise InputError("file not found", file=onnx_file)
    card = import_onnx(onnx_file, name=name or (out.stem if out else None), dims=parse_dims(dims))
    parsed = parse_model_card(card, file=onnx_file)  # the card must load before it is written
    assert isinstance(parsed, FixedModel)  # the importer writes kind: fixed
    text = card_text(card)
    summary = (
        f"{parsed.name}: {len(card['layers'])} layers, {parsed.params:,.0f} params, "
        f"{parsed.flops_per_sample / 1e9:.3f} GFLOPs per sample; not modelled: "
        f"{card['sources']['not_modelled']}"
    )
    if out is None:
        emit(text)
    else:
        if not out.parent.is_dir():
            raise InputError("directory does not exist", file=out.parent)
        atomic_write_text(out, text)
        emit(f"wrote {out}")
    click.echo(summary, err=True)
