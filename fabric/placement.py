"""Placement: running an op in a worker process under enforced limits.

``PlacementFabric`` is a home fabric. Each placed op runs in a worker
process of this fabric under the ``PlacementResourceLimits`` of its
placement, enforced there, not just declared:

- **CPU time** (``max_cpu_time_ms``): the worker is long-lived, so before
  each op it sets its soft ``RLIMIT_CPU`` to the CPU it has used so far plus
  the op's budget, rounded up to the next second (the kernel counts whole
  seconds); past it the kernel ends the worker with ``SIGXCPU``. An op that
  finishes is also checked to the millisecond against the CPU it used (the
  worker reports it). Measured against a fresh process per op in
  ``bench/engines.py`` (docs/benchmarks.md).
- **Wall-clock duration** (``max_duration_ms``): the worker is killed
  (``SIGKILL``) when it passes.
- **Worker memory** (``max_rss_bytes``, unset by default): the worker's soft
  ``RLIMIT_DATA`` (heap and private mappings) is set to it for the op; an
  allocation past it fails with ``MemoryError`` in the op. ``RLIMIT_AS``
  is not used: address space is not memory, and 64 MiB of it would stop
  ``import numpy``.
- **Output caps**: data frames, frames in flight (the start frame included),
  bytes per frame and accounted bytes of all payloads, checked on each frame
  in the seed's order, then the rate (``max_rate_hz``: more output chunks
  than that within any one second); the worker is killed on a breach.

A breach ends the frames with a ``ServerPlacementRefused`` diagnostic frame
and the end frame; through the fabric interface it raises
``PlacementRefused`` (after the diagnostic event, for a stream), so a cut
stream is never recorded. ``realize_events`` turns any fabric's stream into
``Started`` / ``Chunk`` / ``Done`` events.

Identical requests in flight at once are placed once (``_Shared``, used by
``ReplicaGroup`` too). A request holding a ``fabric.Secret`` never goes to
a worker; its ``SecretRef`` objects are resolved in the worker, from the
secret store the fabric was given (sent once, at spawn), and a ``Secret``
in the op's output comes back as ``fabric.REDACTED``.

This module imports the core, ``ops``, ``replies``, ``frames`` and the
fabrics' shared helpers; nothing imports it but ``fabric/__init__``.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import itertools
import math
import multiprocessing
import os
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator

from . import _core
from ._core import (CapabilityDenied, DeadlineExceeded, EvalRequest, FabricError, Frame,
                    OpNotFound,
                    PlacementResourceLimits, ServerPlacementRequest, canonical_bytes,
                    redact_placement)
from .fabrics import (_bound, _check_declared, _check_sharing, _Counters, _FabricBase,
                      _pending)
from .frames import FRAME_FLAG_DIAGNOSTIC, FrameKind
from .ops import REGISTRY, Op, OpRegistry
from .replies import DIAG, ITEM, EvalReply, EvalStream, Event
from .values import walk

__all__ = ["PlacementFabric", "PlacementRefused", "PlacementError", "realize_events",
           "RealizeStarted", "RealizeChunk", "RealizeDone", "SITE"]

#: The site symbol of server placement.
SITE = "stream/site/server"
REQUEST_KIND = "stream/fabric/server-placement-request"
RESULT_KIND = "stream/fabric/server-placement-result"
REFUSED = "ServerPlacementRefused"


class PlacementError(FabricError, ValueError):
    """A placement that cannot be made at all (a realtime profile, a bad
    fragment); raised before any frame, as the seed's hard errors are."""


class PlacementRefused(FabricError, RuntimeError):
    """The placement was refused or cut by a limit; ``.diagnostic`` is the
    refusal (a dict with ``kind`` ``ServerPlacementRefused``, ``message``,
    ``limit`` and ``id``), the same as the diagnostic frame carried."""

    def __init__(self, diagnostic: dict[str, Any]):
        super().__init__(diagnostic["message"])
        self.diagnostic = diagnostic
        self.limit = diagnostic.get("limit")


# ===========================================================================
# Secrets: a Secret never travels to a worker; a SecretRef is resolved there
# ===========================================================================

def _ref_type() -> Any:
    """``fabric.node.secrets.SecretRef``, without importing the node
    package: no SecretRef exists before that module is loaded."""
    mod = sys.modules.get("fabric.node.secrets")
    return None if mod is None else mod.SecretRef


def secret_refs(request: EvalRequest, where: str) -> list[str]:
    """The names of the ``SecretRef`` objects ``request`` holds (args and kwargs,
    nested); ``CapabilityDenied`` if it holds a ``fabric.Secret``: its value
    never leaves this process, so the request does not travel to a worker."""
    names: list[str] = []
    ref = _ref_type() or ()
    tops = [(a, f"args[{i}]") for i, a in enumerate(request.args)]
    tops += [(v, f"kwargs[{k!r}]") for k, v in request.kwargs.items()]
    for top, where_top in tops:
        for path, v in walk(top, where_top):
            if isinstance(v, _core.Secret):
                raise CapabilityDenied(
                    f"{where}: {path} of the request for {request.op!r} holds a "
                    f"fabric.Secret: its value never leaves this process, so the request "
                    f"does not travel to a worker; pass fabric.SecretRef(name) instead and "
                    f"give the fabric a secret store (secrets=fabric.node.SecretStore(...)): "
                    f"the worker resolves it")
            if isinstance(v, ref):
                names.append(v.name)
    return names


