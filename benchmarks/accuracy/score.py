"""Score capsim's service-time model against the public measurements in ``measurements.csv``.

For every row, capsim's prediction is obtained through the stable CLI (``capsim estimate ...
--format json``, run in-process through click so that the package is imported once), then
printed next to the measured value. Summaries: per group the median and worst relative error
(``predicted / measured - 1``) and, within each (group, model, precision), pairwise card-ordering
agreement on the per-card medians.

Predictors, one small function per group (see ``PREDICTORS``):

- ``resnet50_*``, ``bert_*`` (MLPerf Offline/Server, per accelerator): best ``throughput_rps``
  over batches 1..256 among batches that fit (``capsim estimate --model M --gpu G --precision P
  --batch 1 2 4 ... 256``). BERT rows add ``--seq-len 177``: MLPerf's BERT harness runs each
  SQuAD v1.1 sample at its real length, whose mean is 177 of the padded 384 tokens
  (``schema.SQUAD_V11_MEAN_TOKENS``, sourced there); the per-row table shows it as ``eff=177``.
  Hopper BERT "fp16" rows are costed in FP8 (``--precision fp8``, shown as ``ran=fp8``): NVIDIA's
  harness runs their matmuls in FP8 (``schema.FP8_HIGH_ACCURACY_GPUS``, sourced there).
- ``llm_throughput`` (output tokens/s of one TP group at a fixed ISL/OSL): ``max_tokens_per_s``
  of ``capsim estimate --tp T --prompt ISL --output OSL``.
- ``llm_prefill`` (first-token latency): ``prefill_s`` of the same command at batch 1,
  ``prefill_batch_s`` at ``--batch B`` for B prompts.
- ``llm_decode_step`` (ms per decode step, B sequences at context C): ``decode_step_s`` at
  ``--batch B --prompt C --output 1``.
- The engine column picks the CPU-overhead preset (``--engine``): a bare torch forward is
  ``none``, TensorRT-LLM ``tensorrt-llm`` (``tensorrt-llm-0.6`` before 0.8: no XQA kernel, GQA
  decode re-reads the KV cache), else ``vllm-v1``.
- ``llm_static_batch`` (one static batch of B requests): B x OSL / (``prefill_batch_s`` +
  OSL x ``decode_step_s``) at ``--batch B``, per GPU where the row's unit is.
- ``nccl_allreduce`` (us per call), ``nccl_allreduce_algbw`` (GB/s): the catalog interconnect's
  alpha-beta ring model (``capsim.service.comm.collective_seconds``) at the row's ranks and size.
- anything else: "not predicted (reason)".

Run: ``python benchmarks/accuracy/score.py [--split test|fit|all] [--csv OUT] [--summary-only]``
"""

from __future__ import annotations

import argparse
import functools
import itertools
import json
import math
import multiprocessing
import re
import sys
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
from click.testing import CliRunner

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from schema import effective_seq_len, run_precision  # noqa: E402

from capsim.cli import main as capsim_cli  # noqa: E402
from capsim.load import load_catalog  # noqa: E402
from capsim.service.comm import collective_seconds  # noqa: E402
from capsim.spec.catalog import Catalog  # noqa: E402

DEFAULT_CSV = HERE / "measurements.csv"
BATCHES = [1, 2, 4, 8, 16, 32, 64, 128, 256]


class NotPredicted(Exception):
    """capsim has no prediction for this row; the message says why."""


@functools.cache
def estimate(*args: str) -> dict:
    """``capsim estimate ARGS --format json`` parsed; NotPredicted on a non-zero exit."""
    result = CliRunner().invoke(capsim_cli, ["estimate", *args, "--format", "json"])
    if result.exit_code != 0:
        first = (result.output or str(result.exception)).strip().splitlines()
        raise NotPredicted(f"capsim estimate failed: {first[-1] if first else result.exit_code}")
    return json.loads(result.output)


