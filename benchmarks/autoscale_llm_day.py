"""Speed of an autoscaled LLM day: every policy of scenarios/chatbot_autoscaled.yaml, one core.

One simulated 24-hour day of Llama-3.1-8B chat (12 req/s mean, 4:1 diurnal, ~1M requests with
Azure conversation-trace token lengths) on l4 fp8, in real time: the autoscaler's SimPy process,
the replica lifecycle and the continuous-batching engine (``ScalableLLMFleet``), then the
measurement (TTFT/TPOT per 5-min window, hourly attainment, cost, energy). One replication per
policy, wall time; the stream is generated before the clock starts.

    python benchmarks/autoscale_llm_day.py [--policies fixed-peak hpa-inflight ...]
"""

from __future__ import annotations

import argparse
import platform
import time

import capsim.planning.whatif as W
from capsim.evaluate import make_service, stream_for
from capsim.load import load_catalog, load_scenario
from capsim.workload.streams import real_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--policies", nargs="+", default=None, help="names from whatif.policies")
    args = ap.parse_args()
    s = load_scenario("scenarios/chatbot_autoscaled.yaml")
    cat = load_catalog()
    gpu, prec = s.whatif.gpu, s.whatif.precision
    svc = make_service(s, cat[gpu], prec)
    t0 = time.perf_counter()
    stream = stream_for(real_time(s), 0)
    print(
        f"{platform.python_implementation()} {platform.python_version()}, {platform.machine()}; "
        f"{len(stream):,} requests over {stream.horizon / 3600:g} h on {gpu} {prec} "
        f"(stream {time.perf_counter() - t0:.1f} s)"
    )
    fixed_n = W.peak_fixed_replicas(s, cat, gpu, prec, 1)
    specs = [p for p in s.whatif.policies if args.policies is None or p.label in args.policies]
    print(
        "| policy | day s | requests/s | replicas avg/peak | cold starts | p99 TTFT ms | p99 TPOT ms |"
    )
    print("|---|---|---|---|---|---|---|")
    for spec in specs:
        t = time.perf_counter()
        r = W.run_policy(s, cat[gpu], svc, spec, 0, fixed_replicas=fixed_n)
        wall = time.perf_counter() - t
        sc, q = r.scalars, r.quantiles
        print(
            f"| {spec.label} ({spec.kind}) | {wall:.1f} | {sc['arrived'] / wall:,.0f} | "
            f"{sc['replicas_avg']:.1f}/{sc['replicas_peak']:.0f} | {sc['cold_starts']:.0f} | "
            f"{q['ttft'][99.0] * 1000:.0f} | {q['tpot'][99.0] * 1000:.1f} |"
        )


if __name__ == "__main__":
    main()
