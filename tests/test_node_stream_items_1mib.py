"""A stream item of 1 MiB travels under the default limits: the default
largest frame is 1 MiB and 4 KiB for the encoding around an item, so
1 MiB and 1 MiB + 1 of bytes each go in one frame, and
an item whose encoding is over the frame agreed ends the stream with a
``LimitExceeded`` naming its size and the frame, after the items before it."""

import asyncio

import pytest

import fabric
from fabric.node import connect
from fabric.node import protocol as P

MIB = 1 << 20


@fabric.op("node.items.sized")
def sized(sizes):
    for i, n in enumerate(sizes):
        yield bytes([i]) * n


def test_the_default_frame_takes_an_item_of_1mib_and_its_encoding():
    assert P.DEFAULT_MAX_FRAME == MIB + 4096
    enc = P.encoder()
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    for item in (bytes(MIB), bytes(MIB + 1), "x" * MIB, [bytes(MIB)]):
        dec.feed(enc.encode_value(fabric.frames.FrameKind.STREAM_CHUNK, item, stream_id=1,
                                  seq=1))
        (f,) = list(dec)
        assert f.decode_payload(dec.limits) == item


@pytest.mark.parametrize("sizes", [[MIB], [MIB + 1], [10, MIB, MIB + 1, 7]])
def test_a_1mib_item_streams_under_the_default_limits(node, sizes):
    n = node()
    with connect(n.url, timeout=60) as c:
        got = list(c.stream(sized.request(sizes)))  # sync
        assert [len(x) for x in got] == sizes
        assert [x[:1] for x in got] == [bytes([i]) for i in range(len(sizes))]

        async def main():
            return [x async for x in c.astream(sized.request(sizes))]
        assert [len(x) for x in asyncio.run(main())] == sizes  # held now


def test_an_item_over_the_frame_agreed_ends_the_stream_with_limit_exceeded(node):
    over = P.DEFAULT_MAX_FRAME  # its encoding is a few bytes more than the frame
    n = node()
    with connect(n.url, timeout=60) as c:
        s = c.stream(sized.request([5, over]))
        assert next(s) == bytes(5)
        with pytest.raises(P.LimitExceeded) as e:
            next(s)
    msg = str(e.value)
    assert f"largest frame agreed ({P.DEFAULT_MAX_FRAME})" in msg, msg
    assert str(over) in msg, msg