def check_secrets(request: EvalRequest, grants: frozenset[str], store: Any,
                  where: str) -> bool:
    """Before a request goes to a worker: no ``Secret`` in it, and each
    ``SecretRef`` allowed by the caller's grants (``secret:<name>``,
    ``secret:*`` or ``*``) and known to ``store`` (None: the fabric has no
    store, so it resolves none). True when the worker has refs to resolve."""
    names = secret_refs(request, where)
    for name in names:
        if store is None:
            raise CapabilityDenied(
                f"{where}: the request for {request.op!r} holds SecretRef({name!r}) but this "
                f"fabric has no secret store to resolve it; give it one "
                f"(secrets=fabric.node.SecretStore(...))")
        check_ref_grant(name, grants, where)
        if store.value(name) is None:
            raise CapabilityDenied(f"{where}: its secret store has no secret named {name!r}")
    return bool(names)


def check_ref_grant(name: str, grants: frozenset[str], where: str) -> None:
    """``CapabilityDenied`` unless ``grants`` allow resolving the secret
    ``name`` (``secret:<name>`` in any spelling of it, ``secret:*`` or ``*``)."""
    from .node.secrets import granted
    if not granted(name, grants):
        raise CapabilityDenied(f"{where}: resolving SecretRef({name!r}) needs the grant "
                               f"'secret:{name}'")


def _redacted() -> Any:
    return _core.REDACTED


class _RedactedMark:
    """What a ``Secret`` in an op's output becomes in the worker: it loads
    as ``fabric.REDACTED`` where the output arrives (the value stays)."""

    __slots__ = ()

    def __reduce__(self) -> Any:
        return (_redacted, ())


_MARK = _RedactedMark()


def scrub_secrets(value: Any, depth: int = 0) -> Any:
    """``value`` with every ``fabric.Secret`` in it (nested in lists,
    tuples, dicts and sets) replaced by a mark that loads as
    ``fabric.REDACTED``: what a worker sends back never holds a value."""
    if isinstance(value, _core.Secret):
        return _MARK
    if depth > 300:
        return value
    t = type(value)
    if t is list:
        return [scrub_secrets(x, depth + 1) for x in value]
    if t is tuple:
        return tuple(scrub_secrets(x, depth + 1) for x in value)
    if t is dict:
        return {scrub_secrets(k, depth + 1): scrub_secrets(x, depth + 1)
                for k, x in value.items()}
    if t in (set, frozenset):
        return t(scrub_secrets(x, depth + 1) for x in value)
    return value


# ===========================================================================
# The worker process
# ===========================================================================

#: How long a worker may take to receive an op before its duration starts
#: (unpickling it imports the op's module in a fresh worker).
_START_TIMEOUT = 60.0


def _worker_main(conn: Any, secrets: Any = None) -> None:
    """A worker: runs one op at a time under the limits it is sent.

    ``secrets`` is the fabric's secret store, sent once at spawn (in the
    process's start-up arguments, never framed, recorded or logged); it
    resolves the ``SecretRef`` objects of a request here, where the op runs.
    Messages in: ``(op, request, limits)``; out: ``("item", x)`` per item of
    a stream op, ``("value", v, diags)`` for an op's value, ``("end",
    cpu_ms)``, ``("error", type, message)``, ``("breach", limit, message)``.
    Single-threaded on purpose: every extra thread's arena and stack would
    count against ``RLIMIT_DATA``.
    """
    import resource
    import signal
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGXCPU must not dump a core
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    data_soft, data_hard = resource.getrlimit(resource.RLIMIT_DATA)
    cpu_hard = resource.getrlimit(resource.RLIMIT_CPU)[1]
    conn.send(("ready", os.getpid()))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        except Exception as exc:  # an op that cannot be imported here, say
            conn.send(("error", type(exc).__name__, str(exc)))
            continue
        if msg is None:
            return
        op, request, limits = msg
        used = time.process_time()
        scrub = False
        if secrets is not None:
            try:
                resolved = secrets.resolve(request, ("*",))  # grants checked by the fabric
            except Exception as exc:
                conn.send(("error", type(exc).__name__, str(exc)))
                continue
            if resolved is not None:
                request, scrub = resolved, True
        if limits is None:  # a replica's op: no limits
            _serve_one(conn, op, request, used, scrub)
            continue
        # The op and its request are here (its module imported, which in a
        # fresh worker can take longer than the op): its time starts now.
        conn.send(("started",))
        soft = math.ceil(used + limits.max_cpu_time_ms / 1000.0)
        if cpu_hard != resource.RLIM_INFINITY:
            soft = min(soft, cpu_hard)
        resource.setrlimit(resource.RLIMIT_CPU, (soft, cpu_hard))
        if limits.max_rss_bytes is not None:
            cap = limits.max_rss_bytes
            if data_hard != resource.RLIM_INFINITY:
                cap = min(cap, data_hard)
            resource.setrlimit(resource.RLIMIT_DATA, (cap, data_hard))
        try:
            _run_op(conn, op, request, scrub)
        except MemoryError:
            conn.send(("breach", "max_rss_bytes",
                       f"memory limit exceeded: the worker's data passed "
                       f"{limits.max_rss_bytes} bytes"))
            continue
        except BaseException as exc:
            try:
                conn.send(("error", type(exc).__name__, str(exc)))
            except Exception:
                conn.send(("error", type(exc).__name__, "(unpicklable error)"))
            continue
        finally:
            resource.setrlimit(resource.RLIMIT_DATA, (data_soft, data_hard))
            resource.setrlimit(resource.RLIMIT_CPU, (resource.RLIM_INFINITY, cpu_hard)
                               if cpu_hard == resource.RLIM_INFINITY else (cpu_hard, cpu_hard))
        conn.send(("end", (time.process_time() - used) * 1000.0))


