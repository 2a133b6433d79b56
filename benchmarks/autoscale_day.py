"""Autoscaled day: wall time of one simulated 24-hour day at the embedding scenario's rates.

``scenarios/embedding_autoscaled.yaml``: bge-large-en, 500 req/s mean with a 4:1 daily swing
(43.2 million requests), t4 fp16, dynamic batching (max 32, 5 ms), real time (no compression).
Each policy is one replication: stream generation, the autoscaled simulation (SimPy autoscaler
process + batched fleet) and the measurement (percentiles, per-window p99, hourly attainment,
timeline, cost, energy) timed separately, one core. Target: the whole day under 30 s.

``--engine`` also runs the fixed-fleet SimPy engine (``run_batched``, one event per batch) on the
same stream with the fixed peak count, for comparison (slow: minutes).

    python benchmarks/autoscale_day.py [--policies hpa kpa fixed] [--engine]
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np

from capsim.evaluate import make_service, stream_for
from capsim.load import load_catalog, load_scenario
from capsim.spec.autoscaling import FixedSpec, KPASpec

SCENARIO = "scenarios/embedding_autoscaled.yaml"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--policies", nargs="+", default=["hpa", "kpa", "fixed"])
    ap.add_argument("--engine", action="store_true", help="also time run_batched (slow)")
    args = ap.parse_args()

    import capsim.planning.whatif_run as W
    from capsim.workload.streams import real_time

    s = load_scenario(SCENARIO)
    cat = load_catalog()
    gpu, prec = "t4", "fp16"
    svc = make_service(s, cat[gpu], prec)
    sr = real_time(s)
    t0, c0 = time.perf_counter(), time.process_time()
    stream = stream_for(sr, 0)
    stream_wall, stream_cpu = time.perf_counter() - t0, time.process_time() - c0
    n = len(stream)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, "
        f"{platform.machine()}; {n:,} requests over {stream.horizon / 3600:g} h "
        f"(stream generation {stream_wall:.2f} s wall, {stream_cpu:.2f} s CPU)"
    )
    specs = {
        "hpa": s.autoscaling,
        "kpa": KPASpec(kind="kpa", target=6, max_replicas=8),
        "fixed": FixedSpec(kind="fixed", replicas=4),
    }
    timing: dict[str, float] = {}
    orig_lc, orig_measure = W.run_lifecycle, W.measure_batched

    def lc(*a, **k):
        t = time.perf_counter()
        r = orig_lc(*a, **k)
        timing["simulate"] = time.perf_counter() - t
        return r

    def meas(*a, **k):
        t = time.perf_counter()
        r = orig_measure(*a, **k)
        timing["measure"] = time.perf_counter() - t
        return r

    W.run_lifecycle, W.measure_batched = lc, meas
    print(
        "| policy | ticks | batches | simulate s | measure s | day s (incl. stream) | "
        "requests/s | replicas avg/peak | p99 ms |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.policies:
        spec = specs[name]
        t = time.perf_counter()
        r = W.run_policy(s, cat[gpu], svc, spec, 0)
        body = time.perf_counter() - t
        total = body + stream_wall
        ticks = int(round(stream.horizon / spec.period_s))
        batches = int(round(r.scalars["served"] / r.scalars["mean_batch"]))
        print(
            f"| {name} ({spec.kind}, tick {spec.period_s:g} s) | {ticks:,} | {batches:,} | "
            f"{timing['simulate']:.1f} | {timing['measure']:.1f} | {total:.1f} | "
            f"{n / total / 1e6:.2f}M | {r.scalars['replicas_avg']:.1f}/"
            f"{r.scalars['replicas_peak']:.0f} | {r.quantiles['latency'][99.0] * 1000:.1f} |"
        )
    if args.engine:
        from capsim.evaluate import _jitter_for
        from capsim.sim.batched import run_batched
        from capsim.sim.batched_queue import EngineConfig

        cfg = EngineConfig(
            replicas=4,
            batch_times=svc.batch_times(s.fleet.max_batch),
            max_queue_delay_s=s.fleet.max_queue_delay_s,
            jitter=_jitter_for(sr, 0, n),
        )
        t = time.perf_counter()
        res = run_batched(stream.arrival, cfg, stream.horizon)
        el = time.perf_counter() - t
        print(
            f"fixed-fleet SimPy engine (run_batched, 4 replicas, no metrics): {el:.1f} s, "
            f"{n / el / 1e6:.2f}M requests/s, {len(res.batch_start):,} batches, "
            f"p99 {np.percentile(res.latency, 99) * 1000:.1f} ms"
        )


if __name__ == "__main__":
    main()
