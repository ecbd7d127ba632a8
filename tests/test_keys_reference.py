"""The C encoder against the pure-Python reference encoder and msgpack.

Hypothesis generates values of every keyable kind (including the awkward
ones: big integers, NaN, -0.0, sets, secrets, bytes-like objects, subclasses);
the C core and tests/reference_encoder.py must produce the same bytes, or both
refuse the value with the same exception type. Every encoding must decode
with the msgpack package to an equal value.
"""

import math
import struct
from collections import OrderedDict

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fabric
import reference_encoder

import os
import random

# Hypothesis spends about 0.4 ms of its own on every example, and several ms
# on a nested value drawn with st.recursive, so the suite uses two shapes:
# a structural strategy (shrinks failures to a minimal value) at a moderate
# count, and 10,000 examples that each draw a seed from which a fast
# generator below builds one random nested value. FABRIC_HYPOTHESIS_EXAMPLES
# raises the structural count for longer runs. The seeded differential runs
# 100,000 values under CI (QUALITY.md D6, about 1 minute), 10,000 otherwise;
# FABRIC_DIFFERENTIAL_EXAMPLES sets it.
STRUCTURAL = int(os.environ.get("FABRIC_HYPOTHESIS_EXAMPLES", "1000"))
DIFFERENTIAL = int(os.environ.get("FABRIC_DIFFERENTIAL_EXAMPLES",
                                  "100000" if os.environ.get("CI") else "10000"))
EXAMPLES = settings(max_examples=STRUCTURAL, deadline=None,
                    suppress_health_check=list(HealthCheck), database=None)
SEEDED = settings(max_examples=DIFFERENTIAL, deadline=None,
                  suppress_health_check=list(HealthCheck), database=None)


class IntSub(int):
    pass


class StrSub(str):
    pass


class FloatSub(float):
    pass


ints = st.one_of(
    st.integers(-40, 300),
    st.integers(-(2**64), 2**64),
    st.integers(-(2**200), 2**200),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1,
                     2**31, -(2**31) - 1, 2**16, -(2**15) - 1, 255, 256, -128, -129]),
)
floats = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([0.0, -0.0, float("nan"), 1.0, -1.0]),
    # NaNs with other payloads and signs: all encode as the one NaN.
    st.integers(1, 2**52 - 1).map(lambda m: struct.unpack(">d", struct.pack(">Q", 0xFFF0000000000000 | m))[0]),
)
# Long strings and blobs are made by repeating short ones: drawing thousands
# of bytes one by one would make each example slow for no extra coverage.
texts = st.text(max_size=12) | st.builds(lambda t, n: t * n, st.text(min_size=1, max_size=4),
                                         st.integers(8, 80))
blobs = st.binary(max_size=12) | st.builds(lambda b, n: b * n, st.binary(min_size=1, max_size=4),
                                           st.integers(50, 1100))

hashable_scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts, blobs)
hashables = st.recursive(
    hashable_scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4).map(tuple),
                            st.frozensets(inner, max_size=4)),
    max_leaves=6,
)

scalars = st.one_of(
    hashable_scalars,
    blobs.map(bytearray),
    blobs.map(memoryview),
    ints.map(IntSub),
    texts.map(StrSub),
    floats.map(FloatSub),
    st.just(fabric.Secret("hunter2")),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=6),
        st.lists(inner, max_size=6).map(tuple),
        st.dictionaries(hashables, inner, max_size=6),
        st.dictionaries(texts, inner, max_size=6).map(OrderedDict),
        st.sets(hashables, max_size=5),
        st.frozensets(hashables, max_size=5),
    ),
    max_leaves=12,
)


def _both(value):
    """(C bytes or exception type, reference bytes or exception type)."""
    try:
        c = fabric.canonical_bytes(value)
    except (TypeError, ValueError) as exc:
        c = type(exc)
    try:
        ref = reference_encoder.encode(value)
    except (TypeError, ValueError) as exc:
        ref = type(exc)
    return c, ref


@EXAMPLES
@given(values)
def test_c_matches_reference(value):
    """Same bytes from C and the reference, or the same refusal; and every
    encoding decodes with msgpack to an equal value."""
    c, ref = _both(value)
    assert c == ref
    if isinstance(c, bytes):
        assert fabric.canonical_bytes(value) == c  # deterministic
        check_decodes(value, c)