def _serve_one(conn: Any, op: Op[..., Any], request: EvalRequest, used: float,
               scrub: bool = False) -> None:
    try:
        _run_op(conn, op, request, scrub)
    except BaseException as exc:
        try:
            conn.send(("error", type(exc).__name__, str(exc)))
        except Exception:
            conn.send(("error", type(exc).__name__, "(unpicklable error)"))
        return
    conn.send(("end", (time.process_time() - used) * 1000.0))


def _run_op(conn: Any, op: Op[..., Any], request: EvalRequest, scrub: bool = False) -> None:
    """Runs the op, sending its output; with ``scrub`` (its request held
    resolved secrets) every ``Secret`` in the output becomes the redacted
    mark first."""
    from .ops import _collector
    sink: list[dict[str, Any]] = []
    token = _collector.set(sink)
    if scrub:
        send = conn.send
        conn = _Scrubbing(send)
    try:
        if op.is_stream:
            limit = request.answer_limit
            gen = op.fn(*request.args, **request.kwargs)
            try:
                for n, item in enumerate(gen):
                    while sink:
                        conn.send(("diag", sink.pop(0)))
                    conn.send(("item", item))
                    if limit is not None and n + 1 >= limit:
                        break
            finally:
                gen.close()
            while sink:
                conn.send(("diag", sink.pop(0)))
        else:
            value = op.fn(*request.args, **request.kwargs)
            conn.send(("value", value, list(sink)))
    finally:
        _collector.reset(token)


class _Scrubbing:
    """A pipe end whose messages have their secrets scrubbed."""

    def __init__(self, send: Callable[[Any], None]):
        self._send = send

    def send(self, msg: Any) -> None:
        self._send(scrub_secrets(msg))


