"""The node's sans-IO parts: fair queues, credit, stream epochs, the protocol's
golden vectors (tests/golden/protocol.json, byte for byte) and its checks."""

import json
import os
from types import SimpleNamespace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fabric
from fabric.frames import FrameKind
from fabric.holders import HoldingIndex
from fabric.node import gossip as G
from fabric.node import protocol as P
from fabric.node.credit import Credit, StaleStream, StreamTable
from fabric.node.scheduler import FairQueue
from golden import make_protocol

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "protocol.json")


# ---- fair queues ------------------------------------------------------------------

def test_5000_principals_of_one_request_each_are_all_served():
    q = FairQueue(budget=1 << 20)
    for i in range(5000):
        q.push(f"p{i}", ("s", i), 100, i)
    served = []
    while (e := q.pop()) is not None:
        served.append(e.item)
    assert sorted(served) == list(range(5000))
    assert all(s["served"] == 1 for s in q.stats()["principals"].values())


def _exact(q):
    """Every principal's counters add up: queued = served + evicted + dropped + pending."""
    for name, c in q.stats()["principals"].items():
        assert c["queued"] == c["served"] + c["evicted"] + c["dropped"] + c["pending"], \
            (name, c)


def test_a_flooding_principal_does_not_starve_another():
    # quantum = max(4 KiB, budget / principals) = 32 KiB: 8 items a turn
    q = FairQueue(budget=64 * 1024, min_quantum=4096)
    for i in range(16):
        q.push("flood", ("f", i % 8), 4096, ("flood", i))
    for i in range(10):
        q.push("quiet", ("q", 0), 4096, ("quiet", i))
    order = []
    while (e := q.pop()) is not None:
        order.append(e.item)
    who = [w for w, _ in order]
    assert who == ["flood"] * 8 + ["quiet"] * 8 + ["flood"] * 8 + ["quiet"] * 2
    # round robin among the flood's streams: its 8 streams, then again
    assert [i % 8 for w, i in order if w == "flood"] == list(range(8)) * 2
    _exact(q)


def test_a_flood_over_its_budget_loses_its_streams_and_not_anothers():
    q = FairQueue(budget=64 * 1024, min_quantum=4096)
    for i in range(10):
        q.push("quiet", ("q", 0), 4096, ("quiet", i))
    for i in range(10_000):
        q.push("flood", ("f", i % 8), 4096, ("flood", i))
        assert q.stats()["principals"]["flood"]["pending_bytes"] <= 64 * 1024
    stats = q.stats()["principals"]
    assert all(q.lost(("f", k)) for k in range(8)) and not q.lost(("q", 0))
    assert stats["quiet"]["evicted"] == 0 and stats["flood"]["evicted"] > 0
    quiet = []
    while (e := q.pop()) is not None:
        quiet.append(e.item)
    assert [i for w, i in quiet if w == "quiet"] == list(range(10))
    _exact(q)


def test_eviction_takes_the_oldest_head_and_never_a_terminator():
    q = FairQueue(budget=10_000, min_quantum=4096)
    q.push("p", "s1", 4000, "a")
    q.push("p", "s1", 0, "END1", terminator=True)
    q.push("p", "s2", 4000, "b")
    q.push("p", "s2", 4000, "c")  # over budget: evicts s1's "a"? no: the oldest head, "a"
    assert q.lost("s1") and not q.lost("s2")
    items = []
    while (e := q.pop()) is not None:
        items.append(e.item)
    assert "END1" in items and "a" not in items and {"b", "c"} <= set(items)
    assert q.stats()["principals"]["p"]["evicted"] == 1


def test_count_cap_refuses_with_limit_exceeded():
    q = FairQueue(max_count=3)
    for i in range(3):
        q.push("p", "s", 1, i)
    with pytest.raises(P.LimitExceeded, match="cap 3"):
        q.push("p", "s", 1, 99)
    q.push("p", "s", 0, "end", terminator=True)  # a terminator is still taken
    assert q.stats()["principals"]["p"]["refused"] == 1
    _exact(q)


def test_a_stream_that_lost_its_head_loses_what_followed_but_not_its_start_or_end():
    # a stream is delivered in order without a gap: what followed a lost
    # entry could not be delivered either, and what comes later is evicted
    q = FairQueue(budget=10_000)
    q.push("p", "s1", 1, "start1", pinned=True)
    q.push("p", "s1", 3000, "a1")
    q.push("p", "s1", 3000, "a2")
    q.push("p", "s2", 3000, "b1")
    q.push("p", "s2", 3000, "b2")  # over: s1's a1 is the oldest head past its start
    assert q.lost("s1") and q.lost_entry("s1").item == "a1" and not q.lost("s2")
    q.push("p", "s1", 3000, "a3")  # on a lost stream: evicted at once
    q.push("p", "s1", 0, "end1", terminator=True)
    items = []
    while (e := q.pop()) is not None:
        items.append(e.item)
    assert sorted(items) == ["b1", "b2", "end1", "start1"]
    assert q.stats()["principals"]["p"]["evicted"] == 3
    q.forget("s1")
    assert not q.lost("s1")
    _exact(q)


