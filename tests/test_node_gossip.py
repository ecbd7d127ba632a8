"""Fleet gossip in real nodes on loopback: membership beyond --peer URLs, learned
links up to the fanout, bounded delta messages, anti-entropy pulls with epochs,
malformed gossip refused, 'recorded' replies kept home, and the warning for
unauthenticated non-loopback links (decided on addresses: no such socket is opened)."""

import logging
import random
import re

import pytest

import fabric
from fabric import ContentKey
from fabric.node import Node, NodeLimits
from fabric.node import protocol as P
from fabric.node.client import NodeClient
from fabric.node.gossip import (MAX_FACTS, MAX_MEMBERS, GossipConfig, Member, Membership,
                                check_members, link_warning, recorded_identity, split_delta,
                                warn_link)

from conftest import free_port, wait_for

FAST = GossipConfig(interval=0.05, fanout=3)


@fabric.op("gossip.llm", sharing="recorded")
def llm(prompt):
    return f"answer to {prompt}"


@fabric.op("gossip.pure")
def pure(x):
    return x + 1


def keys(n, seed=0):
    r = random.Random(seed)
    return [ContentKey(r.randbytes(32)) for _ in range(n)]


# ---- units -------------------------------------------------------------------

def test_split_delta_bounds_each_message_by_count_and_frame():
    facts = [(k, "holder-%d" % (i % 7)) for i, k in enumerate(keys(10_000))]
    msgs = split_delta("a", 5, 100, facts, 1 << 20)
    assert [len(m["facts"]) for m in msgs] == [MAX_FACTS, MAX_FACTS, 10_000 - 2 * MAX_FACTS]
    assert msgs[0]["start"] == 100 and msgs[-1]["end"] == 10_100
    assert all(a["end"] == b["start"] for a, b in zip(msgs, msgs[1:]))
    small = split_delta("a", 5, 0, facts, 8192)
    assert sum(len(m["facts"]) for m in small) == 10_000
    for m in small:
        assert len(P.canonical_bytes(m)) <= 8192
    got = [(ContentKey(k), h) for m in small for k, h in m["facts"]]
    assert got == facts


def test_check_members_refuses_what_is_malformed_or_too_long():
    ok = check_members({"members": [["a", "fabric://127.0.0.1:7411", True]]})
    assert ok == [Member("a", "fabric://127.0.0.1:7411", True)]
    too_many = {"members": [[f"n{i}", f"fabric://127.0.0.1:{1000 + i}", False]
                            for i in range(MAX_MEMBERS + 1)]}
    bad = [too_many, {"members": "x"}, {"members": [["a", "http://x:1", True]]},
           {"members": [["a", "fabric://127.0.0.1", True]]},
           {"members": [["", "fabric://127.0.0.1:1", True]]},
           {"members": [["a" * 129, "fabric://127.0.0.1:1", True]]},
           {"members": [["a", "fabric://h:1/" + "x" * 300, True]]},
           {"members": [["a", "fabric://127.0.0.1:1", 1]]},
           {"members": [["a", "fabric://127.0.0.1:99999", True]]}]
    for body in bad:
        with pytest.raises(P.ProtocolError, match="members"):
            check_members(body)


@pytest.mark.parametrize("url, why", [
    ("fabric://::1:7411", "an IPv6 address goes in brackets: fabric://[::1]:7411"),
    ("fabric://127.0.0.1:0", "its port 0 is not in 1..65535"),
    ("fabric://:7411", "its host is empty"),
    ("tcp://127.0.0.1:1", "its scheme 'tcp' is neither fabric nor fabrics"),
])
def test_a_members_url_is_refused_saying_what_is_wrong_with_it(url, why):
    # (the node URL parser of the client and of --peer, fabric.node.protocol)
    with pytest.raises(P.ProtocolError, match=re.escape("GOSSIP members[0]: a node URL is "
                                                        "fabric://HOST:PORT") + ".*" +
                       re.escape(f"not {url!r}: {why}")):
        check_members({"members": [["a", url, True]]})


