"""``capsim backtest``: replay imported benchmark runs and compare predicted with measured."""

from __future__ import annotations

from pathlib import Path

import click

from capsim.bench import FORMATS
from capsim.bench.backtest import backtest_run
from capsim.bench.repeats import with_cache_mode
from capsim.bench.runs import load_runs
from capsim.cli.options import (
    catalog_of,
    check_out,
    emit,
    handle_errors,
    prompts_cached_option,
    write_out,
)
from capsim.errors import InputError
from capsim.report.backtest import error_summary, frame, table_lines, write_backtest
from capsim.report.output import to_json
from capsim.spec.precision import PRECISIONS


def run_options(fn):
    """The settings options shared by ``backtest`` and ``calibrate fit-bench``."""
    opts = [
        click.option("--gpu", help="Catalog id of the GPU (fills in or overrides the run's)."),
        click.option("--model", help="capsim model card the run served."),
        click.option("--precision", type=click.Choice(list(PRECISIONS)), help="Precision."),
        click.option("--tp", type=click.IntRange(1, 64), help="Tensor-parallel degree."),
        click.option("--engine", help="Serving engine (vllm, sglang, tensorrt-llm, ...)."),
        click.option("--engine-version", help="Serving engine version."),
        click.option("--max-num-seqs", type=click.IntRange(1), help="Engine's batch cap."),
        click.option(
            "--as", "source_format", type=click.Choice(FORMATS), help="Read raw files as this."
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def given_settings(kw: dict) -> dict:
    """The settings options, as ``apply_settings`` takes them."""
    keys = ("gpu", "model", "precision", "tp", "engine", "engine_version", "max_num_seqs")
    return {k: kw.pop(k) for k in keys}


@click.command("backtest")
@click.argument("runs", nargs=-1, required=True, type=click.Path(path_type=Path))
@run_options
@click.option("--replicas", type=click.IntRange(1), default=1, show_default=True)
@click.option("--replications", type=click.IntRange(2, 20), default=3, show_default=True)
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True)
@click.option(
    "--overhead-ms",
    type=click.FloatRange(min=0),
    help="CPU time per iteration: the LLM engine's scheduler_overhead_ms or a fixed-shape "
    "fleet's batch_overhead_ms (default: theirs; fit-bench prints a fitted value).",
)
@click.option(
    "--per-seq-us",
    type=click.FloatRange(min=0),
    help="LLM engine CPU time per sequence per iteration, with --overhead-ms as the constant "
    "(cpu_overhead {constant_ms, per_seq_us}; fit-bench prints a fitted value).",
)
@click.option(
    "--frontend-ms",
    type=click.FloatRange(min=0),
    default=0.0,
    help="Front-end latency per request (HTTP, tokenisation: outside the GPU loop), added to "
    "TTFT and e2e (default 0; fit-bench prints a fitted value).",
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write backtest.csv, backtest.json and one plot per metric here.",
)
@prompts_cached_option
@click.option("--format", "fmt", type=click.Choice(["table", "json"]), default="table")
@click.pass_context
@handle_errors
def backtest(ctx: click.Context, runs: tuple[Path, ...], **kw) -> None:
    """Replay each RUN in capsim and print predicted vs measured with relative errors.

    RUN is a file written by `capsim bench import --out` (or a directory of them), or a raw
    result file (then give the settings as for `bench import`). A run capsim cannot reproduce (unknown model, missing
    lengths or load) stops with a message naming what is missing (exit code 2). Give the runs
    of one sweep together: a run that repeats an earlier run's prompts on the same server
    began with them in its prefix cache and is replayed so (see --prompts-cached).

    \b
    Example:
      capsim bench import benchmarks/gpu_runs/h200-2026-12-04-run2/iterations/holdout.csv --gpu h200-sxm --out runs/
      capsim backtest runs/ --out backtest/
    """
    check_out(kw["out"])
    given = given_settings(kw)
    catalog = catalog_of(ctx)
    loaded = with_cache_mode(load_runs(runs, given, kw["source_format"]), kw["prompts_cached"])
    oh, per_seq = kw["overhead_ms"], kw["per_seq_us"]
    engine = None if oh is None else {"scheduler_overhead_ms": oh}
    if per_seq is not None:
        cpu = {"constant_ms": oh or 0.0, "per_seq_us": per_seq, "source": "--per-seq-us"}
        engine = {"cpu_overhead": cpu}
    if not loaded:
        raise InputError("no runs in the files given", where="RUN")
    results = [
        backtest_run(
            r,
            catalog,
            replicas=kw["replicas"],
            seed=kw["seed"],
            replications=kw["replications"],
            engine=engine,
            overhead_ms=oh,
            frontend_ms=kw["frontend_ms"],
        )
        for r in loaded
    ]
    df = frame(results)
    if kw["fmt"] == "json":
        emit(to_json(df.to_dict(orient="records")).rstrip("\n"))
    else:
        for bt in results:
            emit("\n".join(table_lines(bt)))
        s = error_summary(df)
        emit(
            f"{len(results)} run(s), {s['rows']} compared values: median |error| "
            f"{s['median_abs_error']:.1%}, largest {s['max_abs_error']:.1%}"
        )
    if kw["out"] is not None:
        paths = write_out(write_backtest, kw["out"], results)
        emit(f"wrote {len(paths)} files to {kw['out']}")
