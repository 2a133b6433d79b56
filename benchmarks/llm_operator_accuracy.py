"""How far the roofline is from real A100 / H100 GEMM timings (Vidur's Llama-2-7B profile).

For every measured (num_tokens, tensor-parallel degree) the four linear layers of one
Llama-2-7B layer -- attn_pre_proj (QKV), attn_post_proj (O), mlp_up_proj (gate+up), mlp_down_proj
-- are predicted by :class:`capsim.service.llm.LLMServiceModel` (roofline op timer, catalog
efficiencies) and compared with the measured median. Printed per GPU and per operator: the
median and 95th-percentile absolute relative error, the worst error (signed: negative = the
roofline is too fast), and the efficiencies that fit the data best.

Data: ``benchmarks/data/vidur_profiling/mlp_{a100,h100}_Llama-2-7b-hf.csv`` (microsoft/vidur,
MIT). The catalog entry is used when the card is in the catalog, otherwise a stand-in built
from the spec table in docs/reference/gpus.md with default efficiencies.

Run: ``python benchmarks/llm_operator_accuracy.py [--data DIR]``
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing capsim
    sys.path.insert(0, str(ROOT))

from capsim.load import (  # noqa: E402
    load_gpu_file,  # noqa: E402
    load_model_card,  # noqa: E402
)
from capsim.paths import shipped_catalog_dir  # noqa: E402
from capsim.service.comm import default_op_timer  # noqa: E402
from capsim.service.llm import LLMServiceModel  # noqa: E402
from capsim.spec.catalog import GPU, SOURCED_FIELDS  # noqa: E402
from capsim.spec.engine import LLMEngineSettings  # noqa: E402

DEFAULT_DATA = ROOT / "benchmarks" / "data" / "vidur_profiling"

#: Vidur operator name -> capsim operator name.
OPS = {
    "attn_pre_proj": "qkv_proj",
    "attn_post_proj": "o_proj",
    "mlp_up_proj": "mlp_up",
    "mlp_down_proj": "mlp_down",
}
#: capsim catalog id -> file suffix of the Vidur profile.
CARDS = {"a100-80gb-sxm": "a100", "h100-sxm": "h100"}

_SPEC = {  # docs/reference/gpus.md spec table (dense peaks), for cards not yet in the catalog
    "a100-80gb-sxm": dict(
        name="NVIDIA A100 80GB SXM (spec-table stand-in)", memory_gib=80, usable_memory_gib=79.2,
        bandwidth_gb_s=2039, peak_tflops=dict(fp32=19.5, tf32=156, fp16=312, bf16=312, int8=624,
        int4=1248, fp8=None), interconnect=dict(kind="nvlink", bandwidth_gb_s=300),
    ),
    "h100-sxm": dict(
        name="NVIDIA H100 SXM (spec-table stand-in)", memory_gib=80, usable_memory_gib=79.65,
        bandwidth_gb_s=3350, peak_tflops=dict(fp32=67, tf32=494.5, fp16=989, bf16=989, fp8=1979,
        int8=1979, int4=None), interconnect=dict(kind="nvlink", bandwidth_gb_s=450),
    ),
}  # fmt: skip


def spec_gpu(gpu_id: str, **overrides: object) -> GPU:
    """A stand-in catalog entry from the spec table (default efficiencies, 4 us per kernel)."""
    fields = dict(
        id=gpu_id,
        kernel_overhead_us=4,
        power=dict(idle_w=60, warm_idle_w=100, max_w=700),
        price=dict(provider="spec-table stand-in", usd_per_hour=1.0),
        sources={f: "docs/reference/gpus.md spec table (test stand-in)" for f in _SOURCED},
    )
    fields.update(_SPEC[gpu_id])
    fields.update(overrides)
    return GPU(**fields)


_SOURCED = list(SOURCED_FIELDS)


def load_gpu(gpu_id: str) -> GPU:
    """The shipped catalog entry if there is one, else the spec-table stand-in."""
    path = shipped_catalog_dir() / f"{gpu_id}.yaml"
    return load_gpu_file(path) if path.is_file() else spec_gpu(gpu_id)


def read_profile(path: Path) -> pd.DataFrame:
    """Vidur's mlp.csv, one row per (num_tokens, tp) (duplicates merged by median), in seconds."""
    raw = pd.read_csv(path)
    cols = [f"time_stats.{op}.median" for op in OPS]
    keys = ["num_tokens", "num_tensor_parallel_workers"]
    df = raw[keys + cols].groupby(keys, as_index=False).median()
    long = df.melt(id_vars=keys, value_vars=cols, var_name="op", value_name="measured_ms")
    long["op"] = long["op"].str.split(".").str[1]
    long = long.rename(columns={"num_tensor_parallel_workers": "tp"})
    long["measured_s"] = long.pop("measured_ms") * 1e-3
    return long


