"""A TLS handshake the node refuses (mutual TLS: no client certificate,
another CA's, an expired one; a client speaking no TLS) is seen at the
node: a warning naming the peer and why, and ``stats()["tls_refused"]``,
as a refused bearer token is a warning and ``auth_failures``; a client
the node takes is served after them, and a probe that closes during the
handshake is not counted. The warnings are at most one a second (a flood
of refused clients cannot fill the log): those in between are counted in
the next one, or in one logged on the node's tick, each a DEBUG record.
Over both event loops (the node makes its TLS handshakes itself:
fabric/node/tls_listen.py); loopback only. Handshakes under way count
towards max_connections. ``fabric serve`` over TLS, with tokens, says
nothing of its private key or of a token."""

import logging
import re
import socket
import time

import pytest

import fabric
from fabric.node import connect
from fabric.node.auth import client_tls, server_tls

import node_ops
from conftest import wait_for
from test_node import certs  # noqa: F401  (the module's certificates, made at test time)


def _tls_refusals(caplog):
    """What the log tells of the TLS handshakes refused: ``(told,
    warned, why)``, ``told`` the refusals it accounts for (one per WARNING
    naming a peer, plus the counts of those not logged one by one),
    ``warned`` its WARNINGs of them, ``why`` each refusal's message (a
    WARNING's or, for one not logged one by one, a DEBUG record's), in
    order."""
    told, warned, why = 0, 0, []
    for r in caplog.records:
        m = r.getMessage()
        if "TLS handshake failed" in m:
            assert r.levelno in (logging.WARNING, logging.DEBUG), (r.levelname, m)
            why.append(m)
            if r.levelno == logging.DEBUG:
                assert m.endswith("(counted in the next warning)"), m
                continue
            warned += 1
            more = re.search(r"\(and (\d+) more like it", m)
            told += 1 + (int(more.group(1)) if more else 0)
        elif "TLS handshake(s) refused" in m:  # the count logged on the tick
            assert r.levelno == logging.WARNING, (r.levelname, m)
            warned += 1
            more = re.search(r": (\d+) more TLS handshake\(s\) refused \(not logged one by "
                             r"one\)$", m)
            assert more, m
            told += int(more.group(1))
    return told, warned, why


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_refused_client_certificate_is_a_warning_and_counted(node, certs, caplog,  # noqa: F811
                                                               loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    n = node(loop=loop, tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                                       str(certs / "ca.pem")))
    caplog.set_level(logging.DEBUG, logger="fabric")

    def refusals():
        return _tls_refusals(caplog)[2]

    for cert in (None, "mallory", "old"):
        tls = client_tls(str(certs / "ca.pem"),
                         None if cert is None else str(certs / f"{cert}.pem"),
                         None if cert is None else str(certs / f"{cert}.key"))
        with pytest.raises(fabric.FabricUnavailable):
            connect(n.url, tls=tls, timeout=10, reconnect=False)
    # a probe: connects and closes without a handshake (not a refusal)
    socket.create_connection(n.address, timeout=10).close()
    good = client_tls(str(certs / "ca.pem"), str(certs / "alice.pem"), str(certs / "alice.key"))
    with connect(n.url, tls=good, timeout=10, reconnect=False) as c:
        assert c.principal == "CN=alice"
        assert c.evaluate(node_ops.double.request(3)).value == 6
    # (the probe was handled before the good client's handshake: in order)
    warned = refusals()
    assert len(warned) == 3 and n.stats()["tls_refused"] == 3, warned
    assert all(m.startswith("refusing a connection from ('127.0.0.1', ") for m in warned), \
        warned
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in warned[0], warned
    assert "unable to get local issuer certificate" in warned[1], warned  # another CA's
    assert "certificate has expired" in warned[2], warned
    # the first a WARNING; the log accounts for every one (once the second passed)
    assert [r.levelno for r in caplog.records
            if "TLS handshake failed" in r.getMessage()][0] == logging.WARNING
    wait_for(lambda: _tls_refusals(caplog)[0] == 3, "the log to account for every refusal")
    # a client speaking no TLS to it: refused too (the client then tells it
    # looks like a TLS node: tests/test_node.py)
    with pytest.raises(fabric.FabricUnavailable):
        connect(n.url.replace("fabrics://", "fabric://"), timeout=10, reconnect=False)
    assert any("WRONG_VERSION_NUMBER" in m for m in refusals()[3:]), refusals()
    assert n.stats()["tls_refused"] == len(refusals())
    wait_for(lambda: _tls_refusals(caplog)[0] == n.stats()["tls_refused"],
             "the log to account for every refusal")


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_flood_of_refused_tls_clients_is_logged_at_most_once_a_second(node, certs,  # noqa: F811
                                                                        caplog, loop):
    """30 clients refused at their TLS handshake (no certificate, another
    CA's, an expired one): each counted in ``stats()["tls_refused"]`` and
    accounted for in the log, whose WARNINGs of them are at most one a
    second (those in between counted in the next one, or on the node's
    tick); a client the node takes is served after them."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    n = node(loop=loop, tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                                       str(certs / "ca.pem")))
    caplog.set_level(logging.DEBUG, logger="fabric")
    bad = [client_tls(str(certs / "ca.pem"),
                      None if cert is None else str(certs / f"{cert}.pem"),
                      None if cert is None else str(certs / f"{cert}.key"))
           for cert in (None, "mallory", "old")]
    start = time.monotonic()
    for i in range(30):
        with pytest.raises(fabric.FabricUnavailable):
            connect(n.url, tls=bad[i % 3], timeout=10, reconnect=False)
    wait_for(lambda: n.stats()["tls_refused"] == 30, "the node to count every refusal")
    elapsed = time.monotonic() - start
    wait_for(lambda: _tls_refusals(caplog)[0] == 30, "the log to account for every refusal")
    told, warned, why = _tls_refusals(caplog)
    assert told == 30 and len(why) == 30, (told, why)
    assert warned <= elapsed + 3, (warned, elapsed)
    assert warned < 30
    assert n.stats()["tls_refused"] == 30
    assert sum("PEER_DID_NOT_RETURN_A_CERTIFICATE" in m for m in why) == 10, why
    assert sum("certificate has expired" in m for m in why) == 10, why
    good = client_tls(str(certs / "ca.pem"), str(certs / "alice.pem"), str(certs / "alice.key"))
    with connect(n.url, tls=good, timeout=10, reconnect=False) as c:
        assert c.evaluate(node_ops.double.request(5)).value == 10
    assert n.stats()["tls_refused"] == 30


def _closed_at_once(sock):
    """Whether the node closed ``sock`` (an end of stream or a reset),
    rather than holding it (the socket's timeout then raises)."""
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_tls_handshakes_under_way_count_towards_max_connections(node, certs, caplog,  # noqa: F811
                                                                loop):
    """Clients that open TCP and never begin TLS hold the node's
    ``max_connections`` while their handshake may still come (for up to
    ``handshake_timeout``): a connection beyond it is closed at once and
    counted; the refusals of a flood are logged at most once a second,
    the ones not logged counted in the next warning; the handshakes under
    way are in ``stats()`` and the status. A slot they let go of serves a
    client again."""
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    from fabric.node import NodeLimits
    from fabric.node.metrics import render
    from fabric.node.status import format_status
    from test_node_metrics import parse, value
    n = node(loop=loop, tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                                       str(certs / "ca.pem")),
             limits=NodeLimits(max_connections=3, handshake_timeout=120))
    caplog.set_level(logging.INFO, logger="fabric")
    good = client_tls(str(certs / "ca.pem"), str(certs / "alice.pem"), str(certs / "alice.key"))
    silent = [socket.create_connection(n.address, timeout=30) for _ in range(3)]
    flood = []
    try:
        wait_for(lambda: n.stats()["tls_handshakes"] == 3, "the 3 handshakes under way")
        st = n.status()
        assert st["connections"]["handshaking"] == 3
        assert "0 open, 3 in their TLS handshake (max 3)" in format_status(st)
        assert value(parse(render(st))[0], "fabric_node_connections_handshaking") == 3
        assert n.stats()["connections"] == 0
        start = time.monotonic()
        for _ in range(40):
            flood.append(socket.create_connection(n.address, timeout=20))
            assert _closed_at_once(flood[-1])  # not held for the handshake timeout
        elapsed = time.monotonic() - start
        with pytest.raises(fabric.FabricUnavailable):  # a client with a good certificate too
            connect(n.url, tls=good, timeout=10, reconnect=False)
        assert n.stats()["refused_connections"] == 41
        assert n.stats()["tls_handshakes"] == 3

        def refusals():
            """Refusals the log tells of (one per WARNING, plus the count
            of those it did not log one by one), and its WARNINGs."""
            told, warned = 0, 0
            for r in caplog.records:
                m = r.getMessage()
                if r.levelno == logging.WARNING and "max_connections=3" in m:
                    warned += 1
                    more = re.search(r"(\d+) more", m)
                    if m.startswith("refusing a connection from ("):
                        told += 1 + (int(more.group(1)) if more else 0)
                    else:  # the count logged on the tick
                        assert "more connection(s) refused (not logged one by one)" in m, m
                        told += int(more.group(1))
            return told, warned

        wait_for(lambda: refusals()[0] == 41, "the log to tell of every refusal")
        told, warned = refusals()
        # at most one WARNING a second (the flood took `elapsed`; the count
        # of those left over is logged once the second passed)
        assert warned <= elapsed + 3, (warned, elapsed)
        assert warned < 41
        for s in silent[:2]:  # two handshakes end (the peer closed): room for a client
            s.close()
        wait_for(lambda: n.stats()["tls_handshakes"] == 1, "the handshakes to end")
        with connect(n.url, tls=good, timeout=10, reconnect=False) as c:
            assert c.evaluate(node_ops.double.request(4)).value == 8
            assert n.stats()["connections"] == 2  # its main and sync connections
    finally:
        for s in silent + flood:
            s.close()


