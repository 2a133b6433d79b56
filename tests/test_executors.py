"""``--executor``: a plan and a what-if on a real Dask cluster print what local runs print."""

from __future__ import annotations

import pytest

from capsim.cli import main
from capsim.load import load_catalog, load_scenario
from capsim.planning.api import plan
from capsim.planning.executors import parse_executor
from capsim.planning.whatif import whatif
from capsim.report.text import plan_dict
from capsim.report.whatif import whatif_dict
from tests.conftest import small_fixed_scenario
from tests.test_autoscale_whatif import day_scenario


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("threads", "not an executor"),
        ("dask://host", "not an executor"),
        ("dask://host:99999", "port 99999"),
        ("dask-local:0", "1 to 256"),
    ],
)
def test_bad_executor_exits_2_naming_the_option(runner, write_scenario, text, needle):
    p = write_scenario(small_fixed_scenario())
    r = runner.invoke(main, ["plan", str(p), "--executor", text])
    assert r.exit_code == 2, r.output
    assert "--executor" in r.output and needle in r.output
    assert "dask://HOST:PORT" in r.output and "Traceback" not in r.output


def test_parse_executor_forms():
    assert parse_executor(" local ") == ("local", None)
    assert parse_executor("dask://scheduler.internal:8786") == (
        "dask",
        "tcp://scheduler.internal:8786",
    )
    assert parse_executor("dask-local:3") == ("dask-local", 3)


@pytest.fixture(scope="module")
def dask_executor():
    """An executor on a real ``distributed.LocalCluster`` (2 workers, in-process for speed)."""
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client.get_executor(pure=False)


def test_plan_on_dask_matches_local(write_scenario, dask_executor):
    cat = load_catalog()
    s = load_scenario(write_scenario(small_fixed_scenario()), cat)
    local = plan_dict(plan(s, cat))
    remote = plan_dict(plan(s, cat, executor=dask_executor))
    assert remote == local
    assert local["recommendation"] is not None


def test_whatif_on_dask_matches_local(write_scenario, dask_executor):
    cat = load_catalog()
    s = load_scenario(write_scenario(day_scenario(rate=40.0, period=3600.0)), cat)
    local = whatif_dict(whatif(s, cat))
    remote = whatif_dict(whatif(s, cat, executor=dask_executor))
    assert remote == local


@pytest.mark.slow
def test_cli_dask_local_cluster_matches_local(runner, write_scenario):
    pytest.importorskip("distributed")
    p = write_scenario(small_fixed_scenario())
    local = runner.invoke(main, ["plan", str(p), "--format", "json", "-q"])
    remote = runner.invoke(
        main, ["plan", str(p), "--format", "json", "-q", "--executor", "dask-local:2"]
    )
    assert local.exit_code == 0 and remote.exit_code == 0, remote.output
    assert remote.stdout == local.stdout
