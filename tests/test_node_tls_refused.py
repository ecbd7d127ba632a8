"""A TLS handshake the node refuses (mutual TLS: no client certificate,
another CA's, an expired one; a client speaking no TLS) is seen at the
node: a warning naming the peer and why, and ``stats()["tls_refused"]``,
as a refused bearer token is a warning and ``auth_failures``; a client
the node takes is served after them, and a probe that closes during the
handshake is not counted. Over both event loops (the node makes its TLS
handshakes itself: fabric/node/tls_listen.py); loopback only."""

import logging
import socket

import pytest

import fabric
from fabric.node import connect
from fabric.node.auth import client_tls, server_tls

import node_ops
from test_node import certs  # noqa: F401  (the module's certificates, made at test time)


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_a_refused_client_certificate_is_a_warning_and_counted(node, certs, caplog,  # noqa: F811
                                                               loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    n = node(loop=loop, tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                                       str(certs / "ca.pem")))
    caplog.set_level(logging.INFO, logger="fabric")

    def refusals():
        return [r.getMessage() for r in caplog.records
                if r.levelno == logging.WARNING and "TLS handshake failed" in r.getMessage()]

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
    assert all("127.0.0.1" in m for m in warned), warned
    assert "PEER_DID_NOT_RETURN_A_CERTIFICATE" in warned[0], warned
    assert "unable to get local issuer certificate" in warned[1], warned  # another CA's
    assert "certificate has expired" in warned[2], warned
    # a client speaking no TLS to it: refused too (the client then tells it
    # looks like a TLS node: tests/test_node.py)
    with pytest.raises(fabric.FabricUnavailable):
        connect(n.url.replace("fabrics://", "fabric://"), timeout=10, reconnect=False)
    assert any("WRONG_VERSION_NUMBER" in m for m in refusals()[3:]), refusals()
    assert n.stats()["tls_refused"] == len(refusals())
