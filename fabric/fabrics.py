"""Fabrics: the composable objects that evaluate requests.

Every fabric has the ``EvalFabric`` interface: ``evaluate(request, *,
grants=None) -> EvalReply``, ``stream(request, *, grants=None) -> EvalStream``
and the async twins ``aevaluate`` / ``astream``. They compose:

- ``LocalFabric(ops)`` runs registered ops in this process;
- ``LedgeredRelayFabric(inner, cassette)`` answers from a cassette first and
  records the inner fabric's successes;
- ``RelayFabric(inner, allowed_capabilities)`` gates a (remote) fabric on its
  link status and on capabilities;
- ``ContentServeFabric(cassette)`` answers only what a cassette holds;
- ``ContentAddressedFabric(node, cassette, peers, home, holders)`` resolves
  from the local cassette, then from holders, then from home.

Grants: ``grants`` is the set of capabilities the caller holds. ``None``
means the fabric's own default (the ``grants=`` given to its constructor,
empty unless set). A fabric that wraps another resolves the caller's grants
once and passes them down explicitly, so the outermost fabric's default is
the one that applies. Every fabric checks the request's declared
capabilities against the grants, on a cache hit too: caching never weakens
capability policy.

Errors are exceptions (``fabric.FabricError`` and its children), never
recorded: only successful replies become held content.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import html
import itertools
import threading
import time
from enum import Enum
from typing import (TYPE_CHECKING, Any, AsyncIterator, Iterable, Iterator, Protocol,
                    cast, runtime_checkable)

from . import _core
from ._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                    EvalRequest, FabricUnavailable, NoHolderError, canonical_bytes)
from .holders import HoldingIndex
from .ops import REGISTRY, Op, OpRegistry, _collector

__all__ = [
    "EvalFabric", "EvalReply", "EvalStream", "AsyncEvalStream", "Explanation",
    "LocalFabric", "LedgeredRelayFabric", "RelayFabric", "RelayStatus",
    "ContentServeFabric", "ContentPeer", "ContentAddressedFabric",
]

# Stream events: a stream is a sequence of (tag, payload) where the tag says
# whether the payload is an item or a diagnostic, so diagnostics keep their
# place between items when recorded and replayed. On disk each event is the
# two-element array [tag, payload].
ITEM = 0
DIAG = 1


# ===========================================================================
# Replies
# ===========================================================================

class EvalReply(_core.EvalReply):
    """The answer to an evaluation (immutable).

    ``value`` is what the op returned (for a stream op evaluated with
    ``evaluate``, the list of its items); ``diagnostics`` the diagnostics it
    attached (a tuple of dicts with ``kind`` and ``message``); ``trace`` a
    list of steps when the request asked for one, else None; ``key`` the
    request's content key; ``source`` where this reply came from on this
    call (``"computed"``, ``"local"``, ``"peer:<node>"``, ``"home"``,
    ``"ledger"``, ``"held"``). Two replies are equal when value,
    diagnostics, trace and key are: the source is not part of the answer.

    The record itself is the C type ``fabric._core.EvalReply`` (a local hit
    is built without running Python code); this subclass adds the reprs.
    """

    __slots__ = ()

    def __repr__(self) -> str:
        v = repr(self.value)
        if len(v) > 80:
            v = v[:77] + "..."
        extra = f", diagnostics={len(self.diagnostics)}" if self.diagnostics else ""
        extra += ", trace=[...]" if self.trace is not None else ""
        key = f", key={str(self.key)[:19]}..." if self.key is not None else ""
        return f"EvalReply({v}, source={self.source!r}{extra}{key})"

    def _repr_html_(self) -> str:
        rows = [("value", html.escape(repr(self.value)[:2000])),
                ("source", html.escape(self.source)),
                ("key", f"<code>{html.escape(str(self.key))}</code>")]
        for d in self.diagnostics:
            rows.append(("diagnostic", html.escape(f"{d.get('kind')}: {d.get('message')}")))
        if self.trace is not None:
            rows.append(("trace", html.escape(repr(self.trace)[:2000])))
        body = "".join(f"<tr><th style='text-align:left'>{k}</th><td>{v}</td></tr>"
                       for k, v in rows)
        return f"<table><caption>EvalReply</caption>{body}</table>"


_core._set_reply_class(EvalReply)


def reply_record(reply: EvalReply) -> list:
    """What a cassette stores for a reply: ``[value, diagnostics, trace]``."""
    return [reply.value, list(reply.diagnostics), reply.trace]


def reply_from_record(record: Any, key: ContentKey, source: str) -> EvalReply:
    """The reply a cassette record holds (see ``reply_record``); ``FabricError``
    if it is not one. Checked and built by the glue, which the hit path of
    ContentAddressedFabric shares (the reply is of the class given to
    ``_set_reply_class``, this module's EvalReply)."""
    return cast(EvalReply, _core._reply_from_record(record, key, source))


# ===========================================================================
# Streams
# ===========================================================================

class EvalStream:
    """A streamed reply: iterate it to get items as they are produced.

    ``diagnostics`` fills in as diagnostics arrive (in order, between items);
    ``source`` says where the stream comes from; ``close()`` (or
    ``cancel()``, or leaving a ``with`` block) stops it early, and a stream
    stopped early is never recorded as held.
    """

    def __init__(self, events: Iterator[tuple[int, Any]], key: ContentKey | None,
                 source: str = "computed"):
        self._events = events
        self.key = key
        self.source = source
        self.diagnostics: list[dict] = []
        self.items_seen = 0
        self.done = False

    def __iter__(self) -> "EvalStream":
        return self

    def __next__(self) -> Any:
        for tag, payload in self._events:
            if tag == ITEM:
                self.items_seen += 1
                return payload
            self.diagnostics.append(payload)
        self.done = True
        raise StopIteration

    def iter_events(self) -> Iterator[tuple[int, Any]]:
        """The remaining (tag, payload) events: items and diagnostics in order."""
        for ev in self._events:
            if ev[0] == DIAG:
                self.diagnostics.append(ev[1])
            else:
                self.items_seen += 1
            yield ev
        self.done = True

    def close(self) -> None:
        """Stop the stream; the producer is told and nothing is recorded."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    cancel = close

    def __enter__(self) -> "EvalStream":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        # A stream dropped midway must not stay open (and recorded).
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "done" if self.done else "open"
        key = f", key={str(self.key)[:19]}..." if self.key is not None else ""
        return (f"EvalStream({state}, source={self.source!r}, items={self.items_seen}, "
                f"diagnostics={len(self.diagnostics)}{key})")

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


class AsyncEvalStream:
    """The async twin of ``EvalStream``: ``async for item in stream``."""

    def __init__(self, events: Any, key: ContentKey | None, source: str = "computed"):
        self._events = events  # an async iterator of (tag, payload)
        self.key = key
        self.source = source
        self.diagnostics: list[dict] = []
        self.items_seen = 0
        self.done = False

    def __aiter__(self) -> "AsyncEvalStream":
        return self

    async def __anext__(self) -> Any:
        async for tag, payload in self._events:
            if tag == ITEM:
                self.items_seen += 1
                return payload
            self.diagnostics.append(payload)
        self.done = True
        raise StopAsyncIteration

    async def aclose(self) -> None:
        """Stop the stream; nothing is recorded."""
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()

    async def __aenter__(self) -> "AsyncEvalStream":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        state = "done" if self.done else "open"
        return f"AsyncEvalStream({state}, source={self.source!r}, items={self.items_seen})"


def _events_of(stream: Any) -> Iterator[tuple[int, Any]]:
    """(tag, payload) events of any stream a fabric returned."""
    if isinstance(stream, EvalStream):
        return stream.iter_events()
    return ((ITEM, x) for x in stream)


async def _aevents_from_sync(events: Iterator[tuple[int, Any]]):
    """Pulls a blocking event iterator from a worker thread, one event at a time,
    so the event loop never blocks on the producer."""
    loop = asyncio.get_running_loop()
    done = object()
    try:
        while True:
            ev = await loop.run_in_executor(None, next, events, done)
            if ev is done:
                return
            yield ev
    finally:
        close = getattr(events, "close", None)
        if close is not None:
            await loop.run_in_executor(None, close)


def _replay_events(cassette: Any, key: ContentKey) -> Iterator[tuple[int, Any]]:
    """Lazily replays a recorded stream as events."""
    for i, frame in enumerate(cassette.get_stream(key)):
        if not isinstance(frame, (list, tuple)) or len(frame) != 2 or frame[0] not in (ITEM, DIAG):
            raise _core.FabricError(f"recorded stream {key}: frame {i} is not [tag, payload]")
        yield frame[0], frame[1]


def _recording(events: Iterator[tuple[int, Any]], cassette: Any, key: ContentKey,
               on_done: Any = None) -> Iterator[tuple[int, Any]]:
    """Passes events through while recording them frame by frame.

    The stream becomes held only when it ends normally; an error or an early
    close aborts the recording, so a partial stream is never held.
    """
    writer = cassette.record_stream(key)
    ok = False
    try:
        for ev in events:
            writer.append([ev[0], ev[1]])
            yield ev
        ok = True
    finally:
        if ok:
            writer.close()
            if on_done is not None:
                on_done()
        else:
            writer.abort()
            close = getattr(events, "close", None)
            if close is not None:
                close()


# ===========================================================================
# The interface and the shared base
# ===========================================================================

@runtime_checkable
class EvalFabric(Protocol):
    """What every fabric offers (peers and home sites are any such object)."""

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalReply:
        """Evaluate ``request`` and return its reply, or raise."""
        ...

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> Iterator:
        """Evaluate a stream request; items come as they are produced."""
        ...

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin of ``evaluate``."""
        ...

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> Any:
        """Async twin of ``stream``: an async iterator."""
        ...


_EMPTY: frozenset[str] = frozenset()


#: ``check_grants(request, grants, where, extra=())``: raise ``CapabilityDenied``
#: unless ``grants`` (a frozenset) cover what the request declares (and
#: ``extra``, e.g. an op's own capabilities). One implementation, in the glue,
#: shared with ContentAddressedFabric's hit path.
check_grants = _core._check_grants


class _FabricBase:
    """Shared conveniences: grants, one-line calls, async defaults, display."""

    grants: frozenset = _EMPTY

    if TYPE_CHECKING:
        # What each fabric built on this base provides (the EvalFabric
        # interface, and the counters of those without a C base); declared
        # for the type checker only, so the MRO is the same as without it.
        _stats: _Counters

        def evaluate(self, request: EvalRequest, /, *,
                     grants: Iterable[str] | None = None) -> EvalReply: ...

        def stream(self, request: EvalRequest, /, *,
                   grants: Iterable[str] | None = None) -> Iterator: ...

    def _grants(self, grants: Iterable[str] | None) -> frozenset:
        return _core._as_grants(grants, self.grants)

    def call(self, op: Op | str, *args: Any, **kwargs: Any) -> Any:
        """Evaluate ``op(*args, **kwargs)`` through this fabric in one line.

        Returns the value for an ordinary op, and an ``EvalStream`` (iterate
        it) for a stream op. ``op`` is an ``Op`` or an op name (version 0).
        """
        request = _request_for(op, args, kwargs)
        if request.stream:
            return self.stream(request)
        return self.evaluate(request).value

    async def acall(self, op: Op | str, *args: Any, **kwargs: Any) -> Any:
        """Async twin of ``call`` (a stream op gives an ``AsyncEvalStream``)."""
        request = _request_for(op, args, kwargs)
        if request.stream:
            return self.astream(request)
        return (await self.aevaluate(request)).value

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin of ``evaluate``: runs it in a worker thread."""
        g = self._grants(grants)
        return await asyncio.to_thread(self.evaluate, request, grants=g)

    def astream(self, request: EvalRequest, *,
                grants: Iterable[str] | None = None) -> AsyncEvalStream:
        """Async twin of ``stream``: the producer runs in worker threads."""
        s = self.stream(request, grants=self._grants(grants))
        return AsyncEvalStream(_aevents_from_sync(_events_of(s)), request.key,
                               getattr(s, "source", "computed"))

    def stats(self) -> dict:
        """Counters of this fabric."""
        return dict(self._stats)

    def _describe(self) -> str:
        return ""

    def __repr__(self) -> str:
        stats = ", ".join(f"{k}={v}" for k, v in self.stats().items() if v)
        d = self._describe()
        parts = [p for p in (d, stats) if p]
        return f"{type(self).__name__}({', '.join(parts)})"

    def _repr_html_(self) -> str:
        rows = "".join(f"<tr><th style='text-align:left'>{html.escape(k)}</th>"
                       f"<td>{html.escape(str(v))}</td></tr>" for k, v in self.stats().items())
        return (f"<b>{html.escape(type(self).__name__)}</b> {html.escape(self._describe())}"
                f"<table>{rows}</table>")


def _request_for(op: Op | str, args: tuple, kwargs: dict) -> EvalRequest:
    if isinstance(op, Op):
        return op.request(*args, **kwargs)
    if isinstance(op, str):
        return EvalRequest(op, args, kwargs)
    if isinstance(op, EvalRequest):
        if args or kwargs:
            raise TypeError("call(request) takes no further arguments")
        return op
    raise TypeError(f"call() takes an Op (from @fabric.op), an op name or an EvalRequest, "
                    f"not {type(op).__name__}")


class _Counters:
    """Thread-safe counters (a plain dict under a lock)."""

    def __init__(self, *names: str):
        self._lock = threading.Lock()
        self._d = dict.fromkeys(names, 0)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            self._d[name] += n

    def __iter__(self):
        return iter(self._d)

    def items(self):
        with self._lock:
            return list(self._d.items())

    def keys(self):
        return self._d.keys()

    def __getitem__(self, name: str) -> int:
        return self._d[name]


# ===========================================================================
# LocalFabric
# ===========================================================================

class LocalFabric(_FabricBase):
    """Runs registered ops in this process.

    ``ops`` is an ``OpRegistry``, an iterable of ``Op`` (default: every op
    registered with ``@fabric.op``). The caller's grants must cover the op's
    declared capabilities and the request's. Concurrent identical requests
    (same content key) are computed once: every caller gets that reply (or
    that error). ``aevaluate`` runs the op in a worker thread (or, for an
    ``async def`` op, on the loop), never blocking the event loop.
    """

    def __init__(self, ops: OpRegistry | Iterable[Op] | None = None, *,
                 grants: Iterable[str] = (), name: str = "local", max_workers: int | None = None):
        if ops is None:
            ops = REGISTRY
        self.ops = ops if isinstance(ops, OpRegistry) else OpRegistry(ops)
        self.grants = frozenset(grants)
        self.name = name
        self._lock = threading.Lock()
        self._inflight: dict[ContentKey, concurrent.futures.Future] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=max_workers, thread_name_prefix="fabric-local")
        self._stats = _Counters("computed", "coalesced", "errors", "denied", "streams")

    def _describe(self) -> str:
        return f"{len(self.ops)} ops"

    def _op_for(self, request: EvalRequest, g: frozenset) -> Op:
        op = self.ops.find(request)
        try:
            check_grants(request, g, f"LocalFabric {self.name!r}", op.capabilities)
        except CapabilityDenied:
            self._stats.add("denied")
            raise
        return op

    # -- computing ------------------------------------------------------------
    def _compute(self, op: Op, request: EvalRequest) -> EvalReply:
        """Runs the op once in this thread; returns its reply or raises."""
        sink: list = []
        token = _collector.set(sink)
        t0 = time.perf_counter()
        try:
            if op.is_stream:
                value: Any = []
                diags: list[Any] = []
                for tag, p in self._op_events(op, request):
                    (value if tag == ITEM else diags).append(p)
            else:
                value = op.fn(*request.args, **request.kwargs)
                if op.is_async:
                    value = asyncio.run(value)
                diags = sink
        finally:
            _collector.reset(token)
        return EvalReply(value, diags, self._trace(request, t0), request.key, "computed")

    def _trace(self, request: EvalRequest, t0: float) -> list | None:
        if not request.trace:
            return None
        return [{"site": self.name, "op": request.op, "version": request.version,
                 "seconds": round(time.perf_counter() - t0, 6)}]

    def _op_events(self, op: Op, request: EvalRequest):
        """Events of a stream op run in this thread, cut at ``answer_limit``."""
        if op.is_async:
            raise TypeError(f"op {op.name!r} is an async generator: use astream()")
        gen = op.fn(*request.args, **request.kwargs)
        limit = request.answer_limit
        n = 0
        mine: list = []
        try:
            while limit is None or n < limit:
                token = _collector.set(mine)
                try:
                    item = next(gen)
                except StopIteration:
                    break
                finally:
                    _collector.reset(token)
                while mine:
                    yield DIAG, mine.pop(0)
                n += 1
                yield ITEM, item
            while mine:
                yield DIAG, mine.pop(0)
        finally:
            gen.close()

    def _join(self, key: ContentKey) -> tuple[concurrent.futures.Future, bool]:
        with self._lock:
            fut = self._inflight.get(key)
            if fut is not None:
                self._stats.add("coalesced")
                return fut, False
            fut = concurrent.futures.Future()
            self._inflight[key] = fut
            return fut, True

    def _settle(self, key: ContentKey, fut: concurrent.futures.Future, op: Op,
                request: EvalRequest) -> None:
        try:
            reply = self._compute(op, request)
        except BaseException as exc:
            self._stats.add("errors")
            with self._lock:
                del self._inflight[key]
            fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._stats.add("computed")
        with self._lock:
            del self._inflight[key]
        fut.set_result(reply)

    # -- the interface --------------------------------------------------------
    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalReply:
        """Run the request's op here (coalescing identical concurrent requests)."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        key = request.key
        fut, owner = self._join(key)
        if owner:
            self._settle(key, fut, op, request)
        try:
            return fut.result(timeout=request.deadline)
        except concurrent.futures.TimeoutError:
            raise DeadlineExceeded(f"LocalFabric {self.name!r}: {request.op!r} did not finish "
                                   f"within the request's deadline of {request.deadline} s") from None

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin of ``evaluate``: the op runs in a worker thread (an
        ``async def`` op on this loop), so the loop is never blocked."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        key = request.key
        fut, owner = self._join(key)
        if owner:
            if op.is_async and not op.is_stream:
                asyncio.ensure_future(self._settle_async(key, fut, op, request))
            else:
                self._executor.submit(self._settle, key, fut, op, request)
        try:
            # shield: a caller giving up must not cancel the shared computation.
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)),
                                          request.deadline)
        except asyncio.TimeoutError:
            raise DeadlineExceeded(f"LocalFabric {self.name!r}: {request.op!r} did not finish "
                                   f"within the request's deadline of {request.deadline} s") from None

    async def _settle_async(self, key, fut, op, request) -> None:
        sink: list = []
        token = _collector.set(sink)
        t0 = time.perf_counter()
        try:
            value = await op.fn(*request.args, **request.kwargs)
        except BaseException as exc:
            self._stats.add("errors")
            with self._lock:
                del self._inflight[key]
            fut.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
            return
        finally:
            _collector.reset(token)
        self._stats.add("computed")
        with self._lock:
            del self._inflight[key]
        fut.set_result(EvalReply(value, sink, self._trace(request, t0), key, "computed"))

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalStream:
        """Run a stream op here; items are yielded as the generator produces them."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op (it returns one value): "
                            f"use evaluate()")
        self._stats.add("streams")
        return EvalStream(self._op_events(op, request), request.key, "computed")

    def astream(self, request: EvalRequest, *,
                grants: Iterable[str] | None = None) -> AsyncEvalStream:
        """Async twin of ``stream``; an async generator op runs on this loop."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op: use aevaluate()")
        self._stats.add("streams")
        if op.is_async:
            return AsyncEvalStream(self._async_op_events(op, request), request.key, "computed")
        return AsyncEvalStream(_aevents_from_sync(self._op_events(op, request)), request.key,
                               "computed")

    async def _async_op_events(self, op: Op, request: EvalRequest):
        agen = op.fn(*request.args, **request.kwargs)
        limit = request.answer_limit
        n = 0
        mine: list = []
        try:
            while limit is None or n < limit:
                token = _collector.set(mine)
                try:
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    break
                finally:
                    _collector.reset(token)
                while mine:
                    yield DIAG, mine.pop(0)
                n += 1
                yield ITEM, item
            while mine:
                yield DIAG, mine.pop(0)
        finally:
            await agen.aclose()