def best_fixed_throughput(row: pd.Series) -> float:
    """Best samples/s over batches 1..256 (fitting batches only) for a fixed-shape model, at the
    row's effective sequence length where it has one (:func:`schema.effective_seq_len`)."""
    seq = effective_seq_len(str(row.group), row.get("seq_len", ""))
    prec = run_precision(str(row.group), str(row.gpu), str(row.precision))
    out = estimate(
        "--model", str(row.model), "--gpu", str(row.gpu), "--precision", prec,
        "--batch", *[str(b) for b in BATCHES], *(["--seq-len", str(seq)] if seq else []),
    )  # fmt: skip
    fits = [b["throughput_rps"] for b in out["batches"] if b.get("fits", True)]
    if not fits:
        raise NotPredicted("no batch fits in memory")
    return max(fits)


def llm_throughput(row: pd.Series) -> float:
    """Output tokens/s ceiling of one replica (TP group) at the row's ISL/OSL."""
    out = estimate(
        "--model", str(row.model), "--gpu", str(row.gpu), "--precision", str(row.precision),
        "--tp", str(int(row.tp)), "--prompt", str(int(row.prompt_tokens)),
        "--output", str(int(row.output_tokens)), "--engine", _engine(row),
        "--kv-cache-dtype", _kv_cache_dtype(row),
    )  # fmt: skip
    return _number(out, "max_tokens_per_s")


#: TensorRT-LLM releases before 0.8, whose GQA decode attention had no XQA kernel
LEGACY_TRTLLM = re.compile(r"tensorrt-llm v0\.[0-7]\b")


def _engine(row: pd.Series) -> str:
    """capsim's engine preset for the row's engine (``none`` for a bare torch forward;
    ``tensorrt-llm-0.6`` for TensorRT-LLM before 0.8, whose GQA decode re-reads the KV cache).

    >>> _engine(pd.Series(dict(engine="TensorRT-LLM v0.6.1 (gptSessionBenchmark)")))
    'tensorrt-llm-0.6'
    >>> _engine(pd.Series(dict(engine="TensorRT-LLM 0.21 (trtllm-bench)")))
    'tensorrt-llm'
    """
    eng = str(row.get("engine", "")).lower()
    if eng.startswith("torch"):
        return "none"
    if "tensorrt" in eng:
        return "tensorrt-llm-0.6" if LEGACY_TRTLLM.search(eng) else "tensorrt-llm"
    if "sglang" in eng:
        return "sglang"
    return "vllm-v1"


def _kv_cache_dtype(row: pd.Series) -> str:
    """The KV cache the row's run stored: ``fp8`` for TensorRT-LLM at fp8 (its FP8 rows run
    NVIDIA's ModelOpt checkpoints, huggingface.co/collections/nvidia/model-optimizer-
    66aa84f7966b3150262481a4, whose FP8 exports declare ``"kv_cache_quant_algo": "FP8"`` in
    hf_quant_config.json, which the engine applies; before capsim had ``kv_cache_dtype`` its
    ``fp8`` precision implied this); else ``auto`` (the model's 16-bit dtype).

    >>> _kv_cache_dtype(pd.Series(dict(engine="TensorRT-LLM v0.5", precision="fp8")))
    'fp8'
    """
    eng = str(row.get("engine", "")).lower()
    return "fp8" if "tensorrt" in eng and str(row.precision) == "fp8" else "auto"


def _llm(row: pd.Series, batch: int) -> dict:
    """``capsim estimate`` of an LLM row at ``batch`` sequences."""
    return estimate(
        "--model", str(row.model), "--gpu", str(row.gpu), "--precision", str(row.precision),
        "--tp", str(int(row.tp)), "--prompt", str(int(row.prompt_tokens)),
        "--output", str(int(row.output_tokens)), "--batch", str(batch),
        "--engine", _engine(row), "--kv-cache-dtype", _kv_cache_dtype(row),
    )  # fmt: skip


