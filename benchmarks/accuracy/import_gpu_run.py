"""Copy a harness run's whole-model LLM steps into accuracy rows (``llm_decode_step``, ``llm_prefill``).

The rows of kind ``forward_llm_step`` in a ``benchmarks/gpu_runs/<run>/measurements.csv`` (a
whole Llama-3.1-8B-shaped model, random weights, one GPU) become rows of
``measurements.csv``: decode steps (ms per step of ``batch`` sequences, each attending to
``seq_len`` KV tokens: ``prompt_tokens`` = that context, ``output_tokens`` = 1) and prefill
(ms for ``batch`` prompts of ``seq_len`` tokens). ``source_url`` is ``repo:<path>`` (a file in
this repository), ``source_ref`` the commit that added it and its date; the split follows
``schema.assign_split``.

Run: ``python benchmarks/accuracy/import_gpu_run.py RUN_DIR GPU COMMIT DATE >> measurements.csv``
(prints CSV rows without a header).
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import schema  # noqa: E402

ROOT = HERE.parents[1]


def rows_of(run: Path, gpu: str, commit: str, date: str) -> list[dict[str, str]]:
    """Accuracy rows for every ``forward_llm_step`` row of ``run``'s measurements."""
    src = run / "measurements.csv"
    d = pd.read_csv(src)
    d = d[d.kind == "forward_llm_step"]
    url = f"repo:{src.resolve().relative_to(ROOT)}"
    out = []
    for _, r in d.iterrows():
        decode = r.phase == "decode"
        graph = "CUDA graph" in str(r.impl)
        b, ctx = int(r.batch), int(r.seq_len)
        row = dict.fromkeys(schema.COLUMNS, "")
        row.update(
            group="llm_decode_step" if decode else "llm_prefill",
            gpu=gpu, n_gpus="1", model="llama-3.1-8b", precision=str(r.precision),
            batch=str(b), tp="1", prompt_tokens=str(ctx), output_tokens="1",
            value=f"{r.median_s * 1e3:.4g}",
            unit=("ms per decode step (GPU)" if decode else "ms per prefill forward (GPU)"),
            engine=f"torch, {'CUDA graph' if graph else 'eager'} (capsim calibrate harness)",
            scenario=str(r.impl),
            source_url=url, source_ref=f"{commit} ({date})",
            notes=(f"{int(r.layers)} layers, hidden {int(r.hidden)}, kv_heads {int(r.kv_heads)}, "
                   f"vocab {int(r.vocab)}, random weights; median of {int(r.repeats)} x "
                   f"{int(r.inner)}, p10 {r.p10_s * 1e3:.4g} ms, p90 {r.p90_s * 1e3:.4g} ms; "
                   + (f"{b} sequences each at {ctx} KV tokens" if decode
                      else f"{b} prompts of {ctx} tokens in one forward")),
        )  # fmt: skip
        row["split"] = schema.assign_split(row)
        out.append(row)
    return out


def main(argv: list[str]) -> int:
    """Print the rows as CSV (no header) for RUN_DIR GPU COMMIT DATE."""
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    run, gpu, commit, date = Path(argv[0]), argv[1], argv[2], argv[3]
    if gpu not in schema.GPU_IDS:
        print(f"error: unknown gpu {gpu!r}; accepted: {sorted(schema.GPU_IDS)}", file=sys.stderr)
        return 2
    w = csv.DictWriter(sys.stdout, fieldnames=schema.COLUMNS, lineterminator="\n")
    w.writerows(rows_of(run, gpu, commit, date))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
