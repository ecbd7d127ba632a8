"""The stream codec: items to frames and back, each limit at its boundary,
diagnostics, and the protocol checks on receive."""

import pytest

import fabric
from fabric import (Frame, FrameKind, StreamDiagnostic, StreamFrameLimits,
                    stream_frames_to_events, stream_frames_to_stream, stream_to_frames)
from fabric.frames import Chunk, Diagnostic, Done, Failed, Started

FAST = StreamFrameLimits(max_rate_hz=10**9)  # these tests are not about rate


class FakeClock:
    def __init__(self, step):
        self.t, self.step = 0.0, step

    def __call__(self):
        self.t += self.step
        return self.t


def encode(items, limits=FAST, **kw):
    return list(stream_to_frames(items, stream_id=kw.pop("stream_id", 4), limits=limits, **kw))


def test_round_trip_items_and_metadata():
    items = [None, 1, -2, 2.5, "text", b"bin", [1, [2]], {"k": {"n": 1}}, frozenset({1, 2})]
    frames = encode(items, metadata={"op": "render", "v": 2})
    kinds = [f.kind for f in frames]
    assert kinds == [FrameKind.STREAM_START] + [FrameKind.STREAM_CHUNK] * len(items) + \
        [FrameKind.STREAM_END]
    assert [f.seq for f in frames] == list(range(len(frames)))
    events = list(stream_frames_to_events(frames))
    assert events[0] == Started(0, 4, {"op": "render", "v": 2})
    assert [e.item for e in events[1:-1]] == items
    assert events[-1] == Done(len(frames) - 1, len(items), False)
    wire = b"".join(f.encode() for f in frames)
    assert list(stream_frames_to_stream(wire)) == items
    assert list(stream_frames_to_stream(frames)) == items


def test_empty_stream():
    frames = encode([])
    assert [f.kind for f in frames] == [FrameKind.STREAM_START, FrameKind.STREAM_END]
    assert list(stream_frames_to_events(frames))[-1] == Done(1, 0, False)


def _diag(frames):
    events = list(stream_frames_to_events(frames))
    assert isinstance(events[-1], Done)
    diags = [e.diagnostic for e in events if isinstance(e, Diagnostic)]
    return [e.item for e in events if isinstance(e, Chunk)], diags, events[-1]


@pytest.mark.parametrize("n", [1, 2, 10])
def test_max_stream_frames_boundary(n):
    lim = FAST.replace(max_stream_frames=n)
    items, diags, done = _diag(encode(range(n), lim))
    assert items == list(range(n)) and diags == [] and not done.truncated
    items, diags, done = _diag(encode(range(n + 5), lim))
    assert items == list(range(n)) and done.truncated
    (d,) = diags
    assert (d.kind, d.limit, d.count) == ("LimitExceeded", "max_stream_frames", n + 1)


def test_max_frame_payload_boundary():
    lim = FAST.replace(max_frame_payload_bytes=12)
    exact = b"x" * 8  # value prefix (2 bytes) + bin8 header (2 bytes) + 8 = 12 bytes
    items, diags, _ = _diag(encode([exact], lim))
    assert items == [exact] and diags == []
    items, diags, _ = _diag(encode([exact, exact + b"y"], lim))
    assert items == [exact]
    assert (diags[0].limit, diags[0].count) == ("max_frame_payload_bytes", 13)


def test_max_stream_bytes_boundary():
    lim = FAST.replace(max_stream_bytes=18)
    items, diags, _ = _diag(encode([1] * 6, lim))  # six 3-byte payloads (prefix + 1 byte)
    assert items == [1] * 6 and diags == []
    items, diags, _ = _diag(encode([1] * 7, lim))
    assert items == [1] * 6
    assert (diags[0].limit, diags[0].count) == ("max_stream_bytes", 21)


def test_max_duration_boundary():
    lim = FAST.replace(max_duration_ms=1000)
    # Start at t=0.1, items at 0.2, 0.3, ... : item k arrives (k)*100 ms later.
    items, diags, _ = _diag(encode(range(10), lim, clock=FakeClock(0.1)))
    assert items == list(range(10)) and diags == []
    items, diags, _ = _diag(encode(range(11), lim, clock=FakeClock(0.1)))
    assert items == list(range(10))
    assert (diags[0].limit, diags[0].count) == ("max_duration_ms", 1100)


def test_max_rate_boundary():
    lim = StreamFrameLimits(max_rate_hz=5)
    # 10 ms apart: 5 items fit in the one-second window, the 6th breaches.
    items, diags, _ = _diag(encode(range(5), lim, clock=FakeClock(0.01)))
    assert items == list(range(5)) and diags == []
    items, diags, _ = _diag(encode(range(6), lim, clock=FakeClock(0.01)))
    assert items == list(range(5))
    assert (diags[0].limit, diags[0].count) == ("max_rate_hz", 6)
    # At 5 Hz exactly (200 ms apart) the window never holds more than 5.
    items, diags, _ = _diag(encode(range(30), lim, clock=FakeClock(0.2)))
    assert len(items) == 30 and diags == []


