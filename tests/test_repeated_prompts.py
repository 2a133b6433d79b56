"""Runs of a sweep that repeat an earlier run's prompts start with them in the prefix cache."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from capsim.bench import apply_settings, read_runs
from capsim.bench.finite import warm_prompts
from capsim.bench.repeats import mark_repeats, with_cache_mode
from capsim.cli import main
from capsim.sim.llm_engine import run_llm
from capsim.sim.llm_types import EngineLimits
from capsim.sim.prefix_cache import PrefixCache
from capsim.workload.prefixes import Chain

ROOT = Path(__file__).resolve().parents[1]
SWEEP = ROOT / "tests" / "data" / "bench" / "vllm" / "a100x8_llama3.3-70b_tp8"
NAME = "serving_meta-llama-Llama-3.3-70B-Instruct_tp8_pp1_sharegpt_qps_{}.json"
SETTINGS = ["--gpu", "a100-40gb-sxm", "--model", "llama-3.1-70b", "--precision", "bf16",
            "--tp", "8", "--engine", "vllm", "--engine-version", "0.8.3"]  # fmt: skip
GIVEN = {"gpu": "a100-40gb-sxm", "model": "llama-3.1-70b", "precision": "bf16", "tp": 8,
         "engine": "vllm", "engine_version": "0.8.3"}  # fmt: skip


def _sweep(*rates: str):
    return [apply_settings(read_runs(SWEEP / NAME.format(q))[0], GIVEN) for q in rates]


def test_the_public_sweeps_later_runs_show_cached_prompts_in_their_ttft():
    # the evidence in the data: TTFT grows with the prompt in the first run (the prefill of a
    # 70B model, ~0.1 ms per token on 8 A100s), hardly at all in the run that repeated it
    slopes = {}
    for q in ("01", "04"):
        d = json.loads((SWEEP / NAME.format(q)).read_text())
        slopes[q] = np.polyfit(d["input_lens"], d["ttfts"], 1)[0] * 1e3  # ms per token
    assert 0.08 < slopes["01"] < 0.15 and abs(slopes["04"]) < 0.01


def test_a_run_repeating_an_earlier_runs_prompts_is_marked_in_any_order():
    runs = _sweep("16", "inf", "04", "01")
    marked = {Path(r.source.file).stem.split("_")[-1]: r.workload.prompts_cached_by
              for r in mark_repeats(runs)}  # fmt: skip
    first = str(SWEEP / NAME.format("01"))
    assert marked == {"16": first, "inf": first, "04": first, "01": None}
    assert any(
        n.startswith("prompts cached when the run began") for n in mark_repeats(runs)[0].notes
    )
    # another server (another TP degree) did not see the first run's prompts
    other = apply_settings(_sweep("04")[0], {"tp": 4})
    assert mark_repeats([_sweep("01")[0], other])[1].workload.prompts_cached_by is None
    # alone, a run has nothing to repeat; "yes" and "no" override the detection
    assert mark_repeats(_sweep("04"))[0].workload.prompts_cached_by is None
    assert (
        with_cache_mode(_sweep("01"), "yes")[0].workload.prompts_cached_by == "--prompts-cached yes"
    )
    no = with_cache_mode(mark_repeats(runs), "no")
    assert all(r.workload.prompts_cached_by is None for r in no)
    assert not any(n.startswith("prompts cached") for r in no for n in r.notes)


def test_warmed_blocks_are_free_and_evicted_least_recent_first():
    c = PrefixCache()
    a, b = Chain([(0, 4)]), Chain([(1, 4)])
    c.warm(a, 3)
    c.warm(b, 4)  # the most recent
    assert c.free == 7 and c.lookup(a, 4) == (3, 0) and c.lookup(b, 4) == (4, 0)
    c.trim(4)  # room for 4 free blocks: a's go first
    assert c.lookup(a, 4) == (0, 0) and c.lookup(b, 4) == (4, 0) and c.evictions == 3


class _Linear:
    """10 ms a step plus 10 us per prompt token computed and 0.1 ms per decode."""

    def iteration_time(self, num_tokens, num_decode=0, *args, **kwargs) -> float:
        return 0.01 + 1e-5 * (num_tokens - num_decode) + 1e-4 * num_decode


def test_a_cached_prompt_costs_its_last_block_only():
    # requests far apart (no queueing): cold, TTFT grows with the prompt; with every prompt
    # cached, a 2000-token prompt's first token comes as fast as a 40-token one's
    svc = _Linear()
    lim = EngineLimits(block_size=16, max_num_batched_tokens=8192, prefix_caching=True)
    t = np.array([0.0, 10.0, 20.0])
    prompt, output = np.array([40, 2000, 2000]), np.array([5, 5, 5])
    cold = run_llm(t, prompt, output, svc, lim, 1)
    chains, warm = warm_prompts(prompt, output, lim)
    hot = run_llm(t, prompt, output, svc, lim, 1, chains=chains, cached=warm)
    assert cold.ttft[1] > 2.5 * cold.ttft[0]
    assert hot.ttft[1] == pytest.approx(hot.ttft[0], rel=0.25)
    assert hot.cached_tokens.tolist() == [32, 1984, 1984]  # full blocks, one token computed


def test_cli_backtest_and_import_mark_the_repeated_run(tmp_path):
    files = [str(SWEEP / NAME.format(q)) for q in ("01", "04")]
    res = CliRunner().invoke(main, ["bench", "import", *files, *SETTINGS, "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    assert res.output.count(f"prompts cached by {Path(files[0]).name}") == 1  # the 4 req/s run
    by = {p.name.split("_")[-1].split("-")[0]: json.loads(p.read_text())["workload"]["prompts_cached_by"]
          for p in tmp_path.glob("*.json")}  # fmt: skip
    assert by == {"01": None, "04": files[0]}
    # normalised files keep the mark when backtested alone
    held = next(p for p in tmp_path.glob("*qps_04*.json"))
    args = ["backtest", str(held), "--replications", "2", "--format", "json"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    warm = {(r["metric"], r["stat"]): r["predicted"] for r in json.loads(res.stdout)}
    res = CliRunner().invoke(main, [*args, "--prompts-cached", "no"])
    cold = {(r["metric"], r["stat"]): r["predicted"] for r in json.loads(res.stdout)}
    assert warm[("ttft", "p99")] < 0.7 * cold[("ttft", "p99")]
    res = CliRunner().invoke(main, ["backtest", *files, *SETTINGS, "--replications", "2"])
    assert res.exit_code == 0, res.output
    assert res.output.count("assumed: prompts cached by") == 1
