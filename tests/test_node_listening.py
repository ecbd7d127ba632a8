"""``await node.listening()``: the signal that a node run with ``await
node.serve()`` in a task accepts connections (its address, once its peers
answered), or why it never will (an address in use, stopped first); and
from another loop, for a node ``start()`` runs. A node serves once:
``serve()`` or ``start()`` on one serving, or stopped, is refused."""

import asyncio
import socket

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.node import Node, connect
from fabric.node import protocol as P

import node_ops
from conftest import free_port, hello_bytes, spin_until


@pytest.fixture
def mute_peer():
    """``(sock, url)``: a peer that accepts a node's dial and never answers
    its HELLO (a ``--peer`` that keeps the node from being ready). ``sock``
    is listening and non-blocking (``loop.sock_accept(sock)`` is the
    handshake that the node dialled it); closed after the test, or sooner by
    the test (the peer gone)."""
    with socket.socket() as mute:
        mute.bind(("127.0.0.1", 0))
        mute.listen()
        mute.setblocking(False)
        yield mute, "fabric://127.0.0.1:%d" % mute.getsockname()[1]


async def _handshake(address):
    """A raw client's HELLO and the node's answer, over asyncio."""
    reader, writer = await asyncio.open_connection(*address)
    writer.write(hello_bytes())
    await writer.drain()
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    while True:
        data = await reader.read(1 << 16)
        assert data, "the node closed the connection"
        dec.feed(data)
        frames = list(dec)
        if frames:
            writer.close()
            return frames[0]


def test_listening_resolves_once_the_node_accepts_connections(tmp_path):
    """Awaited before ``serve()`` even started: resolves with the address,
    where a handshake then succeeds; ``listening()`` again returns at once."""
    async def main():
        node = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0")
        waiting = asyncio.create_task(node.listening())
        task = asyncio.create_task(node.serve())
        address = await waiting
        assert address == node.address and address[1] != 0
        f = await _handshake(address)
        assert f.kind == FrameKind.HELLO
        assert await node.listening() == address
        node.request_stop()
        await task
    asyncio.run(main())


