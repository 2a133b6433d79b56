"""Spot and committed capacity: price tiers, interruptions as a Poisson process or a trace, the
notice, re-queued requests, the committed base, and reproducibility."""

from __future__ import annotations

import math

import numpy as np
import pytest

from capsim.analysis.capacity import capacity_prices, tier_costs
from capsim.analysis.cost import tier_price
from capsim.errors import InputError
from capsim.load import load_catalog
from capsim.sim.batched_fleet import BatchedFleet
from capsim.sim.interruptions import CapacityPlan, interruption_seed
from capsim.sim.lifecycle import run_lifecycle
from capsim.sim.llm_fleet import ScalableLLMFleet
from capsim.sim.policies import Fixed
from capsim.spec.capacity import Capacity
from capsim.spec.catalog import PriceOption
from capsim.workload.streams import seed_children

from .test_autoscale_llm import LIMITS
from .test_llm_engine import LinearTimer, _poisson

BT = np.array([0.0] + [0.004 + 0.0015 * b for b in range(1, 17)])


def _batched_run(plan: CapacityPlan, replicas: int = 10, hours: float = 100.0, cold: float = 60.0):
    arr = np.arange(0.0, hours * 3600, 5.0)  # one request every 5 s: cheap, never queued
    fleet = BatchedFleet(arr, BT)
    lc = run_lifecycle(
        fleet, Fixed(replicas), lambda: cold, horizon=float(arr[-1]), initial=replicas,
        capacity=plan,
    )  # fmt: skip
    return fleet, lc


def _exposure(lc) -> float:
    """Ready spot replica-seconds: from ready to the notice (or drain, release, end of run)."""
    end = np.where(np.isnan(lc.drain), lc.end_time, np.minimum(lc.drain, lc.end_time))
    ok = ~np.isnan(lc.ready)
    return float(np.clip(end[ok] - lc.ready[ok], 0, None).sum())


# --------------------------------------------------------------------------- the Poisson law
def test_poisson_law_interruption_count_matches_rate_times_exposure():
    """N(notices) over the spot replicas' ready time E is Poisson(rate x E): the count lies
    within 4 standard deviations (sqrt(rate x E)) of its mean."""
    rate = 1.0 / 3600  # one per replica-hour
    plan = CapacityPlan(spot=True, rate_per_s=rate, notice_s=30.0, seed=11)
    _, lc = _batched_run(plan)
    mean = rate * _exposure(lc)
    assert mean > 500  # ~10 replicas x 100 h minus the cold starts after each notice
    assert abs(lc.interruptions - mean) <= 4 * math.sqrt(mean)
    # each notice brought a replacement through a cold start: the count held at 10
    assert len(lc.requested) == 10 + lc.interruptions


def test_poisson_law_fails_for_a_wrong_rate():
    """The same check rejects a count produced at twice the rate (the test can fail)."""
    plan = CapacityPlan(spot=True, rate_per_s=2.0 / 3600, notice_s=30.0, seed=11)
    _, lc = _batched_run(plan)
    mean_if_1_per_hour = _exposure(lc) / 3600
    assert abs(lc.interruptions - mean_if_1_per_hour) > 4 * math.sqrt(mean_if_1_per_hour)


# --------------------------------------------------------------------------- base and trace
def test_base_replicas_are_never_interrupted_and_held_throughout():
    plan = CapacityPlan(base=3, spot=True, rate_per_s=5.0 / 3600, notice_s=30.0, seed=2)
    _, lc = _batched_run(plan, replicas=5, hours=10.0)
    assert lc.base == 3 and lc.interruptions > 20
    first3 = slice(0, 3)  # the initial base records: never noticed, never released
    assert np.isnan(lc.notice[first3]).all() and np.isnan(lc.released[first3]).all()
    h = lc.horizon
    assert lc.burst_seconds() == pytest.approx(lc.billed_seconds(h).sum() - 3 * h)


