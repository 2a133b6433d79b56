"""Columns of ``measurements.csv`` and the deterministic fit/test split rule.

The split of a row depends only on its identity: group, card, source URL and shape
(``SPLIT_KEY``): ``sha256("|".join(those values))``, first 8 hex digits as an integer, modulo 3:
0 is ``fit`` (about one third), 1 and 2 are ``test``. Whatever is fitted uses only ``fit`` rows.
MLPerf rows each have their own source file; rows copied from one table (nccl sizes, LLM
lengths) are split by their shape, so every curve has fit and test points.

>>> assign_split({"group": "resnet50_offline", "gpu": "t4", "source_url": "https://x"})
'test'
"""

from __future__ import annotations

import hashlib

COLUMNS = [
    "group",
    "gpu",
    "n_gpus",
    "model",
    "precision",
    "batch",
    "seq_len",
    "tp",
    "prompt_tokens",
    "output_tokens",
    "message_bytes",
    "value",
    "unit",
    "value_total",
    "engine",
    "scenario",
    "source_url",
    "source_ref",
    "split",
    "notes",
]

GPU_IDS = {
    "t4", "l4", "a10g", "a100-40gb-sxm", "a100-80gb-pcie", "a100-80gb-sxm", "h100-pcie",
    "h100-sxm", "h200-sxm", "l40s", "b200", "mi300x",
}  # fmt: skip


#: The columns whose values decide a row's split.
SPLIT_KEY = [
    "group", "gpu", "source_url", "message_bytes", "tp", "prompt_tokens", "output_tokens", "batch",
]  # fmt: skip


def split_of(*values: str) -> str:
    """``fit`` or ``test`` for the SPLIT_KEY values of one row (see the module docstring)."""
    digest = hashlib.sha256("|".join(values).encode()).hexdigest()
    return "fit" if int(digest[:8], 16) % 3 == 0 else "test"


def assign_split(row: dict[str, str]) -> str:
    """The split of a CSV row (a dict; missing SPLIT_KEY columns count as empty)."""
    return split_of(*(str(row.get(col, "")) for col in SPLIT_KEY))
