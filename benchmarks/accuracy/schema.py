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


#: Mean real (unpadded) tokens per sample of MLPerf's BERT input: SQuAD v1.1 at max_seq_len 384.
#: Source: Zhang, Wei, Wang, Jin, Cao, "Reducing BERT Computation by Padding Removal and
#: Curriculum Learning", ISPASS 2021 (doi:10.1109/ISPASS51385.2021.00025), abstract at
#: https://openreview.net/forum?id=3nzKUh9a4M : "For SQuAD-v1.1, padding accounts for 54% of the
#: total input tokens when the max sequence length is 384." Derived: 384 x (1 - 0.54) = 176.6,
#: rounded to 177 (the rounding of "54%" spans 174.7..178.6 tokens). A dataset fact, not fitted.
SQUAD_V11_MEAN_TOKENS = 177

#: The padded length MLPerf's BERT rows carry in ``seq_len`` (SQuAD v1.1, max_seq_len 384).
SQUAD_V11_MAX_TOKENS = 384


def effective_seq_len(group: str, seq_len: object) -> int | None:
    """Tokens per sample capsim costs a row at: the SQuAD mean for MLPerf BERT rows, else None.

    NVIDIA's MLPerf BERT harness (which every BERT row here runs: TensorRT) drops the padding:
    its engine takes the batch's real tokens concatenated, with ``cu_seqlens`` marking where each
    sample ends (``bert_var_seqlen.py`` since v0.7; "Variable Sequence Lengths" in
    ``closed/NVIDIA/code/bert/tensorrt/README.md``, see benchmarks/accuracy/README.md), so a
    sample costs its real length, not 384.

    >>> effective_seq_len("bert_offline", 384), effective_seq_len("resnet50_offline", "")
    (177, None)
    """
    if group.startswith("bert_") and str(seq_len).split(".")[0] == str(SQUAD_V11_MAX_TOKENS):
        return SQUAD_V11_MEAN_TOKENS
    return None


#: Cards whose MLPerf BERT-99.9 ("high accuracy") results ran their matmul and linear layers in
#: FP8 although the submission declares ``weight_data_types`` fp16 (this CSV's ``precision``).
#: Sources: NVIDIA's harness README, https://github.com/mlcommons/inference_results_v4.0/blob/
#: 3c4a1cf196b70175cfe7c59e067cd1d923aa4f3f/closed/NVIDIA/code/bert/tensorrt/README.md ("For the
#: NVIDIA Hopper Preview submission in MLPerf v2.1, we run some computations (matmul layers and
#: linear layers) in FP8 precision for the higher accuracy target."), and NVIDIA's BERT Offline
#: config (``H100_SXM_80GBx1_HighAccuracy``, ``H100_PCIe_80GBx1_HighAccuracy``,
#: ``H200_SXM_141GBx1_HighAccuracy``: ``precision = "fp16"``, ``use_fp8 = True``) as copied in
#: https://github.com/MiaoXiaodongIntel/mlperf_inference_results_v5.0/blob/
#: 7c697832b98ad5f275fc5ac6da7dc98ce159bbb9/closed/NVIDIA/configs/bert/Offline/__init__.py
#: (a copy of mlcommons/inference_results_v5.0). The results agree: H100-SXM "fp16" Offline is
#: 0.87x its INT8 result, where FP16 math has half the INT8 peak. L4's config sets use_fp8 too,
#: but its "fp16" results are 0.65x its INT8 ones and no source says which layers ran in FP8, so
#: L4 rows stay FP16 (see benchmarks/accuracy/README.md).
FP8_HIGH_ACCURACY_GPUS = frozenset({"h100-sxm", "h100-pcie", "h200-sxm"})


def run_precision(group: str, gpu: str, precision: str) -> str:
    """The precision capsim costs a row in: fp8 for Hopper BERT "fp16" rows, else the declared one.

    >>> run_precision("bert_offline", "h100-sxm", "fp16"), run_precision("bert_offline", "l4", "fp16")
    ('fp8', 'fp16')
    """
    if group.startswith("bert_") and gpu in FP8_HIGH_ACCURACY_GPUS and precision == "fp16":
        return "fp8"
    return precision
