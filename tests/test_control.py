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


def test_pickle_repr_and_fields_as_attributes():
    import pickle
    for ctl in EXAMPLES:
        back = pickle.loads(pickle.dumps(ctl))
        assert back == ctl and hash(back) == hash(ctl) and repr(back) == repr(ctl)
    ctl = StreamControl.next(7, limit=16)
    assert repr(ctl) == "StreamControl('next', 7, limit=16)"
    assert ctl.limit == 16 and ctl.fields == {"limit": 16}
    ctl.fields["limit"] = 99  # a copy
    assert ctl.limit == 16
    with pytest.raises(AttributeError):
        ctl.count
    assert StreamControl(op="close", stream_id=3) == StreamControl.close(3)
    assert StreamControl.close(3) != StreamControl.close(4)
    assert StreamControl.close(3) != StreamControl.cancel(3)
    assert StreamControl.close(3).__eq__(3) is NotImplemented
    with pytest.raises(TypeError, match="multiple values"):
        StreamControl("close", 3, op="close")
    with pytest.raises(TypeError, match="cannot key object"):
        StreamControl.push(1, object())
    with pytest.raises(ValueError, match="stream_id"):
        StreamControl.close(1 << 64)


def test_rules_come_from_the_c_core():
    from fabric import _core
    assert dict(CONTROL_CAPABILITIES) == _core.CONTROL_CAPABILITIES
    assert FAULT_KINDS == _core.FAULT_KINDS and REMOTE_CAPABILITY == _core.REMOTE_CAPABILITY
    assert StreamControl is _core.StreamControl


def _received(payload):
    head = Frame(FrameKind.PING, b"\xc0").encode()
    dec = fabric.FrameDecoder()
    dec.feed(head + Frame(FrameKind.CONTROL, payload, stream_id=3).encode())
    return list(dec)[1], len(head) + 36


@pytest.mark.parametrize("payload, field, code_at", [
    (bytes.fromhex("82a26f70a5636c6f7365a26f70a5636c6f7365"), "appears twice", 10),
    (bytes.fromhex("82a26f70a46e657874a56c696d6974ff"), "positive int, got -1", 15),
    (bytes.fromhex("82a26f70a46e657874a56c696d6974cb3ff0000000000000"), "got a float", 15),
    (bytes.fromhex("81a26f70a3626f6f"), "unknown control operation 'boo'", 4),
    (bytes.fromhex("c10181a26f70c70011a5636c6f7365"), "a tagged value", 6),
])
def test_received_refusals_say_where_in_the_payload(payload, field, code_at):
    frame, at = _received(payload)
    with pytest.raises(fabric.FrameError) as info:
        StreamControl.from_frame(frame, ALL)
    assert field in str(info.value)
    assert info.value.offset == at and info.value.violation == "control"
    assert info.value.frame_offset == at - 36
    assert "byte %d of the payload" % code_at in str(info.value)


@pytest.mark.parametrize("payload, says, at", [
    (b"\xc1", "missing version byte: the input ends after the value encoding's prefix c1", 1),
    (b"\xc1\x02\x80", "unknown value encoding version 2 (this reader knows 1)", 1),
    (b"\xc1\x01", "no value after the value encoding's prefix c1 01", 2),
])
def test_a_bad_value_prefix_says_what_and_where(payload, says, at):
    frame, start = _received(payload)  # (start: where the payload is in the stream)
    with pytest.raises(fabric.DecodeError) as info:
        StreamControl.from_frame(frame, ALL)
    assert str(info.value) == f"at offset {start + at}: {says}"
    assert info.value.offset == start + at


def test_value_encoded_payload_is_read_with_its_tags():
    # c1 01, then {"op": "push", "item": <tuple tag> [1]}.
    frame, _ = _received(bytes.fromhex("c10182a26f70a470757368a46974656dc700119101"))
    ctl = StreamControl.from_frame(frame, ALL)
    assert ctl.op == "push" and ctl.item == (1,)
    assert ctl == StreamControl.push(3, (1,))


def test_limits_apply_to_received_controls():
    frame = StreamControl.push(1, [[[[1]]]]).to_frame(ALL)
    with pytest.raises(fabric.DecodeError, match="offset"):
        StreamControl.from_frame(frame, ALL, limits=fabric.StreamFrameLimits(max_depth=3))
    assert StreamControl.from_frame(frame, ALL, limits=fabric.StreamFrameLimits(max_depth=5))