def test_committed_base_is_priced_at_the_committed_rate():
    gpu = load_catalog()["h100-sxm"].model_copy(
        update={
            "price": PriceOption(
                provider="example", usd_per_hour=4.0, committed_1y_usd_per_hour=2.5,
                committed_3y_usd_per_hour=1.75, spot_usd_per_hour=1.2,
                source="https://example.org/prices", as_of="2026-12-01",
            )
        }
    )  # fmt: skip
    cap = Capacity(base={"replicas": 2, "tier": "committed_3y"}, burst="spot")
    p = capacity_prices(gpu, cap)
    assert (p.base_usd, p.burst_usd, p.on_demand_usd) == (1.75, 1.2, 4.0)
    c = tier_costs(p, base_s=2 * 7200.0, burst_s=3600.0, tp=2)
    assert c["cost_base_usd"] == pytest.approx(2 * 2 * 2 * 1.75)  # 2 replicas x 2 h x 2 GPUs
    assert c["cost_burst_usd"] == pytest.approx(1 * 2 * 1.2)
    assert c["on_demand_cost_usd"] == pytest.approx(5 * 2 * 4.0)
    assert c["saving_vs_on_demand_usd"] == pytest.approx(40.0 - 14.0 - 2.4)


def test_a_missing_tier_is_said_not_guessed():
    gpu = load_catalog()["h100-sxm"]
    assert tier_price(gpu, "gcp", "spot").usd_per_hour == 6.571
    with pytest.raises(ValueError, match="no committed 1-year price for h100-sxm at gcp"):
        tier_price(gpu, "gcp", "committed_1y")
    with pytest.raises(InputError, match="capacity.burst: no spot price for h100-sxm at aws"):
        capacity_prices(gpu, Capacity(provider="aws", burst="spot"))
    with pytest.raises(ValueError, match="need `source`"):
        PriceOption(provider="x", usd_per_hour=1.0, spot_usd_per_hour=0.5)


# --------------------------------------------------------------------------- LLM re-queue
def _llm_run(plan: CapacityPlan, n: int = 3000, rate: float = 20.0, replicas: int = 3):
    arr, p, o = _poisson(n, rate, seed=5)
    f = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    lc = run_lifecycle(f, Fixed(replicas), lambda: 20.0, horizon=float(arr[-1]), initial=replicas,
                       capacity=plan)  # fmt: skip
    return f, lc, f.result(float(arr[-1]))


def test_requeued_requests_are_all_served_conservation():
    """Reclaimed without draining (no handler): what the replica held is re-queued, and every
    request is still served exactly once (finish set, never before its arrival)."""
    plan = CapacityPlan(spot=True, trace=(30.0, 60.0, 90.0), notice_s=10.0, drain=False, seed=1)
    f, lc, res = _llm_run(plan)
    assert lc.interruptions == 3 and f.requeued > 0
    assert res.served.all() and not res.rejected.any()
    assert (res.finish >= res.first_token).all() and (res.first_token >= res.arrival).all()
    # the reclaimed replicas were taken at notice + 10 s and serve nothing after
    for r in np.flatnonzero(~np.isnan(lc.notice)):
        assert lc.drain[r] == pytest.approx(lc.notice[r] + 10.0)
    assert len(lc.requested) == 3 + 3


def test_notice_time_is_respected_when_draining():
    """With a handler, a noticed replica takes no new work; it is released within the notice
    or, holding requests at the deadline, reclaimed exactly then (its requests re-queued)."""
    for notice in (0.5, 120.0):
        plan = CapacityPlan(spot=True, trace=(40.0,), notice_s=notice, seed=1)
        f, lc, res = _llm_run(plan)
        (r,) = np.flatnonzero(~np.isnan(lc.notice))
        t0 = lc.notice[r]
        assert t0 == 40.0 and lc.drain[r] == t0
        assert t0 <= lc.released[r] <= t0 + notice + 1e-9
        assert res.served.all()
    assert f.requeued == 0  # 120 s: every request of ~1-2 s finished in time


def test_a_short_notice_requeues_and_a_long_one_does_not():
    short = _llm_run(CapacityPlan(spot=True, trace=(40.0,), notice_s=0.05, seed=1))[0]
    long = _llm_run(CapacityPlan(spot=True, trace=(40.0,), notice_s=120.0, seed=1))[0]
    assert short.requeued > 0 and long.requeued == 0


