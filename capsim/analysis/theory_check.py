"""The exact queueing value beside a simulated one, where theory applies.

A stationary fixed-shape run with Poisson arrivals and deterministic batch times is a queue that
theory solves exactly in two cases, and ``capsim simulate`` prints the exact mean wait beside the
simulated one (its confidence interval should cover it):

- batch size 1 on ``c`` replicas sharing one FIFO queue: M/D/c (Crommelin's chain,
  :func:`~capsim.analysis.theory_batch.mdc_wait`);
- greedy dynamic batching (no extra queue delay) on one replica: the batch-service queue
  M/D^(K)/1 with a size-dependent batch time s(b)
  (:func:`~capsim.analysis.theory_batch.batch_deterministic_wait`).

Anything else (time-varying or trace traffic, jittered service, per-replica queues, a batching
delay, several batching replicas, a queue limit, load at or above capacity) has no exact result
here, and :func:`exact_wait` says why instead of guessing.

>>> t = exact_wait(rate_rps=800.0, replicas=1, batch_times=[0.0, 0.001], queue_delay_s=0.0)
>>> t.model, round(t.wait_mean_s * 1000, 3)
('M/D/1', 2.0)
>>> exact_wait(rate_rps=800.0, replicas=2, batch_times=[0.0, 0.001, 0.0015], queue_delay_s=0.0).reason
'no exact result for batching on several replicas'
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from capsim.analysis.theory_batch import batch_deterministic_wait, mdc_wait


@dataclass(frozen=True, slots=True)
class TheoryValue:
    """An exact mean wait (``model`` set) or why there is none (``reason`` set)."""

    model: str = ""
    wait_mean_s: float = float("nan")
    utilisation: float = float("nan")
    reason: str = ""

    @property
    def applies(self) -> bool:
        return bool(self.model)


def exact_wait(
    *,
    rate_rps: float,
    replicas: int,
    batch_times: Sequence[float],
    queue_delay_s: float,
    shared_queue: bool = True,
) -> TheoryValue:
    """Exact mean queueing wait for Poisson(``rate_rps``) into deterministic batches.

    ``batch_times[b]`` is the time of a batch of ``b`` (entry 0 unused); its length - 1 is the
    maximum batch size.
    """
    k = len(batch_times) - 1
    if k < 1:
        return TheoryValue(reason="no batch sizes")
    if k > 1 and queue_delay_s > 0:
        return TheoryValue(reason="no exact result with a batching delay (max_queue_delay_ms > 0)")
    if k > 1 and replicas > 1:
        return TheoryValue(reason="no exact result for batching on several replicas")
    if replicas > 1 and not shared_queue:
        return TheoryValue(reason="no exact result for per-replica queues (router != shared_queue)")
    if k == 1:
        d = float(batch_times[1])
        rho = rate_rps * d / replicas
        if rho >= 1:
            return TheoryValue(reason=f"offered load {rho:.2f} >= 1: no stationary queue")
        r = mdc_wait(rate_rps, d, replicas)
        return TheoryValue(model=f"M/D/{replicas}", wait_mean_s=r.wait_mean, utilisation=rho)
    rho = rate_rps * float(batch_times[k]) / k
    if rho >= 1:
        return TheoryValue(reason=f"offered load {rho:.2f} of full batches >= 1: unstable")
    b = batch_deterministic_wait(rate_rps, k, list(batch_times))
    return TheoryValue(model=f"M/D^({k})/1", wait_mean_s=b.wait_mean, utilisation=b.utilisation)
