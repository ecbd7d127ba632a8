"""``fabric.connect`` / ``aconnect`` given a URL or a timeout it cannot use:
a ``ValueError`` or ``TypeError`` that names the argument and what it should
be, raised before any socket is made.

A bad URL is refused by the one node URL parser
(``fabric.node.protocol.parse_node_url``), saying what is wrong with it:
"a node URL is fabric://HOST:PORT or fabrics://HOST:PORT (TLS), not ...: why".
"""

import asyncio
import contextlib
import io
import re

import pytest

import fabric
from fabric.node import Node, protocol as P

@pytest.mark.parametrize("url", ["fabric://127.0.0.1:99999", "fabric://127.0.0.1:abc",
                                 "fabric://127.0.0.1:-1", "fabric://[::1:7411"])
def test_a_url_with_a_bad_port_or_host_is_named_with_the_form_it_needs(url):
    # (urlsplit's own errors, "Port out of range 0-65535" and the like, name
    # neither the URL nor its form.)
    message = re.escape(f"a node URL is fabric://HOST:PORT or fabrics://HOST:PORT (TLS), "
                        f"not {url!r}")
    with pytest.raises(ValueError, match=message):
        fabric.connect(url, timeout=5)
    with pytest.raises(ValueError, match=message):
        asyncio.run(fabric.aconnect(url, timeout=5))


@pytest.mark.parametrize("url, why", [
    ("fabric://:7411", "its host is empty"),
    ("fabric://[]:7411", "its host is empty"),
    ("fabric://127.0.0.1:0", "its port 0 is not in 1..65535"),
    ("fabric://127.0.0.1:65536", "its port 65536 is not in 1..65535"),
    ("fabric://127.0.0.1:99999", "its port 99999 is not in 1..65535"),
    ("fabric://127.0.0.1:abc", "its port 'abc' is not a number"),
    ("fabric://127.0.0.1:-1", "its port '-1' is not a number"),
    ("fabric://127.0.0.1", "it has no port"),
    ("fabric://127.0.0.1:", "it has no port"),
    ("fabric://::1:7411", "an IPv6 address goes in brackets: fabric://[::1]:7411"),
    ("fabric://fe80::1", "an IPv6 address goes in brackets: fabric://[fe80::1]:PORT"),
    ("fabric://[::1:7411", "its IPv6 address has no closing ']'"),
    ("fabric://[nothost]:7411", "'nothost' is not an IPv6 address"),
    ("http://127.0.0.1:7411", "its scheme 'http' is neither fabric nor fabrics"),
    ("tcp://127.0.0.1:7411", "its scheme 'tcp' is neither fabric nor fabrics"),
    ("127.0.0.1:7411", "it has no scheme (fabric:// or fabrics://)"),
    ("", "it has no scheme (fabric:// or fabrics://)"),
    ("fabric://127.0.0.1:7411/x", "a node URL has no path, query or fragment"),
    ("fabric://127.0.0.1:7411?x=1", "a node URL has no path, query or fragment"),
    ("fabric://me@127.0.0.1:7411", "a node URL has no user (a token goes in token=)"),
    ("fabric://my host:7411", "its host has a space or a control character"),
])
def test_a_bad_url_says_what_is_wrong_with_it(url, why):
    """One parser (fabric.node.protocol.parse_node_url) for the client, the
    node's peers and the fleet's members: each refuses a bad URL with a
    NodeURLError (a ValueError) naming the URL, the form and the fault."""
    message = re.escape(f"a node URL is fabric://HOST:PORT or fabrics://HOST:PORT (TLS), "
                        f"not {url!r}: {why}")
    with pytest.raises(P.NodeURLError, match=message):
        P.parse_node_url(url)
    with pytest.raises(ValueError, match=message):
        fabric.connect(url, timeout=5)
    with pytest.raises(ValueError, match=message):
        asyncio.run(fabric.aconnect(url, timeout=5))
    with pytest.raises(ValueError, match=r"peers\[1\]: " + message):
        Node(peers=["fabric://127.0.0.1:9", url])
    assert not P.is_node_url(url)