def test_membership_view_is_bounded_and_never_holds_itself():
    me = Member("me", "fabric://127.0.0.1:1", True)
    m = Membership(me, view=10, rng=random.Random(3))
    new = m.learn([Member(f"n{i}", f"fabric://127.0.0.1:{100 + i}", False) for i in range(50)]
                  + [me, Member("me", "fabric://127.0.0.1:2", False)])
    assert len(new) == 50 and len(m.members) == 10 and "me" not in m.members
    s = m.sample(5)
    assert s[0] == me and len(s) == 5 and len({x.node for x in s}) == 5
    cands = m.candidates({"n49", m.sample(2)[1].url})
    assert len(cands) <= 9 and all(c.node != "n49" for c in cands)


def test_gossip_config_is_checked():
    for bad in (dict(interval=0), dict(fanout=-1), dict(fanout=65), dict(view=0),
                dict(lease=-1), dict(fanout=True)):
        with pytest.raises(ValueError, match="GossipConfig"):
            GossipConfig(**bad).check()


def test_link_warning_decides_on_the_address_and_the_trust():
    for host in ("127.0.0.1", "127.8.9.1", "::1", "[::1]", "localhost"):
        assert link_warning(host, tls=False, token=False) is None
    for host in ("10.0.0.5", "192.168.1.2", "2001:db8::1", "example.org"):
        assert "not authenticated" in link_warning(host, tls=False, token=False)
        assert link_warning(host, tls=True, token=False) is None
        assert link_warning(host, tls=True, token=True) is None
        # a bearer token without TLS crosses the network in clear, whatever the trust
        for trust in ("none", "fleet-key"):
            assert "token crosses the network in clear" in link_warning(
                host, tls=False, token=True, trust=trust)
        assert link_warning(host, tls=False, token=False, trust="fleet-key") is None
    assert "listening on 10.0.0.5" in link_warning("10.0.0.5", tls=False, token=False,
                                                    listening=True)
    assert "listening on 10.0.0.5 with bearer tokens but without TLS" in link_warning(
        "10.0.0.5", tls=False, token=True, listening=True)
    for host in ("127.0.0.1", "::1", "localhost"):
        assert link_warning(host, tls=False, token=True, listening=True) is None


def test_warn_link_warns_of_remote_links_unauthenticated_or_with_a_token_in_clear(caplog):
    with caplog.at_level(logging.WARNING, logger="fabric.node"):
        assert warn_link("fabric://127.0.0.1:7411", tls=False, token=False, node="a") is None
        assert warn_link("fabrics://10.1.2.3:7411", tls=False, token=False, node="a") is None
        assert warn_link("fabrics://10.1.2.3:7411", tls=False, token=True, node="a") is None
        assert not caplog.records
        assert warn_link("fabric://10.1.2.3:7411", tls=False, token=False, node="a")
        assert warn_link("fabric://10.1.2.3:7411", tls=False, token=True, node="a")
    unauthenticated, clear = caplog.records
    assert unauthenticated.levelno == logging.WARNING
    assert "node a: linking to 10.1.2.3 without TLS or a token" in unauthenticated.getMessage()
    assert "node a: linking to 10.1.2.3 with a bearer token but without TLS" in \
        clear.getMessage()


def test_a_loopback_node_with_loopback_peers_warns_nothing(caplog, tmp_path):
    with caplog.at_level(logging.WARNING, logger="fabric.node"):
        with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0") as a, \
                Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
                     peers=[a.url]) as b:
            wait_for(lambda: b.fabric.peers, "b's link to a")
    assert not [r for r in caplog.records if "authenticated" in r.getMessage()]


def test_recorded_identity_reads_the_sharing_class():
    assert recorded_identity(llm.request("x").identity_bytes())
    assert not recorded_identity(pure.request(1).identity_bytes())
    assert not recorded_identity(None) and not recorded_identity(b"\xa8recorded")


# ---- real nodes ----------------------------------------------------------------

