"""fabric.Node and fabric.connect in this process, over real loopback sockets:
auth (tokens, mutual TLS), grants, version mismatch, Secret / SecretRef,
cancel reaching the producer, credit, limits and malformed input."""

import asyncio
import json
import os
import socket
import ssl
import subprocess
import sys
import threading

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.node import NodeLimits, connect, protocol as P
from fabric.node.client import NodeClient
from fabric.node.loops import loop_factory, loop_name

import node_ops
from certs import make_certs
from conftest import hello_bytes, read_frames, wait_for

TOKEN = "t0ken-for-alice-0123456789"


def raw_socket(n):
    s = socket.create_connection(n.address, timeout=30)
    return s


# ---- the basics ------------------------------------------------------------------

@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_evaluate_stream_and_async_through_a_client(node, loop):
    """The same on both event loops: the node's (Node(loop=...)) and the
    asyncio caller's (aevaluate runs on the caller's loop)."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    n = node(loop=loop)
    assert n.event_loop == loop
    with connect(n.url) as c:
        assert c.node == n.node_id and c.status == "connected"
        assert c.evaluate(node_ops.double.request(4)).value == 8
        assert list(c.stream(node_ops.count.request(5))) == [0, 1, 2, 3, 4]

        async def main():
            assert loop_name(asyncio.get_running_loop()) == loop
            r = await c.aevaluate(node_ops.double.request(5))
            again = await c.aevaluate(node_ops.double.request(5))  # now held: a hit
            items = [x async for x in c.astream(node_ops.count.request(3))]
            return r.value, again.value, items
        with asyncio.Runner(loop_factory=loop_factory(loop)[0]) as runner:
            assert runner.run(main()) == (10, 10, [0, 1, 2])
    assert n.stats()["replies"] == 5


_NO_UVLOOP = "import sys; sys.modules['uvloop'] = None\n"  # as if it were not installed


def test_import_fabric_does_not_import_uvloop():
    """uvloop is a dependency for the node's loop only: ``import fabric``
    (a cassette in a pytest suite, say) never pays for importing it."""
    r = subprocess.run([sys.executable, "-c", "import sys, fabric, fabric.node\n"
                        "print('uvloop' in sys.modules)"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "False\n"


def test_the_uvloop_loop_without_uvloop_is_a_clear_error(tmp_path):
    """Node(loop="uvloop") and fabric serve --loop uvloop say what is missing
    and how to get it, before anything starts; auto falls back to asyncio."""
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(
        os.path.abspath(__file__))))
    code = _NO_UVLOOP + """
import fabric
from fabric.node import Node
try:
    Node(sys.argv[1], loop="uvloop")
except ImportError as exc:
    print("ImportError:", exc)
n = Node(sys.argv[1], listen="127.0.0.1:0").start()
print("auto:", n.event_loop)
n.stop()
try:
    Node(sys.argv[1], loop="libuv")
except ValueError as exc:
    print("ValueError:", exc)
