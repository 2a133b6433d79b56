"""The model-level kinds: conv2d, forward_llm_step, allreduce (work conventions, plan, loader,
torch CPU kernels, the gloo all-reduce path, capsim's fit ignoring them with a note)."""

from __future__ import annotations

import csv
import re
import shutil
import tempfile
from pathlib import Path

import pytest

from calibrate import load_measurements, work
from calibrate.cost import CostModel
from calibrate.measurements import MeasurementsError
from calibrate.plan import RESNET50_CONVS, build_plan, sweep_config
from calibrate.schema import CSV_FILE, OPTIONAL_COLUMNS, required_columns
from calibrate.task import Task

REPO = Path(__file__).resolve().parents[2]
H200 = REPO / "benchmarks" / "gpu_runs" / "h200-2026-12-04"
LLM_SHAPE = (1, 128, 4, 2, 32, 256, 500)  # layers, hidden, heads, kv_heads, head_dim, ffn, vocab
GPU_PRECISIONS = ["fp32", "tf32", "fp16", "bf16", "fp8", "int8"]


def test_work_conventions() -> None:
    macs = {}
    for cin, cout, hw, k, s, g in RESNET50_CONVS:
        macs[(cin, cout, hw, k, s)] = work.conv2d(1, cin, cout, hw, hw, k, s, g, "fp32")[0] / 2
    assert macs[(3, 64, 224, 7, 2)] == 118_013_952  # conv1: 64 x 112^2 x 3 x 49
    assert work.conv_out(7, 3, 1) == 7 and work.conv_out(14, 1, 2) == 7
    # Llama-3.1-8B: 8.03 B parameters; decode of one token ~ 2 x 7.5 B matmul weights
    s = work.LLAMA31_8B
    assert s.params() == 8_030_261_248
    f, b = work.llm_step(s, 1, 1, "decode", "bf16")
    matmul = s.layers * s.layer_matmul_weights() + s.vocab * s.hidden  # no embedding GEMM
    assert f == 2 * matmul + s.layers * 4 * s.heads * s.head_dim  # attention over 1 token
    assert 7.4e9 < matmul < 7.6e9
    assert b > 2 * (s.params() - s.vocab * s.hidden)  # every weight read once (bf16)
    f_dec, b_dec = work.llm_step(s, 8, 4096, "decode", "bf16")
    kv = 8 * 4096 * s.layers * 2 * s.kv_heads * s.head_dim * 2
    assert b_dec - b > kv  # the KV cache of 8 x 4096 tokens is read
    f_pre, _ = work.llm_step(s, 1, 4096, "prefill", "bf16")
    assert f_pre > 4096 * f  # every prompt token passes every weight, plus causal attention
    # nccl-tests: busbw = algbw x 2(n-1)/n
    assert work.allreduce(1000, 2) == (0, 1000)
    assert work.allreduce(1 << 30, 8)[1] == 2 * 7 * (1 << 30) // 8


def test_required_columns_of_new_kinds() -> None:
    assert {"in_channels", "kernel", "groups", "layout"} <= set(required_columns("conv2d"))
    llm = set(required_columns("forward_llm_step"))
    assert {"layers", "kv_heads", "vocab", "phase", "tokens", "seq_len"} <= llm
    assert {"message_bytes", "ranks", "median_s"} <= set(required_columns("allreduce"))


def test_cuda_plan_has_every_new_kind_in_tiers() -> None:
    cfg = sweep_config("cuda", False, 60 << 20)
    tasks = build_plan(cfg, GPU_PRECISIONS, "bf16", resnet=True, fused_attention=True, models=True)
    kinds = {t.kind for t in tasks}
    assert {"conv2d", "forward_llm_step", "allreduce"} <= kinds
    conv = [t for t in tasks if t.kind == "conv2d"]
    assert {t.precision for t in conv} == {"fp32", "tf32", "fp16", "bf16"}  # no fp8/int8 conv
    assert {t.text["layout"] for t in conv} == {"NHWC", "NCHW"}
    assert {t.params["groups"] for t in conv} == {1, 144}  # the depthwise one is there
    assert max(t.params["batch"] for t in conv) == 256
    llm = [t for t in tasks if t.kind == "forward_llm_step"]
    assert {t.variant for t in llm if t.text["phase"] == "decode"} == {"cuda graph", "eager"}
    assert max(t.params["batch"] for t in llm) == 256
    assert max(t.params["seq_len"] for t in llm) == 8192
    # tiers are in order, and the primary NHWC conv sweep comes before fp32 and NCHW
    assert [t.tier for t in tasks] == sorted(t.tier for t in tasks)
    assert min(t.tier for t in conv if t.text["layout"] == "NCHW") == 3


def _planned_seconds(budget: float) -> float:
    """Predicted wall time of the full H200 plan (H200-class priors), power windows included."""
    cfg = sweep_config("cuda", False, 60 << 20)
    tasks = build_plan(cfg, GPU_PRECISIONS, "bf16", resnet=True, fused_attention=True, models=True)
    cost = CostModel("cuda")
    timed = sum(cost.cost_s(t, cfg.timing) for t in tasks if t.kind != "allreduce")
    return timed + cfg.idle_s + cfg.busy_s + cfg.warmup_s


def test_h200_script_budget_is_mostly_filled_by_the_plan() -> None:
    script = (REPO / "benchmarks" / "gpu_runs" / "run_h200.sh").read_text()
    assert len(script) <= 2000
    budget = float(re.search(r"--budget-seconds (\d+)", script).group(1))
    share = _planned_seconds(budget) / budget
    assert 0.7 <= share <= 0.95, share


