"""``capsim sweep``: plan many variants of one scenario, and a month-by-month growth forecast.

A variant sets scenario fields by dotted path (``slo.latency_ms``, ``traffic.arrivals.rate_rps``,
``candidates.gpus``); the variants are a grid (every combination) or ``samples`` random draws
from it (a seeded ``numpy.random.Generator``). Each variant is planned in full, one task each,
through :func:`capsim.planning.parallel.run_tasks`, so any executor runs them. Every feasible
candidate of every variant becomes a point (cost, p99, and for LLMs output tokens/s per GPU and
per user) for the Pareto frontier.

>>> parse_vary("slo.latency_ms=20,40")
('slo.latency_ms', [20, 40])
>>> parse_vary("candidates.gpus=[l4],[t4,l4]")
('candidates.gpus', [['l4'], ['t4', 'l4']])
>>> parse_growth("10%/month")
0.1
>>> pareto_mask([1.0, 2.0, 3.0, 2.5], [5.0, 3.0, 1.0, 4.0]).tolist()
[True, True, True, False]
"""

from __future__ import annotations

import copy
import itertools
import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import yaml

from capsim.errors import InputError, parse_model
from capsim.evaluate import Evaluation
from capsim.load import check_against_catalog, check_llm, load_model_card
from capsim.planning.api import plan
from capsim.planning.parallel import run_tasks
from capsim.spec.catalog import Catalog
from capsim.spec.scenario import Scenario
from capsim.workload.streams import check_traffic

MONTH = "month"


@dataclass
class Point:
    """One feasible configuration of one variant."""

    variant: int
    label: str
    gpus: int
    usd_per_hour: float
    p99_ms: float
    p99_high_ms: float
    metric: str
    chosen: bool
    tokens_per_s_per_gpu: float | None = None
    tokens_per_s_per_user: float | None = None


@dataclass
class VariantResult:
    """A variant's settings and its plan, reduced to what a sweep reports."""

    index: int
    values: dict[str, Any]
    recommendation: str | None
    gpus: int | None
    usd_per_hour: float | None
    p99_ms: float | None
    p99_ci_ms: tuple[float, float] | None
    metric: str | None
    points: list[Point] = field(default_factory=list)
    note: str = ""


@dataclass
class SweepResult:
    scenario: str
    paths: list[str]
    variants: list[VariantResult]
    is_llm: bool
    growth: float | None = None
    forecast: list[dict[str, Any]] = field(default_factory=list)


# --------------------------------------------------------------------------- parsing
def _split_values(text: str) -> list[str]:
    """Split on commas outside brackets: ``[a,b],[c]`` -> ``['[a,b]', '[c]']``."""
    out, depth, cur = [], 0, ""
    for ch in text:
        depth += ch in "[{"
        depth -= ch in "]}"
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    out.append(cur)
    return [v.strip() for v in out]


def parse_vary(text: str) -> tuple[str, list[Any]]:
    """``PATH=V1,V2,...`` -> (path, values read as YAML)."""
    path, eq, rest = text.partition("=")
    path = path.strip()
    if not eq or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*", path):
        raise InputError(
            f"cannot read '{text}'; expected PATH=V1,V2,... with a dotted scenario path, "
            "e.g. slo.latency_ms=20,40,60",
            where="--vary",
        )
    vals = [v for v in _split_values(rest) if v]
    if not vals:
        raise InputError(f"no values in '{text}'; expected PATH=V1,V2,...", where="--vary")
    try:
        return path, [yaml.safe_load(v) for v in vals]
    except yaml.YAMLError:
        raise InputError(f"cannot read the values of '{text}' as YAML", where="--vary") from None


def parse_growth(text: str) -> float:
    """``10%/month`` (or ``10%``) -> 0.10 per month."""
    m = re.fullmatch(r"\s*(-?\d+(?:\.\d+)?)\s*%\s*(?:/\s*month)?\s*", text)
    if not m:
        raise InputError(f"cannot read '{text}'; expected e.g. 10%/month", where="--growth")
    g = float(m.group(1)) / 100
    if not -0.9 < g <= 10:
        raise InputError(f"'{text}': growth must be above -90% and at most 1000%", where="--growth")
    return g


