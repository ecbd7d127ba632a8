"""Content-addressed resolution: a fleet of cassettes presented as one fabric.

``ContentAddressedFabric(node, cassette, peers, home, holders)`` answers a
request from, in order:

1. its own cassette (a *local hit*: no peer is contacted);
2. the peers announced as holders of the request's key in the holding index
   (healthy ones first, then the ones that failed before), then the other
   peers, one at a time;
3. its home site (which computes).

The first success is recorded in the local cassette and announced in the
holding index, so this node becomes a holder too. Errors are never
recorded. When no peer answers and there is no home (or the request's
``consistency`` is ``"no-home"``), it fails closed with ``NoHolderError``
whose ``.attempts`` lists every peer asked and what it answered.

Every call, hits included, first checks the caller's grants against the
request's declared capabilities. ``peer_timeout`` bounds each peer call and
the request's ``deadline`` bounds the whole resolution.
"""

from __future__ import annotations

import collections
import concurrent.futures
import html
import itertools
import threading
import time
from typing import Any, Iterable

from . import _core
from ._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                    EvalRequest, NoHolderError, RemoteError, canonical_bytes)
from .fabrics import (EvalReply, EvalStream, ContentPeer, _collect, _Counters, _events_of,
                      _FabricBase, _recording, _replay_events, check_grants, reply_from_record,
                      reply_record)
from .holders import HoldingIndex

__all__ = ["ContentAddressedFabric", "Explanation"]

# Peer calls with a timeout run here, so a hung in-process peer cannot hang
# the caller (a network client would honour the timeout itself).
_POOL_LOCK = threading.Lock()
_POOL: concurrent.futures.ThreadPoolExecutor | None = None


def _pool() -> concurrent.futures.ThreadPoolExecutor:
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=64,
                                                          thread_name_prefix="fabric-peer")
        return _POOL


