"""A principal is the authenticated identity of a connection, and many
connections may share one: over real connections on loopback, principal A
on three connections and B on one, A's connections together are scheduled
as ONE principal (one turn of the request round robin, one count cap, one
byte budget for its waiting stream data), and ``stats()`` counts per
principal, not per connection."""

import asyncio
import socket
import threading

import pytest

import fabric
from fabric.node import NodeLimits, connect
from fabric.node import protocol as P

from conftest import spin_until
from test_node_stream_queue import (ITEM, _check_ends, _hello, _open_streams,
                                    _read_streams, _until, fat)

TOKENS = {"A": "token-of-principal-a-0001", "B": "token-of-principal-b-0002",
          "C": "token-of-principal-c-0003"}


@pytest.fixture
def slot():
    """``(block, started, gate, rec, order)``: ``block`` holds a slot until
    ``gate`` opens (``started`` set once it runs); ``rec(who, i)`` appends
    ``(who, i)`` to ``order`` as it runs. The gate opens at the end in any
    case."""
    started, gate = threading.Event(), threading.Event()
    order = []

    @fabric.op("node.principal_conns.block")
    def block(i):
        started.set()
        assert gate.wait(60)
        return i

    @fabric.op("node.principal_conns.rec")
    def rec(who, i):
        order.append((who, i))
        return i

    yield block, started, gate, rec, order
    gate.set()


def _clients(n):
    """A's three connections, B's one, C's one (C holds the slot)."""
    names = ("A", "A", "A", "B", "C")
    return [connect(n.url, token=TOKENS[p], timeout=60) for p in names]


def test_one_principals_connections_share_one_turn_of_the_round_robin(node, slot):
    """One slot, held by C. A queues 4 requests on each of its 3
    connections (12), then B 4 on its one. Served in round robin per
    principal, B's 4 go in the first 8 (every other turn), not behind A's
    three connections as if they were three principals (B's last would then
    be 16th)."""
    block, started, gate, rec, order = slot
    n = node(tokens=TOKENS, limits=NodeLimits(max_running=1))
    *a, b, c = cls = _clients(n)
    try:
        async def main():
            blocker = asyncio.ensure_future(c.aevaluate(block.request(0)))
            assert await spin_until(started.is_set)
            ts = [asyncio.ensure_future(cl.aevaluate(rec.request("A", 10 * k + j)))
                  for j in range(4) for k, cl in enumerate(a)]
            q = lambda: n.stats()["requests_queue"]  # noqa: E731
            assert await spin_until(lambda: q()["pending"] == 12)  # A's all queued first
            ts += [asyncio.ensure_future(b.aevaluate(rec.request("B", j))) for j in range(4)]
            assert await spin_until(lambda: q()["pending"] == 16)
            assert not order  # nothing ran yet: the slot is C's
            gate.set()
            got = await asyncio.gather(*ts)
            return (await blocker).value, [r.value for r in got]
        blocked, got = asyncio.run(main())
        assert blocked == 0 and got == [10 * k + j for j in range(4) for k in range(3)] + \
            [0, 1, 2, 3]
        assert len(order) == 16
        who = [w for w, _ in order]
        assert sorted(i for i, (w, _) in enumerate(order) if w == "B") == [1, 3, 5, 7], who
        # A's requests from its three connections share A's turns
        assert sorted(i for w, i in order if w == "A") == sorted(
            10 * k + j for j in range(4) for k in range(3)), order
        st = n.stats()["requests_queue"]["principals"]
        assert sorted(st) == ["A", "B", "C"]  # per principal, not per connection
        assert (st["A"]["queued"], st["A"]["served"], st["A"]["pending"]) == (12, 12, 0)
        assert (st["B"]["queued"], st["B"]["served"]) == (4, 4)
        assert (st["C"]["queued"], st["C"]["served"]) == (1, 1)
        by = n.status()["connections"]["by_principal"]
        assert by == {"A": 3, "B": 1, "C": 1}, by
    finally:
        gate.set()
        for cl in cls:
            cl.close()