# ===========================================================================
# LedgeredRelayFabric
# ===========================================================================

class LedgeredRelayFabric(_FabricBase):
    """Cassette first, then an inner fabric; the inner's successes are recorded.

    A hit returns the recorded reply without calling ``inner`` (after the
    caller's grants are checked against the request's capabilities). A miss
    calls ``inner`` once and records its reply; if recording fails, the call
    fails too (a reply that could not be made durable is not returned as if
    it were). Errors are never recorded. Streams are recorded frame by frame
    and replayed lazily; a stream that fails or is closed early is not held.
    """

    def __init__(self, inner: Any, cassette: Any, *, grants: Iterable[str] = ()):
        self.inner = inner
        self.cassette = cassette
        self.grants = frozenset(grants)
        self._stats = _Counters("hits", "misses", "recorded", "errors", "denied")

    def _describe(self) -> str:
        return f"inner={type(self.inner).__name__}"

    def _check(self, request: EvalRequest, g: frozenset) -> None:
        try:
            check_grants(request, g, "LedgeredRelayFabric")
        except CapabilityDenied:
            self._stats.add("denied")
            raise

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalReply:
        """The recorded reply, else the inner fabric's (then recorded)."""
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if request.stream:
            return _collect(self.stream(request, grants=g), key)
        record = self.cassette.get(key)
        if record is not None:
            self._stats.add("hits")
            return reply_from_record(record, key, "ledger")
        self._stats.add("misses")
        try:
            reply = self.inner.evaluate(request, grants=g)
        except Exception:
            self._stats.add("errors")
            raise
        self.cassette.record(key, reply_record(reply))
        self._stats.add("recorded")
        return reply

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin: a hit is answered on the loop, a miss awaits the inner
        fabric and records from a worker thread (recording may fsync)."""
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if request.stream:
            return await asyncio.to_thread(self.evaluate, request, grants=g)
        record = self.cassette.get(key)
        if record is not None:
            self._stats.add("hits")
            return reply_from_record(record, key, "ledger")
        self._stats.add("misses")
        try:
            if hasattr(self.inner, "aevaluate"):
                reply = await self.inner.aevaluate(request, grants=g)
            else:
                reply = await asyncio.to_thread(self.inner.evaluate, request, grants=g)
        except Exception:
            self._stats.add("errors")
            raise
        await asyncio.to_thread(self.cassette.record, key, reply_record(reply))
        self._stats.add("recorded")
        return reply

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalStream:
        """Replay a recorded stream lazily, else stream from inner while recording."""
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if key in self.cassette:
            self._stats.add("hits")
            return EvalStream(_replay_events(self.cassette, key), key, "ledger")
        self._stats.add("misses")
        inner = self.inner.stream(request, grants=g)
        return EvalStream(_recording(_events_of(inner), self.cassette, key,
                                     lambda: self._stats.add("recorded")),
                          key, getattr(inner, "source", "computed"))


def _collect(stream: EvalStream, key: ContentKey) -> EvalReply:
    """A whole stream as one reply: the list of its items."""
    with stream:
        items = list(stream)
    return EvalReply(items, stream.diagnostics, None, key, stream.source)


# ===========================================================================
# RelayFabric
# ===========================================================================

class RelayStatus(str, Enum):
    """The state of a relay's link to its remote fabric."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


