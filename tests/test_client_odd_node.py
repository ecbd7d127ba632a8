"""The client facing a node that sends what no node sends (a fake node on
loopback: the handshake, then what the test gives for each request's open):
a frame of a kind no node sends a client fails the call at once as a
``ProtocolError``, and a value reply past the client's ``max_reply`` fails
its call with ``LimitExceeded`` without being held (the rest of it is
dropped as it comes, or its blocking connection closed), on every path a
call takes: a thread's blocking connection (``evaluate``, ``stream``), a
loop's connection (``aevaluate``) and the client's main link (a call from
its own loop, ``astream``)."""

import asyncio
import socket
import threading
import tracemalloc

import pytest

import fabric
from fabric.control import StreamControl
from fabric.frames import FrameKind
from fabric.node import connect
from fabric.node import protocol as P

import node_ops


def _fake_node(answer):
    """A fake node on loopback: the handshake, then ``answer(sid, n)``'s
    bytes for each request's open (``n``: the opens answered before, on
    every connection the client makes); a CONTROL on a stream already
    opened (a cancel) is not answered."""
    enc = P.encoder()
    srv = socket.create_server(("127.0.0.1", 0))
    lock = threading.Lock()
    opens = [0]

    def one(conn):
        dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        seen = set()
        with conn:
            try:
                conn.sendall(enc.encode_value(FrameKind.HELLO, P.hello(
                    node="odd", max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW,
                    principal="anonymous", grants=["*"])))
                while data := conn.recv(1 << 16):
                    dec.feed(data)
                    for f in dec:
                        if f.kind == FrameKind.CONTROL and f.stream_id not in seen | {0}:
                            seen.add(f.stream_id)
                            with lock:
                                n, opens[0] = opens[0], opens[0] + 1
                            conn.sendall(answer(f.stream_id, n))
            except OSError:  # the client closed it
                return

    def accept():
        while True:
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            threading.Thread(target=one, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    return srv


def _url(srv):
    return f"fabric://127.0.0.1:{srv.getsockname()[1]}"


def _on_main_link(c, coro):
    """Run ``coro`` on the client's own loop: its calls go by the main link."""
    return asyncio.run_coroutine_threadsafe(coro, c._loop).result(60)


def _odd_frame(odd):
    enc = P.encoder()
    return {
        "control": lambda sid: StreamControl.cancel(sid).to_frame(
            ["stream.cancel", "stream.remote.network"]).encode(),
        "credit": lambda sid: enc.encode_value(FrameKind.CREDIT, {"consumed": 1},
                                               stream_id=sid),
        "hello": lambda sid: enc.encode_value(FrameKind.HELLO, {}, stream_id=0),
        "placement": lambda sid: enc.encode_value(FrameKind.PLACEMENT, {}, stream_id=sid),
        "chunk on stream 0": lambda sid: enc.encode_value(FrameKind.STREAM_CHUNK, b"x",
                                                          stream_id=0, seq=1),
    }[odd]


@pytest.mark.parametrize("odd", ["control", "credit", "hello", "placement",
                                 "chunk on stream 0"])
@pytest.mark.parametrize("path", ["evaluate", "stream", "aevaluate", "main link",
                                  "astream"])
def test_a_frame_no_node_sends_fails_the_call_at_once(odd, path):
    # (Ignored, it left the call waiting for its deadline: DeadlineExceeded.
    # The timeout here is far longer than the test takes.)
    frame = _odd_frame(odd)
    srv = _fake_node(lambda sid, n: frame(sid))
    req = node_ops.double.request(1)
    try:
        with connect(_url(srv), timeout=60, reconnect=False) as c:
            with pytest.raises(P.ProtocolError, match="no node sends that to a client"):
                if path == "evaluate":
                    c.evaluate(req)
                elif path == "stream":
                    list(c.stream(node_ops.count.request(2)))
                elif path == "aevaluate":
                    asyncio.run(c.aevaluate(req))
                elif path == "main link":
                    _on_main_link(c, c.aevaluate(req))
                else:
                    async def take():
                        return [x async for x in c.astream(node_ops.count.request(2))]
                    asyncio.run(take())
    finally:
        srv.close()


# ---- max_reply ---------------------------------------------------------------------

_START = P.canonical_bytes({"metadata": {"source": "odd"}})
_SMALL = P.canonical_bytes([42, [], None])


def _reply(sid, data):
    return P.reply_frames(P.encoder(), sid, _START, data,
                          {"bytes": len(data), "truncated": False}, P.DEFAULT_MAX_FRAME)


@pytest.mark.parametrize("path", ["evaluate", "aevaluate", "main link"])
def test_a_reply_past_max_reply_fails_its_call_and_is_not_held(path):
    # (Unbounded, a fake node made a client hold 156 MB of one reply.)
    # 48 MiB in 1 MiB chunks, made before memory is traced (the first call
    # is the first of its connection: stream 1)
    big = _reply(1, P.canonical_bytes([b"x" * (48 << 20), [], None]))

    def answer(sid, n):  # the first open gets the large reply, the others a small one
        return big if n == 0 and sid == 1 else _reply(sid, _SMALL)

    srv = _fake_node(answer)
    req = node_ops.double.request(1)
    cap = 2 << 20
    try:
        with connect(_url(srv), timeout=60, reconnect=False, max_reply=cap) as c:
            if path == "evaluate":
                def call():
                    return c.evaluate(req)
            elif path == "aevaluate":
                loop = asyncio.new_event_loop()

                def call():
                    return loop.run_until_complete(c.aevaluate(req))
            else:
                def call():
                    return _on_main_link(c, c.aevaluate(req))
            tracemalloc.start()
            try:
                with pytest.raises(P.LimitExceeded,
                                   match=f"more than {cap} bytes .*max_reply"):
                    call()
                # the next call is answered: a loop's connection and the main link
                # dropped the rest of the large reply as it came, without holding
                # it; a blocking connection was closed (made again)
                assert call().value == 42
                peak = tracemalloc.get_traced_memory()[1]
            finally:
                tracemalloc.stop()
                if path == "aevaluate":
                    loop.close()
            assert peak < (16 << 20), peak
    finally:
        srv.close()


def test_a_reply_within_max_reply_is_taken_and_zero_is_no_bound():
    # (max_reply counts the chunks' frames, header and payload: what holding
    # them costs; a reply of one frame is always within it, max_reply being
    # at least max_frame.)
    data = P.canonical_bytes([b"y" * (3 << 20), [], None])  # three chunks and a bit
    srv = _fake_node(lambda sid, n: _reply(sid, data))
    req = node_ops.double.request(1)
    frames = len(_reply(1, data)) - len(_reply(1, b""))  # its chunks' frames, about
    try:
        for cap in (frames + 64, 0):
            with connect(_url(srv), timeout=60, reconnect=False, max_reply=cap) as c:
                assert c.evaluate(req).value == b"y" * (3 << 20)
                assert asyncio.run(c.aevaluate(req)).value == b"y" * (3 << 20)
                assert _on_main_link(c, c.aevaluate(req)).value == b"y" * (3 << 20)
        with connect(_url(srv), timeout=60, reconnect=False, max_reply=len(data) - 1) as c:
            for call in (lambda: c.evaluate(req), lambda: asyncio.run(c.aevaluate(req)),
                         lambda: _on_main_link(c, c.aevaluate(req))):
                with pytest.raises(P.LimitExceeded, match=f"more than {len(data) - 1} bytes"):
                    call()
    finally:
        srv.close()
