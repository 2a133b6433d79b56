"""Import of Vidur's public kernel profiles (MIT, microsoft/vidur) as calibration tables."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from capsim.calibration.curves import (
    DEFAULT_TOLERANCE,
    MIN_BODY,
    _round_us,
    _sig,
    _today,
    achieved_efficiency,
    fit_error,
    make_curve,
    thin_indices,
)
from capsim.calibration.fit import _with_calibration
from capsim.calibration.rows import SPEC_MARGIN
from capsim.errors import (
    InputError,
)
from capsim.service.calibrated import CalibratedTimer
from capsim.service.comm import default_op_timer
from capsim.service.llm import LLMServiceModel
from capsim.service.llm_memory import Shard
from capsim.spec.calibration import (
    Calibration,
    FitError,
    MeasuredPeaks,
    OpTable,
    Provenance,
)
from capsim.spec.catalog import GPU
from capsim.spec.engine import LLMEngineSettings
from capsim.spec.models import TransformerModel

# Vidur (microsoft/vidur) -------------------------------------------------------------------
VIDUR_COMMIT = "7d47513"


VIDUR_LICENCE = "MIT License, Copyright (c) Microsoft Corporation"


VIDUR_ATTRIBUTION = (
    "Vidur: A Large-Scale Simulation Framework For LLM Inference (Agrawal et al., MLSys 2024), "
    "github.com/microsoft/vidur"
)


VIDUR_UPSTREAM = "data/profiling/compute/{card}/meta-llama/Llama-2-7b-hf/mlp.csv"


#: capsim table -> Vidur column(s); a tuple of tuples is (mean of the first group) + the rest
VIDUR_TABLES: dict[str, Any] = {
    "qkv_proj": "attn_pre_proj",
    "o_proj": "attn_post_proj",
    "mlp_up": "mlp_up_proj",
    "mlp_down": "mlp_down_proj",
    "mlp_act": "mlp_act",
    "embed": "emb",
    "rope": "attn_rope",
    "norm": (("input_layernorm", "post_attention_layernorm"), "add"),
}


VIDUR_GEMMS = ("qkv_proj", "o_proj", "mlp_up", "mlp_down")


VIDUR_SHAPE = ("n_head", "n_kv_head", "n_embd", "n_expanded_embd", "vocab_size", "use_gated_mlp")


VIDUR_KEYS = ("num_tokens", "num_tensor_parallel_workers")


def vidur_columns(table: str) -> list[str]:
    """The Vidur operators behind one capsim table."""
    spec = VIDUR_TABLES[table]
    if isinstance(spec, str):
        return [spec]
    return [*spec[0], *spec[1:]]


@dataclass
class VidurImport:
    gpu: GPU
    calibration: Calibration
    comparison: Any  # pandas DataFrame: op, tp, num_tokens, measured_s, table_s, error
    notes: list[str] = field(default_factory=list)


def read_vidur(path: Path):
    """Vidur's ``mlp.csv``: medians per (num_tokens, tp) in seconds (duplicate rows merged by
    median), checked column by column; and the model shape."""
    import pandas as pd

    _check_vidur_path(path)
    try:
        raw = pd.read_csv(path)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the user's file
        raise InputError(f"not a readable CSV: {exc}", file=path) from None
    needed = [*VIDUR_KEYS, *VIDUR_SHAPE] + [
        f"time_stats.{op}.median" for t in VIDUR_TABLES for op in vidur_columns(t)
    ]
    missing = [c for c in needed if c not in raw.columns]
    if missing:
        raise InputError(
            "not a Vidur mlp.csv profile: missing column(s) " + ", ".join(missing[:6]), file=path
        )
    if raw.empty:
        raise InputError("no rows", file=path)
    for c in needed:
        col = pd.to_numeric(raw[c], errors="coerce") if c != "use_gated_mlp" else raw[c]
        bad = col.isna() if c == "use_gated_mlp" else (col.isna() | (col < 0))
        if c.startswith("time_stats") or c in VIDUR_KEYS:
            bad = bad | (col <= 0)
        if bad.any():
            i = int(np.flatnonzero(bad.to_numpy())[0])
            raise InputError(
                f"row {i + 1} (line {i + 2}): {raw[c].iloc[i]!r} is not a positive number",
                file=path,
                where=f"column '{c}'",
            )
        if c != "use_gated_mlp":
            raw[c] = col
    shapes = raw[list(VIDUR_SHAPE)].drop_duplicates()
    if len(shapes) != 1:
        raise InputError("rows describe more than one model shape", file=path)
    times = [f"time_stats.{op}.median" for t in VIDUR_TABLES for op in vidur_columns(t)]
    med = raw.groupby(list(VIDUR_KEYS))[list(dict.fromkeys(times))].median() * 1e-3
    med.columns = [c.split(".")[1] for c in med.columns]
    s = shapes.iloc[0]
    gated = str(s.use_gated_mlp).strip().lower() in ("true", "1", "1.0")
    model = TransformerModel(
        name="vidur-profile", layers=1, hidden_size=int(s.n_embd), attention_heads=int(s.n_head),
        kv_heads=int(s.n_kv_head), ffn_size=int(s.n_expanded_embd), vocab_size=int(s.vocab_size),
        gated_mlp=gated,
    )  # fmt: skip
    return med, model


def vidur_measured(med, table: str):
    """The measured seconds behind one capsim table (a Series over (num_tokens, tp))."""
    spec = VIDUR_TABLES[table]
    if isinstance(spec, str):
        return med[spec]
    means = sum(med[c] for c in spec[0]) / len(spec[0])
    return means + sum(med[c] for c in spec[1:])


def _capsim_costs(gpu: GPU, model: TransformerModel, tp: int) -> dict[str, dict[str, Any]]:
    """Cost coefficients (per token and fixed) of capsim's operators for ``model`` at fp16."""
    svc = LLMServiceModel(
        gpu, model, "fp16", tp, LLMEngineSettings(max_num_batched_tokens=2), default_op_timer
    )
    t = np.array([0.0, 1.0])
    out = {}
    for op in svc._token_ops(t):
        f = np.broadcast_to(np.asarray(op.flops, dtype=float), t.shape)
        b = np.broadcast_to(np.asarray(op.bytes, dtype=float), t.shape)
        out[op.name] = dict(
            n=op.n, k=op.k, kernels=op.kernels, fmt=op.fmt,
            flops_per_token=float(f[1] - f[0]), bytes_fixed=float(b[0]),
            bytes_per_token=float(b[1] - b[0]),
        )  # fmt: skip
    sh = Shard.of(model, tp)
    # RoPE alone (the first of rope_kv_write's two kernels): read and write q and k
    out["rope"] = dict(
        n=0, k=0, kernels=1, fmt=out["norm"]["fmt"], flops_per_token=0.0, bytes_fixed=0.0,
        bytes_per_token=2.0 * (sh.q_heads + sh.kv_heads) * sh.head_dim * 2.0,
    )  # fmt: skip
    return out


