"""The short paths of a remote hit: the async client's channel taking a
one-chunk reply in one call (FrameDecoder.take_reply), whatever the reads
it arrives in, and the node answering an open its connection sent before
(kept per connection, never across principals)."""

import asyncio
import json

import pytest

import fabric
from fabric._core import canonical_bytes
from fabric.frames import FrameKind
from fabric.node import connect, protocol as P
from fabric.replies import reply_record

import node_ops

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef0"}


def _reply_wire(sid, record, *, end=None):
    enc = P.encoder()
    end = end or canonical_bytes({"chunks": 1, "bytes": len(record), "truncated": False})
    return enc.encode_reply(sid, canonical_bytes({"metadata": {"source": "held"}}),
                            record, end)


def test_a_reply_split_across_reads_at_every_byte_is_taken_whole(node):
    n = node()
    record = canonical_bytes(reply_record(fabric.LocalFabric().evaluate(
        node_ops.double.request(4))))
    odd = record + b""  # a size no END was seen with: checked, not looked up
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(4))  # the loop's channel
            ch = c._last_achannel
            loop = asyncio.get_running_loop()
            sid = 1 << 20
            for end in (None, canonical_bytes({"bytes": len(odd), "chunks": 1,
                                               "truncated": False, "x": 1})):
                wire = _reply_wire(sid, odd, end=end)
                for cut in range(len(wire) + 1):
                    sid += 1
                    wire = _reply_wire(sid, odd, end=end)
                    fut = loop.create_future()
                    ch.calls[sid] = [fut, [], ch.source, None]
                    ch.data_received(memoryview(wire)[:cut])
                    assert fut.done() == (cut == len(wire))
                    ch.data_received(memoryview(wire)[cut:])
                    record_back, source, claim = fut.result()
                    assert (record_back, source, claim) == (
                        fabric.unpack(odd), f"peer:{n.node_id}", None)
                    assert sid not in ch.calls
            # frames of a call given up on are dropped; the channel goes on
            ch.data_received(_reply_wire(sid + 1, odd))
            assert not ch.dead
            return (await c.aevaluate(node_ops.double.request(4))).value

        assert asyncio.run(run()) == 8


def test_a_whole_reply_after_chunks_of_its_stream_fails_its_call_by_name(node):
    n = node()
    record = canonical_bytes(reply_record(fabric.LocalFabric().evaluate(
        node_ops.double.request(2))))
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(2))
            ch = c._last_achannel
            fut = asyncio.get_running_loop().create_future()
            ch.calls[99] = [fut, [record], ch.source, None]  # a chunk came before
            ch.data_received(_reply_wire(99, record))
            with pytest.raises(P.ProtocolError, match="lost, repeated or reordered"):
                fut.result()
            assert ch.dead  # the channel ends; the next call makes a new one
            return (await c.aevaluate(node_ops.double.request(2))).value

        assert asyncio.run(run()) == 4


def test_an_end_that_does_not_account_for_the_chunk_fails_on_the_short_path(node):
    n = node()
    record = canonical_bytes(reply_record(fabric.LocalFabric().evaluate(
        node_ops.double.request(3))))
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(3))
            ch = c._last_achannel
            fut = asyncio.get_running_loop().create_future()
            ch.calls[77] = [fut, [], ch.source, None]
            lie = canonical_bytes({"chunks": 1, "bytes": len(record) + 1, "truncated": False})
            ch.data_received(_reply_wire(77, record, end=lie))
            with pytest.raises(P.ProtocolError, match="ended a reply with"):
                fut.result()
            assert ch.dead

        asyncio.run(run())