def _number(out: dict, key: str) -> float:
    """``out[key]`` as a float; NotPredicted when capsim has none (card cannot run it)."""
    if out.get(key) is None:
        raise NotPredicted(f"capsim gives no {key} (precision or TP not supported on the card)")
    return float(out[key])


def _batch(row: pd.Series) -> int:
    return int(row.batch) if pd.notna(row.batch) and str(row.batch) != "" else 1


def llm_prefill(row: pd.Series) -> float:
    """First-token latency in ms: ``prefill_s`` of one prompt, or ``prefill_batch_s`` of the
    row's ``batch`` prompts."""
    b = _batch(row)
    out = _llm(row, b)
    return 1e3 * _number(out, "prefill_s" if b == 1 else "prefill_batch_s")


def llm_decode_step(row: pd.Series) -> float:
    """ms of one decode step of ``batch`` sequences at ``prompt_tokens`` KV context each
    (``decode_step_s`` with ``--output 1``). Eager-mode rows are not predicted: their time is
    the host launching ~450 kernels one by one, which capsim does not model (engines replay
    decode in CUDA graphs)."""
    if "eager" in str(row.engine):
        raise NotPredicted("eager decode is host launch-bound; capsim models CUDA-graph decode")
    return 1e3 * _number(_llm(row, _batch(row)), "decode_step_s")


def llm_static_batch(row: pd.Series) -> float:
    """Output tokens/s of one static batch: batch x output / (batch prefill + output x step).

    Divided by TP when the row's unit is per GPU.
    """
    b = int(row.batch)
    out = _llm(row, b)
    if not out.get("batch_fits", True):
        top = out.get("max_batch")
        raise NotPredicted(f"batch {b} above capsim's max batch {top} (memory or max_num_seqs)")
    steps = _number(out, "decode_step_s") * int(row.output_tokens)
    tokens_per_s = b * int(row.output_tokens) / (_number(out, "prefill_batch_s") + steps)
    return tokens_per_s / int(row.tp) if "per GPU" in str(row.unit) else tokens_per_s


@functools.cache
def _catalog() -> Catalog:
    return load_catalog()


def nccl_allreduce(row: pd.Series) -> float:
    """Time of one all-reduce call in us: the card's alpha-beta ring model
    (:func:`capsim.service.comm.collective_seconds`) at the row's ranks and message size."""
    ic = _catalog()[str(row.gpu)].interconnect
    ranks = int(row.n_gpus)
    if ranks > ic.max_gpus and ic.network is None:
        raise NotPredicted(f"{ranks} ranks span nodes and {row.gpu} has no network entry")
    return 1e6 * float(collective_seconds(ic, "all_reduce", float(row.message_bytes), ranks))


def nccl_allreduce_algbw(row: pd.Series) -> float:
    """Algorithm bandwidth in GB/s: bytes / predicted time of one call."""
    return float(row.message_bytes) / (nccl_allreduce(row) * 1e-6) / 1e9


def not_predicted(reason: str) -> Callable[[pd.Series], float]:
    """A predictor that always declines with ``reason``."""

    def predictor(row: pd.Series) -> float:
        raise NotPredicted(reason)

    return predictor


#: group -> predictor (row -> predicted value in the row's unit).
PREDICTORS: dict[str, Callable[[pd.Series], float]] = {
    "resnet50_offline": best_fixed_throughput,
    "resnet50_server": best_fixed_throughput,
    "bert_offline": best_fixed_throughput,
    "bert_server": best_fixed_throughput,
    "llm_throughput": llm_throughput,
    "llm_prefill": llm_prefill,
    "llm_decode_step": llm_decode_step,
    "llm_static_batch": llm_static_batch,
    "nccl_allreduce": nccl_allreduce,
    "llm_token_latency": not_predicted("ShareGPT prompt lengths vary; no per-token latency CLI"),
    "nccl_allreduce_algbw": nccl_allreduce_algbw,
    "mlperf_llama2_70b_offline": not_predicted("TP and per-request lengths not in the summary"),
    "mlperf_llama2_70b_server": not_predicted("TP and per-request lengths not in the summary"),
}


