"""Nodes as real `fabric serve` processes on loopback: a->b->c resolution,
gossip, a holder SIGKILLed mid-stream, a restart that re-announces its ledger."""

import signal

import pytest

import fabric
from fabric.node import Node, connect

import gates
import node_ops
from conftest import wait_for
from served import fleet, stop  # noqa: F401 (the fixture)


def test_three_processes_resolve_a_to_b_to_c(fleet):
    pc, c_url = fleet("c", "--home", "node_ops:home")
    pb, b_url = fleet("b", "--home", c_url)
    pa, a_url = fleet("a", "--home", b_url)
    req = node_ops.double.request(21)
    with connect(a_url) as a:
        first = a.evaluate(req)
        assert first.value == 42 and first.source == "home"
        assert a.evaluate(req).value == 42
    # every node on the way recorded it: each serves it as held content now
    for url, node in ((c_url, "c"), (b_url, "b"), (a_url, "a")):
        with connect(url, scope="held") as cl:
            assert cl.node == node
            assert cl.evaluate(req).value == 42
    # a key nobody holds is not computed for a held-only client
    with connect(b_url, scope="held") as cl:
        with pytest.raises(fabric.ContentNotHeld):
            cl.evaluate(node_ops.double.request(5))
    for p in (pa, pb, pc):
        stop(p)


def test_gossip_pushes_holdings_so_only_the_holder_is_asked(fleet, tmp_path):
    pc, c_url = fleet("c", "--home", "node_ops:home")
    d = Node(str(tmp_path / "d.ledger"), node_id="d", peers=[c_url],
             listen="127.0.0.1:0").start()
    try:
        wait_for(lambda: d.fabric.peers, "d to connect to c")
        req = node_ops.double.request(100)
        with connect(c_url) as c:
            assert c.evaluate(req).value == 200
        wait_for(lambda: d.fabric.holders.holds(req.key, "c"), "c's announce to reach d")
        got = d.fabric.evaluate(req)
        assert got.value == 200 and got.source == "peer:c"
        assert d.fabric.evaluate(req).source == "local"
    finally:
        d.stop()
        stop(pc)


def test_holder_killed_mid_stream_fails_the_stream_not_silently(fleet):
    pc, c_url = fleet("c", "--home", "node_ops:home")
    with connect(c_url) as c:
        s = c.stream(node_ops.first_then_hang.request("x"))
        assert next(s) == "first"
        pc.send_signal(signal.SIGKILL)
        pc.wait()
        with pytest.raises(fabric.FabricUnavailable):
            next(s)
        assert not s.done
        # and a new request fails at once while the node is gone
        with pytest.raises(fabric.FabricUnavailable):
            c.evaluate(node_ops.double.request(1))


def test_restart_from_the_ledger_reannounces_holdings(fleet):
    """c computes and records a reply, stops (SIGTERM), and is started again
    from the same ledger without a home (held content only). d, a `fabric
    serve` process with a fresh ledger, no home and c as its peer, learns
    c's replayed holdings by gossip and resolves the request from c (the
    only place it can come from), then holds it itself."""
    pc, c_url = fleet("c", "--home", "node_ops:home")
    req = node_ops.double.request(7)
    with connect(c_url) as c:
        assert c.evaluate(req).value == 14
    stop(pc)
    pc2, c_url2 = fleet("c")  # same cassette, no home now: held content only
    pd, d_url = fleet("d", "--peer", c_url2)
    with connect(d_url) as d:
        assert d.node == "d"
        # d holds nothing of its own: a fact in its holding index is c's replayed one
        wait_for(lambda: d.node_status()["holdings"]["facts"] >= 1,
                 "c's replayed holdings to reach d")
        got = d.evaluate(req)
        assert got.value == 14 and got.source == "peer:c", got.source
    with connect(d_url, scope="held") as d:  # d recorded what it resolved
        assert d.evaluate(req).value == 14
    for p in (pd, pc2):
        stop(p)


def test_sigterm_drains_a_stream_in_flight_then_exits(fleet, tmp_path):
    pc, c_url = fleet("c", "--home", "node_ops:home", "--log-level", "warning")
    gate = tmp_path / "gate"
    with connect(c_url) as c:
        s = c.stream(node_ops.gated_count.request(50, str(gate)))
        assert next(s) == 0  # the stream is in flight, its producer held at the gate
        pc.send_signal(signal.SIGTERM)
        for _ in range(100):  # bounded: the node logs that it drains
            line = pc.stderr.readline()
            if "draining" in line or not line:
                break
        assert "draining 1 request" in line
        # a new request is refused while the node drains
        with pytest.raises(fabric.FabricUnavailable):
            c.evaluate(node_ops.double.request(3))
        gates.open_gate(str(gate))
        assert list(s) == list(range(1, 50)) and s.done
    assert pc.wait(20) == 0
    # the drained stream was recorded before the cassette closed: a restart holds it
    pc2, c_url2 = fleet("c")
    with connect(c_url2, scope="held") as c:
        assert list(c.stream(node_ops.gated_count.request(50, str(gate)))) == list(range(50))
    stop(pc2)
