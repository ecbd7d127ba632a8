"""Content keys: determinism across processes, refusals with their paths,
Secret, ContentKey and EvalRequest behaviour."""

import array
import copy
import os
import pickle
import subprocess
import sys

import pytest

import fabric
from fabric import ContentKey, EvalRequest, Secret, canonical_bytes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))


class Foo:
    pass


# ---- determinism across processes ------------------------------------------

_CHILD = r"""
import random, sys
import fabric
order = random.Random(int(sys.argv[1]))

def shuffled_dict(pairs):
    pairs = list(pairs)
    order.shuffle(pairs)
    return dict(pairs)

keys = ["k%d" % i for i in range(40)] + [1, -1, 2**70, 1.5, b"b", (1, "t"), None, frozenset({"f"})]
value = {
    "dict": shuffled_dict((k, i) for i, k in enumerate(keys)),
    "set": set(order.sample(["s%d" % i for i in range(50)], 50)),
    "frozenset": frozenset(order.sample(list(range(-20, 20)), 40)),
    "nested": [shuffled_dict([("x", {1, 2, 3}), ("y", shuffled_dict([("p", 1), ("q", 2)]))])],
}
req = fabric.EvalRequest("op", (value,), shuffled_dict([("a", 1), ("b", {"c", "d"})]),
                         required_capabilities=order.sample(["gpu", "net", "disk"], 3))
print(fabric.canonical_bytes(value).hex())
print(req.key)
"""


def test_keys_equal_across_processes_hash_seeds_and_insertion_orders():
    outs = set()
    for hashseed, order_seed in [("0", 1), ("1", 2), ("12345", 3), ("random", 4), ("4242", 5)]:
        env = dict(os.environ, PYTHONHASHSEED=hashseed, PYTHONPATH=ROOT)
        proc = subprocess.run([sys.executable, "-c", _CHILD, str(order_seed)], env=env,
                              capture_output=True, text=True, check=True)
        outs.add(proc.stdout)
    assert len(outs) == 1
    # And this process agrees (its own hash seed, yet another order).
    env_out = subprocess.run([sys.executable, "-c", _CHILD, "99"],
                             env=dict(os.environ, PYTHONPATH=ROOT),
                             capture_output=True, text=True, check=True).stdout
    assert {env_out} == outs


def test_set_order_does_not_matter_in_process():
    a = {"x%d" % i for i in range(100)}
    b = set(sorted(a, reverse=True))
    assert canonical_bytes(a) == canonical_bytes(b) == canonical_bytes(frozenset(a))
    d1 = {i: str(i) for i in range(50)}
    d2 = {i: str(i) for i in reversed(range(50))}
    assert list(d1) != list(d2)
    assert canonical_bytes(d1) == canonical_bytes(d2)
    assert EvalRequest("op", (d1,)).key == EvalRequest("op", (d2,)).key
    k1 = {str(k): v for k, v in d1.items()}
    k2 = {str(k): v for k, v in d2.items()}
    assert EvalRequest("op", (), k1).key == EvalRequest("op", (), k2).key


# ---- kinds never collide ----------------------------------------------------

DISTINCT = [
    1, 1.0, True, "1", b"1", [1], {1}, {1: 1}, {"1": 1}, (1.0,), [True], ["1"], [b"1"],
    0, 0.0, -0.0, False, "", b"", [], {}, set(), None, [None], Secret("x"), [Secret("x")],
    2**64, -(2**63) - 1, float(2**64), str(2**64), float("nan"), float("inf"), "nan",
    [[]], [{}], {(): ()}, {frozenset(): 0}, {1: None}, {None: 1}, [1, 2], [2, 1], {1, 2, 3},
    [1, 2, 3], {"a": 1, "b": 2}, [["a", 1], ["b", 2]], {b"a": 1}, 255, 255.0, -1, -1.0,
]


def test_different_kinds_never_collide():
    encodings = [canonical_bytes(v) for v in DISTINCT]
    for i, e in enumerate(encodings):
        for j in range(i):
            assert e != encodings[j], (DISTINCT[i], DISTINCT[j])
    keys = {EvalRequest("op", (v,)).key for v in DISTINCT}
    assert len(keys) == len(DISTINCT)


