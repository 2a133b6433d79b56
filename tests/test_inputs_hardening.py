"""Issue 9, part A: bad input files and paths give exit 2 naming the file and field or row —
never a traceback, a hang or a silently wrong number."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
import yaml

from capsim.cli import main
from capsim.errors import MAX_DEPTH, load_yaml
from capsim.paths import shipped_catalog_dir
from capsim.workload import streams
from tests.conftest import ROOT, small_fixed_scenario

AZURE = ROOT / "scenarios" / "traces" / "azure_conv_2023.csv"
SIM = ["--gpu", "t4", "--precision", "int8", "--replicas", "1"]


def _bad(runner, args, *needles) -> str:
    res = runner.invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output
    return res.output


def _cat_copy(tmp_path: Path) -> Path:
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)
    return cat


def _entry(cat: Path, gpu: str = "t4") -> dict:
    return yaml.safe_load((cat / f"{gpu}.yaml").read_text())


def _llm_scenario(tokens: dict) -> dict:
    data = yaml.safe_load((ROOT / "scenarios" / "chatbot.yaml").read_text())
    data["traffic"]["tokens"] = tokens
    data["candidates"] = {"gpus": ["l4"], "precisions": ["fp16"]}
    return data


# --------------------------------------------------------------------------- tracebacks
@pytest.mark.parametrize("traffic", [5, "poisson", [1, 2]])
def test_traffic_that_is_not_a_mapping_is_refused(runner, write_scenario, traffic):
    data = small_fixed_scenario(traffic=traffic)
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], str(p), "traffic")


def test_deep_nesting_in_a_scenario_is_refused(runner, write_scenario):
    for depth in (MAX_DEPTH + 5, 3000):
        p = write_scenario("name: " + "[" * depth + "]" * depth + "\n")
        _bad(runner, ["validate", str(p)], str(p), "nested")


def test_deep_nesting_in_a_catalog_entry_is_refused(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    (cat / "t4.yaml").write_text("id: " + "[" * 2000 + "]" * 2000 + "\n")
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yaml", "nested")


def test_deep_nesting_in_measurements_meta_json_is_refused(tmp_path):
    from calibrate.measurements import MeasurementsError, load_measurements

    d = tmp_path / "m"
    d.mkdir()
    (d / "meta.json").write_text('{"a": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(MeasurementsError, match="nested"):
        load_measurements(d)


def test_a_trace_mixing_zoned_and_naive_timestamps_names_the_row(runner, write_scenario, tmp_path):
    (tmp_path / "t.csv").write_text(
        "TIMESTAMP\n2023-11-16T18:15:46Z\n2023-11-16T18:15:47Z\n2023-11-16 18:15:50\n"
    )
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "t.csv"}}
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "t.csv", "row 4", "time zone")


def test_zoned_timestamps_with_different_offsets_are_read(runner, write_scenario, tmp_path):
    (tmp_path / "t.csv").write_text(
        "TIMESTAMP\n2023-11-16T18:15:46Z\n2023-11-16T19:15:47+01:00\n2023-11-16T18:15:50Z\n"
    )
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "t.csv"}}
    res = runner.invoke(main, ["validate", str(write_scenario(data))])
    assert res.exit_code == 0, res.output
    assert "simulated horizon 4 s" in res.output


def test_an_empty_empirical_token_trace_is_refused_at_validate(runner, write_scenario, tmp_path):
    (tmp_path / "empty.csv").write_bytes(b"")
    p = write_scenario(_llm_scenario({"kind": "empirical", "trace": "empty.csv"}))
    _bad(runner, ["validate", str(p)], "empty.csv", "empty")


def test_a_zero_compute_efficiency_is_refused(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    e = _entry(cat)
    e["efficiency"]["compute_by_format"] = {"fp16": 0.0}
    (cat / "t4.yaml").write_text(yaml.safe_dump(e))
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yaml", "efficiency.compute_by_format")


def test_a_burst_too_big_for_memory_is_refused_before_generating(
    runner, write_scenario, monkeypatch
):
    monkeypatch.setattr(streams, "available_memory_bytes", lambda: 2**30)
    data = small_fixed_scenario()
    data["traffic"]["horizon_s"] = 3600.0
    # 54M requests in one 60 s burst; the 20001-point rate grid alone would miss most of it
    data["traffic"]["arrivals"]["bursts"] = [
        {"start_s": 100.1, "duration_s": 0.12, "multiplier": 54e6 / 200 / 0.12}
    ]
    p = write_scenario(data)
    out = _bad(runner, ["validate", str(p)], "traffic", "requests", "GiB", "compress_to_s")
    assert "~54,7" in out, out  # 54M in the burst + 720,000 around it


def test_plan_memory_limit_is_split_over_jobs(runner, write_scenario, monkeypatch):
    data = small_fixed_scenario()  # 24,000 requests, ~7 MB
    p = write_scenario(data)
    monkeypatch.setattr(streams, "available_memory_bytes", lambda: 2 * 24_000 * 64 * 1.5)
    assert runner.invoke(main, ["validate", str(p)]).exit_code == 0  # fits for one job
    _bad(runner, ["plan", str(p), "--jobs", "2"], "--jobs", "per job")


def test_max_requests_default_is_memory_based(monkeypatch, write_scenario):
    from capsim.load import load_scenario

    s = load_scenario(write_scenario(small_fixed_scenario()))
    assert s.simulation.max_requests is None
    monkeypatch.setattr(streams, "available_memory_bytes", lambda: 8 * 2**30)
    cap, why = streams.memory_limit_requests(s, jobs=2)
    assert cap == int(0.5 * 8 * 2**30 / 2 / streams.BYTES_PER_REQUEST_FIXED)
    assert "fit in memory" in why


# --------------------------------------------------------------------------- hang
@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
def test_a_fifo_in_the_catalog_is_refused_not_opened(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    os.mkfifo(cat / "zz.yaml")
    _bad(runner, ["catalog", "validate", str(cat)], "zz.yaml", "FIFO")


# --------------------------------------------------------------------------- silent wrong
@pytest.mark.parametrize("value", ["inf", "1e30", str(2**63 + 5), "-3", "0", "2.5", "x"])
def test_bad_token_counts_in_a_trace_name_the_row(runner, write_scenario, tmp_path, value):
    (tmp_path / "tok.csv").write_text(f"ContextTokens,GeneratedTokens\n100,20\n{value},30\n50,5\n")
    p = write_scenario(_llm_scenario({"kind": "empirical", "trace": "tok.csv"}))
    out = _bad(runner, ["validate", str(p)], "tok.csv", "row 3", "ContextTokens", "whole number")
    if value not in ("0", "x"):  # the value itself is never echoed (paths aside: pytest-31)
        for d in (str(tmp_path.resolve()), str(tmp_path)):
            out = out.replace(d, "<tmp>")
        assert value not in out, out


def test_validate_reads_empirical_token_traces(runner, write_scenario, tmp_path):
    (tmp_path / "tok.csv").write_text("ContextTokens,GeneratedTokens\n100,20\n")
    p = write_scenario(_llm_scenario({"kind": "empirical", "trace": "tok.csv"}))
    (tmp_path / "tok.csv").write_text("ContextTokens\n100\n")
    _bad(runner, ["validate", str(p)], "tok.csv", "GeneratedTokens")


def test_validate_prints_what_the_run_will_cost(runner):
    res = runner.invoke(main, ["validate", str(ROOT / "scenarios" / "chatbot_autoscaled.yaml")])
    assert res.exit_code == 0, res.output
    assert "cost: ~2,880 requests per replication" in res.output
    assert "of CPU per configuration and replication" in res.output
    assert "what-if (real time, 86400 s): ~1,036,800 requests" in res.output


def test_validate_checks_the_real_time_what_if_horizon(runner, write_scenario, monkeypatch):
    data = yaml.safe_load((ROOT / "scenarios" / "chatbot_autoscaled.yaml").read_text())
    data["traffic"]["horizon_s"] = 30 * 86400
    data["traffic"]["tokens"]["trace"] = str(AZURE)
    monkeypatch.setattr(streams, "available_memory_bytes", lambda: 8 * 2**30)
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "real time", "31,104,000 requests", "horizon_s")


@pytest.mark.parametrize("bad", ["9999-01-01 00:00:00", "2031-01-01 00:00:00"])
def test_one_far_timestamp_row_is_refused(runner, write_scenario, tmp_path, bad):
    rows = [f"2023-11-16 18:{m:02d}:00" for m in range(10)]
    rows.insert(4, bad)
    (tmp_path / "t.csv").write_text("TIMESTAMP\n" + "\n".join(rows) + "\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "t.csv"}}
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "t.csv", "row 6", "TIMESTAMP", "implausibly far")


def test_one_huge_seconds_row_is_refused(runner, write_scenario, tmp_path):
    (tmp_path / "t.csv").write_text("TIMESTAMP\n0\n1\n2\n1e308\n3\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "t.csv"}}
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "t.csv", "row 5", "implausibly far")


def test_duplicate_keys_in_a_scenario_name_the_line(runner, write_scenario):
    text = yaml.safe_dump(small_fixed_scenario(), sort_keys=False)
    p = write_scenario(text.replace("model: resnet-50\n", "model: resnet-50\nmodel: bert-base\n"))
    _bad(runner, ["validate", str(p)], str(p), "line 3", "duplicate key 'model'", "line 2")


def test_duplicate_keys_in_a_catalog_entry_name_the_line(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    text = (cat / "t4.yaml").read_text()
    (cat / "t4.yaml").write_text(text + "\nmemory_gib: 99\n")
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yaml", "duplicate key 'memory_gib'")


def test_duplicate_keys_in_a_model_card_name_the_line(runner, write_scenario, tmp_path):
    (tmp_path / "models").mkdir()
    card = (ROOT / "scenarios" / "models" / "resnet-50.yaml").read_text()
    (tmp_path / "models" / "resnet-50.yaml").write_text(card + "\ntask: other\n")
    p = write_scenario(small_fixed_scenario())
    _bad(runner, ["validate", str(p)], "resnet-50.yaml", "duplicate key 'task'")


@pytest.mark.parametrize(
    ("field", "value", "needle"),
    [
        ("efficiency", {"compute": -0.1}, "efficiency.compute"),
        ("efficiency", {"compute": 1.5}, "efficiency.compute"),
        ("efficiency", {"compute_by_format": {"fp16": 1.2}}, "compute_by_format"),
        ("efficiency", {"compute_by_format": {"fp17": 0.5}}, "fp17"),
        ("bandwidth_gb_s", 0, "bandwidth_gb_s"),
        ("price", {"provider": "x", "usd_per_hour": -1}, "price.usd_per_hour"),
    ],
)
def test_catalog_bounds_set_by_physics(runner, tmp_path, field, value, needle):
    cat = _cat_copy(tmp_path)
    e = _entry(cat)
    e[field] = value
    (cat / "t4.yaml").write_text(yaml.safe_dump(e))
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yaml", needle)


def test_power_must_be_positive(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    e = _entry(cat)
    e["power"]["max_w"] = 0
    (cat / "t4.yaml").write_text(yaml.safe_dump(e))
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yaml", "power.max_w")


def test_a_free_gpu_is_accepted(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    e = _entry(cat)
    e["price"] = {"provider": "owned", "usd_per_hour": 0.0}
    (cat / "t4.yaml").write_text(yaml.safe_dump(e))
    res = runner.invoke(main, ["catalog", "validate", str(cat)])
    assert res.exit_code == 0, res.output


def test_a_yml_catalog_entry_is_loaded(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    e = _entry(cat)
    e["id"] = "t4-copy"
    (cat / "t4-copy.yml").write_text(yaml.safe_dump(e))
    res = runner.invoke(main, ["catalog", "list"], env={"CAPSIM_CATALOG": str(cat)})
    assert res.exit_code == 0 and "t4-copy" in res.output, res.output


def test_the_same_id_in_yaml_and_yml_is_refused(runner, tmp_path):
    cat = _cat_copy(tmp_path)
    shutil.copy(cat / "t4.yaml", cat / "t4.yml")
    _bad(runner, ["catalog", "validate", str(cat)], "t4.yml", "also given by t4.yaml")


def test_trace_errors_never_echo_data_rows(runner, write_scenario, tmp_path):
    secret = tmp_path / "secrets.csv"
    secret.write_text("DB_PASSWORD=hunter2\nAPI_KEY=abc123\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": str(secret)}}
    out = _bad(runner, ["validate", str(write_scenario(data))], "secrets.csv", "TIMESTAMP")
    assert "abc123" not in out
    data["traffic"] = {"arrivals": {"kind": "trace", "path": str(secret), "timestamp_column":
                                    "DB_PASSWORD=hunter2"}}  # fmt: skip
    out = _bad(runner, ["validate", str(write_scenario(data))], "secrets.csv", "row 2")
    assert "abc123" not in out


def test_a_wrong_trace_column_names_the_scenario(runner, write_scenario, tmp_path):
    """The fuzz suite found it: a missing column named only the trace file, not the scenario
    field that asked for it."""
    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP\n0.5\n1.0\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": str(trace), "timestamp_column": ""}}
    path = write_scenario(data)
    _bad(runner, ["validate", str(path)], path.name, "traffic.arrivals", "t.csv", "no timestamp")


def test_a_trace_must_be_a_csv_file(runner, write_scenario, tmp_path):
    (tmp_path / "passwd").write_text("root:x:0:0\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "../" * 3 + str(tmp_path / "passwd")}}
    out = _bad(runner, ["validate", str(write_scenario(data))], "traffic.arrivals.path", ".csv")
    assert "root:x" not in out


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "models/resnet-50", ".hidden", "a\\b"])
def test_a_model_name_is_a_name(runner, write_scenario, name):
    p = write_scenario(small_fixed_scenario(model=name))
    _bad(runner, ["validate", str(p)], str(p), "model", "not a name", "model: {file:")


def test_a_model_card_file_is_named_explicitly(runner, write_scenario, tmp_path):
    (tmp_path / "cards").mkdir()
    shutil.copy(ROOT / "scenarios" / "models" / "resnet-50.yaml", tmp_path / "cards" / "r.yaml")
    p = write_scenario(small_fixed_scenario(model={"file": "cards/r.yaml"}))
    res = runner.invoke(main, ["validate", str(p)])
    assert res.exit_code == 0 and "model resnet-50" in res.output, res.output
    p = write_scenario(small_fixed_scenario(model={"file": "cards/none.yaml"}))
    _bad(runner, ["validate", str(p)], "none.yaml", "not found")


# --------------------------------------------------------------------------- YAML numbers
def test_yaml_1_2_floats_are_numbers(tmp_path):
    p = tmp_path / "x.yaml"
    p.write_text("a: 1e3\nb: 5E-4\nc: -2.5e+2\nd: 1.5\ne: 1_000\nf: x1e3\ng: '1e3'\n")
    assert load_yaml(p) == {
        "a": 1000.0,
        "b": 0.0005,
        "c": -250.0,
        "d": 1.5,
        "e": 1000,
        "f": "x1e3",
        "g": "1e3",
    }


def test_a_rate_written_1e3_is_read(runner, write_scenario):
    text = yaml.safe_dump(small_fixed_scenario(), sort_keys=False)
    p = write_scenario(text.replace("rate_rps: 200.0", "rate_rps: 2e2"))
    res = runner.invoke(main, ["validate", str(p)])
    assert res.exit_code == 0 and "peak 200.0 req/s" in res.output, res.output


def test_a_missing_token_column_names_the_scenario_field(runner, tmp_path):
    """Found by the long fuzz run: a misspelt prompt_column named only the trace file."""
    d = tmp_path / "s"
    shutil.copytree(ROOT / "scenarios", d, ignore=shutil.ignore_patterns("*.md"))
    data = yaml.safe_load((d / "chatbot.yaml").read_text())
    data["traffic"]["tokens"]["prompt_column"] = "ContextTokenz"
    (d / "chatbot.yaml").write_text(yaml.safe_dump(data))
    _bad(
        runner,
        ["validate", str(d / "chatbot.yaml")],
        "chatbot.yaml",
        "traffic.tokens",
        "azure_conv_2023.csv",
        "no column 'ContextTokenz'",
        "'ContextTokens'",
    )
