"""Test faults injected by a real node over loopback (fabric.node.faults):
the client either recovers or fails with the right error, never hangs and
never takes a damaged reply for a good one."""

import socket

import pytest

import fabric
from fabric.control import StreamControl
from fabric.frames import FrameKind
from fabric.node import Node, connect, protocol as P
from fabric.node.faults import Fault, Faults

import node_ops
from conftest import hello_bytes, read_frames, started_nodes, wait_for


@pytest.fixture
def node(tmp_path):
    """``node(*faults, **Node kwargs)``: conftest's, injecting ``faults``."""
    with started_nodes(tmp_path, prefix="f", local_home=True) as make:
        yield lambda *faults, **kw: make(faults=Faults(*faults) if faults else None, **kw)


# the principal may send the fault operation (it needs stream.stats)
STATS = {"*": ["*", "stream.stats"]}


def test_faults_are_off_by_default_and_the_wire_fault_is_refused(node):
    n = node(grants=STATS)
    assert n.faults is None
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes())
        s.sendall(StreamControl.fault(3, "drop", 1).to_frame(
            ["stream.stats", "stream.remote.network"]).encode())
        frames = read_frames(s)
    assert [f.kind for f in frames] == [FrameKind.HELLO, FrameKind.ERROR]
    body = frames[1].decode_payload(P.node_limits(P.DEFAULT_MAX_FRAME))
    assert body["kind"] == "ProtocolError" and "does not inject test faults" in body["message"]


def test_fault_specs_are_checked():
    assert Fault.parse("stall:STREAM_CHUNK:3") == Fault("stall", "STREAM_CHUNK", 3)
    for bad in ("explode", "drop:NOT_A_KIND", "drop:STREAM_CHUNK:0", "drop::1:x"):
        with pytest.raises(ValueError):
            Fault.parse(bad)
    with pytest.raises(TypeError):
        Faults("drop")
    with pytest.raises(TypeError, match="a fault is a str ACTION"):
        Fault.parse(5)  # (was an AttributeError on split)
    with pytest.raises(ValueError, match="Fault.stream must be a stream id"):
        Fault("drop", stream=True)
    with pytest.raises(TypeError):
        Node(None, listen="127.0.0.1:0", faults=[Fault("drop")])


def test_disconnect_at_the_reply_fails_fast_then_the_client_recovers(node):
    n = node(Fault("disconnect", kind="STREAM_START"))
    with connect(n.url, timeout=60) as c:
        with pytest.raises(fabric.FabricUnavailable, match="was lost"):
            c.evaluate(node_ops.double.request(2))
        n.faults.wait("disconnect")
        # the fault fired once: the next call gets a new connection and its reply
        assert c.evaluate(node_ops.double.request(2)).value == 4
        assert c.stats()["failed_fast"] >= 1


def test_a_corrupt_reply_chunk_is_refused_by_its_checksum(node):
    n = node(Fault("corrupt", kind="STREAM_CHUNK"))
    with connect(n.url, timeout=60) as c:
        with pytest.raises(fabric.FabricUnavailable, match="checksum"):
            c.evaluate(node_ops.double.request(3))
        assert c.evaluate(node_ops.double.request(3)).value == 6


@pytest.mark.parametrize("action, before", [("drop", [0, 1]), ("duplicate", [0, 1, 2]),
                                            ("reorder", [0, 1])])
def test_a_stream_missing_repeating_or_reordering_frames_is_never_complete(node, action,
                                                                           before):
    n = node(Fault(action, kind="STREAM_CHUNK", nth=3))
    with connect(n.url, timeout=60) as c:
        s = c.stream(node_ops.count.request(10))
        got = []
        with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
            for x in s:
                got.append(x)
        assert got == before  # what arrived before the damage, in order, once each
        assert not s.done
        assert n.faults.fired(action) == 1
        # the client goes on: a new connection, the whole stream
        assert list(c.stream(node_ops.count.request(10))) == list(range(10))


