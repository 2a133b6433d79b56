"""Shared fixtures: paths, a CLI runner, and small scenario files written to tmp_path."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


def small_fixed_scenario(**overrides) -> dict:
    """A fast fixed-shape scenario (ResNet-50, Poisson) as a dict to tweak and dump."""
    s = {
        "name": "small",
        "model": "resnet-50",
        "traffic": {"arrivals": {"kind": "poisson", "rate_rps": 200.0}, "horizon_s": 120.0},
        "slo": {"percentile": 99, "latency_ms": 40},
        "fleet": {"batching": {"kind": "dynamic", "max_batch_size": 8, "max_queue_delay_ms": 1}},
        "candidates": {
            "gpus": ["t4", "l4"],
            "precisions": ["fp16", "int8", "fp8"],
            "max_replicas": 16,
        },
        "simulation": {"replications": 3, "max_replications": 6, "seed": 11},
    }
    for key, value in overrides.items():
        s[key] = value
    return s


@pytest.fixture
def write_scenario(tmp_path: Path):
    def write(data: dict | str, name: str = "scenario.yaml") -> Path:
        p = tmp_path / name
        p.write_text(data if isinstance(data, str) else yaml.safe_dump(data, sort_keys=False))
        return p

    return write


#: Tests over ~2.5 s each on the project's 2-core VM (``pytest --durations=40``, 2026-12-04),
#: marked ``slow`` here in one place: README's test command leaves them out (``-m 'not slow'``
#: in pyproject's addopts) to stay under 3 minutes; ``.ci/run`` runs them after it with
#: ``-m 'slow and not fuzz'``. A node id matches by prefix.
SLOW = (
    "tests/test_mixed.py::test_mixed_fleet_scenario_a_mix_wins",  # a mixed plan, ~35 s
    "tests/test_mixed.py::test_mixed_fleet_no_win_scenario_says_no_mix_wins",  # ~20 s
    "tests/test_disagg.py::test_plan_disaggregates_at_a_tight_tpot_with_long_prompts",  # ~5 s plan
    "tests/test_whatif_disagg.py::test_cli_whatif_runs_both_fleets_on_the_same_traffic",  # ~9 s
    "tests/fuzz/test_fuzz_cli.py::test_fuzz_catalog_entries",
    "tests/fuzz/test_fuzz_cli.py::test_fuzz_scenarios",
    "tests/test_calibration_cpu.py::",  # a module fixture measures this CPU for ~27 s
    "tests/calibrate/test_calibrate_run.py::test_cli_numpy_quick_end_to_end_without_gpu_frameworks",
    "tests/test_sweep.py::test_sweep_grid_growth_and_outputs",
    "tests/test_sweep.py::test_sweep_samples_are_seeded",
    "tests/test_accuracy_band.py::test_error_band_on_test_rows",
    "tests/test_autoscale_llm.py::test_llm_plan_tunes_the_policy",
    "tests/test_autoscale_llm.py::test_plan_says_when_autoscaling_does_not_pay",
    "tests/test_autoscale_llm.py::test_llm_whatif_autoscaled_fleet_is_cheaper_and_meets_ttft_and_tpot",
    "tests/test_autoscale_llm.py::test_llm_whatif_cli_json_and_files",
    "tests/test_theory_beside_simulate.py::test_mdc_mean_wait_exact_value_inside_the_simulated_interval",
    "tests/test_theory_beside_simulate.py::test_greedy_batch_queue_exact_value_inside_the_simulated",
    "tests/test_theory_beside_simulate.py::test_no_exact_result_is_said_not_guessed",
    "tests/test_executors.py::test_cli_dask_local_cluster_matches_local",
    "tests/test_cli.py::test_traffic_that_cannot_run_is_refused_at_validate",
    "tests/test_sim_oracles.py::test_replication_interval_for_p99_covers_the_true_value",
    "tests/test_autoscale_whatif.py::test_plan_tunes_the_policy_against_the_fixed_baseline",
    "tests/test_cli.py::test_plan_is_the_same_in_parallel_and_serial",
    "tests/test_sessions.py::test_plan_compares_prefix_caching_from_the_cli",
    "tests/test_spot.py::test_whatif_reports_cost_by_tier_interruptions_and_requeues",
    "tests/test_speculative.py::test_scenario_gains_at_low_load_and_loses_at_high_load",
    "tests/test_backtest.py::test_public_sglang_run_error_band_before_and_after_fit_bench",
    # shown commands that plan a whole sweep or several fleets (10-15 s each on 2 cores)
    "tests/test_readme_commands.py::test_shown_commands_run[docs/tutorials/plan.md:146]",
    "tests/test_readme_commands.py::test_shown_commands_run[README.md:20]",
)


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        if item.nodeid.startswith(SLOW):
            item.add_marker(pytest.mark.slow)