_EDGE_INTS = [0, 1, -1, 127, 128, -32, -33, 255, 256, -128, -129, 2**15, 2**16 - 1, 2**16,
              -(2**15) - 1, 2**31, 2**32 - 1, 2**32, -(2**31) - 1, 2**63 - 1, 2**63, 2**64 - 1,
              2**64, -(2**63), -(2**63) - 1, -(2**64), 2**64 * 255, 10**40, -(10**40)]
_EDGE_FLOATS = [0.0, -0.0, float("nan"), float("inf"), float("-inf"), 1.0, 0.1, 1e308, 5e-324,
                struct.unpack(">d", bytes.fromhex("fff8000000000001"))[0]]


def depth_hint(rng):
    """True once in a while: for the rare large blob."""
    return rng.random() < 0.02


def random_scalar(rng, hashable):
    """One random leaf value: every scalar kind, edges often."""
    kind = rng.randrange(12 if hashable else 18)
    if kind == 0:
        return None
    if kind == 1:
        return rng.random() < 0.5
    if kind == 2:
        return rng.choice(_EDGE_INTS) + rng.randrange(-2, 3)
    if kind == 3:
        return rng.randrange(-(2**rng.randrange(1, 200)), 2**rng.randrange(1, 200))
    if kind == 4:
        return rng.choice(_EDGE_FLOATS)
    if kind == 5:
        return struct.unpack(">d", rng.randbytes(8))[0]  # any bit pattern, NaNs included
    if kind in (6, 7):
        n = rng.choice([0, 1, 5, 31, 32, 255, 256, 3000])
        alphabet = rng.choice(["ab", "\u00e9\u6f22", "\U0001f600x", "\x00\x7f"])
        return "".join(rng.choice(alphabet) for _ in range(min(n, 40))) * max(1, n // 40)
    if kind in (8, 9):
        return rng.randbytes(rng.choice([0, 1, 7, 255, 256, 2049, 70000 if depth_hint(rng) else 9]))
    if kind in (10, 11):
        return rng.random() * 10 ** rng.randrange(-10, 20)
    if kind == 12:
        return bytearray(rng.randbytes(rng.randrange(0, 40)))
    if kind == 13:
        return memoryview(rng.randbytes(rng.randrange(0, 40)))
    if kind == 14:
        return IntSub(rng.choice(_EDGE_INTS))
    if kind == 15:
        return StrSub("sub")
    if kind == 16:
        return FloatSub(rng.choice(_EDGE_FLOATS))
    return fabric.Secret(rng.random())


def random_value(rng, depth=0, hashable=False):
    """A random nested value of every keyable kind."""
    if depth > 3 or rng.random() < 0.4:
        return random_scalar(rng, hashable)
    # Mostly small containers; 16 and 17 cross msgpack's fix/16-bit headers.
    n = rng.choice([0, 1, 2, 2, 3, 3, 4, 5]) if rng.random() < 0.95 else rng.choice([16, 17])
    kind = rng.randrange(2 if hashable else 6)
    if kind == 0:
        return tuple(random_value(rng, depth + 1, hashable) for _ in range(n))
    if kind == 1:
        return frozenset(random_value(rng, depth + 1, True) for _ in range(n))
    if kind == 2:
        return [random_value(rng, depth + 1) for _ in range(n)]
    if kind == 3:
        return {random_value(rng, depth + 1, True): random_value(rng, depth + 1) for _ in range(n)}
    if kind == 4:
        return set(random_value(rng, depth + 1, True) for _ in range(n))
    return OrderedDict((str(i), random_value(rng, depth + 1)) for i in range(n))


@SEEDED
@given(st.integers(0, 2**64))
def test_c_matches_reference_seeded(seed):
    """Random nested values (DIFFERENTIAL of them): the C encoder and the
    pure-Python reference give the same bytes or the same refusal; every
    encoding decodes with msgpack-python to an equal value, and with
    fabric.unpack to a value that encodes to the same bytes again."""
    value = random_value(random.Random(seed))
    c, ref = _both(value)
    assert c == ref
    if isinstance(c, bytes):
        check_decodes(value, c)
        ours = fabric.unpack(c)
        if fabric.REDACTED not in _flatten(ours):
            assert fabric.canonical_bytes(ours) == c


def _ext_hook(code, data):
    if code == reference_encoder.EXT_BIGINT:
        return int.from_bytes(data, "big", signed=True)
    if code == reference_encoder.EXT_SET:
        return frozenset(_unpack(data))
    if code == reference_encoder.EXT_SECRET:
        assert data == b""
        return SECRET_MARK
    raise AssertionError("unknown ext type %d" % code)


SECRET_MARK = ("secret marker",)


def _unpack(data):
    return msgpack.unpackb(data, strict_map_key=False, raw=False, use_list=False,
                           ext_hook=_ext_hook)


def _plain(value):
    """What the decoder gives back for value: arrays as tuples, bin as bytes,
    sets as frozensets, secrets as the marker, subclasses as their base."""
    if isinstance(value, fabric.Secret):
        return SECRET_MARK
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    if isinstance(value, (list, tuple)):
        return tuple(_plain(v) for v in value)
    if isinstance(value, dict):
        return {_plain(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (set, frozenset)):
        return frozenset(_plain(v) for v in value)
    return bytes(value)


def _has_nan(value):
    if isinstance(value, float):
        return math.isnan(value)
    if isinstance(value, dict):
        return any(_has_nan(k) or _has_nan(v) for k, v in value.items())
    if isinstance(value, (list, tuple, set, frozenset)):
        return any(_has_nan(v) for v in value)
    return False


def check_decodes(value, data):
    """data, the encoding of value, decodes with msgpack to an equal value."""
    decoded = _unpack(data)
    if not _has_nan(value):
        assert decoded == _plain(value)
    # Re-encoding what msgpack decoded gives the very same bytes (this also
    # covers NaN and -0.0, which == cannot tell apart). The secret marker
    # decodes to a tuple, so that case is left to the equality above.
    if SECRET_MARK not in _flatten(decoded):
        assert fabric.canonical_bytes(decoded) == data


def _flatten(value):
    """Every part of a decoded value (from msgpack, or from fabric.unpack,
    which gives lists)."""
    out = [value]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _flatten(k) + _flatten(v)
    elif isinstance(value, (list, tuple, frozenset)) and value != SECRET_MARK:
        for v in value:
            out += _flatten(v)
    return out


def _tag(value):
    """A structural description of value with the kind of every part, under
    which two values must encode alike exactly when their tags are equal."""
    if isinstance(value, fabric.Secret):
        return ("secret",)
    if value is None:
        return ("nil",)
    if isinstance(value, bool):
        return ("bool", value)
    if isinstance(value, int):
        return ("int", int(value))
    if isinstance(value, float):
        bits = 0x7FF8000000000000 if math.isnan(value) else struct.unpack(">Q", struct.pack(">d", value))[0]
        return ("float", bits)
    if isinstance(value, str):
        return ("str", str(value))
    if isinstance(value, (list, tuple)):
        return ("array", tuple(_tag(v) for v in value))
    if isinstance(value, dict):
        return ("map", frozenset((_tag(k), _tag(v)) for k, v in value.items()))
    if isinstance(value, (set, frozenset)):
        return ("set", frozenset(_tag(v) for v in value))
    return ("bin", bytes(value))


small_scalars = st.one_of(st.none(), st.booleans(), st.integers(-2, 2), st.sampled_from(
    [0.0, -0.0, 1.0, 2.0, float("nan")]), st.sampled_from(["", "0", "1", "a"]),
    st.sampled_from([b"", b"0", b"1", b"a"]).flatmap(
        lambda b: st.sampled_from([b, bytearray(b), memoryview(b)])))
small_values = st.recursive(
    small_scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=2), st.lists(inner, max_size=2).map(tuple),
        st.dictionaries(st.integers(0, 1) | st.sampled_from(["a", b"a"]), inner, max_size=2),
        st.frozensets(st.integers(0, 1) | st.sampled_from([True, "1"]), max_size=2)),
    max_leaves=3)