"""
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path / "a.ledger")],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith("ImportError: event loop 'uvloop' was asked for, but uvloop "
                               "cannot be imported") and "pip install 'uvloop>=0.19'" in lines[0]
    assert lines[1] == "auto: asyncio"
    assert lines[2] == "ValueError: event loop 'libuv' is not one of auto, asyncio, uvloop"
    r = subprocess.run([sys.executable, "-c", _NO_UVLOOP + "from fabric.cli import main; "
                        "sys.exit(main(sys.argv[1:]))", "serve", "--listen", "127.0.0.1:0",
                        "--cassette", str(tmp_path / "x.ledger"), "--loop", "uvloop"],
                       capture_output=True, text=True, timeout=120, env=env)
    assert r.returncode == 2, r
    (line,) = r.stderr.strip().splitlines()
    assert line.startswith("fabric serve: error: --loop uvloop: event loop 'uvloop' was "
                           "asked for") and "pip install 'uvloop>=0.19'" in line, line
    assert r.stdout == "" and not (tmp_path / "x.ledger").exists()


def test_a_reply_larger_than_a_frame_travels_in_several(node):
    n = node()
    with connect(n.url) as c:
        r = c.evaluate(node_ops.double.request("ab" * 400_000))
        assert r.value == "ab" * 800_000


def test_plugs_into_content_peer_and_relay_fabric(node, cassette_factory):
    n = node()
    req = node_ops.double.request(9)
    with connect(n.url) as c:
        c.evaluate(req)  # n now holds it
        with connect(n.url, scope="held") as held:
            b = fabric.ContentAddressedFabric("b", cassette_factory(),
                                              peers=[fabric.ContentPeer(n.node_id, held)])
            assert b.evaluate(req).source == f"peer:{n.node_id}"
        relay = c.relay()
        assert relay.status == fabric.RelayStatus.CONNECTED
        assert relay.evaluate(node_ops.double.request(10)).value == 20
    assert relay.status == fabric.RelayStatus.DISCONNECTED
    with pytest.raises(fabric.FabricUnavailable):
        relay.evaluate(req)


def test_in_flight_request_fails_fast_when_the_node_goes(node):
    gate = threading.Event()

    @fabric.op("node.test.block")
    def block():
        gate.wait(60)
        return 1

    n = node()
    c = connect(n.url, timeout=60, reconnect=False)
    box = {}

    def call():
        try:
            c.evaluate(block.request())
        except Exception as exc:
            box["exc"] = exc

    t = threading.Thread(target=call)
    t.start()
    wait_for(lambda: n.stats().get("requests", 0) >= 1 or not t.is_alive(),
             "the request to reach the node")
    assert t.is_alive(), box  # (the call has not failed before the node went)
    n._loop.call_soon_threadsafe(n.request_stop)  # stop without waiting for the op
    t.join(30)
    gate.set()
    n.stop()
    assert isinstance(box.get("exc"), fabric.FabricUnavailable)
    c._task.result(30)  # the main connection noticed too (reconnect=False: it ended)
    assert c.status == "disconnected"
    c.close()


# ---- auth, grants, versions --------------------------------------------------------

def test_tokens(node):
    n = node(tokens={"alice": TOKEN})
    with pytest.raises(P.Unauthenticated):
        connect(n.url, token="wrong-token-wrong-token")
    with pytest.raises(P.Unauthenticated):
        connect(n.url)
    with connect(n.url, token=TOKEN) as c:
        assert c.principal == "alice"
        assert c.evaluate(node_ops.double.request(1)).value == 2
    assert n.stats()["auth_failures"] == 2


def test_grants_denial_server_side_and_client_side(node, tmp_path):
    grants = tmp_path / "grants.json"
    grants.write_text(json.dumps({"alice": ["gpu"], "bob": []}))
    n = node(tokens={"alice": TOKEN, "bob": "bob-token-0123456789abc"}, grants=str(grants))
    req = node_ops.double.request(3)
    with connect(n.url, token="bob-token-0123456789abc") as bob:
        with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
            bob.evaluate(req)  # refused by the server: no node.compute
        # the client checks too: the server said bob lacks gpu
        with pytest.raises(fabric.CapabilityDenied, match="gpu"):
            bob.evaluate(node_ops.gpu.request(1), grants=["gpu"])
    assert n.stats()["denied_compute"] == 1
    with connect(n.url, token=TOKEN) as alice:
        with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
            alice.evaluate(req)
        # held content is served to any authenticated peer
    with connect(n.url, token=TOKEN, scope="held") as alice:
        with pytest.raises(fabric.ContentNotHeld):
            alice.evaluate(req)


def test_version_mismatch_names_both_versions(node):
    n = node()
    with pytest.raises(P.VersionMismatch, match=r"2\.0.*1\.0"):
        c = NodeClient(n.url, proto=(2, 0), reconnect=False)
        try:
            c.wait_connected(30)
        finally:
            c.close()


def test_the_server_is_authoritative_for_a_client_that_claims_grants_it_lacks(node):
    """A client that skips its own check and claims ``gpu`` (raw frames: a
    lying peer) is refused by the node, which checks the principal's grants."""
    from fabric.control import StreamControl
    n = node(tokens={"carol": TOKEN}, grants={"carol": ["node.compute"]})
    meta = P.open_metadata(node_ops.gpu.request(1), want="value", scope="compute",
                           grants=["gpu"], timeout=10.0)
    ctl = StreamControl.open(1, meta).to_frame(["stream.open", "stream.remote.network"])
    with raw_socket(n) as s:
        s.sendall(hello_bytes(token=TOKEN))
        s.sendall(P.encoder().encode(FrameKind.CONTROL, ctl.payload, stream_id=1))
        frames = read_frames(s, until_close=False)
        for _ in range(10):  # the HELLO and the ERROR: a read or two (bounded)
            if any(f.kind == FrameKind.ERROR for f in frames):
                break
            more = read_frames(s, until_close=False)
            assert more, f"the node closed without an ERROR: {frames}"
            frames += more
    hello, err = frames[0], next(f for f in frames if f.kind == FrameKind.ERROR)
    assert hello.decode_payload()["grants"] == ["node.compute"]
    body = err.decode_payload()
    assert err.stream_id == 1 and body["kind"] == "CapabilityDenied", body
    assert "requires capabilities gpu not granted" in body["message"]


def test_a_server_with_a_newer_major_version_is_refused_naming_both(node):
    """The other way round: the client refuses a server HELLO of protocol 2.3."""
    srv = socket.create_server(("127.0.0.1", 0))
    got = {}

    def future_node():
        conn, _ = srv.accept()
        with conn:
            got["hello"] = read_frames(conn, until_close=False)[0]
            conn.sendall(P.encoder().encode_value(FrameKind.HELLO, P.hello(
                node="future", max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW,
                principal="anonymous", grants=[], proto=(2, 3))))
            got["after"] = conn.recv(1 << 16)  # the client hangs up

    t = threading.Thread(target=future_node, daemon=True)
    t.start()
    try:
        with pytest.raises(P.VersionMismatch,
                           match=r"2\.3, this client speaks 1\.0: major versions differ"):
            connect(f"fabric://127.0.0.1:{srv.getsockname()[1]}", timeout=30,
                    reconnect=False)
        t.join(30)
        assert got["hello"].decode_payload()["proto"] == list(P.PROTOCOL_VERSION)
        assert got["after"] == b""
    finally:
        srv.close()


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return make_certs(tmp_path_factory.mktemp("certs"))


