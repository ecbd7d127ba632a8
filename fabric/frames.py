"""The stream codec: a stream of items as frames, and frames back to a stream.

A stream travels as ``STREAM_START`` (seq 0, payload ``{"metadata": ...}``),
one ``STREAM_CHUNK`` per item (payload: the item's canonical msgpack
encoding), and ``STREAM_END`` (payload ``{"chunks": n, "bytes": b,
"truncated": bool}``). When a limit of :class:`fabric.StreamFrameLimits` is
breached, or the producer raises, or an item cannot be encoded, the stream is
truncated *with a diagnostic*: one ``STREAM_CHUNK`` flagged ``DIAGNOSTIC``
whose payload names the kind, the limit and the count reached, then
``STREAM_END``. Nothing is ever shed silently, and a stream that ends exactly
at a limit gets no diagnostic. See docs/spec/frames.md.

Decoding checks the protocol: the first frame must be ``STREAM_START``;
sequence numbers must follow each other; every frame must belong to the one
stream; ``STREAM_END`` must count the chunks that arrived; a stream without
``STREAM_END`` was cut and is reported as such; frames after ``STREAM_END``
are rejected. Payloads are decoded by the hardened decoder under the limits.
"""

from __future__ import annotations

import collections
import enum
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator, Optional

from ._core import (
    FRAME_FLAG_DIAGNOSTIC,
    DecodeError,
    FabricError,
    Frame,
    FrameDecoder,
    FrameError,
    StreamFrameLimits,
    _payload_violation,
    canonical_bytes,
    encode_value,
)

__all__ = [
    "DIAGNOSTIC_KINDS",
    "Chunk",
    "Diagnostic",
    "Done",
    "Failed",
    "FrameKind",
    "Started",
    "StreamDiagnostic",
    "cassette_to_stream_frames",
    "stream_frames_to_cassette",
    "stream_frames_to_events",
    "stream_frames_to_stream",
    "stream_to_frames",
]


class FrameKind(enum.IntEnum):
    """The frame kinds of docs/spec/frames.md (``Frame.kind`` compares equal)."""

    HELLO = 1
    STREAM_START = 2
    STREAM_CHUNK = 3
    STREAM_END = 4
    ERROR = 5
    CONTROL = 6
    CREDIT = 7
    PLACEMENT = 8
    GOSSIP = 9
    PING = 10
    PONG = 11


#: The kinds a diagnostic chunk may carry.
DIAGNOSTIC_KINDS = (
    "LimitExceeded",
    "RemoteError",
    "RefusedProfile",
    "ChunkPayloadError",
    "Diagnostic",
    "ServerPlacementRefused",
)

# Every diagnostic but the informational "Diagnostic" ends the stream: only
# STREAM_END may follow it.
_TERMINAL_DIAGNOSTICS = frozenset(DIAGNOSTIC_KINDS) - {"Diagnostic"}
_DEFAULT_LIMITS = StreamFrameLimits()


class StreamDiagnostic(FabricError):
    """Why a stream was truncated (or a note the producer attached to it).

    It is both a value and an exception: :func:`stream_frames_to_stream`
    yields it in the item stream by default (``on_diagnostic="yield"``) and
    raises it with ``on_diagnostic="raise"``. ``kind`` is one of
    :data:`DIAGNOSTIC_KINDS`; ``limit`` and ``count`` name the limit that was
    breached and the count reached, the item that crossed it included.
    """

    def __init__(self, kind: str, message: str, *, limit: Optional[str] = None,
                 count: Optional[int] = None, seq: Optional[int] = None,
                 offset: Optional[int] = None):
        super().__init__("%s: %s" % (kind, message))
        self.kind = kind
        self.message = message
        self.limit = limit
        self.count = count
        self.seq = seq
        self.offset = offset

    def to_payload(self) -> dict:
        """The diagnostic chunk's payload (a map of kind, message, limit, count)."""
        return {"kind": self.kind, "message": self.message, "limit": self.limit,
                "count": self.count}

    def __repr__(self) -> str:
        extra = ""
        if self.limit is not None:
            extra = ", limit=%r, count=%r" % (self.limit, self.count)
        return "StreamDiagnostic(%r, %r%s)" % (self.kind, self.message, extra)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamDiagnostic):
            return NotImplemented
        return self.to_payload() == other.to_payload()

    __hash__ = None  # type: ignore[assignment]