@EXAMPLES
@given(small_values, small_values)
def test_kinds_never_collide(a, b):
    """Encodings are equal exactly when the values are equal kind by kind.
    The strategy draws from a tiny space, so equal pairs are common."""
    assert (fabric.canonical_bytes(a) == fabric.canonical_bytes(b)) == (_tag(a) == _tag(b))


# ---- the key memos: dicts whose keys repeat ------------------------------------

def test_repeated_key_objects_in_any_order_match_reference():
    """The encoder remembers recent dict shapes by the identity of their key
    str objects, and recent key orders by their bytes. Reusing the same key
    objects in other orders, other subsets, with equal-but-distinct copies,
    and with enough shapes to overwrite remembered entries must always give
    the reference bytes."""
    rng = random.Random(7)
    pool = ["k%d" % i for i in range(40)] + ["", "é", "a" * 40, "b" * 300]
    copies = ["".join(list(k)) for k in pool]  # equal, usually not identical
    for round_ in range(6000):
        n = rng.choice([0, 1, 2, 2, 3, 5, 10, 16, 17])
        idx = rng.sample(range(len(pool)), min(n, len(pool)))
        src = copies if round_ % 7 == 0 else pool
        d = {src[i]: random_value(rng, 2) for i in idx}
        if round_ % 5 == 0:  # the same keys inserted in another order
            items = list(d.items())
            rng.shuffle(items)
            d = dict(items)
        c, ref = _both({"row": d, "again": dict(d)})
        assert c == ref, (round_, d)


