"""Traffic an SLO cannot be judged on is refused with the reason (issue 9), never reported as
p99 = inf ("cannot meet the target with up to 32 replicas") or a TPOT of 0 that "meets"."""

from __future__ import annotations

import numpy as np
import pytest
import yaml

from capsim.cli import main
from tests.conftest import ROOT, small_fixed_scenario


def _llm(output_median: float, output_sigma: float, rate: float = 2.0, **slo) -> dict:
    d = yaml.safe_load((ROOT / "scenarios" / "chatbot.yaml").read_text())
    d["traffic"] = {
        "arrivals": {"kind": "poisson", "rate_rps": rate},
        "horizon_s": 60,
        "tokens": {
            "kind": "lognormal",
            "prompt_median": 200,
            "prompt_sigma": 0.5,
            "output_median": output_median,
            "output_sigma": output_sigma,
        },
    }
    d["slo"] = {"percentile": 99, **slo}
    d["candidates"] = {"gpus": ["h100-sxm"], "precisions": ["fp16"], "max_replicas": 4}
    d["simulation"] = {"replications": 2, "max_replications": 2, "seed": 1}
    return d


SIM = ["--gpu", "h100-sxm", "--precision", "fp16", "--replicas", "1"]


@pytest.mark.parametrize("cmd", ["validate", "plan", "simulate"])
def test_tpot_target_on_single_token_outputs_is_refused_with_the_reason(
    runner, write_scenario, cmd
):
    p = write_scenario(_llm(1, 0.0, ttft_ms=2000, tpot_ms=100))
    res = runner.invoke(
        main, [cmd, str(p), *(SIM if cmd == "simulate" else ["-q"] * (cmd == "plan"))]
    )
    assert res.exit_code == 2, res.output
    assert str(p) in res.output and "slo.tpot_ms" in res.output
    assert "TPOT" in res.output and "undefined" in res.output


def test_without_a_tpot_target_single_token_outputs_are_judged_on_the_rest(runner, write_scenario):
    p = write_scenario(_llm(1, 0.0, ttft_ms=2000))
    res = runner.invoke(main, ["simulate", str(p), *SIM])
    assert res.exit_code == 0, res.output
    assert "ttft" in res.output and "meets" in res.output
    assert "undefined" in res.output and " inf " not in res.output  # TPOT said, not faked


def test_tpot_without_samples_is_nan_not_zero(write_scenario):
    """No TPOT samples give NaN (the interval over replications leaves such a run out; a
    made-up 0 would bias it low and "meet" any target)."""
    from capsim.evaluate import Config, simulate
    from capsim.load import load_scenario

    s = load_scenario(write_scenario(_llm(1, 0.0, ttft_ms=2000)))
    ev = simulate(s, Config("h100-sxm", "fp16", 1))
    assert np.isnan(ev.summary.q("tpot", 99.0).mean)
    assert np.isfinite(ev.summary.q("ttft", 99.0).mean) and ev.feasible


@pytest.mark.parametrize("cmd", ["validate", "plan", "simulate"])
def test_zero_requests_in_the_horizon_is_refused_with_the_expected_count(
    runner, write_scenario, cmd
):
    data = small_fixed_scenario()
    data["traffic"]["arrivals"]["rate_rps"] = 3e-7
    p = write_scenario(data)
    args = [cmd, str(p)] + (
        ["--gpu", "t4", "--precision", "fp16", "--replicas", "1"] if cmd == "simulate" else []
    )
    res = runner.invoke(main, args)
    assert res.exit_code == 2, res.output
    assert "no requests arrive in the horizon (expected 3.6e-05" in res.output
    assert str(p) in res.output and "traffic" in res.output
    assert "cannot meet" not in res.output and "inf" not in res.output
