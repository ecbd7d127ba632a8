"""A new connection's handshake on a node busy streaming: it runs in the
connection's own task (no task of its own to wait a loop turn for), and it
is answered while streams saturate the node. Real nodes and sockets on
loopback; every wait is on a count or an event, bounded."""

import asyncio
import shutil
import socket
import subprocess
import threading

import pytest

import fabric
from fabric.node import NodeLimits, connect
from fabric.node.server import Node

from conftest import hello_bytes, read_frames, wait_for

stop = threading.Event()


@fabric.op("node.handshake_busy.endless")
def endless(tag, size):
    """Items of ``size`` bytes until ``stop`` is set (at most 100,000)."""
    block = b"\1" * size
    for _ in range(100_000):
        if stop.is_set():
            return
        yield block


def _handshake(address):
    """A raw HELLO round trip on a fresh connection: the node's first frame."""
    with socket.create_connection(address, timeout=30) as s:
        s.sendall(hello_bytes())
        (first,) = read_frames(s, until_close=False, limit=1)
    return first


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_the_handshake_runs_in_the_connections_own_task(node, monkeypatch, loop):
    """``_handshake`` runs in the task made for the connection (under a
    timeout scope), not in a task of its own that wait_for made: on a busy
    loop that task's start was one more turn before the HELLO was read."""
    seen = []
    inner = Node._handshake

    async def handshake(self, conn, dec):
        seen.append(asyncio.current_task() in self._conn_tasks)
        return await inner(self, conn, dec)

    monkeypatch.setattr(Node, "_handshake", handshake)
    n = node(loop=loop)
    for _ in range(3):
        assert _handshake(n.address).kind_name == "HELLO"
    assert seen == [True] * 3


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_silent_connection_still_times_out_in_its_handshake(node, loop):
    """The timeout scope still bounds the handshake: a connection that sends
    nothing is told and closed after handshake_timeout, and counted."""
    n = node(limits=NodeLimits(handshake_timeout=0.3), loop=loop)
    with socket.create_connection(n.address, timeout=30) as s:
        frames = read_frames(s)  # until the node closes it
    assert [f.kind_name for f in frames] == ["ERROR"]
    assert b"no handshake within" in bytes(frames[0].payload)
    wait_for(lambda: n.stats()["handshake_timeouts"] == 1, "the timeout counted")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_handshakes_are_answered_while_streams_saturate_the_node(node, loop):
    """K endless streams of 256 KiB items consumed as fast as they come on
    one client connection; meanwhile fresh connections' handshakes are each
    answered (bounded by the socket's timeout), and the streams go on."""
    k, size, fresh = 16, 256 << 10, 10
    stop.clear()
    n = node(loop=loop, limits=NodeLimits(max_running=k + 4, output_buffer=256 << 20))
    c = connect(n.url, timeout=60)
    got = [0] * k
    errors = []

    async def consume(i):
        async for item in c.astream(endless.request(i, size)):
            got[i] += len(item)
            if stop.is_set():
                break

    def run():
        async def main():
            await asyncio.gather(*(consume(i) for i in range(k)))
        try:
            asyncio.run(main())
        except Exception as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    t = threading.Thread(target=run)
    t.start()
    try:
        wait_for(lambda: all(x >= 2 * size for x in got) or errors, "every stream flowing")
        assert not errors
        before = sum(got)
        for _ in range(fresh):
            assert _handshake(n.address).kind_name == "HELLO"
        assert sum(got) > before  # the streams went on meanwhile
    finally:
        stop.set()
        t.join(60)
        c.close()
    assert not t.is_alive()
    assert not errors


def _listen_backlog(port):
    """The accept queue's length of the socket listening on ``port`` (the
    Send-Q ``ss`` shows for a listening socket), or None without ``ss``."""
    ss = shutil.which("ss")
    if ss is None:
        return None
    out = subprocess.run([ss, "-ltnH", f"sport = :{port}"], capture_output=True, text=True,
                         timeout=30).stdout.split()
    return int(out[2]) if len(out) > 2 else None


@pytest.mark.parametrize("tls", [False, True], ids=["tcp", "tls"])
def test_the_accept_queue_is_as_long_as_max_connections(node, tls, tmp_path):
    """A burst of connections arriving while the loop is busy waits in the
    kernel's accept queue: as long as max_connections (capped by
    net.core.somaxconn), not asyncio's default of 100, beyond which the
    SYNs were dropped and the clients waited their 1 s retransmit. The TLS
    listener (its own accept loop) too."""
    with open("/proc/sys/net/core/somaxconn") as f:
        somaxconn = int(f.read())
    kw = {}
    if tls:
        from certs import make_certs
        from fabric.node.auth import server_tls
        d = make_certs(tmp_path)
        kw["tls"] = server_tls(str(d / "server.pem"), str(d / "server.key"), str(d / "ca.pem"))
    n = node(limits=NodeLimits(max_connections=1000), **kw)
    got = _listen_backlog(n.address[1])
    if got is None:
        pytest.skip("ss (iproute2) is not installed")
    assert got == min(1000, somaxconn)
    assert got > 100 or somaxconn <= 100