def test_cost_model_matches_the_h200_run() -> None:
    """The priors predict the 2026-12-04 H200 rows' times within a factor of 2 (median)."""
    _, rows = load_measurements(H200)
    cost = CostModel("cuda")
    ratios = []
    for r in rows:
        if r["kind"] in ("gemm", "attention_decode", "attention_prefill", "forward_block"):
            t = Task(r["kind"], r["precision"], {}, 0, r["flops"], r["bytes"], 0)
            ratios.append(r["median_s"] / cost.call_s(t))
    ratios.sort()
    assert 0.5 < ratios[len(ratios) // 2] < 2.0


def test_old_files_without_the_new_columns_still_load() -> None:
    meta, rows = load_measurements(H200)
    assert len(rows) == meta["n_rows"] == 252
    assert all(r["layout"] is None and r["phase"] is None for r in rows)


def _copy_with_row(tmp_path: Path, edit: dict[str, str], kind: str) -> Path:
    """A copy of a real CPU run with one conv2d / forward_llm_step row changed."""
    out = tmp_path / "m"
    shutil.copytree(_cpu_run(), out)
    path = out / CSV_FILE
    with path.open(newline="") as f:
        rows = list(csv.DictReader(f))
    target = next(r for r in rows if r["kind"] == kind)
    target.update(edit)
    with path.open("w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    return out


@pytest.fixture(scope="module")
def cpu_run_dir() -> Path:
    pytest.importorskip("torch")
    return _cpu_run()


_CACHE: dict[str, Path] = {}


def _cpu_run() -> Path:
    """One tiny torch CPU run with the new kinds (made once per test session)."""
    if "dir" not in _CACHE:
        import calibrate
        from calibrate.backends.torch_backend import TorchBackend

        tmp = Path(tempfile.mkdtemp(prefix="calib-models-"))
        with pytest.MonkeyPatch.context() as mp:  # small bandwidth buffers: a faster run
            mp.setattr(TorchBackend, "cache_bytes", lambda self: 1 << 20)
            _CACHE["dir"] = calibrate.run(
                tmp / "run",
                backend="torch",
                device="cpu",
                quick=True,
                budget_seconds=60,
                llm_shape=LLM_SHAPE,
            )
    return _CACHE["dir"]


def test_torch_cpu_run_writes_conv_and_llm_rows(cpu_run_dir: Path) -> None:
    meta, rows = load_measurements(cpu_run_dir)
    conv = [r for r in rows if r["kind"] == "conv2d"]
    llm = [r for r in rows if r["kind"] == "forward_llm_step"]
    assert conv and llm
    assert all(r["layout"] == "NCHW" and "torch conv2d" in r["impl"] for r in conv)
    assert {r["phase"] for r in llm} == {"decode", "prefill"}
    assert all("eager" in r["impl"] for r in llm)  # no CUDA graphs on a CPU
    assert meta["sweep"]["llm_shape"]["vocab"] == 500 and meta["command"]["llm_shape"]
    assert all((r["layers"], r["vocab"], r["kv_heads"]) == (1, 500, 2) for r in llm)
    for r in llm:
        f, b = work.llm_step(
            work.LlmShape(
                *(
                    r[c]
                    for c in ("layers", "hidden", "heads", "kv_heads", "head_dim", "ffn", "vocab")
                )
            ),  # fmt: skip
            r["batch"],
            r["seq_len"],
            r["phase"],
            r["precision"],
        )
        assert (r["flops"], r["bytes"]) == (f, b)
    assert not [s for s in meta["skipped"] if s["kind"] in ("conv2d", "forward_llm_step")
                and not s["reason"].startswith("budget")]  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "edit", "message"),
    [
        ("conv2d", {"layout": "NWHC"}, "unknown layout 'NWHC'"),
        ("conv2d", {"groups": "5"}, "not a multiple of groups"),
        ("conv2d", {"kernel": ""}, "missing value (required for kind 'conv2d')"),
        ("forward_llm_step", {"phase": "train"}, "unknown phase 'train'"),
        ("forward_llm_step", {"tokens": "3"}, "is not the new tokens of a"),
        ("forward_llm_step", {"kv_heads": "3"}, "not a multiple of kv_heads"),
    ],
)
def test_loader_refuses_bad_new_rows(
    cpu_run_dir: Path, tmp_path: Path, kind: str, edit: dict[str, str], message: str
) -> None:
    with pytest.raises(MeasurementsError) as err:
        load_measurements(_copy_with_row(tmp_path, edit, kind))
    assert message in str(err.value) and "measurements.csv: row" in str(err.value)


def test_capsim_fit_ignores_new_kinds_with_a_note(cpu_run_dir: Path) -> None:
    from capsim.calibration_fit import fit_measurements

    meta, rows = load_measurements(cpu_run_dir)
    fit = fit_measurements(
        meta, rows, data=str(cpu_run_dir), new_id="x-cpu", price_usd_per_hour=0.1,
        power_w=(65.0, None), today="2026-12-04",
    )  # fmt: skip
    assert any("conv2d rows ignored" in n for n in fit.notes)
    assert any("forward_llm_step rows ignored" in n for n in fit.notes)


def test_optional_columns_are_the_new_ones() -> None:
    with (H200 / CSV_FILE).open() as f:
        header = f.readline().strip().split(",")
    assert not OPTIONAL_COLUMNS & set(header)


def test_bad_llm_shape_is_refused_before_measuring(tmp_path: Path) -> None:
    import calibrate

    with pytest.raises(calibrate.CalibrationError, match="multiple of kv_heads"):
        calibrate.run(tmp_path / "x", backend="numpy", llm_shape=(1, 64, 4, 3, 16, 128, 100))
    assert not (tmp_path / "x").exists()
