"""A peer that never reads is cut when its output stays unread
(``write_stall_timeout``, docs/spec/protocol.md section 6): the request
slots its replies held come back, its streams end unrecorded, what the node
holds for it stays bounded. And a peer that reads is never cut as a slow
reader by replies larger than the output cap: those over half of it go
through the fair queue in chunks within it (section 3). Real nodes and
sockets on loopback; every wait is on a count the node keeps."""

import asyncio
import socket
import threading

import pytest

import fabric
from fabric.node import NodeLimits, connect
from fabric.node import protocol as P
from fabric.node.server import _high

from conftest import hello_bytes, read_frames, wait_for

MIB = 1 << 20
gate = threading.Event()


@fabric.op("node.stall.items")
def items(tag, n, size):
    """``n`` items of ``size`` bytes (item k: the byte k), once ``gate`` is open."""
    gate.wait(30)
    for k in range(n):
        yield bytes([k % 256]) * size


@fabric.op("node.stall.small")
def small(i):
    return f"small-{i}"


@fabric.op("node.stall.blob")
def blob(i, size):
    """``size`` bytes numbered ``i`` (its 4-byte big-endian index, repeated)."""
    return i.to_bytes(4, "big") * (size // 4)


def _open(sid, req, want):
    meta = P.open_metadata(req, want=want, scope="compute", grants=(), timeout=None)
    return fabric.StreamControl.open(sid, meta).to_frame(
        ["stream.open", "stream.remote.network"]).encode()


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_peer_that_never_reads_its_streams_is_cut_and_its_slots_come_back(node, loop):
    """A raw peer opens two streams of 1 MiB items (max_running=2) and reads
    nothing; another client's request waits for a slot meanwhile. Once the
    items start, the peer's transport pauses and stays paused: after
    write_stall_timeout the node closes it, counted in ``write_stalls``, its
    slots let go of (the other request is answered), its streams never
    recorded; meanwhile what waits for it stays within one frame per stream
    at the node and the output cap in the transport."""
    gate.clear()
    running, cap = 2, 4 * MIB
    n = node(limits=NodeLimits(max_running=running, output_buffer=cap,
                               write_stall_timeout=1.0), loop=loop)
    other = connect(n.url, timeout=60)
    try:
        assert other.evaluate(small.request(1)).value == "small-1"  # held from now on
        reqs = [items.request(f"s{k}", 64, MIB) for k in range(running)]
        frame = P.DEFAULT_MAX_FRAME + 64
        with socket.create_connection(n.address, timeout=30) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            s.sendall(hello_bytes())
            (hello,) = read_frames(s, until_close=False, limit=1)
            assert hello.kind_name == "HELLO"
            s.sendall(b"".join(_open(k + 1, r, "stream") for k, r in enumerate(reqs)))
            wait_for(lambda: n._running == running, "the peer's streams in both slots")

            got = []
            t = threading.Thread(target=lambda: got.append(other.evaluate(small.request(1))))
            t.start()
            # a held reply answered at once when a slot is free: it waits for one
            wait_for(lambda: len(n._run_q) == 1, "the other client's request to wait")
            assert n.stats().get("write_stalls", 0) == 0  # (nothing paused yet)
            gate.set()  # the items come: the peer reads none of them

            def bounded_until_cut():
                for conn in list(n._conns):
                    assert conn.transport.get_write_buffer_size() <= cap + frame
                for p in n.stats()["stream_queue"]["principals"].values():
                    assert p["pending_bytes"] <= running * frame, p
                return n.stats().get("write_stalls", 0) >= 1
            wait_for(bounded_until_cut, "the node to cut the peer that does not read")
            t.join(30)
            assert [r.value for r in got] == ["small-1"]  # a slot came back
        wait_for(lambda: n._running == 0 and not n._out_q.stats()["pending"],
                 "the node to let go of the peer's streams")
        st = n.stats()
        assert st["write_stalls"] == 1
        assert st.get("disconnected_slow_reader", 0) == 0 and st.get("idle_timeouts", 0) == 0
        assert all(r.key not in n.cassette for r in reqs)  # ended early: never recorded
        # the same stream read whole is recorded (what the check above rules out)
        done = items.request("whole", 3, 1000)
        assert [len(x) for x in other.stream(done)] == [1000] * 3
        wait_for(lambda: done.key in n.cassette, "a whole stream recorded")
    finally:
        gate.set()
        other.close()


def test_the_write_stall_timeout_is_a_limit_of_its_own():
    assert NodeLimits().write_stall_timeout == 30.0
    assert NodeLimits(write_stall_timeout=0).write_stall_timeout == 0  # off
    for bad in (-1, "5", True, float("nan")):
        with pytest.raises(ValueError, match=r"NodeLimits.write_stall_timeout .*\(0: off\)"):
            NodeLimits(write_stall_timeout=bad)
    with pytest.raises(ValueError, match="NodeLimits.idle_timeout"):
        NodeLimits(idle_timeout=0)  # 0 is "off" for the stall check alone


def test_fabric_serve_refuses_a_negative_write_stall_timeout_in_one_line(tmp_path):
    from test_cli import one_line_error, run
    cassette = tmp_path / "refused.ledger"
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(cassette),
                       "--write-stall-timeout", "-1"),
                   "fabric serve: error:",
                   "NodeLimits.write_stall_timeout must be a positive number, not -1.0 (0: off)")
    assert not cassette.exists()


