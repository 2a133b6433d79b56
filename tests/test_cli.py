"""The command line as a user meets it: help text, bad input, outputs, reproducibility."""

from __future__ import annotations

import inspect
import json
import subprocess
import sys

import click
import numpy as np
import pytest

from capsim.cli import COMMANDS, main
from tests.conftest import small_fixed_scenario


def _commands(group: click.Group, prefix: tuple[str, ...] = ()):
    ctx = click.Context(group)
    for name in group.list_commands(ctx):
        cmd = group.get_command(ctx, name)
        yield (*prefix, name), cmd
        if isinstance(cmd, click.Group):
            yield from _commands(cmd, (*prefix, name))


@pytest.mark.parametrize("path", [p for p, _ in _commands(main)], ids=lambda p: " ".join(p))
def test_every_command_has_help_with_an_example(runner, path):
    res = runner.invoke(main, [*path, "--help"])
    assert res.exit_code == 0, res.output
    assert "Example" in res.output
    assert "capsim " in res.output


def test_top_level_help_lists_each_command_with_its_own_summary():
    ctx = click.Context(main)
    for name, (_, _, summary) in COMMANDS.items():
        cmd = main.get_command(ctx, name)
        assert summary == inspect.getdoc(cmd.callback).split("\n\n")[0].replace("\n", " ")


def test_help_imports_no_heavy_package():
    code = (
        "import sys\n"
        "from capsim.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('scipy', 'pandas', 'matplotlib', 'simpy') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "Commands:" in res.stdout


def _bad(runner, args, *needles):
    res = runner.invoke(main, args)
    assert res.exit_code == 2, res.output
    out = res.output
    assert "Traceback" not in out
    for n in needles:
        assert n in out, out
    return out


def test_misspelt_key_names_field_and_suggests(runner, write_scenario):
    data = small_fixed_scenario()
    data["fleet"]["batching"]["max_batch_sise"] = data["fleet"]["batching"].pop("max_batch_size")
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], str(p), "fleet.batching", "max_batch_sise", "max_batch_size")


def test_wrong_type_names_field(runner, write_scenario):
    data = small_fixed_scenario()
    data["slo"]["latency_ms"] = "fast"
    p = write_scenario(data)
    _bad(runner, ["plan", str(p)], str(p), "slo.latency_ms")


def test_negative_rate(runner, write_scenario):
    data = small_fixed_scenario()
    data["traffic"]["arrivals"]["rate_rps"] = -5
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "traffic.arrivals", "rate_rps", "greater than 0")


def test_unknown_gpu(runner, write_scenario):
    data = small_fixed_scenario()
    data["candidates"]["gpus"] = ["t4", "h1000"]
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "candidates.gpus[1]", "h1000", "h100-sxm")


def test_unknown_model(runner, write_scenario):
    p = write_scenario(small_fixed_scenario(model="resnet-5000"))
    _bad(runner, ["validate", str(p)], str(p), "model", "resnet-5000", "resnet-50")


def test_unknown_kind(runner, write_scenario):
    data = small_fixed_scenario()
    data["traffic"]["arrivals"]["kind"] = "poison"
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "poison", "poisson")


def test_precision_the_card_lacks(runner, write_scenario):
    p = write_scenario(small_fixed_scenario())
    _bad(
        runner,
        ["simulate", str(p), "--gpu", "t4", "--precision", "fp8", "--replicas", "1"],
        "t4",
        "fp8",
    )


def test_missing_trace_file(runner, write_scenario):
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "nowhere.csv"}}
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], str(p), "traffic.arrivals.path", "nowhere.csv")


