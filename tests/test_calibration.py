"""Calibration: schema, the Vidur import, calibrated service times, fit / compare CLI, bad input.

The CPU end-to-end run (harness -> fit -> held-out predictions -> plan) is in
tests/test_calibration_cpu.py.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from capsim.cli import main
from capsim.load import load_catalog, load_gpu_file, load_model_card
from capsim.paths import shipped_catalog_dir
from capsim.service.calibrated import CalibratedTimer, timer_for
from capsim.service.comm import default_op_timer
from capsim.service.fixed import FixedServiceModel
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_ops import IterationShape
from capsim.service.roofline import roofline_op_time
from capsim.spec.calibration import Calibration, EfficiencyCurve, OpTable, Provenance
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import FixedModel

ROOT = Path(__file__).resolve().parents[1]
VIDUR = ROOT / "benchmarks" / "data" / "vidur_profiling"
CARDS = {"a100-80gb-sxm": "a100", "h100-sxm": "h100"}
needs_vidur = pytest.mark.skipif(
    not VIDUR.is_dir(), reason="benchmarks/data/vidur_profiling absent"
)

#: capsim operator -> what Vidur measured for it (see capsim.calibration.vidur.VIDUR_TABLES)
LLAMA_OPS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down", "mlp_act", "embed", "norm")


def _gpu(gpu_id: str) -> GPU:
    return load_gpu_file(shipped_catalog_dir() / f"{gpu_id}.yaml")


# --- schema -----------------------------------------------------------------------------------


def test_uncalibrated_entries_still_validate_and_calibration_needs_a_source():
    cat = load_catalog()
    assert cat["t4"].calibration is None and cat["l4"].calibration is None
    h100 = cat["h100-sxm"]
    assert h100.calibration is not None and "calibration" in h100.sources
    data = h100.model_dump()
    del data["sources"]["calibration"]
    with pytest.raises(ValidationError, match="'calibration' entry"):
        GPU.model_validate(data)
    data = h100.model_dump()
    data["calibration"]["surprise"] = 1  # extra="forbid"
    with pytest.raises(ValidationError):
        GPU.model_validate(data)


def test_curve_and_table_validation():
    with pytest.raises(ValidationError, match="strictly increasing"):
        EfficiencyCurve(
            kind="gemm", format="fp16", x="intensity", at=[2, 1], efficiency=[1, 1], points=2
        )
    with pytest.raises(ValidationError, match="same length"):
        EfficiencyCurve(kind="gemm", format="fp16", x="intensity", at=[1], efficiency=[1, 2], points=2)  # fmt: skip
    with pytest.raises(ValidationError, match="differ in length"):
        OpTable(op="norm", format="fp16", flops_per_token=0, bytes_per_token=8, tokens=[1, 2], time_us=[1])  # fmt: skip
    t = OpTable(op="norm", format="fp16", flops_per_token=0, bytes_per_token=8, tokens=[1, 4], time_us=[2, 8])  # fmt: skip
    assert t.seconds([2])[0] == pytest.approx(4e-6)  # log-log: halfway in log space
    assert np.isnan(t.seconds([8])[0])  # outside the measured range


# --- the Vidur import: shipped A100 / H100 entries --------------------------------------------


@needs_vidur
@pytest.mark.parametrize("gpu_id", sorted(CARDS))
def test_vidur_import_predicts_every_measured_llama_op_within_10_percent(gpu_id):
    """Every (op, tp, num_tokens) of Vidur's Llama-2-7B profile, predicted by capsim's LLM
    service model on the shipped (calibrated) entry: within 10% (5% by construction of the
    thinned tables). Worst at the time of writing: +5.0% on both cards (benchmarks/README.md).
    capsim's norm (fused add + RMSNorm, 2 per layer) is compared with Vidur's mean of
    input_layernorm and post_attention_layernorm plus one add; RoPE with Vidur's attn_rope."""
    from capsim.calibration.vidur import read_vidur, vidur_measured

    gpu = _gpu(gpu_id)
    med, _ = read_vidur(VIDUR / f"mlp_{CARDS[gpu_id]}_Llama-2-7b-hf.csv")
    model = load_model_card("llama-2-7b")
    settings = LLMEngineSettings(max_num_batched_tokens=16)
    worst = (0.0, "")
    points = 0
    for tp in (1, 2, 4, 8):
        svc = LLMServiceModel(gpu, model, "fp16", tp, settings)
        timer = svc.timer
        assert isinstance(timer, CalibratedTimer)
        sub = med.xs(tp, level=1)
        tokens = sub.index.to_numpy()
        measured = {op: vidur_measured(sub, op).to_numpy() for op in (*LLAMA_OPS, "rope")}
        for i, n in enumerate(tokens):
            lines = {ln.op.name: ln.op for ln in svc.breakdown(prefill=[(int(n), 0)]).lines}
            for op in LLAMA_OPS:
                t = lines[op]
                assert t.source == "measured", (op, tp, n, t.source)
                err = t.time_s / measured[op][i] - 1
                points += 1
                if abs(err) > abs(worst[0]):
                    worst = (err, f"{op} tp={tp} {n} tokens")
        rope = next(t for t in gpu.calibration.tables if t.op == "rope" and t.tp == tp)
        err = rope.seconds(tokens) / measured["rope"] - 1
        points += len(tokens)
        i = int(np.argmax(np.abs(err)))
        if abs(err[i]) > abs(worst[0]):
            worst = (float(err[i]), f"rope tp={tp} {tokens[i]} tokens")
    print(f"\n{gpu_id}: {points} points, worst {worst[0]:+.2%} ({worst[1]})")
    assert points == 8 * 4 * 259
    assert abs(worst[0]) <= 0.10


