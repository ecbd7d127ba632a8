"""On asyncio's own loop over plain TCP, an ``aevaluate`` channel reads and
writes its socket itself (``_SocketWriter``): a write the socket does not
take whole waits, in order, for the socket to be writable; more than the cap
waiting ends the channel (memory stays bounded), as it does a channel that
keeps a transport (TLS, uvloop)."""

import asyncio
import socket

import pytest

import fabric
from fabric.node import client as client_mod
from fabric.node import connect

import node_ops


@fabric.op("client.socket.size")
def size(blob):
    return len(blob)


def _own_channel(c):
    ch = c._last_achannel
    assert isinstance(ch.transport, client_mod._SocketWriter), ch.transport
    return ch


def test_asyncio_loop_plain_tcp_owns_its_socket(node):
    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(21))).value == 42
            ch = _own_channel(c)
            assert ch.sock.fileno() == ch.transport.fd
            return ch

        ch = asyncio.run(run())
        # the loop ended: the channel closed its socket with it
        assert ch.dead and ch.transport.closed and ch.sock.fileno() == -1


def test_a_write_the_socket_does_not_take_whole_waits_and_arrives_in_order(node):
    n = node()
    blob = bytes(range(256)) * 2048  # 512 KiB: over the send buffer set below
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(1))).value == 2
            ch = _own_channel(c)
            ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            reqs = [size.request(blob), node_ops.double.request(5)]
            sent = []
            for r in reqs:  # both sent before the loop runs: the second queues behind
                t, payload = c._prepare(r, None, None)
                sent.append(ch.send(r, payload, t)[1])
            assert len(ch.transport.out) > 0  # the socket took part of the first
            got = [await f for f in sent]
            assert not ch.transport.out  # all of it went, and the writer stopped
            values = [client_mod._reply_from_record(rec, r.key, src).value
                      for (rec, src, _claim), r in zip(got, reqs)]
            assert values == [len(blob), 10]
            return (await c.aevaluate(node_ops.double.request(7))).value

        assert asyncio.run(run()) == 14


def test_more_than_the_cap_waiting_ends_the_channel(node, monkeypatch):
    n = node()
    monkeypatch.setattr(client_mod, "_OUT_CAP", 1 << 20)
    blob = b"\x07" * (600 << 10)
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(1))).value == 2
            ch = _own_channel(c)
            ch.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            futs = []
            for i in range(2):  # no loop turn in between: nothing drains
                r = size.request(blob + bytes([i]))
                t, payload = c._prepare(r, None, None)
                futs.append(ch.send(r, payload, t)[1])
            # the second went over the cap: the channel ended, failing both
            assert ch.dead and ch.transport.closed and ch.calls == {}
            for f in futs:
                with pytest.raises(fabric.FabricUnavailable, match="read none of the last"):
                    await f
            # the next call makes a new channel, which works
            assert (await c.aevaluate(node_ops.double.request(8))).value == 16
            assert c._last_achannel is not ch

        asyncio.run(run())


def test_the_node_closing_fails_the_call_in_flight_fast(node):
    import threading
    gate = threading.Event()

    @fabric.op("client.socket.block")
    def block():
        gate.wait(60)
        return 1

    n = node()
    try:
        with connect(n.url, timeout=60) as c:
            async def run():
                assert (await c.aevaluate(node_ops.double.request(3))).value == 6
                ch = _own_channel(c)
                call = asyncio.ensure_future(c.aevaluate(block.request()))
                while not ch.calls:
                    await asyncio.sleep(0)
                # the node's side of this connection ends (as a node that exits)
                peer = [cn for cn in list(n._conns) if cn.peer[1] == ch.sock.getsockname()[1]]
                assert len(peer) == 1
                n._loop.call_soon_threadsafe(peer[0].abort)
                with pytest.raises(fabric.FabricUnavailable, match="lost|ended"):
                    await asyncio.wait_for(call, 30)
                assert ch.dead and ch.calls == {}

            asyncio.run(run())
    finally:
        gate.set()


def test_uvloop_keeps_a_transport(node):
    uvloop = pytest.importorskip("uvloop")
    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(2))).value == 4
            assert not isinstance(c._last_achannel.transport, client_mod._SocketWriter)

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(run())



def test_more_than_the_cap_waiting_ends_a_transport_channel_too(node, monkeypatch):
    uvloop = pytest.importorskip("uvloop")
    n = node()
    monkeypatch.setattr(client_mod, "_OUT_CAP", 1 << 20)
    blob = b"\x07" * (600 << 10)
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(1))).value == 2
            ch = c._last_achannel
            assert not isinstance(ch.transport, client_mod._SocketWriter)
            ch.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
            futs = []
            for i in range(2):  # no loop turn in between: nothing drains
                r = size.request(blob + bytes([i]))
                t, payload = c._prepare(r, None, None)
                futs.append(ch.send(r, payload, t)[1])
            assert ch.dead and ch.calls == {}
            for f in futs:
                with pytest.raises(fabric.FabricUnavailable, match="read none of the last"):
                    await f
            assert (await c.aevaluate(node_ops.double.request(8))).value == 16

        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as r:
            r.run(run())
