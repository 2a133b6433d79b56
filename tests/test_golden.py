"""Golden outputs: what users see, byte for byte.

A change that moves a number shows up here as a diff to review. Regenerate after an intended
change with one command:

    CAPSIM_REGEN_GOLDEN=1 python -m pytest tests/test_golden.py
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml

from capsim.cli import main
from tests.conftest import small_fixed_scenario

GOLDEN = Path(__file__).parent / "golden"
REGEN = os.environ.get("CAPSIM_REGEN_GOLDEN") == "1"

CASES = {
    "estimate_t4_resnet50_int8": [
        "estimate",
        "--gpu",
        "t4",
        "--model",
        "resnet-50",
        "--precision",
        "int8",
        "--batch",
        "1",
        "8",
        "32",
    ],
    "estimate_h100_bge_fp8": [
        "estimate",
        "--gpu",
        "h100-sxm",
        "--model",
        "bge-large-en",
        "--precision",
        "fp8",
        "--batch",
        "1",
        "16",
        "64",
    ],
    "catalog_list": ["catalog", "list"],
    "plan_small": ["plan", "{scenario}", "--jobs", "1"],
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_golden(name, runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "small.yaml").write_text(yaml.safe_dump(small_fixed_scenario(), sort_keys=False))
    args = [a.replace("{scenario}", "small.yaml") for a in CASES[name]]
    res = runner.invoke(main, args)
    assert res.exit_code == 0, res.output
    path = GOLDEN / f"{name}.txt"
    if REGEN:
        path.write_text(res.output)
    assert path.exists(), (
        f"no golden file {path}: run CAPSIM_REGEN_GOLDEN=1 python -m pytest {__file__}"
    )
    assert res.output == path.read_text()
