"""Mixed fleets: the MILP allocation, exact size splits, merged percentiles, the scenarios."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.analysis.stats import quantiles
from capsim.planning.mixed import allocate
from capsim.planning.mixed_sim import merge_series
from capsim.workload.arrivals import RequestStream
from capsim.workload.split import buckets, least_work, substream


def test_milp_matches_a_hand_worked_case():
    # two buckets: 30 req/s short, 4 req/s long. Card A ($1/h): 10 short/s, 1 long/s per
    # replica; card B ($4/h): 40 short/s, 4 long/s. By hand: all on A = 3 + 4 = 7 -> $7;
    # all on B = 0.75 + 1 = 1.75 -> 2 x $4 = $8; short on A (3 x $1) + long on B (1 x $4) = $7;
    # short on B + long on A: 1 x $4 + 4 x $1 = $8. Best: all on A ($7) tied with the mix; with
    # A's long capacity 0.9, all-on-A needs ceil(3 + 4.44) = 8 -> $8, so the mix ($7) wins alone.
    load = np.array([30.0, 4.0])
    cap = np.array([[10.0, 0.9], [40.0, 4.0]])
    price = np.array([1.0, 4.0])
    (assign, n, usd), *_ = allocate(load, cap, price)
    assert assign == ((0, 0), (1, 1))
    assert n == {0: 3, 1: 1}
    assert usd == pytest.approx(7.0)


def test_milp_next_proposals_are_in_cost_order_and_distinct():
    load = np.array([30.0, 4.0])
    cap = np.array([[10.0, 0.9], [40.0, 4.0]])
    out = allocate(load, cap, np.array([1.0, 4.0]), k=4)
    costs = [u for _, _, u in out]
    assert costs == sorted(costs)
    assert len({a for a, _, _ in out}) == len(out) == 4
    # all on B: 30/40 + 4/4 = 1.75 -> 2 replicas, $8
    assert (((0, 1), (1, 1)), {1: 2}, 8.0) in out


def test_milp_never_gives_a_bucket_to_a_card_that_cannot_serve_it():
    out = allocate(np.array([5.0, 5.0]), np.array([[100.0, 0.0], [1.0, 1.0]]), np.array([1, 50.0]))
    assign, n, usd = out[0]
    assert assign == ((0, 0), (1, 1)) and n == {0: 1, 1: 5} and usd == 251.0


def test_size_thresholds_split_exactly():
    rng = np.random.default_rng(1)
    n = 10_000
    p, o = rng.integers(1, 5000, n), rng.integers(1, 1000, n)
    st = RequestStream(np.sort(rng.uniform(0, 100, n)), 100.0, p, o)
    th = [1000, 3000]
    b = buckets(st, th)
    size = p + o
    assert np.array_equal(b == 0, size < 1000)
    assert np.array_equal(b == 1, (size >= 1000) & (size < 3000))
    assert np.array_equal(b == 2, size >= 3000)
    parts = [substream(st, b == i) for i in range(3)]
    assert sum(len(x) for x in parts) == n  # every request in exactly one pool
    both = np.sort(np.concatenate([x.arrival for x in parts]))
    assert np.array_equal(both, st.arrival)
    for i, x in enumerate(parts):
        assert np.all(np.diff(x.arrival) >= 0)
        assert np.all(buckets(x, th) == i)


def test_merged_percentiles_equal_percentiles_over_the_union():
    rng = np.random.default_rng(2)
    a, b = rng.exponential(1.0, 3000), rng.exponential(5.0, 700)  # two pools, unlike speeds
    merged = merge_series([{"e2e": a}, {"e2e": b}])["e2e"]
    union = np.concatenate([a, b])
    for p in (50.0, 99.0):
        assert quantiles(merged, [p])[0] == pytest.approx(np.percentile(union, p))
    # and not the average of the pools' percentiles
    avg = (np.percentile(a, 99) + np.percentile(b, 99)) / 2
    assert abs(quantiles(merged, [99.0])[0] - avg) > 0.5


def _plan(name: str):
    from capsim.load import load_scenario
    from capsim.planning.api import plan

    return plan(load_scenario(f"scenarios/{name}.yaml"))


def test_mixed_fleet_scenario_a_mix_wins():
    r = _plan("mixed_fleet")
    m = r.mixed
    assert m is not None and m.best is not None and m.best.best is not None
    ev = m.best.best
    assert ev.feasible and len({p.candidate.gpu for p in ev.pools}) == 2
    assert r.recommendation is not None and r.recommendation.best is not None
    single = min(x.best.usd_per_hour for x in r.feasible if x.best is not None)
    assert m.single_usd == single
    assert ev.usd_per_hour < single  # the mix beats the best single card type
    assert m.best_usd is not None and m.best_usd <= ev.usd_per_hour
    assert m.saving == pytest.approx(1 - m.best_usd / single)
    lw = m.least_work  # the same cards behind a least-outstanding-work router
    assert lw is not None and lw.feasible and lw.usd_per_hour < single
    assert {p.candidate for p in lw.pools} == {p.candidate for p in ev.pools}
    assert all(c.ci.high <= c.target_s for c in lw.checks)
    # each fleet-wide check's upper limit meets its target (CI over replications)
    assert all(c.ci.high <= c.target_s for c in ev.checks)
    assert ev.summary.replications == r.scenario.simulation.replications
    from capsim.report.text import format_plan

    assert "The best mix beats the best single card type" in format_plan(r)


def test_mixed_fleet_no_win_scenario_says_no_mix_wins():
    r = _plan("mixed_fleet_no_win")
    m = r.mixed
    assert m is not None and m.single_usd is not None
    best = m.best.best.usd_per_hour if m.best is not None and m.best.best is not None else None
    assert best is None or best >= m.single_usd
    assert m.saving is None or m.saving <= 0
    from capsim.report.text import format_plan

    assert "No mix beats the best single card type" in format_plan(r) or (
        "No mix meets the SLO" in format_plan(r)
    )


def test_mix_on_a_fixed_shape_model_is_refused(tmp_path):
    from capsim.errors import InputError
    from capsim.load import load_scenario

    f = tmp_path / "bad.yaml"
    f.write_text(
        "name: x\nmodel: bge-large-en\n"
        "traffic: {arrivals: {kind: poisson, rate_rps: 5}, horizon_s: 60}\n"
        "slo: {percentile: 99, latency_ms: 100}\n"
        "candidates: {gpus: [l4], precisions: [fp16]}\nmix: {size_thresholds: [100]}\n"
    )
    with pytest.raises(InputError, match="mix"):
        load_scenario(str(f))


def test_size_thresholds_must_increase():
    from pydantic import ValidationError

    from capsim.spec.scenario import Mix

    with pytest.raises(ValidationError):
        Mix(size_thresholds=[3000, 1000])


def test_least_work_routing_shares_load_by_speed():
    # a hand-worked start: pool 1 takes twice as long per token; both idle at t = 0.
    # r0 -> 0 (10 < 20); r1: 20 vs 20, a tie -> 0; r2: 30 vs 20 -> 1; after 100 s both drain.
    arr = np.array([0.0, 0.0, 0.0, 100.0])
    assert least_work(arr, np.array([10, 10, 10, 10]), [1.0, 2.0]).tolist() == [0, 0, 1, 0]
    # kept busy, each pool gets a share of the work proportional to its speed
    rng = np.random.default_rng(3)
    n = 20_000
    arr = np.sort(rng.uniform(0, 1000, n))
    size = rng.integers(100, 4000, n)
    route = least_work(arr, size, [1 / 30_000, 1 / 10_000])  # 30k and 10k tokens/s
    share = size[route == 0].sum() / size.sum()
    assert share == pytest.approx(0.75, abs=0.03)


def test_mix_with_shared_prefix_traffic_is_refused():
    from capsim.load import load_scenario
    from capsim.spec.scenario import Scenario

    d = load_scenario("scenarios/mixed_fleet.yaml").model_dump()
    d["traffic"]["system_prompts"] = {"lengths": [500, 800]}
    with pytest.raises(ValueError, match="shared-prefix"):
        Scenario.model_validate(d)
