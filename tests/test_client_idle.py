"""A connection the node closes idle (``idle_timeout``) is invisible to the
client's user (docs/spec/protocol.md section 6): a sync or async call that
finds its connection closed that way before the node read it is sent again,
once, on a new connection, and computed once; a call the node had read is
not sent again; the client's main link is made again at once, its status
kept. Real nodes on loopback with a short ``idle_timeout``; every wait is on
the node's connection counts."""

import asyncio
import threading

import pytest

import fabric
from conftest import wait_for
from fabric.node import NodeLimits, connect
from fabric.node import protocol as P
from fabric.node.client import _IdleCut, _ended

IDLE = 1.0  # seconds: a margin over the Pinger's turns on a loaded machine
computed = []


@fabric.op("idle.tag")
def tag(i):
    computed.append(i)
    return f"tag-{i}"


class Pinger:
    """Keeps the client's main link busy (a status call over it in turn, each
    waiting for its reply, then for the stop event up to 0.05 s), so that only
    the call's own connection goes idle."""

    def __init__(self, client):
        self.client, self.stop = client, threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.wait(0.05):
            self.client.node_status(timeout=30)

    def __enter__(self):
        self.t.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.t.join(30)


def _idle_cuts(n, k):
    """Wait until the node has closed k connections idle."""
    wait_for(lambda: n.stats().get("idle_timeouts", 0) >= k, f"{k} idle cuts")


def test_the_idle_error_says_how_many_frames_the_node_read():
    exc = P.IdleTimeout("idle for 0.5 s", 1234)
    body = P.error_payload(exc)
    assert body == {"kind": "IdleTimeout", "message": "idle for 0.5 s", "received": 1234}
    back = P.error_from_payload(body, "node a")
    assert isinstance(back, P.IdleTimeout) and isinstance(back, P.ProtocolError)
    assert back.received == 1234 and str(back) == "node a: idle for 0.5 s"
    for bad in (-1, "12", None, 1.5, True):
        assert P.error_from_payload(dict(body, received=bad), "a").received is None
    # an older node's idle ERROR (a ProtocolError, no count) is never sent again
    old = P.error_from_payload({"kind": "ProtocolError", "message": "idle for 1 s"}, "a")
    assert type(_ended(old, "u", 10)) is fabric.FabricUnavailable


def test_a_call_is_sent_again_only_if_its_open_was_not_read():
    cut = P.IdleTimeout("idle", 100)
    assert isinstance(_ended(cut, "u", 101), _IdleCut)  # its open is frame 101: unread
    assert type(_ended(cut, "u", 100)) is fabric.FabricUnavailable  # frame 100: read
    assert type(_ended(P.IdleTimeout("idle"), "u", 101)) is fabric.FabricUnavailable


def test_a_sync_call_on_a_connection_closed_idle_is_sent_again_once(node):
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    computed.clear()
    with connect(n.url, timeout=30) as c:
        assert c.evaluate(tag.request(1)).value == "tag-1"  # this thread's channel
        sessions, accepted = c.sessions, n.stats()["connections_accepted"]
        with Pinger(c):
            _idle_cuts(n, 1)  # the channel, not the main link (kept busy)
            # (the node counts the cut before the connection's task ends and
            # leaves its set of connections: wait for that too)
            wait_for(lambda: n.stats()["connections"] == 1, "the cut channel to end")
            assert n.stats()["idle_timeouts"] == 1  # the channel's alone
        assert c.evaluate(tag.request(2)).value == "tag-2"
        assert c.sessions == sessions  # the same main link: the call found the cut itself
        assert n.stats()["connections_accepted"] == accepted + 1  # a new channel
        assert computed == [1, 2]  # computed once
        assert c.stats()["failed_fast"] == 0
        assert c.evaluate(tag.request(3)).value == "tag-3"  # the new channel goes on


