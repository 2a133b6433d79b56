"""Request streams: arrival times (and token sizes) as numpy arrays, generated once per replication.

Every candidate configuration sees the same stream in the same replication (common random
numbers), so their p99s are compared on the same traffic. Each random element has its own child
of a ``numpy.random.SeedSequence``: arrivals, token sizes, and service-time jitter.

Time-varying load uses the *time change* of a unit-rate process: with cumulative intensity
``Λ(t) = ∫ λ(u) du``, the arrival times are ``Λ⁻¹(E_k)`` where ``E_k`` are the points of a
unit-rate renewal process. For Poisson arrivals this is an exact non-homogeneous Poisson process
(equivalent to thinning); for renewal arrivals it keeps the coefficient of variation locally.

>>> import math

import numpy as np
>>> from capsim.spec.scenario import Poisson
>>> s = arrival_times(Poisson(kind="poisson", rate_rps=100.0), 60.0, np.random.default_rng(1))
>>> 5000 < len(s) < 7000
True
"""

from __future__ import annotations

import contextlib
import math
import os
from pathlib import Path

import numpy as np

from capsim.errors import InputError
from capsim.spec.scenario import (
    ClosedArrivals,
    Diurnal,
    Poisson,
    Renewal,
    Scenario,
    Trace,
)
from capsim.workload.arrivals import RequestStream, arrival_times, rate_multiplier
from capsim.workload.closed_loop import ClosedStream
from capsim.workload.sessions import mean_turns, session_traffic, with_system_prompts
from capsim.workload.tokens import token_lengths
from capsim.workload.traces import read_trace, trace_peak_rate, trace_span, trace_stream

DEFAULT_HORIZON_S = 3600.0
#: Bytes one generated request of an LLM scenario costs across the run (stream arrays, token
#: counts, per-request results, the what-if timeline): ~285 measured on a 30-day
#: chatbot_autoscaled what-if (issue 9), rounded up.
BYTES_PER_REQUEST = 300
#: The same for a fixed-shape model (no token arrays, batched fleet): peak RSS 328 MB for
#: embedding_autoscaled's what-if at 4.32M requests per replication (150 MB of it imports),
#: ~42 bytes each; rounded up.
BYTES_PER_REQUEST_FIXED = 64


def bytes_per_request(s: Scenario) -> int:
    """Memory one generated request costs (:data:`BYTES_PER_REQUEST` for LLM scenarios)."""
    return BYTES_PER_REQUEST if s.is_llm else BYTES_PER_REQUEST_FIXED


#: Share of the available memory one run may plan to use (the rest: Python, numpy temporaries).
MEMORY_SHARE = 0.5