@pytest.mark.parametrize("size, loop", [(MIB, "uvloop"), (MIB, "asyncio"), (3 * MIB, "auto")])
def test_a_reading_client_is_never_cut_by_replies_as_large_as_the_output_cap(node, size, loop):
    """32 concurrent replies of 1 MiB (one frame each, under the default
    frame of 1 MiB + 4 KiB) and of 3 MiB (over three frames) to a client
    that reads, under a 1 MiB output cap: computed, then held (answered
    from the read callback), every one arrives whole and the client is
    never cut as a slow reader. A reply over half the cap less the high
    mark is not written at once, and goes through the fair queue in chunks
    within that. (Before: a 1 MiB reply written at once, or a 3 MiB one's
    frames of one frame's size, that the kernel did not take at once put
    the transport's buffer over the cap, and the node cut the client.)"""
    cap = MIB
    n = node(limits=NodeLimits(output_buffer=cap), loop=loop)
    ids = list(range(32))
    with connect(n.url, timeout=120) as c:
        async def main():
            return await asyncio.gather(*(c.aevaluate(blob.request(i, size)) for i in ids))
        for _round in range(2):
            got = asyncio.run(main())
            assert [r.value == i.to_bytes(4, "big") * (size // 4)
                    for r, i in zip(got, ids)] == [True] * len(ids)
        assert c.evaluate(blob.request(99, size)).value[:4] == (99).to_bytes(4, "big")
    st = n.stats()
    assert st.get("disconnected_slow_reader", 0) == 0
    assert st["hits_inline"] >= len(ids)


def test_what_is_written_at_once_stays_within_half_the_cap(tmp_path):
    """The largest reply written at once, and the largest chunk of one that
    waits, for a few caps and frames (a connection's direct_max)."""
    from fabric.node import Node
    from fabric.node.server import _Conn, _SMALL_REPLY

    frame = P.DEFAULT_MAX_FRAME
    for k, (cap, want) in enumerate([(64 << 20, frame - 16), (MIB, MIB // 2 - (64 << 10)),
                                     (16 << 10, _SMALL_REPLY)]):
        n = Node(str(tmp_path / f"{k}.ledger"), listen="127.0.0.1:0",
                 limits=NodeLimits(output_buffer=cap))
        try:
            conn = _Conn.__new__(_Conn)
            conn.node, conn.paused = n, False
            for f, w in ((frame, want), (8192, min(want, 8192 - 16))):
                conn.set_frame(f)
                assert conn.direct_max() == conn.hit_limit == w, (cap, f)
                if w > _SMALL_REPLY:
                    assert w + _high(cap) <= cap // 2
                conn.paused = True
                conn.set_frame(f)
                assert conn.hit_limit == min(w, _SMALL_REPLY)
                conn.paused = False
        finally:
            n.cassette.close()
