"""The holding index: who holds which content key.

A ``HoldingIndex`` is a grow-only set of facts ``(key, holder)``: "node
*holder* holds the reply for content key *key*". Replies never change, so a
fact is never invalidated and merging two indexes is a set union: no
consensus, no router. Nodes gossip the facts they learned since a version
(``delta_since`` / ``apply``) and snapshot the whole index to bytes.

A fact can still be stale in practice (a holder lost its disk, or is
partitioned away). The index therefore also keeps a *local*, non-gossiped
failure count per holder: ``holders_of`` lists holders that have not failed
first (sorted by name), then the ones that failed, fewest failures first. A
holder is never trusted blindly: the fabric verifies every reply it gets.

Storage: the facts live in the C core (``csrc/holdings.c``): each distinct
key once (32 bytes), holders interned to small integers, and a 12-byte log
entry per fact, about 56 bytes per fact in all at 1e6 facts. Version,
``delta_since`` and snapshots are positions in and copies of that log.

Concurrency: every operation on the store is one call into the core under
the GIL, so it is atomic; ``a.merge(b)`` and ``b.merge(a)`` may run at the
same time in two threads (no index lock is ever held while waiting for
another), and ``a.merge(a)`` is a no-op. Failure counts are a small dict
under the index's own lock.
"""

from __future__ import annotations

import html
import threading
from typing import Iterable, Iterator, NamedTuple

from ._core import ContentKey, DecodeError, _Holdings

__all__ = ["HoldingIndex", "HoldingDelta", "SNAPSHOT_SPEC", "SNAPSHOT_VERSION"]

#: The ``spec`` field of a snapshot, and the only version ``restore`` accepts.
SNAPSHOT_SPEC = "fabric.holding-index"
SNAPSHOT_VERSION = 1


class HoldingDelta(NamedTuple):
    """Facts an index learned between two of its versions (for gossip).

    ``start`` and ``end`` are versions of the index that produced it: a
    peer that has seen everything up to ``start`` has seen everything up to
    ``end`` after applying ``facts``.
    """

    start: int
    end: int
    facts: tuple[tuple[ContentKey, str], ...]


def _check_holder(holder: object) -> str:
    if not isinstance(holder, str) or not holder:
        raise TypeError(f"a holder is a non-empty node id str, not {holder!r}")
    return holder