def test_tls_matrix(node, certs, caplog):
    import logging
    from fabric.node.auth import client_tls, server_tls
    caplog.set_level(logging.DEBUG, logger="fabric.node")  # a refusal's why: WARNING or DEBUG
    n = node(tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                            str(certs / "ca.pem")))
    url = n.url
    assert url.startswith("fabrics://")
    ca = str(certs / "ca.pem")

    def attempt(cert=None, trust=ca):
        tls = client_tls(trust, None if cert is None else str(certs / f"{cert}.pem"),
                         None if cert is None else str(certs / f"{cert}.key"))
        return connect(url, tls=tls, timeout=30, reconnect=False)

    # refused by the node: no client certificate, another CA's, an expired one;
    # the client is told one of the three (TLS 1.3: the node's alert comes
    # after the client's handshake, and may be lost to the reset), the node
    # logs which one (OpenSSL's words)
    refusals = {None: "PEER_DID_NOT_RETURN_A_CERTIFICATE",
                "mallory": "unable to get local issuer certificate",
                "old": "certificate has expired"}
    for i, (cert, why) in enumerate(refusals.items()):
        caplog.clear()
        with pytest.raises(fabric.FabricUnavailable, match="refuses the client's certificate"):
            attempt(cert).close()

        def said():
            return [r.getMessage() for r in caplog.records
                    if "TLS handshake failed" in r.getMessage()]
        wait_for(said, "the node to log the refusal")  # (logged after it was counted)
        assert len(said()) == 1 and why in said()[0], (cert, said())
        assert n.stats()["tls_refused"] == i + 1
    # refused by the client: the node's certificate is not of the CA it trusts
    with pytest.raises((fabric.FabricUnavailable, ssl.SSLError),
                       match="certificate verify failed"):
        attempt("alice", trust=str(certs / "otherca.pem")).close()
    with attempt("alice") as c:
        assert c.principal == "CN=alice"
        assert c.evaluate(node_ops.double.request(2)).value == 4

        async def over_tls():  # from asyncio: the channel keeps a TLS transport
            from fabric.node.client import _SocketWriter
            assert (await c.aevaluate(node_ops.double.request(6))).value == 12
            assert not isinstance(c._last_achannel.transport, _SocketWriter)
            return (await c.aevaluate(node_ops.double.request(7))).value

        assert asyncio.run(over_tls()) == 14
        # a held stream over TLS: items above the transport's write buffer
        # limits (the sender waits for it to drain between items)
        held = node_ops.count.request(777)
        _record(n, held, [[0, bytes([i]) * 300_000] for i in range(6)])
        assert list(c.stream(held)) == [bytes([i]) * 300_000 for i in range(6)]


def test_a_plain_url_to_a_tls_node_says_it_looks_like_one(node, certs):
    """fabric:// to a node that speaks TLS (here mutual TLS): the node closes
    at the handshake, and the error says it looks like a TLS node and which
    URL to use, not only 'closed the connection'."""
    from fabric.node.auth import server_tls
    n = node(tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                            str(certs / "ca.pem")))
    port = n.address[1]
    with pytest.raises(fabric.FabricUnavailable,
                       match=rf"looks like a TLS node \(use fabrics://127.0.0.1:{port}"):
        connect(f"fabric://127.0.0.1:{port}", timeout=10, reconnect=False)


def test_a_node_that_closes_at_the_handshake_is_not_called_tls():
    """A listener that accepts and closes (no TLS) is not said to be a TLS node."""
    srv = socket.create_server(("127.0.0.1", 0))
    stop = threading.Event()

    def accept_and_close():
        while not stop.is_set():
            try:
                conn, _ = srv.accept()
            except OSError:
                return
            conn.close()

    t = threading.Thread(target=accept_and_close, daemon=True)
    t.start()
    try:
        with pytest.raises(fabric.FabricUnavailable,
                           match="closed the connection|reset by peer") as e:
            connect(f"fabric://127.0.0.1:{srv.getsockname()[1]}", timeout=10,
                    reconnect=False)
        assert "TLS" not in str(e.value)
    finally:
        stop.set()
        srv.shutdown(socket.SHUT_RDWR)  # wakes the accept
        srv.close()
        t.join(10)


# ---- secrets -----------------------------------------------------------------------

def test_a_secret_is_refused_for_remote_compute(node):
    n = node()
    with connect(n.url) as c:
        with pytest.raises(fabric.CapabilityDenied, match=r"SecretRef\(name\)"):
            c.evaluate(node_ops.reveal.request(fabric.Secret("hunter2")))
    assert n.stats().get("requests", 0) == 0  # nothing was sent


def test_a_secret_ref_is_resolved_on_the_computing_node(node, tmp_path):
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"db-password": "hunter22"}))
    n = node(secrets=str(secrets), grants={"*": ["node.compute", "secret:db-password"]})
    ref = fabric.SecretRef("db-password")
    req = node_ops.reveal.request(ref)
    assert req.key == node_ops.reveal.request(["fabric.SecretRef", "db-password"]).key
    with connect(n.url) as c:
        assert c.evaluate(req).value == "len=8"
        with pytest.raises(fabric.CapabilityDenied, match="secret:other"):
            c.evaluate(node_ops.reveal.request(fabric.SecretRef("other")))
    raw = bytes(n.cassette.get_raw(req.key))
    assert b"hunter22" not in raw


