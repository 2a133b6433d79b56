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

import math

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
from capsim.workload.tokens import token_lengths
from capsim.workload.traces import read_trace, trace_peak_rate, trace_span, trace_stream

DEFAULT_HORIZON_S = 3600.0


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
        n *= min(1.0, h / trace_span(a)) if trace_span(a) > 0 else 1.0
        return n, n / h if h > 0 else 0.0
    grid = np.linspace(0.0, real_horizon(s), 20001)
    mean = float(a.rate_rps * rate_multiplier(a, grid).mean())
    return mean * h, mean


def check_traffic(s: Scenario, *, file: str | None = None) -> None:
    """What only the traffic as a whole shows: some requests at all, not more than fit in
    memory, and a warm-up shorter than the simulated horizon."""
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
    cap = s.simulation.max_requests
    if n > cap and not isinstance(s.traffic.arrivals, ClosedArrivals):
        raise InputError(
            f"one replication would generate ~{n:,.0f} requests ({mean:,.4g} req/s over "
            f"{h:,.0f} simulated s); at most simulation.max_requests = {cap:,} fit in memory: "
            "shorten traffic.horizon_s, set simulation.compress_to_s, or raise max_requests",
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
    if s.traffic.tokens is not None and stream.prompt_tokens is None:
        p, o = token_lengths(s.traffic.tokens, len(stream), np.random.default_rng(size_seq))
        stream = RequestStream(stream.arrival, stream.horizon, p, o, stream.time_scale)
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
        return trace_peak_rate(t) * a.rate_scale
    h = real_horizon(s)
    grid = np.linspace(0, h, 20001)
    return float(a.rate_rps * rate_multiplier(a, grid).max())


def real_time(s: Scenario) -> Scenario:
    """The scenario without time compression (autoscaling needs real time)."""
    if s.simulation.compress_to_s is None:
        return s
    sim = s.simulation.model_copy(update={"compress_to_s": None})
    return s.model_copy(update={"simulation": sim})
