"""The sync client's reply, taken whole (``FrameDecoder.take_reply``) when it
is the usual START, CHUNK, END, and checked as frame by frame: against a
scripted node on a loopback socket that answers each open with the bytes a
test gives, in reads of any size."""

import socket
import struct
import threading
import time

import pytest

import fabric
from fabric._core import FrameDecoder, canonical_bytes
from fabric.frames import FrameKind
from fabric.node import connect, protocol as P
from fabric.replies import reply_record

import node_ops


def _record(x):
    return canonical_bytes(reply_record(fabric.LocalFabric().evaluate(
        node_ops.double.request(x))))


def _end(record, **over):
    return canonical_bytes({"chunks": 1, "bytes": len(record), "truncated": False, **over})


def _start(source="held"):
    return canonical_bytes({"metadata": {"source": source}})


class ScriptedNode:
    """A listening socket on 127.0.0.1: the handshake, then each CONTROL open
    answered with ``answer(sid, open_number)`` (bytes), sent ``step`` bytes
    per write (0: all at once)."""

    def __init__(self, answer, step=0):
        self.answer = answer
        self.step = step
        self.opens = 0
        self.lock = threading.Lock()
        self.srv = socket.create_server(("127.0.0.1", 0))
        self.url = f"fabric://127.0.0.1:{self.srv.getsockname()[1]}"
        self.conns = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                s, _ = self.srv.accept()
            except OSError:
                return
            self.conns.append(s)
            threading.Thread(target=self._serve, args=(s,), daemon=True).start()

    def _serve(self, s):
        dec = FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        enc = P.encoder()
        try:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    return
                dec.feed(data)
                for f in dec:
                    if f.kind == FrameKind.HELLO:
                        s.sendall(enc.encode_value(FrameKind.HELLO, P.hello(
                            node="scripted", max_frame=P.DEFAULT_MAX_FRAME,
                            window=P.DEFAULT_WINDOW, principal="anyone", grants=["*"])))
                    elif f.kind == FrameKind.CONTROL:
                        with self.lock:
                            self.opens += 1
                            n = self.opens
                        out = self.answer(f.stream_id, n)
                        if not self.step:
                            s.sendall(out)
                        for i in range(0, len(out), self.step or len(out) or 1):
                            if self.step:
                                s.sendall(out[i:i + self.step])
        except OSError:
            return

    def close(self):
        self.srv.close()
        for s in self.conns:
            try:
                s.close()
            except OSError:
                pass


@pytest.fixture
def scripted():
    made = []

    def make(answer, step=0):
        n = ScriptedNode(answer, step)
        made.append(n)
        return n

    yield make
    for n in made:
        n.close()


def _reply(sid, record, *, end=None, source="held"):
    return P.encoder().encode_reply(sid, _start(source), record, end or _end(record))


@pytest.mark.parametrize("step", [0, 1, 7, 40])
def test_the_usual_reply_in_reads_of_any_size(scripted, step):
    record = _record(21)
    n = scripted(lambda sid, i: _reply(sid, record, source="home" if i % 2 else "held"),
                 step)
    with connect(n.url, timeout=30) as c:
        for i in range(1, 7):
            got = c.evaluate(node_ops.double.request(21))
            assert got.value == 42
            assert got.source == ("home" if i % 2 else "peer:scripted")


def test_frames_of_a_call_given_up_on_are_skipped(scripted):
    record = _record(5)
    other = _record(6)
    # a whole reply on another stream id first (a call this side gave up on)
    n = scripted(lambda sid, i: _reply(sid + 1000, other) + _reply(sid, record))
    with connect(n.url, timeout=30) as c:
        for _ in range(3):
            assert c.evaluate(node_ops.double.request(5)).value == 10


def test_an_end_that_does_not_account_for_the_chunk_is_refused(scripted):
    record = _record(3)
    lie = _end(record, bytes=len(record) + 1)
    n = scripted(lambda sid, i: _reply(sid, record, end=lie if i == 1 else None))
    with connect(n.url, timeout=30) as c:
        with pytest.raises(P.ProtocolError, match="ended a reply with"):
            c.evaluate(node_ops.double.request(3))
        # the channel closed: the next call makes a new one, answered
        assert c.evaluate(node_ops.double.request(3)).value == 6


