"""ReplicaGroup: a home fabric of interchangeable worker processes (seed 001).

Replica ``i`` of a group has the identity HMAC-SHA256(group_seed, i) (the
index as one byte; Python's ``hmac`` over OpenSSL's SHA-256): the same on
any machine, so a replica that is replaced keeps its identity. The group id
is the first four bytes of SHA-256(group_seed), big-endian. Requests are
routed among healthy replicas by one of four strategies:

- ``round-robin``: in turn;
- ``least-loaded``: the replica with the fewest requests in flight;
- ``consistent-hash``: by the request's content key, rendezvous hashing
  over the replicas' identities (the same key goes to the same healthy
  replica; scaling from n to n+1 moves about 1/(n+1) of the keys);
- ``power-of-two``: the less loaded of two replicas picked at random.

A replica whose process dies is respawned with the same index and identity;
the request it was running is retried once on another replica, unless its
sharing class (``request.sharing``, else the op's) is not ``pure``: running
it again could repeat what it did. A caller's ``timeout`` (or the request's
deadline) bounds the wait: past it the replica running the op is restarted
(the only way to stop it) and the caller gets ``DeadlineExceeded``. Health is
``healthy`` (every replica's process alive), ``degraded`` or ``dead``.
Identical requests in flight at once run once (never an ``uncacheable``
op's); ``SecretRef`` objects are resolved in the replica (``secrets=``).

This module imports the core, ``ops``, ``replies``, ``placement`` (the
worker process) and the fabrics' shared helpers.
"""

from __future__ import annotations

import hashlib
import hmac
import itertools
import multiprocessing
import random
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterable, Iterator

from . import _core
from ._core import DeadlineExceeded, EvalRequest, FabricError
from .fabrics import _bound, _check_declared, _check_sharing, _Counters, _FabricBase
from .ops import REGISTRY, Op, OpRegistry
from .placement import _check_store, _remote_error, _Shared, _Worker, check_secrets
from .replies import DIAG, ITEM, EvalReply, EvalStream, Event

__all__ = ["ReplicaGroup", "GroupHealth", "replica_identity", "STRATEGIES"]

STRATEGIES = ("round-robin", "least-loaded", "consistent-hash", "power-of-two")


def replica_identity(group_seed: bytes, index: int) -> bytes:
    """The 32-byte identity of replica ``index`` (0..254) of a group."""
    if not isinstance(index, int) or isinstance(index, bool) or not 0 <= index < 255:
        raise ValueError(f"replica index must be an int in 0..254, got {index!r}")
    return hmac.new(bytes(group_seed), bytes([index]), hashlib.sha256).digest()


@dataclass(frozen=True)
class GroupHealth:
    """``state`` is ``"healthy"``, ``"degraded"`` or ``"dead"``."""

    state: str
    healthy: int
    total: int


class _Replica:
    def __init__(self, index: int, identity: bytes, ctx: Any, secrets: Any = None):
        self.index = index
        self.identity = identity
        self.ctx = ctx
        self.secrets = secrets
        self.lock = threading.Lock()  # one request at a time on its pipe
        self.in_flight = 0
        self.requests = 0
        self.errors = 0
        self.respawns = 0
        self.worker = _Worker(ctx, secrets)

    def alive(self) -> bool:
        return self.worker.proc.is_alive()

    def respawn(self) -> None:
        """A new process in this slot: same index, same identity."""
        self.worker.kill()
        self.worker = _Worker(self.ctx, self.secrets)
        self.respawns += 1


class _Crashed(Exception):
    pass


def _sharing(op: Op[..., Any], request: EvalRequest) -> str:
    """The request's sharing class (the op's when the request has none);
    ``pure`` when neither says."""
    s = getattr(request, "sharing", None)
    if s is None:
        s = getattr(op, "sharing", "pure")
    return str(s)


def _t_end(request: EvalRequest, timeout: float | None) -> float | None:
    """The monotonic time the caller stops waiting (None: no bound)."""
    bound = _bound(request, timeout)
    return None if bound is None else time.monotonic() + bound


