"""Exact queueing results used as test oracles and for cheap screening.

Everything here is closed-form or an exactly solved Markov chain: no simulation and no random
numbers. The formulas follow ``docs/reference/queueing-and-statistics.md``.

Notation: arrival rate ``lam`` (λ), service rate ``mu`` (μ, mean service time 1/μ), ``c`` servers,
offered load ``a = λ/μ``, utilisation ``ρ = a/c`` and ``θ = cμ − λ``. Times are in seconds when the
rates are per second.

Every function raises :class:`ValueError` for a bad argument (non-positive rate, non-integer server
count, probability outside its range, ...) and for an unstable system (ρ ≥ 1), where no stationary
distribution exists.

>>> round(erlang_c(10, 8.0), 5)
0.40918
>>> round(mmc_response_quantile(8.0, 1.0, 10, 0.99), 4)
4.9461
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable

import numpy as np
from scipy import optimize

# Poisson pmf mass below this is dropped when building the embedded chains (it is folded into the
# last retained state, so every row stays exactly stochastic).
_PMF_EPS = 1e-17


# Target stationary mass beyond the automatically chosen truncation point.
_TAIL_EPS = 1e-13


# Hard cap on automatically chosen chain sizes. The banded sparse solve costs about
# n_states·(Poisson spread)², i.e. ~0.5 s at the cap for c = 1 and a few seconds for c ~ 1000 at
# ρ = 0.999; typical planner cases (c ≲ 200, ρ ≲ 0.95) take milliseconds.
_MAX_AUTO_STATES = 200_000


def _positive(name: str, x: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {x!r}") from None
    if not math.isfinite(v) or v <= 0.0:
        raise ValueError(f"{name} must be finite and > 0, got {x!r}")
    return v


def _nonnegative(name: str, x: float) -> float:
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {x!r}") from None
    if not math.isfinite(v) or v < 0.0:
        raise ValueError(f"{name} must be finite and >= 0, got {x!r}")
    return v


def _count(name: str, x: int, minimum: int = 1) -> int:
    """An integer >= ``minimum``; integral floats such as ``10.0`` are accepted."""
    if isinstance(x, bool):
        raise ValueError(f"{name} must be an integer, got {x!r}")
    integral = isinstance(x, numbers.Integral) or (
        isinstance(x, numbers.Real) and math.isfinite(float(x)) and float(x).is_integer()
    )
    if not integral:
        raise ValueError(f"{name} must be an integer, got {x!r}")
    v = int(x)
    if v < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {x!r}")
    return v


def _probability(name: str, p: float, *, allow_zero: bool = True) -> float:
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number, got {p!r}") from None
    lo_ok = v >= 0.0 if allow_zero else v > 0.0
    if not (math.isfinite(v) and lo_ok and v < 1.0):
        interval = "[0, 1)" if allow_zero else "(0, 1)"
        raise ValueError(f"{name} must be in {interval}, got {p!r}")
    return v


def _stable(rho: float, what: str) -> None:
    if not rho < 1.0:
        raise ValueError(f"unstable {what}: utilisation rho = {rho:.6g} >= 1")


def _mmc_args(lam: float, mu: float, c: int) -> tuple[float, float, int]:
    lam = _positive("lam", lam)
    mu = _positive("mu", mu)
    c = _count("c", c)
    _stable(lam / (c * mu), "M/M/c queue")
    return lam, mu, c


def erlang_b(c: int, a: float) -> float:
    """Erlang B blocking probability for ``c`` servers and offered load ``a`` erlangs.

    Uses the numerically stable recursion B₀ = 1, B_k = a·B_{k−1} / (k + a·B_{k−1}), which never
    overflows (no factorials or powers) and costs O(c). Any ``a >= 0`` is allowed: a loss system is
    always stable.

    >>> round(erlang_b(10, 8.0), 5)
    0.12166
    """
    c = _count("c", c, minimum=0)
    a = _nonnegative("a", a)
    b = 1.0
    for k in range(1, c + 1):
        ab = a * b
        b = ab / (k + ab)
    return b


def erlang_c(c: int, a: float) -> float:
    """Erlang C: probability that an arrival has to wait, P(Wq > 0), in an M/M/c queue.

    ``a = λ/μ`` is the offered load; requires ``a < c``. Computed from Erlang B as
    C = B_c / (1 − ρ + ρ·B_c) with ρ = a/c.

    >>> round(erlang_c(10, 8.0), 5)
    0.40918
    """
    c = _count("c", c)
    a = _nonnegative("a", a)
    rho = a / c
    _stable(rho, "M/M/c queue")
    b = erlang_b(c, a)
    return b / (1.0 - rho + rho * b)


def mmc_wait_mean(lam: float, mu: float, c: int) -> float:
    """Mean waiting time in queue E[Wq] = C/θ for M/M/c (θ = cμ − λ).

    >>> round(mmc_wait_mean(8.0, 1.0, 10), 4)
    0.2046
    """
    lam, mu, c = _mmc_args(lam, mu, c)
    return erlang_c(c, lam / mu) / (c * mu - lam)


def mmc_wait_sf(t: float | np.ndarray, lam: float, mu: float, c: int) -> float | np.ndarray:
    """Survival function of the M/M/c queueing delay: P(Wq > t) = C·e^{−θt} for t ≥ 0.

    ``t`` may be a scalar or an array (negative ``t`` gives 1).

    >>> round(mmc_wait_sf(1.0, 8.0, 1.0, 10), 5)
    0.05538
    """
    lam, mu, c = _mmc_args(lam, mu, c)
    cc = erlang_c(c, lam / mu)
    theta = c * mu - lam
    tt = np.asarray(t, dtype=float)
    out = np.where(tt < 0.0, 1.0, cc * np.exp(-theta * np.maximum(tt, 0.0)))
    return float(out) if out.ndim == 0 else out


def mmc_wait_quantile(lam: float, mu: float, c: int, p: float) -> float:
    """p-quantile of the M/M/c queueing delay: max(0, ln(C/(1−p))/θ).

    Returns 0 when ``p <= 1 − C`` (at least a fraction p of arrivals do not wait).

    >>> round(mmc_wait_quantile(8.0, 1.0, 10, 0.99), 4)
    1.8558
    """
    lam, mu, c = _mmc_args(lam, mu, c)
    p = _probability("p", p)
    cc = erlang_c(c, lam / mu)
    if cc <= 1.0 - p:
        return 0.0
    return math.log(cc / (1.0 - p)) / (c * mu - lam)


def _hypoexp_sf(t: np.ndarray | np.float64, r1: float, r2: float) -> np.ndarray | np.float64:
    """P(X + Y > t) for independent X ~ Exp(r1), Y ~ Exp(r2), t >= 0.

    Equals (r1·e^{−r2 t} − r2·e^{−r1 t}) / (r1 − r2), which is symmetric in (r1, r2). With
    m = min, δ = |r1 − r2| it is rewritten as e^{−m t}·(1 + m·(1 − e^{−δt})/δ), which has no
    cancellation near r1 = r2 (the limit δ → 0 gives (1 + m t)·e^{−m t}) and cannot overflow.
    """
    m = min(r1, r2)
    delta = abs(r1 - r2)
    phi = -np.expm1(-delta * t) / delta if delta > 0.0 else t
    return np.exp(-m * t) * (1.0 + m * phi)


def mmc_response_sf(t: float | np.ndarray, lam: float, mu: float, c: int) -> float | np.ndarray:
    """P(T > t) for the FCFS M/M/c response (sojourn) time T = Wq + S.

    P(T > t) = (1−C)·e^{−μt} + C·(θ·e^{−μt} − μ·e^{−θt})/(θ − μ), and C·(1+μt)·e^{−μt} for the
    second term when θ = μ. The second term is evaluated in a cancellation-free form, so values of
    θ close to μ are as accurate as any other. ``t`` may be a scalar or an array (negative ``t``
    gives 1).

    >>> round(mmc_response_sf(4.9461, 8.0, 1.0, 10), 6)
    0.01
    """
    lam, mu, c = _mmc_args(lam, mu, c)
    cc = erlang_c(c, lam / mu)
    theta = c * mu - lam
    tt = np.asarray(t, dtype=float)
    tp = np.maximum(tt, 0.0)
    out = (1.0 - cc) * np.exp(-mu * tp) + cc * _hypoexp_sf(tp, theta, mu)
    out = np.where(tt < 0.0, 1.0, np.clip(out, 0.0, 1.0))
    return float(out) if out.ndim == 0 else out


def mmc_response_mean(lam: float, mu: float, c: int) -> float:
    """Mean response time E[T] = E[Wq] + 1/μ for M/M/c.

    >>> round(mmc_response_mean(8.0, 1.0, 10), 4)
    1.2046
    """
    return mmc_wait_mean(lam, mu, c) + 1.0 / float(mu)


def mmc_response_quantile(lam: float, mu: float, c: int, p: float) -> float:
    """p-quantile of the FCFS M/M/c response time, solving P(T > t) = 1 − p with Brent's method.

    ``p = 0`` returns 0.

    >>> round(mmc_response_quantile(8.0, 1.0, 10, 0.5), 3)
    0.912
    """
    lam, mu, c = _mmc_args(lam, mu, c)
    p = _probability("p", p)
    if p == 0.0:
        return 0.0
    target = 1.0 - p
    cc = erlang_c(c, lam / mu)
    theta = c * mu - lam

    def sf(t: float) -> float:
        return float((1.0 - cc) * math.exp(-mu * t) + cc * _hypoexp_sf(np.float64(t), theta, mu))

    f = _log_gap(sf, target)
    # T is stochastically below Exp(μ) + Exp(θ), so this starting point is within a small factor
    # of the root; doubling brackets it in a handful of steps.
    scale = 1.0 / mu + 1.0 / theta
    hi = max(-math.log1p(-p), 1e-12) * scale
    while f(hi) > 0.0:
        hi *= 2.0
    return float(optimize.brentq(f, 0.0, hi, xtol=1e-15 * scale, rtol=4 * np.finfo(float).eps))


def _log_gap(sf: Callable[[float], float], target: float) -> Callable[[float], float]:
    """Root function ln sf(t) − ln target: well scaled even for tiny tail targets."""
    log_target = math.log(target)

    def g(t: float) -> float:
        # clamp at the smallest subnormal so an underflowed tail stays finite for brentq
        return math.log(max(sf(t), 5e-324)) - log_target

    return g


def mm1_response_quantile(lam: float, mu: float, p: float) -> float:
    """p-quantile of the M/M/1 response time: T ~ Exp(μ − λ), so it is ln(1/(1−p))/(μ − λ).

    >>> round(mm1_response_quantile(0.8, 1.0, 0.99), 4)
    23.0259
    """
    lam = _positive("lam", lam)
    mu = _positive("mu", mu)
    p = _probability("p", p)
    _stable(lam / mu, "M/M/1 queue")
    return -math.log1p(-p) / (mu - lam)


def mg1_wait_mean(lam: float, es: float, es2: float) -> float:
    """Pollaczek–Khinchine mean wait for M/G/1: E[Wq] = λ·E[S²] / (2(1 − ρ)), ρ = λ·E[S].

    ``es`` is the mean and ``es2`` the second moment E[S²] (not the variance) of the service time;
    ``es2 >= es**2`` is required.

    >>> mg1_wait_mean(0.8, 1.0, 2.0)  # exponential service, mean 1: the M/M/1 value
    4.000000000000001
    """
    lam = _positive("lam", lam)
    es = _positive("es", es)
    es2 = _positive("es2", es2)
    if es2 < es * es * (1.0 - 1e-12):
        raise ValueError(f"es2 must be >= es**2 (it is the second moment), got es={es}, es2={es2}")
    rho = lam * es
    _stable(rho, "M/G/1 queue")
    return lam * es2 / (2.0 * (1.0 - rho))


def md1_wait_mean(lam: float, d: float) -> float:
    """Mean wait for M/D/1 (deterministic service ``d``): E[Wq] = ρ·D / (2(1 − ρ)).

    >>> md1_wait_mean(0.8, 1.0)
    2.0000000000000004
    """
    lam = _positive("lam", lam)
    d = _positive("d", d)
    rho = lam * d
    _stable(rho, "M/D/1 queue")
    return rho * d / (2.0 * (1.0 - rho))
