"""``capsim sweep``: variants by dotted path, growth forecast, Pareto outputs, bad --vary."""

from __future__ import annotations

import json

import pandas as pd

from capsim.cli import main
from tests.conftest import small_fixed_scenario


def test_sweep_grid_growth_and_outputs(runner, write_scenario, tmp_path):
    p = write_scenario(small_fixed_scenario())
    out = tmp_path / "sw"
    args = ["sweep", str(p), "--vary", "slo.latency_ms=5,40", "--growth", "300%/month"]
    r = runner.invoke(main, [*args, "--months", "3", "--format", "json", "-q", "--out", str(out)])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert len(d["variants"]) == 2 * 4
    assert [f["month"] for f in d["forecast"]] == [0, 1, 2, 3]
    cost = [f["usd_per_hour"] for f in d["forecast"]]
    assert cost == sorted(cost) and cost[-1] > cost[0]  # 64x the traffic costs more
    pts = pd.read_csv(out / "points.csv")
    assert pts["pareto_cost_p99"].any() and not pts["pareto_cost_p99"].all()
    assert (out / "pareto_cost_p99.png").stat().st_size > 1000
    assert (out / "forecast.csv").is_file()


def test_sweep_samples_are_seeded(runner, write_scenario):
    p = write_scenario(small_fixed_scenario())
    args = ["sweep", str(p), "--vary", "traffic.arrivals.rate_rps=100,200,300", "--samples", "2"]
    a = runner.invoke(main, [*args, "--seed", "3", "--format", "csv", "-q"])
    b = runner.invoke(main, [*args, "--seed", "3", "--format", "csv", "-q"])
    assert a.exit_code == 0, a.output
    assert a.stdout == b.stdout and len(a.stdout.strip().splitlines()) == 3


def test_sweep_bad_vary_exits_2(runner, write_scenario):
    p = write_scenario(small_fixed_scenario())
    for vary, needle in [
        ("slo.latncy_ms=1", "accepted: latency_ms"),
        ("slo.latency_ms=abc", "slo.latency_ms"),
        ("slo.latency_ms", "PATH=V1,V2"),
    ]:
        r = runner.invoke(main, ["sweep", str(p), "--vary", vary])
        assert r.exit_code == 2, r.output
        assert "--vary" in r.output and needle in r.output and "Traceback" not in r.output
