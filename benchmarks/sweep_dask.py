"""A 32-variant sweep of ``scenarios/chatbot.yaml`` on local processes and on a 2-worker Dask
``LocalCluster`` (issue 12, speed): wall times, their ratio, and whether the results match.

    python benchmarks/sweep_dask.py [--variants 32] [--workers 2]

The variants vary the TTFT target and the mean arrival rate (a grid); each is one full plan.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from capsim.load import load_catalog, load_scenario
from capsim.planning.executors import open_executor
from capsim.planning.sweep import sweep


def varies(n: int) -> list[tuple[str, list[float]]]:
    """``n`` = a x b variants: TTFT targets by mean arrival rates."""
    a = 8 if n >= 8 else n
    b = max(n // a, 1)
    ttft = [float(x) for x in np.linspace(1000, 4500, a).round()]
    rates = [round(float(x), 1) for x in np.linspace(8, 16, b)]
    return [("slo.ttft_ms", ttft), ("traffic.arrivals.rate_rps", rates)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--variants", type=int, default=32)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    s, cat = load_scenario("scenarios/chatbot.yaml"), load_catalog()
    v = varies(args.variants)
    n = len(v[0][1]) * len(v[1][1])
    print(f"{platform.machine()}, {args.workers} workers, {n} variants of chatbot.yaml")
    t0 = time.perf_counter()
    local = sweep(s, cat, v, jobs=args.workers)
    t_local = time.perf_counter() - t0
    with open_executor(f"dask-local:{args.workers}") as ex:
        t0 = time.perf_counter()
        dask = sweep(s, cat, v, executor=ex, jobs=args.workers)
        t_dask = time.perf_counter() - t0
    same = [a.recommendation for a in local.variants] == [b.recommendation for b in dask.variants]
    same = same and [a.p99_ms for a in local.variants] == [b.p99_ms for b in dask.variants]
    print(
        f"local processes: {t_local:.1f} s; dask LocalCluster: {t_dask:.1f} s (cluster start "
        f"excluded); ratio {t_dask / t_local:.2f}; identical results: {same}"
    )


if __name__ == "__main__":
    main()
