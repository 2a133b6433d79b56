"""``capsim whatif`` and autoscaled ``capsim plan``: the daily-cycle saving, outputs, bad input."""

from __future__ import annotations

import json

import pytest

from capsim.cli import main
from capsim.load import load_catalog, load_scenario


def day_scenario(rate: float = 60.0, period: float = 14400.0, **over) -> dict:
    """A compressed 'day' (4 h) of a slow model: several replicas at the peak, one or two at
    the trough; 60 s cold starts."""
    s = {
        "name": "small-day",
        "model": "bge-large-en",
        "sequence_length": 256,  # the card's default is its 512-token maximum
        "traffic": {
            "arrivals": {
                "kind": "poisson",
                "rate_rps": rate,
                "pattern": {"kind": "diurnal", "peak_to_trough": 4, "period_s": period},
            },
            "horizon_s": period,
        },
        "slo": {"percentile": 99, "latency_ms": 800},
        "fleet": {"batching": {"kind": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 5}},
        "candidates": {"gpus": ["t4"], "precisions": ["fp32"], "max_replicas": 12},
        "simulation": {"replications": 2, "max_replications": 4, "seed": 5, "compress_to_s": 240},
        "autoscaling": {
            "kind": "hpa",
            "target": 80,
            "max_replicas": 12,
            "cold_start": {"node": 60, "image_pull": 0, "weight_load": 0, "warmup": 0},
        },
        "whatif": {
            "policies": [
                {"name": "fixed-peak", "kind": "fixed"},
                {"name": "hpa", "kind": "hpa", "target": 80, "max_replicas": 12},
            ]
        },
    }
    s.update(over)
    return s


def test_daily_cycle_autoscaled_fleet_is_cheaper_than_the_peak_fleet(write_scenario):
    from capsim.planning.whatif import whatif
    from capsim.report.whatif import format_whatif

    s = load_scenario(write_scenario(day_scenario()))
    r = whatif(s, load_catalog())
    fixed, hpa = r["fixed-peak"], r["hpa"]
    assert fixed.meets_slo and hpa.meets_slo
    assert fixed.fixed_replicas is not None and fixed.fixed_replicas >= 3
    # measured, not assumed: the paired saving over the horizon is positive with confidence
    assert hpa.saving is not None and hpa.saving.low > 0
    assert hpa.ci("cost_usd").mean < fixed.ci("cost_usd").mean
    assert 0 < hpa.saving_share < 1
    # the autoscaled fleet went below the peak count at the trough and paid for cold starts
    assert hpa.ci("replicas_avg").mean < fixed.fixed_replicas
    assert hpa.ci("cold_starts").mean >= 1
    assert hpa.ci("provisioning_cost_usd").mean > 0
    assert fixed.ci("provisioning_cost_usd").mean == 0
    # the report shows the saving
    text = format_whatif(r)
    assert "saving" in text and "hpa" in text
    assert len(hpa.hourly_attainment) == 4
    tl = hpa.timeline
    assert {
        "offered_rps",
        "ready",
        "provisioning",
        "draining",
        "busy",
        "queue",
        "p99_latency_s",
    } <= set(tl)


def test_whatif_cli_outputs(runner, write_scenario, tmp_path):
    p = write_scenario(day_scenario(rate=40.0, period=3600.0))
    out = tmp_path / "res"
    res = runner.invoke(
        main, ["whatif", str(p), "--format", "json", "--out", str(out), "-q", "-j", "1"]
    )
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    names = [x["name"] for x in data["policies"]]
    assert names == ["fixed-peak", "hpa"]
    assert data["baseline"] == "fixed-peak"
    pol = data["policies"][1]
    for key in ("p99_ms", "hourly_attainment", "scalars", "saving_usd"):
        assert key in pol
    for key in (
        "attainment",
        "violation_s",
        "rejected",
        "gpu_hours",
        "cost_usd",
        "replicas_avg",
        "replicas_peak",
        "idle_share",
    ):
        assert key in pol["scalars"]
    files = {f.name for f in out.iterdir()}
    assert {
        "whatif.json",
        "whatif.csv",
        "hourly_attainment.csv",
        "latency_cdf.png",
        "timeline_hpa.png",
        "timeline_fixed-peak.png",
        "timeline_hpa.csv",
    } <= files


