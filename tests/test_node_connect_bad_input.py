"""``fabric.connect`` / ``aconnect`` given a URL or a timeout it cannot use:
a ``ValueError`` or ``TypeError`` that names the argument and what it should
be, raised before any socket is made.

(The empty URL, another scheme and a missing port are refused well already:
"a node URL is fabric://HOST:PORT or fabrics://HOST:PORT (TLS), not ...".)
"""

import asyncio
import re

import pytest

import fabric

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
