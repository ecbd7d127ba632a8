"""The decoder's inline reads of common scalars and its table of map keys
(fabric/_ext/unpack.c): each must read exactly what the general reader
reads, refuse what it refuses, and never mix up two keys."""

import random
import struct

import msgpack
import pytest

import fabric

# Every scalar form the decoder reads inline, at the edges of its range.
SCALARS = [
    0, 1, 127, 128, 255, 256, 65535, 65536, 2**32 - 1, 2**32, 2**64 - 1,
    -1, -32, -33, -128, -129, -32768, -32769, -(2**31), -(2**31) - 1, -(2**63),
    None, True, False, 0.0, -0.0, 1.5, float("inf"), -1e300,
    "", "a", "x" * 31, "y" * 32, "z" * 255, "w" * 256, "é", "ascii then é", "\u20ac" * 40,
    b"", b"\x00", b"\xff" * 255, b"\x01" * 256,
]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_scalars_read_as_msgpack_wrote_them(value):
    data = msgpack.packb(value, use_bin_type=True)
    assert fabric.unpack(data) == value
    assert type(fabric.unpack(data)) is type(value)
    # Inside containers too, where a scalar closes what it ends.
    nested = msgpack.packb([[value], {"k": [value, value]}, value], use_bin_type=True)
    assert fabric.unpack(nested) == [[value], {"k": [value, value]}, value]


@pytest.mark.parametrize("value", SCALARS, ids=repr)
def test_every_truncation_is_a_decode_error_at_the_item(value):
    data = msgpack.packb([value], use_bin_type=True)
    for cut in range(1, len(data)):
        with pytest.raises(fabric.DecodeError) as info:
            fabric.unpack(data[:cut])
        assert info.value.offset in (0, 1), (cut, info.value)


def test_same_forms_without_the_shortest_rule():
    # The reader takes any width for a small value (a writer's choice).
    for data, value in [
        (b"\xcc\x05", 5), (b"\xcd\x00\x05", 5), (b"\xce\x00\x00\x00\x05", 5),
        (b"\xcf" + struct.pack(">Q", 5), 5), (b"\xd0\x05", 5), (b"\xd0\xfb", -5),
        (b"\xd1\xff\xfb", -5), (b"\xd2\xff\xff\xff\xfb", -5), (b"\xd3" + struct.pack(">q", -5), -5),
        (b"\xd3" + struct.pack(">q", 5), 5), (b"\xd9\x02ab", "ab"), (b"\xd9\x00", ""),
        (b"\xca" + struct.pack(">f", 0.5), 0.5),
    ]:
        assert fabric.unpack(data) == value, data
        assert type(fabric.unpack(data)) is type(value)


def test_limits_hold_for_the_inline_forms():
    # str8 and bin8 at max_str / max_bin, and scalars counted as items.
    fabric.unpack(b"\xd9\x03abc", {"max_str": 3})
    with pytest.raises(fabric.DecodeError, match="str length 4 exceeds the limit of 3"):
        fabric.unpack(b"\xd9\x04abcd", {"max_str": 3})
    fabric.unpack(b"\xc4\x03abc", {"max_bin": 3})
    with pytest.raises(fabric.DecodeError, match="bin length 4 exceeds the limit of 3"):
        fabric.unpack(b"\xc4\x04abcd", {"max_bin": 3})
    fabric.unpack(b"\x93\xc0\xc3\xcb" + struct.pack(">d", 1.0), {"max_items": 4})
    with pytest.raises(fabric.DecodeError, match="more than 3 items"):
        fabric.unpack(b"\x93\xc0\xc3\xcb" + struct.pack(">d", 1.0), {"max_items": 3})
    with pytest.raises(fabric.DecodeError, match="trailing"):
        fabric.unpack(b"\x91\x01\x02")


def test_invalid_utf8_is_refused_where_it_is():
    for data, offset in [
        (b"\x92\x01\xa2\xc3\x28", 2),  # fixstr
        (b"\x92\x01\xd9\x02\xc3\x28", 2),  # str8
        (b"\x81\xa2\xed\xa0\x01", 1),  # a map key (a surrogate)
        (b"\x81\xd9\x01\x80\x01", 1),
    ]:
        with pytest.raises(fabric.DecodeError, match="not valid UTF-8") as info:
            fabric.unpack(data)
        assert info.value.offset == offset


def _keys(rng, n):
    alphabet = "abcdefghijklmnopqrstuvwxyz_0123456789é"
    out = set()
    while len(out) < n:
        out.add("".join(rng.choice(alphabet) for _ in range(rng.randrange(0, 36))))
    return sorted(out)