def test_documented_equal_kinds():
    assert canonical_bytes([1, 2]) == canonical_bytes((1, 2))
    assert canonical_bytes(b"ab") == canonical_bytes(bytearray(b"ab")) == canonical_bytes(
        memoryview(b"ab")) == canonical_bytes(array.array("B", b"ab"))
    assert canonical_bytes({1, 2}) == canonical_bytes(frozenset({2, 1}))
    assert canonical_bytes(Secret("a")) == canonical_bytes(Secret(object())) == b"\xc7\x00\x03"
    assert canonical_bytes(float("nan")) == canonical_bytes(-float("nan")) == bytes.fromhex(
        "cb7ff8000000000000")
    assert canonical_bytes(0.0) != canonical_bytes(-0.0)


# ---- refusals, with the path in the message ---------------------------------


def _refuse(value, exc_type, message):
    with pytest.raises(exc_type) as info:
        canonical_bytes(value)
    assert type(info.value) is exc_type
    assert str(info.value) == message
    return info.value


def test_unsupported_types_named_with_path():
    reg = " (register it with fabric.register_type)"
    _refuse(Foo(), TypeError, "value: cannot key object of type Foo" + reg)
    _refuse([0, 1, {"x": Foo()}], TypeError, "value[2]['x']: cannot key object of type Foo" + reg)
    _refuse({"a": [(1, 2, {3: object()})]}, TypeError,
            "value['a'][0][2][3]: cannot key object of type object" + reg)
    # complex and Decimal are keyable from key scheme 2 on (tests/test_values.py).
    for bad in [Foo, len, range(3), iter([]), slice(1), Ellipsis, NotImplemented,
                type("D", (), {})]:
        with pytest.raises(TypeError, match=r"^value\[0\]: cannot key object of type "):
            canonical_bytes([bad])


def test_no_fallback_for_objects_with_reduce_or_repr():
    class Reducible:
        def __reduce__(self):
            return (int, (1,))

        def __repr__(self):
            return "1"

    _refuse(Reducible(), TypeError,
            "value: cannot key object of type Reducible (register it with fabric.register_type)")


def test_request_fields_are_the_path_root():
    with pytest.raises(TypeError, match=r"^args\[2\]\['x'\]: cannot key object of type Foo \(register "):
        EvalRequest("op", (0, 1, {"x": Foo()}))
    with pytest.raises(TypeError, match=r"^kwargs\['k'\]\[1\]: cannot key object of type Foo \(register "):
        EvalRequest("op", (), {"k": [0, Foo()]})
    with pytest.raises(ValueError, match=r"^op: str contains a lone surrogate"):
        EvalRequest("op\ud800")
    with pytest.raises(ValueError, match=r"^version: str contains a lone surrogate"):
        EvalRequest("op", version="v\udc00")


def test_lone_surrogates():
    _refuse("\ud800", ValueError, "value: str contains a lone surrogate and is not valid UTF-8")
    _refuse({"k": ["ok", "x\udfffy"]}, ValueError,
            "value['k'][1]: str contains a lone surrogate and is not valid UTF-8")
    _refuse({"\ud83d": 1}, ValueError,
            "value<key '\\ud83d'>: str contains a lone surrogate and is not valid UTF-8")
    # A proper pair written as one code point is fine.
    assert canonical_bytes("\U0001f600") == b"\xa4\xf0\x9f\x98\x80"


def test_cycles():
    a = []
    a.append(a)
    _refuse(a, ValueError, "value[0]: self-referencing container (a cycle) cannot be keyed")
    d = {}
    d["me"] = [1, d]
    _refuse(d, ValueError,
            "value['me'][1]: self-referencing container (a cycle) cannot be keyed")
    with pytest.raises(ValueError, match=r"^args\[0\]\[0\]: self-referencing"):
        EvalRequest("op", (a,))
    # The same object twice, side by side, is not a cycle.
    shared = [1, 2]
    assert canonical_bytes([shared, shared]) == canonical_bytes([[1, 2], [1, 2]])


def test_depth_limit():
    assert fabric.MAX_DEPTH == 256
    ok = []
    for _ in range(fabric.MAX_DEPTH - 1):
        ok = [ok]
    assert canonical_bytes(ok) == b"\x91" * 255 + b"\x90"
    too_deep = [ok]
    # The path is cut to 200 characters: its start and its innermost segments.
    with pytest.raises(ValueError, match=r"^value(\[0\]){18}\[\.\.\.(0\]\[){45}0\]: nesting deeper "
                                         r"than 256 levels$"):
        canonical_bytes(too_deep)
    deep_dict = {}
    for _ in range(300):
        deep_dict = {"d": deep_dict}
    with pytest.raises(ValueError, match="nesting deeper than 256 levels"):
        canonical_bytes(deep_dict)
    deep_set = frozenset()
    for _ in range(300):
        deep_set = frozenset({deep_set})
    with pytest.raises(ValueError, match=r"^value(<member>){6}<member\.\.\.>(<member>){17}: "
                                         r"nesting deeper"):
        canonical_bytes(deep_set)


