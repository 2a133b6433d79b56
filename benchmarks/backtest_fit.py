"""Backtest errors before and after ``capsim calibrate fit-bench``, on runs not used to fit.

Runs the two real inputs capsim can replay today on a scratch copy of the catalog (the shipped
one is not touched) and prints the per-value errors as Markdown for benchmarks/README.md:

* H200 whole-model Llama-3.1-8B steps (``gpu_runs/h200-2026-12-04-run2/iterations``): fit on
  the 512- and 8192-token rows, report the held-out 2048-token rows;
* MLPerf v4.1 ResNet-50 SingleStream on an L4 (tests/data/bench/mlperf): the only served run
  with a capsim model card, so it can only be fitted in-sample (nothing left to hold out);
* with ``--sglang``: SGLang Llama-3.3-70B on 4x H200 (tests/data/bench/sglang, the public
  datacrunch-research rate sweep, served with the llama-3.1-70b card: the same architecture):
  fit on the 1 and 4 req/s runs, report the held-out 2 and 8 req/s runs (benchmarks/README.md,
  2026-12-05): the fit is written into a scratch catalog, then every run is backtested on the
  shipped and on the fitted catalog with the fitted scenario-side numbers (CPU overhead,
  per-sequence time, front-end latency), row by row;
* with ``--vllm-a100``: vLLM 0.8.3 Llama-3.3-70B on 8x A100-SXM4-40GB, TP 8 (tests/data/bench/vllm/
  a100x8_llama3.3-70b_tp8, the public surajssd/llm-k8s ShareGPT sweep, with per-request lengths,
  TTFTs and ITLs; the llama-3.1-70b card): fit on the 1 and 16 req/s runs, report the held-out
  4 req/s run and the all-at-once burst (benchmarks/README.md, 2026-12-06), the same way as
  ``--sglang``. The four files
  are imported together, so the runs that repeated the 1 req/s run's prompts are replayed
  with them cached (capsim.bench.repeats).

Run: ``python benchmarks/backtest_fit.py`` (about a minute on 2 cores; ``--sglang`` adds tens of
minutes on a loaded 2-core machine).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
STEPS = ROOT / "benchmarks" / "gpu_runs" / "h200-2026-12-04-run2" / "iterations"
L4 = ROOT / "tests" / "data" / "bench" / "mlperf" / "l4_resnet50_singlestream"
SGLANG = ROOT / "tests" / "data" / "bench" / "sglang" / "h200x4_llama3.3-70b_online.jsonl"
SGLANG_SETTINGS = ["--gpu", "h200-sxm", "--model", "llama-3.1-70b", "--precision", "bf16",
                   "--tp", "4", "--engine", "sglang"]  # fmt: skip
SGLANG_FIT, SGLANG_HELD = (0, 2), (1, 3)  # lines of the file: 1 and 4 req/s; 2 and 8 req/s
A100 = ROOT / "tests" / "data" / "bench" / "vllm" / "a100x8_llama3.3-70b_tp8"
A100_SETTINGS = ["--gpu", "a100-40gb-sxm", "--model", "llama-3.1-70b", "--precision", "bf16",
                 "--tp", "8", "--engine", "vllm", "--engine-version", "0.8.3"]  # fmt: skip
A100_RUN = "serving_meta-llama-Llama-3.3-70B-Instruct_tp8_pp1_sharegpt_qps_{}.json"
A100_FIT, A100_HELD = ("01", "16"), ("04", "inf")  # inf: all 200 requests at once


def capsim(*args: str) -> str:
    exe = Path(sys.executable).parent / "capsim"
    cmd = [str(exe) if exe.exists() else "capsim", *args]
    res = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if res.returncode:
        raise SystemExit(f"{' '.join(args)}: {res.stderr}")
    return res.stdout


def rows(catalog: Path, runs: list[str], extra: list[str]) -> list[dict]:
    out = capsim("--catalog", str(catalog), "backtest", *runs, *extra, "--format", "json")
    return json.loads(out)


def _spread(r: dict) -> str:
    """The prediction's std across replications, relative to it (finite runs), or ''."""
    sd = r.get("predicted_std")
    return f" (±{sd / r['predicted']:.1%})" if sd is not None and r["predicted"] else ""