# ---- events ------------------------------------------------------------------


@dataclass(frozen=True)
class Started:
    """The stream began (``STREAM_START``)."""

    seq: int
    stream_id: int
    metadata: Any


@dataclass(frozen=True)
class Chunk:
    """One item of the stream."""

    seq: int
    item: Any


@dataclass(frozen=True)
class Diagnostic:
    """A diagnostic chunk: the stream was truncated, or carries a note."""

    seq: int
    diagnostic: StreamDiagnostic


@dataclass(frozen=True)
class Failed:
    """The stream broke the protocol or could not be decoded; nothing follows.

    ``error`` is a :class:`fabric.FrameError` (protocol: cut stream, missing
    start, frames after the end, sequence gaps, a limit of the receiver), a
    :class:`fabric.DecodeError` (a payload) or a :class:`StreamDiagnostic`
    (an ``ERROR`` frame from the peer)."""

    seq: Optional[int]
    error: Exception = field(compare=False)


@dataclass(frozen=True)
class Done:
    """The stream ended (``STREAM_END``) with ``chunks`` data chunks."""

    seq: int
    chunks: int
    truncated: bool


# ---- encoding ------------------------------------------------------------------


def _diag_frame(diag: StreamDiagnostic, stream_id: int, seq: int) -> Frame:
    return Frame(FrameKind.STREAM_CHUNK, canonical_bytes(diag.to_payload()),
                 stream_id=stream_id, seq=seq, flags=FRAME_FLAG_DIAGNOSTIC)


def stream_to_frames(items: Iterable[Any], *, stream_id: int, metadata: Any = None,
                     limits: Optional[StreamFrameLimits] = None,
                     clock: Callable[[], float] = time.monotonic) -> Iterator[Frame]:
    """Yield the frames of a stream: START, one CHUNK per item, END.

    Limits (default ``StreamFrameLimits()``) are checked as each item arrives;
    the first breach ends the stream with a ``LimitExceeded`` diagnostic chunk
    naming the limit and the count reached, then ``STREAM_END``. The limits
    counted are data chunks (``max_stream_frames``), payload bytes per chunk
    and per stream, the time since the start (``max_duration_ms``), the rate
    (``max_rate_hz``: more than that many chunks within one second of
    ``clock``), and the nesting depth and item count of each payload. An
    exception from ``items`` becomes a ``RemoteError`` diagnostic, an item
    that cannot be encoded a ``ChunkPayloadError`` one. ``metadata`` goes in
    the START frame and must be encodable (else ``TypeError`` before any frame).
    """
    limits = _DEFAULT_LIMITS if limits is None else limits
    if not isinstance(limits, StreamFrameLimits):
        raise TypeError("limits must be a StreamFrameLimits or None, not %s"
                        % type(limits).__name__)
    start_payload = canonical_bytes({"metadata": metadata})
    seq = 0
    yield Frame(FrameKind.STREAM_START, start_payload, stream_id=stream_id, seq=seq)
    start = clock()
    window: collections.deque = collections.deque()
    chunks = total = 0
    diag: Optional[StreamDiagnostic] = None
    iterator = iter(items)
    while True:
        try:
            item = next(iterator)
        except StopIteration:
            break
        except Exception as exc:  # the producer failed: say so in the stream
            diag = StreamDiagnostic("RemoteError", "%s: %s" % (type(exc).__name__, exc))
            break
        count = chunks + 1
        if count > limits.max_stream_frames:
            diag = _limit("max_stream_frames", count, limits.max_stream_frames, "data chunks")
            break
        now = clock()
        elapsed_ms = int(round((now - start) * 1000))
        if elapsed_ms > limits.max_duration_ms:
            diag = _limit("max_duration_ms", elapsed_ms, limits.max_duration_ms, "ms")
            break
        # A chunk one second (to the microsecond) older than this one has
        # left the window: exactly max_rate_hz per second is allowed.
        while window and now - window[0] >= 1.0 - 1e-6:
            window.popleft()
        if len(window) + 1 > limits.max_rate_hz:
            diag = _limit("max_rate_hz", len(window) + 1, limits.max_rate_hz,
                          "chunks within one second")
            break
        try:
            payload = encode_value(item)
        except (TypeError, ValueError) as exc:
            diag = StreamDiagnostic("ChunkPayloadError",
                                    "item %d cannot be encoded: %s" % (count, exc))
            break
        if len(payload) > limits.max_frame_payload_bytes:
            diag = _limit("max_frame_payload_bytes", len(payload),
                          limits.max_frame_payload_bytes, "bytes in one chunk")
            break
        if total + len(payload) > limits.max_stream_bytes:
            diag = _limit("max_stream_bytes", total + len(payload), limits.max_stream_bytes,
                          "bytes in the stream")
            break
        bad = _payload_violation(payload, limits)
        if bad is not None:
            which = "max_depth" if bad[0] == "max_depth" else "max_items"
            allowed = getattr(limits, which)
            diag = _limit(which, allowed + 1, allowed, "in item %d" % count)
            break
        seq += 1
        chunks = count
        total += len(payload)
        window.append(now)
        yield Frame(FrameKind.STREAM_CHUNK, payload, stream_id=stream_id, seq=seq)
    close = getattr(iterator, "close", None)
    if diag is not None and close is not None:
        close()  # a generator cut short runs its finally blocks now
    if diag is not None:
        seq += 1
        yield _diag_frame(diag, stream_id, seq)
    seq += 1
    yield Frame(FrameKind.STREAM_END,
                canonical_bytes({"chunks": chunks, "bytes": total,
                                 "truncated": diag is not None}),
                stream_id=stream_id, seq=seq)


