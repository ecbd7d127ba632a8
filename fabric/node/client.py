"""``fabric.connect(url)``: a client with the fabric interface, over one connection.

The main connection lives on a private event loop thread shared by every
client of the process, so sync code needs no event loop and async code
awaits the same calls (``aevaluate``, ``astream``). A sync ``evaluate`` or
``stream`` goes over a blocking connection of its own thread and an
``aevaluate`` over one of the caller's loop, so neither crosses threads.
A blocking connection over plain TCP leaves its time limit to the kernel
(``SO_RCVTIMEO``), so a call is one send and one read; an ``aevaluate``
alone in flight on asyncio's own loop, with nothing else ready to run,
waits for its reply in its own task on the loop's epoll (at most 1 ms,
ended at once by any event of the loop: ``wait_inline``), so a hit costs
no turn of the loop. Each request opens a stream id;
the client waits at most its ``timeout`` itself (``honours_timeout``), and
a request in flight when the connection drops fails at once with
``FabricUnavailable``. The client reconnects by itself (exponential backoff
with jitter, ``Backoff``: 0.05 s doubling to 5 s, or, for a node's links, given a
``PeerGovernor``, that governor's backoff for the peer, and never while its
lists refuse the peer); while it is not connected a request fails at once, never
silently retried. The one call sent again is one whose connection the node
closed idle (``IdleTimeout``) before it read the call's open: never
processed, it goes once more on a new connection (docs/spec/protocol.md
section 6); a main link closed idle is made again at once, and a call made
on it meanwhile waits for it (within its timeout) rather than failing.
``status`` is ``connected`` / ``reconnecting`` /
``disconnected``; a ``RelayFabric(client)`` (``client.relay()``) follows it.
The blocking and loop connections are made again after a reconnect: a call
never fails with the error of a connection that ended before it. From a
coroutine, ``await fabric.aconnect(url)`` connects without blocking the
caller's loop (``connect`` blocks it until the handshake).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import functools
import itertools
import logging
import os
import random
import select
import socket
import ssl
import struct
import threading
import time
import types
import warnings
import weakref
from asyncio import get_running_loop as _running_loop
from threading import get_ident as _get_ident
from time import monotonic as _monotonic
from typing import Any, AsyncIterator, Callable, Iterable, Iterator, TypeVar

from .._core import (CapabilityDenied, DeadlineExceeded, EvalRequest, FabricError,
                     FabricUnavailable, FrameDecoder, FrameEncoder, FrameError, DecodeError,
                     _decode_canonical, _open_payload, _reply_from_record, decode_value)
from ..control import StreamControl
from ..fabrics import RelayFabric, _wait_timeout, check_grants
from ..frames import FrameKind
from ..replies import DIAG, ITEM, AsyncEvalStream, EvalReply, EvalStream, reply_from_record
from ..claims import attach, from_wire
from . import protocol as P
from .auth import client_tls

__all__ = ["AsyncRemoteStream", "Backoff", "NodeClient", "RemoteStream", "aconnect", "connect"]

log = logging.getLogger("fabric.node")
T = TypeVar("T")
_OPEN = frozenset(("stream.open", "stream.cancel", "stream.remote.network"))
_STATS = ("stream.stats", "stream.remote.network")
_END = object()
_HEADER = 36  # bytes of a frame header (docs/spec/frames.md)
_START, _CHUNK, _STREAM_END, _ERROR, _CONTROL = (int(k) for k in (
    FrameKind.STREAM_START, FrameKind.STREAM_CHUNK, FrameKind.STREAM_END, FrameKind.ERROR,
    FrameKind.CONTROL))
# A single-chunk reply's STREAM_END payload that passed the checks (no claim,
# not truncated) -> the chunk's size it accounts for: the same bytes again
# need no decoding (bounded; any process-wide payload is as good as checked).
_ENDS: dict[bytes, int] = {}
_READ = 1 << 18  # a channel's first read buffer
_TIMEVAL = struct.Struct("@ll")  # struct timeval: seconds, microseconds
_UNBOUNDED = 1 << 62  # a channel's largest value reply when max_reply is 0
# Bytes waiting to be sent on a loop's channel past which its new calls wait
# (backpressure), and under which they go on.
_OUT_HIGH, _OUT_LOW = 4 << 20, 1 << 20
_SelectorLoop = asyncio.selector_events.BaseSelectorEventLoop
# The longest an aevaluate waits for its reply inside its own task
# (_AsyncChannel.wait_inline), woken at once by any event of its loop
# (epoll's resolution: a millisecond).
_INLINE_WAIT = 0.001
#: The largest value reply a client takes by default (``connect(max_reply=)``).
DEFAULT_MAX_REPLY = 1 << 30


class _LoopThread:
    """One event loop on a daemon thread, shared by the clients of a process.
    At the interpreter's exit the clients left open are closed and the loop
    ends (no task of theirs is destroyed pending)."""

    _lock = threading.Lock()
    _loop: asyncio.AbstractEventLoop | None = None
    thread: threading.Thread | None = None
    clients: "weakref.WeakSet[NodeClient]" = weakref.WeakSet()
    _hooked = False

    @classmethod
    def get(cls) -> asyncio.AbstractEventLoop:
        with cls._lock:
            if cls._loop is None or cls._loop.is_closed():
                loop = asyncio.new_event_loop()
                t = threading.Thread(target=loop.run_forever, name="fabric-client-loop",
                                     daemon=True)
                t.start()
                cls._loop, cls.thread = loop, t
                if not cls._hooked:
                    atexit.register(cls.at_exit)
                    cls._hooked = True
            return cls._loop

    @classmethod
    def at_exit(cls) -> None:
        """Close the clients left open, end their tasks and the loop (bounded)."""
        with cls._lock:
            loop, t = cls._loop, cls.thread
        if loop is None or loop.is_closed() or t is None or not t.is_alive():
            return

        async def end() -> None:
            for c in list(cls.clients):
                await c._aclose()
            tasks = [x for x in asyncio.all_tasks() if x is not asyncio.current_task()]
            for x in tasks:
                x.cancel()
            if tasks:
                await asyncio.wait(tasks, timeout=2.0)
        try:
            asyncio.run_coroutine_threadsafe(end(), loop).result(5.0)
            loop.call_soon_threadsafe(loop.stop)
        except (RuntimeError, concurrent.futures.TimeoutError):
            return
        t.join(5.0)
        if not t.is_alive():
            loop.close()


class _Call:
    """One request in flight: its events, in order, as they arrive."""

    __slots__ = ("sid", "want", "q", "source", "parts", "consumed", "granted", "started",
                 "done", "error", "chunks", "bytes", "claim", "owner", "seq", "received",
                 "tx_seq", "grants_sent", "draining", "opener", "at", "again")

    def __init__(self, sid: int, want: str):
        self.sid = sid
        self.want = want
        self.q: asyncio.Queue[Any] = asyncio.Queue()
        self.source = "remote"
        self.parts: list[bytes] = []
        self.consumed = 0
        self.granted = 0
        self.started = False
        self.done = False
        self.error: BaseException | None = None
        self.chunks = 0
        self.bytes = 0
        self.claim: Any = None  # the STREAM_END's claim bytes, if any
        self.owner: Any = None  # the stream given to the caller (gets .claim at the end)
        self.seq = 0  # of the last chunk
        self.received = 0  # payload bytes of its chunks (what the sender's credit counts)
        self.tx_seq = 1  # frames this side sent on it: the open, grants, close or cancel
        self.grants_sent = 0
        self.draining = False  # close(drain=True) was sent
        # On the client's main link: what makes its open frame under an
        # encoder (NodeClient._start), the frame it is of what the link's
        # session sent (the HELLO the first; 0: not sent on it yet), and
        # whether it was sent again after the node closed a link idle.
        self.opener: Callable[[FrameEncoder], bytes] | None = None
        self.at = 0
        self.again = False


class _IdleCut(FabricUnavailable):
    """The node closed a connection idle (``IdleTimeout``) and said how many
    frames it had read on it (``received``): a call whose open is a later
    frame was never processed, so it is sent again, once, on a new
    connection (docs/spec/protocol.md section 6)."""

    def __init__(self, message: str, received: int):
        super().__init__(message)
        self.received = received


def _ended(err: BaseException, url: str, frame: int | None) -> FabricUnavailable:
    """The error of a call whose connection the node ended with ``err`` (an
    ERROR on stream 0), the call's open being at least the ``frame``-th
    frame sent on it (the HELLO the first): ``_IdleCut`` if the node closed
    it idle having read fewer frames (``frame`` None: having said how many,
    the caller decides per call), else ``FabricUnavailable``."""
    text = f"{url} ended the connection: {err}"
    if isinstance(err, P.IdleTimeout) and err.received is not None and (
            frame is None or err.received < frame):
        return _IdleCut(text, err.received)
    return FabricUnavailable(text)


def _timeval(t: float | None) -> bytes:
    """``t`` seconds as the kernel's ``struct timeval`` for ``SO_RCVTIMEO``
    and ``SO_SNDTIMEO``: None (no limit) is zero; any other at least one
    microsecond (zero would mean no limit)."""
    if t is None:
        return _TIMEVAL.pack(0, 0)
    us = max(1, int(t * 1e6 + 0.5))
    return _TIMEVAL.pack(us // 1_000_000, us % 1_000_000)


class _Channel:
    """A blocking connection owned by one caller thread: a sync ``evaluate``
    does its whole round trip on the caller's thread (send the request, read
    the reply), no event loop hand-off. One per thread and client; it carries
    single replies and sync streams, one call at a time (a call made while
    it is busy, and gossip, use the client's main connection)."""

    __slots__ = ("client", "sock", "dec", "enc", "ids", "busy", "dead", "node", "window",
                 "buf", "view", "start", "end", "tmo", "sources", "source", "session",
                 "max_payload", "sent", "cap", "__weakref__")

    def __init__(self, client: "NodeClient", timeout: float | None):
        self.client = client
        self.session = client.sessions  # made while this session of the main link was up
        self.busy = False
        self.dead = False
        self.buf = bytearray(_READ)
        self.view = memoryview(self.buf)  # (made again when buf grows)
        self.start = self.end = 0  # buf[start:end]: read, not yet a whole frame
        self.window = 0
        self.tmo: float | None = -1.0  # the socket's timeout (set when it changes)
        self.ids = itertools.count(1)
        self.sources: dict[bytes, str] = {}  # a STREAM_START payload -> its reply's source
        self.sent = 0  # frames sent on it (an idle cut says how many the node read)
        self.cap = client.max_reply or _UNBOUNDED  # the largest value reply taken
        sock = socket.create_connection((client.host, client.port),
                                        timeout=10.0 if timeout is None else timeout)
        try:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if client.tls is not None:
                sock = client.tls.wrap_socket(sock, server_hostname=client.host)
            self.sock = sock
            self.dec = FrameDecoder(P.node_limits(client.max_frame))
            self.send(P.encoder(client.max_frame).encode_value(FrameKind.HELLO, P.hello(
                node=client.node_id, max_frame=client.max_frame, window=client.window,
                caps=_CAPS, token=client._token, proto=client.proto)))
            f = self._frame()
            if f.kind == FrameKind.ERROR:
                raise P.error_from_payload(f.decode_payload(self.dec.limits), client.url)
            if f.kind != FrameKind.HELLO:
                raise P.ProtocolError(f"{client.url} answered the handshake with "
                                      f"{f.kind_name}")
            body = P.check_hello(f.decode_payload(self.dec.limits), server=True)
            self.node = body["node"]
            self.source = f"peer:{self.node}"  # a reply's source unless its START names one
            self.window = body["window"]
            self.enc = P.encoder(min(client.max_frame, body["max_frame"]))
            self.max_payload = self.enc.limits.max_frame_payload_bytes  # of enc, kept with it
        except BaseException:
            sock.close()
            raise

    def _frame(self) -> Any:
        while True:
            for f in self.dec:
                return f
            self._fill()

    def send(self, frame: bytes) -> None:
        """Send one frame whole (counted in ``sent``)."""
        self.sent += 1
        self.sock.sendall(frame)

    def _ended(self, f: Any) -> FabricUnavailable:
        """The error of an ERROR on stream 0 read by a call (one at a time,
        its open the last frame sent): the node ended the connection.
        ``_IdleCut`` when it closed it idle before it read the call's open
        (never processed: it may be sent again), else ``FabricUnavailable``."""
        return _ended(P.error_from_payload(f.decode_payload(self.dec.limits), self.client.url),
                      self.client.url, self.sent)

    def _cut_under_send(self) -> _IdleCut | None:
        """A send failed: ``_IdleCut`` when what the socket still holds is the
        node's ERROR of an idle cut that read none of this call (the node
        closed the connection idle before the call), else None."""
        try:
            self.sock.settimeout(0.0)
            self.tmo = 0.0
            while True:
                for f in self.dec:
                    if f.stream_id == 0 and f.kind == FrameKind.ERROR:
                        exc = self._ended(f)
                        return exc if isinstance(exc, _IdleCut) else None
                self._fill()
        except (OSError, FrameError, DecodeError, FabricError):
            return None

    def _timeout(self, t: float | None) -> None:
        """Each later send or read waits at most ``t`` seconds (None: no
        limit). A plain TCP socket stays in blocking mode and the kernel
        keeps the limit (``SO_RCVTIMEO``, ``SO_SNDTIMEO``; a read or send
        past it raises ``BlockingIOError``, which the callers take as the
        timeout): a socket with a Python timeout polls before every send
        and every read, two system calls a call more. A TLS socket keeps
        the Python timeout. Set only when it changes (system calls)."""
        if t == self.tmo:
            return
        sock = self.sock
        if type(sock) is socket.socket:
            if sock.gettimeout() is not None:  # (the connect's, or non-blocking)
                sock.settimeout(None)
            tv = _timeval(t)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, tv)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, tv)
        else:
            sock.settimeout(t)
        self.tmo = t

    def _fill(self) -> None:
        """Read what the socket has (at least one byte) and queue the frames
        it completes. A frame's bytes stay in the channel's buffer until the
        frame is whole, then the decoder takes it there: its payload is a
        view of the buffer, never copied (``FrameDecoder.feed_whole``). The
        frames are used up before the next read (this is only called when
        the decoder has none left), so the buffer can be read into again.
        It grows to four times the largest frame seen (whose header the
        decoder has checked, so at most four of the agreed largest frame).
        A frame begun in a read that ``evaluate`` gave to ``feed_reply`` is
        held by the decoder itself: the reads go on there until it ends."""
        if self.dec.partial:
            n = self.sock.recv_into(self.view)
            if not n:
                raise ConnectionResetError(f"{self.client.url} closed the connection")
            self.dec.feed(self.view[:n])  # (copies what it keeps: the buffer is free)
            return
        buf, start, end = self.buf, self.start, self.end
        if start == end:
            start = end = 0
        else:
            need = _HEADER
            if end - start >= _HEADER:  # the frame in progress (its header checked)
                need += int.from_bytes(buf[start + 24:start + 28], "big")
            if 4 * need > len(buf):
                grown = bytearray(4 * need)
                grown[:end - start] = memoryview(buf)[start:end]
                buf = self.buf = grown
                self.view = memoryview(grown)
                start, end = 0, end - start
            elif start + need > len(buf) or len(buf) - end < _READ // 4:
                view = self.view
                view[:end - start] = view[start:end]
                start, end = 0, end - start
        view = self.view
        n = self.sock.recv_into(view[end:] if end else view)
        if not n:
            raise ConnectionResetError(f"{self.client.url} closed the connection")
        end += n
        self.start = start + self.dec.feed_whole(view[start:end])
        self.end = end

    def __del__(self) -> None:  # its thread ended: close quietly
        sock = getattr(self, "sock", None)
        if sock is not None:
            sock.close()

    def close(self) -> None:
        self.dead = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked in recv
        except OSError:
            pass
        self.sock.close()

    def evaluate(self, request: EvalRequest, payload: bytes, t: float | None) -> EvalReply:
        client = self.client
        sid = next(self.ids)
        if len(payload) > self.max_payload:
            client._open_frame(request, payload, sid, self.enc)  # raises LimitExceeded
        frame = self.enc.encode_control(sid, payload)
        deadline = None if t is None else _monotonic() + t
        self.busy = True
        try:
            if t != self.tmo:
                self._timeout(t)
            sock = self.sock
            self.sent += 1
            try:
                sock.sendall(frame)
            except OSError:  # the node closed it: idle (said so), or not
                cut = self._cut_under_send()
                if cut is not None:
                    raise cut from None
                raise
            client.stats_counters["requests"] += 1
            dec = self.dec
            if self.start == self.end and not dec.pending and not dec.partial:
                # Nothing held from an earlier read (the usual case): the
                # first read's usual reply (START, one CHUNK of bytes, END)
                # is taken from its bytes in one call (feed_reply, as
                # _AsyncChannel's data_received takes it); anything else it
                # holds is queued (a frame begun stays in the decoder: _fill
                # goes on there) for the frame-by-frame path (_rest).
                n = sock.recv_into(self.view)
                if not n:
                    raise ConnectionResetError(f"{client.url} closed the connection")
                r = dec.feed_reply(self.view, dec.limits, n)
                if r is not None and r[0] == sid:
                    record, source, claim = self._usual((), sid, r)
                else:
                    record, source, claim = self._rest(sid, deadline, False)
            else:
                record, source, claim = self._rest(sid, deadline, True)
        except (socket.timeout, BlockingIOError):  # (BlockingIOError: SO_RCVTIMEO's)
            self.close()  # the node's late reply must not reach the next call
            raise DeadlineExceeded(f"node {self.node} did not answer {request.op!r} "
                                   f"within {t} s") from None
        except (P.ProtocolError, P.LimitExceeded):
            # what follows cannot be trusted, or is the rest of a reply too
            # large to take: it must not reach the next call
            self.close()
            raise
        except (OSError, FrameError, DecodeError, FabricUnavailable) as exc:
            self.close()
            if isinstance(exc, FabricUnavailable):
                if not isinstance(exc, _IdleCut):  # (an idle cut's call is sent again)
                    client.stats_counters["failed_fast"] += 1
                raise
            client.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"connection to {client.url} ({self.node}) was lost: "
                                    f"{exc}") from None
        finally:
            self.busy = False
        if source is None:  # the node's ERROR on the call's stream (claim)
            raise claim
        reply: EvalReply = _reply_from_record(  # type: ignore[assignment]
            record, request.key, source)  # replies.reply_from_record, without its wrapper
        return reply if claim is None else _claimed(reply, claim)

    def _rest(self, sid: int, deadline: float | None, first: bool) -> tuple[Any, Any, Any]:
        """The reply of the call on ``sid`` frame by frame, reading until it
        ends (``first``: the next read is the call's first, which waits up to
        its timeout as set; later ones up to ``deadline``): its (record,
        source, claim), or (None, None, the error) for an ERROR on its stream."""
        parts: list[bytes] = []
        size = 0
        source = self.source
        dec = self.dec
        limits = dec.limits
        while True:
            pending = dec.pending
            if not pending:
                if deadline is not None and not first:
                    self._timeout(max(1e-3, deadline - _monotonic()))
                first = False
                self._fill()
                continue
            if pending >= 3:
                # The usual reply (START, one CHUNK of bytes, END: seq 0,
                # 1, 2) is taken in one call, as _AsyncChannel's
                # data_received does; anything else frame by frame below.
                r = dec.take_reply(limits)
                if r is not None:
                    if r[0] != sid:
                        continue  # a call given up on
                    return self._usual(parts, sid, r)
            f = next(dec)
            if f.stream_id != sid:
                if f.stream_id == 0 and f.kind == FrameKind.ERROR:
                    raise self._ended(f)
                odd = _odd(f, self.node)
                if odd is not None:
                    raise odd
                continue  # PONG, or a frame of a call given up on
            kind = f.kind
            if kind == FrameKind.STREAM_CHUNK:
                _in_order(f, len(parts) + 1, self.node)
                size += _HEADER + len(f.payload)
                if size > self.cap:
                    raise _too_large(self.node, sid, size, self.cap)
                parts.append(bytes(f.decode_payload(limits)))
            elif kind == FrameKind.STREAM_START:
                source = _source(f.decode_payload(limits), self.node)
            elif kind == FrameKind.STREAM_END:
                _in_order(f, len(parts) + 1, self.node)
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                _complete(f.decode_payload(limits), len(parts), len(data), self.node)
                return unpack_record(data), source, _with_data(_end_claim(f, limits), data)
            elif kind == FrameKind.ERROR:
                return None, None, P.error_from_payload(f.decode_payload(limits),
                                                        f"node {self.node}")
            else:
                odd = _odd(f, self.node)
                if odd is not None:
                    raise odd

    def _usual(self, parts: Any, sid: int, r: tuple[Any, ...]) -> tuple[Any, str, Any]:
        """A reply taken whole (``FrameDecoder.take_reply``): its (record,
        source, claim), checked as the frame-by-frame path checks it."""
        _sid, start, skey, data, end, ekey = r
        if parts:  # chunks of this stream before its START: frames lost or repeated
            raise P.ProtocolError(
                f"node {self.node} sent STREAM_CHUNK seq 1 on stream {sid} where seq "
                f"{len(parts) + 1} was due: frames were lost, repeated or reordered")
        sources = self.sources
        source = sources.get(skey)
        if source is None:  # a START's source, decoded once per payload
            source = _source(start.decode_payload(self.dec.limits), self.node)
            if len(sources) >= 64:
                sources.clear()
            sources[skey] = source
        if _ENDS.get(ekey) == len(data):  # an END seen before: no claim, accounts for it
            return unpack_record(data), source, None
        limits = self.dec.limits
        body = end.decode_payload(limits)
        _complete(body, 1, len(data), self.node)
        if len(ekey) < 100 and len(_ENDS) < 256 and isinstance(body, dict) and \
                body.get("truncated") is False:  # this payload passes: kept
            _ENDS[ekey] = len(data)
        return unpack_record(data), source, _with_data(_end_claim(end, limits), data)

    def stream(self, request: EvalRequest, payload: bytes,
               t: float | None) -> "_BlockingStream":
        """Send a stream request; its events are read on the caller's thread
        (``_BlockingStream``), credit granted from there as items are taken."""
        sid = next(self.ids)
        frame = self.client._open_frame(request, payload, sid, self.enc)
        self.busy = True
        try:
            self._timeout(t)
            self.send(frame)
        except OSError as exc:
            self.busy = False
            self.close()
            self.client.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"connection to {self.client.url} ({self.node}) was "
                                    f"lost: {exc}") from None
        self.client.stats_counters["requests"] += 1
        return _BlockingStream(self, request, sid, t)


