"""Token streams of traffic with shared prefixes, and the KV-block key chains they give.

Every request belongs to a *token stream*: the text a conversation accumulates. A stream
starts with a system prompt (if any), then each turn appends its new message and, once
answered, its output; turn n's prompt is the stream so far plus its new message. Requests of
one stream share its leading tokens, and streams with the same system prompt share that.

The engine needs, per request, the keys of its full KV blocks (prefix caching,
:mod:`capsim.sim.prefix_cache`): block j of a stream has the key ``hash((key_{j-1}, content))``
where the content is (system prompt k, j) for a block that lies wholly inside system prompt k,
else (stream s, j). So equal prefixes give equal key chains and nothing else does.

>>> sp = SharedPrefixes(np.array([0, 0, 1]), np.array([0, 0]), np.array([40, 40]))
>>> ch = sp.chains(np.array([50, 90, 45]), np.array([10, 5, 3]), 16)
>>> ch[0] is ch[1], ch[0][:2] == ch[2][:2], ch[0][2] == ch[2][2]
(True, True, False)
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

_SYS, _OWN = 0, 1  # content tags (ints: hashes of int tuples are the same in every process)


@dataclass(frozen=True)
class SharedPrefixes:
    """Per request its stream (-1: shares nothing); per stream its system prompt (-1: none)
    and that prompt's length in tokens."""

    stream: np.ndarray
    sys_index: np.ndarray
    sys_len: np.ndarray
    _memo: dict = field(default_factory=dict, compare=False, repr=False)

    def chains(self, prompt: np.ndarray, output: np.ndarray, bs: int) -> list[list[int] | None]:
        """Per request, the keys of its stream's full blocks (at least (prompt + output) //
        bs of them; requests of one stream share one list). Memoised per block size."""
        key = (bs, len(prompt))
        if key not in self._memo:
            self._memo[key] = self._build(prompt, output, bs)
        return self._memo[key]

    def _build(self, prompt: np.ndarray, output: np.ndarray, bs: int) -> list[list[int] | None]:
        ns = len(self.sys_index)
        need = np.zeros(ns, dtype=np.int64)
        has = self.stream >= 0
        np.maximum.at(need, self.stream[has], (prompt[has] + output[has]) // bs)
        sys_chains: dict[int, list[int]] = {}
        streams: list[list[int]] = []
        for s, (k, n) in enumerate(zip(self.sys_index.tolist(), need.tolist(), strict=True)):
            full_sys = int(self.sys_len[s]) // bs if k >= 0 else 0
            if k >= 0 and k not in sys_chains:
                keys, prev = [], 0
                for j in range(full_sys):
                    prev = hash((prev, _SYS, k, j))
                    keys.append(prev)
                sys_chains[k] = keys
            chain = list(sys_chains[k][: min(full_sys, n)]) if k >= 0 else []
            prev = chain[-1] if chain else 0
            for j in range(len(chain), n):
                prev = hash((prev, _OWN, s, j))
                chain.append(prev)
            streams.append(chain)
        return [streams[s] if s >= 0 else None for s in self.stream.tolist()]