class _Worker:
    """One worker process and the parent's end of its pipe; ``secrets`` (a
    secret store or None) goes to the process once, at spawn."""

    def __init__(self, ctx: Any, secrets: Any = None):
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, secrets), daemon=True,
                                name="fabric-placement-worker")
        self.proc.start()
        child.close()
        ready = self.conn.recv()  # the handshake: the worker is up
        if ready[0] != "ready":
            raise FabricError(f"placement worker did not start: {ready!r}")
        self.pid = ready[1]

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join()
        self.conn.close()

    def stop(self) -> None:
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(timeout=5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


# ===========================================================================
# Identical requests in flight at once: computed once
# ===========================================================================

class _Shared:
    """Identical concurrent requests (one content key) computed once.

    The first caller computes, under its own deadline; a caller that comes
    while it does waits for that computation and gets the same reply, or
    the same error. A waiter whose own deadline passes first gets
    ``DeadlineExceeded`` carrying ``pending_reply`` (the shared computation
    goes on). Never for an op whose sharing class is ``uncacheable``: each
    of its calls runs.
    """

    def __init__(self, stats: Any, where: str):
        self._lock = threading.Lock()
        self._flights: dict[Any, concurrent.futures.Future[EvalReply]] = {}
        self._stats = stats
        self._where = where

    @staticmethod
    def shareable(op: Op[..., Any], request: EvalRequest) -> bool:
        return request.sharing != "uncacheable" and op.sharing != "uncacheable"

    def join(self, op: Op[..., Any], request: EvalRequest
             ) -> tuple[concurrent.futures.Future[EvalReply] | None, bool]:
        """``(flight, owner)``: the owner computes and settles the flight;
        ``(None, True)`` for a request that is never shared."""
        if not self.shareable(op, request):
            return None, True
        key = request.key
        with self._lock:
            fut = self._flights.get(key)
            if fut is not None:
                self._stats.add("coalesced")
                return fut, False
            fut = concurrent.futures.Future()
            self._flights[key] = fut
            return fut, True

    def settle(self, request: EvalRequest, fut: concurrent.futures.Future[EvalReply] | None,
               compute: Callable[[], EvalReply]) -> EvalReply:
        """The owner's part: ``compute()``, its outcome given to the waiters."""
        if fut is None:
            return compute()
        try:
            reply = compute()
        except BaseException as exc:
            with self._lock:
                self._flights.pop(request.key, None)
            fut.set_exception(exc)
            raise
        with self._lock:
            self._flights.pop(request.key, None)
        fut.set_result(reply)
        return reply

    def late(self, request: EvalRequest, bound: float | None) -> DeadlineExceeded:
        return DeadlineExceeded(f"{self._where}: the computation of {request.op!r} this "
                                f"caller shares did not finish within {bound:.3g} s (the "
                                f"request's deadline or the timeout)")

    def wait(self, request: EvalRequest, fut: concurrent.futures.Future[EvalReply],
             bound: float | None) -> EvalReply:
        """A waiter's part: the shared outcome, within ``bound`` seconds."""
        try:
            return fut.result(timeout=bound)
        except concurrent.futures.TimeoutError:
            exc = self.late(request, bound)
            _pending(exc, fut)
            raise exc from None

    def run(self, op: Op[..., Any], request: EvalRequest, bound: float | None,
            compute: Callable[[], EvalReply]) -> EvalReply:
        fut, owner = self.join(op, request)
        if owner:
            return self.settle(request, fut, compute)
        assert fut is not None
        return self.wait(request, fut, bound)

    async def arun(self, fab: _FabricBase, op: Op[..., Any], request: EvalRequest,
                   bound: float | None, compute: Callable[[], EvalReply]) -> EvalReply:
        """``run`` for a caller on an event loop: the owner computes on a
        worker thread, waiters await the flight (no thread each)."""
        fut, owner = self.join(op, request)
        if owner:
            try:
                running = fab._pool().submit(self.settle, request, fut, compute)
            except BaseException as exc:  # the fabric is closed: nobody computes
                if fut is not None:
                    with self._lock:
                        self._flights.pop(request.key, None)
                    fut.set_exception(exc)
                raise
            try:
                return await asyncio.shield(asyncio.wrap_future(running))
            except asyncio.CancelledError as exc:
                # The caller left; the computation goes on (its waiters, or
                # a recording layer, take its reply).
                _pending(exc, fut if fut is not None else running)
                raise
        assert fut is not None
        try:
            return await asyncio.wait_for(asyncio.shield(asyncio.wrap_future(fut)), bound)
        except asyncio.TimeoutError:
            late = self.late(request, bound)
            _pending(late, fut)
            raise late from None
        except asyncio.CancelledError as cancelled:
            _pending(cancelled, fut)
            raise


# ===========================================================================
# The placement frames
# ===========================================================================

class _Cutoff:
    """The seed's cut-off check on each frame, in its order, then the rate:
    more than ``max_rate_hz`` output chunks within any one second (as the
    frame limits count it, docs/spec/frames.md) cuts the stream too."""

    def __init__(self, limits: PlacementResourceLimits):
        self.limits = limits
        self.data_frames = 0
        self.frames = 1  # the start frame
        self.bytes = 0  # accounted: the start frame's payload included
        self.data_bytes = 0
        self.recent: collections.deque[float] = collections.deque()  # output chunks' times

    def check(self, payload: bytes, chunk: bool = False) -> tuple[str, str] | None:
        lim = self.limits
        n = len(payload)
        if self.data_frames >= lim.max_stream_frames:
            return ("max_stream_frames", f"stream-size limit exceeded after "
                                         f"{self.data_frames} chunks")
        if self.frames >= lim.max_inflight_work:
            return ("max_inflight_work", f"inflight-work limit exceeded at "
                                         f"{self.frames} frames")
        if n > lim.max_frame_payload_bytes:
            return ("max_frame_payload_bytes", f"frame-size limit exceeded: {n} bytes > "
                                               f"{lim.max_frame_payload_bytes} bytes")
        if self.bytes + n > lim.max_memory_bytes:
            return ("max_memory_bytes", f"memory limit exceeded: {self.bytes + n} bytes > "
                                        f"{lim.max_memory_bytes} bytes")
        if chunk:
            now = time.monotonic()
            recent = self.recent
            while recent and recent[0] <= now - 1.0:
                recent.popleft()
            if len(recent) >= lim.max_rate_hz:
                return ("max_rate_hz", f"rate limit exceeded: more than {lim.max_rate_hz} "
                                       f"chunks within one second")
            recent.append(now)
        self.bytes += n
        self.data_bytes += n
        self.data_frames += 1
        self.frames += 1
        return None


def _edge(port: str, placement: ServerPlacementRequest) -> dict[str, Any]:
    return {"port": redact_placement(port), "clock-domain": "server-frame",
            "latency-class": placement.declared_latency, "nominal-rate-hz": None,
            "metadata": {}, "envelopes": []}


class PlacementFabric(_FabricBase):
    """A home fabric that runs each op in a worker process under limits.

    ``site`` names the site in reports (default ``stream/site/server``);
    ``ops`` are the ops it may run (default: every registered op; the
    worker imports them by reference); ``limits`` and ``profile`` are what
    a plain ``evaluate``/``stream`` places a request under (a
    ``ServerPlacementRequest`` given to ``place`` brings its own);
    ``grants`` are the capabilities of callers that pass none.
    ``workers`` worker processes run ops side by side (a request waits for
    a free one); ``start_method`` is multiprocessing's (``spawn`` by
    default: forking a threaded parent is unsafe). ``secrets`` (a
    ``fabric.node.SecretStore``, or None) is sent to each worker once, at
    spawn: a request's ``SecretRef`` objects are resolved there, where the op
    runs, and the op gets ``fabric.Secret(value)``; a request holding a
    ``fabric.Secret`` itself is refused (``CapabilityDenied``).

    ``place(placement)`` yields the seed's frames: start, the request report
    (redacted), the result report, the output chunks, the end; a refusal or
    a breach is a ``ServerPlacementRefused`` diagnostic chunk before the
    end. ``evaluate`` and ``stream`` run the same path and raise
    ``PlacementRefused`` on a refusal, so nothing cut is ever recorded.
    """

    honours_timeout = True

    @property
    def resolves_secret_refs(self) -> bool:
        """Whether this fabric's workers resolve ``SecretRef`` objects (it was
        given a secret store): a node then hands them on unresolved."""
        return self.secrets is not None

    def __init__(self, site: str = SITE, *, ops: OpRegistry | Iterable[Op[..., Any]] | None = None,
                 limits: PlacementResourceLimits | None = None,
                 profile: str = "stream/profile/server-render-return",
                 grants: Iterable[str] = (), workers: int = 1, start_method: str = "spawn",
                 secrets: Any = None):
        if not isinstance(site, str) or not site:
            raise TypeError(f"PlacementFabric site must be a non-empty str, not {site!r}")
        if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
            raise ValueError(f"PlacementFabric workers must be an int >= 1, got {workers!r}")
        if ops is None:
            ops = REGISTRY
        self.site = site
        self.ops = ops if isinstance(ops, OpRegistry) else OpRegistry(ops)
        self.limits = limits if limits is not None else PlacementResourceLimits()
        if not isinstance(self.limits, PlacementResourceLimits):
            raise TypeError(f"PlacementFabric limits must be a PlacementResourceLimits, not "
                            f"{type(limits).__name__}")
        # Validates the profile now, not at the first request.
        ServerPlacementRequest(EvalRequest("probe"), profile=profile)
        self.profile = profile
        self.grants = frozenset(grants)
        self.secrets = _check_store(secrets, "PlacementFabric")
        self._ctx = multiprocessing.get_context(start_method)
        self._idle: list[_Worker] = []
        self._slots = threading.BoundedSemaphore(workers)
        self._lock = threading.Lock()
        self._closed = False
        self._ids = itertools.count(1)
        self._stats = _Counters("placed", "refused", "breaches", "workers_started",
                                "workers_killed", "coalesced")
        self._shared = _Shared(self._stats, f"PlacementFabric {site!r}")

    def _describe(self) -> str:
        return f"site={self.site!r}, {len(self.ops)} ops"

    # -- workers ----------------------------------------------------------------
    def _take(self) -> _Worker:
        with self._lock:
            if self._closed:
                raise _core.FabricUnavailable("PlacementFabric is closed")
            while self._idle:
                w = self._idle.pop()
                if w.proc.is_alive():
                    return w
                w.kill()
        self._stats.add("workers_started")
        return _Worker(self._ctx, self.secrets)

    def _give_back(self, w: _Worker) -> None:
        with self._lock:
            if not self._closed:
                self._idle.append(w)
                return
        w.stop()

    def _kill(self, w: _Worker) -> None:
        self._stats.add("workers_killed")
        w.kill()

    def close(self) -> None:
        """Stop the worker processes (idle ones at once)."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
        for w in idle:
            w.stop()
        super().close()

    # -- placement ------------------------------------------------------------
    def placement_for(self, request: EvalRequest) -> ServerPlacementRequest:
        """The placement ``evaluate``/``stream`` make of a plain request."""
        return ServerPlacementRequest(request, profile=self.profile,
                                      resource_limits=self.limits)

    def _check(self, placement: ServerPlacementRequest, g: frozenset[str]) -> Op[..., Any]:
        if not isinstance(placement, ServerPlacementRequest):
            raise TypeError(f"place() takes a ServerPlacementRequest, not "
                            f"{type(placement).__name__}")
        if placement.declared_latency in ("realtime", "sample-exact"):
            raise PlacementError(f"server placement refuses realtime profile "
                                 f"{placement.profile!r} (latency "
                                 f"{placement.declared_latency})")
        for cap in placement.required_capabilities:
            if cap not in g:
                raise CapabilityDenied(f"server placement of {placement.fragment.op!r} needs "
                                       f"capability {cap!r}, which the caller's grants lack")
        op = self.ops.find(placement.fragment)
        where = f"PlacementFabric {self.site!r}"
        frag = placement.fragment
        _core._check_grants(frag, g, where, op.capabilities)
        if op.capabilities:
            _check_declared(frag, op, where)
        if frag.sharing != op.sharing:
            _check_sharing(frag, op, where)
        check_secrets(frag, g, self.secrets, where)
        return op

    def place(self, placement: ServerPlacementRequest, *,
              grants: Iterable[str] | None = None) -> Iterator[Frame]:
        """The frames of running ``placement`` here (see the class doc).

        Capabilities are checked first (``CapabilityDenied``; a realtime
        profile is a ``PlacementError``); both before any frame.
        """
        g = self._grants(grants)
        op = self._check(placement, g)
        return self._frames(op, placement)

    def _frames(self, op: Op[..., Any], placement: ServerPlacementRequest) -> Iterator[Frame]:
        frag = placement.fragment
        lim = placement.resource_limits
        stream_id = next(self._ids)
        name = redact_placement(f"stream/server-placement/{frag.op}")
        seq = itertools.count()
        cut = _Cutoff(lim)
        self._stats.add("placed")

        def end(truncated: bool = False) -> Frame:
            body = {"chunks": cut.data_frames, "bytes": cut.data_bytes, "truncated": truncated}
            return Frame(FrameKind.STREAM_END, canonical_bytes(body), stream_id=stream_id,
                         seq=next(seq))

        def refusal(message: str, limit: str | None) -> Iterator[Frame]:
            s = next(seq)
            diag = {"kind": REFUSED, "message": redact_placement(message), "limit": limit,
                    "count": cut.data_frames, "id": f"{name}#server-placement-{s}"}
            self._stats.add("refused")
            yield Frame(FrameKind.STREAM_CHUNK, canonical_bytes(diag), stream_id=stream_id,
                        seq=s, flags=FRAME_FLAG_DIAGNOSTIC)
            yield end(True)

        def data(payload: Any, chunk: bool = False
                 ) -> tuple[Frame | None, tuple[str, str] | None]:
            body = canonical_bytes(payload)
            breach = cut.check(body, chunk)
            if breach is not None:
                return None, breach
            return Frame(FrameKind.STREAM_CHUNK, body, stream_id=stream_id,
                         seq=next(seq)), None

        start = {"metadata": {"stream-id": name, "media": "data", "direction": "source",
                              "clock": "server-frame",
                              "buffer": {"bounded": lim.max_inflight_work}}}
        start_bytes = canonical_bytes(start)
        cut.bytes += len(start_bytes)
        yield Frame(FrameKind.STREAM_START, start_bytes, stream_id=stream_id, seq=next(seq))
        node = redact_placement({"op": frag.op, "version": frag.version,
                                 "args": list(frag.args), "kwargs": dict(frag.kwargs)})
        report = {
            "kind": REQUEST_KIND, "operation": "server-placement-request", "site": self.site,
            "fragment-id": name, "node": node, "realtime-pinned": placement.realtime_pinned,
            "placement-report": redact_placement(placement.report),
            "declared-profile": placement.profile,
            "declared-latency": placement.declared_latency,
            "resource-limits": lim.to_expr(),
            "required-capabilities": list(placement.required_capabilities),
            "input-edges": [_edge("in", placement)],
            "output-edges": [_edge("out", placement)],
        }
        f, breach = data(report)
        if breach is not None:
            yield from refusal(f"server placement resource cutoff: {breach[1]}", breach[0])
            return
        yield f  # type: ignore[misc]
        if placement.realtime_pinned:
            yield from refusal(f"server placement refused fragment {name}: {self.site} "
                               f"cannot host a realtime-pinned node", "realtime-pinned")
            return

        yield from self._run(op, placement, data, refusal, end)

    def _run(self, op: Op[..., Any], placement: ServerPlacementRequest, data: Any,
             refusal: Any, end: Any) -> Iterator[Frame]:
        frag = placement.fragment
        lim = placement.resource_limits
        self._slots.acquire()
        w: _Worker | None = None
        healthy = False
        try:
            w = self._take()
            w.conn.send((op, frag, lim))
            # The duration bounds the op, not its shipping: the clock starts
            # when the worker has the op (a fresh worker imports its module
            # first). That wait is bounded too, by _START_TIMEOUT.
            if not w.conn.poll(_START_TIMEOUT):
                self._stats.add("breaches")
                yield from refusal(f"server placement resource cutoff: the worker did not "
                                   f"start the op within {_START_TIMEOUT:g} s",
                                   "max_duration_ms")
                return
            try:
                first = w.conn.recv()
            except (EOFError, OSError):
                self._stats.add("breaches")
                yield from refusal(self._death(w, lim), self._death_limit(w))
                return
            if first[0] == "error":
                healthy = True
                raise _remote_error(frag, first[1], first[2])
            deadline = time.monotonic() + lim.max_duration_ms / 1000.0
            result_sent = False
            items = 0
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not w.conn.poll(left):
                    self._stats.add("breaches")
                    yield from refusal(f"server placement resource cutoff: duration limit "
                                       f"exceeded: {lim.max_duration_ms} ms", "max_duration_ms")
                    return
                try:
                    msg = w.conn.recv()
                except (EOFError, OSError):
                    self._stats.add("breaches")
                    yield from refusal(self._death(w, lim), self._death_limit(w))
                    return
                tag = msg[0]
                if tag == "error":
                    healthy = True
                    raise _remote_error(frag, msg[1], msg[2])
                if tag == "breach":
                    healthy = True
                    self._stats.add("breaches")
                    yield from refusal(f"server placement resource cutoff: {msg[2]}", msg[1])
                    return
                if tag == "end":
                    if msg[1] > lim.max_cpu_time_ms:
                        healthy = True
                        self._stats.add("breaches")
                        yield from refusal(f"server placement resource cutoff: cpu-time "
                                           f"limit exceeded: {msg[1]:.0f} ms > "
                                           f"{lim.max_cpu_time_ms} ms", "max_cpu_time_ms")
                        return
                    if not result_sent:
                        f, breach = data(self._result(placement, "stream", items))
                        if breach is not None:
                            healthy = True
                            yield from refusal(f"server placement resource cutoff: "
                                               f"{breach[1]}", breach[0])
                            return
                        yield f
                    healthy = True
                    yield end()
                    return
                if not result_sent:
                    count = 1 if tag == "value" else None
                    f, breach = data(self._result(placement, "completed" if tag == "value"
                                                  else "stream", count))
                    if breach is not None:
                        yield from refusal(f"server placement resource cutoff: {breach[1]}",
                                           breach[0])
                        return
                    result_sent = True
                    yield f
                if tag == "diag":
                    payload = {"diagnostic": redact_placement(msg[1])}
                elif tag == "value":
                    payload = {"value": msg[1], "diagnostics": msg[2]}
                else:
                    items += 1
                    payload = {"item": msg[1]}
                f, breach = data(payload, True)
                if breach is not None:
                    self._stats.add("breaches")
                    yield from refusal(f"server placement resource cutoff: {breach[1]}",
                                       breach[0])
                    return
                yield f
        finally:
            if w is not None:
                if healthy:
                    self._give_back(w)
                else:
                    self._kill(w)
            self._slots.release()

    def _result(self, placement: ServerPlacementRequest, result: str,
                count: int | None) -> dict[str, Any]:
        return {"kind": RESULT_KIND, "operation": "server-placement-result", "site": self.site,
                "fragment-id": redact_placement(f"stream/server-placement/"
                                                f"{placement.fragment.op}"),
                "node-result": result,
                "output-envelope-count": None if count is None else str(count),
                "declared-profile": placement.profile,
                "declared-latency": placement.declared_latency}

    @staticmethod
    def _death_limit(w: _Worker) -> str | None:
        import signal
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        if code == -signal.SIGXCPU:
            return "max_cpu_time_ms"
        return None

    @staticmethod
    def _death(w: _Worker, lim: PlacementResourceLimits) -> str:
        import signal
        w.proc.join(timeout=5)
        code = w.proc.exitcode
        if code == -signal.SIGXCPU:
            return (f"server placement resource cutoff: cpu-time limit exceeded: "
                    f"{lim.max_cpu_time_ms} ms (the worker was stopped by SIGXCPU)")
        return f"server placement failed: the worker process ended (exit code {code})"

    # -- the fabric interface ------------------------------------------------------
    def _events(self, op: Op[..., Any], placement: ServerPlacementRequest) -> Iterator[Event]:
        for frame in self._frames(op, placement):
            if frame.kind != FrameKind.STREAM_CHUNK:
                continue
            payload = _core.unpack(frame.payload)
            if frame.flags & FRAME_FLAG_DIAGNOSTIC:
                yield DIAG, payload
                raise PlacementRefused(payload)
            if isinstance(payload, dict) and "kind" in payload:
                continue  # the request and result reports
            if "item" in payload:
                yield ITEM, payload["item"]
            elif "diagnostic" in payload:
                yield DIAG, payload["diagnostic"]
            else:
                yield ITEM, payload

    def _reply(self, op: Op[..., Any], placement: ServerPlacementRequest) -> EvalReply:
        request = placement.fragment
        value: Any = [] if request.stream else None
        diags: list[Any] = []
        for tag, p in self._events(op, placement):
            if tag == DIAG:
                diags.append(p)
            elif request.stream:
                value.append(p)
            else:
                value = p["value"]
                diags.extend(p["diagnostics"])
        return EvalReply(value, diags, None, request.key, "computed")

    def _prepare(self, request: EvalRequest, grants: Iterable[str] | None,
                 timeout: float | None) -> tuple[Op[..., Any], ServerPlacementRequest]:
        g = self._grants(grants)
        placement = self._bounded(self.placement_for(request), request, timeout)
        return self._check(placement, g), placement

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Place ``request`` under this fabric's limits and profile; its reply,
        or ``PlacementRefused`` when a limit cut it. Identical requests in
        flight at once run once (not an ``uncacheable`` op's): a caller that
        comes while one runs waits for it and gets its reply or error."""
        op, placement = self._prepare(request, grants, timeout)
        return self._shared.run(op, request, _bound(request, timeout),
                                lambda: self._reply(op, placement))

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``: the placement runs on a worker thread;
        callers sharing it await it without a thread each."""
        op, placement = self._prepare(request, grants, timeout)
        return await self._shared.arun(self, op, request, _bound(request, timeout),
                                       lambda: self._reply(op, placement))

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Place a stream op; items arrive as the worker yields them. A cut
        stream ends with a ``ServerPlacementRefused`` diagnostic and raises
        ``PlacementRefused``, so no recording layer holds it."""
        op, placement = self._prepare(request, grants, timeout)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op (it returns one value): "
                            f"use evaluate()")
        return EvalStream(self._events(op, placement), request.key, "computed")

    @staticmethod
    def _bounded(placement: ServerPlacementRequest, request: EvalRequest,
                 timeout: float | None) -> ServerPlacementRequest:
        # A deadline or timeout shorter than the duration limit becomes it.
        bounds = [t for t in (timeout, None if request.deadline is None
                              else request.deadline - time.time()) if t is not None]
        if not bounds:
            return placement
        ms = max(1, int(min(bounds) * 1000))
        lim = placement.resource_limits
        if ms < lim.max_duration_ms:
            return placement.with_resource_limits(lim.replace(max_duration_ms=ms))
        return placement


