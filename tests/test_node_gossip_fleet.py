"""Five real `fabric serve` processes on loopback, linked only as a chain by --peer:
a fact announced on one reaches all five through gossip (membership adds the
links the chain lacks), measured in relay hops and delta messages; a chain
cut in the middle (a node SIGKILLed) heals when the node comes back; and a
partition made with every node alive (the bridge's --peer-lists blocks the
other side, SIGHUP) heals to the union of what each side learned.

Measurement: every node logs (DEBUG) one line per delta it receives, naming
the sender and how many facts were new. With one fact announced on a quiet
fleet, the first "1 new" line of each node names its parent in the
propagation tree (its depth = relay hops); every line after the announce is
a delta message that carried the fact (the duplicates included)."""

import os
import re
import signal
import subprocess

import pytest

import fabric
from fabric.node import connect
from fabric.node.client import NodeClient

import node_ops
from conftest import wait_for
from served import serve

LINE = re.compile(r"node (\S+): gossip delta from (\S+): (\d+) fact\(s\), (\d+) new, (\d+) B")


class Fleet:
    def __init__(self, tmp_path):
        self.tmp = tmp_path
        self.procs = {}
        self.urls = {}

    def start(self, name, *args):
        """Node ``name`` computing at home, its log appended to ``name.log``."""
        proc, url = serve(self.tmp, name, "--home", "node_ops:home", "--log-level", "debug",
                          *args, log=self.tmp / f"{name}.log")
        self.procs[name] = proc
        self.urls[name] = url
        return url

    def log_size(self, name):
        return os.path.getsize(self.tmp / f"{name}.log")

    def deltas(self, name, since=0):
        """(sender, facts, new) of each delta ``name`` logged after byte ``since``."""
        with open(self.tmp / f"{name}.log") as f:
            f.seek(since)
            return [(m.group(2), int(m.group(3)), int(m.group(4)))
                    for m in LINE.finditer(f.read()) if m.group(1) == name]

    def stop_all(self):
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()


@pytest.fixture
def fleet(tmp_path):
    f = Fleet(tmp_path)
    yield f
    f.stop_all()


class Observer:
    """A gossip client on one node: the facts that node pushes to it."""

    def __init__(self, url):
        self.facts = set()
        self.client = NodeClient(url, scope="held", on_gossip=self._on)
        self.client.wait_connected(20)

    def _on(self, body):
        for k, h in body.get("facts", ()):
            self.facts.add((bytes(k), h))

    def close(self):
        self.client.close()


def chain(fleet, n, *args):
    names = [f"n{i}" for i in range(1, n + 1)]
    fleet.start(names[0], *args)
    for prev, name in zip(names, names[1:]):
        fleet.start(name, "--peer", fleet.urls[prev], *args)
    return names


def hops_and_messages(fleet, names, origin, marks):
    """Relay hops from ``origin`` to each node (from the first delta that
    was new to it) and the delta messages sent to nodes after the marks."""
    parent, messages, dups = {}, 0, 0
    for name in names:
        for sender, facts, new in fleet.deltas(name, marks[name]):
            if facts == 0:
                continue
            messages += 1
            if new and name not in parent:
                parent[name] = sender
            elif not new:
                dups += 1
    depth = {origin: 0}

    def d(n, seen=()):
        if n not in depth:
            assert n not in seen, f"a cycle in the propagation tree at {n}"
            depth[n] = d(parent[n], seen + (n,)) + 1
        return depth[n]

    return {n: d(n) for n in names}, messages, dups


def test_five_processes_converge_through_gossip_beyond_the_chain(fleet):
    names = chain(fleet, 5, "--gossip-interval", "0.1", "--fanout", "2")
    obs = {n: Observer(fleet.urls[n]) for n in names}
    try:
        # warm-up: every node announces one fact and all five learn all five
        # (membership meanwhile adds learned links beyond the chain)
        warm = {}
        for n in names:
            with connect(fleet.urls[n]) as c:
                req = node_ops.double.request(1000 + int(n[1:]))
                assert c.evaluate(req).value == 2 * (1000 + int(n[1:]))
                warm[n] = req.key.digest
        want = {(warm[n], n) for n in names}
        wait_for(lambda: all(want <= o.facts for o in obs.values()),
                 "every node's first fact to reach all five")
        # the quiet fleet: measure one fact from the end of the chain
        marks = {n: fleet.log_size(n) for n in names}
        req = node_ops.double.request(7)
        with connect(fleet.urls["n5"]) as c:
            assert c.evaluate(req).value == 14
        fact = (req.key.digest, "n5")
        wait_for(lambda: all(fact in o.facts for o in obs.values()),
                 "n5's fact to reach all five nodes")
        depth, messages, dups = hops_and_messages(fleet, names, "n5", marks)
        print(f"\n5 processes, chain + fanout 2: hops {depth}, max {max(depth.values())}; "
              f"{messages} delta messages carried the fact ({dups} to a node that had it)")
        assert sorted(depth) == names and all(depth[n] >= 1 for n in names if n != "n5")
        # the chain alone would take 4 hops to n1; learned links shorten it
        assert max(depth.values()) <= 4
        assert messages >= 4
        # n1 fetches the reply from its holder (a learned link or the chain's),
        # or its home or the key's lease holder answers it
        with connect(fleet.urls["n1"]) as c:
            got = c.evaluate(req)
        assert got.value == 14 and got.source in ("peer:n5", "peer:n4", "peer:n3", "peer:n2",
                                                   "home", *(f"lease:{n}" for n in names[1:]))
    finally:
        for o in obs.values():
            o.close()


