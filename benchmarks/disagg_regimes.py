"""When does disaggregated prefill/decode pay? Co-located vs disaggregated on a grid of prompt
lengths and TPOT targets (``scenarios/chatbot_disagg.yaml``'s model and engine, H100 SXM FP8).

The published finding (DistServe, Zhong et al., OSDI 2024, arXiv:2401.09670, sections 2-3 and
figure 1; vLLM's disaggregated-prefill docs): disaggregation wins when the TPOT target is tight
and prompts are long (prefill chunks stall decodes in a co-located batch), and loses at loose
targets or short prompts (one pool shares its GPUs; two pools pay twice for headroom, and
the KV transfer adds to TTFT).

    python benchmarks/disagg_regimes.py            # ~1-3 min on 2 cores
"""

from __future__ import annotations

import argparse
import time

from capsim.load import load_catalog, load_scenario
from capsim.planning.api import plan

ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]


def variant(s, prompt: int, tpot_ms: float, rate: float):
    """The scenario with lognormal prompts of median ``prompt`` and TPOT target ``tpot_ms``."""
    d = s.model_dump()
    d["traffic"]["tokens"] = {
        "kind": "lognormal", "prompt_median": prompt, "prompt_sigma": 0.5,
        "output_median": 200, "output_sigma": 0.5, "prompt_max": 7000, "output_max": 1000,
    }  # fmt: skip
    d["traffic"]["arrivals"]["rate_rps"] = rate
    d["slo"]["tpot_ms"] = tpot_ms
    return type(s).model_validate(d)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rate", type=float, default=32.0)
    ap.add_argument("--prompts", default="256,1024,4096")
    ap.add_argument("--tpots", default="12,20,150")
    a = ap.parse_args()
    cat = load_catalog()
    base = load_scenario(ROOT / "scenarios" / "chatbot_disagg.yaml", cat)
    print("| prompt median | TPOT target ms | co-located | $/h | disaggregated | $/h | winner |")
    print("|---|---|---|---|---|---|---|")
    for prompt in map(int, a.prompts.split(",")):
        for tpot in map(float, a.tpots.split(",")):
            t0 = time.perf_counter()
            r = plan(variant(base, prompt, tpot, a.rate), cat)
            d = r.disagg
            c = d.colocated
            b = d.best
            print(
                f"| {prompt} | {tpot:g} | {c.config.label() if c else 'none'} | "
                f"{c.usd_per_hour if c else float('nan'):.2f} | "
                f"{b.fleet.label() if b else 'none'} | "
                f"{b.usd_per_hour if b else float('nan'):.2f} | {d.winner} |"
                f"  ({time.perf_counter() - t0:.0f} s)",
                flush=True,
            )


if __name__ == "__main__":
    main()
