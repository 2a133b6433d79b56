"""Shared fixtures: paths, a CLI runner, and small scenario files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def small_fixed_scenario(**overrides) -> dict:
    """A fast fixed-shape scenario (ResNet-50, Poisson) as a dict to tweak and dump."""
    s = {
        "name": "small",
        "model": "resnet-50",
        "traffic": {"arrivals": {"kind": "poisson", "rate_rps": 200.0}, "horizon_s": 120.0},
        "slo": {"percentile": 99, "latency_ms": 40},
        "fleet": {"batching": {"kind": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 1}},
        "candidates": {
            "gpus": ["t4", "l4"],
            "precisions": ["fp16", "int8", "fp8"],
            "max_replicas": 16,
        },
        "simulation": {"replications": 3, "max_replications": 6, "seed": 11},
    }
    for key, value in overrides.items():
        s[key] = value
    return s


@pytest.fixture
def write_scenario(tmp_path: Path):
    def write(data: dict | str, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p

    return write
