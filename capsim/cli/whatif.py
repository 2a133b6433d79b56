"""``capsim whatif``: compare autoscaling policies on the same traffic (a thin click command).

Registered on the ``capsim`` group when imported (one import line at the bottom of
:mod:`capsim.cli`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import click
import yaml
from pydantic import TypeAdapter, ValidationError

from capsim.cli.options import (
    catalog_of,
    check_out,
    emit,
    executor_option,
    handle_errors,
    jobs_option,
    progress_printer,
    quiet_option,
    seed_option,
    with_seed,
    write_out,
)
from capsim.errors import InputError, format_validation_error
from capsim.evaluate import check_measurable
from capsim.load import load_scenario
from capsim.planning.executors import open_executor, parse_executor
from capsim.planning.whatif import whatif as run_whatif
from capsim.report.files import write_whatif
from capsim.report.output import to_json
from capsim.report.whatif import format_whatif, whatif_dict
from capsim.spec.autoscaling import PolicySpec
from capsim.workload.streams import real_time


def parse_policy(text: str) -> Any:
    """``KIND[:key=value,key=value]`` -> a validated policy spec (errors name the option).

    >>> parse_policy("hpa:target=60,max_replicas=8").target
    60.0
    >>> parse_policy("fixed:replicas=4,name=four").label
    'four'
    """
    kind, _, rest = text.partition(":")
    data: dict[str, Any] = {"kind": kind.strip()}
    for item in filter(None, (p.strip() for p in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq or not key.strip():
            raise InputError(
                f"cannot read '{item}' in '{text}'; expected key=value, e.g. "
                "hpa:target=60,max_replicas=8",
                where="--policy",
            )
        try:
            data[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError:
            data[key.strip()] = value
    try:
        return TypeAdapter(PolicySpec).validate_python(data)
    except ValidationError as exc:
        err = format_validation_error(exc, file=None)
        raise InputError(f"{err.message} (in '{text}')", where="--policy") from None


@click.command("whatif")
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--gpu", help="Catalog id (default: whatif.gpu, or the only candidate GPU).")
@click.option("--precision", help="Precision (default: whatif.precision, or the only one).")
@click.option("--tp", type=click.IntRange(1, 8), default=None, help="Tensor parallelism.")
@click.option(
    "--ep",
    type=click.IntRange(1, 8),
    default=None,
    help="Expert parallelism inside the tp GPUs (MoE models).",
)
@click.option(
    "--policy",
    "policies",
    multiple=True,
    metavar="KIND[:k=v,...]",
    help="A policy to compare (repeatable), e.g. hpa:target=60,max_replicas=8 or "
    "kpa:target=10 or fixed:replicas=peak. Default: the scenario's whatif.policies, else its "
    "autoscaling policy and a fixed fleet sized for the peak.",
)
@click.option(
    "--replications", type=click.IntRange(2, 100), default=None, help="Override the scenario."
)
@click.option(
    "--window",
    "window_s",
    type=click.FloatRange(1, 86400),
    default=None,
    help="Seconds per window for p99 over time (default 300).",
)
@click.option("--baseline", help="Policy name savings are measured against (default: a fixed one).")
@click.option(
    "--serving",
    type=click.Choice(["colocated", "disaggregated", "both"]),
    default=None,
    help="Run the policies on co-located replicas, on a prefill pool + decode pool, or both "
    "(default: both when the scenario has disaggregation:, else colocated).",
)
@click.option("--decode-gpu", help="Disaggregated: the decode pool's card (default: --gpu).")
@click.option("--decode-precision", help="Disaggregated: the decode pool's precision.")
@click.option("--decode-tp", type=click.IntRange(1, 8), default=None, help="Decode pool's tp.")
@click.option(
    "--placement",
    type=click.Choice(["auto", "same_node", "cross_node"]),
    default=None,
    help="Disaggregated: where the KV cache travels (default: disaggregation.placement).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write whatif.json/.csv, hourly attainment, per-policy timeline CSV+PNG, latency CDFs.",
)
@jobs_option
@executor_option
@quiet_option
@seed_option
@click.pass_context
@handle_errors
def whatif(
    ctx: click.Context,
    scenario: Path,
    gpu: str | None,
    precision: str | None,
    tp: int | None,
    ep: int | None,
    policies: tuple[str, ...],
    replications: int | None,
    window_s: float | None,
    baseline: str | None,
    serving: str | None,
    decode_gpu: str | None,
    decode_precision: str | None,
    decode_tp: int | None,
    placement: str | None,
    fmt: str,
    out: Path | None,
    jobs: int,
    executor: str,
    quiet: bool,
    seed: int | None,
) -> None:
    """Compare autoscaling policies on the same traffic, in real time.

    Per policy: SLO attainment over the horizon and per hour, p99 with its confidence
    interval, time in violation, rejections, GPU-hours, cost (billed from request to release,
    so cold starts count), average and peak replicas, idle share, and the saving against a
    fixed fleet. With --serving disaggregated (or both), each policy also runs on a prefill
    pool and a decode pool, each under its own controller (a `split` policy gives each pool its
    own spec).

    \b
    Example:
      capsim whatif scenarios/embedding_autoscaled.yaml --out results/
      capsim whatif scenarios/embedding_autoscaled.yaml --policy fixed:replicas=peak \\
          --policy hpa:target=60,max_replicas=8 --policy kpa:target=8,max_replicas=8
      capsim whatif scenarios/chatbot_disagg.yaml --serving disaggregated --decode-tp 1
    """
    parse_executor(executor)  # a bad --executor fails before the scenario is read
    check_out(out)
    cat = catalog_of(ctx)
    specs = [parse_policy(p) for p in policies] or None
    s = with_seed(load_scenario(scenario, cat), seed)
    check_measurable(real_time(s), file=str(scenario))
    with open_executor(executor) as ex:
        result = run_whatif(
            s,
            cat,
            specs,
            gpu=gpu,
            precision=precision,
            tp=tp,
            ep=ep,
            replications=replications,
            window_s=window_s,
            baseline=baseline,
            jobs=jobs,
            progress=progress_printer(quiet),
            executor=ex,
            serving=serving,
            decode=(decode_gpu, decode_precision, decode_tp),
            placement=placement,
        )
    if fmt == "json":
        emit(to_json(whatif_dict(result)))
    else:
        emit(format_whatif(result))
    if out is not None:
        paths = write_out(write_whatif, out, result)
        click.echo(f"wrote {len(paths)} files to {out}", err=True)
