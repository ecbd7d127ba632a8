"""A single reply's value over the node protocol keeps its types, as a local
hit does (docs/spec/protocol.md section 3): a client announces the HELLO
capability ``values`` and the node sends the reply's record in the value
encoding (prefix ``c1 01``, docs/spec/values.md), so a tuple, a set, a
bytearray, a dict's key order come back as they were recorded, computed or
held, sync or async, as a stream's items do. A peer that does not announce
``values`` (an older client) still gets the canonical record, the encoding
keys use (a tuple as a list, a set as a frozenset, a bytearray as bytes,
dict keys in canonical order), read with its tags: a registered type (a
date, a numpy array), a complex come back as themselves either way."""

import asyncio
import collections

import pytest

import fabric
import node_ops
from fabric.node import connect

Pair = collections.namedtuple("Pair", "a b")


def _mixed(n):
    return {"z": (n, [n, (n,)]), "a": {n}, "ba": bytearray(b"x" * n), "nt": Pair(n, n)}


@fabric.op("client.reply_types.mixed")
def mixed(n):
    return _mixed(n)


@fabric.op("client.reply_types.items")
def items(n):
    yield _mixed(n)


def _dated_value(n):
    import datetime
    import decimal
    import pathlib
    import uuid
    return [datetime.date(2020, 1, n), decimal.Decimal(f"{n}.5"), uuid.UUID(int=n),
            pathlib.PurePosixPath(f"/x/{n}"), complex(n, 1),
            datetime.datetime(2020, 1, n, tzinfo=datetime.timezone.utc)]


@fabric.op("client.reply_types.dated")
def dated(n):
    return _dated_value(n)


@fabric.op("client.reply_types.arrays")
def arrays(n):
    import numpy
    return numpy.arange(n, dtype="<f4")


def _local_ok(v, n=2):
    assert v == {"z": (n, [n, (n,)]), "a": {n}, "ba": bytearray(b"x" * n), "nt": (n, n)}
    assert list(v) == ["z", "a", "ba", "nt"]
    assert [type(v["z"]), type(v["z"][1][1]), type(v["a"]), type(v["ba"])] == \
        [tuple, tuple, set, bytearray]


def _canonical_ok(v, n=2):
    assert v == {"a": frozenset({n}), "ba": b"x" * n, "nt": [n, n], "z": [n, [n, [n]]]}
    assert list(v) == ["a", "z", "ba", "nt"]  # canonical order: by the keys' encoded bytes
    assert [type(v["z"]), type(v["z"][1][1]), type(v["a"]), type(v["ba"]), type(v["nt"])] \
        == [list, list, frozenset, bytes, list]


def test_a_remote_reply_keeps_its_types_as_a_local_hit_does(node):
    n = node()
    req = mixed.request(2)
    with connect(n.url, timeout=30) as c:
        computed = c.evaluate(req)  # computed on the node's home
        assert computed.source == "home"
        _local_ok(computed.value)
        hit = n.fabric.evaluate(req)  # in the node's process: a hit on its ledger
        assert hit.source == "local"
        _local_ok(hit.value)
        for _ in range(3):  # held by the node by now (its hit path, its memo)
            _local_ok(c.evaluate(req).value)

        async def main():
            computed = (await c.aevaluate(mixed.request(3))).value
            held = [(await c.aevaluate(req)).value for _ in range(3)]
            return computed, held
        computed3, held = asyncio.run(main())
        _local_ok(computed3, 3)
        for v in held:
            _local_ok(v)
        # the same value as a stream's item keeps its types
        (item,) = list(c.stream(items.request(2)))
        _local_ok(item)


def test_a_peer_not_announcing_values_gets_the_canonical_record(node, monkeypatch):
    """An older client (its HELLO without ``values``) is sent the canonical
    record, computed or held, sync or async; a client announcing it, on the
    same node at the same time, keeps getting the types (the node keeps the
    held record's bytes in both encodings apart)."""
    from fabric.node import client as client_mod
    n = node()
    req = mixed.request(2)
    monkeypatch.setattr(client_mod, "_CAPS", [])
    with connect(n.url, timeout=30) as old:
        first = old.evaluate(req)
        assert first.source == "home"
        _canonical_ok(first.value)
        _canonical_ok(old.evaluate(req).value)  # held

        async def main():
            return [(await old.aevaluate(r)).value for r in (mixed.request(4), req)]
        computed4, held = asyncio.run(main())
        _canonical_ok(computed4, 4)
        _canonical_ok(held)
        monkeypatch.undo()  # (old's connection stays as it was made)
        with connect(n.url, timeout=30) as new:
            for _ in range(3):
                _local_ok(new.evaluate(req).value)
                _canonical_ok(old.evaluate(req).value)


def test_a_remote_reply_holding_registered_types_is_read(node):
    """The canonical encoding's tags (a registered type, tag 22; a complex)
    are read back as decode_value reads them, computed or held, sync or
    async: before, the client's plain msgpack reader took tag 22 for an ext
    item and failed with "trailing bytes after the value"."""
    n = node()
    req = dated.request(3)
    want = _dated_value(3)
    with connect(n.url, timeout=30) as c:
        first = c.evaluate(req)  # computed on the node's home
        again = c.evaluate(req)  # held by now

        async def main():
            return (await c.aevaluate(req)).value
        for got in (first.value, again.value, asyncio.run(main())):
            assert got == want
            assert [type(x) for x in got] == [type(x) for x in want]
        assert c.evaluate(node_ops.double.request(4)).value == 8  # the connection is whole


def test_a_remote_reply_holding_a_numpy_array_is_read(node):
    np = pytest.importorskip("numpy")
    n = node()
    with connect(n.url, timeout=30) as c:
        for _ in range(2):  # computed, then held
            got = c.evaluate(arrays.request(5)).value
            assert got.dtype == np.dtype("<f4") and got.shape == (5,)
            assert got.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0]