def _call_within(fn: Any, timeout: float | None, what: str, *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)``, or ``DeadlineExceeded`` after ``timeout`` seconds."""
    if timeout is None:
        return fn(*args, **kwargs)
    fut = _pool().submit(fn, *args, **kwargs)
    try:
        return fut.result(timeout=timeout)
    except concurrent.futures.TimeoutError:
        fut.cancel()
        raise DeadlineExceeded(f"{what} did not answer within {timeout:.3g} s") from None


def _describe_answer(exc: BaseException) -> str:
    if isinstance(exc, ContentNotHeld):
        return "not held"
    return f"{type(exc).__name__}: {exc}"


class Explanation:
    """Why a request resolved where it did: ``key``, ``source`` and ``steps``.

    Each step is ``(stage, target, outcome)``: stage is ``"local"``,
    ``"holder"`` (an announced holder), ``"peer"`` or ``"home"``.
    ``source`` is None when the request has not been resolved here yet (the
    steps then say what would be tried).
    """

    __slots__ = ("key", "source", "steps")

    def __init__(self, key: ContentKey, source: str | None, steps: list[tuple[str, str, str]]):
        self.key = key
        self.source = source
        self.steps = list(steps)

    def __repr__(self) -> str:
        head = f"explain {self.key}: " + (f"from {self.source}" if self.source
                                            else "not resolved here yet")
        lines = [head] + [f"  {stage:<6} {target:<12} {outcome}"
                          for stage, target, outcome in self.steps]
        return "\n".join(lines)

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><td>{html.escape(a)}</td><td>{html.escape(b)}</td>"
                       f"<td>{html.escape(c)}</td></tr>" for a, b, c in self.steps)
        src = html.escape(self.source or "not resolved here yet")
        return (f"<b>{html.escape(str(self.key))}</b>: {src}<table><tr><th>stage</th>"
                f"<th>target</th><th>outcome</th></tr>{rows}</table>")


class ContentAddressedFabric(_core.ContentAddressedFabricCore, _FabricBase):
    """Local cassette, then holders and peers, then home; see the module doc.

    ``evaluate``'s hit path (grants check, key, cassette lookup, reply) is
    the C base ``fabric._core.ContentAddressedFabricCore``; misses come back
    here to ``_resolve``.

    ``node`` is this node's id; ``cassette`` its ``EvalCassette``; ``peers``
    a sequence of ``ContentPeer``; ``home`` any fabric that computes (or
    None); ``holders`` a shared ``HoldingIndex`` (a new one by default).
    ``peer_timeout`` (seconds, None for none) bounds each peer call.
    """

    def __init__(self, node: str, cassette: Any, peers: Iterable[ContentPeer] = (),
                 home: Any = None, holders: HoldingIndex | None = None, *,
                 grants: Iterable[str] = (), peer_timeout: float | None = 10.0,
                 remember: int = 256):
        if not isinstance(node, str) or not node:
            raise TypeError(f"node must be a non-empty str, not {node!r}")
        _core.ContentAddressedFabricCore.__init__(self, node, cassette, frozenset(grants))
        self.home = home
        self.holders = HoldingIndex() if holders is None else holders
        self.peer_timeout = peer_timeout
        self._peers: dict[str, ContentPeer] = {}
        for p in peers:
            self.add_peer(p)
        self._remember = remember
        self._trails: collections.OrderedDict[ContentKey, tuple[str, list]] = \
            collections.OrderedDict()
        self._trail_lock = threading.Lock()

    # -- peers ----------------------------------------------------------------
    @property
    def peers(self) -> list[ContentPeer]:
        """The peers this node may ask, in the order given."""
        return list(self._peers.values())

    def add_peer(self, peer: ContentPeer) -> None:
        """Add (or replace) a peer; this node itself is never its own peer."""
        if not isinstance(peer, ContentPeer):
            raise TypeError(f"peers are ContentPeer objects, not {type(peer).__name__}")
        if peer.node != self.node:
            self._peers[peer.node] = peer

    def announce_held(self) -> int:
        """Announce every key of the cassette as held by this node (after a
        restart, so peers learn what the ledger replayed). Returns the count."""
        return self.holders.apply((k, self.node) for k in self.cassette)

    def _order(self, key: ContentKey) -> list[tuple[ContentPeer, bool]]:
        """Announced holders (healthy first), then the other peers (failed last)."""
        peers = self._peers
        announced = [h for h in self.holders.holders_of(key) if h in peers]
        seen = set(announced)
        fails = self.holders.failures
        rest = sorted((p for n, p in peers.items() if n not in seen),
                      key=lambda p: fails(p.node) > 0)  # stable: given order otherwise
        return [(peers[h], True) for h in announced] + [(p, False) for p in rest]

    # -- bookkeeping ------------------------------------------------------------
    def _hold(self, key: ContentKey, reply: EvalReply) -> None:
        record = reply_record(reply)
        self.cassette.record(key, record)
        self._count("bytes_recorded", len(canonical_bytes(record)))
        self.holders.announce(key, self.node)

    def _remember_trail(self, key: ContentKey, source: str | None, steps: list) -> None:
        with self._trail_lock:
            self._trails[key] = (source, steps)
            self._trails.move_to_end(key)
            while len(self._trails) > self._remember:
                self._trails.popitem(last=False)

    def _check(self, request: EvalRequest, g: frozenset) -> None:
        try:
            check_grants(request, g, f"ContentAddressedFabric {self.node!r}")
        except CapabilityDenied:
            self._count("denied")
            raise

    @staticmethod
    def _remaining(t_end: float | None, attempts: list, key: ContentKey) -> float | None:
        if t_end is None:
            return None
        left = t_end - time.monotonic()
        if left <= 0:
            raise _with_attempts(DeadlineExceeded(
                f"the request's deadline passed while resolving {key}"
                + _attempts_text(attempts)), attempts)
        return left

    # -- evaluate ---------------------------------------------------------------
    # evaluate() is the C base's: hit path in C, then these hooks.
    def _deny(self, request: EvalRequest, g: frozenset) -> None:
        """Called by the C hit path when grants fall short: raises CapabilityDenied."""
        self._check(request, g)

    def _evaluate_stream(self, request: EvalRequest, g: frozenset) -> EvalReply:
        """evaluate() of a stream request: the whole stream as one reply."""
        return _collect(self.stream(request, grants=g), request.key)

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin: a local hit is answered on the loop; resolution runs in
        a worker thread so the loop is never blocked."""
        import asyncio

        g = self._grants(grants)
        reply = self._lookup(request, grants=g)  # the C hit path, grants checked
        if reply is not None:
            return reply
        return await asyncio.to_thread(self.evaluate, request, grants=g)

    def _resolve(self, request: EvalRequest, g: frozenset, key: ContentKey) -> EvalReply:
        steps: list[tuple[str, str, str]] = [("local", self.node, "not held")]
        attempts: list[tuple[str, BaseException]] = []
        try:
            reply = self._resolve_steps(request, g, key, steps, attempts)
        except BaseException:
            self._count("failures")
            self._remember_trail(key, None, steps)
            raise
        self._remember_trail(key, reply.source, steps)
        return reply

    def _resolve_steps(self, request, g, key, steps, attempts) -> EvalReply:
        if request.consistency == "local-only":
            steps.append(("policy", "local-only", "peers and home not asked"))
            raise ContentNotHeld(f"node {self.node!r} does not hold {key} and the request "
                                 f"is local-only")
        t_end = None if request.deadline is None else time.monotonic() + request.deadline
        for peer, announced in self._order(key):
            left = self._remaining(t_end, attempts, key)
            timeout = self.peer_timeout if left is None else (
                left if self.peer_timeout is None else min(left, self.peer_timeout))
            stage = "holder" if announced else "peer"
            try:
                reply = _call_within(peer.serve.evaluate, timeout, f"peer {peer.node!r}",
                                     request, grants=g)
                rkey = getattr(reply, "key", None)
                if not isinstance(reply, EvalReply) or (rkey is not None and rkey != key):
                    raise RemoteError(f"peer {peer.node!r} answered with a reply for "
                                      f"another key ({rkey})")
            except Exception as exc:
                attempts.append((peer.node, exc))
                steps.append((stage, peer.node, _describe_answer(exc)))
                # A peer that is not an announced holder may simply not hold the
                # key; an announced holder that does not (stale), or any peer that
                # errs or times out, goes to the back of the queue next time.
                if announced or not isinstance(exc, (ContentNotHeld, CapabilityDenied)):
                    self.holders.mark_failed(peer.node)
                continue
            self.holders.mark_ok(peer.node)
            self._hold(key, reply)
            self._count("peer_hits")
            steps.append((stage, peer.node, "hit"))
            return reply._with_source(f"peer:{peer.node}")

        if self.home is None or request.consistency == "no-home":
            why = "no home" if self.home is None else "request is no-home"
            steps.append(("home", "-", why))
            raise _with_attempts(NoHolderError(
                f"no holder answered for {key} ({request.op!r}) and {why}"
                + _attempts_text(attempts)), attempts)
        left = self._remaining(t_end, attempts, key)
        try:
            reply = _call_within(self.home.evaluate, left, "home", request, grants=g)
        except Exception as exc:
            steps.append(("home", "home", _describe_answer(exc)))
            if attempts:
                exc.add_note("peers asked first:" + _attempts_text(attempts))
            raise
        self._hold(key, reply)
        self._count("home_computes")
        steps.append(("home", "home", "computed"))
        return reply._with_source("home")

    # -- streams ------------------------------------------------------------------
    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalStream:
        """A stream from the local cassette (replayed lazily), else from the first
        holder, peer or home that starts it; recorded frame by frame as it is
        consumed and held only once it ends normally.

        Resolution happens here, up to the first event, so a stream nobody
        holds fails at once. A source that fails after its first item ends the
        stream with that error (the items already given cannot be taken back).
        """
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if key in self.cassette:
            self._count("local_hits")
            return EvalStream(_replay_events(self.cassette, key), key, "local")
        steps: list[tuple[str, str, str]] = [("local", self.node, "not held")]
        attempts: list[tuple[str, BaseException]] = []
        try:
            source, events, counter = self._open_stream(request, g, key, steps, attempts)
        except BaseException:
            self._count("failures")
            self._remember_trail(key, None, steps)
            raise
        self._remember_trail(key, source, steps)

        def done() -> None:
            self._count(counter)
            self.holders.announce(key, self.node)

        return EvalStream(_recording(events, self.cassette, key, done), key, source)

    def _open_stream(self, request, g, key, steps, attempts):
        if request.consistency == "local-only":
            steps.append(("policy", "local-only", "peers and home not asked"))
            raise ContentNotHeld(f"node {self.node!r} does not hold {key} and the request "
                                 f"is local-only")
        t_end = None if request.deadline is None else time.monotonic() + request.deadline
        sources: list[tuple[str, str, Any, bool]] = [
            ("holder" if announced else "peer", peer.node, peer.serve, announced)
            for peer, announced in self._order(key)]
        if self.home is not None and request.consistency != "no-home":
            sources.append(("home", "home", self.home, False))
        for stage, name, fab, announced in sources:
            self._remaining(t_end, attempts, key)
            try:
                events = _events_of(fab.stream(request, grants=g))
                first = next(events, None)
            except Exception as exc:
                steps.append((stage, name, _describe_answer(exc)))
                if stage == "home":
                    if attempts:
                        exc.add_note("peers asked first:" + _attempts_text(attempts))
                    raise
                attempts.append((name, exc))
                if announced or not isinstance(exc, (ContentNotHeld, CapabilityDenied)):
                    self.holders.mark_failed(name)
                continue
            steps.append((stage, name, "streaming"))
            if stage != "home":
                self.holders.mark_ok(name)
            head = () if first is None else (first,)
            source = "home" if stage == "home" else f"peer:{name}"
            counter = "home_computes" if stage == "home" else "peer_hits"
            return source, itertools.chain(head, events), counter
        why = "no home" if self.home is None else "request is no-home"
        steps.append(("home", "-", why))
        raise _with_attempts(NoHolderError(
            f"no holder answered for {key} ({request.op!r}) and {why}"
            + _attempts_text(attempts)), attempts)

    # -- explain and display ----------------------------------------------------------
    def explain(self, request: EvalRequest) -> Explanation:
        """Where ``request`` was (or would be) answered from, and why each step missed."""
        key = request.key
        if key in self.cassette:
            with self._trail_lock:
                trail = self._trails.get(key)
            if trail is None:
                return Explanation(key, "local", [("local", self.node, "held")])
            # Resolved here earlier and recorded: say how, then that it is held now.
            steps = list(trail[1]) + [("local", self.node, f"held now (first from {trail[0]})")]
            return Explanation(key, "local", steps)
        with self._trail_lock:
            trail = self._trails.get(key)
        if trail is not None:
            return Explanation(key, trail[0], trail[1])
        steps = [("local", self.node, "not held")]
        for peer, announced in self._order(key):
            steps.append(("holder" if announced else "peer", peer.node, "would be asked"))
        steps.append(("home", "home" if self.home is not None else "-",
                      "would compute" if self.home is not None else "no home"))
        return Explanation(key, None, steps)

    def _describe(self) -> str:
        peers = ", ".join(self._peers)
        home = type(self.home).__name__ if self.home is not None else None
        try:
            held = len(self.cassette)
        except Exception:
            held = "?"
        return f"node={self.node!r}, held={held}, peers=[{peers}], home={home}"


def _attempts_text(attempts: list) -> str:
    if not attempts:
        return "; no peer was asked"
    return "; peers asked: " + "; ".join(f"{n}: {_describe_answer(e)}" for n, e in attempts)


def _with_attempts(exc: BaseException, attempts: list) -> BaseException:
    exc.attempts = [(n, e) for n, e in attempts]
    return exc
