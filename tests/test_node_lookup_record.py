"""``ContentAddressedFabric._lookup_record``: a node's hit as the held
record's canonical bytes (kept by the fabric, so a hit decodes and encodes
nothing), the same bytes the reply ``_lookup`` gives would be encoded to;
the reply itself over the limit; None when not held; grants checked and the
hit counted as ``_lookup`` does. And ``encode_held_reply`` given those
bytes writes the frames it writes for the reply."""

import pytest
from hypothesis import given, settings, strategies as st

import fabric
from fabric import CapabilityDenied, EvalCassette
from fabric._core import canonical_bytes
from fabric.node import protocol as P
from fabric.replies import EvalReply, reply_record

import node_ops

_START = canonical_bytes({"metadata": {"source": "local"}})


@fabric.op("test.lookup_record.echo")
def echo(x):
    return x


def _fabric(tmp_path, grants=()):
    cas = EvalCassette(str(tmp_path / "held.fabl"), durability="os")
    return cas, fabric.ContentAddressedFabric("n", cas, home=fabric.LocalFabric(),
                                              grants=grants)


def _record(reply):
    return canonical_bytes(reply_record(reply))


def test_the_bytes_of_the_reply_lookup_gives_and_the_hit_counted(tmp_path):
    cas, fab = _fabric(tmp_path)
    with cas:
        reqs = [echo.request(i) for i in range(50)] + [echo.request([1, {"a": (2, 3)}]),
                                                       echo.request(b"z" * 900)]
        for r in reqs:
            fab.evaluate(r)  # held from now on
        for _ in range(2):  # the first time decoded and kept; then from the memo
            for r in reqs:
                before = fab.stats()["local_hits"]
                got = fab._lookup_record(r, 1 << 20)
                assert type(got) is bytes
                assert fab.stats()["local_hits"] == before + 1
                assert got == _record(fab._lookup(r))


def test_a_record_over_the_limit_gives_the_reply(tmp_path):
    cas, fab = _fabric(tmp_path)
    with cas:
        r = echo.request(b"y" * 500)
        fab.evaluate(r)
        n = len(_record(fab._lookup(r)))
        for _ in range(2):  # (kept after the first call: the limit still holds)
            assert type(fab._lookup_record(r, n)) is bytes
            got = fab._lookup_record(r, n - 1)
            assert isinstance(got, EvalReply)
            assert (got.value, got.source, got.key) == (b"y" * 500, "local", r.key)


def test_not_held_a_stream_or_a_forgotten_key_is_none(tmp_path):
    cas, fab = _fabric(tmp_path)
    with cas:
        assert fab._lookup_record(echo.request(1), 1 << 20) is None
        assert fab._lookup_record(node_ops.count.request(3), 1 << 20) is None
        r = echo.request(2)
        fab.evaluate(r)
        assert type(fab._lookup_record(r, 1 << 20)) is bytes  # kept
        assert cas.delete(r.key)
        assert fab._lookup_record(r, 1 << 20) is None  # the memo asks the cassette


def test_grants_are_checked_first_and_a_denial_counted(tmp_path):
    cas, fab = _fabric(tmp_path, grants=("gpu",))
    with cas:
        r = node_ops.gpu.request(1)
        fab.evaluate(r)
        assert type(fab._lookup_record(r, 1 << 20)) is bytes  # kept
        before = fab.stats()["denied"]
        with pytest.raises(CapabilityDenied):
            fab._lookup_record(r, 1 << 20, grants=())
        assert fab.stats()["denied"] == before + 1


def test_bad_limits_are_refused(tmp_path):
    cas, fab = _fabric(tmp_path)
    with cas:
        r = echo.request(1)
        with pytest.raises(TypeError, match="limit must be an int"):
            fab._lookup_record(r, None)
        with pytest.raises(ValueError, match="limit must be >= 0"):
            fab._lookup_record(r, -1)
        with pytest.raises(TypeError):
            fab._lookup_record(r)
        fab.evaluate(r)
        assert type(fab._lookup_record(r, 1 << 80)) is bytes  # any large limit


def test_lookup_and_lookup_record_read_their_arguments_alike(tmp_path):
    """The two share their argument handling: each names itself, takes
    grants by keyword only, and reads the limit before the grants."""
    cas, fab = _fabric(tmp_path)
    with cas:
        r = echo.request(1)
        fab.evaluate(r)
        with pytest.raises(TypeError, match=r"_lookup\(\)"):
            fab._lookup()
        with pytest.raises(TypeError, match=r"_lookup\(\)"):
            fab._lookup(r, 1)  # no limit
        with pytest.raises(TypeError, match=r"_lookup_record\(\)"):
            fab._lookup_record(r, 1, ())  # grants by keyword only
        with pytest.raises(TypeError, match="limit must be an int"):
            fab._lookup_record(r, "1", grants=5)  # the limit first
        g = node_ops.gpu.request(1)
        with pytest.raises(CapabilityDenied):
            fab._lookup(g, grants=())
        with pytest.raises(CapabilityDenied):
            fab._lookup_record(g, 1, grants=())
        assert fab._lookup(r, grants=None).source == "local"
        assert type(fab._lookup_record(r, 1 << 20, grants=None)) is bytes


_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text()
    | st.binary(),
    lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=12)


@settings(max_examples=200, deadline=None)
@given(value=_VALUES, sid=st.integers(1, (1 << 63) - 1))
def test_held_values_give_the_frames_of_the_reply(tmp_path_factory, value, sid):
    cas, fab = _fabric(tmp_path_factory.mktemp("held"))
    enc = P.encoder()
    with cas:
        r = echo.request(value)
        fab.evaluate(r)
        for _ in range(2):
            reply = fab._lookup(r)
            data = fab._lookup_record(r, 1 << 20)
            assert data == _record(reply)
            assert enc.encode_held_reply(sid, _START, data, 1 << 20) == \
                enc.encode_held_reply(sid, _START, reply, 1 << 20)


def test_encode_held_reply_with_bytes_is_none_over_the_limit():
    enc = P.encoder()
    data = _record(EvalReply(b"q" * 300, (), None, node_ops.double.request(1).key, "local"))
    assert enc.encode_held_reply(1, _START, data, len(data) - 1) is None
    assert enc.encode_held_reply(1, _START, data, len(data)) is not None
    with pytest.raises(fabric.FrameError, match="payload"):
        P.encoder(1024).encode_held_reply(1, _START, b"\xc4" * 2000, 1 << 30)
