"""``FrameDecoder.feed_reply(data, limits)``, the async client's read: the
same as ``feed(data)`` then ``take_reply(limits)`` (its result, the frames
left queued, the decoder's state and its errors), checked against those two
calls on one decoder each for replies, other shapes, any split of the bytes
and mutated bytes."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import FrameDecoder, FrameEncoder, canonical_bytes
from fabric.frames import FrameKind, StreamFrameLimits

from test_frames_reply import DATA, END, START, three

_ERRORS = (fabric.FrameError, fabric.DecodeError)


def _frame(f):
    return (f.kind, f.stream_id, f.seq, f.flags, f.offset, bytes(f.payload))


def _taken(r):
    if r is None:
        return None
    sid, start, sp, data, end, ep = r
    assert bytes(start.payload) == sp and bytes(end.payload) == ep
    return (sid, _frame(start), sp, data, _frame(end), ep)


def _step(dec, data, limits, new):
    """One read on dec: (what it returned or raised, the decoder's state)."""
    try:
        if new:
            out = ("ok", _taken(dec.feed_reply(data, limits)))
        else:
            dec.feed(data)
            out = ("ok", _taken(dec.take_reply(limits)))
    except _ERRORS as exc:
        out = (type(exc).__name__, str(exc))
    return out, (dec.offset, dec.partial, dec.pending)


def same(reads, limits=None, kind=bytes):
    """The reads (byte strings, fed in turn as ``kind``) agree; the frames
    left queued at the end too."""
    old, new = FrameDecoder(), FrameDecoder()
    for data in reads:
        a = _step(old, kind(data), limits, False)
        b = _step(new, kind(data), limits, True)
        assert a == b, (reads, a, b)
        if a[0][0] != "ok":
            break
    assert [_frame(f) for f in old] == [_frame(f) for f in new]
    return b


def test_the_usual_reply_is_taken_and_what_follows_left_queued():
    enc = FrameEncoder()
    ping = enc.encode(FrameKind.PING, b"\x90", stream_id=0)
    for kind in (bytes, bytearray, memoryview):
        out, state = same([enc.encode_reply(5, START, DATA, END) + ping], kind=kind)
        assert out[0] == "ok" and out[1][0] == 5 and out[1][3] == DATA
        assert state[2] == 1  # the PING
        out, state = same([enc.encode_reply(5, START, DATA, END)
                           + enc.encode_reply(7, START, b"", END)], kind=kind)
        assert out[1][0] == 5 and state[2] == 3  # the second reply's frames, queued


def test_many_frames_in_one_read():
    # more frames than feed_reply keeps on its stack (8): the rest queued alike
    enc = FrameEncoder()
    wire = b"".join(enc.encode_reply(sid, START, DATA, END) for sid in range(1, 12))
    for kind in (bytes, memoryview):
        out, state = same([wire], kind=kind)
        assert out[1][0] == 1 and state[2] == 30
        bad = bytearray(wire)
        bad[-1] ^= 1  # the last END fails its CRC: the 32 frames before it stay queued
        out, state = same([bytes(bad)], kind=kind)
        assert out[0] == "FrameError" and state[2] == 32


def test_any_split_of_two_replies_and_a_partial_one():
    enc = FrameEncoder()
    wire = (enc.encode_reply(1, START, DATA, END) + enc.encode_reply(3, START, b"", END)
            + enc.encode_reply(9, START, DATA, END)[:50])
    for cut in range(len(wire) + 1):
        for kind in (bytes, memoryview):
            same([wire[:cut], wire[cut:]], kind=kind)


def test_other_shapes_are_left_queued_as_feed_leaves_them():
    enc = FrameEncoder()
    for wire in (three(enc, 5, seqs=(1, 1, 2)), three(enc, 0),
                 three(enc, 5, sids=(5, 6, 5)), three(enc, 5, data=[1, 2]),
                 three(enc, 5, flags=fabric.FRAME_FLAG_DIAGNOSTIC),
                 enc.encode(FrameKind.ERROR, canonical_bytes({"x": 1}), stream_id=5)
                 + enc.encode_reply(6, START, DATA, END),
                 three(enc, 5)[:-1], b""):
        out, state = same([wire])
        assert out == ("ok", None)


def test_errors_are_feeds_and_take_replys():
    enc = FrameEncoder()
    bad_chunk = (enc.encode(FrameKind.STREAM_START, START, stream_id=5)
                 + enc.encode(FrameKind.STREAM_CHUNK, b"\xc1", stream_id=5, seq=1)
                 + enc.encode(FrameKind.STREAM_END, END, stream_id=5, seq=2))
    out, state = same([bad_chunk])
    assert out[0] == "DecodeError" and state[2] == 3  # nothing taken
    out, _ = same([three(enc, 5, data=[[[[[[b"x"]]]]]])], StreamFrameLimits(max_depth=2))
    assert out[0] == "DecodeError"
    reply = bytearray(enc.encode_reply(5, START, DATA, END))
    reply[-1] ^= 1  # the END's payload: its CRC fails
    out, state = same([bytes(reply)])
    assert out[0] == "FrameError" and state[2] == 2  # the START and CHUNK before it
    out, _ = same([b"XXXX" + bytes(reply[4:])])
    assert out[0] == "FrameError"
    with pytest.raises(TypeError):
        FrameDecoder().feed_reply("text")
    with pytest.raises(TypeError):
        FrameDecoder().feed_reply()


def test_a_payload_seen_before_is_the_same_object():
    enc = FrameEncoder()
    dec = FrameDecoder()
    a = dec.feed_reply(memoryview(enc.encode_reply(1, START, DATA, END)))
    b = dec.feed_reply(memoryview(enc.encode_reply(2, START, b"", END)))
    assert a[2] is b[2] and a[5] is b[5] and a[1].payload == START
    other = canonical_bytes({"chunks": 1, "bytes": 0, "truncated": True})
    c = dec.feed_reply(memoryview(enc.encode_reply(3, START, b"", other)))
    assert c[5] == other and c[2] is a[2]


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.data())
def test_mutated_bytes_any_split(data):
    enc = FrameEncoder()
    wire = bytearray(enc.encode_reply(1, START, DATA, END) + enc.encode_reply(2, START, b"", END)
                     + enc.encode(FrameKind.PING, b"\x90"))
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(wire) - 1))
        op = data.draw(st.sampled_from(("flip", "cut", "insert")))
        if op == "flip":
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del wire[i]
        else:
            wire.insert(i, data.draw(st.integers(0, 255)))
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=3)))
    reads, at = [], 0
    for c in cuts + [len(wire)]:
        reads.append(bytes(wire[at:c]))
        at = c
    same(reads, kind=data.draw(st.sampled_from((bytes, memoryview))))
