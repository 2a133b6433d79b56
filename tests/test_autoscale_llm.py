"""Autoscaling the continuous-batching LLM engine: the engine side, then what-if and plan."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from capsim.cli import main
from capsim.load import load_catalog, load_scenario
from capsim.sim.lifecycle import ScalableFleet, run_lifecycle
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_fleet import ScalableLLMFleet
from capsim.sim.llm_types import EngineLimits
from capsim.sim.policies import make_policy
from capsim.spec.autoscaling import FixedSpec

from .test_llm_engine import ConstTimer, LinearTimer, _poisson

LIMITS = EngineLimits(kv_blocks=4000, block_size=16, max_num_batched_tokens=512, max_num_seqs=32)


def _fixed(fleet: ScalableLLMFleet, n: int) -> None:
    fleet.sync(0.0)
    for _ in range(n):
        fleet.add_replica(0.0)
    fleet.sync(math.inf)


# --------------------------------------------------------------------------- the engine side
@pytest.mark.parametrize("router", ["round_robin", "least_outstanding_requests"])
def test_a_fixed_count_gives_the_static_engines_times(router):
    arr, p, o = _poisson(3000, 30.0, seed=4)
    ref = run_llm(arr, p, o, LinearTimer(), LIMITS, 3, router=router, static_routing=False)
    f = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS, router=router)
    assert isinstance(f, ScalableFleet)
    _fixed(f, 3)
    got = f.result(ref.horizon)
    np.testing.assert_array_equal(got.replica, ref.replica)
    np.testing.assert_allclose(got.first_token, ref.first_token, rtol=0, atol=1e-9)
    np.testing.assert_allclose(got.finish, ref.finish, rtol=0, atol=1e-9)
    assert got.iterations == ref.iterations


def test_syncing_in_steps_gives_the_run_of_one_sync():
    """The engine runs to each sync time (some exactly at an arrival) and on from there: the
    same event order, so the same run as one sync to the end."""
    arr, p, o = _poisson(2000, 20.0, seed=5)
    whole = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    _fixed(whole, 2)
    steps = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    steps.sync(0.0)
    for _ in range(2):
        steps.add_replica(0.0)
    times = np.sort(np.concatenate([np.arange(0.0, float(arr[-1]) + 5.0, 0.37), arr[::50]]))
    for t in times.tolist():
        steps.sync(t)
    steps.sync(math.inf)
    a, b = whole.result(float(arr[-1])), steps.result(float(arr[-1]))
    for name in ("replica", "admitted", "first_token", "finish"):
        np.testing.assert_array_equal(getattr(b, name), getattr(a, name))
    assert (b.iterations, b.events) == (a.iterations, a.events)


def test_counters_are_the_integrals_of_the_per_request_arrays():
    arr, p, o = _poisson(2000, 20.0, seed=7)
    f = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    _fixed(f, 2)
    res = f.result(float(arr[-1]))
    t = float(res.finish.max()) + 1.0
    smp = f.sample(t)
    assert smp.arrived == len(arr) and smp.queue == 0 and smp.in_service == 0
    assert smp.request_seconds == pytest.approx(float(np.sum(res.finish - res.arrival)))
    assert smp.queue_seconds == pytest.approx(float(np.sum(res.admitted - res.arrival)))
    assert smp.busy_seconds == pytest.approx(res.busy_prefill_s.sum() + res.busy_decode_s.sum())
    # Little's law over the run: mean number in system = arrival rate x mean time in system
    n_bar = smp.request_seconds / t
    assert n_bar == pytest.approx(len(arr) / t * float(np.mean(res.e2e)))


def test_requests_wait_for_the_first_replica_and_go_to_it():
    arr = np.linspace(0.0, 4.0, 9)
    p, o = np.full(9, 32), np.full(9, 4)
    f = ScalableLLMFleet(arr, p, o, ConstTimer(0.01), EngineLimits())
    f.sync(5.0)
    smp = f.sample(5.0)
    assert smp.queue == 9 and smp.busy == 0
    assert smp.oldest_wait == pytest.approx(5.0)
    assert smp.queue_seconds == pytest.approx(float(np.sum(5.0 - arr)))
    f.add_replica(5.0)
    f.sync(math.inf)
    res = f.result(5.0)
    assert (res.admitted >= 5.0).all() and (res.replica == 0).all()
    assert res.ttft.min() >= 1.0 - 1e-9  # the last one arrived at 4.0 and waited until 5.0


def test_a_retired_replica_drains_and_is_released_when_its_last_request_finishes():
    arr, p, o = _poisson(400, 20.0, seed=2)
    o = o + 40  # long enough that a replica is busy when it is retired
    f = ScalableLLMFleet(arr, p, o, ConstTimer(0.02), EngineLimits(), router="round_robin")
    f.sync(0.0)
    a, b = f.add_replica(0.0), f.add_replica(0.0)
    t_retire = float(arr[200])
    f.sync(t_retire)
    released: list[tuple[int, float]] = []
    rid = f.retire_replica(t_retire, lambda i, when: released.append((i, when)))
    assert rid in (a, b)
    assert not released, "a busy replica drains; it is not released at once"
    f.sync(math.inf)
    res = f.result(float(arr[-1]))
    mine = res.replica == rid
    assert not (mine & (res.arrival > t_retire)).any(), "no new work after the retirement"
    assert released == [(rid, pytest.approx(float(res.finish[mine].max())))]
    assert res.served.all()
    # retiring the last one leaves nobody to route to: later arrivals would be buffered
    assert f.retire_replica(res.end_time, lambda i, w: released.append((i, w))) is not None
    assert f.retire_replica(res.end_time, lambda i, w: None) is None


def test_the_lifecycle_drives_the_llm_fleet():
    arr, p, o = _poisson(3000, 10.0, seed=3)
    f = ScalableLLMFleet(arr, p, o, LinearTimer(), LIMITS)
    policy = make_policy(FixedSpec(kind="fixed", replicas=2), max_replicas=4)
    lc = run_lifecycle(f, policy, lambda: 30.0, horizon=float(arr[-1]), initial=2)
    res = f.result(float(arr[-1]))
    assert res.served.all() and not lc.unstable
    assert len(lc.requested) == 2 and np.isnan(lc.released).all()


# --------------------------------------------------------------------------- what-if and plan
def chat_day(rate: float = 8.0, period: float = 7200.0, **over) -> dict:
    """A compressed 'day' (2 h) of Llama-3.1-8B chat on L4 fp8: several replicas at the peak,
    two at the trough; 60 s cold starts."""
    s = {
        "name": "chat-day",
        "model": "llama-3.1-8b",
        "traffic": {
            "arrivals": {
                "kind": "poisson",
                "rate_rps": rate,
                "pattern": {"kind": "diurnal", "peak_to_trough": 4, "period_s": period},
            },
            "horizon_s": period,
            "tokens": {
                "kind": "lognormal",
                "prompt_median": 800,
                "prompt_sigma": 0.6,
                "output_median": 200,
                "output_sigma": 0.5,
                "prompt_max": 3000,
                "output_max": 1000,
            },
        },
        "slo": {"percentile": 99, "ttft_ms": 2000, "tpot_ms": 100},
        "fleet": {
            "batching": {
                "kind": "continuous",
                "engine": {"max_model_len": 4096, "kv_cache_dtype": "fp8"},
            },
            "router": "least_outstanding_requests",
        },
        "candidates": {"gpus": ["l4"], "precisions": ["fp8"], "max_replicas": 12},
        "simulation": {"replications": 2, "max_replications": 3, "seed": 8, "compress_to_s": 240},
        "autoscaling": {
            "kind": "hpa",
            "metric": "inflight",
            "target": 40,
            "min_replicas": 1,
            "max_replicas": 12,
            "cold_start": {"node": 60, "image_pull": 0, "weight_load": 0, "warmup": 0},
        },
        "whatif": {
            "policies": [
                {"name": "fixed-peak", "kind": "fixed"},
                {"name": "hpa", "kind": "hpa", "metric": "inflight", "target": 40},
            ]
        },
    }
    s.update(over)
    return s


def test_llm_whatif_autoscaled_fleet_is_cheaper_and_meets_ttft_and_tpot(write_scenario):
    from capsim.planning.whatif import whatif
    from capsim.report.whatif import format_whatif

    s = load_scenario(write_scenario(chat_day()))
    r = whatif(s, load_catalog())
    fixed, hpa = r["fixed-peak"], r["hpa"]
    assert set(hpa.targets) == {"ttft", "tpot"}
    assert fixed.meets_slo and hpa.meets_slo, (fixed.verdict, hpa.verdict)
    assert fixed.fixed_replicas is not None and fixed.fixed_replicas >= 3
    assert hpa.saving is not None and hpa.saving.low > 0
    assert hpa.ci("replicas_avg").mean < fixed.fixed_replicas
    assert hpa.ci("cold_starts").mean >= 1 and hpa.ci("provisioning_cost_usd").mean > 0
    for m in ("ttft", "tpot"):
        c = hpa.q(metric=m)
        assert 0 < c.low <= c.mean <= c.high <= hpa.targets[m]
    assert hpa.ci("usd_per_1m_output_tokens").mean > 0
    assert hpa.ci("output_tokens").mean == pytest.approx(fixed.ci("output_tokens").mean)
    text = format_whatif(r)
    assert "p99 ttft ms [95% CI]" in text and "p99 tpot ms [95% CI]" in text
    assert "ttft <= 2000 ms, tpot <= 100 ms" in text
    tl = hpa.timeline
    assert {"p99_ttft_s", "p99_tpot_s", "busy", "queue", "ready"} <= set(tl)
    # busy replicas never exceed those that serve (ready + draining), window by window
    assert (tl["busy"] <= tl["ready"] + tl["draining"] + 1e-6).all()


def test_llm_whatif_cli_json_and_files(runner, write_scenario, tmp_path):
    p = write_scenario(chat_day(rate=4.0, period=3600.0))
    out = tmp_path / "res"
    res = runner.invoke(
        main,
        ["whatif", str(p), "--format", "json", "--out", str(out), "-q", "-j", "1",
         "--replications", "2"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    pol = data["policies"][1]
    assert set(pol["p99_ms"]) == {"ttft", "tpot"}
    assert pol["binding_metric"] in ("ttft", "tpot")
    files = {f.name for f in out.iterdir()}
    assert {"latency_cdf_ttft.png", "latency_cdf_tpot.png", "timeline_hpa.png"} <= files


def test_llm_plan_tunes_the_policy(write_scenario):
    from capsim.planning.api import plan
    from capsim.report.text import format_plan

    s = load_scenario(write_scenario(chat_day()))
    r = plan(s, load_catalog(), jobs=2)
    ap = r.autoscaled
    assert ap is not None and not ap.notes
    c = ap.candidates[0]
    assert c.peak_replicas == r.recommendation.best.config.replicas
    assert c.best is not None, c.reason
    assert c.best.result.meets_slo and c.best.cost < c.baseline_usd
    assert ap.recommendation is c
    assert "Autoscaled recommendation" in format_plan(r)


def test_plan_says_when_autoscaling_does_not_pay(write_scenario):
    """An hour-long 'day' with a 30-minute cold start: a replica asked for at the ramp is ready
    after the peak, so only a floor as high as the peak meets the SLO, and that is no saving.
    The plan says so instead of recommending the policy."""
    from capsim.planning.api import plan
    from capsim.report.text import format_plan

    data = chat_day(rate=4.0, period=3600.0)
    data["autoscaling"]["cold_start"]["node"] = 1800
    s = load_scenario(write_scenario(data))
    r = plan(s, load_catalog())
    ap = r.autoscaled
    c = ap.candidates[0]
    assert ap.recommendation is None
    if c.best is not None:  # a setting met the SLO, but at no less than the fixed fleet
        assert c.best.cost >= c.baseline_usd and "does not pay" in c.reason
    else:
        assert c.reason.startswith("no setting met the SLO")  # in the screen or in real time
    text = format_plan(r)
    assert "no autoscaled setting beat the fixed fleet" in text
    assert "Autoscaled recommendation" not in text
