"""The node's outbound stream data over real connections: written while the
connection's transport takes it, otherwise waiting in the fair queue per
principal (byte budget, oldest-head eviction that ends a stream with a
LimitExceeded diagnostic, deficit round robin): a reading client is never
cut as a slow reader for having many streams, and a principal that floods
streams neither holds unbounded memory nor holds another's stream back."""

import asyncio
import socket
import threading

import fabric
from fabric.frames import FrameKind
from fabric.node import NodeLimits, connect
from fabric.node import protocol as P


ITEM = 256 * 1024


@fabric.op("node.streams.fat")
def fat(i, n=64, size=ITEM):
    for _ in range(n):
        yield bytes(size)


@fabric.op("node.streams.calm")
def calm(n):
    for i in range(n):
        yield i.to_bytes(4, "big") * 16384  # 64 KiB, numbered


def _until(pred, n=2_000_000):
    for _ in range(n):
        if pred():
            return True
    return False


def _hello(window, token=None):
    return P.encoder().encode_value(FrameKind.HELLO, P.hello(
        node=None, max_frame=P.DEFAULT_MAX_FRAME, window=window, token=token))


def _open_streams(sock, sids, request_of):
    for sid in sids:
        meta = P.open_metadata(request_of(sid), want="stream", scope="compute", grants=(),
                               timeout=None)
        sock.sendall(fabric.StreamControl.open(sid, meta).to_frame(
            ["stream.open", "stream.remote.network"]).encode())


def _read_streams(sock, sids):
    """Reads the node's frames on a raw connection until every stream of
    ``sids`` ended, granting credit for each chunk as it arrives; checks
    each stream's frames come in order (START, chunks seq 1, 2, ..., END
    with the next seq). Returns {sid: (items, diagnostics, end body)}."""
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    enc = P.encoder()
    state = {sid: {"seq": None, "items": 0, "bytes": 0, "consumed": 0, "diags": []}
             for sid in sids}
    ended = {}
    sock.settimeout(60)
    while len(ended) < len(sids):
        data = sock.recv(1 << 20)
        assert data, f"the node closed the connection; ended: {sorted(ended)}"
        dec.feed(data)
        grants = []
        for f in dec:
            st = state.get(f.stream_id)
            if st is None:
                continue
            assert f.kind != FrameKind.ERROR, f.decode_payload(dec.limits)
            if f.kind == FrameKind.STREAM_START:
                assert st["seq"] is None and f.seq == 0
                st["seq"] = 0
                continue
            assert st["seq"] is not None and f.seq == st["seq"] + 1, (f.stream_id, f.seq, st)
            st["seq"] = f.seq
            if f.kind == FrameKind.STREAM_CHUNK:
                if f.is_diagnostic:
                    st["diags"].append(f.decode_payload(dec.limits))
                else:
                    st["items"] += 1
                    st["bytes"] += len(f.payload)
                st["consumed"] += len(f.payload)
                grants.append(enc.encode_value(FrameKind.CREDIT,
                                               {"consumed": st["consumed"]},
                                               stream_id=f.stream_id))
            elif f.kind == FrameKind.STREAM_END:
                ended[f.stream_id] = (st["items"], st["diags"], f.decode_payload(dec.limits))
        if grants:
            sock.sendall(b"".join(grants))
    return ended


def _check_ends(ended, complete_items):
    """Each stream ended complete, or truncated after a LimitExceeded
    diagnostic with counts of what was delivered; returns how many were
    truncated."""
    truncated = 0
    for sid, (items, diags, end) in ended.items():
        if end["truncated"]:
            truncated += 1
            assert [d["kind"] for d in diags] == ["LimitExceeded"], (sid, diags)
            assert diags[0]["limit"] == "principal_budget"
            assert end["chunks"] == items < complete_items, (sid, end, items)
        else:
            assert (items, diags, end["chunks"]) == (complete_items, [], complete_items), sid
    return truncated


def _check_held(n, ended, request_of, complete_items):
    """A stream that lost data is never recorded (what reached the consumer
    depends on load; the first write wins): after its END, its key is not
    held by the node, while each stream that ended whole is. The one
    exception: a stream whose producer ended (and was recorded, whole) while
    its last frame waited, that frame then evicted: it lost its last item
    only (see test_a_stream_evicted_after_its_producer_ended_...)."""
    held = {sid: request_of(sid).key in n.cassette for sid in ended}
    lost = {sid for sid, (_items, _diags, end) in ended.items() if end["truncated"]}
    late = {sid for sid in lost if ended[sid][0] == complete_items - 1}
    assert not [sid for sid in lost - late if held[sid]], ("truncated streams held", held)
    assert all(held[sid] for sid in ended if sid not in lost), ("whole streams not held", held)
    return len(ended) - len(lost)


