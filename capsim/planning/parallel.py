"""Running many independent simulations: one helper, any :class:`concurrent.futures.Executor`.

Every command that runs many simulations (the static plan's candidate waves, the autoscaled
plan's finalists, the what-if policy × replication grid) goes through :func:`run_tasks`. Tasks
and results are plain picklable data and ``fn`` is a module-level function, so any executor
works: local processes (the default when ``jobs > 1``), threads, or a distributed engine's
``Executor``. Results come back in task order whatever order the workers finish in, so a run's
numbers do not depend on the executor.

>>> run_tasks(abs, [-2, 3, -5])
[2, 3, 5]
>>> seen = []
>>> run_tasks(abs, [-1, -4], progress=lambda i, n, r: seen.append((i, n, r)))
[1, 4]
>>> seen
[(1, 2, 1), (2, 2, 4)]
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from concurrent.futures import Executor, ProcessPoolExecutor
from typing import Any, TypeVar

import numpy as np

T = TypeVar("T")
R = TypeVar("R")

Progress = Callable[[int, int, Any], None]


def worker_init() -> None:
    """Set up one of capsim's own worker processes: numpy's transparent-huge-page advice off.

    numpy advises the kernel to back every array of 4 MiB or more with huge pages; where the
    kernel's THP ``defrag`` setting is ``madvise`` (as on the project's 2-core VM) each such
    array then waits for direct memory compaction. A real-time day allocates arrays of 10^7
    values by the dozen: on that VM the advice cost ~1.2 s of system time and ~0.5 s of wall
    time per autoscaled embedding plan (benchmarks/README.md, 2026-12-05). Values are
    unchanged. ``NUMPY_MADVISE_HUGEPAGE`` set in the environment is left to decide.

    >>> worker_init()
    """
    if "NUMPY_MADVISE_HUGEPAGE" in os.environ:
        return
    core = getattr(np, "_core", None) or getattr(np, "core", None)
    setter = getattr(getattr(core, "multiarray", None), "_set_madvise_hugepage", None)
    if setter is not None:
        setter(False)


def process_pool(workers: int) -> ProcessPoolExecutor:
    """A local process pool of ``workers`` processes set up by :func:`worker_init`.

    >>> with process_pool(1) as pool:
    ...     pool.submit(abs, -2).result()
    2
    """
    return ProcessPoolExecutor(max_workers=workers, initializer=worker_init)


def local_executor(jobs: int, tasks: int) -> Executor | None:
    """A local process pool for ``jobs`` workers, or None when running in this process is as fast.

    >>> local_executor(1, 10) is None and local_executor(4, 1) is None
    True
    """
    if jobs <= 1 or tasks <= 1:
        return None
    return process_pool(min(jobs, tasks, os.cpu_count() or 1))


def run_tasks(
    fn: Callable[[T], R],
    tasks: Iterable[T],
    executor: Executor | None = None,
    progress: Progress | None = None,
    *,
    jobs: int = 1,
) -> list[R]:
    """``[fn(t) for t in tasks]``, on ``executor`` (or local processes when ``jobs > 1``).

    ``progress(i, n, result)`` is called after the i-th of n results, in task order. An
    executor passed in is used and left open (its owner shuts it down); one made here for
    ``jobs`` is shut down before returning.
    """
    todo = list(tasks)
    own = executor is None
    pool = local_executor(jobs, len(todo)) if own else executor
    results: list[R] = []
    try:
        outs = pool.map(fn, todo) if pool is not None else map(fn, todo)
        for i, r in enumerate(outs, 1):
            results.append(r)
            if progress is not None:
                progress(i, len(todo), r)
    finally:
        if own and pool is not None:
            pool.shutdown()
    return results


class PinnedPools:
    """``jobs`` local worker processes, task ``k`` always on worker ``k mod jobs``.

    Rounds of the same keyed tasks (a replication ``k`` of one setting, then of a safer one)
    land on the same worker, which keeps what it cached for the first (the replication's
    request stream, generated once per process): only the first round pays for it.

    >>> with PinnedPools(2) as pools:
    ...     pools.run(abs, [(0, -3), (1, 4), (2, -5)])
    [3, 4, 5]
    """

    def __init__(self, jobs: int):
        n = max(1, min(jobs, os.cpu_count() or 1))
        self.pools = [process_pool(1) for _ in range(n)]

    def run(self, fn: Callable[[T], R], keyed: Iterable[tuple[int, T]]) -> list[R]:
        """``[fn(t) for k, t in keyed]``, task ``t`` on worker ``k mod jobs``, in order."""
        futures = [self.pools[k % len(self.pools)].submit(fn, t) for k, t in keyed]
        return [f.result() for f in futures]

    def close(self) -> None:
        for p in self.pools:
            p.shutdown()

    def __enter__(self) -> PinnedPools:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
