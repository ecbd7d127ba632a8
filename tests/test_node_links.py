"""A node's links to its peers dial through its peer governor: a failed dial
or a lost link is a failure of the peer (health, down after N), the next dial
waits the governor's backoff, a handshake resets it, and a peer the lists
refuse is never dialled (a link is cut when the lists change to refuse it,
and dialled again when they change back). Real nodes on 127.0.0.1; the
tests count dials, handshakes and failures, never the time they take."""

import pytest

import fabric
from fabric.governor import PeerGovernor
from fabric.node import Node
from fabric.node.gossip import GossipConfig

from conftest import free_port, wait_for

FAST = GossipConfig(interval=0.05, fanout=3)


@fabric.op("links.triple")
def triple(x):
    return 3 * x


class Recording(PeerGovernor):
    """A governor that keeps every failure it noted, with the health it gave."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.log = []

    def failed(self, peer, what, *, penalty=False):
        h = super().failed(peer, what, penalty=penalty)
        self.log.append((peer, h))
        return h


def link(node, url):
    [got] = [ln for ln in node.stats()["links"] if ln["url"] == url]
    return got


def test_a_peer_that_is_down_is_marked_down_and_each_redial_waits_its_backoff():
    port = free_port()
    url = f"fabric://127.0.0.1:{port}"
    gov = Recording(down_after=3, backoff_base=0.02, backoff_cap=0.08, jitter=0.0)
    a = Node(node_id="a", listen="127.0.0.1:0", peers=[url], governor=gov).start()
    b = None
    try:
        wait_for(lambda: len(gov.log) >= 6, "six failed dials to the peer that is down")
        log = gov.log[:6]
        assert [p for p, _ in log] == [url] * 6  # named by its URL: its id is not known
        assert [h.consecutive for _, h in log] == [1, 2, 3, 4, 5, 6]
        assert [h.down for _, h in log] == [False, False, True, True, True, True]
        assert all(h.last_event.startswith("failed: cannot connect") for _, h in log)
        # each failure's backoff doubles from the base to the cap (no jitter) ...
        assert [h.retry_at - h.last_at for _, h in log] == pytest.approx(
            [0.02, 0.04, 0.08, 0.08, 0.08, 0.08])
        # ... and the next dial came no sooner than the backoff allowed
        for (_, h0), (_, h1) in zip(log, log[1:]):
            assert h1.last_at >= h0.retry_at
        noted = len(gov.log)
        ln = link(a, url)
        assert ln["link"] != "connected" and ln["handshakes"] == 0
        # every dial is a failure noted (one may be under way)
        assert noted <= ln["dials"] <= len(gov.log) + 1
        assert ln["health"]["down"] and ln["health"]["failures"] >= 6
        [peer] = [p for p in a.status()["peers"] if p["url"] == url]
        assert peer["health"]["down"] is True
        assert a.stats()["fabric"]["peers_down"] == 1
        failed = gov.health(url).failures

        # the node comes back on that port: the link's next dial shakes hands,
        # and the peer's health is reset (under its node id from now on)
        b = Node(node_id="b", listen=f"127.0.0.1:{port}", home=fabric.LocalFabric()).start()
        wait_for(lambda: link(a, url)["link"] == "connected", "the link to come up")
        h = gov.health("b")
        assert h.last_event == "ok" and not h.down and h.consecutive == 0
        assert h.retry_at is None and h.failures >= failed
        assert url not in gov.peers()  # the URL's record was folded into b's
        assert link(a, url)["handshakes"] == 1
        assert a.stats()["fabric"]["peers_down"] == 0

        # the link is lost (b stops): a failure of b, not of the URL
        b.stop()
        b = None
        wait_for(lambda: gov.health("b").consecutive >= 1, "the lost link to be noted")
        [first_b] = [h for p, h in gov.log if p == "b"][:1]
        assert first_b.last_event.startswith("failed: link lost") and first_b.consecutive == 1
        before = gov.health("b").failures
        b = Node(node_id="b", listen=f"127.0.0.1:{port}", home=fabric.LocalFabric()).start()
        wait_for(lambda: link(a, url)["handshakes"] == 2, "the link to come back")
        h = gov.health("b")
        assert h.consecutive == 0 and not h.down and h.failures >= before
        # it works as a peer again: what b holds is fetched from b
        req = triple.request(5)
        assert b.fabric.evaluate(req).value == 15
        wait_for(lambda: a.fabric.holders.holds(req.key, "b") and a.fabric.peers,
                 "b's fact to reach a, and b to be a's peer")
        assert a.fabric.evaluate(req).source == "peer:b"
    finally:
        a.stop()
        if b is not None:
            b.stop()


def test_a_blocklisted_peer_is_never_dialled_and_the_lists_cut_and_restore_its_link():
    b = Node(node_id="b", listen="127.0.0.1:0").start()
    gov = PeerGovernor(block=[b.url], backoff_base=0.02, backoff_cap=0.05)
    a = Node(node_id="a", listen="127.0.0.1:0", peers=[b.url], governor=gov).start()
    try:
        ln = link(a, b.url)
        assert ln["refused"] == "blocklisted" and ln["dials"] == 0
        assert b.stats().get("connections_accepted", 0) == 0
        gov.set_lists(block=())  # unblocked: dialled at once
        wait_for(lambda: link(a, b.url)["link"] == "connected", "the link once unblocked")
        assert link(a, b.url)["dials"] == 1 and b.stats()["connections_accepted"] == 1
        # blocked by its node id while linked: the link is cut, which is not
        # a failure of the peer, and it is not dialled while blocked
        gov.set_lists(block=["b"])
        wait_for(lambda: b.stats()["connections"] == 0, "b to see the link closed")
        wait_for(lambda: link(a, b.url)["refused"] == "blocklisted", "the link to wait")
        h = gov.health("b")
        assert h.failures == 0 and h.last_event == "ok"
        assert link(a, b.url)["dials"] == 1
        gov.set_lists(block=())  # unblocked again: exactly one more dial
        wait_for(lambda: link(a, b.url)["link"] == "connected", "the link to come back")
        assert link(a, b.url)["dials"] == 2 and link(a, b.url)["handshakes"] == 2
        assert gov.health("b").failures == 0
    finally:
        a.stop()
        b.stop()


def test_a_peer_url_whose_node_id_is_blocklisted_is_dialled_once_then_left_alone():
    b = Node(node_id="b", listen="127.0.0.1:0").start()
    gov = PeerGovernor(block=["b"], backoff_base=0.02, backoff_cap=0.05)
    a = Node(node_id="a", listen="127.0.0.1:0", peers=[b.url], governor=gov).start()
    try:
        # the URL does not say who is there: one handshake tells, then it hangs up
        wait_for(lambda: link(a, b.url)["refused"] == "blocklisted", "the link to hang up")
        wait_for(lambda: b.stats()["connections"] == 0, "b to see it closed")
        assert link(a, b.url)["handshakes"] == 1 and gov.health("b").failures == 0
        assert not a.fabric.peers  # never added as a peer
        gov.set_lists(block=())
        wait_for(lambda: link(a, b.url)["link"] == "connected", "the link once unblocked")
        # no dial happened while it was blocked: this is the second
        assert link(a, b.url)["dials"] == 2
        assert b.stats()["connections_accepted"] == 2
    finally:
        a.stop()
        b.stop()


def test_an_allowlist_of_node_ids_still_dials_peer_urls_and_keeps_the_others_out():
    b = Node(node_id="b", listen="127.0.0.1:0").start()
    c = Node(node_id="c", listen="127.0.0.1:0").start()
    gov = PeerGovernor(allow=["b"], backoff_base=0.02, backoff_cap=0.05)
    a = Node(node_id="a", listen="127.0.0.1:0", peers=[b.url, c.url], governor=gov).start()
    try:
        wait_for(lambda: link(a, b.url)["link"] == "connected" and a.fabric.peers,
                 "the allowed peer's link, and b as a's peer")
        wait_for(lambda: link(a, c.url)["refused"] == "not on the allowlist",
                 "the other link to hang up")
        assert [p.node for p in a.fabric.peers] == ["b"]
        assert link(a, c.url)["handshakes"] == 1
    finally:
        a.stop()
        b.stop()
        c.stop()


def test_gossip_never_dials_a_blocklisted_member():
    """c links to b, b to a: c learns a through membership, and links to it
    unless its governor blocks a (the control, without the block, is
    tests/test_node_gossip.py's test of learned links)."""
    a = Node(node_id="a", listen="127.0.0.1:0", gossip=FAST).start()
    b = Node(node_id="b", listen="127.0.0.1:0", peers=[a.url], gossip=FAST).start()
    gov = PeerGovernor(block=["a"])
    c = Node(node_id="c", listen="127.0.0.1:0", peers=[b.url], gossip=FAST,
             governor=gov).start()
    try:
        wait_for(lambda: "a" in c._gossip.members.members, "c to learn of a")
        # each gossip tick after that would dial a learned member: let ten pass
        ticks = c.stats()["gossip"]["members_out"]
        wait_for(lambda: c.stats()["gossip"]["members_out"] >= ticks + 10, "ten more ticks")
        assert [ln["url"] for ln in c.stats()["links"]] == [b.url]
        assert c.stats()["gossip"]["links_learned"] == 0
        assert all(conn.remote_node != "c" for conn in list(a._conns))
        gov.set_lists(block=())  # the control: now it links to a
        wait_for(lambda: a.url in [ln["url"] for ln in c.stats()["links"]],
                 "c to link to a once unblocked")
    finally:
        c.stop()
        b.stop()
        a.stop()


def test_the_standalone_client_keeps_its_own_schedule():
    b = Node(node_id="b", listen="127.0.0.1:0").start()
    try:
        with fabric.connect(b.url) as cl:
            assert cl.governor is None
            assert cl.stats()["dials"] == 1 and cl.stats()["handshakes"] == 1
    finally:
        b.stop()


def test_peer_lists_files_are_read_and_checked(tmp_path):
    import argparse

    from fabric.node.cli import _lists

    from test_cli import one_line_error, run

    def args(path, allow=None, block=()):
        return argparse.Namespace(allow_peers=allow, block_peers=list(block),
                                  peer_lists=None if path is None else str(path))

    f = tmp_path / "lists.json"
    assert _lists(args(None, None, ["x"])) == (None, ["x"])
    f.write_text('{"block": ["b", "fabric://127.0.0.1:9"]}')
    assert _lists(args(f, None, ["x"])) == (None, ["x", "b", "fabric://127.0.0.1:9"])
    f.write_text('{"allow": ["a"], "block": []}')
    assert _lists(args(f, ["c"])) == (["c", "a"], [])
    f.write_text('{"allow": null}')
    assert _lists(args(f)) == (None, [])
    for text, says in (("[1]", "a JSON object"), ('{"deny": []}', "a JSON object"),
                       ('{"block": "b"}', '"block" is a list'),
                       ('{"block": [""]}', '"block" is a list'),
                       ('{"allow": [3]}', '"allow" is a list'), ("{", "lists.json")):
        f.write_text(text)
        with pytest.raises(ValueError, match=says):
            _lists(args(f))
    with pytest.raises(ValueError, match="nope.json"):
        _lists(args(tmp_path / "nope.json"))
    # fabric serve refuses it in one line, before anything starts
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette",
                       str(tmp_path / "x.ledger"), "--peer-lists", str(tmp_path / "nope.json")),
                   f"fabric serve: error: --peer-lists {tmp_path / 'nope.json'}: cannot read it: "
                   f"No such file or directory")
    assert not (tmp_path / "x.ledger").exists()