# --------------------------------------------------------------------------- variants
def _set_path(data: dict, path: str, value: Any, option: str) -> None:
    """Set ``data[a][b]... = value``; an unknown key names the keys accepted there."""
    node: Any = data
    parts = path.split(".")
    for i, part in enumerate(parts):
        where = ".".join(parts[:i]) or "the scenario"
        key: str | int = part
        if isinstance(node, list) and part.isdigit() and int(part) < len(node):
            key = int(part)
        elif not isinstance(node, dict):
            raise InputError(
                f"'{path}': {where} is not set in this scenario (nothing to vary under it)",
                where=option,
            )
        elif key not in node:
            raise InputError(
                f"'{path}': {where} has no field '{key}'; accepted: {', '.join(sorted(node))}",
                where=option,
            )
        if i == len(parts) - 1:
            node[key] = value
        else:
            node = node[key]


def apply_values(s: Scenario, values: dict[str, Any], catalog: Catalog) -> Scenario:
    """``s`` with ``values`` (dotted path -> value) set, validated as a scenario file would be."""
    data = s.model_dump(mode="json")
    for path, value in values.items():
        if path == MONTH:
            continue
        if path == "model" and isinstance(value, str):
            try:
                value = load_model_card(value).model_dump(mode="json")
            except KeyError as exc:
                raise InputError(str(exc.args[0]), where="--vary model") from None
        _set_path(data, path, value, f"--vary {path}")
    label = ", ".join(f"{k}={v}" for k, v in values.items())
    out = parse_model(Scenario, data, file=f"--vary ({label})")
    check_against_catalog(out, catalog, file=f"--vary ({label})")
    if out.is_llm:
        check_llm(out, catalog, file=f"--vary ({label})")
    check_traffic(out, file=f"--vary ({label})")
    return out


def grow(s: Scenario, factor: float) -> Scenario:
    """``s`` with every arrival rate multiplied by ``factor`` (a trace via ``rate_scale``)."""
    a = copy.deepcopy(s.traffic.arrivals)
    if hasattr(a, "rate_rps"):
        a = a.model_copy(update={"rate_rps": a.rate_rps * factor})
    elif hasattr(a, "rate_scale"):
        a = a.model_copy(update={"rate_scale": a.rate_scale * factor})
    else:
        raise InputError(
            f"--growth scales arrival rates; '{a.kind}' arrivals have none "
            "(accepted: poisson, renewal, trace)",
            where="--growth",
        )
    return s.model_copy(update={"traffic": s.traffic.model_copy(update={"arrivals": a})})


def variant_values(
    varies: list[tuple[str, list[Any]]], samples: int | None, seed: int
) -> list[dict[str, Any]]:
    """The grid of ``varies``, or ``samples`` seeded random draws from it (one per dimension).

    >>> variant_values([("a", [1, 2]), ("b", [3])], None, 0)
    [{'a': 1, 'b': 3}, {'a': 2, 'b': 3}]
    >>> len(variant_values([("a", [1, 2, 3]), ("b", [4, 5])], 4, 7))
    4
    """
    if not varies:
        return [{}]
    if samples is None:
        combos = itertools.product(*(vals for _, vals in varies))
        return [dict(zip([p for p, _ in varies], c, strict=True)) for c in combos]
    rng = np.random.default_rng(seed)
    return [{p: vals[int(rng.integers(len(vals)))] for p, vals in varies} for _ in range(samples)]


# --------------------------------------------------------------------------- running
def _point(i: int, e: Evaluation, chosen: bool, is_llm: bool) -> Point:
    c = e.primary
    per_gpu = per_user = None
    if is_llm and "output_tokens_per_s" in e.extra:
        per_gpu = e.extra["output_tokens_per_s"] / e.config.gpus
        tpot = e.summary.quantiles.get("tpot", {}).get(50.0)
        per_user = 1.0 / tpot.mean if tpot is not None and tpot.mean > 0 else None
    return Point(
        i,
        e.config.label(),
        e.config.gpus,
        e.usd_per_hour,
        c.ci.mean * 1000,
        c.ci.high * 1000,
        f"{c.metric} p{c.percentile:g}",
        chosen,
        per_gpu,
        per_user,
    )


