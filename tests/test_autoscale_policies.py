"""Autoscaling policies against hand-worked examples (no SimPy: policies are plain objects)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from pydantic import ValidationError

from capsim.sim.policies import HPA, KPA, Observation, Predictive, Scheduled, make_policy
from capsim.spec.autoscaling import ColdStart, HPASpec, KPASpec, PredictiveSpec, ScheduledSpec


def obs(t, ready, *, inflight_per_replica=None, util=None, rps=None, prov=0, period=15.0):
    """An observation with per-replica metric values (fleet totals are what the engine gives)."""
    return Observation(
        t=t,
        period_s=period,
        ready=ready,
        provisioning=prov,
        inflight=None if inflight_per_replica is None else inflight_per_replica * ready,
        utilization=util,
        arrivals=0.0 if rps is None else rps * period,
    )


# --------------------------------------------------------------------------- HPA
def hpa(**kw) -> HPA:
    kw.setdefault("kind", "hpa")
    kw.setdefault("max_replicas", 50)
    return HPA(HPASpec(**kw))


def test_hpa_inflight_ratio_worked_example():
    # target 8 in flight per replica; 4 replicas observe 14 each:
    # ratio = 14 / 8 = 1.75 (outside tolerance 0.1) -> ceil(1.75 x 4) = 7;
    # rate limit allows max(4 + 4, 4 x 200%) = 8 -> 7 stands
    p = hpa(metric="inflight", target=8)
    assert p.desired(obs(15, 4, inflight_per_replica=14)) == 7


def test_hpa_tolerance_keeps_count():
    # 8.6 / 8 = 1.075: |1 - 1.075| <= 0.1 -> no change
    p = hpa(metric="inflight", target=8)
    assert p.desired(obs(15, 4, inflight_per_replica=8.6)) == 4


def test_hpa_utilization_percent():
    # 90% busy vs target 60% -> ratio 1.5 -> ceil(1.5 x 4) = 6
    p = hpa(metric="utilization", target=60)
    assert p.desired(obs(15, 4, util=0.9)) == 6


def test_hpa_not_ready_replicas_count_as_zero_when_scaling_up():
    # 4 ready at 14 (total 56) and 3 provisioning: recomputed over 7 replicas with the
    # 3 at 0: 56 / 7 / 8 = 1.0 -> within tolerance -> keep the current 7 (no over-reaction)
    p = hpa(metric="inflight", target=8)
    assert p.desired(obs(15, 4, inflight_per_replica=14, prov=3)) == 7
    # 4 ready at 20 (total 80), 2 provisioning: 80 / 6 / 8 = 1.667 -> ceil(1.667 x 6) = 10
    p = hpa(metric="inflight", target=8)
    assert p.desired(obs(15, 4, inflight_per_replica=20, prov=2)) == 10


def test_hpa_scale_up_rate_limit():
    # 2 replicas at 10x the target want 20; per 15 s at most max(2 + 4, 2 x 200%) = 6
    p = hpa(metric="inflight", target=1)
    assert p.desired(obs(15, 2, inflight_per_replica=10)) == 6
    # 15 s later the period has rolled over: from 6, max(6 + 4, 12) = 12
    assert p.desired(obs(30, 6, inflight_per_replica=10)) == 12


def test_hpa_scale_down_stabilization_holds_through_a_short_dip():
    # 6 replicas busy at target for a while, then a 2-minute dip to a third of the load,
    # then back: the 300 s window keeps the highest recommendation, so the count holds at 6
    p = hpa(metric="inflight", target=10)
    t = 0.0
    for _ in range(20):  # 5 min at target (ratio 1.0)
        t += 15
        assert p.desired(obs(t, 6, inflight_per_replica=10)) == 6
    for _ in range(8):  # 2 min dip: raw proposal ceil(0.33 x 6) = 2
        t += 15
        assert p.desired(obs(t, 6, inflight_per_replica=3.3)) == 6
    for _ in range(4):
        t += 15
        assert p.desired(obs(t, 6, inflight_per_replica=10)) == 6


def test_hpa_scales_down_after_the_window():
    # a sustained dip from the start: the window starts with the current count (6, at t = 0)
    # and the raw proposals ceil(0.33 x 6) = 2; at t = 300 the 6 has left the 300 s window
    p = hpa(metric="inflight", target=10)
    out = [p.desired(obs(15 * k, 6, inflight_per_replica=3.3)) for k in range(1, 30)]
    assert out[:19] == [6] * 19  # t = 15 ... 285
    assert out[19:] == [2] * 10  # t = 300 ...


def test_hpa_min_max_and_disabled_scale_down():
    p = hpa(metric="inflight", target=1, min_replicas=2, max_replicas=5)
    assert p.desired(obs(15, 4, inflight_per_replica=100)) == 5
    p = hpa(
        metric="inflight",
        target=10,
        min_replicas=2,
        scale_down={
            "stabilization_window_s": 0,
            "policies": [{"type": "pods", "value": 1}],
            "select_policy": "disabled",
        },
    )
    assert p.desired(obs(15, 4, inflight_per_replica=1)) == 4


# --------------------------------------------------------------------------- KPA
def test_kpa_panic_worked_example():
    # target 100 x 70% = 70 per replica; 10 ready; stable concurrency 1000, panic 1500:
    # desired stable ceil(1000 / 70) = 15, panic ceil(1500 / 70) = 22; 22 / 10 >= 200% -> panic,
    # desired = max(15, 22) = 22
    p = KPA(KPASpec(kind="kpa", target=100))
    assert p.scale_from(0.0, 10, 1000, 1500) == 22
    assert p.last["panicking"]
    # while panicking it never goes down: panic concurrency falls to 700 (11 wanted) -> 22 held
    assert p.scale_from(2.0, 22, 1000, 700) == 22
    assert p.scale_from(58.0, 22, 1000, 700) == 22
    # one stable window (60 s) after the threshold was last crossed, panic ends -> stable 15
    assert p.scale_from(62.0, 22, 1000, 700) == 15
    assert not p.last["panicking"]


def test_kpa_windows_average_the_ticks():
    # 2 s ticks; 60 s stable window, 6 s panic window. 57 s at 140 in flight, then 3 ticks at 700:
    # stable = (27 x 140 + 3 x 700) / 30 = 196 -> ceil(196 / 70) = 3;
    # panic = 700 -> 10 >= 2 x 2 ready -> panic, desired 10 (max scale-up 1000 x 2)
    p = KPA(KPASpec(kind="kpa", target=100))
    d = None
    for k in range(1, 28):
        d = p.desired(Observation(t=2.0 * k, period_s=2.0, ready=2, inflight=140.0))
    assert d == 2
    for k in range(28, 31):
        d = p.desired(Observation(t=2.0 * k, period_s=2.0, ready=2, inflight=700.0))
    assert p.last["stable"] == pytest.approx(196.0)
    assert p.last["panic"] == pytest.approx(700.0)
    assert d == 10


def test_kpa_scale_down_rate_halves_at_most():
    # no load at all: floor(8 / 2) = 4 is the lowest it may go in one step
    p = KPA(KPASpec(kind="kpa", target=100, min_replicas=1))
    assert p.desired(Observation(t=2.0, period_s=2.0, ready=8, inflight=0.0)) == 4


def test_kpa_scale_to_zero_after_grace_period():
    p = KPA(KPASpec(kind="kpa", target=100))  # min_replicas 0 (Knative min-scale)
    seen = [
        p.desired(Observation(t=2.0 * k, period_s=2.0, ready=1, inflight=0.0)) for k in range(1, 21)
    ]
    # desired 0 from the first tick; scale to zero only 30 s later (grace period)
    assert seen[:15] == [1] * 15
    assert seen[15:] == [0] * 5


# --------------------------------------------------------------------------- scheduled, predictive
def test_scheduled_table_wraps_at_midnight():
    spec = ScheduledSpec(
        kind="scheduled",
        schedule=[{"hour": 6, "replicas": 4}, {"hour": 18, "replicas": 2}],
        min_replicas=0,
    )
    p = Scheduled(spec)
    assert p.at(3 * 3600) == 2  # before the first entry: the last one holds (from 18:00)
    assert p.at(6 * 3600) == 4
    assert p.at(17.99 * 3600) == 4
    assert p.at(30 * 3600) == 4  # the next day, 06:00
    assert p.desired(Observation(t=20 * 3600, period_s=60, ready=4)) == 2


def test_predictive_reads_last_period_one_cold_start_ahead():
    # yesterday's rate: 100 req/s before 08:00, 500 after; lead 600 s; 100 req/s per replica.
    prior = lambda t: np.where((np.asarray(t) % 86400) >= 8 * 3600, 500.0, 100.0)  # noqa: E731
    spec = PredictiveSpec(kind="predictive", target_rps_per_replica=100, max_replicas=20)
    p = make_policy(spec, max_replicas=20, lead_s=540, prior=prior)  # lead 540 + tick 60
    assert isinstance(p, Predictive) and p.lead_s == 600
    # at 07:40 now 100 req/s, but at 07:50-07:51 yesterday it was still 100 -> 1 replica
    assert p.desired(Observation(t=7 * 3600 + 40 * 60, period_s=60, ready=1, arrivals=6000)) == 1
    # at 07:50 the forecast window [08:00, 08:01] saw 500 -> 5 replicas, ahead of the load
    assert p.desired(Observation(t=7 * 3600 + 50 * 60, period_s=60, ready=1, arrivals=6000)) == 5


def test_predictive_reactive_floor():
    spec = PredictiveSpec(kind="predictive", target_rps_per_replica=100)
    p = make_policy(spec, max_replicas=20, prior=lambda t: np.full(np.shape(t), 100.0))
    # the forecast says 100 req/s but 730 arrive now -> ceil(7.3) = 8
    assert p.desired(Observation(t=600, period_s=60, ready=2, arrivals=730 * 60)) == 8


# --------------------------------------------------------------------------- cold start schema
def test_cold_start_phases_numbers_and_distributions():
    cs = ColdStart(
        node=45,
        image_pull=30,
        weight_load="auto",
        warmup={"kind": "uniform", "low_s": 10, "high_s": 20},
    )
    rng = np.random.default_rng(0)
    x = cs.sample(rng, 1000, weight_bytes=16e9)  # 16 GB at 0.8 GB/s = 20 s
    assert x.min() >= 45 + 30 + 20 + 10 and x.max() <= 45 + 30 + 20 + 20
    assert cs.mean_s(16e9) == pytest.approx(45 + 30 + 20 + 15)
    ln = ColdStart(
        node={"kind": "lognormal", "median_s": 100, "sigma": 0.5},
        image_pull=0,
        weight_load=0,
        warmup=0,
    )
    assert np.median(ln.sample(rng, 20001)) == pytest.approx(100, rel=0.03)
    # defaults: node ~45 s - 5 min (median 100 s)
    d = ColdStart()
    assert 120 < d.mean_s(1e9) < 400


def test_bad_cold_start_and_policy_fields_are_errors():
    with pytest.raises(ValidationError):
        ColdStart(node={"kind": "uniform", "low_s": 10, "high_s": 5})
    with pytest.raises(ValidationError):
        HPASpec(kind="hpa", target=-1)
    with pytest.raises(ValidationError):
        KPASpec(kind="kpa", min_replicas=3, max_replicas=2)


def test_observation_totals():
    o = Observation(t=10, period_s=10, ready=4, inflight=20.0, utilization=0.5, arrivals=1000)
    assert o.rps == 100
    assert o.total("utilization") == 200.0  # 50% x 4 replicas, in percent
    assert math.isclose(o.total("inflight"), 20.0)
