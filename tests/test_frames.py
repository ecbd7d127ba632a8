"""Frames: round trips of every kind, any split of the input, the C codec
against the pure-Python reference, payloads against msgpack, and limits."""

import pickle
import random

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fabric
import frames_ref as ref
from fabric import Frame, FrameDecoder, FrameEncoder, FrameKind, StreamFrameLimits


def sample_frames():
    frames = []
    for k in FrameKind:
        flags = fabric.FRAME_FLAG_DIAGNOSTIC if k == FrameKind.STREAM_CHUNK else 0
        frames.append(Frame(k, msgpack.packb({"kind": k.name, "n": int(k)}),
                            stream_id=(int(k) << 40) + 5, seq=int(k) * 1000003, flags=flags))
    frames.append(Frame(FrameKind.PING, b""))
    frames.append(Frame(FrameKind.STREAM_CHUNK, bytes(range(256)) * 300, stream_id=2**64 - 1,
                        seq=2**64 - 1))
    return frames


def decode_all(data, *, pieces=None, limits=None):
    dec = FrameDecoder(limits)
    out = []
    for piece in pieces if pieces is not None else [data]:
        dec.feed(piece)
        out.extend(dec)
    dec.finish()
    return out


def test_every_kind_round_trips():
    frames = sample_frames()
    data = b"".join(f.encode() for f in frames)
    got = decode_all(data)
    assert got == frames
    for f, g in zip(frames, got):
        assert g.kind == f.kind and g.kind_name == FrameKind(f.kind).name
        assert bytes(g.payload) == bytes(f.payload)
        assert g.stream_id == f.stream_id and g.seq == f.seq and g.flags == f.flags
    assert [g.offset for g in got] == [sum(len(x.encode()) for x in frames[:i])
                                       for i in range(len(frames))]


def test_one_byte_at_a_time_and_random_splits():
    frames = sample_frames()
    data = b"".join(f.encode() for f in frames)
    assert decode_all(data, pieces=[data[i:i + 1] for i in range(len(data))]) == frames
    rng = random.Random(7)
    for _ in range(30):
        cuts = sorted(rng.sample(range(1, len(data)), rng.randrange(1, 40)))
        pieces = [data[a:b] for a, b in zip([0] + cuts, cuts + [len(data)])]
        # Mix bytes, bytearray and memoryview inputs.
        pieces = [p if i % 3 == 0 else bytearray(p) if i % 3 == 1 else memoryview(p)
                  for i, p in enumerate(pieces)]
        assert decode_all(data, pieces=pieces) == frames


def test_payload_is_zero_copy_for_bytes_input():
    data = FrameEncoder().encode(FrameKind.STREAM_CHUNK, b"x" * 1000)
    dec = FrameDecoder()
    dec.feed(data)
    f = next(dec)
    view = f.payload
    assert isinstance(view, memoryview) and view.readonly
    assert view.obj is f
    assert bytes(view) == b"x" * 1000
    del data, dec  # the frame keeps its bytes alive
    assert bytes(f.payload) == b"x" * 1000
    assert memoryview(f).tobytes() == b"x" * 1000


def test_encoder_forms_agree():
    enc = FrameEncoder()
    value = {"b": [1, 2.5, None], "a": b"\x00"}
    a = enc.encode_value(FrameKind.GOSSIP, value, stream_id=3, seq=4)
    b = enc.encode(FrameKind.GOSSIP, fabric.canonical_bytes(value), stream_id=3, seq=4)
    c = Frame(FrameKind.GOSSIP, fabric.canonical_bytes(value), stream_id=3, seq=4).encode()
    assert a == b == c
    many = enc.encode_many(FrameKind.STREAM_CHUNK, [b"a", b"bb", b""], stream_id=9, first_seq=5)
    got = decode_all(many)
    assert [(f.seq, bytes(f.payload)) for f in got] == [(5, b"a"), (6, b"bb"), (7, b"")]
    assert decode_all(a)[0].decode_payload() == value


def test_frames_pickle():
    for f in sample_frames()[:3]:
        assert pickle.loads(pickle.dumps(f)) == f


