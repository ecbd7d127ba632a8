"""A client refused at the TLS handshake says so as ``FabricUnavailable``,
as every refusal at connect does: the node's certificate it does not trust
("certificate verify failed"), and its own certificate the node refuses (a
TLS 1.3 node hangs up after the client's handshake, without an alert the
client could read: the client says what such a hang-up means)."""

import pytest

import fabric
from fabric.node import connect
from fabric.node.auth import client_tls, server_tls

from test_node import certs  # noqa: F401  (the module's certificates, made at test time)


def _mutual_tls_node(node, certs):  # noqa: F811
    return node(tls=server_tls(str(certs / "server.pem"), str(certs / "server.key"),
                               str(certs / "ca.pem")))


@pytest.mark.parametrize("cert", [None, "mallory", "old"])
def test_a_client_whose_certificate_is_refused_is_told_so(node, certs, cert):  # noqa: F811
    # (It said only "closed the connection" or "Connection reset by peer".)
    n = _mutual_tls_node(node, certs)
    tls = client_tls(str(certs / "ca.pem"), None if cert is None else str(certs / f"{cert}.pem"),
                     None if cert is None else str(certs / f"{cert}.key"))
    with pytest.raises(fabric.FabricUnavailable, match="refuses the client's certificate"):
        connect(n.url, tls=tls, timeout=10, reconnect=False)


def test_an_untrusted_server_certificate_is_a_fabric_unavailable(node, certs):  # noqa: F811
    # (ssl's own SSLCertVerificationError got out: `except FabricUnavailable` missed it.)
    n = _mutual_tls_node(node, certs)
    tls = client_tls(str(certs / "otherca.pem"), str(certs / "alice.pem"),
                     str(certs / "alice.key"))
    with pytest.raises(fabric.FabricUnavailable, match="certificate verify failed"):
        connect(n.url, tls=tls, timeout=10, reconnect=False)


def test_a_trusted_client_is_not_refused(node, certs):  # noqa: F811
    n = _mutual_tls_node(node, certs)
    tls = client_tls(str(certs / "ca.pem"), str(certs / "alice.pem"), str(certs / "alice.key"))
    with connect(n.url, tls=tls, timeout=10, reconnect=False) as c:
        assert c.node == n.node_id