def _check_store(secrets: Any, where: str) -> Any:
    """A fabric's ``secrets=``: None or a secret store (``value(name)`` and
    ``resolve(request, grants)``, as ``fabric.node.SecretStore``)."""
    if secrets is not None and not (callable(getattr(secrets, "value", None)) and
                                    callable(getattr(secrets, "resolve", None))):
        raise TypeError(f"{where} secrets must be a fabric.node.SecretStore or None, not "
                        f"{type(secrets).__name__}")
    return secrets


def _remote_error(frag: EvalRequest, type_name: str, message: str) -> Exception:
    if type_name == "OpNotFound":
        return OpNotFound(message)
    if type_name == "CapabilityDenied":
        return CapabilityDenied(message)
    err = _core.RemoteError(f"placed op {frag.op!r} raised {type_name}: {message}")
    err.remote_type = type_name
    err.node = SITE
    return err


# ===========================================================================
# Realize events (seed 000)
# ===========================================================================

@dataclass(frozen=True)
class RealizeStarted:
    """The realization began: ``seq`` 0 and the request it realizes."""

    seq: int
    request: dict[str, Any]


@dataclass(frozen=True)
class RealizeChunk:
    """One item of the stream (``seq`` 1, 2, ...)."""

    seq: int
    item: Any