class RelayFabric(_FabricBase):
    """A gate in front of a (remote) fabric: link status, then capabilities.

    While the link is not ``connected`` every request fails at once with
    ``FabricUnavailable`` (a ``ConnectionError``) without reaching ``inner``;
    a request that needs a capability outside ``allowed_capabilities`` (or
    outside the caller's grants) fails with ``CapabilityDenied``. No caching,
    no silent retry: each call reaches ``inner`` at most once.
    """

    def __init__(self, inner: Any, allowed_capabilities: Iterable[str] = (), *,
                 status: RelayStatus | str = RelayStatus.CONNECTED, grants: Iterable[str] = ()):
        if isinstance(allowed_capabilities, str):
            raise TypeError("allowed_capabilities must be an iterable of str, not a str")
        self.inner = inner
        self.allowed_capabilities = frozenset(allowed_capabilities)
        self.grants = frozenset(grants)
        self._status = RelayStatus(status)
        self._stats = _Counters("forwarded", "refused_status", "refused_capability", "errors")

    @property
    def status(self) -> RelayStatus:
        """The link status (``connected``, ``reconnecting`` or ``disconnected``)."""
        return self._status

    def set_status(self, status: RelayStatus | str) -> None:
        """Change the link status (the network layer calls this)."""
        self._status = RelayStatus(status)

    def _describe(self) -> str:
        return f"status={self._status.value}, inner={type(self.inner).__name__}"

    def _gate(self, request: EvalRequest, grants: Iterable[str] | None) -> frozenset:
        g = self._grants(grants)
        status = self._status
        if status is not RelayStatus.CONNECTED:
            self._stats.add("refused_status")
            raise FabricUnavailable(f"RelayFabric: link is {status.value}; {request.op!r} "
                                    f"was not sent")
        caps = request.required_capabilities
        if caps and not self.allowed_capabilities.issuperset(caps):
            self._stats.add("refused_capability")
            missing = sorted(set(caps) - self.allowed_capabilities)
            raise CapabilityDenied(f"RelayFabric: capabilities {', '.join(missing)} needed by "
                                   f"{request.op!r} are not allowed through this relay")
        try:
            check_grants(request, g, "RelayFabric")
        except CapabilityDenied:
            self._stats.add("refused_capability")
            raise
        self._stats.add("forwarded")
        return g

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> EvalReply:
        """Forward to ``inner`` if the link is up and the capabilities pass."""
        g = self._gate(request, grants)
        try:
            return self.inner.evaluate(request, grants=g)
        except Exception:
            self._stats.add("errors")
            raise

    async def aevaluate(self, request: EvalRequest, *,
                        grants: Iterable[str] | None = None) -> EvalReply:
        """Async twin of ``evaluate``."""
        g = self._gate(request, grants)
        try:
            if hasattr(self.inner, "aevaluate"):
                return await self.inner.aevaluate(request, grants=g)
            return await asyncio.to_thread(self.inner.evaluate, request, grants=g)
        except Exception:
            self._stats.add("errors")
            raise

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None) -> Any:
        """Forward a stream request through the same gates."""
        g = self._gate(request, grants)
        return self.inner.stream(request, grants=g)