def test_the_count_cap_counts_a_principals_requests_across_its_connections(node, slot):
    """One slot held by C, a cap of 4 requests waiting per principal. A
    sends 2 requests on each of its 3 connections (2 per connection, within
    the cap each; 6 in all): 4 wait and 2 are refused with LimitExceeded
    naming A and the cap, on whichever connections they came. B's 4 on its
    one connection all wait (A's full queue refuses none of B's). Once the
    slot frees, the 8 waiting are served; the counters are A's and B's."""
    block, started, gate, rec, order = slot
    n = node(tokens=TOKENS, limits=NodeLimits(max_running=1, principal_max_queued=4))
    *a, b, c = cls = _clients(n)
    try:
        async def main():
            blocker = asyncio.ensure_future(c.aevaluate(block.request(1)))
            assert await spin_until(started.is_set)
            ta = [asyncio.ensure_future(cl.aevaluate(rec.request("A", 10 * k + j)))
                  for k, cl in enumerate(a) for j in range(2)]
            # the refusals come at once, while the others wait for the slot
            assert await spin_until(lambda: sum(t.done() for t in ta) == 2)
            tb = [asyncio.ensure_future(b.aevaluate(rec.request("B", j))) for j in range(4)]
            assert await spin_until(
                lambda: n.stats()["requests_queue"]["pending"] == 8)
            assert not any(t.done() for t in tb) and sum(t.done() for t in ta) == 2
            gate.set()
            ra = await asyncio.gather(*ta, return_exceptions=True)
            rb = await asyncio.gather(*tb)
            return (await blocker).value, ra, [r.value for r in rb]
        blocked, ra, rb = asyncio.run(main())
        assert blocked == 1 and rb == [0, 1, 2, 3]
        refused = [r for r in ra if isinstance(r, Exception)]
        ok = sorted(r.value for r in ra if not isinstance(r, Exception))
        assert len(refused) == 2 and len(ok) == 4, ra
        for r in refused:
            assert isinstance(r, P.LimitExceeded), repr(r)
            assert "principal 'A'" in str(r) and "cap 4" in str(r), str(r)
        assert sorted(i for w, i in order if w == "A") == ok
        for cl in cls:  # every connection goes on, the refused ones' too
            assert cl.status == "connected"
        assert a[2].evaluate(rec.request("A", 99)).value == 99
        st = n.stats()
        assert st["refused_over_count_cap"] == 2
        per = st["requests_queue"]["principals"]
        assert sorted(per) == ["A", "B", "C"]
        assert (per["A"]["refused"], per["A"]["queued"], per["A"]["served"]) == (2, 5, 5)
        assert (per["B"]["refused"], per["B"]["queued"], per["B"]["served"]) == (0, 4, 4)
    finally:
        gate.set()
        for cl in cls:
            cl.close()


def test_a_principals_connections_share_one_byte_budget(node):
    """Raw connections that read nothing, 8 streams of 32 items of 256 KiB
    each (a 4 MiB credit window per stream): A on three of them, B on one,
    a byte budget of 3 MiB per principal. What one connection's streams
    hold waiting at the node is one frame each, 2 MiB, within the budget;
    A's three connections together hold more, so A's oldest heads are
    evicted and A's waiting data stays within ONE budget, while B (one
    connection, the same streams) loses nothing. Once read, A's streams end
    whole or truncated with a LimitExceeded diagnostic, B's all whole."""
    budget = 3 << 20
    n = node(tokens=TOKENS, limits=NodeLimits(principal_budget=budget, max_running=64))
    sids = list(range(1, 9))
    names = ("A", "A", "A", "B")

    def request_of(k):
        return lambda sid: fat.request(100 * k + sid, 32, ITEM)

    socks = []
    try:
        for k, p in enumerate(names):
            s = socket.create_connection(n.address, timeout=30)
            socks.append(s)
            s.sendall(_hello(P.DEFAULT_WINDOW, token=TOKENS[p]))
            assert s.recv(1 << 16)  # the node's HELLO
            _open_streams(s, sids, request_of(k))
        q = lambda: n.stats()["stream_queue"]  # noqa: E731
        assert _until(lambda: q()["principals"].get("A", {}).get("evicted", 0) > 0, 400_000)
        for _ in range(50):  # whenever looked at (the producers keep going)
            per = q()["principals"]
            assert sorted(per) == ["A", "B"]  # per principal, not per connection
            assert per["A"]["pending_bytes"] <= budget, per["A"]
            assert per["B"]["evicted"] == 0, per["B"]
        assert n.status()["connections"]["by_principal"] == {"A": 3, "B": 1}
        ended = [_read_streams(s, sids) for s in socks]
    finally:
        for s in socks:
            s.close()
    truncated_a = sum(_check_ends(e, 32) for e in ended[:3])
    assert truncated_a >= 1
    assert _check_ends(ended[3], 32) == 0  # B's all whole
    assert _until(lambda: n.stats().get("streams_truncated", 0) == truncated_a, 20_000)
    per = n.stats()["stream_queue"]["principals"]
    assert per["B"]["evicted"] == 0 and per["A"]["evicted"] > 0
    for st in per.values():
        assert st["queued"] == st["served"] + st["evicted"] + st["dropped"] + st["pending"]
    assert n.stats().get("disconnected_slow_reader", 0) == 0
