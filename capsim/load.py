"""Reading spec files: the hardware catalog, model cards and scenarios, with their cross-checks.

The only module that opens catalog, model-card and scenario YAML; the schemas themselves live in
:mod:`capsim.spec` and never touch the file system.

>>> s = load_scenario("scenarios/embedding.yaml")
>>> s.slo.percentile
99.0
>>> load_catalog()["h100-sxm"].peak_flops("fp8") / 1e12
1979.0
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from capsim.errors import InputError, load_yaml, parse_model
from capsim.paths import resolve_scenario_path, shipped_catalog_dir, shipped_models_dir
from capsim.spec.calibration import CalibrationFile
from capsim.spec.catalog import GPU, Catalog
from capsim.spec.engine import engine_settings
from capsim.spec.models import FixedModel, TransformerModel, parse_model_card
from capsim.spec.precision import PRECISIONS
from capsim.spec.scenario import EmpiricalTokens, Scenario, Trace
from capsim.workload.streams import check_traffic  # workload builds on this module
from capsim.workload.tokens import token_pairs
from capsim.workload.traces import check_trace_path, read_trace

MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
SIDECAR_SUFFIX = ".calibration.yaml"


def calibration_path(entry: str | os.PathLike) -> Path:
    """The calibration sidecar of catalog entry ``<id>.yaml``: ``<id>.calibration.yaml``.

    >>> calibration_path("hardware_catalog/h100-sxm.yaml").name
    'h100-sxm.calibration.yaml'
    """
    p = Path(entry)
    return p.with_name(p.stem + SIDECAR_SUFFIX)


def is_sidecar(path: Path) -> bool:
    """True for a calibration sidecar (not a catalog entry)."""
    return path.name.endswith(SIDECAR_SUFFIX)


def _with_sidecar(data: Any, p: Path) -> Any:
    """Entry data with the sidecar's calibration and ``sources.calibration`` put in (validated
    on its own first, so its errors name the sidecar file)."""
    side = calibration_path(p)
    if not side.exists() or not isinstance(data, dict):
        return data
    if "calibration" in data:
        raise InputError(
            f"the calibration is given twice: inline here and in {side.name}; keep the sidecar "
            "and delete the inline block",
            file=p,
            where="calibration",
        )
    sources = data.get("sources")
    if isinstance(sources, dict) and "calibration" in sources:
        raise InputError(
            f"the calibration's source is kept in {side.name} (its 'source' field); delete it here",
            file=p,
            where="sources.calibration",
        )
    raw = load_yaml(side)
    parse_model(CalibrationFile, raw, file=side)
    cal = {k: v for k, v in raw.items() if k != "source"}
    srcs = {**(sources if isinstance(sources, dict) else {}), "calibration": raw["source"]}
    return {**data, "sources": srcs, "calibration": cal}


def load_gpu_file(path: str | os.PathLike) -> GPU:
    """Parse and validate one catalog YAML file (and its calibration sidecar, if any)."""
    p = Path(path)
    gpu = parse_model(GPU, _with_sidecar(load_yaml(p), p), file=p)
    if gpu.id != p.stem:
        raise InputError(f"id '{gpu.id}' must match the file name '{p.stem}'", file=p, where="id")
    return gpu


def load_catalog(path: str | os.PathLike | None = None) -> Catalog:
    """Load every ``*.yaml`` and ``*.yml`` entry in a catalog directory (default: the shipped
    catalog); each entry's ``<id>.calibration.yaml`` sidecar, where there is one, gives its
    calibration.

    Hidden files (editor and temporary files) are skipped; a FIFO or device named ``*.yaml`` is
    refused, never opened; two files with one id are refused.
    """
    d = Path(path) if path is not None else shipped_catalog_dir()
    if not d.is_dir():
        raise InputError("catalog directory not found", file=d)
    gpus: dict[str, GPU] = {}
    files: dict[str, Path] = {}
    entries = [*d.glob("*.yaml"), *d.glob("*.yml")]
    for f in sorted(e for e in entries if not e.name.startswith(".")):
        if is_sidecar(f):
            continue
        gpu = load_gpu_file(f)
        if gpu.id in files:
            raise InputError(
                f"id '{gpu.id}' is also given by {files[gpu.id].name}: keep one file per id",
                file=f,
                where="id",
            )
        gpus[gpu.id] = gpu
        files[gpu.id] = f
    if not gpus:
        raise InputError("no *.yaml catalog entries in this directory", file=d)
    return Catalog(gpus, files)


def model_search_dirs(scenario_dir: Path | None = None) -> list[Path]:
    dirs = []
    if scenario_dir is not None:
        dirs.append(scenario_dir / "models")
    dirs.append(shipped_models_dir())
    return dirs


def available_model_names(scenario_dir: Path | None = None) -> list[str]:
    names: set[str] = set()
    for d in model_search_dirs(scenario_dir):
        if d.is_dir():
            names.update(p.stem for p in d.glob("*.yaml"))
    return sorted(names)


def check_model_name(name: str) -> None:
    """A model name is a name: letters, digits, ``. _ -``; no path separators.

    >>> check_model_name("llama-3.1-8b")
    >>> check_model_name("../x")
    Traceback (most recent call last):
    ...
    KeyError: "model '../x' is not a name: use letters, digits, '.', '_' and '-' (a card in a \
file: model: {file: path/to/card.yaml})"
    """
    if not MODEL_NAME.fullmatch(name) or name.startswith("."):
        raise KeyError(
            f"model {name[:80]!r} is not a name: use letters, digits, '.', '_' and '-' "
            "(a card in a file: model: {file: path/to/card.yaml})"
        )


def load_model_card(name: str, scenario_dir: Path | None = None) -> FixedModel | TransformerModel:
    """Find a card by name in ``<scenario_dir>/models`` then in the shipped cards."""
    check_model_name(name)
    for d in model_search_dirs(scenario_dir):
        f = d / f"{name}.yaml"
        if f.is_file():
            card = parse_model_card(load_yaml(f), file=f)
            if card.name != name:
                raise InputError(
                    f"name '{card.name}' must match the file name '{name}'", file=f, where="name"
                )
            return card
    raise KeyError(
        f"unknown model {name!r}; available: {', '.join(available_model_names(scenario_dir))}"
    )


def _resolve_model(data: dict, base: Path, file: Path) -> None:
    """A card by name (``model: llama-3.1-8b``), from a file named explicitly
    (``model: {file: cards/mine.yaml}``, relative to the scenario), or inline; the scenario's
    ``sequence_length`` applies to an encoder card."""
    model = data.get("model")
    card = None
    if isinstance(model, str):
        try:
            card = load_model_card(model, base)
        except KeyError as exc:
            raise InputError(str(exc.args[0]), file=file, where="model") from None
        data["model"] = card.model_dump()
    elif isinstance(model, dict) and set(model) == {"file"}:
        ref = model["file"]
        if not isinstance(ref, str) or not ref:
            raise InputError(
                "expected a path to a model card YAML file", file=file, where="model.file"
            )
        p = Path(ref) if Path(ref).is_absolute() else base / ref
        card = parse_model_card(load_yaml(p), file=p)
        data["model"] = card.model_dump()
    elif isinstance(model, dict):
        card = parse_model_card(model, file=f"{file} (model)")
    seq = data.get("sequence_length")
    if card is not None and isinstance(seq, int) and not isinstance(seq, bool) and seq > 0:
        if not isinstance(card, FixedModel):
            raise InputError(
                "sequence_length applies to encoder (fixed-shape) cards; a transformer's prompt "
                "lengths come from traffic.tokens",
                file=file,
                where="sequence_length",
            )
        try:
            data["model"] = card.at_sequence_length(seq).model_dump()
        except ValueError as exc:
            raise InputError(str(exc), file=file, where="sequence_length") from None


def _resolve_draft(data: dict, base: Path, file: Path) -> None:
    """``fleet.batching.engine.speculative.draft_model`` by name -> the card (a transformer)."""
    try:
        spec = data["fleet"]["batching"]["engine"]["speculative"]
    except (KeyError, TypeError):
        return
    if not isinstance(spec, dict) or spec.get("kind") != "draft":
        return
    name = spec.get("draft_model")
    if not isinstance(name, str):
        return  # a card inline, or missing: the schema checks it
    where = "fleet.batching.engine.speculative.draft_model"
    try:
        card = load_model_card(name, base)
    except KeyError as exc:
        raise InputError(str(exc.args[0]), file=file, where=where) from None
    if not isinstance(card, TransformerModel):
        raise InputError(f"'{name}' is not a transformer card", file=file, where=where)
    spec["draft_model"] = card.model_dump()


def _resolve_file(data: dict, base: Path, file: Path, section: str, kind: str, key: str) -> None:
    """Make ``traffic.<section>.<key>`` (a CSV path, when ``kind`` matches) absolute and check it."""
    traffic = data.get("traffic")
    if not isinstance(traffic, dict):
        return  # the schema reports it
    spec = traffic.get(section)
    if isinstance(spec, dict) and spec.get("kind") == kind and spec.get(key):
        p = Path(str(spec[key]))
        if not p.is_absolute():
            p = base / p
        try:
            check_trace_path(p)
        except InputError as exc:
            raise InputError(
                f"{exc.message}: {p}", file=file, where=f"traffic.{section}.{key}"
            ) from None
        spec[key] = str(p)


def check_against_catalog(s: Scenario, catalog: Catalog, *, file: str | None = None) -> None:
    """Unknown GPUs and unknown price providers are errors naming the field."""
    for i, g in enumerate(s.candidates.gpus):
        if g not in catalog.gpus:
            raise InputError(
                f"unknown GPU '{g}'; the catalog has: {', '.join(sorted(catalog.gpus))}",
                file=file,
                where=f"candidates.gpus[{i}]",
            )
    d = s.disaggregation
    for side, pool in (("prefill", d.prefill), ("decode", d.decode)) if d is not None else ():
        for i, g in enumerate(pool.gpus or []):
            if g not in catalog.gpus:
                raise InputError(
                    f"unknown GPU '{g}'; the catalog has: {', '.join(sorted(catalog.gpus))}",
                    file=file,
                    where=f"disaggregation.{side}.gpus[{i}]",
                )
    for p in s.candidates.precisions:
        if p not in PRECISIONS:  # pragma: no cover - Literal already checks
            raise InputError(f"unknown precision {p}", file=file, where="candidates.precisions")
    w = s.whatif
    if w is not None and w.gpu is not None and w.gpu not in catalog.gpus:
        raise InputError(
            f"unknown GPU '{w.gpu}'; the catalog has: {', '.join(sorted(catalog.gpus))}",
            file=file,
            where="whatif.gpu",
        )
    if w is not None and w.precision is not None and w.precision not in PRECISIONS:
        raise InputError(
            f"unknown precision '{w.precision}'; accepted: {', '.join(PRECISIONS)}",
            file=file,
            where="whatif.precision",
        )
    prov = s.candidates.price_provider
    if prov is not None:
        known = {
            prov_.provider
            for g in catalog.gpus.values()
            for prov_ in (g.price, *g.price.alternatives)
        }
        if prov not in known:
            raise InputError(
                f"no card lists provider '{prov}'; known: {', '.join(sorted(known))}",
                file=file,
                where="candidates.price_provider",
            )


def load_scenario(path: str | os.PathLike, catalog: Catalog | None = None) -> Scenario:
    """Read, resolve (model card by name, trace path) and validate a scenario file."""
    file = resolve_scenario_path(path)
    data = load_yaml(file)
    if not isinstance(data, dict):
        raise InputError("a scenario must be a mapping of fields", file=file)
    base = file.parent
    _resolve_model(data, base, file)
    _resolve_draft(data, base, file)
    _resolve_file(data, base, file, "arrivals", "trace", "path")
    _resolve_file(data, base, file, "tokens", "empirical", "trace")
    scenario = parse_model(Scenario, data, file=file)
    cat = catalog if catalog is not None else load_catalog()
    check_against_catalog(scenario, cat, file=str(file))
    if scenario.is_llm:
        check_llm(scenario, cat, file=str(file))
    # read the traces now: validate reads what simulate reads, and a wrong column or row names
    # this scenario too
    if isinstance(scenario.traffic.tokens, EmpiricalTokens):
        _read_placed(token_pairs, scenario.traffic.tokens, file, "traffic.tokens")
    if isinstance(scenario.traffic.arrivals, Trace):
        _read_placed(read_trace, scenario.traffic.arrivals, file, "traffic.arrivals")
    check_traffic(scenario, file=str(file))
    return scenario


def _read_placed(read, spec, file: Path, where: str) -> None:
    """``read(spec)``; a trace's own error is raised again placed in the scenario at ``where``."""
    try:
        read(spec)
    except InputError as exc:
        raise InputError(str(exc), file=file, where=where) from None


def check_llm(s: Scenario, catalog: Catalog, *, file: str | None = None) -> None:
    """What an LLM scenario needs beyond its schema: token lengths for every request, and
    engine settings that the model allows (as vLLM checks them at start-up)."""
    a = s.traffic.arrivals
    if (
        s.traffic.tokens is None
        and isinstance(a, Trace)
        and (a.prompt_tokens_column is None or a.output_tokens_column is None)
    ):
        raise InputError(
            "LLM traffic needs token lengths: give traffic.tokens, or the trace's "
            "prompt_tokens_column and output_tokens_column",
            file=file,
            where="traffic.tokens",
        )
    if s.traffic.tokens is None and not isinstance(a, Trace):
        raise InputError(
            "LLM traffic needs token lengths: give traffic.tokens (lognormal or empirical)",
            file=file,
            where="traffic.tokens",
        )
    engine = getattr(s.fleet.batching, "engine", {}) or {}
    assert isinstance(s.model, TransformerModel)  # called for LLM scenarios only
    try:
        for g in s.candidates.gpus:  # the card-dependent defaults differ
            engine_settings(engine, s.model, catalog[g])
    except InputError as exc:
        raise InputError(exc.message, file=file, where=exc.where, param=exc.param) from None
