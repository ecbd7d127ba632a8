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

import asyncio
import collections
import concurrent.futures
import html
import itertools
import threading
import time
from typing import Any, Iterable, Iterator, cast

from . import _core
from ._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                    EvalRequest, RemoteError)
from .fabrics import (DIAG, ITEM, ContentPeer, EvalReply, EvalStream, _collect, _events_of,
                      _FabricBase, _recording, _replay_events, check_grants)
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


class ContentAddressedFabric(_core.ContentAddressedFabricCore,  # type: ignore[misc]
                             _FabricBase):
    """Local cassette, then holders and peers, then home; see the module doc.

    ``evaluate`` is the C base ``fabric._core.ContentAddressedFabricCore``'s,
    hit *and* miss: the grants check, key, cassette lookup and reply, then
    the resolution order (holders, peers, home), the collection of every
    peer's answer, the recording and announcing of the success, the
    counters and the deadline all run in C, calling peers and home as the
    Python objects they are. A peer call with a timeout goes through
    ``_call_within`` (a worker thread, so a hung in-process peer cannot hang
    the caller). ``aevaluate`` and ``stream`` drive the same C resolution
    (``_resolution``) from Python, awaiting or streaming from each source.

    ``node`` is this node's id; ``cassette`` its ``EvalCassette``; ``peers``
    a sequence of ``ContentPeer``; ``home`` any fabric that computes (or
    None); ``holders`` a shared ``HoldingIndex`` (a new one by default).
    ``peer_timeout`` (seconds, None for none) bounds each peer call.
    """

    _call_within = staticmethod(_call_within)

    def __init__(self, node: str, cassette: Any, peers: Iterable[ContentPeer] = (),
                 home: Any = None, holders: HoldingIndex | None = None, *,
                 grants: Iterable[str] = (), peer_timeout: float | None = 10.0,
                 remember: int = 256):
        if not isinstance(node, str) or not node:
            raise TypeError(f"node must be a non-empty str, not {node!r}")
        if peer_timeout is not None and not (isinstance(peer_timeout, (int, float))
                                             and peer_timeout > 0):
            raise ValueError(f"peer_timeout must be a positive number of seconds or None, "
                             f"not {peer_timeout!r}")
        _core.ContentAddressedFabricCore.__init__(self, node, cassette, frozenset(grants))
        self.home = home
        self.holders = HoldingIndex() if holders is None else holders
        self.peer_timeout = peer_timeout
        for p in peers:
            self.add_peer(p)
        self._remember = remember
        self._trails: collections.OrderedDict[ContentKey, tuple[str | None, list]] = \
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

    # -- bookkeeping ------------------------------------------------------------
    def _remember_trail(self, key: ContentKey, source: str | None, steps: list) -> None:
        """Called by the C resolution when it ends: what explain() reports."""
        with self._trail_lock:
            self._trails[key] = (source, list(steps))
            self._trails.move_to_end(key)
            while len(self._trails) > self._remember:
                self._trails.popitem(last=False)

    def _check(self, request: EvalRequest, g: frozenset) -> None:
        try:
            check_grants(request, g, f"ContentAddressedFabric {self.node!r}")
        except CapabilityDenied:
            self._count("denied")
            raise

    # -- evaluate ---------------------------------------------------------------
    # evaluate() is the C base's: hit and miss path in C, with these hooks.
    def _deny(self, request: EvalRequest, g: frozenset) -> None:
        """Called by the C hit path when grants fall short: raises CapabilityDenied."""
        self._check(request, g)

    def _evaluate_stream(self, request: EvalRequest, g: frozenset) -> EvalReply:
        """evaluate() of a stream request: the whole stream as one reply."""
        return _collect(self.stream(request, grants=g), request.key)

    # Until the resolution moves out of C (issue 12), the timeout is taken
    # but not honoured; request.deadline and peer_timeout bound the calls.
    honours_timeout = False

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``.

        A local hit is answered on the loop. A miss follows the same C
        resolution order, awaiting each peer's and home's own ``aevaluate``
        when it has one (a peer without one runs in a worker thread); the
        per-peer timeout cancels a peer that does not answer in time. The
        reply is recorded from a worker thread (recording may fsync).
        """
        g = self._grants(grants)
        reply = self._lookup(request, grants=g)  # the C hit path, grants checked
        if reply is not None:
            # The C code builds replies of the class given to _set_reply_class.
            return cast(EvalReply, reply)
        if request.stream:
            return await asyncio.to_thread(self.evaluate, request, grants=g)
        res = self._resolution(request, grants=g)
        try:
            while True:
                target, what, timeout = res.next()
                try:
                    reply = await _acall(target, what, timeout, request, g)
                except Exception as exc:
                    if res.failed(exc):
                        raise
                    continue
                out = await asyncio.to_thread(res.accept, reply)
                if out is not None:
                    return cast(EvalReply, out)
        except BaseException:
            res.abort()  # a no-op once the resolution has ended
            raise

    # -- streams ------------------------------------------------------------------
    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream:
        """A stream from the local cassette (replayed lazily), else from the first
        holder, peer or home that starts it; recorded frame by frame as it is
        consumed and held only once it ends normally.

        Sources are tried in the C resolution order, here, until one gives its
        first item (or ends cleanly), so a stream nobody holds fails at once,
        and a source that fails before its first item is passed over for the
        next one like a failed ``evaluate``. Once an item has been given to
        the caller the stream cannot restart elsewhere: a source failing after
        that ends the stream with a ``StreamInterrupted`` diagnostic and an
        error (``RemoteError`` from a peer, home's own exception from home),
        and nothing is recorded. The request's deadline is checked before
        every event.
        """
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if key in self.cassette:
            self._count("local_hits")
            return EvalStream(_replay_events(self.cassette, key), key, "local")
        res = self._resolution(request, grants=g)
        try:
            while True:
                target, _what, _timeout = res.next()
                try:
                    events = _events_of(target.stream(request, grants=g))
                    head = _head(events)
                except Exception as exc:
                    if res.failed(exc):
                        raise
                    continue
                break
            left = res.remaining()
            steps = list(res.steps)
            source, counter, peer = res.started()
        except BaseException:
            res.abort()
            raise
        t_end = None if left is None else time.monotonic() + left

        def done() -> None:
            self._count(counter)
            self.holders.announce(key, self.node)

        relayed = self._relay(head, events, key, source, peer, steps, t_end, request.deadline)
        return EvalStream(_recording(relayed, self.cassette, key, done), key, source)

    def _relay(self, head, events, key, source, peer, steps, t_end, deadline):
        """The events of a started stream: the deadline checked before each; a
        failure ends the stream with a diagnostic and an error (never a restart)."""
        items = 0
        ok = False
        try:
            for ev in itertools.chain(head, events):
                if t_end is not None and time.monotonic() > t_end:
                    raise DeadlineExceeded(f"the request's deadline of {deadline} s passed "
                                           f"after {items} items of the stream for {key} from "
                                           f"{source}")
                if ev[0] == ITEM:
                    items += 1
                yield ev
            ok = True
        except GeneratorExit:
            raise
        except Exception as exc:
            self._count("failures")
            what = _describe_answer(exc)
            message = (f"the stream for {key} from {source} failed after {items} items "
                       f"({what}); it cannot restart elsewhere and is not recorded")
            steps.append(("peer" if peer else "home", peer or "home",
                          f"failed after {items} items: {what}"))
            self._remember_trail(key, None, steps)
            if peer is not None and not isinstance(exc, DeadlineExceeded):
                self.holders.mark_failed(peer)
                remote = RemoteError(message)
                remote.node = peer
                remote.remote_type = type(exc).__name__
                err: BaseException = remote
            else:
                err = exc
                exc.add_note(message)
            yield DIAG, {"kind": "StreamInterrupted", "message": message}
            if err is exc:
                raise
            raise err from exc
        finally:
            if not ok:
                close = getattr(events, "close", None)
                if close is not None:
                    close()

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
        for name, _serve, announced in self._order(key):
            steps.append(("holder" if announced else "peer", name, "would be asked"))
        steps.append(("home", "home" if self.home is not None else "-",
                      "would compute" if self.home is not None else "no home"))
        return Explanation(key, None, steps)

    def _describe(self) -> str:
        peers = ", ".join(self._peers)
        home = type(self.home).__name__ if self.home is not None else None
        try:
            held: int | str = len(self.cassette)
        except Exception:
            held = "?"
        return f"node={self.node!r}, held={held}, peers=[{peers}], home={home}"


def _head(events: Iterator[tuple[int, Any]]) -> list[tuple[int, Any]]:
    """Pulls a stream's events up to and including its first item (all of them
    if it has none): until then a failing source can be passed over."""
    head = []
    for ev in events:
        head.append(ev)
        if ev[0] == ITEM:
            break
    return head


async def _acall(target: Any, what: str, timeout: float | None, request: EvalRequest,
                 g: frozenset) -> Any:
    """``await target.aevaluate(...)`` (or its ``evaluate`` in a worker thread),
    cancelled with ``DeadlineExceeded`` after ``timeout`` seconds."""
    aevaluate = getattr(target, "aevaluate", None)
    if aevaluate is not None:
        task = asyncio.ensure_future(aevaluate(request, grants=g))
    else:
        task = asyncio.ensure_future(asyncio.to_thread(target.evaluate, request, grants=g))
    if timeout is None:
        return await task
    try:
        done, _ = await asyncio.wait((task,), timeout=timeout)
    except BaseException:
        task.cancel()
        raise
    if not done:
        task.cancel()
        raise DeadlineExceeded(f"{what} did not answer within {timeout:.3g} s")
    return task.result()