def table(before: list[dict], after: list[dict]) -> None:
    """Errors before and after; with the std across replications (finite runs) in brackets."""
    print("| value | measured | before fit | after fit |")
    print("| --- | ---: | ---: | ---: |")
    for b, a in zip(before, after, strict=True):
        kind = b.get("load_kind")
        run = f"{b['load']:g} req/s " if kind == "rate" else "burst " if kind == "offline" else ""
        name = run + f"{b['metric']} {b['stat']}".replace(" value", "")
        unit = 1e3 if b["metric"] not in ("throughput_rps", "output_tokens_per_s") else 1.0
        print(
            f"| {name} | {b['measured'] * unit:.4g} | {b['rel_error']:+.1%}{_spread(b)} | "
            f"{a['rel_error']:+.1%}{_spread(a)} |"
        )


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        cat = Path(tmp) / "cat"
        shutil.copytree(ROOT / "hardware_catalog", cat)
        held = [str(STEPS / "holdout.csv")]
        before = rows(cat, held, [])
        fit = capsim("--catalog", str(cat), "calibrate", "fit-bench", str(STEPS / "fit.csv"),
                     "--holdout", held[0], "--gpu", "h200-sxm", "--format", "json")  # fmt: skip
        v = json.loads(fit)["values"]
        after = rows(cat, held, ["--overhead-ms", str(v["overhead_ms"]),
                                 "--per-seq-us", str(v["per_seq_us"])])  # fmt: skip
        print("## H200 steps, held-out 2048-token rows (times in ms)\n")
        table(before, after)
        print("\n```json\n" + json.dumps(json.loads(fit)["held_out_runs"], indent=1) + "\n```\n")
        l4 = [str(L4 / "mlperf_log_summary.txt"), "--gpu", "l4", "--model", "resnet-50",
              "--precision", "int8"]  # fmt: skip
        before = rows(cat, l4, [])
        runs = Path(tmp) / "runs"
        capsim("bench", "import", *l4, "--out", str(runs))
        fit = capsim("--catalog", str(cat), "calibrate", "fit-bench", str(runs), "--gpu", "l4",
                     "--format", "json")  # fmt: skip
        v = json.loads(fit)["values"]
        after = rows(cat, l4, ["--overhead-ms", str(v["overhead_ms"]),
                               "--frontend-ms", str(v["frontend_ms"])])  # fmt: skip
        print("## L4 ResNet-50 SingleStream (MLPerf v4.1), in-sample (latencies in ms)\n")
        table(before, after)
        print(f"\nfitted: {json.dumps({k: round(x, 4) for k, x in v.items()})}")
        if "--sglang" in sys.argv:
            sglang(cat, Path(tmp))
        if "--vllm-a100" in sys.argv:
            vllm_a100(Path(tmp))


def fit_and_report(
    cat: Path, fit_dir: Path, held_dir: Path, gpu: str, title: str, fit_reps: int, reps: int
) -> None:
    """``fit-bench`` the ``gpu`` entry of catalog copy ``cat`` on the runs in ``fit_dir`` (the
    ones in ``held_dir`` held out), then print both sets before (shipped catalog) and after."""
    evals = next((a.split("=")[1] for a in sys.argv if a.startswith("--evals=")), "120")
    args = ["--replications", str(fit_reps), "--max-evaluations", evals, "--format", "json"]
    fit = json.loads(capsim("--catalog", str(cat), "calibrate", "fit-bench", str(fit_dir),
                            "--holdout", str(held_dir), "--gpu", gpu, *args))  # fmt: skip
    v = fit["values"]
    after_args = ["--overhead-ms", f"{v['overhead_ms']}", "--per-seq-us", f"{v['per_seq_us']}",
                  "--frontend-ms", f"{v['frontend_ms']}"]  # fmt: skip
    rep = ["--replications", str(reps)]
    print(f"## {title}\n")
    print(f"{fit['evaluations']} evaluations; ", end="")
    print(f"fitted: {json.dumps({k: round(x, 4) for k, x in v.items()})}\n")
    for name, d in (("fit", fit_dir), ("held out", held_dir)):
        before = rows(ROOT / "hardware_catalog", [str(d)], rep)
        after = rows(cat, [str(d)], [*rep, *after_args])
        print(f"### {name}\n")
        table(before, after)
        print()


def vllm_a100(tmp: Path) -> None:
    """Fit the A100-40GB entry to the 1 and 16 req/s vLLM runs and report them and the held-out
    4 req/s run, before and after (on a fresh copy of the shipped catalog)."""
    cat = tmp / "cat_a100"
    shutil.copytree(ROOT / "hardware_catalog", cat)
    fit_dir, held_dir, runs = tmp / "a100_fit", tmp / "a100_held", tmp / "a100_runs"
    files = [str(A100 / A100_RUN.format(q)) for q in (*A100_FIT, *A100_HELD)]
    # imported together, so that a run repeating an earlier one's prompts is marked as
    # starting with them cached (capsim.bench.repeats): the 4 and 16 req/s runs repeat 1 req/s
    capsim("bench", "import", *files, *A100_SETTINGS, "--out", str(runs))
    for d, rates in ((fit_dir, A100_FIT), (held_dir, A100_HELD)):
        d.mkdir()
        for f in runs.glob("*.json"):
            if any(f"qps_{q}" in f.name for q in rates):
                shutil.copy(f, d)
    # finite 200-request runs (capsim.bench.finite): cheap, and one run's throughput spreads
    # by ~5%, so the fit averages 10 seeded replications and the report 20
    title = "vLLM 0.8.3 Llama-3.3-70B, 8x A100-40GB TP 8 (fit on 1 and 16 req/s; 4 held out)"
    fit_and_report(cat, fit_dir, held_dir, "a100-40gb-sxm", title, 10, 20)


def sglang(cat: Path, tmp: Path) -> None:
    """Fit the H200 entry to two SGLang runs and report them and the two held-out ones, before
    and after (on a fresh copy of the shipped catalog, not the one the H200 steps went into)."""
    cat = tmp / "cat_sglang"
    shutil.copytree(ROOT / "hardware_catalog", cat)
    runs = tmp / "sglang"
    capsim("bench", "import", str(SGLANG), *SGLANG_SETTINGS, "--out", str(runs))
    files = sorted(runs.glob("*.json"), key=lambda f: int(f.stem.rsplit("-", 1)[1]))
    fit_dir, held_dir = tmp / "sg_fit", tmp / "sg_held"
    for d, idx in ((fit_dir, SGLANG_FIT), (held_dir, SGLANG_HELD)):
        d.mkdir()
        for i in idx:
            shutil.copy(files[i], d)
    title = "SGLang Llama-3.3-70B, 4x H200 TP 4 (fit on 1 and 4 req/s; 2 and 8 held out)"
    fit_and_report(cat, fit_dir, held_dir, "h200-sxm", title, 2, 2)


if __name__ == "__main__":
    main()
