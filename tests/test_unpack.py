"""fabric.unpack: the hardened msgpack decoder, against msgpack-python."""

import math
import struct

import msgpack
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

import fabric

# Values msgpack-python and fabric both represent the same way (no tuples:
# arrays decode as lists; no sets or big ints: those are fabric extensions).
plain = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text()
    | st.binary(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.text(max_size=8) | st.integers(min_value=-(2**63), max_value=2**64 - 1), children, max_size=5),
    max_leaves=30,
)


@settings(max_examples=2000, deadline=None)
@given(plain)
def test_decodes_what_msgpack_encodes(value):
    data = msgpack.packb(value, use_bin_type=True)
    assert fabric.unpack(data) == value


@settings(max_examples=2000, deadline=None)
@given(plain)
def test_canonical_bytes_round_trip(value):
    data = fabric.canonical_bytes(value)
    assert fabric.unpack(data) == value
    assert msgpack.unpackb(data, raw=False, strict_map_key=False) == value


@settings(max_examples=3000, deadline=None)
@given(st.binary(max_size=64))
@example(b"\x81\x93\x00\x00\x00\x00")  # {[0, 0, 0]: 0}
def test_random_bytes_agree_with_msgpack(data):
    """Random bytes: accepted by both with equal values, or refused by fabric
    where msgpack refuses or where fabric is documented stricter (invalid
    UTF-8 in str, duplicate or unhashable map keys, extension payloads)."""
    try:
        ours = fabric.unpack(data)
    except fabric.DecodeError as exc:
        assert "at offset" in str(exc)
        assert 0 <= exc.offset <= len(data)
        return
    options = dict(raw=False, strict_map_key=False, timestamp=0, ext_hook=lambda code, d: (code, d))
    try:
        theirs = msgpack.unpackb(data, use_list=True, **options)
    except TypeError:
        # An array as a map key: fabric makes it a tuple (documented), while
        # msgpack's lists are unhashable; compare with msgpack's tuples.
        theirs = msgpack.unpackb(data, use_list=False, **options)
    _assert_same(ours, theirs)


def _assert_same(ours, theirs):
    if isinstance(ours, float) and math.isnan(ours):
        assert math.isnan(theirs)
    elif isinstance(ours, fabric.Ext):
        assert (ours.code, ours.data) == theirs
    elif isinstance(ours, fabric.Timestamp):
        assert (ours.seconds, ours.nanoseconds) == (theirs.seconds, theirs.nanoseconds)
    elif isinstance(ours, list):
        assert len(ours) == len(theirs)
        for a, b in zip(ours, theirs):
            _assert_same(a, b)
    elif isinstance(ours, dict):
        assert len(ours) == len(theirs)
    elif isinstance(ours, frozenset) or ours is fabric.REDACTED:
        pass  # fabric extensions; msgpack sees a plain ExtType
    elif isinstance(ours, int) and not isinstance(ours, bool) and isinstance(theirs, tuple):
        pass  # a big-integer extension
    else:
        assert ours == theirs


@pytest.mark.parametrize("data, value", [
    (b"\xcf" + bytes(8), 0),                       # 0 as uint64
    (b"\xd3" + struct.pack(">q", -1), -1),        # -1 as int64
    (b"\xdb\x00\x00\x00\x02hi", "hi"),            # short str as str32
    (b"\xdf\x00\x00\x00\x00", {}),                # empty map as map32
    (b"\xdd\x00\x00\x00\x01\x01", [1]),           # array32
    (b"\xc6\x00\x00\x00\x01x", b"x"),             # bin32
    (b"\xca" + struct.pack(">f", 1.5), 1.5),      # float32
])
def test_non_shortest_forms_accepted(data, value):
    assert fabric.unpack(data) == value


