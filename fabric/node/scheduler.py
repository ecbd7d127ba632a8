"""Fair queues across principals (seed 004): deficit round robin.

A principal is the authenticated identity of a connection (many connections
may share one). ``FairQueue`` holds entries per principal and per stream;
``pop()`` serves principals by deficit round robin (each turn a principal
earns ``quantum`` bytes of deficit and is served while its head fits), and
a principal's streams in round robin.

Each principal has a byte budget and a count cap. Over the budget, the
*oldest head* (the lowest enqueue number among the heads of the
principal's streams) that is neither a terminator nor pinned is evicted,
with the rest of its stream's data: a stream is delivered in order and
without a gap, so what followed the lost entry could not be delivered
either. The stream is marked ``lost`` (``lost_entry`` tells where it lost
data) and later data pushed on it is evicted at once; its terminator, and
an entry pushed ``pinned`` (a stream's start), are never dropped, so a
consumer learns (a ``LimitExceeded`` diagnostic) that the stream lost data,
never silently. Over the count cap ``push`` refuses with ``LimitExceeded``.

A stream may belong to a *channel* (the connection it is written to):
``hold(channel)`` takes the channel's streams out of the rotation (its
writer cannot take more now) and ``release(channel)`` puts them back;
held entries still count against their principal's budget and count cap.
``discard(channel)`` drops every entry of a channel that went away,
``drop_stream(stream)`` those of one stream (drop-and-close).

Counters per principal stay exact: ``queued == served + evicted + dropped
+ pending`` (refused pushes are not queued).

Sans-IO: no locks, no waiting; the node calls it from its event loop.
"""

from __future__ import annotations

import collections
import itertools
from typing import Any, Callable, Hashable, NamedTuple

from .protocol import LimitExceeded

__all__ = ["FairQueue", "Entry"]


class Entry(NamedTuple):
    """One queued thing: whose, which stream, its size, and whether it ends
    the stream; ``seq`` its enqueue number (lower is older), ``pinned``
    never evicted (as a terminator is)."""

    principal: str
    stream: Hashable
    size: int
    item: Any
    terminator: bool
    seq: int = 0
    pinned: bool = False


class _Principal:
    __slots__ = ("streams", "order", "bytes", "count", "deficit", "stats", "active")

    def __init__(self) -> None:
        # every stream with entries; ``order``: those that may be served now
        self.streams: dict[Hashable, collections.deque[Entry]] = {}
        self.order: collections.deque[Hashable] = collections.deque()
        self.bytes = 0
        self.count = 0
        self.deficit = 0
        self.active = False  # in FairQueue._active
        self.stats = {"queued": 0, "served": 0, "evicted": 0, "refused": 0,
                      "dropped": 0, "bytes_served": 0}


