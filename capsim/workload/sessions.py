"""Traffic with shared prefixes: multi-turn sessions and shared system prompts.

Turn n of a session sends the session's token stream so far (system prompt, earlier messages
and outputs) plus a new message; see :mod:`capsim.workload.prefixes` for the streams and the
KV-block keys the engine's prefix cache uses.

>>> from capsim.spec.sessions import Turns
>>> spec = Sessions(turns=Turns(kind="geometric", mean=3), think_time_s=30,
...                 message={"median": 80, "sigma": 0.5})
>>> round(mean_turns(spec), 3)
3.0
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from capsim.spec.scenario import Tokens
from capsim.spec.sessions import Sessions, SystemPrompts
from capsim.workload.prefixes import SharedPrefixes
from capsim.workload.tokens import token_lengths


@dataclass(frozen=True)
class PrefixedTraffic:
    """Requests with shared prefixes: sorted arrivals, token lengths and their streams."""

    arrival: np.ndarray
    prompt: np.ndarray
    output: np.ndarray
    prefixes: SharedPrefixes


def zipf_choice(spec: SystemPrompts, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` system-prompt indices, index k (0-based) with probability ∝ 1 / (k + 1)^s.

    >>> spec = SystemPrompts(lengths=[100, 200, 300], zipf_exponent=1.0)
    >>> np.bincount(zipf_choice(spec, 11000, np.random.default_rng(1))).round(-2).tolist()  # 6:3:2
    [5900, 3000, 2000]
    """
    k = len(spec.lengths)
    p = 1.0 / np.arange(1, k + 1) ** spec.zipf_exponent
    return rng.choice(k, size=n, p=p / p.sum())


def with_system_prompts(
    spec: SystemPrompts, prompt: np.ndarray, output: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, SharedPrefixes]:
    """Single requests behind shared system prompts: prompt = system prompt + the drawn prompt;
    each request is its own stream."""
    k = zipf_choice(spec, len(prompt), rng)
    lengths = np.asarray(spec.lengths, dtype=np.int64)
    n = len(prompt)
    return prompt + lengths[k], SharedPrefixes(np.arange(n), k, lengths[k])


def mean_turns(spec: Sessions) -> float:
    """Expected turns per session (geometric: E[min(G, max)] = (1 - (1 - p)^max) / p).

    >>> from capsim.spec.sessions import Turns
    >>> round(mean_turns(Sessions(turns=Turns(mean=4, max=1000), think_time_s=1,
    ...                           message={"median": 10})), 6)
    4.0
    """
    t = spec.turns
    if t.kind == "fixed":
        return float(t.mean)
    p = 1.0 / t.mean
    return (1 - (1 - p) ** t.max) / p


def _turns(spec: Sessions, n: int, rng: np.random.Generator) -> np.ndarray:
    t = spec.turns
    if t.kind == "fixed":
        return np.full(n, int(t.mean), dtype=np.int64)
    return np.minimum(rng.geometric(1.0 / t.mean, size=n), t.max).astype(np.int64)


def _within(x: np.ndarray, starts: np.ndarray, turns: np.ndarray) -> np.ndarray:
    """Sum of x over the earlier turns of the same session (0 at each session's first)."""
    cs = np.cumsum(x) - x
    return cs - np.repeat(cs[starts], turns)


def session_traffic(
    spec: Sessions,
    starts_s: np.ndarray,
    tokens: Tokens,
    system: SystemPrompts | None,
    horizon: float,
    rng: np.random.Generator,
) -> PrefixedTraffic:
    """The turns of sessions starting at ``starts_s``, sorted by send time, cut at ``horizon``.

    >>> from capsim.spec.sessions import Turns
    >>> spec = Sessions(turns=Turns(kind="fixed", mean=3), think_time_s=10, think="fixed",
    ...                 message={"median": 50})
    >>> from capsim.spec.scenario import TokenLengths
    >>> tok = TokenLengths(prompt_median=1, prompt_sigma=0, output_median=20, output_sigma=0)
    >>> t = session_traffic(spec, np.array([0.0]), tok, None, 100.0, np.random.default_rng(0))
    >>> t.arrival.tolist(), t.prompt.tolist(), t.output.tolist()
    ([0.0, 10.0, 20.0], [50, 120, 190], [20, 20, 20])
    """
    S = len(starts_s)
    turns = _turns(spec, S, rng)
    first = np.cumsum(turns) - turns
    N = int(turns.sum())
    sid = np.repeat(np.arange(S), turns)
    m = rng.lognormal(np.log(spec.message.median), spec.message.sigma, size=N)
    m = np.clip(np.rint(m), 1, spec.message.max).astype(np.int64)
    _, out = token_lengths(tokens, N, rng)
    if system is not None:
        k = zipf_choice(system, S, rng)
        sys_len = np.asarray(system.lengths, dtype=np.int64)[k]
    else:
        k, sys_len = np.full(S, -1), np.zeros(S, dtype=np.int64)
    prompt = sys_len[sid] + _within(m + out, first, turns) + m
    if spec.think == "fixed" or spec.think_time_s == 0:
        gap = np.full(N, spec.think_time_s)
    else:
        gap = rng.exponential(spec.think_time_s, size=N)
    gap[first] = 0.0
    arrival = np.asarray(starts_s, dtype=float)[sid] + _within(gap, first, turns) + gap
    keep = (prompt <= tokens.prompt_max) & (arrival < horizon)
    order = np.flatnonzero(keep)[np.argsort(arrival[keep], kind="stable")]
    return PrefixedTraffic(
        arrival[order], prompt[order], out[order], SharedPrefixes(sid[order], k, sys_len)
    )
