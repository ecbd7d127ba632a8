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
from collections import OrderedDict
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
    """The open streams of one connection, with an epoch per open of an id.

    What it keeps is bounded by the streams open plus ``KEEP_CLOSED``: the
    last epoch of the ids closed most recently (a client opens a fresh id
    for each request, so a table that kept every id closed grew by one
    entry a request for as long as its connection lived). An id forgotten
    that way starts again above every epoch forgotten (``_floor``), so a
    handle of an earlier epoch of it still fails."""

    #: How many closed ids keep their last epoch (the rest share ``_floor``).
    KEEP_CLOSED = 64

    def __init__(self) -> None:
        self._open: dict[int, tuple[int, Any]] = {}
        # closed id -> its last epoch, oldest close first (at most KEEP_CLOSED)
        self._closed: OrderedDict[int, int] = OrderedDict()
        self._floor = 0  # the highest epoch of an id no longer in _closed
        self.dropped_grants = 0

    def open(self, stream_id: int, state: Any) -> tuple[int, int]:
        """Open ``stream_id`` with ``state``; returns its handle (id, epoch)."""
        if stream_id in self._open:
            raise FabricError(f"stream {stream_id} is already open")
        epoch = self._closed.pop(stream_id, self._floor) + 1
        self._open[stream_id] = (epoch, state)
        return stream_id, epoch

    def _epoch(self, stream_id: int) -> int:
        """The current (open) or last (closed) epoch of ``stream_id``."""
        entry = self._open.get(stream_id)
        if entry is not None:
            return entry[0]
        return self._closed.get(stream_id, self._floor)

    def get(self, handle: tuple[int, int]) -> Any:
        """The state of an open stream; ``StaleStream`` for an old epoch or a closed id."""
        sid, epoch = handle
        entry = self._open.get(sid)
        if entry is None or entry[0] != epoch:
            raise StaleStream(f"stream {sid} epoch {epoch} is not open "
                              f"(current epoch {self._epoch(sid)})")
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
        sid, epoch = handle
        del self._open[sid]
        self._closed[sid] = epoch
        if len(self._closed) > self.KEEP_CLOSED:
            _sid, forgotten = self._closed.popitem(last=False)
            self._floor = max(self._floor, forgotten)
        return state

    def __len__(self) -> int:
        return len(self._open)

    def __iter__(self) -> Any:
        return iter([s for _e, s in self._open.values()])
