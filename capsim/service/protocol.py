"""What the planner, the simulator's adapters and the reports need from a service model.

Two implementations: :class:`~capsim.service.fixed.FixedServiceModel` (fixed-shape networks,
batched) and :class:`~capsim.sim.llm_adapter.LLMService` (token-level LLM serving). Callers use
these methods instead of probing with ``hasattr``.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

from capsim.spec.catalog import GPU
from capsim.spec.scenario import Scenario


@runtime_checkable
class ServiceModel(Protocol):
    """One replica's service of a scenario's model on one card type at one precision."""

    gpu: GPU
    math_format: str

    def max_throughput_rps(self, s: Scenario) -> float:
        """An optimistic capacity of one replica (requests/s): the planner's lower bound."""
        ...

    def idle_latency_violation(self, s: Scenario) -> str | None:
        """Why even an idle replica misses the latency target (None if it does not)."""
        ...

    def trace_lines(self, s: Scenario | None = None, mean_batch: float | None = None) -> list[str]:
        """Where the service times come from, at the run's mean batch size."""
        ...