def test_a_node_learns_members_beyond_its_peers_and_links_to_them(tmp_path):
    """a <- b <- c by --peer only: c learns a through b and links to it."""
    nodes = []
    try:
        a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
                 gossip=FAST).start()
        nodes.append(a)
        b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
                 peers=[a.url], gossip=FAST).start()
        nodes.append(b)
        c = Node(str(tmp_path / "c.ledger"), node_id="c", listen="127.0.0.1:0",
                 peers=[b.url], gossip=FAST).start()
        nodes.append(c)
        wait_for(lambda: "a" in c.stats()["gossip"]["links"], "c to link to a")
        wait_for(lambda: {"b", "c"} <= set(a.stats()["gossip"]["links"]),
                 "a to link to b and c (it had no --peer)")
        g = c.stats()["gossip"]
        assert g["links_learned"] >= 1 and g["members"] == 2 and g["members_in"] >= 1
        # a fact announced on a reaches c, and c fetches it from a directly
        k = keys(1, seed=9)[0]
        a.fabric.holders.announce(k, "a")
        wait_for(lambda: c.fabric.holders.holds(k, "a"), "a's fact to reach c")
        assert "a" in {p.node for p in c.fabric.peers}
    finally:
        for n in reversed(nodes):
            n.stop()


def test_fanout_bounds_the_learned_links(tmp_path):
    cfg = GossipConfig(interval=0.05, fanout=1)
    hub = Node(str(tmp_path / "hub.ledger"), node_id="hub", listen="127.0.0.1:0",
               gossip=cfg).start()
    spokes = []
    try:
        for i in range(4):
            spokes.append(Node(str(tmp_path / f"s{i}.ledger"), node_id=f"s{i}",
                               listen="127.0.0.1:0", peers=[hub.url], gossip=cfg).start())
        wait_for(lambda: all(s.stats()["gossip"]["members"] == 4 for s in spokes),
                 "every spoke to know the other four members")
        wait_for(lambda: all(len(s.stats()["gossip"]["links"]) == 2 for s in spokes),
                 "every spoke to have its learned link")
        # the hub's own learned link connects on its own time (no spoke's
        # view waits for it)
        wait_for(lambda: hub.stats()["gossip"]["links"], "the hub's learned link")
        for s in spokes + [hub]:
            g = s.stats()["gossip"]
            assert g["links_learned"] - g["links_dropped"] <= 1
        assert len(hub.stats()["gossip"]["links"]) == 1
    finally:
        for n in spokes + [hub]:
            n.stop()


def observe(url, **kw):
    """A gossip observer: a client that collects the deltas a node pushes."""
    got = []
    cl = NodeClient(url, scope="held", on_gossip=got.append, **kw)
    cl.wait_connected(20)
    return cl, got


def facts_of(msgs):
    return {(bytes(k), h) for m in msgs if "facts" in m for k, h in m["facts"]}


def test_deltas_are_cut_to_the_frame_agreed(tmp_path):
    lim = NodeLimits(max_frame=16384, window=16384)
    ks = keys(5000, seed=4)
    with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
              limits=lim) as a:
        a.fabric.holders.announce_keys(ks, "a")
        cl, got = observe(a.url, max_frame=16384)
        try:
            wait_for(lambda: len(facts_of(got)) == 5000, "all 5000 facts")
        finally:
            cl.close()
        assert len(got) >= 5000 * 40 // 16384
        for m in got:
            assert len(P.canonical_bytes(m)) <= 16384 and len(m["facts"]) <= MAX_FACTS
            assert m["origin"] == "a" and m["epoch"] == a._gossip.epoch
        assert {(k.digest, "a") for k in ks} == facts_of(got)