class _BlockingStream:
    """The events of one stream on a ``_Channel``, read by the consumer's
    thread: no hand-off per item. Credit (the cumulative bytes consumed) is
    granted once a quarter of the window was taken, and always before the
    consumer would block on the socket, so the sender never waits on a grant
    this side holds back. ``close()`` before the end cancels the request;
    the frames still in flight for it are skipped by the channel's next call."""

    __slots__ = ("ch", "request", "sid", "t", "consumed", "granted", "finished", "seq",
                 "chunks", "bytes", "owner", "tx_seq", "grants_sent", "draining",
                 "__weakref__")

    def __init__(self, ch: _Channel, request: EvalRequest, sid: int, t: float | None):
        self.ch = ch
        self.owner: Any = None  # the EvalStream given to the caller (gets .claim at the end)
        self.request = request
        self.sid = sid
        self.t = t
        self.consumed = 0
        self.granted = 0
        self.finished = False
        self.seq = 0  # of the last chunk taken
        self.chunks = 0
        self.bytes = 0
        self.tx_seq = 1  # frames sent on it: the open, grants, close or cancel
        self.grants_sent = 0
        self.draining = False

    def __iter__(self) -> "_BlockingStream":
        return self

    def _grant(self) -> None:
        ch = self.ch
        if not ch.window:  # unbounded: the sender needs no credit
            return
        self.granted = self.consumed
        ch.client.stats_counters["grants_sent"] += 1
        self.grants_sent += 1
        self.tx_seq += 1
        ch.send(ch.enc.encode_value(FrameKind.CREDIT, {"consumed": self.consumed},
                                    stream_id=self.sid))

    def __next__(self) -> tuple[int, Any]:
        if self.finished:
            raise StopIteration
        ch = self.ch
        dec, sid, limits = ch.dec, self.sid, ch.dec.limits
        quarter = max(1, ch.window // 4)
        try:
            while True:
                f = None
                for f in dec:
                    break
                if f is None:
                    if self.consumed > self.granted:
                        self._grant()  # before blocking: the sender may be waiting on it
                    ch._fill()
                    continue
                if f.stream_id != sid:
                    if f.stream_id == 0 and f.kind == FrameKind.ERROR:
                        raise FabricUnavailable(
                            f"{ch.client.url} ended the connection: "
                            f"{P.error_from_payload(f.decode_payload(limits), ch.client.url)}")
                    odd = _odd(f, ch.node)
                    if odd is not None:
                        raise odd
                    continue  # PONG, or a frame of a call given up on
                kind = f.kind
                if kind == FrameKind.STREAM_CHUNK:
                    self.seq = _in_order(f, self.seq + 1, ch.node)
                    size = len(f.payload)
                    ev = (DIAG if f.is_diagnostic else ITEM, f.decode_payload(limits))
                    if not f.is_diagnostic:
                        self.chunks += 1
                        self.bytes += size
                    self.consumed += size
                    if self.consumed - self.granted >= quarter:
                        self._grant()
                    return ev
                if kind == FrameKind.STREAM_END:
                    _in_order(f, self.seq + 1, ch.node)
                    _complete(f.decode_payload(limits), self.chunks, self.bytes, ch.node)
                    self._finish()
                    if self.owner is not None:
                        self.owner.claim = from_wire(_end_claim(f, limits))
                    raise StopIteration
                if kind == FrameKind.ERROR:
                    self._finish()
                    # raised below, not in this try: a refusal that is an
                    # OSError (CapabilityDenied, LimitExceeded) is the
                    # stream's error, not a lost connection
                    err = P.error_from_payload(f.decode_payload(limits), f"node {ch.node}")
                    break
                odd = _odd(f, ch.node)  # (a START, a PONG: nothing to take)
                if odd is not None:
                    raise odd
        except P.ProtocolError:
            self._finish()
            ch.close()  # what follows on it cannot be trusted
            raise
        except (socket.timeout, BlockingIOError):  # (BlockingIOError: SO_RCVTIMEO's)
            self._finish()
            ch.close()  # the rest of the stream must not reach the next call
            raise DeadlineExceeded(f"node {ch.node} sent nothing for {self.request.op!r} "
                                   f"within {self.t} s") from None
        except (OSError, FrameError, DecodeError, FabricUnavailable) as exc:
            self._finish()
            ch.close()
            ch.client.stats_counters["failed_fast"] += 1
            if isinstance(exc, FabricUnavailable):
                raise
            raise FabricUnavailable(f"connection to {ch.client.url} ({ch.node}) was lost: "
                                    f"{exc}") from None
        raise err

    def _finish(self) -> None:
        self.finished = True
        self.ch.busy = False

    def close(self) -> None:
        """Stop early, drop-and-close: the node is told to cancel the request."""
        if self.finished:
            return
        ch = self.ch
        if not ch.dead:  # sent while the channel is still this stream's (busy)
            try:
                self.tx_seq += 1
                ch.send(StreamControl.cancel(self.sid).to_frame(_OPEN).encode())
            except OSError:
                ch.close()
        self._finish()

    def drain(self) -> None:
        """Drain-then-close: the node stops the producer and sends what it
        queued, then the stream's end; iterating goes on until that end."""
        if self.finished or self.draining or self.ch.dead:
            return
        self.draining = True
        self.tx_seq += 1
        try:
            self.ch.send(StreamControl.close(self.sid).to_frame(_OPEN).encode())
        except OSError as exc:
            self._finish()
            self.ch.close()
            raise FabricUnavailable(f"connection to {self.ch.client.url} ({self.ch.node}) "
                                    f"was lost: {exc}") from None

    def stats(self) -> dict[str, Any]:
        """This stream's figures (``RemoteStream.stats``)."""
        return _stream_stats(self.sid, self.tx_seq, self.seq, self.ch.dec.pending,
                             self.ch.window, self.consumed, self.granted, self.grants_sent,
                             self.finished, self.draining)

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:
            pass


class _AsyncChannel(asyncio.BufferedProtocol):
    """A connection owned by one caller's event loop: ``aevaluate`` sends and
    is answered on the caller's loop, with no hop to the client's thread.
    Single replies only (streams and gossip use the main connection). Reads
    go into the channel's own buffer (no new bytes object per read). Plain
    TCP on asyncio's own loop reads and writes the socket itself
    (``_SocketWriter``: no transport's layers per call); TLS and any other
    loop (uvloop's transports are native code) go through a transport. The
    usual reply steps its awaiting task from the read callback (``_wake``:
    one loop turn a call, not two)."""

    def __init__(self, client: "NodeClient", loop: asyncio.AbstractEventLoop):
        self.client = client
        self.loop = loop
        self.session = client.sessions  # made while this session of the main link was up
        # asyncio's own loop (its _thread_id names the thread running it), or
        # for any other loop _NO_THREAD (a _thread_id no thread has)
        self.base: Any = loop if (isinstance(loop, asyncio.BaseEventLoop)
                                  and hasattr(loop, "_thread_id")) else _NO_THREAD
        self.dec = FrameDecoder(P.node_limits(client.max_frame))
        self.enc = P.encoder(client.max_frame)
        self.max_payload = self.enc.limits.max_frame_payload_bytes  # of enc, kept with it
        self.node: str | None = None
        self.source = "peer:None"  # a reply's source unless its STREAM_START names one
        self.transport: asyncio.Transport | _SocketWriter | None = None
        self.sock: socket.socket | None = None
        self.ready: asyncio.Future[None] = loop.create_future()
        self.up = False  # the handshake is done (ready has its result)
        self.live = False  # up and not dead (aevaluate's one check): set with them
        self.sources: dict[bytes, str] = {}  # a STREAM_START payload -> its reply's source
        # sid -> [future, parts (() until the first chunk), source, deadline],
        # and from its first chunk the bytes of its chunks' frames so far
        self.calls: dict[int, list[Any]] = {}
        # (the socket's fd, the loop's epoll) where a call may wait for its
        # reply inside its task (wait_inline), else None
        self.waits: tuple[int, Any] | None = None
        self.cap = client.max_reply or _UNBOUNDED  # the largest value reply taken
        self.ids = itertools.count(1)
        self.dead = False
        self.closer: AsyncIterator[None] | None = None
        self.buf = memoryview(bytearray(1 << 16))
        self.paused = False  # over _OUT_HIGH bytes wait to be sent: new calls wait
        self.drained: asyncio.Future[None] | None = None  # what they wait on
        self.watch: asyncio.TimerHandle | None = None  # only when the client's loop is closed
        self.bg_watch: asyncio.TimerHandle | None = None  # on the client's loop thread
        self.watch_at: float | None = None
        # asyncio's own loop makes a future in a Python method: the same future
        # is made directly (any other loop's create_future is kept)
        self.new_future: Callable[[], asyncio.Future[Any]] = (
            functools.partial(asyncio.Future, loop=loop)
            if type(loop).create_future is asyncio.BaseEventLoop.create_future
            else loop.create_future)

    async def connect(self, timeout: float | None) -> None:
        c = self.client
        try:
            infos = await self.loop.getaddrinfo(c.host, c.port, type=socket.SOCK_STREAM)
            family, _type, proto, _name, addr = infos[0]
            sock = socket.socket(family, socket.SOCK_STREAM, proto)
            self.sock = sock
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            await asyncio.wait_for(self.loop.sock_connect(sock, addr), timeout or 10.0)
            if c.tls is None and isinstance(self.loop, _SelectorLoop):
                # watched before the hello: a failed send closes the socket,
                # and the handshake's wait below then raises why
                self.loop.add_reader(sock.fileno(), self.data_received)  # (reads it)
                self.transport = _SocketWriter(self, sock)
                self.waits = _inline_waits(self.loop, sock)
                self._hello()
            else:
                await self.loop.create_connection(
                    lambda: self, sock=sock, ssl=c.tls,
                    server_hostname=c.host if c.tls is not None else None)
            await asyncio.wait_for(asyncio.shield(self.ready), timeout or 10.0)
            # Closed when the loop shuts down its async generators (asyncio.run
            # does, before it closes the loop): the transport ends on its loop.
            self.closer = _close_at_loop_end(self)
            await self.closer.__anext__()
        except BaseException as exc:
            self.abort()
            if not self.ready.done():
                self.ready.set_exception(exc if isinstance(exc, FabricError) else
                                         FabricUnavailable(f"cannot connect to {c.url}: "
                                                           f"{exc!r}"))
                self.ready.exception()  # retrieved: the waiters raise it
            raise

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.set_write_buffer_limits(  # type: ignore[attr-defined]
            high=_OUT_HIGH, low=_OUT_LOW)
        self._hello()

    def pause_writing(self) -> None:
        """Over ``_OUT_HIGH`` bytes wait to be sent: new calls wait (``writable``)."""
        self.paused = True

    def resume_writing(self) -> None:
        """Under ``_OUT_LOW`` again: the calls waiting go on."""
        self.paused = False
        d, self.drained = self.drained, None
        if d is not None and not d.done():
            d.set_result(None)

    async def writable(self, t: float | None) -> None:
        """Wait while the channel is paused (``pause_writing``): until it is
        resumed, it ends (its error is raised) or ``t`` seconds pass
        (``asyncio.TimeoutError``)."""
        if self.drained is None:
            self.drained = self.new_future()
        await asyncio.wait_for(asyncio.shield(self.drained), t)

    def _hello(self) -> None:
        c = self.client
        self.transport.write(self.enc.encode_value(  # type: ignore[union-attr]
            FrameKind.HELLO, P.hello(node=c.node_id, max_frame=c.max_frame, window=c.window,
                                     caps=_CAPS, token=c._token, proto=c.proto)))

    def get_buffer(self, sizehint: int) -> memoryview:
        return self.buf

    def buffer_updated(self, nbytes: int) -> None:
        self.data_received(self.buf, nbytes)

    def data_received(self, data: bytes | memoryview | None = None,
                      nbytes: int | None = None) -> None:
        """What arrived (``data``, or its first ``nbytes``), decoded and
        handed to its calls. Called with None by the loop when the channel
        owns its socket (plain TCP on asyncio's own loop, the socket's
        reader): it reads the socket first, as a transport's reader would,
        without its layers (and in one frame)."""
        if data is None:
            try:
                nbytes = self.sock.recv_into(self.buf)  # type: ignore[union-attr]
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                self._fail(FabricUnavailable(f"connection to {self.client.url} "
                                             f"({self.node}) was lost: {exc}"))
                return
            if not nbytes:  # the node closed it
                self.connection_lost(None)
                return
            data = self.buf
        try:
            dec = self.dec
            if not self.up:
                dec.feed(data if nbytes is None else data[:nbytes])
                for f in dec:
                    self._frame(f)
                return
            calls, limits = self.calls, dec.limits
            # The usual reply, START, one CHUNK of bytes and END on one stream
            # with seq 0, 1, 2, is taken in one call with the read's bytes
            # (FrameDecoder.feed_reply: feed, then take_reply), the next ones
            # by take_reply; a START or END whose payload was seen before is
            # not decoded again.
            r = dec.feed_reply(data, limits, nbytes)  # (nbytes None: the whole)
            while r is not None:
                sid, start, skey, data_, end, ekey = r
                call = calls.get(sid)
                if call is None:  # a call given up on: its frames are dropped
                    r = dec.take_reply(limits)
                    continue
                src = self.sources.get(skey)
                if src is None:
                    src = self._source_of(start, skey)
                if call[1] or _ENDS.get(ekey) != len(data_):
                    claim = self._checked_end(call, sid, data_, end)
                else:
                    claim = None
                del calls[sid]
                fut = call[0]
                if not fut.done():
                    try:
                        got = (unpack_record(data_), src, _with_data(claim, data_))
                    except DecodeError as exc:
                        fut.set_exception(exc)
                    else:
                        _wake(fut, got, self.loop)
                if not dec.pending:
                    return
                r = dec.take_reply(limits)
            # Anything else: a reply's frames, inline (a call per frame showed
            # in the profile): START, then CHUNKs with seq 1, 2, ..., then END.
            for f in dec:
                call = calls.get(f.stream_id)
                kind = f.kind
                if call is None or kind == _ERROR:
                    self._frame(f)
                elif kind == _CHUNK:
                    parts = call[1]
                    if f.seq != len(parts) + 1:
                        self._frame(f)  # raises, naming what arrived
                    if not parts:  # (a call's parts start as (): no list per call)
                        parts = call[1] = []
                        call.append(0)  # (nor a count: the usual reply needs none)
                    call[4] += _HEADER + len(f.payload)
                    if call[4] > self.cap:
                        self._refuse(f.stream_id, call, call[4])
                        continue
                    parts.append(bytes(f.decode_payload(limits)))
                elif kind == _START:
                    key = bytes(f.payload)
                    src = self.sources.get(key)
                    call[2] = self._source_of(f, key) if src is None else src
                elif kind == _STREAM_END and len(call[1]) == 1 and f.seq == 2 \
                        and _ENDS.get(bytes(f.payload)) == len(call[1][0]):
                    del calls[f.stream_id]  # one chunk, accounted for: the usual reply
                    if not call[0].done():
                        try:
                            call[0].set_result((unpack_record(call[1][0]), call[2], None))
                        except DecodeError as exc:
                            call[0].set_exception(exc)
                else:
                    self._frame(f)
        except Exception as exc:  # a broken stream or a refusal: the channel ends
            self._fail(exc if isinstance(exc, FabricError) and not self.ready.done()
                       or isinstance(exc, _IdleCut) else
                       FabricUnavailable(f"connection to {self.client.url} ended: {exc}"))

    def _source_of(self, start: Any, key: bytes) -> str:
        """A STREAM_START's source (decoded once per payload, kept per channel)."""
        src = _source(start.decode_payload(self.dec.limits), self.node)
        if len(self.sources) >= 64:
            self.sources.clear()
        self.sources[key] = src
        return src

    def _checked_end(self, call: list[Any], sid: int, data: bytes, end: Any) -> Any:
        """A one-chunk reply taken whole whose END was not seen before (or
        that follows chunks of its stream: frames lost or repeated): checked
        as ``_frame`` checks it; its claim, or ``ProtocolError`` (the call
        fails with it)."""
        limits = self.dec.limits
        try:
            if call[1]:
                raise P.ProtocolError(
                    f"node {self.node} sent STREAM_CHUNK seq 1 on stream {sid} where seq "
                    f"{len(call[1]) + 1} was due: frames were lost, repeated or reordered")
            body = end.decode_payload(limits)
            _complete(body, 1, len(data), self.node)
        except P.ProtocolError as exc:
            del self.calls[sid]
            if not call[0].done():
                call[0].set_exception(exc)
            raise
        if len(end.payload) < 100 and len(_ENDS) < 256 and isinstance(body, dict) and \
                body.get("truncated") is False:  # this payload passes: kept
            _ENDS[bytes(end.payload)] = len(data)
        return _end_claim(end, limits)

    def _frame(self, f: Any) -> None:
        limits = self.dec.limits
        kind, sid = f.kind, f.stream_id
        if not self.up:
            if kind == FrameKind.ERROR:
                raise P.error_from_payload(f.decode_payload(limits), self.client.url)
            if kind != FrameKind.HELLO:
                raise P.ProtocolError(f"{self.client.url} answered the handshake with "
                                      f"{f.kind_name}")
            body = P.check_hello(f.decode_payload(limits), server=True)
            self.node = body["node"]
            self.source = f"peer:{self.node}"
            self.enc = P.encoder(min(self.client.max_frame, body["max_frame"]))
            self.max_payload = self.enc.limits.max_frame_payload_bytes
            self.ready.set_result(None)
            self.up = True
            self.live = not self.dead
            return
        if sid == 0:
            if kind == FrameKind.ERROR:
                raise _ended(P.error_from_payload(f.decode_payload(limits), f"node {self.node}"),
                             self.client.url, None)  # (_fail decides per call)
            odd = _odd(f, self.node)
            if odd is not None:  # every call fails with it; the channel closes
                self._fail(odd)
                raise odd
            return
        call = self.calls.get(sid)
        odd = _odd(f, self.node)
        if call is None:
            if odd is not None:
                raise odd
            return  # a call given up on
        try:
            if odd is not None:
                raise odd
            if kind == FrameKind.STREAM_CHUNK:
                _in_order(f, len(call[1]) + 1, self.node)
                if not call[1]:  # (a call's parts start as (): no list per call)
                    call[1] = []
                    call.append(0)  # (nor a count of its bytes)
                call[4] += _HEADER + len(f.payload)
                if call[4] > self.cap:
                    self._refuse(sid, call, call[4])
                    return
                call[1].append(bytes(f.decode_payload(limits)))
                return
            if kind == FrameKind.STREAM_END:
                _in_order(f, len(call[1]) + 1, self.node)
                parts = call[1]
                data = parts[0] if len(parts) == 1 else b"".join(parts)
                body = f.decode_payload(limits)
                _complete(body, len(parts), len(data), self.node)
                if len(parts) == 1 and len(f.payload) < 100 and len(_ENDS) < 256 and \
                        body.get("truncated") is False:  # this payload passes: kept
                    _ENDS[bytes(f.payload)] = len(data)
        except P.ProtocolError as exc:  # this call fails with it; the channel closes
            del self.calls[sid]
            if not call[0].done():
                call[0].set_exception(exc)
            raise
        if kind == FrameKind.STREAM_START:
            call[2] = _source(f.decode_payload(limits), self.node)
        elif kind == FrameKind.STREAM_END:
            del self.calls[sid]
            if not call[0].done():
                try:
                    call[0].set_result((unpack_record(data), call[2],
                                        _with_data(_end_claim(f, limits), data)))
                except DecodeError as exc:
                    call[0].set_exception(exc)
        elif kind == FrameKind.ERROR:
            del self.calls[sid]
            if not call[0].done():
                call[0].set_exception(P.error_from_payload(f.decode_payload(limits),
                                                           f"node {self.node}"))

    def _refuse(self, sid: int, call: list[Any], size: int) -> None:
        """A value reply past ``max_reply`` (``size`` bytes of it so far): its
        call fails with ``LimitExceeded``, the node is told to cancel it and
        the rest of its frames are dropped as they come (never held)."""
        if not call[0].done():
            call[0].set_exception(_too_large(self.node, sid, size, self.cap))
        self.gave_up(sid)

    def _fail(self, exc: BaseException) -> None:
        """The channel ends with ``exc``: its calls fail with it. An idle cut
        (``_IdleCut``) fails with it only the calls whose open the node had
        not read (``aevaluate`` sends them again); the others get a
        ``FabricUnavailable`` that says so. The open of the call on stream
        ``sid`` is at least frame ``sid + 1`` sent on the channel (its HELLO,
        the opens of streams 1 to ``sid``, and any cancel before it): fewer
        frames read, it was not read."""
        self.live = False
        self.dead = True
        if not self.ready.done():
            self.ready.set_exception(exc)
            self.ready.exception()
        calls, self.calls = self.calls, {}
        for sid, call in calls.items():
            if not call[0].done():
                if isinstance(exc, _IdleCut):
                    if exc.received < sid + 1:
                        call[0].set_exception(_IdleCut(str(exc), exc.received))
                        continue
                    call[0].set_exception(FabricUnavailable(
                        f"connection to {self.client.url} ended: {exc}"))
                else:
                    call[0].set_exception(exc)
                self.client.stats_counters["failed_fast"] += 1
        d, self.drained = self.drained, None
        if d is not None and not d.done():  # the calls waiting to be sent fail too
            d.set_exception(exc)
            d.exception()  # (retrieved: a waiter that timed out meanwhile)
        self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(FabricUnavailable(f"connection to {self.client.url} ({self.node}) "
                                     f"was lost"))

    def abort(self) -> None:
        """Close from this loop's thread."""
        self.live = False
        self.dead = True
        if self.transport is not None:
            self.transport.abort()
        elif self.sock is not None:
            self.sock.close()

    def close_from_anywhere(self) -> None:
        """Close from any thread (the owning loop may have ended)."""
        self.live = False
        self.dead = True
        if self.loop.is_closed():
            if self.sock is not None:
                self.sock.close()
            return
        try:
            self.loop.call_soon_threadsafe(self.abort)
        except RuntimeError:  # closed in between
            if self.sock is not None:
                self.sock.close()

    def send(self, request: EvalRequest, payload: bytes,
             t: float | None) -> tuple[int, asyncio.Future[Any]]:
        """Send a request for a single reply (``payload``: its open's, from
        ``NodeClient._prepare``): its stream id and the future its (record,
        source, claim) arrives on (awaited by ``aevaluate`` itself: no
        coroutine of the channel's in between)."""
        sid = next(self.ids)
        if len(payload) > self.max_payload:
            self.client._open_frame(request, payload, sid, self.enc)  # raises LimitExceeded
        frame = self.enc.encode_control(sid, payload)
        fut: asyncio.Future[Any] = self.new_future()
        # Not wait_for (its own future costs a loop turn per call) nor a timer
        # per call: one watchdog per channel, due at the earliest deadline
        # (kept on the client's loop thread: _watch).
        if t is None:
            deadline = None
        else:
            deadline = _monotonic() + t
            if self.watch_at is None or deadline < self.watch_at:
                self._watch(deadline)
        self.calls[sid] = [fut, (), self.source, deadline]  # parts: a list from the first
        self.transport.write(frame)  # type: ignore[union-attr]
        self.client.stats_counters["requests"] += 1
        return sid, fut

    def wait_inline(self) -> None:
        """Wait for the reply of the one call in flight inside its task, as
        a blocking call would: when the loop has nothing else to run (no
        callback ready, no timer due within ``_INLINE_WAIT``), wait up to
        ``_INLINE_WAIT`` on the loop's own epoll (every socket of the loop,
        its wake-up pipe and its signals: any of them ends the wait at
        once, so nothing the loop waits for waits longer; level-triggered,
        so an event this wait sees and leaves, the loop's next wait sees
        again), and read this socket if its reply came. Its future is then
        done and ``aevaluate``'s await returns without a turn of the loop:
        on asyncio's own loop a turn (``_run_once``, the selector, the ready
        queue, the task's step) costs about what a blocking client's whole
        call does. Otherwise the loop reads it, as before."""
        loop: Any = self.loop
        if loop._ready or len(self.calls) != 1:
            return
        timers = loop._scheduled
        if timers and timers[0]._when < loop.time() + _INLINE_WAIT:
            return
        fd, ep = self.waits  # type: ignore[misc]
        try:
            events = ep.poll(_INLINE_WAIT, 8)
        except (OSError, ValueError):  # (closed meanwhile: the loop says)
            return
        for got, _mask in events:
            if got == fd:
                self.data_received()
                return

    def gave_up(self, sid: int) -> None:
        """A call's waiter timed out or was cancelled: the node is told."""
        if self.calls.pop(sid, None) is not None and not self.dead:
            self.transport.write(  # type: ignore[union-attr]
                StreamControl.cancel(sid).to_frame(_OPEN).encode())

    def _watch(self, at: float) -> None:
        """Watch the earliest deadline (``time.monotonic()``) from the client's
        own loop thread, not with a timer on this loop: a loop holding a
        timer waits for I/O with a finite timeout, which costs each of its
        waits a kernel timer (and asyncio's own loop two clock reads and a
        heap look per turn). Only an earlier deadline re-arms it."""
        self.watch_at = at
        try:
            self.client._loop.call_soon_threadsafe(self._arm, at)
        except RuntimeError:  # the client's loop is closed: a timer on this one
            if self.watch is not None:
                self.watch.cancel()
            self.watch = self.loop.call_later(max(0.0, at - time.monotonic()), self._expire)

    def _arm(self, at: float) -> None:
        """On the client's loop thread: the watchdog, due at ``at``."""
        if self.bg_watch is not None:
            self.bg_watch.cancel()
        self.bg_watch = None if self.dead else asyncio.get_running_loop().call_later(
            max(0.0, at - time.monotonic()), self._due)

    def _due(self) -> None:
        """On the client's loop thread: the check runs on the channel's loop."""
        self.bg_watch = None
        if not self.dead and not self.loop.is_closed():
            try:
                self.loop.call_soon_threadsafe(self._expire)
            except RuntimeError:  # closed in between
                pass

    def _expire(self) -> None:
        """The watchdog: calls past their deadline fail with a timeout (their
        awaiting coroutine cancels them at the node); the next is watched."""
        self.watch = self.watch_at = None
        now = time.monotonic()
        nxt = None
        for call in list(self.calls.values()):
            d = call[3]
            if d is None:
                continue
            if d <= now:
                if not call[0].done():
                    call[0].set_exception(asyncio.TimeoutError())
            elif nxt is None or d < nxt:
                nxt = d
        if nxt is not None:
            self._watch(nxt)


class _NoThread:
    """The ``base`` of a channel on a loop other than asyncio's own: no
    thread's ident is its ``_thread_id``, so ``aevaluate`` asks for the
    running loop."""

    _thread_id = None


_NO_THREAD = _NoThread()


class _SocketWriter:
    """The writing half of an ``_AsyncChannel`` that owns its socket (plain
    TCP on asyncio's own loop): a write goes to the socket at once; what the
    socket does not take waits, in order, for it to be writable. Over
    ``_OUT_HIGH`` bytes waiting the channel is paused (new calls wait, as a
    transport's protocol is) until under ``_OUT_LOW``: memory stays bounded
    by the high mark and one frame a caller."""

    __slots__ = ("ch", "sock", "fd", "out", "closed")

    def __init__(self, ch: _AsyncChannel, sock: socket.socket):
        self.ch, self.sock, self.fd = ch, sock, sock.fileno()
        self.out = bytearray()
        self.closed = False

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.out:  # earlier bytes still wait: these go after them
            self.out += data
            if len(self.out) > _OUT_HIGH and not self.ch.paused:
                self.ch.pause_writing()
            return
        try:
            n = self.sock.send(data)
        except (BlockingIOError, InterruptedError):
            n = 0
        except OSError as exc:
            self._lost(str(exc))
            return
        if n < len(data):
            self.out += memoryview(data)[n:]
            self.ch.loop.add_writer(self.fd, self._writable)
            if len(self.out) > _OUT_HIGH:
                self.ch.pause_writing()

    def _writable(self) -> None:
        try:
            n = self.sock.send(self.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError as exc:
            self._lost(str(exc))
            return
        del self.out[:n]
        if not self.out:
            self.ch.loop.remove_writer(self.fd)
        if self.ch.paused and len(self.out) <= _OUT_LOW:
            self.ch.resume_writing()

    def _lost(self, why: str) -> None:
        ch = self.ch
        ch._fail(FabricUnavailable(f"connection to {ch.client.url} ({ch.node}) was lost: "
                                   f"{why}"))

    def abort(self) -> None:
        """Stop watching the socket and close it (on the channel's loop; a
        closed loop watches nothing); as a transport's abort, the channel's
        ``connection_lost`` follows on the loop (calls in flight fail)."""
        if self.closed:
            return
        self.closed = True
        loop = self.ch.loop
        if not loop.is_closed():
            loop.remove_reader(self.fd)
            if self.out:
                loop.remove_writer(self.fd)
            loop.call_soon(self.ch.connection_lost, None)
        self.out = bytearray()
        self.sock.close()


# The opens' payloads _prepare keeps for requests asked again (their count,
# and the bytes of their payloads past which it starts over): a caller's set
# of hot requests asked in turn is answered without building each open again.
_OPENS_KEPT = 1024
_OPENS_BYTES = 1 << 20


def _task_lookup() -> Callable[[asyncio.AbstractEventLoop], Any]:
    """``asyncio.current_task(loop)`` for ``_wake``: where it is a Python
    function over the C module's dict of running tasks (Python 3.11), that
    dict's ``get`` (no Python frame a reply); else ``current_task`` itself."""
    tasks = getattr(asyncio.tasks, "_current_tasks", None)
    if isinstance(asyncio.current_task, types.FunctionType) and type(tasks) is dict and \
            getattr(asyncio.tasks._enter_task, "__module__", None) == "_asyncio":
        return tasks.get
    return asyncio.current_task


_current_task = _task_lookup()


def _inline_waits(loop: asyncio.AbstractEventLoop,
                  sock: socket.socket) -> tuple[int, Any] | None:
    """(the socket's fd, the loop's ``select.epoll``) for ``wait_inline``
    where the loop is asyncio's own (its ready queue and timers seen) on an
    epoll selector (Linux); else None (no inline wait)."""
    if type(loop)._run_once is not asyncio.BaseEventLoop._run_once:  # type: ignore[attr-defined]
        return None
    ep = getattr(getattr(loop, "_selector", None), "_selector", None)
    if not isinstance(ep, getattr(select, "epoll", ())) or \
            not (hasattr(loop, "_ready") and hasattr(loop, "_scheduled")):
        return None
    return sock.fileno(), ep


def _wake(fut: asyncio.Future[Any], value: Any, loop: asyncio.AbstractEventLoop) -> None:
    """``fut.set_result(value)``, and the one task awaiting it stepped at
    once rather than through the loop's ready queue (a ``call_soon`` and a
    second turn of the loop a reply). Called only from the loop's read
    callback, where no task runs; anything else (another callback, a task
    already running) takes ``set_result``'s way. ``_callbacks`` is the
    (callback, context) pairs of both of asyncio's futures (C: None when
    there are none); the task's wake-up runs in its own context, as the
    loop would run it."""
    cbs = fut._callbacks
    if not cbs or len(cbs) != 1 or _current_task(loop) is not None:
        fut.set_result(value)
        return
    cb, ctx = cbs[0]
    fut.remove_done_callback(cb)
    fut.set_result(value)
    ctx.run(cb, fut)


async def _close_at_loop_end(ch: _AsyncChannel) -> AsyncIterator[None]:
    try:
        yield
    finally:
        ch.abort()


def _stats_frame(sid: int, enc: FrameEncoder) -> bytes:
    """The CONTROL frame of a status call on stream ``sid``."""
    return StreamControl.stats(sid).to_frame(_STATS).encode()


def _end_claim(f: Any, limits: Any) -> Any:
    """A STREAM_END's ``claim`` field (docs/spec/protocol.md), or None. An
    end without a claim is under 100 bytes: it is not decoded."""
    if len(f.payload) < 100:
        return None
    body = f.decode_payload(limits)
    return body.get("claim") if isinstance(body, dict) else None


def _gave_up(ch: _AsyncChannel, sid: int, exc: BaseException, request: EvalRequest,
             t: float | None) -> BaseException:
    """An ``aevaluate`` whose wait ended with ``exc`` (the channel's watchdog's
    timeout, or a cancel): the node is told; the error to raise."""
    ch.gave_up(sid)
    if isinstance(exc, asyncio.TimeoutError):
        return DeadlineExceeded(f"node {ch.node} did not answer {request.op!r} within {t} s")
    return exc


def _claimed(reply: EvalReply, raw: Any) -> EvalReply:
    """The reply, with the claim its node sent attached (``.claim``), and
    the record's bytes as they arrived, which a claim of kind ``record``
    covers (``_with_data``)."""
    if raw is None:
        return reply
    if isinstance(raw, tuple):
        return attach(reply, from_wire(raw[0]), raw[1])
    return attach(reply, from_wire(raw))


def _with_data(raw: Any, data: bytes) -> Any:
    """A single reply's claim (None: none) with its record's bytes as they
    arrived: what a claim of kind ``record`` covers (docs/spec/claims.md)."""
    return None if raw is None else (raw, data)


#: The capabilities every client asks for in its HELLO: ``values``, a single
#: reply's record in the value encoding (docs/spec/protocol.md sections 1, 3).
_CAPS = ["values"]
_VALUE_PREFIX = b"\xc1\x01"


def unpack_record(data: bytes) -> Any:
    """A single reply's record ``[value, diagnostics, trace]`` from its bytes:
    the value encoding (prefix ``c1 01``, from a node that granted
    ``values``: the types kept) or the canonical encoding (an older node's;
    read with its tags). ``DecodeError`` when they are neither."""
    if data[:2] == _VALUE_PREFIX:
        return decode_value(data)
    return _decode_canonical(data)


def _in_order(f: Any, expect: int, node: str | None) -> int:
    """A reply's chunks and end come with seq 1, 2, ...: anything else means
    frames were lost, repeated or reordered (``ProtocolError``)."""
    if f.seq != expect:
        raise P.ProtocolError(f"node {node} sent {f.kind_name} seq {f.seq} on stream "
                              f"{f.stream_id} where seq {expect} was due: frames were "
                              f"lost, repeated or reordered")
    return expect


def _complete(body: Any, chunks: int, size: int, node: str | None) -> None:
    """A STREAM_END must account for exactly what arrived (a stream the node
    truncated says so, with a ``LimitExceeded`` diagnostic before its end)."""
    if isinstance(body, dict) and body.get("truncated") is True:
        return
    if (not isinstance(body, dict) or body.get("chunks") != chunks
            or body.get("bytes") != size):
        raise P.ProtocolError(f"node {node} ended a reply with {body!r}, but {chunks} "
                              f"chunk(s) of {size} bytes arrived")


# The kinds a node sends a client after the handshake, on stream 0 and on a
# call's stream (docs/spec/protocol.md section 3): a PONG answers a PING on
# its stream, and a PING, which any peer may send, is let by.
_ON_LINK = frozenset(int(k) for k in (FrameKind.ERROR, FrameKind.GOSSIP, FrameKind.PING,
                                      FrameKind.PONG))
_ON_STREAM = frozenset((_START, _CHUNK, _STREAM_END, _ERROR, int(FrameKind.PING),
                        int(FrameKind.PONG)))


def _odd(f: Any, node: str | None) -> P.ProtocolError | None:
    """The ``ProtocolError`` of a frame no node sends a client (a CONTROL, a
    CREDIT, a PLACEMENT, a second HELLO, a reply's frame on stream 0), or
    None: what follows on that connection cannot be trusted."""
    if f.kind in (_ON_LINK if f.stream_id == 0 else _ON_STREAM):
        return None
    return P.ProtocolError(f"node {node} sent {f.kind_name} on stream {f.stream_id}: no "
                           f"node sends that to a client")


def _too_large(node: str | None, sid: int, size: int, cap: int) -> P.LimitExceeded:
    """The error of a value reply past the client's ``max_reply`` (counted
    as its chunks' frames, header and payload: what holding it costs)."""
    return P.LimitExceeded(f"node {node} sent a reply of more than {cap} bytes on stream "
                           f"{sid} ({size} in its chunks' frames so far), the largest this "
                           f"client takes (connect(max_reply=...)): the reply was dropped")


def _source(body: Any, node: str | None) -> str:
    meta = body.get("metadata") if isinstance(body, dict) else None
    if not isinstance(meta, dict) or meta.get("source") in (None, "held", "local"):
        return f"peer:{node}"
    return str(meta.get("source"))


# The jitter's own generator: drawing from the random module's would move the
# application's global random state (a seeded simulation, a test's random
# order) every time a client waits to reconnect. Reseeded in a forked child,
# as the random module's own is, so that forked clients do not wait alike.
_JITTER = random.Random()
os.register_at_fork(after_in_child=_JITTER.seed)


class Backoff:
    """A standalone client's reconnect schedule: the wait before each dial
    after a failed one doubles from ``base`` to ``cap`` seconds, and each is
    jittered to between half and all of it (``rng()`` in [0, 1): jitter only
    shortens a wait, so none passes the cap, and clients that lost one node
    together do not dial it again together). A handshake resets it."""

    __slots__ = ("base", "cap", "delay", "rng")

    def __init__(self, base: float = 0.05, cap: float = 5.0,
                 rng: Callable[[], float] = _JITTER.random):
        if not 0 < base <= cap:
            raise ValueError(f"a backoff needs 0 < base <= cap, not base={base}, cap={cap}")
        self.base, self.cap, self.rng = base, cap, rng
        self.delay = base  # the next wait, before its jitter

    def next(self) -> float:
        """The wait before the next dial (seconds); the one after doubles."""
        wait = self.delay * (0.5 + 0.5 * self.rng())
        self.delay = min(self.delay * 2, self.cap)
        return wait

    def reset(self) -> None:
        """A handshake succeeded: the next failure waits ``base`` again."""
        self.delay = self.base


def _check_options(tls: Any, token: Any, grants: Any, window: Any, max_frame: Any,
                   reconnect: Any, max_reply: Any) -> None:
    """``connect``'s options checked before dialling: a ``TypeError`` or
    ``ValueError`` naming the one that cannot be used."""
    if tls is not None and not isinstance(tls, (ssl.SSLContext, dict)):
        raise TypeError(f"tls must be an ssl.SSLContext or a dict of client_tls's arguments "
                        f"(ca, cert, key), not {type(tls).__name__}")
    if token is not None and not isinstance(token, str):
        raise TypeError(f"token must be a str or None, not {type(token).__name__}")
    _check_grants_arg(grants)
    if not isinstance(window, int) or isinstance(window, bool):
        raise TypeError(f"window must be an int (bytes), not {type(window).__name__}")
    if not P.valid_window(window):
        raise ValueError(f"window must be {P.WINDOW_RANGE}, not {window!r}")
    if not isinstance(max_frame, int) or isinstance(max_frame, bool):
        raise TypeError(f"max_frame must be an int (bytes), not {type(max_frame).__name__}")
    if not P.valid_max_frame(max_frame):
        raise ValueError(f"max_frame must be {P.MAX_FRAME_RANGE}, not {max_frame!r}")
    if not isinstance(reconnect, bool):
        raise TypeError(f"reconnect must be a bool, not {type(reconnect).__name__}")
    if not isinstance(max_reply, int) or isinstance(max_reply, bool):
        raise TypeError(f"max_reply must be an int (bytes), not {type(max_reply).__name__}")
    if max_reply != 0 and not max_frame <= max_reply:  # (a one-frame reply is always taken)
        raise ValueError(f"max_reply must be 0 (no bound) or at least max_frame "
                         f"({max_frame}) bytes, not {max_reply!r}")


def _check_grants_arg(grants: Any) -> None:
    """Grants are an iterable of str: one str (its characters) is refused."""
    if isinstance(grants, (str, bytes)):
        raise TypeError(f"grants must be an iterable of str, not {type(grants).__name__}")


class _Refused(Exception):
    """The handshake named a node the governor's lists refuse."""


class NodeClient:
    """A connection to a node with the fabric interface (see ``fabric.connect``)."""

    #: The client bounds its own wait (``timeout=``) and cancels what it gave up on.
    honours_timeout = True

    def __init__(self, url: str, *, tls: Any = None, token: str | None = None,
                 timeout: float | None = 30.0, scope: str = "compute",
                 grants: Iterable[str] = (), node_id: str | None = None,
                 window: int = P.DEFAULT_WINDOW, max_frame: int = P.DEFAULT_MAX_FRAME,
                 on_gossip: Callable[[Any], object] | None = None,
                 reconnect: bool = True, loop: Any = None,
                 proto: tuple[int, int] = P.PROTOCOL_VERSION, governor: Any = None,
                 max_reply: int = DEFAULT_MAX_REPLY):
        if not isinstance(url, str):
            raise TypeError(f"a node URL is a str, fabric://HOST:PORT or fabrics://HOST:PORT "
                            f"(TLS), not {type(url).__name__}")
        u = P.parse_node_url(url)  # NodeURLError (a ValueError) saying what is wrong
        timeout = _wait_timeout(timeout)
        if scope not in P.SCOPES:
            raise ValueError(f"scope must be one of {P.SCOPES}, not {scope!r}")
        _check_options(tls, token, grants, window, max_frame, reconnect, max_reply)
        self.url = url
        self.host, self.port = u.host, u.port
        if isinstance(tls, dict):
            tls = client_tls(**tls)
        if tls is None and u.tls:
            tls = client_tls()
        self.tls: ssl.SSLContext | None = tls
        self._token = token
        #: How long a call waits at most (seconds; None: no limit, as is a
        #: timeout past ``fabrics.NO_LIMIT``, infinity included).
        self.timeout = timeout
        self.scope = scope
        self.grants = frozenset(grants)
        self.node_id = node_id
        self.window = window
        #: The credit window in force on the main connection (the node's
        #: HELLO: the smaller of this client's and the node's, 0 none):
        #: what its streams' grants are paced by and their stats report.
        self.window_in_force = window
        self.max_frame = max_frame
        #: The largest value reply a call takes, in bytes of its chunks'
        #: frames (0: no bound; else at least ``max_frame``, so a reply of
        #: one frame, the usual one, needs no check).
        self.max_reply = max_reply
        self.on_gossip = on_gossip
        self.reconnect = reconnect
        self.proto = proto
        #: A ``PeerGovernor`` (a node's links): it decides when to dial again
        #: and whether to dial at all; None: the client's own schedule.
        self.governor = governor
        #: Why the governor's lists refuse this peer (None: they do not).
        self.refused: str | None = None
        self._lists_changed: asyncio.Event | None = None
        self.node: str | None = None  # the remote node's id, after the handshake
        self.principal: str | None = None
        self.server_grants: frozenset[str] = frozenset()
        self._held_to_grants = False  # principal set and "*" not granted: set with them
        self.status = "disconnected"
        #: Handshakes of the main link so far: a thread's or a loop's
        #: connection made in an earlier one is made again before its next call.
        self.sessions = 0
        self.gossip_sent = 0
        #: What a gossiping client pulls with on each connect (a node sets it:
        #: its bookmark of this link, docs/spec/protocol.md section 5).
        self.gossip_pull: Callable[[], Any] | None = None
        self._loop = _LoopThread.get()
        self._writer: asyncio.StreamWriter | None = None
        self._enc = P.encoder(max_frame)
        self._calls: dict[int, _Call] = {}
        #: The next stream id this client opens (saved in a node snapshot).
        self.next_sid = 1
        self._closed = False
        self._closing = False  # close() was called (not a failure of the peer)
        # Frames sent on the main link's session (its HELLO the first): a
        # call's open is the frame ``_Call.at`` of it (an idle cut's count).
        self._tx = 0
        # The node closed the main link idle and it is being made again: a
        # call meanwhile waits for it (_start) instead of failing.
        self._redialing = False
        self._up: asyncio.Event | None = None
        self._first: concurrent.futures.Future[None] = concurrent.futures.Future()
        self._local = threading.local()
        self._channels: weakref.WeakSet[_Channel] = weakref.WeakSet()
        self._channels_lock = threading.Lock()
        # Payloads built by _checked_payload (the request is kept: its id stays its own).
        self._payloads: dict[Any, tuple[EvalRequest, bytes]] = {}
        # id(request) -> (request, want, grants, timeout, payload, scope,
        # node_id) of the opens _prepare made (requests are immutable): the
        # last _OPENS_KEPT requests, or fewer while their payloads pass
        # _OPENS_BYTES bytes (then it starts over)
        self._opens: dict[int, tuple[EvalRequest, str, frozenset[str], float | None, bytes,
                                     str, str | None]] = {}
        self._opens_bytes = 0
        self._where = f"connect({url})"
        self._achannels: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                                   _AsyncChannel] = weakref.WeakKeyDictionary()
        # loop connections of an earlier session still finishing their calls
        self._retired: weakref.WeakSet[_AsyncChannel] = weakref.WeakSet()
        self._loop_thread = _LoopThread.thread
        self._last_achannel: _AsyncChannel | None = None
        self.stats_counters = {"requests": 0, "reconnects": 0, "failed_fast": 0,
                               "grants_sent": 0, "dials": 0, "handshakes": 0,
                               "backpressure_waits": 0, "idle_redials": 0}
        _LoopThread.clients.add(self)
        #: The reconnect schedule without a governor.
        self.backoff = Backoff()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), self._loop)

    # -- connection management (on the private loop) ---------------------------
    def _set_status(self, status: str) -> None:
        self.status = status  # (a RelayFabric(client) reads it on each call)

    async def _run(self) -> None:
        self._up = asyncio.Event()
        gov = self.governor
        if gov is not None:
            self._lists_changed = asyncio.Event()
            gov.watch(self._on_lists)
        try:
            await self._dial_loop(gov)
        finally:
            if gov is not None:
                gov.unwatch(self._on_lists)
            self._set_status("disconnected")

    async def _dial_loop(self, gov: Any) -> None:
        first = True
        while not self._closed:
            if gov is not None and await self._wait_admitted(gov):
                break
            self.stats_counters["dials"] += 1
            shook = self.stats_counters["handshakes"]
            what = None
            refused = idle = False
            received: int | None = None
            try:
                await self._session()
            except _Refused as exc:  # the lists refuse its node id: not a failure
                log.info("connection to %s closed: %s", self.url, exc)
                refused = True
            except P.IdleTimeout as exc:  # nothing was sent on it for the node's idle_timeout
                log.debug("connection to %s closed idle: %s", self.url, exc)
                idle = True
                received = exc.received
            except (P.VersionMismatch, P.Unauthenticated, CapabilityDenied,
                    ssl.SSLError) as exc:
                why: BaseException = exc
                if isinstance(exc, ssl.SSLError):  # (the node's certificate, or an alert)
                    why = FabricUnavailable(f"cannot connect to {self.url}: {exc}")
                if first and not self._first.done():
                    self._first.set_exception(why)
                    self._closed = True
                    what = f"refused: {exc}"
                    break
                log.warning("connection to %s refused: %s", self.url, exc)
                what = f"refused: {exc}"
            except (OSError, asyncio.IncompleteReadError, FrameError, DecodeError,
                    P.ProtocolError, FabricError) as exc:
                if first and not self._first.done():
                    # A node at max_connections says so: its LimitExceeded as is.
                    self._first.set_exception(exc if isinstance(exc, P.LimitExceeded) else
                                              FabricUnavailable(
                                                  f"cannot connect to {self.url}: {exc}"))
                    if not self.reconnect:
                        self._closed = True
                        what = f"cannot connect: {exc}"
                        break
                log.info("connection to %s lost: %s", self.url, exc)
                what = (f"link lost: {exc}" if self.stats_counters["handshakes"] > shook
                        else f"cannot connect: {exc}")
            finally:
                self._up.clear()  # type: ignore[union-attr]
                self._redialing = False
                # (an idle cut: the calls the node did not read go on the next link)
                self._fail_all(FabricUnavailable(f"connection to {self.url} "
                                                 f"({self.node}) was lost"),
                               received if self.reconnect and not self._closed else None)
                if what is not None:
                    self._note_failure(what)
            first = False
            if refused:
                continue  # waits in _wait_admitted until the lists change
            if self._closed or not self.reconnect:
                break
            if idle:
                # Not a failure of the peer: the link is made again at once,
                # its status kept (a call meanwhile goes by its own connection,
                # or waits for this one: _start); if the dial fails, that
                # failure is the link's (and the waiting calls').
                self.stats_counters["idle_redials"] += 1
                self._redialing = True
                continue
            self._set_status("reconnecting")
            self.stats_counters["reconnects"] += 1
            if gov is None:
                await asyncio.sleep(self.backoff.next())
            else:
                await self._backoff(gov)

    def _gov_name(self) -> str:
        """The peer's name in the governor: its node id once known, else its URL."""
        return self.node or self.url

    def _note_failure(self, what: str) -> None:
        """A failed dial or a lost link is a failure of the peer, unless this
        client closed it or the governor's lists now refuse the peer."""
        gov = self.governor
        if gov is None or self._closing:
            return  # closed by this side (the node stopped)
        if gov.policy_refusal(self.node, self.url) is not None:
            return  # cut by the lists, not a failure of the peer
        gov.failed(self._gov_name(), what)

    async def _backoff(self, gov: Any) -> None:
        """Wait the governor's backoff for this peer (at least 10 ms, so a
        governor without backoff does not spin), or until its lists change."""
        assert self._lists_changed is not None
        while not self._closed:
            wait = max(gov.wait_time(self._gov_name()), 0.01)
            self._lists_changed.clear()
            try:
                await asyncio.wait_for(self._lists_changed.wait(), wait)
            except asyncio.TimeoutError:
                pass
            if gov.wait_time(self._gov_name()) <= 0 or \
                    gov.policy_refusal(self.node, self.url) is not None:
                return

    async def _wait_admitted(self, gov: Any) -> bool:
        """Wait while the governor's lists refuse this peer (it is never
        dialled then); True when the client closed meanwhile."""
        assert self._lists_changed is not None
        while not self._closed:
            self._lists_changed.clear()
            why = gov.policy_refusal(self.node, self.url)
            self.refused = why
            if why is None:
                return False
            if not self._first.done():
                self._first.set_exception(FabricUnavailable(
                    f"peer {self._gov_name()!r} is not dialled: {why}"))
            if self._redialing:  # calls waiting for the link: it is not made now
                self._redialing = False
                self._fail_all(FabricUnavailable(f"peer {self._gov_name()!r} is not "
                                                 f"dialled: {why}"))
            if not self.reconnect:
                return True
            self._set_status("disconnected")
            await self._lists_changed.wait()
        return True

    def _on_lists(self) -> None:
        """The governor's lists changed (any thread): re-check on this loop."""
        try:
            self._loop.call_soon_threadsafe(self._recheck)
        except RuntimeError:  # the loop is closed: nothing to re-check
            pass

    def _recheck(self) -> None:
        gov = self.governor
        if self._lists_changed is not None:
            self._lists_changed.set()
        if gov is not None and self._writer is not None and \
                gov.policy_refusal(self.node, self.url) is not None:
            log.info("connection to %s (%s) closed: the governor refuses it now",
                     self.url, self.node)
            self._writer.transport.abort()  # the session ends; the dial loop waits

    def _fail_all(self, exc: BaseException, received: int | None = None) -> None:
        """The main link ended: its calls fail with ``exc``, but for an idle
        cut (``received``: the frames the node read of it) those whose open
        it never read, and those not sent yet, which are kept for the next
        link (sent once more, once: docs/spec/protocol.md section 6)."""
        w, self._writer = self._writer, None
        if w is not None:
            w.transport.abort()
        calls, self._calls = self._calls, {}
        for c in calls.values():
            if c.done:
                continue
            if received is not None and (c.at == 0 or (c.at > received and not c.again)):
                c.again = c.again or c.at > 0
                c.at = 0
                self._calls[c.sid] = c
                continue
            self.stats_counters["failed_fast"] += 1
            c.done = True
            c.q.put_nowait(exc)

    async def _session(self) -> None:
        reader, writer = await asyncio.open_connection(
            self.host, self.port, ssl=self.tls, limit=1 << 16,
            server_hostname=self.host if self.tls else None)
        try:
            writer.write(self._enc.encode_value(FrameKind.HELLO, P.hello(
                node=self.node_id, max_frame=self.max_frame, window=self.window,
                caps=[*_CAPS, "gossip"] if self.on_gossip else _CAPS, token=self._token,
                proto=self.proto)))
            self._tx = 1
            dec = FrameDecoder(P.node_limits(self.max_frame))
            try:
                f = await self._frame(reader, dec)
            except ConnectionResetError as exc:
                if self.tls is None and await _speaks_tls(self.host, self.port):
                    raise FabricUnavailable(
                        f"{self.url} closed the connection at the handshake: it looks like a "
                        f"TLS node (use fabrics://{self.host}:{self.port}, with tls= its CA)") \
                        from exc
                if self.tls is not None:  # the TLS handshake was done: the node hung up
                    raise FabricUnavailable(
                        f"{self.url} closed the connection after the TLS handshake, without "
                        f"answering the HELLO: a node does so when it refuses the client's "
                        f"certificate (none given, not signed by a CA it trusts, or "
                        f"expired)") from exc
                raise
            if f.kind == FrameKind.ERROR:
                raise P.error_from_payload(f.decode_payload(dec.limits), self.url)
            if f.kind != FrameKind.HELLO:
                raise P.ProtocolError(f"{self.url} answered the handshake with {f.kind_name}")
            body = P.check_hello(f.decode_payload(dec.limits), server=True)
            self.node = body["node"]
            self.stats_counters["handshakes"] += 1
            gov = self.governor
            if gov is not None:
                gov.alias(self.url, self.node)  # failures before its id was known
                why = gov.policy_refusal(self.node, self.url)
                if why is not None:  # its node id is refused: hang up, dial no more
                    self.refused = why
                    raise _Refused(f"peer {self.node!r} at {self.url}: {why}")
                gov.ok(self.node)
            self.principal = body["principal"]
            self.server_grants = frozenset(body["grants"])
            self.window_in_force = body["window"]
            self._held_to_grants = (self.principal is not None
                                    and "*" not in self.server_grants)
            self._enc = P.encoder(min(self.max_frame, body["max_frame"]))
            self._writer = writer
            self.sessions += 1
            self.backoff.reset()  # (a session ends by an exception: reset here)
            with self._channels_lock:  # their next call checks their session first
                for ach in self._achannels.values():
                    ach.live = False
            self._redialing = False
            if self.on_gossip:
                self._send(self._enc.encode_value(FrameKind.GOSSIP, self.gossip_pull()
                                                  if self.gossip_pull else {"pull": 0}))
            self._set_status("connected")
            self._up.set()  # type: ignore[union-attr]
            for c in list(self._calls.values()):  # kept or made while it was made again
                if c.at == 0 and not c.done:
                    self._send_open(c)
            if not self._first.done():
                self._first.set_result(None)
            while True:
                f = await self._frame(reader, dec)
                self._dispatch(f, dec)
        finally:
            writer.transport.abort()

    async def _frame(self, reader: asyncio.StreamReader, dec: FrameDecoder) -> Any:
        while True:
            for f in dec:
                return f
            data = await reader.read(1 << 18)
            if not data:
                raise ConnectionResetError(f"{self.url} closed the connection")
            dec.feed(data)

    def _dispatch(self, f: Any, dec: FrameDecoder) -> None:
        kind, sid = f.kind, f.stream_id
        if sid == 0:
            if kind == FrameKind.ERROR:
                raise P.error_from_payload(f.decode_payload(dec.limits), self.url)
            if kind == FrameKind.GOSSIP and self.on_gossip is not None:
                self.on_gossip(f.decode_payload(dec.limits))
                return
            odd = _odd(f, self.node)
            if odd is not None:  # every call fails with it; the connection ends
                self._fail_all(odd)
                raise odd
            return
        c = self._calls.get(sid)
        odd = _odd(f, self.node)
        if odd is not None:  # the call fails with it; the connection ends
            if c is not None:
                self._calls.pop(sid, None)
                c.done = True
                c.q.put_nowait(odd)
            raise odd
        if c is None:
            return  # a frame for a request this side gave up on
        if kind == FrameKind.STREAM_CHUNK or kind == FrameKind.STREAM_END:
            try:
                c.seq = _in_order(f, c.seq + 1, self.node)
                if kind == FrameKind.STREAM_END:
                    if c.want == "value":
                        _complete(f.decode_payload(dec.limits), len(c.parts),
                                  sum(map(len, c.parts)), self.node)
                    else:
                        _complete(f.decode_payload(dec.limits), c.chunks, c.bytes, self.node)
            except P.ProtocolError as exc:  # this call fails with it; the connection ends
                self._calls.pop(sid, None)
                c.done = True
                c.q.put_nowait(exc)
                raise
        if kind == FrameKind.STREAM_START:
            c.source = _source(f.decode_payload(dec.limits), self.node)
            c.started = True
        elif kind == FrameKind.STREAM_CHUNK:
            if c.want == "value":
                c.received += _HEADER + len(f.payload)
                cap = self.max_reply
                if cap and c.received > cap:  # the call fails; the rest is dropped
                    self._cancel(c)
                    c.done = True
                    c.q.put_nowait(_too_large(self.node, sid, c.received, cap))
                    return
                c.parts.append(bytes(f.decode_payload(dec.limits)))
            else:
                size = len(f.payload)
                c.received += size
                c.chunks += 0 if f.is_diagnostic else 1
                c.bytes += 0 if f.is_diagnostic else size
                c.q.put_nowait((DIAG if f.is_diagnostic else ITEM,
                                f.decode_payload(dec.limits), size))
        elif kind == FrameKind.STREAM_END:
            self._calls.pop(sid, None)
            c.done = True
            c.claim = _end_claim(f, dec.limits)
            if c.want == "value":
                try:
                    data = b"".join(c.parts)
                    c.claim = _with_data(c.claim, data)
                    record = unpack_record(data)
                    c.q.put_nowait(record)
                except DecodeError as exc:
                    c.q.put_nowait(exc)
            else:
                c.q.put_nowait(_END)
        elif kind == FrameKind.ERROR:
            self._calls.pop(sid, None)
            c.done = True
            c.q.put_nowait(P.error_from_payload(f.decode_payload(dec.limits),
                                                f"node {self.node}"))

    async def _open(self, request: EvalRequest, want: str, payload: bytes) -> _Call:
        c = self._start(want, functools.partial(self._open_frame, request, payload))
        self.stats_counters["requests"] += 1
        return c

    def _start(self, want: str, opener: Callable[[int, FrameEncoder], bytes]) -> _Call:
        """A call on the main link (on the client's loop thread): a new
        stream id, its open (``opener(sid, encoder)``) sent now, or, while
        the link is made again after the node closed it idle, once it is up
        (the caller's own timeout bounds the wait; a failed dial fails it).
        ``FabricUnavailable`` at once when the link is down otherwise."""
        if self._writer is None and not self._redialing:
            self.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"not connected to {self.url} (status {self.status})")
        sid = self.next_sid
        c = _Call(sid, want)
        c.opener = functools.partial(opener, sid)
        if self._writer is not None:
            frame = c.opener(self._enc)  # (raises before the id is taken)
            self.next_sid = sid + 1
            self._calls[sid] = c
            self._send(frame)
            c.at = self._tx
        else:
            self.next_sid = sid + 1
            self._calls[sid] = c
        return c

    def _send_open(self, c: _Call) -> None:
        """Send a kept call's open on the new main link (one too large for
        the frame it agreed fails alone)."""
        assert c.opener is not None
        try:
            frame = c.opener(self._enc)
        except P.LimitExceeded as exc:
            self._calls.pop(c.sid, None)
            c.done = True
            c.q.put_nowait(exc)
            return
        self._send(frame)
        c.at = self._tx

    def _send(self, data: bytes) -> None:
        """Write one frame on the main link (counted: ``_tx``)."""
        self._tx += 1
        self._writer.write(data)  # type: ignore[union-attr]

    def _open_frame(self, request: EvalRequest, payload: bytes, sid: int,
                    enc: FrameEncoder) -> bytes:
        """The CONTROL frame of an open on stream ``sid`` (its payload from
        ``_prepare``), checked against the largest frame agreed with ``enc``."""
        if len(payload) > enc.limits.max_frame_payload_bytes:
            raise P.LimitExceeded(f"the request {request.op!r} takes {len(payload)} bytes, "
                                  f"more than the largest frame agreed with {self.url} "
                                  f"({enc.limits.max_frame_payload_bytes})")
        return enc.encode(_CONTROL, payload, stream_id=sid)

    def _cancel(self, c: _Call) -> None:
        if self._calls.pop(c.sid, None) is not None and self._writer is not None and c.at:
            c.tx_seq += 1
            self._send(StreamControl.cancel(c.sid).to_frame(_OPEN).encode())

    def _drain(self, c: _Call) -> None:
        """On the client's loop: ask the node to drain-then-close ``c``."""
        if c.draining or c.done or self._calls.get(c.sid) is not c or self._writer is None:
            return
        c.draining = True
        c.tx_seq += 1
        self._send(StreamControl.close(c.sid).to_frame(_OPEN).encode())

    def _grant(self, c: _Call, size: int) -> None:
        c.consumed += size
        if not self.window_in_force:  # unbounded: the node needs no credit
            return
        if self._writer is not None and not c.done and (
                c.consumed - c.granted >= max(1, self.window_in_force // 4) or c.q.empty()):
            c.granted = c.consumed
            self.stats_counters["grants_sent"] += 1
            c.grants_sent += 1
            c.tx_seq += 1
            self._send(self._enc.encode_value(FrameKind.CREDIT, {"consumed": c.consumed},
                                              stream_id=c.sid))

    def _send_gossip(self, body: Any) -> bool:
        """Push a holding-index delta to the server (from the node's loop thread)."""
        if self._writer is None:
            return False
        data = self._enc.encode_value(FrameKind.GOSSIP, body)
        self._loop.call_soon_threadsafe(self._write_if_up, data)
        return True

    def _write_if_up(self, data: bytes) -> None:
        if self._writer is not None:
            self._send(data)

    async def _connected_once(self) -> None:
        await asyncio.wrap_future(self._first)

    # -- checks shared by every call --------------------------------------------
    def _prepare(self, request: EvalRequest, grants: Iterable[str] | None,
                 timeout: float | None,
                 want: str = "value") -> tuple[float | None, bytes]:
        """The checks of every call, then its timeout and the payload of its
        open (the open's bytes do not name the stream id)."""
        if not isinstance(request, EvalRequest):
            raise TypeError(f"expected an EvalRequest, not {type(request).__name__}")
        if grants is None:
            g = self.grants
        else:
            _check_grants_arg(grants)
            g = frozenset(grants)
        check_grants(request, g, self._where)
        if self._held_to_grants:  # (a principal, and not every grant)
            missing = [c for c in request.required_capabilities if c not in self.server_grants]
            if missing:
                raise CapabilityDenied(f"node {self.node} does not grant principal "
                                       f"{self.principal!r} {', '.join(missing)}")
        t = self.timeout if timeout is None else _wait_timeout(timeout)
        if request.deadline is not None:
            t = request.deadline if t is None else min(t, request.deadline)
        last = self._opens.get(id(request))  # a request asked before, asked again
        if (last is not None and last[0] is request and last[1] is want and last[2] is g
                and last[3] == t and last[5] is self.scope and last[6] is self.node_id):
            return t, last[4]
        via = (self.node_id,) if self.node_id else ()
        # One walk writes the open and looks for a Secret (a request holding
        # one is never sent): None when it met a Secret or an argument of a
        # kind the Secret check walks its own way (a subclass of a builtin
        # container), which then takes that check and the dict-built payload.
        payload = _open_payload(request, want, self.scope, g, t, via)
        if payload is None:
            payload = self._checked_payload(request, want, g, t, via)
        opens = self._opens
        if len(opens) >= _OPENS_KEPT or self._opens_bytes > _OPENS_BYTES:
            opens.clear()  # (a dict's clear: safe against another thread's get)
            self._opens_bytes = 0
        opens[id(request)] = (request, want, g, t, payload, self.scope, self.node_id)
        self._opens_bytes += len(payload)
        return t, payload

    def _checked_payload(self, request: EvalRequest, want: str, g: frozenset[str],
                         t: float | None, via: tuple[str, ...]) -> bytes:
        """The open's payload of a request ``_open_payload`` leaves to the
        Secret check: refused (``CapabilityDenied``) if it holds a Secret,
        else built through ``protocol.open_payload``, and kept for the
        request asked again (the last 256; requests are immutable)."""
        ck = (id(request), want, g, t, via, self.scope)
        hit = self._payloads.get(ck)
        if hit is not None and hit[0] is request:
            return hit[1]
        P.check_request_no_secret(request)
        payload = P.open_payload(request, want=want, scope=self.scope, grants=g, timeout=t,
                                 via=via)
        with self._channels_lock:
            if len(self._payloads) >= 256:
                self._payloads.pop(next(iter(self._payloads)))
            self._payloads[ck] = (request, payload)
        return payload

    def _channel(self, t: float | None) -> _Channel | None:
        """This thread's blocking connection (made on first use), or None on
        the client's own loop thread or in a nested call (they go by the loop)."""
        ch = getattr(self._local, "channel", None)
        if ch is not None and not ch.dead:
            if ch.busy:
                return None
            if ch.session == self.sessions:
                return ch
            ch.close()  # made before the main link's last reconnect: made again
        if self.status != "connected" or threading.current_thread() is self._loop_thread:
            if self.status != "connected":
                self.stats_counters["failed_fast"] += 1
                raise FabricUnavailable(f"not connected to {self.url} (status {self.status})")
            return None
        try:
            ch = _Channel(self, t)
        except FabricError:  # the node refused it (max_connections, a token): as it said
            self.stats_counters["failed_fast"] += 1
            raise
        except (OSError, FrameError, DecodeError) as exc:
            self.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"cannot connect to {self.url}: {exc}") from None
        with self._channels_lock:
            if self._closed:
                ch.close()
                raise FabricUnavailable(f"the client of {self.url} was closed")
            self._channels.add(ch)
        self._local.channel = ch
        return ch

    async def _achannel(self, loop: asyncio.AbstractEventLoop,
                        t: float | None) -> _AsyncChannel:
        """The running loop's connection (made on first use; concurrent first
        calls share the one being made)."""
        ch = self._achannels.get(loop)
        if ch is not None and not ch.dead:
            if ch.session == self.sessions:
                await ch.ready
                return ch
            self._retire(ch)
        if self.status != "connected":
            self.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"not connected to {self.url} (status {self.status})")
        ch = _AsyncChannel(self, loop)
        with self._channels_lock:
            if self._closed:
                raise FabricUnavailable(f"the client of {self.url} was closed")
            self._achannels[loop] = ch
        try:
            await ch.connect(t)
        except FabricError:
            self.stats_counters["failed_fast"] += 1
            raise
        except (OSError, asyncio.TimeoutError, FrameError, DecodeError) as exc:
            self.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(f"cannot connect to {self.url}: {exc!r}") from None
        return ch

    def _retire(self, ch: _AsyncChannel) -> None:
        """A loop's connection made before the main link's last reconnect
        (on its loop): closed now if idle, else left to answer the calls it
        carries (no new call goes to it) and closed with the client."""
        with self._channels_lock:  # (the main link's handshake walks them under it)
            if self._achannels.get(ch.loop) is ch:
                del self._achannels[ch.loop]
        if self._last_achannel is ch:
            self._last_achannel = None
        if ch.calls:
            self._retired.add(ch)
        else:
            ch.abort()

    # -- the fabric interface ------------------------------------------------
    async def _evaluate_on_loop(self, request: EvalRequest, payload: bytes,
                                t: float | None) -> EvalReply:
        c = await self._open(request, "value", payload)
        try:
            got = await asyncio.wait_for(c.q.get(), t)
        except asyncio.TimeoutError:
            self._cancel(c)
            raise DeadlineExceeded(f"node {self.node} did not answer {request.op!r} "
                                   f"within {t} s") from None
        except asyncio.CancelledError:
            self._cancel(c)
            raise
        if isinstance(got, BaseException):
            raise got
        return _claimed(reply_from_record(got, request.key, c.source), c.claim)

    def evaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                 timeout: float | None = None) -> EvalReply:
        """Evaluate on the node; its reply, or its error raised here."""
        t, payload = self._prepare(request, grants, timeout)
        ch = self._channel(t)
        if ch is not None:
            try:
                return ch.evaluate(request, payload, t)
            except _IdleCut:  # the node closed it idle before it read this call: once more
                ch = self._channel(t)
                if ch is not None:
                    try:
                        return ch.evaluate(request, payload, t)
                    except _IdleCut as exc:
                        self.stats_counters["failed_fast"] += 1
                        raise FabricUnavailable(str(exc)) from None
        fut = asyncio.run_coroutine_threadsafe(self._evaluate_on_loop(request, payload, t),
                                               self._loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise FabricUnavailable(f"the call to {self.url} was cancelled") from None

    async def aevaluate(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                        timeout: float | None = None) -> EvalReply:
        """Async twin of ``evaluate`` (from any event loop)."""
        t, payload = self._prepare(request, grants, timeout)
        ch = self._last_achannel  # the common case: the loop that called last
        # asyncio's own loop records the thread running it and a thread runs
        # one loop at a time, so that thread being this one says the running
        # loop is the channel's without get_running_loop (a getpid syscall per
        # call on Python 3.11). Any other loop, or any doubt, asks.
        if ch is None or not ch.live or ch.base._thread_id != _get_ident():
            loop = _running_loop()
            if ch is None or ch.loop is not loop or not ch.up or ch.dead or \
                    ch.session != self.sessions:
                if loop is self._loop:  # the client's own loop: its main connection
                    cf = asyncio.run_coroutine_threadsafe(
                        self._evaluate_on_loop(request, payload, t), self._loop)
                    try:
                        return await asyncio.wrap_future(cf)
                    except asyncio.CancelledError:
                        cf.cancel()
                        raise
                ch = self._achannels.get(loop)
                if ch is None or ch.dead or not ch.up or ch.session != self.sessions:
                    ch = await self._achannel(loop, t)
                self._last_achannel = ch
        if ch.paused:  # over _OUT_HIGH bytes wait to be sent: this call waits
            await self._backpressure(ch, request, t)
        sid, fut = ch.send(request, payload, t)
        if ch.waits is not None:  # (asyncio's own loop, this channel's own socket)
            ch.wait_inline()
        try:
            record, source, claim = await fut
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            raise _gave_up(ch, sid, exc, request, t) from None
        except _IdleCut:  # the node closed it idle before it read this call
            return await self._aevaluate_again(request, payload, t)
        # replies.reply_from_record without its wrapper (an EvalReply of replies')
        reply: EvalReply = _reply_from_record(  # type: ignore[assignment]
            record, request.key, source)
        return reply if claim is None else _claimed(reply, claim)

    async def _aevaluate_again(self, request: EvalRequest, payload: bytes,
                               t: float | None) -> EvalReply:
        """``aevaluate``'s call, sent once more on a new connection of the
        running loop: the node closed the last one idle before it read the
        call (never processed). A second such cut is ``FabricUnavailable``."""
        loop = _running_loop()
        ch = self._achannels.get(loop)
        if ch is None or ch.dead or not ch.up or ch.session != self.sessions:
            ch = await self._achannel(loop, t)
        self._last_achannel = ch
        if ch.paused:
            await self._backpressure(ch, request, t)
        sid, fut = ch.send(request, payload, t)
        try:
            record, source, claim = await fut
        except (asyncio.TimeoutError, asyncio.CancelledError) as exc:
            raise _gave_up(ch, sid, exc, request, t) from None
        except _IdleCut as exc:
            self.stats_counters["failed_fast"] += 1
            raise FabricUnavailable(str(exc)) from None
        reply: EvalReply = _reply_from_record(  # type: ignore[assignment]
            record, request.key, source)
        return reply if claim is None else _claimed(reply, claim)

    async def _backpressure(self, ch: _AsyncChannel, request: EvalRequest,
                            t: float | None) -> None:
        """Wait until ``ch`` takes a call again (``DeadlineExceeded`` after
        ``t`` seconds; the channel's error if it ends meanwhile)."""
        self.stats_counters["backpressure_waits"] += 1
        end = None if t is None else _monotonic() + t
        while ch.paused and not ch.dead:
            left = None if end is None else end - _monotonic()
            try:
                if left is not None and left <= 0:
                    raise asyncio.TimeoutError
                await ch.writable(left)
            except asyncio.TimeoutError:
                raise DeadlineExceeded(f"node {ch.node} did not take {request.op!r} within "
                                       f"{t} s: the connection's {_OUT_HIGH} bytes to send "
                                       f"were not read") from None
        if ch.dead:
            raise FabricUnavailable(f"connection to {self.url} ({ch.node}) was lost")

    async def _next_events(self, c: _Call, t: float | None) -> list[Any]:
        """The events that arrived (at least one), granting credit for them."""
        try:
            first = await asyncio.wait_for(c.q.get(), t)
        except asyncio.TimeoutError:
            self._cancel(c)
            raise DeadlineExceeded(f"node {self.node} sent nothing within {t} s") from None
        out = [first]
        while not c.q.empty() and len(out) < 256:
            out.append(c.q.get_nowait())
        for ev in out:
            if isinstance(ev, tuple):
                self._grant(c, ev[2])
        return out

    def _events(self, c: _Call, t: float | None) -> Iterator[Any]:
        done = False
        try:
            while True:
                batch = asyncio.run_coroutine_threadsafe(self._next_events(c, t),
                                                         self._loop).result()
                for ev in batch:
                    if ev is _END:
                        done = True
                        if c.owner is not None:
                            c.owner.claim = from_wire(c.claim)
                        return
                    if isinstance(ev, BaseException):
                        done = True
                        raise ev
                    yield ev[0], _diag_or_item(ev)
        finally:
            if not done:
                self._loop.call_soon_threadsafe(self._cancel, c)

    def stream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
               timeout: float | None = None) -> RemoteStream[Any]:
        """A stream from the node; items arrive as it produces them, under
        per-stream credit. Closing it early cancels the producer."""
        t, payload = self._prepare(request, grants, timeout, "stream")
        ch = self._channel(t)
        if ch is not None:
            bs = ch.stream(request, payload, t)
            out: RemoteStream[Any] = RemoteStream(bs, request.key, f"peer:{self.node}", bs)
            bs.owner = out
            return out
        c = asyncio.run_coroutine_threadsafe(self._open(request, "stream", payload),
                                             self._loop).result()
        s: RemoteStream[Any] = RemoteStream(self._events(c, t), request.key,
                                            f"peer:{self.node}", _CallHandle(self, c))
        c.owner = s
        return s

    async def _aevents(self, c: _Call, t: float | None) -> AsyncIterator[Any]:
        done = False
        try:
            while True:
                fut = asyncio.run_coroutine_threadsafe(self._next_events(c, t), self._loop)
                batch = await asyncio.wrap_future(fut)
                for ev in batch:
                    if ev is _END:
                        done = True
                        if c.owner is not None:
                            c.owner.claim = from_wire(c.claim)
                        return
                    if isinstance(ev, BaseException):
                        done = True
                        raise ev
                    yield ev[0], _diag_or_item(ev)
        finally:
            if not done:
                self._loop.call_soon_threadsafe(self._cancel, c)

    def astream(self, request: EvalRequest, *, grants: Iterable[str] | None = None,
                timeout: float | None = None) -> AsyncRemoteStream[Any]:
        """Async twin of ``stream``."""
        t, payload = self._prepare(request, grants, timeout, "stream")
        c = asyncio.run_coroutine_threadsafe(self._open(request, "stream", payload),
                                             self._loop).result()
        s: AsyncRemoteStream[Any] = AsyncRemoteStream(self._aevents(c, t), request.key,
                                                      f"peer:{self.node}", _CallHandle(self, c))
        c.owner = s
        return s

    # -- life cycle ----------------------------------------------------------
    def wait_connected(self, timeout: float | None = None) -> "NodeClient":
        """Block until the first handshake completed (or raise why it failed)."""
        try:
            self._first.result(_wait_timeout(timeout))
        except concurrent.futures.TimeoutError:
            raise FabricUnavailable(f"no handshake with {self.url} within {timeout} s") \
                from None
        return self

    def relay(self, allowed_capabilities: Iterable[str] = (), **kw: Any) -> RelayFabric:
        """``RelayFabric(self, ...)``: its status follows the connection."""
        return RelayFabric(self, allowed_capabilities, **kw)

    async def _aclose(self) -> None:
        self._closing = True
        self._closed = True
        _LoopThread.clients.discard(self)
        with self._channels_lock:
            channels = list(self._channels)
            achannels = [*self._achannels.values(), *self._retired]
        for ch in channels:
            ch.close()
        for ach in achannels:
            ach.close_from_anywhere()
        w = self._writer
        self._fail_all(FabricUnavailable(f"the client of {self.url} was closed"))
        if w is not None:
            w.transport.abort()
        self._task.cancel()
        self._set_status("disconnected")

    def close(self) -> None:
        """Close the connection; calls in flight fail with ``FabricUnavailable``."""
        if self._closed and self._task.done():
            return
        try:
            asyncio.run_coroutine_threadsafe(self._aclose(), self._loop).result(10)
        except (concurrent.futures.CancelledError, RuntimeError):
            pass

    async def aclose(self) -> None:
        """Async twin of ``close`` (the caller's loop is not blocked)."""
        if self._closed and self._task.done():
            return
        try:
            await asyncio.wrap_future(
                asyncio.run_coroutine_threadsafe(self._aclose(), self._loop))
        except (asyncio.CancelledError, RuntimeError):
            pass

    async def _status_on_loop(self, t: float | None) -> dict[str, Any]:
        c = self._start("value", _stats_frame)
        try:
            got = await asyncio.wait_for(c.q.get(), t)
        except asyncio.TimeoutError:
            self._calls.pop(c.sid, None)
            raise DeadlineExceeded(f"node {self.node} sent no status within {t} s") from None
        if isinstance(got, BaseException):
            raise got
        if not isinstance(got, dict) or not isinstance(got.get("node"), str):
            raise P.ProtocolError(f"{self.url} answered the status op with "
                                  f"{type(got).__name__}, not a status map")
        return got

    def node_status(self, timeout: float | None = None) -> dict[str, Any]:
        """The node's status (docs/spec/protocol.md section 9; ``status`` is
        this link's own: connected / reconnecting / disconnected): its id,
        uptime, connections, requests, streams, cassette, holdings, peers'
        health and counters, as a dict (``fabric status URL`` prints it)."""
        t = self.timeout if timeout is None else _wait_timeout(timeout)
        fut = asyncio.run_coroutine_threadsafe(self._status_on_loop(t), self._loop)
        try:
            return fut.result()
        except concurrent.futures.CancelledError:
            raise FabricUnavailable(f"the status call to {self.url} was cancelled") from None

    def stats(self) -> dict[str, Any]:
        """Counters: requests, reconnects, calls failed fast, credit grants
        sent, calls that waited for a loop's connection to take them
        (``backpressure_waits``), main links made again after the node
        closed them idle (``idle_redials``)."""
        return dict(self.stats_counters, status=self.status, in_flight=len(self._calls))

    def __enter__(self) -> "NodeClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self) -> "NodeClient":
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"fabric.connect({self.url!r}) [{self.status}, node={self.node!r}]"


