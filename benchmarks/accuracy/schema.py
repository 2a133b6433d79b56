"""Columns of ``measurements.csv`` and the deterministic fit/test split rule.

The split of a row depends only on its group, card and source URL:
``sha256(f"{group}|{gpu}|{source_url}")``, first 8 hex digits as an integer, modulo 3: 0 is
``fit`` (about one third), 1 and 2 are ``test``. Whatever is fitted uses only ``fit`` rows.

>>> assign_split({"group": "resnet50_offline", "gpu": "t4", "source_url": "https://x"})
'fit'
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


def split_of(group: str, gpu: str, source_url: str) -> str:
    """``fit`` or ``test`` for one row (see the module docstring)."""
    digest = hashlib.sha256(f"{group}|{gpu}|{source_url}".encode()).hexdigest()
    return "fit" if int(digest[:8], 16) % 3 == 0 else "test"


def assign_split(row: dict[str, str]) -> str:
    """The split of a CSV row (a dict with group, gpu and source_url)."""
    return split_of(row["group"], row["gpu"], row["source_url"])
