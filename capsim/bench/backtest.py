"""Backtest: replay an imported run in capsim and compare predicted with measured, metric by metric.

For each run, :func:`replay_scenario` builds the scenario capsim simulates: the run's load (its
rate as Poisson or gamma arrivals, or its concurrency as a closed loop with no think time), its
prompt and output lengths (:func:`capsim.bench.replay.replay_plan`), its model, card, precision,
tensor parallelism and batch cap; :func:`backtest_run` simulates it and lines up throughput and
the TTFT / TPOT / e2e percentiles the run measured with capsim's. The relative error is
``(predicted - measured) / measured``.

A finite run of a benchmark client that sends a fixed number of requests at a rate (vLLM's
``benchmark_serving.py``, SGLang's ``bench_serving``) is replayed as that client ran it, not as a
steady state: :mod:`capsim.bench.finite` (exactly ``n`` arrivals, no warm-up cut, every request
served, throughput over the run's duration, each value the mean of seeded replications with its
standard deviation in :attr:`Row.spread`). Other runs keep the steady-state replay.

Per-token ITL percentiles are not predicted: capsim records each request's mean time per output
token (TPOT), not the distribution of single inter-token gaps, so ITL rows are left out rather
than compared with a different quantity.

>>> rows = compare({"e2e": {50.0: 0.10}}, {"e2e": Dist(p50=0.08)}, {}, {})
>>> [(r.metric, r.stat, round(r.rel_error, 3)) for r in rows]
[('e2e', 'p50', 0.25)]
"""

from __future__ import annotations

import math
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path

from capsim.bench.finite import STATS, FiniteLoad, finite_load, replay_finite
from capsim.bench.model import BenchRun, Dist, IterationTime
from capsim.bench.replay import ReplayPlan, require_replayable
from capsim.errors import InputError
from capsim.evaluate import Config, make_service, runnable_service, simulate
from capsim.load import load_model_card
from capsim.service.fixed import Unsupported
from capsim.spec.catalog import Catalog
from capsim.spec.models import TransformerModel
from capsim.spec.scenario import ContinuousBatching, Scenario

SERIES = ("ttft", "tpot", "e2e")
#: what a per-request front-end latency (HTTP, tokenisation, detokenisation, streaming: time
#: the engine's GPU loop never sees) adds to: every request's first token and its end
FRONTEND_METRICS = frozenset({"ttft", "e2e"})


@dataclass(frozen=True)
class Row:
    """One compared quantity: ``metric`` (throughput_rps, output_tokens_per_s, ttft, tpot,
    e2e) and ``stat`` (value, p50, p90, p99)."""

    metric: str
    stat: str
    measured: float
    predicted: float
    spread: float | None = None  # std of the prediction across replications (finite runs)

    @property
    def rel_error(self) -> float:
        if self.measured == 0:
            return math.nan
        return (self.predicted - self.measured) / self.measured


@dataclass
class Backtest:
    """The comparison for one run."""

    run: BenchRun
    config: Config
    load_kind: str
    load: float
    rows: list[Row] = field(default_factory=list)
    assumptions: list[str] = field(default_factory=list)
    unstable: str = ""

    @property
    def label(self) -> str:
        src = self.run.source
        return f"{src.file}#{src.index}"


def compare(
    predicted_q: dict[str, dict[float, float]],
    measured: dict[str, Dist | None],
    predicted_scalars: dict[str, float],
    measured_scalars: dict[str, float | None],
) -> list[Row]:
    """Rows for every quantity both sides have (scalars first, then series percentiles)."""
    rows = []
    for name, m in measured_scalars.items():
        if m is not None and name in predicted_scalars:
            rows.append(Row(name, "value", float(m), float(predicted_scalars[name])))
    for name, dist in measured.items():
        if dist is None or name not in predicted_q:
            continue
        for stat, p in STATS:
            m = getattr(dist, stat)
            if m is not None and p in predicted_q[name]:
                rows.append(Row(name, stat, float(m), float(predicted_q[name][p])))
    return rows


