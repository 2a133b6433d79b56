"""Traffic with shared prefixes (capsim.workload.sessions): sessions, system prompts, checks,
and what prefix caching does to a session scenario end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

from capsim.errors import InputError
from capsim.evaluate import Config, simulate, stream_for
from capsim.load import load_scenario
from capsim.spec.scenario import TokenLengths
from capsim.spec.sessions import Sessions, SystemPrompts, Turns
from capsim.workload.sessions import mean_turns, session_traffic, zipf_choice
from capsim.workload.streams import expected_requests

from .conftest import ROOT

SCEN = ROOT / "scenarios" / "chat_sessions.yaml"
TOK = TokenLengths(prompt_median=1, prompt_sigma=0, output_median=150, output_sigma=0.7)


def _sessions(**kw) -> Sessions:
    base = dict(turns=Turns(mean=4, max=50), think_time_s=20.0, message={"median": 60})
    return Sessions(**{**base, **kw})


def test_turn_prompts_carry_the_whole_history():
    """Turn n's prompt = system prompt + earlier messages and outputs + its message; the turns
    of a session are think times apart and share the session's stream."""
    spec = _sessions(turns=Turns(kind="fixed", mean=5), think="fixed")
    sysp = SystemPrompts(lengths=[500, 300], zipf_exponent=0.0)
    t = session_traffic(spec, np.array([0.0]), TOK, sysp, 1e9, np.random.default_rng(2))
    assert len(t.arrival) == 5 and np.allclose(np.diff(t.arrival), 20.0)
    assert len(set(t.prefixes.stream.tolist())) == 1
    L = sysp.lengths[int(t.prefixes.sys_index[0])]
    assert t.prompt[0] == L + 60  # messages: median 60, sigma 0
    assert np.all(t.prompt[1:] - t.prompt[:-1] - t.output[:-1] == 60)


def test_geometric_turns_mean_and_zipf_popularity():
    """Mean turns match E[min(G, max)]; system prompts follow 1/k^s (chi-square, 4 bins)."""
    spec = _sessions(turns=Turns(mean=3, max=6))
    rng = np.random.default_rng(5)
    starts = np.zeros(20000)
    t = session_traffic(spec, starts, TOK.model_copy(update={"prompt_max": 10**9}), None,
                        1e12, rng)  # fmt: skip
    per_session = len(t.arrival) / 20000
    assert abs(per_session - mean_turns(spec)) < 0.05
    assert abs(mean_turns(spec) - (1 - (2 / 3) ** 6) * 3) < 1e-12
    sp = SystemPrompts(lengths=[1, 2, 3, 4], zipf_exponent=1.2)
    k = zipf_choice(sp, 40000, np.random.default_rng(1))
    p = 1 / np.arange(1, 5) ** 1.2
    exp = 40000 * p / p.sum()
    chi2 = float((((np.bincount(k) - exp) ** 2) / exp).sum())
    assert chi2 < 16.3  # 99.9% point of chi-square with 3 degrees of freedom


def test_session_ends_before_prompt_max():
    spec = _sessions(turns=Turns(kind="fixed", mean=50, max=50), think="fixed")
    tok = TOK.model_copy(update={"prompt_max": 2000})
    t = session_traffic(spec, np.array([0.0]), tok, None, 1e9, np.random.default_rng(0))
    assert 1 <= len(t.arrival) < 50 and t.prompt.max() <= 2000


def _write(tmp_path, change) -> str:
    d = yaml.safe_load(SCEN.read_text())
    change(d)
    p = tmp_path / "s.yaml"
    p.write_text(yaml.safe_dump(d))
    return str(p)


@pytest.mark.parametrize(
    "change,where,says",
    [
        (lambda d: d["traffic"].pop("tokens"), "traffic", "traffic.sessions needs traffic.tokens"),
        (
            lambda d: d["traffic"].update(arrivals={"kind": "closed", "concurrency": 4}),
            "traffic",
            "needs open-loop arrivals",
        ),
        (
            lambda d: d["traffic"]["sessions"]["turns"].update(kind="fixed", mean=2.5),
            "turns",
            "whole number",
        ),
        (
            lambda d: d["traffic"]["system_prompts"].update(lengths=[100, 0]),
            "lengths",
            ">= 1 token",
        ),
        (lambda d: d["traffic"]["sessions"].update(turns={"mean": 0.5}), "mean", "greater"),
        (
            lambda d: d["traffic"]["sessions"].update(think_s=3),
            "sessions",
            "think_s",
        ),
    ],
)
def test_bad_session_traffic_is_an_input_error(tmp_path, change, where, says):
    with pytest.raises(InputError) as e:
        load_scenario(_write(tmp_path, change))
    text = str(e.value)
    assert where in text and says in text, text


def test_stream_counts_and_expected_requests():
    s = load_scenario(SCEN)
    st = stream_for(s, 0)
    n, _ = expected_requests(s)
    assert st.prefixes is not None and len(st) > 1000
    assert 0.7 * n < len(st) <= 1.1 * n  # an upper estimate: the horizon cuts sessions


