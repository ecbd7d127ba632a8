"""The peer governor: which peers a node may ask, and when to ask again.

A ``PeerGovernor`` keeps, per peer, its health (failures in all and in a
row, the last event and when, whether it is down) and a backoff: after a
failure the peer is not asked again before ``retry_at``, a delay that
doubles with each failure in a row from ``backoff_base`` up to
``backoff_cap`` seconds, shortened by a random jitter (up to ``jitter`` of
it, so peers that failed together are not all retried at once). After
``down_after`` failures in a row the peer is *down*: still retried after its
backoff (one probe), and up again at its first success.

Admission is policy, not health: with an ``allow`` list (None: open) only
the peers on it are asked; a peer on the ``block`` list never is.

A node's links to its peers (``fabric.node``) dial through the governor:
a lost link or a failed dial is a failure of that peer, the next dial waits
its backoff, a handshake is a success, and a peer refused by the lists is
never dialled (a link to it is closed when the lists change to refuse it,
and dialled again when they change back: ``watch``).

The governor is local: nothing of it is gossiped. It reads time only
through its ``clock`` (monotonic seconds; tests pass their own) and draws
jitter from its ``rng``. Thread-safe: one lock per governor.
"""

from __future__ import annotations

import random
import threading
import time
from typing import Callable, Iterable, NamedTuple

from ._core import FabricUnavailable

__all__ = ["PeerGovernor", "PeerHealth", "PeerSkipped"]


class PeerSkipped(FabricUnavailable):
    """A peer was not asked: the governor refused it (``.reason`` says why)."""

    reason: str


class PeerHealth(NamedTuple):
    """One peer's health as the governor sees it.

    ``failures`` counts every failure, ``consecutive`` those since its last
    success; ``last_event`` is ``"ok"``, ``"failed: ..."`` or ``"penalised:
    ..."`` (None before any), at clock time ``last_at``; ``retry_at`` is the
    clock time before which it is not asked (None: no backoff).
    """

    failures: int
    consecutive: int
    last_event: str | None
    last_at: float | None
    down: bool
    retry_at: float | None


_FRESH = PeerHealth(0, 0, None, None, False, None)


def _check_seconds(name: str, value: object, *, zero: bool = False) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0 or (
            value == 0 and not zero):
        raise ValueError(f"{name} must be a {'non-negative' if zero else 'positive'} number "
                         f"of seconds, not {value!r}")
    return float(value)


