"""Checks of capsim.analysis.theory against the worked numbers in the reference and basic identities.

Worked numbers are compared to every digit the reference prints: the tolerance is half a unit in
the last printed digit (always tighter than a relative 1e-3).
"""

from __future__ import annotations

import doctest
import math

import numpy as np
import pytest

import capsim.analysis.theory as q
from capsim.analysis import theory_batch, theory_mmc


def digits(value: str) -> pytest.approx:
    """pytest.approx matching a printed decimal to all its digits (±half a unit in the last)."""
    decimals = len(value.split(".")[1]) if "." in value else 0
    return pytest.approx(float(value), abs=0.5 * 10.0**-decimals, rel=0)


# --------------------------------------------------------------------------------------------------
# worked numbers from the reference
# --------------------------------------------------------------------------------------------------


class TestWorkedMMc:
    lam, mu, c = 8.0, 1.0, 10

    def test_erlang_c(self):
        assert q.erlang_c(self.c, self.lam / self.mu) == digits("0.40918")

    def test_wait_mean(self):
        assert q.mmc_wait_mean(self.lam, self.mu, self.c) == digits("0.2046")

    def test_response_mean(self):
        assert q.mmc_response_mean(self.lam, self.mu, self.c) == digits("1.2046")

    def test_wait_p99(self):
        assert q.mmc_wait_quantile(self.lam, self.mu, self.c, 0.99) == digits("1.8558")

    def test_response_p99(self):
        assert q.mmc_response_quantile(self.lam, self.mu, self.c, 0.99) == digits("4.9461")

    def test_response_p50(self):
        assert q.mmc_response_quantile(self.lam, self.mu, self.c, 0.5) == digits("0.912")


def test_worked_mg1_deterministic():
    assert q.md1_wait_mean(0.8, 1.0) == digits("2.0")
    assert q.mg1_wait_mean(0.8, 1.0, 1.0) == digits("2.0")
    # "M/M/1 would give 4.0": exponential service has E[S^2] = 2/mu^2
    assert q.mg1_wait_mean(0.8, 1.0, 2.0) == digits("4.0")


def test_worked_mdc():
    r = q.mdc_wait(8.0, 1.0, 10)
    assert r.wait_mean == digits("0.10983")
    assert r.p_wait == digits("0.3847")
    assert r.tail_mass < 1e-12


def test_worked_batch_mmk1():
    lam, mu, k = 8.0, 2.0, 8
    assert theory_batch._batch_mmk1_root(lam, mu, k) == digits("0.84300")
    assert q.batch_mmk1_wait_mean(lam, mu, k) == digits("0.6458")


def test_worked_batch_deterministic_constant():
    assert q.batch_deterministic_wait_mean(8.0, 8, lambda b: 0.5) == digits("0.2535")


def test_worked_batch_deterministic_size_dependent():
    assert q.batch_deterministic_wait_mean(8.0, 8, lambda b: 0.2 + 0.05 * b) == digits("0.1769")


def test_docstring_examples():
    results = [
        doctest.testmod(m, optionflags=doctest.ELLIPSIS) for m in (q, theory_mmc, theory_batch)
    ]
    assert sum(r.attempted for r in results) > 10
    assert sum(r.failed for r in results) == 0


# --------------------------------------------------------------------------------------------------
# Erlang B / C and M/M/c properties
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("c,a", [(1, 0.5), (3, 2.2), (10, 8.0), (20, 25.0)])
def test_erlang_b_matches_closed_form(c, a):
    terms = [a**k / math.factorial(k) for k in range(c + 1)]
    assert q.erlang_b(c, a) == pytest.approx(terms[-1] / sum(terms), rel=1e-12)


def test_erlang_b_large_c_is_finite():
    b = q.erlang_b(5000, 4900.0)
    assert 0.0 < b < 1.0


def test_erlang_c_range_and_monotone_in_c():
    a = 7.5
    values = [q.erlang_c(c, a) for c in range(8, 30)]
    assert all(0.0 <= v <= 1.0 for v in values)
    assert all(x > y for x, y in zip(values, values[1:], strict=False))
    assert q.erlang_c(1, 0.6) == pytest.approx(0.6, rel=1e-14)  # M/M/1: C = rho


def test_mm1_consistency():
    lam, mu = 0.7, 1.0
    assert q.mmc_response_quantile(lam, mu, 1, 0.99) == pytest.approx(
        q.mm1_response_quantile(lam, mu, 0.99), rel=1e-10
    )
    assert q.mm1_response_quantile(lam, mu, 0.99) == pytest.approx(math.log(100.0) / 0.3)
    assert q.mmc_response_mean(lam, mu, 1) == pytest.approx(1.0 / (mu - lam), rel=1e-12)


