"""Property-based fuzzing of the CLI on mutated real inputs (issue 9).

Targets: the shipped scenarios (``validate``, and a tiny ``simulate`` when it validates),
catalog entries (``catalog validate``, ``estimate``), the Azure conversation trace behind
``chatbot_trace.yaml`` (``validate`` and a tiny ``simulate``), and a calibration measurements
directory (``calibrate fit --dry-run``). See :mod:`tests.fuzz.harness` for what counts as a
failure. The default run is a few derandomized examples per target (well under 60 s); the
long run is ``python -m pytest tests/fuzz -m fuzz`` (>= 10,000 cases, results in
benchmarks/README.md).
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
from pathlib import Path

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import ROOT
from tests.fuzz.harness import (
    dump_yaml,
    finite_json,
    fuzz_settings,
    invoke,
    mutated_tree,
    report,
    text_damage,
)

SCENARIOS = sorted((ROOT / "scenarios").glob("*.yaml"))
CATALOG = ROOT / "hardware_catalog"
ENTRIES = sorted(CATALOG.glob("*.yaml"))
TRACE_ROWS = 400  # the first rows of the real trace (a 70 s stretch)
SHORT = int(os.environ.get("CAPSIM_FUZZ_EXAMPLES", "5"))
# cases per target in the long run (-m fuzz), 10,000 in all: weighted to the fast targets
# (a scenario case loads the whole catalog and a trace: ~2 s; a measurements case ~0.07 s)
LONG = {"scenarios": 700, "traces": 300, "catalog": 1500, "measurements": 7500}
LONG = {k: int(os.environ.get(f"CAPSIM_FUZZ_LONG_{k.upper()}", v)) for k, v in LONG.items()}
_count = itertools.count()


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """A scenario directory with the shipped traces and a measurements directory."""
    from tests.test_calibration import _gpu, synthetic_gpu_run

    d = tmp_path_factory.mktemp("fuzz")
    shutil.copytree(ROOT / "scenarios" / "traces", d / "traces")
    synthetic_gpu_run(d / "measured", _gpu("l4"), fraction=0.7)
    (d / "cat_l4").mkdir()  # what fit needs: the entry it fits (the big entries parse slowly)
    shutil.copy(CATALOG / "l4.yaml", d / "cat_l4" / "l4.yaml")
    return d


# --------------------------------------------------------------------------- scenarios
def _tiny(data: dict) -> dict | None:
    """The scenario cut to a short simulate (None when it has no usable candidate)."""
    try:
        d = json.loads(json.dumps(data))
        d["traffic"]["horizon_s"] = 20.0
        sim = d.setdefault("simulation", {})
        sim.update(replications=2, max_replications=2, max_requests=50_000)
        sim.pop("compress_to_s", None)
        gpu, prec = d["candidates"]["gpus"][0], d["candidates"]["precisions"][0]
        assert isinstance(gpu, str) and isinstance(prec, str)
    except (KeyError, IndexError, TypeError, AttributeError, AssertionError, ValueError):
        return None
    d["_cli"] = ["--gpu", gpu, "--precision", prec, "--replicas", "2", "--format", "json"]
    return d


def _scenario_case(work: Path, data, text_edit: str | None, simulate: bool) -> None:
    path = work / f"s{next(_count)}.yaml"
    text = text_edit if text_edit is not None else dump_yaml(data)
    path.write_text(text)
    args = ["validate", str(path)]
    res = invoke(args)
    report("scenario", args, res, [path.name], text)
    if res.exit_code != 0 or not simulate or not isinstance(data, dict):
        return
    tiny = _tiny(data)
    if tiny is None or "whatif" in tiny or "autoscaling" in tiny:
        return
    cli = tiny.pop("_cli")
    path.write_text(dump_yaml(tiny))
    args = ["simulate", str(path), *cli]
    res = invoke(args)
    names = [path.name, "--gpu", "--precision", cli[1]]  # a config refusal names the card
    report("scenario-simulate", args, res, names, dump_yaml(tiny))
    if res.exit_code == 0 and not finite_json(res.output):
        report("scenario-simulate", args, _nonfinite(res), [], dump_yaml(tiny))


def _nonfinite(res):
    """A result marked as carrying NaN/Infinity in its JSON (for report())."""

    class R:
        exit_code, exception, output = 0, None, "NaN in JSON output: " + res.output[:500] + " nan"

    return R()


@st.composite
def scenario_input(draw):
    base_path = draw(st.sampled_from(SCENARIOS))
    base = yaml.safe_load(base_path.read_text())
    data = draw(mutated_tree(base))
    text = dump_yaml(data)
    damaged = draw(text_damage(text))
    return data, (damaged if damaged != text else None), draw(st.booleans())


def _scenarios(work, case):
    data, text, simulate = case
    _scenario_case(work, data, text, simulate)


@fuzz_settings(SHORT, long=False)
@given(case=scenario_input())
def test_fuzz_scenarios(work, case):
    _scenarios(work, case)


@pytest.mark.fuzz
@fuzz_settings(LONG["scenarios"], long=True)
@given(case=scenario_input())
def test_fuzz_scenarios_long(work, case):
    _scenarios(work, case)


# --------------------------------------------------------------------------- catalog entries
@st.composite
def catalog_input(draw):
    entry = draw(st.sampled_from(ENTRIES))
    base = yaml.safe_load(entry.read_text())
    data = draw(mutated_tree(base))
    text = dump_yaml(data)
    return entry.name, draw(text_damage(text))


def _catalog(work: Path, case) -> None:
    name, text = case
    cat = work / f"cat{next(_count)}"  # the mutated entry alone (the big entries parse slowly)
    cat.mkdir()
    (cat / name).write_text(text)
    gpu = name.removesuffix(".yaml").removesuffix(".calibration")
    if name.endswith(".calibration.yaml"):  # a mutated sidecar beside its untouched entry
        shutil.copy(CATALOG / f"{gpu}.yaml", cat / f"{gpu}.yaml")
    for args in (
        ["catalog", "validate", str(cat)],
        ["--catalog", str(cat), "estimate", "--gpu", gpu, "--model", "resnet-50",
         "--precision", "fp16", "--batch", "1", "8"],
        ["--catalog", str(cat), "estimate", "--gpu", gpu, "--model", "llama-3.1-8b",
         "--precision", "fp16", "--batch", "4", "--prompt", "256", "--output", "16"],
    ):  # fmt: skip
        res = invoke(args)
        report("catalog", args, res, [name, gpu, "--gpu", "--precision"], text)
    shutil.rmtree(cat, ignore_errors=True)


@fuzz_settings(SHORT, long=False)
@given(case=catalog_input())
def test_fuzz_catalog_entries(work, case):
    _catalog(work, case)


@pytest.mark.fuzz
@fuzz_settings(LONG["catalog"], long=True)
@given(case=catalog_input())
def test_fuzz_catalog_entries_long(work, case):
    _catalog(work, case)


# --------------------------------------------------------------------------- traces
def _trace_rows() -> list[list[str]]:
    with open(ROOT / "scenarios" / "traces" / "azure_conv_2023.csv", newline="") as f:
        return list(itertools.islice(csv.reader(f), TRACE_ROWS + 1))


CELL = st.one_of(
    st.sampled_from(["", "nan", "inf", "-1", "0", "1e30", "9223372036854775808", "abc",
                     "2023-11-16T18:15:46Z", "9999-12-31 00:00:00", "1e308", "1970-01-01",
                     "2023-11-16 18:15:50", " 12", "1.5", "\"", "x,y"]),
    st.text(st.characters(codec="utf-8"), max_size=8),
    st.integers(-(2**64), 2**64).map(str),
)  # fmt: skip


@st.composite
def trace_input(draw):
    rows = [r[:] for r in _trace_rows()]
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["cell", "cell", "header", "drop_col", "dup", "reverse", "cut"]))
        i = draw(st.integers(1, len(rows) - 1)) if len(rows) > 1 else 0
        if op == "cell" and rows:
            j = draw(st.integers(0, len(rows[i]) - 1)) if rows[i] else 0
            if rows[i]:
                rows[i][j] = draw(CELL)
        elif op == "header" and rows and rows[0]:
            rows[0][draw(st.integers(0, len(rows[0]) - 1))] = draw(CELL)
        elif op == "drop_col" and rows and rows[0]:
            j = draw(st.integers(0, len(rows[0]) - 1))
            rows = [r[:j] + r[j + 1 :] for r in rows]
        elif op == "dup":
            rows.insert(i, rows[i][:] if rows else [])
        elif op == "reverse":
            rows[1:] = rows[1:][::-1]
        elif op == "cut":
            rows = rows[: draw(st.integers(0, len(rows)))]
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerows(rows)
    return draw(text_damage(buf.getvalue())), draw(st.booleans())


def _trace(work: Path, case) -> None:
    text, simulate = case
    n = next(_count)
    name = f"t{n}.csv"
    (work / "traces" / name).write_text(text)
    data = yaml.safe_load((ROOT / "scenarios" / "chatbot_trace.yaml").read_text())
    data["traffic"]["arrivals"]["path"] = f"traces/{name}"
    _scenario_case_trace(work, data, name, simulate, text)


def _scenario_case_trace(work: Path, data: dict, name: str, simulate: bool, text: str) -> None:
    path = work / f"trace_scenario{next(_count)}.yaml"
    path.write_text(dump_yaml(data))
    args = ["validate", str(path)]
    res = invoke(args)
    report("trace", args, res, [name, path.name], text)
    if res.exit_code != 0 or not simulate:
        return
    data["traffic"]["horizon_s"] = 20.0
    data["simulation"] = {"replications": 2, "max_replications": 2, "max_requests": 50_000}
    path.write_text(dump_yaml(data))
    args = ["simulate", str(path), "--gpu", "h100-sxm", "--precision", "fp8", "--replicas", "1",
            "--format", "json"]  # fmt: skip
    res = invoke(args)
    report("trace-simulate", args, res, [name, path.name], text)
    if res.exit_code == 0 and not finite_json(res.output):
        report("trace-simulate", args, _nonfinite(res), [], text)


@fuzz_settings(SHORT, long=False)
@given(case=trace_input())
def test_fuzz_traces(work, case):
    _trace(work, case)


@pytest.mark.fuzz
@fuzz_settings(LONG["traces"], long=True)
@given(case=trace_input())
def test_fuzz_traces_long(work, case):
    _trace(work, case)


# --------------------------------------------------------------------------- measurements
@st.composite
def measurement_input(draw):
    which = draw(st.sampled_from(["meta.json", "measurements.csv"]))
    return which, draw(st.data())


def _measure(work: Path, case) -> None:
    which, data = case
    d = work / f"m{next(_count)}"
    shutil.copytree(work / "measured", d)
    if which == "meta.json":
        meta = json.loads((d / "meta.json").read_text())
        new = data.draw(mutated_tree(meta))
        try:
            text = json.dumps(new)
        except (TypeError, ValueError):
            text = "{"
        text = data.draw(text_damage(text))
    else:
        rows = list(csv.reader(io.StringIO((d / "measurements.csv").read_text())))
        for _ in range(data.draw(st.integers(1, 3))):
            i = data.draw(st.integers(0, len(rows) - 1))
            j = data.draw(st.integers(0, len(rows[i]) - 1))
            rows[i][j] = data.draw(CELL)
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows)
        text = data.draw(text_damage(buf.getvalue()))
    (d / which).write_text(text)
    args = [
        "--catalog",
        str(work / "cat_l4"),
        "calibrate",
        "fit",
        str(d),
        "--gpu",
        "l4",
        "--dry-run",
    ]
    res = invoke(args)
    report("measurements", args, res, [which, d.name], text)
    shutil.rmtree(d, ignore_errors=True)


@fuzz_settings(SHORT, long=False)
@given(case=measurement_input())
def test_fuzz_measurement_directories(work, case):
    _measure(work, case)


@pytest.mark.fuzz
@fuzz_settings(LONG["measurements"], long=True)
@given(case=measurement_input())
def test_fuzz_measurement_directories_long(work, case):
    _measure(work, case)