def test_golden_vectors_of_the_spec():
    # docs/spec/frames.md, "Golden vectors".
    assert Frame(FrameKind.PING, b"", stream_id=1, seq=2).encode().hex() == (
        "5346524d010a0000" "0000000000000001" "0000000000000002" "00000000" "00000000"
        + "%08x" % ref.crc32c(bytes.fromhex("5346524d010a0000000000000000000100000000000000020000000000000000")))
    chunk = Frame(FrameKind.STREAM_CHUNK, b"\x93\x01\x02\x03", stream_id=7, seq=1).encode()
    assert chunk.hex() == GOLDEN_CHUNK


GOLDEN_CHUNK = ref.frame(3, b"\x93\x01\x02\x03", stream_id=7, seq=1).hex()


frame_args = st.tuples(
    st.sampled_from(list(FrameKind)),
    st.binary(max_size=300),
    st.integers(0, 2**64 - 1),
    st.integers(0, 2**64 - 1),
    st.sampled_from([0, 1]),
)


@settings(max_examples=500, deadline=None)
@given(st.lists(frame_args, max_size=6), st.randoms())
def test_c_codec_matches_python_reference(specs, rnd):
    ours = b"".join(Frame(k, p, stream_id=s, seq=q, flags=fl).encode() for k, p, s, q, fl in specs)
    theirs = b"".join(ref.frame(int(k), p, stream_id=s, seq=q, flags=fl)
                      for k, p, s, q, fl in specs)
    assert ours == theirs
    cuts = sorted(rnd.sample(range(len(ours) + 1), min(len(ours) + 1, 5)))
    pieces = [ours[a:b] for a, b in zip([0] + cuts, cuts + [len(ours)])]
    got = decode_all(ours, pieces=pieces)
    assert [(f.kind, f.flags, f.stream_id, f.seq, bytes(f.payload)) for f in got] == \
        ref.parse(ours)


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=120))
def test_random_bytes_refused_alike_by_c_and_reference(data):
    try:
        expected = ref.parse(data)
    except ValueError:
        expected = None
    try:
        got = decode_all(data)
    except fabric.FrameError as exc:
        assert expected is None
        assert "offset %d" % exc.offset in str(exc)
        assert 0 <= exc.offset <= len(data)
        return
    assert [(f.kind, f.flags, f.stream_id, f.seq, bytes(f.payload)) for f in got] == expected


plain = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text() | st.binary(),
    lambda ch: st.lists(ch, max_size=4) | st.dictionaries(st.text(max_size=6), ch, max_size=4),
    max_leaves=20)


@settings(max_examples=1000, deadline=None)
@given(plain)
def test_payload_differential_against_msgpack(value):
    """Our encoder's payload decodes equal through decode_payload and
    msgpack.unpackb; msgpack's own encoding decodes equal through ours."""
    data = FrameEncoder().encode_value(FrameKind.STREAM_CHUNK, value)
    (f,) = decode_all(data)
    assert f.decode_payload() == value
    assert msgpack.unpackb(f.payload, raw=False, strict_map_key=False) == value
    foreign = Frame(FrameKind.STREAM_CHUNK, msgpack.packb(value, use_bin_type=True))
    assert foreign.decode_payload() == value


def test_foreign_non_shortest_forms_accepted():
    cases = [
        (b"\xcf" + b"\x00" * 8, 0),                        # 0 as uint64
        (b"\xdb\x00\x00\x00\x02hi", "hi"),                 # short str as str32
        (b"\xdf\x00\x00\x00\x00", {}),                     # empty map as map32
        (b"\xdd\x00\x00\x00\x01\x05", [5]),                # array32
        (b"\xca\x3f\xc0\x00\x00", 1.5),                    # float32
        (b"\xd3\x00\x00\x00\x00\x00\x00\x00\x07", 7),     # int64 positive
    ]
    for payload, value in cases:
        assert Frame(FrameKind.STREAM_CHUNK, payload).decode_payload() == value
    ts = Frame(FrameKind.STREAM_CHUNK, b"\xd6\xff\x00\x00\x00\x01").decode_payload()
    assert isinstance(ts, fabric.Timestamp) and ts.seconds == 1


