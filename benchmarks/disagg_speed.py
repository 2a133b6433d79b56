"""Speed of the disaggregated engine against the co-located one on the Azure conversation trace.

``scenarios/chatbot_trace.yaml``'s hour of the Azure LLM conversation trace (19,366 requests,
their own prompt/output lengths), Llama-3.1-8B, its engine settings. Co-located: ``run_llm``
with N replicas. Disaggregated: ``run_disagg`` (prefill pool, KV transfers over the card's
link, decode pool of prefilled requests). Requests simulated per second of wall time, one
core, best of ``--repeat``; the stream is built before the clock starts. Target: the
disaggregated engine within 20% of the co-located one (issue 14).

    python benchmarks/disagg_speed.py
"""

from __future__ import annotations

import argparse
import time

from capsim.evaluate import make_service, stream_for
from capsim.load import load_catalog, load_scenario
from capsim.planning.disagg_sim import DisaggFleet, kv_link, transfer_bytes_per_token
from capsim.planning.static import Candidate
from capsim.sim.llm_disagg import PoolSetup, run_disagg
from capsim.sim.llm_engine import run_llm

#: (card, precision, co-located replicas, prefill replicas, decode replicas)
CONFIGS = [("h100-sxm", "fp8", 2, 1, 1), ("l4", "fp8", 4, 2, 2), ("a100-80gb-sxm", "int8", 2, 1, 1)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args()
    cat = load_catalog()
    s = load_scenario("scenarios/chatbot_trace.yaml", cat)
    st = stream_for(s, 0)
    n = len(st)
    kw = dict(router=s.fleet.router, max_wait_s=s.simulation.max_wait_s, horizon=st.horizon)
    print(f"Azure conversation trace: {n} requests over {st.horizon:.0f} s")
    print("| config | co-located req/s | disaggregated req/s | ratio |")
    print("|---|---|---|---|")
    for gpu, prec, reps, x, y in CONFIGS:
        svc = make_service(s, cat[gpu], prec, 1)
        c = Candidate(gpu, prec)
        f = DisaggFleet(c, x, c, y)
        link = kv_link(cat, f, "same_node")
        kvb = transfer_bytes_per_token(s, f)
        co = dis = float("inf")
        for _ in range(a.repeat):
            t0 = time.perf_counter()
            run_llm(st.arrival, st.prompt_tokens, st.output_tokens, svc, svc.limits, reps, **kw)
            co = min(co, time.perf_counter() - t0)
            t0 = time.perf_counter()
            run_disagg(st.arrival, st.prompt_tokens, st.output_tokens,
                       PoolSetup(svc, svc.limits, x), PoolSetup(svc, svc.limits, y), kvb, link,
                       **kw)  # fmt: skip
            dis = min(dis, time.perf_counter() - t0)
        print(f"| {reps} x {gpu} {prec} vs {x}P{y}D | {n / co:,.0f} | {n / dis:,.0f} | "
              f"{co / dis:.2f} |")  # fmt: skip


if __name__ == "__main__":
    main()
