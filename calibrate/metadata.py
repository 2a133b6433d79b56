"""Assembling ``meta.json`` from a finished session (see README.md for every key)."""

from __future__ import annotations

from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from . import __version__, hostinfo
from .plan import SweepConfig
from .schema import FORMAT, PRECISIONS, columns_doc

if TYPE_CHECKING:
    from .session import Session


def utc_now() -> str:
    """Current UTC time, ISO 8601 with a Z."""
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def build_meta(
    s: Session, created: str, command: dict[str, Any], seed: int, elapsed: float
) -> dict[str, Any]:
    """Everything ``meta.json`` holds."""
    return {
        "format": FORMAT,
        "harness_version": __version__,
        "created_utc": created,
        "finished_utc": utc_now(),
        "duration_s": round(elapsed, 3),
        "seed": seed,
        "command": command
        | {"budget_seconds": s.budget_s, "quick": s.quick, "precisions": s.requested},
        "host": hostinfo.host_info(),
        "software": hostinfo.software_info(),
        "backend": s.be.name,
        "backend_notes": s.be.selection_notes,
        "device": s.device,
        "timing": timing_meta(s),
        "precisions": precision_meta(s),
        "primary_precision": s.primary,
        "optional": {
            "power": {"available": s.meter is not None, "detail": s.power_note},
            "resnet50": {
                "available": s.resnet_note is None,
                "detail": s.resnet_note or "torchvision resnet50(weights=None)",
            },
        },
        "sweep": sweep_meta(s.cfg),
        "budget": {
            "budget_seconds": s.budget_s,
            "quick": s.quick,
            "elapsed_s": round(elapsed, 3),
            "predicted_s": round(s.predicted_s, 1),
            "exhausted": s.budget_hit,
            "planned": len(s.tasks),
            "measured": len(s.rows),
            "skipped": len(s.skipped),
        },
        "skipped": s.skipped,
        "interrupted": s.interrupted,
        "n_rows": len(s.rows),
        "columns": columns_doc(),
    }


def timing_meta(s: Session) -> dict[str, Any]:
    """How points were timed."""
    return {
        "method": s.be.timing_method,
        "cache_flush": s.be.device_kind == "cuda",
        **s.cfg.timing.as_dict(),
        "note": "max_time_s shrinks per point when the budget is short; times are per call",
    }


def precision_meta(s: Session) -> dict[str, Any]:
    """Support, measurement and method or reason of every precision."""
    out = {}
    for p in PRECISIONS:
        sup = s.support[p]
        entry: dict[str, Any] = {"supported": sup.supported, "measured": p in s.gemm_precisions}
        entry["method" if sup.supported else "reason"] = sup.detail
        if sup.supported and p not in s.gemm_precisions:
            entry["note"] = "not requested (--precisions)"
        if p in s.unsupported:
            entry["note"] = "requested (--precisions) but not supported: not measured"
        out[p] = entry
    return out


def sweep_meta(cfg: SweepConfig) -> dict[str, Any]:
    """The planned sizes."""
    return {
        "bandwidth_bytes": list(cfg.bandwidth_bytes),
        "gemm_shapes_nk": [list(s) for s in cfg.gemm_shapes],
        "gemm_m": list(cfg.gemm_m),
        "attention_heads": cfg.attn_heads,
        "attention_head_dim": cfg.attn_head_dim,
        "decode_batches": list(cfg.decode_batches),
        "decode_seq_lens": list(cfg.decode_lens),
        "prefill_seq_lens": list(cfg.prefill_lens),
        "block_hidden_heads_ffn_seq": list(cfg.block),
        "block_batches": list(cfg.block_batches),
        "resnet50_batches": list(cfg.resnet_batches),
        "conv_shapes_cin_cout_hw_kernel_stride_groups": [list(c) for c in cfg.conv_shapes],
        "conv_batches": list(cfg.conv_batches),
        "conv_layouts": [cfg.conv_layout] + ([cfg.conv_alt_layout] if cfg.conv_alt_layout else []),
        "llm_shape": asdict(cfg.llm),
        "llm_decode_batches": list(cfg.llm_decode_batches),
        "llm_decode_seq_lens": list(cfg.llm_decode_lens),
        "llm_prefill_batch_seq": [list(p) for p in cfg.llm_prefill],
        "llm_cuda_graphs": cfg.llm_graphs,
        "allreduce_message_bytes": list(cfg.allreduce_sizes),
    }