def test_nan_duplicate_keys_and_members():
    msg = "two distinct keys or members encode identically (for example two NaN objects)"
    _refuse({float("nan"): 1, float("nan"): 2}, ValueError, "value: " + msg)
    _refuse([{"s": {float("nan"), float("nan")}}], ValueError, "value[0]['s']: " + msg)
    nan = float("nan")
    assert canonical_bytes({nan: 1}) == bytes.fromhex("81cb7ff800000000000001")
    # Distinct Python keys that encode alike: a NaN with a payload and the plain one.
    _refuse({nan: 1, -nan: 2}, ValueError, "value: " + msg)
    # Two secrets as keys: both are the marker.
    _refuse({Secret("a"): 1, Secret("b"): 2}, ValueError, "value: " + msg)


def test_non_contiguous_buffers():
    _refuse(memoryview(b"abcdef")[::2], TypeError,
            "value: cannot key a non-contiguous buffer of type memoryview "
            "(make a contiguous copy first)")
    _refuse({"m": [memoryview(bytearray(b"abcdefgh"))[1::3]]}, TypeError,
            "value['m'][0]: cannot key a non-contiguous buffer of type memoryview "
            "(make a contiguous copy first)")
    # Contiguous slices are fine, and key their bytes only.
    assert canonical_bytes(memoryview(b"abcdef")[1:3]) == b"\xc4\x02bc"
    # A C-contiguous 2-D view keys its bytes in memory order.
    m = memoryview(bytes(range(6))).cast("B", (2, 3))
    assert canonical_bytes(m) == b"\xc4\x06" + bytes(range(6))


def test_released_buffer_is_refused():
    m = memoryview(b"abc")
    m.release()
    with pytest.raises(ValueError, match="released"):
        canonical_bytes(m)


# ---- EvalRequest fields ------------------------------------------------------

BAD_FIELDS = [
    (dict(op=None), TypeError, "EvalRequest op must be a str, not NoneType"),
    (dict(op=""), ValueError, "EvalRequest op must not be empty"),
    (dict(args="xy"), TypeError, "EvalRequest args must be a tuple or list, not str"),
    (dict(args={1: 2}), TypeError, "EvalRequest args must be a tuple or list, not dict"),
    (dict(kwargs=[("a", 1)]), TypeError, "EvalRequest kwargs must be None or a mapping, not list"),
    (dict(kwargs={1: 2}), TypeError, "EvalRequest kwargs keys must be str, found 1"),
    (dict(version=-1), ValueError, "EvalRequest version must be >= 0, got -1"),
    (dict(version=False), TypeError,
     "EvalRequest version must be an int >= 0 or a non-empty str, not False"),
    (dict(version=1.5), TypeError,
     "EvalRequest version must be an int >= 0 or a non-empty str, not 1.5"),
    (dict(version=""), TypeError,
     "EvalRequest version must be an int >= 0 or a non-empty str, not ''"),
    (dict(required_capabilities="gpu"), TypeError,
     "EvalRequest required_capabilities must be an iterable of str, "
     "not a single string (wrap it in a tuple)"),
    (dict(required_capabilities=3), TypeError,
     "EvalRequest required_capabilities must be an iterable of str, not int"),
    (dict(required_capabilities=["a", b"b"]), TypeError,
     "EvalRequest required_capabilities must hold non-empty str, found b'b'"),
    (dict(required_capabilities=[[1]]), TypeError,
     "EvalRequest required_capabilities must hold non-empty str, found [1]"),
    (dict(required_capabilities=[""]), TypeError,
     "EvalRequest required_capabilities must hold non-empty str, found ''"),
    (dict(mode="EVAL"), ValueError,
     "EvalRequest mode must be a lower-case name such as 'eval' "
     "([a-z][a-z0-9_.-]*, at most 64 characters), got 'EVAL'"),
    (dict(mode="a" * 65), ValueError, None),
    (dict(mode="1eval"), ValueError, None),
    (dict(mode=""), ValueError, None),
    (dict(mode=b"eval"), TypeError, "EvalRequest mode must be a str, not bytes"),
    (dict(answer_limit=0), ValueError, "EvalRequest answer_limit must be positive, got 0"),
    (dict(answer_limit=-3), ValueError, "EvalRequest answer_limit must be positive, got -3"),
    (dict(answer_limit=2.0), TypeError, "EvalRequest answer_limit must be None or an int, not float"),
    (dict(answer_limit=True), TypeError, "EvalRequest answer_limit must be None or an int, not bool"),
    (dict(stream_buffer=0), ValueError, "EvalRequest stream_buffer must be positive, got 0"),
    (dict(stream_buffer="4"), TypeError, "EvalRequest stream_buffer must be None or an int, not str"),
    (dict(stream=1), TypeError, "EvalRequest stream must be True or False, not 1"),
    (dict(stream=None), TypeError, "EvalRequest stream must be True or False, not None"),
    (dict(trace="yes"), TypeError, "EvalRequest trace must be True or False, not 'yes'"),
    (dict(consistency="strong"), ValueError,
     "EvalRequest consistency must be 'local-first', 'local-only' or 'no-home', got 'strong'"),
    (dict(consistency=None), ValueError,
     "EvalRequest consistency must be 'local-first', 'local-only' or 'no-home', got None"),
    (dict(deadline=0), ValueError,
     "EvalRequest deadline must be a positive, finite number of seconds, got 0"),
    (dict(deadline=-0.5), ValueError,
     "EvalRequest deadline must be a positive, finite number of seconds, got -0.5"),
    (dict(deadline=float("inf")), ValueError,
     "EvalRequest deadline must be a positive, finite number of seconds, got inf"),
    (dict(deadline=float("nan")), ValueError,
     "EvalRequest deadline must be a positive, finite number of seconds, got nan"),
    (dict(deadline=10**400), ValueError, None),
    (dict(deadline=1e12), ValueError,
     "EvalRequest deadline must be at most 1e9 seconds (about 31 years; None for no "
     "deadline), got 1000000000000.0"),
    (dict(deadline="5"), TypeError, "EvalRequest deadline must be None or seconds as a number, not str"),
    (dict(deadline=True), TypeError, "EvalRequest deadline must be None or seconds as a number, not bool"),
    (dict(colour="red"), TypeError, "EvalRequest() got an unexpected keyword argument 'colour'"),
]