def test_a_pull_on_connect_sends_what_is_missing_and_all_for_another_epoch(tmp_path):
    """A connection's first pull says where to start (its bookmark of the
    node's index); later pulls on the same live connection only report the
    bookmark (what was pushed since is in flight), so nothing is sent twice."""
    ks = keys(30, seed=5)
    with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0") as a:
        a.fabric.holders.announce_keys(ks[:20], "a")
        cl, got = observe(a.url)
        try:
            wait_for(lambda: len(facts_of(got)) == 20, "the first 20 facts")
            epoch = got[-1]["epoch"]
            assert max(m["end"] for m in got) == 20
            # a later pull on the live connection re-sends nothing, even one
            # from an earlier version; the next announce is pushed from 20 on
            cl._send_gossip({"pull": 10, "epoch": epoch})
            a.fabric.holders.announce_keys(ks[20:], "a")
            wait_for(lambda: len(facts_of(got)) == 30, "the last 10 facts")
            assert sum(len(m["facts"]) for m in got) == 30
            assert [m for m in got if m["start"] >= 20][0]["start"] == 20

            def reconnect_pulling(body):
                n = len(got)
                before = cl.stats_counters["reconnects"]
                cl.gossip_pull = lambda: body
                cl._loop.call_soon_threadsafe(lambda: cl._writer.transport.abort())
                wait_for(lambda: cl.stats_counters["reconnects"] == before + 1
                         and cl.status == "connected", "the observer to reconnect")
                return n

            # a new connection pulling from version 10 gets the facts after 10
            n = reconnect_pulling({"pull": 10, "epoch": epoch})
            wait_for(lambda: sum(len(m["facts"]) for m in got[n:]) == 20, "versions 10..30")
            assert got[n]["start"] == 10
            # a bookmark of another epoch (the node restarted): everything
            n = reconnect_pulling({"pull": 25, "epoch": epoch ^ 1})
            wait_for(lambda: sum(len(m["facts"]) for m in got[n:]) == 30, "all 30 again")
            assert got[n]["start"] == 0
            # nothing missing: nothing sent
            n = reconnect_pulling({"pull": 30, "epoch": epoch})
            a.fabric.holders.announce(keys(1, seed=99)[0], "a")
            wait_for(lambda: len(got) > n, "the next push")
            assert [m["start"] for m in got[n:]] == [30]
        finally:
            cl.close()
        assert a.stats()["gossip"]["pulls_in"] >= 5


def test_nothing_is_pushed_to_a_gossiping_connection_before_its_pull(tmp_path):
    """Between the node's HELLO answer and the connection's pull, a gossip
    tick pushes nothing there: pushes start where the pull says, so a
    reconnect is not sent the whole index again."""
    import socket
    from fabric import FrameDecoder
    from fabric.frames import FrameKind
    ks = keys(5, seed=6)
    with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0") as a:
        enc = P.encoder()
        dec = FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        with socket.create_connection(a.address, timeout=30) as s:

            def frames_until(kind):
                out = []
                while not out or out[-1].kind != kind:
                    for f in dec:
                        out.append(f)
                        break
                    else:
                        data = s.recv(1 << 16)
                        assert data, "the node closed the connection"
                        dec.feed(data)
                return out

            s.sendall(enc.encode_value(FrameKind.HELLO, P.hello(
                node="x", max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW,
                caps=["gossip"])))
            assert [f.kind for f in frames_until(FrameKind.HELLO)] == [FrameKind.HELLO]
            a.fabric.holders.announce_keys(ks, "a")
            # an observer that pulled has had the 5 facts: the tick that pushed
            # them has passed this connection too (one loop, one push over all)
            cl, got = observe(a.url)
            try:
                wait_for(lambda: len(facts_of(got)) == 5, "the observer's 5 facts")
                epoch = got[-1]["epoch"]
            finally:
                cl.close()
            # a PING's PONG comes after anything that tick wrote here
            s.sendall(enc.encode(FrameKind.PING, b"", stream_id=0))
            assert [f.kind for f in frames_until(FrameKind.PONG)] == [FrameKind.PONG]
            s.sendall(enc.encode_value(FrameKind.GOSSIP, {"pull": 3, "epoch": epoch}))
            [delta] = frames_until(FrameKind.GOSSIP)
            body = delta.decode_payload(dec.limits)
            assert (body["start"], body["end"]) == (3, 5)
            assert {(bytes(k), h) for k, h in body["facts"]} == {(k.digest, "a")
                                                                 for k in ks[3:]}


def test_malformed_gossip_closes_the_connection(tmp_path):
    with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0") as a:
        for n, body in enumerate([
                {"members": [[f"n{i}", f"fabric://127.0.0.1:{1000 + i}", False]
                             for i in range(MAX_MEMBERS + 1)]},
                {"origin": "x", "start": 0, "end": 1, "facts": [[b"short", "x"]]},
                {"origin": "x", "start": 0, "end": 1, "facts": [[b"k" * 32, "x"]] * (MAX_FACTS + 1)},
                {"pull": "0"}, {"something": 1}], start=1):
            cl = NodeClient(a.url, scope="held", on_gossip=lambda b: None, reconnect=False)
            cl.wait_connected(20)
            try:
                cl._send_gossip(body)
                wait_for(lambda: a.stats().get("refused_ProtocolError", 0) == n,
                         f"the node to refuse {str(body)[:40]}")
            finally:
                cl.close()
        assert a.fabric.holders.version == 0


