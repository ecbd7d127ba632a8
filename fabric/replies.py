"""Replies and streams: what a fabric gives back.

- ``EvalReply``: the answer to ``evaluate`` (value, diagnostics, trace, key,
  source); the record itself is the C type ``fabric._core.EvalReply``.
- ``EvalStream`` / ``AsyncEvalStream``: a streamed reply, iterated with
  ``for`` / ``async for``; diagnostics keep their place between items.
- The helpers every fabric shares to turn replies into cassette records and
  back, to record and replay streams (sync and async twins over the same
  event shape), and to bridge a blocking producer to an async consumer.

A stream is a sequence of *events* ``(tag, payload)``: ``ITEM`` for an item,
``DIAG`` for a diagnostic, so diagnostics keep their place when a stream is
recorded and replayed. On disk each event is the two-element array ``[tag,
payload]`` (``docs/spec/fabric-records.md``).

This module imports only ``_core`` and ``_workers``; the fabrics import it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import html
import threading
from typing import (TYPE_CHECKING, Any, AsyncGenerator, AsyncIterator, Callable, Generic,
                    Iterable, Iterator, TypeVar, cast)

from . import _core
from ._core import ContentKey

if TYPE_CHECKING:
    from ._workers import Workers

__all__ = ["ITEM", "DIAG", "EvalReply", "EvalStream", "AsyncEvalStream", "reply_record",
           "reply_from_record"]

T = TypeVar("T")

#: Event tag of an item of a stream.
ITEM = 0
#: Event tag of a diagnostic of a stream.
DIAG = 1

Event = tuple[int, Any]


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
    ``"lease:<node>"`` (a node's home passed the miss to the key's lease
    holder), ``"ledger"``, ``"held"``). Two replies are equal when value,
    diagnostics, trace and key are: the source is not part of the answer.

    Fabrics build replies; build one yourself (``EvalReply(value,
    diagnostics, trace, key, source)``) to write a fabric of your own.
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


# The C hit path builds replies of this class.
_core._set_reply_class(EvalReply)


def reply_record(reply: _core.EvalReply) -> list[Any]:
    """What a cassette stores for a reply: ``[value, diagnostics, trace]``.

    ``cassette.record(reply.key, reply_record(reply))`` makes a reply held;
    ``reply_from_record`` reads it back.
    """
    return [reply.value, list(reply.diagnostics), reply.trace]


def reply_from_record(record: Any, key: ContentKey, source: str) -> EvalReply:
    """The reply a cassette record holds (see ``reply_record``), with
    ``source`` saying where it came from; ``FabricError`` if ``record`` is
    not a reply record."""
    # Checked and built by the glue, which the hit path of
    # ContentAddressedFabric shares (the reply is of the class given to
    # _set_reply_class: this module's EvalReply).
    return cast(EvalReply, _core._reply_from_record(record, key, source))


# ===========================================================================
# Streams
# ===========================================================================

class EvalStream(_core._EventStream, Generic[T]):
    """A streamed reply: ``for item in stream`` gets items as they are produced.

    ``diagnostics`` fills in as diagnostics arrive (in order, between items);
    ``source`` says where the stream comes from; ``items_seen`` counts the
    items given so far and ``done`` tells whether the stream ended.
    ``close()`` (or ``cancel()``, or leaving a ``with`` block) stops it
    early, and a stream stopped early is never recorded as held.

    ``EvalStream(events, key, source="computed")``: ``events`` yields
    ``(tag, payload)`` pairs (``ITEM`` or ``DIAG``). Iteration is the C
    base's (no Python frame per item).
    """

    if TYPE_CHECKING:
        diagnostics: list[dict[str, Any]]
        items_seen: int
        done: bool
        key: ContentKey | None
        source: str
        _events: Iterator[Event]

        def __init__(self, events: Iterable[Event], key: ContentKey | None,
                     source: str = "computed") -> None: ...

        def __next__(self) -> T: ...

    def __iter__(self) -> EvalStream[T]:
        return self

    def iter_events(self) -> Iterator[Event]:
        """The remaining ``(tag, payload)`` events: items and diagnostics in
        order. Closing this iterator before the end closes the stream (its
        producer) as ``close()`` does, then and there: not when the stream
        happens to be collected (a reference cycle may keep it for long)."""
        try:
            for ev in self._events:
                if ev[0] == DIAG:
                    self.diagnostics.append(ev[1])
                else:
                    self.items_seen += 1
                yield ev
        except GeneratorExit:
            try:  # (as __del__: the consumer stopped; a failing cleanup is not its error)
                self.close()
            except Exception:
                pass
            raise
        self.done = True

    def close(self) -> None:
        """Stop the stream; the producer is told and nothing is recorded."""
        close = getattr(self._events, "close", None)
        if close is not None:
            close()

    cancel = close

    def __enter__(self) -> EvalStream[T]:
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
        return _stream_repr("EvalStream", self)

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


def _stream_repr(name: str, s: EvalStream[Any] | AsyncEvalStream[Any]) -> str:
    """``NAME(open, source=..., items=N, diagnostics=N, key=...)``: a stream's repr."""
    state = "done" if s.done else "open"
    key = f", key={str(s.key)[:19]}..." if s.key is not None else ""
    return (f"{name}({state}, source={s.source!r}, items={s.items_seen}, "
            f"diagnostics={len(s.diagnostics)}{key})")


