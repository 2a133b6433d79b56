"""Schema of the accuracy suite's public measurements (benchmarks/accuracy/measurements.csv).

Fast: reads the CSV only, no simulation. Checks every row names its source (URL and commit or
date), uses a known catalog id, carries a positive value, and sits in the split the documented
rule gives it.
"""

from __future__ import annotations

import csv
import doctest
import importlib.util
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ACC = ROOT / "benchmarks" / "accuracy"
CSV = ACC / "measurements.csv"


def _module(name: str):
    spec = importlib.util.spec_from_file_location(f"accuracy_{name}", ACC / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


schema = _module("schema")


@pytest.fixture(scope="module")
def rows() -> list[dict[str, str]]:
    with CSV.open(newline="") as fh:
        reader = csv.DictReader(fh)
        assert reader.fieldnames == schema.COLUMNS
        return list(reader)


def test_every_row_is_sourced_and_valid(rows: list[dict[str, str]]) -> None:
    catalog = {p.stem for p in (ROOT / "hardware_catalog").glob("*.yaml")}
    assert catalog >= schema.GPU_IDS
    for i, r in enumerate(rows, start=2):  # line numbers as in the file
        where = f"{CSV.name} line {i}"
        url = r["source_url"]
        if url.startswith("repo:"):  # a file in this repository (a GPU run the project made)
            assert (ROOT / url[5:]).is_file(), where
        else:
            assert url.startswith("https://"), where
        assert re.search(r"[0-9a-f]{40}|\d{4}-\d{2}-\d{2}", r["source_ref"]), where
        assert r["gpu"] in schema.GPU_IDS, f"{where}: unknown gpu {r['gpu']!r}"
        assert float(r["value"]) > 0, where
        assert r["unit"], where
        assert int(r["n_gpus"]) >= 1, where
        assert r["group"], where
        assert r["split"] in {"fit", "test"}, where
        assert r["split"] == schema.assign_split(r), f"{where}: split differs from the rule"


def test_shape_columns_present_where_the_group_needs_them(rows: list[dict[str, str]]) -> None:
    for i, r in enumerate(rows, start=2):
        if r["group"] == "nccl_allreduce":
            assert int(r["message_bytes"]) > 0, f"line {i}"
        if r["group"].startswith("llm_"):
            assert int(r["tp"]) >= 1, f"line {i}"
            if r["group"] != "llm_token_latency":  # ShareGPT prompts: no fixed length
                assert int(r["prompt_tokens"]) > 0, f"line {i}"
            assert int(r["output_tokens"]) > 0 and r["model"], f"line {i}"
        if r["group"].startswith("bert_"):
            assert r["seq_len"] == "384", f"line {i}: MLPerf BERT is SQuAD at 384 tokens"


def test_breadth(rows: list[dict[str, str]]) -> None:
    fixed = [r for r in rows if r["group"].split("_")[0] in {"resnet50", "bert"}]
    assert len(fixed) >= 40 and len({r["gpu"] for r in fixed}) >= 6
    assert sum(r["group"] == "nccl_allreduce" for r in rows) >= 15
    assert sum(r["group"].startswith(("llm_", "mlperf_llama")) for r in rows) >= 20
    fit = sum(r["split"] == "fit" for r in rows) / len(rows)
    assert 0.2 < fit < 0.45


def test_split_rule_and_score_doctests() -> None:
    assert schema.split_of("g", "t4", "https://a") in {"fit", "test"}
    for name in ("schema", "score", "extract_mlperf"):
        result = doctest.testmod(_module(name), optionflags=doctest.NORMALIZE_WHITESPACE)
        assert result.failed == 0, name


def test_hardware_facts_are_sourced() -> None:
    with (ACC / "hardware_facts.csv").open(newline="") as fh:
        facts = list(csv.DictReader(fh))
    assert facts
    for i, r in enumerate(facts, start=2):
        assert r["gpu"] in schema.GPU_IDS, f"hardware_facts.csv line {i}"
        assert float(r["value"]) > 0 and r["unit"] and r["fact"], f"line {i}"
        assert r["source_url"].startswith("https://"), f"line {i}"
        assert re.search(r"[0-9a-f]{40}|\d{4}-\d{2}-\d{2}", r["source_ref"]), f"line {i}"


def test_score_rejects_bad_measurement_files(tmp_path: Path, capsys) -> None:
    score = _module("score")
    bad = tmp_path / "bad.csv"
    bad.write_text("group,gpu\nresnet50_offline,t4\n")
    assert score.main(["--data", str(bad)]) == 2
    assert "missing column(s) model, precision, value" in capsys.readouterr().err
    assert score.main(["--data", str(tmp_path / "absent.csv")]) == 2
    assert "cannot read" in capsys.readouterr().err


def test_bert_rows_are_costed_at_the_squad_mean_length_and_run_precision(monkeypatch) -> None:
    """MLPerf BERT rows go to ``capsim estimate`` with ``--seq-len 177`` (the SQuAD v1.1 mean:
    384 tokens less the 54% padding the cited paper measures) and Hopper "fp16" rows in fp8."""
    import pandas as pd

    assert round(384 * (1 - 0.54)) == schema.SQUAD_V11_MEAN_TOKENS
    score = _module("score")
    calls: list[tuple[str, ...]] = []

    def fake_estimate(*args: str) -> dict:
        calls.append(args)
        return {"batches": [{"throughput_rps": 1.0, "fits": True}]}

    monkeypatch.setattr(score, "estimate", fake_estimate)
    row = dict(group="bert_offline", gpu="h100-sxm", model="bert-large", precision="fp16")
    score.best_fixed_throughput(pd.Series({**row, "seq_len": 384}))
    score.best_fixed_throughput(pd.Series({**row, "group": "resnet50_offline", "seq_len": ""}))
    first, second = calls
    assert first[first.index("--seq-len") + 1] == "177"
    assert first[first.index("--precision") + 1] == "fp8"
    assert "--seq-len" not in second and second[second.index("--precision") + 1] == "fp16"
    assert "eff=177" in score.settings(pd.Series({**row, "seq_len": 384}))