@pytest.mark.parametrize("fields,exc_type,message", BAD_FIELDS,
                         ids=[",".join(f) + "-" + str(i) for i, (f, _, _) in enumerate(BAD_FIELDS)])
def test_bad_request_fields(fields, exc_type, message):
    fields = dict(fields)
    with pytest.raises(exc_type) as info:
        if "op" in fields:
            EvalRequest(**fields)
        else:
            EvalRequest("op", **fields)
    assert type(info.value) is exc_type
    if message is not None:
        assert str(info.value) == message
    # replace() validates the same way.
    with pytest.raises(exc_type) as info2:
        EvalRequest("op").replace(**fields)
    assert str(info2.value) == str(info.value) or "replace()" in str(info2.value)


def test_request_call_forms():
    with pytest.raises(TypeError, match="missing required argument 'op'"):
        EvalRequest()
    with pytest.raises(TypeError, match="at most 3 positional arguments"):
        EvalRequest("op", (), {}, 1)
    with pytest.raises(TypeError, match="multiple values for argument 'args'"):
        EvalRequest("op", (), args=())
    with pytest.raises(TypeError, match="keyword arguments only"):
        EvalRequest("op").replace("x")
    # The slow (non-vectorcall) path builds the same request.
    fast = EvalRequest("op", (1,), {"a": 2}, version=3)
    slow = EvalRequest.__new__(EvalRequest, "op", (1,), {"a": 2}, version=3)
    assert fast == slow and fast.key == slow.key


def test_valid_field_forms():
    r = EvalRequest("op", [1, 2], None, version="v1", required_capabilities=iter(["b", "a", "b"]),
                    mode="x.y-z_1", answer_limit=2**70, stream_buffer=1, stream=True, trace=True,
                    consistency="local-only", deadline=3)
    assert r.args == (1, 2)
    assert dict(r.kwargs) == {}
    assert r.version == "v1"
    assert r.required_capabilities == ("a", "b")
    assert r.mode == "x.y-z_1"
    assert r.answer_limit == 2**70 and type(r.answer_limit) is int
    assert r.stream is True and r.trace is True
    assert r.consistency == "local-only"
    assert r.deadline == 3.0 and type(r.deadline) is float
    assert EvalRequest("op", consistency="no-home").consistency == "no-home"

    class MyInt(int):
        pass

    assert type(EvalRequest("op", version=MyInt(3)).version) is int
    from types import MappingProxyType

    assert EvalRequest("op", (), MappingProxyType({"a": 1})).key == EvalRequest(
        "op", (), {"a": 1}).key


