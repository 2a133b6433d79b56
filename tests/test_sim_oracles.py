"""The simulator against exact queueing theory (docs/reference/queueing-and-statistics.md).

Like Ciw's tests: simulate a system whose answer is known and compare. Long runs, several
independent replications; tolerances are a few per cent (stated per test).
"""

from __future__ import annotations

import numpy as np
import pytest

import capsim.analysis.theory as q
from capsim.sim.batched import run_batched
from capsim.sim.batched_queue import EngineConfig


def poisson(lam: float, n: int, seed: int) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1 / lam, n))


def expo(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed + 10_000).exponential(1.0, n)


def drop_warmup(x: np.ndarray, frac: float = 0.05) -> np.ndarray:
    return x[int(len(x) * frac) :]


def test_mmc_p99_response_matches_erlang_c_within_3_percent():
    lam, mu, c = 8.0, 1.0, 10
    exact = q.mmc_response_quantile(lam, mu, c, 0.99)  # 4.9461 s
    p99s, means = [], []
    for rep in range(4):
        n = 250_000
        r = run_batched(
            poisson(lam, n, rep), EngineConfig(c, np.array([0.0, 1 / mu]), jitter=expo(n, rep))
        )
        lat = drop_warmup(r.latency)
        p99s.append(np.quantile(lat, 0.99))
        means.append(lat.mean())
    assert np.mean(p99s) == pytest.approx(exact, rel=0.03)
    assert np.mean(means) == pytest.approx(q.mmc_response_mean(lam, mu, c), rel=0.02)


def test_mm1_p99_matches_closed_form():
    lam, mu = 0.7, 1.0
    n = 300_000
    r = run_batched(poisson(lam, n, 3), EngineConfig(1, np.array([0.0, 1 / mu]), jitter=expo(n, 3)))
    assert np.quantile(drop_warmup(r.latency), 0.99) == pytest.approx(
        q.mm1_response_quantile(lam, mu, 0.99), rel=0.03
    )


def test_md1_mean_wait_matches_pollaczek_khinchine():
    lam, d = 0.8, 1.0
    waits = []
    for rep in range(4):
        r = run_batched(poisson(lam, 200_000, rep), EngineConfig(1, np.array([0.0, d])))
        waits.append(drop_warmup(r.wait).mean())
    assert np.mean(waits) == pytest.approx(q.md1_wait_mean(lam, d), rel=0.03)  # 2.0 s


def test_mdc_matches_crommelin_exact():
    lam, d, c = 8.0, 1.0, 10
    exact = q.mdc_wait(lam, d, c)  # E[Wq] = 0.10983, P(wait) = 0.3847
    waits, pw = [], []
    for rep in range(4):
        r = run_batched(poisson(lam, 200_000, rep), EngineConfig(c, np.array([0.0, d])))
        w = drop_warmup(r.wait)
        waits.append(w.mean())
        pw.append((w > 1e-12).mean())
    assert np.mean(waits) == pytest.approx(exact.wait_mean, rel=0.03)
    assert np.mean(pw) == pytest.approx(exact.p_wait, rel=0.02)


def test_greedy_batching_exponential_batch_time_matches_mmk1():
    lam, mu, k = 8.0, 2.0, 8
    n = 300_000
    bt = np.array([0.0] + [1 / mu] * k)
    r = run_batched(poisson(lam, n, 5), EngineConfig(1, bt, jitter=expo(n, 5)))
    assert drop_warmup(r.wait).mean() == pytest.approx(q.batch_mmk1_wait_mean(lam, mu, k), rel=0.03)


@pytest.mark.parametrize(
    "batch_time, exact",
    [
        (lambda b: 0.5, 0.2535),
        (lambda b: 0.2 + 0.05 * b, 0.1769),
    ],
)
def test_greedy_batching_deterministic_batch_time_matches_embedded_chain(batch_time, exact):
    lam, k = 8.0, 8
    bt = np.array([0.0] + [batch_time(b) for b in range(1, k + 1)])
    assert q.batch_deterministic_wait_mean(lam, k, bt) == pytest.approx(exact, abs=1e-3)
    r = run_batched(poisson(lam, 300_000, 9), EngineConfig(1, bt))
    assert drop_warmup(r.wait).mean() == pytest.approx(exact, rel=0.03)


def test_littles_law_and_utilisation_identity():
    lam, mu, c = 30.0, 4.0, 10  # offered load a = 7.5, rho = 0.75
    n = 200_000
    arr = poisson(lam, n, 21)
    r = run_batched(arr, EngineConfig(c, np.array([0.0, 1 / mu]), jitter=expo(n, 21)))
    horizon = arr[-1]
    # L from random-time sampling of the number in system, W from the per-request arrays
    t = np.random.default_rng(0).uniform(0.1 * horizon, 0.9 * horizon, 20_000)
    in_system = np.searchsorted(arr, t, side="right") - np.searchsorted(
        np.sort(r.finish), t, side="right"
    )
    sel = (arr > 0.1 * horizon) & (arr < 0.9 * horizon)
    w = (r.finish - r.arrival)[sel].mean()
    assert in_system.mean() == pytest.approx(lam * w, rel=0.03)
    # utilisation = offered load / capacity
    busy = r.batch_duration.sum() / (c * r.end_time)
    assert busy == pytest.approx(lam / (c * mu), rel=0.02)


