"""The node logs through ``logging`` (logger ``fabric.node``): where it
listens, connections opened and closed with peer and principal, auth
refusals, limits hit, shutdown; never a token's or a secret's value."""

import json
import logging
import socket

import pytest

import fabric
from fabric.node import Node, NodeLimits, SecretRef, connect, protocol as P
from fabric.frames import FrameKind

import node_ops
from conftest import wait_for

TOKEN = "t0ken-that-must-never-be-logged-0001"
WRONG = "wr0ng-token-that-must-not-be-logged"
SECRET = "s3cret-value-that-must-never-be-logged"


@pytest.fixture
def logs(caplog):
    caplog.set_level(logging.INFO, logger="fabric.node")

    def messages(level=logging.DEBUG):
        return [r.getMessage() for r in caplog.records
                if r.name == "fabric.node" and r.levelno >= level]
    return messages


def test_listen_connections_and_shutdown(tmp_path, logs):
    n = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=fabric.LocalFabric()).start()
    try:
        host, port = n.address
        # the loop it runs on is said (auto: uvloop when installed)
        assert f"node a listening on {host}:{port} (event loop: {n.event_loop})" in logs()
        assert n.event_loop in ("asyncio", "uvloop")
        c = connect(n.url)
        assert c.evaluate(node_ops.double.request(2)).value == 4
        opened = [m for m in logs() if " connected from " in m]
        # the main connection and this thread's own, each with its peer and principal
        assert len(opened) == 2 and all(m.endswith(" as anonymous") for m in opened)
        peers = {m.split(" connected from ")[1].split(" as ")[0] for m in opened}
        c.close()
        wait_for(lambda: len([m for m in logs() if " closed after " in m]) == 2,
                 "both connections to be logged closed")
        closed = [m for m in logs() if " closed after " in m]
        assert all("(principal anonymous)" in m for m in closed)
        assert {m.split("connection from ")[1].split(" (principal")[0] for m in closed} == peers
    finally:
        n.stop()
    assert any(m.startswith("node a shutting down") for m in logs())
    assert logs()[-1] == "node a stopped"


def test_auth_refusal_is_a_warning_without_the_token(tmp_path, logs):
    n = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             tokens={"alice": TOKEN}, home=fabric.LocalFabric()).start()
    try:
        with pytest.raises(P.Unauthenticated):
            connect(n.url, token=WRONG, reconnect=False)
        with connect(n.url, token=TOKEN) as c:
            assert c.evaluate(node_ops.double.request(3)).value == 6
    finally:
        n.stop()
    warnings = logs(logging.WARNING)
    assert any("Unauthenticated" in m and "bearer token was refused" in m for m in warnings)
    assert any(" as alice" in m for m in logs())
    everything = "\n".join(logs())
    assert TOKEN not in everything and WRONG not in everything


def test_limits_hit_are_warnings(tmp_path, logs):
    n = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             limits=NodeLimits(max_connections=1, max_frame_rate=100)).start()
    try:
        c = connect(n.url)
        with pytest.raises(P.LimitExceeded):
            connect(n.url, reconnect=False)
        c.close()
        wait_for(lambda: n.status()["connections"]["open"] == 0, "the client to close")
        # a frame rate over the limit
        with socket.create_connection(n.address, timeout=30) as s:
            enc = P.encoder()
            s.sendall(enc.encode_value(FrameKind.HELLO, P.hello(
                node=None, max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW)))
            try:
                s.sendall(enc.encode(FrameKind.PING, b"", stream_id=0) * 5000)
                while s.recv(1 << 16):
                    pass
            except ConnectionError:  # closed with our pings unread: a reset
                pass
        wait_for(lambda: any("max_frame_rate" in m for m in logs(logging.WARNING)),
                 "the frame-rate refusal to be logged")
    finally:
        n.stop()
    warnings = logs(logging.WARNING)
    assert any("refusing a connection from" in m and "max_connections=1" in m
               for m in warnings)
    assert any("LimitExceeded" in m and "max_frame_rate=100" in m for m in warnings)


def test_a_secret_value_is_never_logged(tmp_path, logs):
    secrets = tmp_path / "secrets.json"
    secrets.write_text(json.dumps({"api": SECRET}))
    n = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=fabric.LocalFabric(), secrets=str(secrets),
             grants={"anonymous": ["node.compute", "secret:api"]}).start()
    try:
        with connect(n.url) as c:
            rep = c.evaluate(node_ops.reveal.request(SecretRef("api")))
            assert rep.value == f"len={len(SECRET)}"
            with pytest.raises(fabric.CapabilityDenied):  # a Secret is refused client-side
                c.evaluate(node_ops.reveal.request(fabric.Secret(SECRET)))
    finally:
        n.stop()
    assert logs() and SECRET not in "\n".join(logs())
