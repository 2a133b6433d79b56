"""Token streams of traffic with shared prefixes, and the KV-block key chains they give.

Every request belongs to a *token stream*: the text a conversation accumulates. A stream
starts with a system prompt (if any), then each turn appends its new message and, once
answered, its output; turn n's prompt is the stream so far plus its new message. Requests of
one stream share its leading tokens, and streams with the same system prompt share that.

The engine's prefix cache (:mod:`capsim.sim.prefix_cache`) needs, per request, the chain of
its full KV blocks: in vLLM block j's key is ``hash(key_{j-1}, tokens of block j)``, so equal
prefixes give equal keys. Here a stream's chain is two *segments*: the full blocks that lie
wholly inside its system prompt (shared by every stream with that prompt), then its own
blocks; equal prefixes give equal chains and nothing else does.

>>> sp = SharedPrefixes(np.array([0, 0, 1]), np.array([0, 0]), np.array([40, 40]))
>>> ch = sp.chains(np.array([50, 90, 45]), np.array([10, 5, 3]), 16)
>>> ch[0] is ch[1], ch[0].segs, ch[2].segs       # 40 tokens of system prompt: 2 full blocks
(True, [(-1, 2), (0, 3)], [(-1, 2), (1, 1)])
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


class Chain:
    """The key chain of a token stream as segments ``[(segment id, blocks), ...]``; ``n`` is
    the total number of blocks (``len(chain)``).

    >>> ch = Chain([(-1, 3), (7, 10)])
    >>> len(ch), Chain.of_keys([5, 6]).segs
    (13, [(5, 1), (6, 1)])
    """

    __slots__ = ("segs", "n")

    def __init__(self, segs: list[tuple[int, int]]):
        self.segs = [(s, k) for s, k in segs if k > 0]
        self.n = sum(k for _, k in self.segs)

    def __len__(self) -> int:
        return self.n

    @classmethod
    def of_keys(cls, keys: list[int]) -> Chain:
        """One segment per block key (vLLM's block-by-block chain)."""
        return cls([(k, 1) for k in keys])


@dataclass(frozen=True)
class SharedPrefixes:
    """Per request its stream (-1: shares nothing); per stream its system prompt (-1: none)
    and that prompt's length in tokens."""

    stream: np.ndarray
    sys_index: np.ndarray
    sys_len: np.ndarray
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def chains(self, prompt: np.ndarray, output: np.ndarray, bs: int) -> list[Chain | None]:
        """Per request, its stream's chain (at least (prompt + output) // bs blocks; requests
        of one stream share one chain). Memoised per block size."""
        key = (bs, len(prompt))
        if key not in self._memo:
            self._memo[key] = self._build(prompt, output, bs)
        return self._memo[key]

    def _build(self, prompt: np.ndarray, output: np.ndarray, bs: int) -> list[Chain | None]:
        ns = len(self.sys_index)
        need = np.zeros(ns, dtype=np.int64)
        has = self.stream >= 0
        np.maximum.at(need, self.stream[has], (prompt[has] + output[has]) // bs)
        streams: list[Chain] = []
        for s, (k, n) in enumerate(zip(self.sys_index.tolist(), need.tolist(), strict=True)):
            sys_blocks = min(int(self.sys_len[s]) // bs, n) if k >= 0 else 0
            # segment ids: system prompt k is -(k + 1), stream s is s
            streams.append(Chain([(-(k + 1), sys_blocks), (s, n - sys_blocks)]))
        return [streams[s] if s >= 0 else None for s in self.stream.tolist()]

    def uncached_prompts(self, prompt: np.ndarray, output: np.ndarray, bs: int) -> np.ndarray:
        """The fewest prompt tokens each request could have to compute with prefix caching:
        its prompt less the full blocks of its system prompt and of the previous request of
        its stream (prompt + output - 1 tokens in the KV cache when it ended), at least one
        token. An optimistic figure, for capacity bounds.

        >>> sp = SharedPrefixes(np.array([0, 0]), np.array([-1]), np.array([0]))
        >>> sp.uncached_prompts(np.array([100, 260]), np.array([50, 10]), 16).tolist()
        [100, 116]
        """
        st = self.stream
        shared = np.zeros(len(prompt), dtype=np.int64)
        has = st >= 0
        if not has.any():
            return np.asarray(prompt)
        sysf = np.where(self.sys_index >= 0, self.sys_len // bs * bs, 0)
        shared[has] = sysf[st[has]]
        idx = np.flatnonzero(has)
        order = idx[np.argsort(st[idx], kind="stable")]  # by stream, then arrival
        same = st[order][1:] == st[order][:-1]
        prev, cur = order[:-1][same], order[1:][same]
        held = (prompt[prev] + output[prev] - 1) // bs * bs
        shared[cur] = np.maximum(shared[cur], held)
        return np.maximum(prompt - np.minimum(shared, prompt - 1), 1)