def test_decode_errors_count_from_the_stream():
    first = Frame(FrameKind.PING, b"\xc0").encode()
    bad = Frame(FrameKind.STREAM_CHUNK, b"\x92\x01\xc1").encode()
    frames = decode_all(first + bad)
    with pytest.raises(fabric.DecodeError) as info:
        frames[1].decode_payload()
    assert info.value.offset == len(first) + 36 + 2
    # A frame built locally counts from its payload.
    with pytest.raises(fabric.DecodeError) as info:
        Frame(FrameKind.STREAM_CHUNK, b"\x92\x01\xc1").decode_payload()
    assert info.value.offset == 2


# ---- limits -----------------------------------------------------------------------


def test_limits_defaults_and_validation():
    lim = StreamFrameLimits()
    assert lim.max_frame_payload_bytes == 1 << 20
    assert lim.max_stream_frames == 1024
    assert lim.max_inflight_frames == 64
    assert lim.max_duration_ms == 60000
    assert lim.max_rate_hz == 120
    assert lim == StreamFrameLimits() and hash(lim) == hash(StreamFrameLimits())
    assert lim.replace(max_rate_hz=5).max_rate_hz == 5
    assert pickle.loads(pickle.dumps(lim.replace(max_items=9))) == lim.replace(max_items=9)
    assert set(lim.to_dict()) == {"max_frame_payload_bytes", "max_stream_frames",
                                  "max_stream_bytes", "max_inflight_frames", "max_duration_ms",
                                  "max_rate_hz", "max_depth", "max_items"}
    for name in lim.to_dict():
        for bad in (0, -1):
            with pytest.raises(ValueError, match=name):
                StreamFrameLimits(**{name: bad})
        with pytest.raises(TypeError, match=name):
            StreamFrameLimits(**{name: 1.5})
        with pytest.raises(TypeError, match=name):
            StreamFrameLimits(**{name: True})
    with pytest.raises(ValueError, match="max_frame_payload_bytes"):
        StreamFrameLimits(max_frame_payload_bytes=2**32)
    with pytest.raises(ValueError, match="max_depth"):
        StreamFrameLimits(max_depth=fabric.MAX_DEPTH + 1)
    with pytest.raises(TypeError):
        StreamFrameLimits(max_bogus=1)
    with pytest.raises(TypeError):
        StreamFrameLimits(5)


@pytest.mark.parametrize("limit", [1, 100, 4096])
def test_payload_limit_at_the_boundary(limit):
    lim = StreamFrameLimits(max_frame_payload_bytes=limit)
    at = Frame(FrameKind.STREAM_CHUNK, b"z" * limit).encode()
    over = Frame(FrameKind.STREAM_CHUNK, b"z" * (limit + 1)).encode()
    assert len(decode_all(at, limits=lim)) == 1
    with pytest.raises(fabric.FrameError) as info:
        decode_all(at + over, limits=lim)
    assert info.value.violation == "payload-too-large"
    assert info.value.offset == len(at) + 24
    enc = FrameEncoder(lim)
    enc.encode(FrameKind.STREAM_CHUNK, b"z" * limit)
    with pytest.raises(fabric.FrameError, match="max_frame_payload_bytes"):
        enc.encode(FrameKind.STREAM_CHUNK, b"z" * (limit + 1))


def test_depth_and_items_limits_at_the_boundary():
    nested = [[[1]]]  # three containers
    f = Frame(FrameKind.STREAM_CHUNK, fabric.canonical_bytes(nested))
    assert f.decode_payload(StreamFrameLimits(max_depth=3)) == nested
    with pytest.raises(fabric.DecodeError):
        f.decode_payload(StreamFrameLimits(max_depth=2))
    items = list(range(9))  # the array and its 9 members: 10 items
    f = Frame(FrameKind.STREAM_CHUNK, fabric.canonical_bytes(items))
    assert f.decode_payload(StreamFrameLimits(max_items=10)) == items
    with pytest.raises(fabric.DecodeError):
        f.decode_payload(StreamFrameLimits(max_items=9))


