"""``fabric serve`` as a real process: binding off loopback
(refused without TLS, tokens or ``--insecure``; warned with it), and
Ctrl-C (SIGINT) stopping it cleanly. Only loopback is ever connected to.
(Its files' flags: test_node_cli_files.)"""

from fabric.node import connect

import node_ops
from served import interrupt, served
from test_cli import one_line_error, run


def test_binding_off_loopback_needs_tls_tokens_or_insecure(tmp_path):
    """0.0.0.0 without TLS or tokens is refused, saying what allows it; with
    --insecure it serves (reached here on loopback only) and warns."""
    one_line_error(run("serve", "--listen", "0.0.0.0:0", "--cassette",
                       str(tmp_path / "refused.ledger")),
                   "fabric serve: error:", "binding 0.0.0.0 (not loopback) without TLS or "
                   "tokens", "--insecure")
    assert not (tmp_path / "refused.ledger").exists()  # refused before anything started
    with served(tmp_path, "wide", "--listen", "0.0.0.0:0", "--insecure",
                "--home", "node_ops:home") as (proc, url):
        assert url.startswith("fabric://0.0.0.0:"), url
        port = int(url.rsplit(":", 1)[1])
        with connect(f"fabric://127.0.0.1:{port}", timeout=30) as c:
            assert c.evaluate(node_ops.double.request(21)).value == 42
        interrupt(proc)
    err = proc.stderr.read()
    assert "WARNING" in err and "listening on 0.0.0.0 without TLS or tokens" in err, err


def test_sigint_stops_a_node_cleanly_its_cassette_closed(tmp_path):
    """Ctrl-C: the node logs its shutdown, exits 0, and what it recorded is
    held by the node started again on its cassette."""
    req = node_ops.double.request(8)
    with served(tmp_path, "int", "--home", "node_ops:home", "--log-level", "info") \
            as (proc, url):
        with connect(url, timeout=30) as c:
            assert c.evaluate(req).value == 16
        interrupt(proc)
    err = proc.stderr.read()
    assert "node int shutting down" in err and "node int stopped" in err, err[-2000:]
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err[-2000:]
    with served(tmp_path, "int") as (again, url):  # the same cassette, no home
        with connect(url, timeout=30, scope="held") as c:
            assert c.evaluate(req).value == 16
        interrupt(again)