def test_same_key_objects_mixed_with_other_key_kinds():
    """A remembered shape of str keys must not match a dict whose keys are
    the same objects plus or minus one, or with a non-str key in place."""
    a, b, c = "alpha", "beta", "gamma"
    dicts = [{a: 1, b: 2, c: 3}, {a: 1, b: 2}, {a: 1, b: 2, c: 3, 4: 4}, {a: 1, 2: 2, c: 3},
             {b: 1, a: 2, c: 3}, {a: 1, b: 2, c: 3}, {c: 3, b: 2, a: 1}, {a: 1, b: 2, "gam" "ma": 3}]
    for _ in range(3):
        for d in dicts:
            assert fabric.canonical_bytes(d) == reference_encoder.encode(d)


def test_nested_dicts_sharing_and_overwriting_shapes():
    """Dicts inside dicts, drawn from a pool of keys much larger than the
    memo: an enclosing dict written from a remembered shape while inner
    dicts look up, miss and remember shapes of their own (some landing on
    the enclosing dict's entry, which must stay intact until it is done)."""
    rng = random.Random(11)
    keys = ["k%d" % i for i in range(200)]
    for _ in range(3000):
        outer = rng.sample(keys, rng.randrange(2, 7))
        inners = [dict.fromkeys(rng.sample(keys, rng.randrange(2, 6)), rng.random())
                  for _ in range(3)]
        d = {k: (inners[j % 3] if j % 2 else dict.fromkeys(outer, j)) for j, k in enumerate(outer)}
        for value in (d, [d, d], {"x": d, "y": inners}):
            assert fabric.canonical_bytes(value) == reference_encoder.encode(value)


def test_empty_containers_at_the_depth_limit_match_reference():
    """Empty containers are written without being entered; at and around
    the nesting limit they are refused or accepted exactly as the reference
    does."""
    for depth in range(250, 262):
        for leaf in ([], {}, ()):
            value = leaf
            for _ in range(depth):
                value = [value]
            c, ref = _both(value)
            assert c == ref, depth


def test_scalars_at_every_offset_of_a_full_stage_match_reference():
    """Scalars are written inline when there are 9 bytes of room and out of
    line when not. Runs of one scalar longer than the 8 KiB stage (flushed
    into the hasher when full, grown by canonical_bytes) put one at every
    offset of its end, inside a list and as dict values."""
    for s in [None, True, False, 0.5, -3, 7, 2**40]:
        for pad in range(0, 9):
            value = ["y" * pad] + [s] * 9000
            c, ref = _both(value)
            assert c == ref, (s, pad)
            got = fabric.EvalRequest("op", (value,)).key.digest
            assert got == reference_encoder.key_digest("op", (value,)), (s, pad)
        rows = [{"k": s, "v": s} for _ in range(2000)]
        c, ref = _both(rows)
        assert c == ref, s
        assert fabric.EvalRequest("op", (rows,)).key.digest == reference_encoder.key_digest(
            "op", (rows,)), s
