"""A pure-Python reference of the canonical encoding and the key scheme.

This is an executable copy of docs/spec/content-key.md, written from the spec
and not from the C code, so the two can be checked against each other (the
tests feed both the same values). It builds on the ``msgpack`` package for
the plain msgpack forms, which are already the shortest ones; everything the
spec adds on top (NaN, big integers, map and set ordering, secrets, the
request array) is done here by hand. It is a test oracle, never a runtime
fallback: it is slow and it is not shipped with the package.
"""

import hashlib
import math
import struct

import msgpack

import fabric

MAX_DEPTH = 256
EXT_BIGINT = 1
EXT_SET = 2
EXT_SECRET = 3
KEY_SCHEME = "fabric.key/1"

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


def encode(value, _depth=0, _stack=()):
    """The canonical encoding of value, as bytes.

    Raises TypeError for a value of a kind the spec does not list and
    ValueError for a lone surrogate, a cycle, nesting deeper than MAX_DEPTH
    or two keys/members that encode identically. The messages are not the
    C encoder's (no path); the tests check those on the real thing.
    """
    if value is None or value is True or value is False:
        return msgpack.packb(value)
    if isinstance(value, fabric.Secret):
        return _ext(EXT_SECRET, b"")
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


def _pairs(d):
    # dict.items() of the builtin, so a subclass's overridden items() (user
    # code) is not consulted, as in the C encoder.
    return list(dict.items(d))


def _refuse_duplicates(sorted_encodings):
    for a, b in zip(sorted_encodings, sorted_encodings[1:]):
        if a == b:
            raise ValueError("two distinct keys or members encode identically")


def identity(op, args=(), kwargs=None, *, version=0, required_capabilities=(), mode="eval",
             answer_limit=None, stream_buffer=None, stream=False, trace=False):
    """The identity array of a request, already validated by the caller."""
    return [KEY_SCHEME, op, version, tuple(args), dict(kwargs or {}),
            sorted(set(required_capabilities)), mode, answer_limit, stream_buffer,
            bool(stream), bool(trace)]


def identity_bytes(*args, **kwargs):
    """The canonical encoding of a request's identity array."""
    return encode(identity(*args, **kwargs))


def key_digest(*args, **kwargs):
    """SHA-256 of identity_bytes: the 32 bytes of the content key."""
    return hashlib.sha256(identity_bytes(*args, **kwargs)).digest()