def test_a_secret_ref_is_resolved_from_the_computing_nodes_environment(node, tmp_path,
                                                                       monkeypatch):
    """FABRIC_SECRET_<NAME> (upper-cased, - and . as _) on the computing
    node; it comes before the secrets file's entry of the same name."""
    monkeypatch.setenv("FABRIC_SECRET_API_KEY_V2", "from-the-env")
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"api-key.v2": "file"}))
    n = node(secrets=str(secrets), grants={"*": ["node.compute", "secret:api-key.v2"]})
    with connect(n.url) as c:
        r = c.evaluate(node_ops.reveal.request(fabric.SecretRef("api-key.v2")))
        assert r.value == "len=12"  # len("from-the-env"), not len("file")
    monkeypatch.delenv("FABRIC_SECRET_API_KEY_V2")
    n2 = node(grants={"*": ["node.compute", "secret:api-key.v2"]})  # no file, no env
    with connect(n2.url) as c:
        with pytest.raises(fabric.CapabilityDenied, match="no secret named 'api-key.v2'"):
            c.evaluate(node_ops.reveal.request(fabric.SecretRef("api-key.v2")))


@fabric.op("node.test.secret_places")
def secret_places(in_set, in_frozenset, as_key, *, nested):
    """Where each argument's SecretRef arrived: resolved (a Secret) or not."""
    def kinds(values):
        return sorted(type(v).__name__ for v in values)
    return [kinds(in_set), kinds(in_frozenset), kinds(as_key), kinds(nested[0]),
            sorted(len(v.reveal()) for v in (*in_set, *as_key) if isinstance(v, fabric.Secret))]


def test_a_secret_ref_in_a_set_or_a_maps_key_is_resolved_on_the_computing_node(node,
                                                                                tmp_path):
    """Sets and map keys travel too (an array in them decodes as a tuple):
    the node resolves the SecretRef there as in a list, where the op saw a
    bare ("fabric.SecretRef", name) tuple before."""
    n = node(secrets={"db": "hunter22"}, grants={"*": ["node.compute", "secret:db"]})
    ref = fabric.SecretRef("db")
    req = secret_places.request({ref}, frozenset([ref, 1]), {ref: 1}, nested=[(ref, 2)])
    with connect(n.url) as c:
        assert c.evaluate(req).value == [["Secret"], ["Secret", "int"], ["Secret"],
                                         ["Secret", "int"], [8, 8]]
        with pytest.raises(fabric.CapabilityDenied, match="secret:other"):
            c.evaluate(secret_places.request(set(), frozenset([fabric.SecretRef("other")]),
                                             {}, nested=[()]))
    assert b"hunter22" not in bytes(n.cassette.get_raw(req.key))


# ---- streams: cancel, credit -------------------------------------------------------

def test_cancel_reaches_the_producing_op(node):
    closed = threading.Event()
    produced = []

    @fabric.op("node.test.endless")
    def endless():
        try:
            i = 0
            while i < 10_000_000:
                produced.append(i)
                yield bytes(1024)
                i += 1
        finally:
            closed.set()

    window = 64 * 1024
    n = node(limits=NodeLimits(window=window, max_frame=window))
    with connect(n.url, window=window) as c:
        s = c.stream(endless.request())
        assert len(next(s)) == 1024
        s.close()
        assert closed.wait(30), "the producer was not closed"
    assert n.stats()["cancels"] == 1
    # credit kept the producer near the consumer: no grant was sent (one item
    # taken), so at most a window of items went ahead, and one waited for credit
    assert len(produced) <= window // 1024 + 1, len(produced)


def test_cancel_reaches_an_async_generator_op(node):
    closed = threading.Event()

    @fabric.op("node.test.aendless")
    async def aendless():
        try:
            for i in range(10_000_000):
                yield i
                await asyncio.sleep(0)
        finally:
            closed.set()

    n = node()
    with connect(n.url) as c:
        s = c.stream(aendless.request())
        assert next(s) == 0
        s.close()
        assert closed.wait(30), "the async producer was not cancelled"
    assert n.stats()["cancels"] == 1


def _open_frame(sid, req, want):
    """A raw CONTROL open of ``req`` on stream ``sid`` (``want``: "stream" or "value")."""
    from fabric.control import StreamControl
    meta = P.open_metadata(req, want=want, scope="compute", grants=[], timeout=None)
    ctl = StreamControl.open(sid, meta).to_frame(["stream.open", "stream.remote.network"])
    return P.encoder().encode(FrameKind.CONTROL, ctl.payload, stream_id=sid)


