"""What capsim needs to replay an imported run, in scenario terms, and what is missing.

:func:`replay_plan` maps a run's load and lengths onto scenario ``traffic`` fields:

* a rate -> ``poisson`` (burstiness 1 or unknown) or ``renewal`` with ``cv = 1/sqrt(burstiness)``
  (vLLM's burstiness is the shape of its gamma inter-arrival times);
* a concurrency -> ``closed`` with that many clients and no think time;
* offline (every request at t = 0) -> for a vLLM/SGLang client's burst of a known number of
  requests, the finite replay (:mod:`capsim.bench.finite`) sends them all at t = 0; else it is
  reported as missing;
* lengths -> ``lognormal`` token lengths matched to the mean and standard deviation (a fixed
  length is sigma 0); lengths the run states to be uniform over [min, max] (both sides: a
  range whose standard deviation is the uniform's, ``(max - min + 1) / sqrt(12)``, as SGLang's
  and vLLM's ``random`` datasets) -> ``uniform`` over that range, shifted to the run's mean
  (the realised mean of a few hundred draws: what the run's token totals say);
* per-request lengths saved for both sides (vLLM ``--save-result`` ``input_lens`` /
  ``output_lens``) -> ``empirical`` (prompt, output) pairs drawn jointly from the run's own
  requests (``pairs``; :func:`capsim.bench.backtest.backtest_run` writes them to a scratch CSV).

Anything capsim would have to guess is listed in ``assumptions``; anything without which the run
cannot be replayed is in ``missing``, and :func:`require_replayable` turns that into one error.

>>> from capsim.bench.model import Source, Tool, Settings, Workload, ConcurrencyLoad, LengthDist
>>> run = BenchRun(source=Source(file="r.json", format="vllm", sha256="0" * 64),
...     tool=Tool(name="t"), settings=Settings(model="m", gpu="l4", precision="fp16"),
...     workload=Workload(load=ConcurrencyLoad(concurrency=4),
...         input_len=LengthDist(kind="fixed", value=128),
...         output_len=LengthDist(kind="stats", mean=200.0, std=100.0)))
>>> plan = replay_plan(run)
>>> plan.arrivals
{'kind': 'closed', 'concurrency': 4, 'think_time_s': 0.0}
>>> plan.tokens["prompt_median"], plan.tokens["prompt_sigma"], round(plan.tokens["output_sigma"], 4)
(128.0, 0.0, 0.4724)
>>> plan.missing, plan.assumptions
([], ['tp not recorded: assumed 1'])
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from capsim.bench.model import BenchRun, LengthDist
from capsim.errors import InputError


@dataclass
class ReplayPlan:
    """Scenario-shaped traffic for a run, plus what had to be assumed and what is missing."""

    arrivals: dict | None = None
    tokens: dict | None = None
    num_requests: int | None = None
    pairs: list[tuple[int, int]] | None = None
    tp: int = 1
    assumptions: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


def lognormal_from(mean: float, std: float | None) -> tuple[float, float]:
    """(median, sigma) of the lognormal with this mean and standard deviation (std 0: fixed).

    >>> lognormal_from(100.0, 0.0)
    (100.0, 0.0)
    >>> m, s = lognormal_from(100.0, 50.0); round(m, 3), round(s, 4)
    (89.443, 0.4724)
    """
    if not std:
        return float(mean), 0.0
    cv2 = (std / mean) ** 2
    return mean / math.sqrt(1 + cv2), math.sqrt(math.log1p(cv2))


def _moments(d: LengthDist) -> tuple[float | None, float | None, str | None]:
    """(mean, std, how) of a length distribution."""
    if d.kind == "fixed":
        return (float(d.value), 0.0, None) if d.value is not None else (None, None, None)
    if d.kind == "per_request" and d.values:
        n = len(d.values)
        mean = sum(d.values) / n
        std = math.sqrt(sum((v - mean) ** 2 for v in d.values) / n)
        return mean, std, "lognormal matched to the per-request lengths' mean and std"
    return d.mean, d.std, None


#: formats whose client sends exactly ``num_prompts`` requests (at a rate, or all at once) and
#: measures the duration to the last completion (vLLM ``benchmark_serving.py``, SGLang
#: ``bench_serving``)
FINITE_FORMATS = frozenset({"vllm", "sglang"})


def _is_llm(run: BenchRun) -> bool:
    m, w = run.measured, run.workload
    token_facts = (m.ttft_s, m.tpot_s, m.itl_s, m.output_tokens_per_s, w.input_len, w.output_len)
    return any(x is not None for x in token_facts)


def _arrivals(run: BenchRun, plan: ReplayPlan) -> None:
    load = run.workload.load
    if load is None:
        plan.missing.append("the offered load (request rate or concurrency)")
    elif load.kind == "rate":
        b = load.burstiness
        if b is None or b == 1.0:
            plan.arrivals = {"kind": "poisson", "rate_rps": load.rate_rps}
        else:
            plan.arrivals = {"kind": "renewal", "rate_rps": load.rate_rps, "cv": 1 / math.sqrt(b)}
        if load.max_concurrency:
            plan.missing.append(
                f"a cap of {load.max_concurrency} requests in flight on open-loop arrivals"
            )
    elif load.kind == "concurrency":
        plan.arrivals = {"kind": "closed", "concurrency": load.concurrency, "think_time_s": 0.0}
    elif finite_burst(run):  # replayed as sent (capsim.bench.finite); arrivals unused there
        plan.arrivals = {"kind": "poisson", "rate_rps": _burst_rate(run)}
    else:
        plan.missing.append(
            "offline load (every request at t = 0): replayed only for vLLM/SGLang runs that "
            "say how many requests they sent"
        )


def finite_burst(run: BenchRun) -> bool:
    """Whether ``run`` is a vLLM/SGLang client's burst (request rate inf) of a known number of
    requests, which :mod:`capsim.bench.finite` replays as sent: all at t = 0."""
    w = run.workload
    n = w.num_requests or w.completed
    return run.source.format in FINITE_FORMATS and bool(n and n >= 2) and _is_llm(run)


def _burst_rate(run: BenchRun) -> float:
    """A stand-in rate for a burst's scenario (its measured throughput, else 1/s)."""
    return run.measured.request_throughput_rps or 1.0