def test_fabric_serve_over_tls_says_nothing_of_its_key_or_tokens(tmp_path, certs):  # noqa: F811
    """``fabric serve`` with ``--tls-cert/--tls-key/--tls-ca``, ``--tokens``
    and ``--peer-token``, at ``--log-level debug``: a client refused at its
    TLS handshake, one refused for its token, one served, a peer it cannot
    reach, then SIGTERM. Nothing it prints or logs holds a line of the
    private key's file, or a token (the node's, the peer token, the one a
    client presented)."""
    from fabric.node import protocol as P
    from served import served, stop
    token, wrong, peer_token = ("alice-token-0123456789abcdef", "wrong-token-fedcba9876543210",
                                "peer-token-0123456789abcdef")
    tokens = tmp_path / "tokens.json"
    tokens.write_text('{"alice": "%s"}' % token)
    with served(tmp_path, "tlsnode", "--tls-cert", str(certs / "server.pem"),
                "--tls-key", str(certs / "server.key"), "--tls-ca", str(certs / "ca.pem"),
                "--tokens", str(tokens), "--peer-token", peer_token,
                "--peer", "fabrics://127.0.0.1:1", "--home", "node_ops:home",
                "--log-level", "debug") as (proc, url):
        assert url.startswith("fabrics://127.0.0.1:"), url
        good = client_tls(str(certs / "ca.pem"), str(certs / "alice.pem"),
                          str(certs / "alice.key"))
        with pytest.raises(fabric.FabricUnavailable):  # no client certificate
            connect(url, tls=client_tls(str(certs / "ca.pem")), token=token, timeout=10,
                    reconnect=False)
        with pytest.raises(P.Unauthenticated):
            connect(url, tls=good, token=wrong, timeout=10, reconnect=False)
        with connect(url, tls=good, token=token, timeout=10, reconnect=False) as c:
            assert c.evaluate(node_ops.double.request(6)).value == 12
        stop(proc)
        said = proc.stdout.read() + proc.stderr.read()
    # what it said is meaningful: the refusals are there
    assert "TLS handshake failed" in said and "Unauthenticated" in said, said[-3000:]
    assert "PRIVATE KEY" not in said, said[-3000:]
    key_lines = [ln.strip() for ln in (certs / "server.key").read_text().splitlines()
                 if ln.strip() and not ln.startswith("-----")]
    assert key_lines
    assert not [ln for ln in key_lines if ln in said], said[-3000:]
    for secret in (token, wrong, peer_token):
        assert secret not in said, (secret, said[-3000:])