@pytest.mark.parametrize("url, parsed", [
    ("fabric://127.0.0.1:7411", ("fabric", "127.0.0.1", 7411)),
    ("fabrics://Node-1.example:1", ("fabrics", "node-1.example", 1)),
    ("FABRIC://h:65535", ("fabric", "h", 65535)),
    ("fabric://[::1]:7411", ("fabric", "::1", 7411)),
    ("fabric://h:7411/", ("fabric", "h", 7411)),
])
def test_a_good_url_parses_to_scheme_host_and_port(url, parsed):
    u = P.parse_node_url(url)
    assert (u.scheme, u.host, u.port) == parsed
    assert u.tls == (parsed[0] == "fabrics")
    assert P.is_node_url(url)


def test_the_command_line_refuses_a_bad_node_url(tmp_path):
    from fabric.cli import main
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        code = main(["status", "fabric://127.0.0.1:0"])
    assert code != 0
    assert "its port 0 is not in 1..65535" in err.getvalue(), err.getvalue()


def test_a_url_that_is_not_a_str_is_a_type_error():
    with pytest.raises(TypeError, match="a node URL is a str.*not int"):
        fabric.connect(7411, timeout=5)


@pytest.mark.parametrize("timeout, exc, message", [
    ("10", TypeError, "timeout must be a number of seconds or None, not str"),
    (-1, ValueError, "timeout must be >= 0 seconds or None, not -1"),
    (float("nan"), ValueError, "timeout must be >= 0 seconds or None, not nan"),
])
def test_a_bad_timeout_is_refused_before_dialling(timeout, exc, message):
    # (Unchecked, a str timeout failed in a comparison, and
    # for -1 or nan a FabricUnavailable "no handshake ... within -1 s" after
    # dialling. Port 9 on loopback: nothing listens there.)
    with pytest.raises(exc, match=re.escape(message)):
        fabric.connect("fabric://127.0.0.1:9", timeout=timeout)


def test_tls_that_is_not_a_context_or_dict_is_a_type_error(node):
    # (Kept, a path waited the whole timeout and said "no handshake ... within 2 s".)
    n = node()
    with pytest.raises(TypeError, match="tls must be an ssl.SSLContext or a dict"):
        fabric.connect(n.url, tls="ca.pem", timeout=2, reconnect=False)


@pytest.mark.parametrize("kw, exc, message", [
    (dict(token=5), TypeError, "token must be a str or None, not int"),
    (dict(window="big"), TypeError, "window must be an int (bytes), not str"),
    (dict(window=-1), ValueError, "window must be an int >= 0 (0 = unbounded), not -1"),
    (dict(max_frame=10), ValueError, "max_frame must be an int in [4096, 2**32), not 10"),
    (dict(max_frame=True), TypeError, "max_frame must be an int (bytes), not bool"),
    (dict(grants="gpu"), TypeError, "grants must be an iterable of str, not str"),
    (dict(reconnect="no"), TypeError, "reconnect must be a bool, not str"),
    (dict(max_reply=-1), ValueError,
     "max_reply must be 0 (no bound) or at least max_frame (1052672) bytes, not -1"),
    (dict(max_reply=8192, max_frame=8193), ValueError,
     "max_reply must be 0 (no bound) or at least max_frame (8193) bytes, not 8192"),
    (dict(max_reply=1.5), TypeError, "max_reply must be an int (bytes), not float"),
])
def test_connect_options_are_checked_before_dialling(node, kw, exc, message):
    # (Unchecked, each was refused only by the handshake, after dialling, as a
    # FabricUnavailable "cannot connect ... HELLO window must be ..."; a str
    # for grants was taken as its characters, "no" for reconnect as True.)
    n = node()
    kw = dict(dict(reconnect=False), **kw)
    with pytest.raises(exc, match=re.escape(message)):
        fabric.connect(n.url, timeout=5, **kw).close()
    with pytest.raises(exc, match=re.escape(message)):
        asyncio.run(fabric.aconnect(n.url, timeout=5, **kw))
