"""Runs that repeat an earlier run's prompts, and so began with those prompts in the cache.

A sweep with ``vllm bench serve`` (or ``benchmark_serving.py``) sends the same prompts at every
rate: the dataset is sampled with the same seed (0 by default), so each run after the first
offers the server the exact prompts of the one before. With automatic prefix caching on (the
default in vLLM V1, SGLang's radix cache) the server still holds their KV blocks, and every
prompt but its last block is a cache hit: TTFT stops growing with the prompt length.

The public vLLM 0.8.3 sweep in ``tests/data/bench/vllm/a100x8_llama3.3-70b_tp8`` shows it: in
its first run (1 req/s) TTFT grows by 0.115 ms per prompt token (a least-squares line over its
200 requests: the prefill of a 70B model on 8 A100s), in the 4 req/s run that followed it by
0.003 ms per token.

:func:`mark_repeats` finds such runs among those given together: the same settings, dataset
and number of requests, the same prompt length for every request in order, and an earlier
date. The replay (:func:`capsim.bench.finite.replay_finite`) then starts with those prompts'
full KV blocks cached (:meth:`capsim.sim.prefix_cache.PrefixCache.warm`).

>>> from capsim.bench.model import BenchRun, LengthDist, Source, Tool, Workload
>>> def run(f, date):
...     lens = LengthDist(kind="per_request", values=[30, 500, 70] * 10)
...     w = Workload(dataset="sharegpt", num_requests=30, input_len=lens)
...     return BenchRun(source=Source(file=f, format="vllm", sha256="0" * 64), tool=Tool(name="x"),
...                     date=date, workload=w)
>>> [r.workload.prompts_cached_by for r in mark_repeats([run("b", "20250414-1416"), run("a", "20250414-1415")])]
['a', None]
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from capsim.bench.model import SETTING_KEYS, BenchRun

#: fewest requests for equal prompt-length sequences to count as the same prompts
MIN_REQUESTS = 20
CachedMode = Literal["auto", "no", "yes"]


def _key(run: BenchRun) -> tuple | None:
    """What two runs must share to have sent the same prompts, or None (no per-request
    prompt lengths, or too few, or no date to order them by)."""
    lens = run.workload.input_len
    if lens is None or lens.kind != "per_request" or not lens.values or run.date is None:
        return None
    if len(lens.values) < MIN_REQUESTS:
        return None
    s = run.settings
    return (
        *(getattr(s, k) for k in SETTING_KEYS if k != "max_num_seqs"),
        run.workload.dataset,
        tuple(lens.values),
    )


def mark_repeats(runs: Sequence[BenchRun]) -> list[BenchRun]:
    """``runs`` (in the same order), each run that repeats the prompts of an earlier one given
    with it marked with that run's file in ``workload.prompts_cached_by`` and a note (see the
    module doc). A run already marked keeps its mark."""
    keys = [_key(r) for r in runs]
    first: dict[tuple, BenchRun] = {}
    for k, r in sorted(zip(keys, runs, strict=True), key=lambda kr: kr[1].date or ""):
        if k is not None and k not in first:
            first[k] = r
    out = []
    for k, r in zip(keys, runs, strict=True):
        prev = first.get(k) if k is not None else None
        if r.workload.prompts_cached_by is None and prev is not None and prev is not r:
            assert prev.date is not None and r.date is not None
            if prev.date < r.date:
                why = (
                    f"it repeats the prompts of {prev.source.file} (same settings, dataset and "
                    "prompt length per request, run earlier)"
                )
                r = cached_by(r, prev.source.file, why)
        out.append(r)
    return out


def cached_by(run: BenchRun, by: str, why: str) -> BenchRun:
    """``run`` marked as started with its prompts cached by ``by``, with ``why`` in its notes."""
    note = (
        f"prompts cached when the run began: {why}; replayed with their KV blocks in the "
        "prefix cache"
    )
    w = run.workload.model_copy(update={"prompts_cached_by": by})
    return run.model_copy(update={"workload": w, "notes": [*run.notes, note]})


def with_cache_mode(runs: Sequence[BenchRun], mode: CachedMode) -> list[BenchRun]:
    """``runs`` with their prompts marked cached as ``mode`` says: ``auto`` by
    :func:`mark_repeats`, ``yes`` every run (the server had served them before), ``no`` none."""
    if mode == "auto":
        return mark_repeats(runs)
    if mode == "no":
        return [_uncached(r) for r in runs]
    return [
        r if r.workload.prompts_cached_by else cached_by(r, "--prompts-cached yes", "as given")
        for r in runs
    ]


def _uncached(run: BenchRun) -> BenchRun:
    w = run.workload.model_copy(update={"prompts_cached_by": None})
    notes = [n for n in run.notes if not n.startswith("prompts cached when")]
    return run.model_copy(update={"workload": w, "notes": notes})
