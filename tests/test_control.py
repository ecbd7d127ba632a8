"""StreamControl: every operation round trips through frames, capabilities
are checked on send and on receive, malformed controls are refused."""

import pytest

import fabric
from fabric import CapabilityDenied, Frame, FrameKind, StreamControl
from fabric.control import CONTROL_CAPABILITIES, FAULT_KINDS, REMOTE_CAPABILITY

ALL = set(CONTROL_CAPABILITIES.values()) | {REMOTE_CAPABILITY}

EXAMPLES = [
    StreamControl.open(1),
    StreamControl.open(1, metadata={"profile": "preview", "w": 640}),
    StreamControl.next(2, limit=16),
    StreamControl.push(3, {"frame": b"\x00" * 10, "n": [1, 2]}),
    StreamControl.close(4),
    StreamControl.cancel(5),
    StreamControl.cancel(5, reason="user pressed stop"),
    StreamControl.stats(6),
    StreamControl.metadata(7),
] + [StreamControl.fault(8, kind, count=3) for kind in FAULT_KINDS]


@pytest.mark.parametrize("ctl", EXAMPLES, ids=repr)
def test_round_trip_through_frames_and_bytes(ctl):
    frame = ctl.to_frame(ALL, seq=9)
    assert frame.kind == FrameKind.CONTROL and frame.stream_id == ctl.stream_id
    assert frame.seq == 9
    assert StreamControl.from_frame(frame, ALL) == ctl
    dec = fabric.FrameDecoder()
    dec.feed(frame.encode())
    back = StreamControl.from_frame(next(dec), ALL)
    assert back == ctl and back.op == ctl.op and back.fields == ctl.fields
    assert hash(back) == hash(ctl)


def test_each_operation_needs_its_capability():
    assert set(CONTROL_CAPABILITIES) == {"open", "next", "push", "close", "cancel", "stats",
                                         "metadata", "fault"}
    expected = {"open": "stream.open", "next": "stream.read", "push": "stream.push",
                "close": "stream.cancel", "cancel": "stream.cancel", "stats": "stream.stats",
                "metadata": "stream.stats", "fault": "stream.stats"}
    assert dict(CONTROL_CAPABILITIES) == expected
    for ctl in EXAMPLES:
        need = expected[ctl.op]
        assert ctl.required_capabilities() == (need, REMOTE_CAPABILITY)
        assert ctl.required_capabilities(remote=False) == (need,)
        for missing in (need, REMOTE_CAPABILITY):
            with pytest.raises(CapabilityDenied) as info:
                ctl.to_frame(ALL - {missing})
            assert info.value.capability == missing
            assert repr(missing) in str(info.value)
            assert isinstance(info.value, PermissionError)
        ctl.check({need}, remote=False)


def test_capabilities_checked_on_receive():
    frame = StreamControl.push(3, 42).to_frame(ALL)
    with pytest.raises(CapabilityDenied, match="stream.push"):
        StreamControl.from_frame(frame, ALL - {"stream.push"})
    with pytest.raises(CapabilityDenied, match="stream.remote.network"):
        StreamControl.from_frame(frame, {"stream.push"})
    # A sender that skipped its own check gains nothing.
    forged = Frame(FrameKind.CONTROL, fabric.canonical_bytes({"op": "cancel"}), stream_id=3)
    with pytest.raises(CapabilityDenied, match="stream.cancel"):
        StreamControl.from_frame(forged, {"stream.read", REMOTE_CAPABILITY})


def test_local_construction_validates():
    with pytest.raises(ValueError, match="unknown control operation"):
        StreamControl("explode", 1)
    with pytest.raises(ValueError, match="missing its field 'limit'"):
        StreamControl("next", 1)
    with pytest.raises(ValueError, match="unknown field 'bogus'"):
        StreamControl("close", 1, bogus=1)
    with pytest.raises(ValueError, match="positive int"):
        StreamControl.next(1, limit=0)
    with pytest.raises(ValueError, match="one of drop"):
        StreamControl.fault(1, "meltdown")
    with pytest.raises(ValueError, match="stream_id"):
        StreamControl.close(-1)
    with pytest.raises(TypeError):
        StreamControl.close(1).check("stream.cancel")
    with pytest.raises(AttributeError):
        StreamControl.close(1).op = "open"


def test_received_refusals_name_field_and_offset():
    head = Frame(FrameKind.PING, b"\xc0").encode()
    bad = Frame(FrameKind.CONTROL, fabric.canonical_bytes({"op": "next", "limit": 1, "x": 2}),
                stream_id=3).encode()
    dec = fabric.FrameDecoder()
    dec.feed(head + bad)
    frames = list(dec)
    with pytest.raises(fabric.FrameError) as info:
        StreamControl.from_frame(frames[1], ALL)
    assert "'x'" in str(info.value)
    assert info.value.offset == len(head) + 36
    assert "offset %d" % (len(head) + 36) in str(info.value)
    with pytest.raises(TypeError):
        StreamControl.from_frame(b"raw", ALL)


def test_secret_in_push_is_not_sent():
    frame = StreamControl.push(1, {"k": fabric.Secret("planted-secret-123")}).to_frame(ALL)
    assert b"planted-secret-123" not in frame.encode()


from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

_values = st.recursive(st.none() | st.booleans() | st.integers(-5, 5) | st.text(max_size=8)
                       | st.sampled_from(list(CONTROL_CAPABILITIES) + list(FAULT_KINDS)),
                       lambda ch: st.lists(ch, max_size=3)
                       | st.dictionaries(st.sampled_from(["op", "limit", "item", "kind",
                                                          "count", "reason", "metadata", "x"]),
                                         ch, max_size=4), max_leaves=8)


@settings(max_examples=1000, deadline=None)
@given(st.one_of(_values.map(fabric.canonical_bytes), st.binary(max_size=40)))
def test_random_payloads_are_accepted_or_refused_cleanly(payload):
    frame = Frame(FrameKind.CONTROL, payload, stream_id=1)
    try:
        ctl = StreamControl.from_frame(frame, ALL)
    except (fabric.FrameError, fabric.DecodeError) as exc:
        assert "offset" in str(exc)
        return
    assert StreamControl.from_frame(ctl.to_frame(ALL), ALL) == ctl
