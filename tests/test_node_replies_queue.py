"""Large single replies respect the connection's transport: a reply that
does not fit at once (over 64 KiB while the transport is paused, or over
one frame) goes out frame by frame through the fair queue, in a request
slot, as stream data does. So a client that reads many concurrent 1 MiB
replies is never cut as a slow reader under the default limits, while a
peer that never reads holds at most one frame per request slot at the node
and is still disconnected (its further requests wait, then are refused,
and the refusals fill its output buffer)."""

import asyncio
import socket
import threading

import fabric
from fabric.node import NodeLimits, connect
from fabric.node import protocol as P

from conftest import hello_bytes, wait_for

MIB = 1 << 20


@fabric.op("node.replies.blob")
def blob(i, size=MIB):
    """``size`` bytes numbered ``i`` (its 4-byte big-endian index, repeated)."""
    return i.to_bytes(4, "big") * (size // 4)


def _check(replies, ids, size=MIB):
    assert [len(r.value) for r in replies] == [size] * len(ids)
    assert [r.value[:4] for r in replies] == [i.to_bytes(4, "big") for i in ids]
    assert all(r.value == i.to_bytes(4, "big") * (size // 4) for r, i in zip(replies, ids))


def test_128_concurrent_1mib_async_replies_to_a_reading_client_all_arrive(node):
    """128 concurrent ``aevaluate`` of 1 MiB values on one connection, default
    limits (a 64 MiB output cap: 128 MiB of replies asked at once is over
    it): computed by the node's home, then held (answered from the read
    callback), twice; every reply arrives whole and the client is never cut
    (written at once, the held rounds put over 64 MiB in the transport's
    buffer and the node cut the reading client)."""
    n = node()
    ids = list(range(128))
    with connect(n.url, timeout=120) as c:
        async def main():
            return await asyncio.gather(*(c.aevaluate(blob.request(i)) for i in ids))
        _check(asyncio.run(main()), ids)  # computed
        before = n.stats()
        for _round in range(2):
            _check(asyncio.run(main()), ids)  # held
        after = n.stats()
        assert after["replies"] - before["replies"] == 2 * len(ids)
        assert after["hits_inline"] > before.get("hits_inline", 0)  # from the read callback
    st = n.stats()
    assert st.get("disconnected_slow_reader", 0) == 0
    q = st["stream_queue"]
    assert q["pending"] == 0 and q["evictions"] == 0
    (p,) = q["principals"].values()
    assert p["queued"] == p["served"] > 0 and p["dropped"] == 0


def test_64_threads_of_sync_1mib_replies_all_arrive(node):
    """64 threads each ``evaluate`` a 1 MiB value at once (a connection of
    their own each), computed then held: every reply arrives whole."""
    n = node()
    ids = list(range(64))
    with connect(n.url, timeout=120) as c:
        for _round in ("computed", "held"):
            got = [None] * len(ids)
            go = threading.Barrier(len(ids))

            def one(i):
                go.wait()
                got[i] = c.evaluate(blob.request(1000 + i))
            threads = [threading.Thread(target=one, args=(i,)) for i in ids]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            _check(got, [1000 + i for i in ids])
    assert n.stats().get("disconnected_slow_reader", 0) == 0


def test_a_reply_over_one_frame_is_carried_whole_under_a_small_frame(node):
    """A 1 MiB reply under a 64 KiB frame limit travels in 17 frames through
    the fair queue, while 40 of them are asked at once: all whole."""
    n = node(limits=NodeLimits(max_frame=64 << 10, window=64 << 10))
    ids = list(range(2000, 2040))
    with connect(n.url, timeout=120) as c:
        async def main():
            return await asyncio.gather(*(c.aevaluate(blob.request(i)) for i in ids))
        _check(asyncio.run(main()), ids)
        _check(asyncio.run(main()), ids)  # held
    assert n.stats().get("disconnected_slow_reader", 0) == 0


def test_a_peer_that_never_reads_1mib_replies_is_cut_with_bounded_memory(node):
    """A raw peer asks held 1 MiB replies and never reads: what the node
    holds for it stays bounded (a frame per request slot in the fair queue,
    the transport's buffer within the output cap), its requests past the
    slots and the count cap are refused, and it is disconnected: as a slow
    reader once the refusals filled its output buffer, or (when TCP stopped
    taking its requests first: its own receive buffer full) by the idle
    timeout, nothing having arrived."""
    running, cap, queued = 4, 1 << 20, 8
    n = node(limits=NodeLimits(max_running=running, output_buffer=cap,
                               principal_max_queued=queued, idle_timeout=2.0))
    req = blob.request(7)
    with connect(n.url, timeout=60) as c:
        assert len(c.evaluate(req).value) == MIB  # held from now on
    frame = P.DEFAULT_MAX_FRAME + 64
    meta = P.open_metadata(req, want="value", scope="held", grants=(), timeout=None)
    cut = False
    with socket.create_connection(n.address, timeout=5) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(hello_bytes())
        sid = 1
        for _batch in range(4000):
            batch = b"".join(fabric.StreamControl.open(sid + k, meta).to_frame(
                ["stream.open", "stream.remote.network"]).encode() for k in range(50))
            sid += 50
            try:
                s.sendall(batch)
            except ConnectionError:  # the node hung up on us: what is tested
                cut = True
                break
            except socket.timeout:  # TCP stopped taking our requests (we read nothing)
                wait_for(lambda: not n._conns, "the node to close the connection")
                cut = True
                break
            assert n._running <= running
            for conn in list(n._conns):
                assert conn.transport.get_write_buffer_size() <= cap + frame
            for p in n.stats()["stream_queue"]["principals"].values():
                assert p["pending_bytes"] <= running * frame, p
    assert cut
    st = n.stats()
    assert st.get("disconnected_slow_reader", 0) + st.get("idle_timeouts", 0) == 1, st
    assert st["refused_over_count_cap"] > 0
    # all let go of (its slots, its frames waiting) once the connection ended
    wait_for(lambda: n._running == 0 and not n._out_q.stats()["pending"] and not n._conns,
             "the node to let go of the connection's replies")
