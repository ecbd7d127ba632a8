"""Streams on a node's connection (seed 002): drain-then-close and
drop-and-close, per-stream stats on both ends, epochs of a stream id, and
grants for a just-closed id."""

import asyncio
import socket
import threading

import pytest

import fabric
from fabric.control import StreamControl
from fabric.frames import FrameKind
from fabric.node import NodeLimits, connect, protocol as P

import node_ops
from conftest import hello_bytes

_CTL = ["stream.open", "stream.cancel", "stream.remote.network"]
SMALL = dict(window=4096, max_frame=4096)  # a few 1000-byte items in flight


def _bounded_until(pred, n=200_000):
    for _ in range(n):
        if pred():
            return True
    return False


@fabric.op("streams.endless")
def endless(tag):
    for i in range(10 ** 9):
        yield bytes([i % 256]) * 1000


class Raw:
    """A client speaking the protocol on a plain socket."""

    def __init__(self, n):
        self.s = socket.create_connection(n.address, timeout=30)
        self.dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        self.s.sendall(hello_bytes())
        assert self.next().kind == FrameKind.HELLO

    def next(self):
        while True:
            for f in self.dec:
                return f
            data = self.s.recv(1 << 16)
            assert data, "the node closed the connection"
            self.dec.feed(data)

    def open(self, sid, req, want="value"):
        meta = P.open_metadata(req, want=want, scope="compute", grants=(), timeout=None)
        self.s.sendall(StreamControl.open(sid, meta).to_frame(_CTL).encode())

    def send(self, ctl):
        self.s.sendall(ctl.to_frame(_CTL).encode())

    def credit(self, sid, consumed):
        self.s.sendall(P.encoder().encode_value(FrameKind.CREDIT, {"consumed": consumed},
                                                stream_id=sid))

    def until_pong(self, tag=b"sync"):
        """Every frame the node sent before it answered a PING (frames are
        handled in order: what came before the PING was handled)."""
        self.s.sendall(P.encoder().encode(FrameKind.PING, tag, stream_id=0))
        out = []
        while True:
            f = self.next()
            if f.kind == FrameKind.PONG and bytes(f.payload) == tag:
                return out
            out.append(f)

    def close(self):
        self.s.close()


# ---- drain-then-close and drop-and-close ------------------------------------------

def test_drain_then_close_delivers_what_was_queued_then_ends(node):
    n = node(limits=NodeLimits(**SMALL))
    with connect(n.url, **SMALL) as c:
        s = c.stream(endless.request("drain"))
        assert next(s) == b"\x00" * 1000
        s.close(drain=True)
        rest = list(s)  # the items the node had produced, then its end: no error
        assert s.done
        # a contiguous, lossless prefix, and the producer stopped
        assert rest == [bytes([i % 256]) * 1000 for i in range(1, len(rest) + 1)]
        assert len(rest) < 20
        assert s.stats()["state"] == "ended"
        assert _bounded_until(lambda: n.stats().get("streams_drained", 0) == 1)
        assert c.evaluate(node_ops.double.request(2)).value == 4  # the channel goes on
    assert n.stats().get("streams_dropped", 0) == 0


def test_drain_then_close_of_an_async_stream(node):
    n = node(limits=NodeLimits(**SMALL))
    with connect(n.url, **SMALL) as c:
        async def main():
            s = c.astream(endless.request("adrain"))
            first = await s.__anext__()
            await s.aclose(drain=True)
            return first, [x async for x in s], s
        first, rest, s = asyncio.run(main())
    assert first == b"\x00" * 1000
    assert rest == [bytes([i % 256]) * 1000 for i in range(1, len(rest) + 1)]
    assert len(rest) < 20 and s.done
    assert n.stats()["streams_drained"] == 1


def test_drop_and_close_ends_the_stream_at_once_with_a_diagnostic(node):
    """On the wire: after a cancel the node's last frame on the stream is an
    ERROR saying it dropped the queued data; no frame of it follows."""
    n = node(limits=NodeLimits(**SMALL))
    raw = Raw(n)
    try:
        raw.open(1, endless.request("drop"), want="stream")
        assert raw.next().kind == FrameKind.STREAM_START
        assert raw.next().kind == FrameKind.STREAM_CHUNK  # the producer is running
        raw.send(StreamControl.cancel(1))
        frames = raw.until_pong()
        ends = [i for i, f in enumerate(frames) if f.kind == FrameKind.ERROR]
        assert len(ends) == 1 and ends[0] == len(frames) - 1, [f.kind_name for f in frames]
        body = frames[-1].decode_payload(raw.dec.limits)
        assert "drop-and-close" in body["message"] and "dropped" in body["message"]
        assert all(f.kind == FrameKind.STREAM_CHUNK for f in frames[:-1])
        assert not any(f.kind == FrameKind.STREAM_END for f in frames)
    finally:
        raw.close()
    assert _bounded_until(lambda: n.stats().get("streams_dropped", 0) == 1)


def test_a_client_stream_closed_without_drain_is_dropped(node):
    n = node(limits=NodeLimits(**SMALL))
    with connect(n.url, **SMALL) as c:
        s = c.stream(endless.request("cdrop"))
        assert next(s) == b"\x00" * 1000
        s.close()
        with pytest.raises(StopIteration):
            next(s)
        assert c.evaluate(node_ops.double.request(3)).value == 6
    assert _bounded_until(lambda: n.stats().get("streams_dropped", 0) == 1)
    assert n.stats().get("streams_drained", 0) == 0


# ---- per-stream stats ---------------------------------------------------------------

