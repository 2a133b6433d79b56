"""Closed-loop traffic in the real engines, checked against the exact finite-source queue
M/M/c//N (machine-repairman), and end to end through simulate and plan."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from capsim.analysis.finite_source import finite_source_mmc
from capsim.cli import main
from capsim.evaluate import Config, simulate
from capsim.load import load_scenario
from capsim.planning.api import plan
from capsim.sim.batched_closed import run_batched_closed
from capsim.sim.batched_queue import EngineConfig
from capsim.sim.llm_closed import run_llm_closed
from capsim.sim.llm_types import EngineLimits
from capsim.spec.scenario import ClosedArrivals
from capsim.workload.closed_loop import ClosedLoopClients
from tests.conftest import small_fixed_scenario


def _check_against_law(arrival, finish, n, c, z, s, end):
    exact = finite_source_mmc(n, c, z, s)
    keep = arrival > 0.05 * end  # drop the start-up (all clients think from t = 0)
    resp = (finish - arrival)[keep]
    span = finish[keep].max() - arrival[keep].min()
    assert len(resp) / span == pytest.approx(exact.throughput_rps, rel=0.03)
    assert resp.mean() == pytest.approx(exact.response_mean_s, rel=0.04)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(resp, q) == pytest.approx(exact.response_quantile(q), rel=0.06)


@pytest.mark.parametrize(("n", "c", "z", "s"), [(10, 2, 1.0, 0.3), (6, 1, 0.0, 0.05)])
def test_batched_engine_closed_loop_matches_mmc_finite_source(n, c, z, s):
    """Batch size 1 with exponential (gamma cv 1) batch times on c replicas is M/M/c//N."""
    spec = ClosedArrivals(kind="closed", concurrency=n, think_time_s=z)
    exact = finite_source_mmc(n, c, z, s)
    horizon = 40_000 / exact.throughput_rps
    cfg = EngineConfig(replicas=c, batch_times=np.array([0.0, s]))
    rng = np.random.default_rng(20261204)
    r = run_batched_closed(ClosedLoopClients(spec), cfg, horizon, rng, jitter_cv=1.0)
    assert not r.unstable and r.served.all()
    _check_against_law(r.arrival, r.finish, n, c, z, s, horizon)


class _ExpTimer:
    """An iteration time drawn afresh each iteration: exponential, mean ``s``."""

    def __init__(self, s: float, rng: np.random.Generator):
        self.s, self.rng = s, rng

    def iteration_time(self, *a, **k) -> float:
        return float(self.rng.exponential(self.s))


@pytest.mark.parametrize(("n", "z", "s"), [(5, 0.5, 0.1), (4, 0.0, 0.02)])
def test_llm_engine_closed_loop_matches_mm1_finite_source(n, z, s):
    """One sequence at a time, one output token: each request is one exponential iteration,
    so one replica is M/M/1//N."""
    spec = ClosedArrivals(kind="closed", concurrency=n, think_time_s=z)
    exact = finite_source_mmc(n, 1, z, s)
    horizon = 30_000 / exact.throughput_rps
    draw = lambda k: (np.full(k, 16), np.ones(k, dtype=int))  # noqa: E731
    r = run_llm_closed(
        ClosedLoopClients(spec),
        draw,
        _ExpTimer(s, np.random.default_rng(7)),
        EngineLimits(max_num_seqs=1),
        horizon=horizon,
        rng=np.random.default_rng(8),
    )
    assert not r.unstable and r.served.all()
    _check_against_law(r.arrival, r.finish, n, 1, z, s, horizon)


def test_llm_closed_loop_never_has_more_than_n_requests_out():
    spec = ClosedArrivals(kind="closed", concurrency=3, think_time_s=0.01)
    draw = lambda k: (np.full(k, 64), np.full(k, 20))  # noqa: E731

    class Timer:
        def iteration_time(self, n_tok, d, *a, **k):
            return 0.001 + 1e-5 * n_tok

    r = run_llm_closed(
        ClosedLoopClients(spec), draw, Timer(), EngineLimits(), 2, horizon=5.0,
        rng=np.random.default_rng(1), router="least_outstanding_requests",
    )  # fmt: skip
    t = np.concatenate([r.arrival, r.finish])
    d = np.concatenate([np.ones(len(r.arrival)), -np.ones(len(r.finish))])
    order = np.lexsort((d, t))  # at a tie, the completion first
    assert np.cumsum(d[order]).max() <= 3
    assert np.all(np.diff(r.arrival) >= 0)


def _closed_fixed(**kw) -> dict:
    traffic = {"arrivals": {"kind": "closed", "concurrency": 16, "think_time_s": 0.05}}
    traffic["horizon_s"] = 30.0
    return small_fixed_scenario(traffic=traffic, **kw)


def test_closed_loop_scenario_simulates_and_plans(write_scenario):
    s = load_scenario(write_scenario(_closed_fixed()))
    ev = simulate(s, Config("l4", "fp16", 1), replications=2, sequential=False)
    x = ev.summary.scalars["throughput_rps"].mean
    # 16 clients thinking 50 ms: never more than 16 / 0.05 = 320 req/s
    assert 0 < x < 320
    more = simulate(s, Config("l4", "fp16", 4), replications=2, sequential=False)
    assert more.summary.q("latency", 99).mean <= ev.summary.q("latency", 99).mean
    result = plan(s)
    assert result.recommendation is not None


def test_closed_loop_llm_scenario_from_cli(write_scenario, tmp_path):
    data = {
        "name": "closed-llm",
        "model": "llama-3.1-8b",
        "traffic": {
            "arrivals": {"kind": "closed", "concurrency": 8},
            "horizon_s": 20.0,
            "tokens": {
                "prompt_median": 256,
                "prompt_sigma": 0.0,
                "output_median": 64,
                "output_sigma": 0.0,
            },
        },  # fmt: skip
        "slo": {"percentile": 99, "ttft_ms": 2000, "tpot_ms": 100},
        "fleet": {"batching": {"kind": "continuous"}},
        "candidates": {"gpus": ["h100-sxm"], "precisions": ["fp16"]},
        "simulation": {"replications": 2, "max_replications": 2, "seed": 3},
    }
    p = write_scenario(data)
    out = tmp_path / "out"
    args = ["simulate", str(p), "--gpu", "h100-sxm", "--precision", "fp16", "--replicas", "1"]
    res = CliRunner().invoke(main, [*args, "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "ttft" in res.output.lower()


def test_closed_loop_spec_errors(write_scenario):
    bad = _closed_fixed()
    bad["traffic"]["arrivals"]["think_time"] = 1.0  # misspelt: think_time_s
    with pytest.raises(Exception, match="think_time"):
        load_scenario(write_scenario(bad))
    assert yaml.safe_dump(_closed_fixed())
