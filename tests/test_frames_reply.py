"""A one-chunk reply in one call: ``FrameEncoder.encode_reply`` (the node's
usual answer) and ``FrameDecoder.take_reply`` (the async client's), checked
against the frame-by-frame calls they stand for."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import FrameDecoder, FrameEncoder, canonical_bytes
from fabric.frames import FrameKind, StreamFrameLimits

START = canonical_bytes({"metadata": {"source": "held"}})
DATA = canonical_bytes([b"x" * 64, [], None])
END = canonical_bytes({"chunks": 1, "bytes": len(DATA), "truncated": False})


def three(enc, sid, start=START, data=DATA, end=END, *, seqs=(0, 1, 2), flags=0,
          sids=None, kinds=(FrameKind.STREAM_START, FrameKind.STREAM_CHUNK,
                            FrameKind.STREAM_END)):
    s0, s1, s2 = sids or (sid, sid, sid)
    return (enc.encode(kinds[0], start, stream_id=s0, seq=seqs[0])
            + enc.encode_value(kinds[1], data, stream_id=s1, seq=seqs[1], flags=flags)
            + enc.encode(kinds[2], end, stream_id=s2, seq=seqs[2]))


def test_encode_reply_is_the_three_frames_joined():
    enc = FrameEncoder()
    for sid in (1, 7, 2**40):
        for data in (b"", DATA, b"\0" * 70_000):
            assert enc.encode_reply(sid, START, data, END) == three(enc, sid, data=data)


def test_encode_reply_checks_its_arguments():
    enc = FrameEncoder(StreamFrameLimits(max_frame_payload_bytes=100))
    with pytest.raises(fabric.FrameError, match="exceeds max_frame_payload_bytes=100"):
        enc.encode_reply(1, START, b"x" * 200, END)  # the chunk's payload
    with pytest.raises(fabric.FrameError, match="exceeds"):
        enc.encode_reply(1, b"x" * 101, b"", END)
    with pytest.raises(fabric.FrameError, match="exceeds"):
        enc.encode_reply(1, START, b"", b"x" * 101)
    with pytest.raises(TypeError, match="must be bytes"):
        enc.encode_reply(1, START, "text", END)
    with pytest.raises(TypeError, match="must be bytes"):
        enc.encode_reply(1, bytearray(START), b"", END)
    with pytest.raises(ValueError):
        enc.encode_reply(-1, START, b"", END)
    with pytest.raises(TypeError, match="stream_id"):
        enc.encode_reply(True, START, b"", END)
    with pytest.raises(TypeError):
        enc.encode_reply(1, START, b"")


def test_take_reply_takes_the_three_frames_after_a_split_at_every_byte():
    enc = FrameEncoder()
    wire = enc.encode_reply(5, START, DATA, END) + enc.encode(FrameKind.PING, b"\x90")
    whole = len(wire) - 37  # the reply's bytes, the PING after them
    for cut in range(len(wire) + 1):
        dec = FrameDecoder()
        dec.feed(memoryview(wire)[:cut])
        if cut < whole:
            assert dec.take_reply() is None
            dec.feed(memoryview(wire)[cut:])
            got = dec.take_reply()
        else:
            got = dec.take_reply()
            dec.feed(memoryview(wire)[cut:])
        assert got is not None, cut
        sid, start, start_payload, data, end, end_payload = got
        assert (sid, start_payload, data, end_payload) == (5, START, DATA, END)
        assert (start.kind, start.seq, end.kind, end.seq) == (FrameKind.STREAM_START, 0,
                                                                FrameKind.STREAM_END, 2)
        assert dec.take_reply() is None
        assert [f.kind for f in dec] == [FrameKind.PING]


def test_take_reply_from_a_bytes_feed_and_one_after_another():
    enc = FrameEncoder()
    dec = FrameDecoder()
    dec.feed(enc.encode_reply(1, START, DATA, END) + enc.encode_reply(3, START, b"", END))
    first, second = dec.take_reply(), dec.take_reply()
    assert (first[0], first[3], second[0], second[3]) == (1, DATA, 3, b"")
    assert dec.take_reply() is None and dec.pending == 0


def test_take_reply_leaves_any_other_shape_queued():
    enc = FrameEncoder()
    other = {
        "start seq": three(enc, 5, seqs=(1, 1, 2)),
        "chunk seq": three(enc, 5, seqs=(0, 2, 3)),
        "end seq": three(enc, 5, seqs=(0, 1, 3)),
        "diagnostic chunk": three(enc, 5, flags=fabric.FRAME_FLAG_DIAGNOSTIC),
        "stream 0": three(enc, 0),
        "another stream's chunk": three(enc, 5, sids=(5, 6, 5)),
        "another stream's end": three(enc, 5, sids=(5, 5, 6)),
        "an error for the end": three(enc, 5, kinds=(FrameKind.STREAM_START,
                                                     FrameKind.STREAM_CHUNK,
                                                     FrameKind.ERROR)),
        "two chunks": three(enc, 5, kinds=(FrameKind.STREAM_START, FrameKind.STREAM_CHUNK,
                                           FrameKind.STREAM_CHUNK)),
        "a chunk that is not bytes": three(enc, 5, data=[1, 2]),
        "no end yet": three(enc, 5)[:-1],
    }
    for what, wire in other.items():
        dec = FrameDecoder()
        dec.feed(wire)
        before = dec.pending
        assert dec.take_reply() is None, what
        assert dec.pending == before, what
        assert len(list(dec)) == before, what


def test_take_reply_decodes_the_chunk_under_the_limits_and_takes_nothing_on_error():
    enc = FrameEncoder()
    dec = FrameDecoder()
    bad = (enc.encode(FrameKind.STREAM_START, START, stream_id=5)
           + enc.encode(FrameKind.STREAM_CHUNK, b"\xc1", stream_id=5, seq=1)
           + enc.encode(FrameKind.STREAM_END, END, stream_id=5, seq=2))
    dec.feed(bad)
    with pytest.raises(fabric.DecodeError):
        dec.take_reply()
    assert dec.pending == 3
    deep = [[[[[[b"x"]]]]]]
    dec = FrameDecoder()
    dec.feed(three(enc, 5, data=deep))
    with pytest.raises(fabric.DecodeError):
        dec.take_reply(StreamFrameLimits(max_depth=2))
    assert dec.pending == 3
    # decoded under limits that allow it, the chunk is a list, not bytes: left queued
    assert dec.take_reply(limits=StreamFrameLimits(max_depth=8)) is None
    assert dec.pending == 3


_ERRORS = (fabric.FrameError, fabric.DecodeError)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(st.data())
def test_take_reply_on_mutated_bytes_refuses_or_agrees_with_the_frames(data):
    # Untrusted bytes: a reply with bits flipped, bytes cut or inserted.
    # take_reply raises a fabric error, takes nothing, or takes exactly
    # what the frame-by-frame decoder reads from the same bytes.
    wire = bytearray(FrameEncoder().encode_reply(5, START, DATA, END))
    for _ in range(data.draw(st.integers(1, 4))):
        op = data.draw(st.sampled_from(("flip", "cut", "insert")))
        i = data.draw(st.integers(0, max(0, len(wire) - 1)))
        if op == "flip" and wire:
            wire[i] ^= 1 << data.draw(st.integers(0, 7))
        elif op == "cut":
            del wire[i:i + data.draw(st.integers(1, 8))]
        else:
            wire[i:i] = data.draw(st.binary(min_size=1, max_size=8))
    dec = FrameDecoder()
    try:
        dec.feed(bytes(wire))
        pending = dec.pending
        got = dec.take_reply()
    except _ERRORS:
        return
    ref = FrameDecoder()
    ref.feed(bytes(wire))
    frames = list(ref)
    if got is None:
        assert dec.pending == pending == len(frames)
        return
    sid, start, start_payload, value, end, end_payload = got
    assert [f.kind for f in frames[:3]] == [FrameKind.STREAM_START, FrameKind.STREAM_CHUNK,
                                            FrameKind.STREAM_END]
    assert {f.stream_id for f in frames[:3]} == {sid}
    assert (bytes(frames[0].payload), bytes(frames[2].payload)) == (start_payload, end_payload)
    assert frames[1].decode_payload() == value
    assert dec.pending == pending - 3


_KINDS = (FrameKind.STREAM_START, FrameKind.STREAM_CHUNK, FrameKind.STREAM_END,
          FrameKind.ERROR, FrameKind.PING)


@settings(max_examples=400, deadline=None, derandomize=True)
@given(kinds=st.one_of(st.just(_KINDS[:3]), st.tuples(*[st.sampled_from(_KINDS)] * 3)),
       seqs=st.one_of(st.just((0, 1, 2)), st.tuples(*[st.integers(0, 3)] * 3)),
       sids=st.one_of(st.just((5, 5, 5)), st.tuples(*[st.sampled_from((0, 5, 6))] * 3)),
       flags=st.sampled_from((0, 0, 0, fabric.FRAME_FLAG_DIAGNOSTIC)),
       value=st.one_of(st.binary(max_size=40), st.binary(min_size=1, max_size=9), st.lists(st.integers(), max_size=3),
                       st.text(max_size=5), st.none()),
       payloads=st.tuples(st.binary(max_size=12), st.binary(max_size=12)))
def test_take_reply_takes_exactly_the_one_chunk_reply_shape(kinds, seqs, sids, flags, value,
                                                           payloads):
    # Well-formed frames of every shape near a reply's: taken when, and only
    # when, they are START seq 0, CHUNK seq 1 holding bytes, END seq 2 of one
    # stream other than 0, with no flags; then exactly what they hold.
    enc = FrameEncoder()
    wire = three(enc, 0, payloads[0], value, payloads[1], seqs=seqs, flags=flags,
                 sids=sids, kinds=kinds)
    dec = FrameDecoder()
    dec.feed(wire)
    got = dec.take_reply()
    shape = (kinds == _KINDS[:3] and seqs == (0, 1, 2) and sids[0] != 0
             and len(set(sids)) == 1 and flags == 0 and isinstance(value, bytes))
    assert (got is not None) == shape
    if got is None:
        assert dec.pending == 3
    else:
        assert got[0] == sids[0] and got[2:4] == (payloads[0], value)
        assert got[5] == payloads[1] and dec.pending == 0