def test_many_concurrent_streams_of_a_reading_client_are_not_cut_as_a_slow_reader(node):
    """40 astreams of 8 items just under 1 MiB on one connection, default
    limits, the client reading as fast as it can: 40 credit windows (4 MiB
    each) are more than the 64 MiB output cap, yet what the transport holds
    stays under its high mark plus a frame (the rest waits at the
    producers, one frame each in the fair queue): the reader is never
    disconnected and every stream arrives whole."""
    item = (1 << 20) - 64

    @fabric.op("node.streams.fat_items")
    def fat_items(i):
        for _ in range(8):
            yield bytes(item)

    n = node()
    with connect(n.url, timeout=60) as c:
        async def one(i):
            return sum([len(x) async for x in c.astream(fat_items.request(i))])

        async def main():
            return await asyncio.gather(*(one(i) for i in range(40)), return_exceptions=True)
        res = asyncio.run(main())
    assert n.stats().get("disconnected_slow_reader", 0) == 0
    assert res == [8 * item] * 40
    q = n.stats()["stream_queue"]
    assert q["evictions"] == 0 and q["pending"] == 0
    (st,) = q["principals"].values()
    # every frame (40 x (START, 8 chunks, END)) queued once and served once
    assert st["queued"] == st["served"] == 40 * 10 and st["evicted"] == st["dropped"] == 0


def test_a_principals_byte_budget_bounds_what_its_streams_hold(node):
    """A principal whose connection does not read, with 16 streams open
    (a 1 MiB credit window each, 16 MiB in all) against a 1 MiB byte budget:
    what it holds at the node stays within the budget (the transport's
    buffer within its high mark and a frame) by evicting the oldest heads;
    once it reads, every stream is either whole or a prefix in order ended
    by a LimitExceeded diagnostic and a truncated END (never a gap), and
    only the whole ones are held by the node (a stream that lost data is
    never recorded)."""
    budget = 1 << 20
    n = node(limits=NodeLimits(principal_budget=budget, window=budget, max_frame=512 * 1024,
                               output_buffer=256 << 20))
    sids = list(range(1, 17))
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(_hello(budget))
        assert s.recv(1 << 16)  # the node's HELLO
        _open_streams(s, sids, lambda sid: fat.request(sid))
        assert _until(lambda: n.stats()["stream_queue"]["evictions"] > 0, 200_000)
        for _ in range(50):  # whenever looked at (the producers keep going)
            held = sum(c.transport.get_write_buffer_size() for c in list(n._conns))
            assert held <= (1 << 16) + 512 * 1024 + 4096, held
            (st,) = n.stats()["stream_queue"]["principals"].values()
            assert st["pending_bytes"] <= budget, st
        ended = _read_streams(s, sids)
        # one more stream once the others ended: nothing evicts it, it ends
        # whole and is held (so the check below sees both kinds)
        _open_streams(s, [17], lambda sid: fat.request(sid, 4))
        (last,) = _read_streams(s, [17]).values()
    truncated = _check_ends(ended, 64)
    assert truncated >= 1
    assert (last[0], last[1], last[2]["truncated"]) == (4, [], False)
    _check_held(n, {**ended, 17: last}, lambda sid: fat.request(sid, 4) if sid == 17
                else fat.request(sid), 64)
    assert _until(lambda: n.stats().get("streams_truncated", 0) == truncated, 20_000)
    q = n.stats()["stream_queue"]
    (st,) = q["principals"].values()
    assert st["queued"] == st["served"] + st["evicted"] + st["dropped"] + st["pending"]
    assert q["evictions"] == st["evicted"] > 0
    assert n.stats().get("disconnected_slow_reader", 0) == 0


