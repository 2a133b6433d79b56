"""Traffic generation: rates, variability, patterns, traces, and common random numbers."""

from __future__ import annotations

import numpy as np
import pytest

from capsim.spec.scenario import Burst, Diurnal, Piecewise, Poisson, Renewal, Trace
from capsim.workload.arrivals import arrival_times, rate_multiplier
from capsim.workload.traces import read_trace, trace_stream
from tests.conftest import ROOT


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def test_poisson_rate_and_exponential_gaps():
    t = arrival_times(Poisson(kind="poisson", rate_rps=50.0), 2000.0, rng())
    gaps = np.diff(t)
    assert len(t) / 2000.0 == pytest.approx(50.0, rel=0.02)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.03)
    assert (t >= 0).all() and (t < 2000.0).all() and (np.diff(t) >= 0).all()


@pytest.mark.parametrize("cv", [0.0, 0.5, 3.0])
def test_renewal_keeps_its_coefficient_of_variation(cv):
    t = arrival_times(Renewal(kind="renewal", rate_rps=20.0, cv=cv), 5000.0, rng(1))
    gaps = np.diff(t)
    assert len(t) / 5000.0 == pytest.approx(20.0, rel=0.05)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, abs=0.05 + 0.05 * cv)


def test_diurnal_mean_peak_and_trough():
    arr = Poisson(
        kind="poisson",
        rate_rps=10.0,
        pattern=Diurnal(kind="diurnal", peak_to_trough=4, peak_hour=12),
    )
    m = rate_multiplier(arr, np.array([12 * 3600.0, 0.0]))
    assert m[0] == pytest.approx(1.6) and m[1] == pytest.approx(0.4)  # 4:1 around a mean of 1
    t = arrival_times(arr, 86400.0, rng(2))
    assert len(t) / 86400.0 == pytest.approx(10.0, rel=0.02)
    noon = ((t > 11.5 * 3600) & (t < 12.5 * 3600)).sum()
    midnight = (t < 0.5 * 3600).sum() + (t > 23.5 * 3600).sum()
    assert noon / midnight == pytest.approx(4.0, rel=0.15)


def test_compressed_day_keeps_rates():
    arr = Poisson(
        kind="poisson",
        rate_rps=10.0,
        pattern=Diurnal(kind="diurnal", peak_to_trough=4, peak_hour=12),
    )
    t = arrival_times(arr, 864.0, rng(3), time_scale=0.01)  # a day in 864 simulated seconds
    assert len(t) / 864.0 == pytest.approx(10.0, rel=0.05)
    assert ((t > 426) & (t < 438)).sum() / 12 == pytest.approx(16.0, rel=0.3)  # noon: 1.6x


def test_piecewise_and_bursts():
    arr = Poisson(
        kind="poisson",
        rate_rps=100.0,
        pattern=Piecewise(kind="piecewise", times_s=[0, 100], multipliers=[1, 2]),
        bursts=[Burst(start_s=150, duration_s=10, multiplier=3)],
    )
    m = rate_multiplier(arr, np.array([50.0, 120.0, 155.0, 170.0]))
    assert m.tolist() == [1.0, 2.0, 6.0, 2.0]
    t = arrival_times(arr, 200.0, rng(4))
    assert ((t >= 150) & (t < 160)).sum() == pytest.approx(6000, rel=0.05)


def test_same_generator_state_same_stream_and_streams_differ_by_seed():
    a = arrival_times(Poisson(kind="poisson", rate_rps=5.0), 100.0, rng(7))
    b = arrival_times(Poisson(kind="poisson", rate_rps=5.0), 100.0, rng(7))
    c = arrival_times(Poisson(kind="poisson", rate_rps=5.0), 100.0, rng(8))
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def _trace(tmp_path, rows: str):
    p = tmp_path / "trace.csv"
    p.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n" + rows)
    return p


def test_trace_replay_datetime_speedup_and_rate_scale(tmp_path):
    rows = "".join(f"2023-11-16 18:00:{s:02d}.5000000,{100 + s},{10 + s}\n" for s in range(0, 60))
    p = _trace(tmp_path, rows)
    spec = Trace(
        kind="trace",
        path=str(p),
        prompt_tokens_column="ContextTokens",
        output_tokens_column="GeneratedTokens",
    )
    data = read_trace(spec)
    assert data.times[0] == 0.0 and data.times[-1] == pytest.approx(59.0)
    assert data.prompt[:2].tolist() == [100, 101]
    fast = trace_stream(spec.model_copy(update={"speedup": 2.0}), 1e9, rng())
    assert fast.arrival[-1] == pytest.approx(29.5)
    double = trace_stream(spec.model_copy(update={"rate_scale": 2.0}), 1e9, rng())
    assert len(double) == 120 and double.arrival.max() < 59.0 + 1e-9
    half = trace_stream(spec.model_copy(update={"rate_scale": 0.5}), 1e9, rng())
    assert 15 < len(half) < 45
    assert (half.output_tokens == half.prompt_tokens - 90).all()  # sizes stay with their rows


def test_trace_rows_sorted_and_seconds_column(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text("t\n3.0\n1.0\n2.0\n")
    data = read_trace(Trace(kind="trace", path=str(p), timestamp_column="t"))
    assert data.times.tolist() == [0.0, 1.0, 2.0]


def test_azure_conversation_trace_statistics():
    spec = Trace(
        kind="trace",
        path=str(ROOT / "scenarios" / "traces" / "azure_conv_2023.csv"),  # the shipped copy
        prompt_tokens_column="ContextTokens",
        output_tokens_column="GeneratedTokens",
    )
    data = read_trace(spec)
    assert len(data.times) == 19366
    assert len(data.times) / data.times[-1] == pytest.approx(5.5, rel=0.1)  # ~5.5 req/s
    gaps = np.diff(data.times)
    assert gaps.std() / gaps.mean() == pytest.approx(1.1, rel=0.15)
    assert np.median(data.prompt) == pytest.approx(1020, rel=0.05)