def _stream_stats(sid: int, tx_seq: int, rx_seq: int, pending: int, window: int,
                  received: int, granted: int, grants_sent: int, ended: bool,
                  draining: bool) -> dict[str, Any]:
    """A stream's figures on the receiving side (the seed's per-stream stats)."""
    return {"stream": sid, "state": "ended" if ended else "draining" if draining else "open",
            "tx_seq": tx_seq, "rx_seq": rx_seq, "inbound_pending": pending,
            "backpressure_events": 0,  # this side sends no data on it: it never waits
            # the sender's credit as this side knows it (-1: unbounded)
            "credit_remaining": -1 if not window else max(0, window - (received - granted)),
            "window": window, "bytes_received": received, "grants_sent": grants_sent,
            "grants_received": 0}


class _CallHandle:
    """A stream on the client's main connection, for its ``RemoteStream``."""

    __slots__ = ("client", "call")

    def __init__(self, client: NodeClient, call: _Call):
        self.client, self.call = client, call

    def drain(self) -> None:
        self.client._loop.call_soon_threadsafe(self.client._drain, self.call)

    def stats(self) -> dict[str, Any]:
        c = self.call
        return _stream_stats(c.sid, c.tx_seq, c.seq, c.q.qsize(), self.client.window_in_force,
                             c.received, c.granted, c.grants_sent, c.done and c.q.empty(),
                             c.draining)