def test_a_principal_flooding_streams_does_not_hold_anothers_stream_back(node):
    """Two principals over real connections: "flood" opens 30 streams of
    16 MiB and reads nothing (a 4 MiB budget: one frame of each waiting
    is over it); meanwhile "calm" streams 100 items and gets
    every one, in order, with none of its data evicted. The flood's data
    waits at the node within its own budget (its connection not cut, its
    streams truncated with a diagnostic where data was evicted), and once
    it reads, each of its streams ends whole or truncated with a
    LimitExceeded diagnostic; the truncated ones are not recorded, the whole
    ones (calm's too) are."""
    tokens = {"flood": "token-of-the-flooder-000", "calm": "token-of-the-calm-one-00"}
    budget = 4 << 20  # 16 frames: 30 streams with one each are over it
    n = node(tokens=tokens, limits=NodeLimits(principal_budget=budget, max_running=64))
    sids = list(range(1, 31))
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(_hello(P.DEFAULT_WINDOW, token=tokens["flood"]))
        assert s.recv(1 << 16)  # the node's HELLO
        _open_streams(s, sids, lambda sid: fat.request(sid, 64, ITEM))
        assert _until(lambda: n.stats()["stream_queue"]["evictions"] > 0, 200_000)
        with connect(n.url, token=tokens["calm"], timeout=60) as c:
            got = list(c.stream(calm.request(100)))
            assert n.status()["connections"]["by_principal"]["flood"] == 1  # not cut
        assert [int.from_bytes(x[:4], "big") for x in got] == list(range(100))
        assert all(len(x) == 65536 for x in got)
        per = n.stats()["stream_queue"]["principals"]
        assert per["calm"]["evicted"] == 0 and per["calm"]["served"] == per["calm"]["queued"]
        assert per["flood"]["evicted"] > 0 and per["flood"]["pending_bytes"] <= budget
        ended = _read_streams(s, sids)
    assert _check_ends(ended, 64) >= 1
    _check_held(n, ended, lambda sid: fat.request(sid, 64, ITEM), 64)
    assert calm.request(100).key in n.cassette  # whole: recorded
    assert n.stats().get("disconnected_slow_reader", 0) == 0


def test_a_stream_evicted_after_its_producer_ended_is_held_whole_or_not_at_all(node):
    """The one case where a stream that ends truncated for its consumer was
    recorded: its producer ended (its whole output recorded) while its last
    frame waited in the fair queue, and that frame was evicted afterwards.
    Stream 5 and streams 6-8 send a first small item at once and wait at
    gates (a worker each); streams 1-4 then fill the connection with small
    items, and it pauses. Stream 5's
    gate opens: its last item waits in the queue and its producer ends.
    Then the gate of 6-8 opens: their items push the principal over its
    budget, and the oldest heads go, stream 5's last item among them. Its
    consumer gets the first item, a LimitExceeded diagnostic and a
    truncated END; what the node holds is never that prefix: the producer's
    whole output (as it does today), or nothing (a node whose producer
    waits for its queued frame before it is asked for more)."""
    at_gate, gate, gate2 = threading.Semaphore(0), threading.Event(), threading.Event()

    @fabric.op("node.streams.gated_two")
    def gated_two(i):
        yield b"x" * 100
        at_gate.release()
        assert gate.wait(60)
        yield bytes(ITEM)

    @fabric.op("node.streams.gated_fat")
    def gated_fat(i):
        yield b"y" * 100
        at_gate.release()
        assert gate2.wait(60)
        for _ in range(8):
            yield bytes(ITEM)

    req = gated_two.request(5)
    n = node(limits=NodeLimits(principal_budget=768 << 10, max_frame=512 << 10,
                               window=P.DEFAULT_WINDOW))
    q = lambda: n.stats()["stream_queue"]  # noqa: E731
    try:
        with socket.create_connection(n.address, timeout=30) as s:
            s.sendall(_hello(P.DEFAULT_WINDOW))
            assert s.recv(1 << 16)  # the node's HELLO
            _open_streams(s, [5], lambda sid: req)
            _open_streams(s, range(6, 9), lambda sid: gated_fat.request(sid))
            for _ in range(4):  # their STARTs and first items went out at once
                assert at_gate.acquire(timeout=30)
            _open_streams(s, [1, 2, 3, 4], lambda sid: fat.request(sid, 1024, 16384))
            assert _until(lambda: q()["pending"] >= 1, 400_000)  # paused: frames wait
            gate.set()
            # its producer ended (recorded), or (a node that does not ask a
            # producer for more while its last frame waits) waits for that frame
            assert _until(lambda: req.key in n.cassette or any(
                (id(c), 5) in n._out_waiters for c in list(n._conns)), 2_000_000)
            assert q()["evictions"] == 0  # (within the budget so far)
            gate2.set()
            assert _until(lambda: any(n._out_q.lost((id(c), 5)) for c in list(n._conns)),
                          400_000), q()
            ended = _read_streams(s, range(1, 9))
    finally:
        gate.set()
        gate2.set()
    items, diags, end = ended[5]
    assert (items, [d["kind"] for d in diags], end["truncated"]) == (1, ["LimitExceeded"], True)
    if req.key in n.cassette:  # held: the whole output, never the delivered prefix
        with connect(n.url, scope="held", timeout=30) as c:
            assert list(c.stream(req)) == [b"x" * 100, bytes(ITEM)]