@pytest.mark.parametrize("kind", ["generator", "async generator"])
def test_cancel_closes_the_producer_before_the_node_answers_what_follows(node, kind):
    """Cancel reaches the producer within one round trip, shown by order, not
    time: a stream waits for credit (its producer suspended at a yield), and
    the client writes its cancel and, behind it in the same write, an
    evaluate. The node writes the cancel's ERROR only once the producer was
    closed (its ``finally`` ran), and with one slot the evaluate runs only
    once the cancelled stream's task ended: its reply follows the close too.
    (A PING or a ``stats`` is answered from the read callback at once, before
    the cancelled task runs: they are no such round trip.)"""
    from fabric.control import StreamControl
    events = []

    @fabric.op("node.test.cancel_order_gen")
    def gen():
        try:
            for _ in range(10_000):
                yield bytes(1000)
        except BaseException as exc:
            events.append(type(exc).__name__)
            raise
        finally:
            events.append("closed")

    @fabric.op("node.test.cancel_order_agen")
    async def agen():
        try:
            for _ in range(10_000):
                yield bytes(1000)
        except BaseException as exc:
            events.append(type(exc).__name__)
            raise
        finally:
            events.append("closed")

    @fabric.op("node.test.cancel_order_mark")
    def mark(x):
        events.append("evaluated")
        return x

    n = node(limits=NodeLimits(window=4096, max_frame=4096, max_running=1))
    producer = gen if kind == "generator" else agen
    seen = []
    with raw_socket(n) as s:
        s.sendall(hello_bytes())
        s.sendall(_open_frame(1, producer.request(), "stream"))
        wait_for(lambda: any(st["backpressure_events"] for st in n.stats()["streams"]),
                 "the stream to wait for credit")
        cancel = StreamControl.cancel(1).to_frame(["stream.cancel", "stream.remote.network"])
        s.sendall(P.encoder().encode(FrameKind.CONTROL, cancel.payload, stream_id=1)
                  + _open_frame(3, mark.request(7), "value"))
        dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        for _ in range(1000):  # bounded: each read brings a frame or more (30 s timeout)
            data = s.recv(1 << 16)
            assert data, f"the node closed the connection: {seen}"
            dec.feed(data)
            for f in dec:
                if f.kind == FrameKind.ERROR or f.stream_id == 3:
                    seen.append((f.kind, f.stream_id, list(events)))
            if seen and seen[-1][:2] == (FrameKind.STREAM_END, 3):
                break
    err = [i for i, (k, sid, _e) in enumerate(seen) if (k, sid) == (FrameKind.ERROR, 1)]
    assert err and seen[err[0]][2][:2] == ["GeneratorExit", "closed"], seen  # closed first
    assert err[0] < seen.index(seen[-1]), seen  # the cancel's ERROR, then the reply
    assert seen[-1][2] == ["GeneratorExit", "closed", "evaluated"], seen
    assert n.stats()["cancels"] == 1


def test_a_cancelled_stream_is_not_recorded(node):
    @fabric.op("node.test.endless_ints")
    def endless():
        for i in range(10_000_000):
            yield i

    n = node()
    req = endless.request()
    with connect(n.url) as c:
        s = c.stream(req)
        assert next(s) == 0
        s.close()
        wait_for(lambda: n.stats().get("cancels", 0) >= 1, "the node to cancel it")
        wait_for(lambda: n.status()["streams"]["open"] == 0, "the stream to end")
    with connect(n.url, scope="held") as held:
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))


def test_a_stream_ended_by_a_limit_is_not_recorded(node):
    @fabric.op("node.test.then_too_big")
    def then_too_big():
        yield b"small"
        yield bytes(200_000)

    n = node(limits=NodeLimits(max_frame=64 * 1024, window=64 * 1024))
    req = then_too_big.request()
    with connect(n.url) as c:
        s = c.stream(req)
        assert next(s) == b"small"
        with pytest.raises(fabric.FabricError, match="larger than the largest frame"):
            next(s)
    with connect(n.url, scope="held") as held:
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))


def test_credit_keeps_the_producer_within_the_window(node):
    produced = []

    @fabric.op("node.test.big_items_counted")
    def big_items():
        for i in range(64):
            produced.append(i)
            yield bytes(64 * 1024)

    n = node(limits=NodeLimits(window=256 * 1024, max_frame=128 * 1024))
    with connect(n.url, window=256 * 1024) as c:
        s = c.stream(big_items.request())
        assert len(next(s)) == 65536
        # the node's sender runs out of credit (what it reports, not a time)
        wait_for(lambda: c.node_status()["streams"]["backpressure_events"] >= 1,
                 "the node's sender to wait for credit")
        # 4 items fit in the window, +1 taken, +1 waiting for credit
        assert len(produced) <= 8, len(produced)
        s.close()


def test_credit_window_bounds_what_is_sent_ahead(node):
    @fabric.op("node.test.big_items")
    def big_items():
        for i in range(64):
            yield bytes(64 * 1024)

    n = node(limits=NodeLimits(window=256 * 1024, max_frame=128 * 1024))
    with connect(n.url, window=256 * 1024) as c:
        s = c.stream(big_items.request())
        assert len(next(s)) == 65536
        got = 1 + sum(1 for _ in s)
        assert got == 64
        assert c.stats()["grants_sent"] >= 1


def test_window_0_on_the_node_and_the_client_is_unbounded(node):
    """``NodeLimits(window=0)`` and ``connect(window=0)``: a stream of 6 MiB
    (more than the default 4 MiB window and one frame) is produced to its
    end while the client took one item (a bounded window would let at most
    4 MiB and one frame go ahead of it), its stats showing
    an unbounded window and no wait for credit; then it arrives whole, in
    order."""
    mib, count = 1 << 20, 6
    assert count * mib > P.DEFAULT_WINDOW + P.DEFAULT_MAX_FRAME
    produced, gate = threading.Event(), threading.Event()

    @fabric.op("node.test.unbounded_items")
    def unbounded_items():
        for i in range(count):
            yield i.to_bytes(4, "big") + bytes(mib - 4)
        produced.set()  # every item went through the sender's credit
        gate.wait(30)

    n = node(limits=NodeLimits(window=0))
    try:
        with connect(n.url, window=0, timeout=60) as c:
            s = c.stream(unbounded_items.request())
            items = [next(s)]
            assert produced.wait(30), "the producer waited for credit"
            [st] = n.stats()["streams"]
            assert (st["window"], st["credit_remaining"], st["backpressure_events"]) == \
                (0, -1, 0), st
            assert st["bytes_sent"] >= count * mib, st
            gate.set()
            items += list(s)
            assert s.stats()["credit_remaining"] == -1
            assert s.stats()["grants_sent"] == 0  # no credit to give: none sent

            async def on_main():  # (astream: the main connection)
                s = c.astream(unbounded_items.request())
                got = [x async for x in s]
                return got, s.stats()["grants_sent"]

            produced.clear()
            again, grants = asyncio.run(on_main())
            assert grants == 0 and c.stats()["grants_sent"] == 0
            assert again == items
    finally:
        gate.set()
    assert [int.from_bytes(x[:4], "big") for x in items] == list(range(count))
    assert all(len(x) == mib for x in items)


