"""Prefix-cache figures of an LLM run: hit rates and prefill tokens saved."""

from __future__ import annotations

from typing import Any

import numpy as np


def prefix_cache_scalars(res: Any, keep: np.ndarray) -> dict[str, float]:
    """Prefix caching of a run: hit rates of the measured requests' first admissions (share of
    prompt tokens, share of requests with a hit), and over the whole run the prompt tokens
    computed and those a hit saved (re-admissions after preemption included). ``res`` is an
    engine run's result (:class:`capsim.sim.llm_types.LLMRunResult`), ``keep`` the measured
    requests.

    >>> from types import SimpleNamespace as NS
    >>> r = NS(cached_tokens=np.array([0, 48]), prompt=np.array([64, 64]), prefill_tokens=80,
    ...        prefill_saved=48, cache_evictions=0)
    >>> prefix_cache_scalars(r, np.array([0, 1]))["prefix_hit_rate_tokens"]
    0.375
    """
    ct = res.cached_tokens[keep] if res.cached_tokens is not None else np.zeros(len(keep))
    pt = float(res.prompt[keep].sum())
    return {
        "prefix_hit_rate_tokens": float(ct.sum()) / pt if pt > 0 else 0.0,
        "prefix_hit_rate_requests": float(np.count_nonzero(ct)) / len(keep) if len(keep) else 0.0,
        "prefill_tokens_computed": float(res.prefill_tokens),
        "prefill_tokens_saved": float(res.prefill_saved),
        "prefix_cache_evictions": float(res.cache_evictions),
    }