def test_whatif_policy_option_and_table(runner, write_scenario):
    p = write_scenario(day_scenario(rate=40.0, period=3600.0))
    res = runner.invoke(
        main,
        [
            "whatif",
            str(p),
            "-q",
            "-j",
            "1",
            "--policy",
            "fixed:replicas=2",
            "--policy",
            "kpa:target=4,max_replicas=6,name=knative",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "knative" in res.output and "saving $ vs fixed" in res.output


def _bad(runner, args, *needles):
    res = runner.invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for n in needles:
        assert n in res.output, res.output
    return res.output


def test_whatif_bad_policy_option(runner, write_scenario):
    p = write_scenario(day_scenario(rate=40.0, period=3600.0))
    _bad(runner, ["whatif", str(p), "--policy", "hpx:target=1"], "--policy", "hpx", "hpa")
    _bad(runner, ["whatif", str(p), "--policy", "hpa:target=-5"], "--policy", "target")
    _bad(runner, ["whatif", str(p), "--policy", "hpa:target"], "--policy", "key=value")


def test_whatif_bad_scenario_fields(runner, write_scenario):
    data = day_scenario()
    data["autoscaling"]["target"] = "high"
    p = write_scenario(data)
    _bad(runner, ["whatif", str(p)], str(p), "autoscaling.target")
    data = day_scenario()
    data["autoscaling"]["cold_start"]["node"] = {"kind": "lognormal", "median": 5}
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "autoscaling.cold_start.node", "median")
    data = day_scenario()
    data["candidates"]["gpus"] = ["t4", "l4"]
    p = write_scenario(data)
    _bad(runner, ["whatif", str(p)], "whatif.gpu", "which GPU")
    data = day_scenario()
    data["whatif"]["policies"].append({"kind": "hpa", "target": 50, "name": "hpa"})
    p = write_scenario(data)
    _bad(runner, ["validate", str(p)], "unique")


def test_plan_tunes_the_policy_against_the_fixed_baseline(write_scenario):
    from capsim.planning.api import plan
    from capsim.report.text import format_plan, plan_dict

    s = load_scenario(write_scenario(day_scenario(rate=40.0)))
    r = plan(s, load_catalog())
    ap = r.autoscaled
    assert ap is not None and ap.candidates
    c = ap.candidates[0]
    assert c.peak_replicas == r.recommendation.best.config.replicas
    assert c.baseline_usd == pytest.approx(r.recommendation.best.usd_per_hour * 4)
    assert c.trials and c.best is not None
    assert c.best.feasible
    assert c.best.cost <= c.baseline_usd * 1.01
    assert c.best.spec.max_replicas >= c.best.spec.min_replicas
    text = format_plan(r)
    assert "Autoscaled" in text and "fixed for peak" in text
    assert plan_dict(r)["autoscaled"]["candidates"][0]["baseline"]["replicas"] == c.peak_replicas


def test_whatif_bad_config_options(runner, write_scenario):
    p = write_scenario(day_scenario(rate=40.0, period=3600.0))
    _bad(runner, ["whatif", str(p), "--precision", "fp7"], "--precision", "fp7", "fp16")
    _bad(runner, ["whatif", str(p), "--gpu", "t5"], "--gpu", "t5", "t4")
    _bad(runner, ["whatif", str(p), "--policy", "fixed:replicas=-3"], "--policy", "replicas")


def test_initial_replicas_follow_the_replayed_trace(write_scenario, tmp_path):
    """A trace sped up 4x offers 4x the rate in its first minute: the initial fleet sizes for
    the replayed stream, not the raw file."""
    from capsim.evaluate import stream_for
    from capsim.planning.whatif_run import rate_at_start
    from capsim.workload.streams import real_time

    trace = tmp_path / "t.csv"
    trace.write_text("TIMESTAMP\n" + "\n".join(f"{t / 10:.1f}" for t in range(3000)) + "\n")
    data = day_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": str(trace), "speedup": 4}}
    s = load_scenario(write_scenario(data))
    stream = stream_for(real_time(s), 0)
    assert rate_at_start(s, stream.arrival) == pytest.approx(40.0, rel=0.02)  # 10 req/s x 4


def test_compressed_screen_is_the_same_day_faster(write_scenario):
    """A day compressed 4x holds a quarter of the requests, its controller and cold starts run
    4x faster, and its cost (scaled back to the real horizon) and replica count stay close to
    the real-time day's; a replayed trace cannot be compressed (real-time screens)."""
    from capsim.planning.autoscaled import screen_compression
    from capsim.planning.whatif import evaluate_policy
    from capsim.planning.whatif_run import screen_setup

    s = load_scenario(write_scenario(day_scenario()))
    cat = load_catalog()
    _, spec, cs = screen_setup(s, s.autoscaling, 4.0)
    assert spec.sync_period_s == s.autoscaling.sync_period_s / 4
    assert cs.node.seconds == 15.0
    real = evaluate_policy(s, cat, "t4", "fp32", 1, s.autoscaling, replications=1)
    fast = evaluate_policy(s, cat, "t4", "fp32", 1, s.autoscaling, replications=1, compression=4.0)
    assert fast.compression == 4.0 and "compressed 4x" in fast.verdict
    n_real, n_fast = real.runs[0].scalars["arrived"], fast.runs[0].scalars["arrived"]
    assert n_fast == pytest.approx(n_real / 4, rel=0.05)
    assert fast.ci("cost_usd").mean == pytest.approx(real.ci("cost_usd").mean, rel=0.15)
    assert fast.ci("replicas_avg").mean == pytest.approx(real.ci("replicas_avg").mean, rel=0.15)
    data = day_scenario()
    data["traffic"] = {"arrivals": {"kind": "trace", "path": "traces/x.csv"}}
    (write_scenario(data).parent / "traces").mkdir(exist_ok=True)
    trace = write_scenario(data).parent / "traces" / "x.csv"
    trace.write_text("TIMESTAMP\n" + "\n".join(str(t) for t in range(600)) + "\n")
    assert screen_compression(load_scenario(write_scenario(data)), s.autoscaling) == 1.0