@pytest.mark.parametrize("node_window, client_window, in_force", [
    (0, 0, 0), (0, 2 << 20, 2 << 20), (2 << 20, 0, 2 << 20),
    (2 << 20, 4 << 20, 2 << 20), (4 << 20, 2 << 20, 2 << 20),
    (0, 5000, P.DEFAULT_MAX_FRAME)])  # never below the frame agreed
def test_the_window_in_force_is_the_smaller_0_counting_as_none(node, node_window,
                                                             client_window, in_force):
    """The node's HELLO answers the window in force on the connection: the
    smaller of its own and the client's, 0 (unbounded) on one side leaving
    the other's, never below the agreed max_frame."""
    n = node(limits=NodeLimits(window=node_window))
    with raw_socket(n) as s:
        s.sendall(P.encoder().encode_value(FrameKind.HELLO, P.hello(
            node=None, max_frame=P.DEFAULT_MAX_FRAME, window=client_window)))
        hello = read_frames(s, until_close=False)[0]
    assert hello.kind == FrameKind.HELLO
    assert hello.decode_payload()["window"] == in_force


@pytest.mark.parametrize("window, why", [
    (-1, "NodeLimits.window must be an int >= 0 (0 = unbounded), not -1"),
    (1.5, "NodeLimits.window must be an int >= 0 (0 = unbounded), not 1.5"),
    (True, "NodeLimits.window must be an int >= 0 (0 = unbounded), not True"),
    (4096, "NodeLimits.window (4096) must be at least max_frame")])
def test_a_negative_non_integer_or_sub_frame_window_is_refused(window, why):
    with pytest.raises(ValueError) as info:
        NodeLimits(window=window)
    assert why in str(info.value)
    assert NodeLimits(window=0).window == 0


# ---- limits and malformed input -----------------------------------------------------

def test_a_frame_length_of_2_32_minus_1_is_refused_before_allocation(node):
    n = node()
    with raw_socket(n) as s:
        s.sendall(hello_bytes())
        assert read_frames(s, until_close=False)[0].kind == FrameKind.HELLO
        header = bytearray(fabric.Frame(FrameKind.PING, b"").encode())
        header[24:28] = (2**32 - 1).to_bytes(4, "big")
        from frames_ref import crc32c
        header[32:36] = crc32c(bytes(header[:32])).to_bytes(4, "big")
        s.sendall(bytes(header))
        frames = read_frames(s)
    assert frames[-1].kind == FrameKind.ERROR
    assert "payload length 4294967295" in frames[-1].decode_payload()["message"]


def test_malformed_input_gets_an_error_frame_and_close(node):
    n = node()
    for junk in (b"GET / HTTP/1.1\r\n\r\n", hello_bytes() + b"\x00" * 64,
                 P.encoder().encode_value(FrameKind.STREAM_CHUNK, 1, stream_id=3)):
        with raw_socket(n) as s:
            s.sendall(junk)
            frames = read_frames(s)
            assert frames and frames[-1].kind == FrameKind.ERROR
    with connect(n.url) as c:  # the node is still fine
        assert c.evaluate(node_ops.double.request(0)).value == 0


def test_slowloris_connections_are_closed_at_the_handshake_timeout(node):
    n = node(limits=NodeLimits(handshake_timeout=0.5))
    socks = [raw_socket(n) for _ in range(200)]
    try:
        with connect(n.url) as c:  # served meanwhile
            assert c.evaluate(node_ops.double.request(11)).value == 22
        for s in socks:
            frames = read_frames(s)  # returns when the node closes it
            assert frames[-1].kind == FrameKind.ERROR
    finally:
        for s in socks:
            s.close()
    assert n.stats()["handshake_timeouts"] == 200


def test_max_connections_refused_in_the_handshake(node):
    n = node(limits=NodeLimits(max_connections=2))
    a = connect(n.url)
    b = connect(n.url)
    try:
        with pytest.raises(P.LimitExceeded, match=r"is at max_connections=2"):
            connect(n.url, reconnect=False).close()
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("cap, size", [(1 << 20, 30_000), (16 << 10, 10_000)])
def test_a_peer_that_never_reads_is_disconnected(node, cap, size):
    # (a cap under the transport's 64 KiB high mark is measured on every send)
    # Replies of at most 64 KiB, written at once: a larger one waits for the
    # transport in a request slot (tests/test_node_replies_queue.py has a
    # peer that never reads 1 MiB replies cut).
    n = node(limits=NodeLimits(output_buffer=cap))
    req = node_ops.double.request("x" * size)  # a reply of 2 * size bytes
    with connect(n.url) as c:
        c.evaluate(req)
    with raw_socket(n) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.sendall(hello_bytes())
        meta = P.open_metadata(req, want="value", scope="held", grants=(), timeout=None)
        for sid in range(1, 2000):
            try:
                s.sendall(fabric.StreamControl.open(sid, meta).to_frame(
                    ["stream.open", "stream.remote.network"]).encode())
            except ConnectionError:  # the node hung up on us: what is tested
                break
    assert n.stats()["disconnected_slow_reader"] == 1