def test_recorded_replies_are_neither_announced_nor_served_to_nodes(tmp_path):
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=FAST).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             peers=[b.url], gossip=FAST).start()
    try:
        wait_for(lambda: a.fabric.peers, "a's link to b")
        secret, shared = llm.request("q"), pure.request(1)
        assert b.fabric.evaluate(secret).value == "answer to q"
        assert b.fabric.evaluate(shared).value == 2
        # the pure fact, announced after the recorded one, reaches a: the
        # recorded one would have come first (deltas are in index order)
        wait_for(lambda: a.fabric.holders.holds(shared.key, "b"), "the pure fact")
        assert not a.fabric.holders.holds(secret.key, "b")
        assert b.stats()["gossip"]["recorded_withheld"] >= 1
        # a asks b for it as a node: b does not serve it (a has no home)
        with pytest.raises(fabric.NoHolderError) as ei:
            a.fabric.evaluate(secret)
        [(who, why)] = ei.value.attempts
        assert who == "b" and isinstance(why, fabric.ContentNotHeld)
        assert "'recorded' reply" in str(why)
        assert a.fabric.evaluate(shared).source == "peer:b"
        # b's own users still get it replayed from b's cassette
        with fabric.connect(b.url) as user:
            got = user.evaluate(secret)
            assert got.value == "answer to q"
        assert secret.key in b.cassette and secret.key not in a.cassette
    finally:
        a.stop()
        b.stop()


def test_recorded_keys_replayed_at_start_are_not_announced_either(tmp_path):
    path = str(tmp_path / "b.ledger")
    # 1,500 records: more than the node checks inline, so the check of the
    # replayed ledger runs on a worker thread before anything is pushed
    with fabric.EvalCassette(path, durability="os") as c:
        f = fabric.LedgeredRelayFabric(fabric.LocalFabric(), c)
        for x in range(750):
            f.evaluate(pure.request(x))
        f.evaluate(llm.request("old"))
        for x in range(750, 1500):
            f.evaluate(pure.request(x))
    b = Node(path, node_id="b", listen="127.0.0.1:0").start()
    try:
        cl, got = observe(b.url)
        try:
            wait_for(lambda: len(facts_of(got)) == 1500, "the pure keys replayed from b's ledger")
        finally:
            cl.close()
        assert (llm.request("old").key.digest, "b") not in facts_of(got)
        assert facts_of(got) == {(pure.request(x).key.digest, "b") for x in range(1500)}
        assert b.stats()["gossip"]["recorded_withheld"] == 1
        assert max(m["end"] for m in got) == 1501  # versions count the withheld fact
    finally:
        b.stop()


def test_a_reconnecting_link_pulls_from_its_bookmark_not_from_zero(tmp_path):
    ks = keys(1000, seed=8)
    # b makes no learned link (fanout 0): one to a made while a's link was
    # away would count its own pushes (a fresh link knows only what a last
    # reported having: test_a_link_made_to_a_node_starts_at_what_it_reported)
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             gossip=GossipConfig(fanout=0)).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             peers=[b.url]).start()
    try:
        b.fabric.holders.announce_keys(ks[:999], "b")
        wait_for(lambda: len(a.fabric.holders) == 999, "b's 999 facts at a")
        [link] = a._clients
        wait_for(lambda: a._gossip.seen.get("b", (0, 0))[1] == 999, "a's bookmark of b")
        # b counts a delta once it is written, so a may hold it before b's
        # counter moves: status() reads the counters on b's loop, after the
        # push that wrote them has finished (stats() from here could read 0)
        sent = b.status()["gossip"]["facts_out"]
        assert sent >= 999
        link._loop.call_soon_threadsafe(lambda: link._writer.transport.abort())
        wait_for(lambda: link.stats_counters["reconnects"] == 1 and link.status == "connected",
                 "a's link to reconnect")
        # b notices the old connection's end on its own: until then a push
        # would also go (and be counted) on the connection a dropped
        wait_for(lambda: b.stats()["connections"] == 1, "b to let go of the old connection")
        b.fabric.holders.announce(ks[999], "b")
        wait_for(lambda: a.fabric.holders.holds(ks[999], "b"), "the 1000th fact")
        # the reconnect pulled from (epoch, 999): only the new fact was sent again
        assert b.status()["gossip"]["facts_out"] - sent == 1
    finally:
        a.stop()
        b.stop()


