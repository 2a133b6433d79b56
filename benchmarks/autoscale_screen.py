"""Screening autoscaling settings on compressed days: how close to the real-time day?

``capsim plan`` on a scenario with ``autoscaling:`` screens policy settings on a day compressed
``--factor`` times (load pattern, controller periods and windows, cold starts all faster;
service times unchanged) and simulates the real-time day only to confirm. This script runs the
same settings both ways, one replication each, and prints p99, cost and wall time of each, so
the screen's error and speed-up are measured, not assumed.

    python benchmarks/autoscale_screen.py scenarios/embedding_autoscaled.yaml --gpu l4
    python benchmarks/autoscale_screen.py scenarios/chatbot_autoscaled.yaml --gpu l4 --precision fp8
"""

from __future__ import annotations

import argparse
import platform
import time

from capsim.evaluate import make_service
from capsim.load import load_catalog, load_scenario
from capsim.planning.autoscaled import knobs, target_grid
from capsim.planning.whatif import evaluate_policy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("scenario")
    ap.add_argument("--gpu", default="l4")
    ap.add_argument("--precision", default="fp16")
    ap.add_argument("--factor", type=float, nargs="+", default=[8.0])
    ap.add_argument("--settings", type=int, default=4, help="the most aggressive N of the grid")
    ap.add_argument("--no-real", action="store_true", help="screens only (no real-time day)")
    a = ap.parse_args()
    s = load_scenario(a.scenario)
    cat = load_catalog()
    assert s.autoscaling is not None
    make_service(s, cat[a.gpu], a.precision, 1)
    print(f"# {a.scenario} {a.gpu} {a.precision}; {platform.processor() or platform.machine()}")
    print("| setting | day | p99 ms (binding metric) | cost $ | replicas avg | wall s |")
    print("|---|---|---|---|---|---|")
    for spec in target_grid(s.autoscaling)[: a.settings]:
        for f in a.factor if a.no_real else [*a.factor, 1.0]:
            t0 = time.perf_counter()
            r = evaluate_policy(s, cat, a.gpu, a.precision, 1, spec, replications=1, compression=f)
            dt = time.perf_counter() - t0
            day = "real time" if f == 1 else f"compressed {f:g}x"
            ok = "unstable" if r.unstable else f"{r.q().mean * 1000:.1f} ({r.primary})"
            print(
                f"| {knobs(spec)} | {day} | {ok} | {r.ci('cost_usd').mean:.2f} | "
                f"{r.ci('replicas_avg').mean:.2f} | {dt:.1f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