def test_100000_tiny_frames(node):
    n = node()
    with raw_socket(n) as s:
        s.sendall(hello_bytes())
        enc = P.encoder()
        ping = enc.encode(FrameKind.PING, b"", stream_id=0)
        s.sendall(ping * 100_000)
        dec = fabric.FrameDecoder()
        pongs = hello = 0
        while pongs < 100_000:
            data = s.recv(1 << 20)
            assert data
            dec.feed(data)
            for f in dec:
                if f.kind == FrameKind.PONG:
                    pongs += 1
                else:
                    hello += 1
    assert (pongs, hello) == (100_000, 1)
    n2 = node(limits=NodeLimits(max_frame_rate=1000))
    with raw_socket(n2) as s:
        try:
            s.sendall(hello_bytes() + ping * 100_000)
            frames = read_frames(s, limit=10**6)
        except ConnectionError:  # the node closed with our frames unread: a reset
            frames = []
    # what reached us before the close is the handshake, pongs, then the ERROR
    assert not frames or frames[-1].kind == FrameKind.ERROR
    assert n2.stats()["refused_LimitExceeded"] == 1


# ---- fairness over real connections ---------------------------------------------

def test_200_principals_over_real_connections_are_all_served(node):
    tokens = {f"p{i}": f"token-of-principal-{i:04d}-xyz" for i in range(200)}
    n = node(tokens=tokens, limits=NodeLimits(max_running=8))
    clients = [connect(n.url, token=tokens[f"p{i}"]) for i in range(200)]
    try:
        async def main():
            return await asyncio.gather(*(
                c.aevaluate(node_ops.double.request(1000 + i)) for i, c in enumerate(clients)))
        replies = asyncio.run(main())
        assert [r.value for r in replies] == [2 * (1000 + i) for i in range(200)]
        per = n.stats()["requests_queue"]["principals"]
        assert sorted(per) == sorted(tokens)
        assert all(v["served"] == 1 and v["pending"] == 0 for v in per.values())
    finally:
        for c in clients:
            c.close()


def test_one_principal_flooding_while_another_still_gets_its_replies(node):
    permits = threading.Semaphore(0)
    order = []

    @fabric.op("node.test.flood")
    def flood(i):
        assert permits.acquire(timeout=60)
        order.append(("flood", i))
        return i

    @fabric.op("node.test.calm")
    def calm(x):
        order.append("calm")
        return x

    tokens = {"flood": "token-of-the-flooder-000", "calm": "token-of-the-calm-one-00"}
    n = node(tokens=tokens, limits=NodeLimits(max_running=2))
    fc = connect(n.url, token=tokens["flood"], timeout=60)
    cc = connect(n.url, token=tokens["calm"], timeout=60)
    flood_done = threading.Event()

    def flooder():
        async def main():
            return await asyncio.gather(*(fc.aevaluate(flood.request(i)) for i in range(40)),
                                        return_exceptions=True)
        flood_done.result = asyncio.run(main())
        flood_done.set()

    ft = threading.Thread(target=flooder)
    ft.start()
    box = {}
    ct = None
    try:
        # all 40 arrived: 2 running, 38 queued
        wait_for(lambda: n.stats().get("requests", 0) >= 40 or not ft.is_alive(),
                 "the 40 flood requests to reach the node")
        assert ft.is_alive(), "the flooder ended before its requests all arrived"
        ct = threading.Thread(target=lambda: box.setdefault("r", cc.evaluate(calm.request(5))))
        ct.start()
        wait_for(lambda: n.stats().get("requests", 0) >= 41 or not ct.is_alive(),
                 "the calm request to reach the node")
        assert n.stats().get("requests", 0) >= 41, "the calm call ended before it arrived"
        released = 0
        while "calm" not in order and released < 40:
            permits.release()  # one flood op may finish, freeing one slot
            released += 1
            wait_for(lambda: len([o for o in order if o != "calm"]) >= released,
                     "the flood op released to finish")
        ct.join(30)
        assert box["r"].value == 5
        # round robin: calm went at the next turn, not behind the 38 queued floods
        assert order.index("calm") <= 3, order[:6]
    finally:
        for _ in range(40):
            permits.release()
        ft.join(60)
        if ct is not None:
            ct.join(30)
        fc.close()
        cc.close()
    assert flood_done.is_set() and sorted(r.value for r in flood_done.result) == list(range(40))


# ---- held streams: sent as recorded ------------------------------------------------

def _record(n, req, events):
    with n.cassette.record_stream(req.key) as w:
        for ev in events:
            w.append(ev)


