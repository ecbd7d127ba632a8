"""``fabric.Node``: a node on asyncio that serves its fabric to peers.

A node owns a ``ContentAddressedFabric`` (its cassette, the peers it was
given, an optional home) and listens on TCP (TLS optional). Each connection
starts with a handshake (docs/spec/protocol.md); then every request opens a
stream id and is answered on it. Held content is served to any
authenticated peer; home compute (scope ``compute``) only to principals
granted ``node.compute``. Holding-index deltas are pulled on connect and
pushed when this node's index grows.

Requests wait for a slot (``max_running``) in a fair queue per principal;
stream data, and a single reply too large to write at once, go out through
a second one (deficit round robin, a byte budget per principal, oldest-head
eviction; a single reply's frames are never evicted). Limits: connections,
handshake and idle timeouts, the largest frame (checked on the header,
before anything is allocated), a frame-rate cap, an output buffer cap per
connection, a write-stall timeout (a connection whose output stays unread
is closed, its request slots let go of). Malformed input gets an ERROR
frame and the connection closes.
"""

from __future__ import annotations

import asyncio
import contextvars
import fcntl
import logging
import os
import shutil
import ssl
import stat
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, fields
from typing import Any, Iterable

from .._core import (CapabilityDenied, EvalCassette, FabricError,
                     FabricUnavailable,
                     FrameDecoder, FrameError, DecodeError, canonical_bytes, encode_value,
                     FRAME_FLAG_DIAGNOSTIC, _known_open, _open_crc)
from ..control import StreamControl
from ..fabrics import ContentPeer, ContentServeFabric
from ..frames import FrameKind
from ..replies import DIAG, EvalReply, reply_record
from ..resolving import ContentAddressedFabric
from . import protocol as P
from .auth import COMPUTE, GOSSIP, Grants, Tokens, tls_principal
from .credit import Credit, StaleStream, StreamTable
from .faults import WIRE_ACTIONS, Fault, Faults
from .scheduler import Entry, FairQueue
from .secrets import SecretStore
from .loops import loop_factory, loop_name
from . import snapshot as _snap
from . import status as _status
from .snapshot import NodeState, SnapshotBusy
from ..governor import PeerGovernor
from ..claims import StreamDigest
from . import gossip as _gossip
from . import leases as _leases
from . import node_args as _args
from .tls_listen import TLSListener

__all__ = ["Node", "NodeLimits"]

log = logging.getLogger("fabric.node")
_HEADER = 36  # bytes of a frame header (docs/spec/frames.md)
_START: dict[str, bytes] = {}  # a reply's source -> its STREAM_START payload
_END1: dict[int, bytes] = {}  # a one-chunk reply's size -> its STREAM_END payload
# A single reply of at most this many bytes is written at once even while its
# connection's transport is paused (its bytes count towards output_buffer,
# which cuts a peer that does not read); a larger one waits for the transport
# (Node._value_now, docs/spec/protocol.md section 3).
_SMALL_REPLY = 1 << 16
_CONTROL_KIND = int(FrameKind.CONTROL)

_GRANTS: contextvars.ContextVar[frozenset[str]] = contextvars.ContextVar(
    "fabric_node_principal_grants", default=frozenset())
# Control ops a connected principal may send (the node's own protocol needs them).
# (``stream.stats`` asks for the node's status: docs/spec/protocol.md section 9.)
_CONTROL_GRANTS = frozenset(("stream.open", "stream.cancel", "stream.stats",
                             "stream.remote.network"))
# What a remote open needs (StreamControl.from_frame checks it; an open read
# in one pass, StreamControl.read_open, is taken only when they are granted).
_OPEN_CAPS = frozenset(StreamControl.open(1).required_capabilities(remote=True))


@dataclass(frozen=True)
class NodeLimits:
    """A node's limits (seconds, bytes, counts); every one must be positive,
    but ``write_stall_timeout``, where 0 turns the check off, and
    ``window``, where 0 is unbounded (the node bounds no stream it sends;
    a client's own window still does: the window in force on a connection
    is the smaller of the two, 0 counting as no bound, and never below the
    ``max_frame`` agreed).
    ``idle_timeout`` and ``write_stall_timeout`` are checked on the node's
    tick (every 50 ms); a connection is idle while it completes no frame
    (bytes of one that never completes do not keep it).
    ``output_buffer`` bounds a connection's unread output; one frame
    written while its peer reads may go over it (``Node``)."""

    max_connections: int = 1024
    handshake_timeout: float = 10.0
    idle_timeout: float = 300.0
    max_frame: int = P.DEFAULT_MAX_FRAME
    window: int = P.DEFAULT_WINDOW
    output_buffer: int = 64 << 20
    max_frame_rate: int = 200_000
    max_running: int = 64
    principal_budget: int = 64 << 20
    principal_max_queued: int = 10_000
    drain_timeout: float = 10.0
    # A connection whose transport stayed paused (its output unread) this
    # long is closed (0: never): docs/spec/protocol.md section 6.
    write_stall_timeout: float = 30.0

    def __post_init__(self) -> None:
        for f in fields(self):
            v = getattr(self, f.name)
            if f.name == "window":
                if not P.valid_window(v):
                    raise ValueError(f"NodeLimits.window must be {P.WINDOW_RANGE}, not {v!r}")
                continue
            if f.name == "write_stall_timeout" and isinstance(v, (int, float)) \
                    and not isinstance(v, bool) and v == 0:
                continue  # 0: off
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
                raise ValueError(f"NodeLimits.{f.name} must be a positive number, not {v!r}"
                                 + (" (0: off)" if f.name == "write_stall_timeout" else ""))
        if self.max_frame < P.MIN_MAX_FRAME or self.max_frame >= 1 << 32:
            raise ValueError(f"NodeLimits.max_frame must be in [{P.MIN_MAX_FRAME}, 2**32)")
        if self.window and self.window < self.max_frame:
            raise ValueError(f"NodeLimits.window ({self.window}) must be at least max_frame "
                             f"({self.max_frame}): a window smaller than one frame stalls")


