"""A node's limits past the handshake, met by a raw peer on loopback: a
connection is idle while it completes no frame, so a peer trickling the
bytes of a frame it never completes is cut at the idle timeout (it would
otherwise hold its connection, and a max_connections slot, forever)."""

import socket
import time

from fabric.frames import FrameKind
from fabric.node import NodeLimits, protocol as P

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