def test_a_dropped_chunk_of_a_multi_frame_reply_is_refused(node):
    from fabric.node import NodeLimits
    n = node(Fault("drop", kind="STREAM_CHUNK", nth=2),
             limits=NodeLimits(max_frame=4096, window=4096))
    big = "y" * 3000  # a small request; its reply takes two frames of 4 KiB
    with connect(n.url, timeout=60, max_frame=4096) as c:
        with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
            c.evaluate(node_ops.double.request(big))
        assert c.evaluate(node_ops.double.request(big)).value == big * 2


def test_a_delayed_reply_arrives_whole(node):
    n = node(Fault("delay", kind="STREAM_START", delay=0.05))
    with connect(n.url, timeout=60) as c:
        assert c.evaluate(node_ops.double.request(5)).value == 10
        assert list(c.stream(node_ops.count.request(5))) == list(range(5))
    assert n.faults.fired("delay") == 1


def test_a_stalled_node_hits_the_clients_deadline_not_a_hang(node):
    n = node(Fault("stall", kind="STREAM_START"))
    with connect(n.url, timeout=60) as c:
        with pytest.raises(fabric.DeadlineExceeded):
            c.evaluate(node_ops.double.request(6), timeout=0.5)
        n.faults.wait("stall")
        assert c.evaluate(node_ops.double.request(6)).value == 12  # a new connection


def test_the_wire_fault_operation_arms_a_fault_on_the_callers_connection(node):
    n = node(Fault("drop", kind="PONG"), grants=STATS)  # enabled; PONG never matters here
    with socket.create_connection(n.address, timeout=30) as s:
        dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))

        def frames_until(kind):
            out = []
            while not out or out[-1].kind != kind:
                data = s.recv(1 << 16)
                assert data, f"closed before {kind}: {[f.kind_name for f in out]}"
                dec.feed(data)
                out.extend(dec)
            return out

        s.sendall(P.encoder().encode_value(FrameKind.HELLO, P.hello(
            node=None, max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW)))
        frames_until(FrameKind.HELLO)
        grants = ["stream.stats", "stream.open", "stream.remote.network"]
        s.sendall(StreamControl.fault(1, "duplicate", 1).to_frame(grants).encode())
        req = node_ops.count.request(3)
        meta = P.open_metadata(req, want="stream", scope="compute", grants=[], timeout=None)
        s.sendall(StreamControl.open(1, meta).to_frame(grants).encode())
        got = frames_until(FrameKind.STREAM_END)
        chunks = [f.seq for f in got if f.kind == FrameKind.STREAM_CHUNK]
        assert chunks == [1, 1, 2, 3]  # the first chunk twice, as armed
        assert n.stats()["faults_armed"] == 1


def test_a_dropped_chunk_reaches_aevaluate_as_a_protocol_error(node):
    import asyncio
    from fabric.node import NodeLimits
    n = node(Fault("drop", kind="STREAM_CHUNK", nth=2),
             limits=NodeLimits(max_frame=4096, window=4096))
    big = "z" * 3000
    with connect(n.url, timeout=60, max_frame=4096) as c:
        async def run():
            with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
                await c.aevaluate(node_ops.double.request(big))
            return (await c.aevaluate(node_ops.double.request(big))).value  # a new channel

        assert asyncio.run(run()) == big * 2


def test_a_duplicated_chunk_of_an_async_stream_is_a_protocol_error(node):
    import asyncio
    n = node(Fault("duplicate", kind="STREAM_CHUNK", nth=2))
    with connect(n.url, timeout=60) as c:
        async def run():
            got = []
            with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
                async for x in c.astream(node_ops.count.request(6)):
                    got.append(x)
            return got

        assert asyncio.run(run()) == [0, 1]
        wait_for(lambda: c.status == "connected", "the client to reconnect")
        # the main connection came back: a whole stream again
        assert asyncio.run(_alist(c.astream(node_ops.count.request(6)))) == list(range(6))


async def _alist(s):
    return [x async for x in s]


