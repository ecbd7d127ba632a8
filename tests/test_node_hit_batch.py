"""The node's held hits answered in one C call per read
(FrameDecoder.serve_hits, from the protocol's read callback): several opens
in one read are answered together (``hits_batched``), and a read that mixes
them with anything else keeps its order and its meaning: the C loop stops at
the first frame it does not answer and the Python path takes it and the rest
in turn. A read is handed to the connection's protocol on the node's loop as
its transport hands one (``data_received``: exactly one read); the replies
go out through the real socket to a raw client on loopback."""

import threading

import fabric
from fabric.frames import FrameKind
from fabric.node import NodeLimits, protocol as P

from test_node_hit_fast import Raw, _open as _held_open

import node_ops

_DONE = (FrameKind.STREAM_END, FrameKind.ERROR)


def _read(n, raw, data):
    """``data`` handed as one read to the node's side of ``raw``'s connection."""
    done = threading.Event()
    failed = []
    me = raw.s.getsockname()[:2]

    def go():
        try:
            conn = next(c for c in n._conns if c.proto is not None and c.peer[:2] == me)
            conn.proto.data_received(data)
        except BaseException as exc:  # (reported on the test's thread)
            failed.append(exc)
        finally:
            done.set()

    n._loop.call_soon_threadsafe(go)
    assert done.wait(30)
    assert not failed, failed


def _until(raw, count):
    """The bytes and frames until ``count`` replies ended (END or ERROR)."""
    return raw._until(lambda fs: sum(f.kind in _DONE for f in fs) >= count)


def _open(req):
    """A client's usual open (scope compute: the node's own fabric answers a
    hit, in C when it is held)."""
    return _held_open(req, scope="compute")


def _opens(sids_payloads):
    enc = P.encoder()
    return b"".join(enc.encode(FrameKind.CONTROL, p, stream_id=sid) for sid, p in sids_payloads)


def _checked(n, reqs):
    """A raw connection whose route (compute, no grants) is checked, and the
    general path's bytes for each request (a fresh connection each, on
    stream 100 + its index)."""
    general = {}
    for i, r in enumerate(reqs):
        fresh = Raw(n.address)
        general[i] = fresh.ask(_open(r), 100 + i)[0]
        fresh.close()
    raw = Raw(n.address)
    assert raw.ask(_open(reqs[0]), 100)[0] == general[0]  # (checks the route)
    return raw, general


def _hits(n):
    c = n._counters()
    return c.get("hits_batched", 0), c.get("hits_inline", 0)


def test_several_held_hits_in_one_read_are_answered_in_one_call_with_the_general_paths_bytes(
        node):
    n = node()
    reqs = [node_ops.double.request(i) for i in range(500, 506)]
    with fabric.node.connect(n.url) as c:
        for r in reqs:
            assert c.evaluate(r).value == r.args[0] * 2  # held from now on
    raw, general = _checked(n, reqs)
    batched, inline = _hits(n)
    _read(n, raw, _opens((100 + i, _open(r)) for i, r in enumerate(reqs)))
    got, frames = _until(raw, len(reqs))
    assert got == b"".join(general[i] for i in range(len(reqs)))  # in order, same bytes
    assert _hits(n) == (batched + len(reqs), inline + len(reqs))
    st = n.stats()
    assert st["requests"] == st["replies"] and st.get("errors", 0) == 0
    raw.close()


def test_a_read_mixing_hits_and_other_frames_keeps_its_order(node):
    """hit, PING, hit: the C call answers the first hit and stops at the
    PING; the Python path answers the PING and then the second hit, so the
    PONG lies between the two replies on the wire."""
    n = node()
    reqs = [node_ops.double.request(i) for i in range(510, 513)]
    with fabric.node.connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    raw, general = _checked(n, reqs)
    batched, inline = _hits(n)
    enc = P.encoder()
    ping = enc.encode(FrameKind.PING, b"\xa2hi", stream_id=0, seq=7)
    _read(n, raw, _opens([(101, _open(reqs[1]))]) + ping + _opens([(102, _open(reqs[2]))]))
    got, frames = _until(raw, 2)
    pong = enc.encode(FrameKind.PONG, b"\xa2hi", stream_id=0, seq=7)
    assert got == general[1] + pong + general[2]
    # the first by the C call, the second by the read callback's Python path
    assert _hits(n) == (batched + 1, inline + 2)
    raw.close()


