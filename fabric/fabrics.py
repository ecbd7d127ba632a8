"""Fabrics: the composable objects that evaluate requests.

Every fabric has the ``EvalFabric`` interface: ``evaluate(request, *,
grants=None, timeout=None) -> EvalReply``, ``stream(request, *, grants=None,
timeout=None) -> EvalStream`` and the async twins ``aevaluate`` /
``astream``. They compose:

- ``LocalFabric(ops)`` runs registered ops in this process;
- ``LedgeredRelayFabric(inner, cassette)`` answers from a cassette first and
  records the inner fabric's successes;
- ``RelayFabric(inner, allowed_capabilities)`` gates a (remote) fabric on its
  link status and on capabilities;
- ``ContentServeFabric(cassette)`` answers only what a cassette holds;
- ``ContentAddressedFabric`` (``fabric.resolving``) resolves from the local
  cassette, then from holders, then from home.

Grants: ``grants`` is the set of capabilities the caller holds. ``None``
means the fabric's own default (the ``grants=`` given to its constructor,
empty unless set). A fabric that wraps another resolves the caller's grants
once and passes them down explicitly, so the outermost fabric's default is
the one that applies. Every fabric checks the request's declared
capabilities against the grants, on a cache hit too: caching never weakens
capability policy.

Time: ``timeout`` (seconds, None for none) bounds how long the caller
waits, like the request's own ``deadline`` (the shorter of the two
applies); a caller that runs out gets ``DeadlineExceeded``. Fabrics with
``honours_timeout = True`` bound the wait themselves; relays pass it on.

Errors are exceptions (``fabric.FabricError`` and its children), never
recorded: only successful replies become held content.

Replies and streams live in ``fabric.replies`` (re-exported here for the
modules that imported them from here).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import html
import logging
import math
import os
import threading
import time
from enum import Enum
from typing import (TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar, Coroutine,
                    Iterable, Iterator, Literal, ParamSpec, Protocol, TypeVar, cast, overload,
                    runtime_checkable)

from . import _core
from ._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                    EvalCassette, EvalRequest, FabricError, FabricUnavailable, OpNotFound)
from ._workers import Workers, default_max_workers
from .ops import REGISTRY, Op, OpRegistry, _collector
from .progress import Progress
from .replies import (_INTERRUPT, DIAG, ITEM, AsyncEvalStream, EvalReply, EvalStream, Event,
                      _acollect, _aclose, _aevents_from_sync, _aevents_of, _arecording,
                      _close_quietly, _collect, _events_of, _recording, _replay_events,
                      reply_from_record, reply_record)

__all__ = [
    "EvalFabric", "LocalFabric", "LedgeredRelayFabric", "RelayFabric", "RelayStatus",
    "ContentServeFabric", "ContentPeer", "check_grants",
]

# Names other modules import from here (they moved to fabric.replies).
_REEXPORTED = (DIAG, ITEM, AsyncEvalStream, EvalReply, EvalStream, _collect, _events_of,
               _recording, _replay_events, reply_from_record, reply_record)

#: Decisions of the fabrics at DEBUG (a relay's hit or miss); what a user
#: must know at WARNING. Records name keys, ops and fabrics, never arguments.
log = logging.getLogger("fabric.fabrics")
#: A cassette a fabric was given that cut a torn tail when it opened (WARNING).
cassette_log = logging.getLogger("fabric.cassette")

P = ParamSpec("P")
R = TypeVar("R")
Y = TypeVar("Y")
A = TypeVar("A")


# ===========================================================================
# The interface
# ===========================================================================

@runtime_checkable
class EvalFabric(Protocol):
    """What every fabric offers (peers and home sites are any such object).

    ``grants`` are the caller's capabilities (None: the fabric's default).
    ``timeout`` is how many seconds the caller waits at most (None: no
    bound but the request's own ``deadline``); when it passes the caller
    gets ``DeadlineExceeded``. A fabric that bounds the wait itself says so
    with the class attribute ``honours_timeout = True``; a fabric without
    it (or with it False) may block past ``timeout``, and whoever calls it
    under a deadline (``ContentAddressedFabric``'s resolution) bounds the
    call on its own.

    A fabric that stops waiting for a computation that goes on (a sync op
    keeps running in its thread after the caller's deadline, timeout or
    cancellation) sets ``pending_reply`` on the ``DeadlineExceeded`` or
    ``CancelledError`` it raises: a ``concurrent.futures.Future`` of the
    reply still to come, so a recording layer (``LedgeredRelayFabric``)
    can record it for later callers.
    """

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Evaluate ``request`` and return its reply, or raise."""
        ...

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> Iterator[Any]:
        """Evaluate a stream request; items come as they are produced."""
        ...

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``."""
        ...

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncIterator[Any]:
        """Async twin of ``stream``: an async iterator."""
        ...


_EMPTY: frozenset[str] = frozenset()


#: ``check_grants(request, grants, where, extra=())``: raise ``CapabilityDenied``
#: unless ``grants`` (a frozenset) cover what the request declares (and
#: ``extra``, e.g. an op's own capabilities); ``where`` names the fabric in the
#: message. One implementation, in the glue, shared with
#: ContentAddressedFabric's hit path.
check_grants = _core._check_grants

#: ``reply_from_record`` itself (the glue's), without its wrapper's frame.
_reply_from_record: Any = _core._reply_from_record
# The common miss's calls, bound once. (Python 3.11 reads `_collector.set`
# and `_core._reply` as attributes of a name that an import bound, making a
# bound method each time, instead of calling the method directly.)
_set_collector = _collector.set
_reset_collector = _collector.reset
_new_reply: Any = _core._reply


def _check_timeout(timeout: float | None) -> float | None:
    if timeout is None:
        return None
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)):
        raise TypeError(f"timeout must be a number of seconds or None, not "
                        f"{type(timeout).__name__}")
    if math.isnan(timeout) or timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds or None, not {timeout!r}")
    return float(timeout)


#: Seconds past which a wait is no limit (about 31.7 years; a request's
#: deadline is at most this, docs/spec/content-key.md): the platform's
#: clocks and waits end at ``threading.TIMEOUT_MAX`` (~9.2e9 s on Linux).
NO_LIMIT = 1e9


def _wait_timeout(timeout: float | None) -> float | None:
    """``timeout`` checked (``_check_timeout``), None for no limit: None, or
    past ``NO_LIMIT`` (infinity included)."""
    t = _check_timeout(timeout)
    return None if t is not None and t > NO_LIMIT else t


def _bound(request: EvalRequest, timeout: float | None) -> float | None:
    """The caller's wait: the shorter of the request's deadline and ``timeout``
    (None: no limit, as is a ``timeout`` past ``NO_LIMIT``)."""
    t = _wait_timeout(timeout)
    d = request.deadline
    if d is None:
        return t
    return d if t is None else min(d, t)


def _t(timeout: float | None) -> dict[str, float]:
    """The ``timeout=`` keyword for a call to another fabric: given only when
    set, so fabrics written before the interface took a timeout still work
    when none is asked for."""
    return {} if timeout is None else {"timeout": timeout}


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True


# ===========================================================================
# The shared base
# ===========================================================================

_POOL_LOCK = threading.Lock()


class _FabricBase:
    """Shared conveniences: grants, one-line calls, async defaults, workers,
    ``close()`` and the context manager, display."""

    grants: frozenset[str] = _EMPTY
    honours_timeout: ClassVar[bool] = True
    _max_workers: int | None = None
    # The worker threads (made on first use) and whether close() was called.
    # Plain attributes, not read through __dict__: reading an object's
    # __dict__ makes every later read of its attributes slower.
    _workers: Workers | None = None
    _closed = False

    if TYPE_CHECKING:
        # What each fabric built on this base provides (the EvalFabric
        # interface, and the counters of those without a C base); declared
        # for the type checker only, so the MRO is the same as without it.
        _stats: _Counters

        def evaluate(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None,
                     timeout: float | None = None) -> EvalReply: ...

        def stream(self, request: EvalRequest, /, *, grants: Iterable[str] | None = None,
                   timeout: float | None = None) -> Iterator[Any]: ...

    def _grants(self, grants: Iterable[str] | None) -> frozenset[str]:
        return _core._as_grants(grants, self.grants)

    # -- background work ------------------------------------------------------
    def _pool(self) -> Workers:
        """This fabric's worker threads (made on first use)."""
        pool = self._workers
        if pool is None:
            with _POOL_LOCK:
                pool = self._workers
                if pool is None:
                    if self._closed:
                        raise FabricUnavailable(f"{type(self).__name__} is closed")
                    pool = self._workers = Workers(self._max_workers,
                                                   f"fabric-{type(self).__name__}")
        return pool

    def close(self) -> None:
        """Stop this fabric's background work: its worker threads end once
        idle, and calls that need one fail with ``FabricUnavailable``.

        Work already running in a worker thread (a sync op) cannot be
        stopped and finishes on its own; its threads are daemon threads, so
        it never holds up interpreter exit (an op still running then is
        abandoned and its reply not recorded). A fabric does not close the
        fabrics it wraps (they may be shared); close each one you made.
        ``with fab: ...`` closes ``fab`` at the end of the block.
        """
        with _POOL_LOCK:
            self._closed = True
            pool, self._workers = self._workers, None
        if pool is not None:
            pool.close()

    def __enter__(self: _F) -> _F:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self: _F) -> _F:
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    async def _in_thread(self, fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        """``fn(*args, **kwargs)`` on a worker thread, awaited. A cancelled
        caller stops waiting; the call itself runs to its end."""
        return await asyncio.wrap_future(self._pool().submit(fn, *args, **kwargs))

    # -- one-line calls -------------------------------------------------------
    @overload
    def call(self, op: Op[P, Iterator[Y]], /, *args: P.args,
             **kwargs: P.kwargs) -> EvalStream[Y]: ...
    @overload
    def call(self, op: Op[P, AsyncIterator[Y]], /, *args: P.args,
             **kwargs: P.kwargs) -> EvalStream[Y]: ...
    @overload
    def call(self, op: Op[P, Coroutine[Any, Any, R]], /, *args: P.args,
             **kwargs: P.kwargs) -> R: ...
    @overload
    def call(self, op: Op[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    def call(self, op: str | EvalRequest, /, *args: Any, **kwargs: Any) -> Any: ...

    def call(self, op: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Evaluate ``op(*args, **kwargs)`` through this fabric in one line.

        Returns the value for an ordinary op, and an ``EvalStream`` (iterate
        it) for a stream op. ``op`` is an ``Op`` (typed: the result has the
        op's return type), an op name (version 0) or an ``EvalRequest``.
        An ``async def`` op works here too, even inside a running event loop
        (a notebook cell): it then runs on a worker thread's own loop while
        this call blocks; in async code prefer ``await fab.acall(...)``.
        """
        request = _request_for(op, args, kwargs, getattr(self, "ops", None))
        if request.stream:
            return self.stream(request)
        return self.evaluate(request).value

    @overload
    async def acall(self, op: Op[P, Iterator[Y]], /, *args: P.args,
                    **kwargs: P.kwargs) -> AsyncEvalStream[Y]: ...
    @overload
    async def acall(self, op: Op[P, AsyncIterator[Y]], /, *args: P.args,
                    **kwargs: P.kwargs) -> AsyncEvalStream[Y]: ...
    @overload
    async def acall(self, op: Op[P, Coroutine[Any, Any, R]], /, *args: P.args,
                    **kwargs: P.kwargs) -> R: ...
    @overload
    async def acall(self, op: Op[P, R], /, *args: P.args, **kwargs: P.kwargs) -> R: ...
    @overload
    async def acall(self, op: str | EvalRequest, /, *args: Any, **kwargs: Any) -> Any: ...

    async def acall(self, op: Any, /, *args: Any, **kwargs: Any) -> Any:
        """Async twin of ``call``: ``await fab.acall(op, ...)`` gives the
        value (a stream op gives an ``AsyncEvalStream``: ``async for``)."""
        request = _request_for(op, args, kwargs, getattr(self, "ops", None))
        if request.stream:
            return self.astream(request)
        return (await self.aevaluate(request)).value

    # -- many calls -----------------------------------------------------------
    @overload
    def map(self, op: Op[[A], Iterator[Y]] | Op[[A], AsyncIterator[Y]], iterable: Iterable[A],
            /, *, concurrency: int | None = None, return_exceptions: Literal[False] = False,
            progress: bool | None = None) -> list[list[Y]]: ...
    @overload
    def map(self, op: Op[[A], Iterator[Y]] | Op[[A], AsyncIterator[Y]], iterable: Iterable[A],
            /, *, concurrency: int | None = None, return_exceptions: Literal[True],
            progress: bool | None = None) -> list[list[Y] | Exception]: ...
    @overload
    def map(self, op: Op[[A], Coroutine[Any, Any, R]], iterable: Iterable[A], /, *,
            concurrency: int | None = None, return_exceptions: Literal[False] = False,
            progress: bool | None = None) -> list[R]: ...
    @overload
    def map(self, op: Op[[A], Coroutine[Any, Any, R]], iterable: Iterable[A], /, *,
            concurrency: int | None = None, return_exceptions: Literal[True],
            progress: bool | None = None) -> list[R | Exception]: ...
    @overload
    def map(self, op: Op[[A], R], iterable: Iterable[A], /, *, concurrency: int | None = None,
            return_exceptions: Literal[False] = False,
            progress: bool | None = None) -> list[R]: ...
    @overload
    def map(self, op: Op[[A], R], iterable: Iterable[A], /, *, concurrency: int | None = None,
            return_exceptions: Literal[True], progress: bool | None = None) -> list[R | Exception]: ...
    @overload
    def map(self, op: str, iterable: Iterable[Any], /, *, concurrency: int | None = None,
            return_exceptions: bool = False, progress: bool | None = None) -> list[Any]: ...

    def map(self, op: Any, iterable: Iterable[Any], /, *, concurrency: int | None = None,
            return_exceptions: bool = False, progress: bool | None = None) -> list[Any]:
        """Evaluate ``op(item)`` for every item of ``iterable`` through this
        fabric; the values, in the items' order.

        At most ``concurrency`` evaluations are in flight at once (default:
        the fabric's worker bound, ``min(32, cpu_count + 4)`` unless set),
        each on a thread of a pool made for this call: an in-process home
        runs sync ops on those threads; a home with workers of its own (a
        node, a cluster) computes there while the threads only wait. Items
        are drawn from ``iterable`` as slots free up. A stream op's value is
        the list of its items. ``op`` is an ``Op`` (typed like ``call``) or
        an op name; each item is the op's one positional argument.

        Errors: every item is evaluated whatever the others do. With
        ``return_exceptions=True`` an item's exception takes its place in the
        list; otherwise, once all are done, the error of the first failing
        item (in the items' order) is raised, with a note naming the item.
        ``progress``: a bar (``fabric.progress``) when True, none when False,
        by default only on a terminal or in a notebook.
        """
        limit = self._map_concurrency(concurrency)
        run = _MapRun(self, op, iterable, progress)
        pool = Workers(limit, f"fabric-map-{type(self).__name__}")
        try:
            for i, request in run.requests(iterable):
                while len(run.inflight) >= limit:
                    run.settle(concurrent.futures.wait(
                        run.inflight, return_when=concurrent.futures.FIRST_COMPLETED).done)
                run.inflight[pool.submit(self._map_one, request)] = i
            while run.inflight:
                run.settle(concurrent.futures.wait(
                    run.inflight, return_when=concurrent.futures.FIRST_COMPLETED).done)
        finally:
            pool.close()  # an interrupted map cancels what has not started
            run.bar.close()
        return run.outcome(return_exceptions)

    def _map_one(self, request: EvalRequest) -> Any:
        if request.stream:
            return list(self.stream(request))
        return self.evaluate(request).value

    def _map_concurrency(self, concurrency: int | None) -> int:
        if concurrency is None:
            return self._max_workers or default_max_workers()
        if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
            raise ValueError(f"concurrency must be an int >= 1 or None, not {concurrency!r}")
        return concurrency

    @overload
    async def amap(self, op: Op[[A], Iterator[Y]] | Op[[A], AsyncIterator[Y]],
                   iterable: Iterable[A], /, *, concurrency: int | None = None,
                   return_exceptions: Literal[False] = False,
                   progress: bool | None = None) -> list[list[Y]]: ...
    @overload
    async def amap(self, op: Op[[A], Iterator[Y]] | Op[[A], AsyncIterator[Y]],
                   iterable: Iterable[A], /, *, concurrency: int | None = None,
                   return_exceptions: Literal[True],
                   progress: bool | None = None) -> list[list[Y] | Exception]: ...
    @overload
    async def amap(self, op: Op[[A], Coroutine[Any, Any, R]], iterable: Iterable[A], /, *,
                   concurrency: int | None = None, return_exceptions: Literal[False] = False,
                   progress: bool | None = None) -> list[R]: ...
    @overload
    async def amap(self, op: Op[[A], Coroutine[Any, Any, R]], iterable: Iterable[A], /, *,
                   concurrency: int | None = None, return_exceptions: Literal[True],
                   progress: bool | None = None) -> list[R | Exception]: ...
    @overload
    async def amap(self, op: Op[[A], R], iterable: Iterable[A], /, *,
                   concurrency: int | None = None, return_exceptions: Literal[False] = False,
                   progress: bool | None = None) -> list[R]: ...
    @overload
    async def amap(self, op: Op[[A], R], iterable: Iterable[A], /, *,
                   concurrency: int | None = None, return_exceptions: Literal[True],
                   progress: bool | None = None) -> list[R | Exception]: ...
    @overload
    async def amap(self, op: str, iterable: Iterable[Any], /, *, concurrency: int | None = None,
                   return_exceptions: bool = False, progress: bool | None = None) -> list[Any]: ...

    async def amap(self, op: Any, iterable: Iterable[Any], /, *, concurrency: int | None = None,
                   return_exceptions: bool = False, progress: bool | None = None) -> list[Any]:
        """Async twin of ``map``: at most ``concurrency`` ``aevaluate`` calls
        (``astream`` for a stream op) in flight on the running loop; the same
        order, errors and progress. Cancelling it cancels the calls in flight."""
        limit = self._map_concurrency(concurrency)
        run = _MapRun(self, op, iterable, progress)
        try:
            for i, request in run.requests(iterable):
                while len(run.inflight) >= limit:
                    done, _ = await asyncio.wait(run.inflight,
                                                 return_when=asyncio.FIRST_COMPLETED)
                    run.settle(done)
                run.inflight[asyncio.ensure_future(self._amap_one(request))] = i
            while run.inflight:
                done, _ = await asyncio.wait(run.inflight, return_when=asyncio.FIRST_COMPLETED)
                run.settle(done)
        finally:
            for task in run.inflight:
                task.cancel()
            run.bar.close()
        return run.outcome(return_exceptions)

    async def _amap_one(self, request: EvalRequest) -> Any:
        if request.stream:
            items = []
            async with self.astream(request) as s:
                async for x in s:
                    items.append(x)
            return items
        return (await self.aevaluate(request)).value

    # -- async defaults -----------------------------------------------------------
    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``: runs it on a worker thread."""
        g = self._grants(grants)
        reply: EvalReply = await self._in_thread(self.evaluate, request, grants=g,
                                                 **_t(timeout))
        return reply

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncEvalStream[Any]:
        """Async twin of ``stream``: the producer is pulled on worker threads."""
        s = self.stream(request, grants=self._grants(grants), **_t(timeout))
        return AsyncEvalStream(_aevents_from_sync(_events_of(s), self._pool()), request.key,
                               getattr(s, "source", "computed"))

    # -- display ------------------------------------------------------------------
    def stats(self) -> dict[str, int]:
        """Counters of this fabric (a new dict each call)."""
        return dict(self._stats.items())

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


_F = TypeVar("_F", bound=_FabricBase)


def _check_cassette(cassette: Any, where: str) -> None:
    """A ``TypeError`` that says what is wrong when ``cassette`` is not one
    (a path, None): an ``EvalCassette``, or a stand-in with its ``get``."""
    if callable(getattr(cassette, "get", None)):
        return
    hint = (" (open one: fabric.EvalCassette(path))"
            if isinstance(cassette, (str, bytes, os.PathLike)) else "")
    raise TypeError(f"{where}: cassette must be an EvalCassette (or an object with its get), "
                    f"not {type(cassette).__name__}{hint}")


def _warn_torn(cassette: Any, where: str) -> None:
    """WARNING when ``cassette`` cut a torn tail (a write cut short by a
    crash) as it opened: those bytes held no complete record and are gone."""
    stats = getattr(cassette, "stats", None)
    try:
        s = stats() if stats is not None else None
    except Exception:  # a closed cassette, or a stand-in without counters
        return
    if isinstance(s, dict) and s.get("torn_tails_cut"):
        cassette_log.warning("%s: the cassette %s cut a torn tail of %s bytes when it "
                             "opened (a write cut short by a crash; no complete record lost)",
                             where, s.get("path"), s.get("torn_bytes"))


def _op_label(op: Any) -> str:
    return op if isinstance(op, str) else str(getattr(op, "name", getattr(op, "op", "?")))


def _size_of(iterable: Iterable[Any]) -> int | None:
    """The number of items when the iterable knows it cheaply, else None."""
    try:
        return len(iterable)  # type: ignore[arg-type]
    except TypeError:
        return None


class _MapRun:
    """The bookkeeping of one ``map`` or ``amap``, whatever runs its calls:
    each item's outcome in the items' order, the failed ones, the progress
    bar, and the calls in flight (a future, thread or asyncio, -> its item)."""

    def __init__(self, fabric: Any, op: Any, iterable: Iterable[Any], progress: bool | None):
        self.op = op
        self.registry = getattr(fabric, "ops", None)
        self.results: list[Any] = []
        self.failed: list[int] = []
        self.inflight: dict[Any, int] = {}
        self.bar = Progress(f"map {_op_label(op)}", _size_of(iterable), enabled=progress)

    def requests(self, iterable: Iterable[Any]) -> Iterator[tuple[int, EvalRequest]]:
        """(index, request) of each item, drawn as asked for; an item that
        cannot make a request has its error for outcome."""
        for i, item in enumerate(iterable):
            self.results.append(None)
            try:
                request = _request_for(self.op, (item,), {}, self.registry)
            except Exception as exc:  # the item cannot make a request
                self.results[i] = exc
                self.failed.append(i)
                self.bar.update()
                continue
            yield i, request

    def settle(self, done: Iterable[Any]) -> None:
        """Takes the outcome of each finished call out of ``inflight``."""
        for fut in done:
            i = self.inflight.pop(fut)
            exc = fut.exception()
            if exc is None:
                self.results[i] = fut.result()
            elif isinstance(exc, Exception):
                self.results[i] = exc
                self.failed.append(i)
            else:
                raise exc  # KeyboardInterrupt, SystemExit: not an item's error
            self.bar.update()

    def outcome(self, return_exceptions: bool) -> list[Any]:
        """map's answer: the results, or the first failing item's error raised."""
        results, failed = self.results, self.failed
        if failed and not return_exceptions:
            first = min(failed)
            exc: Exception = results[first]
            exc.add_note(f"raised for item {first} of map(); {len(failed)} of {len(results)} "
                         f"items failed (return_exceptions=True gives every item's outcome)")
            raise exc
        return results


def _request_for(op: Any, args: tuple[Any, ...], kwargs: dict[str, Any],
                 registry: OpRegistry | None = None) -> EvalRequest:
    """The request ``call(op, *args, **kwargs)`` evaluates. An op name is
    looked up in ``registry`` (the fabric's own, else every ``@fabric.op``),
    so the request declares the op's version, capabilities and stream flag,
    exactly as ``op.request(...)`` would: a request built from a bare name
    could otherwise under-declare, and a compute site refuses those."""
    if isinstance(op, Op):
        return op.request(*args, **kwargs)
    if isinstance(op, str):
        found = (REGISTRY if registry is None else registry).named(op)
        if len(found) == 1:
            return found[0].request(*args, **kwargs)
        if found:
            zero = [o for o in found if o.version == 0]
            if zero:
                return zero[0].request(*args, **kwargs)
            versions = ", ".join(sorted(repr(o.version) for o in found))
            raise TypeError(f"op {op!r} is registered in several versions ({versions}): "
                            f"call it with the Op object of the version you mean")
        # Not registered here (a remote fabric may know it): the request
        # declares nothing, and the site that computes it checks.
        return EvalRequest(op, args, kwargs)
    if isinstance(op, EvalRequest):
        if args or kwargs:
            raise TypeError("call(request) takes no further arguments")
        return op
    raise TypeError(f"call() takes an Op (from @fabric.op), an op name or an EvalRequest, "
                    f"not {type(op).__name__}")


def _check_sharing(request: EvalRequest, op: Op[..., Any], where: str) -> None:
    """A compute site refuses a request whose sharing class is not its op's:
    an uncacheable op's reply would otherwise be recorded under a key that
    calls it pure."""
    if request.sharing != op.sharing:
        raise OpNotFound(f"{where}: the request for {request.op!r} declares sharing "
                         f"{request.sharing!r} but the op's sharing class is {op.sharing!r}; "
                         f"build the request from the op (op.request(...), or "
                         f"fab.call(op, ...))")


def _op_kwargs(request: EvalRequest) -> Any:
    """The keyword arguments an op runs with: the keyed ones and the
    request's volatile ones (``ignore=``)."""
    vol = request.volatile_kwargs
    return {**request.kwargs, **vol} if vol else request.kwargs


def _check_declared(request: EvalRequest, op: Op[..., Any], where: str) -> None:
    """A compute site refuses a request that declares fewer capabilities than
    its op requires: its reply would be recorded under a key that does not
    name them, and every later hit's grants check would miss them."""
    missing = [c for c in op.capabilities if c not in request.required_capabilities]
    if missing:
        raise CapabilityDenied(
            f"{where}: the request for {request.op!r} declares capabilities "
            f"{list(request.required_capabilities)} but the op requires "
            f"{', '.join(missing)} as well; build the request from the op "
            f"(op.request(...), or fab.call(op, ...)) so it declares them")


#: Thread-safe named counters (``add(name, n=1)``, ``items()``): the one
#: implementation, in the glue, shared with ContentAddressedFabric's C base.
_Counters = _core._Counters


def _resolve(fut: concurrent.futures.Future[Any], reply: Any) -> None:
    """Sets ``fut``'s result unless it is already set (by another thread)."""
    if not fut.done():
        try:
            fut.set_result(reply)
        except concurrent.futures.InvalidStateError:
            pass


def _pending(exc: BaseException, future: concurrent.futures.Future[Any]) -> None:
    """Says on ``exc`` that the computation goes on (see ``EvalFabric``)."""
    exc.pending_reply = future  # type: ignore[attr-defined]


def _record_late(exc: BaseException, record: Callable[[EvalReply], None]) -> None:
    """A recording layer's part when its source stopped waiting for a
    computation that goes on: if ``exc`` carries ``pending_reply``, call
    ``record(reply)`` when the reply comes, and replace ``pending_reply``
    with a future settled once it is recorded (with the reply, or with the
    computation's or the recording's error). The one implementation, shared
    by ``LedgeredRelayFabric`` and ``ContentAddressedFabric``."""
    pending = getattr(exc, "pending_reply", None)
    if not isinstance(pending, concurrent.futures.Future):
        return
    recorded: concurrent.futures.Future[EvalReply] = concurrent.futures.Future()

    def settle(f: concurrent.futures.Future[Any]) -> None:
        if f.cancelled() or f.exception() is not None:
            recorded.set_exception(f.exception() if not f.cancelled()
                                   else FabricError("the computation was cancelled"))
            return
        reply = f.result()
        try:
            record(reply)
        except BaseException as e:
            recorded.set_exception(e)
            return
        recorded.set_result(reply)

    pending.add_done_callback(settle)
    _pending(exc, recorded)


async def _within(events: AsyncIterator[Event], bound: float, what: str) -> AsyncIterator[Event]:
    """``events``, each awaited until ``bound`` seconds after the first
    pull; then ``DeadlineExceeded``, and the producer is cancelled."""
    loop = asyncio.get_running_loop()
    t_end = loop.time() + bound
    try:
        while True:
            step = asyncio.ensure_future(events.__anext__())
            try:
                done, _ = await asyncio.wait((step,), timeout=max(0.0, t_end - loop.time()))
            except BaseException:
                step.cancel()
                raise
            if not done:
                step.cancel()
                await asyncio.wait((step,))  # the producer is no longer running
                raise DeadlineExceeded(f"{what} did not finish within {bound:.3g} s")
            try:
                ev = step.result()
            except StopAsyncIteration:
                return
            yield ev
    finally:
        await _aclose(events)


def _sync_within(events: Iterator[Event], bound: float, pool: Workers,
                 what: str) -> Iterator[Event]:
    """Sync twin of ``_within``: the producer is pulled on ``pool``; past the
    bound the caller gets ``DeadlineExceeded`` and the producer is closed
    once its current step returns."""
    t_end = time.monotonic() + bound
    done = object()
    step: concurrent.futures.Future[Any] | None = None
    try:
        while True:
            step = pool.submit(next, events, done)
            concurrent.futures.wait((step,), timeout=max(0.0, t_end - time.monotonic()))
            if not step.done():
                raise DeadlineExceeded(f"{what} did not finish within {bound:.3g} s")
            ev = step.result()
            step = None
            if ev is done:
                return
            yield ev
    finally:
        if step is not None and not step.done():
            step.add_done_callback(lambda _f: _close_quietly(events))
        else:
            _close_quietly(events)


# ===========================================================================
# LocalFabric
# ===========================================================================

class _Flight:
    """One computation that identical concurrent requests share.

    Made with no arguments and no ``__init__`` (every miss makes one): the
    fields start at the class defaults and are set only when needed.
    """

    # Made only when someone must wait on it (a joiner, a hand-off to a
    # thread or a loop): the caller that runs the op in its own thread
    # needs none, which keeps the common miss cheap.
    future: concurrent.futures.Future[EvalReply] | None = None
    finished = False
    # The reply of a flight finished without the lock (the common miss, see
    # LocalFabric.evaluate): a joiner that made the future after its owner
    # looked for one settles it with this.
    reply: EvalReply | None = None
    waiters = 1
    # For an async op: the task running it and its loop, so the last
    # waiter to leave can cancel it.
    task: asyncio.Task[None] | None = None
    loop: asyncio.AbstractEventLoop | None = None


class LocalFabric(_FabricBase):
    """Runs registered ops in this process.

    ``ops`` is an ``OpRegistry`` or an iterable of ``Op`` (default: every op
    registered with ``@fabric.op``). The caller's grants must cover the op's
    declared capabilities and the request's.

    Concurrent identical requests (same content key) are computed once:
    every caller gets that reply (or that error). Each caller waits at most
    until the request's ``deadline`` (or its ``timeout``, if shorter), then
    gets ``DeadlineExceeded``; the computation is shared, so one caller
    giving up does not cancel it for the others.

    Where an op runs:

    - a sync op without a deadline or timeout runs in the caller's thread
      (no hand-off); with one, it runs on a worker thread so the caller can
      stop waiting. A sync op keeps running after its callers gave up (a
      thread cannot be stopped): a caller joining meanwhile gets its reply,
      and the ``DeadlineExceeded`` carries ``pending_reply`` (see
      ``EvalFabric``) so a recording layer still records it;
    - an ``async def`` op runs on the caller's event loop (``aevaluate``),
      or on a private loop (``evaluate``; inside a running event loop, on a
      worker thread's loop); it is cancelled when its last waiter leaves;
    - ``aevaluate`` of a sync op runs it on a worker thread, never blocking
      the event loop.

    Worker threads come from a bounded pool of this fabric (``max_workers``
    threads, so hung ops cannot grow without bound; a call waits its turn
    when all are busy). They are daemon threads: an op still running when
    the interpreter exits is abandoned and its reply not recorded.
    ``close()`` (or ``with LocalFabric() as fab:``) stops them.
    """

    def __init__(self, ops: OpRegistry | Iterable[Op[..., Any]] | None = None, *,
                 grants: Iterable[str] = (), name: str = "local",
                 max_workers: int | None = None):
        if ops is None:
            ops = REGISTRY
        self.ops = ops if isinstance(ops, OpRegistry) else OpRegistry(ops)
        self.grants = frozenset(grants)
        self.name = name
        if max_workers is not None:
            Workers(max_workers)  # validates it
        self._max_workers = max_workers
        self._lock = threading.Lock()
        self._inflight: dict[ContentKey, _Flight] = {}
        self._stats = _Counters("computed", "coalesced", "errors", "denied", "streams")
        self._where = f"LocalFabric {name!r}"

    def _describe(self) -> str:
        return f"{len(self.ops)} ops"

    def _op_for(self, request: EvalRequest, g: frozenset[str]) -> Op[..., Any]:
        op = self.ops._ops.get((request.op, request.version)) or self.ops.find(request)
        try:
            check_grants(request, g, self._where, op.capabilities)
            if op.capabilities:
                _check_declared(request, op, self._where)
        except CapabilityDenied:
            self._stats.add("denied")
            raise
        if request.sharing != op.sharing:
            _check_sharing(request, op, self._where)
        return op

    def _late_message(self, request: EvalRequest, bound: float | None) -> str:
        return (f"LocalFabric {self.name!r}: {request.op!r} did not finish within "
                f"{bound:.3g} s (the request's deadline or the caller's timeout)")

    # -- computing ------------------------------------------------------------
    def _trace(self, request: EvalRequest, t0: float) -> list[dict[str, Any]] | None:
        if not request.trace:
            return None
        return [{"site": self.name, "op": request.op, "version": request.version,
                 "seconds": round(time.perf_counter() - t0, 6)}]

    def _compute(self, op: Op[..., Any], request: EvalRequest) -> EvalReply:
        """Runs a sync op (or generator) once in this thread; its reply or raises."""
        sink: list[dict[str, Any]] = []
        token = _collector.set(sink)
        t0 = time.perf_counter() if request.trace else 0.0
        try:
            if op.is_stream:
                value: Any = []
                diags: list[Any] = []
                for tag, p in self._op_events(op, request):
                    (value if tag == ITEM else diags).append(p)
            else:
                value = op.fn(*request.args, **_op_kwargs(request))
                diags = sink
        finally:
            _collector.reset(token)
        return cast(EvalReply, _core._reply(value, diags, self._trace(request, t0) if t0
                                            else None, request.key, "computed"))

    def _op_events(self, op: Op[..., Any], request: EvalRequest) -> Iterator[Event]:
        """Events of a sync stream op run in this thread, cut at ``answer_limit``.

        The generator runs in its own copy of the context it started in, with
        the diagnostics collector set there (as an asyncio task runs in its
        own context): each step is one ``Context.run``, and the consumer's
        code between items never sees the collector.
        """
        gen = op.fn(*request.args, **_op_kwargs(request))
        limit = request.answer_limit
        n = 0
        mine: list[dict[str, Any]] = []
        ctx = contextvars.copy_context()
        ctx.run(_collector.set, mine)
        run, step = ctx.run, gen.__next__
        try:
            while limit is None or n < limit:
                try:
                    item = run(step)
                except StopIteration:
                    break
                while mine:
                    yield DIAG, mine.pop(0)
                n += 1
                yield ITEM, item
            while mine:
                yield DIAG, mine.pop(0)
        finally:
            run(gen.close)

    async def _async_op_events(self, op: Op[..., Any],
                               request: EvalRequest) -> AsyncIterator[Event]:
        """Events of an async generator op, cut at ``answer_limit``."""
        agen = op.fn(*request.args, **_op_kwargs(request))
        limit = request.answer_limit
        n = 0
        mine: list[dict[str, Any]] = []
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

    def _drive(self, events: AsyncIterator[Event]) -> Iterator[Event]:
        """An async event iterator pulled from sync code on a private loop
        (on a worker thread when this thread already runs a loop).

        A step pulled for ``_aevents_from_sync`` (an async consumer, such as
        a node's stream) can be interrupted: it runs as a task on the private
        loop, registered with the step's ``_Interrupt``, which cancels it
        from the consumer's thread when the consumer stops mid-step (a
        node's cancel). The async generator then gets ``CancelledError`` at
        its await and this iterator ends with ``CancelledError``, so nothing
        above it records the stream. (A sync generator op, not run here,
        cannot be interrupted mid-item: it is closed once its item is
        ready.)"""
        loop = asyncio.new_event_loop()

        def run(aw: Any) -> Any:
            if _loop_running():
                return self._pool().submit(loop.run_until_complete, aw).result()
            return loop.run_until_complete(aw)

        def cancel(task: asyncio.Task[Any]) -> None:  # from any thread, even late
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop is closed: the step is over
                pass

        async def pull() -> Event:
            _INTERRUPT.set(None)  # in the task's own context: the op's streams are its own
            return await events.__anext__()

        def step() -> Event:
            interrupt = _INTERRUPT.get()
            if interrupt is None:
                return cast(Event, run(events.__anext__()))
            task = loop.create_task(pull())
            with interrupt.watching(lambda: cancel(task)):
                return cast(Event, run(task))

        try:
            while True:
                try:
                    ev = step()
                except StopAsyncIteration:
                    return
                yield ev
        finally:
            try:
                run(_aclose(events))
                run(loop.shutdown_asyncgens())
            finally:
                loop.close()

    # -- shared computations ------------------------------------------------------
    def _join(self, key: ContentKey) -> tuple[_Flight, bool]:
        mine = _Flight()
        # The common case, no computation of key in flight, takes no lock:
        # setdefault is atomic. Joining one that is, does.
        if self._inflight.setdefault(key, mine) is mine:
            return mine, True
        with self._lock:
            flight = self._inflight.get(key)
            if flight is None:
                self._inflight[key] = mine
                return mine, True
            flight.waiters += 1
            if flight.future is None:
                fut = flight.future = concurrent.futures.Future()
                if flight.finished:
                    # Its owner finished without the lock (the common miss)
                    # and may have looked for a future before this one was
                    # made: it left its reply on the flight.
                    _resolve(fut, flight.reply)
            self._stats.add("coalesced")
            return flight, False

    def _leave(self, key: ContentKey, flight: _Flight) -> bool:
        """A waiter leaves; the last one cancels an async op still running
        (True when it did). A sync op cannot be cancelled and runs on."""
        with self._lock:
            flight.waiters -= 1
            cancel = flight.waiters == 0 and flight.task is not None and not flight.finished
            if cancel and self._inflight.get(key) is flight:
                del self._inflight[key]  # a new caller starts afresh
        if cancel:
            self._cancel(flight)
        return cancel

    @staticmethod
    def _cancel(flight: _Flight) -> None:
        task, loop = flight.task, flight.loop
        if task is None or loop is None:
            return
        try:
            loop.call_soon_threadsafe(task.cancel)
        except RuntimeError:  # its loop is closed: the task is gone with it
            pass

    def _end(self, key: ContentKey, flight: _Flight, reply: EvalReply | None,
             exc: BaseException | None) -> None:
        with self._lock:
            if self._inflight.get(key) is flight:
                del self._inflight[key]
            flight.finished = True
            fut = flight.future
        self._stats.add("errors" if exc is not None else "computed")
        if fut is None or fut.done():
            return
        if exc is not None:
            fut.set_exception(exc)
        else:
            fut.set_result(reply)  # type: ignore[arg-type]

    def _future(self, flight: _Flight) -> concurrent.futures.Future[EvalReply]:
        with self._lock:
            if flight.future is None:
                flight.future = concurrent.futures.Future()
            return flight.future

    def _settle(self, key: ContentKey, flight: _Flight, op: Op[..., Any],
                request: EvalRequest) -> None:
        """Runs a sync op for a flight in this thread and settles it."""
        try:
            reply = self._compute(op, request)
        except BaseException as exc:
            self._end(key, flight, None, exc)
            if not isinstance(exc, Exception):
                raise
            return
        self._end(key, flight, reply, None)

    async def _settle_async(self, key: ContentKey, flight: _Flight, op: Op[..., Any],
                            request: EvalRequest, reraise: bool = False) -> EvalReply:
        """Runs an async op (or async generator, collected) for a flight on
        this loop and settles it; cancelled when its last waiter leaves.
        Returns the reply; an error is raised only with ``reraise`` (else
        it reaches the waiters through the flight's future alone)."""
        task = asyncio.current_task()
        with self._lock:
            flight.task, flight.loop = task, asyncio.get_running_loop()
            orphaned = flight.waiters == 0
        if orphaned and task is not None:
            task.cancel()
        sink: list[dict[str, Any]] = []
        token = _collector.set(sink)
        t0 = time.perf_counter()
        try:
            if op.is_stream:
                value: Any = []
                diags: list[Any] = []
                async for tag, p in self._async_op_events(op, request):
                    (value if tag == ITEM else diags).append(p)
            else:
                value = await op.fn(*request.args, **_op_kwargs(request))
                diags = sink
        except asyncio.CancelledError:
            self._end(key, flight, None, FabricError(
                f"LocalFabric {self.name!r}: {request.op!r} was cancelled (its last caller "
                f"left, or its event loop stopped)"))
            raise
        except BaseException as exc:
            self._end(key, flight, None, exc)
            if reraise or not isinstance(exc, Exception):
                raise
            return None  # type: ignore[return-value]
        finally:
            _collector.reset(token)
        reply = EvalReply(value, diags, self._trace(request, t0), key, "computed")
        self._end(key, flight, reply, None)
        return reply

    def _start_in_thread(self, key: ContentKey, flight: _Flight, op: Op[..., Any],
                         request: EvalRequest) -> None:
        if op.is_async:
            run: Any = lambda: asyncio.run(self._settle_async(key, flight, op, request))
        else:
            run = lambda: self._settle(key, flight, op, request)
        try:
            self._pool().submit(run)
        except BaseException as exc:
            self._end(key, flight, None, exc)
            raise

    # -- the interface --------------------------------------------------------
    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Run the request's op here (coalescing identical concurrent requests)
        and return its reply; ``DeadlineExceeded`` when the request's
        deadline (or ``timeout``) passes first."""
        # (A frozenset is taken as it is: a ContentAddressedFabric's home gets one.)
        g = grants if type(grants) is frozenset else \
            self.grants if grants is None else _core._as_grants(grants, self.grants)
        op = self.ops._ops.get((request.op, request.version)) or self.ops.find(request)
        caps = op.capabilities
        try:
            check_grants(request, g, self._where, caps)
            if caps:
                _check_declared(request, op, self._where)
        except CapabilityDenied:
            self._stats.add("denied")
            raise
        if request.sharing != op.sharing:
            _check_sharing(request, op, self._where)
        key = request.key
        if timeout is None and request.deadline is None and not op.is_async \
                and not op.is_stream:
            # The common miss, written out (it is every cache's miss path): a
            # sync op with no deadline runs in the caller's thread, with no
            # hand-off and no future unless someone joins.
            flight = _Flight()
            inflight = self._inflight
            if inflight.setdefault(key, flight) is flight:
                sink: list[dict[str, Any]] = []
                token = _set_collector(sink)
                t0 = time.perf_counter() if request.trace else 0.0
                kw: Any = request.kwargs  # _op_kwargs(request), written out
                vol = request.volatile_kwargs
                if vol:
                    kw = {**kw, **vol}
                try:
                    value = op.fn(*request.args, **kw) if kw else op.fn(*request.args)
                except BaseException as exc:
                    _reset_collector(token)
                    self._end(key, flight, None, exc)
                    raise
                _reset_collector(token)
                reply: EvalReply = _new_reply(
                    value, sink, self._trace(request, t0) if t0 else None, key, "computed")
                # (the C reply is of this module's EvalReply class; typing.cast is a call)
                # Finished without the lock: the reply and then `finished` are
                # set before the flight leaves the table and its future is
                # read, so a joiner that made the future after that read sees
                # `finished` and settles it itself (_join).
                flight.reply = reply
                flight.finished = True
                if inflight.get(key) is flight:
                    del inflight[key]
                self._stats.add("computed")
                fut = flight.future
                if fut is not None:
                    _resolve(fut, reply)
                return reply
            del flight
        bound = None if timeout is None and request.deadline is None else \
            _bound(request, timeout)
        flight, owner = self._join(key)
        if owner and bound is None and not (op.is_async and _loop_running()):
            # In the caller's thread: no hand-off, no future unless someone joins.
            if op.is_async:
                return asyncio.run(self._settle_async(key, flight, op, request, reraise=True))
            try:
                reply = self._compute(op, request)
            except BaseException as exc:
                self._end(key, flight, None, exc)
                raise
            self._end(key, flight, reply, None)
            return reply
        fut = self._future(flight)
        left = False
        try:
            if owner:
                self._start_in_thread(key, flight, op, request)
            if bound is not None and not fut.done():
                concurrent.futures.wait((fut,), timeout=bound)
                if not fut.done():
                    left = True
                    late = DeadlineExceeded(self._late_message(request, bound))
                    if not self._leave(key, flight):
                        _pending(late, fut)
                    raise late
            return fut.result()
        finally:
            if not left:
                self._leave(key, flight)
            # A failed op's exception (raised on from the future, which keeps
            # it) has a traceback holding this frame and the worker's (whose
            # callers hold the flight), and the flight holds the future: a
            # cycle that would keep the caller's frames (a
            # ContentAddressedFabric's) until the cyclic collector ran. Once
            # the flight is finished and its last waiter gone, nobody can
            # join it (it left the table when it finished) or read its
            # future, so the flight lets go of it.
            if flight.finished and flight.waiters == 0:
                flight.future = None
            del fut, flight

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``: a sync op runs on a worker thread, an
        ``async def`` op on this loop, so the loop is never blocked."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        bound = _bound(request, timeout)
        key = request.key
        flight, owner = self._join(key)
        fut = self._future(flight)
        left = False
        try:
            if owner:
                if op.is_async:
                    asyncio.ensure_future(self._settle_async(key, flight, op, request))
                else:
                    self._start_in_thread(key, flight, op, request)
            # shield: one caller giving up (its deadline, or its task being
            # cancelled) must not cancel the computation the others share.
            waiter = asyncio.shield(asyncio.wrap_future(fut))
            if bound is None:
                try:
                    return await waiter
                except asyncio.CancelledError as exc:
                    if not fut.done():
                        left = True
                        if not self._leave(key, flight):
                            _pending(exc, fut)
                    raise
            try:
                done, _ = await asyncio.wait((waiter,), timeout=bound)
            except asyncio.CancelledError as exc:
                waiter.cancel()
                left = True
                if not self._leave(key, flight):
                    _pending(exc, fut)
                raise
            if not done:
                waiter.cancel()
                left = True
                late = DeadlineExceeded(self._late_message(request, bound))
                if not self._leave(key, flight):
                    _pending(late, fut)
                raise late
            return waiter.result()
        finally:
            if not left:
                self._leave(key, flight)

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Run a stream op here; items are yielded as the generator produces them.

        Without a deadline or timeout the generator runs in the consuming
        thread; with one, on a worker thread, and the consumer gets
        ``DeadlineExceeded`` once it passes (the generator is then closed).
        An async generator op runs on a private event loop.
        """
        g = self._grants(grants)
        op = self._op_for(request, g)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op (it returns one value): "
                            f"use evaluate()")
        bound = _bound(request, timeout)
        self._stats.add("streams")
        if op.is_async:
            events = self._drive(self._async_op_events(op, request))
        else:
            events = self._op_events(op, request)
        if bound is not None:
            events = _sync_within(events, bound, self._pool(),
                                  f"LocalFabric {self.name!r}: stream {request.op!r}")
        return EvalStream(events, request.key, "computed")

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncEvalStream[Any]:
        """Async twin of ``stream``: an async generator op runs on this loop,
        a sync generator on worker threads. A cancelled consumer gets
        ``CancelledError`` and the generator is stopped."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op: use aevaluate()")
        bound = _bound(request, timeout)
        self._stats.add("streams")
        events: AsyncIterator[Event]
        if op.is_async:
            events = self._async_op_events(op, request)
        else:
            events = _aevents_from_sync(self._op_events(op, request), self._pool())
        if bound is not None:
            events = _within(events, bound, f"LocalFabric {self.name!r}: stream {request.op!r}")
        return AsyncEvalStream(events, request.key, "computed")


# ===========================================================================
# LedgeredRelayFabric
# ===========================================================================

def _record(cassette: Any, key: ContentKey, record: Any, request: EvalRequest) -> bool:
    """``cassette.record(key, record)``, with the request's identity bytes
    beside it when the cassette is an ``EvalCassette`` (a stand-in keeps its
    own ``record(key, reply)``)."""
    if isinstance(cassette, EvalCassette):
        return cassette.record(key, record, request=request)
    return bool(cassette.record(key, record))


class LedgeredRelayFabric(_FabricBase):
    """Cassette first, then an inner fabric; the inner's successes are recorded.

    ``LedgeredRelayFabric(inner, cassette)``: a hit returns the recorded
    reply without calling ``inner`` (after the caller's grants are checked
    against the request's capabilities). A miss calls ``inner`` once and
    records its reply; if recording fails, the call fails too (a reply that
    could not be made durable is not returned as if it were). Errors are
    never recorded. Streams are recorded frame by frame and replayed
    lazily; a stream that fails or is closed early is not held.

    ``timeout`` is passed on to ``inner``. When the caller stops waiting
    for a computation that goes on (``pending_reply`` on the error, see
    ``EvalFabric``), its reply is recorded when it comes, for later callers.
    """

    def __init__(self, inner: Any, cassette: Any, *, grants: Iterable[str] = ()):
        _check_cassette(cassette, "LedgeredRelayFabric")
        self.inner = inner
        self.cassette = cassette
        self.grants = frozenset(grants)
        self._stats = _Counters("hits", "misses", "recorded", "errors", "denied")
        _warn_torn(cassette, "LedgeredRelayFabric")

    def _describe(self) -> str:
        return f"inner={type(self.inner).__name__}"

    def _check(self, request: EvalRequest, g: frozenset[str]) -> None:
        try:
            check_grants(request, g, "LedgeredRelayFabric")
        except CapabilityDenied:
            self._stats.add("denied")
            raise

    def _hit(self, request: EvalRequest, g: frozenset[str]) -> EvalReply | None:
        """The shared head of ``evaluate`` and ``aevaluate``: grants, then
        the recorded reply (None on a miss)."""
        self._check(request, g)
        # An uncacheable op is never recorded, so never looked up either.
        record = self.cassette.get(request.key) if request.sharing != "uncacheable" else None
        if record is not None:
            self._stats.add("hits")
            return reply_from_record(record, request.key, "ledger")
        self._stats.add("misses")
        if log.isEnabledFor(logging.DEBUG):
            log.debug("LedgeredRelayFabric: %s (%r) not recorded: asking %s", request.key,
                      request.op, type(self.inner).__name__)
        return None

    def _failed(self, request: EvalRequest, exc: BaseException) -> None:
        """The shared tail of a failed miss: count it, and record a reply the
        inner fabric still computes (``pending_reply``) when it comes (never
        an uncacheable op's)."""
        key = request.key
        keep = request.sharing != "uncacheable"
        if isinstance(exc, Exception):
            self._stats.add("errors")
        if not keep:
            return

        def record(reply: EvalReply) -> None:
            try:
                _record(self.cassette, key, reply_record(reply), request)
            except BaseException:
                self._stats.add("errors")
                raise
            self._stats.add("recorded")

        _record_late(exc, record)

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """The recorded reply, else the inner fabric's (then recorded)."""
        g = self._grants(grants)
        if request.stream:
            self._check(request, g)
            return _collect(self.stream(request, grants=g, **_t(timeout)), request.key)
        reply = self._hit(request, g)
        if reply is not None:
            return reply
        try:
            reply = self.inner.evaluate(request, grants=g, **_t(timeout))
        except BaseException as exc:
            self._failed(request, exc)
            raise
        if request.sharing != "uncacheable":
            _record(self.cassette, request.key, reply_record(reply), request)
            self._stats.add("recorded")
        return reply

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin: a hit is answered on the loop, a miss awaits the inner
        fabric and records from a worker thread (recording may fsync)."""
        g = self._grants(grants)
        if request.stream:
            self._check(request, g)
            return await _acollect(self.astream(request, grants=g, **_t(timeout)),
                                   request.key)
        reply = self._hit(request, g)
        if reply is not None:
            return reply
        try:
            if hasattr(self.inner, "aevaluate"):
                reply = await self.inner.aevaluate(request, grants=g, **_t(timeout))
            else:
                reply = await self._in_thread(self.inner.evaluate, request, grants=g,
                                              **_t(timeout))
        except BaseException as exc:
            self._failed(request, exc)
            raise
        if request.sharing != "uncacheable":
            await self._in_thread(self.cassette.record, request.key, reply_record(reply))
            self._stats.add("recorded")
        return reply

    def _stream_hit(self, request: EvalRequest, g: frozenset[str]) -> bool:
        self._check(request, g)
        if request.sharing != "uncacheable" and request.key in self.cassette:
            self._stats.add("hits")
            return True
        self._stats.add("misses")
        return False

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Replay a recorded stream lazily, else stream from inner while recording."""
        g = self._grants(grants)
        key = request.key
        if self._stream_hit(request, g):
            return EvalStream(_replay_events(self.cassette, key), key, "ledger")
        inner = self.inner.stream(request, grants=g, **_t(timeout))
        if request.sharing == "uncacheable":
            return cast(EvalStream[Any], inner)  # passed through, never recorded
        return EvalStream(_recording(_events_of(inner), self.cassette, key,
                                     lambda: self._stats.add("recorded"), request),
                          key, getattr(inner, "source", "computed"))

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncEvalStream[Any]:
        """Async twin of ``stream``: the inner fabric's ``astream`` (so an
        async generator op streams on this loop), recorded as it goes."""
        g = self._grants(grants)
        key = request.key
        pool = self._pool()
        if self._stream_hit(request, g):
            return AsyncEvalStream(_aevents_from_sync(_replay_events(self.cassette, key), pool),
                                   key, "ledger")
        if hasattr(self.inner, "astream"):
            inner: Any = self.inner.astream(request, grants=g, **_t(timeout))
            events = _aevents_of(inner)
        else:
            inner = self.inner.stream(request, grants=g, **_t(timeout))
            events = _aevents_from_sync(_events_of(inner), pool)
        if request.sharing == "uncacheable":  # passed through, never recorded
            return AsyncEvalStream(events, key, getattr(inner, "source", "computed"))
        return AsyncEvalStream(_arecording(events, self.cassette, key, pool,
                                           lambda: self._stats.add("recorded"), request),
                               key, getattr(inner, "source", "computed"))


# ===========================================================================
# RelayFabric
# ===========================================================================

class RelayStatus(str, Enum):
    """The state of a relay's link to its remote fabric."""

    CONNECTED = "connected"
    RECONNECTING = "reconnecting"
    DISCONNECTED = "disconnected"


#: A link status by its value (a connection's ``status`` is one of them).
_LINK: dict[str, RelayStatus] = {s.value: s for s in RelayStatus}


class RelayFabric(_FabricBase):
    """A gate in front of a (remote) fabric: link status, then capabilities.

    ``RelayFabric(inner, allowed_capabilities)``: while the link is not
    ``connected`` every request fails at once with ``FabricUnavailable`` (a
    ``ConnectionError``) without reaching ``inner``; a request that needs a
    capability outside ``allowed_capabilities`` (or outside the caller's
    grants) fails with ``CapabilityDenied``. No caching, no silent retry:
    each call reaches ``inner`` at most once, with the caller's ``timeout``.

    The link status follows ``inner`` when it has one (a ``status`` of
    ``connected`` / ``reconnecting`` / ``disconnected``: a ``fabric.connect``
    client, or another ``RelayFabric``), read at each call; otherwise it is
    ``status=`` (default ``connected``), changed by ``set_status``. Giving
    ``status=`` or calling ``set_status`` stops following ``inner``.
    """

    def __init__(self, inner: Any, allowed_capabilities: Iterable[str] = (), *,
                 status: RelayStatus | str | None = None, grants: Iterable[str] = ()):
        if isinstance(allowed_capabilities, str):
            raise TypeError("allowed_capabilities must be an iterable of str, not a str")
        self.inner = inner
        self.allowed_capabilities = frozenset(allowed_capabilities)
        self.grants = frozenset(grants)
        # the inner's own link status, followed, or None (this relay's _status)
        link = getattr(inner, "status", None)
        self._follows = status is None and isinstance(link, str) and link in _LINK
        self._status = RelayStatus.CONNECTED if status is None else RelayStatus(status)
        self._stats = _Counters("forwarded", "refused_status", "refused_capability", "errors")

    @property
    def status(self) -> RelayStatus:
        """The link status (``connected``, ``reconnecting`` or ``disconnected``)."""
        return _LINK[self.inner.status] if self._follows else self._status

    def set_status(self, status: RelayStatus | str) -> None:
        """Set the link status (it no longer follows ``inner``'s)."""
        self._status = RelayStatus(status)
        self._follows = False

    def _describe(self) -> str:
        return f"status={self.status.value}, inner={type(self.inner).__name__}"

    def _gate(self, request: EvalRequest, grants: Iterable[str] | None) -> frozenset[str]:
        g = self._grants(grants)
        status = _LINK[self.inner.status] if self._follows else self._status
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

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Forward to ``inner`` if the link is up and the capabilities pass."""
        g = self._gate(request, grants)
        try:
            reply: EvalReply = self.inner.evaluate(request, grants=g, **_t(timeout))
        except Exception:
            self._stats.add("errors")
            raise
        return reply

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``."""
        g = self._gate(request, grants)
        try:
            if hasattr(self.inner, "aevaluate"):
                reply: EvalReply = await self.inner.aevaluate(request, grants=g,
                                                              **_t(timeout))
            else:
                reply = await self._in_thread(self.inner.evaluate, request, grants=g,
                                              **_t(timeout))
        except Exception:
            self._stats.add("errors")
            raise
        return reply

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> Any:
        """Forward a stream request through the same gates."""
        g = self._gate(request, grants)
        return self.inner.stream(request, grants=g, **_t(timeout))

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> Any:
        """Async twin of ``stream``: the inner fabric's ``astream``."""
        g = self._gate(request, grants)
        if hasattr(self.inner, "astream"):
            return self.inner.astream(request, grants=g, **_t(timeout))
        s = self.inner.stream(request, grants=g, **_t(timeout))
        return AsyncEvalStream(_aevents_from_sync(_events_of(s), self._pool()), request.key,
                               getattr(s, "source", "computed"))


# ===========================================================================
# ContentServeFabric and ContentPeer
# ===========================================================================

class ContentServeFabric(_FabricBase):
    """Answers only what a cassette holds, else ``ContentNotHeld``.

    ``ContentServeFabric(cassette, node="a")`` is what a node serves to its
    peers: held replies, never compute. The caller's grants are still
    checked against the request's declared capabilities (``CapabilityDenied``,
    counted as ``denied`` in ``stats()``). Answers come from the local
    cassette at once, so ``timeout`` never needs to cut a wait short.
    With ``fleet_keys`` (a ``fabric.claims.FleetKeys``, or a ``NodeKey``
    for signatures) each single reply carries a claim (``reply.claim``) and
    each stream one over all its events (``stream.claim``, once it ended)
    that its receiver verifies.
    """

    def __init__(self, cassette: Any, *, grants: Iterable[str] = (), node: str | None = None,
                 fleet_keys: Any = None):
        self.cassette = cassette
        self.grants = frozenset(grants)
        self.node = node
        if fleet_keys is not None and not node:
            raise ValueError("a ContentServeFabric that signs claims needs its node id")
        #: A fabric.claims.FleetKeys or NodeKey: every reply served carries a claim.
        self.fleet_keys = fleet_keys
        self._stats = _Counters("served", "not_held", "denied")

    def _describe(self) -> str:
        return f"node={self.node!r}" if self.node else ""

    def holds(self, key: ContentKey) -> bool:
        """Whether the cassette holds ``key``."""
        return key in self.cassette

    def _check(self, request: EvalRequest, g: frozenset[str]) -> None:
        try:
            check_grants(request, g, "ContentServeFabric")
        except CapabilityDenied:
            self._stats.add("denied")
            raise

    def _not_held(self, key: ContentKey) -> ContentNotHeld:
        self._stats.add("not_held")
        where = f"node {self.node!r}" if self.node else "this node"
        return ContentNotHeld(f"{where} does not hold {key}")

    def _held(self, request: EvalRequest, g: frozenset[str]) -> EvalReply:
        """The shared body of ``evaluate`` and ``aevaluate`` (single replies)."""
        try:
            check_grants(request, g, "ContentServeFabric")
        except CapabilityDenied:
            self._stats.add("denied")
            raise
        key = request.key
        record = self.cassette.get(key)
        if record is None:
            raise self._not_held(key)
        self._stats.add("served")
        reply: EvalReply = _reply_from_record(record, key, "held")
        if self.fleet_keys is not None:
            from .claims import attach
            return attach(reply, self.fleet_keys.sign(key, reply, self.node))
        return reply

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """The held reply for the request's key, else ``ContentNotHeld``."""
        if timeout is not None and (type(timeout) is not float or not timeout >= 0):
            _check_timeout(timeout)  # (a float >= 0 needs no look: the common case)
        g = self.grants if grants is None else _core._as_grants(grants, self.grants)
        if request.stream:
            return _collect(self.stream(request, grants=g), request.key)
        return self._held(request, g)

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate`` (a single reply is answered on the loop)."""
        _check_timeout(timeout)
        g = self._grants(grants)
        if request.stream:
            return await _acollect(self.astream(request, grants=g), request.key)
        return self._held(request, g)

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Replay a held stream lazily, else ``ContentNotHeld`` (raised at once)."""
        _check_timeout(timeout)
        g = self._grants(grants)
        self._check(request, g)
        key = request.key
        if key not in self.cassette:
            raise self._not_held(key)
        self._stats.add("served")
        if self.fleet_keys is not None:  # a claim over the whole stream, once it ends
            from .claims import signed_stream
            return signed_stream(_replay_events(self.cassette, key), key, "held",
                                 self.fleet_keys, self.node)  # type: ignore[arg-type]
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