def test_identity_fields_change_the_key_policy_fields_do_not():
    base = EvalRequest("op", (1,), {"a": 1})
    changed = [
        dict(op="op2"), dict(args=(2,)), dict(kwargs={"a": 2}), dict(version=1),
        dict(required_capabilities=["gpu"]), dict(mode="explain"), dict(answer_limit=5),
        dict(stream_buffer=5), dict(stream=True), dict(trace=True),
    ]
    keys = {base.key} | {base.replace(**c).key for c in changed}
    assert len(keys) == len(changed) + 1
    assert base.replace(version="0").key != base.key  # int 0 and str "0" differ
    same = base.replace(consistency="no-home", deadline=1.0)
    assert same.key == base.key
    assert same != base  # equal requests also share their routing policy
    assert base.replace(answer_limit=None) == base


# ---- Secret ------------------------------------------------------------------

SECRET_TEXT = "hunter2-XyZZy"


def test_secret_never_shown():
    s = Secret(SECRET_TEXT)
    assert repr(s) == str(s) == "Secret('***')"
    assert f"{s}" == "Secret('***')"
    assert s.reveal() == SECRET_TEXT
    req = EvalRequest("fetch", (s,), {"token": s, "nested": [{"deep": s}]})
    for text in (repr(req), str(req), req.identity_bytes().hex(), repr(req.identity_bytes())):
        assert SECRET_TEXT not in text
        assert SECRET_TEXT.encode().hex() not in text
    assert SECRET_TEXT.encode() not in req.identity_bytes()
    assert SECRET_TEXT.encode() not in canonical_bytes([s, {"k": s}])
    assert req.key == EvalRequest("fetch", (Secret("other"),),
                                  {"token": Secret(1), "nested": [{"deep": Secret(None)}]}).key
    assert req.key != EvalRequest("fetch", (None,), {"token": s, "nested": [{"deep": s}]}).key


def test_secret_not_in_exception_text():
    s = Secret(SECRET_TEXT)
    errors = []
    for build in [
        lambda: EvalRequest("op", (s, Foo())),
        lambda: EvalRequest("op", (), {"t": s, "u": {s: Foo()}}),
        lambda: canonical_bytes({s: 1, Secret(SECRET_TEXT + "2"): 2}),
        lambda: canonical_bytes({s: [Foo()]}),
        lambda: EvalRequest("op", (), {"t": s}, deadline="x"),
        lambda: EvalRequest("op", required_capabilities=[s]),
        lambda: EvalRequest("op", version=s),
        lambda: EvalRequest("op", mode=s),
        lambda: EvalRequest(s),
        lambda: pickle.dumps(s),
        lambda: pickle.dumps(EvalRequest("op", (s,))),
        lambda: copy.deepcopy(s),
    ]:
        with pytest.raises((TypeError, ValueError)) as info:
            build()
        errors.append(info.value)
    for exc in errors:
        assert SECRET_TEXT not in str(exc)
        assert SECRET_TEXT not in repr(exc)
    assert str(errors[3]) == "value[Secret('***')][0]: cannot key object of type Foo (register it with fabric.register_type)"


def test_secret_cannot_be_pickled():
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        with pytest.raises(TypeError, match="a Secret cannot be pickled"):
            pickle.dumps(Secret("x"), protocol=proto)


def test_secret_is_final_and_requires_a_value():
    with pytest.raises(TypeError):
        type("S", (Secret,), {})
    with pytest.raises(TypeError):
        Secret()


# ---- ContentKey ---------------------------------------------------------------


def test_content_key_api():
    req = EvalRequest("op", (1,))
    k = req.key
    assert k is req.key  # made once
    assert ContentKey.of(req) == k
    assert isinstance(k.digest, bytes) and len(k.digest) == 32
    assert k.hex == k.digest.hex() and len(k.hex) == 64
    assert str(k) == "sha256:" + k.hex
    assert repr(k) == "ContentKey.parse('sha256:%s')" % k.hex
    assert eval(repr(k), {"ContentKey": ContentKey}) == k
    assert ContentKey.parse(str(k)) == k
    assert ContentKey(k.digest) == k
    assert ContentKey(bytearray(k.digest)) == k
    assert bytes(k) == k.digest
    view = memoryview(k)
    assert view.readonly and view.nbytes == 32 and view.tobytes() == k.digest
    assert hash(k) == hash(ContentKey(k.digest))
    assert {k: 1}[ContentKey.parse(str(k))] == 1
    assert k != k.digest and k != str(k)
    assert "sha256:" in k._repr_html_()


