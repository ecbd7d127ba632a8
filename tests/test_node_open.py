"""The open of a request built in one pass (``open_payload``) and read back
with the flat-argument shortcuts (``request_from_wire``): the same bytes and
the same request as the general path, and every check still made."""

import socket

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.node import connect, protocol as P

import node_ops
from conftest import hello_bytes, read_frames

OPEN_GRANTS = ["stream.open", "stream.remote.network"]
REF = fabric.SecretRef("db-password")

ARGS = [
    (), (0,), (1, "x"), (-1, 2**63 - 1, -2**63, 2**64 - 1), (1.5, -0.0, float("inf")),
    ("é ü 漢字", b"\x00\xff", None, True, False), ([1, [2, [3]]], {"a": {"b": [1]}}),
    (REF,), ([REF, 1],), ({"pw": REF},), (P.SECRET_REF_TAG, "name"),
    ([P.SECRET_REF_TAG, "name"],), ((1, 2), [3, 4]), ("x" * 5000,),
]
KWARGS = [{}, {"k": 1}, {"b": b"x", "a": [1, 2], "c": None}, {"ref": REF},
          {"n": {"deep": [REF]}}, {"z": 1.25, "y": "s"}]
OPTIONS = [{}, {"version": 3, "required_capabilities": ("gpu", "net")},
           {"mode": "analyze", "trace": True}, {"deadline": 2.5, "answer_limit": 10},
           {"stream": True, "stream_buffer": 4}, {"sharing": "recorded"},
           {"consistency": "home"}]


def requests():
    out = []
    for i, args in enumerate(ARGS):
        kwargs = KWARGS[i % len(KWARGS)]
        opts = OPTIONS[i % len(OPTIONS)]
        try:
            out.append(fabric.EvalRequest("node.open_matrix", args, kwargs, **opts))
        except (TypeError, ValueError):  # an option this op kind refuses: not this test's
            out.append(fabric.EvalRequest("node.open_matrix", args, kwargs))
    for kwargs in KWARGS:
        out.append(fabric.EvalRequest("node.open_matrix", (1,), kwargs))
    return out


@pytest.mark.parametrize("want, scope, grants, timeout, via", [
    ("value", "held", frozenset(), None, ()),
    ("stream", "compute", frozenset({"node.compute", "a", "secret:x"}), 1.5, ("n1",)),
    ("value", "compute", ["b", "a"], 30, ("n1", "n2")),
])
def test_open_payload_is_the_controls_encoding(want, scope, grants, timeout, via):
    for req in requests():
        meta = P.open_metadata(req, want=want, scope=scope, grants=grants, timeout=timeout,
                               via=via)
        old = bytes(fabric.StreamControl.open(7, meta).to_frame(OPEN_GRANTS).payload)
        new = P.open_payload(req, want=want, scope=scope, grants=grants, timeout=timeout,
                             via=via)
        assert new == old, req
        # and the node reads it back to the same request (the key re-derived)
        ctl = fabric.StreamControl.from_frame(
            fabric.Frame(FrameKind.CONTROL, new, stream_id=7), OPEN_GRANTS)
        got = P.check_open(ctl.fields["metadata"])
        assert got[0] == req and got[0].key == req.key
        assert got[1:] == (want, scope, frozenset(grants), timeout, list(via))


def test_request_from_wire_reads_flat_arguments_as_the_walk_does():
    for req in requests():
        body = P.request_to_wire(req, checked=True)
        body = fabric.unpack(fabric.canonical_bytes(body))  # as the wire gives it
        assert P._args_from_wire(body["args"]) == tuple(P._refs(body["args"]))
        assert P._kwargs_from_wire(body["kwargs"]) == P._refs(body["kwargs"])
        if REF in req.args:  # a SecretRef argument comes back as one
            assert REF in P._args_from_wire(body["args"])
            assert type(P._args_from_wire(body["args"])[req.args.index(REF)]) is type(REF)


