"""The status op and ``fabric status URL``: real nodes on loopback, the
command line as a real process, the op's frame against its golden vector,
and connections from many threads counted against ``max_connections``."""

import json
import os
import re
import socket
import threading

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.governor import PeerGovernor
from fabric.node import NodeLimits, connect, protocol as P
from fabric.node.status import format_status

import node_ops
from certs import make_certs
from conftest import end_process, hello_bytes, read_frames, started_nodes, wait_for
from served import serve
from test_cli import run

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden", "protocol_status.json")
TOKEN = "t0ken-of-the-operator-0123456789"


@pytest.fixture
def node(tmp_path):
    """``node(name=None, **Node kwargs)``: started nodes, no home unless given."""
    with started_nodes(tmp_path) as make:
        yield make


def test_status_counts_what_the_node_did(node):
    n = node("a", home=fabric.LocalFabric())
    with connect(n.url) as c:
        assert c.evaluate(node_ops.double.request(4)).value == 8   # computed
        assert c.evaluate(node_ops.double.request(4)).value == 8   # held: a hit
        assert list(c.stream(node_ops.count.request(3))) == [0, 1, 2]
        st = c.node_status()
    assert st["node"] == "a" and st["url"] == n.url and st["incarnation"] == 0
    assert st["protocol"] == list(P.PROTOCOL_VERSION)
    assert st["uptime"] >= 0
    # the main connection and this thread's own one, both anonymous
    assert st["connections"]["open"] == 2
    assert st["connections"]["by_principal"] == {"anonymous": 2}
    r = st["requests"]
    assert r["received"] == 3 and r["replied"] == 3 and r["errors"] == 0
    assert r["running"] == 0 and r["queued"] == 0
    assert st["fabric"]["home_computes"] == 2  # the value and the stream
    assert st["counters"]["hits_inline"] == 1
    assert st["fabric"]["local_hits"] + st["served"]["served"] == 1
    assert st["cassette"]["records"] >= 2 and st["cassette"]["keys"] == 2
    assert "path" not in st["cassette"]  # the node's disk layout is not shown
    assert st["holdings"]["keys"] == 2
    assert st["bytes"]["in"] > 0 and st["bytes"]["out"] > 0
    assert st["peers"] == []
    assert st["counters"]["status_requests"] == 1
    # Node.status() from another thread gives the same map (the counters moved on)
    local = n.status()
    assert local["node"] == "a" and local["requests"]["received"] == 3
    text = format_status(st)
    assert "node a (incarnation 0)" in text and "3 received: 3 replied" in text


def test_status_shows_an_open_stream_and_its_credit(node):
    go_on = threading.Event()

    @fabric.op("node.test.status.slow_stream")
    def slow(n):
        yield "first"
        assert go_on.wait(60)
        yield from range(n)

    n = node("s", home=fabric.LocalFabric())
    with connect(n.url) as c:
        s = iter(c.stream(slow.request(3)))
        try:
            assert next(s) == "first"  # the op now waits: the stream stays open
            st = c.node_status()
            assert st["streams"]["open"] == 1 and st["requests"]["running"] == 1
            assert 0 < st["streams"]["credit_remaining"] <= n.limits.window
            assert "1 open" in format_status(st).split("streams")[1]
        finally:
            go_on.set()
        assert list(s) == [0, 1, 2]
        wait_for(lambda: c.node_status()["streams"]["open"] == 0, "the stream to end")
        st = c.node_status()
    assert st["requests"]["running"] == 0 and st["requests"]["replied"] == 1
    assert isinstance(st["gossip"], dict) and isinstance(st["leases"], dict)


def test_status_shows_a_peer_down_in_the_governor(node):
    a = node("a", home=fabric.LocalFabric())
    b = node("b", peers=[a.url], governor=PeerGovernor(down_after=1))
    with connect(b.url) as c:
        st = c.node_status()
        (p,) = st["peers"]
        assert (p["url"], p["node"], p["link"]) == (a.url, "a", "connected")
        a.stop()
        wait_for(lambda: c.node_status()["peers"][0]["link"] != "connected",
                 "b to see its link to a go")
        with pytest.raises(fabric.FabricError):
            c.evaluate(node_ops.double.request(99))  # a cannot be asked; b has no home
        st = c.node_status()
    (p,) = st["peers"]
    assert p["health"]["failures"] >= 1 and p["health"]["down"] is True
    assert st["fabric"]["peers_down"] == 1
    assert "a " + a.url in format_status(st) and "DOWN" in format_status(st)


def test_status_needs_an_authenticated_connection(node):
    n = node(tokens={"ops": TOKEN})
    with pytest.raises(P.Unauthenticated):
        connect(n.url, token="wrong-token-0000000000", reconnect=False)
    with connect(n.url, token=TOKEN) as c:
        st = c.node_status()
    assert st["connections"]["by_principal"] == {"ops": 1}
    assert TOKEN not in json.dumps(st)


