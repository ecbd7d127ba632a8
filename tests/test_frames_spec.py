"""The golden vectors of docs/spec/frames.md, against the codec and the
Python reference."""

import re

import fabric
import frames_ref as ref
from fabric import Frame, FrameKind, StreamControl

import os

SPEC = os.path.join(os.path.dirname(__file__), "..", "docs", "spec", "frames.md")


def vectors():
    text = open(SPEC).read()
    return [bytes.fromhex(h) for h in re.findall(r"`(5346524d[0-9a-f]+)`", text)]


def test_vectors_in_the_spec():
    got = [
        Frame(FrameKind.PING, b"", stream_id=1, seq=2).encode(),
        Frame(FrameKind.STREAM_CHUNK, b"\x93\x01\x02\x03", stream_id=7, seq=1).encode(),
        *[f.encode() for f in fabric.stream_to_frames(["a"], stream_id=5)],
        StreamControl.next(9, limit=4).to_frame({"stream.read", "stream.remote.network"}).encode(),
    ]
    assert vectors() == got
    for v in vectors():
        ref.parse(v)  # the reference accepts each
    assert list(fabric.stream_frames_to_stream(b"".join(got[2:5]))) == ["a"]