def test_many_keys_never_mix_up():
    rng = random.Random(1)
    keys = _keys(rng, 600)
    # Keys of 32 characters that differ only in the middle (the part a
    # table's hash may not read) and keys that differ in one end.
    base = "k" * 32
    keys += [base[:20] + c + base[21:] for c in "abcdef"]
    keys += ["x" + base[1:], base[:31] + "y", base[:31] + "\u00e9"]
    for _round in range(3):
        rng.shuffle(keys)
        for at in range(0, len(keys), 12):
            d = {k: i for i, k in enumerate(keys[at:at + 12])}
            for data in (msgpack.packb(d), fabric.encode_value(d)):
                got = fabric.unpack(data) if data[:1] != b"\xc1" else fabric.decode_value(data)
                assert got == d
                assert list(got) == list(d)
                assert all(type(k) is str for k in got)


def test_repeated_keys_are_shared_between_decodes():
    d = {"id": 1, "name": "a", "score": 2.0, "active": True, "tags": [], "blob": b"",
         "where": {"lat": 1.0, "lon": 2.0}, "parent": None, "big": 2**40, "delta": -0.5}
    data = fabric.encode_value(d)
    first, second = fabric.decode_value(data), fabric.decode_value(data)
    assert first == second == d
    # The same str objects: the second decode found every key in the table.
    assert all(a is b for a, b in zip(first, second))
    assert all(a is b for a, b in zip(first["where"], second["where"]))


def test_short_keys_are_found_whatever_follows_them():
    # A key of at most 7 bytes is looked up by its item (header and bytes)
    # read as one word: the bytes after it are masked off, and near the
    # end of the input they are read one at a time. Whatever follows, the
    # key is the same kept str; longer keys are looked up by a hash.
    for k in ["", "a", "ab", "abc", "abcd", "abcde", "abcdef", "abcdefg", "abcdefgh", "a\x00"]:
        found = [
            fabric.unpack(msgpack.packb({k: 0})),  # the input ends within 8 bytes of the key
            fabric.unpack(msgpack.packb({k: "x" * 40})),
            fabric.unpack(msgpack.packb({k: 1, k + "z": 2})),
            fabric.decode_value(fabric.encode_value({k: [1, 2, 3]})),
        ]
        first = [next(iter(d)) for d in found]
        assert first == [k] * 4
        assert all(f is first[0] for f in first), k
        assert list(found[2]) == [k, k + "z"]


def test_duplicate_keys_still_refused():
    with pytest.raises(fabric.DecodeError, match="duplicate map key"):
        fabric.unpack(b"\x82\xa1a\x01\xa1a\x02")
    with pytest.raises(fabric.DecodeError, match="duplicate map key"):
        fabric.unpack(b"\x82\xa1a\x01\xd9\x01a\x02")


def _tuples(v):
    if isinstance(v, (list, tuple)):
        return tuple(_tuples(x) for x in v)
    if isinstance(v, dict):
        return {_tuples(k): _tuples(x) for k, x in v.items()}
    return v


def test_mutated_inputs_decode_as_msgpack_reads_them():
    # Byte flips, cuts and inserted type bytes over plain msgpack: whatever
    # fabric accepts, msgpack-python reads as the same value; whatever
    # msgpack-python cannot read (a cut, a reserved byte, bad UTF-8), fabric
    # refuses with a DecodeError. (fabric refuses more: duplicate keys.)
    rng = random.Random(5)
    seeds = [msgpack.packb(v, use_bin_type=True) for v in (
        {"id": 123456789, "name": "alice", "score": 98.625, "ok": True, "tags": ["x", "y"],
         "blob": b"\x00\x01" * 8, "where": {"lat": 52.37, "lon": 4.9}, "none": None,
         "big": 2**40 + 7, "neg": -2**35, "small": -5, "s8": "q" * 40},
        [0, 127, 128, 255, 65535, -32, -33, -129, 1.5, "", "é", b"", [[]], {}],
    )]
    types = [0x00, 0x7f, 0x80, 0x90, 0xa0, 0xa5, 0xbf, 0xc0, 0xc1, 0xc2, 0xc3, 0xc4, 0xca,
             0xcb, 0xcc, 0xcd, 0xce, 0xcf, 0xd0, 0xd1, 0xd2, 0xd3, 0xd9, 0xdc, 0xde, 0xe0, 0xff]
    compared = 0
    for _ in range(20000):
        b = bytearray(rng.choice(seeds))
        for _ in range(rng.randrange(1, 3)):
            op = rng.randrange(4) if len(b) > 1 else 3
            if op == 0:
                b[rng.randrange(len(b))] = rng.choice(types)
            elif op == 1:
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            elif op == 2:
                del b[rng.randrange(1, len(b)):]
            else:
                b.insert(rng.randrange(len(b) + 1), rng.choice(types))
        data = bytes(b)
        exts = []
        try:
            # (arrays as tuples: fabric reads an array in a key position as
            # a tuple)
            want = msgpack.unpackb(data, raw=False, strict_map_key=False,
                                   use_list=False, ext_hook=lambda code, payload: exts.append(code))
        except Exception:
            want = ValueError
        try:
            got = fabric.unpack(data)
        except fabric.DecodeError:
            continue
        assert want is not ValueError, data
        if not exts:  # (fabric gives some ext types a meaning)
            assert repr(_tuples(got)) == repr(want), data
            compared += 1
    assert compared > 1000
