"""``capsim estimate``, ``capsim validate`` and ``capsim schema``: look at a model, a scenario or the file formats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click
from pydantic import BaseModel

from capsim.cli.options import (
    catalog_of,
    emit,
    handle_errors,
)
from capsim.errors import InputError
from capsim.evaluate import check_measurable
from capsim.load import load_model_card, load_scenario
from capsim.report.output import to_json
from capsim.service.estimate import estimate as run_estimate
from capsim.spec.catalog import GPU
from capsim.spec.engine import CPU_PRESETS, DEFAULT_PRESET, LLMEngineSettings, engine_settings
from capsim.spec.models import _CardFile
from capsim.spec.precision import KV_CACHE_DTYPES
from capsim.spec.scenario import Scenario
from capsim.workload.streams import (
    check_traffic,
    peak_rate,
    real_time,
    run_cost_text,
    sim_horizon,
)


# --------------------------------------------------------------------------- estimate
def _engine(
    preset: str,
    kv_cache_dtype: str,
    kind: str | None,
    k: int,
    acceptance_text: str | None,
    draft: str | None,
) -> LLMEngineSettings:
    """The engine settings ``capsim estimate`` options describe (errors name the option).

    >>> _engine("vllm-v1", "auto", "ngram", 2, "0.8,0.5", None).speculative.acceptance
    [0.8, 0.5]
    """
    try:
        acceptance = [float(x) for x in (acceptance_text or "").split(",") if x.strip()]
    except ValueError:
        raise InputError(
            f"'{acceptance_text}': expected rates like 0.7 or 0.8,0.6,0.5",
            where="--spec-acceptance",
        ) from None
    settings: dict[str, Any] = {"preset": preset, "kv_cache_dtype": kv_cache_dtype}
    if kind is None:
        if draft is not None or acceptance:
            raise InputError("give --spec-kind to speculate", where="--spec-kind")
        return engine_settings(settings)
    if not acceptance:
        raise InputError("speculative decoding needs --spec-acceptance", where="--spec-acceptance")
    spec: dict[str, object] = {
        "kind": kind,
        "k": k,
        "acceptance": acceptance[0] if len(acceptance) == 1 else list(acceptance),
    }
    if kind == "draft":
        if draft is None:
            raise InputError("--spec-kind draft needs --draft-model", where="--draft-model")
        try:
            spec["draft_model"] = load_model_card(draft, Path.cwd())
        except KeyError as exc:
            raise InputError(str(exc.args[0]), where="--draft-model") from None
    elif draft is not None:
        raise InputError("--draft-model goes with --spec-kind draft", where="--draft-model")
    return engine_settings({**settings, "speculative": spec})


@click.command()
@click.option("--gpu", required=True, help="Catalog id, e.g. h100-sxm.")
@click.option(
    "--model",
    "model_name",
    required=True,
    help="Model card name, e.g. resnet-50 or llama-3.1-8b (looked up in ./models/, then in "
    "the shipped cards, as a scenario's model is).",
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
    "--ep",
    type=click.Choice(["1", "2", "4", "8"]),
    default="1",
    help="Expert parallelism inside the tp GPUs (MoE cards; must divide --tp).",
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
    "--engine",
    "engine_preset",
    type=click.Choice(list(CPU_PRESETS)),
    default=DEFAULT_PRESET,
    show_default=True,
    help="Engine whose per-iteration CPU overhead applies (LLM).",
)
@click.option(
    "--kv-cache-dtype",
    type=click.Choice(list(KV_CACHE_DTYPES)),
    default="auto",
    show_default=True,
    help="KV-cache storage (LLM), as vLLM's --kv-cache-dtype: auto = the model's 16-bit dtype.",
)
@click.option(
    "--spec-kind",
    type=click.Choice(["draft", "eagle", "ngram"]),
    default=None,
    help="Speculative decoding (LLM): also show TPOT with it, per batch, and where it stops paying.",
)
@click.option("--spec-k", type=click.IntRange(1, 16), default=4, show_default=True,
              help="Tokens proposed per verify step.")  # fmt: skip
@click.option(
    "--spec-acceptance",
    default=None,
    help="Acceptance rate: one (0.7), or k by position, comma-separated (0.8,0.6,0.5,0.4).",
)
@click.option("--draft-model", default=None, help="Draft model card (with --spec-kind draft).")
@click.option(
    "--format", "fmt", type=click.Choice(["table", "json"]), default="table", show_default=True
)
@click.argument("more_batches", nargs=-1, type=click.IntRange(1, 65536))
@click.pass_context
@handle_errors
def estimate(
    ctx,
    gpu,
    model_name,
    precision,
    batches,
    tp,
    ep,
    prompt,
    output,
    seq_len,
    engine_preset,
    kv_cache_dtype,
    spec_kind,
    spec_k,
    spec_acceptance,
    draft_model,
    fmt,
    more_batches,
) -> None:
    """Service time and memory fit of one model on one card: the roofline breakdown.

    The card is looked up in ./models/ first, then among the shipped cards.

    \b
    Examples:
      capsim estimate --gpu t4 --model resnet-50 --precision int8 --batch 1 8 32
      capsim estimate --model llama-3.1-8b --gpu h100-sxm --precision fp8 --batch 32 --prompt 1024 --output 256
    """
    cat = catalog_of(ctx)
    if gpu not in cat.gpus:
        raise InputError(f"unknown GPU '{gpu}'; the catalog has: {', '.join(cat)}", where="--gpu")
    try:
        card = load_model_card(model_name, Path.cwd())
    except KeyError as exc:
        raise InputError(str(exc.args[0]), where="--model") from None
    sizes = list(batches) + list(more_batches) or [1, 8, 32]
    result = run_estimate(
        cat[gpu],
        card,
        precision,
        sizes,
        tp=int(tp),
        ep=int(ep),
        prompt=prompt,
        output=output,
        seq_len=seq_len,
        engine=_engine(
            engine_preset, kv_cache_dtype, spec_kind, spec_k, spec_acceptance, draft_model
        ),
    )
    if fmt == "json":
        emit(to_json(result.to_dict()))
    else:
        emit(result.to_text())


# --------------------------------------------------------------------------- validate, schema
@click.command()
@click.argument("scenario", type=click.Path(path_type=Path))
@click.pass_context
@handle_errors
def validate(ctx, scenario: Path) -> None:
    """Check a scenario file (and the GPUs and model it names) without running it.

    \b
    Example:
      capsim validate scenarios/vision.yaml
    """
    s = load_scenario(scenario, catalog_of(ctx))
    check_measurable(s, file=str(scenario))
    h, scale = sim_horizon(s)
    comp = f" (compressed x{1 / scale:.0f})" if scale < 1 else ""
    emit(
        f"ok: {scenario}: '{s.name}', model {s.model.name} ({s.model.kind}), "
        f"{len(s.candidates.gpus)} GPUs x {len(s.candidates.precisions)} precisions, "
        f"peak {peak_rate(s):.1f} req/s, simulated horizon {h:g} s{comp}"
    )
    emit(f"cost: {run_cost_text(s)}")
    if s.whatif is not None or s.autoscaling is not None:
        rt = real_time(s)
        check_traffic(rt, file=f"{scenario} (what-if and autoscaling run in real time)")
        emit(f"what-if (real time, {sim_horizon(rt)[0]:g} s): {run_cost_text(rt)}")


@click.command()
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
    models: dict[str, type[BaseModel]] = {"scenario": Scenario, "catalog": GPU, "model": _CardFile}
    model = models[kind]
    emit(json.dumps(model.model_json_schema(), indent=2))
