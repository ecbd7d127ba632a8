"""One computation per fleet: two real nodes on loopback that miss the same key at
once compute it once (at the key's lease holder); a holder that dies or hangs
delays the key by one lease, never wedges it. The op counts its runs and holds
at a gate the test opens once both misses are in flight (a handshake)."""

import collections
import threading

import pytest

import fabric
from fabric import ContentKey
from fabric.node import Node
from fabric.node.gossip import GossipConfig
from fabric.node.leases import SingleFlight, owner

from conftest import wait_for

RUNS = collections.Counter()
GATES = collections.defaultdict(threading.Event)
_lock = threading.Lock()


@fabric.op("lease.gated")
def gated(x):
    with _lock:
        RUNS[x] += 1
    GATES[x].wait(30)  # bounded: the test opens it
    return x * 10


def key_owned_by(who, nodes, start):
    """An argument whose request's lease holder among ``nodes`` is ``who``."""
    for x in range(start, start + 1000):
        if owner(gated.request(x).key, nodes) == who:
            return x
    raise AssertionError("no key found")  # 1000 tries at 1/2 each: never


def test_owner_is_rendezvous_hashing():
    k = ContentKey(bytes(range(32)))
    nodes = [f"n{i}" for i in range(10)]
    o = owner(k, nodes)
    assert o in nodes and owner(k, list(reversed(nodes))) == o
    # removing another node never moves the key; removing the owner moves it
    assert owner(k, [n for n in nodes if n != ("n0" if o != "n0" else "n1")]) == o
    assert owner(k, [n for n in nodes if n != o]) != o
    assert owner(k, []) is None
    # keys spread over the nodes
    spread = collections.Counter(owner(ContentKey(bytes([i]) * 32), nodes) for i in range(256))
    assert len(spread) == 10 and max(spread.values()) < 60


def test_single_flight_shares_one_run_and_not_a_failure():
    sf = SingleFlight()
    k = ContentKey(b"\1" * 32)
    started, go = threading.Event(), threading.Event()
    runs = []

    def slow():
        runs.append(1)
        started.set()
        go.wait(30)
        return "v"

    out = []
    t = threading.Thread(target=lambda: out.append(sf.run(k, slow)))
    t.start()
    started.wait(30)
    t2 = threading.Thread(target=lambda: out.append(sf.run(k, slow)))
    t2.start()
    wait_for(lambda: sf.joined == 1, "the second caller to join")
    go.set()
    t.join(30)
    t2.join(30)
    assert out == ["v", "v"] and len(runs) == 1 and sf.runs == 1
    k2 = ContentKey(b"\2" * 32)
    with pytest.raises(ZeroDivisionError):
        sf.run(k2, lambda: 1 / 0)
    assert sf.run(k2, lambda: "again") == "again"  # a failure is not kept


def pair(tmp_path, lease=30.0, a_kw={}, b_kw={}):
    cfg = GossipConfig(interval=0.05, fanout=2, lease=lease)
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=cfg, **a_kw).start()
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), peers=[a.url], gossip=cfg, **b_kw).start()
    wait_for(lambda: a.stats()["gossip"]["computing"] == ["b"]
             and b.stats()["gossip"]["computing"] == ["a"],
             "a and b to link to each other and know both compute")
    return a, b


def ask_both(a, b, x):
    """Evaluate gated(x) through a user client of each node at once."""
    out = {}

    def call(name, node):
        with fabric.connect(node.url) as c:
            out[name] = c.evaluate(gated.request(x)).value

    ts = [threading.Thread(target=call, args=(n, node)) for n, node in (("a", a), ("b", b))]
    for t in ts:
        t.start()
    return ts, out


def test_two_nodes_missing_one_key_at_once_compute_it_once(tmp_path):
    a, b = pair(tmp_path)
    try:
        x = key_owned_by("b", ["a", "b"], 100)
        ts, out = ask_both(a, b, x)
        # both misses are in flight: a forwarded to b, and b's own miss and
        # a's forwarded one share b's single computation, held at the gate
        wait_for(lambda: a.stats()["leases"]["lease_forwarded"] == 1
                 and b.stats()["leases"]["lease_joined"] == 1 and RUNS[x] == 1,
                 "both misses to wait on b's one computation")
        GATES[x].set()
        for t in ts:
            t.join(30)
        assert out == {"a": x * 10, "b": x * 10}
        assert RUNS[x] == 1
        assert a.stats()["leases"]["lease_local"] == 0
        assert b.stats()["leases"]["lease_local"] == 1
        # both hold it now: the next asks are hits everywhere
        assert gated.request(x).key in a.cassette and gated.request(x).key in b.cassette
    finally:
        GATES[x].set()
        b.stop()
        a.stop()


def test_without_a_link_each_node_computes_its_own(tmp_path):
    """The contrast: the same two misses on nodes that do not know each other."""
    cfg = GossipConfig(interval=0.05, fanout=0)
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=cfg).start()
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=cfg).start()
    x = 5000
    try:
        ts, out = ask_both(a, b, x)
        wait_for(lambda: RUNS[x] == 2, "both nodes to compute")
        GATES[x].set()
        for t in ts:
            t.join(30)
        assert out == {"a": x * 10, "b": x * 10}
    finally:
        GATES[x].set()
        b.stop()
        a.stop()


