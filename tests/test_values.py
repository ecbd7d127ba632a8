"""The value encoding (docs/spec/values.md) and key scheme 2's new kinds
(docs/spec/content-key.md): round trips that keep types, the C core against
the pure-Python reference, numpy, registered types, the old ledger, and the
regressions of issue 10's defects 1, 2, 4 and 5."""

from __future__ import annotations

import collections
import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import itertools
import json
import math
import pathlib
import subprocess
import sys
import uuid

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fabric
import reference_encoder as ref
from fabric import ContentKey, EvalCassette, EvalRequest

HERE = pathlib.Path(__file__).parent
GOLDEN_V1_LEDGER = HERE / "golden" / "ledger-v1.fabl"
GOLDEN_VALUES = HERE / "golden" / "values.json"


def same(a, b):
    """Equal and of the same type, recursively (NaN equals NaN)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, np.ndarray):
        return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()
    if isinstance(a, np.generic):
        return a.dtype == b.dtype and a.tobytes() == b.tobytes()
    if isinstance(a, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, complex):
        return same(a.real, b.real) and same(a.imag, b.imag)
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(same(k1, k2) and same(v1, v2) for (k1, v1), (k2, v2)
                                        in zip(a.items(), b.items()))
    if isinstance(a, dt.datetime | dt.time):
        return a == b and a.utcoffset() == b.utcoffset() and a.fold == b.fold
    return a == b


# ---------------------------------------------------------------------------
# Hypothesis: nested values of every supported type
# ---------------------------------------------------------------------------

_tz = st.one_of(st.none(), st.integers(-23 * 60, 23 * 60).map(
    lambda m: dt.timezone(dt.timedelta(minutes=m))))
_hashable_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(), st.integers(min_value=2**64, max_value=2**200),
    st.floats(allow_nan=False), st.text(max_size=8), st.binary(max_size=8),
    st.complex_numbers(allow_nan=False),
    st.decimals(allow_nan=False, places=3), st.uuids(),
    st.datetimes(timezones=_tz), st.dates(), st.times(timezones=_tz), st.timedeltas(),
    st.text(max_size=6).map(pathlib.PurePosixPath),
    st.text(max_size=6).map(pathlib.PureWindowsPath),
    st.integers(-(2**63), 2**63 - 1).map(np.int64), st.floats(width=32, allow_nan=False).map(np.float32),
    st.just(fabric.REDACTED),
)
_scalars = st.one_of(_hashable_scalars, st.binary(max_size=8).map(bytearray),
                     st.floats(allow_nan=True))
_keys = st.recursive(_hashable_scalars, lambda c: st.one_of(
    st.lists(c, max_size=3).map(tuple), st.frozensets(c, max_size=3)), max_leaves=6)
_values = st.recursive(_scalars, lambda c: st.one_of(
    st.lists(c, max_size=4), st.lists(c, max_size=4).map(tuple),
    st.dictionaries(_keys, c, max_size=4), st.sets(_keys, max_size=4),
    st.frozensets(_keys, max_size=4)), max_leaves=20)


@settings(max_examples=300, deadline=None)
@given(_values)
def test_round_trip_keeps_value_and_type(value):
    data = fabric.encode_value(value)
    assert same(fabric.decode_value(data), value)
    # The C core and the reference agree on the bytes and on what they mean.
    assert data == ref.encode_value(value)
    assert same(ref.decode_value(data), value)


@settings(max_examples=200, deadline=None)
@given(_values)
def test_canonical_bytes_match_the_reference(value):
    try:
        c = fabric.canonical_bytes(value)
    except ValueError:  # two NaNs in one set, say: the reference refuses them too
        with pytest.raises(ValueError):
            ref.encode(value)
        return
    assert c == ref.encode(value)


def _kind(v):
    """What a key may not lose: type and shape, recursively, up to the
    named equivalences (list/tuple, set/frozenset, bytes-like, dict order)."""
    if isinstance(v, (list, tuple)):
        return ("array", tuple(_kind(x) for x in v))
    if isinstance(v, (set, frozenset)):
        return ("set", len(v))
    if isinstance(v, (bytes, bytearray)):
        return ("bin", len(v))
    if isinstance(v, dict):
        return ("map", len(v))
    if isinstance(v, np.generic):
        return ("np", v.dtype.str)
    return (type(v).__name__,)


@settings(max_examples=300, deadline=None)
@given(_values, _values)
def test_different_kinds_never_share_a_key(a, b):
    if _kind(a) != _kind(b):
        try:
            ka, kb = fabric.canonical_bytes(a), fabric.canonical_bytes(b)
        except ValueError:
            return
        assert ka != kb


# ---------------------------------------------------------------------------
# numpy
# ---------------------------------------------------------------------------

DTYPES = ["?", "i1", "u1", "<i2", ">i2", "<i4", "<i8", ">i8", "<u8", "<f2", "<f4", "<f8", ">f8",
          "<c8", "<c16", "<M8[ns]", "<M8[D]", "<m8[s]", "<U3", "S4"]
SHAPES = [(), (0,), (5,), (2, 3), (0, 4), (2, 1, 3)]


def _array(dtype, shape):
    n = int(np.prod(shape)) if shape else 1
    raw = np.arange(1, n + 1)
    if dtype.startswith(("<U", "S")):
        raw = raw.astype(str)
    return raw.astype(dtype).reshape(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES)
def test_numpy_matrix(dtype, shape):
    a = _array(dtype, shape)
    back = fabric.decode_value(fabric.encode_value(a))
    assert same(back, a) and back.flags.writeable
    key = fabric.canonical_bytes(a)
    assert fabric.canonical_bytes(a.copy()) == key == ref.encode(a)
    # Fortran order and strided views key and travel like their C-ordered equal.
    if a.ndim >= 2:
        f = np.asfortranarray(a)
        assert fabric.canonical_bytes(f) == key
        assert same(fabric.decode_value(fabric.encode_value(f)), a)
    if a.ndim == 1 and a.size:
        doubled = np.repeat(a, 2)[::2]
        assert not doubled.flags.c_contiguous or a.size == 1
        assert fabric.canonical_bytes(doubled) == key
    # The dtype (byte order included) and the shape are part of the key.
    if a.size and a.dtype.kind not in "US":
        assert fabric.canonical_bytes(a.reshape(-1, 1)) != key or a.ndim == 2
        other = a.astype(a.dtype.newbyteorder()) if a.dtype.itemsize > 1 else None
        if other is not None:
            assert fabric.canonical_bytes(other) != key


def test_defect_1_arrays_with_the_same_bytes_do_not_share_a_key():
    a = np.arange(6)
    keys = {fabric.canonical_bytes(x) for x in
            [a, a.reshape(2, 3), a.reshape(3, 2), a.view(np.float64), a.astype(">i8"),
             a.tobytes()]}
    assert len(keys) == 6
    assert EvalRequest("f", (a,)).key != EvalRequest("f", (a.reshape(2, 3),)).key


def test_numpy_scalars_key_with_their_dtype():
    keys = {fabric.canonical_bytes(x) for x in
            [1.5, np.float64(1.5), np.float32(1.5), 3, np.int64(3), np.int8(3), True,
             np.bool_(True), "a", np.str_("a")]}
    assert len(keys) == 10
    for x in [np.float64(1.5), np.int8(-3), np.uint64(2**64 - 1), np.bool_(False),
              np.datetime64("2024-01-02T03:04"), np.timedelta64(5, "s"), np.str_("xy"),
              np.bytes_(b"ab"), np.complex128(1 + 2j), np.float16(0.5)]:
        assert same(fabric.decode_value(fabric.encode_value(x)), x)


def test_object_and_structured_arrays_are_refused():
    with pytest.raises(TypeError, match=r"^value\['a'\]: numpy arrays and scalars of object dtype"):
        fabric.canonical_bytes({"a": np.array([1, None])})
    with pytest.raises(TypeError, match="structured dtype"):
        fabric.encode_value(np.zeros(2, dtype=[("x", "<i4")]))
    with pytest.raises(TypeError, match="numpy.ndarray subclass"):
        fabric.canonical_bytes(np.ma.masked_array([1, 2], mask=[0, 1]))


def test_object_dtype_in_data_is_refused_on_decode():
    good = fabric.encode_value(np.arange(2))
    evil = good.replace(b"\xa3<i8", b"\xa3|O8")
    with pytest.raises(fabric.DecodeError, match="object dtype"):
        fabric.decode_value(evil)


def test_importing_fabric_does_not_import_numpy():
    code = "import sys, fabric; fabric.canonical_bytes([1]); print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": ":".join(sys.path)})
    assert out.stdout.strip() == "False", out.stderr


_LAZY = ("typing", "dataclasses", "inspect", "datetime", "decimal", "uuid")


def test_importing_fabric_imports_none_of_the_standard_library_kinds_modules():
    """``import fabric`` (every short-lived process that opens a cassette
    pays it) leaves typing, dataclasses and the modules of the standard
    library kinds unimported; they are registered when first needed."""
    code = ("import sys; before = set(sys.modules); import fabric; "
            f"print(sorted(m for m in {_LAZY!r} if m in sys.modules and m not in before))")
    out = subprocess.run([sys.executable, "-P", "-c", code], capture_output=True, text=True,
                         env={"PYTHONPATH": ":".join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


_STD_VALUES = ("[datetime.datetime(2024, 5, 6, 7, 8, 9, 10, tzinfo=datetime.timezone("
               "datetime.timedelta(hours=-3))), datetime.date(2024, 1, 2), "
               "datetime.time(1, 2, 3, fold=1), datetime.timedelta(days=-2, seconds=5), "
               "decimal.Decimal('-1.50'), uuid.UUID(int=7), pathlib.PurePosixPath('/a/b'), "
               "pathlib.PureWindowsPath('C:/x')]")


def test_standard_library_kinds_read_back_by_a_process_that_never_imported_them(tmp_path):
    """Values of the standard library kinds, recorded by one process, come
    back equal and of their type in a fresh process that decodes them before
    it imports any of their modules itself (the decoders register on first
    read); their keys are the same in both processes and in this one."""
    path = str(tmp_path / "std.fabl")
    write = ("import sys, datetime, decimal, uuid, pathlib, fabric\n"
             f"v = {_STD_VALUES}\n"
             "c = fabric.EvalCassette(sys.argv[1], durability='os')\n"
             "r = fabric.EvalRequest('std', [v])\n"
             "c.record(r.key, v); c.close(); print(r.key.hex)\n")
    read = ("import sys, fabric\n"
            "c = fabric.EvalCassette(sys.argv[1], 'r')\n"
            "(k,) = list(c)\n"
            "got = c.get(k)\n"
            "import datetime, decimal, uuid, pathlib\n"
            f"want = {_STD_VALUES}\n"
            "print(k.hex, got == want, [type(a) is type(b) for a, b in zip(got, want)] "
            "== [True] * len(want), fabric.EvalRequest('std', [want]).key.hex)\n")
    env = {"PYTHONPATH": ":".join(sys.path)}
    w = subprocess.run([sys.executable, "-P", "-c", write, path], capture_output=True,
                       text=True, env=env)
    assert w.returncode == 0, w.stderr
    r = subprocess.run([sys.executable, "-P", "-c", read, path], capture_output=True,
                       text=True, env=env)
    assert r.returncode == 0, r.stderr
    key = w.stdout.strip()
    here = EvalRequest("std", [eval(_STD_VALUES, {"datetime": dt, "decimal": decimal,
                                                  "uuid": uuid, "pathlib": pathlib})]).key
    assert r.stdout.split() == [key, "True", "True", key] and here.hex == key


# ---------------------------------------------------------------------------
# Keys of the standard library kinds
# ---------------------------------------------------------------------------

def test_new_kinds_are_keyable_and_distinct():
    tz = dt.timezone(dt.timedelta(hours=2))
    values = [
        1j, complex(1, 0), 1.0, 1, decimal.Decimal("1"), decimal.Decimal("1.0"),
        uuid.UUID(int=1), uuid.UUID(int=1).bytes,
        dt.datetime(2024, 1, 1, 12), dt.datetime(2024, 1, 1, 12, tzinfo=dt.timezone.utc),
        dt.datetime(2024, 1, 1, 14, tzinfo=tz),  # the same instant, another offset
        dt.date(2024, 1, 1), dt.time(12), dt.time(12, tzinfo=tz), dt.timedelta(1),
        pathlib.PurePosixPath("a/b"), pathlib.PureWindowsPath("a/b"), "a/b",
    ]
    keys = [fabric.canonical_bytes(v) for v in values]
    assert len(set(keys)) == len(values)
    for v in values:
        assert fabric.canonical_bytes(v) == ref.encode(v)
        assert same(fabric.decode_value(fabric.encode_value(v)), v)


# ---------------------------------------------------------------------------
# Registered types and Opaque
# ---------------------------------------------------------------------------

class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return type(other) is Point and (self.x, self.y) == (other.x, other.y)


@dataclasses.dataclass(frozen=True)
class Box:
    w: int
    h: float = 1.0
    tags: tuple = ()


class Colour(enum.Enum):
    RED = "red"
    BLUE = "blue"


fabric.register_type(Point, "tests.Point", lambda p: (p.x, p.y), lambda d: Point(*d))
fabric.register_dataclass(Box)
fabric.register_type(Colour, "tests.Colour", lambda c: c.value, Colour)


def test_registered_types_round_trip_and_key(tmp_path):
    v = {"p": Point(1, 2.5), "b": Box(3, tags=("x",)), "c": Colour.BLUE, "l": [Point(0, 0)]}
    assert fabric.decode_value(fabric.encode_value(v)) == v
    assert fabric.canonical_bytes(Point(1, 2)) == ref.encode(Point(1, 2))
    assert fabric.canonical_bytes(Point(1, 2)) != fabric.canonical_bytes(Point(2, 1))
    assert fabric.canonical_bytes(Point(1, 2)) != fabric.canonical_bytes((1, 2))
    assert fabric.canonical_bytes(Colour.RED) != fabric.canonical_bytes("red")
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        k = EvalRequest("op", (Box(1),)).key
        c.record(k, v)
        assert c.get(k) == v


def test_unregistered_type_names_the_path_and_register_type():
    class Unknown:
        pass

    with pytest.raises(TypeError) as info:
        fabric.encode_value({"a": [1, Unknown()]})
    assert str(info.value) == ("value['a'][1]: cannot encode object of type Unknown "
                               "(register it with fabric.register_type)")


def test_unknown_names_decode_to_an_inert_opaque():
    data = fabric.encode_value(Point(1, 2)).replace(b"tests.Point", b"tests.Pnt_X")
    out = fabric.decode_value(data)
    assert isinstance(out, fabric.Opaque)
    assert (out.name, out.data) == ("tests.Pnt_X", (1, 2))
    # It passes on unchanged and keys as what it stands for.
    assert fabric.encode_value(out) == data
    assert hash(out) == hash(fabric.decode_value(data))
    # A name that looks like a module path imports nothing.
    evil = fabric.encode_value(Point(1, 2)).replace(b"tests.Point", b"os.system  ")
    assert isinstance(fabric.decode_value(evil), fabric.Opaque)


def test_register_type_refuses_bad_names():
    with pytest.raises(ValueError, match="fabric's own"):
        fabric.register_type(Point, "fabric.Point", lambda p: 0, lambda d: 0)
    with pytest.raises(ValueError, match="already registered"):
        fabric.register_type(int, "tests.Point", lambda p: 0, lambda d: 0)
    with pytest.raises(TypeError):
        fabric.register_dataclass(Point)


def test_from_data_errors_are_decode_errors():
    data = fabric.encode_value(uuid.UUID(int=3)).replace(b"\xc4\x10", b"\xc4\x0f", 1)[:-1]
    with pytest.raises(fabric.DecodeError, match="cannot rebuild a uuid.UUID value"):
        fabric.decode_value(data)


# ---------------------------------------------------------------------------
# Defects 2, 4, 5 and the old ledger
# ---------------------------------------------------------------------------

def test_defect_2_replayed_values_keep_their_type(tmp_path):
    values = [(1, 2), {1, 2}, frozenset({1}), bytearray(b"x"), {"b": 1, "a": 2},
              collections.OrderedDict(b=1), [(), [()]], 2**100, -0.0]
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        for i, v in enumerate(values):
            c.record(EvalRequest("op", (i,)).key, v)
        with c.record_stream(EvalRequest("s").key) as w:
            for v in values:
                w.append(v)
    with EvalCassette(str(tmp_path / "c.fabl"), "r") as c:
        for i, v in enumerate(values):
            got = c.get(EvalRequest("op", (i,)).key)
            expect = dict(v) if isinstance(v, collections.OrderedDict) else v
            assert same(got, expect)
        assert all(same(g, dict(v) if isinstance(v, collections.OrderedDict) else v)
                   for g, v in zip(c.get_stream(EvalRequest("s").key), values))


def test_what_comes_back_for_subclasses():
    P = collections.namedtuple("P", "x y")
    E = enum.IntEnum("E", "A B")
    assert same(fabric.decode_value(fabric.encode_value(P(1, 2))), (1, 2))
    assert same(fabric.decode_value(fabric.encode_value(E.B)), 2)
    assert same(fabric.decode_value(fabric.encode_value(collections.defaultdict(int, a=1))),
                {"a": 1})
    assert same(fabric.decode_value(fabric.encode_value(memoryview(b"ab"))), b"ab")


def test_defect_4_what_record_acknowledges_get_reads(tmp_path):
    deep = []
    for _ in range(fabric.MAX_DEPTH - 1):
        deep = [deep]
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        # A value at the documented depth, inside the reply wrapper.
        k = EvalRequest("deep").key
        assert c.record(k, [deep, [], None])
        assert c.get(k)[0] == deep
        too_deep = [[deep, [], None]]
        with pytest.raises(ValueError, match="nesting deeper than 257 levels"):
            c.record(EvalRequest("deeper").key, too_deep)
        with pytest.raises(ValueError, match=r"^reply: a container of 16777217 entries is more "
                                             r"than the 16777216 a cassette reads back$"):
            c.record(EvalRequest("big").key, [None] * (2**24 + 1))
        assert EvalRequest("big").key not in c and EvalRequest("deeper").key not in c
        with pytest.raises(ValueError, match="16777216 a cassette reads back"):
            with c.record_stream(EvalRequest("s").key) as w:
                w.append({"x": [0] * (2**24 + 1)})


def test_defect_5_redacted_encodes_again(tmp_path):
    back = fabric.decode_value(fabric.encode_value({"token": fabric.Secret("s3cr3t")}))
    assert back == {"token": fabric.REDACTED}
    assert fabric.encode_value(back) == fabric.encode_value({"token": fabric.Secret("x")})
    assert fabric.canonical_bytes(fabric.REDACTED) == fabric.canonical_bytes(fabric.Secret(1))
    assert EvalRequest("op", (back,)).key == EvalRequest("op", ({"token": fabric.Secret(2)},)).key
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        c.record(EvalRequest("op").key, back)
        assert c.get(EvalRequest("op").key)["token"] is fabric.REDACTED
    frames = fabric.stream_to_frames(iter([back, 1]), stream_id=1)
    items = [e for e in fabric.stream_frames_to_events(frames)]
    assert any(getattr(e, "item", None) == back for e in items)


def test_stream_items_keep_their_type_through_frames(tmp_path):
    items = [(1, 2), {"b": 1, "a": (2,)}, {3}, bytearray(b"x"), np.arange(3, dtype=">i2"),
             {"token": fabric.REDACTED}]
    frames = fabric.stream_to_frames(iter(items), stream_id=3)
    got = list(fabric.stream_frames_to_stream(b"".join(f.encode() for f in frames)))
    assert all(same(g, i) for g, i in zip(got, items)) and len(got) == len(items)
    # Recorded, then replayed from the cassette as frames.
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        k = EvalRequest("s", stream=True).key
        with c.record_stream(k) as w:
            for i in items:
                w.append(i)
        replay = fabric.cassette_to_stream_frames(c, k, stream_id=4)
        got = list(fabric.stream_frames_to_stream(b"".join(f.encode() for f in replay)))
    assert all(same(g, i) for g, i in zip(got, items)) and len(got) == len(items)


def _v1_key(op, args):
    ident = EvalRequest(op, args).identity_bytes()
    return ContentKey(hashlib.sha256(
        b"\x9b" + ident[1:-5].replace(b"fabric.key/2", b"fabric.key/1", 1)).digest())


def test_old_ledger_reads_as_before():
    """tests/golden/ledger-v1.fabl was written by the release before the value
    encoding: every record reads back exactly as it did then (v1 canonical
    payloads: lists, frozensets, sorted maps), under its v1 keys."""
    with EvalCassette(str(GOLDEN_V1_LEDGER), "r") as c:
        assert len(c) == 4
        assert c.get(_v1_key("op", ["golden-1"])) == {"answer": 42}
        got = c.get(_v1_key("op", ["golden-2"]))
        assert got == [1, -1, 2.5, "s", b"b", None, True, frozenset({1, 2}), 2**80]
        assert type(got) is list and type(got[7]) is frozenset
        assert list(c.get_stream(_v1_key("op", ["stream"]))) == ["a", "b"]
        assert c.get(_v1_key("op", ["golden-3"])) == ""
        # New requests never hit old records: the key scheme changed.
        assert EvalRequest("op", ["golden-1"]).key not in c


# ---------------------------------------------------------------------------
# Golden vectors of the value encoding
# ---------------------------------------------------------------------------

VECTORS = [
    ("nil", "None"), ("int", "1"), ("bigint", "2**64"), ("float keeps NaN bits",
                                                           "struct.unpack('>d', bytes.fromhex('7ff8000000000001'))[0]"),
    ("str", "'é'"), ("bytes", "b'\\x00'"), ("bytearray", "bytearray(b'ab')"),
    ("list", "[1, [2]]"), ("tuple", "(1, (2,))"), ("empty tuple", "()"),
    ("dict keeps order", "{'b': 1, 'a': 2}"), ("tuple key", "{(1, 2): 'v'}"),
    ("set", "{3}"), ("frozenset", "frozenset({'x'})"), ("complex", "complex(1, -0.0)"),
    ("secret", "fabric.Secret('x')"), ("REDACTED", "fabric.REDACTED"),
    ("Decimal", "decimal.Decimal('-1.50')"), ("UUID", "uuid.UUID(int=255)"),
    ("datetime aware", "dt.datetime(2024, 2, 29, 23, 59, 59, 999999, "
                       "tzinfo=dt.timezone(dt.timedelta(hours=-3, minutes=-30)))"),
    ("date", "dt.date(1, 1, 1)"), ("time", "dt.time(0, 0, fold=1)"),
    ("timedelta", "dt.timedelta(days=-1)"), ("path", "pathlib.PurePosixPath('/x')"),
    ("numpy array", "np.arange(4, dtype='<u2').reshape(2, 2)"),
    ("numpy 0-d", "np.array(True)"), ("numpy scalar", "np.float32(0.5)"),
    ("Opaque", "fabric.Opaque('app.T', {'k': (1,)})"),
]


def _eval(expr):
    import struct  # noqa: F401 - used by the vectors

    return eval(expr, {**globals(), "struct": struct})  # noqa: S307 - our own vectors


def _build_vectors():
    out = []
    for name, expr in VECTORS:
        v = _eval(expr)
        c, r = fabric.encode_value(v), ref.encode_value(v)
        assert c == r, name
        out.append({"name": name, "python": expr, "hex": c.hex()})
    return out


def test_golden_value_vectors():
    """tests/golden/values.json pins the value encoding (python tests/test_values.py
    rewrites it after a reviewed change)."""
    golden = json.loads(GOLDEN_VALUES.read_text())
    assert golden["vectors"] == _build_vectors()
    for vec in golden["vectors"]:
        data = bytes.fromhex(vec["hex"])
        expect = _eval(vec["python"])
        if isinstance(expect, fabric.Secret):
            expect = fabric.REDACTED  # a Secret's value never travels
        assert same(fabric.decode_value(data), expect)
        assert same(ref.decode_value(data), fabric.decode_value(data))


if __name__ == "__main__":  # rewrite the golden vectors
    GOLDEN_VALUES.write_text(json.dumps({"spec": "docs/spec/values.md",
                                         "vectors": _build_vectors()}, indent=1) + "\n")


# ---------------------------------------------------------------------------
# Malformed value payloads: a DecodeError with the offset, never a crash
# ---------------------------------------------------------------------------

MALFORMED = [
    ("empty", "", 0, "at offset 0: empty input (no value)"),
    ("no body", "c101", 2, "at offset 2: no value after the value encoding's prefix c1 01"),
    ("no version byte", "c1", 1, "at offset 1: missing version byte: the input ends after "
                                 "the value encoding's prefix c1"),
    ("unknown version", "c10201", 1, "at offset 1: unknown value encoding version 2 (this "
                                     "reader knows 1)"),
    ("version 0", "c100c0", 1, "unknown value encoding version 0 (this reader knows 1)"),
    ("tag at the end", "c101c70011", 5, "input ends"),
    ("tuple tag before a map", "c101c7001180", 2, "a tuple tag not followed by an array"),
    ("bytearray tag before a str", "c101c70014a0", 2, "a bytearray tag not followed by a bin"),
    ("a tag with a payload", "c101d41100c0", 2, "a tag with a payload"),
    ("typed value of 3 fields", "c101c7001693a16101c0", 2, "a typed value of 3 fields"),
    ("typed value name not a str", "c101c700169201c0", 2, "not followed by a str"),
    ("array dims not ints", "c101c7001593a3" + b"<i8".hex() + "c400c0", 2 + 3 + 1 + 4 + 2,
     "dimension"),
    ("array data too short for shape", "c101c7001593a3" + b"<i8".hex() + "c40101" + "05",
     2, "cannot rebuild a numpy.ndarray value"),
    ("complex of 8 bytes", "c101d7100000000000000000", 2, "a complex of 8 bytes"),
    ("duplicate set members", "c101c70012920101", 7, "duplicate set member"),
    ("NaN set members", "c101c7001392cb7ff8000000000000cb7ff8000000000001", 15,
     "duplicate set member"),
    ("complex NaN set members", "c101c7001392" + ("d810" + "7ff8000000000000" + "0" * 16) * 2,
     24, "duplicate set member"),
    ("a set as a map key", "c10181c7001290c0", 3, "a set cannot be a map key"),
    ("trailing bytes", "c101c0c0", 3, "trailing"),
    ("tuples nested past the depth limit", "c101" + "c7001191" * 300 + "c0", None,
     "nesting deeper"),
]


@pytest.mark.parametrize("name,hexdata,offset,message", MALFORMED,
                         ids=[m[0] for m in MALFORMED])
def test_malformed_value_payloads(name, hexdata, offset, message):
    data = bytes.fromhex(hexdata)
    with pytest.raises(fabric.DecodeError) as info:
        fabric.decode_value(data)
    if offset is not None:
        assert info.value.offset == offset, str(info.value)
    if message is not None:
        assert message in str(info.value)


def test_hash_flood_in_a_tagged_set_is_refused():
    # Multiples of 2**61 - 1 all hash to 0 (docs/spec/decoding.md).
    members = [k * (2**61 - 1) for k in range(1, 20)]
    with pytest.raises(fabric.DecodeError, match="share one hash"):
        fabric.decode_value(fabric.encode_value(set(members)))
    assert fabric.decode_value(fabric.encode_value(set(members[:8]))) == set(members[:8])


def test_map_keys_shared_across_decodes_stay_right():
    """Short ASCII map keys are kept across decode calls (a table in the
    module state): many distinct keys (more than the table holds, so slots
    are replaced), non-ASCII and long keys, and dicts of every size all
    decode to equal values, with keys that are exact str."""
    values = [{f"k{i}-{j}": j for j in range(n)} for i, n in enumerate((0, 1, 5, 6, 9, 200))]
    values += [{"é": 1, "ascii": 2, "x" * 33: 3, "x" * 32: 4}, {"a": {"a": {"a": "a"}}}]
    for _ in range(3):
        for v in values:
            got = fabric.decode_value(fabric.encode_value(v))
            assert got == v and list(got) == list(v)
            assert all(type(k) is str for k in got)


def test_content_key_constructor_paths():
    digest = bytes(range(32))
    want = ContentKey(digest)
    assert ContentKey(bytearray(digest)) == ContentKey(digest=digest) == \
        ContentKey(memoryview(digest)) == want and want.digest == digest
    for bad, exc in (((b"x",), ValueError), ((), TypeError), ((1,), TypeError),
                     ((digest, digest), TypeError), ((bytes(33),), ValueError)):
        with pytest.raises(exc):
            ContentKey(*bad)
    with pytest.raises(TypeError):
        ContentKey(digest, extra=1)


# ---------------------------------------------------------------------------
# Keys: what shares one is exactly the named equivalences
# ---------------------------------------------------------------------------

def _observable(v):
    """What a function can observe of v, up to exactly the equivalences the
    spec names (docs/spec/content-key.md, "What shares a key"): list/tuple,
    set/frozenset, bytes-like, dict order, every NaN, unregistered builtin
    subclasses as their base, every Secret and REDACTED, a datetime's tzinfo
    object as its offset. Written independently of the encoder."""
    import decimal
    import struct
    import uuid

    def flt(x):
        return ("nan",) if math.isnan(x) else ("f", struct.pack(">d", x))

    if v is None:
        return ("none",)
    if isinstance(v, np.ndarray):
        return ("ndarray", v.dtype.str, v.shape, np.ascontiguousarray(v).tobytes())
    if isinstance(v, np.generic):
        return ("npscalar", v.dtype.str, v.tobytes())
    if isinstance(v, bool):
        return ("bool", v)
    if isinstance(v, int):
        return ("int", int(v))
    if isinstance(v, float):
        return ("float",) + flt(v)
    if isinstance(v, complex):
        return ("complex", flt(v.real), flt(v.imag))
    if isinstance(v, str):
        return ("str", str(v))
    if isinstance(v, (bytes, bytearray, memoryview)):
        return ("bin", bytes(v))
    if isinstance(v, (list, tuple)):
        return ("array", tuple(_observable(x) for x in v))
    if isinstance(v, dict):
        return ("map", frozenset((_observable(k), _observable(x)) for k, x in v.items()))
    if isinstance(v, (set, frozenset)):
        return ("set", frozenset(_observable(x) for x in v))
    if isinstance(v, decimal.Decimal):
        return ("decimal", v.as_tuple())
    if isinstance(v, uuid.UUID):
        return ("uuid", v.bytes)
    if isinstance(v, dt.datetime):
        return ("datetime", v.replace(tzinfo=None).isoformat(), v.fold, v.utcoffset())
    if isinstance(v, dt.date):
        return ("date", v.isoformat())
    if isinstance(v, dt.time):
        return ("time", v.replace(tzinfo=None).isoformat(), v.fold, v.utcoffset())
    if isinstance(v, dt.timedelta):
        return ("timedelta", v.days, v.seconds, v.microseconds)
    if isinstance(v, pathlib.PurePath):
        return ("path", type(v).__name__, str(v))
    if isinstance(v, fabric.Secret) or v is fabric.REDACTED:
        return ("secret",)
    raise AssertionError(f"no observable form for {type(v).__name__}")


def _near_scalars():
    """Small values that look alike: equal numbers of other types, the same
    text as str, bytes and paths, arrays of the same bytes in other shapes
    and dtypes, datetimes with the same wall time at other offsets, ..."""
    import collections
    import decimal
    import enum
    import uuid

    class Colour(enum.IntEnum):
        RED = 1

    Pair = collections.namedtuple("Pair", "a b")
    utc, plus1 = dt.timezone.utc, dt.timezone(dt.timedelta(hours=1))
    a6 = np.arange(6, dtype="<i8")
    return [
        None, False, True, 0, 1, -1, 2**64, Colour.RED, 0.0, -0.0, 1.0, float("nan"),
        -float("nan"), 1 + 0j, complex(float("nan"), 0), "", "1", "a", b"", b"1",
        bytearray(b"1"), memoryview(b"1"), decimal.Decimal("1"), decimal.Decimal("1.0"),
        uuid.UUID(int=1), uuid.UUID(int=2),
        dt.date(2020, 1, 1), dt.datetime(2020, 1, 1), dt.datetime(2020, 1, 1, tzinfo=utc),
        dt.datetime(2020, 1, 1, 1, tzinfo=plus1), dt.datetime(2020, 1, 1, tzinfo=plus1),
        dt.datetime(2020, 1, 1, fold=1), dt.time(1), dt.time(1, tzinfo=utc),
        dt.timedelta(0), dt.timedelta(days=1), dt.timedelta(seconds=86400 - 1),
        pathlib.PurePosixPath("1"), pathlib.PureWindowsPath("1"), pathlib.PurePosixPath("a"),
        np.int64(1), np.int32(1), np.int64(0), np.float64(1.0), np.float32(1.0),
        np.bool_(True), np.uint8(1), a6, a6.reshape(2, 3), a6.reshape(3, 2),
        a6.reshape(2, 3).T, np.asfortranarray(a6.reshape(2, 3)), a6.view("<f8"),
        a6.astype(">i8"), a6[::2], np.arange(0, 6, 2, dtype="<i8"), np.zeros(0),
        np.zeros((0, 2)), np.zeros((2, 0)), np.array(1), np.array([1]),
        np.array(["1"]), np.array([b"1"]), fabric.REDACTED, fabric.Secret("x"),
        fabric.Secret("y"), Pair(1, 2), (1, 2), [1, 2],
    ]


_near = st.sampled_from(_near_scalars())
_near_values = st.recursive(_near, lambda c: st.one_of(
    st.lists(c, max_size=2), st.lists(c, max_size=2).map(tuple),
    st.dictionaries(st.sampled_from([0, 1, "1", b"1", 1.0, (1, 2), True]), c, max_size=2),
    st.frozensets(st.sampled_from([0, 1, "1", b"1", 1.0, True, None]), max_size=2),
    st.sets(st.sampled_from([0, 1, "1", b"1", 1.0, True, None]), max_size=2)),
    max_leaves=4)


@settings(max_examples=1500, deadline=None)
@given(_near_values, _near_values)
def test_keys_are_shared_exactly_by_the_named_equivalences(a, b):
    """Two values share a key if and only if they are observably the same up
    to the named equivalences: different type or shape never share one, and
    each named equivalence does."""
    assert (fabric.canonical_bytes(a) == fabric.canonical_bytes(b)) == \
        (_observable(a) == _observable(b)), (a, b)


def test_near_scalars_pairwise():
    """Every pair of the look-alike values, exhaustively."""
    vals = _near_scalars()
    keys = [fabric.canonical_bytes(v) for v in vals]
    obs = [_observable(v) for v in vals]
    for i, j in itertools.combinations(range(len(vals)), 2):
        assert (keys[i] == keys[j]) == (obs[i] == obs[j]), (vals[i], vals[j])