def test_bad_arguments():
    with pytest.raises(fabric.FrameError, match="unknown frame kind 12"):
        Frame(12, b"")
    with pytest.raises(fabric.FrameError, match="reserved flag"):
        Frame(FrameKind.PING, b"", flags=2)
    with pytest.raises(ValueError, match="stream_id"):
        Frame(FrameKind.PING, b"", stream_id=-1)
    with pytest.raises(TypeError, match="payload"):
        Frame(FrameKind.PING, "text")
    with pytest.raises(TypeError):
        FrameDecoder(limits={"max_depth": 3})
    dec = FrameDecoder()
    with pytest.raises(fabric.FrameError):
        dec.feed(b"XXXX")
    with pytest.raises(fabric.FrameError):  # failed for good
        dec.feed(Frame(FrameKind.PING).encode())


def test_frames_before_an_error_stay_queued():
    good = Frame(FrameKind.PING, b"\xc0").encode()
    dec = FrameDecoder()
    with pytest.raises(fabric.FrameError) as info:
        dec.feed(good + good + b"SFRM\x09")
    assert info.value.offset == 2 * len(good) + 4
    assert info.value.violation == "unsupported-version"
    assert "version 9" in str(info.value)
    assert len(list(dec)) == 2


def test_encoder_header_over_parts_and_a_known_crc():
    from frames_ref import crc32c
    enc = fabric.FrameEncoder()
    whole = bytes(range(256)) * 40
    body = memoryview(whole)[100:]
    want = enc.encode(3, b"\xc1\x01" + bytes(body), stream_id=5, seq=2, flags=1)
    kw = dict(stream_id=5, seq=2, flags=1)
    assert enc.header(3, [b"\xc1\x01", body], **kw) == want[:36]
    assert enc.header(3, [b"\xc1\x01", body], crc_of=(whole, crc32c(whole)), **kw) == want[:36]
    assert enc.header(3, [body], crc_of=(whole, crc32c(whole)), **kw) == \
        enc.encode(3, bytes(body), **kw)[:36]
    # a wrong known CRC gives a frame the decoder refuses
    bad = enc.header(3, [b"\xc1\x01", body], crc_of=(whole, crc32c(whole) ^ 1), **kw)
    dec = fabric.FrameDecoder()
    with pytest.raises(fabric.FrameError, match="payload checksum"):
        dec.feed(bad + b"\xc1\x01" + bytes(body))
    with pytest.raises(ValueError, match="does not lie at the end"):
        enc.header(3, [memoryview(whole)[:10]], crc_of=(whole, 0))
    with pytest.raises(TypeError):
        enc.header(3, ["text"])
    with pytest.raises(fabric.FrameError, match="exceeds"):
        enc.header(3, [bytes(1 << 20), b"x"])


def test_decoder_feed_whole_takes_frames_where_they_lie():
    enc = fabric.FrameEncoder()
    data = bytearray(enc.encode(3, b"\xc4\x01a", seq=1) + enc.encode(3, b"\xc4\x02bc", seq=2))
    dec = fabric.FrameDecoder()
    assert dec.feed_whole(memoryview(data)[:50]) == 39  # the second frame is not whole
    assert dec.feed_whole(memoryview(data)[39:]) == len(data) - 39
    frames = list(dec)
    assert [f.decode_payload() for f in frames] == [b"a", b"bc"]
    data[-1] = ord("z")  # the payload is a view of data, not a copy
    assert bytes(frames[1].payload) == b"\xc4\x02bz"
    bad = bytearray(data)
    bad[1] = 0
    with pytest.raises(fabric.FrameError, match="bad magic at offset 1"):
        fabric.FrameDecoder().feed_whole(bad[:2])  # refused on the byte, not at 36
    dec = fabric.FrameDecoder()
    dec.feed(bytes(data[:40]))
    with pytest.raises(ValueError, match="left part of a frame"):
        dec.feed_whole(data[40:])