def test_aevaluate_meets_its_deadline_on_a_stalled_node(node):
    import asyncio
    n = node(Fault("stall", kind="STREAM_START", nth=2))
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(7))).value == 14  # the channel
            slow = asyncio.ensure_future(c.aevaluate(node_ops.double.request(8), timeout=60))
            await asyncio.sleep(0)  # the first call is sent and watched (60 s)
            # a later call with an earlier deadline moves the channel's watchdog
            with pytest.raises(fabric.DeadlineExceeded, match="did not answer"):
                await c.aevaluate(node_ops.double.request(9), timeout=0.3)
            assert not slow.done()
            slow.cancel()
            with pytest.raises(asyncio.CancelledError):
                await slow

        asyncio.run(run())
        n.faults.wait("stall")


@pytest.mark.parametrize("action", ["drop", "duplicate"])
def test_a_one_chunk_reply_missing_or_repeating_its_chunk_fails_aevaluate(node, action):
    """The usual reply (START, one CHUNK, END) has a short path in the async
    channel: a lost or repeated chunk still fails there, by name."""
    import asyncio
    n = node(Fault(action, kind="STREAM_CHUNK"))
    with connect(n.url, timeout=60) as c:
        async def run():
            with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
                await c.aevaluate(node_ops.double.request(11))
            first = (await c.aevaluate(node_ops.double.request(11))).value  # a new channel
            return first, (await c.aevaluate(node_ops.double.request(11))).value  # a hit

        assert asyncio.run(run()) == (22, 22)
    assert n.faults.fired(action) == 1


def test_an_end_seen_before_must_still_account_for_its_chunk():
    """A STREAM_END payload the async channel checked once is not decoded
    again, but it is still held against the chunk that came with it: a
    reply whose chunk is not the size its END says fails (a fake node on a
    raw socket answers the second request with the first one's END)."""
    import asyncio
    import threading
    from fabric._core import canonical_bytes
    from fabric.replies import reply_record

    local = fabric.LocalFabric()
    records = [canonical_bytes(reply_record(local.evaluate(node_ops.double.request(x))))
               for x in (3, "abcdef")]
    assert len(records[0]) != len(records[1])
    enc, limits = P.encoder(), P.node_limits(P.DEFAULT_MAX_FRAME)
    end = canonical_bytes({"chunks": 1, "bytes": len(records[0]), "truncated": False})
    srv = socket.create_server(("127.0.0.1", 0))
    conns = []

    def serve_one(s):
        dec = fabric.FrameDecoder(limits)
        answered = 0
        with s:
            while True:
                data = s.recv(1 << 16)
                if not data:
                    return
                dec.feed(data)
                for f in dec:
                    if f.kind == FrameKind.HELLO:
                        s.sendall(enc.encode_value(FrameKind.HELLO, P.hello(
                            node="fake", max_frame=P.DEFAULT_MAX_FRAME,
                            window=P.DEFAULT_WINDOW, principal="anonymous", grants=["*"])))
                    elif f.kind == FrameKind.CONTROL:  # an open: reply with records[answered]
                        sid, rec = f.stream_id, records[min(answered, 1)]
                        answered += 1
                        s.sendall(enc.encode_value(FrameKind.STREAM_START, {"metadata": {
                            "source": "held"}}, stream_id=sid)
                            + enc.encode_value(FrameKind.STREAM_CHUNK, rec, stream_id=sid,
                                               seq=1)
                            + enc.encode(FrameKind.STREAM_END, end, stream_id=sid, seq=2))

    def accept():
        for _ in range(2):  # the client's main connection, then its loop's channel
            s, _ = srv.accept()
            t = threading.Thread(target=serve_one, args=(s,), daemon=True)
            t.start()
            conns.append(t)

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    try:
        with connect(f"fabric://127.0.0.1:{srv.getsockname()[1]}", timeout=60) as c:
            async def run():
                ok = await c.aevaluate(node_ops.double.request(3))
                with pytest.raises(P.ProtocolError, match="ended a reply with"):
                    await c.aevaluate(node_ops.double.request("abcdef"))
                return ok.value

            assert asyncio.run(run()) == 6
    finally:
        srv.close()
        acceptor.join(30)
        for t in conns:
            t.join(30)
