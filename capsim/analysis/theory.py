"""Exact queueing results used as test oracles (one import for all of them).

Everything here is closed-form or an exactly solved Markov chain: no simulation and no random
numbers. :mod:`capsim.analysis.theory_mmc` holds the M/M/c, M/G/1 and M/D/1 results,
:mod:`capsim.analysis.theory_batch` the M/D/c chain and the batch-service queues.

>>> round(erlang_c(10, 8.0), 5)
0.40918
>>> round(mmc_response_quantile(8.0, 1.0, 10, 0.99), 4)
4.9461
"""

from capsim.analysis.theory_batch import (
    BatchResult,
    MDcResult,
    batch_deterministic_wait,
    batch_deterministic_wait_mean,
    batch_mmk1_wait_mean,
    mdc_wait,
)
from capsim.analysis.theory_mmc import (
    erlang_b,
    erlang_c,
    md1_wait_mean,
    mg1_wait_mean,
    mm1_response_quantile,
    mmc_response_mean,
    mmc_response_quantile,
    mmc_response_sf,
    mmc_wait_mean,
    mmc_wait_quantile,
    mmc_wait_sf,
)

__all__ = [
    "MDcResult",
    "BatchResult",
    "erlang_b",
    "erlang_c",
    "mmc_wait_mean",
    "mmc_wait_sf",
    "mmc_wait_quantile",
    "mmc_response_sf",
    "mmc_response_mean",
    "mmc_response_quantile",
    "mm1_response_quantile",
    "mg1_wait_mean",
    "md1_wait_mean",
    "mdc_wait",
    "batch_mmk1_wait_mean",
    "batch_deterministic_wait",
    "batch_deterministic_wait_mean",
]