def test_a_chain_cut_in_the_middle_heals_when_the_node_returns(fleet):
    """--fanout 0: the chain is the only path. n3 is SIGKILLed; a fact
    announced on n5 stops at n4; n3 comes back (its own ledger, links to n2
    and n4) and the pulls on connect carry the fact on to n1."""
    names = chain(fleet, 5, "--gossip-interval", "0.1", "--fanout", "0")
    obs = {n: Observer(fleet.urls[n]) for n in names}
    try:
        fleet.procs["n3"].send_signal(signal.SIGKILL)
        fleet.procs["n3"].wait()
        req = node_ops.double.request(21)
        with connect(fleet.urls["n5"]) as c:
            assert c.evaluate(req).value == 42
        fact = (req.key.digest, "n5")
        wait_for(lambda: fact in obs["n4"].facts, "the fact to reach n4")
        # the partition: n1 and n2 have no path to n4 and n5
        assert fact not in obs["n2"].facts and fact not in obs["n1"].facts
        obs["n3"].close()
        fleet.start("n3", "--peer", fleet.urls["n2"], "--peer", fleet.urls["n4"],
                    "--gossip-interval", "0.1", "--fanout", "0")
        wait_for(lambda: fact in obs["n1"].facts and fact in obs["n2"].facts,
                 "the healed chain to carry the fact to n1")
        with connect(fleet.urls["n1"], scope="held") as c:
            with pytest.raises(fabric.ContentNotHeld):
                c.evaluate(req)  # n1 knows the holder; it holds nothing itself
    finally:
        for o in obs.values():
            o.close()


def test_a_partition_with_both_sides_alive_heals_to_the_union(fleet, tmp_path):
    """Two groups, {n1, n2} and {n3, n4, n5}, joined by one link (n3 -> n2;
    --fanout 0: the chain is the only path). The link is cut without
    stopping anyone: n3's --peer-lists file blocks n2 and SIGHUP reloads it
    (the link is closed, and not dialled while blocked). Each side learns a
    fact of its own; neither crosses. The file is emptied, SIGHUP again: the
    link comes back, the pulls on connect carry each side's fact across, and
    all five hold the union."""
    lists = tmp_path / "n3-lists.json"
    lists.write_text("{}")
    names = ["n1", "n2", "n3", "n4", "n5"]
    fast = ("--gossip-interval", "0.1", "--fanout", "0")
    fleet.start("n1", *fast)
    fleet.start("n2", "--peer", fleet.urls["n1"], *fast)
    fleet.start("n3", "--peer", fleet.urls["n2"], "--peer-lists", str(lists), *fast)
    fleet.start("n4", "--peer", fleet.urls["n3"], *fast)
    fleet.start("n5", "--peer", fleet.urls["n4"], *fast)
    obs = {n: Observer(fleet.urls[n]) for n in names}
    status = connect(fleet.urls["n3"])

    def bridge():
        [p] = [p for p in status.node_status()["peers"] if p["url"] == fleet.urls["n2"]]
        return p

    def announce(name, x):
        req = node_ops.double.request(x)
        with connect(fleet.urls[name]) as c:
            assert c.evaluate(req).value == 2 * x
        return (req.key.digest, name)

    try:
        # the bridge works: a fact from one end reaches the other
        before = announce("n1", 500)
        wait_for(lambda: all(before in o.facts for o in obs.values()), "n1's fact everywhere")
        assert bridge()["link"] == "connected"

        # cut: n3 blocks n2 (both stay up)
        lists.write_text('{"block": ["n2"]}')
        fleet.procs["n3"].send_signal(signal.SIGHUP)
        wait_for(lambda: bridge()["link"] == "not dialled: blocklisted", "the bridge to be cut")
        left, right = announce("n1", 501), announce("n5", 502)
        wait_for(lambda: left in obs["n2"].facts, "n1's new fact to reach n2")
        wait_for(lambda: right in obs["n3"].facts, "n5's new fact to reach n3")
        for n in ("n3", "n4", "n5"):
            assert left not in obs[n].facts, n
        for n in ("n1", "n2"):
            assert right not in obs[n].facts, n
        assert all(p.poll() is None for p in fleet.procs.values())  # nobody stopped

        # heal: the lists are open again
        lists.write_text("{}")
        fleet.procs["n3"].send_signal(signal.SIGHUP)
        wait_for(lambda: all({before, left, right} <= o.facts for o in obs.values()),
                 "every node to hold the union")
        p = bridge()
        assert p["link"] == "connected"
        # the cut was the lists' doing, not a failure of n2
        assert p["health"]["failures"] == 0 and not p["health"]["down"]
        assert all(p.poll() is None for p in fleet.procs.values())
    finally:
        status.close()
        for o in obs.values():
            o.close()