def test_status_op_on_stream_0_is_a_protocol_error(node):
    n = node()
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes())
        s.sendall(fabric.StreamControl.stats(0).to_frame(
            ["stream.stats", "stream.remote.network"]).encode())
        frames = read_frames(s)
    assert [f.kind for f in frames] == [FrameKind.HELLO, FrameKind.ERROR]
    body = frames[-1].decode_payload()
    assert body["kind"] == "ProtocolError" and "fresh stream id" in body["message"]


def test_status_request_frame_matches_its_golden_vector():
    with open(GOLDEN) as f:
        golden = json.load(f)
    frame = fabric.StreamControl.stats(1).to_frame(["stream.stats", "stream.remote.network"])
    assert frame.encode().hex() == golden["frames"]["status_request"]
    # and the reply's first frame (the payload after it is the status map)
    start = P.encoder().encode_value(FrameKind.STREAM_START, {"metadata": {"source": "status"}},
                                     stream_id=1)
    assert start.hex() == golden["frames"]["status_reply_start"]


def test_cli_status_readable_and_json(node):
    n = node("cli", home=fabric.LocalFabric())
    with connect(n.url) as c:
        c.evaluate(node_ops.double.request(21))
    r = run("status", n.url)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"node cli (incarnation 0) at {n.url}\n")
    assert re.search(r"^cassette +\d+ records, 1 keys", r.stdout, re.M), r.stdout
    r = run("status", n.url, "--json")
    assert r.returncode == 0, r.stderr
    st = json.loads(r.stdout)
    assert st["node"] == "cli" and st["fabric"]["home_computes"] == 1


def test_cli_status_with_a_token_file(node, tmp_path):
    n = node(tokens={"ops": TOKEN})
    tf = tmp_path / "token"
    tf.write_text(TOKEN + "\n")
    r = run("status", n.url, "--token-file", str(tf), "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["connections"]["by_principal"] == {"ops": 1}
    r = run("status", n.url, "--token", "not-the-token-000000000")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1 and "bearer token was refused" in r.stderr
    assert "not-the-token" not in r.stderr


def test_cli_status_of_an_unreachable_node_is_one_line_and_exit_2():
    with socket.socket() as s:  # a port nothing listens on (bound, never listening)
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        r = run("status", f"fabric://127.0.0.1:{port}", "--timeout", "5")
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"fabric status: error: cannot get the status of "
                               f"fabric://127.0.0.1:{port}")
    r = run("status", "http://127.0.0.1:1")
    assert r.returncode == 2 and "fabric://HOST:PORT" in r.stderr


# ---- every connection counts towards max_connections ------------------------------

def test_connections_from_threads_count_towards_max_connections(node):
    n = node(home=fabric.LocalFabric(), limits=NodeLimits(max_connections=3))
    c = connect(n.url)  # connection 1: the client's main one
    ready = [threading.Event(), threading.Event()]
    release = threading.Event()
    out = {}

    def worker(i):
        out[i] = c.evaluate(node_ops.double.request(i)).value  # its own connection
        ready[i].set()
        release.wait(60)  # the thread lives on, and so does its connection

    ts = [threading.Thread(target=worker, args=(i,)) for i in range(2)]
    try:
        for t in ts:
            t.start()
        for e in ready:
            assert e.wait(60)
        assert out == {0: 0, 1: 2}
        assert n.status()["connections"]["open"] == 3
        # a third thread's connection is the fourth: refused, and it says why
        err = {}

        def third():
            try:
                c.evaluate(node_ops.double.request(7))
            except Exception as exc:  # noqa: BLE001 - what the test inspects
                err["exc"] = exc

        t3 = threading.Thread(target=third)
        t3.start()
        t3.join(60)
        exc = err["exc"]
        assert isinstance(exc, P.LimitExceeded), repr(exc)
        assert "max_connections=3" in str(exc)
        st = n.status()
        assert st["connections"]["refused"] == 1 and st["connections"]["open"] == 3
        # and from asyncio: the loop's own connection is counted and refused too
        import asyncio
        with pytest.raises(P.LimitExceeded, match="max_connections=3"):
            asyncio.run(c.aevaluate(node_ops.double.request(8)))
        assert n.status()["connections"]["refused"] == 2
    finally:
        release.set()
        for t in ts:
            t.join(60)
        c.close()
    # once the client closed, its connections are gone and new ones are served
    wait_for(lambda: n.status()["connections"]["open"] == 0, "the connections to close")
    with connect(n.url) as c2:
        assert c2.evaluate(node_ops.double.request(7)).value == 14