def test_malformed_trace_row(runner, write_scenario, tmp_path):
    (tmp_path / "t.csv").write_text("ts,n\n0.0,1\n0.5,1\nsoon,1\n1.5,1\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "t.csv", "timestamp_column": "ts"}}
    p = write_scenario(data)
    out = _bad(runner, ["plan", str(p)], "t.csv", "row 4", "ts")
    assert "soon" not in out  # data values are never echoed (issue 9)


def test_bad_yaml(runner, write_scenario):
    p = write_scenario("name: x\ntraffic: [unclosed\n")
    _bad(runner, ["validate", str(p)], str(p), "line")


def test_missing_scenario_file(runner, tmp_path):
    _bad(runner, ["plan", str(tmp_path / "nope.yaml")], "nope.yaml", "not found")


def test_bad_catalog_entry(runner, tmp_path):
    (tmp_path / "x1.yaml").write_text("id: x1\nname: X\nmemory_gib: -3\n")
    _bad(runner, ["catalog", "validate", str(tmp_path)], "x1.yaml", "memory_gib")


def test_unknown_gpu_on_simulate(runner, write_scenario):
    p = write_scenario(small_fixed_scenario())
    _bad(
        runner,
        ["simulate", str(p), "--gpu", "v100", "--precision", "fp16", "--replicas", "1"],
        "--gpu",
        "v100",
    )


def test_validate_ok_and_shipped_scenarios_resolve_from_anywhere(runner, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("scenarios/embedding.yaml", "scenarios/vision.yaml"):
        res = runner.invoke(main, ["validate", name])
        assert res.exit_code == 0, res.output
        assert res.output.startswith("ok:")


def test_plan_recommends_and_explains_losers(runner, write_scenario, tmp_path):
    p = write_scenario(small_fixed_scenario())
    res = runner.invoke(main, ["plan", str(p), "--jobs", "1", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Recommendation:" in out
    assert "precision unsupported" in out  # t4 fp8
    assert "price:" in out and "roofline:" in out  # traceable numbers
    for f in ("plan.json", "plan.csv", "latency_cdf.png", "cost_vs_p99.png"):
        assert (tmp_path / "out" / f).stat().st_size > 0


def test_plan_json_is_machine_readable(runner, write_scenario):
    p = write_scenario(small_fixed_scenario())
    res = runner.invoke(main, ["plan", str(p), "--format", "json", "--jobs", "1"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    rec = data["recommendation"]
    assert rec["status"] == "feasible"
    best = rec["best"]
    assert best["p_ci_high_ms"] <= best["target_ms"]
    assert {lost["status"] for lost in data["lost"]} <= {
        "dropped",
        "infeasible",
        "feasible",
        "skipped",
    }


def test_same_seed_same_numbers_different_seed_different_samples(runner, write_scenario):
    args = ["--gpu", "t4", "--precision", "fp16", "--replicas", "2", "--format", "json"]
    p1 = write_scenario(small_fixed_scenario(), "a.yaml")
    a = runner.invoke(main, ["simulate", str(p1), *args])
    b = runner.invoke(main, ["simulate", str(p1), *args])
    assert a.exit_code == 0, a.output
    assert a.output == b.output
    other = small_fixed_scenario()
    other["simulation"]["seed"] = 12
    p2 = write_scenario(other, "b.yaml")
    c = runner.invoke(main, ["simulate", str(p2), *args])
    assert json.loads(c.output)["latency_ms"] != json.loads(a.output)["latency_ms"]


def test_plan_is_the_same_in_parallel_and_serial(write_scenario):
    from capsim.load import load_scenario
    from capsim.planning.api import plan
    from capsim.report.text import plan_dict

    s = load_scenario(write_scenario(small_fixed_scenario()))
    serial = plan_dict(plan(s, jobs=1))
    parallel = plan_dict(plan(s, jobs=2))
    assert json.dumps(serial, default=str) == json.dumps(parallel, default=str)


def test_simulate_out_writes_files(runner, write_scenario, tmp_path):
    p = write_scenario(small_fixed_scenario())
    out = tmp_path / "sim"
    res = runner.invoke(
        main,
        [
            "simulate",
            str(p),
            "--gpu",
            "l4",
            "--precision",
            "int8",
            "--replicas",
            "1",
            "--out",
            str(out),
        ],
    )
    assert res.exit_code == 0, res.output
    assert "p99" in res.output and "SLO:" in res.output
    assert json.loads((out / "simulate.json").read_text())["config"]["gpu"] == "l4"


def test_estimate_fixed(runner):
    res = runner.invoke(
        main,
        [
            "estimate",
            "--gpu",
            "t4",
            "--model",
            "resnet-50",
            "--precision",
            "int8",
            "--batch",
            "1",
            "--batch",
            "32",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "memory-bound" in res.output or "compute" in res.output
    res = runner.invoke(
        main, ["estimate", "--gpu", "t4", "--model", "resnet-50", "--precision", "bf16"]
    )
    assert res.exit_code == 2 and "bf16" in res.output


def test_catalog_list_show_and_schema(runner):
    res = runner.invoke(main, ["catalog", "list"])
    assert res.exit_code == 0 and "h100-sxm" in res.output
    res = runner.invoke(main, ["catalog", "show", "t4"])
    assert res.exit_code == 0 and "sources:" in res.output
    res = runner.invoke(main, ["schema"])
    assert res.exit_code == 0 and json.loads(res.output)["title"] == "Scenario"


def test_user_catalog_directory(runner, tmp_path, write_scenario):
    import shutil

    from capsim.paths import shipped_catalog_dir

    mine = tmp_path / "my_catalog"
    mine.mkdir()
    shutil.copy(shipped_catalog_dir() / "t4.yaml", mine / "t4.yaml")
    res = runner.invoke(main, ["--catalog", str(mine), "catalog", "list"])
    assert res.exit_code == 0 and "t4" in res.output and "h100-sxm" not in res.output
    p = write_scenario(small_fixed_scenario())
    _bad(runner, ["--catalog", str(mine), "validate", str(p)], "candidates.gpus[1]", "l4")


# --------------------------------------------------------------------------- more bad input
def test_traffic_that_cannot_run_is_refused_at_validate(runner, write_scenario, tmp_path):
    def bad_arrivals(**arrivals):
        data = small_fixed_scenario()
        data["traffic"]["arrivals"].update(arrivals)
        return write_scenario(data)

    for value in (float("inf"), float("nan"), True, "300"):
        p = bad_arrivals(rate_rps=value)
        _bad(runner, ["validate", str(p)], str(p), "traffic.arrivals.rate_rps")
    p = bad_arrivals(pattern={"kind": "piecewise", "times_s": [0, 60], "multipliers": [0, 0]})
    _bad(runner, ["validate", str(p)], "traffic", "no traffic")
    p = bad_arrivals(rate_rps=2e6)  # 2.4e8 requests in 120 s: more than fit in memory
    _bad(runner, ["simulate", str(p), "--gpu", "t4", "--precision", "int8", "--replicas", "1"],
         "traffic", "max_requests", "compress_to_s")  # fmt: skip
    data = small_fixed_scenario(simulation={"replications": 2, "warmup": 500.0})
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "simulation.warmup", "horizon")
    data = small_fixed_scenario()
    data["candidates"]["gpus"] = ["t4", "l4", "t4"]
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "candidates.gpus", "more than once: t4")
    data = small_fixed_scenario()
    data["candidates"]["tensor_parallel"] = [1, 2]
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "tensor_parallel", "transformer models only")


def test_bad_trace_files(runner, write_scenario, tmp_path):
    def with_trace(name: str, text: str | None):
        path = tmp_path / name
        if text is None:
            path.mkdir()
        else:
            path.write_text(text)
        data = small_fixed_scenario()
        data["traffic"] = {"arrivals": {"kind": "trace", "path": str(path)}}
        return write_scenario(data, name=f"{name}.yaml")

    _bad(runner, ["validate", str(with_trace("empty.csv", ""))], "empty.csv", "empty")
    _bad(runner, ["validate", str(with_trace("d.csv", None))], "traffic.arrivals.path", "directory")
    p = with_trace("inf.csv", "TIMESTAMP\n0\n1e400\n2\n")
    _bad(runner, ["validate", str(p)], "inf.csv", "row 3", "finite")


def test_a_missing_path_is_not_replaced_by_a_shipped_scenario(runner, tmp_path):
    missing = tmp_path / "nowhere" / "vision.yaml"
    _bad(runner, ["validate", str(missing)], str(missing), "not found")


def test_trace_peak_rate_counts_whole_windows(runner, write_scenario, tmp_path):
    trace = tmp_path / "u100.csv"
    times = np.arange(0, 61, 0.01)
    trace.write_text("TIMESTAMP\n" + "\n".join(f"{t:.2f}" for t in times) + "\n")
    data = small_fixed_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": str(trace)}}
    res = runner.invoke(main, ["validate", str(write_scenario(data))])
    assert res.exit_code == 0 and "peak 100.0 req/s" in res.output, res.output


def test_json_output_is_standard_json(runner, write_scenario):
    """An unstable run's percentiles are infinite: JSON says null, never Infinity or NaN."""
    data = small_fixed_scenario()
    data["traffic"]["arrivals"]["rate_rps"] = 5000.0
    p = write_scenario(data)
    res = runner.invoke(main, ["simulate", str(p), "--gpu", "t4", "--precision", "fp16",
                               "--replicas", "1", "--format", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    json.loads(res.output, parse_constant=lambda c: pytest.fail(f"non-standard JSON: {c}"))
    assert "Infinity" not in res.output and "NaN" not in res.output