class HoldingIndex:
    """Grow-only set of ``(key, holder)`` facts with gossip deltas and snapshots."""

    def __init__(self, facts: Iterable[tuple[ContentKey, str]] = ()):
        # Neither _store nor _failures is ever replaced (only changed in
        # place): a resolution's Plan keeps their bound methods.
        self._lock = threading.Lock()  # guards _failures only
        self._store = _Holdings()
        self._failures: dict[str, int] = {}
        if facts != ():
            self._add_many(facts)

    # -- facts ---------------------------------------------------------------
    def _add_many(self, facts: Iterable[tuple[ContentKey, str]]) -> int:
        """Adds facts (every one checked before any is added); how many were new."""
        if not isinstance(facts, (list, tuple)):
            facts = list(facts)
        return self._store.add_facts(facts)

    def announce(self, key: ContentKey, holder: str) -> bool:
        """Record that ``holder`` holds ``key``; True if the fact is new."""
        return self._store.add(key, holder)

    def announce_keys(self, keys: Iterable[ContentKey] | bytes, holder: str) -> int:
        """Record that ``holder`` holds every key of ``keys`` (ContentKeys, or
        32-byte digests packed end to end in one bytes-like object), in one
        call into the core; returns how many facts were new."""
        if isinstance(keys, (bytes, bytearray, memoryview)):
            return self._store.add_packed(keys, holder)
        return self._store.add_keys(keys, holder)

    def holds(self, key: ContentKey, holder: str) -> bool:
        """Whether the fact ``(key, holder)`` is known."""
        return self._store.has(key, holder)

    def holders_of(self, key: ContentKey) -> list[str]:
        """Holders of ``key``: never-failed ones sorted by name, then failed ones
        (fewest failures first, then by name)."""
        hs = self._store.holders_of(key)
        if len(hs) < 2:
            return hs
        fails = self._failures
        if not fails:
            hs.sort()
            return hs
        return sorted(hs, key=lambda h: (fails.get(h, 0), h))

    def keys(self) -> list[ContentKey]:
        """Every key with at least one known holder, sorted."""
        return sorted(self._store.keys())

    def facts(self) -> list[tuple[ContentKey, str]]:
        """Every fact, in the order this index learned them."""
        return list(self._store.facts())

    def __len__(self) -> int:
        return len(self._store)

    def __iter__(self) -> Iterator[tuple[ContentKey, str]]:
        return iter(self._store.facts())

    def __contains__(self, fact: object) -> bool:
        if not isinstance(fact, tuple) or len(fact) != 2:
            return False
        return self._store.has(*fact)

    @property
    def version(self) -> int:
        """The number of facts learned so far (grows by one per new fact)."""
        return len(self._store)

    @property
    def key_count(self) -> int:
        """How many distinct keys have at least one known holder."""
        return self._store.nkeys

    def memory(self) -> int:
        """Bytes the fact store holds (keys, table, log and holder names)."""
        return self._store.memory()

    # -- health (local, never gossiped) ---------------------------------------
    def mark_failed(self, holder: str) -> int:
        """Note that ``holder`` failed to answer; it is tried after the others
        from now on. Returns its failure count."""
        _check_holder(holder)
        with self._lock:
            n = self._failures.get(holder, 0) + 1
            self._failures[holder] = n
            return n

    def mark_ok(self, holder: str) -> None:
        """Note that ``holder`` answered; it is no longer tried last."""
        with self._lock:
            self._failures.pop(holder, None)

    def failures(self, holder: str) -> int:
        """How many times ``holder`` failed since it last answered."""
        return self._failures.get(holder, 0)

    # -- merge and gossip -----------------------------------------------------
    def merge(self, other: "HoldingIndex") -> int:
        """Add every fact of ``other`` (set union); returns how many were new.

        One call into the core, which reads ``other``'s store and writes this
        one under the GIL: two merges in opposite directions cannot deadlock.
        """
        if not isinstance(other, HoldingIndex):
            raise TypeError(f"can only merge a HoldingIndex, not {type(other).__name__}")
        if other is self:
            return 0
        return self._store.merge(other._store)

    def delta_since(self, version: int) -> HoldingDelta:
        """The facts learned after ``version`` (0 = everything)."""
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        end = len(self._store)
        if version > end:
            raise ValueError(f"version {version} is ahead of this index (at {end})")
        facts = self._store.facts(version)
        return HoldingDelta(version, version + len(facts), facts)

    def apply(self, delta: HoldingDelta | Iterable[tuple[ContentKey, str]]) -> int:
        """Add the facts of a delta (or any iterable of facts); returns how many were new."""
        facts = delta.facts if isinstance(delta, HoldingDelta) else delta
        return self._add_many(facts)

    # -- snapshot -------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The index as bytes (canonical msgpack with a spec and version field,
        docs/spec/fabric-records.md).

        The facts are stored in the order learned, so a restored index has the
        same versions and a peer's ``delta_since`` bookmark stays valid.
        Failure counts are local health, not facts, and are not saved.
        """
        return self._store.snapshot()

    @classmethod
    def restore(cls, data: bytes) -> "HoldingIndex":
        """An index from ``snapshot()`` bytes; refuses another spec or version.

        The core reads the canonical form directly; anything else (another
        version, a non-canonical but valid encoding, damage) goes through the
        hardened general decoder, which accepts the former and names what is
        wrong with the rest.
        """
        idx = cls()
        try:
            idx._store.restore(data)
            return idx
        except (DecodeError, ValueError):
            pass
        return cls(_decode_snapshot(data))

    # -- display --------------------------------------------------------------
    def __repr__(self) -> str:
        names = self._store.holder_names()
        # Holders are nodes, not facts: few; past 1000 the first learned are shown.
        holders = sorted(names) if len(names) <= 1000 else names[:8]
        with self._lock:
            failed = sorted(h for h, n in self._failures.items() if n)
        shown = ", ".join(holders[:8]) + (", ..." if len(names) > 8 else "")
        fail = f", failing=[{', '.join(failed[:8])}{', ...' if len(failed) > 8 else ''}]" \
            if failed else ""
        return (f"HoldingIndex({len(self._store)} facts, {self._store.nkeys} keys, "
                f"holders=[{shown}]{fail})")

    def _repr_html_(self) -> str:
        """The first 20 keys learned and their holders (cost independent of size)."""
        rows = []
        shown = self._store.keys(20)
        for key in shown:
            hs = ", ".join(html.escape(h) for h in self.holders_of(key))
            rows.append(f"<tr><td><code>{html.escape(str(key)[:23])}&hellip;</code></td>"
                        f"<td>{hs}</td></tr>")
        more = self._store.nkeys - len(shown)
        tail = f"<tr><td colspan=2>&hellip; {more} more keys</td></tr>" if more > 0 else ""
        return (f"<b>{html.escape(repr(self))}</b><table><tr><th>key</th><th>holders</th></tr>"
                f"{''.join(rows)}{tail}</table>")


def _decode_snapshot(data: bytes) -> list[tuple[ContentKey, str]]:
    """The facts of a snapshot read with the general decoder, or ValueError
    (DecodeError for bytes that are not msgpack) naming what is wrong."""
    from . import unpack  # the hardened decoder

    doc = unpack(data)
    if not isinstance(doc, dict):
        raise ValueError("holding index snapshot: not a map")
    if doc.get("spec") != SNAPSHOT_SPEC:
        raise ValueError(f"holding index snapshot: spec is {doc.get('spec')!r}, "
                         f"expected {SNAPSHOT_SPEC!r}")
    if "version" not in doc:
        raise ValueError("holding index snapshot: no version field (refused)")
    if doc["version"] != SNAPSHOT_VERSION:
        raise ValueError(f"holding index snapshot: version {doc['version']!r} is not "
                         f"supported (this build reads version {SNAPSHOT_VERSION})")
    facts = doc.get("facts")
    if not isinstance(facts, list):
        raise ValueError("holding index snapshot: 'facts' is missing or not an array")
    out = []
    seen: dict[tuple[bytes, str], int] = {}
    for i, fact in enumerate(facts):
        if (not isinstance(fact, list) or len(fact) != 2
                or not isinstance(fact[0], bytes) or len(fact[0]) != 32
                or not isinstance(fact[1], str) or not fact[1]):
            raise ValueError(f"holding index snapshot: facts[{i}] is not "
                             f"[32-byte digest, holder str]")
        first = seen.setdefault((fact[0], fact[1]), i)
        if first != i:  # dropping it would shift every later version by one
            raise ValueError(f"holding index snapshot: facts[{i}] repeats facts[{first}] "
                             f"({ContentKey(fact[0])} held by {fact[1]!r}); a snapshot "
                             f"holds each fact once")
        out.append((ContentKey(fact[0]), fact[1]))
    return out