def with_frontend(rows: list[Row], frontend_ms: float) -> list[Row]:
    """``rows`` with a constant front-end latency added to the predicted TTFT and e2e (a
    constant per request shifts every percentile by itself; TPOT and throughput are unchanged).

    >>> r = with_frontend([Row("ttft", "p50", 0.08, 0.05), Row("tpot", "p50", 0.01, 0.01)], 30.0)
    >>> [round(x.predicted, 3) for x in r]
    [0.08, 0.01]
    """
    if not frontend_ms:
        return list(rows)
    add = frontend_ms * 1e-3
    return [
        replace(r, predicted=r.predicted + add) if r.metric in FRONTEND_METRICS else r for r in rows
    ]


def _requests(run: BenchRun, plan: ReplayPlan) -> int:
    """How many requests to simulate: the run's own count, kept between 400 and 4000."""
    n = plan.num_requests or 1000
    return int(min(max(n, 400), 4000))


def _horizon(run: BenchRun, plan: ReplayPlan, n: int) -> float:
    arr = plan.arrivals or {}
    if arr.get("kind") in ("poisson", "renewal"):
        return n / float(arr["rate_rps"])
    x = run.measured.request_throughput_rps
    return n / x if x else 60.0


def engine_preset(engine: str | None, version: str | None) -> str | None:
    """The CPU-overhead preset of the engine a run names (None: unknown, the default applies).

    >>> engine_preset("vllm", "0.6.3"), engine_preset("vllm", "0.10.1"), engine_preset("sglang", None)
    ('vllm-v0', 'vllm-v1', 'sglang')
    >>> engine_preset("torch (capsim harness)", "1.1.0")
    'none'
    """
    name = (engine or "").lower()
    if "harness" in name or name.startswith("torch"):
        return "none"  # bare forward passes: no serving engine around them
    if "sglang" in name:
        return "sglang"
    if "tensorrt" in name or "trt" in name:
        return "tensorrt-llm"
    if "vllm" in name:
        try:
            major, minor = (int(x) for x in (version or "").split(".")[:2])
        except ValueError:
            return None
        return "vllm-v1" if (major, minor) >= (0, 8) else "vllm-v0"  # V1 default from 0.8
    return None


def replay_scenario(
    run: BenchRun,
    plan: ReplayPlan,
    *,
    seed: int = 0,
    replications: int = 3,
    engine: dict | None = None,
    overhead_ms: float | None = None,
) -> Scenario:
    """The scenario that replays ``run`` (see the module doc); ``engine`` adds LLM engine
    settings (``scheduler_overhead_ms``, ...) over those the run records; ``overhead_ms`` is a
    fixed-shape fleet's ``batch_overhead_ms`` (default: the scenario default)."""
    s = run.settings
    try:
        card = load_model_card(str(s.model))
    except KeyError as exc:
        raise InputError(
            f"{exc.args[0]} (give --model with a capsim model card, or add a card)",
            file=run.source.file,
            where="settings.model",
        ) from None
    llm = isinstance(card, TransformerModel)
    if llm and plan.tokens is None:
        raise InputError(
            "cannot replay an LLM run without prompt and output lengths",
            file=run.source.file,
            where="workload.input_len/output_len",
        )
    n = _requests(run, plan)
    traffic: dict = {"arrivals": plan.arrivals, "horizon_s": _horizon(run, plan, n)}
    if llm:
        traffic["tokens"] = plan.tokens
        eng = dict(engine or {})
        preset = engine_preset(s.engine, s.engine_version)
        if preset is not None and "cpu_overhead" not in eng and "scheduler_overhead_ms" not in eng:
            eng.setdefault("preset", preset)
        if s.max_num_seqs:
            eng.setdefault("max_num_seqs", s.max_num_seqs)
        batching: dict = {"kind": "continuous", "engine": eng}
    else:
        batching = {"kind": "dynamic", "max_batch_size": s.max_num_seqs or 1}
    fleet: dict = {"batching": batching}
    if overhead_ms is not None and not llm:
        fleet["batch_overhead_ms"] = overhead_ms
    data = {
        "name": f"backtest-{run.source.index}",
        "model": card,
        "traffic": traffic,
        "slo": {"percentile": 99, "latency_ms": 1e12},
        "fleet": fleet,
        "candidates": {"gpus": [s.gpu], "precisions": [s.precision], "tensor_parallel": [plan.tp]},
        "simulation": {
            "replications": replications,
            "max_replications": replications,
            "seed": seed,
            "max_wait_s": 3600.0,
        },
    }
    try:
        return Scenario.model_validate(data)
    except ValueError as exc:
        raise InputError(
            f"cannot replay this run: {exc}", file=run.source.file, where="settings"
        ) from None