class PeerGovernor:
    """Allowlist, blocklist, health and backoff of a node's peers.

    ``PeerGovernor(allow=None, block=(), down_after=3, backoff_base=0.5,
    backoff_cap=30.0, jitter=0.5, clock=time.monotonic, rng=None)``.
    """

    def __init__(self, *, allow: Iterable[str] | None = None, block: Iterable[str] = (),
                 down_after: int = 3, backoff_base: float = 0.5, backoff_cap: float = 30.0,
                 jitter: float = 0.5, clock: Callable[[], float] = time.monotonic,
                 rng: random.Random | None = None):
        if isinstance(down_after, bool) or not isinstance(down_after, int) or down_after < 1:
            raise ValueError(f"down_after must be an int >= 1, not {down_after!r}")
        self.backoff_base = _check_seconds("backoff_base", backoff_base, zero=True)
        self.backoff_cap = _check_seconds("backoff_cap", backoff_cap, zero=True)
        if self.backoff_cap < self.backoff_base:
            raise ValueError(f"backoff_cap ({backoff_cap}) is below backoff_base ({backoff_base})")
        if isinstance(jitter, bool) or not isinstance(jitter, (int, float)) or not 0 <= jitter <= 1:
            raise ValueError(f"jitter must be a fraction in [0, 1], not {jitter!r}")
        self.jitter = float(jitter)
        self.down_after = down_after
        self.allow: frozenset[str] | None = None if allow is None else frozenset(allow)
        self.block: frozenset[str] = frozenset(block)
        self._clock = clock
        self._rng = rng if rng is not None else random.Random()
        self._lock = threading.Lock()
        self._health: dict[str, PeerHealth] = {}
        self._skips = 0
        self._penalties = 0
        self._watchers: list[Callable[[], None]] = []

    # -- policy -----------------------------------------------------------------
    def set_lists(self, *, allow: Iterable[str] | None = None,
                  block: Iterable[str] | None = None) -> None:
        """Replace the allowlist (None: open) and, if given, the blocklist."""
        with self._lock:
            self.allow = None if allow is None else frozenset(allow)
            if block is not None:
                self.block = frozenset(block)
            watchers = list(self._watchers)
        for cb in watchers:  # outside the lock: a watcher may ask the governor
            cb()

    def watch(self, callback: Callable[[], None]) -> None:
        """Call ``callback()`` (on the thread of ``set_lists``) whenever the
        lists change: a node's links re-check whether they may dial."""
        with self._lock:
            self._watchers.append(callback)

    def unwatch(self, callback: Callable[[], None]) -> None:
        """Stop calling ``callback`` (no error if it was not watching)."""
        with self._lock:
            try:
                self._watchers.remove(callback)
            except ValueError:
                pass

    def policy_refusal(self, node: str | None, url: str | None = None) -> str | None:
        """Why the lists refuse the peer with node id ``node`` at ``url``
        (either may be None: not known), or None. The blocklist refuses
        either name; the allowlist admits either, and a peer whose node id
        is not known yet is admitted (its handshake tells it). Health and
        backoff are not considered, and nothing is counted."""
        block, allow = self.block, self.allow
        if node in block or url in block:
            return "blocklisted"
        if allow is not None and node is not None and node not in allow and url not in allow:
            return "not on the allowlist"
        return None

    def refusal(self, peer: str) -> str | None:
        """Why ``peer`` may not be asked now (None: it may). Counts a skip."""
        why = self._why_not(peer, self._clock())
        if why is not None:
            with self._lock:
                self._skips += 1
        return why

    def would_refuse(self, peer: str) -> str | None:
        """``refusal`` without counting (for ``explain()``)."""
        return self._why_not(peer, self._clock())

    def _why_not(self, peer: str, now: float) -> str | None:
        if peer in self.block:
            return "blocklisted"
        if self.allow is not None and peer not in self.allow:
            return "not on the allowlist"
        h = self._health.get(peer)
        if h is None or h.retry_at is None or now >= h.retry_at:
            return None
        state = (f"down after {h.consecutive} failures in a row" if h.down
                 else f"backing off after {h.consecutive} failure(s)")
        return f"{state}; next try in {h.retry_at - now:.3g} s"

    def skip(self, peer: str) -> PeerSkipped | None:
        """The ``PeerSkipped`` error for a refused peer, or None to ask it."""
        why = self.refusal(peer)
        if why is None:
            return None
        err = PeerSkipped(f"peer {peer!r} was not asked: {why}")
        err.reason = why
        return err

    # -- health -----------------------------------------------------------------
    def backoff(self, consecutive: int) -> float:
        """The delay before the next try after ``consecutive`` failures in a
        row, before jitter: base * 2**(n-1), at most the cap."""
        if consecutive <= 0 or self.backoff_base == 0:
            return 0.0
        return min(self.backoff_cap, self.backoff_base * 2.0 ** min(consecutive - 1, 60))

    def failed(self, peer: str, what: str, *, penalty: bool = False) -> PeerHealth:
        """Note a failure of ``peer`` (``penalty``: it answered something that
        failed verification); returns its new health."""
        now = self._clock()
        with self._lock:
            h = self._health.get(peer, _FRESH)
            n = h.consecutive + 1
            delay = self.backoff(n) * (1.0 - self.jitter * self._rng.random())
            new = PeerHealth(h.failures + 1, n,
                             ("penalised: " if penalty else "failed: ") + what, now,
                             n >= self.down_after, now + delay if delay > 0 else None)
            self._health[peer] = new
            if penalty:
                self._penalties += 1
            return new

    def wait_time(self, peer: str) -> float:
        """Seconds from now until ``peer``'s backoff ends (0: it may be asked)."""
        h = self._health.get(peer)
        if h is None or h.retry_at is None:
            return 0.0
        return max(0.0, h.retry_at - self._clock())

    def alias(self, old: str, new: str) -> None:
        """``old`` and ``new`` name one peer (a URL whose handshake told its
        node id): ``old``'s record is folded into ``new``'s (failures
        added, the later event kept) and forgotten."""
        if old == new:
            return
        with self._lock:
            h = self._health.pop(old, None)
            if h is None:
                return
            n = self._health.get(new)
            if n is None:
                self._health[new] = h
                return
            later = h if (h.last_at or 0.0) > (n.last_at or 0.0) else n
            self._health[new] = PeerHealth(
                h.failures + n.failures, later.consecutive, later.last_event, later.last_at,
                later.down, later.retry_at)

    def ok(self, peer: str) -> None:
        """Note that ``peer`` answered: no backoff, not down."""
        now = self._clock()
        with self._lock:
            h = self._health.get(peer, _FRESH)
            self._health[peer] = PeerHealth(h.failures, 0, "ok", now, False, None)

    def health(self, peer: str) -> PeerHealth:
        """``peer``'s health (a fresh record for a peer never heard of)."""
        return self._health.get(peer, _FRESH)

    def peers(self) -> dict[str, PeerHealth]:
        """Every peer with a recorded event, and its health."""
        with self._lock:
            return dict(self._health)

    def counters(self) -> dict[str, int]:
        """``peers_down``, ``peers_backing_off``, ``peer_skips`` and
        ``peer_penalties`` (for a fabric's ``stats()``)."""
        now = self._clock()
        with self._lock:
            hs = list(self._health.values())
            skips, penalties = self._skips, self._penalties
        return {
            "peers_down": sum(1 for h in hs if h.down),
            "peers_backing_off": sum(1 for h in hs if h.retry_at is not None and now < h.retry_at),
            "peer_skips": skips,
            "peer_penalties": penalties,
        }

    # -- snapshot ---------------------------------------------------------------
    def export_state(self) -> dict[str, object]:
        """The governor's policy, health and backoff as plain values (for a
        node snapshot, docs/spec/snapshot.md). Clock times are saved relative
        to now (``last_ago``, ``retry_in`` seconds): a monotonic clock means
        nothing in another process."""
        now = self._clock()
        with self._lock:
            hs = sorted(self._health.items())
            skips, penalties = self._skips, self._penalties
        return {
            "allow": None if self.allow is None else sorted(self.allow),
            "block": sorted(self.block),
            "down_after": self.down_after, "backoff_base": self.backoff_base,
            "backoff_cap": self.backoff_cap, "jitter": self.jitter,
            "skips": skips, "penalties": penalties,
            "health": [[p, h.failures, h.consecutive, h.last_event,
                        None if h.last_at is None else max(0.0, now - h.last_at), h.down]
                       for p, h in hs],
            "backoff": [[p, h.consecutive, max(0.0, h.retry_at - now)]
                        for p, h in hs if h.retry_at is not None and h.retry_at > now],
        }

    @classmethod
    def from_state(cls, state: dict[str, object], *, clock: Callable[[], float] = time.monotonic,
                   rng: random.Random | None = None) -> "PeerGovernor":
        """A governor from ``export_state()`` values (already checked by the
        snapshot decoder); relative times become times of ``clock``."""
        gov = cls(allow=state["allow"], block=state["block"],  # type: ignore[arg-type]
                  down_after=state["down_after"],  # type: ignore[arg-type]
                  backoff_base=state["backoff_base"],  # type: ignore[arg-type]
                  backoff_cap=state["backoff_cap"],  # type: ignore[arg-type]
                  jitter=state["jitter"], clock=clock, rng=rng)  # type: ignore[arg-type]
        now = clock()
        retry = {p: now + float(r) for p, _n, r in state["backoff"]}  # type: ignore[attr-defined]
        for p, failures, consecutive, event, ago, down in state["health"]:  # type: ignore[attr-defined]
            gov._health[p] = PeerHealth(failures, consecutive, event,
                                        None if ago is None else now - float(ago), down,
                                        retry.get(p))
        gov._skips = state["skips"]  # type: ignore[assignment]
        gov._penalties = state["penalties"]  # type: ignore[assignment]
        return gov

    def __repr__(self) -> str:
        c = self.counters()
        allow = "open" if self.allow is None else f"{len(self.allow)} allowed"
        return (f"PeerGovernor({allow}, {len(self.block)} blocked, "
                f"{len(self._health)} peers seen, {c['peers_down']} down)")
