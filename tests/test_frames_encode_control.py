"""``FrameEncoder.encode_control(stream_id, payload)``: the async client's
open frame, the bytes ``encode(CONTROL, payload, stream_id=...)`` gives."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric._core import FrameEncoder
from fabric.frames import FrameKind, StreamFrameLimits


@settings(max_examples=200, deadline=None, derandomize=True)
@given(st.integers(0, 2**64 - 1), st.binary(max_size=600))
def test_the_bytes_of_encode(sid, payload):
    enc = FrameEncoder()
    assert enc.encode_control(sid, payload) == enc.encode(FrameKind.CONTROL, payload,
                                                          stream_id=sid)


def test_refusals_are_encodes():
    enc = FrameEncoder(StreamFrameLimits(max_frame_payload_bytes=10))
    assert enc.encode_control(1, b"x" * 10) == enc.encode(FrameKind.CONTROL, b"x" * 10,
                                                          stream_id=1)
    with pytest.raises(fabric.FrameError, match="exceeds max_frame_payload_bytes=10"):
        enc.encode_control(1, b"x" * 11)
    with pytest.raises(ValueError):
        enc.encode_control(-1, b"")
    with pytest.raises(ValueError):
        enc.encode_control(2**64, b"")
    with pytest.raises(TypeError):
        enc.encode_control(True, b"")
    with pytest.raises(TypeError, match="payload must be bytes"):
        enc.encode_control(1, bytearray(b"x"))
    with pytest.raises(TypeError, match="2 positional arguments"):
        enc.encode_control(1)
