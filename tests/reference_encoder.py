"""A pure-Python reference of the canonical encoding, the key scheme and the
value encoding (docs/spec/content-key.md, docs/spec/values.md).

This is an executable copy of docs/spec/content-key.md, written from the spec
and not from the C code, so the two can be checked against each other (the
tests feed both the same values). It builds on the ``msgpack`` package for
the plain msgpack forms, which are already the shortest ones; everything the
spec adds on top (NaN, big integers, map and set ordering, secrets, the
request array) is done here by hand. It is a test oracle, never a runtime
fallback: it is slow and it is not shipped with the package.
"""

import datetime as _dt
import decimal
import hashlib
import math
import pathlib
import struct
import sys
import uuid

import msgpack

import fabric

MAX_DEPTH = 256
EXT_BIGINT = 1
EXT_SET = 2
EXT_SECRET = 3
EXT_COMPLEX = 16
TAG_TUPLE, TAG_SET, TAG_FROZENSET, TAG_BYTEARRAY, TAG_NDARRAY, TAG_TYPED = range(17, 23)
KEY_SCHEME = "fabric.key/2"
VALUE_PREFIX = b"\xc1\x01"

_packer = msgpack.Packer(use_bin_type=True, strict_types=False)
_NAN = b"\xcb" + struct.pack(">Q", 0x7FF8000000000000)


def _ext(code, payload):
    # msgpack picks fixext for payloads of 1, 2, 4, 8 and 16 bytes, ext8 for
    # other lengths up to 255 (including 0), then ext16 and ext32: the
    # shortest form, as the spec requires.
    return msgpack.packb(msgpack.ExtType(code, payload))