def import_vidur(
    csv_path: str | Path,
    gpu: GPU,
    *,
    card: str | None = None,
    commit: str = VIDUR_COMMIT,
    tolerance: float = DEFAULT_TOLERANCE,
    today: str | None = None,
    force: bool = False,
) -> VidurImport:
    """Build ``gpu``'s calibration from a Vidur ``mlp.csv`` (see the module docstring).

    Refuses a profile whose file name (or ``card``) names another card than ``gpu`` unless
    ``force``, and always one whose best GEMM beats ``gpu``'s fp16 spec peak by more than 5%.
    """
    import pandas as pd

    path = Path(csv_path)
    today = today or _today()
    if not 0 < tolerance < 0.5:
        raise InputError(f"tolerance must be in (0, 0.5), got {tolerance}", param="tolerance")
    if gpu.peak_flops("fp16") is None:
        raise InputError(f"{gpu.id} has no fp16 peak; Vidur profiles are fp16", param="gpu")
    _check_vidur_path(path)
    notes = _check_vidur_card(path, card, gpu, force)
    med, model = read_vidur(path)
    card = card or _vidur_card(path)
    overhead_s = gpu.kernel_overhead_us * 1e-6
    tables: list[OpTable] = []
    compare = []
    gemm_pts: dict[str, list] = {"f": [], "b": [], "t": [], "key": [], "tok": []}
    mem_pts: dict[str, list] = {"b": [], "t": []}
    tps = sorted(int(v) for v in med.index.get_level_values(1).unique())
    for tp in tps:
        costs = _capsim_costs(gpu, model, tp)
        sub = med.xs(tp, level=1)
        tokens = sub.index.to_numpy(dtype=float)
        for name in VIDUR_TABLES:
            c = costs[name]
            secs = vidur_measured(sub, name).to_numpy(dtype=float)
            keep = thin_indices(tokens, secs, tolerance)
            tab = OpTable(
                op=name, format="fp16", tp=tp, n=c["n"], k=c["k"], kernels=c["kernels"],
                flops_per_token=c["flops_per_token"], bytes_fixed=c["bytes_fixed"],
                bytes_per_token=c["bytes_per_token"],
                measured_as="vidur " + " + ".join(vidur_columns(name)),
                tokens=[int(tokens[i]) for i in keep],
                time_us=[_round_us(secs[i] * 1e6) for i in keep],
            )  # fmt: skip
            tables.append(tab)
            back = tab.seconds(tokens)
            compare.append(
                pd.DataFrame(
                    {
                        "op": name,
                        "tp": tp,
                        "num_tokens": tokens.astype(int),
                        "measured_s": secs,
                        "table_s": back,
                    }
                )  # fmt: skip
            )
            f, b = tab.cost(tokens)
            if name in VIDUR_GEMMS:
                gemm_pts["f"].append(f)
                gemm_pts["b"].append(b)
                gemm_pts["t"].append(secs)
                gemm_pts["key"] += [(name, tp)] * len(tokens)
                gemm_pts["tok"] += [int(x) for x in tokens]
        # element-wise kernels one by one, with the bytes each one moves
        h = model.hidden_size
        for col, nbytes in (
            ("input_layernorm", 2.0 * h * 2.0),
            ("post_attention_layernorm", 2.0 * h * 2.0),
            ("add", 3.0 * h * 2.0),
            ("mlp_act", costs["mlp_act"]["bytes_per_token"]),
            ("attn_rope", costs["rope"]["bytes_per_token"]),
        ):
            mem_pts["b"].append(nbytes * tokens)
            mem_pts["t"].append(sub[col].to_numpy(dtype=float))
    comparison = pd.concat(compare, ignore_index=True)
    comparison["error"] = comparison.table_s / comparison.measured_s - 1.0
    gf, gb, gt = (np.concatenate(gemm_pts[k]) for k in ("f", "b", "t"))
    peak16 = gpu.peak_flops("fp16")
    assert peak16 is not None
    i_best = int(np.argmax(gf / gt))
    best = float(gf[i_best] / gt[i_best]) / 1e12
    if best * 1e12 > SPEC_MARGIN * peak16:
        op, tp = gemm_pts["key"][i_best]
        tokens = gemm_pts["tok"][i_best]
        raise InputError(
            f"best fp16 GEMM ({op} tp={tp}, {tokens} tokens) ran at {best:.0f} TFLOP/s = "
            f"{best * 1e12 / peak16:.0%} of {gpu.id}'s spec fp16 peak ({peak16 / 1e12:g} "
            "TFLOP/s): measured faster than the card's spec peak -- wrong GPU entry?",
            file=path,
        )
    curves = [
        make_curve(
            "gemm",
            "fp16",
            "intensity",
            gf / gb,
            achieved_efficiency(gpu, gf, gb, "fp16", gt, overhead_s),
        ),  # fmt: skip
    ]
    mb, mt = np.concatenate(mem_pts["b"]), np.concatenate(mem_pts["t"])
    mem_eff = (mb / gpu.bandwidth) / np.maximum(mt - overhead_s, MIN_BODY * mt)
    curves.append(make_curve("memory", "fp16", "bytes", mb, mem_eff))
    errors = [
        fit_error(
            f"stored tables vs all {len(comparison)} measured points",
            comparison.error.to_numpy(),
            [f"{r.op} tp={r.tp} {r.num_tokens} tok" for r in comparison.itertuples()],
        ),
        _vidur_curve_cv(gpu, gf, gb, gt, gemm_pts["key"], overhead_s),
    ]
    provenance = Provenance(
        source=f"Vidur operator profile (microsoft/vidur {VIDUR_UPSTREAM.format(card=card)})",
        method=(
            "Vidur mlp.csv medians per (num_tokens, tp) mapped onto capsim operators "
            "(attn_pre_proj->qkv_proj, attn_post_proj->o_proj, mlp_up_proj->mlp_up, "
            "mlp_down_proj->mlp_down, mlp_act, emb->embed, attn_rope->rope, mean(input_layernorm, "
            "post_attention_layernorm)+add->norm); tables thinned to reproduce every point "
            f"within {tolerance:.0%}; GEMM curve = median achieved fraction of the fp16 roofline "
            "in bins of log intensity; memory curve from the element-wise kernels"
        ),
        device=f"{gpu.name} (Vidur profile '{card}', Llama-2-7B shapes, fp16)",
        created=today,
        data=str(path.name),
        licence=VIDUR_LICENCE,
        attribution=VIDUR_ATTRIBUTION,
        commit=commit,
        fit_errors=errors,
    )
    cal = Calibration(
        provenance=provenance,
        kernel_overhead_us=gpu.kernel_overhead_us,
        measured=MeasuredPeaks(tflops={"fp16": _sig(best, 4)}),
        curves=curves,
        tables=tables,
    )
    notes.append(
        f"{len(tables)} tables, {sum(len(t.tokens) for t in tables)} of "
        f"{len(comparison)} points kept (tolerance {tolerance:.0%}); best fp16 GEMM "
        f"{best:.0f} TFLOP/s = {best * 1e12 / peak16:.0%} of spec peak"
    )
    return VidurImport(_with_calibration(gpu, cal, today), cal, comparison, notes)


