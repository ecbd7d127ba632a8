"""``FrameDecoder.feed_reply(data, limits, nbytes)``: the same as
``feed_reply(data[:nbytes], limits)``. ``FrameDecoder.feed_open(data,
nbytes, index)``: ``feed(data[:nbytes])``, except that a read holding
exactly one whole CONTROL frame, nothing queued before, whose payload
``index`` files under its CRC-32C (as ``_known_open`` finds it) is not
queued: ``(frame, entry)`` comes back. Compared with a second decoder fed
the same bytes by ``feed`` (and ``_known_open`` on its frames): the same
frames in the same order, the same errors."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import _known_open, _open_crc
from fabric.frames import FrameKind
from fabric.node import protocol as P

ENC = P.encoder()
KNOWN = [b"\x82\xa2op\xa4open\xa8metadata" + bytes([0xc0 + i % 3]) for i in range(3)]
INDEX = {_open_crc(p): (p, ("parsed", i)) for i, p in enumerate(KNOWN)}


def _control(payload, sid=3):
    return ENC.encode(FrameKind.CONTROL, payload, stream_id=sid)


def _same(a, b):
    assert (a.kind, a.stream_id, a.seq, a.flags, bytes(a.payload)) == \
        (b.kind, b.stream_id, b.seq, b.flags, bytes(b.payload))


def _in_buffer(data):
    """data at the start of a larger buffer (a node's read buffer)."""
    buf = memoryview(bytearray(len(data) + 100))
    buf[:len(data)] = data
    return buf


def test_one_known_open_is_returned_and_not_queued():
    dec = fabric.FrameDecoder()
    wire = _control(KNOWN[1], sid=9)
    got = dec.feed_open(_in_buffer(wire), len(wire), INDEX)
    assert got is not None
    f, entry = got
    assert entry is INDEX[_open_crc(KNOWN[1])]
    assert (f.kind, f.stream_id, f.seq, bytes(f.payload)) == (FrameKind.CONTROL, 9, 0, KNOWN[1])
    assert f.offset == 0
    assert _known_open(f, INDEX) is entry  # the header's CRC, checked, is the key
    assert list(dec) == [] and dec.pending == 0
    # the decoder goes on from there
    nxt = _control(KNOWN[2], sid=11)
    assert dec.feed(nxt) == 1
    (g,) = list(dec)
    assert g.offset == len(wire) and bytes(g.payload) == KNOWN[2]


def test_anything_else_is_queued_as_feed_queues_it():
    unknown = _control(b"\x81\xa2op\xa5stats", sid=4)
    chunk = ENC.encode(FrameKind.STREAM_CHUNK, b"\xc0", stream_id=4, seq=1)
    known = _control(KNOWN[0], sid=5)
    cases = [
        unknown,  # a CONTROL frame not filed
        chunk,  # not a CONTROL frame
        known + known,  # two frames in one read
        known + unknown,
        known[:-1],  # a partial frame
        ENC.encode(FrameKind.CONTROL, KNOWN[0][:-1] + b"\xc3", stream_id=5),  # not filed
    ]
    for wire in cases:
        dec, ref = fabric.FrameDecoder(), fabric.FrameDecoder()
        assert dec.feed_open(_in_buffer(wire), len(wire), INDEX) is None
        ref.feed(wire)
        got, want = list(dec), list(ref)
        assert len(got) == len(want)
        for a, b in zip(got, want):
            _same(a, b)


def test_a_known_open_after_queued_or_held_bytes_is_queued():
    known = _control(KNOWN[0], sid=5)
    dec = fabric.FrameDecoder()
    assert dec.feed_open(known + known, 2 * len(known), INDEX) is None
    assert dec.pending == 2
    assert dec.feed_open(known, len(known), INDEX) is None  # frames queued before it
    assert dec.pending == 3
    assert [bytes(f.payload) for f in dec] == [KNOWN[0]] * 3
    # a frame begun in an earlier read and ended by this one
    assert dec.feed_open(known[:10], 10, INDEX) is None
    assert dec.feed_open(known[10:], len(known) - 10, INDEX) is None
    (f,) = list(dec)
    assert bytes(f.payload) == KNOWN[0]


def test_bytes_data_whole_or_in_part():
    known = _control(KNOWN[2], sid=7)
    dec = fabric.FrameDecoder()
    f, entry = dec.feed_open(known, len(known), INDEX)
    assert bytes(f.payload) == KNOWN[2] and entry[1] == ("parsed", 2)
    # nbytes short of data: only those bytes are fed
    unknown = _control(b"\x80", sid=8)
    assert dec.feed_open(unknown + b"junk", len(unknown), INDEX) is None
    (g,) = list(dec)
    assert bytes(g.payload) == b"\x80"
    assert dec.feed_open(b"", 0, INDEX) is None and dec.pending == 0


def test_errors_are_feeds():
    known = bytearray(_control(KNOWN[0], sid=5))
    known[-1] ^= 1  # the payload's CRC fails
    dec, ref = fabric.FrameDecoder(), fabric.FrameDecoder()
    with pytest.raises(fabric.FrameError) as got:
        dec.feed_open(known, len(known), INDEX)
    with pytest.raises(fabric.FrameError) as want:
        ref.feed(bytes(known))
    assert (got.value.violation, got.value.offset, str(got.value)) == \
        (want.value.violation, want.value.offset, str(want.value))
    with pytest.raises(fabric.FrameError):  # the decoder stays failed
        dec.feed_open(_control(KNOWN[0]), len(_control(KNOWN[0])), INDEX)


def test_bad_arguments_are_refused():
    dec = fabric.FrameDecoder()
    wire = _control(KNOWN[0])
    with pytest.raises(ValueError, match="nbytes must be in"):
        dec.feed_open(wire, len(wire) + 1, INDEX)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        dec.feed_open(wire, -1, INDEX)
    with pytest.raises(TypeError, match="nbytes must be an int"):
        dec.feed_open(wire, None, INDEX)
    with pytest.raises(TypeError, match="index must be a dict"):
        dec.feed_open(wire, len(wire), [])
    with pytest.raises(TypeError, match="3 arguments"):
        dec.feed_open(wire, len(wire))
    with pytest.raises(TypeError):
        dec.feed_open("text", 4, INDEX)
    assert dec.pending == 0


def test_known_open_of_a_frame_built_locally_computes_the_crc():
    f = fabric.Frame(FrameKind.CONTROL, KNOWN[1], stream_id=3)
    assert _known_open(f, INDEX) is INDEX[_open_crc(KNOWN[1])]


_FRAMES = st.lists(st.one_of(
    st.sampled_from(KNOWN).map(lambda p: ("open", p)),
    st.binary(max_size=40).map(lambda b: ("open", fabric.canonical_bytes(b))),
    st.integers(0, 1000).map(lambda i: ("chunk", fabric.canonical_bytes(i)))),
    min_size=1, max_size=8)


@settings(max_examples=200, deadline=None)
@given(_FRAMES, st.data())
def test_any_split_gives_feeds_frames(frames, data):
    wire = b"".join(
        (_control(p, sid=1 + i) if k == "open" else
         ENC.encode(FrameKind.STREAM_CHUNK, p, stream_id=1 + i, seq=1))
        for i, (k, p) in enumerate(frames))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=6)))
    dec, ref = fabric.FrameDecoder(), fabric.FrameDecoder()
    ref.feed(wire)
    want = list(ref)
    got = []
    at = 0
    for end in cuts + [len(wire)]:
        piece = wire[at:end]
        r = dec.feed_open(_in_buffer(piece), len(piece), INDEX)
        if r is not None:
            f, entry = r
            assert entry is _known_open(f, INDEX) is not None
            got.append(f)
        got.extend(dec)  # taken after each read, as the node does
        at = end
    assert len(got) == len(want)
    for a, b in zip(got, want):
        _same(a, b)
        assert a.offset == b.offset


