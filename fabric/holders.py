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

Concurrency: each index has one lock and never holds it while taking
another index's lock, so ``a.merge(b)`` and ``b.merge(a)`` may run at the
same time in two threads, and ``a.merge(a)`` is a no-op.
"""

from __future__ import annotations

import html
import threading
from typing import Iterable, Iterator, NamedTuple

from ._core import ContentKey, canonical_bytes

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


def _check_key(key: object) -> ContentKey:
    if not isinstance(key, ContentKey):
        raise TypeError(f"a holding fact's key is a ContentKey, not {type(key).__name__}")
    return key


class HoldingIndex:
    """Grow-only set of ``(key, holder)`` facts with gossip deltas and snapshots."""

    def __init__(self, facts: Iterable[tuple[ContentKey, str]] = ()):
        self._lock = threading.Lock()
        self._by_key: dict[ContentKey, set[str]] = {}
        # Every fact in the order this index learned it; a version is a
        # position in this log, so delta_since is a slice.
        self._log: list[tuple[ContentKey, str]] = []
        self._failures: dict[str, int] = {}
        self._add_many(facts)

    # -- facts ---------------------------------------------------------------
    def _add_many(self, facts: Iterable[tuple[ContentKey, str]]) -> int:
        """Adds facts under this index's lock only; returns how many were new."""
        checked = [(_check_key(k), _check_holder(h)) for k, h in facts]
        added = 0
        with self._lock:
            for key, holder in checked:
                hs = self._by_key.get(key)
                if hs is None:
                    self._by_key[key] = {holder}
                elif holder in hs:
                    continue
                else:
                    hs.add(holder)
                self._log.append((key, holder))
                added += 1
        return added

    def announce(self, key: ContentKey, holder: str) -> bool:
        """Record that ``holder`` holds ``key``; True if the fact is new."""
        # One fact: the same as _add_many without its list (every miss of a
        # ContentAddressedFabric announces, so this is on its path).
        if type(key) is not ContentKey:
            _check_key(key)
        if type(holder) is not str or not holder:
            _check_holder(holder)
        with self._lock:
            hs = self._by_key.get(key)
            if hs is None:
                self._by_key[key] = {holder}
            elif holder in hs:
                return False
            else:
                hs.add(holder)
            self._log.append((key, holder))
        return True

    def holds(self, key: ContentKey, holder: str) -> bool:
        """Whether the fact ``(key, holder)`` is known."""
        return holder in self._by_key.get(key, ())

    def holders_of(self, key: ContentKey) -> list[str]:
        """Holders of ``key``: never-failed ones sorted by name, then failed ones
        (fewest failures first, then by name)."""
        with self._lock:
            hs = list(self._by_key.get(key, ()))
            fails = self._failures
            return sorted(hs, key=lambda h: (fails.get(h, 0), h))

    def keys(self) -> list[ContentKey]:
        """Every key with at least one known holder, sorted."""
        with self._lock:
            return sorted(self._by_key)

    def facts(self) -> list[tuple[ContentKey, str]]:
        """Every fact, in the order this index learned them."""
        with self._lock:
            return list(self._log)

    def __len__(self) -> int:
        return len(self._log)

    def __iter__(self) -> Iterator[tuple[ContentKey, str]]:
        return iter(self.facts())

    def __contains__(self, fact: object) -> bool:
        if not isinstance(fact, tuple) or len(fact) != 2:
            return False
        return self.holds(*fact)

    @property
    def version(self) -> int:
        """The number of facts learned so far (grows by one per new fact)."""
        return len(self._log)

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

        Takes ``other``'s lock to copy its facts, releases it, then takes this
        index's lock to add them: two indexes are never locked at once.
        """
        if not isinstance(other, HoldingIndex):
            raise TypeError(f"can only merge a HoldingIndex, not {type(other).__name__}")
        if other is self:
            return 0
        return self._add_many(other.facts())

    def delta_since(self, version: int) -> HoldingDelta:
        """The facts learned after ``version`` (0 = everything)."""
        if not isinstance(version, int) or version < 0:
            raise ValueError(f"version must be an int >= 0, got {version!r}")
        with self._lock:
            end = len(self._log)
            if version > end:
                raise ValueError(f"version {version} is ahead of this index (at {end})")
            return HoldingDelta(version, end, tuple(self._log[version:]))

    def apply(self, delta: HoldingDelta | Iterable[tuple[ContentKey, str]]) -> int:
        """Add the facts of a delta (or any iterable of facts); returns how many were new."""
        facts = delta.facts if isinstance(delta, HoldingDelta) else delta
        return self._add_many(facts)

    # -- snapshot -------------------------------------------------------------
    def snapshot(self) -> bytes:
        """The index as bytes (canonical msgpack with a spec and version field).

        The facts are stored in the order learned, so a restored index has the
        same versions and a peer's ``delta_since`` bookmark stays valid.
        Failure counts are local health, not facts, and are not saved.
        """
        with self._lock:
            log = list(self._log)
        return canonical_bytes({
            "spec": SNAPSHOT_SPEC,
            "version": SNAPSHOT_VERSION,
            "facts": [[k.digest, h] for k, h in log],
        })

    @classmethod
    def restore(cls, data: bytes) -> "HoldingIndex":
        """An index from ``snapshot()`` bytes; refuses another spec or version."""
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
        for i, fact in enumerate(facts):
            if (not isinstance(fact, list) or len(fact) != 2
                    or not isinstance(fact[0], bytes) or len(fact[0]) != 32
                    or not isinstance(fact[1], str) or not fact[1]):
                raise ValueError(f"holding index snapshot: facts[{i}] is not "
                                 f"[32-byte digest, holder str]")
            out.append((ContentKey(fact[0]), fact[1]))
        return cls(out)

    # -- display --------------------------------------------------------------
    def __repr__(self) -> str:
        with self._lock:
            nkeys = len(self._by_key)
            holders = sorted({h for hs in self._by_key.values() for h in hs})
            failed = sorted(h for h, n in self._failures.items() if n)
        shown = ", ".join(holders[:8]) + (", ..." if len(holders) > 8 else "")
        fail = f", failing=[{', '.join(failed)}]" if failed else ""
        return (f"HoldingIndex({len(self._log)} facts, {nkeys} keys, "
                f"holders=[{shown}]{fail})")

    def _repr_html_(self) -> str:
        rows = []
        for key in self.keys()[:20]:
            hs = ", ".join(html.escape(h) for h in self.holders_of(key))
            rows.append(f"<tr><td><code>{html.escape(str(key)[:23])}&hellip;</code></td>"
                        f"<td>{hs}</td></tr>")
        more = len(self._by_key) - len(rows)
        tail = f"<tr><td colspan=2>&hellip; {more} more keys</td></tr>" if more > 0 else ""
        return (f"<b>{html.escape(repr(self))}</b><table><tr><th>key</th><th>holders</th></tr>"
                f"{''.join(rows)}{tail}</table>")