_VIDUR_CARDS = re.compile(r"(a100|h100|a40|h200|l40s?|a10g?)")


def _vidur_card(path: Path) -> str:
    m = _VIDUR_CARDS.search(path.name.lower())
    return m.group(1) if m else path.stem


def _check_vidur_path(path: Path) -> None:
    if path.is_dir():
        raise InputError(
            "is a directory: give the profile file itself, e.g. mlp_a100_Llama-2-7b-hf.csv",
            file=path,
        )
    if not path.is_file():
        raise InputError("file not found", file=path)


def _check_vidur_card(path: Path, card: str | None, gpu: GPU, force: bool) -> list[str]:
    """A card named by the file name or ``card`` must be the entry's (``a100`` for
    ``a100-80gb-sxm``); else refuse, or with ``force`` say so in a note."""
    named = []
    m = _VIDUR_CARDS.search(path.name.lower())
    if m:
        named.append((m.group(1), f"the file name names '{m.group(1)}'"))
    if card and _VIDUR_CARDS.fullmatch(card.lower()):
        named.append((card.lower(), f"card is '{card}'"))
    wrong = [why for c, why in named if not (gpu.id == c or gpu.id.startswith(c + "-"))]
    if not wrong:
        return []
    text = f"{' and '.join(wrong)}, but gpu is {gpu.id}"
    if not force:
        raise InputError(
            f"{text}: a profile of another card? Force the import to take it anyway",
            file=path,
            param="force",
        )
    return [f"forced: {text}"]


