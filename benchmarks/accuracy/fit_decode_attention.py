"""Fit pre-0.8 TensorRT-LLM's GQA decode KV re-reads and host time on ``split == fit`` rows.

TensorRT-LLM before 0.8 decoded grouped-query attention with its masked MHA kernel, one thread
block per query head: each KV head's cache is read once per query head sharing it (8 for
Llama-2-70B), less what L2 serves. capsim models that as ``r`` reads of the KV cache per decode
step (engine preset ``tensorrt-llm-0.6``, ``capsim.spec.engine.DECODE_KV_READS``), 1 <= r <=
group size. With it the preset's per-iteration host time ``constant_ms`` (gptSession's
``generate()`` call: decoder setup, host-device copies and synchronisation around each step; no
public figure) is fitted: ``c`` and ``r`` minimise the squared log error of the ``llm_prefill``
and ``llm_static_batch`` predictions (the same formulas as ``score.py``) over the fit rows run
on TensorRT-LLM v0.5/v0.6. MHA models (group 1) do not depend on ``r``. Test rows are printed
with their errors, never used in the fit.

Run: ``python benchmarks/accuracy/fit_decode_attention.py`` (prints c, r, fit-row and test-row
errors; ``capsim/spec/engine.py`` carries the values with this script named as their source).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import least_squares

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from score import LEGACY_TRTLLM, _kv_cache_dtype  # noqa: E402

from capsim.load import load_catalog, load_model_card  # noqa: E402
from capsim.service.llm_estimate import estimate_llm  # noqa: E402
from capsim.spec.engine import CPU_PRESETS, DECODE_KV_READS, CpuOverhead, LLMEngineSettings  # noqa: E402

CSV = HERE / "measurements.csv"
PRESET = "tensorrt-llm-0.6"


def rows(df: pd.DataFrame) -> pd.DataFrame:
    """Prefill and static-batch rows of pre-0.8 TensorRT-LLM (both splits)."""
    groups = df.group.isin(["llm_prefill", "llm_static_batch"])
    return df[groups & df.engine.str.lower().str.contains(LEGACY_TRTLLM)].copy()


def predict(row: pd.Series, c: float, reads: float) -> float | None:
    """The row's quantity (ms of one prefill, or static-batch output tokens/s) with ``c`` ms
    host time per iteration and ``reads`` KV reads per decode step."""
    per_seq = CPU_PRESETS[PRESET].per_seq_us
    st = LLMEngineSettings(
        preset=PRESET, decode_kv_reads=reads, kv_cache_dtype=_kv_cache_dtype(row),
        cpu_overhead=CpuOverhead(constant_ms=c, per_seq_us=per_seq),
    )  # fmt: skip
    b, out, tp = int(row.batch), int(row.output_tokens), int(row.tp)
    e = estimate_llm(
        load_catalog()[row.gpu], load_model_card(row.model), row.precision, tp=tp, batch=b,
        prompt=int(row.prompt_tokens), output=out, settings=st,
    )  # fmt: skip
    if row.group == "llm_prefill":
        return None if e.prefill_s is None else 1e3 * e.prefill_s
    if b > e.fit.max_batch or e.prefill_batch_s is None or e.decode_step_s is None:
        return None
    tps = b * out / (e.prefill_batch_s + out * e.decode_step_s)
    return tps / tp if "per GPU" in str(row.unit) else tps


def errors(d: pd.DataFrame, c: float, reads: float) -> pd.Series:
    """predicted / measured - 1 per row (NaN where the batch does not fit)."""
    pred = [predict(r, c, reads) for _, r in d.iterrows()]
    err = [np.nan if p is None else p / m - 1 for p, m in zip(pred, d.value, strict=True)]
    return pd.Series(err, d.index)


def fit(d: pd.DataFrame) -> tuple[float, float]:
    """(c ms in [0, 5], r in [1, 8]) minimising the squared log error over ``d``'s rows."""

    def residuals(x: np.ndarray) -> np.ndarray:
        return np.log1p(errors(d, float(x[0]), float(x[1])).dropna().to_numpy())

    sol = least_squares(residuals, x0=[0.3, 2.0], bounds=([0.0, 1.0], [5.0, 8.0]), diff_step=1e-3)
    return float(sol.x[0]), float(sol.x[1])


def main() -> int:
    """Print the fitted values, then every row's error before (tensorrt-llm) and after."""
    d = rows(pd.read_csv(CSV))
    c, r = fit(d[d.split == "fit"])
    print(f"fitted: constant_ms c = {c:.2f}, reads per KV head per decode step r = {r:.2f}")
    shipped = CPU_PRESETS[PRESET].constant_ms, DECODE_KV_READS[PRESET][0]
    print(
        f"(capsim/spec/engine.py preset {PRESET!r}: constant_ms {shipped[0]}, reads {shipped[1]})"
    )
    cols = ["split", "group", "gpu", "model", "tp", "batch", "prompt_tokens", "output_tokens"]
    out = d[cols + ["value"]].copy()
    out["err_before"] = errors(d, CPU_PRESETS["tensorrt-llm"].constant_ms, 1.0)
    out["err_fit"] = errors(d, c, r)
    print(out.sort_values(["split", "group"]).to_string(float_format=lambda x: f"{x:.3f}"))
    for (split, group), s in out.groupby(["split", "group"]):
        print(
            f"{split} {group}: {s.err_fit.notna().sum()} rows, median |err| "
            f"{s.err_before.abs().median():.3f} -> {s.err_fit.abs().median():.3f}, worst "
            f"{s.err_before.loc[s.err_before.abs().idxmax()]:+.3f} -> "
            f"{s.err_fit.loc[s.err_fit.abs().idxmax()]:+.3f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
