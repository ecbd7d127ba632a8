"""Fair queues across principals (seed 004): deficit round robin.

A principal is the authenticated identity of a connection (many connections
may share one). ``FairQueue`` holds entries per principal and per stream;
``pop()`` serves principals by deficit round robin (each turn a principal
earns ``quantum`` bytes of deficit and is served while its head fits), and
a principal's streams in round robin. Each principal has a byte budget and
a count cap: over the budget, the *oldest head* that is not a stream's
terminator is evicted and its stream marked ``lost``; the terminator itself
is never dropped, so a consumer learns (a ``LimitExceeded`` diagnostic)
that the stream lost data, never silently. Over the count cap ``push``
refuses with ``LimitExceeded``.

Sans-IO: no locks, no waiting; the node calls it from its event loop.
"""

from __future__ import annotations

import collections
from typing import Any, Hashable, NamedTuple

from .protocol import LimitExceeded

__all__ = ["FairQueue", "Entry"]


class Entry(NamedTuple):
    """One queued thing: whose, which stream, its size, and whether it ends the stream."""

    principal: str
    stream: Hashable
    size: int
    item: Any
    terminator: bool


class _Principal:
    __slots__ = ("streams", "order", "bytes", "count", "deficit", "stats")

    def __init__(self) -> None:
        self.streams: dict[Hashable, collections.deque[Entry]] = {}
        self.order: collections.deque[Hashable] = collections.deque()
        self.bytes = 0
        self.count = 0
        self.deficit = 0
        self.stats = {"queued": 0, "served": 0, "evicted": 0, "refused": 0,
                      "bytes_served": 0}


class FairQueue:
    """Deficit round robin over principals, round robin over their streams."""

    def __init__(self, *, budget: int = 64 << 20, max_count: int = 100_000,
                 min_quantum: int = 4096, quantum: int | None = None):
        if budget < 1 or max_count < 1:
            raise ValueError("budget and max_count must be >= 1")
        if quantum is not None and quantum < 1:
            raise ValueError("quantum must be >= 1")
        self.fixed_quantum = quantum
        self.budget = budget
        self.max_count = max_count
        self.min_quantum = min_quantum
        self._p: dict[str, _Principal] = {}
        self._active: collections.deque[str] = collections.deque()
        self._lost: set[Hashable] = set()
        self._retired: dict[str, dict[str, int]] = {}
        self.evictions = 0

    @property
    def quantum(self) -> int:
        """max(min_quantum, budget / active principals), or the fixed quantum."""
        if self.fixed_quantum is not None:
            return self.fixed_quantum
        return max(self.min_quantum, self.budget // max(1, len(self._active)))

    def __len__(self) -> int:
        # list(): stats() may be called from any thread
        return sum(p.count for p in list(self._p.values()))

    def empty(self) -> bool:
        """Whether nothing is queued (O(1))."""
        return not self._active

    def lost(self, stream: Hashable) -> bool:
        """Whether ``stream`` lost data to an eviction."""
        return stream in self._lost

    def forget(self, stream: Hashable) -> None:
        self._lost.discard(stream)

    def push(self, principal: str, stream: Hashable, size: int, item: Any,
             terminator: bool = False) -> None:
        """Queue an entry; evicts the principal's oldest non-terminator heads
        while it is over its budget; ``LimitExceeded`` over the count cap."""
        p = self._p.get(principal)
        if p is None:
            p = self._p[principal] = _Principal()
        if p.count >= self.max_count and not terminator:
            p.stats["refused"] += 1
            raise LimitExceeded(f"principal {principal!r} has {p.count} entries queued "
                                f"(cap {self.max_count})")
        q = p.streams.get(stream)
        if q is None:
            q = p.streams[stream] = collections.deque()
            p.order.append(stream)
        if not p.count:
            self._active.append(principal)
        q.append(Entry(principal, stream, size, item, terminator))
        p.bytes += size
        p.count += 1
        p.stats["queued"] += 1
        if p.bytes > self.budget:
            self._evict(p, keep=q[-1])

    def _evict(self, p: _Principal, keep: Entry) -> None:
        # Oldest head first: the first entry of each stream, in stream order.
        while p.bytes > self.budget:
            victim = None
            for sid in p.order:
                q = p.streams[sid]
                for e in q:
                    if not e.terminator and e is not keep:
                        victim = (sid, e)
                        break
                if victim is not None:
                    break
            if victim is None:
                return
            sid, e = victim
            p.streams[sid].remove(e)
            if not p.streams[sid]:
                del p.streams[sid]
                p.order.remove(sid)
            p.bytes -= e.size
            p.count -= 1
            p.stats["evicted"] += 1
            self.evictions += 1
            self._lost.add(sid)

    def count_direct(self, principal: str, size: int) -> None:
        """Count an entry the caller sent at once because nothing was queued
        (``empty()``): what ``push`` then ``pop`` would have counted."""
        p = self._p.get(principal)
        if p is None:
            p = self._p[principal] = _Principal()
        st = p.stats
        st["queued"] += 1
        st["served"] += 1
        st["bytes_served"] += size

    def pop(self) -> Entry | None:
        """The next entry by deficit round robin, or None when empty."""
        while self._active:
            name = self._active[0]
            p = self._p[name]
            if not p.count:
                self._active.popleft()
                p.deficit = 0
                continue
            sid = p.order[0]
            q = p.streams[sid]
            head = q[0]
            if p.deficit < head.size:
                p.deficit += self.quantum
                if p.deficit < head.size:
                    self._active.rotate(-1)
                    continue
            q.popleft()
            p.deficit -= head.size
            p.bytes -= head.size
            p.count -= 1
            p.stats["served"] += 1
            p.stats["bytes_served"] += head.size
            p.order.rotate(-1)
            if not q:
                del p.streams[sid]
                p.order.remove(sid)
            if not p.count:
                self._active.popleft()
                p.deficit = 0
            elif p.deficit < (p.streams[p.order[0]][0].size if p.order else 0):
                self._active.rotate(-1)
            return head
        return None

    def discard(self, stream: Hashable) -> int:
        """Drop every queued entry of ``stream``, its terminator too (a
        stream ended by drop-and-close); returns how many were dropped."""
        dropped = 0
        for name, p in list(self._p.items()):
            q = p.streams.pop(stream, None)
            if q is None:
                continue
            p.order.remove(stream)
            for e in q:
                p.bytes -= e.size
                p.count -= 1
                dropped += 1
            if not p.count and name in self._active:
                self._active.remove(name)
                p.deficit = 0
        self._lost.discard(stream)
        return dropped

    def stats(self) -> dict[str, Any]:
        """Counters per principal (queued, served, evicted, refused, bytes)."""
        return {"principals": {n: dict(p.stats, pending=p.count, pending_bytes=p.bytes)
                               for n, p in list(self._p.items())},
                "evictions": self.evictions, "pending": len(self)}