class FairQueue:
    """Deficit round robin over principals, round robin over their streams.

    ``on_empty(stream)``, when given, is called whenever a stream's last
    entry left the queue (served, evicted or dropped)."""

    def __init__(self, *, budget: int = 64 << 20, max_count: int = 100_000,
                 min_quantum: int = 4096, quantum: int | None = None,
                 on_empty: Callable[[Hashable], None] | None = None):
        if budget < 1 or max_count < 1:
            raise ValueError("budget and max_count must be >= 1")
        if quantum is not None and quantum < 1:
            raise ValueError("quantum must be >= 1")
        self.fixed_quantum = quantum
        self.budget = budget
        self.max_count = max_count
        self.min_quantum = min_quantum
        self.on_empty = on_empty
        self._p: dict[str, _Principal] = {}
        self._active: collections.deque[str] = collections.deque()
        self._lost: dict[Hashable, Entry] = {}  # stream -> its first entry evicted
        # a stream with entries -> (its principal's name, the principal)
        self._where: dict[Hashable, tuple[str, _Principal]] = {}
        self._chan: dict[Hashable, Hashable] = {}  # stream with entries -> its channel
        self._by_chan: dict[Hashable, set[Hashable]] = {}  # channel -> its streams with entries
        self._held: set[Hashable] = set()
        self._seq = itertools.count(1)
        self._total = 0
        self.evictions = 0

    @property
    def quantum(self) -> int:
        """max(min_quantum, budget / active principals), or the fixed quantum."""
        if self.fixed_quantum is not None:
            return self.fixed_quantum
        return max(self.min_quantum, self.budget // max(1, len(self._active)))

    def __len__(self) -> int:
        return self._total

    def empty(self) -> bool:
        """Whether nothing is queued, held channels' entries included (O(1))."""
        return not self._total

    def ready(self) -> bool:
        """Whether ``pop()`` may find an entry (one not held)."""
        return bool(self._active)

    def queued(self, stream: Hashable) -> int:
        """How many entries of ``stream`` wait."""
        w = self._where.get(stream)
        return 0 if w is None else len(w[1].streams[stream])

    def pending(self, channel: Hashable) -> int:
        """How many streams of ``channel`` have entries waiting."""
        s = self._by_chan.get(channel)
        return 0 if s is None else len(s)

    def lost(self, stream: Hashable) -> bool:
        """Whether ``stream`` lost data to an eviction."""
        return stream in self._lost

    def lost_entry(self, stream: Hashable) -> Entry | None:
        """The first entry ``stream`` lost (None: it lost none)."""
        return self._lost.get(stream)

    def forget(self, stream: Hashable) -> None:
        """Drop the ``lost`` mark of a stream that ended."""
        self._lost.pop(stream, None)

    def _principal(self, name: str) -> _Principal:
        p = self._p.get(name)
        if p is None:
            p = self._p[name] = _Principal()
        return p

    def _activate(self, name: str, p: _Principal) -> None:
        if not p.active:
            p.active = True
            self._active.append(name)

    def push(self, principal: str, stream: Hashable, size: int, item: Any,
             terminator: bool = False, *, channel: Hashable = None,
             pinned: bool = False) -> None:
        """Queue an entry (of ``channel``'s, when given); evicts the
        principal's oldest heads while it is over its budget;
        ``LimitExceeded`` over the count cap (a terminator is always taken).
        Data pushed on a stream that lost data is evicted at once."""
        p = self._principal(principal)
        keep = terminator or pinned
        if p.count >= self.max_count and not keep:
            p.stats["refused"] += 1
            raise LimitExceeded(f"principal {principal!r} has {p.count} entries queued "
                                f"(cap {self.max_count})")
        p.stats["queued"] += 1
        if not keep and stream in self._lost:
            p.stats["evicted"] += 1
            self.evictions += 1
            return
        q = p.streams.get(stream)
        if q is None:
            q = p.streams[stream] = collections.deque()
            self._where[stream] = (principal, p)
            if channel is not None:
                self._chan[stream] = channel
                chan = self._by_chan.get(channel)
                if chan is None:
                    chan = self._by_chan[channel] = set()
                chan.add(stream)
            if channel is None or channel not in self._held:
                p.order.append(stream)
                self._activate(principal, p)
        e = Entry(principal, stream, size, item, terminator, next(self._seq), pinned)
        q.append(e)
        p.bytes += size
        p.count += 1
        self._total += 1
        if p.bytes > self.budget:
            self._evict(p, keep=e)

    def _evict(self, p: _Principal, keep: Entry) -> None:
        """Oldest head first (the lowest enqueue number among the first
        evictable entries of the principal's streams), with the rest of its
        stream's data."""
        while p.bytes > self.budget:
            victim: Entry | None = None
            for q in p.streams.values():
                for e in q:  # past a pinned start, at most
                    if e.terminator or e is keep:
                        break
                    if not e.pinned:
                        if victim is None or e.seq < victim.seq:
                            victim = e
                        break
            if victim is None:
                return  # only what may not be evicted is left (or one entry over budget)
            self._lose(p, victim.stream, victim)

    def _lose(self, p: _Principal, stream: Hashable, first: Entry | None) -> None:
        """Evicts every entry of ``stream`` that is neither a terminator nor
        pinned, and marks it lost at ``first`` (its first entry evicted)."""
        q = p.streams[stream]
        kept: collections.deque[Entry] = collections.deque()
        n = 0
        for e in q:
            if e.terminator or e.pinned:
                kept.append(e)
            else:
                n += 1
                p.bytes -= e.size
                if first is None:
                    first = e
        if first is None:
            return
        self._lost.setdefault(stream, first)
        p.count -= n
        self._total -= n
        p.stats["evicted"] += n
        self.evictions += n
        if kept:
            p.streams[stream] = kept
        else:
            self._remove_stream(p, stream)

    def lose(self, stream: Hashable, first: Entry | None = None) -> None:
        """Evicts ``stream``'s queued data (not its start nor terminator) and
        marks it lost, at ``first`` (default: its first entry queued; with
        none queued and no ``first``, nothing changes)."""
        w = self._where.get(stream)
        if w is None:
            if first is not None:
                self._lost.setdefault(stream, first)
            return
        self._lose(w[1], stream, first)

    def _remove_stream(self, p: _Principal, stream: Hashable) -> None:
        del p.streams[stream]
        del self._where[stream]
        try:
            p.order.remove(stream)
        except ValueError:  # held: not in the rotation
            pass
        chan = self._chan.pop(stream, None)
        if chan is not None:
            s = self._by_chan.get(chan)
            if s is not None:
                s.discard(stream)
                if not s:
                    del self._by_chan[chan]
        if self.on_empty is not None:
            self.on_empty(stream)

    def _mark_held(self, channel: Hashable, held: bool) -> set[Hashable] | None:
        """Marks ``channel`` held (or not); returns its streams with entries
        when the mark changed (None: it was so already, or it has none)."""
        if (channel in self._held) == held:
            return None
        if held:
            self._held.add(channel)
        else:
            self._held.discard(channel)
        return self._by_chan.get(channel) or None

    def hold(self, channel: Hashable) -> None:
        """Take ``channel``'s streams out of the rotation until ``release``."""
        streams = self._mark_held(channel, True)
        if streams is None:
            return
        chan = self._chan
        for p in {id(w[1]): w[1] for s in streams if (w := self._where[s])}.values():
            # one pass per principal (not a remove per stream: O(n) each)
            p.order = collections.deque(s for s in p.order if chan.get(s) is not channel)

    def release(self, channel: Hashable) -> None:
        """Put ``channel``'s streams back in the rotation, those whose head
        waited longest first (a fixed order would serve the same streams
        first after every pause)."""
        streams = self._mark_held(channel, False)
        if streams is None:
            return
        where = self._where
        for stream in sorted(streams, key=lambda s: where[s][1].streams[s][0].seq):
            name, p = where[stream]
            p.order.append(stream)
            self._activate(name, p)

    def discard(self, channel: Hashable) -> int:
        """Drops every entry of ``channel`` (gone: nothing can be written to
        it), terminators too, counted as ``dropped``; returns how many."""
        self._held.discard(channel)
        return sum(self.drop_stream(s) for s in list(self._by_chan.get(channel, ())))

    def drop_stream(self, stream: Hashable) -> int:
        """Drops every entry of ``stream``, its terminator too (a stream
        ended by drop-and-close, or its channel gone), counted as
        ``dropped``, and its ``lost`` mark; returns how many."""
        self._lost.pop(stream, None)
        w = self._where.get(stream)
        if w is None:
            return 0
        p = w[1]
        q = p.streams[stream]
        n = len(q)
        p.bytes -= sum(e.size for e in q)
        p.count -= n
        self._total -= n
        p.stats["dropped"] += n
        self._remove_stream(p, stream)
        return n

    def count_direct(self, principal: str, size: int) -> None:
        """Count an entry the caller sent at once because nothing of its
        stream's or channel's waited: what ``push`` then ``pop`` would have
        counted."""
        st = self._principal(principal).stats
        st["queued"] += 1
        st["served"] += 1
        st["bytes_served"] += size

    def pop(self) -> Entry | None:
        """The next entry by deficit round robin (of a channel not held), or
        None when there is none."""
        while self._active:
            name = self._active[0]
            p = self._p[name]
            if not p.order:
                self._active.popleft()
                p.active = False
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
            self._total -= 1
            p.stats["served"] += 1
            p.stats["bytes_served"] += head.size
            p.order.rotate(-1)
            if not q:
                self._remove_stream(p, sid)
            if not p.order:
                self._active.popleft()
                p.active = False
                p.deficit = 0
            elif p.deficit < p.streams[p.order[0]][0].size:
                self._active.rotate(-1)
            return head
        return None

    def stats(self) -> dict[str, Any]:
        """Counters per principal (queued, served, evicted, refused, dropped,
        bytes), the evictions in all and what is pending."""
        return {"principals": {n: dict(p.stats, pending=p.count, pending_bytes=p.bytes)
                               for n, p in list(self._p.items())},
                "evictions": self.evictions, "pending": self._total}

