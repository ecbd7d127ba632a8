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
            assert n.stats()["connections"] == 1
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
