"""What-if on a disaggregated fleet: each pool under its own controller (issue 14, item 4)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import ValidationError

from capsim.analysis.cost import price_per_gpu_hour
from capsim.cli import main
from capsim.errors import InputError
from capsim.load import load_catalog, load_scenario
from capsim.planning.disagg_sim import DisaggFleet, kv_link, run_fleet
from capsim.planning.static import Candidate
from capsim.planning.whatif_config import policy_rows, serving_mode
from capsim.planning.whatif_disagg import DisaggSetup, disagg_setup, run_disagg_policy
from capsim.spec.autoscaling import FixedSpec, HPASpec, SplitSpec, WhatIf
from capsim.workload.streams import real_time

H100 = Candidate("h100-sxm", "fp8")
FIXED = FixedSpec(kind="fixed", replicas="peak")


@pytest.fixture(scope="module")
def cat():
    return load_catalog()


@pytest.fixture(scope="module")
def minute():
    """chatbot_disagg.yaml's traffic (32 req/s, 4k-token prompts) for one minute."""
    s = load_scenario("scenarios/chatbot_disagg.yaml")
    return s.model_copy(update={"traffic": s.traffic.model_copy(update={"horizon_s": 60.0})})


def test_fixed_pools_under_the_lifecycle_equal_the_disaggregated_engine(cat, minute):
    """A fixed 3P + 4D fleet run through the autoscaler's lifecycle (replicas ready at t = 0)
    gives every request the times of the fixed-fleet engine on the same stream, and is billed
    7 GPUs x the H100's price x the horizon."""
    setup = DisaggSetup(H100, H100, "same_node", (3, 4))
    run = run_disagg_policy(minute, cat, setup, FIXED, 0, label="fixed", window_s=30)
    f = DisaggFleet(H100, 3, H100, 4)
    _, res = run_fleet(real_time(minute), cat, f, kv_link(cat, f, "same_node"), 0)
    for m in ("ttft", "tpot"):
        x = getattr(res, m)[res.served]
        assert run.quantiles[m][99] == pytest.approx(np.percentile(x[~np.isnan(x)], 99), rel=1e-12)
    price = price_per_gpu_hour(cat["h100-sxm"], minute.candidates.price_provider).usd_per_hour
    assert run.scalars["cost_usd"] == pytest.approx(7 * price * 60 / 3600)
    assert run.scalars["prefill_replicas_avg"] == pytest.approx(3.0)
    assert run.scalars["decode_replicas_avg"] == pytest.approx(4.0)
    moved = res.transfer_s[~np.isnan(res.transfer_s)]
    assert run.scalars["kv_transfer_p99_ms"] == pytest.approx(np.percentile(moved, 99) * 1000)


def test_a_split_policy_gives_each_pool_its_own_spec(cat, minute):
    """split: 2 fixed prefill replicas and 5 fixed decode replicas, whatever the other pool."""
    split = SplitSpec(
        kind="split",
        prefill=FixedSpec(kind="fixed", replicas=2),
        decode=FixedSpec(kind="fixed", replicas=5),
    )
    run = run_disagg_policy(
        minute, cat, DisaggSetup(H100, H100, "same_node"), split, 0, label="s", window_s=30
    )
    assert run.scalars["prefill_replicas_avg"] == pytest.approx(2.0)
    assert run.scalars["decode_replicas_avg"] == pytest.approx(5.0)
    assert run.scalars["replicas_peak"] == pytest.approx(7.0)


def test_an_autoscaled_prefill_pool_under_a_cold_start_queues_its_ttft(cat, minute):
    """An HPA starting the prefill pool at one replica (and each new one minutes away) cannot
    follow 32 req/s of 4k-token prompts within a minute: TTFT grows far past the fixed pool's,
    and the decode pool's TPOT stays where it was."""
    hpa = SplitSpec(
        kind="split",
        prefill=HPASpec(kind="hpa", metric="rps", target=9, initial_replicas=1),
        decode=FixedSpec(kind="fixed", replicas=4),
    )
    setup = DisaggSetup(H100, H100, "same_node", (3, 4))
    auto = run_disagg_policy(minute, cat, setup, hpa, 0, label="a", window_s=30)
    fixed = run_disagg_policy(minute, cat, setup, FIXED, 0, label="f", window_s=30)
    assert auto.quantiles["ttft"][99] > 5 * fixed.quantiles["ttft"][99]
    assert auto.scalars["cold_starts"] >= 1
    assert auto.quantiles["tpot"][99] < 0.015


