"""DaskFabric: a home fabric that computes on a Dask cluster.

``DaskFabric(client)`` runs registered ops as tasks of a
``dask.distributed`` cluster. The op travels by reference (``Op`` pickles
as its module and name; one defined in ``__main__`` or a notebook by value,
through cloudpickle), so a worker runs the same code the caller
registered. Put it under a node as its home site::

    from dask.distributed import Client
    node = fabric.ContentAddressedFabric(
        "n1", fabric.EvalCassette("n1.fab"),
        home=fabric.DaskFabric(Client("tcp://scheduler:8786")))

and replies computed on the cluster come back to the calling node, which
records them in its cassette (a hit never reaches the cluster).

- **Task keys.** A value request is submitted with
  ``key="<op>-<content key hex>"``, and ``dask.base.tokenize(request)`` is
  the content key's hex (a tokenizer registered for ``EvalRequest`` when
  this module is imported), so Dask's own deduplication agrees with ours:
  identical requests in flight at once share one task. A stream request's
  key adds a per-call suffix (each caller reads its own stream), and so does
  the key of an op whose sharing class is ``uncacheable``: each of its calls
  runs.
- **Errors are never held.** Every future, failed or not, is released as
  soon as its result or error is taken, so a later identical request
  computes again instead of getting a held error.
- **Streams** arrive item by item while the task runs, through a
  ``distributed.Queue`` with ``maxsize`` = the window (the request's
  ``stream_buffer``, else ``stream_window``): the worker's ``put`` blocks
  once the window is full, which is the backpressure. The caller takes
  what the queue holds in one batch, so at most two windows of items lie
  between the op and the consumer. Closing a stream
  early releases its task, which stops at its next item (within a second
  when it is blocked on a full window). A worker lost before the first item is given out is
  survived (Dask runs the task again elsewhere); after it, the stream ends
  with ``FabricError``.
- **Cancellation.** A caller that stops waiting (its asyncio task
  cancelled, or its ``timeout``/deadline passed) cancels a task that has
  not started on a worker. A task already running cannot be stopped: the
  error the caller gets carries ``pending_reply`` (see ``EvalFabric``), a
  future of the reply to come, so a recording layer records it.
- **Grants.** The caller's grants must cover the op's capabilities and the
  request's; a request that declares fewer capabilities than its op is
  refused, as ``LocalFabric`` refuses it.
- **Secrets.** A request holding a ``fabric.Secret`` is refused before it
  is submitted (``CapabilityDenied``): its value never leaves this process.
  A ``fabric.SecretRef(name)`` travels by name (the caller needs the grant
  ``secret:<name>``) and is resolved on the worker that runs the op, from
  that worker's own environment (``FABRIC_SECRET_<NAME>``) and, when
  ``secrets`` is given, the secrets file at that path on the worker's
  machine (only the path travels): the cluster's machines hold their
  secrets, the client never sends values. A ``Secret`` in the op's output
  comes back as ``fabric.REDACTED``.

Imports ``dask.distributed`` (the ``dask`` extra), the core, ``ops``,
``replies`` and the fabrics' shared helpers.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import pickle
import time
import uuid
from typing import Any, Callable, Iterable, Iterator

try:
    from dask.base import normalize_token
    from distributed import Future, Queue, wait
except ImportError as _exc:  # pragma: no cover - the dask extra not installed
    raise ImportError("fabric.DaskFabric needs dask.distributed: "
                      "pip install 'stream-fabric[dask]'") from _exc

from . import _core
from ._core import CapabilityDenied, DeadlineExceeded, EvalRequest, FabricError
from .fabrics import _bound, _check_declared, _check_sharing, _Counters, _FabricBase, _pending
from .ops import REGISTRY, Op, OpRegistry, _collector
from .placement import check_ref_grant, scrub_secrets, secret_refs
from .replies import DIAG, ITEM, EvalReply, EvalStream, Event

__all__ = ["DaskFabric"]


@normalize_token.register(EvalRequest)
def _tokenize_request(request: EvalRequest) -> tuple[str, str]:
    # EvalRequest is a C type; its token is its content key, the identity
    # the fabrics dedupe on.
    return ("fabric.EvalRequest", request.key.hex)


# ===========================================================================
# What runs on a worker
# ===========================================================================

def _events(op: Op[..., Any], request: EvalRequest) -> Iterator[tuple[Any, ...]]:
    """The op's output: ``("item", x)`` / ``("diag", d)`` for a stream op
    (cut at ``answer_limit``), ``("value", v, diags)`` otherwise."""
    sink: list[dict[str, Any]] = []
    token = _collector.set(sink)
    try:
        fn, args, kwargs = op.fn, request.args, request.kwargs
        if not op.is_stream:
            value = fn(*args, **kwargs)
            if op.is_async:
                value = asyncio.run(value)
            yield ("value", value, list(sink))
            return
        limit = request.answer_limit
        n = 0
        # One loop for both kinds of op: pull() gives the next item or raises
        # end; close() finishes the generator (and an async op's event loop).
        pull: Callable[[], Any]
        close: Callable[[], None]
        end: type[Exception]
        if op.is_async:
            loop = asyncio.new_event_loop()
            agen = fn(*args, **kwargs)
            end = StopAsyncIteration

            def pull() -> Any:
                return loop.run_until_complete(agen.__anext__())

            def close() -> None:
                loop.run_until_complete(agen.aclose())
                loop.close()
        else:
            gen = fn(*args, **kwargs)
            pull, close, end = gen.__next__, gen.close, StopIteration
        try:
            while limit is None or n < limit:
                try:
                    item = pull()
                except end:
                    break
                while sink:
                    yield ("diag", sink.pop(0))
                n += 1
                yield ("item", item)
        finally:
            close()
        while sink:
            yield ("diag", sink.pop(0))
    finally:
        _collector.reset(token)


_STORES: dict[str, Any] = {}


def _resolve(request: EvalRequest, secrets: str | None) -> EvalRequest:
    """On a worker: the request with its SecretRefs resolved from this
    worker's environment and the secrets file at ``secrets`` (its store
    made once per worker process and path)."""
    from .node.secrets import SecretStore
    key = secrets or ""
    store = _STORES.get(key)
    if store is None:
        store = _STORES[key] = SecretStore(secrets)
    return store.resolve(request, ("*",)) or request  # grants checked by the caller


def _run_value(op: Op[..., Any], request: EvalRequest,
               refs: tuple[str | None] | None = None) -> tuple[Any, list[Any]]:
    """The task of a value request: ``(value, diagnostics)``. ``refs``:
    the request holds SecretRefs, resolved here from ``refs[0]``."""
    if refs is not None:
        request = _resolve(request, refs[0])
    for ev in _events(op, request):
        return (scrub_secrets(ev[1]), scrub_secrets(ev[2])) if refs is not None \
            else (ev[1], ev[2])
    raise FabricError(f"op {op.name!r} gave no value")  # unreachable for a value op


async def _nothing() -> None:
    pass


class _Stopped(Exception):
    pass


def _run_stream(op: Op[..., Any], request: EvalRequest, queue_name: str,
                refs: tuple[str | None] | None = None) -> int:
    """The task of a stream request: every event goes into the queue, which
    the caller drains. ``put`` blocks while the window is full; the task
    stops when the caller cancelled it (its key no longer wanted here)."""
    from distributed import get_worker
    from distributed.worker import thread_state
    worker = get_worker()
    key = thread_state.key
    q = Queue(queue_name, client=worker.client)
    attempt = uuid.uuid4().hex  # a task run again elsewhere starts a new attempt

    def wanted() -> bool:
        # A local look-up: released by the caller, the task is no longer
        # executing here (cancelled) though its thread still runs.
        ts = worker.state.tasks.get(key)
        return ts is not None and ts.state in ("executing", "long-running")

    def put(msg: tuple[Any, ...]) -> None:
        if refs is not None:
            msg = scrub_secrets(msg)
        data = pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL)
        while wanted():
            try:
                q.put(data, timeout=1.0)
                return
            except TimeoutError:
                pass  # the window is full: look again whether it is wanted
        raise _Stopped()

    n = 0
    try:
        put(("start", attempt))
        if refs is not None:
            request = _resolve(request, refs[0])
        for ev in _events(op, request):
            put((ev[0], attempt, ev[1]))
            n += 1
    except _Stopped:
        return n
    except BaseException as exc:
        try:
            blob = pickle.dumps(exc)
        except Exception:
            blob = pickle.dumps(FabricError(f"{type(exc).__name__}: {exc}"))
        put(("error", attempt, blob))
        return n
    put(("end", attempt, n))
    return n


# ===========================================================================
# The fabric
# ===========================================================================

class DaskFabric(_FabricBase):
    """A home fabric whose ops run as tasks on a Dask cluster.

    ``client`` is a ``distributed.Client`` (synchronous: made without
    ``asynchronous=True``); this fabric does not close it. ``ops`` (an
    ``OpRegistry`` or iterable of ``Op``; default every registered op)
    says which ops it runs; the workers import them. ``stream_window`` is
    how many stream items may wait between a worker and the caller when
    the request sets no ``stream_buffer``. ``secrets`` is the path of a
    secrets file on the workers' machines (their environment is read
    too) for the ``SecretRef`` objects of requests. See the module's
    docstring for keys, errors, streams, cancellation and secrets.
    """

    honours_timeout = True

    def __init__(self, client: Any, *, ops: OpRegistry | Iterable[Op[..., Any]] | None = None,
                 grants: Iterable[str] = (), name: str = "dask", stream_window: int = 16,
                 secrets: str | None = None):
        if getattr(client, "asynchronous", False):
            raise TypeError("DaskFabric needs a synchronous distributed.Client "
                            "(made without asynchronous=True)")
        if not hasattr(client, "submit"):
            raise TypeError(f"DaskFabric takes a distributed.Client, not "
                            f"{type(client).__name__}")
        if isinstance(stream_window, bool) or not isinstance(stream_window, int) \
                or stream_window <= 0:
            raise ValueError(f"stream_window must be an int > 0, got {stream_window!r}")
        if secrets is not None and not isinstance(secrets, str):
            raise TypeError(f"DaskFabric secrets is the path of a secrets file on the workers "
                            f"(a str) or None, not {type(secrets).__name__}")
        if ops is None:
            ops = REGISTRY
        self.secrets = secrets
        self.client = client
        self.ops = ops if isinstance(ops, OpRegistry) else OpRegistry(ops)
        self.grants = frozenset(grants)
        self.name = name
        self.stream_window = stream_window
        self._where = f"DaskFabric {name!r}"
        self._stats = _Counters("submitted", "computed", "errors", "denied", "streams",
                                "cancelled", "abandoned")

    def _describe(self) -> str:
        return f"{self.name!r}, scheduler={getattr(self.client.scheduler, 'address', None)}"

    @staticmethod
    def task_key(request: EvalRequest) -> str:
        """The Dask key of a value request's task: the op's name and the
        request's content key."""
        return f"{request.op}-{request.key.hex}"

    def _op_for(self, request: EvalRequest, g: frozenset[str]) -> Op[..., Any]:
        op = self.ops.find(request)
        try:
            _core._check_grants(request, g, self._where, op.capabilities)
            if op.capabilities:
                _check_declared(request, op, self._where)
            for name in secret_refs(request, self._where):
                check_ref_grant(name, g, self._where)
        except CapabilityDenied:
            self._stats.add("denied")
            raise
        if request.sharing != op.sharing:
            _check_sharing(request, op, self._where)
        return op

    def _refs(self, request: EvalRequest) -> tuple[str | None] | None:
        """What a task resolving ``request``'s SecretRefs gets: the secrets
        file's path on the workers, or None when it holds none."""
        return (self.secrets,) if secret_refs(request, self._where) else None

    def _submit(self, request: EvalRequest, grants: Iterable[str] | None) -> Future:
        if self.__dict__.get("_closed"):
            raise _core.FabricUnavailable(f"{self._where} is closed")
        op = self._op_for(request, self._grants(grants))
        if op.is_stream:
            raise TypeError(f"op {op.name!r} is a stream op: use stream()")
        self._stats.add("submitted")
        refs = self._refs(request)
        key = self.task_key(request)
        if request.sharing == "uncacheable":
            key = f"{key}-call-{uuid.uuid4().hex}"  # never shared with another call
        if refs is None:
            return self.client.submit(_run_value, op, request, key=key, pure=False)
        return self.client.submit(_run_value, op, request, refs, key=key, pure=False)

    def _reply(self, fut: Future, request: EvalRequest) -> EvalReply:
        """The finished task's reply, or its error; the future is released
        either way, so an error is never held."""
        if fut.status != "finished":
            exc = fut.exception() if fut.status == "error" else FabricError(
                f"{self._where}: the task of {request.op!r} was cancelled")
            self._release_now(fut)
            self._stats.add("errors")
            raise exc
        try:
            value, diags = fut.result()
        finally:
            fut.release()
        self._stats.add("computed")
        return EvalReply(value, diags, None, request.key, "computed")

    def _release_now(self, fut: Future) -> None:
        """Release ``fut`` before returning: ``release()`` only queues the
        release on the client's event loop, and until it runs the client
        would answer the same key with this (failed) future again. One
        round trip through that loop, after the release, settles it."""
        fut.release()
        if not self.client.asynchronous:  # not on the client's own loop
            self.client.sync(_nothing)

    def _running(self, key: Any) -> bool:
        """Whether the task ``key`` has started on a worker (asked of the
        scheduler, then of the worker it was sent to)."""
        def where(dask_scheduler: Any, key: str = key) -> Any:
            ts = dask_scheduler.tasks.get(key)
            if ts is None:
                return None
            if ts.state == "memory" or ts.state == "erred":
                return "done"
            if ts.state == "processing" and ts.processing_on is not None:
                return ts.processing_on.address
            return None

        try:
            addr = self.client.run_on_scheduler(where)
            if addr is None:
                return False
            if addr == "done":
                return True

            def state(dask_worker: Any, key: str = key) -> Any:
                ts = dask_worker.state.tasks.get(key)
                return None if ts is None else ts.state

            st = self.client.run(state, workers=[addr]).get(addr)
        except Exception:
            return True  # unknown: keep it, its reply may still come
        return st in ("executing", "long-running", "memory")

    def _abandon(self, fut: Future, request: EvalRequest,
                 exc: BaseException) -> None:
        """The caller stopped waiting: a task not yet running is cancelled;
        a running one goes on and ``exc`` carries ``pending_reply``."""
        if not fut.done() and not self._running(fut.key):
            # Released, not cancel()ed: the release travels on the client's
            # ordered stream to the scheduler, after the submission, so a
            # task the scheduler has not even seen yet is dropped too; one
            # another caller of this client still waits for is kept.
            self._release_now(fut)
            self._stats.add("cancelled")
            return
        self._stats.add("abandoned")
        pending: concurrent.futures.Future[EvalReply] = concurrent.futures.Future()

        def settle(f: Future) -> None:
            try:
                pending.set_result(self._reply(f, request))
            except BaseException as e:
                pending.set_exception(e)

        fut.add_done_callback(settle)
        _pending(exc, pending)

    # -- the interface ----------------------------------------------------------
    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Compute ``request`` on the cluster and return its reply."""
        bound = _bound(request, timeout)
        fut = self._submit(request, grants)
        try:
            wait([fut], timeout=bound)  # done, failed or not; TimeoutError past the bound
        except TimeoutError:
            exc = DeadlineExceeded(f"{self._where}: {request.op!r} did not finish within "
                                   f"{bound:.3g} s (the request's deadline or the timeout)")
            self._abandon(fut, request, exc)
            raise exc from None
        except BaseException as e:  # interrupted (KeyboardInterrupt)
            if not fut.done():
                self._abandon(fut, request, e)
            raise
        return self._reply(fut, request)

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``: awaits the task without blocking the
        loop. Cancelling the caller cancels a task not yet running."""
        bound = _bound(request, timeout)
        fut = self._submit(request, grants)
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        fut.add_done_callback(lambda _f: done.set_result(None) if not done.done() else None)
        try:
            await asyncio.wait_for(asyncio.wrap_future(done), bound)
        except asyncio.TimeoutError:
            exc = DeadlineExceeded(f"{self._where}: {request.op!r} did not finish within "
                                   f"{bound:.3g} s (the request's deadline or the timeout)")
            await asyncio.to_thread(self._abandon, fut, request, exc)
            raise exc from None
        except asyncio.CancelledError as e:
            # The decision asks the scheduler: on a worker thread, shielded,
            # so it is made (and a pending task gone) when the caller's
            # cancellation completes.
            decided = asyncio.wrap_future(self._pool().submit(self._abandon, fut, request, e))
            try:
                await asyncio.shield(decided)
            except asyncio.CancelledError:
                pass
            raise
        return await asyncio.to_thread(self._reply, fut, request)

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Run a stream op on the cluster; items arrive while it runs,
        ``stream_buffer`` (or ``stream_window``) of them at most in
        between."""
        if self.__dict__.get("_closed"):
            raise _core.FabricUnavailable(f"{self._where} is closed")
        op = self._op_for(request, self._grants(grants))
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op (it returns one value): "
                            f"use evaluate()")
        bound = _bound(request, timeout)
        window = request.stream_buffer or self.stream_window
        name = f"{self.task_key(request)}-stream-{uuid.uuid4().hex}"
        q = Queue(name, client=self.client, maxsize=window)
        self._stats.add("submitted")
        self._stats.add("streams")
        fut = self.client.submit(_run_stream, op, request, name, self._refs(request), key=name,
                                 pure=False)
        return EvalStream(self._stream_events(request, fut, q, bound), request.key, "computed")

    def _stream_events(self, request: EvalRequest, fut: Future, q: Queue,
                       bound: float | None) -> Iterator[Event]:
        t_end = None if bound is None else time.monotonic() + bound
        attempt = None
        given = False
        ended = False
        buffered: list[bytes] = []
        try:
            while True:
                if not buffered:
                    wait = 1.0 if t_end is None else min(1.0, t_end - time.monotonic())
                    if wait <= 0:
                        raise DeadlineExceeded(f"{self._where}: the stream of {request.op!r} "
                                               f"did not finish within {bound:.3g} s")
                    try:
                        buffered.append(q.get(timeout=wait))
                    except TimeoutError:
                        if fut.done():
                            buffered.extend(q.get(batch=True))
                            if not buffered:
                                self._stats.add("errors")
                                if fut.status == "error":
                                    raise fut.exception() from None
                                raise FabricError(f"{self._where}: the stream task of "
                                                  f"{request.op!r} ended without its end")
                        continue
                    buffered.extend(q.get(batch=True))
                msg = pickle.loads(buffered.pop(0))
                tag = msg[0]
                if tag == "start":
                    if attempt is not None and given:
                        self._stats.add("errors")
                        raise FabricError(f"{self._where}: the worker running the stream of "
                                          f"{request.op!r} was lost midway")
                    attempt = msg[1]
                    continue
                if msg[1] != attempt:
                    continue  # from a run that was lost before giving anything
                if tag == "item":
                    given = True
                    yield ITEM, msg[2]
                elif tag == "diag":
                    given = True
                    yield DIAG, msg[2]
                elif tag == "error":
                    self._stats.add("errors")
                    ended = True
                    raise pickle.loads(msg[2])
                elif tag == "end":
                    ended = True
                    self._stats.add("computed")
                    return
        finally:
            if not ended and not fut.done():
                self._stats.add("cancelled")  # released: the worker stops at its next put
            self._release_now(fut)
            q.close()

    def close(self) -> None:
        """Refuse new requests (the client is the caller's to close)."""
        super().close()

