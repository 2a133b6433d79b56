"""Prefix caching (capsim.sim.prefix_cache and the engine's use of it): Che's approximation for
LRU, the engine's savings against arithmetic, and invariants of the block accounting."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.optimize import brentq

from capsim.sim.llm_engine import LLMFleet, run_llm
from capsim.sim.llm_types import EngineLimits
from capsim.sim.prefix_cache import PrefixCache
from capsim.workload.prefixes import Chain

from .test_llm_engine import ConstTimer, LinearTimer, _poisson


def _che(p: np.ndarray, c: int) -> np.ndarray:
    """Che, Tung & Wang (2002): per-item LRU hit probability 1 - exp(-p_i T_C), where the
    characteristic time T_C solves sum_i (1 - exp(-p_i T_C)) = C."""
    tc = brentq(lambda t: float(np.sum(1 - np.exp(-p * t))) - c, 1e-9, 1e9)
    return 1 - np.exp(-p * tc)


@pytest.mark.parametrize("alpha,cap", [(0.8, 100), (1.1, 50)])
def test_lru_hit_rate_matches_ches_approximation(alpha, cap):
    """Independent-reference traffic, Zipf(alpha) popularity over 1000 prefixes of one block:
    the simulated overall hit rate is within 0.015 (absolute) of Che's approximation, and that
    of each of the 10 most popular prefixes within 0.03 (sampling noise ~0.01 each); Che's own
    error is well below that at these sizes (Fricker, Robert & Roberts 2012)."""
    n_items, n_req = 1000, 200_000
    p = 1.0 / np.arange(1, n_items + 1) ** alpha
    p /= p.sum()
    rng = np.random.default_rng(7)
    refs = rng.choice(n_items, size=n_req, p=p)
    cache = PrefixCache()
    hits = np.zeros(n_items)
    seen = np.zeros(n_items)
    warm = 20_000
    chains = [Chain.of_keys([k]) for k in range(n_items)]
    for t, k in enumerate(refs.tolist()):
        ch = chains[k]
        h, _ = cache.lookup(ch, 1)
        if t >= warm:
            seen[k] += 1
            hits[k] += h
        cache.pool(ch, 0, 1)  # a request computes (or re-pins) it ...
        cache.release(ch, 1, 1)  # ... and frees it: it stays cached, most recent
        cache.trim(cap)  # room for C blocks
    che = _che(p, cap)
    sim_rate = hits.sum() / seen.sum()
    che_rate = float((p * che).sum())
    assert abs(sim_rate - che_rate) < 0.015, (sim_rate, che_rate)
    top = slice(0, 10)
    assert np.all(np.abs(hits[top] / seen[top] - che[top]) < 0.03)  # >= 1,900 samples each
    assert cache.free == cap and not any(cache.pinned.values())


def test_lru_without_room_never_hits():
    """The check can fail: a cache that keeps nothing is far from Che's figure."""
    cache = PrefixCache()
    h = 0
    for k in [1, 2, 1, 1, 2]:
        ch = Chain.of_keys([k])
        h += cache.lookup(ch, 1)[0]
        cache.pool(ch, 0, 1)
        cache.release(ch, 1, 1)
        cache.trim(0)
    assert h == 0


def _system_prompt_chains(n, bs, groups, shared_blocks, total_blocks, seed=0):
    """Request i: one of ``groups`` shared system prompts, then its own blocks (segments, as
    :class:`capsim.workload.prefixes.SharedPrefixes` builds them)."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        g = int(rng.integers(groups))
        out.append(Chain([(-(g + 1), shared_blocks), (i, total_blocks - shared_blocks)]))
    return out


def test_shared_system_prompt_saves_its_tokens_but_the_first():
    """Unlimited KV: every request after the first of its group skips the shared blocks."""
    n, bs = 500, 16
    arr = np.arange(n) * 0.5
    prompt, output = np.full(n, 1000), np.full(n, 20)
    chains = _system_prompt_chains(n, bs, 5, 40, 70)
    lim = EngineLimits(prefix_caching=True)
    r = run_llm(arr, prompt, output, ConstTimer(0.01), lim, chains=chains)
    groups = len({c.segs[0] for c in chains})
    assert r.prefill_saved == (n - groups) * 40 * bs
    assert r.prefill_tokens == n * 1000 - r.prefill_saved
    assert r.cached_tokens is not None and int((r.cached_tokens > 0).sum()) == n - groups
    off = run_llm(arr, prompt, output, ConstTimer(0.01), EngineLimits(), chains=chains)
    assert off.prefill_saved == 0 and off.prefill_tokens == n * 1000


def test_whole_prompt_cached_still_computes_one_token():
    """vLLM recomputes the last prompt token to sample: a fully cached prompt hits all but
    the block holding it."""
    chain = [hash(("x", j)) for j in range(10)]
    arr = np.array([0.0, 10.0])
    r = run_llm(arr, np.array([64, 64]), np.array([2, 2]), ConstTimer(0.01),
                EngineLimits(prefix_caching=True), chains=[chain, chain])  # fmt: skip
    assert r.cached_tokens is not None and r.cached_tokens.tolist() == [0, 48]


def test_no_chains_or_no_sharing_gives_the_same_times():
    """Caching on without chains, or with chains that share nothing (and no preemption),
    times every request as caching off."""
    arr, prompt, output = _poisson(3000, 4.0)
    lim = EngineLimits(kv_blocks=4000, max_num_batched_tokens=512, max_num_seqs=64)
    on = EngineLimits(**{**lim.__dict__, "prefix_caching": True})
    base = run_llm(arr, prompt, output, LinearTimer(), lim)
    assert base.preemptions.sum() == 0
    same = run_llm(arr, prompt, output, LinearTimer(), on)
    own = [[hash((i, j)) for j in range(60)] for i in range(len(arr))]
    uniq = run_llm(arr, prompt, output, LinearTimer(), on, chains=own)
    for r in (same, uniq):
        np.testing.assert_array_equal(r.finish, base.finish)
    assert uniq.prefill_saved == 0


def _checked(monkeypatch):
    """Wrap the two planners every step goes through (LLMFleet._plan_batch, _plan_decode):
    after each, the blocks in use plus the cached free ones fit in the cache, and the
    reference counts match the requests' pooled blocks."""
    seen = {"steps": 0}

    def wrap(orig):
        def planner(self, rp, now):
            t = orig(self, rp, now)
            check(self, rp)
            return t

        return planner

    def check(self, rp):
        if not self.pc:
            return
        c = rp.cache
        pooled = sum(self.pooled[i] for i in rp.running)
        assert rp.share == pooled - sum(c.pinned.values())
        assert sum(sum(hs.values()) for hs in c.holders.values()) >= len(
            [i for i in rp.running if self.pooled[i]]
        )
        for seg, hs in c.holders.items():
            assert c.pinned[seg] == max(hs) <= c.cached[seg]
        assert c.free == sum(v - c.pinned.get(s, 0) for s, v in c.cached.items())
        if rp.busy and not rp.seg_decode and self.total < 1 << 59:
            assert rp.kv_u[-1] + c.free <= self.total
            seen["steps"] += 1

    for name in ("_plan_batch", "_plan_decode"):
        monkeypatch.setattr(LLMFleet, name, wrap(getattr(LLMFleet, name)))
    return seen