def test_pasta_fraction_waiting_equals_time_all_busy():
    lam, mu, c = 8.0, 1.0, 10
    n = 200_000
    arr = poisson(lam, n, 4)
    r = run_batched(arr, EngineConfig(c, np.array([0.0, 1.0]), jitter=expo(n, 4)))
    waited = (r.wait > 1e-12).mean()
    assert waited == pytest.approx(q.erlang_c(c, lam / mu), rel=0.04)


def test_mm1_with_queue_limit_rejects_like_mm1k():
    lam, mu, limit = 0.9, 1.0, 4  # system capacity K = limit + 1 in service
    n = 300_000
    r = run_batched(
        poisson(lam, n, 8),
        EngineConfig(1, np.array([0.0, 1 / mu]), max_queue_length=limit, jitter=expo(n, 8)),
    )
    rho, cap = lam / mu, limit + 1
    p_block = (1 - rho) * rho**cap / (1 - rho ** (cap + 1))
    assert r.rejected.mean() == pytest.approx(p_block, rel=0.05)
    assert np.isnan(r.finish[r.rejected]).all()
    assert not np.isnan(r.finish[~r.rejected]).any()


def test_overload_is_detected_not_run_forever():
    lam = 2.0  # twice what one server with 1 s service can do
    r = run_batched(
        poisson(lam, 500_000, 1), EngineConfig(1, np.array([0.0, 1.0]), max_wait_s=60.0)
    )
    assert r.unstable and "overloaded" in r.unstable_reason
    # stopped once the wait passed the 60 s level (t ~ 120 s) and doubled (t ~ 240 s)
    assert r.end_time < 300


def test_dynamic_batching_respects_max_batch_and_delay():
    k, delay = 8, 0.004
    bt = np.array([0.0] + [0.002 + 0.0005 * b for b in range(1, k + 1)])
    arr = poisson(1500.0, 50_000, 2)
    r = run_batched(arr, EngineConfig(2, bt, max_queue_delay_s=delay))
    assert r.batch_sizes.max() <= k
    # with a delay, batches are larger than greedy ones at the same load
    greedy = run_batched(arr, EngineConfig(2, bt))
    assert r.batch_sizes.mean() > greedy.batch_sizes.mean()
    # a batch that was not full waited at most `delay` for its oldest request
    first = np.concatenate([[0], np.cumsum(r.batch_sizes)[:-1]])
    not_full = r.batch_sizes < k
    oldest_wait = r.batch_start - arr[first]
    assert (oldest_wait[not_full] <= delay + 1e-9 + bt[k]).all()


def test_routers_conserve_requests_and_jsq_beats_round_robin():
    bt = np.array([0.0, 0.01])
    arr = poisson(300.0, 60_000, 6)
    jit = expo(60_000, 6)
    out = {}
    for router in ("shared_queue", "round_robin", "join_shortest_queue"):
        r = run_batched(arr, EngineConfig(4, bt, router=router, jitter=jit))
        assert r.served.all()
        assert (r.finish >= r.start).all() and (r.start >= r.arrival).all()
        out[router] = np.quantile(r.latency, 0.99)
    assert out["shared_queue"] <= out["join_shortest_queue"] <= out["round_robin"]


def test_single_replica_never_overlaps_batches():
    bt = np.array([0.0] + [0.01 * b for b in range(1, 5)])
    r = run_batched(poisson(80.0, 20_000, 12), EngineConfig(1, bt, max_queue_delay_s=0.002))
    ends = r.batch_start + r.batch_duration
    assert (r.batch_start[1:] >= ends[:-1] - 1e-12).all()


def test_replication_interval_for_p99_covers_the_true_value():
    """The 95% t-interval over replication p99s covers the exact M/M/1 p99 most of the time.

    (An interval from the per-request order statistics would cover far less often: successive
    latencies are strongly correlated.)
    """
    from capsim.analysis.stats import mean_crossing_cut, t_interval

    lam, mu = 0.7, 1.0
    exact = q.mm1_response_quantile(lam, mu, 0.99)  # 15.35 s
    covered, experiments, n = 0, 40, 10_000  # measured coverage here: 0.90
    for e in range(experiments):
        p99s = []
        for rep in range(5):
            seed = 1000 * e + rep
            r = run_batched(
                poisson(lam, n, seed),
                EngineConfig(1, np.array([0.0, 1 / mu]), jitter=expo(n, seed)),
            )
            lat = r.latency
            p99s.append(np.quantile(lat[mean_crossing_cut(lat) :], 0.99))
        ci = t_interval(p99s, 0.95)
        covered += ci.low <= exact <= ci.high
    assert covered / experiments >= 0.8