def test_a_held_channel_waits_out_of_the_rotation_and_counts_against_the_budget():
    emptied = []
    q = FairQueue(budget=1 << 20, on_empty=emptied.append)
    q.hold("c1")
    q.push("p", "s1", 100, "x1", channel="c1")
    q.push("p", "s2", 100, "y1", channel="c2")
    q.push("p", "s1", 100, "x2", channel="c1")
    assert q.queued("s1") == 2 and q.pending("c1") == 1 and len(q) == 3
    assert q.pop().item == "y1" and q.pop() is None and not q.empty() and not q.ready()
    assert emptied == ["s2"]
    q.release("c1")
    assert q.ready() and [q.pop().item, q.pop().item] == ["x1", "x2"]
    assert emptied == ["s2", "s1"] and q.empty() and q.queued("s1") == 0
    # held entries stay under the budget: the oldest head goes, held or not
    q = FairQueue(budget=250)
    q.hold("c1")
    q.push("p", "s1", 100, "x1", channel="c1")
    q.push("p", "s2", 100, "y1", channel="c2")
    q.push("p", "s2", 100, "y2", channel="c2")
    assert q.lost("s1") and q.stats()["principals"]["p"]["pending_bytes"] == 200
    _exact(q)


def test_a_channel_that_went_away_drops_its_entries_counted():
    emptied = []
    q = FairQueue(on_empty=emptied.append)
    q.hold("c1")
    q.push("p", "s1", 100, "x1", channel="c1")
    q.push("p", "s1", 0, "end", terminator=True, channel="c1")
    q.push("p", "s2", 100, "y1", channel="c2")
    assert q.discard("c1") == 2
    assert emptied == ["s1"] and [e.item for e in iter(q.pop, None)] == ["y1"]
    st = q.stats()["principals"]["p"]
    assert st["dropped"] == 2 and st["served"] == 1 and q.empty()
    _exact(q)


# ---- credit and epochs ----------------------------------------------------------------

def test_credit_grants_are_cumulative_clamped_and_stale_ones_ignored():
    c = Credit(1000)
    c.take(600)
    with pytest.raises(P.Backpressure):
        c.take(600)
    assert c.backpressure_events == 1 and c.sent == 600
    assert c.grant(5000)  # clamped to what was sent
    assert c.consumed == 600 and c.remaining == 1000
    assert not c.grant(300)  # stale
    c.take(1000)
    assert c.remaining == 0
    assert Credit(0).remaining == -1  # unbounded


def test_async_sender_waits_for_credit():
    import asyncio

    async def main():
        c = Credit(100)
        c.take(100)
        waiter = asyncio.create_task(c.wait(50))
        await asyncio.sleep(0)
        assert not waiter.done()
        c.grant(60)
        await waiter
        return c.sent

    assert asyncio.run(main()) == 150


def test_stream_epochs_make_old_handles_fail():
    t = StreamTable()
    h1 = t.open(7, "first")
    assert t.get(h1) == "first"
    t.close(h1)
    h2 = t.open(7, "second")
    assert h2 == (7, 2)
    with pytest.raises(StaleStream, match="epoch 1"):
        t.get(h1)
    assert t.find(8) is None  # a grant for an id that is not open is dropped


# ---- the protocol --------------------------------------------------------------------

def test_golden_vectors_byte_for_byte():
    """tests/golden/protocol.json is what make_protocol.py makes today: every
    frame byte for byte (from the encoders the node and client send with)."""
    with open(GOLDEN) as f:
        golden = json.load(f)
    made = {k: v.hex() for k, v in make_protocol.golden_frames().items()}
    assert made == golden["frames"]
    assert golden == make_protocol.build()
    assert set(golden["notes"]) <= set(made)


def _frame_of(hexed):
    """The one frame of a golden vector, as a node's decoder reads it."""
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    dec.feed(bytes.fromhex(hexed))
    (f,) = list(dec)
    return f, f.decode_payload(dec.limits)