def test_a_link_made_to_a_node_starts_at_what_it_reported(tmp_path):
    """b holds 999 facts; a linked to b, had them all and said so (its
    reconnect's pull carries its bookmark), then closed its link. A link b
    makes to a afterwards starts where a reported being (b's acked), not at
    0: it sends none of the 999 again. (It sent them all, when made in the
    moment a's own link was away: the cause of a flaky bookmark test.)"""
    ks = keys(999, seed=9)
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             gossip=GossipConfig(fanout=0)).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             peers=[b.url]).start()
    try:
        b.fabric.holders.announce_keys(ks, "b")
        wait_for(lambda: a._gossip.seen.get("b", (0, 0))[1] == 999, "a's bookmark of b")
        [link] = a._clients
        link._loop.call_soon_threadsafe(lambda: link._writer.transport.abort())
        wait_for(lambda: b._gossip.acked.get("a") == 999, "a's pull with its bookmark")
        link.close()
        wait_for(lambda: b.stats()["connections"] == 0, "b to let go of a's connection")
        sent = b.status()["gossip"]["facts_out"]
        b._loop.call_soon_threadsafe(b._link, a.url)
        wait_for(lambda: any(cl.node == "a" and cl.status == "connected"
                             for cl in b._clients), "b's link to a")
        [back] = b._clients
        wait_for(lambda: back.gossip_sent == 999, "b's push tick for its link")
        assert b.status()["gossip"]["facts_out"] == sent
        assert len(a.fabric.holders) == 999
    finally:
        a.stop()
        b.stop()


def test_a_restarted_node_is_pulled_from_zero_under_its_new_epoch(tmp_path):
    path = str(tmp_path / "b.ledger")
    with fabric.EvalCassette(path) as c:
        for x in range(5):
            fabric.LedgeredRelayFabric(fabric.LocalFabric(), c).evaluate(pure.request(x))
    slow = GossipConfig(interval=600)  # no periodic pull: the reconnect's pull does it
    port = free_port()  # b is restarted on it
    b = Node(path, node_id="b", listen=f"127.0.0.1:{port}", gossip=slow).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             peers=[b.url], gossip=slow).start()
    try:
        wait_for(lambda: len(a.fabric.holders) == 5, "b's 5 facts at a")
        [link] = a._clients
        old_epoch = a._gossip.seen["b"][0]
        b.stop()
        # b comes back on the same port with another ledger (it lost its
        # disk and computed 7 other keys): the same versions 0..4 name other
        # facts now, so a bookmark of version 5 would miss 5 of them
        path2 = str(tmp_path / "b2.ledger")
        with fabric.EvalCassette(path2) as c:
            for x in range(100, 107):
                fabric.LedgeredRelayFabric(fabric.LocalFabric(), c).evaluate(pure.request(x))
        b = Node(path2, node_id="b", listen=f"127.0.0.1:{port}", gossip=slow).start()
        wait_for(lambda: len(a.fabric.holders) == 12, "b's 7 new facts at a after its restart")
        assert a._gossip.seen["b"][0] == b._gossip.epoch != old_epoch
        assert b.stats()["gossip"]["pulls_in"] >= 1
    finally:
        a.stop()
        b.stop()


def test_status_shows_the_fleet_and_the_leases(tmp_path):
    from fabric.node.status import format_status, node_status
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=FAST).start()
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             peers=[a.url], gossip=FAST).start()
    try:
        wait_for(lambda: b.stats()["gossip"]["members"] == 1, "b to know a as a member")
        st = node_status(b)
        assert st["gossip"]["links"] == ["a"] and st["gossip"]["members"] == 1
        assert st["leases"] == {}
        text = format_status(st)
        assert "gossip       1 members, 1 links" in text
        assert "leases" not in text
        assert "leases       0 computed here" in format_status(node_status(a))
    finally:
        b.stop()
        a.stop()