def test_a_holder_that_dies_mid_computation_does_not_wedge_the_key(tmp_path):
    a, b = pair(tmp_path)
    x = key_owned_by("b", ["a", "b"], 200)
    try:
        out = {}

        def call():
            with fabric.connect(a.url) as c:
                out["a"] = c.evaluate(gated.request(x)).value

        t = threading.Thread(target=call)
        t.start()
        wait_for(lambda: RUNS[x] == 1, "b to start computing for a")
        b.stop()  # the holder dies: its computation is never answered
        wait_for(lambda: RUNS[x] == 2, "a to compute it itself")
        GATES[x].set()
        t.join(30)
        assert out == {"a": x * 10}
        assert a.stats()["leases"]["lease_fallbacks"] == 1
    finally:
        GATES[x].set()
        b.stop()
        a.stop()


def test_a_hung_holder_costs_one_lease_then_the_asker_computes(tmp_path):
    a, b = pair(tmp_path, lease=0.3)
    x = key_owned_by("b", ["a", "b"], 300)
    try:
        with fabric.connect(a.url) as c:
            t = threading.Thread(target=lambda: c.evaluate(gated.request(x)))
            # b computes and hangs at the gate; after its lease a computes too
            # (also at the gate, so both runs are counted before either ends)
            t.start()
            wait_for(lambda: RUNS[x] == 2, "a to give up on b's lease and compute")
            assert a.stats()["leases"]["lease_fallbacks"] == 1
            GATES[x].set()
            t.join(30)
            assert c.evaluate(gated.request(x)).value == x * 10
    finally:
        GATES[x].set()
        b.stop()
        a.stop()


def test_recorded_ops_take_no_lease(tmp_path):
    @fabric.op("lease.recorded", sharing="recorded")
    def rec(x):
        return x

    a, b = pair(tmp_path)
    try:
        for x in range(20):  # some of these keys are b's by rendezvous: never forwarded
            assert a.fabric.evaluate(rec.request(x)).value == x
        assert a.stats()["leases"]["lease_forwarded"] == 0
        assert a.stats()["leases"]["lease_local"] == 20
    finally:
        b.stop()
        a.stop()


def test_a_lease_holder_whose_claim_fails_is_penalised_and_the_asker_computes(tmp_path):
    good = fabric.FleetKeys({"f1": bytes(range(32))}, current="f1")
    forged = fabric.FleetKeys({"f1": bytes(32)}, current="f1")  # b signs with another key
    a, b = pair(tmp_path, a_kw={"fleet_keys": good, "governor": fabric.PeerGovernor()},
                b_kw={"fleet_keys": forged})
    x = key_owned_by("b", ["a", "b"], 400)
    GATES[x].set()
    try:
        got = a.fabric.evaluate(gated.request(x))
        assert got.value == x * 10 and got.source == "home"
        leases = a.stats()["leases"]
        assert leases["lease_forwarded"] == 1 and leases["lease_rejected"] == 1
        assert leases["lease_fallbacks"] == 1 and leases["lease_local"] == 1
        assert RUNS[x] == 2  # b's (discarded) and a's own
        health = a.fabric.governor.peers()["b"]
        assert "lease reply" in health.last_event and "bad MAC" in health.last_event
    finally:
        b.stop()
        a.stop()


def test_the_fleet_and_the_leases_in_the_metrics(tmp_path):
    from fabric.node.metrics import render
    from fabric.node.status import node_status
    from test_node_metrics import parse, value

    a, b = pair(tmp_path)
    x = key_owned_by("b", ["a", "b"], 500)
    GATES[x].set()
    try:
        assert a.fabric.evaluate(gated.request(x)).value == x * 10
        samples, types = parse(render(node_status(a)))
        assert value(samples, "fabric_node_gossip_members") == 1
        assert value(samples, "fabric_node_gossip_links") == 1
        assert value(samples, "fabric_node_leases_total", how="forwarded") == 1
        assert value(samples, "fabric_node_leases_total", how="local") == 0
        assert value(samples, "fabric_node_gossip_messages_total", direction="out") > 0
        assert types["fabric_node_leases_total"] == "counter"
    finally:
        b.stop()
        a.stop()


def test_the_readme_fleet_says_the_lease_holder_answered_not_home(tmp_path):
    """The README's fleet: c computes, b's home is c, a's home is b and a
    links to c. A key whose lease holder is c goes from a straight to c,
    past b: the reply says "lease:c" (c answered it), not "home" (b, which
    never saw the request), on the node and to its clients."""
    from fabric.node import NodeClient

    cfg = GossipConfig(interval=0.05)
    c = Node(str(tmp_path / "c.ledger"), node_id="c", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), gossip=cfg).start()
    b = Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0",
             home=NodeClient(c.url, scope="compute"), gossip=cfg).start()
    a = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=NodeClient(b.url, scope="compute"), peers=[c.url], gossip=cfg).start()
    try:
        wait_for(lambda: a.stats()["gossip"]["computing"] == ["c"],
                 "a to link to c and know it computes")
        # c's among all three: so among any of them a links to (rendezvous)
        x = key_owned_by("c", ["a", "b", "c"], 600)
        y = key_owned_by("c", ["a", "b", "c"], x + 1)
        GATES[x].set()
        GATES[y].set()
        got = a.fabric.evaluate(gated.request(x))
        assert got.value == x * 10 and got.source == "lease:c"
        steps = a.fabric.explain(gated.request(x)).steps  # held now: how it came
        assert ("home", "home", "answered by lease:c") in steps, steps
        assert steps[-1] == ("local", "a", "held now (first from lease:c)"), steps
        with fabric.connect(a.url) as cl:  # what a's clients are told
            assert cl.evaluate(gated.request(y)).source == "lease:c"
        assert a.stats()["leases"]["lease_forwarded"] == 2
        assert a.stats()["leases"]["lease_local"] == 0
        for k in (gated.request(x).key, gated.request(y).key):
            assert k in a.cassette and k in c.cassette
            assert k not in b.cassette  # b was bypassed
    finally:
        a.stop()
        b.stop()
        c.stop()
