"""Exactly solved queues with many servers or batch service: M/D/c and batch-service queues.

No simulation and no random numbers: embedded Markov chains solved exactly (Poisson mass below
``_PMF_EPS`` folded into the last retained state). Like :mod:`capsim.analysis.theory_mmc`, every
function raises :class:`ValueError` for a bad argument and for an unstable system (ρ ≥ 1).

>>> round(mdc_wait(8.0, 1.0, 10).wait_mean, 4)
0.1098
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import optimize, sparse, special
from scipy.sparse import linalg as sparse_linalg

from capsim.analysis.theory_mmc import (
    _MAX_AUTO_STATES,
    _PMF_EPS,
    _TAIL_EPS,
    _count,
    _positive,
    _stable,
)


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