def _predict_rows(df: pd.DataFrame) -> list[tuple[object, float, str]]:
    """(index, prediction or NaN, status) for each row of ``df``, in one process."""
    out = []
    for idx, row in df.iterrows():
        fn = PREDICTORS.get(row.group, not_predicted(f"no predictor for group {row.group}"))
        try:
            out.append((idx, fn(row), "ok"))
        except NotPredicted as exc:
            out.append((idx, math.nan, f"not predicted ({exc})"))
    return out


#: Columns that decide which ``capsim estimate`` call a row needs: rows with equal values
#: go to the same worker, so each call runs once.
_CALL_KEY = [
    "model", "gpu", "precision", "seq_len", "tp", "prompt_tokens", "output_tokens", "batch",
    "engine",
]  # fmt: skip


def predict(df: pd.DataFrame, jobs: int = 1) -> pd.DataFrame:
    """``df`` with ``predicted``, ``rel_error`` and ``status`` columns added.

    With ``jobs`` > 1 the distinct calls are dealt round-robin to ``jobs`` processes.
    """
    keys = pd.Series(["|".join(map(str, t)) for t in df[_CALL_KEY].itertuples(index=False)],
                     index=df.index)  # fmt: skip
    worker = keys.map({k: i % jobs for i, k in enumerate(sorted(set(keys)))})
    parts = [df[worker == k] for k in range(jobs)]
    if jobs > 1:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("fork")) as ex:
            results = [r for part in ex.map(_predict_rows, parts) for r in part]
    else:
        results = _predict_rows(df)
    by_index = {idx: (pred, status) for idx, pred, status in results}
    out = df.copy()
    out["predicted"] = [by_index[i][0] for i in df.index]
    out["rel_error"] = out["predicted"] / out["value"] - 1.0
    out["status"] = [by_index[i][1] for i in df.index]
    return out


def group_summary(scored: pd.DataFrame) -> pd.DataFrame:
    """Per group: rows, predicted rows, median |error|, worst signed error."""
    recs = []
    for group, g in scored.groupby("group", sort=True):
        ok = g[g.status == "ok"]
        worst = ok.rel_error.iloc[ok.rel_error.abs().argmax()] if len(ok) else math.nan
        recs.append(
            dict(
                group=group,
                rows=len(g),
                predicted=len(ok),
                median_abs_err=ok.rel_error.abs().median() if len(ok) else math.nan,
                worst_err=worst,
            )  # fmt: skip
        )
    return pd.DataFrame(recs)


def ordering(scored: pd.DataFrame) -> pd.DataFrame:
    """Pairwise card-ordering agreement on per-card medians within (group, model, precision).

    >>> df = pd.DataFrame(dict(group="g", model="m", precision="p", gpu=["a", "b"],
    ...     value=[1.0, 2.0], predicted=[3.0, 1.0], status="ok"))
    >>> ordering(df)[["pairs", "agree"]].values.tolist()
    [[1, 0]]
    """
    recs = []
    ok = scored[scored.status == "ok"]
    for (group, model, prec), g in ok.groupby(["group", "model", "precision"], sort=True):
        med = g.groupby("gpu")[["value", "predicted"]].median()
        pairs, wrong = 0, []
        for a, b in itertools.combinations(sorted(med.index), 2):
            pairs += 1
            real = med.value[a] / med.value[b]
            pred = med.predicted[a] / med.predicted[b]
            if (real > 1) != (pred > 1):
                wrong.append(f"{a}/{b}: real {real:.2f}x, capsim {pred:.2f}x")
        recs.append(
            dict(group=group, model=model, precision=prec, cards=len(med), pairs=pairs,
                 agree=pairs - len(wrong), wrong="; ".join(wrong))
        )  # fmt: skip
    return pd.DataFrame(recs)