def test_timestamps_all_three_forms():
    for ts in (msgpack.Timestamp(1, 0), msgpack.Timestamp(2**33, 999999999),
               msgpack.Timestamp(-5, 17)):
        got = fabric.unpack(msgpack.packb(ts))
        assert (got.seconds, got.nanoseconds) == (ts.seconds, ts.nanoseconds)
    with pytest.raises(fabric.DecodeError, match="nanoseconds"):
        fabric.unpack(b"\xd7\xff" + struct.pack(">Q", (1_000_000_000 << 34)))
    with pytest.raises(fabric.DecodeError, match="timestamp extension of 3 bytes"):
        fabric.unpack(b"\xc7\x03\xff\x00\x00\x00")


def test_fabric_extensions_decode():
    value = {"n": 2**100, "m": -(2**90), "s": {1, "a", (2, 3)}, "secret": fabric.Secret("x")}
    out = fabric.unpack(fabric.canonical_bytes(value))
    assert out["n"] == 2**100 and out["m"] == -(2**90)
    assert out["s"] == frozenset({1, "a", (2, 3)})
    assert out["secret"] is fabric.REDACTED
    assert fabric.unpack(msgpack.packb(msgpack.ExtType(42, b"zz"))) == fabric.Ext((42, b"zz"))


def test_tuple_keys_come_back_as_tuples():
    assert fabric.unpack(fabric.canonical_bytes({(1, (2, 3)): "v"})) == {(1, (2, 3)): "v"}


@pytest.mark.parametrize("data, fragment, offset", [
    (b"", "empty input", 0),
    (b"\xc1", "reserved type byte", 0),
    (b"\x92\x01\xc1", "reserved type byte", 2),
    (b"\xdb\xff\xff\xff\xff", "exceeds the limit", 0),
    (b"\xdd\x00\x10\x00\x00", "only 0 bytes remain", 0),
    (b"\xa1\xff", "not valid UTF-8", 0),
    (b"\x01\x02", "trailing bytes", 1),
    (b"\x82\x01\x01\x01\x02", "duplicate map key", 3),
    (b"\x81\x80\x01", "a map cannot be a map key", 1),
    (b"\x91" * 300 + b"\x00", "nesting deeper", 256),
    (b"\xd4\x01", "declares 1 bytes but only 0 remain", 0),
    (b"\xc7\x01\x03\x00", "secret marker with a payload", 0),
    (b"\xd4\x02\x01", "set payload is not an array", 0),
])
def test_malformed_inputs_name_the_offset(data, fragment, offset):
    with pytest.raises(fabric.DecodeError, match=fragment) as info:
        fabric.unpack(data)
    assert info.value.offset == offset
    assert f"at offset {offset}" in str(info.value)
    assert isinstance(info.value, ValueError)


def test_limits_at_their_boundaries():
    for name, ok, bad in [
        ("max_array", b"\x92\x01\x02", b"\x93\x01\x02\x03"),
        ("max_map", b"\x82\x01\x01\x02\x02", b"\x83\x01\x01\x02\x02\x03\x03"),
        ("max_str", b"\xa2ab", b"\xa3abc"),
        ("max_bin", b"\xc4\x02ab", b"\xc4\x03abc"),
        ("max_ext", b"\xd5\x05ab", b"\xc7\x03\x05abc"),
        ("max_depth", b"\x91\x91\x01", b"\x91\x91\x91\x01"),
        ("max_items", b"\x91\x01", b"\x92\x01\x02"),
    ]:
        limits = {name: 2}
        fabric.unpack(ok, limits)
        with pytest.raises(fabric.DecodeError):
            fabric.unpack(bad, limits)


def test_bad_limits_are_refused():
    with pytest.raises(ValueError, match="unknown decode limit"):
        fabric.unpack(b"\x00", {"max_arrays": 1})
    with pytest.raises(ValueError, match="positive"):
        fabric.unpack(b"\x00", {"max_depth": 0})
    with pytest.raises(TypeError):
        fabric.unpack("not bytes")


@pytest.mark.parametrize("limits", [3, "max_depth=3", 2.5, b"x", object()])
def test_limits_that_name_no_limit_are_refused_not_ignored(limits):
    # Each would have decoded under the defaults, as if no limit were given.
    for decode in (fabric.unpack, fabric.decode_value):
        with pytest.raises(TypeError, match=f"limits must be None, a dict .* not "
                                            f"{type(limits).__name__}"):
            decode(b"\x00", limits)