def _response_sf_by_quadrature(t, lam, mu, c):
    """P(T > t) = P(S > t) + ∫_0^t μ e^{−μs} P(Wq > t − s) ds, by composite Simpson.

    P(Wq > x) = C e^{−θx} for x ≥ 0 already accounts for the atom of Wq at 0.
    """
    cc = q.erlang_c(c, lam / mu)
    theta = c * mu - lam
    s = np.linspace(0.0, t, 4001)
    f = mu * np.exp(-mu * s) * cc * np.exp(-theta * (t - s))
    h = s[1] - s[0] if t > 0 else 0.0
    integral = h / 3.0 * (f[0] + f[-1] + 4.0 * f[1:-1:2].sum() + 2.0 * f[2:-1:2].sum())
    return math.exp(-mu * t) + integral


@pytest.mark.parametrize(
    "lam,mu,c",
    [(8.0, 1.0, 10), (9.0, 1.0, 10), (9.0 + 1e-9, 1.0, 10), (2.0, 1.5, 2), (0.3, 1.0, 1)],
)
def test_response_sf_against_quadrature(lam, mu, c):
    # (9, 1, 10) has θ = μ exactly; 9 + 1e-9 is the near-cancellation case.
    for t in (0.0, 0.3, 1.0, 4.0, 12.0):
        expected = _response_sf_by_quadrature(t, lam, mu, c)
        assert q.mmc_response_sf(t, lam, mu, c) == pytest.approx(expected, rel=1e-9, abs=1e-15)


def test_response_sf_vectorised_and_quantile_inverse():
    lam, mu, c = 8.0, 1.0, 10
    t = np.array([-1.0, 0.0, 1.0, 5.0, 1e6])
    sf = q.mmc_response_sf(t, lam, mu, c)
    assert sf.shape == t.shape
    assert sf[0] == 1.0 and sf[1] == pytest.approx(1.0) and sf[-1] == 0.0
    assert np.all(np.diff(sf) <= 0.0)
    for p in (0.1, 0.5, 0.9, 0.99, 0.999999):
        tp = q.mmc_response_quantile(lam, mu, c, p)
        assert q.mmc_response_sf(tp, lam, mu, c) == pytest.approx(1.0 - p, rel=1e-9)
    assert q.mmc_response_quantile(lam, mu, c, 0.0) == 0.0


def test_wait_quantile_and_sf():
    lam, mu, c = 8.0, 1.0, 10
    cc = q.erlang_c(c, lam / mu)
    assert q.mmc_wait_quantile(lam, mu, c, 0.5) == 0.0  # most arrivals do not wait
    t99 = q.mmc_wait_quantile(lam, mu, c, 0.99)
    assert q.mmc_wait_sf(t99, lam, mu, c) == pytest.approx(0.01, rel=1e-12)
    assert q.mmc_wait_sf(0.0, lam, mu, c) == pytest.approx(cc)
    # the response time dominates the wait
    assert q.mmc_response_quantile(lam, mu, c, 0.99) > t99


# --------------------------------------------------------------------------------------------------
# M/D/c
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("lam,d", [(0.3, 1.0), (0.8, 1.0), (4.5, 0.2), (0.97, 1.0)])
def test_mdc_with_one_server_is_md1(lam, d):
    r = q.mdc_wait(lam, d, 1)
    assert r.wait_mean == pytest.approx(q.md1_wait_mean(lam, d), rel=1e-8)
    assert r.p_wait == pytest.approx(lam * d, rel=1e-8)  # P(wait) = rho for one server


def test_mdc_properties():
    lam, d, c = 8.0, 1.0, 10
    r = q.mdc_wait(lam, d, c)
    assert r.queue_mean == pytest.approx(lam * r.wait_mean)  # Little
    # deterministic service waits less than exponential, and less often
    assert r.wait_mean < q.mmc_wait_mean(lam, 1.0 / d, c)
    assert r.p_wait < q.erlang_c(c, lam * d)
    # an explicit truncation level gives the same answer
    r300 = q.mdc_wait(lam, d, c, max_states=300)
    assert r300.n_states == 300
    assert r300.wait_mean == pytest.approx(r.wait_mean, rel=1e-9)
    # more servers, less waiting
    assert q.mdc_wait(lam, d, 11).wait_mean < r.wait_mean


def test_mdc_result_is_frozen():
    r = q.mdc_wait(8.0, 1.0, 10)
    with pytest.raises(AttributeError):
        r.wait_mean = 0.0


# --------------------------------------------------------------------------------------------------
# batching
# --------------------------------------------------------------------------------------------------


def test_batch_mmk1_root_and_k1():
    lam, mu, k = 8.0, 2.0, 8
    r = theory_batch._batch_mmk1_root(lam, mu, k)
    assert mu * r ** (k + 1) - (lam + mu) * r + lam == pytest.approx(0.0, abs=1e-12)
    # K = 1 is M/M/1
    assert q.batch_mmk1_wait_mean(0.6, 1.0, 1) == pytest.approx(0.6 / (1.0 - 0.6), rel=1e-10)