class RemoteStream(EvalStream[T]):
    """A stream from a node (``NodeClient.stream``): an ``EvalStream`` with
    the stream's figures (``stats()``) and both ways to close it early.

    ``close()`` (or ``cancel()``, or leaving a ``with`` block) is
    drop-and-close: the node stops the producer and drops what it queued,
    and iteration stops at once. ``close(drain=True)`` is drain-then-close:
    the node stops the producer and sends what it had queued, then the
    stream's end; iterating goes on with those items and stops at the end
    (a stream so ended is incomplete and never recorded)."""

    claim: Any

    def __init__(self, events: Any, key: Any, source: str, handle: Any):
        super().__init__(events, key, source)
        self._handle = handle
        self.claim = None  # the node's claim, once it ended

    def close(self, drain: bool = False) -> None:
        """Stop the stream: drop-and-close, or with ``drain`` drain-then-close."""
        if drain:
            self._handle.drain()
        else:
            super().close()

    def cancel(self) -> None:
        """Drop-and-close (``close()``)."""
        super().close()

    def stats(self) -> dict[str, Any]:
        """tx_seq (frames sent on it: the open, grants, a close), rx_seq (the
        seq of the last frame taken), inbound_pending (frames arrived, not
        taken yet), backpressure_events, credit_remaining (the sender's, as
        far as this side knows; -1 unbounded), grants sent and received."""
        return self._handle.stats()


