"""Test faults: a node that drops, duplicates, reorders, delays, corrupts or
stalls what it sends, or disconnects, at a chosen frame.

Never on by default: a node injects faults only when it was given a
``Faults`` (``Node(..., faults=Faults(...))``). Each ``Fault`` picks frames
the node sends after the handshake, by kind and stream id, and acts on the
``nth`` matching one of a connection and the ``count - 1`` after it:

- ``drop``: the frame is not sent;
- ``duplicate``: the frame is sent twice;
- ``reorder``: the frame is held back and sent after the next frame;
- ``delay``: the frame and everything after it on the connection go out
  ``delay`` seconds later (TCP keeps order, so later frames wait too);
- ``corrupt``: one payload byte is flipped (the receiver's payload CRC
  refuses it; a frame without payload gets a header byte flipped);
- ``stall``: nothing more is sent on the connection (a hung peer; the
  connection stays open);
- ``disconnect``: the connection is aborted before the frame.

A node with faults enabled also serves the ``fault`` control operation of
docs/spec/frames.md (kinds ``drop``, ``duplicate``, ``reorder``, ``delay``,
``disconnect``; ``count`` chunks of the stream id it names, stream 0 = any
stream): a peer arms it on its own connection, counted there. Without ``Faults`` that
operation is refused.

``Faults.fired(action)`` counts what fired, and ``Faults.wait(action)``
blocks until one did (a handshake for tests: no sleeping).
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from ..frames import FrameKind

__all__ = ["Fault", "Faults", "ACTIONS", "WIRE_ACTIONS"]

#: What a fault can do to a frame.
ACTIONS = ("drop", "duplicate", "reorder", "delay", "corrupt", "stall", "disconnect")
#: The kinds the ``fault`` control operation may arm over the wire.
WIRE_ACTIONS = ("drop", "duplicate", "reorder", "delay", "disconnect")
_HEADER = 36
log = logging.getLogger("fabric.node")


@dataclass(frozen=True)
class Fault:
    """One fault: ``action`` on the ``nth`` (1-based) frame the node sends
    (over all its connections) that matches ``kind`` (a ``FrameKind`` name, None = any kind) and
    ``stream`` (a stream id, None = any), and on the ``count - 1`` matching
    frames after it. ``delay`` is the seconds of a ``delay``."""

    action: str
    kind: str | None = None
    nth: int = 1
    count: int = 1
    stream: int | None = None
    delay: float = 0.05

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"Fault.action must be one of {ACTIONS}, not {self.action!r}")
        if self.kind is not None and self.kind not in FrameKind.__members__:
            raise ValueError(f"Fault.kind must be a FrameKind name or None, not {self.kind!r}")
        for name in ("nth", "count"):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"Fault.{name} must be an int >= 1, not {v!r}")
        if self.stream is not None and (not isinstance(self.stream, int)
                                        or isinstance(self.stream, bool) or self.stream < 0):
            raise ValueError(f"Fault.stream must be a stream id >= 0 or None, not "
                             f"{self.stream!r}")
        if not isinstance(self.delay, (int, float)) or not 0 <= self.delay <= 60:
            raise ValueError(f"Fault.delay must be seconds in [0, 60], not {self.delay!r}")

    @classmethod
    def parse(cls, spec: str) -> "Fault":
        """``ACTION[:KIND[:NTH[:COUNT]]]``, e.g. ``stall:STREAM_CHUNK:3``."""
        if not isinstance(spec, str):
            raise TypeError(f"a fault is a str ACTION[:KIND[:NTH[:COUNT]]], not "
                            f"{type(spec).__name__}")
        parts = spec.split(":")
        try:
            return cls(parts[0], (parts[1] or None) if len(parts) > 1 else None,
                       int(parts[2]) if len(parts) > 2 else 1,
                       int(parts[3]) if len(parts) > 3 else 1)
        except (ValueError, IndexError) as exc:
            raise ValueError(f"a fault is ACTION[:KIND[:NTH[:COUNT]]], not {spec!r}: "
                             f"{exc}") from None

    def _matches(self, kind: int, sid: int) -> bool:
        return ((self.kind is None or FrameKind[self.kind] == kind)
                and (self.stream is None or self.stream == 0 or self.stream == sid))


class Faults:
    """The faults a node injects; each counts the frames it matched across
    the node's connections, so a fault fires once (``count`` frames), not
    once per connection."""

    def __init__(self, *faults: Fault):
        for f in faults:
            if not isinstance(f, Fault):
                raise TypeError(f"Faults takes Fault objects, not {type(f).__name__}")
        self.faults = tuple(faults)
        self.armed: list[list[Any]] = [[f, 0] for f in faults]  # [fault, frames matched]
        self._fired: dict[str, int] = {}
        self._cond = threading.Condition()

    def _fire(self, action: str) -> None:
        with self._cond:
            self._fired[action] = self._fired.get(action, 0) + 1
            self._cond.notify_all()

    def fired(self, action: str | None = None) -> int:
        """How many frames a fault acted on (of ``action``, or of any)."""
        with self._cond:
            if action is None:
                return sum(self._fired.values())
            return self._fired.get(action, 0)

    def wait(self, action: str, n: int = 1, timeout: float = 30.0) -> None:
        """Block until ``action`` fired ``n`` times; ``TimeoutError`` after
        ``timeout`` seconds (a bound, not a synchronisation)."""
        with self._cond:
            if not self._cond.wait_for(lambda: self._fired.get(action, 0) >= n, timeout):
                raise TimeoutError(f"fault {action!r} did not fire {n} time(s) "
                                   f"within {timeout} s")

    def connection(self, write: Callable[[bytes], None], abort: Callable[[], None],
                   call_later: Callable[..., Any]) -> "ConnectionFaults":
        """The faults of one connection, writing through ``write``."""
        return ConnectionFaults(self, write, abort, call_later)


class ConnectionFaults:
    """One connection's view: counters per fault, held and delayed frames."""

    def __init__(self, faults: Faults, write: Callable[[bytes], None],
                 abort: Callable[[], None], call_later: Callable[..., Any]):
        self.owner = faults
        self.armed: list[list[Any]] = []  # armed on this connection: [fault, matched]
        self._write = write
        self._abort = abort
        self._call_later = call_later
        self._held: bytes | None = None  # a reordered frame, sent after the next
        self._delayed: list[bytes] | None = None  # frames waiting out a delay
        self._stalled = False
        self._closed = False

    def arm(self, fault: Fault) -> None:
        """Add a fault on this connection (the wire ``fault`` operation)."""
        self.armed.append([fault, 0])

    def send(self, data: bytes) -> None:
        """Send ``data`` (whole frames) with the faults applied."""
        if self._closed:
            return
        view = memoryview(data)
        i = 0
        while i + _HEADER <= len(view):
            n = int.from_bytes(view[i + 24:i + 28], "big")
            frame = bytes(view[i:i + _HEADER + n])
            i += _HEADER + n
            self._frame(frame)
            if self._closed:
                return
        if i < len(view):  # not whole frames: passed through as they are
            self._out(bytes(view[i:]))

    def _frame(self, frame: bytes) -> None:
        kind, sid = frame[5], int.from_bytes(frame[8:16], "big")
        action = None
        fault = None
        if kind != FrameKind.HELLO:
            for entry in self.owner.armed + self.armed:
                f = entry[0]
                if f._matches(kind, sid):
                    entry[1] += 1
                    if f.nth <= entry[1] < f.nth + f.count and action is None:
                        action, fault = f.action, f
        if action is None:
            self._out(frame)
            return
        self.owner._fire(action)
        log.warning("test fault %s fired on a %s frame of stream %d", action,
                    FrameKind(kind).name, sid)
        if action == "drop":
            return
        if action == "duplicate":
            self._out(frame)
            self._out(frame)
        elif action == "reorder":
            if self._held is not None:
                self._out(frame)
            else:
                self._held = frame
        elif action == "corrupt":
            b = bytearray(frame)
            b[_HEADER if len(b) > _HEADER else 20] ^= 0xFF
            self._out(bytes(b))
        elif action == "delay":
            if self._delayed is None:
                self._delayed = []
                self._call_later(fault.delay, self._flush_delayed)  # type: ignore[union-attr]
            self._delayed.append(frame)
        elif action == "stall":
            self._stalled = True
        elif action == "disconnect":
            self._closed = True
            self._abort()

    def _out(self, frame: bytes) -> None:
        if self._stalled:
            return
        if self._delayed is not None:
            self._delayed.append(frame)
            return
        self._write(frame)
        if self._held is not None:
            held, self._held = self._held, None
            self._write(held)

    def _flush_delayed(self) -> None:
        frames, self._delayed = self._delayed or [], None
        if self._closed:
            return
        for f in frames:
            self._out(f)