def test_listening_raises_why_serve_ended_an_address_in_use(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        async def main():
            node = Node(str(tmp_path / "b.ledger"), node_id="b",
                        listen=f"127.0.0.1:{port}")
            task = asyncio.create_task(node.serve())
            with pytest.raises(OSError):
                await node.listening()
            with pytest.raises(OSError):
                await task
        asyncio.run(main())


def test_listening_raises_when_serve_is_cancelled_before_it_listened(tmp_path, mute_peer):
    """A node waits for its ``--peer``'s handshake before it is ready; its
    serve task cancelled meanwhile: ``listening()`` says it stopped first."""
    mute, url = mute_peer

    async def main():
        node = Node(str(tmp_path / "c.ledger"), node_id="c", listen="127.0.0.1:0",
                    peers=[url])
        task = asyncio.create_task(node.serve())
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(mute)  # the node dialled its peer
        try:
            waiting = asyncio.create_task(node.listening())
            assert node._address is None  # not ready: its peer has not answered
            task.cancel()
            with pytest.raises(fabric.FabricError, match="stopped before it listened"):
                await waiting
            with pytest.raises(asyncio.CancelledError):
                await task
        finally:
            conn.close()
    asyncio.run(main())


def test_listening_from_another_loop_for_a_started_node(tmp_path):
    node = Node(str(tmp_path / "d.ledger"), node_id="d", listen="127.0.0.1:0").start()
    try:
        assert asyncio.run(node.listening()) == node.address
    finally:
        node.stop()


def test_start_after_stop_is_refused_saying_why(tmp_path):
    """stop() closed the node's cassette: start() again is refused at once
    (not an answer with the old address, where nothing listens), saying
    what to do instead; the node that stopped is not started."""
    port = free_port()  # nothing else binds it once the node stopped
    n = Node(str(tmp_path / "n.ledger"), home=fabric.LocalFabric(),
             listen=f"127.0.0.1:{port}")
    n.start()
    n.stop()
    with pytest.raises(fabric.FabricError, match=r"was stopped: a node serves once.*"
                                                 r"make a new Node"):
        n.start()
    assert n._thread is None
    with pytest.raises(OSError):  # nothing listens where it was
        socket.create_connection(("127.0.0.1", port), timeout=10).close()

    async def main():
        await n.serve()
    with pytest.raises(fabric.FabricError, match="was stopped"):
        asyncio.run(main())
    # a new node on the same cassette serves what the first recorded
    again = Node(str(tmp_path / "n.ledger"), home=fabric.LocalFabric(),
                 listen="127.0.0.1:0").start()
    try:
        with connect(again.url, timeout=10, reconnect=False) as c:
            assert c.evaluate(node_ops.double.request(4)).value == 8
    finally:
        again.stop()


def test_serve_on_a_started_node_is_refused(tmp_path):
    """serve() from another loop on a node serving on its start() thread
    is refused (as start() twice is), and the node goes on serving."""
    n = Node(str(tmp_path / "n.ledger"), home=fabric.LocalFabric(),
             listen="127.0.0.1:0").start()
    try:
        async def main():
            await n.serve()
        with pytest.raises(fabric.FabricError, match="is already serving"):
            asyncio.run(main())
        with pytest.raises(fabric.FabricError, match="already started"):
            n.start()
        with connect(n.url, timeout=10, reconnect=False) as c:
            assert c.evaluate(node_ops.double.request(5)).value == 10
    finally:
        n.stop()


def test_serve_twice_on_one_loop_is_refused(tmp_path):
    async def main():
        node = Node(str(tmp_path / "e.ledger"), node_id="e", listen="127.0.0.1:0")
        task = asyncio.create_task(node.serve())
        await node.listening()
        with pytest.raises(fabric.FabricError, match="is already serving"):
            await node.serve()
        node.request_stop()
        await task
        with pytest.raises(fabric.FabricError, match="was stopped"):
            await node.serve()
    asyncio.run(main())


def test_a_node_whose_serve_failed_to_listen_may_serve_again(tmp_path):
    """An address in use ends serve() before it listened: nothing was
    closed, and serve() again (the address free) serves."""
    port = free_port()  # bound again by the node once taken is closed
    taken = socket.socket()
    taken.bind(("127.0.0.1", port))
    taken.listen()

    async def main():
        node = Node(str(tmp_path / "f.ledger"), node_id="f", home=fabric.LocalFabric(),
                    listen=f"127.0.0.1:{port}")
        with pytest.raises(OSError):
            await node.serve()
        taken.close()
        task = asyncio.create_task(node.serve())
        assert await node.listening() == ("127.0.0.1", port)
        f = await _handshake(node.address)
        assert f.kind == FrameKind.HELLO
        node.request_stop()
        await task
    try:
        asyncio.run(main())
    finally:
        taken.close()


def test_a_serve_cancelled_before_it_listened_lets_its_address_go(tmp_path, mute_peer):
    """Cancelled while waiting for its --peer's handshake (bound, not ready):
    the address it bound is let go of, and serve() again serves."""
    mute, url = mute_peer

    async def main():
        node = Node(str(tmp_path / "g.ledger"), node_id="g", listen="127.0.0.1:0",
                    peers=[url], limits=fabric.node.NodeLimits(handshake_timeout=30))
        task = asyncio.create_task(node.serve())
        loop = asyncio.get_running_loop()
        conn, _ = await loop.sock_accept(mute)  # the node dialled its peer: bound
        try:
            bound = node._bound
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            with socket.socket() as again:  # its address is free
                again.bind(bound)
        finally:
            conn.close()
        mute.close()  # the peer gone: the next serve() is ready without it
        task = asyncio.create_task(node.serve())
        f = await _handshake(await node.listening())
        assert f.kind == FrameKind.HELLO
        node.request_stop()
        await task
    asyncio.run(main())


def _left(node):
    """What of a node's serve() is still there: tasks of the running loop
    (but the caller's), link clients, peers in its fabric."""
    return {"tasks": asyncio.all_tasks() - {asyncio.current_task()},
            "clients": list(node._clients), "peers": node.fabric.peers}


def test_a_serve_whose_address_is_taken_says_so_and_leaves_nothing(tmp_path):
    """An address in use: ``OSError`` naming the node, the address and the
    option; no task, link client or peer of that serve() is left."""
    peer = Node(str(tmp_path / "p.ledger"), node_id="p", listen="127.0.0.1:0").start()
    try:
        with socket.socket() as taken:
            taken.bind(("127.0.0.1", 0))
            taken.listen()
            port = taken.getsockname()[1]

            async def main():
                node = Node(str(tmp_path / "h.ledger"), node_id="h",
                            listen=f"127.0.0.1:{port}", peers=[peer.url])
                with pytest.raises(OSError, match=rf"node h cannot listen on 127\.0\.0\.1:"
                                                  rf"{port} \(--listen, Node\(listen=\.\.\.\)\)"
                                                  rf": .*in use") as ei:
                    await node.serve()
                assert ei.value.errno is not None
                assert _left(node) == {"tasks": set(), "clients": [], "peers": []}
            asyncio.run(main())
    finally:
        peer.stop()


def test_a_serve_cancelled_before_it_listened_ends_what_it_started(tmp_path, mute_peer):
    """Cancelled while one ``--peer`` answered (a link up, a peer added)
    and another does not: its pumps and link tasks end, both link clients
    are closed (their sockets too: each peer sees its connection end),
    the peer added is taken out of the fabric; serve() again serves."""
    peer = Node(str(tmp_path / "p.ledger"), node_id="p", listen="127.0.0.1:0").start()
    try:
        mute, url = mute_peer

        async def main():
            node = Node(str(tmp_path / "i.ledger"), node_id="i", listen="127.0.0.1:0",
                        peers=[peer.url, url],
                        limits=fabric.node.NodeLimits(handshake_timeout=30))
            task = asyncio.create_task(node.serve())
            loop = asyncio.get_running_loop()
            conn, _ = await loop.sock_accept(mute)  # the node dialled it
            try:
                assert await spin_until(lambda: [p.node for p in node.fabric.peers]
                                        == ["p"])  # the other one is up
                clients = list(node._clients)
                assert node._address is None  # not ready: one peer did not answer
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert _left(node) == {"tasks": set(), "clients": [], "peers": []}
                assert [(cl.status, cl._closed) for cl in clients] \
                    == [("disconnected", True)] * 2
                # the mute peer's connection was closed by the node's side:
                # after its HELLO, the end of the stream
                got = b"x"
                for _ in range(100):
                    got = await asyncio.wait_for(loop.sock_recv(conn, 1 << 16), 30)
                    if not got:
                        break
                assert got == b""
            finally:
                conn.close()
            assert await spin_until(lambda: peer.stats()["connections"] == 0)
            mute.close()  # gone: the next serve() is ready with its other peer only
            task = asyncio.create_task(node.serve())
            await node.listening()
            assert [p.node for p in node.fabric.peers] == ["p"]
            node.request_stop()
            await task
        asyncio.run(main())
    finally:
        peer.stop()