def test_an_open_kept_by_one_connection_is_not_answered_for_another_principal(node, tmp_path):
    """Alice (granted node.compute) asks a compute-scope request twice: the
    second is a hit answered from her connection's kept open. Bob sends the
    same open bytes (same request, grants and scope) and gets what the node
    holds (held content goes to any authenticated peer), but a request the
    node would compute is still refused: what a connection keeps was
    checked against its own grants."""
    grants = tmp_path / "grants.json"
    grants.write_text(json.dumps({"alice": ["node.compute"], "bob": []}))
    n = node(tokens=dict(TOKENS), grants=str(grants))
    req = node_ops.double.request(21)
    with connect(n.url, token=TOKENS["alice"]) as alice:
        assert alice.evaluate(req).value == 42  # computed, now held
        before = n.stats()
        assert alice.evaluate(req).value == 42
        assert alice.evaluate(req).value == 42  # the kept open

        async def twice():
            return [(await alice.aevaluate(req)).value for _ in range(3)]

        assert asyncio.run(twice()) == [42, 42, 42]
        after = n.stats()
        for name in ("hits_inline", "requests", "replies"):  # counted apart, folded in
            assert after[name] - before.get(name, 0) == 5, name
        req_status = n.status()["requests"]
        assert (req_status["received"], req_status["replied"], req_status["hits_inline"]) \
            == (after["requests"], after["replies"], after["hits_inline"])
    unheld = node_ops.double.request(22)
    with connect(n.url, token=TOKENS["bob"]) as bob:
        for _ in range(2):
            assert bob.evaluate(req).value == 42  # held: served to bob too
            with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
                bob.evaluate(unheld)

        async def refused():
            for _ in range(2):
                assert (await bob.aevaluate(req)).value == 42
                with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
                    await bob.aevaluate(unheld)

        asyncio.run(refused())
    assert n.stats()["denied_compute"] == 4
    assert unheld.key not in n.cassette  # never computed for bob


def test_the_deadline_watchdog_leaves_no_timer_on_the_callers_loop(node):
    """aevaluate's deadline is watched from the client's own loop thread: the
    caller's loop holds no timer of the channel's (a loop holding one waits
    for I/O with a finite timeout, a kernel timer per wait), and a deadline
    still fails the call that misses it."""
    n = node()
    with connect(n.url, timeout=30) as c:
        async def run():
            loop = asyncio.get_running_loop()
            for i in range(3):
                assert (await c.aevaluate(node_ops.double.request(i))).value == 2 * i
            # asyncio's own loop keeps its timers in _scheduled
            assert [h for h in loop._scheduled if not h.cancelled()] == []
            ch = c._last_achannel
            fut = loop.create_future()
            ch.calls[12345] = [fut, [], ch.source, 0.0]  # a call long past its deadline
            ch._watch(0.0)  # an earlier deadline than the one watched: re-armed
            await asyncio.wait({fut}, timeout=30)  # bounded; the watchdog fails it at once
            assert fut.done() and isinstance(fut.exception(), asyncio.TimeoutError)
            assert 12345 in ch.calls  # failed by the watchdog; its waiter gives it up
            ch.calls.pop(12345)
            return (await c.aevaluate(node_ops.double.request(5))).value

        assert asyncio.run(run()) == 10


def test_an_idle_connection_is_closed_on_the_nodes_tick_and_the_loop_holds_no_timer(node):
    """Past its handshake, a connection that sends nothing for idle_timeout
    is told so and closed (checked on the node's tick, which comes from its
    clock thread); one that keeps sending is not. Between requests the
    node's loop holds no timer (its waits for I/O have no timeout)."""
    import socket
    import threading

    from conftest import hello_bytes, read_frames
    from fabric.node import NodeLimits

    n = node(limits=NodeLimits(idle_timeout=0.5), loop="asyncio")
    quiet = socket.create_connection(n.address, timeout=30)
    busy = socket.create_connection(n.address, timeout=30)
    with quiet, busy:
        for s in (quiet, busy):
            s.sendall(hello_bytes())
            assert read_frames(s, until_close=False)[0].kind == FrameKind.HELLO
        ping = P.encoder().encode(FrameKind.PING, b"", stream_id=0)
        stop = threading.Event()

        def keep_busy():
            while not stop.wait(0.1):  # (a bounded loop: the test ends it)
                busy.sendall(ping)

        t = threading.Thread(target=keep_busy, daemon=True)
        t.start()
        try:
            frames = read_frames(quiet)  # until the node closes it (socket timeout 30 s)
            assert [f.kind for f in frames] == [FrameKind.ERROR]
            err = P.error_from_payload(frames[0].decode_payload(), "node")
            assert "idle for 0.5 s" in str(err)
            assert n.stats()["idle_timeouts"] == 1
            assert n.stats()["connections"] == 1  # the busy one is still there

            async def timers():
                loop = asyncio.get_running_loop()  # asyncio's own loop keeps them here
                return [h for h in loop._scheduled if not h.cancelled()]

            assert asyncio.run_coroutine_threadsafe(timers(), n._loop).result(30) == []
        finally:
            stop.set()
            t.join(30)
    clock = n._ticker
    n.stop()
    assert clock is not None and not clock.is_alive()
