"""The results of a finished LLM engine run, and the check of its prefix-cache inputs.

>>> check_chains([[1, 2], None], np.array([20, 5]), np.array([12, 1]), 16)
>>> check_chains([[1]], np.array([20]), np.array([12]), 16)
Traceback (most recent call last):
ValueError: request 0: chain of 1 blocks < (prompt + output) // 16
"""

from __future__ import annotations

from typing import Any

import numpy as np

from capsim.sim.llm_types import LLMRunResult
from capsim.workload.prefixes import Chain


def run_result(
    fleet: Any, arrival: np.ndarray, prompt: np.ndarray, output: np.ndarray, horizon: float
) -> LLMRunResult:
    """The per-request arrays and per-replica totals of a finished run of ``fleet``.

    A run that ended with requests neither served nor rejected is unstable: the engine could
    not schedule them (a safety net; the settings checks should make it impossible).
    """
    limits, env, h = fleet.limits, fleet.env, horizon
    finish, rejected = np.asarray(fleet.fin), np.asarray(fleet.rejected, dtype=bool)
    stuck = int(np.count_nonzero(np.isnan(finish) & ~rejected))
    if stuck and not fleet.unstable_reason:
        fleet.unstable_reason = (
            f"{stuck} requests were never served: the engine could not schedule them"
        )
    return LLMRunResult(
        arrival=np.asarray(arrival, dtype=float),
        prompt=np.asarray(prompt),
        output=np.asarray(output),
        admitted=np.asarray(fleet.adm),
        first_token=np.asarray(fleet.first),
        finish=finish,
        replica=np.asarray(fleet.rep, dtype=np.int32),
        rejected=rejected,
        preemptions=np.asarray(fleet.npre, dtype=np.int32),
        horizon=h,
        end_time=float(env.now),
        replicas=len(fleet.reps),
        busy_prefill_s=np.array([r.busy_pre for r in fleet.reps]),
        busy_decode_s=np.array([r.busy_dec for r in fleet.reps]),
        iterations=fleet.iterations,
        seq_iterations=fleet.seq_iterations,
        events=fleet.events,
        tokens_generated=fleet.tokens_generated,
        prefill_tokens=fleet.prefill_tokens,
        kv_blocks=limits.kv_blocks,
        kv_series={r.idx: (r.kv_t, r.kv_u) for r in fleet.reps},
        unstable=bool(fleet.unstable_reason),
        unstable_reason=fleet.unstable_reason,
        prefix_caching=fleet.pc,
        cached_tokens=np.asarray(fleet.hit, dtype=np.int64) if fleet.pc else None,
        prefill_saved=fleet.saved,
        cache_evictions=sum(r.cache.evictions for r in fleet.reps),
    )


def as_chains(chains) -> list[Chain | None]:
    """Chains as :class:`Chain` objects (a list of block keys: one segment per block; one
    conversion per list object)."""
    memo: dict[int, Chain] = {}
    out: list[Chain | None] = []
    for c in chains:
        if c is None or isinstance(c, Chain):
            out.append(c)
        else:
            if id(c) not in memo:
                memo[id(c)] = Chain.of_keys(list(c))
            out.append(memo[id(c)])
    return out


def check_chains(chains, prompt: np.ndarray, output: np.ndarray, bs: int) -> None:
    """Every request's chain covers its full blocks, ``(prompt + output) // bs`` keys."""
    if len(chains) != len(prompt):
        raise ValueError("chains needs one entry per request")
    big = 1 << 62
    have = np.array(
        [c.n if type(c) is Chain else (big if c is None else len(c)) for c in chains],
        dtype=np.int64,
    )
    need = (np.asarray(prompt, dtype=np.int64) + np.asarray(output, dtype=np.int64)) // bs
    short = np.flatnonzero(have < need)
    if len(short):
        i = int(short[0])
        raise ValueError(f"request {i}: chain of {have[i]} blocks < (prompt + output) // {bs}")