class AsyncEvalStream(Generic[T]):
    """The async twin of ``EvalStream``: ``async for item in stream``.

    Stop it early with ``await stream.aclose()`` (or ``async with``); a
    consumer task that is cancelled gets ``CancelledError`` and the producer
    is stopped. Either way nothing is recorded.
    """

    def __init__(self, events: AsyncIterator[Event], key: ContentKey | None,
                 source: str = "computed"):
        self._events = events
        self.key = key
        self.source = source
        self.diagnostics: list[dict[str, Any]] = []
        self.items_seen = 0
        self.done = False

    def __aiter__(self) -> AsyncEvalStream[T]:
        return self

    async def __anext__(self) -> T:
        async for tag, payload in self._events:
            if tag == ITEM:
                self.items_seen += 1
                return payload  # type: ignore[no-any-return,unused-ignore]
            self.diagnostics.append(payload)
        self.done = True
        raise StopAsyncIteration

    async def aiter_events(self) -> AsyncIterator[Event]:
        """The remaining ``(tag, payload)`` events: items and diagnostics in
        order. Closing this iterator before the end closes the stream (its
        producer) as ``aclose()`` does, then and there (``iter_events``)."""
        try:
            async for ev in self._events:
                if ev[0] == DIAG:
                    self.diagnostics.append(ev[1])
                else:
                    self.items_seen += 1
                yield ev
        except GeneratorExit:
            try:  # (as iter_events)
                await self.aclose()
            except Exception:
                pass
            raise
        self.done = True

    async def aclose(self) -> None:
        """Stop the stream; the producer is told and nothing is recorded."""
        close = getattr(self._events, "aclose", None)
        if close is not None:
            await close()

    cancel = aclose

    async def __aenter__(self) -> AsyncEvalStream[T]:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return _stream_repr("AsyncEvalStream", self)

    def _repr_html_(self) -> str:
        return f"<code>{html.escape(repr(self))}</code>"


# ===========================================================================
# Event helpers shared by the fabrics (sync and async twins)
# ===========================================================================

def _events_of(stream: Any) -> Iterator[Event]:
    """``(tag, payload)`` events of any stream a fabric returned (an
    ``EvalStream``, or any iterable of items)."""
    if isinstance(stream, EvalStream):
        return stream.iter_events()
    return ((ITEM, x) for x in stream)


async def _aevents_of(stream: Any) -> AsyncIterator[Event]:
    """Async twin of ``_events_of`` (an ``AsyncEvalStream`` or any async
    iterable of items)."""
    if isinstance(stream, AsyncEvalStream):
        events = stream.aiter_events()
    else:
        events = _items_as_events(stream)
    try:
        async for ev in events:
            yield ev
    finally:
        await _aclose(stream)


async def _items_as_events(stream: Any) -> AsyncIterator[Event]:
    async for x in stream:
        yield ITEM, x


async def _aclose(it: Any) -> None:
    close = getattr(it, "aclose", None)
    if close is not None:
        await close()


def _close_quietly(it: Any) -> None:
    close = getattr(it, "close", None)
    if close is not None:
        try:
            close()
        except Exception:
            pass


class _Interrupt:
    """How a consumer that stopped interrupts the step a worker is running
    for it, when that step can be interrupted.

    A step of a blocking iterator (``_aevents_from_sync``) runs on a worker
    thread and may, down its chain, run a step of an async generator on a
    private loop (``LocalFabric._drive``). That step is a task: while it
    runs it registers here how to cancel it (``watching``), and the
    consumer that stopped asks for it (``interrupt``): the async generator
    gets ``CancelledError`` at its await. Nothing else is interrupted (a
    sync generator runs its item to the end, then is closed). The step finds
    its ``_Interrupt`` in the context variable ``_INTERRUPT``, set by the
    worker's call (``Workers`` runs a call in a copy of the submitter's
    context, so a hop to another worker, as ``_sync_within`` makes, keeps
    it). An interrupt asked for before the step registers is kept: the step
    is cancelled as it registers.
    """

    __slots__ = ("_lock", "_cancel", "requested")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cancel: Callable[[], None] | None = None
        self.requested = False

    def interrupt(self) -> None:
        """Cancel the step registered now, or the next one to register."""
        with self._lock:
            self.requested = True
            cancel = self._cancel
        if cancel is not None:
            cancel()

    @contextlib.contextmanager
    def watching(self, cancel: Callable[[], None]) -> Iterator[None]:
        """While the block runs, ``interrupt`` calls ``cancel`` (at once
        when one was asked for already). ``cancel`` must be safe to call
        from any thread, also once the step ended."""
        with self._lock:
            self._cancel = cancel
            requested = self.requested
        if requested:
            cancel()
        try:
            yield
        finally:
            with self._lock:
                self._cancel = None