class AsyncRemoteStream(AsyncEvalStream[T]):
    """The async twin of ``RemoteStream`` (``NodeClient.astream``):
    ``await s.aclose()`` drops, ``await s.aclose(drain=True)`` drains."""

    claim: Any

    def __init__(self, events: Any, key: Any, source: str, handle: _CallHandle):
        super().__init__(events, key, source)
        self._handle = handle
        self.claim = None  # the node's claim, once it ended

    async def aclose(self, drain: bool = False) -> None:
        """Stop the stream: drop-and-close, or with ``drain`` drain-then-close."""
        if drain:
            self._handle.drain()
        else:
            await super().aclose()

    async def cancel(self) -> None:
        """Drop-and-close (``aclose()``)."""
        await super().aclose()

    def stats(self) -> dict[str, Any]:
        """As ``RemoteStream.stats``."""
        return self._handle.stats()


def _diag_or_item(ev: tuple[int, Any, int]) -> Any:
    return ev[1]


def connect(url: str, *, tls: Any = None, token: str | None = None,
            timeout: float | None = 30.0, **options: Any) -> NodeClient:
    """Connect to a node: ``fabric.connect("fabric://127.0.0.1:7411")``.

    Returns once the handshake is done (``FabricUnavailable`` if the node
    cannot be reached, ``VersionMismatch`` / ``Unauthenticated`` if it
    refuses). ``tls``: an ``ssl.SSLContext`` or ``{"ca":..., "cert":...,
    "key":...}`` (``fabrics://`` URLs use TLS by default); ``token``: a
    bearer token; ``timeout``: how long a call waits at most (seconds;
    None, or past ``fabric.fabrics.NO_LIMIT`` such as ``float("inf")``: no
    limit). Options: ``scope`` (``"compute"``, the default, or ``"held"``),
    ``grants`` (the caller's default grants, an iterable of str),
    ``window`` and ``max_frame`` (bytes, docs/spec/protocol.md section 1),
    ``reconnect`` (a bool), ``max_reply`` (the largest value reply a call
    takes, in bytes of its chunks' frames: 1 GiB by default, 0 for no
    bound, else at least ``max_frame``; a reply past it fails its call with
    ``LimitExceeded`` and is not held). Each is checked before dialling
    (``TypeError`` / ``ValueError`` naming it).

    It blocks until the handshake: called inside a running event loop it
    stops that loop meanwhile and warns so (``RuntimeWarning``); a node
    served on that loop cannot answer, and the error at ``timeout`` says
    so. From a coroutine use ``await fabric.aconnect(url, ...)``.
    """
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        in_loop = False
    else:  # this thread's loop stops until the handshake: say so, and what to use
        in_loop = True
        warnings.warn(_BLOCKS, RuntimeWarning, stacklevel=2)
    client = NodeClient(url, tls=tls, token=token, timeout=timeout, **options)
    try:
        client.wait_connected(client.timeout)
    except FabricUnavailable as exc:
        client.close()
        if in_loop and "no handshake" in str(exc):
            raise FabricUnavailable(f"{exc}; {_BLOCKS}") from None
        raise
    except BaseException:
        client.close()
        raise
    return client