def _limit(name: str, count: int, allowed: int, unit: str) -> StreamDiagnostic:
    return StreamDiagnostic("LimitExceeded",
                            "%s=%d exceeded: reached %d %s" % (name, allowed, count, unit),
                            limit=name, count=count)


# ---- decoding ------------------------------------------------------------------


def _frame_error(message: str, frame: Optional[Frame], violation: str) -> FrameError:
    offset = None if frame is None else frame.offset
    if offset is not None:
        message = "%s (frame at offset %d)" % (message, offset)
    err = FrameError(message)
    err.offset = offset
    err.frame_offset = offset
    err.violation = violation
    return err


def _frames_of(frames: Any, limits: StreamFrameLimits) -> Iterator[Frame]:
    """Frames from an iterable of Frame objects, or from encoded bytes."""
    if isinstance(frames, (bytes, bytearray, memoryview)):
        dec = FrameDecoder(limits)
        dec.feed(frames)
        yield from dec
        dec.finish()
        return
    for f in frames:
        if not isinstance(f, Frame):
            raise TypeError("frames must be Frame objects or encoded bytes, not %s"
                            % type(f).__name__)
        yield f


def _diagnostic_from(frame: Frame, limits: StreamFrameLimits) -> StreamDiagnostic:
    body = frame.decode_payload(limits)
    where = frame.payload_offset
    if not isinstance(body, dict) or not isinstance(body.get("kind"), str):
        raise _frame_error("diagnostic chunk seq %d is not a map with a 'kind'" % frame.seq,
                           frame, "diagnostic")
    kind = body["kind"]
    if kind not in DIAGNOSTIC_KINDS:
        raise _frame_error("unknown diagnostic kind %r in seq %d" % (kind, frame.seq),
                           frame, "diagnostic")
    message = body.get("message")
    limit = body.get("limit")
    count = body.get("count")
    if (not isinstance(message, str) or not (limit is None or isinstance(limit, str))
            or not (count is None or isinstance(count, int))):
        raise _frame_error("malformed diagnostic chunk seq %d" % frame.seq, frame, "diagnostic")
    return StreamDiagnostic(kind, message, limit=limit, count=count, seq=frame.seq,
                            offset=where)