# --------------------------------------------------------------------------- reproducibility
def test_same_seed_same_numbers_and_its_own_stream():
    def run(seed):
        plan = CapacityPlan(spot=True, rate_per_s=30 / 3600, notice_s=5.0, drain=False,
                            seed=interruption_seed(seed, 0))  # fmt: skip
        f, lc, res = _llm_run(plan)
        return lc.interruptions, f.requeued, np.nan_to_num(lc.notice).tolist(), res.finish.tolist()

    a, b = run(7), run(7)
    assert a == b and a[0] > 0
    assert run(8)[2] != a[2]  # another interruption stream
    # the interruption stream is a 5th child: the other four are unchanged
    kids = seed_children(7, 0)
    assert [k.generate_state(2).tolist() for k in kids] == [
        k.generate_state(2).tolist()
        for k in np.random.SeedSequence(np.random.SeedSequence(7).entropy, spawn_key=(0,)).spawn(4)
    ]
    assert interruption_seed(7, 0).generate_state(2).tolist() not in [
        k.generate_state(2).tolist() for k in kids
    ]


# --------------------------------------------------------------------------- what-if end to end
def test_whatif_reports_cost_by_tier_interruptions_and_requeues(write_scenario):
    """The shipped spot scenario, cut to 20 min with frequent interruptions: the base is billed
    over the horizon at the on-demand rate, the rest at spot; cost = base + burst; the text
    names the interruptions and the re-queued requests."""
    import yaml

    from capsim.load import load_scenario
    from capsim.planning.whatif import whatif
    from capsim.report.whatif import format_whatif

    from .test_autoscale_llm import chat_day

    data = chat_day(rate=6.0, period=1200.0)
    data["candidates"]["gpus"] = ["h100-sxm"]
    data["whatif"] = {
        "gpu": "h100-sxm",
        "precision": "fp8",
        "policies": [{"name": "fixed-3", "kind": "fixed", "replicas": 3}],
    }
    data["capacity"] = yaml.safe_load(
        "{provider: gcp, base: {replicas: 1, tier: on_demand}, burst: spot, notice_s: 30,"
        " interruptions: {kind: poisson, rate_per_hour: 12}, drain_on_notice: false}"
    )
    r = whatif(load_scenario(write_scenario(data)), load_catalog())
    p = r["fixed-3"]
    h = 1200.0 / 3600
    for run in p.runs:
        sc = run.scalars
        assert sc["cost_base_usd"] == pytest.approx(1 * h * 10.98)
        burst_h = sc["gpu_hours"] - h
        assert sc["cost_burst_usd"] == pytest.approx(burst_h * 6.571)
        assert sc["cost_usd"] == pytest.approx(sc["cost_base_usd"] + sc["cost_burst_usd"])
        assert sc["on_demand_cost_usd"] == pytest.approx(sc["gpu_hours"] * 10.98)
    assert p.ci("interruptions").mean > 0 and p.ci("requeued").mean > 0
    assert p.ci("served").mean == p.ci("arrived").mean  # re-queued, still all served
    text = format_whatif(r)
    assert "spot burst; 12 interruptions per spot replica-hour, 30 s notice" in text
    assert "requests re-queued" in text and "($10.98/GPU-h)" in text
    frame = r.frame()
    assert {"interruptions", "requeued", "cost_base_usd", "saving_vs_on_demand_usd"} <= set(frame)


def test_whatif_refuses_a_tier_the_catalog_lacks_before_running(write_scenario):
    from click.testing import CliRunner

    from capsim.cli import main

    from .test_autoscale_llm import chat_day

    data = chat_day(period=600.0)
    data["capacity"] = {"burst": "spot", "interruptions": {"kind": "poisson", "rate_per_hour": 1}}
    out = CliRunner().invoke(main, ["whatif", str(write_scenario(data)), "--gpu", "l4"])
    assert out.exit_code == 2
    assert "capacity.burst: no spot price for l4 at aws in the catalog" in out.output


def test_scaling_down_never_goes_below_the_base_even_when_a_base_replica_is_retired():
    """The LLM engine retires the least loaded replica, which may be a base one: a burst
    replica takes its place, so the base count and the held count stay at the base."""
    from .test_autoscale_engine import Script

    arr, p, o = _poisson(3000, 20.0, seed=5)
    f = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    plan = CapacityPlan(base=2, spot=True, seed=1)
    lc = run_lifecycle(f, Script([(0, 4), (60, 0)]), lambda: 5.0, horizon=float(arr[-1]),
                       initial=4, capacity=plan)  # fmt: skip
    held = np.isnan(lc.released)
    assert held.sum() == 2  # asked for 0 after 60 s: the base stays
    assert f.result(float(arr[-1])).served.all()