def test_content_key_order():
    keys = [ContentKey(bytes([i]) + bytes(31)) for i in (3, 1, 2)]
    assert sorted(keys) == [keys[1], keys[2], keys[0]]
    assert keys[1] < keys[2] <= keys[2] < keys[0]
    assert max(keys) == keys[0]
    assert sorted(k.digest for k in keys) == [k.digest for k in sorted(keys)]
    with pytest.raises(TypeError):
        keys[0] < b"x"


def test_content_key_pickle_and_copy():
    k = EvalRequest("op").key
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        assert pickle.loads(pickle.dumps(k, protocol=proto)) == k
    assert copy.copy(k) == k and copy.deepcopy(k) == k


@pytest.mark.parametrize("text", [
    "", "sha256:", "sha256:" + "0" * 63, "sha256:" + "0" * 65, "sha1:" + "0" * 64,
    "SHA256:" + "0" * 64, "sha256:" + "A" * 64, "sha256:" + "g" * 64, "0" * 64,
    " sha256:" + "0" * 64, "sha256:" + "0" * 63 + "\u0660",
])
def test_content_key_parse_errors(text):
    with pytest.raises(ValueError, match="not a content key: .*expected 'sha256:' and 64 "
                                         "lower-case hex digits"):
        ContentKey.parse(text)


def test_content_key_bad_construction():
    with pytest.raises(TypeError, match="takes a str, not bytes"):
        ContentKey.parse(b"sha256:" + b"0" * 64)
    with pytest.raises(ValueError, match="needs a 32-byte SHA-256 digest, got 31 bytes"):
        ContentKey(bytes(31))
    with pytest.raises(TypeError):
        ContentKey("00" * 32)
    with pytest.raises(TypeError, match="takes an EvalRequest, not dict"):
        ContentKey.of({})


# ---- EvalRequest behaviour ----------------------------------------------------------


def test_request_is_immutable():
    r = EvalRequest("op", ([1],), {"a": [2]})
    for name in ["op", "args", "kwargs", "version", "key", "deadline", "stream", "other"]:
        with pytest.raises(AttributeError):
            setattr(r, name, 1)
    with pytest.raises(TypeError):
        r.kwargs["b"] = 1
    caller = {"a": 1}
    r2 = EvalRequest("op", (), caller)
    key = r2.key
    caller["a"] = 2
    assert dict(r2.kwargs) == {"a": 1}
    assert r2.key == key == EvalRequest("op", (), {"a": 1}).key


def test_request_equality_and_hash():
    a = EvalRequest("op", (1, [2]), {"k": {"x", "y"}})
    b = EvalRequest("op", [1, (2,)], {"k": frozenset({"y", "x"})})
    assert a == b and not (a != b)
    assert hash(a) == hash(b)
    assert len({a, b}) == 1
    assert a != EvalRequest("op", (1, [3]))
    assert a != "op" and (a == a.key) is False
    with pytest.raises(TypeError):
        a < b


def test_replace():
    a = EvalRequest("op", (1,), {"k": 1}, version=2, deadline=5.0)
    b = a.replace(args=(2,), deadline=None)
    assert b.args == (2,) and b.deadline is None and b.version == 2 and dict(b.kwargs) == {"k": 1}
    assert a.args == (1,) and a.deadline == 5.0
    assert a.replace() == a
    with pytest.raises(TypeError, match="unexpected keyword argument 'colour'"):
        a.replace(colour=1)


def test_request_pickle():
    a = EvalRequest("op", (1, b"x", {1, 2}, 2**70), {"k": [None, 1.5]}, version="v",
                    required_capabilities=["gpu"], mode="m", answer_limit=3, stream_buffer=2,
                    stream=True, trace=True, consistency="no-home", deadline=2.0)
    for proto in range(pickle.HIGHEST_PROTOCOL + 1):
        b = pickle.loads(pickle.dumps(a, protocol=proto))
        assert b == a and b.key == a.key and b.deadline == 2.0 and b.consistency == "no-home"
    assert copy.deepcopy(a) == a


def test_repr():
    r = EvalRequest("embed", ("some text",), {"model": "mini-l6"}, version=1)
    assert repr(r) == ("EvalRequest('embed', args=('some text',), kwargs={'model': 'mini-l6'}, "
                       "version=1, key=sha256:%s...)" % r.key.hex[:12])
    full = EvalRequest("op", (), required_capabilities=["gpu"], mode="m", answer_limit=1,
                       stream_buffer=2, stream=True, trace=True, consistency="no-home",
                       deadline=1.5)
    text = repr(full)
    for part in ["required_capabilities=('gpu',)", "mode='m'", "answer_limit=1",
                 "stream_buffer=2", "stream=True", "trace=True", "consistency='no-home'",
                 "deadline=1.5"]:
        assert part in text