def _gossip_node(node_id, facts=()):
    """A node's gossip with a real holding index, outside a node (what
    FleetGossip reads of its node when it receives)."""
    holders = HoldingIndex(facts)
    node = SimpleNamespace(node_id=node_id, limits=SimpleNamespace(output_buffer=64 << 20),
                           fabric=SimpleNamespace(holders=holders), _gossip_wake=None,
                           _stat=lambda *a: None, _clients=[])
    g = G.FleetGossip(node)
    g.epoch = make_protocol.EPOCH
    return g, holders


class _GossipConn:
    """An accepted connection of principal b, granted node.gossip."""

    def __init__(self):
        self.grants, self.remote_node, self.peer, self.principal = \
            frozenset(["node.gossip"]), "b", "127.0.0.1:1", "b"
        self.gossip, self.gossip_sent, self.closed = False, 0, False
        self.enc, self.sent = P.encoder(), []

    def send(self, data):
        self.sent.append(data)


def test_golden_gossip_vectors_are_accepted_by_the_receiving_side():
    """Each GOSSIP vector, read by a node's frame decoder, is taken by the
    receiver's parser (FleetGossip.on_conn on a connection a node accepted,
    on_link on a link it made) with the effect the spec gives it."""
    with open(GOLDEN) as f:
        frames = json.load(f)["frames"]
    key = fabric.EvalRequest("double", (21,), version=1).key
    bodies = {}
    for name in ("gossip_delta", "gossip_delta_epoch", "gossip_pull", "gossip_pull_epoch",
                 "gossip_members"):
        f, bodies[name] = _frame_of(frames[name])
        assert (f.kind, f.stream_id, f.seq) == (FrameKind.GOSSIP, 0, 0), name

    # deltas: the fact is applied; with epoch, the origin's bookmark advances
    for name, seen in (("gossip_delta_epoch", {"a": (make_protocol.EPOCH, 1)}),
                       ("gossip_delta", {})):
        for side in ("conn", "link"):
            g, holders = _gossip_node("c")
            if side == "conn":
                g.on_conn(_GossipConn(), bodies[name])
            else:
                g.on_link(SimpleNamespace(_closed=False, node="a", url="fabric://x:1"),
                          bodies[name])
            assert holders.holders_of(key) == ["a"], (name, side)
            assert g.seen == seen, (name, side)
            assert g.counters["facts_new"] == 1

    # pulls (node a, index at version 1, is asked): the connection's pushes
    # start at the bookmark; with a's own epoch it is also b's report (acked)
    for name, sent, acked in (("gossip_pull_epoch", 1, {"b": 1}), ("gossip_pull", 0, {})):
        g, _ = _gossip_node("a", [(key, "a")])
        conn = _GossipConn()
        g.on_conn(conn, bodies[name])
        assert (conn.gossip, conn.gossip_sent, g.acked) == (True, sent, acked), name
        assert g.counters["pulls_in"] == 1
    g, _ = _gossip_node("a", [(key, "a")])
    g.epoch += 1  # a restarted: b's bookmark is of another numbering, pushes start at 0
    conn = _GossipConn()
    g.on_conn(conn, bodies["gossip_pull_epoch"])
    assert conn.gossip_sent == 0

    # members: merged into the view, answered with a sample (on a connection)
    want = [G.Member("a", "fabric://127.0.0.1:7411", True),
            G.Member("b", "fabric://127.0.0.1:7412", False)]
    assert G.check_members(bodies["gossip_members"]) == want
    g, _ = _gossip_node("c")
    conn = _GossipConn()
    g.on_conn(conn, bodies["gossip_members"])
    assert sorted(g.members.members.values()) == want
    (answer,) = conn.sent
    f, body = _frame_of(answer.hex())
    assert f.kind == FrameKind.GOSSIP and set(body) == {"members"}
    g, _ = _gossip_node("c")
    g.on_link(SimpleNamespace(_closed=False, node="a", url="fabric://x:1"),
              bodies["gossip_members"])
    assert sorted(g.members.members.values()) == want

    # and the receiver is not accepting anything: a damaged pull is refused
    g, _ = _gossip_node("a")
    with pytest.raises(P.ProtocolError, match="a delta, a pull or a members list"):
        g.on_conn(_GossipConn(), dict(bodies["gossip_pull_epoch"], epoch="x"))


def test_hello_checks():
    ok = P.hello(node="x", max_frame=4096, window=0, token=None)
    assert P.check_hello(ok, server=False)["window"] == 0
    with pytest.raises(P.VersionMismatch, match=r"2\.3, this node speaks 1\.0"):
        P.check_hello(dict(ok, proto=[2, 3]), server=False)
    # a client checks a server's HELLO: it speaks of itself as the client
    served = P.hello(node="x", max_frame=4096, window=0, principal="p", grants=[])
    with pytest.raises(P.VersionMismatch, match=r"2\.3, this client speaks 1\.0"):
        P.check_hello(dict(served, proto=[2, 3]), server=True)
    for bad in (dict(ok, max_frame=10), dict(ok, max_frame=2**32), dict(ok, window=-1),
                dict(ok, extra=1), dict(ok, caps="x"), "hello"):
        with pytest.raises(P.ProtocolError):
            P.check_hello(bad, server=False)


