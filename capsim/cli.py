"""The ``capsim`` command line: thin click commands, each calling one library function.

Bad input exits with code 2 and one message naming the file, the field or row, what was wrong
and what is accepted; never a traceback.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from capsim.catalog import load_catalog
from capsim.cli_calibrate import calibrate_group
from capsim.cli_model import model_group
from capsim.cli_options import (
    catalog_of,
    emit,
    fail,
    handle_errors,
    jobs_option,
    progress_printer,
    quiet_option,
)
from capsim.cli_whatif import whatif
from capsim.errors import InputError

FORMATS = click.Choice(["table", "json", "csv"])


_fail, _emit, _progress, _catalog = fail, emit, progress_printer, catalog_of


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--catalog",
    type=click.Path(file_okay=False, path_type=Path),
    envvar="CAPSIM_CATALOG",
    help="Hardware catalog directory (default: the shipped catalog; env CAPSIM_CATALOG).",
)
@click.version_option(package_name="capsim")
@click.pass_context
def main(ctx: click.Context, catalog: Path | None) -> None:
    """capsim: the cheapest GPU fleet that meets a p99 latency target, found by simulation.

    \b
    Example:
      capsim plan scenarios/embedding.yaml
      capsim estimate --gpu t4 --model resnet-50 --precision int8 --batch 1 8 32
    """
    ctx.ensure_object(dict)
    ctx.obj["catalog"] = catalog


# --------------------------------------------------------------------------- plan
@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write CSV/JSON and PNG plots here.",
)
@jobs_option
@quiet_option
@click.pass_context
@handle_errors
def plan(
    ctx: click.Context, scenario: Path, fmt: str, out: Path | None, jobs: int, quiet: bool
) -> None:
    """Find the cheapest configuration meeting the scenario's SLO, and why the others lost.

    \b
    Example:
      capsim plan scenarios/embedding.yaml --out results/ --jobs 2
    """
    from capsim.planner import plan as run_plan
    from capsim.report.text import format_plan, plan_dict, plan_frame
    from capsim.scenario import load_scenario

    cat = _catalog(ctx)
    s = load_scenario(scenario, cat)
    result = run_plan(s, cat, jobs=jobs, progress=_progress(quiet))
    if fmt == "json":
        from capsim.report.files import to_json

        _emit(to_json(plan_dict(result)))
    elif fmt == "csv":
        _emit(plan_frame(result).to_csv(index=False))
    else:
        _emit(format_plan(result))
    if out is not None:
        from capsim.report.files import write_plan

        paths = write_plan(out, result)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


# --------------------------------------------------------------------------- simulate
@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--gpu", required=True, help="Catalog id, e.g. l4.")
@click.option("--precision", required=True, help="fp32, tf32, fp16, bf16, fp8, int8 or int4.")
@click.option("--replicas", type=click.IntRange(1, 100000), required=True)
@click.option(
    "--tp", type=click.Choice(["1", "2", "4", "8"]), default="1", help="Tensor parallelism (LLM)."
)
@click.option(
    "--replications", type=click.IntRange(1, 1000), default=None, help="Override the scenario."
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path))
@click.pass_context
@handle_errors
def simulate(ctx, scenario, gpu, precision, replicas, tp, replications, fmt, out) -> None:
    """Simulate one configuration and print its full metrics.

    \b
    Example:
      capsim simulate scenarios/vision.yaml --gpu l4 --precision int8 --replicas 3
    """
    from capsim.precision import PRECISIONS
    from capsim.report.text import evaluation_dict, format_evaluation
    from capsim.scenario import load_scenario
    from capsim.simulate import Config
    from capsim.simulate import simulate as run_sim

    cat = _catalog(ctx)
    if gpu not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu}'; the catalog has: {', '.join(cat)}", where="--gpu")
    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision '{precision}'; accepted: {', '.join(PRECISIONS)}",
            where="--precision",
        )
    s = load_scenario(scenario, cat)
    if replications == 1 and s.simulation.replications > 1:
        replications = 2  # an interval needs two
    ev = run_sim(
        s, Config(gpu, precision, replicas, int(tp)), catalog=cat, replications=replications
    )
    if fmt == "json":
        from capsim.report.files import to_json

        _emit(to_json(evaluation_dict(ev)))
    else:
        _emit(format_evaluation(ev))
    if out is not None:
        from capsim.report.files import write_evaluation

        paths = write_evaluation(out, ev)
        click.echo(f"wrote {', '.join(str(p) for p in paths)}", err=True)


# --------------------------------------------------------------------------- estimate
@main.command()
@click.option("--gpu", required=True, help="Catalog id, e.g. h100-sxm.")
@click.option(
    "--model", "model_name", required=True, help="Model card name, e.g. resnet-50 or llama-3.1-8b."
)
@click.option("--precision", required=True)
@click.option(
    "--batch",
    "batches",
    type=click.IntRange(1, 65536),
    multiple=True,
    help="Batch size(s); repeat or space-separate.",
)
@click.option(
    "--tp", type=click.Choice(["1", "2", "4", "8"]), default="1", help="Tensor parallelism (LLM)."
)
@click.option(
    "--prompt",
    type=click.IntRange(1, 10**6),
    default=1024,
    show_default=True,
    help="Prompt tokens (LLM).",
)
@click.option(
    "--output",
    type=click.IntRange(1, 10**6),
    default=256,
    show_default=True,
    help="Output tokens (LLM).",
)
@click.option(
    "--seq-len",
    type=click.IntRange(1, 10**6),
    default=None,
    help="Tokens per request of an encoder card (default: the card's sequence_length).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.argument("more_batches", nargs=-1, type=click.IntRange(1, 65536))
@click.pass_context
@handle_errors
def estimate(
    ctx, gpu, model_name, precision, batches, tp, prompt, output, seq_len, fmt, more_batches
) -> None:
    """Service time and memory fit of one model on one card: the roofline breakdown.

    \b
    Examples:
      capsim estimate --gpu t4 --model resnet-50 --precision int8 --batch 1 8 32
      capsim estimate --model llama-3.1-8b --gpu h100-sxm --precision fp8 --batch 32 --prompt 1024 --output 256
    """
    from capsim.estimate import estimate as run_estimate
    from capsim.models import load_model_card

    cat = _catalog(ctx)
    if gpu not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu}'; the catalog has: {', '.join(cat)}", where="--gpu")
    try:
        card = load_model_card(model_name)
    except KeyError as exc:
        raise InputError(str(exc.args[0]), where="--model") from None
    sizes = list(batches) + list(more_batches) or [1, 8, 32]
    result = run_estimate(
        cat[gpu], card, precision, sizes, tp=int(tp), prompt=prompt, output=output, seq_len=seq_len
    )
    if fmt == "json":
        from capsim.report.files import to_json

        _emit(to_json(result.to_dict()))
    else:
        _emit(result.to_text())


# --------------------------------------------------------------------------- validate, schema
@main.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.pass_context
@handle_errors
def validate(ctx, scenario: Path) -> None:
    """Check a scenario file (and the GPUs and model it names) without running it.

    \b
    Example:
      capsim validate scenarios/vision.yaml
    """
    from capsim.scenario import load_scenario
    from capsim.workload import peak_rate, sim_horizon

    s = load_scenario(scenario, _catalog(ctx))
    h, scale = sim_horizon(s)
    comp = f" (compressed x{1 / scale:.0f})" if scale < 1 else ""
    _emit(
        f"ok: {scenario}: '{s.name}', model {s.model.name} ({s.model.kind}), "
        f"{len(s.candidates.gpus)} GPUs x {len(s.candidates.precisions)} precisions, "
        f"peak {peak_rate(s):.1f} req/s, simulated horizon {h:g} s{comp}"
    )


@main.command()
@click.option(
    "--kind",
    type=click.Choice(["scenario", "catalog", "model"]),
    default="scenario",
    show_default=True,
)
def schema(kind: str) -> None:
    """Print the JSON Schema of scenario, catalog-entry or model-card files (for editors).

    \b
    Example:
      capsim schema --kind scenario > scenario.schema.json
    """
    from capsim.catalog import GPU
    from capsim.models import _CardFile
    from capsim.scenario import Scenario

    model = {"scenario": Scenario, "catalog": GPU, "model": _CardFile}[kind]
    _emit(json.dumps(model.model_json_schema(), indent=2))


# --------------------------------------------------------------------------- catalog
@main.group()
def catalog() -> None:
    """List, show and validate hardware catalog entries.

    \b
    Example:
      capsim catalog list
    """


@catalog.command("list")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.pass_context
@handle_errors
def catalog_list(ctx, fmt: str) -> None:
    """One line per card: memory, bandwidth, peaks, power, price.

    \b
    Example:
      capsim catalog list --format json
    """
    from capsim.report.catalog import catalog_rows, format_catalog

    cat = _catalog(ctx)
    if fmt == "json":
        _emit(json.dumps(catalog_rows(cat), indent=2))
    else:
        _emit(format_catalog(cat))


@catalog.command("show")
@click.argument("gpu_id")
@click.pass_context
@handle_errors
def catalog_show(ctx, gpu_id: str) -> None:
    """Every field of one entry, with its sources.

    \b
    Example:
      capsim catalog show h100-sxm
    """
    import yaml

    cat = _catalog(ctx)
    if gpu_id not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu_id}'; the catalog has: {', '.join(cat)}")
    data = cat[gpu_id].model_dump(exclude_none=False)
    _emit(f"# {cat.files[gpu_id]}\n" + yaml.safe_dump(data, sort_keys=False, width=100))


@catalog.command("validate")
@click.argument("directory", required=False, type=click.Path(path_type=Path))
@click.pass_context
@handle_errors
def catalog_validate(ctx, directory: Path | None) -> None:
    """Validate every entry of a catalog directory (default: the one in use).

    \b
    Example:
      capsim catalog validate my_catalog/
    """
    cat = load_catalog(directory) if directory else _catalog(ctx)
    _emit(f"ok: {len(cat)} entries ({', '.join(cat)})")


main.add_command(calibrate_group, "calibrate")
main.add_command(whatif, "whatif")
main.add_command(model_group, "model")
