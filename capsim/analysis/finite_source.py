"""The exact closed (finite-source) queue M/M/c//N: the oracle for closed-loop traffic.

``N`` clients each think for an exponential time (mean ``think_s``), send one request, and wait
for it; ``c`` servers serve requests first come first served in exponential times (mean
``service_s``). This is the machine-repairman model; its birth-death chain is solved exactly. The
response-time distribution follows from the arrival theorem: a request arrives to find the
stationary state of the same system with ``N - 1`` clients. With ``n >= c`` requests ahead it
waits an Erlang(``n - c + 1``, ``c/service_s``) time, then is served.

>>> r = finite_source_mmc(n_clients=4, servers=4, think_s=1.0, service_s=0.5)
>>> round(r.throughput_rps, 6), round(r.response_mean_s, 6)   # no queueing: N / (Z + S)
(2.666667, 0.5)
>>> r = finite_source_mmc(n_clients=8, servers=1, think_s=0.0, service_s=0.1)
>>> round(r.throughput_rps, 6), round(r.response_mean_s, 6)   # saturated: X = mu, R = N / mu
(10.0, 0.8)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import optimize, special, stats


def _check(n_clients: int, servers: int, think_s: float, service_s: float) -> None:
    if not isinstance(n_clients, int | np.integer) or n_clients < 1:
        raise ValueError(f"n_clients must be a whole number >= 1, got {n_clients!r}")
    if not isinstance(servers, int | np.integer) or servers < 1:
        raise ValueError(f"servers must be a whole number >= 1, got {servers!r}")
    if not (math.isfinite(think_s) and think_s >= 0):
        raise ValueError(f"think_s must be finite and >= 0, got {think_s!r}")
    if not (math.isfinite(service_s) and service_s > 0):
        raise ValueError(f"service_s must be finite and > 0, got {service_s!r}")


def state_probabilities(
    n_clients: int, servers: int, think_s: float, service_s: float
) -> np.ndarray:
    """Stationary P(n requests at the station), n = 0..N (think time 0: all N are there).

    >>> state_probabilities(2, 1, 1.0, 1.0).round(4).tolist()
    [0.2, 0.4, 0.4]
    """
    _check(n_clients, servers, think_s, service_s)
    p = np.zeros(n_clients + 1)
    if think_s == 0:
        p[-1] = 1.0
        return p
    n = np.arange(n_clients + 1)
    log_r = math.log(service_s / think_s)  # λ/μ with λ = 1/think, μ = 1/service
    c = servers
    # p_n ∝ N!/(N-n)! r^n / Π_{k=1..n} min(k, c), and Π min(k, c) = n! up to c, then c! c^(n-c)
    log_den = np.where(
        n <= c, special.gammaln(n + 1), special.gammaln(c + 1) + (n - c) * math.log(c)
    )
    log_w = (
        special.gammaln(n_clients + 1) - special.gammaln(n_clients - n + 1) + n * log_r - log_den
    )
    log_w -= log_w.max()
    w = np.exp(log_w)
    return w / w.sum()


def _stage_sf(t: float, k: int, a: float, b: float) -> float:
    """P(Erlang(k, rate a) + Exp(rate b) > t), for a >= b > 0."""
    if k == 0:
        return math.exp(-b * t)
    if math.isclose(a, b, rel_tol=1e-12):
        return float(stats.gamma.sf(t, k + 1, scale=1 / b))
    head = float(stats.gamma.sf(t, k, scale=1 / a))
    log_tail = (
        -b * t + k * math.log(a / (a - b)) + float(stats.gamma.logcdf(t, k, scale=1 / (a - b)))
    )
    return head + math.exp(log_tail)


@dataclass(frozen=True)
class FiniteSourceResult:
    """Throughput, mean response and the response-time distribution of an M/M/c//N station."""

    n_clients: int
    servers: int
    think_s: float
    service_s: float
    p_state: np.ndarray  # stationary P(n at the station), n = 0..N
    p_arrival: np.ndarray  # what an arriving request sees: the N-1 system, n = 0..N-1

    @property
    def throughput_rps(self) -> float:
        """Completions per second: μ Σ min(n, c) p_n."""
        n = np.arange(self.n_clients + 1)
        return float(np.minimum(n, self.servers) @ self.p_state / self.service_s)

    @property
    def response_mean_s(self) -> float:
        """Mean time at the station (wait + service), by Little's law on the loop: N/X - Z."""
        return self.n_clients / self.throughput_rps - self.think_s

    def response_sf(self, t: float) -> float:
        """P(response time > t)."""
        if t <= 0:
            return 1.0
        c, mu = self.servers, 1.0 / self.service_s
        total = 0.0
        for n, p in enumerate(self.p_arrival):
            if p > 0:
                total += p * _stage_sf(t, max(n - c + 1, 0), c * mu, mu)
        return min(max(total, 0.0), 1.0)

    def response_quantile(self, q: float) -> float:
        """The ``q`` quantile of the response time (0 < q < 1)."""
        if not 0 < q < 1:
            raise ValueError(f"q must be in (0, 1), got {q!r}")
        target = 1.0 - q
        hi = self.service_s
        while self.response_sf(hi) > target:
            hi *= 2
        return float(optimize.brentq(lambda t: self.response_sf(t) - target, 0.0, hi, xtol=1e-12))

    def response_mean_by_arrival_theorem(self) -> float:
        """Mean response from what arrivals see: S + Σ_{n >= c} p_n (n - c + 1) S / c."""
        c, s = self.servers, self.service_s
        n = np.arange(self.n_clients)
        waits = np.where(n >= c, (n - c + 1) * s / c, 0.0)
        return float(s + self.p_arrival @ waits)


def finite_source_mmc(
    n_clients: int, servers: int, think_s: float, service_s: float
) -> FiniteSourceResult:
    """Solve M/M/c//N exactly (see the module docstring)."""
    p = state_probabilities(n_clients, servers, think_s, service_s)
    if n_clients == 1:
        seen = np.array([1.0])
    else:
        seen = state_probabilities(n_clients - 1, servers, think_s, service_s)
    return FiniteSourceResult(n_clients, servers, think_s, service_s, p, seen)