def test_a_big_delta_waits_for_the_reader_instead_of_overflowing_its_buffer(tmp_path):
    """2.4 MB of facts through a connection whose output buffer cap is 1 MiB:
    the pushes wait a tick whenever 256 KiB are buffered, so the reader is
    never cut off as a slow reader (it used to be, with the whole delta
    written at once)."""
    ks = keys(60_000, seed=11)
    with Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
              limits=NodeLimits(output_buffer=1 << 20)) as a:
        a.fabric.holders.announce_keys(ks, "a")
        cl, got = observe(a.url)
        try:
            wait_for(lambda: len(facts_of(got)) == 60_000, "all 60,000 facts")
        finally:
            cl.close()
        assert a.stats().get("disconnected_slow_reader", 0) == 0
        assert cl.stats()["reconnects"] == 0


def test_records_without_a_request_are_announced_but_a_recorded_one_is_never_served(tmp_path):
    """The decision of docs/spec/protocol.md section 5.3: a reply recorded
    with no REQUEST beside it (EvalCassette.record without request=) has no
    sharing class the node can read, and its fact is announced as a pure
    one's would be. Serving is decided by the asking node's request, whose
    key commits its sharing class: a 'recorded' op's reply recorded that way
    is announced, yet never served to another node (the asker moves on), and
    still replayed to the holder's own users."""
    from fabric.replies import reply_record
    path = str(tmp_path / "b.ledger")
    shared, secret = pure.request(1), llm.request("q")
    home = fabric.LocalFabric()
    with fabric.EvalCassette(path, durability="os") as c:
        for req in (shared, secret):
            assert c.record(req.key, reply_record(home.evaluate(req)))  # no request=
            assert c.request_bytes(req.key) is None
    b = Node(path, node_id="b", listen="127.0.0.1:0", gossip=FAST).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             peers=[b.url], gossip=FAST).start()
    try:
        wait_for(lambda: a.fabric.peers and a.fabric.holders.holds(shared.key, "b")
                 and a.fabric.holders.holds(secret.key, "b"), "both facts at a")
        assert b.stats()["gossip"]["recorded_withheld"] == 0
        assert a.fabric.evaluate(shared).source == "peer:b"
        with pytest.raises(fabric.NoHolderError) as ei:
            a.fabric.evaluate(secret)
        [(who, why)] = ei.value.attempts
        assert who == "b" and isinstance(why, fabric.ContentNotHeld)
        assert "'recorded' reply" in str(why)
        assert secret.key not in a.cassette
        with fabric.connect(b.url) as user:
            assert user.evaluate(secret).value == "answer to q"
    finally:
        a.stop()
        b.stop()


def test_a_version_1_ledger_is_announced_whole(tmp_path):
    """A version 1 ledger has no REQUEST records (its replies were made
    before sharing classes): every key it holds is announced, none withheld,
    and the file is read, not upgraded, by announcing."""
    import pathlib
    import shutil
    path = tmp_path / "v1.fabl"
    shutil.copyfile(pathlib.Path(__file__).parent / "golden" / "ledger-v1.fabl", path)
    with fabric.EvalCassette(str(path)) as c:
        held = {k.digest for k in c}
    assert held
    b = Node(str(path), node_id="b", listen="127.0.0.1:0").start()
    try:
        cl, got = observe(b.url)
        try:
            wait_for(lambda: {k for k, _ in facts_of(got)} == held, "every v1 key announced")
        finally:
            cl.close()
        assert b.stats()["gossip"]["recorded_withheld"] == 0
    finally:
        b.stop()
    assert open(path, "rb").read()[8] == 1


@pytest.mark.parametrize("config", [{}, {"interval": 1.0}, 5])
def test_a_gossip_config_that_is_not_one_is_a_type_error(tmp_path, config):
    # ({} was taken as no config at all, a non-empty dict failed on an attribute)
    with pytest.raises(TypeError, match="gossip must be a fabric.node.gossip.GossipConfig, "
                                        f"not {type(config).__name__}"):
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", gossip=config)