def test_an_async_call_on_a_connection_closed_idle_is_sent_again_once(node):
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    computed.clear()
    with connect(n.url, timeout=30) as c:
        async def main():
            assert (await c.aevaluate(tag.request(11))).value == "tag-11"
            accepted = n.stats()["connections_accepted"]
            with Pinger(c):
                # The loop is held here (not awaiting): the channel does not
                # read the node's ERROR before the next call is sent on it.
                _idle_cuts(n, 1)
            got = await c.aevaluate(tag.request(12))
            assert n.stats()["connections_accepted"] == accepted + 1
            return got.value

        assert asyncio.run(main()) == "tag-12"
        assert computed == [11, 12]
        assert c.stats()["failed_fast"] == 0


def test_an_async_channel_that_read_the_idle_error_is_made_again(node):
    """The loop ran when the node closed it: the channel ended then, and the
    next call makes a new one (nothing in flight was lost)."""
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    with connect(n.url, timeout=30) as c:
        async def main():
            await c.aevaluate(tag.request(21))
            with Pinger(c):
                await asyncio.to_thread(_idle_cuts, n, 1)
            return (await c.aevaluate(tag.request(22))).value

        assert asyncio.run(main()) == "tag-22"
        assert c.stats()["failed_fast"] == 0


def test_a_call_the_node_read_before_closing_idle_is_not_sent_again(node):
    """A call in flight that the node read (its op running) when it closed the
    connection idle fails with FabricUnavailable, as before: sending it again
    could compute it twice."""
    gate = threading.Event()
    runs = []

    @fabric.op("idle.wait")
    def wait(i):
        runs.append(i)
        gate.wait(30)
        return i

    n = node(limits=NodeLimits(idle_timeout=IDLE))
    try:
        with connect(n.url, timeout=30) as c:
            with pytest.raises(fabric.FabricUnavailable, match="idle for 1.0 s") as ei:
                c.evaluate(wait.request(1))
            assert not isinstance(ei.value, _IdleCut)
    finally:
        gate.set()
    assert runs == [1]


def test_the_main_link_closed_idle_is_made_again_at_once_its_status_kept(node):
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    with connect(n.url, timeout=30) as c:
        sessions = c.sessions
        wait_for(lambda: c.stats()["idle_redials"] >= 1, "the main link closed idle")
        assert c.status == "connected"  # kept while it is made again
        wait_for(lambda: c.sessions > sessions, "the main link's new handshake")
        assert c.status == "connected"
        assert c.stats()["reconnects"] == 0 and c.stats()["failed_fast"] == 0
        assert c.node_status(timeout=30)["node"] == n.node_id  # over the new main link
        assert c.evaluate(tag.request(32)).value == "tag-32"


# ---- the main link: a call in the moment the node closes it idle ----------------

runs = []


@fabric.op("idle.count")
def count(tag, n):
    runs.append(tag)
    yield from range(n)


async def _items(stream):
    return [x async for x in stream]


def test_a_stream_made_right_after_the_main_link_was_closed_idle_arrives(node):
    """Right after each idle cut of the client's main link (the node's count
    says so), a stream and a status call over the main link succeed: they
    go on the link being made again, never failing with "not connected"."""
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    runs.clear()
    with connect(n.url, timeout=30) as c:
        for k in range(2):
            _idle_cuts(n, k + 1)  # only the main link is open: it is the one closed
            assert asyncio.run(_items(c.astream(count.request(f"right-after-{k}", 4)))) \
                == [0, 1, 2, 3]
            assert c.node_status()["node"] == n.node_id
        assert c.stats()["failed_fast"] == 0 and c.stats()["reconnects"] == 0
        assert runs == ["right-after-0", "right-after-1"]


def _hold_after_idle_cut(n, held, release):
    """The node's loop, held (until ``release``) in the tick that closed a
    connection idle, right after its ERROR was written: a client's new
    connection then waits for the node's HELLO."""
    check = n._check_conns

    def check_then_hold():
        before = n._stats.get("idle_timeouts", 0)
        check()
        if n._stats.get("idle_timeouts", 0) > before and not held.is_set():
            held.set()
            release.wait(30)
    n._check_conns = check_then_hold