@dataclass(frozen=True)
class RealizeDone:
    """The stream ended by itself (never emitted when ``answer_limit`` cut it)."""

    seq: int


def realize_events(fab: Any, request: EvalRequest, *, buffer_limit: int | None = None,
                   grants: Iterable[str] | None = None
                   ) -> Iterator[RealizeStarted | RealizeChunk | RealizeDone]:
    """Realize a stream request through ``fab`` as events: ``RealizeStarted``,
    one ``RealizeChunk`` per item, then ``RealizeDone`` only if the stream
    ended by itself, not when the request's ``answer_limit`` cut it short.

    ``buffer_limit`` (an int > 0 or None) is recorded in the started event
    (the seed's bounded buffer). The stream is pulled one item beyond the
    answer limit to learn whether it had more; a replayed stream recorded
    with its limit tells the same, since the limit is part of its key.
    """
    if not isinstance(request, EvalRequest):
        raise TypeError(f"realize_events takes an EvalRequest, not {type(request).__name__}")
    if not request.stream:
        raise ValueError(f"realize_events needs a stream request; {request.op!r} is not one")
    if buffer_limit is not None and (not isinstance(buffer_limit, int) or
                                     isinstance(buffer_limit, bool) or buffer_limit <= 0):
        raise ValueError(f"realize_events buffer_limit must be an int > 0 or None, got "
                         f"{buffer_limit!r}")
    limit = request.answer_limit
    started = {"term": request.op, "observe": "events",
               "buffer-limit": None if buffer_limit is None else str(buffer_limit),
               "answer-limit": None if limit is None else str(limit)}
    yield RealizeStarted(0, started)
    kwargs = {} if grants is None else {"grants": grants}
    stream = fab.stream(request, **kwargs)
    seq = 0
    ended = False
    try:
        it = iter(stream)
        while True:
            try:
                item = next(it)
            except StopIteration:
                ended = True
                break
            seq += 1
            yield RealizeChunk(seq, item)
            if limit is not None and seq >= limit:
                # Let the stream end (so a recording layer commits it); a
                # fabric that gives more than the limit is stopped here.
                for _extra in it:
                    break
                break
    finally:
        close = getattr(stream, "close", None)
        if close is not None:
            close()
    # A stream cut at its answer limit: the fabric stopped there too, so it
    # ended exactly at the limit; whether it would have gone on is what a
    # producer knows. Fabrics here stop a generator at the limit, so a
    # stream that reached the limit is a cut one.
    if ended and (limit is None or seq < limit):
        yield RealizeDone(seq + 1)
