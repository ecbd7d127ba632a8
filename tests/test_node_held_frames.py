"""``ContentAddressedFabric._held_frames``: a node's hit as the usual
reply's three frames in one call, the bytes ``_lookup_record`` then
``FrameEncoder.encode_held_reply`` give; the reply over the limit, None when
not held, grants checked and the hit counted as ``_lookup_record`` does,
arguments refused before the lookup."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric import CapabilityDenied, EvalCassette
from fabric._core import FrameEncoder, canonical_bytes
from fabric.replies import EvalReply

import node_ops

_START = canonical_bytes({"metadata": {"source": "local"}})


@fabric.op("test.held_frames.echo")
def echo(x):
    return x


def _fabric(tmp_path, grants=()):
    cas = EvalCassette(str(tmp_path / "held.fabl"), durability="os")
    return cas, fabric.ContentAddressedFabric("n", cas, home=fabric.LocalFabric(),
                                              grants=grants)


def test_the_frames_of_lookup_record_and_encode_held_reply(tmp_path):
    cas, fab = _fabric(tmp_path)
    enc = FrameEncoder()
    with cas:
        reqs = [echo.request(i) for i in range(20)] + [echo.request(b"z" * 900),
                                                       echo.request([1, {"a": (2, 3)}])]
        for r in reqs:
            fab.evaluate(r)
        for _ in range(2):  # decoded and kept the first time; from the memo after
            for sid, r in enumerate(reqs, 1):
                before = fab.stats()["local_hits"]
                got = fab._held_frames(r, sid, _START, 1 << 20, enc)
                assert fab.stats()["local_hits"] == before + 1
                want = enc.encode_held_reply(sid, _START, fab._lookup_record(r, 1 << 20),
                                             1 << 20)
                assert type(got) is bytes and got == want
                assert got == enc.encode_held_reply(sid, _START, fab._lookup(r), 1 << 20)


@settings(max_examples=60, deadline=None, derandomize=True)
@given(st.recursive(st.none() | st.booleans() | st.integers() | st.binary(max_size=300)
                    | st.text(max_size=50),
                    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=5), c,
                                                                         max_size=4),
                    max_leaves=20),
       st.integers(1, 2**64 - 1))
def test_any_value_and_stream_id(value, sid):
    import tempfile, pathlib
    with tempfile.TemporaryDirectory() as d:
        cas, fab = _fabric(pathlib.Path(d))
        enc = FrameEncoder()
        with cas:
            r = echo.request(value)
            fab.evaluate(r)
            assert fab._held_frames(r, sid, _START, 1 << 20, enc) == \
                enc.encode_held_reply(sid, _START, fab._lookup(r), 1 << 20)


def test_over_the_limit_the_reply_not_held_none(tmp_path):
    cas, fab = _fabric(tmp_path)
    enc = FrameEncoder()
    with cas:
        r = echo.request(b"y" * 500)
        fab.evaluate(r)
        n = len(fab._lookup_record(r, 1 << 20))
        assert type(fab._held_frames(r, 1, _START, n, enc)) is bytes
        got = fab._held_frames(r, 1, _START, n - 1, enc)
        assert isinstance(got, EvalReply) and got.value == b"y" * 500
        assert fab._held_frames(echo.request(1), 1, _START, 1 << 20, enc) is None
        assert fab._held_frames(node_ops.count.request(3), 1, _START, 1 << 20, enc) is None
        assert cas.delete(r.key)
        assert fab._held_frames(r, 1, _START, 1 << 20, enc) is None


def test_grants_checked_and_a_denial_counted(tmp_path):
    cas, fab = _fabric(tmp_path, grants=("gpu",))
    enc = FrameEncoder()
    with cas:
        r = node_ops.gpu.request(1)
        fab.evaluate(r)
        assert type(fab._held_frames(r, 1, _START, 1 << 20, enc)) is bytes
        before = fab.stats()["denied"]
        with pytest.raises(CapabilityDenied):
            fab._held_frames(r, 1, _START, 1 << 20, enc, grants=())
        assert fab.stats()["denied"] == before + 1


def test_bad_arguments_are_refused_before_the_lookup(tmp_path):
    cas, fab = _fabric(tmp_path)
    enc = FrameEncoder()
    with cas:
        r = echo.request(1)
        fab.evaluate(r)
        hits = fab.stats()["local_hits"]
        with pytest.raises(TypeError, match=r"_held_frames\(\): limit must be an int"):
            fab._held_frames(r, 1, _START, None, enc)
        with pytest.raises(ValueError, match=r"_held_frames\(\): limit must be >= 0"):
            fab._held_frames(r, 1, _START, -1, enc)
        with pytest.raises(TypeError, match="encoder must be a FrameEncoder"):
            fab._held_frames(r, 1, _START, 1 << 20, object())
        with pytest.raises(TypeError, match="start must be bytes"):
            fab._held_frames(r, 1, "start", 1 << 20, enc)
        with pytest.raises(ValueError):
            fab._held_frames(r, -1, _START, 1 << 20, enc)
        with pytest.raises(TypeError):
            fab._held_frames(r, True, _START, 1 << 20, enc)
        with pytest.raises(TypeError):
            fab._held_frames(r, 1, _START, 1 << 20, enc, ())  # grants by keyword only
        assert fab.stats()["local_hits"] == hits
        small = FrameEncoder(fabric.StreamFrameLimits(max_frame_payload_bytes=10))
        with pytest.raises(fabric.FrameError, match="exceeds"):
            fab._held_frames(r, 1, _START, 1 << 20, small)  # as encode_held_reply