def test_repr_truncates_large_arguments():
    r = EvalRequest("op", ("x" * 10000,), {"big": list(range(10000))})
    text = repr(r)
    assert len(text) < 400
    assert "args=('xxxx" in text and "...," in text
    assert "kwargs={'big': [0, 1, 2" in text
    assert text.endswith("...)")


def test_docstrings_and_signatures():
    import inspect

    assert str(inspect.signature(canonical_bytes)) == "(value, /)"
    assert "op" in str(inspect.signature(EvalRequest))
    for obj in [fabric.canonical_bytes, EvalRequest, ContentKey, Secret, ContentKey.parse,
                ContentKey.of, EvalRequest.replace, EvalRequest.identity_bytes, Secret.reveal]:
        assert obj.__doc__


class HashableDict(dict):
    """A dict that can be a key: its encoding is built while another key's is."""

    def __hash__(self):
        return 1


def test_each_identity_field_alone_matches_reference():
    """Requests whose optional fields are all at their defaults write those
    fields as one constant run; a field changed alone, or a default passed
    explicitly as a fresh object, must give the reference bytes too."""
    import reference_encoder

    fresh_eval = "".join(["ev", "al"])  # equal to "eval", not the same object
    variants = [
        {}, dict(kwargs={}), dict(kwargs={"a": 1}), dict(kwargs=None),
        dict(required_capabilities=[]), dict(required_capabilities=["gpu", "db", "gpu"]),
        dict(mode=fresh_eval), dict(mode="explain"), dict(answer_limit=None),
        dict(answer_limit=3), dict(stream_buffer=None), dict(stream_buffer=7),
        dict(version=0), dict(version=2**40), dict(version="v2"), dict(stream=True),
        dict(trace=True), dict(kwargs={"a": 1}, mode="explain", answer_limit=1, stream_buffer=2),
    ]
    for fields in variants:
        for args in [(), (1,), ({"x": [1, 2]},)]:
            kw = dict(fields)
            pos_kwargs = kw.pop("kwargs", None)
            got = EvalRequest("op", args, pos_kwargs, **kw).identity_bytes()
            want = reference_encoder.identity_bytes("op", args, pos_kwargs, **kw)
            assert got == want, fields
    assert EvalRequest("op", (), {}, mode=fresh_eval).key == EvalRequest("op").key


def test_identity_bytes_match_reference_and_hash_to_the_key():
    """identity_bytes writes the key's pieces straight into a buffer: the
    bytes must equal the reference encoding of the identity array, and hash
    to the key, for every field and combination (routing fields excluded)."""
    import hashlib
    import random

    import reference_encoder

    rng = random.Random(12)
    ops = ["op", "pkg.mod:fn", "é" * 40, "x" * 300]
    argsets = [(), (1,), (None, True, -1.5, b"\x00"), ({"x": [1, 2]}, {3, 1}),
               ("s" * 70000,), tuple(range(20)), ((1, (2, (3,))),)]
    kwsets = [None, {}, {"a": 1}, {"b": [1], "a": {"z": None}}]
    for i in range(300):
        kw = {}
        if rng.random() < 0.3:
            kw["version"] = rng.choice([0, 1, 2**40, "v2"])
        if rng.random() < 0.3:
            kw["required_capabilities"] = rng.choice([[], ["gpu"], ["gpu", "db", "gpu"]])
        if rng.random() < 0.2:
            kw["mode"] = rng.choice(["eval", "explain"])
        if rng.random() < 0.2:
            kw["answer_limit"] = rng.choice([None, 1, 1000])
        if rng.random() < 0.2:
            kw["stream_buffer"] = rng.choice([None, 2, 64])
        stream, trace = rng.random() < 0.3, rng.random() < 0.3
        if stream:
            kw["stream"] = True
        if trace:
            kw["trace"] = True
        if rng.random() < 0.4:
            kw["sharing"] = rng.choice(["pure", "recorded", "uncacheable"])
        op, args, kwargs = rng.choice(ops), rng.choice(argsets), rng.choice(kwsets)
        routing = dict(consistency=rng.choice(["local-first", "local-only"]),
                       deadline=rng.choice([None, 2.5]))
        req = EvalRequest(op, args, kwargs, **kw, **routing)
        got = req.identity_bytes()
        assert got == reference_encoder.identity_bytes(op, args, kwargs, **kw), (i, op, kw)
        assert hashlib.sha256(got).digest() == req.key.digest, i
        assert req.identity_bytes() == got  # again: nothing kept between calls changes it
        assert req.replace(deadline=None).identity_bytes() == got