def test_only_a_principal_granted_node_gossip_can_name_members_for_the_node_to_dial(
        tmp_path, caplog):
    """A members message names addresses the node links to, presenting its
    peer token there: from a principal without ``node.gossip`` it is
    dropped (counted, logged once; the connection and its requests go on),
    so the node dials nothing it named. Before, any principal (here one
    granted nothing, not even asking for the gossip capability) made the
    node dial an address of its choosing and hand its peer token to it.
    The granted principal's message to a second listener is the control."""
    import socket

    from fabric.frames import FrameKind

    from conftest import hello_bytes, read_frames

    listeners = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    tokens = {"reader": "reader-token-0123456789", "peer": "peer-token-0123456789ab"}
    n = Node(str(tmp_path / "n.ledger"), node_id="n", listen="127.0.0.1:0", tokens=tokens,
             grants={"reader": [], "peer": ["node.gossip"]}, gossip=FAST,
             peer_token="the-peer-token-of-node-n").start()
    enc = P.encoder()
    socks = []
    try:
        for principal, lst, name in (("reader", listeners[0], "evil"),
                                     ("peer", listeners[1], "m")):
            s = socket.create_connection(n.address, timeout=30)
            socks.append(s)
            s.sendall(hello_bytes(token=tokens[principal]))
            assert read_frames(s, until_close=False)[0].kind == FrameKind.HELLO
            url = f"fabric://127.0.0.1:{lst.getsockname()[1]}"
            s.sendall(enc.encode_value(FrameKind.GOSSIP, {"members": [[name, url, True]]}))
            s.sendall(enc.encode(FrameKind.PING, b"after", stream_id=0))
            got = read_frames(s, until_close=False)
            while not any(f.kind == FrameKind.PONG for f in got):
                got += read_frames(s, until_close=False)  # (the peer's gets members back)
            assert not any(f.kind == FrameKind.ERROR for f in got)
        listeners[1].settimeout(30)
        conn, _ = listeners[1].accept()  # the granted principal's member is dialled
        conn.close()
        assert n.status()["gossip"]["members"] == 1  # "m" only, never "evil"
        listeners[0].setblocking(False)
        with pytest.raises(BlockingIOError):
            listeners[0].accept()
        g = n.stats()["gossip"]
        assert g["refused_in"] == 1 and g["members_in"] == 1
    finally:
        for s in socks:
            s.close()
        n.stop()
        for lst in listeners:
            lst.close()
    warned = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"
              and "dropping GOSSIP" in r.getMessage()]
    assert len(warned) == 1 and "'reader'" in warned[0] and "node.gossip" in warned[0]


def test_the_hello_grants_gossip_only_to_a_principal_holding_node_gossip(tmp_path):
    """Both ask for the gossip capability: the HELLO answer grants it to the
    principal granted node.gossip and not to the other (whose GOSSIP the
    node would drop, and to which it pushes none), saying what the node
    will take."""
    import socket

    from fabric.frames import FrameKind

    from conftest import hello_bytes, read_frames

    tokens = {"reader": "reader-token-0123456789", "peer": "peer-token-0123456789ab"}
    n = Node(str(tmp_path / "n.ledger"), node_id="n", listen="127.0.0.1:0", tokens=tokens,
             grants={"reader": ["node.compute"], "peer": ["node.gossip"]}).start()
    try:
        caps = {}
        for principal in tokens:
            with socket.create_connection(n.address, timeout=30) as s:
                s.sendall(hello_bytes(token=tokens[principal], caps=["gossip"]))
                hello = read_frames(s, until_close=False)[0]
            assert hello.kind == FrameKind.HELLO
            caps[principal] = hello.decode_payload()["caps"]
        assert caps == {"reader": [], "peer": ["gossip"]}
    finally:
        n.stop()


def test_a_node_off_loopback_with_tokens_but_no_tls_warns_they_travel_in_clear(tmp_path,
                                                                                caplog):
    # (constructed only: nothing is bound, nothing is sent)
    with caplog.at_level(logging.WARNING, logger="fabric.node"):
        Node(str(tmp_path / "n.ledger"), node_id="n", listen="0.0.0.0:0",
             tokens={"alice": "alice-token-0123456789"})
    [rec] = [r for r in caplog.records if "in clear" in r.getMessage()]
    assert rec.getMessage().startswith("node n: listening on 0.0.0.0 with bearer tokens but "
                                       "without TLS")
    assert "alice-token-0123456789" not in caplog.text