def _reply(sid, value=b"x" * 64):
    rec = fabric.canonical_bytes(value)
    return (ENC.encode(FrameKind.STREAM_START, fabric.canonical_bytes({"metadata": None}),
                       stream_id=sid)
            + ENC.encode(FrameKind.STREAM_CHUNK, fabric.canonical_bytes(rec), stream_id=sid,
                         seq=1)
            + ENC.encode(FrameKind.STREAM_END, fabric.canonical_bytes(
                {"bytes": len(rec), "chunks": 1, "truncated": False}), stream_id=sid, seq=2))


def test_feed_reply_of_nbytes_is_feed_reply_of_the_slice():
    whole = _reply(5) + _reply(6)
    for held in (0, 7):  # nothing held, or part of a frame before
        wire = whole[held:]
        for n in (0, 10, len(wire) // 2, len(wire) - 1, len(wire)):
            dec, ref = fabric.FrameDecoder(), fabric.FrameDecoder()
            if held:
                dec.feed(whole[:held])
                ref.feed(whole[:held])
            buf = _in_buffer(wire)
            got = dec.feed_reply(buf, None, n)
            want = ref.feed_reply(bytes(wire[:n]))
            assert (got is None) == (want is None)
            if got is not None:
                assert got[0] == want[0] and got[2:4] == want[2:4] and got[5] == want[5]
            assert [bytes(f.payload) for f in dec] == [bytes(f.payload) for f in ref]
            assert dec.partial == ref.partial
    wire = whole
    dec = fabric.FrameDecoder()
    assert dec.feed_reply(wire, nbytes=None)[0] == 5  # None: the whole
    with pytest.raises(ValueError, match="nbytes must be in"):
        fabric.FrameDecoder().feed_reply(wire, None, len(wire) + 1)
    with pytest.raises(ValueError, match="nbytes must be >= 0"):
        fabric.FrameDecoder().feed_reply(wire, None, -1)
    held = fabric.FrameDecoder()
    held.feed(wire[:7])
    with pytest.raises(ValueError, match="nbytes must be in"):  # also past a partial frame
        held.feed_reply(wire[7:], None, len(wire))