def stream_frames_to_events(frames: Any, *, limits: Optional[StreamFrameLimits] = None
                            ) -> Iterator[Any]:
    """Decode one stream's frames into events.

    ``frames`` is an iterable of :class:`fabric.Frame` or the encoded bytes.
    Yields :class:`Started`, then :class:`Chunk` / :class:`Diagnostic` events,
    then :class:`Done`; a protocol violation or undecodable payload yields one
    :class:`Failed` event and nothing after it. A stream without
    ``STREAM_END`` ends with ``Failed`` (violation ``"cut"``), never with
    ``Done``; frames after ``STREAM_END`` yield ``Failed`` after ``Done``.
    The receiver's ``limits`` bound the data chunks, bytes and payload depth
    and item counts it accepts.
    """
    limits = _DEFAULT_LIMITS if limits is None else limits
    it = _frames_of(frames, limits)
    expected_seq = 0
    stream_id = None
    chunks = total = 0
    terminal = False
    last: Optional[Frame] = None
    try:
        for frame in it:
            last = frame
            if stream_id is None:
                if frame.kind != FrameKind.STREAM_START:
                    yield Failed(frame.seq, _frame_error(
                        "stream does not begin with STREAM_START: got %s seq %d"
                        % (frame.kind_name, frame.seq), frame, "missing-start"))
                    return
                stream_id = frame.stream_id
            elif frame.stream_id != stream_id:
                yield Failed(frame.seq, _frame_error(
                    "frame of stream %d inside stream %d" % (frame.stream_id, stream_id),
                    frame, "stream-id"))
                return
            if frame.seq != expected_seq:
                yield Failed(frame.seq, _frame_error(
                    "sequence %d where %d was due (dropped, duplicated or reordered frame)"
                    % (frame.seq, expected_seq), frame, "sequence"))
                return
            expected_seq += 1
            kind = frame.kind
            if kind == FrameKind.STREAM_START:
                if frame.seq != 0:
                    yield Failed(frame.seq, _frame_error("second STREAM_START", frame,
                                                         "sequence"))
                    return
                body = frame.decode_payload(limits)
                if not isinstance(body, dict) or set(body) != {"metadata"}:
                    yield Failed(frame.seq, _frame_error(
                        "STREAM_START payload must be a map with exactly 'metadata'",
                        frame, "start"))
                    return
                yield Started(frame.seq, stream_id, body["metadata"])
            elif kind == FrameKind.STREAM_CHUNK:
                if terminal:
                    yield Failed(frame.seq, _frame_error(
                        "chunk seq %d after a terminal diagnostic" % frame.seq, frame,
                        "after-diagnostic"))
                    return
                if frame.is_diagnostic:
                    diag = _diagnostic_from(frame, limits)
                    terminal = diag.kind in _TERMINAL_DIAGNOSTICS
                    yield Diagnostic(frame.seq, diag)
                    continue
                chunks += 1
                total += len(frame.payload)
                if chunks > limits.max_stream_frames:
                    yield Failed(frame.seq, _frame_error(
                        "the peer sent more than max_stream_frames=%d data chunks"
                        % limits.max_stream_frames, frame, "max_stream_frames"))
                    return
                if total > limits.max_stream_bytes:
                    yield Failed(frame.seq, _frame_error(
                        "the peer sent more than max_stream_bytes=%d bytes"
                        % limits.max_stream_bytes, frame, "max_stream_bytes"))
                    return
                yield Chunk(frame.seq, frame.decode_payload(limits))
            elif kind == FrameKind.STREAM_END:
                body = frame.decode_payload(limits)
                if (not isinstance(body, dict)
                        or set(body) != {"chunks", "bytes", "truncated"}
                        or not isinstance(body["chunks"], int)):
                    yield Failed(frame.seq, _frame_error(
                        "STREAM_END payload must be a map of chunks, bytes, truncated",
                        frame, "end"))
                    return
                if body["chunks"] != chunks or body["bytes"] != total:
                    yield Failed(frame.seq, _frame_error(
                        "STREAM_END counts %d chunks / %d bytes but %d / %d arrived"
                        % (body["chunks"], body["bytes"], chunks, total), frame, "end"))
                    return
                yield Done(frame.seq, chunks, bool(body["truncated"]))
                for extra in it:
                    yield Failed(extra.seq, _frame_error(
                        "%s seq %d after STREAM_END" % (extra.kind_name, extra.seq),
                        extra, "after-end"))
                    return
                return
            elif kind == FrameKind.ERROR:
                body = frame.decode_payload(limits)
                message = body.get("message") if isinstance(body, dict) else None
                yield Failed(frame.seq, StreamDiagnostic(
                    "RemoteError", message if isinstance(message, str) else repr(body),
                    seq=frame.seq, offset=frame.offset))
                return
            else:
                yield Failed(frame.seq, _frame_error(
                    "unexpected %s frame inside a stream" % frame.kind_name, frame,
                    "unexpected-kind"))
                return
    except (FrameError, DecodeError) as exc:
        yield Failed(None if last is None else last.seq, exc)
        return
    if stream_id is None:
        yield Failed(None, _frame_error("empty stream: no STREAM_START", None, "missing-start"))
    else:
        err = _frame_error("stream cut: no STREAM_END after seq %d" % (expected_seq - 1),
                           last, "cut")
        yield Failed(None, err)