def test_open_checks_the_key_against_the_fields():
    req = fabric.EvalRequest("double", (21,))
    meta = P.open_metadata(req, want="value", scope="held", grants=[], timeout=1.5)
    assert P.check_open(meta)[0] == req
    meta["key"] = bytes(32)
    with pytest.raises(P.ProtocolError, match="content key"):
        P.check_open(meta)
    for k, v in (("want", "all"), ("scope", "root"), ("timeout", -1), ("via", [1])):
        m = P.open_metadata(req, want="value", scope="held", grants=[], timeout=None)
        m[k] = v
        with pytest.raises(P.ProtocolError):
            P.check_open(m)


def test_error_payload_round_trip_never_leaks_a_secret():
    exc = P.error_from_payload(P.error_payload(fabric.CapabilityDenied("no")), "node a")
    assert isinstance(exc, fabric.CapabilityDenied) and "node a: no" in str(exc)
    other = P.error_from_payload(P.error_payload(KeyError("k")), "node a")
    assert isinstance(other, fabric.RemoteError)


_SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
                    st.text(max_size=8), st.binary(max_size=8))
_VALUES = st.recursive(_SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=4), inner, max_size=3)),
    max_leaves=8)


def _good_open():
    import node_ops
    return P.open_metadata(node_ops.double.request(3), want="value", scope="compute",
                           grants=["a"], timeout=1.0)


def _good_hello():
    return P.hello(node="n", max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW,
                   caps=["gossip"], token="t" * 16)


@st.composite
def _damaged(draw, good, nested=None):
    """``good`` with a few of its fields (and of ``good[nested]``'s) set to
    any value, or dropped, or one more field."""
    body = dict(good)
    if nested is not None:
        inner = dict(good[nested])
        for k in draw(st.lists(st.sampled_from(sorted(inner)), max_size=4)):
            inner[k] = draw(_VALUES)
        body[nested] = inner
    for k in draw(st.lists(st.sampled_from(sorted(good)), max_size=3)):
        body[k] = draw(_VALUES)
    if draw(st.booleans()):
        body.pop(draw(st.sampled_from(sorted(good))), None)
    if draw(st.integers(0, 9)) == 0:
        body[draw(st.text(max_size=4))] = draw(_VALUES)
    return body if draw(st.integers(0, 19)) else draw(_VALUES)


@settings(max_examples=150, deadline=None)
@given(open_body=_damaged(_good_open(), "request"), hello_body=_damaged(_good_hello()))
def test_the_handshake_and_open_checks_refuse_any_damage_with_a_protocol_error(open_body,
                                                                                hello_body):
    """What a peer sends (an open's metadata, a HELLO) with any field of any
    value, missing or extra: accepted, or a ProtocolError, never another
    exception (an OverflowError, a TypeError from deep inside) that would
    end the connection without the ERROR frame saying why."""
    for check, body in ((P.check_open, open_body),
                        (lambda b: P.check_hello(b, server=False), hello_body)):
        try:
            check(body)
        except P.ProtocolError as exc:
            assert str(exc)
    # the undamaged ones pass: the checks are not refusing everything
    assert P.check_open(_good_open())[1:] == ("value", "compute", frozenset(["a"]), 1.0, [])
    assert P.check_hello(_good_hello(), server=False)["node"] == "n"


def test_dropping_a_stream_drops_its_entries_and_keeps_the_others():
    """drop_stream (drop-and-close): its entries and terminator go, counted
    as dropped; the other streams and principals are served as before."""
    q = FairQueue(budget=1 << 20)
    for i in range(3):
        q.push("p", "dropped", 100, ("d", i))
        q.push("p", "kept", 100, ("k", i))
    q.push("p", "dropped", 0, ("d", "end"), terminator=True)
    q.push("other", "alone", 50, ("o", 0))
    assert q.drop_stream("dropped") == 4
    assert q.drop_stream("dropped") == 0 and q.drop_stream("never") == 0
    assert len(q) == 4
    served = []
    while (e := q.pop()) is not None:
        served.append(e.item)
    assert sorted(served) == [("k", 0), ("k", 1), ("k", 2), ("o", 0)]
    assert q.stats()["principals"]["p"]["pending_bytes"] == 0
    q.push("solo", "s", 10, "x")
    assert q.drop_stream("s") == 1 and q.empty() and q.pop() is None