def predict(gpu: GPU, profile: pd.DataFrame) -> pd.DataFrame:
    """Add the roofline prediction (and its compute / memory / overhead parts) to each row."""
    model = load_model_card("llama-2-7b")
    settings = LLMEngineSettings(max_num_batched_tokens=16)  # small tables: we call breakdown
    parts = []
    for tp, group in profile.groupby("tp"):
        # the roofline on purpose (calibrated entries would otherwise use their measured tables)
        svc = LLMServiceModel(gpu, model, "fp16", int(tp), settings, default_op_timer)
        times = {n: _op_times(svc, int(n)) for n in group["num_tokens"].unique()}
        for col in ("time_s", "compute_s", "memory_s", "overhead_s"):
            vals = [
                getattr(times[n][OPS[op]], col)
                for n, op in zip(group.num_tokens, group.op, strict=True)
            ]
            group = group.assign(**{f"predicted_{col}": vals})
        parts.append(group)
    out = pd.concat(parts, ignore_index=True)
    out = out.rename(columns={"predicted_time_s": "predicted_s"})
    out["rel_error"] = out.predicted_s / out.measured_s - 1.0
    return out


def _op_times(svc: LLMServiceModel, num_tokens: int) -> dict:
    return {ln.op.name: ln.op for ln in svc.breakdown(prefill=[(num_tokens, 0)]).lines}


def compare(gpu: GPU, csv_path: Path) -> pd.DataFrame:
    """Per (op, tp, num_tokens): measured and predicted seconds, relative error."""
    return predict(gpu, read_profile(csv_path))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """Per operator and overall: median / p95 absolute relative error, worst signed error."""
    rows = []
    for op, g in [*df.groupby("op", sort=False), ("all", df)]:
        err = g.rel_error.to_numpy()
        worst = err[np.argmax(np.abs(err))]
        row = g.iloc[int(np.argmax(np.abs(err)))]
        rows.append(
            dict(
                op=op,
                points=len(g),
                median_abs=float(np.median(np.abs(err))),
                p95_abs=float(np.percentile(np.abs(err), 95)),
                worst=float(worst),
                worst_at=f"{int(row.num_tokens)} tok, tp={int(row.tp)}",
                bias=float(np.median(err)),
            )
        )
    return pd.DataFrame(rows)


def fit_efficiencies(gpu: GPU, df: pd.DataFrame) -> dict[str, float]:
    """Compute efficiency, memory efficiency and per-kernel overhead minimising the median
    absolute relative error (grid search; rescales the predicted compute and memory parts)."""
    c0 = df.predicted_compute_s.to_numpy() * gpu.efficiency.compute
    m0 = df.predicted_memory_s.to_numpy() * gpu.efficiency.memory
    meas = df.measured_s.to_numpy()
    best = (np.inf, 0.0, 0.0, 0.0, 0.0)
    grid = itertools.product(
        np.arange(0.55, 0.951, 0.025), np.arange(0.6, 0.951, 0.025), np.arange(0.0, 12.1, 1.0)
    )
    for ec, em, ov in grid:
        err = np.abs(np.maximum(c0 / ec, m0 / em) + ov * 1e-6 - meas) / meas
        med = float(np.median(err))
        if med < best[0]:
            best = (med, float(np.percentile(err, 95)), ec, em, ov)
    med, p95, ec, em, ov = best
    return dict(compute=ec, memory=em, kernel_overhead_us=ov, median_abs=med, p95_abs=p95)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="vidur_profiling directory")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no Vidur profile at {args.data}", file=sys.stderr)
        return 1
    for gpu_id, suffix in CARDS.items():
        gpu = load_gpu(gpu_id)
        df = compare(gpu, args.data / f"mlp_{suffix}_Llama-2-7b-hf.csv")
        eff = gpu.efficiency
        print(
            f"\n{gpu_id} ({gpu.name}): compute eff {eff.compute}, memory eff {eff.memory}, "
            f"kernel overhead {gpu.kernel_overhead_us} us; {len(df)} points"
        )
        s = summarize(df)
        print(f"{'op':<16}{'median':>8}{'p95':>8}{'worst':>8}  {'worst at':<18}{'bias':>7}")
        for r in s.itertuples():
            print(
                f"{r.op:<16}{r.median_abs:>8.1%}{r.p95_abs:>8.1%}{r.worst:>+8.1%}  "
                f"{r.worst_at:<18}{r.bias:>+7.1%}"
            )
        fit = fit_efficiencies(gpu, df)
        print(
            f"best fit: compute {fit['compute']:.3f}, memory {fit['memory']:.3f}, "
            f"overhead {fit['kernel_overhead_us']:.0f} us -> median {fit['median_abs']:.1%}, "
            f"p95 {fit['p95_abs']:.1%}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
