"""vLLM-style automatic prefix caching: full KV blocks along hash chains, LRU eviction.

In vLLM a request's full KV blocks carry keys ``k_j = hash(k_{j-1}, tokens of block j)``, so
two sequences with the same first ``j`` blocks share their first ``j`` keys. One
:class:`PrefixCache` per replica holds

* **referenced** blocks: pinned while a running request uses them;
* **cached free** blocks: no running request uses them; their content is kept and can be hit,
  but they count as free KV memory and are evicted, least recently used first, only when an
  allocation needs the room (vLLM V1's ``FreeKVCacheBlockQueue``).

A freed request (finished or preempted) returns its blocks tail first, so the last blocks of a
sequence are evicted first; and a block is touched whenever any later block of its chain is.
The cached blocks of a chain therefore always form a prefix of it, which lets this cache keep
*segments* instead of blocks: a :class:`Chain` is a list of (segment id, blocks), e.g. a
system prompt's blocks then a conversation's own, and the cache keeps per segment how many
leading blocks are cached and how many are pinned. Every operation costs O(segments of the
chain), not O(blocks). Recency is kept per segment (the free tail of a segment was freed at
its last release): exact when a segment's blocks are freed together, as a finished turn frees
its conversation's history. A chain of one-block segments (:meth:`Chain.of_keys`) is vLLM's
block-by-block cache exactly.

The engine keeps memory in aggregate: the blocks its running requests hold, ``sum ceil(tokens
/ block_size)``, minus ``share`` (blocks counted twice because several running requests
reference one cached block). ``share`` = sum over requests of their pooled blocks - pinned
blocks; the methods return how it changes.

>>> c = PrefixCache()
>>> a, b = Chain.of_keys([1, 2, 3]), Chain.of_keys([1, 2, 9])
>>> c.lookup(a, 3)                    # nothing cached yet
(0, 0)
>>> c.pool(a, 0, 3)                   # a request computed its three blocks: pinned
0
>>> c.lookup(b, 3)                    # another shares two of them, both pinned
(2, 2)
>>> c.release(a, 3, 3)                # the first finishes: its blocks become cached free
0
>>> c.free, c.lookup(a, 3)
(3, (3, 0))
>>> c.trim(1); c.free, c.lookup(a, 3), c.evictions   # room needed: LRU (the tail) goes first
(1, (1, 0), 2)
"""

from __future__ import annotations

from collections import OrderedDict

from capsim.workload.prefixes import Chain