def test_a_call_made_while_the_main_link_is_made_again_waits_for_it(node):
    """The node closed the main link idle and the client is making it again
    (its handshake held at the node): a stream and a status call made then
    wait for the new link, bounded by their timeouts, and are sent on it."""
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    runs.clear()
    held, release = threading.Event(), threading.Event()
    with connect(n.url, timeout=30) as c:
        sessions, redials = c.sessions, c.stats()["idle_redials"]
        _hold_after_idle_cut(n, held, release)
        try:
            assert held.wait(30)
            wait_for(lambda: c.stats()["idle_redials"] > redials, "the client to dial again")
            assert c.status == "connected" and c.sessions == sessions  # its handshake waits
            s = c.astream(count.request("while-redialing", 3))  # sent once the link is up
            status = []
            t = threading.Thread(target=lambda: status.append(c.node_status(timeout=30)))
            t.start()
        finally:
            release.set()
        assert asyncio.run(_items(s)) == [0, 1, 2]
        t.join(30)
        assert status[0]["node"] == n.node_id
        assert c.sessions == sessions + 1
        assert c.stats()["failed_fast"] == 0 and c.stats()["reconnects"] == 0
    assert runs == ["while-redialing"]


def test_a_call_waiting_for_the_main_link_fails_at_its_timeout(node):
    """The same wait, the new link's handshake held past the call's timeout:
    the call ends with DeadlineExceeded at its timeout, and is not sent on
    the link once it is up."""
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    held, release = threading.Event(), threading.Event()
    with connect(n.url, timeout=30) as c:
        sessions, redials = c.sessions, c.stats()["idle_redials"]
        _hold_after_idle_cut(n, held, release)
        try:
            assert held.wait(30)
            wait_for(lambda: c.stats()["idle_redials"] > redials, "the client to dial again")
            with pytest.raises(fabric.DeadlineExceeded, match="sent no status within 0.2 s"):
                c.node_status(timeout=0.2)
        finally:
            release.set()
        wait_for(lambda: c.sessions == sessions + 1, "the new main link")
        assert c.node_status(timeout=30)["node"] == n.node_id
        assert c._tx == 2  # what it sent on the new link: its HELLO, then this call
        assert c.stats()["in_flight"] == 0 and c.stats()["failed_fast"] == 0


def test_a_call_sent_on_the_main_link_the_node_had_closed_is_sent_again_once(node):
    """The client's loop is held while the node closes the main link idle,
    so a stream's open is written on that link before the client reads the
    node's ERROR: the node never read it (its IdleTimeout says how many
    frames it read), so the client sends it again on the new link; it is
    computed once."""
    n = node(limits=NodeLimits(idle_timeout=IDLE))
    runs.clear()
    entered, release = threading.Event(), threading.Event()
    with connect(n.url, timeout=30) as c:
        sessions = c.sessions
        cuts = n.stats().get("idle_timeouts", 0)

        def hold():
            entered.set()
            release.wait(30)
        c._loop.call_soon_threadsafe(hold)
        try:
            assert entered.wait(30)
            _idle_cuts(n, cuts + 1)  # the ERROR waits, unread, at the client
            req = count.request("sent-on-a-closed-link", 5)
            _t, payload = c._prepare(req, None, None, "stream")
            # (runs on the loop first once it is let go: before its reads)
            opened = asyncio.run_coroutine_threadsafe(c._open(req, "stream", payload),
                                                      c._loop)
        finally:
            release.set()
        call = opened.result(30)
        assert [x for _tag, x in c._events(call, 30)] == [0, 1, 2, 3, 4]
        assert call.again  # sent on the closed link, then on the new one
        assert c.sessions == sessions + 1
        assert c.stats()["failed_fast"] == 0 and c.stats()["reconnects"] == 0
    assert runs == ["sent-on-a-closed-link"]
