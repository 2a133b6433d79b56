"""``capsim estimate`` finds cards in ./models/ as scenarios do (issue 9)."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from capsim.cli import main
from tests.conftest import ROOT


def _local_card(tmp_path: Path, name: str, scale: float) -> None:
    card = yaml.safe_load((ROOT / "scenarios" / "models" / "resnet-50.yaml").read_text())
    card["name"] = name
    card["layers"] = card["layers"] * int(scale)  # a model `scale` times as deep
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / f"{name}.yaml").write_text(yaml.safe_dump(card, sort_keys=False))


def _estimate(runner, model: str) -> dict:
    args = ["estimate", "--gpu", "t4", "--model", model, "--precision", "fp16", "--batch", "8"]
    res = runner.invoke(main, [*args, "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def test_estimate_reads_a_card_in_dot_models(runner, tmp_path, monkeypatch):
    _local_card(tmp_path, "resnet-50-local", 2.0)
    monkeypatch.chdir(tmp_path)
    local = _estimate(runner, "resnet-50-local")
    shipped = _estimate(runner, "resnet-50")
    assert local["model"] == "resnet-50-local"
    assert local != shipped


def test_a_card_in_dot_models_shadows_the_shipped_one_as_in_scenarios(
    runner, tmp_path, monkeypatch
):
    shipped = _estimate(runner, "resnet-50")
    _local_card(tmp_path, "resnet-50", 4.0)
    monkeypatch.chdir(tmp_path)
    assert _estimate(runner, "resnet-50") != shipped


def test_estimate_unknown_model_lists_local_cards(runner, tmp_path, monkeypatch):
    _local_card(tmp_path, "my-net", 1.0)
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(main, ["estimate", "--gpu", "t4", "--model", "nope", "--precision", "fp16"])
    assert res.exit_code == 2 and "--model" in res.output and "my-net" in res.output
