"""``fabric serve`` as a real process: binding off loopback
(refused without TLS, tokens or ``--insecure``; warned with it), and
Ctrl-C (SIGINT) stopping it cleanly, ``--window 0`` (unbounded). Only
loopback is ever connected to. (Its files' flags: test_node_cli_files.)"""

import socket

import pytest

from fabric.frames import FrameKind
from fabric.node import connect, protocol as P

import node_ops
from conftest import read_frames
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


def test_window_0_is_accepted_and_unbounded(tmp_path):
    """``--window 0``: the node starts, answers a client's window 0 with 0
    (no bound on either side) and its streams flow; a client's own window
    still bounds them (the smaller, 0 counting as none)."""
    with served(tmp_path, "unbounded", "--home", "node_ops:home", "--window", "0") \
            as (proc, url):
        host, port = url.removeprefix("fabric://").rsplit(":", 1)
        for client_window, in_force in ((0, 0), (P.DEFAULT_WINDOW, P.DEFAULT_WINDOW)):
            with socket.create_connection((host, int(port)), timeout=30) as s:
                s.sendall(P.encoder().encode_value(FrameKind.HELLO, P.hello(
                    node=None, max_frame=P.DEFAULT_MAX_FRAME, window=client_window)))
                hello = read_frames(s, until_close=False)[0]
            assert hello.decode_payload()["window"] == in_force, client_window
        with connect(url, window=0, timeout=30) as c:
            s = c.stream(node_ops.count.request(2000))
            assert list(s) == list(range(2000))
            assert s.stats()["credit_remaining"] == -1
        interrupt(proc)


@pytest.mark.parametrize("value, why", [
    ("-1", "NodeLimits.window must be an int >= 0 (0 = unbounded), not -1"),
    ("1000", "NodeLimits.window (1000) must be at least max_frame")])
def test_a_negative_or_sub_frame_window_is_one_line_naming_it(tmp_path, value, why):
    cassette = tmp_path / "refused.ledger"
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(cassette),
                       "--window", value), "fabric serve: error:", why)
    assert not cassette.exists()  # refused before anything started


def test_a_window_that_is_not_an_integer_is_refused(tmp_path):
    proc = run("serve", "--listen", "127.0.0.1:0", "--cassette",
               str(tmp_path / "refused.ledger"), "--window", "1.5")
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "argument --window: invalid int value: '1.5'" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