@pytest.mark.parametrize("lam,s", [(0.3, 1.0), (0.8, 1.0), (1.6, 0.5)])
def test_batch_deterministic_k1_is_md1(lam, s):
    r = q.batch_deterministic_wait(lam, 1, lambda b: s)
    assert r.wait_mean == pytest.approx(q.md1_wait_mean(lam, s), rel=1e-8)
    assert r.utilisation == pytest.approx(lam * s, rel=1e-8)
    assert r.batch_mean == pytest.approx(1.0)


def test_batch_deterministic_input_forms_agree():
    lam, k = 8.0, 8
    s = [0.0] + [0.2 + 0.05 * b for b in range(1, k + 1)]  # indexed by batch size, entry 0 unused
    by_callable = q.batch_deterministic_wait_mean(lam, k, lambda b: 0.2 + 0.05 * b)
    assert q.batch_deterministic_wait_mean(lam, k, np.array(s)) == pytest.approx(by_callable)
    assert q.batch_deterministic_wait_mean(lam, k, 0.5) == pytest.approx(
        q.batch_deterministic_wait_mean(lam, k, lambda b: 0.5)
    )


def test_batch_deterministic_identities():
    lam, k = 8.0, 8
    r = q.batch_deterministic_wait(lam, k, lambda b: 0.2 + 0.05 * b)
    assert r.queue_mean == pytest.approx(lam * r.wait_mean)
    assert 1.0 <= r.batch_mean <= k
    # throughput = lam: batches per second x mean batch size, and busy fraction = rate x mean s
    assert 0.0 < r.utilisation < 1.0
    assert r.tail_mass < 1e-12


def test_batch_deterministic_monotone_in_k():
    # With a constant batch time a larger maximum batch can only help.
    waits = [q.batch_deterministic_wait_mean(1.8, k, 0.5) for k in range(1, 9)]
    assert all(x > y for x, y in zip(waits, waits[1:], strict=False))


# --------------------------------------------------------------------------------------------------
# argument checking
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        lambda: q.erlang_c(10, 10.0),
        lambda: q.erlang_c(10, 12.0),
        lambda: q.mmc_wait_mean(10.0, 1.0, 10),
        lambda: q.mmc_wait_quantile(11.0, 1.0, 10, 0.99),
        lambda: q.mmc_response_sf(1.0, 10.0, 1.0, 10),
        lambda: q.mmc_response_quantile(10.5, 1.0, 10, 0.5),
        lambda: q.mmc_response_mean(10.0, 1.0, 10),
        lambda: q.mm1_response_quantile(1.0, 1.0, 0.99),
        lambda: q.mg1_wait_mean(1.0, 1.0, 2.0),
        lambda: q.md1_wait_mean(1.25, 0.8),
        lambda: q.mdc_wait(10.0, 1.0, 10),
        lambda: q.batch_mmk1_wait_mean(16.0, 2.0, 8),
        lambda: q.batch_deterministic_wait_mean(16.0, 8, 0.5),
        lambda: q.batch_deterministic_wait_mean(8.0, 8, lambda b: 0.5 + 0.1 * b),
    ],
)
def test_unstable_raises(call):
    with pytest.raises(ValueError, match="unstable"):
        call()


@pytest.mark.parametrize(
    "call",
    [
        lambda: q.erlang_b(-1, 1.0),
        lambda: q.erlang_b(3, -1.0),
        lambda: q.erlang_c(0, 0.5),
        lambda: q.erlang_c(2.5, 1.0),
        lambda: q.erlang_c(True, 0.5),
        lambda: q.mmc_wait_mean(-1.0, 1.0, 2),
        lambda: q.mmc_wait_mean(1.0, 0.0, 2),
        lambda: q.mmc_wait_mean(float("nan"), 1.0, 2),
        lambda: q.mmc_wait_quantile(1.0, 1.0, 2, 1.0),
        lambda: q.mmc_response_quantile(1.0, 1.0, 2, -0.1),
        lambda: q.mm1_response_quantile(0.5, 1.0, 1.5),
        lambda: q.mg1_wait_mean(0.5, 1.0, 0.5),  # E[S^2] < E[S]^2
        lambda: q.md1_wait_mean(0.5, 0.0),
        lambda: q.mdc_wait(1.0, 1.0, 2, max_states=2),
        lambda: q.batch_mmk1_wait_mean(1.0, 1.0, 0),
        lambda: q.batch_deterministic_wait_mean(1.0, 4, [0.1, 0.2, 0.3, 0.4]),  # too short
        lambda: q.batch_deterministic_wait_mean(1.0, 2, lambda b: 0.0),
        lambda: q.batch_deterministic_wait_mean(1.0, 2, "fast"),
    ],
)
def test_bad_arguments_raise(call):
    with pytest.raises(ValueError):
        call()


def test_integral_float_counts_accepted():
    assert q.erlang_c(10.0, 8.0) == q.erlang_c(10, 8.0)
    assert q.erlang_c(np.int64(10), 8.0) == q.erlang_c(10, 8.0)