def test_containers_nested_inside_keys_match_reference():
    import reference_encoder

    inner = HashableDict({"b": frozenset({3, 1, frozenset({"z", "y"})}), "a": (1, {2, 1})})
    values = [
        {inner: HashableDict({"q": {inner: 1}}), "x": 2},
        {frozenset({frozenset({1, 2}), frozenset({(3, frozenset({4}))})}): [inner]},
        {(1, frozenset({"a" * 3000, b"b" * 5000})): {"big": "c" * 70000}},
        {HashableDict({k: k for k in range(40)}): frozenset(range(40))},
    ]
    for v in values:
        assert canonical_bytes(v) == reference_encoder.encode(v)
        assert EvalRequest("op", (v,)).identity_bytes() == reference_encoder.identity_bytes(
            "op", (v,))
    with pytest.raises(TypeError, match=r"^value<key \{'a': "):
        canonical_bytes({HashableDict({"a": frozenset({(1, Foo)})}): 1})


def test_dicts_of_one_shape_and_near_shapes_match_reference():
    """Many dicts with the same keys in the same order (the sort is then
    remembered), mixed with dicts of nearly the same key bytes."""
    import reference_encoder

    rows = [{"id": i, "name": "n%d" % i, "ok": i % 2 == 0, "z": None, "a": [i]} for i in range(50)]
    near = [
        {"id": 1, "name": 2, "ok": 3, "z": 4, "b": 5},          # one key differs
        {"name": 2, "id": 1, "ok": 3, "z": 4, "a": 5},          # same keys, other order
        {"id": 1, "name": 2, "ok": 3, "z": 4},                  # one key fewer
        {"id": 1, "name": 2, "ok": 3, "z": 4, "a": 5, "c": 6},  # one more
        {b"id": 1, "name": 2, "ok": 3, "z": 4, "a": 5},         # same text, other kind
    ]
    value = rows + near + rows[::-1] + near
    for _ in range(3):
        assert canonical_bytes(value) == reference_encoder.encode(value)
        for v in value:
            assert canonical_bytes(v) == reference_encoder.encode(v)
            assert EvalRequest("op", (v,)).key.digest == reference_encoder.key_digest("op", (v,))
    nan = float("nan")
    shape = {1: 1, "k": 2}
    assert canonical_bytes([shape, {1: 3, "k": 4}]) == reference_encoder.encode([shape, {1: 3, "k": 4}])
    with pytest.raises(ValueError, match="encode identically"):
        canonical_bytes([{nan: 1, "k": 2}, {nan: 1, float("nan"): 2}])


# ---- the two walks: borrowed first, owned when it gives up ----------------------


def test_walk_again_owned_gives_reference_keys():
    """A value is first walked without taking references, and walked again
    with them when the first walk meets a set, a foreign buffer, a buffer
    large enough to be hashed with the GIL released, or an error. Each of
    these, alone and nested after ordinary items, keys as the reference."""
    import reference_encoder
    tails = [{1, 2, "x"}, frozenset(), array.array("i", [1, 2, 3]), bytearray(b"ba"),
             memoryview(b"mv"), b"L" * 5000, [b"L" * 3000, {"s": {3}}]]
    for tail in tails:
        for value in (tail, [1, "a", {"k": tail}], {"a": [1, 2], "b": tail, "c": "after"}):
            request = EvalRequest("op", (value,), {"kw": value})
            assert request.key.digest == reference_encoder.key_digest("op", (value,), {"kw": value})
            assert canonical_bytes(value) == reference_encoder.encode(value)


def test_error_path_survives_a_key_repr_that_mutates_the_dict():
    """The path of an error names the offending key with its repr; a repr
    that empties the very dict being walked must not crash the walker."""
    class Evil:
        def __repr__(self):
            d.clear()
            return "Evil()"

    d = {"a": [1, 2], Evil(): 1}
    with pytest.raises(TypeError) as info:
        canonical_bytes({"outer": d})
    assert str(info.value) == "value['outer']<key Evil()>: cannot key object of type Evil (register it with fabric.register_type)"
    d = {"a": [1, 2], Evil(): 1}
    with pytest.raises(TypeError) as info:
        EvalRequest("op", ({"outer": d},))
    assert str(info.value) == "args[0]['outer']<key Evil()>: cannot key object of type Evil (register it with fabric.register_type)"
