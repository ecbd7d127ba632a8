"""Reviewer repros for issue 13 (audit r1): behaviours the issue asks for
that no other test pins down."""

import asyncio
import threading

import pytest

import fabric
from fabric.node import NodeLimits, connect


def _bounded_until(pred, n=2_000_000):
    for _ in range(n):
        if pred():
            return True
    return False


@pytest.mark.xfail(strict=True, reason="the pump empties the fair queue into the transport's buffer (issue 13 audit)")
def test_a_principals_byte_budget_bounds_what_its_streams_hold(node):
    """Repro: a principal whose connection does not read, with 16 streams
    open, gets 16 windows (the client's HELLO asks 4 MiB) of data queued at
    the node, ~59 MB against a 1 MiB byte budget, and nothing is evicted:
    the fair queue is emptied into the transport's buffer whether or not the
    socket can take it (fails at 461a078)."""
    import socket
    from fabric.frames import FrameKind
    from fabric.node import protocol as P
    from conftest import hello_bytes

    @fabric.op("r1.fat_stream")
    def fat(i):
        for _ in range(64):
            yield bytes(256 * 1024)

    budget, window = 1 << 20, 1 << 20
    n = node(limits=NodeLimits(principal_budget=budget, window=window, max_frame=512 * 1024,
                               output_buffer=256 << 20))
    with socket.create_connection(n.address, timeout=30) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(hello_bytes())
        for sid in range(1, 17):
            meta = P.open_metadata(fat.request(sid), want="stream", scope="compute",
                                   grants=(), timeout=None)
            s.sendall(fabric.StreamControl.open(sid, meta).to_frame(
                ["stream.open", "stream.remote.network"]).encode())
        assert _bounded_until(
            lambda: n.status()["streams"]["backpressure_events"] >= 16, 20_000)
        held = sum(c.transport.get_write_buffer_size() for c in list(n._conns))
        q = n.stats()["stream_queue"]
        assert held <= 2 * budget or q["evictions"] > 0, (held, q)


@pytest.mark.xfail(strict=True, reason='streams x window pass the output cap (issue 13 audit)')
def test_many_concurrent_streams_of_a_reading_client_are_not_cut_as_a_slow_reader(node):
    """Repro (fails at 461a078, 3 runs of 3): 40 astreams of 8 items just
    under 1 MiB on one connection, default limits, the client reading as fast
    as it can: the node puts every stream's whole credit window (4 MiB) into
    the transport's buffer whether or not the socket takes it, passes the
    64 MiB output cap and disconnects the client as a slow reader."""
    item = (1 << 20) - 64

    @fabric.op("r1.fat_items")
    def fat(i):
        for _ in range(8):
            yield bytes(item)

    n = node()
    with connect(n.url, timeout=60) as c:
        async def one(i):
            return sum([len(x) async for x in c.astream(fat.request(i))])

        async def main():
            return await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)
        res = asyncio.run(main())
    assert n.stats().get("disconnected_slow_reader", 0) == 0
    assert res == [8 * item] * 40