def test_a_miss_between_hits_takes_the_general_path_in_its_place(node):
    """hit, miss, hit: the miss (an open of a key not held) is handed to the
    general path, which answers it; both hits are answered with the general
    path's bytes, the first by the C call."""
    n = node()
    reqs = [node_ops.double.request(i) for i in range(520, 523)]
    with fabric.node.connect(n.url) as c:
        for r in (reqs[0], reqs[2]):
            c.evaluate(r)
    raw, _general = _checked(n, [reqs[0]])
    general = {}
    for i in (0, 2):  # the hits' bytes on their own stream ids
        fresh = Raw(n.address)
        general[i] = fresh.ask(_open(reqs[i]), 200 + i)[0]
        fresh.close()
    batched, inline = _hits(n)
    requests = n.stats()["requests"]
    _read(n, raw, _opens((200 + i, _open(r)) for i, r in enumerate(reqs)))
    got, frames = _until(raw, 3)
    by_sid = {}
    for f in frames:
        by_sid.setdefault(f.stream_id, []).append(f.kind)
    assert set(by_sid) == {200, 201, 202}
    assert by_sid[200] == by_sid[202] == [FrameKind.STREAM_START, FrameKind.STREAM_CHUNK,
                                          FrameKind.STREAM_END]
    assert by_sid[201][-1] in _DONE  # the general path's answer, whatever it is
    assert got.startswith(general[0])  # the C call's answer went out first
    assert general[2] in got
    assert _hits(n) == (batched + 1, inline + 2)
    assert n.stats()["requests"] == requests + 3
    raw.close()


def test_bad_input_after_hits_in_one_read_ends_the_connection_after_their_replies(node):
    n = node()
    reqs = [node_ops.double.request(i) for i in range(530, 533)]
    with fabric.node.connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    raw, general = _checked(n, reqs)
    batched, _inline = _hits(n)
    bad = b"XXXX" + bytes(32)  # a header with a bad magic
    _read(n, raw, _opens((100 + i, _open(r)) for i, r in enumerate(reqs[1:], 1)) + bad)
    got, frames = _until(raw, 3)
    assert got.startswith(general[1] + general[2])
    assert frames[-1].kind == FrameKind.ERROR and frames[-1].stream_id == 0
    assert "magic" in frames[-1].decode_payload()["message"]
    assert _hits(n)[0] == batched + 2
    raw.close()


def test_hits_split_across_reads_at_every_byte_are_answered_in_order(node):
    """Two opens, the reads cut at every byte: a frame completed by a later
    read (its payload then in the decoder's buffer) is answered as one read
    whole, and the replies are the general path's bytes in order."""
    n = node()
    reqs = [node_ops.double.request(i) for i in range(540, 543)]
    with fabric.node.connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    raw, general = _checked(n, reqs)
    wire = _opens((100 + i, _open(r)) for i, r in enumerate(reqs[1:], 1))
    batched = _hits(n)[0]
    for cut in range(len(wire) + 1):
        _read(n, raw, wire[:cut])
        _read(n, raw, wire[cut:])
        got, _frames = _until(raw, 2)
        assert got == general[1] + general[2], cut
    # every hit of them by the C call (a read with no whole frame answers none)
    assert _hits(n)[0] == batched + 2 * (len(wire) + 1)
    raw.close()


def test_the_frame_rate_limit_holds_for_hits_answered_in_one_call(node):
    """More hits in one read than the frame rate's window has room for: the
    C call answers as many as it has room for, and the next frame is refused
    as it always was (LimitExceeded, the connection closed)."""
    n = node(limits=NodeLimits(max_frame_rate=12))
    reqs = [node_ops.double.request(i) for i in range(550, 552)]
    with fabric.node.connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    raw, general = _checked(n, reqs)
    me = raw.s.getsockname()[:2]
    got = []
    ready = threading.Event()

    def peek():
        conn = next(c for c in n._conns if c.proto is not None and c.peer[:2] == me)
        got.append(conn.proto.rate_until - conn.frames_in)
        ready.set()

    n._loop.call_soon_threadsafe(peek)
    assert ready.wait(30)
    room = got[0]
    assert 0 < room < 12
    batched = _hits(n)[0]
    _read(n, raw, _opens((100 + i, _open(reqs[1])) for i in range(20)))
    data, frames = raw._until(lambda fs: any(f.kind == FrameKind.ERROR for f in fs))
    ends = [f for f in frames if f.kind == FrameKind.STREAM_END]
    assert len(ends) == room and _hits(n)[0] == batched + room
    assert [f.stream_id for f in ends] == [100 + i for i in range(room)]
    error = frames[-1].decode_payload()
    assert error["kind"] == "LimitExceeded" and "max_frame_rate=12" in error["message"]
    raw.close()
