"""Extract per-accelerator MLPerf Inference rows from a clone of an mlcommons results repository.

Reads, for every closed-division system whose accelerator maps to a capsim catalog id, the
``results/<system>/<benchmark>/<scenario>/performance/run_1/mlperf_log_summary.txt`` (only runs
whose result is VALID), the system description ``systems/<system>.json`` (accelerator name and
count) and ``measurements/<system>/<benchmark>/<scenario>/*.json`` (declared weight data type).
Power-capped (MaxQ), MIG, virtualised, Triton-server and custom-thermal (CTS) variants are skipped
so that every row is the card at its stock limits under TensorRT (or the submitter's own stack).

Prints CSV rows in the column order of ``measurements.csv`` (split left empty: ``score.py``
and the README give the rule; ``assign_split`` fills it).

Run: ``python benchmarks/accuracy/extract_mlperf.py REPO_GIT_DIR VERSION > rows.csv`` where
REPO_GIT_DIR is a clone (bare is fine) of e.g. github.com/mlcommons/inference_results_v4.1.
"""

from __future__ import annotations

import argparse
import csv
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from schema import COLUMNS, assign_split  # noqa: E402

#: MLPerf accelerator_model_name -> capsim catalog id (exact names only).
ACCELERATORS = {
    "NVIDIA T4": "t4",
    "Nvidia Tesla T4": "t4",
    "NVIDIA Tesla T4": "t4",
    "NVIDIA L4": "l4",
    "NVIDIA L40S": "l40s",
    "NVIDIA A100-PCIe-80GB": "a100-80gb-pcie",
    "NVIDIA A100-SXM-80GB": "a100-80gb-sxm",
    "NVIDIA A100-SXM4-40GB": "a100-40gb-sxm",
    "NVIDIA A100-SXM-40GB": "a100-40gb-sxm",
    "NVIDIA H100-PCIe-80GB": "h100-pcie",
    "NVIDIA H100-SXM-80GB": "h100-sxm",
    "NVIDIA H200-SXM-141GB": "h200-sxm",
    "NVIDIA B200-SXM-180GB": "b200",
    "AMD Instinct MI300X-NPS1-SPX-192GB-750W": "mi300x",
    "AMD MI300X-NPS1-SPX-192GB-750W": "mi300x",
}
#: MLPerf benchmark -> (group, capsim model card, seq_len or "").
BENCHMARKS = {
    "resnet50": ("resnet50", "resnet-50", ""),
    "bert-99": ("bert", "bert-large", "384"),
    "bert-99.9": ("bert", "bert-large", "384"),
    "llama2-70b-99": ("mlperf_llama2_70b", "llama-2-70b", ""),
}
SKIP = re.compile(r"MaxQ|MIG|Triton|CTS|80C|HeteroMultiUse", re.IGNORECASE)
SUMMARY = re.compile(
    r"^closed/([^/]+)/results/([^/]+)/([^/]+)/(Offline|Server)/performance/run_1/"
    r"mlperf_log_summary\.txt$"
)


def git(repo: Path, *args: str) -> str:
    """Output of one git command in ``repo``."""
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def metric(summary: str, scenario: str, group: str) -> tuple[float, str] | None:
    """The scenario's result metric from a summary file, None unless the run is VALID.

    >>> metric("Samples per second: 12.5\\nResult is : VALID\\n", "Offline", "resnet50")
    (12.5, 'samples/s')
    """
    if not re.search(r"Result is\s*:\s*VALID", summary):
        return None
    if group.startswith("mlperf_llama"):
        keys = ["Tokens per second", "Completed tokens per second"]
        unit = "tokens/s"
    elif scenario == "Offline":
        keys, unit = ["Samples per second"], "samples/s"
    else:
        keys, unit = ["Scheduled samples per second", "Completed samples per second"], "samples/s"
    for key in keys:
        m = re.search(rf"^{key}\s*:\s*([0-9.eE+]+)", summary, re.MULTILINE)
        if m:
            return float(m.group(1)), unit
    return None


def rows(repo: Path, version: str) -> list[dict[str, str]]:
    """Every usable row of one results repository."""
    commit = git(repo, "rev-parse", "HEAD").strip()
    date = git(repo, "log", "-1", "--format=%cs").strip()
    name = f"inference_results_{version}"
    out = []
    for path in git(repo, "ls-tree", "-r", "--name-only", "HEAD").splitlines():
        m = SUMMARY.match(path)
        if not m or m.group(3) not in BENCHMARKS or SKIP.search(m.group(2)):
            continue
        submitter, system, bench, scenario = m.groups()
        try:
            sysd = json.loads(git(repo, "show", f"HEAD:closed/{submitter}/systems/{system}.json"))
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            continue
        gpu = ACCELERATORS.get(str(sysd.get("accelerator_model_name", "")).strip())
        if gpu is None or SKIP.search(str(sysd.get("accelerator_model_name"))):
            continue
        n = int(sysd.get("accelerators_per_node") or 0) * int(sysd.get("number_of_nodes") or 1)
        group, model, seq = BENCHMARKS[bench]
        got = metric(git(repo, "show", f"HEAD:{path}"), scenario, group)
        if got is None or n <= 0:
            continue
        value, unit = got
        mdir = f"closed/{submitter}/measurements/{system}/{bench}/{scenario}"
        precision = ""
        try:
            meas = json.loads(git(repo, "show", f"HEAD:{mdir}/{system}_{scenario}.json"))
            precision = str(meas.get("weight_data_types", "")).strip().lower()
        except (subprocess.CalledProcessError, json.JSONDecodeError):
            pass
        row = dict.fromkeys(COLUMNS, "")
        row.update(
            group=f"{group}_{scenario.lower()}",
            gpu=gpu,
            n_gpus=str(n),
            model=model,
            precision=precision,
            seq_len=seq,
            tp="",
            value=f"{value / n:.6g}",
            unit=f"{unit} per accelerator",
            value_total=f"{value:g}",
            engine=str(sysd.get("framework", "")).replace(",", ";"),
            scenario=f"MLPerf Inference {version} closed {bench} {scenario}",
            source_url=f"https://github.com/mlcommons/{name}/blob/{commit}/{path}",
            source_ref=f"{commit} ({date})",
            notes=(
                f"{submitter} {system}; {sysd.get('accelerator_model_name')} x{n}; value = "
                f"system result / {n}; precision = declared weight_data_types"
            ),
        )
        row["split"] = assign_split(row)
        out.append(row)
    return out


def main(argv: list[str] | None = None) -> None:
    """Print the rows of one repository as CSV on stdout."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("repo", type=Path, help="git directory of an inference_results_v* clone")
    ap.add_argument("version", help="e.g. v4.1")
    ap.add_argument("--header", action="store_true", help="print the header row too")
    args = ap.parse_args(argv)
    w = csv.DictWriter(sys.stdout, fieldnames=COLUMNS, lineterminator="\n")
    if args.header:
        w.writeheader()
    w.writerows(rows(args.repo, args.version))


if __name__ == "__main__":
    main()