def test_cli_status_over_mutual_tls(node, tmp_path):
    from fabric.node.auth import server_tls

    make_certs(tmp_path)
    n = node(tls=server_tls(str(tmp_path / "server.pem"), str(tmp_path / "server.key"),
                            str(tmp_path / "ca.pem")))
    assert n.url.startswith("fabrics://")
    r = run("status", n.url, "--json", "--tls-ca", str(tmp_path / "ca.pem"),
                   "--tls-cert", str(tmp_path / "alice.pem"),
                   "--tls-key", str(tmp_path / "alice.key"))
    assert r.returncode == 0, r.stderr
    (principal,) = json.loads(r.stdout)["connections"]["by_principal"]
    assert "alice" in principal
    # without a client certificate the node refuses: one line, exit status 2
    r = run("status", n.url, "--tls-ca", str(tmp_path / "ca.pem"))
    assert r.returncode == 2 and r.stdout == "" and r.stderr.count("\n") == 1, r.stderr
    assert r.stderr.startswith(f"fabric status: error: cannot get the status of {n.url}")


def test_fabric_serve_has_a_peer_governor_set_by_its_flags(tmp_path):
    """A blocklisted peer is never dialled nor asked, though gossip (relayed
    by m) names it the holder; the settings and the refused link show in
    fabric status."""
    a, a_url = serve(tmp_path, "a", "--home", "node_ops:home")
    try:
        m, m_url = serve(tmp_path, "m", "--peer", a_url)
        b, b_url = serve(tmp_path, "b", "--peer", m_url, "--peer", a_url, "--block-peer", "a",
                          "--block-peer", a_url, "--down-after", "2", "--backoff-base", "1",
                          "--backoff-cap", "4")
        try:
            req = node_ops.double.request(7)
            with connect(a_url) as ca:
                assert ca.evaluate(req).value == 14
            with connect(b_url) as cb:
                wait_for(lambda: cb.node_status()["holdings"]["keys"] >= 1,
                         "a's holding to reach b by gossip, through m")
                with pytest.raises(fabric.NoHolderError):  # m does not hold it; a is not asked
                    cb.evaluate(req)
            r = run("status", b_url, "--json")
            assert r.returncode == 0, r.stderr
            st = json.loads(r.stdout)
            assert st["governor"] == {"allow": None, "block": ["a", a_url], "down_after": 2,
                                      "backoff_base": 1.0, "backoff_cap": 4.0, "jitter": 0.5}
            assert st["fabric"]["peer_hits"] == 0
            [pa] = [p for p in st["peers"] if p["url"] == a_url]
            assert pa["link"] == "not dialled: blocklisted" and pa["health"] is None
            r = run("status", b_url)
            assert ("governor     open, blocklist a, " + a_url + "; down after 2 failures in "
                    "a row; backoff 1 s doubling to 4 s") in r.stdout, r.stdout
            assert "[not dialled: blocklisted]" in r.stdout, r.stdout
        finally:
            end_process(b)
            end_process(m)
        # The control: the same fleet without the blocklist gets it from a.
        c, c_url = serve(tmp_path, "c", "--peer", a_url)
        try:
            with connect(c_url) as cc:
                wait_for(lambda: cc.node_status()["holdings"]["keys"] >= 1,
                         "a's holding to reach c by gossip")
                got = cc.evaluate(req)
                assert got.value == 14
                assert cc.node_status()["fabric"]["peer_hits"] == 1
        finally:
            end_process(c)
    finally:
        end_process(a)


def test_fabric_serve_refuses_bad_governor_settings(tmp_path):
    for args, says in ((["--down-after", "0"], "down_after must be an int >= 1"),
                       (["--backoff-base", "5", "--backoff-cap", "1"], "below backoff_base"),
                       (["--backoff-base", "-1"], "backoff_base")):
        r = run("serve", "--listen", "127.0.0.1:0",
                       "--cassette", str(tmp_path / "x.ledger"), *args)
        assert r.returncode == 2, r
        (line,) = r.stderr.strip().splitlines()
        assert line.startswith("fabric serve: error: peer governor: ") and says in line, line
        assert not (tmp_path / "x.ledger").exists()


def test_a_status_not_of_this_form_is_a_value_error_pointing_at_json(node):
    """``fabric status`` prints another node's map: one of another version
    (or made up) says what it lacks and where to see it whole, not a bare
    KeyError from the middle of the formatting."""
    st = node().status()
    for broken, what in [({}, "no 'connections'"),
                         ({**st, "requests": 7}, "not subscriptable"),
                         ({**st, "protocol": []}, "index out of range"),
                         ({**st, "peers": [{"url": None}]}, "no 'health'")]:
        with pytest.raises(ValueError, match=f"a node status this version cannot print "
                                             f"\\(.*{what}.*\\); `fabric status --json`"):
            format_status(broken)
    assert format_status(st).startswith(f"node {st['node']} (incarnation 0)")