class PrefixCache:
    """Cached and pinned KV blocks of one replica, by segment (see the module docstring)."""

    __slots__ = ("cached", "pinned", "holders", "lru", "free", "evictions")

    def __init__(self) -> None:
        self.cached: dict[int, int] = {}  # segment -> leading blocks cached (pinned or free)
        self.pinned: dict[int, int] = {}  # segment -> leading blocks some request references
        self.holders: dict[int, dict[int, int]] = {}  # segment -> {blocks held: requests}
        self.lru: OrderedDict[int, None] = OrderedDict()  # segments with free blocks, LRU first
        self.free = 0  # cached free blocks (evictable)
        self.evictions = 0

    def lookup(self, chain: Chain, most: int) -> tuple[int, int]:
        """(h, a): the longest cached prefix of ``chain`` (at most ``most`` blocks), and how
        many of those h blocks are already pinned (the rest are cached free)."""
        cached, pinned = self.cached, self.pinned
        h = a = 0
        for s, k in chain.segs:
            if h >= most:
                break
            want = most - h if most - h < k else k
            got = cached.get(s, 0)
            if got > want:
                got = want
            p = pinned.get(s, 0)
            a += got if got < p else p
            h += got
            if got < want:
                break
        return h, a

    def _hold(self, s: int, old: int, new: int) -> int:
        """A request's hold on segment ``s`` grows from ``old`` to ``new`` leading blocks.
        Returns how many of the newly held blocks others already pinned."""
        hs = self.holders.get(s)
        if hs is None:
            hs = self.holders[s] = {}
        if old:
            n = hs[old] - 1
            if n:
                hs[old] = n
            else:
                del hs[old]
        hs[new] = hs.get(new, 0) + 1
        p = self.pinned.get(s, 0)
        if new <= p:
            return new - old
        c = self.cached.get(s, 0)
        if c > p:  # free cached blocks now pinned
            self.free -= (new if new < c else c) - p
        self.pinned[s] = new
        if new > c:
            self.cached[s] = new
        return p - old if p > old else 0

    def pin(self, chain: Chain, h: int) -> None:
        """A request admitted with a hit of its first ``h`` blocks references them."""
        for s, k in chain.segs:
            if h <= 0:
                break
            self._hold(s, 0, k if k < h else h)
            h -= k

    def pool(self, chain: Chain, lo: int, hi: int) -> int:
        """A running request that holds blocks ``0..lo-1`` computed ``lo..hi-1``: they become
        cached and pinned. A block already pinned by another is shared (the duplicate is
        dropped). Returns the change of ``share``."""
        d = start = 0
        for s, k in chain.segs:
            end = start + k
            if end > lo:
                a = lo - start if lo > start else 0
                d += self._hold(s, a, (hi if hi < end else end) - start)
            start = end
            if start >= hi:
                break
        return d

    def release(self, chain: Chain, pooled: int, full: int) -> int:
        """A request that pooled its first ``pooled`` blocks and holds ``full`` full blocks is
        freed (finished or preempted), tail first: its unreferenced blocks join the cached
        free ones, as the most recently used. Returns the change of ``share``."""
        cached, pinned, holders = self.cached, self.pinned, self.holders
        d = -pooled
        free = self.free
        touched = []
        hi = full if full > pooled else pooled
        start = 0
        for s, k in chain.segs:
            if start >= hi:
                break
            b = hi - start if hi - start < k else k
            touched.append(s)
            if pooled > start:  # drop this request's hold on the segment's first blocks
                hold = pooled - start if pooled - start < b else b
                hs = holders[s]
                n = hs[hold] - 1
                if n:
                    hs[hold] = n
                else:
                    del hs[hold]
                if hs:
                    newp = max(hs) if len(hs) > 1 else next(iter(hs))
                else:
                    newp = 0
                    del holders[s]
                p = pinned[s]
                if newp < p:
                    d += p - newp
                    free += p - newp
                    pinned[s] = newp
            c = cached.get(s, 0)
            if b > c:  # its own (unpooled) blocks extend the cached prefix
                free += b - c
                cached[s] = b
            start += k
        self.free = free
        lru = self.lru
        for s in reversed(touched):  # tail first: the chain's first segment is the most recent
            if cached[s] > pinned.get(s, 0):
                if s in lru:
                    lru.move_to_end(s)
                else:
                    lru[s] = None
        return d

    def warm(self, chain: Chain, blocks: int) -> None:
        """The first ``blocks`` blocks of ``chain`` are cached free, the most recently used, as
        if a request that held them had finished: what a server that already served the same
        prompt keeps (a benchmark run repeated with the same prompts). For a cache in which
        nothing of ``chain`` is pinned.

        >>> c = PrefixCache()
        >>> c.warm(Chain([(4, 10)]), 6); c.free, c.lookup(Chain([(4, 10)]), 10)
        (6, (6, 0))
        """
        start = 0
        for s, k in chain.segs:
            if start >= blocks:
                break
            b = blocks - start if blocks - start < k else k
            c = self.cached.get(s, 0)
            if b > c:
                self.free += b - c
                self.cached[s] = b
            if s in self.lru:
                self.lru.move_to_end(s)
            else:
                self.lru[s] = None
            start += k

    def trim(self, room: int) -> None:
        """Evict cached free blocks, least recently used first (a segment's last blocks
        first), until at most ``room`` remain."""
        over = self.free - (room if room > 0 else 0)
        if over <= 0:
            return
        cached, pinned, lru = self.cached, self.pinned, self.lru
        self.free -= over
        self.evictions += over
        while over > 0:
            s = next(iter(lru))
            c = cached[s]
            tail = c - pinned.get(s, 0)
            x = tail if tail < over else over
            if x > 0:
                cached[s] = c - x
                over -= x
            if x >= tail:
                del lru[s]
                if c == x:
                    del cached[s]
