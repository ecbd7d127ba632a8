"""``Node(...)``'s arguments, checked where they are given: each wrong one
is refused at construction with a TypeError or ValueError naming it, before
the node makes anything, not later by whatever first uses it; and where
``listen`` binds (an IPv6 host in brackets, that host only)."""

import pytest

import fabric
from fabric.node import Node, connect

import node_ops


@pytest.mark.parametrize("peers, exc, message", [
    ("fabric://127.0.0.1:9", TypeError, "peers must be an iterable of node URLs"),
    ([5], TypeError, r"peers\[0\]: a node URL is a str"),
    (["http://127.0.0.1:9"], ValueError, "a node URL is fabric://HOST:PORT"),
    (["fabric://127.0.0.1:9", "fabric://127.0.0.1"], ValueError,
     r"peers\[1\]: a node URL is fabric://HOST:PORT"),
])
def test_node_peers_that_are_not_node_urls_are_refused_at_construction(tmp_path, peers, exc,
                                                                       message):
    with pytest.raises(exc, match=message):
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", peers=peers)
    assert not (tmp_path / "n.ledger").exists()  # refused before anything was made


def test_node_peers_may_be_any_iterable_of_node_urls(tmp_path):
    urls = ("fabric://127.0.0.1:9", "fabrics://[::1]:10")
    n = Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", peers=iter(urls))
    try:
        assert n.peer_urls == list(urls)
    finally:
        n.cassette.close()


def test_node_tls_that_is_not_a_context_is_refused_at_construction(tmp_path):
    with pytest.raises(TypeError, match="tls must be an ssl.SSLContext.*server_tls"):
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", tls="server.pem")


def test_node_limits_that_are_not_node_limits_are_a_type_error(tmp_path):
    with pytest.raises(TypeError, match="limits must be a (fabric.node.)?NodeLimits, not dict"):
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", limits={"window": 1 << 20})


@pytest.mark.parametrize("home, hint", [(5, "not int$"),
                                        ("node_ops:home", "fabric serve --home takes")])
def test_node_home_that_is_not_a_fabric_is_refused_at_construction(tmp_path, home, hint):
    with pytest.raises(TypeError, match="home must be a fabric") as info:
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", home=home)
    assert info.match(hint)


@pytest.mark.parametrize("node_id, exc, message", [
    ("x" * 100_000, ValueError, "node_id must have 1 to 128 characters, not 100000"),
    ("", ValueError, "node_id must have 1 to 128 characters, not 0"),
    (7, TypeError, "node_id must be a str, not int"),
])
def test_a_node_id_too_long_or_not_a_str_is_named(tmp_path, node_id, exc, message):
    with pytest.raises(exc, match=message):
        Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", node_id=node_id)


def test_a_node_id_of_the_longest_length_is_taken(tmp_path):
    n = Node(str(tmp_path / "n.ledger"), listen="127.0.0.1:0", node_id="x" * 128)
    n.cassette.close()


@pytest.mark.parametrize("insecure", ["no", 1, None])
def test_insecure_must_be_a_bool(tmp_path, insecure):
    """``insecure="no"`` is true: not taken for a flag."""
    with pytest.raises(TypeError, match="insecure must be a bool"):
        Node(str(tmp_path / "n.ledger"), listen="0.0.0.0:0", insecure=insecure)


@pytest.mark.parametrize("listen", ["::1", "::1:0", "[::1", "::1]:0", "[]:0"])
def test_an_ipv6_listen_host_needs_brackets(tmp_path, listen):
    """``"::1"`` would be read as host ':' and port 1: an IPv6 host is given
    in brackets, ``[::1]:PORT``."""
    with pytest.raises(ValueError, match=r"an IPv6 host in brackets \(\[::1\]:7411\)"):
        Node(str(tmp_path / "n.ledger"), listen=listen)


def test_a_bracketed_ipv6_loopback_binds_it_alone(tmp_path):
    """``[::1]:0`` binds ::1 only (not ::, every address), and serves there."""
    import socket
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError as exc:
        pytest.skip(f"no IPv6 loopback here: {exc}")
    n = Node(str(tmp_path / "n.ledger"), home=fabric.LocalFabric(), listen="[::1]:0").start()
    try:
        assert [s.getsockname()[0] for s in n._server.sockets] == ["::1"]
        assert n.url == f"fabric://[::1]:{n.address[1]}"
        with connect(n.url, timeout=10) as c:
            assert c.evaluate(node_ops.double.request(3)).value == 6
    finally:
        n.stop()
