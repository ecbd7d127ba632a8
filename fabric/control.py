"""StreamControl: the control plane that drives a remote stream.

Eight operations travel as ``CONTROL`` frames whose payload is a canonical
msgpack map ``{"op": <name>, <fields>...}`` (docs/spec/frames.md, "Control
frames"). Each operation needs a capability, and any use over the network
also needs ``stream.remote.network``. Capabilities are checked when a control
is encoded (:meth:`StreamControl.to_frame`) *and* when one is received
(:meth:`StreamControl.from_frame`): a peer cannot talk its way past the
receiver's grants. Unknown operations, unknown fields, missing fields and
fields of the wrong type are refused with :class:`fabric.FrameError` naming
the field and the offset.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Optional

from ._core import (
    CapabilityDenied,
    Frame,
    FrameError,
    StreamFrameLimits,
    canonical_bytes,
)
from .frames import FrameKind

__all__ = [
    "CONTROL_CAPABILITIES",
    "FAULT_KINDS",
    "REMOTE_CAPABILITY",
    "StreamControl",
]

#: Operation -> the capability it needs.
CONTROL_CAPABILITIES: Mapping[str, str] = {
    "open": "stream.open",
    "next": "stream.read",
    "push": "stream.push",
    "close": "stream.cancel",
    "cancel": "stream.cancel",
    "stats": "stream.stats",
    "metadata": "stream.stats",
    "fault": "stream.stats",
}

#: Needed in addition for any remote use (every frame round trip).
REMOTE_CAPABILITY = "stream.remote.network"

#: The faults a ``fault`` operation may inject.
FAULT_KINDS = ("drop", "reorder", "duplicate", "delay", "cancel", "timeout", "disconnect",
               "reconnect", "unsupported-profile")


def _positive_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v >= 1


# op -> (required fields, optional fields); each field has a check and a
# description used in refusals.
_FIELD_CHECKS = {
    "metadata": (lambda v: isinstance(v, dict), "a map"),
    "limit": (_positive_int, "a positive int"),
    "item": (lambda v: True, "any value"),
    "reason": (lambda v: isinstance(v, str), "a str"),
    "kind": (lambda v: v in FAULT_KINDS, "one of " + ", ".join(FAULT_KINDS)),
    "count": (_positive_int, "a positive int"),
}
_FIELDS = {
    "open": ((), ("metadata",)),
    "next": (("limit",), ()),
    "push": (("item",), ()),
    "close": ((), ()),
    "cancel": ((), ("reason",)),
    "stats": ((), ()),
    "metadata": ((), ()),
    "fault": (("kind", "count"), ()),
}


class StreamControl:
    """One control operation on a stream: ``op``, ``stream_id`` and ``fields``.

    Build with the class methods (``StreamControl.next(7, limit=16)``) or
    ``StreamControl(op, stream_id, **fields)``; the fields are validated
    either way. Immutable and comparable.
    """

    __slots__ = ("_op", "_stream_id", "_fields")

    def __init__(self, op: str, stream_id: int, **fields: Any):
        _validate(op, fields, None)
        if not isinstance(stream_id, int) or isinstance(stream_id, bool) or not (
                0 <= stream_id < 1 << 64):
            raise ValueError("stream_id must be an int in [0, 2**64), got %r" % (stream_id,))
        object.__setattr__(self, "_op", op)
        object.__setattr__(self, "_stream_id", stream_id)
        object.__setattr__(self, "_fields", dict(fields))

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError("StreamControl is immutable")

    # -- constructors, one per operation --------------------------------------
    @classmethod
    def open(cls, stream_id: int, metadata: Optional[dict] = None) -> "StreamControl":
        """Open the stream (``stream.open``), optionally with metadata."""
        return cls("open", stream_id, **({} if metadata is None else {"metadata": metadata}))

    @classmethod
    def next(cls, stream_id: int, limit: int = 1) -> "StreamControl":
        """Ask for up to ``limit`` more items (``stream.read``)."""
        return cls("next", stream_id, limit=limit)

    @classmethod
    def push(cls, stream_id: int, item: Any) -> "StreamControl":
        """Push one item into the stream (``stream.push``)."""
        return cls("push", stream_id, item=item)

    @classmethod
    def close(cls, stream_id: int) -> "StreamControl":
        """Close the stream after what is in flight (``stream.cancel``)."""
        return cls("close", stream_id)

    @classmethod
    def cancel(cls, stream_id: int, reason: Optional[str] = None) -> "StreamControl":
        """Cancel the stream now (``stream.cancel``)."""
        return cls("cancel", stream_id, **({} if reason is None else {"reason": reason}))

    @classmethod
    def stats(cls, stream_id: int) -> "StreamControl":
        """Ask for the stream's statistics (``stream.stats``)."""
        return cls("stats", stream_id)

    @classmethod
    def metadata(cls, stream_id: int) -> "StreamControl":
        """Ask for the stream's metadata (``stream.stats``)."""
        return cls("metadata", stream_id)

    @classmethod
    def fault(cls, stream_id: int, kind: str, count: int = 1) -> "StreamControl":
        """Inject ``count`` faults of ``kind`` (one of FAULT_KINDS; ``stream.stats``)."""
        return cls("fault", stream_id, kind=kind, count=count)

    # -- accessors -------------------------------------------------------------
    @property
    def op(self) -> str:
        """The operation name."""
        return self._op

    @property
    def stream_id(self) -> int:
        """The stream the operation applies to."""
        return self._stream_id

    @property
    def fields(self) -> dict:
        """A copy of the operation's fields."""
        return dict(self._fields)

    def __getattr__(self, name: str) -> Any:
        fields = object.__getattribute__(self, "_fields")
        if name in fields:
            return fields[name]
        raise AttributeError(name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, StreamControl):
            return NotImplemented
        return (self._op, self._stream_id, canonical_bytes(self._fields)) == (
            other._op, other._stream_id, canonical_bytes(other._fields))

    def __hash__(self) -> int:
        return hash((self._op, self._stream_id, canonical_bytes(self._fields)))

    def __repr__(self) -> str:
        args = "".join(", %s=%r" % kv for kv in sorted(self._fields.items()))
        return "StreamControl(%r, %d%s)" % (self._op, self._stream_id, args)

    # -- capabilities ------------------------------------------------------------
    def required_capabilities(self, *, remote: bool = True) -> tuple:
        """The capabilities this operation needs (remote use adds
        ``stream.remote.network``)."""
        caps = (CONTROL_CAPABILITIES[self._op],)
        return caps + (REMOTE_CAPABILITY,) if remote else caps

    def check(self, grants: Iterable[str], *, remote: bool = True) -> None:
        """Raise :class:`fabric.CapabilityDenied` naming the first missing
        capability, if grants lack one."""
        granted = _grant_set(grants)
        for cap in self.required_capabilities(remote=remote):
            if cap not in granted:
                err = CapabilityDenied(
                    "StreamControl %r on stream %d needs capability %r, which is not granted"
                    % (self._op, self._stream_id, cap))
                err.capability = cap
                # The control op too; CapabilityDenied itself declares only .capability.
                err.op = self._op  # type: ignore[attr-defined]
                raise err

    # -- frames ---------------------------------------------------------------------
    def to_payload(self) -> bytes:
        """The canonical msgpack payload of the CONTROL frame."""
        body = dict(self._fields)
        body["op"] = self._op
        return canonical_bytes(body)

    def to_frame(self, grants: Iterable[str], *, seq: int = 0) -> Frame:
        """The CONTROL frame, after checking grants (the operation's capability
        and ``stream.remote.network``)."""
        self.check(grants, remote=True)
        return Frame(FrameKind.CONTROL, self.to_payload(), stream_id=self._stream_id, seq=seq)

    @classmethod
    def from_frame(cls, frame: Frame, grants: Iterable[str], *,
                   limits: Optional[StreamFrameLimits] = None) -> "StreamControl":
        """Decode and check a received CONTROL frame.

        Raises :class:`fabric.FrameError` for a frame that is not CONTROL, a
        payload that is not a map of known fields for a known operation;
        :class:`fabric.DecodeError` for a payload that is not valid msgpack
        within limits; :class:`fabric.CapabilityDenied` when grants lack the
        operation's capability or ``stream.remote.network``.
        """
        if not isinstance(frame, Frame):
            raise TypeError("from_frame() takes a Frame, not %s" % type(frame).__name__)
        if frame.kind != FrameKind.CONTROL:
            raise _control_error("a %s frame is not a control" % frame.kind_name, frame)
        body = frame.decode_payload(limits)  # DecodeError names the offset
        if not isinstance(body, dict):
            raise _control_error("control payload must be a map, got %s"
                                 % type(body).__name__, frame)
        for key in body:
            if not isinstance(key, str):
                raise _control_error("control field name %r is not a str" % (key,), frame)
        if "op" not in body:
            raise _control_error("control payload has no 'op' field", frame)
        op = body.pop("op")
        _validate(op, body, frame)
        ctl = cls(op, frame.stream_id, **body)
        ctl.check(grants, remote=True)
        return ctl


