"""Speed of the continuous-batching engine: replay the Azure conversation trace (19,366 requests).

Replays scenarios/chatbot_trace.yaml's stream (the shipped copy of AzureLLMInferenceTrace_conv,
one hour, with its own prompt and output lengths) through Llama-3.1-8B replicas and prints
requests simulated per second of wall time, one core. The trace is read and parsed before the
clock starts; the clock covers the engine run (``run_llm``), and separately the whole
replication with its metrics (``run_llm_replication``). Best of ``--repeat`` runs.

    python benchmarks/llm_trace_replay.py            # target: >= 20,000 requests/s
"""

from __future__ import annotations

import argparse
import time

from capsim.evaluate import make_service, stream_for
from capsim.load import load_catalog, load_scenario
from capsim.sim.llm_adapter import run_llm_replication
from capsim.sim.llm_engine import run_llm

CONFIGS = [("h100-sxm", "fp8", 1), ("l4", "fp8", 3), ("a100-80gb-sxm", "int8", 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cat = load_catalog()
    s = load_scenario("scenarios/chatbot_trace.yaml", cat)
    stream = stream_for(s, 0)
    n = len(stream)
    print(f"Azure conversation trace: {n} requests over {stream.horizon:.0f} s")
    print(f"{'config':<26}{'engine req/s':>14}{'wall s':>9}{'with metrics req/s':>20}"
          f"{'iterations':>12}{'step events':>13}")  # fmt: skip
    for gpu, prec, reps in CONFIGS:
        svc = make_service(s, cat[gpu], prec, 1)
        best = best_all = float("inf")
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            res = run_llm(stream.arrival, stream.prompt_tokens, stream.output_tokens, svc,
                          svc.limits, reps, router=s.fleet.router,
                          max_wait_s=s.simulation.max_wait_s, horizon=stream.horizon)  # fmt: skip
            best = min(best, time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_llm_replication(s, cat[gpu], svc, reps, 0, stream)
            best_all = min(best_all, time.perf_counter() - t0)
        label = f"{reps} x {gpu} {prec}"
        print(f"{label:<26}{n / best:>14,.0f}{best:>9.2f}{n / best_all:>20,.0f}"
              f"{res.iterations:>12,}{res.events:>13,}")  # fmt: skip


if __name__ == "__main__":
    main()
