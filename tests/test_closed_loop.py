"""Closed-loop traffic against the exact finite-source queue M/M/c//N."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from capsim.analysis.finite_source import finite_source_mmc
from capsim.workload.closed_loop import ClosedArrivals, ClosedLoopClients, simulate_closed_station


@pytest.mark.parametrize(
    ("n", "c", "z", "s"),
    [(10, 2, 1.0, 0.3), (50, 4, 2.0, 0.1), (3, 1, 0.5, 0.5), (20, 3, 0.0, 0.2), (7, 7, 1.0, 1.0)],
)
def test_little_and_arrival_theorem_agree(n, c, z, s):
    r = finite_source_mmc(n, c, z, s)
    assert r.p_state.sum() == pytest.approx(1.0)
    assert r.response_mean_s == pytest.approx(r.response_mean_by_arrival_theorem(), rel=1e-9)
    assert r.throughput_rps <= min(n, c) / s + 1e-12
    assert r.throughput_rps <= n / (z + s) + 1e-12  # never better than no queueing


def test_limits():
    # as many servers as clients: nobody waits
    r = finite_source_mmc(5, 8, 2.0, 0.5)
    assert r.response_mean_s == pytest.approx(0.5) and r.throughput_rps == pytest.approx(5 / 2.5)
    assert r.response_quantile(0.99) == pytest.approx(-0.5 * math.log(0.01))
    # one client: the service time alone
    assert finite_source_mmc(1, 1, 3.0, 0.2).response_mean_s == pytest.approx(0.2)
    # no thinking, one server: saturated, N/mu
    r = finite_source_mmc(8, 1, 0.0, 0.1)
    assert r.throughput_rps == pytest.approx(10.0) and r.response_mean_s == pytest.approx(0.8)
    # the response of the saturated single server is Erlang(N, mu): median known
    from scipy import stats

    assert r.response_quantile(0.5) == pytest.approx(stats.gamma.ppf(0.5, 8, scale=0.1))


def test_bad_arguments():
    with pytest.raises(ValueError, match="servers"):
        finite_source_mmc(3, 0, 1.0, 1.0)
    with pytest.raises(ValueError, match="service_s"):
        finite_source_mmc(3, 1, 1.0, 0.0)
    with pytest.raises(ValidationError):
        ClosedArrivals(kind="closed", concurrency=0)
    with pytest.raises(ValidationError):
        ClosedArrivals(kind="closed", concurrency=2, think_s=1.0)  # misspelt field


@pytest.mark.parametrize(("n", "c", "z", "s"), [(10, 2, 1.0, 0.3), (6, 1, 0.0, 0.05)])
def test_simulation_matches_exact_finite_source_queue(n, c, z, s):
    exact = finite_source_mmc(n, c, z, s)
    spec = ClosedArrivals(kind="closed", concurrency=n, think_time_s=z)
    rng = np.random.default_rng(20261204)
    run = simulate_closed_station(
        ClosedLoopClients(spec),
        c,
        lambda r: r.exponential(s),
        completions=60_000,
        warmup=2_000,
        rng=rng,
    )
    assert run.throughput_rps == pytest.approx(exact.throughput_rps, rel=0.02)
    assert run.response_s.mean() == pytest.approx(exact.response_mean_s, rel=0.03)
    for q in (0.5, 0.9, 0.99):
        assert np.quantile(run.response_s, q) == pytest.approx(exact.response_quantile(q), rel=0.05)


def test_fixed_think_time_generator():
    spec = ClosedArrivals(kind="closed", concurrency=4, think_time_s=0.25, think="fixed")
    clients = ClosedLoopClients(spec)
    rng = np.random.default_rng(3)
    assert clients.initial_send_times(rng).tolist() == [0.25] * 4
    assert clients.next_send_time(1.0, rng) == 1.25
