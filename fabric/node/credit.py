"""Per-stream credit (seed 002): a sender may have at most ``window`` payload
bytes of a stream sent and not yet consumed by the receiver.

The receiver grants credit by telling the *cumulative* bytes it consumed,
so grants heal themselves (a lost grant is covered by the next) and a stale
one (not above the last) is ignored; a grant above the bytes sent is
clamped to them. ``window == 0`` means unbounded. One frame may always be
sent when nothing is in flight, and the window is never smaller than the
largest frame agreed, so a stream never stalls on one large frame.

``StreamTable`` keeps the streams of one connection: each open of a stream
id gets a new epoch and a handle from an earlier epoch fails
(``StaleStream``); grants for an id that is closed are dropped.
"""

from __future__ import annotations

import asyncio
from typing import Any

from .._core import FabricError
from .protocol import Backpressure

__all__ = ["Credit", "StreamTable", "StaleStream"]


class StaleStream(FabricError, LookupError):
    """A handle from an earlier epoch of a stream id (or a closed stream)."""


class Credit:
    """The sending side's credit for one stream."""

    __slots__ = ("window", "sent", "consumed", "tx_seq", "backpressure_events",
                 "grants_received", "_wake", "closed")

    def __init__(self, window: int):
        if not isinstance(window, int) or window < 0:
            raise ValueError(f"a credit window is an int >= 0 bytes, not {window!r}")
        self.window = window
        self.sent = 0
        self.consumed = 0
        self.tx_seq = 0
        self.backpressure_events = 0
        self.grants_received = 0
        self._wake: asyncio.Event | None = None
        self.closed = False

    @property
    def remaining(self) -> int:
        """Bytes that may be sent now (-1 when unbounded)."""
        if self.window == 0:
            return -1
        return max(0, self.window - (self.sent - self.consumed))

    def can_send(self, n: int) -> bool:
        return (self.window == 0 or self.sent == self.consumed
                or self.sent - self.consumed + n <= self.window)

    def take(self, n: int) -> None:
        """Account ``n`` bytes sent; ``Backpressure`` (nothing taken) without credit."""
        if not self.can_send(n):
            self.backpressure_events += 1
            raise Backpressure(f"no credit for {n} bytes: {self.remaining} of the "
                               f"{self.window}-byte window left")
        self.sent += n
        self.tx_seq += 1

    async def wait(self, n: int) -> None:
        """Wait until ``n`` bytes may be sent, then take them."""
        if not self.can_send(n):
            self.backpressure_events += 1
        while not self.can_send(n):
            if self.closed:
                raise StaleStream("the stream closed while waiting for credit")
            if self._wake is None:
                self._wake = asyncio.Event()
            self._wake.clear()
            await self._wake.wait()
        self.sent += n
        self.tx_seq += 1

    def grant(self, consumed: Any) -> bool:
        """Apply a grant (cumulative bytes consumed). Returns False when it
        was stale (ignored); a grant above ``sent`` is clamped."""
        if not isinstance(consumed, int) or isinstance(consumed, bool) or consumed < 0:
            raise ValueError(f"a credit grant is an int >= 0, not {consumed!r}")
        self.grants_received += 1
        consumed = min(consumed, self.sent)
        if consumed <= self.consumed:
            return False
        self.consumed = consumed
        if self._wake is not None:
            self._wake.set()
        return True

    def close(self) -> None:
        self.closed = True
        if self._wake is not None:
            self._wake.set()

    def stats(self) -> dict[str, int]:
        return {"tx_seq": self.tx_seq, "bytes_sent": self.sent, "consumed": self.consumed,
                "credit_remaining": self.remaining,
                "backpressure_events": self.backpressure_events,
                "grants_received": self.grants_received}


class StreamTable:
    """The open streams of one connection, with an epoch per open of an id."""

    def __init__(self) -> None:
        self._open: dict[int, tuple[int, Any]] = {}
        self._epochs: dict[int, int] = {}
        self.dropped_grants = 0

    def open(self, stream_id: int, state: Any) -> tuple[int, int]:
        """Open ``stream_id`` with ``state``; returns its handle (id, epoch)."""
        if stream_id in self._open:
            raise FabricError(f"stream {stream_id} is already open")
        epoch = self._epochs.get(stream_id, 0) + 1
        self._epochs[stream_id] = epoch
        self._open[stream_id] = (epoch, state)
        return stream_id, epoch

    def get(self, handle: tuple[int, int]) -> Any:
        """The state of an open stream; ``StaleStream`` for an old epoch or a closed id."""
        sid, epoch = handle
        entry = self._open.get(sid)
        if entry is None or entry[0] != epoch:
            raise StaleStream(f"stream {sid} epoch {epoch} is not open "
                              f"(current epoch {self._epochs.get(sid, 0)})")
        return entry[1]

    def find(self, stream_id: int) -> Any:
        """The state of the open stream ``stream_id``, or None (a frame for a
        just-closed id, such as a late grant, is dropped by the caller)."""
        entry = self._open.get(stream_id)
        return None if entry is None else entry[1]

    def handle(self, stream_id: int) -> tuple[int, int] | None:
        """The handle (id, epoch) of the open stream ``stream_id``, or None."""
        entry = self._open.get(stream_id)
        return None if entry is None else (stream_id, entry[0])

    def items(self) -> list[tuple[int, int, Any]]:
        """(id, epoch, state) of each open stream (a copy: safe from any thread)."""
        return [(sid, e, st) for sid, (e, st) in list(self._open.items())]

    def close(self, handle: tuple[int, int]) -> Any:
        state = self.get(handle)
        del self._open[handle[0]]
        return state

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Any:
        return iter([s for _e, s in self._open.values()])