def _variant_job(args: tuple[int, dict[str, Any], Scenario, Catalog]) -> VariantResult:
    """Plan one variant (module level: picklable for any executor)."""
    i, values, s, cat = args
    r = plan(s, cat)
    rec = r.recommendation
    points = [_point(i, c.best, c is rec, s.is_llm) for c in r.feasible if c.best is not None]
    if rec is None or rec.best is None:
        return VariantResult(i, values, None, None, None, None, None, None, points, "no fit")
    e = rec.best
    c = e.primary
    return VariantResult(
        i,
        values,
        rec.candidate.label(),
        e.config.gpus,
        e.usd_per_hour,
        c.ci.mean * 1000,
        (c.ci.low * 1000, c.ci.high * 1000),
        f"{c.metric} p{c.percentile:g}",
        points,
    )


def sweep(
    s: Scenario,
    catalog: Catalog,
    varies: list[tuple[str, list[Any]]],
    *,
    samples: int | None = None,
    seed: int | None = None,
    growth: float | None = None,
    months: int = 12,
    name: str = "",
    executor=None,
    jobs: int = 1,
    progress=None,
) -> SweepResult:
    """Plan every variant (and every month of growth); the forecast is the cheapest per month."""
    seen = [p for p, _ in varies]
    if len(set(seen)) != len(seen):
        raise InputError(f"a path is varied twice: {seen}", where="--vary")
    combos = variant_values(varies, samples, s.simulation.seed if seed is None else seed)
    tasks: list[tuple[int, dict[str, Any], Scenario, Catalog]] = []
    for values in combos:
        base = apply_values(s, values, catalog)
        month_list = range(months + 1) if growth is not None else [None]
        for m in month_list:
            v = dict(values)
            sc = base
            if m is not None:
                v[MONTH] = m
                sc = grow(base, (1 + growth) ** m) if growth is not None else base
            tasks.append((len(tasks), v, sc, catalog))

    def done(i: int, n: int, r: VariantResult) -> None:
        if progress:
            progress(f"[{i}/{n}] {r.values}: {r.recommendation or 'no feasible configuration'}")

    results = run_tasks(_variant_job, tasks, executor, done, jobs=jobs)
    paths = [p for p, _ in varies] + ([MONTH] if growth is not None else [])
    out = SweepResult(name, paths, results, s.is_llm, growth)
    if growth is not None:
        out.forecast = forecast(results, growth)
    return out


def forecast(results: list[VariantResult], growth: float) -> list[dict[str, Any]]:
    """Per month the cheapest feasible fleet over the variants, and the GPUs it adds."""
    rows: list[dict[str, Any]] = []
    prev: int | None = None
    for m in sorted({r.values[MONTH] for r in results}):
        ok = [r for r in results if r.values[MONTH] == m and r.usd_per_hour is not None]
        best = min(ok, key=lambda r: (r.usd_per_hour, r.index), default=None)
        gpus = best.gpus if best else None
        added: int | None = gpus - prev if gpus is not None and prev is not None else None
        rows.append(
            {
                "month": m,
                "traffic_factor": (1 + growth) ** m,
                "fleet": best.recommendation if best else None,
                "settings": {k: v for k, v in best.values.items() if k != MONTH} if best else {},
                "gpus": gpus,
                "added_gpus": added,
                "usd_per_hour": best.usd_per_hour if best else math.nan,
                "p99_ms": best.p99_ms if best else math.nan,
            }
        )
        prev = gpus if gpus is not None else prev
    return rows


def pareto_mask(x, y) -> np.ndarray:
    """True where no other point is at least as good on both (lower x, lower y) and better on one."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    keep = np.ones(len(x), bool)
    for i in range(len(x)):
        dom = (x <= x[i]) & (y <= y[i]) & ((x < x[i]) | (y < y[i]))
        keep[i] = not dom.any()
    return keep
