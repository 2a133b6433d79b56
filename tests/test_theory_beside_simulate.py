"""``capsim simulate`` prints the exact queueing value beside the simulated one where it applies.

The exact mean wait must fall inside the simulated mean wait's confidence interval (M/D/c by
Crommelin's chain, greedy batching M/D^(K)/1 by its embedded chain), and configurations without
an exact result say why instead of printing a number.
"""

from __future__ import annotations

import json

from capsim.cli import main


def _scenario(batching: dict, rate: float) -> dict:
    return {
        "name": "theory",
        "model": "resnet-50",
        "traffic": {"arrivals": {"kind": "poisson", "rate_rps": rate}, "horizon_s": 300.0},
        "slo": {"percentile": 99, "latency_ms": 50},
        "fleet": {"batching": batching},
        "candidates": {"gpus": ["l4"], "precisions": ["int8"]},
        "simulation": {"replications": 5, "seed": 5},
    }


def _simulate(runner, write_scenario, data: dict, replicas: int) -> dict:
    path = write_scenario(data)
    args = ["simulate", str(path), "--gpu", "l4", "--precision", "int8"]
    res = runner.invoke(main, [*args, "--replicas", str(replicas), "--format", "json"])
    assert res.exit_code == 0, res.output
    return json.loads(res.output)


def _assert_inside(out: dict) -> None:
    exact = out["theory"]["wait_mean_ms"]
    ci = out["scalars"]["mean_wait_s"]
    assert ci["low"] * 1000 <= exact <= ci["high"] * 1000, (exact, ci)


def test_md1_mean_wait_exact_value_inside_the_simulated_interval(runner, write_scenario):
    out = _simulate(runner, write_scenario, _scenario({"kind": "none"}, 900.0), 1)
    assert out["theory"]["model"] == "M/D/1"
    _assert_inside(out)


def test_mdc_mean_wait_exact_value_inside_the_simulated_interval(runner, write_scenario):
    out = _simulate(runner, write_scenario, _scenario({"kind": "none"}, 1800.0), 2)
    assert out["theory"]["model"] == "M/D/2"
    _assert_inside(out)


def test_greedy_batch_queue_exact_value_inside_the_simulated_interval(runner, write_scenario):
    batching = {"kind": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 0}
    out = _simulate(runner, write_scenario, _scenario(batching, 3000.0), 1)
    assert out["theory"]["model"] == "M/D^(8)/1"
    _assert_inside(out)


def test_no_exact_result_is_said_not_guessed(runner, write_scenario):
    batching = {"kind": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 2}
    out = _simulate(runner, write_scenario, _scenario(batching, 3000.0), 1)
    assert out["theory"]["wait_mean_ms"] is None
    assert "batching delay" in out["theory"]["reason"]