def uniform_range(d: LengthDist) -> tuple[int, int] | None:
    """[lo, hi] of a uniform length distribution centred on ``d``'s mean, when ``d`` is one:
    a min and max whose range has ``d``'s standard deviation (within 1%); else None.

    >>> d = LengthDist(kind="stats", mean=534.49, std=295.6033, min=1, max=1024)
    >>> uniform_range(d)
    (23, 1046)
    >>> uniform_range(LengthDist(kind="stats", mean=500.0, std=100.0, min=1, max=1024)) is None
    True
    """
    if d.kind != "stats" or None in (d.mean, d.std, d.min, d.max) or not d.mean:
        return None
    assert d.min is not None and d.max is not None and d.std is not None and d.mean is not None
    width = d.max - d.min
    if width <= 0 or abs((width + 1) / math.sqrt(12) - d.std) > 0.01 * d.std:
        return None
    lo = max(1, round(d.mean - width / 2))
    return lo, lo + round(width)


def _uniform_tokens(run: BenchRun, plan: ReplayPlan) -> bool:
    """Uniform lengths for both sides when the run's lengths are uniform (see the module)."""
    w = run.workload
    ranges = [uniform_range(d) if d is not None else None for d in (w.input_len, w.output_len)]
    pr, orng = ranges
    if pr is None or orng is None:
        return False
    (p0, p1), (o0, o1) = pr, orng
    plan.tokens = {"kind": "uniform", "prompt_min": p0, "prompt_max": p1,
                   "output_min": o0, "output_max": o1}  # fmt: skip
    plan.assumptions.append(
        f"uniform lengths: prompt [{p0}, {p1}], output [{o0}, {o1}] (the stated range, centred "
        "on the run's mean)"
    )
    return True


def _pair_tokens(run: BenchRun, plan: ReplayPlan) -> bool:
    """Empirical (prompt, output) pairs when the run saved both lengths for every request."""
    w = run.workload
    i, o = w.input_len, w.output_len
    if i is None or o is None or i.kind != "per_request" or o.kind != "per_request":
        return False
    if not i.values or not o.values or len(i.values) != len(o.values):
        return False
    plan.pairs = [(max(1, a), max(1, b)) for a, b in zip(i.values, o.values, strict=True)]
    plan.tokens = {"kind": "empirical", "prompt_column": "input_len",
                   "output_column": "output_len",
                   "prompt_max": max(a for a, _ in plan.pairs),
                   "output_max": max(b for _, b in plan.pairs)}  # fmt: skip
    plan.assumptions.append(
        f"lengths: the run's own {len(plan.pairs)} (prompt, output) pairs, drawn with replacement"
    )
    return True


def _tokens(run: BenchRun, plan: ReplayPlan) -> None:
    if _uniform_tokens(run, plan) or _pair_tokens(run, plan):
        return
    sides = {"prompt": run.workload.input_len, "output": run.workload.output_len}
    tokens: dict = {"kind": "lognormal"}
    for side, dist in sides.items():
        mean, std, how = _moments(dist) if dist is not None else (None, None, None)
        if mean is None or mean <= 0:
            plan.missing.append(f"{side} lengths")
            continue
        if std is None:
            plan.assumptions.append(f"{side} length spread not recorded: fixed at the mean")
        if how:
            plan.assumptions.append(f"{side}: {how}")
        tokens[f"{side}_median"], tokens[f"{side}_sigma"] = lognormal_from(mean, std)
    if len(tokens) == 5:
        plan.tokens = tokens


def replay_plan(run: BenchRun) -> ReplayPlan:
    """The scenario traffic for ``run`` and what is assumed or missing (see the module doc)."""
    plan = ReplayPlan(num_requests=run.workload.num_requests or run.workload.completed)
    s = run.settings
    for key in ("model", "gpu", "precision"):
        if getattr(s, key) is None:
            plan.missing.append(f"{key} (give --{key})")
    if s.tp is None:
        plan.assumptions.append("tp not recorded: assumed 1")
    else:
        plan.tp = s.tp
    _arrivals(run, plan)
    if _is_llm(run):
        _tokens(run, plan)
    return plan


def require_replayable(run: BenchRun) -> ReplayPlan:
    """:func:`replay_plan`, or an :class:`InputError` naming the run and everything missing."""
    plan = replay_plan(run)
    if plan.missing:
        raise InputError(
            "cannot replay this run; missing: " + "; ".join(plan.missing),
            file=run.source.file,
            where=f"run {run.source.index}",
        )
    return plan