def test_a_held_stream_is_sent_as_recorded_with_diagnostics_and_types(node):
    n = node()
    req = node_ops.count.request(1234)
    diag = {"kind": "Diagnostic", "message": "half way"}
    _record(n, req, [[0, b"\x00" * 70_000], [0, (1, "two")], [1, diag], [0, {"a": [1.5]}]])
    for scope, source in (("compute", "local"), ("held", "held")):
        with connect(n.url, scope=scope) as c:
            s = c.stream(req)
            assert list(s) == [b"\x00" * 70_000, (1, "two"), {"a": [1.5]}]
            assert s.diagnostics == [diag]

            async def main():
                return [x async for x in c.astream(req)]
            assert asyncio.run(main()) == [b"\x00" * 70_000, (1, "two"), {"a": [1.5]}]
        counts = n.serve_held.stats() if scope == "held" else n.fabric.stats()
        assert counts["served" if scope == "held" else "local_hits"] >= 2


@fabric.op("node.typed_items")
def typed_items(n):
    import datetime
    import numpy as np
    yield np.arange(n, dtype="<i4")
    yield datetime.date(2020, 1, n)
    yield (1, "two")
    yield {n}
    yield bytearray(b"x" * n)


def _typed_ok(items, n=3):
    import datetime
    import numpy as np
    arr, day, *rest = items
    assert type(arr) is np.ndarray and arr.dtype == np.dtype("<i4")
    assert arr.tolist() == list(range(n))
    assert day == datetime.date(2020, 1, n)
    assert rest == [(1, "two"), {n}, bytearray(b"x" * n)]
    assert [type(x) for x in rest] == [tuple, set, bytearray]


def test_a_computed_stream_keeps_its_items_types(node):
    """Items a node computes travel in the value encoding, as a held
    stream's do: a numpy array, a date, a tuple, a set and a bytearray
    arrive as themselves (they came back as lists, frozensets, bytes, or
    not at all for the registered kinds), sync and async, computed and
    then held."""
    pytest.importorskip("numpy")
    n = node()
    req = typed_items.request(3)
    with connect(n.url) as c:
        _typed_ok(list(c.stream(req)))  # computed on the node's home

        async def main():
            return [x async for x in c.astream(req)]
        _typed_ok(asyncio.run(main()))  # held by now: replayed from its ledger


def test_a_held_stream_still_checks_grants_and_frame_size(node):
    n = node(limits=NodeLimits(max_frame=64 * 1024))
    gated = node_ops.gpu.request(3)
    _record(n, gated, [[0, 1]])
    with connect(n.url, scope="held") as c:
        with pytest.raises(fabric.CapabilityDenied):
            list(c.stream(gated))
        big = node_ops.count.request(4321)
        _record(n, big, [[0, b"x" * 10], [0, b"x" * 100_000]])
        s = c.stream(big)
        assert next(s) == b"x" * 10
        with pytest.raises(fabric.FabricError, match="larger than the largest frame"):
            next(s)


def test_recorded_item_split():
    from fabric.node.server import _recorded_item
    rec = memoryview(fabric.canonical_bytes([0, b"ab"]))  # a v1 record: plain msgpack
    prefix, tag, body = _recorded_item(rec, 0)
    assert (prefix, tag, bytes(body)) == (b"", 0, fabric.canonical_bytes(b"ab"))
    rec = memoryview(fabric.encode_value([1, (1, 2)]))
    prefix, tag, body = _recorded_item(rec, 0)
    assert tag == 1 and fabric.decode_value(prefix + bytes(body)) == (1, 2)
    for bad in (fabric.encode_value([2, 1]), fabric.encode_value((0,)), b"\xc1\x01", b""):
        with pytest.raises(fabric.FabricError, match="frame 7 is not"):
            _recorded_item(memoryview(bad), 7)


def test_a_held_stream_closed_early_frees_the_channel(node):
    n = node(limits=NodeLimits(window=256 * 1024, max_frame=128 * 1024))
    req = node_ops.count.request(4444)
    _record(n, req, [[0, bytes(100_000)] for _ in range(40)])
    with connect(n.url, window=256 * 1024) as c:
        s = c.stream(req)
        assert len(next(s)) == 100_000
        s.close()  # the node is told to cancel; the rest is skipped
        assert c.evaluate(node_ops.double.request(21)).value == 42
        assert sum(len(x) for x in c.stream(req)) == 40 * 100_000


def test_the_client_paces_and_reports_by_the_window_in_force(node):
    """A client asking for 8 MiB of a node whose window is 2 MiB: its
    streams' stats give the 2 MiB in force (the node's HELLO), which its
    grants are paced by, and a stream larger than both flows whole."""
    @fabric.op("node.test.in_force_items")
    def in_force_items():
        for i in range(48):
            yield i.to_bytes(4, "big") + bytes((128 << 10) - 4)

    n = node(limits=NodeLimits(window=2 << 20))
    with connect(n.url, window=8 << 20, timeout=60) as c:
        assert c.window == 8 << 20  # what it asked for
        assert c.window_in_force == 2 << 20  # the main connection's
        s = c.stream(in_force_items.request())  # (the thread's own connection)
        items = [next(s)]
        assert s.stats()["window"] == 2 << 20
        items += list(s)

        async def on_main():  # (astream: the main connection)
            s = c.astream(in_force_items.request())
            got = [await s.__anext__()]
            window = s.stats()["window"]
            got += [x async for x in s]
            return window, got

        window, again = asyncio.run(on_main())
        assert window == 2 << 20
    for got in (items, again):
        assert [int.from_bytes(x[:4], "big") for x in got] == list(range(48))
