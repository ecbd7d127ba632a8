"""A node's limits past the handshake, met by a raw peer on loopback: a
connection is idle while it completes no frame, so a peer trickling the
bytes of a frame it never completes is cut at the idle timeout (it would
otherwise hold its connection, and a max_connections slot, forever)."""

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
