"""``FrameDecoder.serve_hits``, a node's read of held hits, on bytes it does
not answer (no open in its index, or a CONTROL frame whose route is not
checked): it queues every frame, keeps the decoder's state and raises what
``feed`` raises, for any bytes and any split of them; and it answers an open
only when every condition holds. (Its answers on a node:
tests/test_node_hit_batch.py.)"""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import FrameDecoder, FrameEncoder, _open_crc
from fabric.frames import FrameKind

_ERRORS = (fabric.FrameError, fabric.DecodeError)
_ENC = FrameEncoder()


def _frame(f):
    return (f.kind, f.stream_id, f.seq, f.flags, f.offset, bytes(f.payload))


def _serve(dec, data, index, routes=None, tasks=None):
    return dec.serve_hits(data, len(data), index, {} if routes is None else routes, _ENC,
                          b"\x80", 1 << 16, tasks, 1 << 30, 1 << 30)


def _step(dec, data, new, index):
    try:
        if new:
            out, served, rest = _serve(dec, data, index)
            assert (out, served) == (b"", 0)
            if rest is not None:
                pending, error = rest
                assert pending is None and error is None
            res = ("ok",)
        else:
            dec.feed(data)
            res = ("ok",)
    except _ERRORS as exc:
        res = (type(exc).__name__, str(exc))
    return res, (dec.offset, dec.partial, dec.pending)


def same(reads, kind=bytes, index=None):
    old, new = FrameDecoder(), FrameDecoder()
    index = {} if index is None else index
    for data in reads:
        a = _step(old, kind(data), False, index)
        b = _step(new, kind(data), True, index)
        assert a == b, (reads, a, b)
        if a[0][0] != "ok":
            break
    assert [_frame(f) for f in old] == [_frame(f) for f in new]


def _wire():
    ctl = _ENC.encode(FrameKind.CONTROL, b"\x81\xa2op\xa4open", stream_id=3)
    ping = _ENC.encode(FrameKind.PING, b"\x90", stream_id=0)
    return ctl + ping + ctl + _ENC.encode(FrameKind.CONTROL, b"\xc0", stream_id=0)


def test_frames_it_does_not_answer_are_queued_as_feed_queues_them_at_every_split():
    wire = _wire()
    payload = b"\x81\xa2op\xa4open"
    # filed, but its route never checked (routes empty): not answered
    index = {_open_crc(payload): (payload, ((object(),), ("compute", frozenset(), False)))}
    for kind in (bytes, bytearray, memoryview):
        for cut in range(len(wire) + 1):
            same([wire[:cut], wire[cut:]], kind, index)


def test_bad_bytes_raise_as_feed_raises():
    wire = _wire()
    same([wire[:40] + b"XXXX" + wire[44:]])
    same([wire[:-1] + bytes([wire[-1] ^ 1])])
    same([b"SFRM\x02" + bytes(31)])


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_mutated_and_split_reads_agree_with_feed(data):
    wire = bytearray(_wire())
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(wire) - 1))
        wire[i] = data.draw(st.integers(0, 255))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=4)))
    reads, at = [], 0
    for c in cuts + [len(wire)]:
        reads.append(bytes(wire[at:c]))
        at = c
    same(reads)


def test_its_arguments_are_checked():
    dec = FrameDecoder()
    with pytest.raises(TypeError, match="10 arguments"):
        dec.serve_hits(b"", 0)
    with pytest.raises(TypeError, match="dicts"):
        dec.serve_hits(b"", 0, [], {}, _ENC, b"", 1, None, 1, 1)
    with pytest.raises(TypeError, match="FrameEncoder"):
        dec.serve_hits(b"", 0, {}, {}, object(), b"", 1, None, 1, 1)
    with pytest.raises(ValueError, match="nbytes"):
        dec.serve_hits(b"", 5, {}, {}, _ENC, b"", 1, None, 1, 1)
    with pytest.raises(ValueError, match="limit"):
        dec.serve_hits(b"", 0, {}, {}, _ENC, b"", -1, None, 1, 1)


def test_an_open_whose_route_is_not_the_fabrics_own_hit_path_is_queued():
    wire = _wire()
    payload = b"\x81\xa2op\xa4open"
    route = ("compute", frozenset(), False)
    index = {_open_crc(payload): (payload, ((object(),), route))}
    kinds = [FrameKind.CONTROL, FrameKind.PING, FrameKind.CONTROL, FrameKind.CONTROL]
    for routed in ((object(), frozenset(), True), (object(), frozenset(), False), "x", None):
        dec = FrameDecoder()
        out, served, rest = _serve(dec, wire, index, {route: routed})
        assert (out, served, rest) == (b"", 0, (None, None))
        assert [f.kind for f in dec] == kinds
    dec = FrameDecoder()  # nothing at all to do: rest is None
    assert _serve(dec, b"", index) == (b"", 0, None)