_BLOCKS = ("fabric.connect() blocks the running event loop until the handshake is "
           "done (a node served on that loop cannot answer it): from a coroutine, use "
           "`await fabric.aconnect(url, ...)`")


async def aconnect(url: str, *, tls: Any = None, token: str | None = None,
                   timeout: float | None = 30.0, **options: Any) -> NodeClient:
    """Connect from a coroutine: ``client = await fabric.aconnect(url)``.

    The same arguments, client and errors as ``connect``, but the caller's
    event loop runs while the handshake is made (on the clients' own loop
    thread), so a node served on that same loop (``await node.serve()``)
    answers it. ``async with await fabric.aconnect(url) as client:`` closes
    it at the end (``await client.aclose()``).
    """
    client = NodeClient(url, tls=tls, token=token, timeout=timeout, **options)
    first = asyncio.wrap_future(client._first)  # (waited on, never cancelled: not shared)
    try:
        done, _ = await asyncio.wait((first,), timeout=client.timeout)
        if not done:
            first.add_done_callback(_retrieved)
            raise FabricUnavailable(f"no handshake with {url} within {timeout} s")
        first.result()
    except BaseException:
        await client.aclose()
        raise
    return client


def _retrieved(f: "asyncio.Future[Any]") -> None:
    if not f.cancelled():
        f.exception()


async def _speaks_tls(host: str, port: int) -> bool:
    """Whether ``host:port`` answers a TLS handshake (the certificate is not
    checked: this only tells a TLS node from one that closed for another
    reason, to say so)."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    try:
        _r, w = await asyncio.wait_for(asyncio.open_connection(host, port, ssl=ctx), 2.0)
    except ssl.SSLError as exc:  # an alert (a client certificate asked for): TLS
        return "alert" in str(exc).lower()
    except (OSError, asyncio.TimeoutError):
        return False
    w.transport.abort()
    return True
