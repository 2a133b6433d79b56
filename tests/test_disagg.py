"""Disaggregated prefill/decode serving: KV-transfer time against its formula, the decode
engine's prefilled requests against hand-computed timelines, and the planner's comparison with
co-located serving in the regimes the literature reports (DistServe, arXiv:2401.09670)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from capsim.cli import main
from capsim.errors import InputError
from capsim.load import load_catalog, load_model_card, load_scenario
from capsim.planning.api import plan
from capsim.planning.disagg import smallest
from capsim.planning.disagg_sim import (
    DisaggFleet,
    LinkProblem,
    evaluate_disagg,
    kv_link,
    resolve_placement,
)
from capsim.planning.static import Candidate
from capsim.service.llm_memory import kv_bytes_per_token
from capsim.sim.llm_disagg import KVLink, PoolSetup, kv_transfer, link_overload, run_disagg
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_types import EngineLimits

CAT = load_catalog()
H100 = Candidate("h100-sxm", "fp8")


class Const:
    """10 ms per iteration, whatever the batch."""

    def iteration_time(self, *a, **k):
        return 0.01

    def decode_lines(self, d):
        return (0.01, 0.0, 0.01, 0.0)


def test_kv_transfer_time_is_latency_plus_bytes_over_parallel_links():
    link = KVLink(bandwidth_b_s=50e9, latency_s=20e-6, streams=4)
    nbytes = 4096 * 131072.0  # a 4,096-token Llama-3.1-8B prompt in 16-bit KV
    assert link.seconds(nbytes) == pytest.approx(20e-6 + nbytes / (4 * 50e9))


def test_kv_transfers_of_one_prefill_replica_queue_first_ready_first_sent():
    link = KVLink(1e9, 0.0, 1)
    ready = np.array([0.0, 0.05, 0.0, 1.0])
    rep = np.array([0, 0, 1, 0])
    start, end = kv_transfer(ready, rep, np.full(4, 1e8), link)
    # replica 0: 0.0-0.1, then the one ready at 0.05 waits to 0.1-0.2; replica 1 alone
    assert start.tolist() == pytest.approx([0.0, 0.1, 0.0, 1.0])
    assert end.tolist() == pytest.approx([0.1, 0.2, 0.1, 1.1])


def test_kv_bytes_per_token_is_two_x_layers_x_kv_heads_x_head_dim_x_bytes():
    m = load_model_card("llama-3.1-8b")  # 32 layers, 8 KV heads of 128 (Meta's config.json)
    assert kv_bytes_per_token(m, "fp16") == 2 * 32 * 8 * 128 * 2
    assert kv_bytes_per_token(m, "fp16", 1, "fp8") == 2 * 32 * 8 * 128 * 1


def test_same_node_link_is_the_cards_interconnect_and_cross_node_its_nic():
    f = DisaggFleet(H100, 2, H100, 3)
    assert resolve_placement(CAT, f, "auto") == "same_node"
    ic = CAT["h100-sxm"].interconnect
    link = kv_link(CAT, f, "same_node")
    assert link.bandwidth_b_s == pytest.approx(ic.bandwidth_gb_s * 1e9 * ic.efficiency)
    assert link.latency_s == pytest.approx(ic.latency_us * 1e-6)
    big = DisaggFleet(H100, 4, H100, 5)  # 9 GPUs > one 8-GPU node
    assert resolve_placement(CAT, big, "auto") == "cross_node"
    net = ic.network
    assert net is not None
    assert kv_link(CAT, big, "cross_node").bandwidth_b_s == pytest.approx(
        net.bandwidth_gb_s * 1e9 * net.efficiency
    )
    tp = DisaggFleet(Candidate("h100-sxm", "fp8", 4), 1, Candidate("h100-sxm", "fp8", 2), 1)
    assert kv_link(CAT, tp, "same_node").streams == 2  # min(tp_prefill, tp_decode) pairs


def test_cross_node_without_a_nic_figure_is_refused_with_the_card_named():
    f = DisaggFleet(Candidate("h100-pcie", "fp8"), 1, Candidate("l4", "fp8"), 1)
    with pytest.raises(LinkProblem, match="h100-pcie has no interconnect.network"):
        kv_link(CAT, f, resolve_placement(CAT, f, "auto"))


def test_prefilled_requests_decode_from_admission_one_token_per_iteration():
    r = run_llm(
        np.array([0.0, 0.005]), np.array([100, 100]), np.array([3, 3]), Const(), EngineLimits(),
        prefilled=np.array([True, True]),
    )  # fmt: skip
    # the first token came with the KV cache; tokens 2 and 3 take one iteration each; the
    # second request joins at the first iteration boundary after it arrives (0.01)
    assert r.first_token.tolist() == [0.0, 0.005]
    assert r.finish.tolist() == pytest.approx([0.02, 0.03])
    assert r.prefill_tokens == 0


def test_prefilled_admission_is_limited_by_kv_blocks():
    # each needs ceil(101 / 16) = 7 blocks: with 13 the second waits for the first to finish
    r = run_llm(
        np.array([0.0, 0.005]), np.array([100, 100]), np.array([3, 3]), Const(),
        EngineLimits(kv_blocks=13, block_size=16), prefilled=np.array([True, True]),
    )  # fmt: skip
    assert r.admitted.tolist() == pytest.approx([0.0, 0.02])
    assert r.finish.tolist() == pytest.approx([0.02, 0.04])


def test_ttft_includes_the_transfer_and_tpot_the_decode_pool():
    pool = PoolSetup(Const(), EngineLimits(), 1)
    r = run_disagg(
        np.array([0.0, 1.0]), np.array([100, 100]), np.array([5, 1]), pool, pool, 1e6,
        KVLink(1e10, 0.0),
    )  # fmt: skip
    # request 0: prefill 10 ms + 1e8 bytes at 10 GB/s = 10 ms; 4 more tokens at 10 ms
    assert r.ttft.tolist()[0] == pytest.approx(0.02)
    assert r.tpot.tolist()[0] == pytest.approx(0.01)
    assert r.e2e.tolist()[0] == pytest.approx(0.06)
    # request 1 has one output token: done at its prefill, nothing moves
    assert r.e2e.tolist()[1] == pytest.approx(0.01) and math.isnan(r.transfer_s[1])


def test_a_link_that_cannot_keep_up_marks_the_run_overloaded():
    assert link_overload(np.array([0.2]), np.array([1e8]), KVLink(1e9, 0.0), 30.0) == ""
    why = link_overload(np.array([45.1]), np.array([1e8]), KVLink(1e9, 0.0), 30.0)
    assert why.startswith("KV link overloaded: a transfer waited 45.0 s")


def test_smallest_finds_the_first_count_meeting_a_monotone_test():
    seen = []

    def ok(n):
        seen.append(n)
        return n >= 13

    assert smallest(ok, 2, 64) == 13
    assert len(seen) <= 10


@pytest.fixture(scope="module")
def chat():
    return load_scenario("scenarios/chatbot_disagg.yaml", CAT)


def test_disaggregated_fleet_meets_a_tight_tpot_that_co_location_needs_more_gpus_for(chat):
    e = evaluate_disagg(chat, CAT, DisaggFleet(H100, 3, H100, 4))
    assert e.feasible and e.placement == "same_node"
    tpot = e.check("tpot")
    assert tpot is not None and tpot.ci.high <= 0.015
    kv = e.summary.scalars["kv_mib_per_request"].mean
    # ~4.4k-token mean prompt x 128 KiB per token
    assert 450 < kv < 650


def test_unknown_gpu_in_a_pool_names_the_field(tmp_path):
    text = Path("scenarios/chatbot_disagg.yaml").read_text()
    bad = text.replace("placement: auto", "placement: auto\n  prefill: {gpus: [h900]}")
    f = tmp_path / "bad.yaml"
    f.write_text(bad)
    with pytest.raises(InputError, match=r"disaggregation.prefill.gpus\[0\].*unknown GPU 'h900'"):
        load_scenario(f, CAT)


def test_simulate_decode_replicas_prints_the_fleet_and_its_link():
    r = CliRunner().invoke(
        main,
        ["simulate", "scenarios/chatbot_disagg.yaml", "--gpu", "h100-sxm", "--precision",
         "fp8", "--replicas", "3", "--decode-replicas", "4", "--replications", "2"],
    )  # fmt: skip
    assert r.exit_code == 0, r.output
    assert "prefill 3 x h100-sxm fp8 + decode 4 x h100-sxm fp8" in r.output
    assert "KV transfer (same node" in r.output


@pytest.mark.parametrize(
    "args, where",
    [
        (["--decode-gpu", "l4"], "--decode-replicas"),
        (["--decode-replicas", "2", "--decode-gpu", "h900"], "--decode-gpu"),
        (
            ["--decode-replicas", "2", "--placement", "cross_node", "--gpu", "h100-pcie"],
            "--placement",
        ),
    ],
)
def test_simulate_disaggregated_bad_input_exits_2_naming_the_option(args, where):
    base = ["simulate", "scenarios/chatbot_disagg.yaml", "--precision", "fp8", "--replicas", "1"]
    if "--gpu" not in args:
        base += ["--gpu", "h100-sxm"]
    r = CliRunner().invoke(main, base + args)
    assert r.exit_code == 2 and where in r.output and "Traceback" not in r.output


def test_plan_keeps_co_location_when_prompts_are_short(chat):
    d = chat.model_dump()
    d["traffic"]["tokens"].update(prompt_median=256)
    d["slo"]["tpot_ms"] = 150
    s = type(chat).model_validate(d)
    r = plan(s, CAT)
    assert r.disagg.winner == "co-located"
    assert "co-located costs no more" in r.disagg.reason


def test_plan_disaggregates_at_a_tight_tpot_with_long_prompts(chat):
    r = plan(chat, CAT)
    d = r.disagg
    assert d.winner == "disaggregated", d.reason
    assert d.best.usd_per_hour < d.colocated.usd_per_hour
    assert "prefill chunks share iterations with decodes" in d.reason
