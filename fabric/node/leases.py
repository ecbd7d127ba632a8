"""One computation per fleet: which node computes a missed key, and for how long
the others wait for it.

A node's home is wrapped in a ``LeasedHome``. When a miss reaches home, the
key's *lease holder* is chosen by rendezvous hashing (highest random weight):
among this node (when it computes) and the linked members that compute, the
one with the largest ``SHA-256(key digest || node id)``. Every node that
sees the same members picks the same holder, with no message exchanged, so
two nodes that miss the same key at once both ask the holder, and the holder
computes it once: concurrent misses of one key on a node share one
computation (``SingleFlight``), whether they came from its own clients or
from other nodes.

The lease is the time a node waits for the holder: at most
``GossipConfig.lease`` seconds (and never past the request's own deadline),
measured on the waiting node's own monotonic clock, so no two clocks are
ever compared and no clock needs to be synchronised. When the holder is
dead (the link drops), refuses (it lacks the op, or the grant) or lets the
lease run out, the waiting node computes the key itself: a crashed or hung
holder delays a key by one lease, never wedges it. A request that came
from another node (its ``via`` is not empty) is computed where it arrived,
never forwarded again, so views that disagree cost at most one extra
computation, never a loop. Leases are not facts: they live in no index and
are not gossiped; membership (fabric.node.gossip) says who computes.

Only ``pure`` single replies take leases: a ``recorded`` op (an LLM call,
a tool call) is computed where it is asked and its reply stays there; an
``uncacheable`` one is never shared; streams are computed locally.

May import ``fabric._core`` and ``fabric.node.protocol``; the server wraps
its home in ``LeasedHome`` and sets ``VIA`` for each request it runs.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import hashlib
import logging
import threading
import time
from collections import OrderedDict
from typing import TYPE_CHECKING, Any, Callable, Iterable

from .._core import (CapabilityDenied, ContentKey, DeadlineExceeded, FabricError,
                     FabricUnavailable, OpNotFound)
from ..claims import ClaimRejected
from . import protocol as P

if TYPE_CHECKING:
    from .server import Node

__all__ = ["owner", "SingleFlight", "LeasedHome", "VIA"]

log = logging.getLogger("fabric.node")

#: The ``via`` of the request a node is running (set by the server per request).
VIA: contextvars.ContextVar[tuple[str, ...]] = contextvars.ContextVar(
    "fabric_node_request_via", default=())

# What a lease holder may answer that makes the asking node compute itself:
# gone, slow, or unable (another error, e.g. the op's own, is the answer).
_FALL_BACK = (ClaimRejected, FabricUnavailable, DeadlineExceeded, OpNotFound,
              CapabilityDenied, P.LimitExceeded, P.ProtocolError, P.Unauthenticated, ConnectionError,
              asyncio.TimeoutError)


def _falls_back(exc: BaseException) -> bool:
    # A bare FabricError is how a node ends what it runs when it stops.
    return isinstance(exc, _FALL_BACK) or type(exc) is FabricError


def _left(timeout: float | None, t0: float) -> dict[str, Any] | None:
    """The keywords of the local computation that takes over a call begun
    at t0 with timeout, or None once the timeout is spent."""
    if timeout is None:
        return {}
    left = timeout - (time.monotonic() - t0)
    return {"timeout": left} if left > 0 else None


def owner(key: ContentKey, nodes: Iterable[str]) -> str | None:
    """The lease holder of ``key`` among ``nodes`` (rendezvous hashing), or None."""
    best, best_w = None, b""
    digest = key.digest
    for n in nodes:
        w = hashlib.sha256(digest + n.encode()).digest()
        if best is None or w > best_w or (w == best_w and n < best):
            best, best_w = n, w
    return best


class SingleFlight:
    """Concurrent computations of one key share one run.

    ``run(key, fn)`` (sync) and ``arun(key, afn)`` (async) return the first
    caller's result to every caller that came while it ran (or its
    exception). Successful results of the last ``keep`` keys are kept, so a
    caller arriving between the run's end and its reply being recorded does
    not run it again. Thread-safe.
    """

    def __init__(self, keep: int = 256):
        self._lock = threading.Lock()
        self._running: dict[ContentKey, concurrent.futures.Future[Any]] = {}
        self._done: OrderedDict[ContentKey, Any] = OrderedDict()
        self.keep = keep
        self.runs = 0
        self.joined = 0

    def _enter(self, key: ContentKey) -> tuple[concurrent.futures.Future[Any], bool]:
        with self._lock:
            if key in self._done:
                self.joined += 1
                f: concurrent.futures.Future[Any] = concurrent.futures.Future()
                f.set_result(self._done[key])
                return f, False
            f2 = self._running.get(key)
            if f2 is not None:
                self.joined += 1
                return f2, False
            f = self._running[key] = concurrent.futures.Future()
            self.runs += 1
            return f, True

    def _leave(self, key: ContentKey, fut: concurrent.futures.Future[Any],
               result: Any = None, exc: BaseException | None = None) -> None:
        with self._lock:
            self._running.pop(key, None)
            if exc is None:
                self._done[key] = result
                while len(self._done) > self.keep:
                    self._done.popitem(last=False)
        if exc is None:
            fut.set_result(result)
        else:
            fut.set_exception(exc)

    def run(self, key: ContentKey, fn: Callable[[], Any]) -> Any:
        fut, mine = self._enter(key)
        if not mine:
            return fut.result()
        try:
            result = fn()
        except BaseException as exc:
            self._leave(key, fut, exc=exc)
            raise
        self._leave(key, fut, result)
        return result

    async def arun(self, key: ContentKey, afn: Callable[[], Any]) -> Any:
        fut, mine = self._enter(key)
        if not mine:
            return await asyncio.shield(asyncio.wrap_future(fut))
        try:
            result = await afn()
        except BaseException as exc:
            self._leave(key, fut, exc=exc)
            raise
        self._leave(key, fut, result)
        return result

    def waiting(self, key: ContentKey) -> bool:
        """Whether a run of ``key`` is in progress."""
        return key in self._running


class LeasedHome:
    """A node's home behind leases (see the module doc).

    ``wrapped`` is the fabric it computes with; ``inner`` the user's home
    inside it (what the node introspects). ``stats()`` counts
    ``lease_local`` (this node computed as holder or for another node),
    ``lease_forwarded`` (the holder was asked), ``lease_fallbacks`` (the
    holder was gone or the lease ran out: computed here) and
    ``lease_joined`` (a miss shared a computation in flight) and
    ``lease_rejected`` (the holder's reply failed its claim: discarded, the
    holder penalised in the governor, computed here).

    A reply's source says which node answered: ``"lease:<node>"`` when the
    key's lease holder did (this node's own home never saw the request),
    ``"home"`` when this node's home did. The node's
    ``ContentAddressedFabric`` keeps it (``names_sources``), so the node and
    its clients are told where a reply was really computed.
    """

    honours_timeout = True
    #: Its replies' sources name what answered (fabric.resolving keeps them).
    names_sources = True

    def __init__(self, wrapped: Any, node: "Node"):
        self.wrapped = wrapped
        self.inner = getattr(wrapped, "inner", wrapped)
        self.node = node
        self.flight = SingleFlight()
        self.counters = {"lease_local": 0, "lease_forwarded": 0, "lease_fallbacks": 0,
                         "lease_rejected": 0}
        self._clients: dict[str, Any] = {}  # holder URL -> compute-scope NodeClient

    def stats(self) -> dict[str, int]:
        return {**self.counters, "lease_joined": self.flight.joined}

    # -- who holds the lease ---------------------------------------------------
    def holder(self, key: ContentKey) -> tuple[str | None, Any]:
        """(lease holder id, its link client or None when it is this node)."""
        links = self.node._gossip.computing_links()
        me = self.node.node_id
        who = owner(key, [me, *links])
        return who, (None if who == me else links.get(who))  # type: ignore[arg-type]

    def _compute_client(self, link: Any) -> Any:
        from .client import NodeClient
        cl = self._clients.get(link.url)
        if cl is None or cl._closed:
            node = self.node
            cl = self._clients[link.url] = NodeClient(
                link.url, tls=node.peer_tls, token=node.peer_token, scope="compute",
                node_id=node.node_id, timeout=None)
        return cl

    def _plan(self, request: Any) -> Any:
        """The link client of the lease holder to ask, or None: compute here."""
        if request.sharing != "pure" or request.stream or VIA.get():
            return None
        who, link = self.holder(request.key)
        if link is None:
            return None
        return self._compute_client(link)

    def _verified(self, remote: Any, request: Any, reply: Any) -> Any:
        """The holder's reply, its source ``"lease:<holder>"``, once its claim
        verifies when this node checks claims (``ClaimRejected`` otherwise,
        after penalising the holder in the governor: the asking node then
        computes the key itself)."""
        who = remote.node or remote.url
        verifier = getattr(self.node.fabric, "_verifier", None)
        why = None if verifier is None else verifier.check(getattr(reply, "claim", None),
                                                          request.key, reply, who)
        if why is None:
            return reply._with_source("lease:" + who)
        self.counters["lease_rejected"] += 1
        gov = self.node.fabric.governor
        if gov is not None:
            gov.failed(who, f"lease reply: {why}", penalty=True)
        log.warning("node %s: lease holder %s's reply for %s was discarded: %s",
                    self.node.node_id, who, request.key, why)
        raise ClaimRejected(f"lease holder {who!r}'s reply for {request.key} was "
                            f"discarded: {why}")

    def _lease(self, timeout: float | None) -> float:
        t = self.node._gossip.config.lease
        return t if timeout is None else min(t, timeout)

    def _forwarding(self, timeout: float | None) -> tuple[float, float]:
        """Counts a call forwarded to its lease holder: (when it starts, the
        time the holder has: the lease, within timeout)."""
        self.counters["lease_forwarded"] += 1
        return time.monotonic(), self._lease(timeout)

    def _falling_back(self, exc: BaseException) -> bool:
        """Whether the lease holder's failure exc makes this node compute
        the key itself (counted), rather than raise it."""
        if not _falls_back(exc):
            return False
        self.counters["lease_fallbacks"] += 1
        return True

    # -- the fabric interface --------------------------------------------------
    async def aevaluate(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        remote = self._plan(request)
        kw = {} if timeout is None else {"timeout": timeout}
        if remote is not None:
            t0, lease = self._forwarding(timeout)
            try:
                if remote.status != "connected":  # a compute link made just now
                    await asyncio.wait_for(asyncio.shield(remote._connected_once()), lease)
                return self._verified(remote, request, await remote.aevaluate(
                    request, grants=grants, timeout=max(1e-3, lease - (time.monotonic() - t0))))
            except Exception as exc:
                if not self._falling_back(exc):
                    raise
                log.info("node %s: lease holder %s of %s did not answer (%s): computing it "
                         "here", self.node.node_id, remote.node or remote.url, request.key,
                         type(exc).__name__)
                rest = _left(timeout, t0)
                if rest is None:
                    raise
                kw = rest

        async def compute() -> Any:
            self.counters["lease_local"] += 1
            reply = await self.wrapped.aevaluate(request, grants=grants, **kw)
            return reply._with_source("home")

        if request.sharing != "pure" or request.stream:
            return await compute()
        return await self.flight.arun(request.key, compute)

    def evaluate(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        remote = self._plan(request)
        kw = {} if timeout is None else {"timeout": timeout}
        if remote is not None:
            t0, lease = self._forwarding(timeout)
            try:
                remote.wait_connected(lease)
                return self._verified(remote, request, remote.evaluate(
                    request, grants=grants, timeout=max(1e-3, lease - (time.monotonic() - t0))))
            except Exception as exc:
                if not self._falling_back(exc):
                    raise
                rest = _left(timeout, t0)
                if rest is None:
                    raise
                kw = rest

        def compute() -> Any:
            self.counters["lease_local"] += 1
            return self.wrapped.evaluate(request, grants=grants, **kw)._with_source("home")

        if request.sharing != "pure" or request.stream:
            return compute()
        return self.flight.run(request.key, compute)

    def stream(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        return self.wrapped.stream(request, grants=grants,
                                   **({"timeout": timeout} if timeout else {}))

    def astream(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        return self.wrapped.astream(request, grants=grants,
                                    **({"timeout": timeout} if timeout else {}))

    async def aclose(self) -> None:
        for cl in self._clients.values():
            await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(cl._aclose(), cl._loop))
        self._clients.clear()