def _vidur_curve_cv(gpu, f, b, t, keys, overhead_s) -> FitError:
    """Each (GEMM operator, tp) table predicted by the curve fitted without it."""
    keys_arr = np.array([f"{k[0]} tp={k[1]}" for k in keys])
    errs, labels = [], []
    for key in dict.fromkeys(keys_arr.tolist()):
        mine = keys_arr == key
        rest = ~mine
        curve = make_curve(
            "gemm", "fp16", "intensity", f[rest] / b[rest],
            achieved_efficiency(gpu, f[rest], b[rest], "fp16", t[rest], overhead_s),
        )  # fmt: skip
        probe_cal = Calibration(
            provenance=Provenance(source="cv", method="cv", device="cv", created="cv", data="cv"),
            kernel_overhead_us=overhead_s * 1e6,
            curves=[curve],
        )
        probe = gpu.model_copy(update={"calibration": probe_cal})
        timer = CalibratedTimer(probe)
        tm = timer.evaluate("gemm", f[mine], b[mine], "fp16", 1, 1, 1, 1, np.ones(mine.sum()))
        errs.append(tm.time_s / t[mine] - 1.0)
        labels += [key] * int(mine.sum())
    return fit_error(
        "gemm curve, each (operator, tp) table left out in turn", np.concatenate(errs), labels
    )