@pytest.mark.parametrize("fuse", [True, False])
def test_cache_pressure_and_preemption_keep_the_accounting(monkeypatch, fuse):
    """A small KV cache, shared prefixes and preemptions: the accounting invariants hold at
    every step, fused and unfused runs agree, and pressure lowers the savings."""
    seen = _checked(monkeypatch)
    n = 1500
    rng = np.random.default_rng(3)
    arr = np.cumsum(rng.exponential(1 / 30.0, n))
    prompt = rng.integers(700, 1100, n)
    output = rng.integers(20, 300, n)
    chains = _system_prompt_chains(n, 16, 20, 40, 90)
    res = {}
    for kv in (None, 400):
        lim = EngineLimits(kv_blocks=kv, max_num_batched_tokens=1024, prefix_caching=True)
        res[kv] = run_llm(arr, prompt, output, ConstTimer(0.02), lim, chains=chains, fuse=fuse)
        assert res[kv].served.all()
    assert res[400].preemptions.sum() > 0 and res[400].cache_evictions > 0
    assert res[400].prefill_saved < res[None].prefill_saved
    assert seen["steps"] > 100
    if fuse:
        lim = EngineLimits(kv_blocks=400, max_num_batched_tokens=1024, prefix_caching=True)
        slow = run_llm(arr, prompt, output, ConstTimer(0.02), lim, chains=chains, fuse=False)
        np.testing.assert_allclose(slow.finish, res[400].finish)


def test_short_chain_is_refused():
    with pytest.raises(ValueError, match="chain of 1 blocks"):
        run_llm(np.array([0.0]), np.array([40]), np.array([1]), ConstTimer(),
                EngineLimits(prefix_caching=True), chains=[[1]])  # fmt: skip


@pytest.mark.parametrize("kv", [None, 1500, 400])
def test_segments_agree_with_block_by_block_chains(kv):
    """The same traffic with chains as segments and as one key per block (vLLM's own
    bookkeeping): identical without eviction; under pressure the per-segment recency differs
    from per-block recency only within a segment, and the savings agree within 3%."""
    n = 1200
    rng = np.random.default_rng(4)
    arr = np.cumsum(rng.exponential(1 / 25.0, n))
    prompt = rng.integers(700, 1100, n)
    output = rng.integers(20, 300, n)
    seg = _system_prompt_chains(n, 16, 20, 40, 90)
    keys = []
    for c in seg:
        (g, a), (i, b) = c.segs  # g < 0: hash(-1) == hash(-2) in CPython, so key on -g
        keys.append(
            [hash(("s", -g, j)) for j in range(a)] + [hash(("o", i, a + j)) for j in range(b)]
        )
    lim = EngineLimits(kv_blocks=kv, max_num_batched_tokens=1024, prefix_caching=True)
    r_seg = run_llm(arr, prompt, output, ConstTimer(0.02), lim, chains=seg)
    r_key = run_llm(arr, prompt, output, ConstTimer(0.02), lim, chains=keys)
    if kv != 400:
        np.testing.assert_allclose(r_seg.finish, r_key.finish)
        assert r_seg.prefill_saved == r_key.prefill_saved
    assert r_seg.prefill_saved == pytest.approx(r_key.prefill_saved, rel=0.03)