def _bigint_payload(n):
    """Minimal big-endian two's complement bytes of n."""
    magnitude = n if n >= 0 else ~n
    return n.to_bytes(magnitude.bit_length() // 8 + 1, "big", signed=True)


def _tag(code):
    return bytes([0xC7, 0x00, code])


_MICRO = _dt.timedelta(microseconds=1)


def _offset(v):
    off = v.utcoffset()
    return None if off is None else off // _MICRO


# The types the spec names, with their registered name and data (spec
# section "Typed values"), by exact type.
_STDLIB = {
    decimal.Decimal: ("decimal.Decimal", str),
    uuid.UUID: ("uuid.UUID", lambda u: u.bytes),
    _dt.datetime: ("datetime.datetime", lambda v: (v.year, v.month, v.day, v.hour, v.minute,
                                                   v.second, v.microsecond, v.fold, _offset(v))),
    _dt.date: ("datetime.date", lambda v: (v.year, v.month, v.day)),
    _dt.time: ("datetime.time", lambda v: (v.hour, v.minute, v.second, v.microsecond, v.fold,
                                           _offset(v))),
    _dt.timedelta: ("datetime.timedelta", lambda v: (v.days, v.seconds, v.microseconds)),
}
for _cls in (pathlib.PurePosixPath, pathlib.PureWindowsPath, pathlib.PosixPath,
             pathlib.WindowsPath):
    _STDLIB[_cls] = ("pathlib." + _cls.__name__, str)


def _typed(value):
    """(name, data) of a typed value, ("ndarray", (dtype, bytes, shape)) of an
    array, or None for the builtin kinds."""
    tp = type(value)
    if tp in _STDLIB:
        name, data = _STDLIB[tp]
        return name, data(value)
    if isinstance(value, fabric.Opaque):
        return value.name, value.data
    entry = fabric.values._by_type.get(tp)  # the user's register_type
    if isinstance(entry, tuple) and entry[0] == 0:
        return entry[1], entry[2](value)
    np = sys.modules.get("numpy")
    if np is not None:
        if tp is np.ndarray:
            if value.dtype.hasobject:
                raise TypeError("object dtype")
            c = np.ascontiguousarray(value)
            return "ndarray", (value.dtype.str, c.tobytes(), value.shape)
        if isinstance(value, np.generic):
            return "numpy.generic", (value.dtype.str, value.tobytes())
    return None


def _complex(value, canonical):
    def part(x):
        if canonical and math.isnan(x):
            return _NAN[1:]
        return struct.pack(">d", x)
    c = complex(value)
    return b"\xd8" + bytes([EXT_COMPLEX]) + part(c.real) + part(c.imag)


def _typed_bytes(value, enc, depth, stack):
    """The tagged form of a typed value or array, or None."""
    t = _typed(value)
    if t is None:
        return None
    if depth >= MAX_DEPTH:
        raise ValueError("nesting deeper than %d levels" % MAX_DEPTH)
    name, data = t
    if name == "ndarray":
        dtype, raw, shape = data
        return (_tag(TAG_NDARRAY) + _packer.pack_array_header(2 + len(shape))
                + msgpack.packb(dtype) + msgpack.packb(raw)
                + b"".join(msgpack.packb(int(d)) for d in shape))
    if any(value is s for s in stack):
        raise ValueError("self-referencing container (a cycle)")
    return (_tag(TAG_TYPED) + _packer.pack_array_header(2) + msgpack.packb(name)
            + enc(data, depth + 1, stack + (value,)))


COMMIT_KEY = None  # the commitment key of Secret(commit=True), when a test sets one


def encode(value, _depth=0, _stack=(), commit_key=None):
    """The canonical encoding of value, as bytes.

    Raises TypeError for a value of a kind the spec does not list and
    ValueError for a lone surrogate, a cycle, nesting deeper than MAX_DEPTH
    or two keys/members that encode identically. The messages are not the
    C encoder's (no path); the tests check those on the real thing.
    """
    if value is None or value is True or value is False:
        return msgpack.packb(value)
    if isinstance(value, fabric.Secret) and value.commit:
        import hmac

        key = commit_key or COMMIT_KEY
        if key is None:
            raise ValueError("a Secret(commit=True) needs a commitment key")
        mac = hmac.new(key, encode(value.reveal()), hashlib.sha256).digest()
        return _ext(4, mac)
    if isinstance(value, fabric.Secret) or value is fabric.REDACTED:
        return _ext(EXT_SECRET, b"")
    if type(value) is complex:
        return _complex(value, True)
    if type(value) not in (str, int, float, bytes, bytearray, list, tuple, dict, set,
                           frozenset, memoryview):
        typed = _typed_bytes(value, encode, _depth, _stack)
        if typed is not None:
            return typed
    if isinstance(value, complex):
        return _complex(value, True)
    if isinstance(value, str):
        try:
            data = value.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("str contains a lone surrogate") from None
        return msgpack.packb(data.decode("utf-8"))
    if isinstance(value, int):
        n = int(value)
        if -(2**63) <= n < 2**64:
            return msgpack.packb(n)
        return _ext(EXT_BIGINT, _bigint_payload(n))
    if isinstance(value, float):
        f = float(value)
        if math.isnan(f):
            return _NAN
        return b"\xcb" + struct.pack(">d", f)
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        if any(value is s for s in _stack):
            raise ValueError("self-referencing container (a cycle)")
        if _depth >= MAX_DEPTH:
            raise ValueError("nesting deeper than %d levels" % MAX_DEPTH)
        inner = _stack + (value,)
        if isinstance(value, (list, tuple)):
            out = [_packer.pack_array_header(len(value))]
            out += [encode(v, _depth + 1, inner) for v in value]
            return b"".join(out)
        if isinstance(value, dict):
            items = sorted(((encode(k, _depth + 1, inner), v) for k, v in _pairs(value)),
                           key=lambda kv: kv[0])
            _refuse_duplicates([k for k, _ in items])
            out = [_packer.pack_map_header(len(items))]
            for k, v in items:
                out.append(k)
                out.append(encode(v, _depth + 1, inner))
            return b"".join(out)
        members = sorted(encode(m, _depth + 1, inner) for m in value)
        _refuse_duplicates(members)
        payload = _packer.pack_array_header(len(members)) + b"".join(members)
        return _ext(EXT_SET, payload)
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError("cannot key object of type %s" % type(value).__name__) from None
    with view:
        if not view.c_contiguous:
            raise TypeError("cannot key a non-contiguous buffer")
        return msgpack.packb(view.tobytes())


# ---------------------------------------------------------------------------
# The value encoding (docs/spec/values.md)
# ---------------------------------------------------------------------------

def encode_value(value):
    """The value encoding of value: the prefix, then the body."""
    return VALUE_PREFIX + _venc(value, 0, ())


def _venc(value, depth, stack):
    if value is None or value is True or value is False:
        return msgpack.packb(value)
    if isinstance(value, fabric.Secret) or value is fabric.REDACTED:
        return _ext(EXT_SECRET, b"")
    tp = type(value)
    if tp is complex:
        return _complex(value, False)
    if tp is bytearray:
        return _tag(TAG_BYTEARRAY) + msgpack.packb(bytes(value))
    if tp not in (str, int, float, bytes, list, tuple, dict, set, frozenset, memoryview):
        typed = _typed_bytes(value, _venc, depth, stack)
        if typed is not None:
            return typed
    if isinstance(value, complex):
        return _complex(value, False)
    if isinstance(value, str):
        return msgpack.packb(value.encode("utf-8").decode("utf-8"))
    if isinstance(value, int):
        n = int(value)
        if -(2**63) <= n < 2**64:
            return msgpack.packb(n)
        return _ext(EXT_BIGINT, _bigint_payload(n))
    if isinstance(value, float):
        return b"\xcb" + struct.pack(">d", float(value))  # the value's own bits
    if isinstance(value, (list, tuple, dict, set, frozenset)):
        if any(value is s for s in stack):
            raise ValueError("self-referencing container (a cycle)")
        if depth >= MAX_DEPTH:
            raise ValueError("nesting deeper than %d levels" % MAX_DEPTH)
        inner = stack + (value,)
        if isinstance(value, dict):
            pairs = _pairs(value)
            return _packer.pack_map_header(len(pairs)) + b"".join(
                _venc(k, depth + 1, inner) + _venc(v, depth + 1, inner) for k, v in pairs)
        head = b""
        if isinstance(value, tuple):
            head = _tag(TAG_TUPLE)
        elif isinstance(value, frozenset):
            head = _tag(TAG_FROZENSET)
        elif isinstance(value, set):
            head = _tag(TAG_SET)
        items = list(value)
        return head + _packer.pack_array_header(len(items)) + b"".join(
            _venc(v, depth + 1, inner) for v in items)
    try:
        view = memoryview(value)
    except TypeError:
        raise TypeError("cannot encode object of type %s" % type(value).__name__) from None
    with view:
        return msgpack.packb(view.tobytes())


def decode_value(data):
    """Decodes a value-encoded payload (prefix included), from the spec:
    a small pull parser over msgpack in which a tag qualifies the next item."""
    if data[:2] != VALUE_PREFIX:
        raise ValueError("no value prefix")
    r = _Reader(data, 2)
    out = r.value(False)
    if r.pos != len(data):
        raise ValueError("trailing bytes")
    return out


_REBUILD = {
    "decimal.Decimal": decimal.Decimal,
    "uuid.UUID": lambda b: uuid.UUID(bytes=bytes(b)),
    "datetime.date": lambda d: _dt.date(*d),
    "datetime.timedelta": lambda d: _dt.timedelta(*d),
    "pathlib.PurePosixPath": pathlib.PurePosixPath,
    "pathlib.PureWindowsPath": pathlib.PureWindowsPath,
    "pathlib.PosixPath": pathlib.PosixPath,
    "pathlib.WindowsPath": pathlib.WindowsPath,
}


def _tz(off):
    return None if off is None else _dt.timezone(_dt.timedelta(microseconds=off))


def _rebuild(name, data):
    if name in _REBUILD:
        return _REBUILD[name](data)
    if name == "datetime.datetime":
        y, mo, d, h, mi, s, us, fold, off = data
        return _dt.datetime(y, mo, d, h, mi, s, us, tzinfo=_tz(off), fold=fold)
    if name == "datetime.time":
        h, mi, s, us, fold, off = data
        return _dt.time(h, mi, s, us, tzinfo=_tz(off), fold=fold)
    if name == "numpy.generic":
        import numpy as np
        return np.frombuffer(bytes(data[1]), dtype=np.dtype(data[0]))[0]
    entry = fabric.values._by_name.get(name)
    if entry is not None:
        return entry[3](data)
    return fabric.Opaque(name, data)


class _Reader:
    def __init__(self, data, pos):
        self.data, self.pos = data, pos

    def _take(self, n):
        if self.pos + n > len(self.data):
            raise ValueError("truncated")
        out = self.data[self.pos:self.pos + n]
        self.pos += n
        return out

    def _uint(self, n):
        return int.from_bytes(self._take(n), "big")

    def head(self):
        """One item: (kind, payload) with containers as ("array", n)/("map", n)."""
        c = self._take(1)[0]
        if c <= 0x7F:
            return "int", c
        if c >= 0xE0:
            return "int", c - 0x100
        if 0x80 <= c <= 0x8F:
            return "map", c & 0x0F
        if 0x90 <= c <= 0x9F:
            return "array", c & 0x0F
        if 0xA0 <= c <= 0xBF:
            return "str", self._take(c & 0x1F).decode("utf-8")
        simple = {0xC0: ("nil", None), 0xC2: ("bool", False), 0xC3: ("bool", True)}
        if c in simple:
            return simple[c]
        if c in (0xC4, 0xC5, 0xC6):
            return "bin", self._take(self._uint(1 << (c - 0xC4)))
        if c in (0xC7, 0xC8, 0xC9):
            n = self._uint(1 << (c - 0xC7))
            code = struct.unpack(">b", self._take(1))[0]
            return "ext", (code, self._take(n))
        if c == 0xCA:
            return "float", struct.unpack(">f", self._take(4))[0]
        if c == 0xCB:
            return "float", struct.unpack(">d", self._take(8))[0]
        if 0xCC <= c <= 0xCF:
            return "int", self._uint(1 << (c - 0xCC))
        if 0xD0 <= c <= 0xD3:
            n = 1 << (c - 0xD0)
            return "int", int.from_bytes(self._take(n), "big", signed=True)
        if 0xD4 <= c <= 0xD8:
            code = struct.unpack(">b", self._take(1))[0]
            return "ext", (code, self._take(1 << (c - 0xD4)))
        if c in (0xD9, 0xDA, 0xDB):
            return "str", self._take(self._uint(1 << (c - 0xD9))).decode("utf-8")
        if c in (0xDC, 0xDD):
            return "array", self._uint(2 if c == 0xDC else 4)
        if c in (0xDE, 0xDF):
            return "map", self._uint(2 if c == 0xDE else 4)
        raise ValueError("bad byte %02x" % c)

    def value(self, in_key):
        kind, x = self.head()
        return self._finish(kind, x, in_key)

    def _finish(self, kind, x, in_key):
        if kind == "array":
            items = [self.value(in_key) for _ in range(x)]
            return tuple(items) if in_key else items
        if kind == "map":
            out = {}
            for _ in range(x):
                k = self.value(True)
                out[k] = self.value(False)
            return out
        if kind != "ext":
            return x
        code, payload = x
        if code == EXT_BIGINT:
            return int.from_bytes(payload, "big", signed=True)
        if code == EXT_SECRET:
            return fabric.REDACTED
        if code == EXT_COMPLEX:
            return complex(*struct.unpack(">dd", payload))
        if TAG_TUPLE <= code <= TAG_TYPED and not payload:
            kind, x = self.head()
            if code == TAG_BYTEARRAY:
                return bytearray(x)
            assert kind == "array"
            if code == TAG_NDARRAY:
                dtype, raw = self.value(False), self.value(False)
                shape = tuple(self.value(False) for _ in range(x - 2))
                import numpy as np
                return np.frombuffer(bytearray(raw), dtype=np.dtype(dtype)).reshape(shape)
            if code == TAG_TYPED:
                name = self.value(False)
                return _rebuild(name, self.value(in_key))
            items = [self.value(code != TAG_TUPLE or in_key) for _ in range(x)]
            if code == TAG_TUPLE:
                return tuple(items)
            return set(items) if code == TAG_SET else frozenset(items)
        raise ValueError("unknown ext %d" % code)


def _pairs(d):
    # dict.items() of the builtin, so a subclass's overridden items() (user
    # code) is not consulted, as in the C encoder.
    return list(dict.items(d))


def _refuse_duplicates(sorted_encodings):
    for a, b in zip(sorted_encodings, sorted_encodings[1:]):
        if a == b:
            raise ValueError("two distinct keys or members encode identically")


def identity(op, args=(), kwargs=None, *, version=0, required_capabilities=(), mode="eval",
             answer_limit=None, stream_buffer=None, stream=False, trace=False,
             sharing="pure"):
    """The identity array of a request, already validated by the caller."""
    return [KEY_SCHEME, op, version, tuple(args), dict(kwargs or {}),
            sorted(set(required_capabilities)), mode, answer_limit, stream_buffer,
            bool(stream), bool(trace), sharing]


def identity_bytes(*args, **kwargs):
    """The canonical encoding of a request's identity array."""
    return encode(identity(*args, **kwargs))


def key_digest(*args, **kwargs):
    """SHA-256 of identity_bytes: the 32 bytes of the content key."""
    return hashlib.sha256(identity_bytes(*args, **kwargs)).digest()