def test_an_end_seen_before_with_another_size_is_checked_again(scripted):
    small, big = _record(1), _record("x" * 100)
    lie = _end(small)  # accounts for small's size, sent with big's chunk
    n = scripted(lambda sid, i: _reply(sid, small) if i == 1 else _reply(sid, big, end=lie))
    with connect(n.url, timeout=30) as c:
        assert c.evaluate(node_ops.double.request(1)).value == 2
        with pytest.raises(P.ProtocolError, match="ended a reply with"):
            c.evaluate(node_ops.double.request("x" * 100))


def test_a_whole_reply_after_a_chunk_of_its_stream_is_refused(scripted):
    record = _record(2)
    enc = P.encoder()

    def answer(sid, i):
        if i == 1:  # a chunk first, then the whole reply: frames repeated
            return enc.encode_value(FrameKind.STREAM_CHUNK, record, stream_id=sid,
                                    seq=1) + _reply(sid, record)
        return _reply(sid, record)

    n = scripted(answer)
    with connect(n.url, timeout=30) as c:
        with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
            c.evaluate(node_ops.double.request(2))
        assert c.evaluate(node_ops.double.request(2)).value == 4


def test_a_chunk_that_does_not_decode_ends_the_connection(scripted):
    record = _record(4)
    enc = P.encoder()

    def answer(sid, i):
        if i == 1:  # a CHUNK whose payload is not one msgpack value
            bad = enc.encode(FrameKind.STREAM_CHUNK, b"\xc4\x10abc", stream_id=sid, seq=1)
            return (enc.encode(FrameKind.STREAM_START, _start(), stream_id=sid) + bad +
                    enc.encode(FrameKind.STREAM_END, _end(record), stream_id=sid, seq=2))
        return _reply(sid, record)

    n = scripted(answer)
    with connect(n.url, timeout=30) as c:
        with pytest.raises(fabric.FabricUnavailable, match="was lost"):
            c.evaluate(node_ops.double.request(4))
        assert c.evaluate(node_ops.double.request(4)).value == 8


# ---- the blocking connection's time limits -----------------------------------------

def test_the_blocking_connection_waits_in_the_kernel_not_in_poll(scripted):
    # A socket with a Python timeout polls before every send and every read:
    # the plain TCP connection stays in blocking mode, the kernel keeping the
    # call's time limit (SO_RCVTIMEO, SO_SNDTIMEO), set when it changes.
    record = _record(4)
    n = scripted(lambda sid, i: _reply(sid, record))
    with connect(n.url, timeout=30) as c:
        assert c.evaluate(node_ops.double.request(4)).value == 8
        sock = c._local.channel.sock
        assert sock.gettimeout() is None
        for opt in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            assert struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, opt, 16)) == (30, 0)
        assert c.evaluate(node_ops.double.request(4), timeout=2.5).value == 8
        assert struct.unpack("@ll", sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO,
                                                    16)) == (2, 500000)


@pytest.mark.parametrize("cut", ["nothing", "half a reply"])
def test_a_reply_that_does_not_come_misses_the_deadline_and_the_next_call_goes_on(
        scripted, cut):
    record = _record(9)
    whole = _reply(1, record)

    def answer(sid, i):
        if i == 1:  # the first call: nothing, or half its reply, then silence
            return b"" if cut == "nothing" else _reply(sid, record)[:len(whole) // 2]
        return _reply(sid, record)

    n = scripted(answer)
    with connect(n.url, timeout=30) as c:
        t0 = time.monotonic()
        with pytest.raises(fabric.DeadlineExceeded, match="did not answer"):
            c.evaluate(node_ops.double.request(9), timeout=0.3)
        assert time.monotonic() - t0 >= 0.29  # waited its time limit, not less
        assert c.evaluate(node_ops.double.request(9)).value == 18  # on a new connection


def test_a_sync_stream_that_stalls_misses_its_deadline(scripted):
    enc = P.encoder()

    def answer(sid, i):  # START and one item, then silence
        return (enc.encode(FrameKind.STREAM_START, _start(), stream_id=sid)
                + enc.encode_item(FrameKind.STREAM_CHUNK, 7, stream_id=sid, seq=1))

    n = scripted(answer)
    with connect(n.url, timeout=30) as c:
        it = iter(c.stream(node_ops.count.request(3), timeout=0.3))
        assert next(it) == 7
        with pytest.raises(fabric.DeadlineExceeded, match="sent nothing"):
            next(it)
