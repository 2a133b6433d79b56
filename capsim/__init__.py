"""capsim: the cheapest GPU fleet that meets a p99 latency target, found by simulation.

The library in three calls, each returning plain data objects::

    import capsim
    s = capsim.load_scenario("scenarios/vision.yaml")
    ev = capsim.simulate(s, capsim.Config("l4", "int8", replicas=2))
    result = capsim.plan(s)
    result.recommendation.best.usd_per_hour
"""

__version__ = "0.1.0"

# Bound after the submodules are imported, so ``capsim.simulate`` is the function, not the
# module of the same name.
from capsim.catalog import load_catalog  # noqa: E402
from capsim.errors import InputError  # noqa: E402
from capsim.planner import plan  # noqa: E402
from capsim.scenario import load_scenario  # noqa: E402
from capsim.simulate import Config, simulate  # noqa: E402

__all__ = ["Config", "InputError", "load_catalog", "load_scenario", "plan", "simulate"]