def available_memory_bytes() -> float:
    """Memory this process may still use: ``MemAvailable`` (Linux), capped by a cgroup limit;
    elsewhere the physical memory; ``inf`` when neither can be read."""
    avail = float("inf")
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = float(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        with contextlib.suppress(ValueError, OSError, AttributeError):
            avail = float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        used = float(Path("/sys/fs/cgroup/memory.current").read_text().strip())
        if raw != "max":
            avail = min(avail, float(raw) - used)
    except (OSError, ValueError):
        pass
    return avail


def real_horizon(s: Scenario) -> float:
    """The span of traffic the scenario asks for, in real seconds."""
    if s.traffic.horizon_s is not None:
        return s.traffic.horizon_s
    a = s.traffic.arrivals
    if isinstance(a, Trace):
        return trace_span(a)
    if isinstance(a, Poisson | Renewal) and a.pattern is not None:
        return a.pattern.period_s if isinstance(a.pattern, Diurnal) else max(a.pattern.times_s)
    return DEFAULT_HORIZON_S


def sim_horizon(s: Scenario) -> tuple[float, float]:
    """(simulated horizon, time scale). Compression applies only to rate-based arrivals."""
    h = real_horizon(s)
    c = s.simulation.compress_to_s
    if c is None or c >= h or isinstance(s.traffic.arrivals, Trace | ClosedArrivals):
        return h, 1.0
    return c, c / h


def seed_children(seed: int, replication: int) -> list[np.random.SeedSequence]:
    """The SeedSequence children of one replication: [arrivals, sizes, service jitter, cold
    starts] — one stream per random element, so changing one leaves the others as they were."""
    root = np.random.SeedSequence(seed)
    rep = np.random.SeedSequence(root.entropy, spawn_key=(replication,))
    return rep.spawn(4)


def _rate_grid(a: Poisson | Renewal, horizon: float) -> np.ndarray:
    """Times to evaluate the rate at: a fine grid plus both sides of every burst edge and
    pattern step, so that a short burst is never missed."""
    edges = [b.start_s for b in a.bursts] + [b.start_s + b.duration_s for b in a.bursts]
    if a.pattern is not None and not isinstance(a.pattern, Diurnal):
        edges += list(a.pattern.times_s)
    eps = horizon * 1e-9
    pts = [np.linspace(0.0, horizon, 20001)]
    pts += [np.array([e - eps, e + eps]) for e in edges if 0 < e < horizon]
    return np.clip(np.unique(np.concatenate(pts)), 0.0, horizon)


def expected_requests(s: Scenario) -> tuple[float, float]:
    """(requests one replication generates on average, mean offered rate in req/s)."""
    a = s.traffic.arrivals
    h, scale = sim_horizon(s)
    if isinstance(a, ClosedArrivals):  # at most one request per client per think time
        if a.think_time_s == 0:
            return math.nan, math.nan
        return a.concurrency * h / a.think_time_s, a.concurrency / a.think_time_s
    if isinstance(a, Trace):
        n = float(np.count_nonzero(read_trace(a).times >= a.start_s)) * a.rate_scale
        n *= turns_per_arrival(s)
        n *= min(1.0, h / trace_span(a)) if trace_span(a) > 0 else 1.0
        return n, n / h if h > 0 else 0.0
    real = real_horizon(s)
    grid = _rate_grid(a, real)
    m = rate_multiplier(a, grid)
    mean = float(a.rate_rps * np.trapezoid(m, grid) / real) if real > 0 else 0.0
    mean *= turns_per_arrival(s)
    return mean * h, mean


def turns_per_arrival(s: Scenario) -> float:
    """Requests per arrival: the mean turns of a session with ``traffic.sessions``, else 1
    (an upper estimate: the horizon and ``prompt_max`` cut some sessions short)."""
    return mean_turns(s.traffic.sessions) if s.traffic.sessions is not None else 1.0


def memory_limit_requests(s: Scenario, jobs: int = 1) -> tuple[int, str]:
    """The most requests one replication may generate, and why: ``simulation.max_requests`` if
    given, and never more than :data:`MEMORY_SHARE` of the available memory split over ``jobs``
    parallel processes at :data:`BYTES_PER_REQUEST` each."""
    avail = available_memory_bytes()
    fit = MEMORY_SHARE * avail / max(jobs, 1) / bytes_per_request(s)
    cap = s.simulation.max_requests
    if cap is not None and cap <= fit:
        return cap, f"simulation.max_requests = {cap:,}"
    per_job = f" per job with --jobs {jobs}" if jobs > 1 else ""
    return int(min(fit, 2**62)), (
        f"~{fit:,.0f} fit in memory ({MEMORY_SHARE * avail / 2**30 / max(jobs, 1):,.1f} GiB"
        f"{per_job} at ~{bytes_per_request(s)} bytes each)"
    )


def run_cost_text(s: Scenario, jobs: int = 1) -> str:
    """What a run will cost: requests per replication, memory, replications.

    >>> from capsim.load import load_scenario
    >>> run_cost_text(load_scenario("scenarios/embedding.yaml")).startswith("~")
    True
    """
    n, _ = expected_requests(s)
    mem = n * bytes_per_request(s) * max(jobs, 1)
    rate = LLM_REQUESTS_PER_CPU_S if s.is_llm else BATCHED_REQUESTS_PER_CPU_S
    tr = s.traffic
    if s.is_llm and (tr.sessions is not None or tr.system_prompts is not None):
        rate = LLM_PREFIX_REQUESTS_PER_CPU_S
    return (
        f"~{n:,.0f} requests per replication, ~{mem / 2**20:,.0f} MiB at most "
        f"({max(jobs, 1)} job{'s' if jobs > 1 else ''}), {s.simulation.replications} to "
        f"{s.simulation.max_replications} replications per configuration, "
        f"~{_duration(n / rate)} of CPU per configuration and replication"
    )


#: Engine speeds for the time estimate, requests simulated per CPU second, rounded down from
#: benchmarks/README.md (batched engine: 0.6-3.6 M/s; continuous-batching LLM engine: 53-70 k/s).
BATCHED_REQUESTS_PER_CPU_S = 500_000.0
LLM_REQUESTS_PER_CPU_S = 50_000.0
#: The LLM engine with prefix caching on shared-prefix traffic: 26-32 k/s (benchmarks/README.md).
LLM_PREFIX_REQUESTS_PER_CPU_S = 25_000.0


def _duration(seconds: float) -> str:
    """A rough duration, in the unit that reads best.

    >>> _duration(0.04), _duration(12.3), _duration(190), _duration(9000)
    ('0.04 s', '12 s', '3.2 min', '2.5 h')
    """
    if seconds < 1:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def check_traffic(s: Scenario, *, file: str | None = None, jobs: int = 1) -> None:
    """What only the traffic as a whole shows: some requests at all, not more than fit in
    memory (estimated before anything is generated), and a warm-up shorter than the horizon."""
    n, mean = expected_requests(s)
    h, _ = sim_horizon(s)
    if math.isnan(n):  # a closed loop without think time: as many as the fleet serves
        n, mean = 1.0, 1.0
    if n <= 0 or mean <= 0:
        raise InputError(
            "no traffic: the arrival rate is zero over the whole horizon",
            file=file,
            where="traffic",
        )
    if n < 1:
        raise InputError(
            f"no requests arrive in the horizon (expected {n:.3g}: {mean:.3g} req/s over "
            f"{h:,.6g} simulated s); no percentile can be measured: raise the rate or "
            "traffic.horizon_s",
            file=file,
            where="traffic",
        )
    cap, why = memory_limit_requests(s, jobs)
    if n > cap and not isinstance(s.traffic.arrivals, ClosedArrivals):
        raise InputError(
            f"one replication would generate ~{n:,.0f} requests ({mean:,.4g} req/s over "
            f"{h:,.0f} simulated s, ~{n * bytes_per_request(s) / 2**30:,.1f} GiB); at most {why}: "
            "shorten traffic.horizon_s, set simulation.compress_to_s, lower --jobs, or change "
            "simulation.max_requests",
            file=file,
            where="traffic",
        )
    w = s.simulation.warmup
    if isinstance(w, float) and w >= h:
        raise InputError(
            f"warm-up {w:g} s is not shorter than the simulated horizon of {h:g} s: nothing "
            "would be measured",
            file=file,
            where="simulation.warmup",
        )


def make_stream(s: Scenario, replication: int) -> RequestStream | ClosedStream:
    """The request stream of one replication (the same for every candidate); for closed-loop
    traffic the clients and seeds the engine draws send times and lengths from as it runs."""
    arr_seq, size_seq, *_ = seed_children(s.simulation.seed, replication)
    horizon, scale = sim_horizon(s)
    a = s.traffic.arrivals
    if isinstance(a, ClosedArrivals):
        spec = s.traffic.tokens
        draw = None if spec is None else (lambda k, rng: token_lengths(spec, k, rng))
        return ClosedStream(a, horizon, arr_seq, size_seq, draw)
    rng = np.random.default_rng(arr_seq)
    if isinstance(a, Trace):
        stream = trace_stream(a, horizon, rng)
    else:
        stream = RequestStream(
            arrival_times(a, horizon, rng, time_scale=scale), horizon, time_scale=scale
        )
    tr = s.traffic
    if tr.sessions is not None and tr.tokens is not None:  # arrivals are session starts
        ses = tr.sessions.model_copy(update={"think_time_s": tr.sessions.think_time_s * scale})
        t = session_traffic(
            ses, stream.arrival, tr.tokens, tr.system_prompts, horizon,
            np.random.default_rng(size_seq),
        )  # fmt: skip
        return RequestStream(
            t.arrival, stream.horizon, t.prompt, t.output, stream.time_scale, t.prefixes
        )
    if tr.tokens is not None and stream.prompt_tokens is None:
        p, o = token_lengths(tr.tokens, len(stream), np.random.default_rng(size_seq))
        stream = RequestStream(stream.arrival, stream.horizon, p, o, stream.time_scale)
    if tr.system_prompts is not None and stream.prompt_tokens is not None:
        assert stream.output_tokens is not None  # token columns come in pairs
        rng_sys = np.random.default_rng(size_seq.spawn(1)[0])
        p, pre = with_system_prompts(
            tr.system_prompts, stream.prompt_tokens, stream.output_tokens, rng_sys
        )
        stream = RequestStream(
            stream.arrival, stream.horizon, p, stream.output_tokens, stream.time_scale, pre
        )
    return stream


def jitter_rng(s: Scenario, replication: int) -> np.random.Generator:
    """The generator of service-time jitter for one replication (same for every candidate)."""
    return np.random.default_rng(seed_children(s.simulation.seed, replication)[2])


def peak_rate(s: Scenario) -> float:
    """Highest offered rate over the horizon (req/s), for capacity bounds."""
    a = s.traffic.arrivals
    if isinstance(a, ClosedArrivals):  # no rate of its own: it offers what the fleet serves
        return 0.0
    if isinstance(a, Trace):
        data = read_trace(a)
        t = data.times[data.times >= a.start_s] / a.speedup
        return trace_peak_rate(t) * a.rate_scale * turns_per_arrival(s)
    h = real_horizon(s)
    grid = np.linspace(0, h, 20001)
    return float(a.rate_rps * rate_multiplier(a, grid).max()) * turns_per_arrival(s)


def compressed_day(s: Scenario, factor: float) -> Scenario | None:
    """The scenario's horizon compressed ``factor`` times (the load pattern runs ``factor`` times
    faster, the rates stay as they are), or None where the arrivals cannot be compressed (a
    replayed trace, a closed loop). Used to screen autoscaling settings; pair it with
    :func:`capsim.spec.autoscaling.scale_times` for the policy's own clock.
    """
    if factor <= 1 or not isinstance(s.traffic.arrivals, Poisson | Renewal):
        return None
    sim = s.simulation.model_copy(update={"compress_to_s": real_horizon(s) / factor})
    return s.model_copy(update={"simulation": sim})


def real_time(s: Scenario) -> Scenario:
    """The scenario without time compression (autoscaling needs real time)."""
    if s.simulation.compress_to_s is None:
        return s
    sim = s.simulation.model_copy(update={"compress_to_s": None})
    return s.model_copy(update={"simulation": sim})