def test_per_stream_stats_on_both_ends(node):
    n = node(limits=NodeLimits(**SMALL))
    with connect(n.url, **SMALL) as c:
        s = c.stream(endless.request("stats"))
        assert next(s) == b"\x00" * 1000
        # the node's sender runs out of credit while this side does not read
        assert _bounded_until(lambda: any(
            e["backpressure_events"] >= 1 for e in n.stats()["streams"]))
        [e] = [e for e in n.stats()["streams"] if e["stream"] == s.stats()["stream"]]
        assert e["state"] == "running" and e["epoch"] == 1 and e["principal"] == "anonymous"
        assert e["tx_seq"] >= 5  # START and the items the window let through
        assert e["credit_remaining"] < 1000 and e["window"] == 4096
        assert e["rx_seq"] >= 1 and e["grants_sent"] == 0 and e["inbound_pending"] == 0
        for _ in range(20):
            next(s)
        st = s.stats()
        assert st["state"] == "open" and st["rx_seq"] == 21
        assert st["grants_sent"] >= 1 and st["tx_seq"] == 1 + st["grants_sent"]
        assert st["backpressure_events"] == 0 and st["grants_received"] == 0
        assert 0 <= st["credit_remaining"] <= 4096 and st["inbound_pending"] >= 0
        assert _bounded_until(lambda: any(e["grants_received"] >= 1
                                          for e in n.stats()["streams"]))
        s.close()
        assert _bounded_until(lambda: n.stats()["streams"] == [])

        async def main():
            a = c.astream(endless.request("astats"))
            await a.__anext__()
            st = a.stats()
            await a.aclose()
            return st
        st = asyncio.run(main())
        assert st["state"] == "open" and st["rx_seq"] >= 1 and st["tx_seq"] >= 1
        assert set(st) >= {"tx_seq", "rx_seq", "inbound_pending", "backpressure_events",
                           "credit_remaining", "grants_sent", "grants_received"}


# ---- epochs and late grants ---------------------------------------------------------

def test_a_queued_stream_closed_then_reopened_runs_only_its_new_epoch(node):
    """One slot, held by a blocked request; stream 2 opens, waits, is
    cancelled and opened again with another request: the node answers the
    new epoch only, and the request of the old one never runs."""
    gate = threading.Event()
    ran = []

    @fabric.op("streams.block")
    def block():
        gate.wait(30)
        return "unblocked"

    @fabric.op("streams.note")
    def note(x):
        ran.append(x)
        return x

    n = node(limits=NodeLimits(max_running=1))
    raw = Raw(n)
    try:
        raw.open(1, block.request())
        raw.open(2, note.request("old"))
        assert raw.until_pong(b"a") == []
        assert [(e["stream"], e["epoch"], e["state"]) for e in n.stats()["streams"]] == \
            [(1, 1, "running"), (2, 1, "queued")]
        raw.send(StreamControl.cancel(2))
        [err] = raw.until_pong(b"b")
        assert err.kind == FrameKind.ERROR and err.stream_id == 2
        assert "before it started" in err.decode_payload(raw.dec.limits)["message"]
        raw.open(2, note.request("new"))
        raw.until_pong(b"c")
        assert (2, 2) in [(e["stream"], e["epoch"]) for e in n.stats()["streams"]]
        gate.set()
        got = {}
        while len(got) < 2:
            f = raw.next()
            if f.kind == FrameKind.STREAM_END:
                got[f.stream_id] = True
            assert f.kind != FrameKind.ERROR, f.decode_payload(raw.dec.limits)
    finally:
        gate.set()
        raw.close()
    assert ran == ["new"]


def test_a_handle_of_an_earlier_epoch_fails():
    from fabric.node.credit import StaleStream, StreamTable
    t = StreamTable()
    h1 = t.open(7, "first")
    t.close(h1)
    h2 = t.open(7, "second")
    assert h2 == (7, 2) and t.get(h2) == "second"
    with pytest.raises(StaleStream, match="epoch 1"):
        t.get(h1)


def test_a_grant_for_a_just_closed_stream_is_dropped_and_counted(node):
    n = node()
    raw = Raw(n)
    try:
        raw.open(1, node_ops.count.request(3), want="stream")
        kinds = []
        while not kinds or kinds[-1] != FrameKind.STREAM_END:
            kinds.append(raw.next().kind)
        raw.credit(1, 3)  # stream 1 WAS open: it just ended
        assert raw.until_pong() == []  # nothing answers it, the connection goes on
        assert n.stats()["dropped_grants"] == 1
        raw.open(3, node_ops.double.request(4))  # and serves the next request
        assert raw.next().kind == FrameKind.STREAM_START
    finally:
        raw.close()


def test_a_connections_stream_table_stays_bounded_as_ids_come_and_go():
    """A client opens a fresh id per request: the table keeps the last
    epoch of recently closed ids only (it kept every id ever opened: one
    entry a request for as long as the connection lived), and an id it
    forgot still never gives an earlier epoch's handle to a new open."""
    import tracemalloc

    from fabric.node.credit import StaleStream, StreamTable
    t = StreamTable()
    old = t.open(1, "first")
    t.close(old)
    reopened = t.open(1, "second")
    t.close(reopened)
    assert reopened == (1, 2)

    def requests(first, n):
        for sid in range(first, first + 2 * n, 2):
            t.close(t.open(sid, None))

    tracemalloc.start()
    try:
        requests(3, 50_000)
        before = tracemalloc.get_traced_memory()[0]
        requests(100_003, 100_000)
        grown = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert grown < 64 * 1024, grown  # (every id kept: several MB)
    again = t.open(1, "third")  # id 1 was forgotten long ago
    assert again[1] > 2 and t.get(again) == "third"
    for h in (old, reopened):
        with pytest.raises(StaleStream, match=f"epoch {h[1]} is not open"):
            t.get(h)
