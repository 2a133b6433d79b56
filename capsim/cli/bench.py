"""``capsim bench``: import serving-benchmark results (a thin click group).

Registered on the ``capsim`` group by one line at the bottom of :mod:`capsim.cli`.
"""

from __future__ import annotations

from pathlib import Path

import click

from capsim.bench import FORMATS, BenchRun, apply_settings, read_files
from capsim.bench.repeats import CachedMode, with_cache_mode
from capsim.bench.summary import summary_line
from capsim.cli.options import (
    catalog_of,
    check_out,
    emit,
    handle_errors,
    prompts_cached_option,
    write_out,
)
from capsim.errors import InputError
from capsim.report.output import to_json, write_json
from capsim.spec.precision import PRECISIONS


def _write_runs(out: Path, runs: list[BenchRun]) -> list[Path]:
    """One normalised JSON file per run in ``out``."""
    return [write_json(out / run_filename(r), r.model_dump(mode="json")) for r in runs]


@click.group("bench")
def bench_group() -> None:
    """Serving-benchmark results (vLLM, SGLang, GenAI-Perf/AIPerf, perf_analyzer, MLPerf).

    \b
    Example:
      capsim bench import mlperf_log_summary.txt --gpu h100-sxm --model llama-2-70b --tp 8
    """


def run_filename(run: BenchRun) -> str:
    """``<file stem>-<sha256[:8]>-<index>.json``: stable, and distinct for same-named files.

    >>> from capsim.bench.model import Source, Tool
    >>> run_filename(BenchRun(source=Source(file="a/b.json", format="vllm", sha256="ab" * 32),
    ...                       tool=Tool(name="t")))
    'b-abababab-0.json'
    """
    src = run.source
    return f"{Path(src.file).stem}-{src.sha256[:8]}-{src.index}.json"


@bench_group.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--gpu", required=True, help="Catalog id of the GPU the runs were measured on.")
@click.option("--model", help="Model served (fills in or overrides the file's).")
@click.option("--precision", type=click.Choice(list(PRECISIONS)), help="Precision served.")
@click.option("--tp", type=click.IntRange(1, 64), help="Tensor-parallel degree.")
@click.option("--engine", help="Serving engine (vllm, sglang, tensorrt-llm, ...).")
@click.option("--engine-version", help="Serving engine version.")
@click.option("--max-num-seqs", type=click.IntRange(1), help="Engine's batch cap.")
@click.option(
    "--as", "source_format", type=click.Choice(FORMATS), help="Skip detection: read as this."
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write one normalised JSON file per run here.",
)
@prompts_cached_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json"]),
    default="table",
    show_default=True,
    help="table: one line per run; json: the normalised runs on stdout.",
)
@click.pass_context
@handle_errors
def import_cmd(
    ctx: click.Context,
    files: tuple[Path, ...],
    gpu: str,
    model: str | None,
    precision: str | None,
    tp: int | None,
    engine: str | None,
    engine_version: str | None,
    max_num_seqs: int | None,
    source_format: str | None,
    out: Path | None,
    prompts_cached: CachedMode,
    fmt: str,
) -> None:
    """Read benchmark result FILEs into capsim's run format (format detected per file).

    Import the runs of one sweep together: a run that sent the same prompts as an earlier one
    is marked as having begun with them in the server's prefix cache (--prompts-cached).

    \b
    Example:
      capsim bench import results/*.json --gpu h100-sxm --model llama-3.1-8b --out runs/
    """
    check_out(out)
    catalog = catalog_of(ctx)
    if gpu not in catalog:
        raise InputError(
            f"unknown GPU {gpu!r}; the catalog has: {', '.join(catalog)}", where="--gpu"
        )
    given = {
        "gpu": gpu,
        "model": model,
        "precision": precision,
        "tp": tp,
        "engine": engine,
        "engine_version": engine_version,
        "max_num_seqs": max_num_seqs,
    }
    runs = [apply_settings(r, given) for r in read_files(files, source_format)]
    runs = with_cache_mode(runs, prompts_cached)
    if out is not None:
        write_out(_write_runs, out, runs)
    if fmt == "json":
        emit(to_json([r.model_dump(mode="json") for r in runs]).rstrip("\n"))
        return
    for run in runs:
        emit(summary_line(run))
    if out is not None:
        emit(f"wrote {len(runs)} run(s) to {out}")