def test_a_wrong_key_is_refused_and_the_right_one_answered(node):
    n = node()
    req = node_ops.double.request(21)
    with connect(n.url) as c:
        assert c.evaluate(req).value == 42
    meta = P.open_metadata(req, want="value", scope="held", grants=(), timeout=None)
    meta["key"] = node_ops.double.request(22).key.digest  # a key of other fields
    bad = fabric.StreamControl.open(1, meta).to_frame(OPEN_GRANTS).encode()
    good = P.encoder().encode(FrameKind.CONTROL, P.open_payload(
        req, want="value", scope="held", grants=(), timeout=None), stream_id=3)
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes() + bad)
        frames = read_frames(s)  # until the node closes the connection
    assert [(f.kind, f.stream_id) for f in frames] == [(FrameKind.HELLO, 0),
                                                       (FrameKind.ERROR, 0)]
    body = frames[1].decode_payload()
    assert body["kind"] == "ProtocolError" and "content key" in body["message"]
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes() + good)
        frames = read_frames(s, until_close=False)
        while not any(f.kind == FrameKind.STREAM_END for f in frames):
            more = read_frames(s, until_close=False)
            assert more, frames
            frames += more
    assert [f.kind for f in frames if f.stream_id == 3] == [
        FrameKind.STREAM_START, FrameKind.STREAM_CHUNK, FrameKind.STREAM_END]
    assert n.stats()["requests"] == 2  # the client's and the good open (not the bad one)


@pytest.mark.parametrize("where", ["args", "kwargs", "nested"])
def test_a_secret_in_a_new_request_is_never_sent(node, where):
    n = node()
    s = fabric.Secret("hunter2")
    with connect(n.url) as c:
        for i in range(300):  # more new requests than any cache keeps
            args, kwargs = {"args": ((s,), {}), "kwargs": ((), {"secret": s}),
                            "nested": (([1, {"x": s}],), {})}[where]
            req = fabric.EvalRequest("node.reveal", args or (i,), kwargs)
            with pytest.raises(fabric.CapabilityDenied, match=r"SecretRef\(name\)"):
                c.evaluate(req)
            ok = node_ops.double.request(i)
            assert c.evaluate(ok).value == 2 * i
    assert n.stats()["requests"] == 300  # the 300 without a Secret only


def test_check_request_no_secret_walks_only_what_is_not_flat():
    s = fabric.Secret("hunter2")
    flat = [fabric.EvalRequest("node.x", (1, "a", b"b", None, 1.5, True), {"k": 2}),
            fabric.EvalRequest("node.x", (), {})]
    for req in flat:
        assert P.check_request_no_secret(req) is False
    walked = [fabric.EvalRequest("node.x", ([1, 2],), {}),
              fabric.EvalRequest("node.x", (1,), {"k": {"a": [REF]}}),
              fabric.EvalRequest("node.x", (REF,), {})]
    for req in walked:
        assert P.check_request_no_secret(req) is True
    for args, kwargs, where in [((s,), {}, r"args\[0\]"), ((1, [2, s]), {}, r"args\[1\]"),
                                ((), {"k": s}, "kwargs"), ((1,), {"k": {"n": (s,)}}, "kwargs"),
                                (({"a": s},), {}, r"args\[0\]")]:
        with pytest.raises(fabric.CapabilityDenied, match=where):
            P.check_request_no_secret(fabric.EvalRequest("node.x", args, kwargs))


@fabric.op("node.test.open.count_for_timeout")
def count_for_timeout(tag, n):
    yield from range(n)


@pytest.mark.parametrize("timeout", [float("inf"), 1e308, 2**64])
def test_an_open_with_a_timeout_past_the_clocks_range_is_served(node, timeout):
    """A positive timeout is valid however large (the checks, C's and
    Python's, allow it); past MAX_TIMEOUT it is read as MAX_TIMEOUT. A
    computed stream opened with one failed with 'OverflowError: timestamp
    out of range for platform time_t' (a RemoteError) where the node waited."""
    n = node()
    req = count_for_timeout.request(repr(timeout), 3)  # computed, not held
    meta = P.open_metadata(req, want="stream", scope="compute", grants=(), timeout=None)
    meta["timeout"] = timeout
    assert P.check_open(meta)[4] == P.MAX_TIMEOUT
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes())
        s.sendall(fabric.StreamControl.open(1, meta).to_frame(OPEN_GRANTS).encode())
        frames = read_frames(s, until_close=False)
        while frames[-1].kind not in (FrameKind.STREAM_END, FrameKind.ERROR):
            frames += read_frames(s, until_close=False)
    errors = [f.decode_payload() for f in frames if f.kind == FrameKind.ERROR]
    assert not errors, errors
    assert [f.kind for f in frames[1:]] == [FrameKind.STREAM_START] + \
        [FrameKind.STREAM_CHUNK] * 3 + [FrameKind.STREAM_END]
