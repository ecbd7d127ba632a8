"""On asyncio's own loop over plain TCP, an ``aevaluate`` channel reads and
writes its socket itself (``_SocketWriter``): a write the socket does not
take whole waits, in order, for the socket to be writable; over the high mark waiting,
new calls wait for the channel to take them (backpressure: memory stays
bounded), as on a channel that keeps a transport (TLS, uvloop); a
connection refused or reset before the handshake is ``FabricUnavailable``."""

import asyncio
import socket
import struct

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
                for _ in range(1000):  # sent on the call's first step
                    if ch.calls:
                        break
                    await asyncio.sleep(0)
                assert ch.calls
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




def _loop_runner(kind):
    if kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        return asyncio.Runner(loop_factory=uvloop.new_event_loop)
    return asyncio.Runner()


@pytest.mark.parametrize("kind", ["asyncio", "uvloop"])
def test_many_large_calls_at_once_wait_their_turn(node, monkeypatch, kind):
    n = node()
    monkeypatch.setattr(client_mod, "_OUT_HIGH", 512 << 10)
    monkeypatch.setattr(client_mod, "_OUT_LOW", 128 << 10)
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(1))).value == 2
            ch = c._last_achannel
            sock = ch.sock if kind == "asyncio" else ch.transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 << 10)
            blobs = [bytes([i]) * (256 << 10) + bytes([i]) for i in range(12)]
            got = await asyncio.gather(*(c.aevaluate(size.request(b)) for b in blobs))
            assert [r.value for r in got] == [len(b) for b in blobs]
            assert not ch.dead and not ch.paused
            assert c._last_achannel is ch  # one channel took them all

        with _loop_runner(kind) as r:
            r.run(run())
        assert c.stats()["backpressure_waits"] > 0  # some waited for their turn


def test_a_call_the_node_does_not_read_misses_its_deadline_and_the_rest_go_on(node, monkeypatch):
    import threading
    n = node()
    monkeypatch.setattr(client_mod, "_OUT_HIGH", 1 << 20)
    monkeypatch.setattr(client_mod, "_OUT_LOW", 256 << 10)
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(1))).value == 2
            ch = _own_channel(c)
            port = ch.sock.getsockname()[1]
            [conn] = [cn for cn in list(n._conns) if cn.peer[1] == port]
            paused, resumed = threading.Event(), threading.Event()

            def on_node(fn, ev):
                fn()
                ev.set()

            loop = asyncio.get_running_loop()
            n._loop.call_soon_threadsafe(on_node, conn.transport.pause_reading, paused)
            assert await loop.run_in_executor(None, paused.wait, 30)
            calls = []
            for i in range(64):  # bounded: the node's buffers fill long before
                if ch.paused:
                    break
                calls.append(asyncio.ensure_future(
                    c.aevaluate(size.request(bytes([i]) * (512 << 10)))))
                await asyncio.sleep(0)  # its first step: sent
            assert ch.paused
            with pytest.raises(fabric.DeadlineExceeded, match="were not read"):
                await c.aevaluate(node_ops.double.request(2), timeout=0.5)
            n._loop.call_soon_threadsafe(on_node, conn.transport.resume_reading, resumed)
            assert await loop.run_in_executor(None, resumed.wait, 30)
            got = await asyncio.gather(*calls)
            assert [r.value for r in got] == [512 << 10] * len(calls)
            assert (await c.aevaluate(node_ops.double.request(3))).value == 6

        asyncio.run(run())


def test_a_connection_reset_before_the_handshake_is_unavailable(node):
    import threading
    n = node()
    lsock = socket.socket()
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(4)
    resets = []
    reset = threading.Event()

    def reset_all():  # accepts and resets (SO_LINGER 0) until the test closes it
        while True:
            try:
                s, _ = lsock.accept()
            except OSError:
                return
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            s.close()
            resets.append(1)
            reset.set()

    t = threading.Thread(target=reset_all, daemon=True)
    t.start()
    try:
        with connect(n.url, timeout=30) as c:
            c.port = lsock.getsockname()[1]  # a loop's channel dials there now

            async def run():
                loop = asyncio.get_running_loop()
                connect_sock = loop.sock_connect

                async def connected_then_reset(sock, addr):
                    # the reset arrives before the channel's first send
                    await connect_sock(sock, addr)
                    assert await loop.run_in_executor(None, reset.wait, 30)

                loop.sock_connect = connected_then_reset
                with pytest.raises(fabric.FabricUnavailable):
                    await c.aevaluate(node_ops.double.request(4))

            asyncio.run(run())
    finally:
        lsock.shutdown(socket.SHUT_RDWR)  # wakes the accept
        lsock.close()
        t.join(30)
    assert not t.is_alive()
    assert resets
