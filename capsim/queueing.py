"""Exact queueing results used as test oracles and for cheap screening.

Everything here is closed-form or an exactly solved Markov chain: no simulation and no random
numbers. The formulas follow ``/work/shared/reference/queueing-and-statistics.md``.

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
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse, special
from scipy.sparse import linalg as sparse_linalg

__all__ = [
    "MDcResult",
    "BatchResult",
    "erlang_b",
    "erlang_c",
    "mmc_wait_mean",
    "mmc_wait_sf",
    "mmc_wait_quantile",
    "mmc_response_sf",
    "mmc_response_mean",
    "mmc_response_quantile",
    "mm1_response_quantile",
    "mg1_wait_mean",
    "md1_wait_mean",
    "mdc_wait",
    "batch_mmk1_wait_mean",
    "batch_deterministic_wait",
    "batch_deterministic_wait_mean",
]

# Poisson pmf mass below this is dropped when building the embedded chains (it is folded into the
# last retained state, so every row stays exactly stochastic).
_PMF_EPS = 1e-17
# Target stationary mass beyond the automatically chosen truncation point.
_TAIL_EPS = 1e-13
# Hard cap on automatically chosen chain sizes. The banded sparse solve costs about
# n_states·(Poisson spread)², i.e. ~0.5 s at the cap for c = 1 and a few seconds for c ~ 1000 at
# ρ = 0.999; typical planner cases (c ≲ 200, ρ ≲ 0.95) take milliseconds.
_MAX_AUTO_STATES = 200_000


# --------------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# Erlang B / C and M/M/c
# --------------------------------------------------------------------------------------------------


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


def _hypoexp_sf(t: np.ndarray, r1: float, r2: float) -> np.ndarray:
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

    def f(t: float) -> float:
        return float((1.0 - cc) * math.exp(-mu * t) + cc * _hypoexp_sf(np.float64(t), theta, mu))

    f = _log_gap(f, target)
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


# --------------------------------------------------------------------------------------------------
# M/G/1 and M/D/1
# --------------------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------------------
# embedded "skip-free to the left by k" chains (M/D/c and deterministic batch service)
# --------------------------------------------------------------------------------------------------


def _poisson_pmf(mean: float) -> tuple[int, np.ndarray]:
    """Poisson pmf on lo..hi, dropping entries below ``_PMF_EPS``·1e-3 on both sides.

    Returns ``(lo, pmf)`` with ``pmf[i] = P(Poisson(mean) = lo + i)``; the dropped mass (well
    below 1e-16) is not renormalised. Trimming the left tail keeps the chain's matrix banded when
    the mean is large.
    """
    # 15 standard deviations plus a constant is far beyond the ε-tail for every mean (Chernoff).
    hi = int(math.ceil(mean + 15.0 * math.sqrt(mean) + 45.0))
    k = np.arange(hi + 1, dtype=float)
    pmf = np.exp(special.xlogy(k, mean) - mean - special.gammaln(k + 1.0))
    big = np.flatnonzero(pmf > _PMF_EPS * 1e-3)
    return int(big[0]), pmf[big[0] : big[-1] + 1]


def _decay_root(k: int, m: float) -> float:
    """Geometric decay rate 1/z of the stationary tail of N' = (N − k)⁺ + Poisson(m), m < k.

    z > 1 is the root of z^k = exp(m (z − 1)), i.e. of k·ln z − m·(z − 1) = 0.
    """

    def g(z: float) -> float:
        return k * math.log(z) - m * (z - 1.0)

    # g(1) = 0, g'(1) = k − m > 0 and g is concave, so the other root lies right of its maximum
    # z* = k/m; double until g < 0.
    lo = k / m
    hi = 2.0 * lo
    while g(hi) > 0.0:
        hi *= 2.0
    return 1.0 / optimize.brentq(g, lo, hi, xtol=1e-14)


def _auto_states(k: int, m_tail: float, m_max: float) -> int:
    """Truncation level so the neglected stationary mass is ~``_TAIL_EPS``."""
    ln_decay = -math.log(_decay_root(k, m_tail))  # > 0
    n_tail = math.log(1.0 / _TAIL_EPS) / ln_decay
    spread = m_max + 12.0 * math.sqrt(m_max) + 20.0
    n = int(math.ceil(k + spread + n_tail)) + 10
    if n > _MAX_AUTO_STATES:
        raise ValueError(
            f"the queue is too close to saturation for an exact solve: it needs about {n} states "
            f"(> {_MAX_AUTO_STATES}); pass max_states explicitly to accept a truncation"
        )
    return max(n, 50)


def _solve_skip_free_chain(
    n_states: int,
    k: int,
    pmfs: Sequence[tuple[int, np.ndarray]],
    row_pmf: np.ndarray,
    pivot_guess: float,
) -> np.ndarray:
    """Stationary distribution of X' = (X − k)⁺ + A_X on {0..n_states−1}, censored at the top.

    ``A_X`` has pmf ``pmfs[row_pmf[X]]`` (as returned by :func:`_poisson_pmf`). Mass that would
    leave the truncated state space is put on the last state, so the matrix is exactly
    stochastic. Solved as a sparse banded linear system; ``pivot_guess`` is a state expected to
    carry a non-negligible probability.
    """
    rows_l, cols_l, vals_l = [], [], []
    x = np.arange(n_states)
    base = np.maximum(x - k, 0)
    last = n_states - 1
    for j, (lo, pmf) in enumerate(pmfs):
        sel = np.flatnonzero(row_pmf == j)
        if sel.size == 0:
            continue
        w = pmf.size
        r = np.repeat(sel, w)
        col = (base[sel][:, None] + (lo + np.arange(w))[None, :]).ravel()
        val = np.tile(pmf, sel.size)
        inside = col < last
        rows_l.append(r[inside])
        cols_l.append(col[inside])
        vals_l.append(val[inside])
        # everything else (pmf tail and overflow) goes to the last state
        kept = np.bincount(r[inside], weights=val[inside], minlength=n_states)[sel]
        rows_l.append(sel)
        cols_l.append(np.full(sel.size, last))
        vals_l.append(np.maximum(1.0 - kept, 0.0))
    rows = np.concatenate(rows_l)
    cols = np.concatenate(cols_l)
    vals = np.concatenate(vals_l)
    # π (P − I) = 0  <=>  (P − I)^T π^T = 0. The balance equation of the last state (the only
    # dense row) is redundant and is replaced by π_pivot = 1, which keeps the system banded (no
    # LU fill-in); π is normalised afterwards. The pivot must not carry a negligible probability,
    # so if the first guess turns out poor the solve is repeated at the mode.
    at = sparse.coo_matrix((vals, (cols, rows)), shape=(n_states, n_states)).tocsr()
    at = (at - sparse.identity(n_states, format="csr"))[:-1]
    pivot = min(max(int(pivot_guess), 0), n_states - 1)
    for _ in range(2):
        unit = sparse.csr_matrix(([1.0], ([0], [pivot])), shape=(1, n_states))
        system = sparse.vstack([at, unit], format="csc")
        rhs = np.zeros(n_states)
        rhs[-1] = 1.0
        pi = sparse_linalg.spsolve(system, rhs, permc_spec="NATURAL")
        pi = np.maximum(pi, 0.0)
        mode = int(np.argmax(pi))
        if np.isfinite(pi[mode]) and pi[mode] < 1e6:
            break
        pivot = mode
    return pi / pi.sum()


@dataclass(frozen=True, slots=True)
class MDcResult:
    """Exact M/D/c results from :func:`mdc_wait`.

    Attributes:
        wait_mean: mean waiting time in queue E[Wq] (seconds).
        p_wait: probability that an arrival waits, P(Wq > 0) = P(N ≥ c) (PASTA).
        queue_mean: mean number waiting Lq = λ·E[Wq].
        n_states: number of states of the truncated embedded chain that was solved.
        tail_mass: stationary probability of the last (censoring) state; a truncation diagnostic
            that should be negligible (≲ 1e-12) for the numbers to be trusted.
    """

    wait_mean: float
    p_wait: float
    queue_mean: float
    n_states: int
    tail_mass: float


def mdc_wait(lam: float, d: float, c: int, max_states: int | None = None) -> MDcResult:
    """Exact M/D/c waiting-time mean and wait probability via Crommelin's embedded chain.

    The number in system N at times 0, D, 2D, ... satisfies N' = max(N − c, 0) + Poisson(λD): every
    customer in service at a multiple of D has left one period later, and the waiting ones move up.
    Its stationary distribution π (the chain is observed at fixed epochs, so π is also the
    time-stationary distribution) gives Lq = Σ (n − c)⁺ π_n, Wq = Lq/λ and, by PASTA,
    P(wait) = Σ_{n ≥ c} π_n.

    ``max_states=None`` (default) chooses the truncation level from the geometric decay rate of
    the tail so the neglected probability is about 1e-13 (a few hundred states at moderate load;
    more close to saturation). An explicit ``max_states`` is used as given; check ``tail_mass``.

    >>> r = mdc_wait(8.0, 1.0, 10)
    >>> round(r.wait_mean, 5), round(r.p_wait, 4)
    (0.10983, 0.3847)
    """
    lam = _positive("lam", lam)
    d = _positive("d", d)
    c = _count("c", c)
    a = lam * d
    _stable(a / c, "M/D/c queue")
    if max_states is None:
        n_states = _auto_states(c, a, a)
    else:
        n_states = _count("max_states", max_states, minimum=c + 2)
    row_pmf = np.zeros(n_states, dtype=np.intp)
    pi = _solve_skip_free_chain(n_states, c, [_poisson_pmf(a)], row_pmf, pivot_guess=a)
    n = np.arange(n_states)
    lq = float(np.dot(np.maximum(n - c, 0), pi))
    p_wait = float(pi[c:].sum())
    return MDcResult(
        wait_mean=lq / lam,
        p_wait=min(p_wait, 1.0),
        queue_mean=lq,
        n_states=n_states,
        tail_mass=float(pi[-1]),
    )


# --------------------------------------------------------------------------------------------------
# batch service with greedy dynamic batching
# --------------------------------------------------------------------------------------------------


def batch_mmk1_wait_mean(lam: float, mu: float, k: int) -> float:
    """Mean wait for M/M^(K)/1 greedy batching with exponential batch time of rate μ.

    One server; when it frees up (or, if idle, on the first arrival) it takes up to K waiting
    requests as one batch, whose duration is Exp(μ) whatever its size. Stable iff λ < Kμ.

    With r the root in (0, 1) of μ·r^{K+1} − (λ+μ)·r + λ = 0, the stationary probability of
    "busy with n waiting" is A·r^n, A = 1/(μ/λ + 1/(1−r)), so Lq = A·r/(1−r)² and Wq = Lq/λ.
    Since r = 1 is always a root, the polynomial is divided by (r − 1) and r is found as the unique
    root of the increasing function μ·(r + r² + ... + r^K) − λ on (0, 1), which is well conditioned.
    K = 1 reduces to M/M/1.

    >>> round(batch_mmk1_wait_mean(8.0, 2.0, 8), 4)
    0.6458
    """
    lam = _positive("lam", lam)
    mu = _positive("mu", mu)
    k = _count("k", k)
    _stable(lam / (k * mu), "M/M^(K)/1 batch queue")
    r = _batch_mmk1_root(lam, mu, k)
    a = 1.0 / (mu / lam + 1.0 / (1.0 - r))
    lq = a * r / (1.0 - r) ** 2
    return lq / lam


def _batch_mmk1_root(lam: float, mu: float, k: int) -> float:
    def h(r: float) -> float:
        # μ·Σ_{j=1..K} r^j − λ, with the geometric sum in closed form for r < 1
        return mu * r * (-math.expm1(k * math.log(r))) / (1.0 - r) - lam if r > 0.0 else -lam

    # h(0) = −λ < 0 and h(1⁻) = Kμ − λ > 0 (stability), h increasing.
    hi = 1.0 - 1e-15
    if h(hi) <= 0.0:  # pragma: no cover - only at the very edge of stability
        raise ValueError("M/M^(K)/1 batch queue is numerically at saturation")
    return float(optimize.brentq(h, 0.0, hi, xtol=1e-15, rtol=4 * np.finfo(float).eps))


def _batch_times(
    batch_time: Callable[[int], float] | Sequence[float] | float, k: int
) -> np.ndarray:
    """s(b) for b = 0..k as an array (entry 0 unused, set to s(1))."""
    if callable(batch_time):
        s = np.array([float(batch_time(b)) for b in range(1, k + 1)], dtype=float)
    else:
        arr = np.asarray(batch_time, dtype=float)
        if arr.ndim == 0:
            s = np.full(k, float(arr))
        elif arr.ndim == 1:
            if arr.size < k + 1:
                raise ValueError(
                    f"batch_time array is indexed by batch size b (entry 0 unused), so it needs "
                    f"length >= k + 1 = {k + 1}, got length {arr.size}"
                )
            s = arr[1 : k + 1].copy()
        else:
            raise ValueError("batch_time must be a callable, a scalar or a 1-D array")
    if not np.all(np.isfinite(s)) or np.any(s <= 0.0):
        raise ValueError(f"batch times s(b) must be finite and > 0 for b = 1..{k}, got {s}")
    return np.concatenate([[s[0]], s])


@dataclass(frozen=True, slots=True)
class BatchResult:
    """Exact deterministic-batch-time results from :func:`batch_deterministic_wait`.

    Attributes:
        wait_mean: mean waiting time before a request's batch starts, E[Wq] (seconds).
        queue_mean: time-average number waiting Lq = λ·E[Wq].
        utilisation: long-run fraction of time the server is busy.
        batch_mean: mean batch size (requests per batch).
        n_states: number of states of the truncated embedded chain that was solved.
        tail_mass: stationary probability of the last (censoring) state (truncation diagnostic).
    """

    wait_mean: float
    queue_mean: float
    utilisation: float
    batch_mean: float
    n_states: int
    tail_mass: float


def batch_deterministic_wait(
    lam: float,
    k: int,
    batch_time: Callable[[int], float] | Sequence[float] | float,
    max_states: int | None = None,
) -> BatchResult:
    """Exact greedy dynamic batching with a deterministic, size-dependent batch time s(b).

    One server, Poisson(λ) arrivals, maximum batch size K, no batching delay: when the server
    frees up it takes b = min(Q, K) of the Q waiting requests; if none is waiting it idles until
    the next arrival and starts a batch of b = 1 at once.

    ``batch_time`` is a callable ``b -> seconds``, an array indexed by batch size (``s[b]``,
    entry 0 unused, length >= K+1) or a scalar (constant time). Stable iff λ·s(K) < K.

    Method (renewal-reward over the embedded chain at batch completions). Let Q be the number
    waiting just after a completion, R = max(Q − K, 0) those left behind and s = s(b) the next
    batch's duration (b = 1 and an Exp(λ) idle period first when Q = 0). Then
    Q' = R + Poisson(λ·s). A cycle (idle period, if any, plus one batch) has expected length
    s + 1{Q=0}/λ; during it the queue holds R plus the arrivals so far (zero while idle, since
    the first arrival enters service at once), so its expected area is R·s + λ·s²/2. Hence

        Lq = E_π[R·s + λ·s²/2] / E_π[s + 1{Q=0}/λ],   Wq = Lq/λ.

    This is the reference formula, taken literally; it reproduces the worked numbers and
    reduces to M/D/1 Pollaczek–Khinchine for K = 1. The truncation level is chosen as in
    :func:`mdc_wait`.

    >>> r = batch_deterministic_wait(8.0, 8, lambda b: 0.2 + 0.05 * b)
    >>> round(r.wait_mean, 4)
    0.1769
    """
    lam = _positive("lam", lam)
    k = _count("k", k)
    s = _batch_times(batch_time, k)
    _stable(lam * s[k] / k, "batch queue (lam * s(K) / K)")
    m = lam * s
    if max_states is None:
        n_states = _auto_states(k, m[k], float(m.max()))
    else:
        n_states = _count("max_states", max_states, minimum=k + 2)

    q = np.arange(n_states)
    b = np.where(q == 0, 1, np.minimum(q, k))
    pmfs = [_poisson_pmf(m[j]) if j > 0 else (0, np.array([1.0])) for j in range(k + 1)]
    pi = _solve_skip_free_chain(n_states, k, pmfs, b, pivot_guess=m[k])

    sq = s[b]
    r = np.maximum(q - k, 0)
    area = float(np.dot(pi, r * sq + 0.5 * lam * sq * sq))
    busy = float(np.dot(pi, sq))
    cycle = busy + float(pi[0]) / lam
    lq = area / cycle
    return BatchResult(
        wait_mean=lq / lam,
        queue_mean=lq,
        utilisation=busy / cycle,
        batch_mean=float(np.dot(pi, b)),
        n_states=n_states,
        tail_mass=float(pi[-1]),
    )


def batch_deterministic_wait_mean(
    lam: float,
    k: int,
    batch_time: Callable[[int], float] | Sequence[float] | float,
    max_states: int | None = None,
) -> float:
    """Mean wait E[Wq] for greedy batching with deterministic batch time s(b).

    Shorthand for ``batch_deterministic_wait(...).wait_mean``; see there for the model and method.

    >>> round(batch_deterministic_wait_mean(8.0, 8, lambda b: 0.5), 4)
    0.2535
    """
    return batch_deterministic_wait(lam, k, batch_time, max_states).wait_mean
