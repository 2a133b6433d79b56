"""Speed of the continuous-batching engine with prefix caching on shared-prefix traffic.

Two streams built on the Azure conversation trace (scenarios/chatbot_trace.yaml's, one hour):

* ``system prompts``: the trace replayed as is (its own lengths), every request behind one of
  8 shared system prompts (Zipf 1) — 19,366 requests, each with a KV-block key chain;
* ``sessions``: the trace's timestamps as session starts, ~3 turns each (geometric), 40 s think
  time, each turn sending the whole history — about 3x the requests, long shared chains.

Each is replayed through Llama-3.1-8B replicas with ``enable_prefix_caching`` on and off;
requests simulated per second of wall time, one core, best of ``--repeat``. The streams and
their key chains are built before the clock starts (chain building is timed on its own); the
clock covers ``run_llm``.

    python benchmarks/llm_prefix_replay.py          # target: >= 50,000 requests/s, caching on
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import yaml

from capsim.evaluate import make_service
from capsim.load import load_catalog, load_scenario
from capsim.sim.llm_engine import run_llm
from capsim.workload.streams import make_stream

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [("h100-sxm", "fp8", 1), ("l4", "fp8", 3), ("a100-80gb-sxm", "int8", 2)]
SYSTEM = {"lengths": [1800, 1200, 900, 600, 400, 300, 200, 100], "zipf_exponent": 1.0}
SESSIONS = {
    "turns": {"kind": "geometric", "mean": 3, "max": 20},
    "think_time_s": 40,
    "message": {"median": 80, "sigma": 1.0, "max": 2000},
}
TOKENS = {"kind": "lognormal", "prompt_median": 1, "prompt_sigma": 0, "output_median": 129,
          "output_sigma": 0.8, "prompt_max": 8000, "output_max": 1000}  # fmt: skip


def _scenario(tmp: Path, name: str, sessions: bool):
    d = yaml.safe_load((ROOT / "scenarios" / "chatbot_trace.yaml").read_text())
    d["traffic"]["arrivals"]["path"] = str(ROOT / "scenarios" / "traces" / "azure_conv_2023.csv")
    d["traffic"]["system_prompts"] = SYSTEM
    if sessions:
        d["traffic"]["sessions"] = SESSIONS
        d["traffic"]["tokens"] = TOKENS
        d["traffic"]["horizon_s"] = 3600
    p = tmp / f"{name}.yaml"
    p.write_text(yaml.safe_dump(d))
    return load_scenario(p)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    cat = load_catalog()
    print(f"{'stream':<16}{'config':<22}{'caching':>8}{'engine req/s':>14}{'wall s':>8}"
          f"{'chains s':>10}{'token hit':>10}{'step events':>13}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for name, ses in (("system prompts", False), ("sessions", True)):
            s = _scenario(Path(tmp), name.replace(" ", "_"), ses)
            st = make_stream(s, 0)
            n = len(st)
            p, o = st.prompt_tokens, st.output_tokens
            for gpu, prec, reps in CONFIGS:
                svc = make_service(s, cat[gpu], prec, 1)
                t0 = time.perf_counter()
                chains = st.prefixes.chains(p, o, svc.settings.block_size)
                t_chain = time.perf_counter() - t0
                for on in (True, False):
                    lim = svc.limits
                    lim = type(lim)(**{**lim.__dict__, "prefix_caching": on})
                    best = float("inf")
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        res = run_llm(st.arrival, p, o, svc, lim, reps, router=s.fleet.router,
                                      max_wait_s=s.simulation.max_wait_s, horizon=st.horizon,
                                      chains=chains)  # fmt: skip
                        best = min(best, time.perf_counter() - t0)
                    hit = (
                        f"{res.cached_tokens.sum() / p.sum():.0%}"
                        if res.cached_tokens is not None else "-"
                    )  # fmt: skip
                    print(f"{name:<16}{f'{reps} x {gpu} {prec}':<22}{'on' if on else 'off':>8}"
                          f"{n / best:>14,.0f}{best:>8.2f}{t_chain:>10.2f}{hit:>10}"
                          f"{res.events:>13,}  ({n:,} requests"
                          f"{'; overloaded, stopped early' if res.unstable else ''})")  # fmt: skip


if __name__ == "__main__":
    main()
