"""vLLM-style automatic prefix caching: full KV blocks keyed by a hash chain, LRU eviction.

A request's full KV blocks along its token sequence carry keys ``k_j = hash(k_{j-1},
content_j)`` (see :mod:`capsim.workload.sessions`), so two sequences with the same first ``j``
blocks have the same first ``j`` keys. One :class:`PrefixCache` per replica holds

* **referenced** blocks (``ref``: key -> number of running requests using it): pinned;
* **cached free** blocks (``lru``: keys of blocks no running request uses, least recently
  used first): their content is kept and can be hit, but they count as free KV memory and are
  evicted, oldest first, only when an allocation needs the room (vLLM V1's
  ``FreeKVCacheBlockQueue``).

A request freed (finished or preempted) returns its blocks tail first, so that of one
sequence the last blocks are evicted first, as vLLM does.

The engine keeps memory in aggregate: the blocks its running requests hold,
``sum ceil(tokens / block_size)``, minus ``share`` (blocks counted twice because several
running requests reference the same cached block). ``share`` = sum over requests of their
pooled blocks - number of referenced blocks; the methods return how it changes.

>>> c = PrefixCache()
>>> c.lookup([1, 2, 3], 3)            # nothing cached yet
(0, 0)
>>> c.pool([1, 2, 3], 0, 3)           # a request computed its three blocks: pinned
0
>>> c.lookup([1, 2, 9], 3)            # another shares two of them, both pinned
(2, 2)
>>> c.release([1, 2, 3], 3, 3)        # the first finishes: its blocks become cached free
0
>>> len(c.lru), c.lookup([1, 2, 3], 3)
(3, (3, 0))
>>> c.trim(1); list(c.lru), c.evictions    # room needed: evict the least recently used
([1], 2)
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence


class PrefixCache:
    """Referenced and cached-free KV blocks of one replica (see the module docstring)."""

    __slots__ = ("ref", "lru", "evictions")

    def __init__(self) -> None:
        self.ref: dict[int, int] = {}
        self.lru: OrderedDict[int, None] = OrderedDict()
        self.evictions = 0

    def lookup(self, chain: Sequence[int], most: int) -> tuple[int, int]:
        """(h, a): the longest cached prefix of ``chain`` (at most ``most`` blocks), and how
        many of those h blocks are already referenced (the rest are cached free)."""
        ref, lru = self.ref, self.lru
        h = a = 0
        while h < most:
            k = chain[h]
            if k in ref:
                a += 1
            elif k not in lru:
                break
            h += 1
        return h, a

    def pin(self, chain: Sequence[int], h: int) -> None:
        """A request admitted with a hit of its first ``h`` blocks references them."""
        ref, lru = self.ref, self.lru
        for j in range(h):
            k = chain[j]
            if k in ref:
                ref[k] += 1
            else:
                del lru[k]
                ref[k] = 1

    def pool(self, chain: Sequence[int], lo: int, hi: int) -> int:
        """A running request computed its blocks ``lo..hi-1``: they become cached (pinned).
        A block whose key is already referenced is shared (its duplicate is dropped).
        Returns the change of ``share``."""
        ref, lru = self.ref, self.lru
        d = 0
        for j in range(lo, hi):
            k = chain[j]
            if k in ref:
                ref[k] += 1
                d += 1
            else:
                if k in lru:
                    del lru[k]
                ref[k] = 1
        return d

    def release(self, chain: Sequence[int], pooled: int, full: int) -> int:
        """A request that pooled its first ``pooled`` blocks and holds ``full`` full blocks is
        freed (finished or preempted), tail first: its unreferenced blocks join the cached
        free ones. Returns the change of ``share``."""
        ref, lru = self.ref, self.lru
        d = -pooled
        for j in range(full - 1, -1, -1):
            k = chain[j]
            if j < pooled:
                n = ref[k] - 1
                if n:
                    ref[k] = n
                else:
                    del ref[k]
                    d += 1
                    lru[k] = None
            elif k not in ref:
                if k in lru:
                    lru.move_to_end(k)
                else:
                    lru[k] = None
        return d

    def trim(self, room: int) -> None:
        """Evict cached free blocks, least recently used first, until at most ``room`` remain."""
        lru = self.lru
        n = len(lru) - max(room, 0)
        if n > 0:
            self.evictions += n
            for _ in range(n):
                lru.popitem(last=False)
