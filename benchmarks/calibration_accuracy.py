"""How well calibrated catalog entries reproduce Vidur's A100 / H100 measurements.

For every (operator, tp, num_tokens) of Vidur's Llama-2-7B profile (259 token counts x 4 tp),
the time capsim's LLM service model predicts on the shipped (calibrated) entry is compared with
the measured median: QKV, O, MLP up (gate+up), MLP down, activation, embedding, norm (capsim's
fused add + RMSNorm against Vidur's mean of the two layernorms plus one add) and, from the
stored table, RoPE. Printed per card and operator: median and worst relative error, and the
roofline's for contrast; then the fit errors stored in the entry's provenance (the GEMM curve
predicting each (operator, tp) table it was not fitted on -- what other models' shapes get).

Data: ``benchmarks/data/vidur_profiling/mlp_{a100,h100}_Llama-2-7b-hf.csv`` (microsoft/vidur,
MIT). Run: ``python benchmarks/calibration_accuracy.py [--data DIR]``
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run from a checkout without installing capsim
    sys.path.insert(0, str(ROOT))

from capsim.calibration.vidur import read_vidur, vidur_measured  # noqa: E402
from capsim.load import (  # noqa: E402
    load_gpu_file,  # noqa: E402
    load_model_card,  # noqa: E402
)
from capsim.paths import shipped_catalog_dir  # noqa: E402
from capsim.service.comm import default_op_timer  # noqa: E402
from capsim.service.llm import LLMServiceModel  # noqa: E402
from capsim.spec.engine import LLMEngineSettings  # noqa: E402

DEFAULT_DATA = ROOT / "benchmarks" / "data" / "vidur_profiling"
CARDS = {"a100-80gb-sxm": "a100", "h100-sxm": "h100"}
OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "mlp_act", "embed", "norm")


def errors(gpu_id: str, data: Path) -> dict[str, dict[str, np.ndarray]]:
    """{op: {"calibrated": errors, "roofline": errors}} over every (tp, num_tokens)."""
    gpu = load_gpu_file(shipped_catalog_dir() / f"{gpu_id}.yaml")
    med, _ = read_vidur(data / f"mlp_{CARDS[gpu_id]}_Llama-2-7b-hf.csv")
    model = load_model_card("llama-2-7b")
    st = LLMEngineSettings(max_num_batched_tokens=16)
    out: dict[str, dict[str, list]] = {op: {"calibrated": [], "roofline": []} for op in (*OPS, "rope")}  # fmt: skip
    for tp in sorted(set(med.index.get_level_values(1))):
        sub = med.xs(tp, level=1)
        tokens = sub.index.to_numpy()
        cal = LLMServiceModel(gpu, model, "fp16", int(tp), st)
        roof = LLMServiceModel(gpu, model, "fp16", int(tp), st, default_op_timer)
        for op in OPS:
            meas = vidur_measured(sub, op).to_numpy()
            for which, svc in (("calibrated", cal), ("roofline", roof)):
                pred = [
                    next(
                        ln.op.time_s
                        for ln in svc.breakdown([(int(n), 0)]).lines
                        if ln.op.name == op
                    )  # fmt: skip
                    for n in tokens
                ]
                out[op][which].append(np.asarray(pred) / meas - 1)
        rope = next(t for t in gpu.calibration.tables if t.op == "rope" and t.tp == tp)
        out["rope"]["calibrated"].append(rope.seconds(tokens) / vidur_measured(sub, "rope").to_numpy() - 1)  # fmt: skip
    return {op: {k: np.concatenate(v) for k, v in d.items() if v} for op, d in out.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA, help="vidur_profiling directory")
    args = ap.parse_args(argv)
    if not args.data.is_dir():
        print(f"no Vidur profile at {args.data}", file=sys.stderr)
        return 1
    for gpu_id in CARDS:
        errs = errors(gpu_id, args.data)
        every = np.concatenate([d["calibrated"] for d in errs.values()])
        print(f"\n{gpu_id}: {len(every)} points; calibrated median {np.median(np.abs(every)):.2%}, worst {every[np.argmax(np.abs(every))]:+.2%}")  # fmt: skip
        print(
            f"{'op':<10}{'points':>7}{'median':>9}{'worst':>9}   {'roofline median':>16}{'worst':>9}"
        )
        for op, d in errs.items():
            c = d["calibrated"]
            line = (
                f"{op:<10}{len(c):>7}{np.median(np.abs(c)):>9.2%}{c[np.argmax(np.abs(c))]:>+9.2%}"
            )
            if "roofline" in d:
                r = d["roofline"]
                line += f"   {np.median(np.abs(r)):>16.1%}{r[np.argmax(np.abs(r))]:>+9.1%}"
            print(line)
        gpu = load_gpu_file(shipped_catalog_dir() / f"{gpu_id}.yaml")
        for e in gpu.calibration.provenance.fit_errors:
            print(f"fit: {e.held_out}: median {e.median_abs_error:.1%}, worst {e.worst_error:+.1%} ({e.worst_point})")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