class ReplicaGroup(_FabricBase):
    """A home fabric of ``replica_count`` worker processes running ``ops``.

    ``kind`` names what the replicas run (pinned at spawn: ``scale_to``
    grows the group with the same ops); ``group_seed`` (bytes, 32 of them)
    fixes every replica's identity; ``lb_strategy`` is one of
    ``STRATEGIES``. ``replicas()`` lists the members, ``health()`` tells
    the group's health, ``replica_stats()`` the per-replica counters.
    ``secrets`` (a ``fabric.node.SecretStore``, or None) is sent to each
    replica once, at spawn: a request's ``SecretRef`` objects are resolved in the
    replica that runs it; a request holding a ``fabric.Secret`` is refused
    (``CapabilityDenied``).
    """

    honours_timeout = True

    @property
    def resolves_secret_refs(self) -> bool:
        """Whether this fabric's workers resolve ``SecretRef`` objects (it was
        given a secret store): a node then hands them on unresolved."""
        return self.secrets is not None

    def __init__(self, kind: str, replica_count: int, *, group_seed: bytes,
                 lb_strategy: str = "round-robin",
                 ops: OpRegistry | Iterable[Op[..., Any]] | None = None,
                 grants: Iterable[str] = (), start_method: str = "spawn",
                 secrets: Any = None):
        if not isinstance(kind, str) or not kind:
            raise TypeError(f"ReplicaGroup kind must be a non-empty str, not {kind!r}")
        if not isinstance(group_seed, (bytes, bytearray)) or len(group_seed) != 32:
            raise ValueError("ReplicaGroup group_seed must be 32 bytes")
        if lb_strategy not in STRATEGIES:
            raise ValueError(f"ReplicaGroup lb_strategy must be one of {', '.join(STRATEGIES)}, "
                             f"got {lb_strategy!r}")
        self._check_count(replica_count)
        self.kind = kind
        self.group_seed = bytes(group_seed)
        self.group_id = int.from_bytes(hashlib.sha256(self.group_seed).digest()[:4], "big")
        self.lb_strategy = lb_strategy
        if ops is None:
            ops = REGISTRY
        self.ops = ops if isinstance(ops, OpRegistry) else OpRegistry(ops)
        self.grants = frozenset(grants)
        self.secrets = _check_store(secrets, "ReplicaGroup")
        self._ctx = multiprocessing.get_context(start_method)
        self._lock = threading.Lock()
        self._rr = itertools.count()
        self._rng = random.Random(self.group_id)
        self._replicas: list[_Replica] = []
        self._stats = _Counters("computed", "errors", "retried", "respawned", "denied",
                                "coalesced")
        self._shared = _Shared(self._stats, f"ReplicaGroup {kind!r}")
        self.scale_to(replica_count)

    @staticmethod
    def _check_count(n: int) -> None:
        if not isinstance(n, int) or isinstance(n, bool):
            raise TypeError(f"replica_count must be an int, not {type(n).__name__}")
        if n <= 0:
            raise ValueError("replica_count must be > 0")
        if n > 255:
            raise ValueError(f"replica_count must be at most 255, got {n}")

    def _describe(self) -> str:
        h = self.health()
        return (f"kind={self.kind!r}, group_id={self.group_id:#010x}, "
                f"replicas={h.total}, healthy={h.healthy}, {self.lb_strategy}")

    # -- membership ------------------------------------------------------------
    def scale_to(self, n: int) -> None:
        """Grow (new indices, their identities) or shrink (highest index
        first) the group to ``n`` replicas; 0 is refused."""
        self._check_count(n)
        with self._lock:
            current = len(self._replicas)
        for i in range(current, n):
            r = _Replica(i, replica_identity(self.group_seed, i), self._ctx, self.secrets)
            with self._lock:
                self._replicas.append(r)
        while True:
            with self._lock:
                if len(self._replicas) <= n:
                    break
                r = self._replicas.pop()
            with r.lock:
                r.worker.stop()

    @property
    def replica_count(self) -> int:
        return len(self._replicas)

    def replicas(self) -> list[dict[str, Any]]:
        """The members: index, identity (hex), pid, healthy."""
        return [{"index": r.index, "identity": r.identity.hex(), "pid": r.worker.pid,
                 "healthy": r.alive()} for r in list(self._replicas)]

    def replica_stats(self) -> list[dict[str, Any]]:
        """Per replica: index, requests, errors, respawns, in flight."""
        return [{"index": r.index, "requests": r.requests, "errors": r.errors,
                 "respawns": r.respawns, "in_flight": r.in_flight}
                for r in list(self._replicas)]

    def health(self) -> GroupHealth:
        rs = list(self._replicas)
        up = sum(1 for r in rs if r.alive())
        state = "healthy" if up == len(rs) else ("dead" if up == 0 else "degraded")
        return GroupHealth(state, up, len(rs))

    def heal(self) -> list[int]:
        """Respawn every replica whose process died (same identity); the
        indices respawned."""
        done = []
        for r in list(self._replicas):
            if not r.alive():
                with r.lock:
                    if not r.alive():
                        r.respawn()
                        self._stats.add("respawned")
                        done.append(r.index)
        return done

    def close(self) -> None:
        """Stop every replica's process."""
        with self._lock:
            rs, self._replicas = self._replicas, []
        for r in rs:
            r.worker.stop()
        super().close()

    # -- routing ------------------------------------------------------------------
    def route(self, request: EvalRequest, *, exclude: int | None = None) -> int:
        """The index of the replica that would take ``request`` now."""
        return self._pick(request, exclude).index

    def _pick(self, request: EvalRequest, exclude: int | None = None) -> _Replica:
        rs = [r for r in list(self._replicas) if r.index != exclude]
        healthy = [r for r in rs if r.alive()] or rs
        if not healthy:
            raise _core.FabricUnavailable(f"ReplicaGroup {self.kind!r} has no replica to run "
                                          f"{request.op!r}")
        s = self.lb_strategy
        if s == "round-robin":
            return healthy[next(self._rr) % len(healthy)]
        if s == "least-loaded":
            return min(healthy, key=lambda r: (r.in_flight, r.requests, r.index))
        if s == "consistent-hash":
            digest = bytes(request.key)
            return max(healthy, key=lambda r: hashlib.sha256(r.identity + digest).digest())
        a, b = self._rng.choice(healthy), self._rng.choice(healthy)
        return a if a.in_flight <= b.in_flight else b

    # -- running ----------------------------------------------------------------
    def _op_for(self, request: EvalRequest, g: frozenset[str]) -> Op[..., Any]:
        op = self.ops.find(request)
        where = f"ReplicaGroup {self.kind!r}"
        try:
            _core._check_grants(request, g, where, op.capabilities)
            if op.capabilities:
                _check_declared(request, op, where)
            check_secrets(request, g, self.secrets, where)
        except _core.CapabilityDenied:
            self._stats.add("denied")
            raise
        if request.sharing != op.sharing:
            _check_sharing(request, op, where)
        return op

    def _messages(self, r: _Replica, op: Op[..., Any], request: EvalRequest,
                  t_end: float | None) -> Iterator[Any]:
        """The worker's messages for one request on replica ``r`` (held for
        the duration); ``_Crashed`` if its process dies first,
        ``DeadlineExceeded`` (the replica restarted) past ``t_end``."""
        wait = -1.0 if t_end is None else max(0.0, t_end - time.monotonic())
        if not r.lock.acquire(timeout=wait):
            raise DeadlineExceeded(f"ReplicaGroup {self.kind!r}: replica {r.index} was busy "
                                   f"until the deadline of {request.op!r}")
        r.in_flight += 1
        r.requests += 1
        finished = False
        try:
            if not r.alive():
                r.respawn()
                self._stats.add("respawned")
            try:
                r.worker.conn.send((op, request, None))
            except OSError:
                finished = True
                r.errors += 1
                r.respawn()
                raise _Crashed() from None
            while True:
                if t_end is not None and not r.worker.conn.poll(
                        max(0.0, t_end - time.monotonic())):
                    # The op cannot be stopped but by its process.
                    finished = True
                    r.errors += 1
                    r.respawn()
                    self._stats.add("respawned")
                    raise DeadlineExceeded(
                        f"ReplicaGroup {self.kind!r}: {request.op!r} did not finish by its "
                        f"deadline (the request's or the caller's timeout); replica "
                        f"{r.index} was restarted to stop it")
                try:
                    msg = r.worker.conn.recv()
                except (EOFError, OSError):
                    finished = True
                    r.errors += 1
                    r.respawn()
                    self._stats.add("respawned")
                    raise _Crashed() from None
                if msg[0] in ("end", "error"):
                    finished = True
                yield msg
                if finished:
                    return
        finally:
            r.in_flight -= 1
            if not finished and r.alive():
                # Left midway (a stream closed early): the worker may
                # still be producing into the pipe, so it is replaced.
                r.respawn()
                self._stats.add("respawned")
            r.lock.release()

    def _run(self, op: Op[..., Any], request: EvalRequest,
             t_end: float | None = None) -> Iterator[Any]:
        r = self._pick(request)
        started = False
        try:
            for msg in self._messages(r, op, request, t_end):
                started = started or msg[0] in ("item", "diag")
                yield msg
            return
        except _Crashed:
            # Retried once, on another replica, unless items already went
            # out or the op is not pure (running it again could repeat
            # what it did).
            if started:
                raise FabricError(f"ReplicaGroup {self.kind!r}: replica {r.index} died "
                                  f"midway through the stream of {request.op!r}") from None
            sharing = _sharing(op, request)
            if sharing != "pure":
                raise FabricError(f"ReplicaGroup {self.kind!r}: replica {r.index} died running "
                                  f"{request.op!r}; not retried, its sharing class is "
                                  f"{sharing!r}, not 'pure'") from None
        self._stats.add("retried")
        other = self._pick(request, exclude=r.index if len(self._replicas) > 1 else None)
        try:
            yield from self._messages(other, op, request, t_end)
        except _Crashed:
            raise FabricError(f"ReplicaGroup {self.kind!r}: {request.op!r} crashed replica "
                              f"{r.index} and, retried, replica {other.index}") from None

    def _reply(self, op: Op[..., Any], request: EvalRequest, t_end: float | None) -> EvalReply:
        value: Any = [] if op.is_stream else None
        diags: list[Any] = []
        for msg in self._run(op, request, t_end):
            tag = msg[0]
            if tag == "error":
                self._stats.add("errors")
                raise _remote_error(request, msg[1], msg[2])
            if tag == "value":
                value, diags = msg[1], list(msg[2])
            elif tag == "item":
                value.append(msg[1])
            elif tag == "diag":
                diags.append(msg[1])
        self._stats.add("computed")
        return EvalReply(value, diags, None, request.key, "computed")

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Run ``request`` on one replica and return its reply. Identical
        requests in flight at once run once (not an ``uncacheable`` op's):
        a caller that comes while one runs waits for it and gets its reply
        or error."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        t_end = _t_end(request, timeout)
        return self._shared.run(op, request, _bound(request, timeout),
                                lambda: self._reply(op, request, t_end))

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate``: the request runs on a worker thread;
        callers sharing it await it without a thread each."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        t_end = _t_end(request, timeout)
        return await self._shared.arun(self, op, request, _bound(request, timeout),
                                       lambda: self._reply(op, request, t_end))

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> EvalStream[Any]:
        """Run a stream op on one replica; items arrive as it yields them."""
        g = self._grants(grants)
        op = self._op_for(request, g)
        if not op.is_stream:
            raise TypeError(f"op {op.name!r} is not a stream op: use evaluate()")
        return EvalStream(self._events(op, request, _t_end(request, timeout)), request.key,
                          "computed")

    def _events(self, op: Op[..., Any], request: EvalRequest,
                t_end: float | None) -> Iterator[Event]:
        for msg in self._run(op, request, t_end):
            if msg[0] == "error":
                raise _remote_error(request, msg[1], msg[2])
            if msg[0] == "item":
                yield ITEM, msg[1]
            elif msg[0] == "diag":
                yield DIAG, msg[1]