def _grant_set(grants: Iterable[str]) -> frozenset:
    if isinstance(grants, str):
        raise TypeError("grants must be an iterable of capability names, not one str")
    return frozenset(grants)


def _control_error(message: str, frame: Optional[Frame]) -> FrameError:
    # A frame built locally has no stream position: its payload counts from 0,
    # as in Frame.decode_payload().
    offset = None if frame is None else (frame.payload_offset or 0)
    if offset is not None:
        message = "%s (payload at offset %d)" % (message, offset)
    err = FrameError(message)
    err.offset = offset
    err.frame_offset = None if frame is None else frame.offset
    err.violation = "control"
    return err


def _validate(op: Any, fields: Mapping[str, Any], frame: Optional[Frame]) -> None:
    # Constructing by hand raises ValueError; a received frame FrameError
    # (itself a ValueError) with the offset.
    def refuse(message: str) -> Exception:
        if frame is None:
            return ValueError(message)
        return _control_error(message, frame)

    if not isinstance(op, str) or op not in _FIELDS:
        raise refuse("unknown control operation %r (known: %s)"
                     % (op, ", ".join(_FIELDS)))
    required, optional = _FIELDS[op]
    for name in required:
        if name not in fields:
            raise refuse("control %r is missing its field %r" % (op, name))
    for name, value in fields.items():
        if name not in required and name not in optional:
            raise refuse("control %r has an unknown field %r" % (op, name))
        check, what = _FIELD_CHECKS[name]
        if not check(value):
            raise refuse("control %r field %r must be %s, got %r" % (op, name, what, value))
