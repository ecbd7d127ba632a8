"""A node's limits past the handshake, met by a raw peer on loopback: a
connection is idle while it completes no frame, so a peer trickling the
bytes of a frame it never completes is cut at the idle timeout (it would
otherwise hold its connection, and a max_connections slot, forever); a
flood of connections beyond max_connections is refused without filling
the log."""

import socket
import time

import pytest

import fabric
import node_ops
from fabric.frames import FrameKind
from fabric.node import NodeLimits, connect, protocol as P

from conftest import hello_bytes, read_frames


def test_a_peer_trickling_a_frame_that_never_completes_is_cut_at_the_idle_timeout(node):
    """A byte of a 60 KB PING every 0.1 s (the attacker's pace, a read of at
    most 0.1 s between bytes), idle_timeout 0.5 s: the node closes the
    connection (within the 5 s, ten idle timeouts, the attacker is given),
    counting one idle timeout, with an IdleTimeout ERROR."""
    n = node(limits=NodeLimits(idle_timeout=0.5))
    frame = P.encoder().encode(FrameKind.PING, b"x" * 60_000)
    got = b""
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes())
        assert read_frames(s, until_close=False)[0].kind == FrameKind.HELLO
        s.settimeout(0.1)
        closed = False
        deadline = time.monotonic() + 5
        for i in range(len(frame)):
            if time.monotonic() > deadline:
                break
            try:
                s.sendall(frame[i:i + 1])
                data = s.recv(1 << 16)
                got += data
                closed = data == b""
            except socket.timeout:
                continue
            except OSError:
                closed = True
            if closed:
                break
    assert closed, "the node kept a connection that never completed a frame"
    assert n.stats().get("idle_timeouts", 0) == 1
    assert b"IdleTimeout" in got


def test_refusals_at_max_connections_are_logged_at_most_once_a_second(node, caplog):
    """A flood of connections beyond ``max_connections``: each is refused
    (its ERROR) and counted, but the WARNINGs come at most once a second,
    the refusals they did not log one by one counted in the next one (or
    in one logged on the node's tick once the second passed)."""
    import logging
    import re

    from conftest import wait_for

    n = node(limits=NodeLimits(max_connections=1, handshake_timeout=120))
    caplog.set_level(logging.INFO, logger="fabric")
    flood = 30
    with socket.create_connection(n.address, timeout=30) as held:  # the only slot
        wait_for(lambda: n.stats()["connections"] == 1, "the slot to be taken")
        start = time.monotonic()
        for _ in range(flood):
            with socket.create_connection(n.address, timeout=30) as s:
                (f,) = read_frames(s, until_close=False)
                assert f.kind == FrameKind.ERROR and b"max_connections=1" in bytes(f.payload)
        elapsed = time.monotonic() - start
        assert n.stats()["refused_connections"] == flood
        held.sendall(hello_bytes())  # (it is served all along)
        assert read_frames(held, until_close=False)[0].kind == FrameKind.HELLO

    def told():
        n_told = n_warned = 0
        for r in caplog.records:
            m = r.getMessage()
            if r.levelno == logging.WARNING and "max_connections=1" in m:
                n_warned += 1
                more = re.search(r"(\d+) more", m)
                n_told += (m.startswith("refusing a connection from (")
                           + (int(more.group(1)) if more else 0))
        return n_told, n_warned

    wait_for(lambda: told()[0] == flood, "the log to tell of every refusal")
    assert told()[1] <= elapsed + 3, (told(), elapsed)


@fabric.op("node.limits.sized_items")
def _sized_items(count, size):
    for i in range(count):
        yield bytes([i]) * size


@pytest.mark.parametrize("cap, size", [(16 << 10, 8 << 20), (1 << 20, 12 << 20)])
def test_a_reading_client_is_not_cut_by_stream_items_larger_than_output_buffer(
        node, cap, size):
    """``output_buffer`` smaller than the frame agreed: a single frame,
    written while the peer reads (the transport not paused), may exceed the
    cap, so a client that reads a stream of items larger than the cap gets
    them all (an item of 8 MiB is more than the kernel takes at once: most
    of it waits in the node's buffer while the client reads it)."""
    mf = 16 << 20
    n = node(limits=NodeLimits(output_buffer=cap, max_frame=mf, window=mf))
    assert cap < size < mf
    with connect(n.url, timeout=60, max_frame=mf, window=mf) as c:
        got = list(c.stream(_sized_items.request(4, size)))
        assert [(len(x), x[:1]) for x in got] == [(size, bytes([i])) for i in range(4)]
        assert c.evaluate(node_ops.double.request(3)).value == 6
    assert n.stats().get("disconnected_slow_reader", 0) == 0