def _measured(run: BenchRun, llm: bool) -> tuple[dict[str, Dist | None], dict[str, float | None]]:
    m = run.measured
    scalars = {"throughput_rps": m.request_throughput_rps}
    if llm:
        scalars["output_tokens_per_s"] = m.output_tokens_per_s
        return {"ttft": m.ttft_s, "tpot": m.tpot_s, "e2e": m.e2e_s}, scalars
    return {"e2e": m.e2e_s}, scalars


def step_args(step: IterationTime) -> dict:
    """``iteration_time`` arguments of one measured step: ``batch_size`` sequences decoding
    one token against ``seq_len`` context each, or prefilling ``seq_len`` prompt tokens each
    (no earlier context; one logit per sequence)."""
    b, n = step.batch_size, step.seq_len
    if step.phase == "decode":
        return {"num_tokens": b, "num_decode": b, "decode_context": float(b * n)}
    return {
        "num_tokens": b * n,
        "num_decode": 0,
        "prefill_work": b * n * n / 2.0,
        "num_logits": b,
        "prefill_kv": float(b * n),
    }


def backtest_iterations(run: BenchRun, catalog: Catalog, *, engine: dict | None = None) -> Backtest:
    """Measured engine steps against the LLM service's iteration times (no queueing)."""
    s = run.settings
    for key in ("model", "gpu", "precision"):
        if getattr(s, key) is None:
            raise InputError(
                f"cannot replay these iterations; missing: {key} (give --{key})",
                file=run.source.file,
                where="settings",
            )
    if s.gpu not in catalog:
        raise InputError(
            f"unknown GPU {s.gpu!r}; the catalog has: {', '.join(catalog)}",
            file=run.source.file,
            where="settings.gpu",
        )
    plan = ReplayPlan(tp=s.tp or 1, tokens={"kind": "lognormal", "prompt_median": 128,
                      "prompt_sigma": 0.0, "output_median": 128, "output_sigma": 0.0})  # fmt: skip
    plan.arrivals = {"kind": "closed", "concurrency": 1}
    scen = replay_scenario(run, plan, engine=engine)
    if not scen.is_llm:
        raise InputError(
            "iteration times are for transformer models", file=run.source.file, where="model"
        )
    cfg = Config(str(s.gpu), str(s.precision), 1, plan.tp)
    try:
        svc = make_service(scen, catalog[cfg.gpu], cfg.precision, cfg.tp)
    except Unsupported as exc:
        raise InputError(
            f"capsim cannot run {cfg.label()}: {exc}", file=run.source.file, where="settings"
        ) from None
    bt = Backtest(run, cfg, "iterations", 0.0)
    for step in run.measured.iterations or []:
        pred = svc.iteration_time(**step_args(step))
        name = f"{step.phase}_step"
        bt.rows.append(Row(name, f"b{step.batch_size}/len{step.seq_len}", step.time_s, pred))
    if s.tp is None:
        bt.assumptions.append("tp not recorded: assumed 1")
    return bt