def test_prefix_caching_saves_prefill_and_ttft():
    """The shipped session scenario on 4 x L4: caching on skips most prompt tokens and lowers
    p99 TTFT; off shows no hits."""
    s = load_scenario(SCEN)
    eng = s.fleet.batching.engine  # type: ignore[union-attr]
    off_eng = eng.model_copy(update={"enable_prefix_caching": False})
    off = s.model_copy(
        update={
            "fleet": s.fleet.model_copy(
                update={"batching": s.fleet.batching.model_copy(update={"engine": off_eng})}
            )
        }  # fmt: skip
    )
    cfg = Config("l4", "fp8", 4)
    on_e = simulate(s, cfg, replications=2, sequential=False)
    off_e = simulate(off, cfg, replications=2, sequential=False)
    sc_on, sc_off = on_e.summary.scalars, off_e.summary.scalars
    assert "prefix_hit_rate_tokens" not in sc_off
    assert sc_on["prefix_hit_rate_tokens"].mean > 0.4
    assert sc_on["prefill_tokens_saved"].mean > 0
    saved = sc_on["prefill_tokens_saved"].mean
    assert saved / (saved + sc_on["prefill_tokens_computed"].mean) > 0.4
    ttft = {k: e.summary.quantiles["ttft"][99.0].mean for k, e in (("on", on_e), ("off", off_e))}
    assert ttft["on"] < 0.7 * ttft["off"]


def test_plan_compares_prefix_caching_from_the_cli():
    """``plan --compare-prefix-caching`` plans both ways and says what caching saved."""
    from click.testing import CliRunner

    from capsim.cli import main

    res = CliRunner().invoke(main, ["plan", str(SCEN), "--compare-prefix-caching", "--quiet"])
    assert res.exit_code == 0, res.output
    out = res.output
    assert "Prefix caching (enable_prefix_caching on vs off" in out
    assert "with caching" in out and "without caching" in out
    assert "p99 TTFT" in out and "prefill tokens saved" in out
    res = CliRunner().invoke(
        main, ["plan", str(SCEN), "--compare-prefix-caching", "--quiet", "--format", "json"]
    )
    d = json.loads(res.output)["prefix_caching"]
    assert d["ttft_p99_ms_with"] < d["ttft_p99_ms_without"]
    assert d["prefill_tokens_saved"] > 0


def test_compare_without_shared_prefixes_is_an_input_error():
    from click.testing import CliRunner

    from capsim.cli import main

    chat = ROOT / "scenarios" / "chatbot.yaml"
    res = CliRunner().invoke(main, ["plan", str(chat), "--compare-prefix-caching", "--quiet"])
    assert res.exit_code == 2 and "nothing to compare" in res.output


def test_trace_session_column_shares_the_history(tmp_path):
    """A trace with a conversation id: turn 2's prompt (turn 1's prompt + output + message)
    hits turn 1's full blocks on the same replica; rows of other conversations do not."""
    from capsim.sim.llm_engine import run_llm
    from capsim.sim.llm_types import EngineLimits
    from capsim.spec.scenario import Trace
    from capsim.workload.traces import trace_stream

    csv = tmp_path / "t.csv"
    csv.write_text(
        "TIMESTAMP,conv,ContextTokens,GeneratedTokens\n"
        "0,a,200,100\n1,b,200,100\n30,a,350,10\n31,c,350,10\n"
    )
    spec = Trace(kind="trace", path=str(csv), timestamp_format="seconds",
                 prompt_tokens_column="ContextTokens", output_tokens_column="GeneratedTokens",
                 session_column="conv")  # fmt: skip
    st = trace_stream(spec, 40.0, np.random.default_rng(0))
    assert st.prefixes is not None
    assert st.prefixes.stream.tolist() == [0, 1, 0, 2]
    p, o = st.prompt_tokens, st.output_tokens
    chains = st.prefixes.chains(p, o, 16)

    class Fast:
        def iteration_time(self, *a, **k):
            return 0.01

    r = run_llm(st.arrival, p, o, Fast(), EngineLimits(prefix_caching=True), chains=chains)
    # turn 1 held 299 tokens at its end: 18 full blocks = 288 tokens; the new row of "c" nothing
    assert r.cached_tokens is not None and r.cached_tokens.tolist() == [0, 0, 288, 0]
    bad = Trace(kind="trace", path=str(csv), timestamp_format="seconds", session_column="x")
    with pytest.raises(InputError, match="no session column 'x'"):
        trace_stream(bad, 40.0, np.random.default_rng(0))


def test_idle_ttft_check_counts_only_what_caching_cannot_save():
    """On one L4 the p99 whole prompt (history included, ~5,600 tokens) takes ~0.7 s to
    prefill, the p99 part past the cacheable prefix (~860 tokens) ~0.1 s: with a 400 ms TTFT
    target the planner's idle check rules the card out only with caching off."""
    from capsim.load import load_catalog
    from capsim.planning.prefix import caching
    from capsim.sim.llm_adapter import make_llm_service

    s = load_scenario(SCEN)
    s = s.model_copy(update={"slo": s.slo.model_copy(update={"ttft_ms": 400.0})})
    cat = load_catalog()
    on, off = caching(s, True), caching(s, False)
    assert make_llm_service(on, cat["l4"], "fp8", 1).idle_latency_violation(on) is None
    why = make_llm_service(off, cat["l4"], "fp8", 1).idle_latency_violation(off)
    assert why is not None and "TTFT target 400 ms" in why
