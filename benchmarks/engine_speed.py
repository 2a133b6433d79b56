"""Engine speed: simulated requests per second, capsim vs a naive SimPy model, in one run.

Two workloads at ~70% utilisation (offered load / capacity), 4 replicas, Poisson arrivals:
  (a) batch size 1, deterministic 1 ms service;
  (b) dynamic batching, max batch 32, batch time 2 ms + 0.25 ms per request, no extra delay.
The naive model is the textbook SimPy way: one process per request, a ``simpy.Resource`` for (a)
and a ``simpy.Store`` of waiting requests that each replica process drains for (b).
Both simulate the same arrival array; the ratio is taken from the same run (CPU time).

    python benchmarks/engine_speed.py [--requests N]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import simpy

from capsim.sim.batched import run_batched
from capsim.sim.batched_queue import EngineConfig

C = 4


def naive_batch1(arr: np.ndarray, service: float) -> np.ndarray:
    env = simpy.Environment()
    res = simpy.Resource(env, capacity=C)
    finish = np.empty(len(arr))

    def request(i: int):
        yield env.timeout(arr[i] - env.now)
        with res.request() as req:
            yield req
            yield env.timeout(service)
        finish[i] = env.now

    def source():
        for i in range(len(arr)):
            yield env.timeout(arr[i] - env.now)
            env.process(request(i))

    env.process(source())
    env.run()
    return finish


def naive_batched(arr: np.ndarray, bt: np.ndarray, k: int) -> np.ndarray:
    env = simpy.Environment()
    store = simpy.Store(env)
    finish = np.empty(len(arr))

    def request(i: int):
        done = env.event()
        yield store.put((i, done))
        yield done
        finish[i] = env.now

    def replica():
        while True:
            first = yield store.get()
            batch = [first]
            while store.items and len(batch) < k:
                batch.append(store.items.pop(0))
            yield env.timeout(bt[len(batch)])
            for _, ev in batch:
                ev.succeed()

    def source():
        for i in range(len(arr)):
            yield env.timeout(arr[i] - env.now)
            env.process(request(i))

    for _ in range(C):
        env.process(replica())
    env.process(source())
    env.run(until=arr[-1] + 10)
    return finish


def timed(fn, *args) -> tuple[float, object]:
    t = time.process_time()
    out = fn(*args)
    return time.process_time() - t, out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=400_000)
    n = ap.parse_args().requests
    rng = np.random.default_rng(1)
    print(
        f"machine: {platform.machine()} {platform.processor() or ''} python {platform.python_version()}, simpy {simpy.__version__}"
    )

    # (a) batch size 1
    service = 0.001
    lam = 0.7 * C / service
    arr = np.cumsum(rng.exponential(1 / lam, n))
    t_fast, r = timed(run_batched, arr, EngineConfig(C, np.array([0.0, service])))
    n_naive = min(n, 100_000)
    t_naive, fin = timed(naive_batch1, arr[:n_naive], service)
    util = r.batch_duration.sum() / (C * r.end_time)
    fast, naive = n / t_fast, n_naive / t_naive
    print(
        f"(a) batch 1, util {util:.2f}: capsim {fast:,.0f} req/s, naive SimPy {naive:,.0f} req/s, ratio {fast / naive:.1f}x"
    )
    assert np.allclose(fin, r.finish[:n_naive])  # same workload, same answer

    # (b) dynamic batching, max batch 32
    k = 32
    bt = np.array([0.0] + [0.002 + 0.00025 * b for b in range(1, k + 1)])
    lam = 0.7 * C * k / bt[k]
    arr = np.cumsum(rng.exponential(1 / lam, 4 * n))
    t_fast, r = timed(run_batched, arr, EngineConfig(C, bt))
    n_naive = min(4 * n, 200_000)
    t_naive, fin = timed(naive_batched, arr[:n_naive], bt, k)
    fast, naive = 4 * n / t_fast, n_naive / t_naive
    print(
        f"(b) dynamic batching max 32, offered/capacity 0.70, mean batch {r.batch_sizes.mean():.1f}: "
        f"capsim {fast:,.0f} req/s, naive SimPy {naive:,.0f} req/s, ratio {fast / naive:.1f}x"
    )


if __name__ == "__main__":
    main()