class _SecretHome:
    """Wraps a home fabric: SecretRefs become Secrets (the principal's grants
    allowing) before the op runs; the reply keeps the request's own key."""

    honours_timeout = True

    def __init__(self, inner: Any, store: SecretStore):
        self.inner = inner
        self.store = store

    def _resolved(self, request: Any) -> Any:
        if getattr(self.inner, "resolves_secret_refs", False):
            return request  # resolved in the worker process that runs the op
        return self.store.resolve(request, _GRANTS.get()) or request

    def evaluate(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        r = self._resolved(request)
        rep = self.inner.evaluate(r, grants=grants, **({"timeout": timeout} if timeout else {}))
        return rep if r is request else EvalReply(rep.value, rep.diagnostics, rep.trace,
                                                  request.key, rep.source)

    async def aevaluate(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        r = self._resolved(request)
        kw = {"timeout": timeout} if timeout else {}
        if hasattr(self.inner, "aevaluate"):
            rep = await self.inner.aevaluate(r, grants=grants, **kw)
        else:
            rep = await asyncio.to_thread(self.inner.evaluate, r, grants=grants, **kw)
        return rep if r is request else EvalReply(rep.value, rep.diagnostics, rep.trace,
                                                  request.key, rep.source)

    def stream(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        return self.inner.stream(self._resolved(request), grants=grants,
                                 **({"timeout": timeout} if timeout else {}))

    def astream(self, request: Any, *, grants: Any = None, timeout: Any = None) -> Any:
        return self.inner.astream(self._resolved(request), grants=grants,
                                  **({"timeout": timeout} if timeout else {}))


class _Sent:
    """A stream's running count for its END frame: the frames after its
    START (seq), the items among them (chunks; diagnostics aside) and the
    items' bytes (total)."""

    __slots__ = ("seq", "chunks", "total")

    def __init__(self) -> None:
        self.seq = self.chunks = self.total = 0

    def mark(self) -> tuple[int, int, int]:
        """The next frame's seq, and the items and their bytes before it."""
        return self.seq + 1, self.chunks, self.total

    def count(self, tag: Any, size: int) -> None:
        """One more frame, an item of size bytes unless tag is DIAG."""
        self.seq += 1
        if tag != DIAG:
            self.chunks += 1
            self.total += size


class _Stream:
    """A request's stream on a connection, from its open to its end (its
    entry in the connection's ``StreamTable``, under its epoch): what was
    received on it, how it is being closed, what its sender counted."""

    __slots__ = ("rx_seq", "closing", "sent", "task")

    def __init__(self) -> None:
        self.rx_seq = 1  # frames received on it: the open, then grants and controls
        self.closing: str | None = None  # "drain" (CONTROL close) or "drop" (cancel)
        self.sent: _Sent | None = None  # once its reply started (STREAM_START queued)
        self.task: asyncio.Task[Any] | None = None  # once admitted


class _Conn:
    """One accepted connection's state."""

    def __init__(self, node: "Node", reader: asyncio.StreamReader,
                 writer: asyncio.StreamWriter):
        self.node = node
        self.reader = reader
        self.writer = writer
        self.transport = writer.transport  # written to directly (StreamWriter.write is a hop)
        self.peer = writer.get_extra_info("peername")
        self.principal = "anonymous"
        self.grants: frozenset[str] = frozenset()
        self.remote_node: str | None = None
        self.paused = False  # the transport's buffer is over its high mark
        self.max_frame = node.limits.max_frame  # what the peer accepts from us
        # the largest reply record a hit writes at once (set_frame: kept with
        # max_frame and the pause; Node._value_now says the same)
        self.hit_limit = 0
        self.set_frame(self.max_frame)
        self.window = node.limits.window
        self.enc = P.encoder(node.limits.max_frame)
        self.streams = StreamTable()
        self.tasks: dict[int, asyncio.Task[Any]] = {}
        self.credits: dict[int, Credit] = {}
        self.gossip = False
        self.gossip_sent = 0
        # the peer announced "values": a single reply's record travels in the
        # value encoding (types kept), else canonical (docs/spec/protocol.md)
        self.values = False
        self.effective: dict[frozenset[str], frozenset[str]] = {}  # claimed -> granted
        # A route (Node._route_of: scope, claimed grants, this node in via)
        # -> (target, grants, usual: the fabric's own on a plain connection),
        # once an open of that route was checked against
        # this connection's grants and answered: an open the node parsed
        # before (Node._opens) with the same route is answered from the read
        # callback without checking it again (the route and the connection's
        # grants, fixed at the handshake, are all that the checks read).
        self.routes: dict[tuple[str, frozenset[str], bool],
                          tuple[Any, frozenset[str], bool]] = {}
        self.closed = False
        self.small_cap = node.limits.output_buffer <= 1 << 16  # the cap under the high mark
        # What check_output allows: output_buffer, and while paused the bytes
        # by which the write that paused the transport went over its high mark
        # (one frame written while the peer read: pause_writing).
        self.out_cap = node.limits.output_buffer
        self._drained: asyncio.Event | None = None
        self.frames_in = 0
        self.bytes_in = 0
        self.bytes_out = 0
        loop = asyncio.get_running_loop()
        self.ended: asyncio.Future[None] = loop.create_future()
        self.proto: _ConnProtocol | None = None  # past the handshake
        # Test faults (fabric.node.faults), only when the node was given some.
        self.faults = None if node.faults is None else node.faults.connection(
            self._write, self.abort, loop.call_later)
        # no claim to sign, no faults: a reply may be written as one bytes object
        self.plain = node.signer is None and self.faults is None

    def set_frame(self, max_frame: int) -> None:
        """The largest frame the peer accepts, and the hit's limit with it."""
        self.max_frame = max_frame
        direct = self.direct_max()
        self.hit_limit = min(direct, _SMALL_REPLY) if self.paused else direct

    def direct_max(self) -> int:
        """The largest single reply (its record's bytes) written at once
        while the transport is not paused, and the largest chunk of one
        sent through the fair queue: one frame's chunk, but at most half
        the output cap less the transport's high mark (never under
        ``_SMALL_REPLY``), so a reply written at once never takes the
        buffer of a peer that reads over the cap (docs/spec/protocol.md
        section 3). ``hit_limit`` is the same for a hit answered from the
        read callback, ``_SMALL_REPLY`` while paused."""
        return min(P.reply_part(self.max_frame), self.node._direct_cap)

    def _write(self, data: bytes) -> None:
        if not self.closed:
            self.writer.write(data)

    def send(self, data: bytes | list[Any]) -> None:
        """Write one frame: bytes, or a list of its parts (written in turn)."""
        if self.closed:
            return
        transport = self.transport
        if isinstance(data, list):
            if self.faults is not None:  # faults act on whole frames
                data = b"".join(data)
            else:
                for part in data:
                    self.bytes_out += len(part)
                    transport.write(part)
                data = b""
        if data:
            self.bytes_out += len(data)
            if self.faults is None:
                transport.write(data)
            else:
                self.faults.send(data)
        # Unpaused, the transport holds at most its high mark (64 KiB, set
        # with the protocol): measured only when paused or the cap is below it.
        if self.paused or self.small_cap:
            self.check_output()

    def check_output(self) -> None:
        """Disconnect a peer whose unread output is over the node's cap
        (``out_cap``: a frame that paused the transport is let go over it)."""
        if self.transport.get_write_buffer_size() > self.out_cap:
            self.node._stat("disconnected_slow_reader")
            log.warning("disconnecting %s: output buffer over %d bytes (peer not reading)",
                        self.peer, self.out_cap)
            self.abort()

    def stall_out(self, stall: float, paused: float) -> None:
        """The transport stayed paused for ``paused`` seconds, over the
        node's ``write_stall_timeout`` (``stall``), its peer reading none of
        what waits: the connection is aborted (no ERROR: the peer would not
        read it). Its running requests end with it, their slots let go of;
        its streams end unrecorded, as on any lost connection."""
        node = self.node
        node._stat("write_stalls")
        log.warning("closing %s (principal %s): its output stayed unread for %.1f s (the "
                    "transport paused, %d bytes waiting; write_stall_timeout %s s), %d "
                    "request(s) of it running", self.peer, self.principal, paused,
                    self.transport.get_write_buffer_size(), stall, len(self.tasks))
        self.abort()

    def send_error(self, sid: int, exc: BaseException) -> None:
        if self.closed or self.transport.is_closing():
            return  # the peer is gone (uvloop's transport raises on a write then)
        try:
            frame = self.enc.encode_value(FrameKind.ERROR, P.error_payload(exc),
                                          stream_id=sid)
        except (ValueError, TypeError):
            frame = self.enc.encode_value(FrameKind.ERROR, {
                "kind": "RemoteError", "message": "the error could not be encoded"},
                stream_id=sid)
        out_q = self.node._out_q
        key = (id(self), sid)
        if sid and out_q.queued(key):
            # after the stream's frames still waiting in the fair queue (its
            # terminator: never evicted)
            out_q.push(self.principal, key, 0, (self, frame, None), terminator=True,
                       channel=self)
            self.node._wake_pump(self)
        else:
            self.send(frame)

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            self.writer.transport.abort()
        self.gone()

    def pause_writing(self) -> None:
        """The transport's buffer passed its high mark: this connection's
        streams leave the fair queue's rotation (their frames wait there),
        and only a small reply is written at once (``_SMALL_REPLY``).
        The write that paused it was made while the peer read (the
        transport resumes only once empty): what it took over the high
        mark, at most one frame, is allowed over ``output_buffer`` until
        the transport resumes, so a frame larger than the cap does not cut
        a peer that reads (docs/spec/protocol.md section 6)."""
        self.paused = True
        node = self.node
        cap = node.limits.output_buffer
        self.out_cap = cap + max(0, self.transport.get_write_buffer_size() - _high(cap))
        node._paused[self] = time.monotonic()  # (Node._check_conns: write_stall_timeout)
        self.hit_limit = min(self.direct_max(), _SMALL_REPLY)
        node._out_q.hold(self)

    def resume_writing(self) -> None:
        """The transport's buffer is empty (low mark 0): the connection's
        streams are served by the fair queue again."""
        self.paused = False
        self.hit_limit = self.direct_max()
        node = self.node
        self.out_cap = node.limits.output_buffer
        node._paused.pop(self, None)
        if not self.closed:
            node._out_q.release(self)
            node._wake_pump(self)
        if self._drained is not None:
            self._drained.set()

    def gone(self) -> None:
        """Nothing more can be written: what waits for this connection in
        the fair queue is dropped (its producers, woken, see it closed)."""
        self.closed = True
        self.paused = False
        self.node._paused.pop(self, None)
        self.node._out_q.discard(self)
        if self._drained is not None:
            self._drained.set()

    async def drained(self) -> None:
        """Wait until the transport has handed what it buffered to the
        socket (its low mark is 0): the next write goes to the socket from
        the caller's buffer, not through a copy into the transport's."""
        while self.paused and not self.closed:
            if self._drained is None:
                self._drained = asyncio.Event()
            self._drained.clear()
            await self._drained.wait()


# A node without a cassette keeps its ledger in a temporary directory,
# fabric-node-<pid>-<random>, removed by stop(). A node killed (SIGKILL, a
# crash) cannot remove it, so the directory holds owner.lock, locked (flock)
# by its node for as long as that node lives: the kernel lets go of the lock
# when the process dies, however it dies. The lock belongs to the open file,
# which a child forked without exec (multiprocessing's fork) shares: a node
# killed while such a child lives keeps its directory until the child ends
# too (the safe way round; the file is close-on-exec, so a child that execs,
# a subprocess, does not keep it). The next node that makes a temporary
# ledger removes those of this user whose lock it can take. The lock, not
# the pid, says a node is gone: a pid is reused, and is another process's
# in another pid namespace sharing /tmp.
_TEMP_PREFIX = "fabric-node-"
_TEMP_LOCK = "owner.lock"


def _sweep_temp_ledgers(tmpdir: str) -> int:
    """Removes the temporary ledger directories in ``tmpdir`` (``fabric-node-*``,
    this user's) whose node is gone: their ``owner.lock`` is not locked.
    Directories without one (made by an older version, or being made), or
    whose ``owner.lock`` is not a regular file, are left alone. Returns how
    many it removed (all of the directory, itself)."""
    swept = 0
    uid = os.getuid()
    try:
        entries = os.scandir(tmpdir)
    except OSError:
        return 0
    with entries:
        for e in entries:
            if not e.name.startswith(_TEMP_PREFIX):
                continue
            try:
                if not e.is_dir(follow_symlinks=False) or \
                        e.stat(follow_symlinks=False).st_uid != uid:
                    continue
                # Non-blocking: an owner.lock that is a FIFO would otherwise
                # wait for a writer (and the node being made with it).
                fd = os.open(os.path.join(e.path, _TEMP_LOCK),
                             os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
            except OSError:
                continue
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    os.close(fd)  # not a node's lock file: not known to be a node's
                    continue
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                os.close(fd)  # its node lives
                continue
            try:
                # Counted only when this sweep removed it all: not when a
                # node's stop() removed it first (the lock is let go of
                # before), nor when some of it could not be removed.
                shutil.rmtree(e.path)
            except OSError:
                shutil.rmtree(e.path, ignore_errors=True)  # what is left
            else:
                swept += 1
            finally:
                os.close(fd)
    return swept


def _temp_ledger_dir() -> tuple[str, Any]:
    """Sweeps the temporary ledgers of nodes that are gone, then makes this
    node's directory: ``(path, lock)``, ``lock`` the open ``owner.lock``,
    locked until it is closed (by ``stop()``, or the process's end)."""
    tmpdir = tempfile.gettempdir()
    _sweep_temp_ledgers(tmpdir)
    d = tempfile.mkdtemp(prefix=f"{_TEMP_PREFIX}{os.getpid()}-", dir=tmpdir)
    try:
        # Locked under another name, then renamed: a sweep never sees an
        # owner.lock that is not locked yet.
        new = os.path.join(d, _TEMP_LOCK + ".new")
        lock = open(os.open(new, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600),
                    "r+b", buffering=0)
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        os.rename(new, os.path.join(d, _TEMP_LOCK))
    except BaseException:
        shutil.rmtree(d, ignore_errors=True)
        raise
    return d, lock


class Node:
    """A network node serving a ``ContentAddressedFabric``.

    ``Node(cassette, node_id=..., home=None, peers=(), listen="127.0.0.1:7411",
    tls=None, tokens=None, grants=None, secrets=None, limits=NodeLimits(),
    insecure=False)``. ``cassette`` is an ``EvalCassette`` or a path (None:
    a temporary one in ``$TMPDIR/fabric-node-<pid>-*``, removed by
    ``stop()``; one whose node was killed is removed by the next node of
    the same user that makes a temporary one: a lock the node holds while
    it lives tells the two apart. A child the node's process forked
    without exec shares that lock, so a node killed while such a child
    lives keeps its directory until the child ends too); ``home`` a
    fabric that computes;
    ``peers`` URLs (``fabric://host:port``) of nodes asked for held content;
    ``tls`` a server ``ssl.SSLContext``; ``tokens`` / ``grants`` dicts or
    JSON file paths (see ``fabric.node.auth``); ``secrets`` a JSON file of
    secret values for ``SecretRef``. ``peer_tls`` / ``peer_token`` are what
    this node presents to its peers. Claims (docs/spec/claims.md): with
    ``node_key`` (a ``NodeKey``) or ``fleet_keys`` (a ``FleetKeys``) every
    reply and stream this node sends carries a claim it signed; with
    ``trusted_keys`` (a ``TrustedKeys``: ``trust="signatures"``) or
    ``fleet_keys`` (``trust="fleet-key"``) a peer's reply or stream is
    recorded only if its claim verifies.
    ``gossip`` a ``GossipConfig``
    (anti-entropy interval, learned-link fanout, view size, lease): the node
    learns the fleet's members through gossip and links to a few of them,
    and a miss that reaches home is computed by the key's lease holder
    (docs/spec/protocol.md section 5).
    ``limits`` a ``NodeLimits``. Its ``output_buffer`` may be smaller
    than ``max_frame``: a frame written while the peer reads (the
    connection's transport not paused) may take the buffer over the cap by
    its own size, so a stream item or reply frame larger than the cap never
    cuts a client that reads; a peer that does not read is cut once its
    buffer is ``output_buffer`` past that frame (at most ``output_buffer`` +
    ``max_frame`` bytes held for it, docs/spec/protocol.md section 6).
    ``faults``: test faults to inject (``fabric.node.faults.Faults``; none
    by default). ``loop``: the event loop ``start()`` runs the node on,
    ``"auto"`` (uvloop when it is installed, the ``fast`` extra; asyncio's
    own otherwise), ``"uvloop"`` (``ImportError`` without it) or
    ``"asyncio"`` (``fabric.node.loops``); ``serve()`` runs on the loop
    that awaits it.

    Run it with ``await node.serve()`` (until cancelled; ``await
    node.listening()`` waits, in another task, until it accepts
    connections) or ``node.start()`` / ``node.stop()`` (a background
    thread, returning once listening). ``address`` is ``(host, port)`` once
    listening; ``stats()`` counts connections,
    requests, refusals and the fair queues' counters.
    """

    def __init__(self, cassette: Any = None, *, node_id: str | None = None, home: Any = None,
                 peers: Iterable[str] = (), listen: str = "127.0.0.1:7411",
                 tls: Any = None, tokens: Any = None, grants: Any = None,
                 secrets: str | None = None, limits: NodeLimits | None = None,
                 insecure: bool = False, peer_tls: Any = None, peer_token: str | None = None,
                 governor: PeerGovernor | None = None, faults: Faults | None = None,
                 gossip: _gossip.GossipConfig | None = None,
                 _restored: NodeState | None = None,
                 fleet_keys: Any = None, node_key: Any = None, trusted_keys: Any = None,
                 loop: str = "auto"):
        self.host, self.port = _split_listen(listen)
        _args.check_node_id(node_id)
        _args.check_flag("insecure", insecure)
        _args.check_tls(tls)
        _args.check_home(home)
        if limits is not None and not isinstance(limits, NodeLimits):
            raise TypeError(f"limits must be a fabric.node.NodeLimits, not "
                            f"{type(limits).__name__}")
        peer_urls = _args.check_peers(peers)
        self._new_loop, _ = loop_factory(loop)  # a missing uvloop fails here, not in start()
        #: The event loop serving (``"asyncio"``, ``"uvloop"``), once serving.
        self.event_loop: str | None = None
        if not _loopback(self.host) and tls is None and tokens is None and not insecure:
            raise ValueError(f"binding {self.host} (not loopback) without TLS or tokens needs "
                             f"insecure=True (--insecure)")
        warn = _gossip.link_warning(self.host, tls=tls is not None, token=tokens is not None,
                                    listening=True)
        if warn:
            log.warning("node %s: %s", node_id or "?", warn)
        self.node_id = node_id or f"node-{os.getpid()}-{id(self) & 0xffff:x}"
        #: Starts at 0; ``Node.restore`` sets the snapshot's + 1.
        self.incarnation = 0 if _restored is None else _restored.incarnation + 1
        self.limits = limits or NodeLimits()
        if faults is not None and not isinstance(faults, Faults):
            raise TypeError(f"faults must be a fabric.node.faults.Faults, not "
                            f"{type(faults).__name__}")
        #: Test faults this node injects (None, the default: none, and the
        #: ``fault`` control operation is refused).
        self.faults = faults
        self.tls = tls
        self.tokens = None if tokens is None else Tokens(tokens)
        self.grants = Grants(grants)
        self.secrets = SecretStore(secrets)
        self.home = None if home is None else _leases.LeasedHome(
            _SecretHome(home, self.secrets), self)
        if node_key is not None and node_key.node != self.node_id:
            raise ValueError(f"node key {node_key.key_id!r} is node {node_key.node!r}'s, "
                             f"this node is {self.node_id!r}")
        #: What signs the claims this node sends (a NodeKey, a FleetKeys, or None).
        self.signer = node_key if node_key is not None else fleet_keys
        # The cassette once the arguments are checked: a temporary ledger is
        # not made for a node refused (one refused later is swept: see
        # _sweep_temp_ledgers).
        self._tmp = self._tmp_lock = None
        if cassette is None:
            self._tmp, self._tmp_lock = _temp_ledger_dir()
            cassette = os.path.join(self._tmp, "node.ledger")
        self._own_cassette = isinstance(cassette, (str, os.PathLike))
        self.cassette = EvalCassette(cassette) if self._own_cassette else cassette
        self.fabric = ContentAddressedFabric(
            self.node_id, self.cassette, home=self.home, governor=governor,
            holders=None if _restored is None else _restored.holders,
            fleet_keys=fleet_keys if trusted_keys is None else None, trusted_keys=trusted_keys)
        self.serve_held = ContentServeFabric(self.cassette, node=self.node_id)
        self.peer_urls = peer_urls
        if self.fabric.trust == "none":
            remote = [u for u in self.peer_urls if not _loopback(P.parse_node_url(u).host)]
            if remote:
                log.warning("node %s records replies of peers %s without checking claims "
                            "(no trusted_keys or fleet_keys): any of them can make up "
                            "replies", self.node_id, ", ".join(remote))
        #: Membership, deltas and anti-entropy (fabric.node.gossip).
        self._gossip = _gossip.FleetGossip(self, gossip)
        self.peer_tls = peer_tls
        self.peer_token = peer_token
        self._clients: list[Any] = []
        self._conns: set[_Conn] = set()
        # Connections whose transport is paused -> since when (time.monotonic()):
        # _check_conns closes those paused over limits.write_stall_timeout.
        self._paused: dict[_Conn, float] = {}
        # What a single reply written at once may take of the output cap
        # (_Conn.direct_max): half of it less the transport's high mark.
        cap = self.limits.output_buffer
        self._direct_cap = max(_SMALL_REPLY, cap // 2 - _high(cap))
        self._stats: dict[str, int] = {}
        self._inline_hits = 0  # answered by _answer_hit: folded in by _counters()
        self._batched_hits = 0  # of them, answered by FrameDecoder.serve_hits
        self._link_tasks: set[asyncio.Task[Any]] = set()
        # Each accepted connection's task (_accept), from its accept to its
        # end: the node's own (not the stream server's), so that shutdown
        # cancels and awaits every one of them (_end_connections).
        self._conn_tasks: set[asyncio.Task[Any]] = set()
        # Of those, the tasks not begun yet (_connected made them, _accept
        # has not counted their connection): counted towards max_connections.
        self._accepting = 0
        # Refusals at max_connections: a WARNING at most once a second (a
        # flood cannot fill the log), the others counted in the next one.
        self._refusal_log = _LogEvery(1.0)
        # TLS handshakes refused (_tls_refused): the same, a log of their own.
        self._tls_refusal_log = _LogEvery(1.0)
        self._address: tuple[str, int] | None = None  # set once ready
        self._bound: tuple[str, int] = (self.host, self.port)
        self._server: asyncio.Server | TLSListener | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        # listening(): resolved by serve() with the address once ready (or
        # failed with why it ended before); made on the loop that awaits it.
        self._listen_fut: asyncio.Future[tuple[str, int]] | None = None
        self._stop_evt: asyncio.Event | None = None
        self._stopping = False  # _stop_evt is set (_set_stopping)
        # A hit may be answered from the read callback: not stopping, a slot
        # free and nobody queued (_update_inline, where any of them changes).
        self._inline_ok = True
        # The node's clock runs on a thread of its own (_ticks): its loop
        # holds no timer between requests (see serve()).
        self._tick_evt: asyncio.Event | None = None
        self._tick_stop = threading.Event()
        self._ticker: threading.Thread | None = None
        self._start_error: BaseException | None = None
        self._serving = False  # serve() runs (it refuses a second one)
        self._stopped = False  # serve() ended, its cassette closed (it refuses to serve again)
        # Requests count 1 each and a principal's turn admits one: round robin
        # (a budget-sized quantum would let a flooding principal go first for long).
        self._run_q = FairQueue(budget=1 << 40, max_count=self.limits.principal_max_queued,
                                quantum=1)
        # Stream frames wait here while their connection's transport is paused
        # (each stream has at most one data frame waiting: _out_turn).
        self._out_q = FairQueue(budget=self.limits.principal_budget,
                                max_count=self.limits.principal_max_queued,
                                on_empty=self._out_room)
        # A stream's producer waiting for its frame in the queue to go (_out_turn)
        self._out_waiters: dict[Any, asyncio.Future[None]] = {}
        self._running = 0
        self._drain = False
        # Why the requests still running end (set at shutdown: _end_all).
        self._end_reason: str | None = None
        # CONTROL open payloads seen lately -> (parsed request, its route or
        # None: _route_of): a request asked again, on any connection, skips
        # its decode and key computation. (An OrderedDict: a dict's oldest
        # entry, next(iter(d)), is found by scanning past the deleted ones.)
        self._opens: OrderedDict[bytes, tuple[Any, Any]] = OrderedDict()
        # The same entries by their payload's CRC-32C -> (payload, entry): the
        # read callback finds an open with _known_open (the payload compared
        # in C, not copied and hashed); a payload whose CRC another one took
        # is found in _opens.
        self._opens_crc: OrderedDict[int, tuple[bytes, tuple[Any, Any]]] = OrderedDict()
        # One object per route (_route_of; at most 256, then begun again): the
        # read callback's lookup in a connection's checked routes matches it
        # by identity, without comparing the tuples.
        self._route_ids: dict[tuple[str, frozenset[str], bool], Any] = {}
        self._out_wake: asyncio.Event | None = None
        self._gossip_wake: asyncio.Event | None = None
        # Per peer URL: where its gossip restarts, and whether it is a redelivery.
        self._resume: dict[str, tuple[int, bool]] = {}
        self._peer_streams: dict[str, int] = {}
        if _restored is not None:
            self._stats = dict(_restored.counters)
            self._resume = {p["peer"]: (p["start"], True) for p in _restored.pending}
            self._peer_streams = dict(_restored.peer_streams)
        self.fabric.announce_held()

    # -- public ----------------------------------------------------------------
    @property
    def address(self) -> tuple[str, int]:
        """``(host, port)`` the node listens on (after it started)."""
        if self._address is None:
            raise FabricError("the node is not listening yet")
        return self._address

    @property
    def url(self) -> str:
        """``fabric://host:port`` (``fabrics://`` with TLS)."""
        h, p = self.address
        h = f"[{h}]" if ":" in h else h
        return f"{'fabrics' if self.tls else 'fabric'}://{h}:{p}"

    async def listening(self) -> tuple[str, int]:
        """Wait until the node accepts connections (its address bound, its
        ``--peer``s and node home answered or ``limits.handshake_timeout``
        passed: when ``fabric serve`` prints its readiness line); returns
        ``address``. For a task running ``await node.serve()``::

            task = asyncio.create_task(node.serve())
            host, port = await node.listening()

        May be awaited before ``serve()`` started, on the loop that runs it
        or on any other (a node ``start()`` ran is listening once that
        returns). Raises what ended ``serve()`` before it listened (an
        address in use: ``OSError``), or ``FabricError`` when it was
        stopped or cancelled first; awaited after such a ``serve()`` ended,
        it waits for the next one."""
        loop = asyncio.get_running_loop()
        if self._loop is not None and self._loop is not loop:  # served elsewhere
            await asyncio.to_thread(self._ready.wait)
            if self._start_error is not None:
                raise self._start_error
            if self._address is None:
                raise FabricError(f"node {self.node_id} stopped before it listened")
            return self._address
        return await asyncio.shield(self._listen_future(loop))

    def _listen_future(self, loop: asyncio.AbstractEventLoop) -> asyncio.Future[tuple[str, int]]:
        """The future ``listening()`` awaits (a new one once the last is done
        and a new ``serve()`` starts: see ``serve``)."""
        fut = self._listen_fut
        if fut is None or fut.get_loop() is not loop:
            fut = self._listen_fut = loop.create_future()
            fut.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        return fut

    def _listen_ended(self, exc: BaseException | None) -> None:
        """Resolve ``listening()``: with the address (``exc`` None), else
        with why ``serve()`` ended before it listened."""
        fut = self._listen_fut
        if fut is None or fut.done():
            return
        if exc is None and self._address is not None:
            fut.set_result(self._address)
        elif isinstance(exc, Exception):
            fut.set_exception(exc)
        else:
            fut.set_exception(FabricError(f"node {self.node_id} stopped before it listened"))

    def stats(self) -> dict[str, Any]:
        """Counters: connections (open; ``tls_handshakes``: TLS handshakes
        under way, counted towards ``max_connections`` too), requests,
        refusals, queues, the fabric's own."""
        return {"node": self.node_id, "incarnation": self.incarnation,
                "connections": len(self._conns), "tls_handshakes": self._handshaking(),
                **self._counters(),
                "fabric": self.fabric.stats(), "holders": len(self.fabric.holders),
                "gossip": self._gossip.stats(), "links": self._links(),
                "leases": self.home.stats() if self.home is not None else {},
                "requests_queue": self._run_q.stats(), "stream_queue": self._out_q.stats(),
                "streams": self._stream_stats()}

    def _links(self) -> list[dict[str, Any]]:
        """Each peer link: URL, node id, state, dials, handshakes, reconnects,
        why the governor's lists refuse it (None) and the governor's health
        of the peer (None: no event yet)."""
        gov = self.fabric.governor
        out = []
        for cl in list(self._clients):
            h = None if gov is None else gov.peers().get(cl.node or cl.url)
            out.append({"url": cl.url, "node": cl.node, "link": cl.status,
                        "refused": cl.refused, "dials": cl.stats_counters["dials"],
                        "handshakes": cl.stats_counters["handshakes"],
                        "reconnects": cl.stats_counters["reconnects"],
                        "health": None if h is None else h._asdict()})
        return out

    def status(self) -> dict[str, Any]:
        """What ``fabric status`` shows: identity, uptime, connections,
        requests, streams, cassette, holdings, peers' health and every
        counter (``fabric.node.status.node_status``). Safe from any thread:
        a running node builds it on its own loop."""
        loop = self._loop
        if loop is None or loop.is_closed() or self._thread is None \
                or threading.current_thread() is self._thread:
            return _status.node_status(self)

        async def build() -> dict[str, Any]:
            return _status.node_status(self)
        return asyncio.run_coroutine_threadsafe(build(), loop).result(30)

    def snapshot(self) -> bytes:
        """The node's state as bytes (docs/spec/snapshot.md): holding index,
        governor (health and backoff table), counters, the gossip each peer
        has not acknowledged yet (each marked redelivered), the stream id
        counters of its peer links, its incarnation.

        Refused with ``SnapshotBusy`` while a request runs or waits or stream
        data is queued: a snapshot never holds half a piece of work. Stop
        admitting work first (``request_stop(drain=True)``, or simply a
        quiet moment) and ask again. Safe from any thread.
        """
        busy = self._running + len(self._run_q)
        if busy or not self._out_q.empty():
            raise SnapshotBusy(f"node {self.node_id}: {busy} request(s) running or queued"
                               f"{'' if self._out_q.empty() else ' and stream data queued'}"
                               f"; snapshot refused (drain first)")
        holders = self.fabric.holders
        version = holders.version  # before the bytes: they hold at least this much
        holdings = holders.snapshot()
        sent = {cl.url: cl.gossip_sent for cl in self._clients}
        for url, (start, _redo) in self._resume.items():  # not delivered yet
            sent.setdefault(url, start)
        for url in self.peer_urls:
            sent.setdefault(url, 0)
        pending = [{"peer": url, "start": min(start, version), "end": version,
                    "redelivered": True}
                   for url, start in sorted(sent.items()) if start < version]
        streams = dict(self._peer_streams)
        streams.update({cl.url: cl.next_sid for cl in self._clients})
        gov = self.fabric.governor
        return _snap.encode(self.node_id, self.incarnation, holdings,
                            None if gov is None else gov.export_state(),
                            self._counters(), pending, streams)

    @classmethod
    def restore(cls, data: bytes, cassette: Any = None, **kwargs: Any) -> "Node":
        """A node from ``snapshot()`` bytes, with incarnation + 1.

        ``cassette`` and ``kwargs`` are ``Node``'s (``node_id`` defaults to
        the snapshot's; ``governor`` to one rebuilt from it). The whole
        snapshot is decoded and checked before the node is made: bad bytes
        raise ``SnapshotError`` (another or a missing spec version too) and
        change nothing. Gossip a peer had not acknowledged is sent again,
        marked ``redelivered`` (facts are a set: a repeat is harmless).
        """
        state = _snap.decode(data)
        kwargs.setdefault("node_id", state.node)
        if "governor" not in kwargs and state.governor is not None:
            kwargs["governor"] = PeerGovernor.from_state(state.governor)
        return cls(cassette, _restored=state, **kwargs)

    def _counters(self) -> dict[str, int]:
        """The node's counters (a copy), the hits answered inline folded in
        (counted apart, one int, on their path)."""
        stats = dict(self._stats)
        hits = self._inline_hits
        if hits:
            for name in ("requests", "replies", "hits_inline"):
                stats[name] = stats.get(name, 0) + hits
        if self._batched_hits:
            stats["hits_batched"] = self._batched_hits
        return stats

    def _stat(self, name: str, n: int = 1) -> None:
        self._stats[name] = self._stats.get(name, 0) + n

    async def serve(self) -> None:
        """Listen and serve until cancelled (or ``stop()``); cleans up on the
        way out. ``listening()`` tells when it accepts connections.

        A node serves once: ``serve()`` on a node serving already (on any
        loop, ``start()``'s thread too) or on one that was stopped (its
        cassette is closed) raises ``FabricError``. One whose ``serve()``
        failed before it listened (an address in use) may serve again."""
        self._check_servable()
        self._serving = True
        try:
            await self._serve()
        finally:
            self._serving = False

    def _check_servable(self) -> None:
        if self._serving:
            raise FabricError(f"node {self.node_id} is already serving (start() or serve())")
        if self._stopped:
            raise FabricError(f"node {self.node_id} was stopped: a node serves once (stop() "
                              f"closed its cassette); make a new Node (Node.restore("
                              f"node.snapshot()) carries its state over)")

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._listen_fut is not None and self._listen_fut.done():
            self._listen_fut = None  # served again: a new one
        self._listen_future(self._loop)
        pumps: list[asyncio.Future[Any]] = []
        try:
            await self._listen(pumps)
        except BaseException as exc:
            self._listen_ended(exc)
            # (its waiters have it: a listening() from now on waits for the
            # next serve(), not for this failed one)
            self._listen_fut = None
            await self._unlisten(pumps)
            raise
        self._listen_ended(None)
        try:
            await self._stop_evt.wait()  # type: ignore[union-attr]
        finally:
            await self._shutdown(pumps)

    async def _listen(self, pumps: list[asyncio.Future[Any]]) -> None:
        """Bind, start the clock, the pumps and the peer links; returns once
        ready (``address`` set). What it starts goes into ``pumps`` as it
        goes, for ``_shutdown`` (or ``_unlisten``, when it fails or is
        cancelled before it is ready)."""
        assert self._loop is not None
        self.event_loop = loop_name(self._loop)
        self._started = time.monotonic()
        self._stop_evt = asyncio.Event()
        self._stopping = False
        # (a serve() that ended before it was ready may have cancelled a
        # connection's task before it began, and so before it counted down)
        self._accepting = 0
        self._update_inline()
        self._out_wake = asyncio.Event()
        self._gossip_wake = asyncio.Event()
        # A loop holding a timer waits for I/O with a finite timeout, which
        # costs each wait a kernel timer (and asyncio's own loop two clock
        # reads and a heap look per turn): the node's periodic work (gossip
        # ticks, idle connections) is woken from a thread, not by a timer.
        self._tick_evt = asyncio.Event()
        # The accept queue as long as max_connections (the kernel caps it at
        # net.core.somaxconn), not asyncio's 100: connections arriving
        # together while the loop is busy beyond that had their SYNs
        # dropped, and waited the client's 1 s retransmit.
        backlog = max(100, min(int(self.limits.max_connections), 1 << 16))
        try:
            if self.tls is None:
                self._server = await asyncio.start_server(self._connected, self.host,
                                                          self.port, limit=1 << 16,
                                                          backlog=backlog)
            else:  # its own TLS handshakes, so that a refused one is seen
                self._server = await TLSListener.listen(
                    self.host, self.port, context=self.tls,
                    handshake_timeout=self.limits.handshake_timeout,
                    connected=self._connected, refused=self._tls_refused,
                    admit=self._tls_admit, backlog=backlog)
        except OSError as exc:  # (asyncio's message names neither the node nor the option)
            raise type(exc)(exc.errno, f"node {self.node_id} cannot listen on "
                            f"{self.host}:{self.port} (--listen, Node(listen=...)): "
                            f"{exc.strerror or exc}") from exc
        self._tick_stop = threading.Event()
        self._ticker = threading.Thread(
            target=_ticks, args=(self._loop, self._tick_evt, self._tick_stop),
            name=f"fabric-node-{self.node_id}-clock", daemon=True)
        self._ticker.start()
        sock = self._server.sockets[0].getsockname()
        self._bound = (sock[0], sock[1])
        log.info("node %s listening on %s:%d (event loop: %s)", self.node_id, *self._bound,
                 self.event_loop)
        self._gossip.started(self._bound, self.tls is not None)
        pumps += [asyncio.create_task(self._pump()), asyncio.create_task(self._gossip_pump())]
        loop = asyncio.get_running_loop()
        first: list[asyncio.Future[Any]] = []
        for url in self.peer_urls:
            first.append(loop.create_future())
            pumps.append(self._link(url, first[-1]))
        # Ready once the peers and a node home answered their first handshake
        # (bounded: one that did not is retried in the background, and logged).
        inner: Any = getattr(self.home, "inner", None)
        if hasattr(inner, "_connected_once"):
            first.append(asyncio.ensure_future(inner._connected_once()))
            first[-1].add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
            pumps.append(first[-1])  # (cancelled with the pumps: it only waits)
        if first:
            done, _ = await asyncio.wait(first, timeout=self.limits.handshake_timeout)
            for t in first:
                if t not in done or t.exception() is not None:
                    log.warning("node %s: a peer or home was not reachable at start: %s",
                                self.node_id, t.exception() if t in done else "no handshake "
                                f"within {self.limits.handshake_timeout} s")
        self._address = self._bound
        self._ready.set()

    async def _unlisten(self, pumps: list[asyncio.Future[Any]]) -> None:
        """``_listen`` failed or was cancelled before the node was ready:
        what it started ends (the listener, the clock, the pumps, the peer
        links and their clients, the peers they added to the fabric), so
        that nothing of it outlives ``serve()`` and ``serve()`` may run
        again. (Nothing was served: the cassette stays open for that.)"""
        if self._server is not None:  # bound, then failed or cancelled before ready
            self._server.close()
            if isinstance(self._server, TLSListener):
                await self._server.wait_closed()
            self._server = None
        await self._end_connections()  # (one accepted meanwhile: refused or waiting)
        await self._end_links(pumps)
        self._stop_clock()

    async def _end_links(self, pumps: list[asyncio.Future[Any]]) -> None:
        """Cancel and await ``pumps`` and the link tasks; close the link
        clients (on their own loop: ``aclose``) and take their peers out of
        the fabric."""
        for t in [*pumps, *self._link_tasks]:
            t.cancel()
        await asyncio.gather(*pumps, *self._link_tasks, return_exceptions=True)
        clients, self._clients = list(self._clients), []
        for cl in clients:
            await cl.aclose()
        for p in self.fabric.peers:
            if any(p.serve is cl for cl in clients):
                self.fabric.remove_peer(p.node)

    def _stop_clock(self) -> None:
        self._tick_stop.set()
        if self._ticker is not None:
            self._ticker.join(5.0)  # it waits at most one tick
            self._ticker = None

    async def _shutdown(self, pumps: list[asyncio.Future[Any]]) -> None:
        log.info("node %s shutting down (%d connection(s), %d request(s) running)",
                 self.node_id, len(self._conns), self._running)
        if self._server is not None:
            self._server.close()
        if self._drain:
            await self._drain_requests()
            why = (f"node {self.node_id} shut down after its drain timeout "
                   f"({self.limits.drain_timeout} s) with this request still running; "
                   f"raise the timeout with fabric serve --drain-timeout SECONDS "
                   f"(NodeLimits.drain_timeout)")
        else:
            why = f"node {self.node_id} stopped (Node.stop() does not drain)"
        self._end_all(why)
        ending = [t for c in list(self._conns) for t in c.tasks.values()]
        if ending:  # their ERROR frames go out before stream 0's (bounded)
            await asyncio.wait(ending, timeout=1.0)
        for c in list(self._conns):
            c.send_error(0, FabricError(f"node {self.node_id} is shutting down"))
            try:
                c.writer.close()  # flushes what is buffered, then closes
            except Exception:
                c.abort()
        ended = [c.ended for c in self._conns]
        if ended:  # bounded: a peer that does not read is not waited for
            await asyncio.wait(ended, timeout=1.0)
        for c in list(self._conns):
            c.abort()
        await self._end_connections()
        if isinstance(self._server, TLSListener):
            await self._server.wait_closed()
        await self._end_links(pumps)
        self._stop_clock()
        self._log_refusals(force=True)
        if self.home is not None:
            await self.home.aclose()
        log.info("node %s gossip: %s", self.node_id, self._gossip.stats())
        self._stopped = True  # (it will not serve again: see serve())
        if self._own_cassette:
            self.cassette.close()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)
        if self._tmp_lock is not None:
            self._tmp_lock.close()  # (after: a sweep never removes a live node's)
        log.info("node %s stopped", self.node_id)

    def start(self) -> "Node":
        """Serve on a background thread; returns once listening (or raises why not).

        A node starts once: ``start()`` again raises ``FabricError``, before
        ``stop()`` (it is started) and after it (it was stopped: make a new
        ``Node``, see ``serve()``)."""
        if self._thread is not None:
            raise FabricError("the node is already started")
        self._check_servable()

        def run() -> None:
            loop = self._new_loop()
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(self.serve())
            except BaseException as exc:  # reported to start()'s caller
                self._start_error = exc
                self._ready.set()
            finally:
                # Not asyncio.run: it would wait for the default executor's
                # threads, and a sync op still running in one must not hold
                # stop() up (its reply is dropped with the connection).
                tasks = asyncio.all_tasks(loop)
                for t in tasks:
                    t.cancel()
                if tasks:  # a task waiting on a thread's op is not waited for long
                    loop.run_until_complete(asyncio.wait(tasks, timeout=1.0))
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.close()

        self._thread = threading.Thread(target=run, name=f"fabric-node-{self.node_id}",
                                        daemon=True)
        self._thread.start()
        self._ready.wait()
        if self._start_error is not None:
            raise self._start_error
        return self

    def stop(self, timeout: float = 10.0) -> None:
        """Stop serving (in-flight requests are ended with an error) and join."""
        if self._loop is not None and self._stop_evt is not None \
                and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._set_stopping)
            except RuntimeError:  # the loop closed in between: already stopped
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    def request_stop(self, drain: bool = False) -> None:
        """Ask ``serve()`` to return (from the loop's thread, e.g. a signal
        handler). ``drain``: first let the requests in flight (streams too)
        finish, for up to ``limits.drain_timeout`` seconds, refusing new
        ones; what is still running then ends with an error frame."""
        self._drain = self._drain or drain
        if self._stop_evt is not None:
            self._set_stopping()

    def _set_stopping(self) -> None:
        # (a bool besides the event: the read callback's hit reads it)
        self._stopping = True
        self._inline_ok = False
        assert self._stop_evt is not None
        self._stop_evt.set()

    async def _drain_requests(self) -> None:
        busy = self._running + len(self._run_q)
        if not busy:
            return
        bound = self.limits.drain_timeout
        log.warning("node %s: draining %d request(s) in flight (up to %s s)",
                    self.node_id, busy, bound)
        end = time.monotonic() + bound
        # A short poll, bounded: the requests and the stream pump wake nothing here.
        while (self._running or len(self._run_q) or not self._out_q.empty()) \
                and time.monotonic() < end:
            await asyncio.sleep(0.02)
        left = self._running + len(self._run_q)
        self._stat("drained_ended" if left else "drained_all")
        if left:
            log.warning("node %s: %d request(s) still running after %s s: ended with an "
                        "error", self.node_id, left, bound)

    def _end_all(self, why: str) -> None:
        """At shutdown: every request still queued or running ends with an
        ``ERROR`` (``FabricUnavailable``, ``why``) on its stream id."""
        self._end_reason = why
        while True:
            e = self._run_q.pop()
            if e is None:
                break
            conn, sid, _parsed, handle = e.item
            try:
                conn.streams.close(handle)
            except StaleStream:
                continue  # closed by its consumer while it waited (answered then)
            conn.send_error(sid, FabricUnavailable(why))
        for c in list(self._conns):
            for t in list(c.tasks.values()):
                t.cancel()  # _request sends the ERROR (with _end_reason)

    def __enter__(self) -> "Node":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- peers and gossip --------------------------------------------------------
    def _link(self, url: str, first: asyncio.Future[Any] | None = None,
              learned: bool = False) -> asyncio.Task[Any]:
        """Start linking to the node at ``url`` (a ``--peer`` URL, or a member
        gossip named: ``learned``, not re-dialled once it fails)."""
        loop = asyncio.get_running_loop()
        if first is None:
            first = loop.create_future()
            first.add_done_callback(lambda f: f.cancelled() or f.exception())  # retrieved
        task = loop.create_task(self._add_peer(url, first, learned))
        self._link_tasks.add(task)
        task.add_done_callback(self._link_tasks.discard)
        return task

    async def _add_peer(self, url: str, first: asyncio.Future[Any],
                        learned: bool = False) -> None:
        """Connect to a peer and add it once it answered (``first`` resolves
        with the first outcome; a peer down at start is added when it comes)."""
        from .client import NodeClient
        loop = asyncio.get_running_loop()
        if learned:  # (--peer URLs were warned about at construction)
            _gossip.warn_link(url, tls=self.peer_tls is not None,
                              token=self.peer_token is not None,
                              trust=getattr(self.fabric, "trust", "none"), node=self.node_id)
        gossip = self._gossip
        client = NodeClient(url, tls=self.peer_tls, token=self.peer_token, scope="held",
                            node_id=self.node_id, reconnect=not learned,
                            governor=self.fabric.governor,  # its backoff and lists
                            # the client's callbacks run on its own loop thread
                            on_gossip=lambda body: loop.call_soon_threadsafe(
                                gossip.on_link, client, body))
        client.gossip_pull = lambda: gossip.pull_body(client.node)
        start, redo = self._resume.get(url, (0, False))
        client.gossip_sent = start
        client.next_sid = max(client.next_sid, self._peer_streams.get(url, 1))
        self._clients.append(client)
        try:
            try:
                await client._connected_once()
            except Exception as exc:
                if not first.done():
                    first.set_exception(exc)
                while client.status != "connected":  # it retries with backoff
                    if client._closed or client._task.done():
                        (log.info if learned else log.warning)(
                            "node %s: peer %s refused: %s", self.node_id, url, exc)
                        return
                    await asyncio.sleep(0.1)
            self.fabric.add_peer(ContentPeer(client.node or url, client))
            log.info("node %s: peer %s is %s", self.node_id, url, client.node)
            self._gossip_wake.set()  # type: ignore[union-attr]
        finally:
            if not first.done():
                first.set_result(None)

    async def _gossip_pump(self) -> None:
        """Every tick (_TICK, from the clock thread): idle connections are
        closed, and gossip runs (a tick also catches announces made by
        threads: the holding index has no listener hook)."""
        assert self._gossip_wake is not None and self._tick_evt is not None
        while True:
            await self._tick_evt.wait()  # ends at once when cancelled
            self._tick_evt.clear()
            self._gossip_wake.clear()
            self._check_conns()
            self._log_refusals()
            try:
                self._gossip.tick()  # deltas, anti-entropy, membership, learned links
            except Exception:  # a bug must not end gossip for good
                log.exception("node %s: gossip tick failed", self.node_id)

    def _check_conns(self) -> None:
        """Every tick: close the connections past their handshake that
        completed no frame for ``limits.idle_timeout`` seconds (bytes of a
        frame that does not complete keep nothing open), and those
        whose transport stayed paused, with output its peer did not read,
        for ``limits.write_stall_timeout`` seconds (0: never)."""
        now = time.monotonic()
        idle = self.limits.idle_timeout
        stall = self.limits.write_stall_timeout
        if stall:
            for conn, since in list(self._paused.items()):
                if now - since >= stall and not conn.closed \
                        and conn.transport.get_write_buffer_size():
                    conn.stall_out(stall, now - since)
        for conn in list(self._conns):
            if conn.closed:
                continue
            proto = conn.proto
            if proto is None:
                continue
            if conn.frames_in != proto.rx_seen:  # a frame completed since the last tick
                proto.rx_seen, proto.last_rx = conn.frames_in, now
            elif now - proto.last_rx >= idle:
                proto.idle_out(idle)

    # -- connections -------------------------------------------------------------
    def _connected(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        """A connection accepted (plain, or its TLS handshake made): served
        by a task of the node's own. (Given a coroutine function, the stream
        server would make the task itself, keep no handle the node could
        await at shutdown, and log one that ends cancelled as an error.)"""
        t = asyncio.get_running_loop().create_task(self._accept(reader, writer))
        self._accepting += 1
        self._conn_tasks.add(t)
        t.add_done_callback(self._conn_task_done)

    def _conn_task_done(self, t: asyncio.Task[Any]) -> None:
        self._conn_tasks.discard(t)
        if not t.cancelled() and t.exception() is not None:  # (_accept catches Exception)
            log.error("node %s: a connection's task failed", self.node_id,
                      exc_info=t.exception())

    async def _end_connections(self, bound: float = 2.0) -> None:
        """At shutdown, once the connections were told and closed: every
        connection's task (a refused one lingering too) is cancelled and
        awaited, for ``bound`` seconds at most (each ends at once: its
        transport is closed)."""
        tasks = list(self._conn_tasks)
        for t in tasks:
            t.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=bound)

    def _handshaking(self) -> int:
        """TLS handshakes under way (they count towards ``max_connections``)."""
        server = self._server
        return server.handshaking if isinstance(server, TLSListener) else 0

    def _refuse_at_max(self, peer: Any) -> None:
        """A connection refused at ``max_connections``: counted, and logged
        as a WARNING at most once a second (``_LogEvery``)."""
        self._stat("refused_connections")
        self._refusal_log.warning("refusing a connection from %s: node %s is at "
                                  "max_connections=%d", peer, self.node_id,
                                  self.limits.max_connections)

    def _log_refusals(self, force: bool = False) -> None:
        """The refusals at ``max_connections``, and the TLS handshakes
        refused, not logged one by one, once the second passed (on the
        node's tick; ``force``: at shutdown)."""
        self._refusal_log.flush("node %s is at max_connections=%d: %d more connection(s) "
                                "refused (not logged one by one)", self.node_id,
                                self.limits.max_connections, force=force)
        self._tls_refusal_log.flush("node %s: %d more TLS handshake(s) refused (not logged "
                                    "one by one)", self.node_id, force=force)

    def _tls_admit(self, peer: Any) -> bool:
        """TLSListener's ``admit``: a connection is taken for its TLS handshake
        while the connections open, those accepted and not begun yet, and
        the handshakes under way are fewer than ``max_connections``;
        otherwise it is closed at once (there is no TLS yet to send the
        ``LimitExceeded`` in) and counted as refused."""
        if len(self._conns) + self._accepting + self._handshaking() \
                < self.limits.max_connections:
            return True
        self._stat("connections_accepted")
        self._refuse_at_max(peer)
        return False

    async def _accept(self, reader: asyncio.StreamReader,
                      writer: asyncio.StreamWriter) -> None:
        self._accepting -= 1
        conn = _Conn(self, reader, writer)
        self._stat("connections_accepted")
        try:
            if len(self._conns) >= self.limits.max_connections:
                self._refuse_at_max(conn.peer)
                conn.send_error(0, P.LimitExceeded(
                    f"node {self.node_id} is at max_connections="
                    f"{self.limits.max_connections}"))
                await _linger(conn)
                return
            self._conns.add(conn)
            dec = FrameDecoder(P.node_limits(self.limits.max_frame))
            try:
                # (a timeout scope, not wait_for: no task of its own, whose
                # start would be one more turn of a busy loop to wait for)
                async with asyncio.timeout(self.limits.handshake_timeout):
                    await self._handshake(conn, dec)
            except asyncio.TimeoutError:
                self._stat("handshake_timeouts")
                log.info("closing %s: no handshake within %s s", conn.peer,
                         self.limits.handshake_timeout)
                conn.send_error(0, P.ProtocolError(
                    f"no handshake within {self.limits.handshake_timeout} s"))
                return
            await self._read_loop(conn, dec)
        except (P.ProtocolError, FrameError, DecodeError, P.Unauthenticated,
                P.LimitExceeded, CapabilityDenied) as exc:
            self._stat("refused_" + type(exc).__name__)
            # An auth refusal or a limit is what an operator looks for: a
            # warning (the message names the rule, never a token's value).
            level = logging.WARNING if isinstance(exc, (P.Unauthenticated, P.LimitExceeded)) \
                else logging.INFO
            log.log(level, "closing %s (principal %s): %s: %s", conn.peer, conn.principal,
                    type(exc).__name__, exc)
            conn.send_error(0, exc if not isinstance(exc, (FrameError, DecodeError))
                            else P.ProtocolError(str(exc)))
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            pass
        except Exception as exc:  # a bug of this node: the peer is told, the node goes on
            self._stat("internal_errors")
            log.exception("closing %s after an internal error", conn.peer)
            conn.send_error(0, FabricError(f"node {self.node_id} failed on a frame from "
                                           f"this connection: {type(exc).__name__}"))
        finally:
            if not conn.ended.done():
                conn.ended.set_result(None)
            if conn in self._conns:
                log.info("connection from %s (principal %s) closed after %d frame(s)",
                         conn.peer, conn.principal, conn.frames_in)
            self._conns.discard(conn)
            self._stat("bytes_in", conn.bytes_in)
            self._stat("bytes_out", conn.bytes_out)
            for t in list(conn.tasks.values()):
                t.cancel()
            for cr in conn.credits.values():
                cr.close()
            try:
                if not conn.closed:
                    await asyncio.wait_for(writer.drain(), 1.0)
                writer.close()  # flushes what is buffered, then closes
                if writer.transport.get_write_buffer_size():
                    # A peer that does not read would keep the connection (and
                    # the replies waiting for it) forever: not waited for long.
                    asyncio.get_running_loop().call_later(1.0, writer.transport.abort)
            except Exception:
                conn.abort()
            conn.closed = True

    def _tls_refused(self, peer: Any, exc: BaseException) -> None:
        """A TLS handshake that did not complete (the listener closed it):
        one the node refused (no client certificate, another CA's, an
        expired one, no TLS at all) is counted (``tls_refused``) and a
        WARNING at most once a second (``_LogEvery``: a flood of such
        clients cannot fill the log; each one not logged so is a DEBUG
        record, with its peer and why); a peer gone or silent during it is
        logged only, at INFO."""
        if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
            self._stat("tls_refused")
            why = getattr(exc, "verify_message", None) or exc.reason or str(exc)
            if not self._tls_refusal_log.warning(
                    "refusing a connection from %s: TLS handshake failed: %s", peer, why):
                log.debug("refusing a connection from %s: TLS handshake failed: %s "
                          "(counted in the next warning)", peer, why)
        else:  # closed mid-handshake (a probe), or silent past handshake_timeout
            log.info("connection from %s: no TLS handshake: %s: %s", peer,
                     type(exc).__name__, exc)

    async def _next_frame(self, conn: _Conn, dec: FrameDecoder, timeout: float | None) -> Any:
        while True:
            for f in dec:
                conn.frames_in += 1
                return f
            if timeout is None:
                data = await conn.reader.read(1 << 18)
            else:
                data = await asyncio.wait_for(conn.reader.read(1 << 18), timeout)
            if not data:
                dec.finish()  # raises FrameError("truncated") inside a frame
                return None
            conn.bytes_in += len(data)
            dec.feed(data)

    async def _handshake(self, conn: _Conn, dec: FrameDecoder) -> None:
        f = await self._next_frame(conn, dec, None)
        if f is None:
            raise ConnectionError("closed before the handshake")
        if f.kind != FrameKind.HELLO or f.stream_id != 0:
            raise P.ProtocolError(f"the first frame must be HELLO on stream 0, not "
                                  f"{f.kind_name} on stream {f.stream_id}")
        body = P.check_hello(f.decode_payload(dec.limits), server=False)
        principal: str | None = None
        ssl_obj = conn.writer.get_extra_info("ssl_object")
        if ssl_obj is not None:
            principal = tls_principal(ssl_obj.getpeercert())
        if self.tokens is not None:
            tp = self.tokens.principal(body["token"])
            if tp is None:
                self._stat("auth_failures")
                raise P.Unauthenticated("the bearer token was refused")
            principal = tp if principal is None else principal
        conn.principal = principal or "anonymous"
        conn.grants = self.grants.of(conn.principal) | _CONTROL_GRANTS
        conn.remote_node = body["node"]
        conn.set_frame(min(body["max_frame"], self.limits.max_frame))
        conn.enc = P.encoder(conn.max_frame)
        # The window in force: the smaller of the client's and the node's,
        # 0 (unbounded) on one side leaving the other's; never below a frame.
        w = min((x for x in (body["window"], self.limits.window) if x), default=0)
        conn.window = max(w, conn.max_frame) if w else 0
        caps = set(body["caps"]) & {"gossip", "streams", "values"}
        if not Grants.allows(conn.grants, GOSSIP):
            caps.discard("gossip")  # the answer says what the node will take
        conn.gossip = "gossip" in caps
        conn.values = conn.enc.values = "values" in caps
        shown = sorted(g for g in conn.grants if g not in _CONTROL_GRANTS)
        conn.send(conn.enc.encode_value(FrameKind.HELLO, P.hello(
            node=self.node_id, max_frame=self.limits.max_frame, window=conn.window,
            caps=caps, principal=conn.principal, grants=shown)))
        log.info("%s connected from %s as %s", conn.remote_node or "client", conn.peer,
                 conn.principal)

    async def _read_loop(self, conn: _Conn, dec: FrameDecoder) -> None:
        """After the handshake, frames are handled from the transport's
        data callback (no task wake-up per read); this waits until the
        connection ends and raises what ended it."""
        loop = asyncio.get_running_loop()
        proto = _ConnProtocol(self, conn, dec, loop.create_future())
        transport = conn.writer.transport
        transport.set_protocol(proto)
        # Paused over one frame, resumed when empty (the next write goes to
        # the socket from the caller's buffer): while paused, the connection's
        # stream frames wait in the fair queue (Node._enqueue).
        # (Under a small output cap, a quarter of it: the pause comes first.)
        transport.set_write_buffer_limits(high=_high(self.limits.output_buffer), low=0)
        reader = conn.reader
        left = bytes(getattr(reader, "_buffer", b""))  # read by the stream, not yet taken
        if left:
            reader._buffer.clear()  # type: ignore[attr-defined]
        proto.data_received(left)
        if reader.at_eof() or getattr(reader, "_eof", False):
            proto.eof_received()
        elif hasattr(transport, "is_reading") and not transport.is_reading():
            # the stream paused reading when its buffer was full
            transport.resume_reading()  # type: ignore[attr-defined]
        conn.proto = proto  # for the idle check on the node's tick
        try:
            await proto.done
        finally:
            conn.proto = None

    def _dispatch(self, conn: _Conn, f: Any, dec: FrameDecoder,
                  payload: bytes | None = None, seen: Any = None) -> None:
        """One frame from a client (``payload``: a CONTROL frame's payload
        as bytes, when the caller has them already; ``seen``: its entry in
        ``_opens``, when the caller looked it up)."""
        kind, sid = f.kind, f.stream_id
        if kind == FrameKind.CONTROL:
            if payload is None:
                payload = bytes(f.payload)
                seen = self._opens.get(payload)
            ctl: Any = None
            parsed = route = None
            if not _OPEN_CAPS <= conn.grants:
                pass  # from_frame refuses an open with CapabilityDenied
            elif seen is not None:  # an open parsed and checked before
                parsed, route = seen
            else:  # a request's open in one pass (None: any other control, or a refusal)
                read = StreamControl.read_open(payload, limits=dec.limits)
                if read is not None:
                    parsed = P.open_from_read(read)
            if parsed is None:  # the general path: it raises what is wrong
                ctl = StreamControl.from_frame(f, conn.grants, limits=dec.limits)
            if parsed is not None or ctl.op == "open":
                if sid == 0 or sid in conn.tasks:
                    raise P.ProtocolError(f"open on stream {sid}: stream 0 is the "
                                          f"connection's and an open id cannot be reused")
                if seen is None:
                    if parsed is None:
                        parsed = P.check_open(ctl.fields.get("metadata"))
                    route = self._route_of(parsed)
                    if len(payload) <= 4096:  # bounded: 1024 entries of <= 4 KiB
                        self._file_open(payload, (parsed, route))
                    if route is not None:  # a route this connection checked: at once
                        routed = conn.routes.get(route)
                        if routed is not None and self._answer_hit(conn, sid, parsed[0],
                                                                    routed):
                            return
                self._queue_request(conn, sid, parsed, route)
            elif ctl.op == "stats":
                _status.answer(self, conn, sid)
            elif ctl.op in ("cancel", "close"):
                self._close_stream(conn, sid, "drop" if ctl.op == "cancel" else "drain")
            elif ctl.op == "fault":
                self._arm_fault(conn, sid, ctl.fields)
            else:
                raise P.ProtocolError(f"control op {ctl.op!r} is not served by nodes")
        elif kind == FrameKind.CREDIT:
            body = f.decode_payload(dec.limits)
            if not isinstance(body, dict) or set(body) != {"consumed"}:
                raise P.ProtocolError("a CREDIT payload is {\"consumed\": int}")
            consumed = body["consumed"]
            if not isinstance(consumed, int) or isinstance(consumed, bool) or consumed < 0:
                raise P.ProtocolError(f"a CREDIT's consumed is an int >= 0, not {consumed!r}")
            st = conn.streams.find(sid)
            if st is not None:
                st.rx_seq += 1
            cr = conn.credits.get(sid)
            if cr is not None:
                cr.grant(consumed)
            else:  # a grant for a just-closed stream (or one not sending yet) is dropped
                conn.streams.dropped_grants += 1
                self._stat("dropped_grants")
        elif kind == FrameKind.GOSSIP:
            self._gossip.on_conn(conn, f.decode_payload(dec.limits))
        elif kind == FrameKind.PING:
            conn.send(conn.enc.encode(FrameKind.PONG, f.payload, stream_id=sid, seq=f.seq))
        elif kind == FrameKind.PONG:
            pass
        else:
            raise P.ProtocolError(f"unexpected {f.kind_name} frame from a client "
                                  f"(stream {sid})")

    def _file_open(self, payload: bytes, entry: tuple[Any, Any]) -> None:
        """Files a parsed open by its payload (``_opens``) and by its
        payload's CRC-32C (``_opens_crc``), each at most 1024 entries."""
        opens, by_crc = self._opens, self._opens_crc
        if len(opens) >= 1024:
            opens.popitem(last=False)
        opens[payload] = entry
        if len(by_crc) >= 1024:
            by_crc.popitem(last=False)
        by_crc[_open_crc(payload)] = (payload, entry)

    def _arm_fault(self, conn: _Conn, sid: int, fields: Any) -> None:
        """The ``fault`` control operation: only on a node given test faults."""
        if conn.faults is None:
            raise P.ProtocolError(f"node {self.node_id} does not inject test faults (a "
                                  f"node serves the fault operation only when started "
                                  f"with Node(faults=...))")
        kind = fields.get("kind")
        if kind not in WIRE_ACTIONS:
            raise P.ProtocolError(f"fault kind {kind!r} is not served by nodes (served: "
                                  f"{', '.join(WIRE_ACTIONS)})")
        self._stat("faults_armed")
        # on the stream's data frames (a disconnect: before any next frame)
        conn.faults.arm(Fault(kind, kind=None if kind == "disconnect" else "STREAM_CHUNK",
                              count=fields["count"], stream=sid or None))

    # -- requests ----------------------------------------------------------------
    def _route_of(self, parsed: Any) -> tuple[str, frozenset[str], bool] | None:
        """What ``_target`` reads of an open besides the connection (scope,
        claimed grants, whether this node is in ``via``), for an open a hit
        may answer from the read callback (a single reply that may go where
        it is asked); None for any other (it always takes the general path)."""
        req, want, scope, claimed, _timeout, via = parsed
        if want != "value" or req.stream:
            return None
        try:
            _gossip.shareable(req, via)
        except FabricError:
            return None  # refused by _target on the general path, every time
        route = (scope, claimed, self.node_id in via)
        ids = self._route_ids
        if len(ids) >= 256 and route not in ids:
            ids.clear()
        return ids.setdefault(route, route)

    def _answer_hit(self, conn: _Conn, sid: int, req: Any,
                    routed: tuple[Any, frozenset[str], bool]) -> bool:
        """An open the node parsed before whose route this connection had
        checked (``conn.routes``: its target, grants, and whether the read
        callback answers it itself: the fabric's own, on a plain connection),
        answered from the read callback when it is held, a slot is free and
        nobody waits; False when it must take the general path (which checks
        and queues it as any open)."""
        if sid == 0 or sid in conn.tasks or not self._inline_ok:
            return False
        target, g, _usual = routed
        start = _START.get("local")  # (a hit's source, once a reply filled it)
        limit = conn.hit_limit
        try:
            if target is self.fabric:
                # its C hit path (grants checked, the hit counted; None when
                # not held): one ledger lookup, and never the miss path here.
                # Its record's bytes (no decode, no encode when the fabric
                # kept them) when they fit one chunk, else the reply.
                if start is not None and conn.plain:
                    reply = target._lookup_record(req, limit, grants=g, values=conn.values)
                else:
                    reply = target._lookup(req, grants=g)
                if reply is None:
                    return False
            elif req.key not in self.cassette:
                return False
            else:
                reply = target.evaluate(req, grants=g)
        except Exception as exc:
            self._hit_failed(conn, sid, exc)
            return True
        self._hit_reply(conn, sid, reply, start, limit)
        return True

    def _hit_failed(self, conn: _Conn, sid: int, exc: Exception) -> None:
        """A hit answered from the read callback whose lookup raised (a
        denial): counted as a request and an error, the error sent."""
        self._stat("requests")
        self._stat("errors")
        conn.send_error(sid, exc)

    def _hit_reply(self, conn: _Conn, sid: int, reply: Any, start: bytes | None,
                   limit: int) -> None:
        """A held reply found from the read callback (its record's bytes, or
        the reply), written and counted."""
        out = None
        if not isinstance(reply, bytes):
            start = _START.get(reply.source)
        if start is not None and conn.plain and not conn.closed:
            # _send_value's usual reply in one C call (None: over one chunk)
            out = conn.enc.encode_held_reply(sid, start, reply, limit)
        # a request, a reply and a hit inline (_counters), counted before
        # the reply is written: its reader may look at the count at once
        self._inline_hits += 1
        if out is None:
            # (bytes: a connection closed, writes dropped)
            if not isinstance(reply, bytes) and not self._send_value(conn, sid, reply):
                # the general path (it fills the caches) handed it to a task,
                # which counts the reply
                self._inline_hits -= 1
                self._stat("requests")
                self._stat("hits_inline")
        else:  # and conn.send's write, inline
            conn.bytes_out += len(out)
            conn.transport.write(out)
            if conn.paused or conn.small_cap:
                conn.check_output()

    def _queue_request(self, conn: _Conn, sid: int, parsed: Any,
                       route: tuple[str, frozenset[str], bool] | None = None) -> None:
        stats = self._stats
        stats["requests"] = stats.get("requests", 0) + 1
        if self._stop_evt is not None and self._stop_evt.is_set():
            conn.send_error(sid, FabricUnavailable(f"node {self.node_id} is shutting down"))
            return
        req, want = parsed[0], parsed[1]
        if (want == "value" and not req.stream and self._running < self.limits.max_running
                and self._run_q.empty() and req.key in self.cassette):
            # A held single reply with a free slot and nobody waiting: answered
            # here, from the read callback, without a task (the fair queue only
            # matters when requests wait).
            try:
                target, g = self._target(conn, parsed)
                if route is not None and route not in conn.routes:
                    # checked against this connection's grants and targeted:
                    # an open of this route is answered by _answer_hit from now on
                    if len(conn.routes) >= 64:
                        conn.routes.clear()
                    # (third: the fabric's own hit path may answer it, in the
                    # read callback's frame)
                    conn.routes[route] = (target, g, target is self.fabric and conn.plain)
                reply = target.evaluate(req, grants=g)
            except Exception as exc:
                self._stat("errors")
                conn.send_error(sid, exc)
                return
            if self._send_value(conn, sid, reply):  # (else its task counts the reply)
                stats["replies"] = stats.get("replies", 0) + 1
            stats["hits_inline"] = stats.get("hits_inline", 0) + 1
            return
        try:  # a new epoch of the id: a handle of an earlier one fails (StaleStream)
            handle = conn.streams.open(sid, _Stream())
        except FabricError:
            raise P.ProtocolError(f"open on stream {sid}: that id is open (its request "
                                  f"waits for a slot)") from None
        try:
            self._run_q.push(conn.principal, (id(conn), sid), 1, (conn, sid, parsed, handle))
        except P.LimitExceeded as exc:
            conn.streams.close(handle)
            # Over the principal's count cap: this request is refused alone
            # (an ERROR on its stream id); the connection and the principal's
            # other requests go on.
            self._stat("refused_over_count_cap")
            self._stat("errors")
            conn.send_error(sid, P.LimitExceeded(
                f"{exc}: request refused (NodeLimits.principal_max_queued="
                f"{self.limits.principal_max_queued} requests waiting per principal)"))
            return
        self._admit()

    def _admit(self) -> None:
        while self._running < self.limits.max_running:
            e = self._run_q.pop()
            if e is None:
                break
            conn, sid, parsed, handle = e.item
            if conn.closed or conn not in self._conns:  # (its connection is ending)
                continue
            try:
                st = conn.streams.get(handle)
            except StaleStream:  # closed by its consumer while it waited: never run
                continue
            self._run(conn, sid, st, self._request(conn, sid, parsed, handle))
        self._update_inline()

    def _run(self, conn: _Conn, sid: int, st: _Stream, coro: Any) -> None:
        """Run a request's task in a slot (the caller checked one is free)."""
        self._running += 1
        t = asyncio.get_running_loop().create_task(coro)
        conn.tasks[sid] = st.task = t

    def _update_inline(self) -> None:
        """``_inline_ok``: a hit may be answered from the read callback (not
        stopping, a slot free, nobody queued). Called where those change:
        ``_admit`` (after every push, pop and finished request), ``serve``;
        ``_set_stopping`` clears it."""
        self._inline_ok = (not self._stopping and self._running < self.limits.max_running
                           and not self._run_q._active)

    def _target(self, conn: _Conn, parsed: Any) -> tuple[Any, frozenset[str]]:
        """Which fabric answers a request, and with which grants (checks ``node.compute``)."""
        _req, _want, scope, claimed, _timeout, via = parsed
        _gossip.shareable(_req, via)  # a 'recorded' reply never goes to another node
        g = conn.effective.get(claimed)
        if g is None:  # per connection and claimed grants: both are frozen
            if len(conn.effective) >= 64:
                conn.effective.clear()
            g = conn.effective[claimed] = Grants.effective(conn.grants - _CONTROL_GRANTS,
                                                           claimed)
        if scope == "compute" and not Grants.allows(conn.grants, COMPUTE):
            if _req.key in self.cassette:
                # held content goes to any authenticated peer: only compute is refused
                return self.serve_held, g
            self._stat("denied_compute")
            raise CapabilityDenied(f"principal {conn.principal!r} is not granted "
                                   f"{COMPUTE!r} on node {self.node_id}, which does not "
                                   f"hold {_req.op!r} (held content is served to any "
                                   f"authenticated peer; computing needs the grant)")
        if scope == "compute" and self.node_id not in via:
            return self.fabric, g
        return self.serve_held, g  # held only (or a loop of nodes: what is held only)

    async def _request(self, conn: _Conn, sid: int, parsed: Any,
                       handle: tuple[int, int], value: tuple[Any, bytes] | None = None) -> None:
        """A request run in a slot: evaluated and answered (``value``: a
        single reply found already, with its record's bytes, only sent)."""
        token = _GRANTS.set(conn.grants)
        try:
            if value is not None:
                await self._queue_value(conn, sid, *value)
            else:
                await self._answer(conn, sid, parsed)
            self._stat("replies")
        except asyncio.CancelledError:
            if not conn.closed:
                self._ended_early(conn, sid, handle)
        except Exception as exc:
            self._stat("errors")
            conn.send_error(sid, exc)
        finally:
            _GRANTS.reset(token)
            conn.tasks.pop(sid, None)
            try:
                conn.streams.close(handle)
            except StaleStream:
                pass
            cr = conn.credits.pop(sid, None)
            if cr is not None:
                cr.close()
            self._running -= 1
            self._admit()
            self._gossip_wake.set()  # type: ignore[union-attr]

    async def _answer(self, conn: _Conn, sid: int, parsed: Any) -> None:
        """Evaluate a request and send its reply or stream."""
        req, want, scope, claimed, timeout, via = parsed
        _leases.VIA.set(tuple(via))  # (this task's own context)
        target, g = self._target(conn, parsed)
        kw = {} if timeout is None else {"timeout": timeout}
        if want == "value":
            reply = await target.aevaluate(req, grants=g, **kw)
            data = _record_bytes(conn, reply)
            if self._value_now(conn, len(data)):
                self._write_value(conn, sid, reply, data)
            else:
                await self._queue_value(conn, sid, reply, data)
        else:
            held = self._held_stream(target, req, g)
            if held is not None:
                await self._send_held(conn, sid, *held)
            else:
                await self._send_stream(conn, sid, target.astream(req, grants=g, **kw))

    def _close_stream(self, conn: _Conn, sid: int, mode: str) -> None:
        """A consumer's ``close`` (``mode`` "drain": what is queued goes out,
        then the stream ends) or ``cancel`` ("drop": what is queued is
        dropped, the stream ends at once with a diagnostic). The producer
        stops either way; a request still waiting for a slot never runs."""
        handle = conn.streams.handle(sid)
        if handle is None:
            self._stat("closes_after_end")  # it ended already: its end crossed this
            return
        st = conn.streams.get(handle)
        st.rx_seq += 1
        self._stat("cancels")
        if st.task is None:  # still queued
            conn.streams.close(handle)
            conn.send_error(sid, FabricError(
                f"stream {sid} was closed by its consumer before it started: not run"))
            return
        if st.closing is None:
            st.closing = mode
            st.task.cancel()  # _request ends the stream: _ended_early
        elif mode == "drop":
            st.closing = "drop"  # a drain not ended yet becomes a drop

    def _ended_early(self, conn: _Conn, sid: int, handle: tuple[int, int]) -> None:
        """A request's task was cancelled: by the node's shutdown (the
        reason it gives), by its consumer's ``close`` (drain-then-close: the
        stream's end is queued after its data) or ``cancel`` (drop-and-close:
        its queued frames are dropped and an ERROR says so)."""
        why = self._end_reason
        if why is not None:
            conn.send_error(sid, FabricUnavailable(why))
            return
        try:
            st = conn.streams.get(handle)
        except StaleStream:
            st = None
        key = (id(conn), sid)
        closing = None if st is None else st.closing
        if closing == "drain" and st is not None:
            self._stat("streams_drained")
            if st.sent is not None:  # its queued frames, then its end
                self._end_stream(conn, key, sid, st.sent, True)
            else:
                conn.send_error(sid, FabricError(f"stream {sid} was closed by its consumer "
                                                 f"before its reply started"))
            return
        if closing is None:  # not by its consumer (its connection is ending)
            conn.send_error(sid, FabricError("cancelled"))
            return
        dropped = self._out_q.drop_stream(key)
        self._stat("streams_dropped")
        self._stat("frames_dropped", dropped)
        conn.send_error(sid, FabricError(
            f"stream {sid} was cancelled by its consumer (drop-and-close): its producer "
            f"was stopped and {dropped} queued frame(s) dropped"))

    def _sent_for(self, conn: _Conn, sid: int) -> _Sent:
        """A stream's running count, kept on its entry (a drain ends it with it)."""
        sent = _Sent()
        st = conn.streams.find(sid)
        if st is not None:
            st.sent = sent
        return sent

    def _stream_stats(self) -> list[dict[str, Any]]:
        """Each open request stream of each connection, the seed's per-stream
        figures (a node sends on them: grants are received, never sent)."""
        out = []
        for conn in list(self._conns):
            for sid, epoch, st in conn.streams.items():
                cr = conn.credits.get(sid)
                c = cr.stats() if cr is not None else {}
                state = st.closing and {"drain": "draining", "drop": "dropping"}[st.closing]
                out.append({
                    "peer": f"{conn.peer[0]}:{conn.peer[1]}" if conn.peer else "?",
                    "principal": conn.principal, "stream": sid, "epoch": epoch,
                    "state": state or ("running" if st.task is not None else "queued"),
                    "tx_seq": 0 if st.sent is None else st.sent.seq + 1,
                    "rx_seq": st.rx_seq, "inbound_pending": 0,
                    "backpressure_events": c.get("backpressure_events", 0),
                    "credit_remaining": c.get("credit_remaining", conn.window or -1),
                    "window": conn.window, "bytes_sent": c.get("bytes_sent", 0),
                    "grants_received": c.get("grants_received", 0), "grants_sent": 0})
        return out

    def _value_now(self, conn: _Conn, size: int) -> bool:
        """Whether a single reply of ``size`` bytes (its record's) is written
        at once: a small one always (``_SMALL_REPLY``); a larger one of at
        most ``conn.direct_max()`` bytes (one frame's chunk, at most half the
        output cap) while the transport is not paused and what it buffers,
        with the reply, stays within half the output cap: a peer that reads
        is never cut by the replies written at once. Any other is sent
        frame by frame through the fair queue (``_queue_value``)."""
        return size <= _SMALL_REPLY or (
            not conn.paused and size <= conn.direct_max()
            and conn.transport.get_write_buffer_size() + size
            <= self.limits.output_buffer >> 1)

    def _send_value(self, conn: _Conn, sid: int, reply: Any) -> bool:
        """A single reply, from the read callback: written at once
        (``_value_now``; True), or handed to a task in a request slot (the
        caller checked one is free) that sends it through the fair queue
        (False: the task counts the reply)."""
        data = _record_bytes(conn, reply)
        if self._value_now(conn, len(data)):
            self._write_value(conn, sid, reply, data)
            return True
        try:
            handle = conn.streams.open(sid, _Stream())
        except FabricError:
            raise P.ProtocolError(f"open on stream {sid}: that id is open (its request "
                                  f"waits for a slot)") from None
        self._run(conn, sid, conn.streams.get(handle),
                  self._request(conn, sid, None, handle, (reply, data)))
        self._update_inline()
        return False

    async def _queue_value(self, conn: _Conn, sid: int, reply: Any, data: bytes) -> None:
        """A single reply sent as its stream's frames are: one at a time,
        each written while the transport takes it, else waiting in the fair
        queue (pinned: a reply is never evicted, never cut short), the next
        made once it went. What waits is at most one frame per reply, and
        a reply waits in a request slot."""
        key = (id(conn), sid)
        sent = self._sent_for(conn, sid)
        enc = conn.enc
        part = conn.direct_max()  # (a frame's chunk, within half the output cap)
        self._start_stream(conn, key, sid, reply.source)
        try:
            for i in range(0, len(data), part):
                chunk = data[i:i + part]
                frame = enc.encode_value(FrameKind.STREAM_CHUNK, chunk, stream_id=sid,
                                         seq=sent.seq + 1)
                if not await self._send_item(conn, key, None, sent, 0, frame,
                                             len(frame) - _HEADER, len(chunk), pinned=True):
                    break  # its connection closed
        except BaseException:
            self._out_ended(key)
            raise
        claim = None
        if self.signer is not None and reply.key is not None:
            claim = self.signer.sign_record(reply.key, data, self.node_id).encode()
        self._end_stream(conn, key, sid, sent, False, claim)

    def _write_value(self, conn: _Conn, sid: int, reply: Any, data: bytes) -> None:
        """A single reply's frames, written at once (``data``: its record's bytes)."""
        enc = conn.enc
        start = _START.get(reply.source)
        if start is None:  # a few sources ("held", "local", "home", peers): kept encoded
            if len(_START) >= 256:
                _START.clear()
            start = _START[reply.source] = canonical_bytes({"metadata": {"source":
                                                                         reply.source}})
        part = P.reply_part(conn.max_frame)
        if len(data) <= part and self.signer is None:
            # The usual reply, one chunk and no claim: its STREAM_END payload
            # depends on the size alone, kept encoded.
            end1 = _END1.get(len(data))
            if end1 is None:
                if len(_END1) >= 1024:
                    _END1.clear()
                end1 = _END1[len(data)] = canonical_bytes(
                    {"chunks": 1, "bytes": len(data), "truncated": False})
            conn.send(enc.encode_reply(sid, start, data, end1))  # the three frames, one call
            return
        end: dict[str, Any] = {"chunks": 0, "bytes": len(data), "truncated": False}
        if self.signer is not None and reply.key is not None:
            end["claim"] = self.signer.sign_record(reply.key, data, self.node_id).encode()
        conn.send(P.reply_frames(enc, sid, start, data, end, conn.max_frame))

    async def _send_stream(self, conn: _Conn, sid: int, stream: Any) -> None:
        credit = conn.credits[sid] = Credit(conn.window)
        enc = conn.enc
        key = (id(conn), sid)
        sent = self._sent_for(conn, sid)
        events = stream.aiter_events() if hasattr(stream, "aiter_events") else None
        source = getattr(stream, "source", "computed")
        self._start_stream(conn, key, sid, source)
        truncated = False
        digest = StreamDigest() if self.signer is not None else None
        try:
            async for tag, payload in (events if events is not None else _items(stream)):
                if digest is not None:
                    digest.update_encoded(tag, canonical_bytes(payload))
                flags = FRAME_FLAG_DIAGNOSTIC if tag == DIAG else 0
                try:  # one copy: the item is packed straight into its frame
                    frame = enc.encode_item(FrameKind.STREAM_CHUNK, payload, stream_id=sid,
                                            seq=sent.seq + 1, flags=flags)
                except FrameError:
                    size = len(canonical_bytes(payload))
                    raise _too_large(conn, size) from None
                if not await self._send_item(conn, key, credit, sent, tag, frame,
                                             len(frame) - _HEADER):
                    truncated = True
                    break
        except BaseException:
            self._out_ended(key)
            raise
        finally:
            aclose = getattr(events if events is not None else stream, "aclose", None)
            if aclose is not None:
                await aclose()
        claim = None
        if digest is not None and not truncated and getattr(stream, "key", None) is not None:
            claim = self.signer.sign_stream(stream.key, digest, self.node_id).encode()
        self._end_stream(conn, key, sid, sent, truncated, claim)

    def _start_stream(self, conn: _Conn, key: Any, sid: int, source: str) -> None:
        """Send (or queue, never evicted) a stream's ``STREAM_START``."""
        self._enqueue(conn, key, conn.enc.encode_value(
            FrameKind.STREAM_START, {"metadata": {"source": source}}, stream_id=sid), 0,
            pinned=True)

    async def _send_item(self, conn: _Conn, key: Any, credit: Credit | None, sent: _Sent,
                         tag: Any, frame: bytes | list[Any], size: int,
                         counted: int | None = None, pinned: bool = False) -> bool:
        """One item's frame of a stream (``size``: its payload bytes): waits
        for credit (None: not covered by credit, a single reply's chunk) and
        for the stream's previous frame to leave the fair queue, then sends
        or queues it (``pinned``: never evicted), counted in ``sent`` as
        ``counted`` bytes (default ``size``). False when the stream lost data
        or its connection closed: the frame is not sent and the stream ends
        truncated."""
        if credit is not None:
            await credit.wait(size)
        out_q = self._out_q
        if out_q.queued(key):
            await self._out_turn(conn, key)
        if out_q.lost(key) or conn.closed:
            return False
        mark = sent.mark()
        sent.count(tag, size if counted is None else counted)
        self._enqueue(conn, key, frame, size, mark, pinned)
        return True

    def _held_stream(self, target: Any, req: Any, g: frozenset[str]) -> tuple[Any, str] | None:
        """A stream this node holds in its ledger, as (its recorded items'
        reader, source), for ``_send_held``; None for any other stream (and
        when claims are signed: the digest needs the items decoded).

        The target still answers the request (its grant checks and counts):
        a fabric answers a held key from this ledger at once, without I/O."""
        cas = self.cassette
        if self.signer is not None or not isinstance(cas, EvalCassette) or \
                req.key not in cas:
            return None
        raw = cas.get_stream(req.key, None)
        if raw is None:  # held as a single reply
            return None
        s = target.stream(req, grants=g)  # raises as the target would (denied, ...)
        source = getattr(s, "source", None)
        s.close()
        if source not in ("local", "held"):  # not from this ledger after all
            return None
        return raw, source

    async def _send_held(self, conn: _Conn, sid: int, raw: Any, source: str) -> None:
        """A held stream sent as recorded: each item's frame is its header
        and the item's recorded bytes, a view over the ledger's mapping (no
        decode, no re-encode, no copy before the socket's). The frame's CRC
        is derived from the record's checksum, which the ledger validated
        (``FrameEncoder.header(crc_of=...)``): the bytes are not read for it,
        and bytes changed since they were validated fail the receiver's
        check."""
        credit = conn.credits[sid] = Credit(conn.window)
        enc = conn.enc
        key = (id(conn), sid)
        out_q = self._out_q
        self._start_stream(conn, key, sid, source)
        sent = self._sent_for(conn, sid)
        truncated = False
        header, chunk = enc.header, FrameKind.STREAM_CHUNK
        try:
            while True:
                got = raw.next_raw()
                if got is None:
                    break
                rec, crc = got
                prefix, tag, body = _recorded_item(rec, sent.seq)
                size = len(prefix) + len(body)
                try:  # the item's CRC follows from its record's (validated) checksum
                    hdr = header(chunk, (prefix, body), stream_id=sid, seq=sent.seq + 1,
                                 flags=FRAME_FLAG_DIAGNOSTIC if tag == DIAG else 0,
                                 crc_of=None if crc is None else (rec, crc))
                except FrameError:
                    raise _too_large(conn, size) from None
                if not await self._send_item(conn, key, credit, sent, tag,
                                             [hdr + prefix, body], size):
                    truncated = True
                    break
                if not out_q.queued(key):  # written at once: the ledger never blocks,
                    await asyncio.sleep(0)  # let the loop serve others
        except BaseException:
            self._out_ended(key)
            raise
        self._end_stream(conn, key, sid, sent, truncated)

    # -- the outbound stream queue -------------------------------------------------
    # A stream's frames go to its connection's transport at once while that
    # transport is not paused (its buffer under the high mark) and nothing of
    # the connection's waits; otherwise they wait in the fair queue (_out_q),
    # which the pump serves by deficit round robin across principals as the
    # connections resume. Each stream's producer waits until its frame in
    # the queue was written (_out_turn) before it queues the next: what a
    # principal's streams hold at the node is one frame each, bounded by its
    # byte budget (oldest head evicted, the stream then ending truncated with
    # a LimitExceeded diagnostic), whatever their credit windows allow.

    def _end_stream(self, conn: _Conn, key: Any, sid: int, sent: _Sent, truncated: bool,
                    claim: bytes | None = None) -> None:
        # The terminator is never evicted; a stream that lost data says so.
        end = ("end", sid, sent.mark(), truncated, claim)
        out_q = self._out_q
        if conn.closed:
            self._out_ended(key)
        elif conn.paused or out_q.pending(conn):
            out_q.push(conn.principal, key, 0, (conn, end, None), terminator=True,
                       channel=conn)
            self._wake_pump(conn)
        else:  # nothing waits: at once (no pump wake-up per stream)
            out_q.count_direct(conn.principal, 0)
            conn.send(self._end_frames(conn, key, end))

    def _end_frames(self, conn: _Conn, key: Any, end: tuple[Any, ...]) -> bytes:
        """A stream's last frames: its STREAM_END, after a ``LimitExceeded``
        diagnostic when it lost data (numbered after the last frame
        delivered, the counts those of the items delivered)."""
        _end, sid, (seq, chunks, total), truncated, claim = end  # seq: the END's
        first = self._out_q.lost_entry(key)
        self._out_q.forget(key)
        out = b""
        if first is not None:
            seq, chunks, total = first.item[2]  # the first frame lost: seq, counts before it
            self._stat("streams_truncated")
            log.warning("stream %d to %s (principal %s) ended truncated: over the "
                        "principal's byte budget (%d), its data was evicted", sid,
                        conn.peer, conn.principal, self.limits.principal_budget)
            out = conn.enc.encode_value(FrameKind.STREAM_CHUNK, {
                "kind": "LimitExceeded", "limit": "principal_budget",
                "count": self.limits.principal_budget,
                "message": f"principal {conn.principal!r} over its byte budget: "
                           f"stream data was evicted"},
                stream_id=sid, seq=seq, flags=FRAME_FLAG_DIAGNOSTIC)
            seq += 1
        body = {"chunks": chunks, "bytes": total,
                "truncated": bool(first is not None or truncated)}
        if claim is not None and first is None:
            body["claim"] = claim
        return out + conn.enc.encode_value(FrameKind.STREAM_END, body, stream_id=sid,
                                           seq=seq)

    def _enqueue(self, conn: _Conn, key: Any, data: bytes | list[Any], size: int,
                 mark: tuple[int, int, int] = (0, 0, 0), pinned: bool = False) -> None:
        """Send one frame of a stream (bytes, or a list of its parts) now, or
        queue it (``mark``: its seq and the items and bytes sent before it;
        ``pinned``: never evicted, a stream's START or a single reply's chunk)."""
        out_q = self._out_q
        if not conn.paused and not out_q.pending(conn):
            # The transport takes it and nothing of this connection's waits:
            # the fair queue would hand it straight to the pump, so it goes
            # out now (no wake-up and task switch per item).
            out_q.count_direct(conn.principal, size)
            conn.send(data)
            return
        if conn.closed:
            return
        item = (conn, data, mark)
        try:
            out_q.push(conn.principal, key, max(size, 1), item, channel=conn, pinned=pinned)
        except P.LimitExceeded:  # over the principal's count cap: the stream lost it
            out_q.lose(key, Entry(conn.principal, key, size, item, False))
            return
        self._wake_pump(conn)

    async def _out_turn(self, conn: _Conn, key: Any) -> None:
        """Wait until no frame of stream ``key`` waits in the fair queue
        (written, evicted, or its connection gone)."""
        out_q = self._out_q
        while out_q.queued(key) and not conn.closed:
            fut = self._out_waiters.get(key)
            if fut is None or fut.done():
                fut = self._out_waiters[key] = asyncio.get_running_loop().create_future()
            await fut

    def _out_room(self, key: Any) -> None:
        """The fair queue's ``on_empty``: nothing of stream ``key`` waits."""
        fut = self._out_waiters.pop(key, None)
        if fut is not None and not fut.done():
            fut.set_result(None)

    def _out_ended(self, key: Any) -> None:
        """A stream ended without its terminator queued (an error, a
        cancel): its ``lost`` mark goes, unless a frame still waits."""
        if not self._out_q.queued(key):
            self._out_q.forget(key)

    def _wake_pump(self, conn: _Conn) -> None:
        """Wake the pump when ``conn``'s frames may be written now."""
        if not conn.paused and self._out_wake is not None and self._out_q.ready():
            self._out_wake.set()

    async def _pump(self) -> None:
        """Writes queued stream frames in deficit-round-robin order across
        principals, to connections whose transport is not paused (those
        paused are held out of the rotation until they resume)."""
        assert self._out_wake is not None
        out_q, wake = self._out_q, self._out_wake
        written = 0
        while True:
            e = out_q.pop()
            if e is None:
                wake.clear()
                await wake.wait()
                continue
            conn, data, _mark = e.item
            if e.terminator:
                if isinstance(data, tuple):
                    data = self._end_frames(conn, e.stream, data)
                else:  # an ERROR after the stream's frames
                    out_q.forget(e.stream)
            if not conn.closed and not conn.transport.is_closing():
                conn.send(data)
            written += 1
            if not written & 63:  # a long run: let the loop read (grants, requests)
                await asyncio.sleep(0)


class _ConnProtocol(asyncio.BufferedProtocol):
    """A connection past its handshake: frames are decoded and dispatched as
    bytes arrive; ``done`` resolves (or fails with the reason) when it ends.

    A buffered protocol: the transport reads into one buffer shared by the
    node's connections (each read is fed to the decoder, which copies it,
    before the next read on the loop), not into a new 256 KiB bytes object
    per read (an mmap and munmap each, with glibc's default threshold)."""

    def __init__(self, node: Node, conn: _Conn, dec: FrameDecoder, done: asyncio.Future[None]):
        self.node = node
        self.conn = conn
        self.dec = dec
        self.done = done
        self.finished = False
        self.window_start = time.monotonic()
        # The frame rate's window: over max_frame_rate frames in it (conn.frames_in
        # past rate_until) within a second of its start is refused.
        self.rate = node.limits.max_frame_rate
        self.rate_until = conn.frames_in + self.rate
        # The idle check (Node._check_conns, every tick) notes when conn.frames_in
        # last moved (a frame completed, not a byte arrived: a peer trickling
        # a frame it never completes is idle): no clock read per read callback.
        self.last_rx = self.window_start
        self.rx_seen = conn.frames_in
        self.buf = _read_buffer()  # made on the loop's thread: that thread's buffer
        # the most a read's hits answered in one call write at once (serve_hits):
        # the transport's high mark (then the rest is answered frame by frame)
        self.room = _high(node.limits.output_buffer)

    def _end(self, exc: BaseException | None = None) -> None:
        self.finished = True  # (done is resolved here only: read per read callback)
        if not self.done.done():
            if exc is None:
                self.done.set_result(None)
            else:
                self.done.set_exception(exc)

    def idle_out(self, idle: float) -> None:
        """No frame completed for ``idle`` seconds: the peer is told, the
        connection ends."""
        if self.done.done():
            return
        self.node._stat("idle_timeouts")
        log.info("closing %s (principal %s): idle for %s s", self.conn.peer,
                 self.conn.principal, idle)
        self.conn.send_error(0, P.IdleTimeout(f"idle for {idle} s", self.conn.frames_in))
        self._end()

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def data_received(self, data: bytes | memoryview) -> None:
        self.buffer_updated(len(data), data)

    def buffer_updated(self, nbytes: int, data: bytes | memoryview | None = None) -> None:
        """``nbytes`` read into the buffer (or ``data``, from ``data_received``):
        decoded and dispatched, a hit answered here."""
        if self.finished:
            return
        conn = self.conn
        conn.bytes_in += nbytes
        node = self.node
        start = _START.get("local")
        try:
            if start is not None and nbytes and node._inline_ok and not conn.closed:
                # The held hits at the head of the read (_answer_hit's usual
                # case: the fabric's held records, grants checked, the hits
                # counted) answered in one C call, their frames in one write;
                # it queues the first frame it does not answer and the rest,
                # in order (rest: None when there are none).
                out, served, rest = self.dec.serve_hits(
                    self.buf if data is None else data, nbytes, node._opens_crc,
                    conn.routes, conn.enc, start, conn.hit_limit, conn.tasks,
                    self.rate_until - conn.frames_in, self.room)
                if served:
                    conn.frames_in += served
                    node._inline_hits += served  # before their reader sees them
                    node._batched_hits += served
                    conn.bytes_out += len(out)
                    conn.transport.write(out)
                    if conn.paused or conn.small_cap:
                        conn.check_output()
                if rest is not None:
                    self._rest(rest, start)
            elif nbytes:
                # The usual read, one open parsed before and nothing else, is
                # found by feed_open itself: (frame, (payload, entry)), the frame
                # not queued (no slice of the buffer, no copy of its payload).
                self._frames(self.dec.feed_open(self.buf if data is None else data, nbytes,
                                                node._opens_crc))
            else:
                self._frames(None)
        except Exception as exc:
            self._end(exc)

    def _rest(self, rest: Any, start: bytes) -> None:
        """What ``serve_hits`` left of a read: an open it looked up whose
        result is not a record to write (``pending``), then the frames it
        queued, then the error of bad input after them."""
        pending, error = rest
        if pending is not None and not self.conn.closed:
            f, (payload, seen), rec = pending
            self._count_frame()
            self._held(f, payload, seen, rec, start)
        self._frames(None)
        if error is not None:
            raise error

    def _frames(self, got: Any) -> None:
        """The frames the decoder queued (or ``got``: feed_open's one open
        parsed before, (frame, (payload, entry))), dispatched in turn, an
        open of a route this connection checked answered at once."""
        conn, node, dec = self.conn, self.node, self.dec
        opens, by_crc = node._opens, node._opens_crc
        for f in (() if conn.closed else dec if got is None else (got[0],)):
            self._count_frame()
            if f.kind == _CONTROL_KIND:
                # (payload, entry) or None
                known = _known_open(f, by_crc) if got is None else got[1]
                if known is not None:
                    payload, seen = known
                else:
                    payload = bytes(f.payload)
                    seen = opens.get(payload)
                # an open parsed before, of a route this connection checked:
                # answered at once (_answer_hit; False: the general path)
                routed = None if seen is None or seen[1] is None else conn.routes.get(seen[1])
                sid = f.stream_id
                start = _START.get("local")
                if routed is None:
                    node._dispatch(conn, f, dec, payload, seen)  # (hashed once, above)
                elif (routed[2] and start is not None and node._inline_ok
                        and sid and sid not in conn.tasks):
                    # _answer_hit's usual case, in this frame (as serve_hits
                    # answers it)
                    try:
                        rec = routed[0]._lookup_record(seen[0][0], conn.hit_limit,
                                                       grants=routed[1], values=conn.values)
                    except Exception as exc:
                        rec = exc
                    self._held(f, payload, seen, rec, start)
                elif not node._answer_hit(conn, sid, seen[0][0], routed):
                    node._dispatch(conn, f, dec, payload, seen)
            else:
                node._dispatch(conn, f, dec)
            if conn.closed:
                break

    def _count_frame(self) -> None:
        """One more frame read: over ``max_frame_rate`` frames within a
        second of the rate's window start is refused."""
        conn = self.conn
        n = conn.frames_in = conn.frames_in + 1
        if n > self.rate_until:
            now = time.monotonic()
            if now - self.window_start < 1.0:
                raise P.LimitExceeded(f"more than max_frame_rate={self.rate} frames "
                                      f"in one second")
            self.window_start, self.rate_until = now, n - 1 + self.rate

    def _held(self, f: Any, payload: bytes, seen: Any, rec: Any, start: bytes) -> None:
        """An open of a checked route looked up in the fabric's held records
        (``rec``: what ``_lookup_record`` gave, or the exception it raised):
        a record written as its three frames, a longer reply written by
        ``_hit_reply``, a denial answered, a miss sent the general path."""
        conn, node = self.conn, self.node
        sid = f.stream_id
        limit = conn.hit_limit
        if isinstance(rec, Exception):
            node._hit_failed(conn, sid, rec)
        elif rec is None:  # not held: the general path
            node._dispatch(conn, f, self.dec, payload, seen)
        elif type(rec) is bytes and not conn.closed and (
                out := conn.enc.encode_held_reply(sid, start, rec, limit)) is not None:
            conn.bytes_out += len(out)
            node._inline_hits += 1  # before its reader sees it
            conn.transport.write(out)
            if conn.paused or conn.small_cap:
                conn.check_output()
        else:
            node._hit_reply(conn, sid, rec, start, limit)

    def eof_received(self) -> bool | None:
        try:
            self.dec.finish()  # raises FrameError("truncated") inside a frame
        except Exception as exc:
            self._end(exc)
        self._end()
        return None

    def pause_writing(self) -> None:
        self.conn.pause_writing()

    def resume_writing(self) -> None:
        self.conn.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self.conn.gone()
        self._end()


class _LogEvery:
    """A WARNING logged at most once per ``period`` seconds: those that come
    sooner are counted, and the next one logged says how many there were
    (or ``flush``, called on the node's tick, once the period passed)."""

    __slots__ = ("period", "last", "suppressed")

    def __init__(self, period: float):
        self.period = period
        self.last = -period  # (time.monotonic() may start near 0)
        self.suppressed = 0

    def warning(self, msg: str, *args: Any) -> bool:
        """Log ``msg`` with ``args`` as a WARNING unless one was logged
        less than ``period`` seconds ago (then counted); whether it was."""
        now = time.monotonic()
        if now - self.last < self.period:
            self.suppressed += 1
            return False
        self.last = now
        if self.suppressed:
            msg += " (and %d more like it since the last one, not logged one by one)"
            args += (self.suppressed,)
            self.suppressed = 0
        log.warning(msg, *args)
        return True

    def flush(self, msg: str, *args: Any, force: bool = False) -> None:
        """Log ``msg`` with ``args`` and the count of those not logged (its
        last argument), if there are some and the period passed (or
        ``force``: at shutdown)."""
        now = time.monotonic()
        if self.suppressed and (force or now - self.last >= self.period):
            n, self.suppressed, self.last = self.suppressed, 0, now
            log.warning(msg, *args, n)


async def _linger(conn: _Conn) -> None:
    """Half-close after a refusal and read what the peer still sends (its
    HELLO) until it closes, for at most a second and 64 KiB: closing with
    unread input would send a reset, and a reset can discard the ERROR
    frame before the peer has read it."""
    transport = conn.writer.transport
    try:
        if transport.can_write_eof():
            conn.writer.write_eof()
        end = time.monotonic() + 1.0
        left = 1 << 16
        while left > 0:
            wait = end - time.monotonic()
            if wait <= 0:
                break
            data = await asyncio.wait_for(conn.reader.read(left), wait)
            if not data:
                break
            left -= len(data)
    except (asyncio.TimeoutError, ConnectionError, OSError):
        pass


_LOCAL = threading.local()
def _record_bytes(conn: _Conn, reply: Any) -> bytes:
    """A single reply's record as it travels to ``conn``'s peer: the value
    encoding (prefix ``c1 01``, the types kept) when the peer announced
    ``values``, else the canonical bytes (docs/spec/protocol.md section 3)."""
    rec = reply_record(reply)
    return encode_value(rec) if conn.values else canonical_bytes(rec)


_TICK = 0.05  # seconds between the node's ticks (gossip, idle connections)


def _ticks(loop: asyncio.AbstractEventLoop, tick: asyncio.Event, stop: threading.Event) -> None:
    """The node's clock, on a thread of its own: sets ``tick`` on ``loop``
    every ``_TICK`` seconds until ``stop`` is set or the loop closes."""
    while not stop.wait(_TICK):
        try:
            loop.call_soon_threadsafe(tick.set)
        except RuntimeError:  # the loop closed
            return


def _read_buffer() -> memoryview:
    """The read buffer of this thread's event loop (one loop per thread; it
    goes with the thread)."""
    buf: memoryview | None = getattr(_LOCAL, "buf", None)
    if buf is None:
        buf = _LOCAL.buf = memoryview(bytearray(1 << 18))
    return buf


def _recorded_item(rec: memoryview, index: int) -> tuple[bytes, int, memoryview]:
    """A recorded stream item (``[tag, item]``, value-encoded or v1 canonical
    msgpack) as (prefix, tag, item bytes): the frame payload is prefix +
    item bytes, the item alone in the same encoding."""
    prefix = b""
    at = 0
    if len(rec) >= 2 and rec[0] == 0xc1 and rec[1] == 0x01:
        prefix, at = b"\xc1\x01", 2
    if len(rec) < at + 3 or rec[at] != 0x92 or rec[at + 1] > 1:
        raise FabricError(f"recorded stream: frame {index} is not [tag, payload]")
    return prefix, rec[at + 1], rec[at + 2:]


def _high(output_buffer: int) -> int:
    """A connection's transport's high mark (past its handshake): 64 KiB,
    or a quarter of the output cap when that is smaller."""
    return min(1 << 16, max(1, output_buffer // 4))


def _too_large(conn: _Conn, size: int) -> P.LimitExceeded:
    """The error for an item whose frame is over the largest frame agreed."""
    return P.LimitExceeded(f"an item of {size} bytes is larger than the largest frame "
                           f"agreed ({conn.max_frame})")


async def _items(stream: Any) -> Any:
    async for x in stream:
        yield 0, x


def _split_listen(listen: str) -> tuple[str, int]:
    if not isinstance(listen, str) or ":" not in listen:
        raise ValueError(f"listen is HOST:PORT, not {listen!r}")
    host, _, port = listen.rpartition(":")
    if host.startswith("[") and host.endswith("]") and len(host) > 2:
        host = host[1:-1]
    elif any(c in host for c in ":[]"):  # "::1" would be host ":" and port 1
        raise ValueError(f"listen is HOST:PORT, an IPv6 host in brackets ([::1]:7411), "
                         f"not {listen!r}")
    try:
        p = int(port)
    except ValueError:
        raise ValueError(f"listen port must be an int, not {port!r}") from None
    if not 0 <= p < 65536:
        raise ValueError(f"listen port must be in [0, 65536), not {p}")
    return host or "127.0.0.1", p


def _loopback(host: str) -> bool:
    import ipaddress
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
