"""Write capsim plain-CSV iteration runs from the harness's whole-model LLM steps.

The second H200 run (``gpu_runs/h200-2026-12-04-run2/measurements.csv``, harness 1.1.0) timed
whole Llama-3.1-8B-shaped decode steps (CUDA graph, as vLLM runs decode) and eager prefills.
This script copies those medians into the plain-CSV *iterations* layout ``capsim bench import``
reads (``phase,batch_size,seq_len,time_ms``), split by length so a fit can be checked on lengths
it did not see: ``fit.csv`` holds the 512- and 8192-token rows, ``holdout.csv`` the 2048-token
rows. Eager decode rows are left out (vLLM captures decode in CUDA graphs).

Run: ``python benchmarks/harness_iterations.py`` (rewrites the two files).
"""

from __future__ import annotations

import csv
from pathlib import Path

RUN = Path(__file__).resolve().parent / "gpu_runs" / "h200-2026-12-04-run2"
HEADER = (
    "# Derived by benchmarks/harness_iterations.py from measurements.csv (kind forward_llm_step,\n"
    "# median_s) of the real H200 run in this directory; decode rows: CUDA graph only.\n"
    "phase,batch_size,seq_len,time_ms,model,gpu,precision,engine,engine_version\n"
)
SETTINGS = "llama-3.1-8b,h200-sxm,bf16,torch (capsim harness),1.1.0"


def rows() -> list[tuple[str, int, int, float]]:
    """(phase, batch, seq_len, ms) of the whole-model steps a serving engine would run."""
    out = []
    with open(RUN / "measurements.csv", newline="") as f:
        for r in csv.DictReader(f):
            if r["kind"] != "forward_llm_step":
                continue
            if r["phase"] == "decode" and "CUDA graph" not in r["impl"]:
                continue
            ms = float(r["median_s"]) * 1000
            out.append((r["phase"], int(r["batch"]), int(r["seq_len"]), ms))
    return out


def main() -> None:
    """Write fit.csv and holdout.csv under the run's ``iterations/`` folder."""
    d = RUN / "iterations"
    d.mkdir(exist_ok=True)
    parts = {"fit": lambda n: n != 2048, "holdout": lambda n: n == 2048}
    for name, keep in parts.items():
        lines = [f"{p},{b},{n},{ms:.6f},{SETTINGS}\n" for p, b, n, ms in rows() if keep(n)]
        (d / f"{name}.csv").write_text(HEADER + "".join(lines))
        print(f"{d / name}.csv: {len(lines)} steps")


if __name__ == "__main__":
    main()