def test_depth_and_items_boundary():
    lim = FAST.replace(max_depth=2)
    items, diags, _ = _diag(encode([[[]]], lim))  # two containers
    assert diags == []
    items, diags, _ = _diag(encode([[[1]], [[[1]]]], lim))
    assert items == [[[1]]]
    assert (diags[0].limit, diags[0].count) == ("max_depth", 3)
    lim = FAST.replace(max_items=4)
    items, diags, _ = _diag(encode([[1, 2, 3], [1, 2, 3, 4]], lim))
    assert items == [[1, 2, 3]]
    assert (diags[0].limit, diags[0].count) == ("max_items", 5)


def test_producer_error_and_unencodable_item():
    def gen():
        yield 1
        raise RuntimeError("disk on fire")

    items, diags, done = _diag(encode(gen()))
    assert items == [1] and done.truncated
    assert diags[0].kind == "RemoteError" and "disk on fire" in diags[0].message
    items, diags, _ = _diag(encode([1, object(), 3]))
    assert items == [1] and diags[0].kind == "ChunkPayloadError"
    assert "item 2" in diags[0].message


def test_generator_is_closed_when_cut():
    closed = []

    def gen():
        try:
            yield from range(100)
        finally:
            closed.append(True)

    encode(gen(), FAST.replace(max_stream_frames=3))
    assert closed == [True]


def test_secret_never_enters_frames():
    frames = encode([{"token": fabric.Secret("hunter2-planted")}])
    assert all(b"hunter2" not in f.encode() for f in frames)


def test_diagnostic_surfaces_as_object_or_exception():
    frames = encode(range(5), FAST.replace(max_stream_frames=2))
    got = list(stream_frames_to_stream(frames))
    assert got[:2] == [0, 1] and isinstance(got[2], StreamDiagnostic)
    with pytest.raises(StreamDiagnostic) as info:
        list(stream_frames_to_stream(frames, on_diagnostic="raise"))
    assert info.value.limit == "max_stream_frames" and info.value.count == 3
    assert isinstance(info.value, fabric.FabricError)
    with pytest.raises(ValueError):
        list(stream_frames_to_stream(frames, on_diagnostic="ignore"))


def test_cut_stream_is_reported_not_complete():
    frames = encode(range(3))
    events = list(stream_frames_to_events(frames[:-1]))
    assert not any(isinstance(e, Done) for e in events)
    assert isinstance(events[-1], Failed)
    assert events[-1].error.violation == "cut"
    with pytest.raises(fabric.FrameError, match="stream cut"):
        list(stream_frames_to_stream(frames[:-1]))


def test_frames_after_end_rejected():
    frames = encode([1])
    extra = Frame(FrameKind.STREAM_CHUNK, b"\x02", stream_id=4, seq=len(frames))
    events = list(stream_frames_to_events(frames + [extra]))
    assert isinstance(events[-2], Done) and isinstance(events[-1], Failed)
    assert events[-1].error.violation == "after-end"


def test_receiver_limits():
    frames = encode(range(10))
    lim = FAST.replace(max_stream_frames=5)
    events = list(stream_frames_to_events(frames, limits=lim))
    assert isinstance(events[-1], Failed)
    assert events[-1].error.violation == "max_stream_frames"
    assert [e.item for e in events if isinstance(e, Chunk)] == list(range(5))


def test_error_frame_from_the_peer():
    frames = encode([1])[:2] + [Frame(FrameKind.ERROR, fabric.canonical_bytes(
        {"kind": "RemoteError", "message": "worker died"}), stream_id=4, seq=2)]
    with pytest.raises(StreamDiagnostic, match="worker died"):
        list(stream_frames_to_stream(frames))


def test_bad_arguments():
    with pytest.raises(TypeError):
        list(stream_to_frames([1], stream_id=1, limits={"max_depth": 1}))
    with pytest.raises(TypeError):
        list(stream_to_frames([1], stream_id=1, metadata=object()))
    with pytest.raises(TypeError):
        list(stream_frames_to_stream([b"not a frame"]))


# ---- cassette ------------------------------------------------------------------


def _key(n):
    return fabric.ContentKey.of(fabric.EvalRequest("render", (n,), stream=True))


def test_stream_through_a_cassette_file(tmp_path):
    items = [{"frame": i, "pixels": bytes([i]) * 50} for i in range(20)]
    path = str(tmp_path / "c.ledger")
    with fabric.EvalCassette(path) as cas:
        n = fabric.stream_frames_to_cassette(encode(items), cas, _key(1))
        assert n == 20
        # First write wins: the same key again records nothing.
        assert fabric.stream_frames_to_cassette(encode([9]), cas, _key(1)) == 0
    with fabric.EvalCassette(path, mode="r") as cas:
        frames = list(fabric.cassette_to_stream_frames(cas, _key(1), stream_id=11,
                                                       limits=FAST))
        assert list(stream_frames_to_stream(frames)) == items
        with pytest.raises(KeyError):
            fabric.cassette_to_stream_frames(cas, _key(2), stream_id=1)


def test_incomplete_streams_are_never_recorded(tmp_path):
    with fabric.EvalCassette(str(tmp_path / "c.ledger")) as cas:
        frames = encode(range(5), FAST.replace(max_stream_frames=2))
        with pytest.raises(StreamDiagnostic):
            fabric.stream_frames_to_cassette(frames, cas, _key(3))
        with pytest.raises(fabric.FrameError, match="cut"):
            fabric.stream_frames_to_cassette(encode(range(3))[:-1], cas, _key(4))
        assert cas.get_stream(_key(3)) is None and cas.get_stream(_key(4)) is None
