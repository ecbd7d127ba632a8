"""``_core._known_open`` / ``_open_crc``: the node's read callback finds an
open it parsed before by its payload's CRC-32C, the payload compared in C.
An entry is returned only for a payload equal to the one filed (a shared
CRC, another length, a missing key: None); bad arguments are refused. Over
a real socket, an index whose entry under a payload's CRC is another
payload's (a collision) answers the request as the general path does."""

import pytest

import fabric
from fabric._core import _known_open, _open_crc
from fabric.frames import FrameKind
from fabric.node import connect, protocol as P

import node_ops
from test_node_hit_fast import Raw, _open


def _frame(payload, sid=3):
    dec = fabric.FrameDecoder()
    dec.feed(memoryview(P.encoder().encode(FrameKind.CONTROL, payload, stream_id=sid)))
    (f,) = list(dec)
    return f


def test_the_entry_of_an_equal_payload_and_none_otherwise():
    payload = b"\x82\xa2op\xa4open\xa8metadata\xc0"
    entry = (payload, ("parsed", "route"))
    index = {_open_crc(payload): entry}
    assert _known_open(_frame(payload), index) is entry
    assert _known_open(_frame(payload + b"x"), index) is None  # another CRC
    assert _known_open(_frame(b""), index) is None
    # the same CRC filed with other bytes (as a collision would): never returned
    other = payload[:-1] + b"\xc2"
    assert _known_open(_frame(other), {_open_crc(other): entry}) is None
    assert _known_open(_frame(payload), {_open_crc(payload): (payload[:-1], 1)}) is None
    assert _known_open(_frame(payload), {_open_crc(payload): "not a tuple"}) is None
    assert _known_open(_frame(payload), {_open_crc(payload): ()}) is None
    assert _known_open(_frame(b""), {_open_crc(b""): (b"", 7)}) == (b"", 7)


def test_open_crc_is_the_crc32c_of_any_bytes_like_object():
    assert _open_crc(b"123456789") == 0xE3069283  # the CRC-32C check value
    assert _open_crc(bytearray(b"123456789")) == _open_crc(memoryview(b"123456789"))
    with pytest.raises(TypeError):
        _open_crc("123456789")


def test_bad_arguments_are_refused():
    f = _frame(b"\xc0")
    with pytest.raises(TypeError, match="frame must be a Frame"):
        _known_open(b"\xc0", {})
    with pytest.raises(TypeError, match="index must be a dict"):
        _known_open(f, [])
    with pytest.raises(TypeError, match="2 arguments"):
        _known_open(f)


def test_a_crc_filed_for_another_payload_takes_the_bytes_lookup(node):
    n = node()
    reqs = [node_ops.double.request(i) for i in range(70, 73)]
    with connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    a = Raw(n.address)
    for i, r in enumerate(reqs):  # parsed, and the route kept on this connection
        assert a.ask(_open(r), 1 + i)[1][-1].kind == FrameKind.STREAM_END
    p0, p1 = _open(reqs[0]), _open(reqs[1])
    # a collision: p1's CRC filed with p0's entry (white-box: the loop is idle)
    n._opens_crc[_open_crc(p1)] = n._opens_crc[_open_crc(p0)]
    before = n._inline_hits
    got1, frames1 = a.ask(p1, 11)
    got0, frames0 = a.ask(p0, 12)
    assert fabric.unpack(fabric.unpack(bytes(frames1[1].payload)))[0] == reqs[1].args[0] * 2
    assert fabric.unpack(fabric.unpack(bytes(frames0[1].payload)))[0] == reqs[0].args[0] * 2
    assert n._inline_hits - before == 2  # still the short path, p1 found by its bytes
    a.close()
    fresh = Raw(n.address)  # another connection, the same stream ids: the same bytes
    assert fresh.ask(p1, 11)[0] == got1 and fresh.ask(p0, 12)[0] == got0
    fresh.close()