def backtest_run(
    run: BenchRun,
    catalog: Catalog,
    *,
    replicas: int = 1,
    seed: int = 0,
    replications: int = 3,
    engine: dict | None = None,
    overhead_ms: float | None = None,
    frontend_ms: float = 0.0,
) -> Backtest:
    """Simulate ``run``'s workload on its settings and compare with what it measured (a run
    of measured engine steps: each step's time against the service's). ``frontend_ms`` is a
    per-request front-end latency added to TTFT and e2e (:func:`with_frontend`)."""
    if run.measured.iterations:
        return backtest_iterations(run, catalog, engine=engine)
    plan = require_replayable(run)
    s = run.settings
    if s.gpu not in catalog:
        raise InputError(
            f"unknown GPU {s.gpu!r}; the catalog has: {', '.join(catalog)}",
            file=run.source.file,
            where="settings.gpu",
        )
    cfg = Config(str(s.gpu), str(s.precision), replicas, plan.tp)
    with tempfile.TemporaryDirectory(prefix="capsim-backtest-") as tmp:
        if plan.pairs is not None and plan.tokens is not None:
            trace = Path(tmp) / "lengths.csv"
            rows_csv = "".join(f"{a},{b}\n" for a, b in plan.pairs)
            trace.write_text("input_len,output_len\n" + rows_csv)
            plan = replace(plan, tokens={**plan.tokens, "trace": str(trace)})
        scen = replay_scenario(
            run, plan, seed=seed, replications=replications, engine=engine, overhead_ms=overhead_ms
        )
        finite = finite_load(run, scen.is_llm)
        cached = run.workload.prompts_cached_by is not None
        try:
            if finite is not None:
                pq, qs, ps, ss, unstable = _finite(
                    scen, catalog, cfg, plan, finite, seed, replications, cached
                )
            else:
                ev = simulate(
                    scen, cfg, catalog=catalog, replications=replications, sequential=False
                )
        except Unsupported as exc:
            raise InputError(
                f"capsim cannot run {cfg.label()}: {exc}", file=run.source.file, where="settings"
            ) from None
    if finite is None:
        summ = ev.summary
        pq = {name: {p: ci.mean for p, ci in d.items()} for name, d in summ.quantiles.items()}
        if "latency" in pq:
            pq["e2e"] = pq.pop("latency")
        ps = {k: ci.mean for k, ci in summ.scalars.items()}
        qs, ss = {}, {}
        unstable = summ.unstable_reason if summ.unstable else ""
    series, scalars = _measured(run, scen.is_llm)
    load = run.workload.load
    kind = load.kind if load is not None else "offline"
    value = {"rate": getattr(load, "rate_rps", 0.0), "concurrency": getattr(load, "concurrency", 0)}
    bt = Backtest(run, cfg, kind, float(value.get(kind, 0.0) or 0.0))
    rows = [_with_spread(r, qs, ss) for r in compare(pq, series, ps, scalars)]
    bt.rows = with_frontend(rows, frontend_ms)
    bt.assumptions = list(plan.assumptions)
    if finite is not None:
        if plan.pairs is not None and len(plan.pairs) == finite.n:
            bt.assumptions = [a for a in bt.assumptions if not a.startswith("lengths: ")]
            bt.assumptions.append(
                f"lengths: the run's own {finite.n} (prompt, output) pairs, in the order sent"
            )
        bt.assumptions.append(f"{finite.describe()}; mean of {replications} seeded replications")
    if cached:
        bt.assumptions.append(_cache_note(run, finite is not None, scen))
    bt.unstable = unstable
    if not bt.rows:
        raise InputError(
            "the run measured nothing capsim predicts (throughput, TTFT, TPOT or e2e)",
            file=run.source.file,
            where="measured",
        )
    return bt


def _finite(
    scen: Scenario,
    catalog: Catalog,
    cfg: Config,
    plan: ReplayPlan,
    finite: FiniteLoad,
    seed: int,
    replications: int,
    cached: bool = False,
) -> tuple[dict, dict, dict, dict, str]:
    """(mean percentiles, their std, mean scalars, their std, why unstable) of the finite
    replay (:func:`capsim.bench.finite.replay_finite`)."""
    svc = runnable_service(scen, catalog[cfg.gpu], cfg.precision, cfg.tp)
    fr = replay_finite(
        scen, svc, plan, finite, replicas=cfg.replicas, seed=seed, replications=replications,
        cached=cached,
    )  # fmt: skip
    qm, qs, sm, ss = fr.mean_std()
    return qm, qs, sm, ss, fr.unstable


def _with_spread(r: Row, qs: dict, ss: dict) -> Row:
    """``r`` with the std across replications of its prediction, where there is one."""
    p = dict(STATS).get(r.stat)
    sd = ss.get(r.metric) if r.stat == "value" else qs.get(r.metric, {}).get(p)
    return replace(r, spread=sd) if sd is not None else r


def _cache_note(run: BenchRun, finite: bool, scen: Scenario) -> str:
    """What the replay did with a run whose prompts were cached when it began."""
    by = run.workload.prompts_cached_by
    b = scen.fleet.batching
    if not finite:
        return (
            f"prompts cached by {by}: not replayed (only a finite vLLM/SGLang run starts with "
            "its prompts cached)"
        )
    if not isinstance(b, ContinuousBatching) or not b.engine.enable_prefix_caching:
        return f"prompts cached by {by}: no effect, the engine's prefix caching is off"
    return (
        f"prompts cached by {by}: every prompt's full KV blocks in the prefix cache at the "
        "start (the last partial block and at least one token computed)"
    )