#: The ``_Interrupt`` of the step this worker call runs (see ``_Interrupt``).
_INTERRUPT: contextvars.ContextVar[_Interrupt | None] = \
    contextvars.ContextVar("fabric_interrupt", default=None)


def _under(interrupt: _Interrupt, fn: Callable[..., T]) -> Callable[..., T]:
    """``fn`` run with ``interrupt`` as the step's ``_INTERRUPT`` (a call
    submitted to ``Workers``: it runs in a copy of the context)."""

    def call(*args: Any, **kwargs: Any) -> T:
        _INTERRUPT.set(interrupt)
        return fn(*args, **kwargs)
    return call


async def _aevents_from_sync(events: Iterator[Event],
                             workers: Workers) -> AsyncGenerator[Event, None]:
    """A blocking event iterator pulled one event at a time on ``workers``,
    so the event loop never blocks on the producer.

    When the consumer stops early (``aclose``, ``break``, or its task is
    cancelled) the producer is closed: at once if it is between events, else
    as soon as the event it is producing is ready (a generator cannot be
    closed while it runs: that is "generator already executing"). An event
    an async generator is producing (an async generator op run by
    ``LocalFabric._drive``, down the producer's chain) is interrupted
    instead: the step is cancelled (``_Interrupt``), the op gets
    ``CancelledError`` at its await, and the producer ends with it. A sync
    generator cannot be interrupted mid-item: it is closed once its item is
    ready. The consumer is not kept waiting for either: a cancelled consumer
    gets its ``CancelledError`` at once.
    """
    done = object()
    step = None
    interrupt = _Interrupt()
    pull = _under(interrupt, next)
    try:
        while True:
            step = workers.submit(pull, events, done)
            ev = await asyncio.wrap_future(step)
            step = None
            if ev is done:
                return
            yield ev
    finally:
        if step is not None and not step.done():
            step.add_done_callback(lambda _f: _close_quietly(events))
            interrupt.interrupt()
        elif getattr(events, "close", None) is not None:
            try:
                closing = workers.submit(_close_quietly, events)
            except _core.FabricUnavailable:  # the pool is closed: close here
                _close_quietly(events)
            else:
                await asyncio.wrap_future(closing)


def _replay_events(cassette: Any, key: ContentKey) -> Iterator[Event]:
    """Lazily replays a recorded stream as events (``FabricError`` for a frame
    that is not ``[tag, payload]``); the glue's ``_Replay`` iterator."""
    return cast(Iterator[Event], _core._Replay(cassette.get_stream(key), key))


def _stream_writer(cassette: Any, key: ContentKey, request: Any) -> Any:
    """``cassette.record_stream(key)``, with the request's identity bytes
    when given and the cassette is an ``EvalCassette`` (a stand-in keeps its
    own ``record_stream(key)``)."""
    if request is None or not isinstance(cassette, _core.EvalCassette):
        return cassette.record_stream(key)
    return cassette.record_stream(key, request=request)


def _recording(events: Iterator[Event], cassette: Any, key: ContentKey,
               on_done: Callable[[], None] | None = None,
               request: Any = None) -> Iterator[Event]:
    """Passes events through while recording them frame by frame.

    The stream becomes held only when it ends normally; an error or an early
    close aborts the recording, so a partial stream is never held. request
    (the EvalRequest) is recorded beside the stream.
    """
    writer = _stream_writer(cassette, key, request)
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
            _close_quietly(events)


async def _arecording(events: AsyncIterator[Event], cassette: Any, key: ContentKey,
                      workers: Workers,
                      on_done: Callable[[], None] | None = None,
                      request: Any = None) -> AsyncIterator[Event]:
    """Async twin of ``_recording``. Frames are appended on the loop (an
    append is buffered); the closing write, which may fsync, runs on
    ``workers``."""
    writer = _stream_writer(cassette, key, request)
    ok = False
    try:
        async for ev in events:
            writer.append([ev[0], ev[1]])
            yield ev
        ok = True
    finally:
        if ok:
            await asyncio.wrap_future(workers.submit(writer.close))
            if on_done is not None:
                on_done()
        else:
            writer.abort()
            await _aclose(events)


def _collect(stream: EvalStream[Any], key: ContentKey | None) -> EvalReply:
    """A whole stream as one reply: the list of its items."""
    with stream:
        items = list(stream)
    return EvalReply(items, stream.diagnostics, None, key, stream.source)


async def _acollect(stream: AsyncEvalStream[Any], key: ContentKey | None) -> EvalReply:
    """Async twin of ``_collect``."""
    async with stream:
        items = [x async for x in stream]
    return EvalReply(items, stream.diagnostics, None, key, stream.source)
