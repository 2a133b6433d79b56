"""The autoscaled engine: equivalence with the fixed-fleet engine, exact counters, replica
lifecycle and billing, buffering at zero replicas, draining, and the step-load test."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.sim.batched import run_batched
from capsim.sim.batched_fleet import BatchedFleet
from capsim.sim.batched_queue import EngineConfig
from capsim.sim.lifecycle import ColdStartSampler, run_lifecycle
from capsim.sim.policies import HPA, KPA, Fixed, Policy
from capsim.spec.autoscaling import HPASpec, KPASpec

BT = np.array([0.0] + [0.004 + 0.0015 * b for b in range(1, 17)])


def poisson(rate: float, n: int, seed: int = 3) -> np.ndarray:
    return np.cumsum(np.random.default_rng(seed).exponential(1 / rate, n))


class Script(Policy):
    """Desired count by time: [(from_t, count), ...]."""

    def __init__(self, steps, period=10.0):
        self.steps, self.period_s = steps, period

    def desired(self, obs) -> int:
        return [c for t0, c in self.steps if obs.t >= t0][-1]


# --------------------------------------------------------------------------- equivalence
@pytest.mark.parametrize("vectorise", [False, True])
@pytest.mark.parametrize(
    "replicas,delay,limit", [(3, 0.002, None), (2, 0.0, None), (4, 0.005, 20), (2, 0.003, 5)]
)
def test_fixed_fleet_matches_the_shared_queue_engine(replicas, delay, limit, vectorise):
    """Under a fixed policy the fleet forms exactly the batches of run_batched(shared_queue)."""
    arr = poisson(400, 40_000)
    jit = np.random.default_rng(1).gamma(100, 0.01, len(arr))
    cfg = EngineConfig(
        replicas=replicas,
        batch_times=BT,
        max_queue_delay_s=delay,
        jitter=jit,
        max_queue_length=limit,
    )
    ref = run_batched(arr, cfg, float(arr[-1]))
    fleet = BatchedFleet(
        arr, BT, max_queue_delay_s=delay, jitter=jit, max_queue_length=limit, vectorise=vectorise
    )
    run_lifecycle(fleet, Fixed(replicas), lambda: 0.0, horizon=float(arr[-1]), initial=replicas)
    st, du, sz = fleet.batch_log()
    assert len(st) == len(ref.batch_start)
    np.testing.assert_allclose(st, ref.batch_start, rtol=0, atol=1e-12)
    np.testing.assert_allclose(du, ref.batch_duration, rtol=0, atol=1e-12)
    np.testing.assert_array_equal(sz, ref.batch_sizes)
    np.testing.assert_array_equal(fleet.rejected_mask(), ref.rejected)


@pytest.mark.parametrize("vectorise", [False, True])
def test_sample_counters_are_exact(vectorise):
    """∫ requests in system, ∫ queue, ∫ busy and in-service now, against brute force."""
    arr = poisson(300, 20_000, seed=7)
    jit = np.random.default_rng(7).gamma(25, 1 / 25, len(arr))
    f = BatchedFleet(arr, BT, max_queue_delay_s=0.003, jitter=jit, vectorise=vectorise)
    f.add_replica(0.0)
    f.add_replica(0.0)
    samples = []
    for t in np.arange(1.0, arr[-1] + 5, 1.7):
        f.sync(t)
        if t > 20 and f.serving < 4:
            f.add_replica(t)
        samples.append(f.sample(t))
    f.sync(math.inf)
    st, du, sz = f.batch_log()
    fin, start = np.repeat(st + du, sz), np.repeat(st, sz)
    for smp in samples[::5]:
        t = smp.t
        a = arr[arr <= t]
        k = len(a)
        assert smp.arrived == k
        assert smp.request_seconds == pytest.approx(
            np.clip(np.minimum(fin[:k], t) - a, 0, None).sum(), rel=1e-9, abs=1e-6
        )
        assert smp.queue_seconds == pytest.approx(
            np.clip(np.minimum(start[:k], t) - a, 0, None).sum(), rel=1e-9, abs=1e-6
        )
        assert smp.busy_seconds == pytest.approx(
            np.clip(np.minimum(st + du, t) - st, 0, None).sum(), rel=1e-9, abs=1e-6
        )
        assert smp.in_service == sz[(st <= t) & (st + du > t)].sum()


# --------------------------------------------------------------------------- lifecycle, billing
def test_lifecycle_records_and_billing():
    # 1 replica from t = 0; 2 more requested at t = 100 (cold start 50 s -> ready at 150);
    # back to 1 at t = 500: light load, so both are idle and released at once.
    arr = poisson(10, 8_000)  # ~800 s
    h = 800.0
    f = BatchedFleet(arr[arr < h], BT)
    lc = run_lifecycle(f, Script([(0, 1), (100, 3), (500, 1)]), lambda: 50.0, horizon=h, initial=1)
    np.testing.assert_array_equal(lc.requested, [0.0, 100.0, 100.0])
    np.testing.assert_array_equal(lc.ready, [0.0, 150.0, 150.0])
    assert sorted(lc.released[1:].tolist()) == [500.0, 500.0]
    assert np.isnan(lc.released[0])  # held to the end
    np.testing.assert_allclose(lc.billed_seconds(), [800.0, 400.0, 400.0])
    np.testing.assert_allclose(lc.provisioning_seconds(), [0.0, 50.0, 50.0])
    # the engine saw 3 serving replicas between 150 and 500 only
    ticks = lc.ticks
    assert ticks["ready"][ticks["t"] == 140][0] == 1
    assert ticks["ready"][ticks["t"] == 150][0] == 3
    assert ticks["ready"][ticks["t"] == 500][0] == 1


def test_cancelled_while_provisioning_is_billed_until_cancel():
    arr = poisson(10, 3_000)
    f = BatchedFleet(arr, BT)
    lc = run_lifecycle(
        f, Script([(0, 1), (100, 2), (130, 1)]), lambda: 60.0, horizon=300.0, initial=1
    )
    assert np.isnan(lc.ready[1]) and lc.released[1] == 130.0
    assert lc.billed_seconds()[1] == pytest.approx(30.0)
    assert lc.provisioning_seconds()[1] == pytest.approx(30.0)


def test_requests_at_zero_replicas_wait_for_the_first_one():
    # nothing ready at t = 0; the policy asks for 1 at its first tick (t = 10); cold start
    # 30 s -> ready at 40: every request is served, the first ones after waiting ~40 s
    arr = poisson(20, 2_000)
    f = BatchedFleet(arr, BT)
    lc = run_lifecycle(f, Script([(0, 1)]), lambda: 30.0, horizon=float(arr[-1]), initial=0)
    st, du, sz = f.batch_log()
    assert sz.sum() == len(arr)  # nobody lost
    assert st[0] == pytest.approx(40.0)
    lat = np.repeat(st + du, sz) - arr
    assert lat[0] == pytest.approx(40.0 - arr[0] + du[0])
    assert lc.ready[0] == 40.0


def test_queue_limit_still_rejects_at_zero_replicas():
    arr = poisson(20, 2_000)
    f = BatchedFleet(arr, BT, max_queue_length=50)
    run_lifecycle(f, Script([(0, 1)]), lambda: 30.0, horizon=float(arr[-1]), initial=0)
    before = int(np.sum(arr <= 40.0))
    assert f.rejected == before - 50  # the first 50 wait, the rest are turned away
    assert f.batch_log()[2].sum() == len(arr) - f.rejected


def test_a_draining_replica_finishes_its_batch_and_takes_no_more():
    # 5 s batches of up to 2, a request every 0.5 s: both replicas always busy; at t = 12 one
    # is retired: the one whose batch (started at 10) ends first drains until 15
    bt = np.array([0.0, 5.0, 5.0])
    arr = np.arange(0.0, 60.0, 0.5)
    f = BatchedFleet(arr, bt)
    lc = run_lifecycle(
        f, Script([(0, 2), (12, 1)], period=4.0), lambda: 0.0, horizon=60.0, initial=2
    )
    drained = np.flatnonzero(~np.isnan(lc.drain))
    assert len(drained) == 1
    i = drained[0]
    assert lc.drain[i] == 12.0
    assert lc.released[i] == 15.0  # released when its batch ended
    st, du, sz = f.batch_log()
    # after the release only one batch at a time runs
    late = st >= lc.released[i]
    ends = st[late] + du[late]
    assert np.all(st[late][1:] >= ends[:-1] - 1e-9)


def test_kpa_scales_from_zero_and_serves_buffered_requests():
    arr = 300.0 + poisson(50, 10_000)  # silence, then traffic
    h = float(arr[-1])
    f = BatchedFleet(arr, BT)
    pol = KPA(KPASpec(kind="kpa", target=5, max_replicas=10))
    lc = run_lifecycle(f, pol, lambda: 20.0, horizon=h, initial=0)
    assert f.batch_log()[2].sum() == len(arr)
    assert lc.ready[0] >= 300.0 + 20.0  # a tick after the first arrival plus the cold start
    assert lc.ready[0] <= 300.0 + 20.0 + 2.0 + 1e-9


def test_cold_starts_are_common_random_numbers():
    from capsim.sim.lifecycle import cold_start_seed
    from capsim.spec.autoscaling import ColdStart

    cs = ColdStart()
    a = ColdStartSampler(cs, cold_start_seed(5, 0), 1e9)
    b = ColdStartSampler(cs, cold_start_seed(5, 0), 1e9)
    first = [a() for _ in range(300)]
    assert first == [b() for _ in range(300)]
    c = ColdStartSampler(cs, cold_start_seed(5, 1), 1e9)
    assert first[:5] != [c() for _ in range(5)]


# --------------------------------------------------------------------------- step load
def _step_run(cold: float):
    """100 req/s, tripling to 300 at t0 = 600 s; HPA on requests/s per replica (target 60,
    synced every 5 s): 2 replicas, then 5. A replica serves at most 8 / 60 ms = 133 req/s."""
    bt = np.array([0.0] + [0.02 + 0.005 * b for b in range(1, 9)])
    rng = np.random.default_rng(11)
    a1 = np.cumsum(rng.exponential(1 / 100, 70_000))
    a1 = a1[a1 < 600]
    a2 = 600 + np.cumsum(rng.exponential(1 / 300, 200_000))
    arr = np.concatenate([a1, a2[a2 < 1200]])
    f = BatchedFleet(arr, bt, max_queue_delay_s=0.005)
    pol = HPA(HPASpec(kind="hpa", metric="rps", target=60, sync_period_s=5, max_replicas=10))
    lc = run_lifecycle(f, pol, lambda: cold, horizon=1200.0, initial=2)
    st, du, sz = f.batch_log()
    lat = np.repeat(st + du, sz) - arr
    edges = np.arange(0, 1201, 10.0)
    idx = np.searchsorted(arr, edges)
    p99 = np.array([np.percentile(lat[a:b], 99) for a, b in zip(idx[:-1], idx[1:], strict=True)])
    return lc, p99, edges[:-1]


def test_step_load_cold_start_delays_recovery_and_costs_its_provisioning_time():
    lc_cold, p_cold, t = _step_run(120.0)
    lc_warm, p_warm, _ = _step_run(0.0)
    before = p_cold[(t >= 300) & (t < 600)].max()
    after = (t >= 600) & (t < 900)
    # with a 120 s cold start the windows after t0 blow up (2 replicas for 300 req/s) ...
    assert p_cold[after].max() > 20 * before
    # ... and recover about 120 s later: the last bad window ends 120-160 s after t0
    bad = t[after][p_cold[after] > 3 * before]
    assert 600 + 110 <= bad.max() + 10 <= 600 + 170
    # with no cold start the p99 barely moves (the next 5 s sync adds replicas)
    assert p_warm[after].max() < 0.05 * p_cold[after].max()
    # same decisions (the metric is the arrival rate): same replicas requested at the same times
    np.testing.assert_array_equal(lc_cold.requested, lc_warm.requested)
    # cost: billed from request to release in both runs; the cold run paid 120 s of
    # provisioning per new replica, exactly the serving time the warm run got for the money
    new = int(np.sum(lc_cold.requested > 0))
    assert new >= 3
    prov = lc_cold.provisioning_seconds().sum()
    assert prov == pytest.approx(new * 120.0)
    assert lc_warm.provisioning_seconds().sum() == 0.0
    billed_cold, billed_warm = lc_cold.billed_seconds().sum(), lc_warm.billed_seconds().sum()
    assert billed_cold == pytest.approx(billed_warm)
    serving_cold = billed_cold - prov
    assert billed_warm - serving_cold == pytest.approx(prov)
