"""Fixed-shape service times (per-layer model) against MLPerf Inference per-accelerator results.

Reads the accuracy suite's public measurements (``benchmarks/accuracy/measurements.csv``: one row
per MLPerf result, each with its source URL and a ``split`` of ``fit`` or ``test``) and predicts
every ``resnet50_offline`` / ``bert_offline`` row as ``capsim estimate`` does: the best throughput
of the card at the row's precision over batches 1..256 that fit in memory. BERT rows are costed
at 177 tokens per sample (``capsim estimate --seq-len 177``), the mean real length of MLPerf's
SQuAD v1.1 samples (padded to 384; the MLPerf harness drops the padding):
``accuracy/schema.py`` ``SQUAD_V11_MEAN_TOKENS`` gives the source. Hopper BERT rows declared fp16
are costed in FP8, as NVIDIA's harness runs them (``schema.FP8_HIGH_ACCURACY_GPUS``).

The one free constant of the per-layer model, the convolution efficiency factor
(``capsim.service.layers.FAMILY_FACTORS['conv']``), is fitted here on the ``fit`` rows of
``resnet50_offline`` only (grid search, minimising the mean absolute log error, which weighs
the worst rows more than the median does) and the script
checks the shipped value is that fit. Errors are reported per split; the ``test`` rows were not
used for anything.

Run: ``python benchmarks/fixed_shape_accuracy.py [--data CSV]``
"""

from __future__ import annotations

import argparse
import functools
import itertools
import math
import sys
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent / "accuracy"
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from schema import effective_seq_len, run_precision  # noqa: E402

from capsim.load import load_catalog, load_model_card  # noqa: E402
from capsim.service import layers  # noqa: E402
from capsim.service.fixed import FixedServiceModel  # noqa: E402

GROUPS = ("resnet50_offline", "bert_offline")
BATCHES = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GRID = np.round(np.arange(0.50, 1.201, 0.05), 2)
DEFAULT = HERE / "measurements.csv"


@functools.cache
def best_throughput(
    gpu: str, model: str, precision: str, conv: float, seq: int | None = None
) -> float:
    """Best requests/s over BATCHES that fit, with the conv factor set to ``conv``, at ``seq``
    tokens per sample (None: the card's own sequence length)."""
    old = layers.FAMILY_FACTORS["conv"]
    layers.FAMILY_FACTORS["conv"] = conv
    try:
        card = load_model_card(model).at_sequence_length(seq)
        svc = FixedServiceModel(load_catalog()[gpu], card, precision)
        fit = svc.memory_fit(max(BATCHES)).max_batch
        return max(svc.batch(b).throughput for b in BATCHES if b <= max(fit, 1))
    finally:
        layers.FAMILY_FACTORS["conv"] = old


def predict(df: pd.DataFrame, conv: float) -> pd.DataFrame:
    out = df.copy()
    out["predicted"] = [
        best_throughput(
            r.gpu,
            r.model,
            run_precision(r.group, r.gpu, r.precision),
            conv,
            effective_seq_len(r.group, r.seq_len),
        )
        for r in df.itertuples(index=False)
    ]
    out["err"] = out["predicted"] / out["value"] - 1
    return out


def fit_conv(df: pd.DataFrame) -> tuple[float, pd.Series]:
    """Grid search of the conv factor on the fit rows of resnet50_offline."""
    rows = df[(df.group == "resnet50_offline") & (df.split == "fit")]
    losses = pd.Series({c: float(np.mean(np.abs(np.log1p(predict(rows, c)["err"])))) for c in GRID})
    return float(losses.idxmin()), losses


def ordering(scored: pd.DataFrame) -> tuple[int, int, list[str]]:
    """Pairwise agreement of card order on per-card medians."""
    med = scored.groupby("gpu")[["value", "predicted"]].median()
    good, wrong = 0, []
    for a, b in itertools.combinations(med.index, 2):
        real = med.value[a] / med.value[b]
        pred = med.predicted[a] / med.predicted[b]
        if (real > 1) == (pred > 1):
            good += 1
        else:
            wrong.append(f"{a}/{b}: real {real:.2f}x, capsim {pred:.2f}x")
    return good, math.comb(len(med), 2), wrong


def report(scored: pd.DataFrame) -> None:
    for (group, prec, split), g in scored.groupby(["group", "precision", "split"]):
        good, pairs, wrong = ordering(g)
        print(
            f"\n{group} {prec} [{split}]: {len(g)} rows, median |err| "
            f"{g.err.abs().median():.1%}, worst {g.err.iloc[g.err.abs().argmax()]:+.1%}; "
            f"ordering {good}/{pairs}" + (f" (wrong: {'; '.join(wrong)})" if wrong else "")
        )
        med = g.groupby("gpu")[["value", "predicted"]].median()
        med["ratio"] = med.predicted / med.value
        print(med.to_string(float_format=lambda x: f"{x:,.2f}" if x < 10 else f"{x:,.0f}"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT)
    args = ap.parse_args(argv)
    if not args.data.is_file():
        print(f"error: {args.data}: measurements file not found", file=sys.stderr)
        return 2
    df = pd.read_csv(args.data, dtype={"precision": str})
    df = df[df.group.isin(GROUPS)].reset_index(drop=True)
    conv, losses = fit_conv(df)
    print("conv factor grid (mean |log error| on resnet50_offline fit rows):")
    print(" ".join(f"{c:.2f}:{v:.3f}" for c, v in losses.items()))
    shipped = layers.FAMILY_FACTORS["conv"]
    print(f"fitted conv factor {conv:.2f}; shipped {shipped:.2f}" + (
        "" if math.isclose(conv, shipped) else "  <-- MISMATCH: update capsim/service/layers.py"
    ))  # fmt: skip
    report(predict(df, shipped))
    return 0


if __name__ == "__main__":
    sys.exit(main())