def stream_frames_to_stream(frames: Any, *, limits: Optional[StreamFrameLimits] = None,
                            on_diagnostic: str = "yield") -> Iterator[Any]:
    """Decode one stream's frames into its items.

    A diagnostic chunk surfaces as a :class:`StreamDiagnostic` *object* in
    the item stream with ``on_diagnostic="yield"`` (the default: the items
    before it are good, and the caller sees why the stream was cut short), or
    is raised with ``on_diagnostic="raise"``. Protocol failures always raise
    (:class:`fabric.FrameError`, :class:`fabric.DecodeError`, or
    :class:`StreamDiagnostic` for an ``ERROR`` frame), including a stream
    that was cut before ``STREAM_END``.
    """
    if on_diagnostic not in ("yield", "raise"):
        raise ValueError("on_diagnostic must be 'yield' or 'raise', not %r" % (on_diagnostic,))
    for event in stream_frames_to_events(frames, limits=limits):
        if isinstance(event, Chunk):
            yield event.item
        elif isinstance(event, Diagnostic):
            if on_diagnostic == "raise":
                raise event.diagnostic
            yield event.diagnostic
        elif isinstance(event, Failed):
            raise event.error


# ---- cassette ------------------------------------------------------------------


def stream_frames_to_cassette(frames: Any, cassette: Any, key: Any, *,
                              limits: Optional[StreamFrameLimits] = None) -> int:
    """Record one stream's items in ``cassette`` under ``key``, chunk by chunk.

    Only a complete stream is committed: a truncating diagnostic raises it
    (:class:`StreamDiagnostic`) and a protocol failure raises its error, and
    in both cases the partial recording is aborted, so an incomplete reply
    never becomes "held". Informational ``Diagnostic`` chunks are not
    recorded. Returns the number of items recorded (0 when the key was
    already held: first write wins).
    """
    with cassette.record_stream(key) as writer:
        for event in stream_frames_to_events(frames, limits=limits):
            if isinstance(event, Chunk):
                writer.append(event.item)
            elif isinstance(event, Diagnostic):
                if event.diagnostic.kind in _TERMINAL_DIAGNOSTICS:
                    raise event.diagnostic
            elif isinstance(event, Failed):
                raise event.error
            elif isinstance(event, Done):
                # Frames after END would show up as a Failed event next.
                continue
        return 0 if writer.held else writer.count


def cassette_to_stream_frames(cassette: Any, key: Any, *, stream_id: int,
                              metadata: Any = None,
                              limits: Optional[StreamFrameLimits] = None,
                              clock: Callable[[], float] = time.monotonic) -> Iterator[Frame]:
    """The frames of the stream recorded under ``key``, replayed lazily from
    the cassette (see :func:`stream_to_frames` for limits). ``KeyError`` when
    the cassette holds no stream for ``key``."""
    items = cassette.get_stream(key)
    if items is None:
        raise KeyError(key)
    return stream_to_frames(items, stream_id=stream_id, metadata=metadata, limits=limits,
                            clock=clock)
