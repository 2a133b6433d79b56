"""The library API a notebook user meets: load, simulate, plan, inspect plain data."""

from __future__ import annotations

import capsim


def test_load_simulate_plan_return_plain_data():
    s = capsim.load_scenario("scenarios/vision.yaml")
    ev = capsim.simulate(s, capsim.Config("l4", "int8", replicas=2), replications=2)
    assert ev.config.gpus == 2
    p99 = ev.summary.q("latency", 99.0)
    assert p99.low <= p99.mean <= p99.high
    assert ev.usd_per_hour > 0 and ev.requests_per_joule > 0


def test_version_and_exports():
    assert capsim.__version__
    for name in capsim.__all__:
        assert callable(getattr(capsim, name))
