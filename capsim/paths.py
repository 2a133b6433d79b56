"""Where the shipped data lives, installed (wheel) or in a source checkout.

A wheel carries ``hardware_catalog/`` and ``scenarios/`` inside the package as ``capsim/_data``;
a source checkout (or an editable install) has them next to the package.
"""

from __future__ import annotations

import os
from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    installed = _PKG / "_data" / name
    if installed.is_dir():
        return installed
    return _PKG.parent / name


def shipped_catalog_dir() -> Path:
    """The hardware catalog that ships with capsim."""
    return _data_dir("hardware_catalog")


def shipped_scenarios_dir() -> Path:
    """The example scenarios (and their model cards) that ship with capsim."""
    return _data_dir("scenarios")


def shipped_models_dir() -> Path:
    """Model cards that scenarios can name."""
    return shipped_scenarios_dir() / "models"


def resolve_scenario_path(path: str | os.PathLike) -> Path:
    """``path`` if it exists; else, for a bare name or ``scenarios/NAME`` (as the README's
    examples write them), the shipped scenario of that name, so examples run from anywhere.
    Any other missing path stays as given (and is reported as not found).

    >>> resolve_scenario_path("scenarios/embedding.yaml").name
    'embedding.yaml'
    >>> str(resolve_scenario_path("/nowhere/embedding.yaml"))
    '/nowhere/embedding.yaml'
    """
    p = Path(path)
    if p.exists() or p.is_absolute() or p.parent not in (Path("."), Path("scenarios")):
        return p
    for candidate in (shipped_scenarios_dir() / p.name, shipped_scenarios_dir() / f"{p.name}.yaml"):
        if candidate.is_file():
            return candidate
    return p