# ===========================================================================
# ContentServeFabric and ContentPeer
# ===========================================================================

class ContentServeFabric(_FabricBase):
    """Answers only what a cassette holds, else ``ContentNotHeld``.

    This is what a node serves to its peers: held replies, never compute.
    The caller's grants are still checked against the request's declared
    capabilities.
    """

    #: It never waits (a cassette lookup), so it meets any ``timeout=``.
    honours_timeout = True

    def __init__(self, cassette: Any, *, grants: Iterable[str] = (), node: str | None = None):
        self.cassette = cassette
        self.grants = frozenset(grants)
        self.node = node
        self._stats = _Counters("served", "not_held", "denied")

    def _describe(self) -> str:
        return f"node={self.node!r}" if self.node else ""

    def holds(self, key: ContentKey) -> bool:
        """Whether the cassette holds ``key``."""
        return key in self.cassette

    def _check(self, request: EvalRequest, g: frozenset) -> None:
        try:
            check_grants(request, g, "ContentServeFabric")
        except CapabilityDenied:
            self._stats.add("denied")
            raise

    def _not_held(self, key: ContentKey) -> ContentNotHeld:
        self._stats.add("not_held")
        where = f"node {self.node!r}" if self.node else "this node"
        return ContentNotHeld(f"{where} does not hold {key}")

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """The held reply for the request's key, else ``ContentNotHeld``."""
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if request.stream:
            return _collect(self.stream(request, grants=g), key)
        record = self.cassette.get(key)
        if record is None:
            raise self._not_held(key)
        self._stats.add("served")
        return reply_from_record(record, key, "held")

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream:
        """Replay a held stream lazily, else ``ContentNotHeld`` (raised at once)."""
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if key not in self.cassette:
            raise self._not_held(key)
        self._stats.add("served")
        return EvalStream(_replay_events(self.cassette, key), key, "held")


class ContentPeer:
    """A peer: its node id and the fabric that serves its held content.

    ``serve`` is any object with the fabric interface: a
    ``ContentServeFabric`` in this process, or a network client.
    """

    __slots__ = ("node", "serve")

    def __init__(self, node: str, serve: Any):
        if not isinstance(node, str) or not node:
            raise TypeError(f"a peer's node id is a non-empty str, not {node!r}")
        if not hasattr(serve, "evaluate"):
            raise TypeError(f"a peer's serve must have the fabric interface (evaluate, "
                            f"stream), not {type(serve).__name__}")
        self.node = node
        self.serve = serve

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ContentPeer):
            return NotImplemented
        return self.node == other.node and self.serve is other.serve

    def __hash__(self) -> int:
        return hash(self.node)

    def __repr__(self) -> str:
        return f"ContentPeer({self.node!r}, {type(self.serve).__name__})"
