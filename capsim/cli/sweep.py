"""``capsim sweep``: plan variants of a scenario (a grid or random samples) and a growth forecast."""

from __future__ import annotations

from pathlib import Path

import click

from capsim.cli.options import (
    catalog_of,
    check_out,
    executor_option,
    handle_errors,
    jobs_option,
    progress_printer,
    quiet_option,
    show_result,
)
from capsim.errors import InputError
from capsim.load import load_scenario
from capsim.planning.executors import open_executor, parse_executor
from capsim.planning.sweep import parse_growth, parse_vary
from capsim.planning.sweep import sweep as run_sweep
from capsim.report.sweep import format_sweep, sweep_dict, sweep_frame, write_sweep


@click.command("sweep")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option(
    "--vary",
    "varies",
    multiple=True,
    metavar="PATH=V1,V2,...",
    help="A scenario field by dotted path and its values (repeatable; values are YAML, "
    "lists in brackets), e.g. slo.latency_ms=20,40 or candidates.gpus=[l4],[t4].",
)
@click.option(
    "--samples",
    type=click.IntRange(1, 10000),
    default=None,
    help="Random samples from the grid instead of every combination (seeded).",
)
@click.option(
    "--seed", type=int, default=None, help="Seed of the samples (default: the scenario's)."
)
@click.option("--growth", default=None, metavar="G%/month", help="Traffic growth, e.g. 10%/month.")
@click.option(
    "--months", type=click.IntRange(1, 120), default=12, show_default=True, help="Forecast span."
)
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write sweep.json/.csv, points.csv (+ Parquet with pyarrow), Pareto plots, forecast.csv.",
)
@jobs_option
@executor_option
@quiet_option
@click.pass_context
@handle_errors
def sweep(ctx, scenario, varies, samples, seed, growth, months, fmt, out, jobs, executor, quiet):
    """Plan every variant of a scenario and draw the cost/latency Pareto frontier.

    Each variant is a full plan (the cheapest feasible configuration); every feasible
    configuration of every variant is a point on the frontier (cost vs p99, and for LLMs output
    tokens/s per GPU vs tokens/s per user). With --growth, every variant is also planned for
    each month of traffic growth, and the forecast says when each additional GPU is needed.

    \b
    Example:
      capsim sweep scenarios/embedding.yaml --vary slo.latency_ms=30,60 --out sweep/
      capsim sweep scenarios/embedding.yaml --growth 10%/month --months 2
    """
    parse_executor(executor)
    check_out(out)
    parsed = [parse_vary(v) for v in varies]
    g = parse_growth(growth) if growth is not None else None
    if not parsed and g is None:
        raise InputError("nothing to sweep: give --vary PATH=V1,V2,... or --growth", where="--vary")
    cat = catalog_of(ctx)
    s = load_scenario(scenario, cat)
    with open_executor(executor) as ex:
        result = run_sweep(
            s,
            cat,
            parsed,
            samples=samples,
            seed=seed,
            growth=g,
            months=months,
            name=s.name,
            executor=ex,
            jobs=jobs,
            progress=progress_printer(quiet),
        )
    show_result(
        result, fmt, out, as_dict=sweep_dict, as_text=format_sweep, as_frame=sweep_frame,
        write=write_sweep,
    )  # fmt: skip