def test_split_policies_are_for_disaggregated_fleets_only():
    hpa = HPASpec(kind="hpa", metric="inflight", target=10)
    split = SplitSpec(kind="split", name="per-pool", prefill=hpa, decode=hpa)
    rows = policy_rows([hpa, split], "both")
    assert [(r.name, r.serving) for r in rows] == [
        ("hpa", "co-located"),
        ("hpa [P/D]", "disaggregated"),
        ("per-pool", "disaggregated"),
    ]
    with pytest.raises(InputError, match="disaggregated fleet only"):
        policy_rows([split], "colocated")
    with pytest.raises(ValidationError):  # a split inside a split is not a pool's policy
        WhatIf.model_validate(
            {"policies": [{"kind": "split", "prefill": {"kind": "split"}, "decode": hpa}]}
        )


def test_serving_defaults_to_both_with_a_disaggregation_section_and_refuses_fixed_shape():
    assert serving_mode(load_scenario("scenarios/chatbot_disagg.yaml"), None) == "both"
    assert serving_mode(load_scenario("scenarios/chatbot.yaml"), None) == "colocated"
    with pytest.raises(InputError, match="not a transformer"):
        serving_mode(load_scenario("scenarios/embedding_autoscaled.yaml"), "disaggregated")


@pytest.mark.parametrize(
    "args, message",
    [
        (["--decode-gpu", "nope"], "unknown GPU 'nope'"),
        (["--decode-gpu", "t4"], "decode pool (t4 fp8)"),
        (["--placement", "cross_node", "--decode-gpu", "h100-pcie"], "no interconnect.network"),
    ],
)
def test_cli_whatif_refuses_a_decode_pool_it_cannot_run(args, message):
    r = CliRunner().invoke(
        main, ["whatif", "scenarios/chatbot_disagg.yaml", "--serving", "disaggregated", *args]
    )
    assert r.exit_code == 2, r.output
    assert message in r.output
    assert "Traceback" not in r.output


def test_cli_whatif_runs_both_fleets_on_the_same_traffic(tmp_path):
    """chatbot_disagg.yaml's fixed-peak fleets: 8 co-located vs 3 prefill + 4 decode (the
    plan's answer), both within the SLO, the split one cheaper by one GPU's price."""
    r = CliRunner().invoke(
        main, ["whatif", "scenarios/chatbot_disagg.yaml", "--format", "json", "--quiet"]
    )
    assert r.exit_code == 0, r.output
    d = json.loads(r.output)
    by = {p["name"]: p for p in d["policies"]}
    colo, dis = by["fixed-peak"], by["fixed-peak [P/D]"]
    assert colo["fixed_replicas"] == 8 and dis["fixed_pools"] == {"prefill": 3, "decode": 4}
    assert colo["meets_slo"] and dis["meets_slo"] and dis["serving"] == "disaggregated"
    price = price_per_gpu_hour(load_catalog()["h100-sxm"], None).usd_per_hour
    assert dis["saving_usd"]["mean"] == pytest.approx(price * 240 / 3600)


def test_auto_placement_is_resolved_for_the_largest_fleet_a_policy_may_reach(cat, minute):
    """Fixed 3 + 4 H100s fit one 8-GPU node (NVLink); an autoscaler that may grow the pools to
    12 + 16 replicas cannot, so the KV cache goes over the NICs for every row."""
    fixed = SplitSpec(
        kind="split",
        prefill=FixedSpec(kind="fixed", replicas=3),
        decode=FixedSpec(kind="fixed", replicas=4),
    )
    auto = SplitSpec(
        kind="split",
        prefill=HPASpec(kind="hpa", metric="rps", target=8, max_replicas=12),
        decode=HPASpec(kind="hpa", metric="rps", target=7, max_replicas=16),
    )
    assert disagg_setup(minute, cat, H100, H100, "auto", [fixed]).placement == "same_node"
    assert disagg_setup(minute, cat, H100, H100, "auto", [fixed, auto]).placement == "cross_node"