def test_limits_from_any_object_with_some_of_the_names():
    class Shallow:
        max_depth = 1
        other = "ignored"

    assert fabric.unpack(b"\x91\x00", Shallow()) == [0]
    with pytest.raises(fabric.DecodeError, match="nesting deeper"):
        fabric.unpack(b"\x91\x91\x00", Shallow())
    assert fabric.unpack(b"\x00", {}) == 0


def test_length_bomb_allocates_little():
    import tracemalloc

    bombs = [b"\xdd\xff\xff\xff\xff\x00", b"\xdb\x7f\xff\xff\xff\x00", b"\xdf\x00\xff\xff\xff"]
    tracemalloc.start()
    try:
        for bomb in bombs:
            tracemalloc.reset_peak()
            with pytest.raises(fabric.DecodeError):
                fabric.unpack(bomb)
            assert tracemalloc.get_traced_memory()[1] < 64 * 1024
    finally:
        tracemalloc.stop()


def test_deep_input_is_an_error_not_a_recursion_error():
    with pytest.raises(fabric.DecodeError):
        fabric.unpack(b"\x91" * 100_000)
    with pytest.raises(fabric.DecodeError):
        fabric.unpack(b"\x81\x01" * 100_000 + b"\x01")


# -- hash floods and NaN duplicates (values issue, defects 6 and 7) ----------------

M61 = (1 << 61) - 1  # CPython hashes every multiple of it to 0


def _ints_sharing_one_hash(n):
    keys = [M61 * i for i in range(n)]
    assert len({hash(k) for k in keys}) == 1
    return keys


def test_map_keys_sharing_one_hash_are_refused_past_the_bound():
    fabric = pytest.importorskip("fabric")
    eight = {k: None for k in _ints_sharing_one_hash(8)}
    assert fabric.unpack(fabric.canonical_bytes(eight)) == eight
    for n in (9, 8000):
        data = fabric.canonical_bytes({k: None for k in _ints_sharing_one_hash(n)})
        with pytest.raises(fabric.DecodeError, match="share one hash") as info:
            fabric.unpack(data)
        assert info.value.offset == 0
    # Ordinary int keys of the same count and size are fine.
    ordinary = {M61 * n + n for n in range(8000)}
    assert len({hash(k) for k in ordinary}) == 8000
    assert fabric.unpack(fabric.canonical_bytes(dict.fromkeys(ordinary))) == dict.fromkeys(ordinary)


def test_set_members_and_tuple_keys_sharing_one_hash_are_refused():
    fabric = pytest.importorskip("fabric")
    ints = _ints_sharing_one_hash(9)
    with pytest.raises(fabric.DecodeError, match="set members share one hash"):
        fabric.unpack(fabric.canonical_bytes(set(ints)))
    assert fabric.unpack(fabric.canonical_bytes(set(ints[:8]))) == frozenset(ints[:8])
    with pytest.raises(fabric.DecodeError, match="map keys share one hash") as info:
        fabric.unpack(fabric.canonical_bytes([0, {(k,): 1 for k in ints}]))
    assert info.value.offset == 2  # the map, after the array header and the 0


def test_nan_duplicates_are_refused_and_distinct_nan_keys_kept():
    fabric = pytest.importorskip("fabric")
    msgpack = pytest.importorskip("msgpack")
    nan = float("nan")
    for data in (msgpack.packb({nan: 1, float("nan"): 2}),
                 b"\x82\xca\x7f\xc0\x00\x00\x01\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00\x02",
                 msgpack.packb({(nan, 1): 1, (float("nan"), 1): 2}, use_bin_type=True)):
        with pytest.raises(fabric.DecodeError, match="duplicate map key"):
            fabric.unpack(data)
    back = fabric.unpack(fabric.canonical_bytes({(nan, 1): "a", (nan, 2): "b", nan: "c"}))
    assert sorted(map(str, back.values())) == ["a", "b", "c"]
    # What is accepted can always be encoded again.
    fabric.canonical_bytes(back)
