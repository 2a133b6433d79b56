"""``capsim plan`` and ``capsim simulate``: search the candidates, or evaluate one configuration."""

from __future__ import annotations

from pathlib import Path

import click

from capsim.cli.options import (
    FORMATS,
    catalog_of,
    check_out,
    executor_option,
    handle_errors,
    jobs_option,
    progress_printer,
    quiet_option,
    seed_option,
    show_result,
    with_seed,
)
from capsim.errors import InputError
from capsim.evaluate import Config, check_measurable
from capsim.evaluate import simulate as run_sim
from capsim.load import load_scenario
from capsim.planning.api import plan as run_plan
from capsim.planning.disagg_sim import simulate_disagg
from capsim.planning.executors import open_executor, parse_executor
from capsim.planning.prefix import compare_prefix_caching as compare_prefix_caching_plans
from capsim.planning.static import Candidate
from capsim.report.disagg import disagg_eval_dict, format_disagg_eval
from capsim.report.files import write_disagg_eval, write_evaluation, write_plan
from capsim.report.prefix import caching_dict, format_caching
from capsim.report.text import (
    evaluation_dict,
    format_evaluation,
    format_plan,
    plan_dict,
    plan_frame,
)
from capsim.spec.precision import PRECISIONS
from capsim.workload.streams import check_traffic


# --------------------------------------------------------------------------- plan
@click.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--format", "fmt", type=FORMATS, default="table", show_default=True)
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Write CSV/JSON and PNG plots here.",
)
@click.option(
    "--compare-prefix-caching",
    is_flag=True,
    help="Also plan with enable_prefix_caching off and say what caching saved (LLM traffic "
    "with sessions or system prompts).",
)
@jobs_option
@executor_option
@quiet_option
@seed_option
@click.pass_context
@handle_errors
def plan(
    ctx: click.Context,
    scenario: Path,
    fmt: str,
    out: Path | None,
    jobs: int,
    executor: str,
    quiet: bool,
    seed: int | None,
    compare_prefix_caching: bool = False,
) -> None:
    """Find the cheapest configuration meeting the scenario's SLO, and why the others lost.

    \b
    Example:
      capsim plan scenarios/embedding.yaml --out results/ --jobs 2
    """
    parse_executor(executor)  # a bad --executor fails before the scenario is read
    check_out(out)
    cat = catalog_of(ctx)
    s = with_seed(load_scenario(scenario, cat), seed)
    check_traffic(s, file=str(scenario), jobs=jobs)  # memory for the parallel jobs
    check_measurable(s, file=str(scenario))
    with open_executor(executor) as ex:
        if compare_prefix_caching:
            cmp = compare_prefix_caching_plans(
                s, cat, jobs=jobs, progress=progress_printer(quiet), executor=ex
            )
            show_result(
                cmp.on,
                fmt,
                out,
                as_dict=lambda r: {**plan_dict(r), "prefix_caching": caching_dict(cmp)},
                as_text=lambda r: f"{format_plan(r)}\n\n{format_caching(cmp)}",
                as_frame=plan_frame,
                write=write_plan,
            )
            return
        result = run_plan(s, cat, jobs=jobs, progress=progress_printer(quiet), executor=ex)
    show_result(
        result,
        fmt,
        out,
        as_dict=plan_dict,
        as_text=format_plan,
        as_frame=plan_frame,
        write=write_plan,
    )


# --------------------------------------------------------------------------- simulate
@click.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.option("--gpu", required=True, help="Catalog id, e.g. l4.")
@click.option("--precision", required=True, help="fp32, tf32, fp16, bf16, fp8, int8 or int4.")
@click.option("--replicas", type=click.IntRange(1, 100000), required=True)
@click.option(
    "--tp", type=click.Choice(["1", "2", "4", "8"]), default="1", help="Tensor parallelism (LLM)."
)
@click.option(
    "--ep",
    type=click.Choice(["1", "2", "4", "8"]),
    default="1",
    help="Expert parallelism inside the tp GPUs (MoE models; must divide --tp).",
)
@click.option(
    "--replications", type=click.IntRange(1, 1000), default=None, help="Override the scenario."
)
@click.option(
    "--decode-replicas",
    type=click.IntRange(1, 100000),
    default=None,
    help="Disaggregated serving (LLM): this many decode replicas; --gpu, --precision, --tp and "
    "--replicas then describe the prefill pool.",
)
@click.option("--decode-gpu", default=None, help="Decode pool's card (default: --gpu).")
@click.option(
    "--decode-precision", default=None, help="Decode pool's precision (default: --precision)."
)
@click.option(
    "--decode-tp",
    type=click.Choice(["1", "2", "4", "8"]),
    default=None,
    help="Decode pool's tp (default: --tp).",
)
@click.option(
    "--placement",
    type=click.Choice(["auto", "same_node", "cross_node"]),
    default=None,
    help="Where the KV cache travels (default: the scenario's disaggregation.placement, else auto).",
)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path))
@seed_option
@click.pass_context
@handle_errors
def simulate(
    ctx, scenario, gpu, precision, replicas, tp, ep, replications, decode_replicas, decode_gpu,
    decode_precision, decode_tp, placement, fmt, out, seed,
) -> None:  # fmt: skip
    """Simulate one configuration and print its full metrics.

    \b
    Examples:
      capsim simulate scenarios/vision.yaml --gpu l4 --precision int8 --replicas 3
      capsim simulate scenarios/chatbot_disagg.yaml --gpu h100-sxm --precision fp8 \\
          --replicas 3 --decode-replicas 4
    """
    check_out(out)
    cat = catalog_of(ctx)
    if gpu not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu}'; the catalog has: {', '.join(cat)}", where="--gpu")
    if precision not in PRECISIONS:
        raise InputError(
            f"unknown precision '{precision}'; accepted: {', '.join(PRECISIONS)}",
            where="--precision",
        )
    s = with_seed(load_scenario(scenario, cat), seed)
    check_measurable(s, file=str(scenario))
    if decode_replicas is not None or decode_gpu or decode_precision or decode_tp or placement:
        dis = simulate_disagg(
            s, cat, str(scenario), Candidate(gpu, precision, int(tp), int(ep)), replicas,
            decode_replicas, decode_gpu, decode_precision, decode_tp, placement, replications,
        )  # fmt: skip
        show_result(
            dis, fmt, out, as_dict=disagg_eval_dict, as_text=format_disagg_eval,
            write=write_disagg_eval,
        )  # fmt: skip
        return
    if replications == 1 and s.simulation.replications > 1:
        replications = 2  # an interval needs two
    ev = run_sim(
        s,
        Config(gpu, precision, replicas, int(tp), int(ep)),
        catalog=cat,
        replications=replications,
    )
    show_result(
        ev, fmt, out, as_dict=evaluation_dict, as_text=format_evaluation, write=write_evaluation
    )