def settings(row: pd.Series) -> str:
    """Short text of the row's shape (batch/seq/tp/lengths/bytes) for the per-row table."""
    parts = []
    for col, label in [("seq_len", "seq"), ("tp", "tp"), ("prompt_tokens", "in"),
                       ("output_tokens", "out"), ("message_bytes", "bytes"), ("n_gpus", "n")]:  # fmt: skip
        v = row.get(col)
        if pd.notna(v) and str(v) != "":
            parts.append(f"{label}={int(float(v))}")
            if col == "seq_len" and (eff := effective_seq_len(str(row.get("group", "")), v)):
                parts.append(f"eff={eff}")
    ran = run_precision(
        str(row.get("group", "")), str(row.get("gpu", "")), str(row.get("precision"))
    )
    if ran != str(row.get("precision")):
        parts.append(f"ran={ran}")
    return " ".join(parts)


def print_rows(scored: pd.DataFrame) -> None:
    """One line per row: measured vs predicted."""
    print(f"{'group':26} {'gpu':15} {'model':13} {'prec':5} {'settings':26} "
          f"{'measured':>11} {'predicted':>11} {'ratio':>6}")  # fmt: skip
    for _, r in scored.iterrows():
        head = (f"{r.group:26} {r.gpu:15} {str(r.model):13} {str(r.precision):5} "
                f"{settings(r):26} {r.value:11.5g}")  # fmt: skip
        if r.status == "ok":
            print(f"{head} {r.predicted:11.5g} {r.predicted / r.value:6.2f}")
        else:
            print(f"{head} {r.status}")


class BadInput(Exception):
    """The measurements file cannot be scored; the message names the file and the problem."""


def load(path: Path, split: str) -> pd.DataFrame:
    """The measurements, restricted to one split (or all); BadInput names what is wrong."""
    try:
        df = pd.read_csv(path, dtype={"precision": str, "model": str})
    except (OSError, pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise BadInput(f"{path}: cannot read the measurements CSV ({exc})") from exc
    missing = [c for c in ("group", "gpu", "model", "precision", "value", "unit", "split")
               if c not in df.columns]  # fmt: skip
    if missing:
        raise BadInput(f"{path}: missing column(s) {', '.join(missing)}; see schema.COLUMNS")
    bad = df.index[~(pd.to_numeric(df["value"], errors="coerce") > 0)]
    if len(bad):
        raise BadInput(f"{path}: row {bad[0] + 2}: value must be a positive number")
    df["model"] = df["model"].fillna("")
    return df if split == "all" else df[df["split"] == split].reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    """Score, print the tables, optionally write the per-row CSV."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_CSV)
    ap.add_argument("--split", choices=["test", "fit", "all"], default="test")
    ap.add_argument("--csv", type=Path, help="write the per-row table here")
    ap.add_argument("--summary-only", action="store_true", help="skip the per-row lines")
    ap.add_argument("--group", default="", help="only groups starting with this prefix")
    ap.add_argument("--jobs", type=int, default=2, help="parallel processes (default 2)")
    args = ap.parse_args(argv)
    try:
        data = load(args.data, args.split)
    except BadInput as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    selected = data[data["group"].str.startswith(args.group)].reset_index(drop=True)
    scored = predict(selected, jobs=max(1, args.jobs))
    if not args.summary_only:
        print_rows(scored)
    pd.set_option("display.width", 200)
    pd.set_option("display.max_colwidth", 120)
    print(f"\nsplit={args.split}: {len(scored)} rows\n")
    print(group_summary(scored).to_string(index=False, float_format=lambda x: f"{x:+.3f}"))
    print()
    print(ordering(scored).to_string(index=False))
    if args.csv:
        tmp = args.csv.with_suffix(args.csv.suffix + ".tmp")
        scored.to_csv(tmp, index=False)
        tmp.replace(args.csv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