@needs_vidur
@pytest.mark.parametrize("gpu_id", sorted(CARDS))
def test_shipped_entries_are_what_the_import_writes(gpu_id, tmp_path, runner):
    """Re-running the import on a copy reproduces the shipped calibration (but its date), keeps
    the previous file as .bak and leaves every other field alone."""
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)
    before = (cat / f"{gpu_id}.yaml").read_bytes()
    before_side = (cat / f"{gpu_id}.calibration.yaml").read_bytes()
    csv = VIDUR / f"mlp_{CARDS[gpu_id]}_Llama-2-7b-hf.csv"
    res = runner.invoke(main, ["calibrate", "import-vidur", str(csv), "--gpu", gpu_id, "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "8288 points" in res.output and "worst +5.0%" in res.output
    side = cat / f"{gpu_id}.calibration.yaml"
    assert (cat / f"{gpu_id}.calibration.yaml.bak").read_bytes() == before_side
    assert (cat / f"{gpu_id}.yaml").read_bytes() == before  # the entry is not rewritten
    assert side.read_bytes() != before_side  # (the new date)
    new, old = load_gpu_file(cat / f"{gpu_id}.yaml"), _gpu(gpu_id)
    strip = {"provenance": {"created"}}
    assert new.calibration.model_dump(exclude=strip) == old.calibration.model_dump(exclude=strip)
    assert new.model_dump(exclude={"calibration", "sources"}) == old.model_dump(exclude={"calibration", "sources"})  # fmt: skip
    p = new.calibration.provenance
    assert p.licence.startswith("MIT") and "Microsoft" in p.licence and p.commit == "7d47513"
    assert "microsoft/vidur" in p.source and "Vidur" in p.attribution
    assert "Vidur" in new.sources["calibration"] and "MIT" in new.sources["calibration"]


def test_vidur_import_rejects_a_bad_profile_and_changes_nothing(tmp_path, runner):
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)
    before = (cat / "a100-80gb-sxm.yaml").read_bytes()
    bad = tmp_path / "mlp_a100_bad.csv"
    bad.write_text("num_tokens,num_tensor_parallel_workers\n1,1\n")
    res = runner.invoke(main, ["calibrate", "import-vidur", str(bad), "--gpu", "a100-80gb-sxm", "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert "not a Vidur mlp.csv profile: missing column(s)" in res.output
    assert (cat / "a100-80gb-sxm.yaml").read_bytes() == before
    assert not (cat / "a100-80gb-sxm.calibration.yaml.bak").exists()


# --- calibrated service times -----------------------------------------------------------------


def test_sources_for_other_models_precisions_and_fixed_shapes():
    h100 = _gpu("h100-sxm")
    settings = LLMEngineSettings(max_num_batched_tokens=64)
    # Llama-3.1-8B: its QKV (6144 x 4096) is Llama-2-7B's at tp=2 and its O projection and
    # norms have Llama-2-7B's shapes -> measured; the bigger MLP -> fitted curve
    svc = LLMServiceModel(h100, load_model_card("llama-3.1-8b"), "fp16", 1, settings)
    src = {ln.op.name: ln.op.source for ln in svc.breakdown(prefill=[(300, 0)], decode=[900]).lines}
    assert src["qkv_proj"] == src["o_proj"] == src["norm"] == "measured"
    assert src["mlp_up"] == src["mlp_down"] == src["lm_head"] == "fitted"
    assert src["rope_kv_write"] == "fitted"  # RoPE measured, the KV write scaled in
    assert src["attn_prefill"] == src["attn_decode"] == "roofline"  # Vidur has no attention
    assert src["all_reduce" if "all_reduce" in src else "embed"] in ("measured", "fitted")
    # Llama-2-13B (hidden 5120): element-wise ops scaled from the measured ones
    big = LLMServiceModel(h100, load_model_card("llama-2-13b"), "fp16", 1, settings)
    lines = {ln.op.name: ln.op for ln in big.breakdown(prefill=[(512, 0)]).lines}
    assert lines["norm"].source == "fitted" and lines["mlp_up"].source == "fitted"
    # fp8 has no curve of its own: the fp16 curve at the same distance from the ridge
    fp8 = LLMServiceModel(h100, load_model_card("llama-3.1-8b"), "fp8", 1, settings)
    f8 = {ln.op.name: ln.op for ln in fp8.breakdown(prefill=[(2048, 0)]).lines}
    f16 = {ln.op.name: ln.op for ln in svc.breakdown(prefill=[(2048, 0)]).lines}
    assert f8["mlp_up"].source == "fitted"
    assert 0.35 < f8["mlp_up"].time_s / f16["mlp_up"].time_s < 0.75
    # fitted stays within a sane band of the roofline
    roof = LLMServiceModel(h100, load_model_card("llama-2-13b"), "fp16", 1, settings, default_op_timer)  # fmt: skip
    rl = {ln.op.name: ln.op for ln in roof.breakdown(prefill=[(512, 0)]).lines}
    for op in ("qkv_proj", "mlp_up", "mlp_down", "norm"):
        assert 0.8 < lines[op].time_s / rl[op].time_s < 3.0, op
    # fixed-shape models, layered: fitted curves for the layers of a measured family and format
    bge = load_model_card("bge-large-en")
    assert FixedServiceModel(h100, bge, "fp16").batch(16).source == "layers+fitted"
    assert FixedServiceModel(h100, bge, "int8").batch(16).source == "layers"  # no int8 curve
    assert FixedServiceModel(h100, bge, "fp16", timer=roofline_op_time).batch(16).source == "roofline"  # fmt: skip
    assert FixedServiceModel(_gpu("l4"), bge, "fp16").batch(16).source == "layers"
    # totals-only cards: the GEMM curve of the same format only, else the roofline
    totals = bge.model_dump(exclude={"layers", "sequence_length", "max_sequence_length"})
    flat = FixedModel.model_validate(totals, strict=False)
    assert FixedServiceModel(h100, flat, "fp16").batch(16).source == "fitted"
    assert FixedServiceModel(h100, flat, "int8").batch(16).source == "roofline"


@pytest.mark.parametrize("gpu_id", sorted(CARDS))
def test_calibrated_fast_path_equals_breakdown_and_stays_fast(gpu_id):
    import time

    gpu = _gpu(gpu_id)
    for name, prec, tp in (("llama-3.1-8b", "fp16", 1), ("llama-2-13b", "int8", 2)):
        if gpu.peak_flops("int8") is None and prec == "int8":
            continue
        svc = LLMServiceModel(gpu, load_model_card(name), prec, tp)
        assert svc._attn is not None  # attention stays on the closed-form roofline path
        rng = np.random.default_rng(3)
        for _ in range(25):
            pre = [(int(rng.integers(1, 1500)), int(rng.integers(0, 2000))) for _ in range(2)]
            dec = [int(x) for x in rng.integers(1, 6000, size=int(rng.integers(0, 120)))]
            shape = IterationShape.of(pre, dec)
            assert svc.iteration_time(*shape) == pytest.approx(svc.breakdown(pre, dec).total_s, rel=1e-12)  # fmt: skip
        # beyond the table (T > max_num_batched_tokens) and beyond the measured 4096 tokens
        big = svc.breakdown([(9000, 0)])
        assert svc.iteration_time(*IterationShape.of([(9000, 0)])) == pytest.approx(big.total_s, rel=1e-12)  # fmt: skip
    svc = LLMServiceModel(gpu, load_model_card("llama-3.1-8b"), "fp16")
    t0 = time.perf_counter()
    for i in range(5000):
        svc.iteration_time(200 + i % 300, 190, 190 * 1500, 5000.0, 191)
    assert (time.perf_counter() - t0) / 5000 < 20e-6
    t0 = time.perf_counter()
    LLMServiceModel(gpu, load_model_card("llama-3.1-70b"), "fp16", 4)
    assert time.perf_counter() - t0 < 1.0  # tables over 8193 token counts, vectorised


def test_timer_for_uncalibrated_is_none_and_roofline_fallback_matches():
    l4 = _gpu("l4")
    assert timer_for(l4) is None
    h100 = _gpu("h100-sxm")
    cal = Calibration(
        provenance=Provenance(source="t", method="t", device="t", created="2026-11-22", data="t"),
        kernel_overhead_us=4,
    )
    empty = h100.model_copy(update={"calibration": cal})
    model = load_model_card("llama-3.1-8b")
    a = LLMServiceModel(empty, model, "fp16", 2)
    b = LLMServiceModel(h100, model, "fp16", 2, timer=default_op_timer)
    assert np.allclose(a.token_table, b.token_table, rtol=1e-12)
    assert all(ln.op.source != "measured" for ln in a.breakdown([(100, 0)], [50]).lines)


def test_estimate_says_which_source_each_operator_used(runner):
    res = runner.invoke(main, ["estimate", "--gpu", "a100-80gb-sxm", "--model", "llama-2-7b", "--precision", "fp16", "--batch", "8"])  # fmt: skip
    assert res.exit_code == 0, res.output
    lines = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.strip()}
    assert lines["qkv_proj"].endswith("measured") and lines["attn_decode"].endswith("roofline")
    assert lines["lm_head"].endswith("fitted")
    res = runner.invoke(main, ["estimate", "--gpu", "a100-80gb-sxm", "--model", "llama-2-7b", "--precision", "fp16", "--format", "json"])  # fmt: skip
    rows = json.loads(res.output)["decode_breakdown"]
    assert {r["op"]: r["source"] for r in rows}["mlp_up"] == "measured"
    res = runner.invoke(main, ["estimate", "--gpu", "h100-sxm", "--model", "resnet-50", "--precision", "fp16"])  # fmt: skip
    assert "source: layers+fitted" in res.output and "calibration: Vidur" in res.output
    kinds = {ln.split()[0]: ln for ln in res.output.splitlines() if ln.strip()}
    assert "model" in kinds["conv"] and "calibration gemm curve (fp16)" in kinds["matmul"]
    # an INT8 conv network is never rescaled by the FP16 GEMM curve: unmeasured -> model
    res = runner.invoke(main, ["estimate", "--gpu", "h100-sxm", "--model", "resnet-50", "--precision", "int8"])  # fmt: skip
    assert "source: layers)" in res.output and "fitted" not in res.output.split("per layer kind")[1]
    assert "no fitted curve for these layers' families at int8" in res.output


# --- compare ----------------------------------------------------------------------------------


def test_compare_stored_tables_table_csv_and_plot(runner, tmp_path):
    out = tmp_path / "cmp"
    res = runner.invoke(main, ["calibrate", "compare", "--gpu", "a100-80gb-sxm", "--out", str(out)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "meas/roof" in res.output and "qkv_proj" in res.output and "FLOP/B" in res.output
    assert (out / "roofline.png").read_bytes()[:4] == b"\x89PNG"
    import pandas as pd

    df = pd.read_csv(out / "compare.csv")
    assert len(df) == sum(len(t.tokens) for t in _gpu("a100-80gb-sxm").calibration.tables)
    assert {"measured_ms", "roofline_ms", "ratio", "achieved_tflops", "achieved_gb_s", "intensity"} <= set(df.columns)  # fmt: skip
    big = df[(df.op == "mlp_up") & (df.tp == 1) & (df.tokens == 4096)].iloc[0]
    assert 1.1 < big.ratio < 1.4  # real GEMMs reach ~72% of peak, the roofline assumes 86.9%
    res = runner.invoke(main, ["calibrate", "compare", "--gpu", "t4"])
    assert res.exit_code == 2 and "has no calibration" in res.output
    res = runner.invoke(main, ["calibrate", "compare"])
    assert res.exit_code == 2


# --- fit / import-vidur: bad input and the wrong card (exit 2, one line, nothing written) ------


def _timed_row(kind: str, precision: str, flops: float, nbytes: float, seconds: float, **params) -> dict:  # fmt: skip
    return {
        "kind": kind, "precision": precision, "impl": "synthetic", **params,
        "flops": flops, "bytes": nbytes, "median_s": seconds, "min_s": seconds * 0.97,
        "p10_s": seconds * 0.98, "p90_s": seconds * 1.03, "std_s": seconds * 0.02,
        "repeats": 5, "inner": 1, "gflops_per_s": flops / seconds / 1e9,
        "gbytes_per_s": nbytes / seconds / 1e9,
    }  # fmt: skip


def synthetic_gpu_run(
    out: Path, gpu: GPU, *, fraction: float = 0.7, fmt: str = "fp16", name: str = "Synthetic GPU"
) -> Path:
    """A valid measurements directory of a CUDA device that runs at ``fraction`` of ``gpu``'s spec
    roofline (GEMM, attention, copy) plus 5 us per call."""
    from calibrate.output import write_directory
    from calibrate.schema import FORMAT, columns_doc

    peak, bw, e = gpu.peak_flops(fmt) * fraction, gpu.bandwidth * fraction, 2
    rows = [_timed_row("launch", fmt, 1, 12, 5e-6)]
    buf = 256 << 20
    rows.append(_timed_row("bandwidth_copy", fmt, 0, 2 * buf, 2 * buf / bw, buffer_bytes=buf))
    for n, k in ((4096, 4096), (11008, 4096)):
        for m in (1, 16, 256, 4096):
            f, b = 2.0 * m * n * k, float((m * k + k * n + m * n) * e)
            rows.append(_timed_row("gemm", fmt, f, b, max(f / peak, b / bw) + 5e-6, m=m, n=n, k=k))
    for seq in (512, 2048):
        f, b = 4.0 * 32 * seq * 128, float((2 * 32 * seq * 128 + 2 * 32 * 128) * e)
        attn = dict(batch=1, seq_len=seq, heads=32, head_dim=128)
        rows.append(_timed_row("attention_decode", fmt, f, b, max(f / peak, b / bw) + 5e-6, **attn))  # fmt: skip
    for seq in (512, 1024, 2048):
        f, b = 2.0 * 32 * 128 * seq * (seq + 1), 4.0 * 32 * seq * 128 * e
        attn = dict(batch=1, seq_len=seq, heads=32, head_dim=128)
        rows.append(_timed_row("attention_prefill", fmt, f, b, max(f / peak, b / bw) + 5e-6, **attn))  # fmt: skip
    meta = {
        "format": FORMAT, "harness_version": "test", "created_utc": "2026-12-01T00:00:00Z",
        "backend": "torch", "device": {"kind": "cuda", "name": name, "memory_bytes": 24 << 30},
        "precisions": {fmt: {"supported": True, "measured": True, "method": "synthetic"}},
        "budget": {"budget_seconds": 60.0, "exhausted": False}, "skipped": [],
        "interrupted": False, "n_rows": len(rows), "columns": columns_doc(),
    }  # fmt: skip
    return write_directory(out, meta, rows, overwrite=False)


def _edit_rows(d: Path, edit) -> None:
    """Rewrite measurements.csv with ``edit(rows)`` applied (rows as dicts of strings)."""
    import csv

    path = d / "measurements.csv"
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    edit(rows)
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)


def _scale_time(row: dict, factor: float) -> None:
    for c in ("median_s", "min_s", "p10_s", "p90_s", "std_s"):
        row[c] = repr(float(row[c]) * factor)


def _cat_copy(tmp_path: Path) -> Path:
    cat = tmp_path / "cat"
    shutil.copytree(shipped_catalog_dir(), cat)
    return cat


def _snapshot(d: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(d.iterdir())}


def _assert_one_line_error(res, *needles: str) -> None:
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output and res.exception is None or isinstance(res.exception, SystemExit)  # fmt: skip
    lines = [ln for ln in res.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for needle in needles:
        assert needle in lines[0], res.output


def mode_of(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_fit_writes_entries_with_the_files_mode_and_backups_with_the_umask(tmp_path, runner):
    """Atomic writes keep the mode of the file they replace (a temporary file alone is 0600); a
    new file (the sidecar, its .bak, compare outputs) gets 0o666 & ~umask. The entry itself is
    not rewritten: the calibration goes to its sidecar."""
    import os

    cat = _cat_copy(tmp_path)
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"), name="NVIDIA L4")
    entry = cat / "l4.yaml"
    side = cat / "l4.calibration.yaml"
    os.chmod(entry, 0o664)
    before = entry.read_bytes()
    old = os.umask(0o027)
    fit = ["calibrate", "fit", str(meas), "--gpu", "l4", "--catalog-dir", str(cat)]
    try:
        res = runner.invoke(main, fit)
        assert res.exit_code == 0, res.output
        assert mode_of(side) == 0o640 and not (cat / "l4.calibration.yaml.bak").exists()
        os.chmod(side, 0o664)
        first = side.read_bytes()
        res = runner.invoke(main, fit)  # a re-fit replaces the sidecar and keeps the old one
        assert res.exit_code == 0, res.output
        res = runner.invoke(main, ["calibrate", "compare", str(meas), "--gpu", "l4", "--out", str(tmp_path / "cmp")])  # fmt: skip
        assert res.exit_code == 0, res.output
    finally:
        os.umask(old)
    mode = mode_of
    assert mode(entry) == 0o664 and entry.read_bytes() == before  # the entry is not rewritten
    assert mode(side) == 0o664  # kept
    assert mode(cat / "l4.calibration.yaml.bak") == 0o640  # new: 0o666 & ~0o027
    assert (cat / "l4.calibration.yaml.bak").read_bytes() == first
    assert mode(tmp_path / "cmp" / "compare.csv") == 0o640
    assert mode(tmp_path / "cmp" / "roofline.png") == 0o640
    assert load_gpu_file(entry).calibration is not None


def test_fit_keeps_a_tiny_efficiency_and_flags_the_disturbed_row(tmp_path, runner):
    """An attention row far too slow (a disturbed measurement; here 1500x): its efficiency used to
    be rounded to 4 decimals = 0.0, which the schema refuses (a traceback, exit 1). Now it keeps 4
    significant digits, and the fit's notes name the row (alone in its curve bin, no median can
    outvote it)."""
    gpu = _gpu("l4")
    meas = synthetic_gpu_run(tmp_path / "meas", gpu)
    _edit_rows(meas, lambda rows: _scale_time([r for r in rows if r["kind"] == "attention_prefill"][0], 1500))  # fmt: skip
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--gpu", "l4", "--dry-run", "--format", "json"])  # fmt: skip
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    curve = next(c for c in out["calibration"]["curves"] if c["kind"] == "attention")
    f, b = 2.0 * 32 * 128 * 512 * 513, 4.0 * 32 * 512 * 128 * 2  # the L=512 prefill row
    roof = max(f / gpu.peak_flops("fp16"), b / gpu.bandwidth)
    expected = roof / (1500 * (roof / 0.7 + 5e-6) - 5e-6)  # launch overhead 5 us subtracted
    assert expected < 5e-4  # 4 decimals would have kept 1 digit at best
    assert min(curve["efficiency"]) == pytest.approx(expected, rel=1e-3)
    assert all(e > 0 for e in curve["efficiency"])
    note = next(n for n in out["notes"] if "disturbed" in n)
    assert "meas/measurements.csv: row 13 (attention_prefill fp16 b=1 L=512)" in note


def test_fit_values_that_cannot_be_stored_name_the_row(tmp_path, runner):
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"))

    def overflow(rows):  # finite cells whose rate overflows
        r = next(r for r in rows if r["kind"] == "gemm")
        r.update(flops="1e300", median_s="1e-300", min_s="1e-300", p10_s="1e-300", p90_s="1e-300")

    _edit_rows(meas, overflow)
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--new-gpu", "synth", "--price", "1", "--power-w", "70", "--dry-run"])  # fmt: skip
    _assert_one_line_error(res, "measurements.csv: row 3", "gemm fp16 m=1 n=4096 k=4096", "cannot be stored")  # fmt: skip


@pytest.mark.parametrize(
    ("edit", "needles"),
    [
        (
            lambda r: r["kind"] == "bandwidth_copy" and r.update(bytes="0"),
            ("row 2", "column 'bytes'", "must be positive"),
        ),  # fmt: skip
        (
            lambda r: r["kind"] == "gemm" and r["m"] == "16" and r.update(m="0"),
            ("row 4", "column 'm'", "at least 1"),
        ),  # fmt: skip
        (
            lambda r: r["kind"] == "launch" and r.update(median_s="0", min_s="0", p10_s="0"),
            ("row 1", "column 'median_s'", "must be positive"),
        ),  # fmt: skip
    ],
)
def test_fit_refuses_rows_that_would_crash_it(tmp_path, runner, edit, needles):
    cat = _cat_copy(tmp_path)
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"))
    _edit_rows(meas, lambda rows: [edit(r) for r in rows])
    before = _snapshot(cat)
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--gpu", "l4", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "invalid measurements", "meas/measurements.csv", *needles)
    assert _snapshot(cat) == before


def test_fit_refuses_measurements_faster_than_the_cards_spec_peak(tmp_path, runner):
    """L4-speed measurements fitted into the T4's entry: 'wrong GPU entry?', nothing written."""
    cat = _cat_copy(tmp_path)
    before = _snapshot(cat)
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"), fraction=0.8, name="NVIDIA L4")
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--gpu", "t4", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "--gpu", "of t4's spec fp16 peak (65 TFLOP/s)", "wrong GPU entry?", "NVIDIA L4", "row ")  # fmt: skip
    assert "149%" in res.output  # 0.8 x 121 / 65
    # bandwidth: T4-speed GEMMs but an L4-speed copy would pass the GEMM check; 300 vs 320 GB/s
    # does not trip it, so push the copy to 2x the T4's spec bandwidth
    slow = synthetic_gpu_run(tmp_path / "t4meas", _gpu("t4"), fraction=0.7)
    _edit_rows(slow, lambda rows: _scale_time(next(r for r in rows if r["kind"] == "bandwidth_copy"), 0.7 / 2))  # fmt: skip
    res = runner.invoke(main, ["calibrate", "fit", str(slow), "--gpu", "t4", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "spec memory bandwidth (320 GB/s)", "wrong GPU entry?", "200%")
    assert _snapshot(cat) == before
    # at 70% of its own peaks the same card fits
    ok = synthetic_gpu_run(tmp_path / "l4meas", _gpu("l4"), fraction=0.7)
    res = runner.invoke(main, ["calibrate", "fit", str(ok), "--gpu", "l4", "--catalog-dir", str(cat), "--dry-run"])  # fmt: skip
    assert res.exit_code == 0, res.output


def test_fit_says_when_a_run_was_interrupted_or_out_of_budget(tmp_path, runner):
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"))
    meta = json.loads((meas / "meta.json").read_text())
    meta.update(interrupted=True, skipped=[{"kind": "gemm", "reason": "interrupted"}] * 3 + [{"kind": "gemm", "reason": "budget: needs ~1 s"}])  # fmt: skip
    meta["budget"]["exhausted"] = True
    (meas / "meta.json").write_text(json.dumps(meta))
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--gpu", "l4", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "interrupted (Ctrl-C); 3 planned points were not measured" in res.output
    assert "budget was exhausted; 1 planned points were skipped" in res.output


@pytest.mark.parametrize("bad_id", ["T4", "../escape", "Bad Id"])
def test_fit_new_gpu_id_errors_name_the_option(tmp_path, runner, bad_id):
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"))
    cat = tmp_path / "cat"
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--new-gpu", bad_id, "--price", "1", "--power-w", "70", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, f"--new-gpu: {bad_id!r} is not a valid entry id", "lower-case letters, digits")  # fmt: skip
    assert str(meas) not in res.output
    assert not cat.exists() and not (tmp_path / "escape.yaml").exists()


def test_output_directories_under_a_regular_file_are_refused(tmp_path, runner):
    meas = synthetic_gpu_run(tmp_path / "meas", _gpu("l4"))
    (tmp_path / "plain").write_text("not a directory\n")
    under = str(tmp_path / "plain" / "cat")
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--new-gpu", "synth", "--price", "1", "--power-w", "70", "--catalog-dir", under])  # fmt: skip
    _assert_one_line_error(res, "--catalog-dir", "plain is a file, not a directory", "cannot be created")  # fmt: skip
    res = runner.invoke(main, ["calibrate", "fit", str(meas), "--gpu", "l4", "--catalog-dir", str(tmp_path / "plain")])  # fmt: skip
    assert res.exit_code == 2 and "'--catalog-dir'" in res.output and "is a file" in res.output  # click's check  # fmt: skip
    res = runner.invoke(main, ["calibrate", "compare", str(meas), "--out", under])
    _assert_one_line_error(res, "--out", "plain is a file")


@needs_vidur
def test_import_vidur_refuses_the_wrong_card(tmp_path, runner):
    cat = _cat_copy(tmp_path)
    before = _snapshot(cat)
    a100 = str(VIDUR / "mlp_a100_Llama-2-7b-hf.csv")
    # the file name names another card
    res = runner.invoke(main, ["calibrate", "import-vidur", a100, "--gpu", "t4", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "the file name names 'a100', but gpu is t4", "--force")
    # --force passes the name check, but an A100 profile beats the T4's spec peak 4x
    res = runner.invoke(main, ["calibrate", "import-vidur", a100, "--gpu", "t4", "--force", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "413% of t4's spec fp16 peak (65 TFLOP/s)", "faster than the card's spec peak -- wrong GPU entry?")  # fmt: skip
    # a renamed copy (no card in the name) is caught by the peak alone
    anon = tmp_path / "mlp.csv"
    shutil.copy(a100, anon)
    res = runner.invoke(main, ["calibrate", "import-vidur", str(anon), "--gpu", "t4", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "wrong GPU entry?")
    res = runner.invoke(main, ["calibrate", "import-vidur", str(anon), "--gpu", "t4", "--card", "a100", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "card is 'a100', but gpu is t4")
    # slower than the card's peak but another card's profile: refused unless --force
    res = runner.invoke(main, ["calibrate", "import-vidur", a100, "--gpu", "h100-sxm", "--catalog-dir", str(cat)])  # fmt: skip
    _assert_one_line_error(res, "names 'a100', but gpu is h100-sxm")
    assert _snapshot(cat) == before
    res = runner.invoke(main, ["calibrate", "import-vidur", a100, "--gpu", "h100-sxm", "--force", "--dry-run", "--catalog-dir", str(cat)])  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "forced: the file name names 'a100', but gpu is h100-sxm" in res.output
    assert _snapshot(cat) == before
    # a directory is not "file not found"
    res = runner.invoke(main, ["calibrate", "import-vidur", str(VIDUR), "--gpu", "a100-80gb-sxm", "--dry-run"])  # fmt: skip
    _assert_one_line_error(res, "is a directory: give the profile file itself")


def test_not_native_kernels_are_not_fitted_from_their_compute_capability_on():
    """torch._int_mm rows are kept out of the fit on sm_90+ (they measure PyTorch's INT8 path at
    about half Hopper's INT8 peak, not the card), with a note; before sm_90 they are fitted."""
    from capsim.calibration.rows import not_native

    rows = [
        {"kind": "gemm", "precision": "int8", "impl": "torch._int_mm int8 -> int32"},
        {
            "kind": "gemm",
            "precision": "int8",
            "impl": "torch._int_mm int8 -> int32 (M padded 1 -> 32)",
        },  # fmt: skip
        {"kind": "gemm", "precision": "fp8", "impl": "torch._scaled_mm e4m3 -> bf16"},
    ]
    kept, notes = not_native({"device": {"compute_capability": "9.0"}}, rows)
    assert [r["precision"] for r in kept] == ["fp8"]
    assert len(notes) == 1 and notes[0].startswith("2 torch._int_mm rows not fitted")
    for meta in ({"device": {"compute_capability": "8.0"}}, {"device": {}}, {}):
        assert not_native(meta, rows) == (rows, [])


def test_h200_int8_is_roofline_not_the_torch_int_mm_curve():
    """The shipped H200 calibration has no INT8 curve or table: BERT-Large INT8 on the H200 is
    timed like the H100 SXM's (same GH100 die), not at torch._int_mm's half-peak rate."""
    cat = load_catalog()
    cal = cat["h200-sxm"].calibration
    assert cal is not None and "int8" not in cal.formats() and "fp8" in cal.formats()
    card = load_model_card("bert-large").at_sequence_length(177)
    h100 = FixedServiceModel(cat["h100-sxm"], card, "int8").batch(128).throughput
    h200 = FixedServiceModel(cat["h200-sxm"], card, "int8").batch(128).throughput
    assert 1.0 <= h200 / h100 <= 1.15
