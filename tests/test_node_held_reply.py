"""``FrameEncoder.encode_held_reply``: a node's usual reply (START, one
CHUNK, END) in one C call, the same bytes as the general path of
``Node._send_value`` (the record's canonical bytes, ``encode_reply`` with the
cached START payload and the one-chunk END payload), for replies of every
shape and around every size at which an integer's or a bin's encoding
changes; None over the limit; bad arguments refused."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import canonical_bytes
from fabric.frames import FrameKind
from fabric.node import protocol as P
from fabric.replies import EvalReply, reply_record

import node_ops

_KEY = node_ops.double.request(1).key
_START = canonical_bytes({"metadata": {"source": "local"}})


def _general(enc, sid, start, reply):
    """What Node._send_value writes for a one-chunk reply without a claim."""
    data = canonical_bytes(reply_record(reply))
    end = canonical_bytes({"chunks": 1, "bytes": len(data), "truncated": False})
    return enc.encode_reply(sid, start, data, end)


# sizes around 127/128 (fixint), 255/256 (uint8), 65535/65536 (uint16), and
# the bin8/bin16/bin32 headers of the chunk
_SIZES = [0, 1, 100, 118, 119, 120, 121, 122, 240, 245, 246, 247, 248, 250, 255, 256,
          65_520, 65_525, 65_526, 65_527, 65_530, 65_535, 65_536, 70_000]


@pytest.mark.parametrize("size", _SIZES)
def test_the_same_bytes_as_the_general_path_at_every_size(size):
    enc = P.encoder()
    reply = EvalReply(b"x" * size, (), None, _KEY, "local")
    got = enc.encode_held_reply(7, _START, reply, 1 << 30)
    assert got == _general(enc, 7, _START, reply)
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    dec.feed(got)
    frames = list(dec)
    assert [(f.kind, f.stream_id, f.seq) for f in frames] == [
        (FrameKind.STREAM_START, 7, 0), (FrameKind.STREAM_CHUNK, 7, 1),
        (FrameKind.STREAM_END, 7, 2)]
    assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == b"x" * size


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)
_DIAGS = st.lists(st.fixed_dictionaries({"kind": st.text(max_size=8),
                                         "message": st.text(max_size=20)}), max_size=3)


@settings(max_examples=300, deadline=None)
@given(value=_VALUES, diags=_DIAGS, trace=st.none() | st.lists(st.text(max_size=8), max_size=3),
       sid=st.integers(1, (1 << 63) - 1), source=st.sampled_from(["local", "held", "home"]))
def test_the_same_bytes_as_the_general_path_for_any_reply(value, diags, trace, sid, source):
    enc = P.encoder()
    start = canonical_bytes({"metadata": {"source": source}})
    reply = EvalReply(value, tuple(diags), trace, _KEY, source)
    assert enc.encode_held_reply(sid, start, reply, 1 << 30) == _general(enc, sid, start, reply)


def test_over_the_limit_it_is_none_and_at_the_limit_it_is_encoded():
    enc = P.encoder()
    reply = EvalReply(b"y" * 1000, (), None, _KEY, "local")
    n = len(canonical_bytes(reply_record(reply)))
    assert enc.encode_held_reply(1, _START, reply, n - 1) is None
    assert enc.encode_held_reply(1, _START, reply, n) == _general(enc, 1, _START, reply)


def test_a_chunk_over_the_encoders_frame_limit_raises_frame_error():
    enc = P.encoder(1024)
    reply = EvalReply(b"z" * 2000, (), None, _KEY, "local")
    with pytest.raises(fabric.FrameError, match="payload"):
        enc.encode_held_reply(1, _START, reply, 1 << 30)
    with pytest.raises(fabric.FrameError, match="payload"):
        enc.encode_held_reply(1, b"s" * 2000, EvalReply(1, (), None, _KEY, "local"), 1 << 30)


def test_bad_arguments_are_refused_with_type_errors():
    enc = P.encoder()
    reply = EvalReply(1, (), None, _KEY, "local")
    with pytest.raises(TypeError, match="EvalReply"):
        enc.encode_held_reply(1, _START, [1, [], None], 100)
    with pytest.raises(TypeError, match="start must be bytes"):
        enc.encode_held_reply(1, "start", reply, 100)
    with pytest.raises(TypeError, match="stream_id must be an int"):
        enc.encode_held_reply("1", _START, reply, 100)
    with pytest.raises(TypeError, match="limit must be an int"):
        enc.encode_held_reply(1, _START, reply, None)
    with pytest.raises(TypeError):
        enc.encode_held_reply(1, _START, reply)
    with pytest.raises(TypeError, match="cannot|not|unsupported"):
        enc.encode_held_reply(1, _START, EvalReply(object(), (), None, _KEY, "local"), 100)
