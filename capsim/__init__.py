"""capsim: the cheapest GPU fleet that meets a p99 latency target, found by simulation.

The library in three calls, each returning plain data objects::

    import capsim
    s = capsim.load_scenario("scenarios/vision.yaml")
    ev = capsim.simulate(s, capsim.Config("l4", "int8", replicas=2))
    result = capsim.plan(s)
    result.recommendation.best.usd_per_hour

The names are loaded on first use (module ``__getattr__``), so ``import capsim`` and
``capsim --help`` stay fast.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Config": "capsim.evaluate",
    "InputError": "capsim.errors",
    "load_catalog": "capsim.load",
    "load_scenario": "capsim.load",
    "plan": "capsim.planning.api",
    "simulate": "capsim.evaluate",
}

__all__ = ["Config", "InputError", "load_catalog", "load_scenario", "plan", "simulate"]

if TYPE_CHECKING:  # pragma: no cover - for type checkers and IDEs only
    from capsim.errors import InputError
    from capsim.evaluate import Config, simulate
    from capsim.load import load_catalog, load_scenario
    from capsim.planning.api import plan


def __getattr__(name: str) -> Any:
    """Import a public name's module on first access (PEP 562)."""
    if name not in _EXPORTS:
        raise AttributeError(f"module 'capsim' has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
