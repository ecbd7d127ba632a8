"""A request's open read in one pass (``StreamControl.read_open`` over the
core's ``fab_control_open_read``, then ``protocol.open_from_read``): for every
payload it takes, the same result as the general path
(``StreamControl.from_frame`` then ``check_open``), and every payload it
leaves goes to that path, which refuses it with the same error as before."""

import socket

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fabric
from fabric.frames import FrameKind
from fabric.node import connect, protocol as P

import node_ops
from conftest import hello_bytes, read_frames
from test_node_open import requests

LIMITS = P.node_limits(P.DEFAULT_MAX_FRAME)
GRANTS = ["stream.open", "stream.remote.network"]
SHAPES = [
    dict(want="value", scope="held", grants=(), timeout=None, via=()),
    dict(want="stream", scope="compute", grants=("node.compute", "a"), timeout=1.5,
         via=("n1",)),
    dict(want="value", scope="compute", grants=("b",), timeout=30, via=("n1", "n2")),
]


def general(payload):
    """from_frame + check_open on payload: the parsed open, or the exception."""
    frame = next(iter(_decoded(payload)))
    try:
        ctl = fabric.StreamControl.from_frame(frame, GRANTS, limits=LIMITS)
        if ctl.op != "open":
            return ValueError("not an open")
        return P.check_open(ctl.fields.get("metadata"))
    except (fabric.FabricError, ValueError, TypeError) as exc:
        return exc


def _decoded(payload):
    dec = fabric.FrameDecoder(LIMITS)
    dec.feed(P.encoder().encode(FrameKind.CONTROL, payload, stream_id=1))
    return list(dec)


def fast(payload):
    read = fabric.StreamControl.read_open(payload, limits=LIMITS)
    return None if read is None else P.open_from_read(read)


def same(a, b):
    """Two parsed opens: the same request (key and fields) and the same rest."""
    assert a[0].key == b[0].key
    assert (a[0].op, a[0].args, dict(a[0].kwargs)) == (b[0].op, b[0].args, dict(b[0].kwargs))
    assert a[1:] == b[1:]
    assert [type(x) for x in a[1:]] == [type(x) for x in b[1:]]


def test_every_request_of_the_matrix_is_read_in_one_pass_as_the_general_path_reads_it():
    n = 0
    for req in requests():
        for shape in SHAPES:
            payload = P.open_payload(req, **shape)
            got, want = fast(payload), general(payload)
            assert not isinstance(want, Exception), want
            assert got is not None, (req, shape)
            same(got, want)
            n += 1
    assert n == len(requests()) * len(SHAPES)


# ---- mutations: whatever is read in one pass is what the general path reads ----------

_VALUES = st.one_of(
    st.none(), st.booleans(), st.integers(-2, 2**64 - 1), st.floats(allow_nan=True),
    st.text(max_size=8), st.binary(max_size=40), st.sampled_from(
        ["value", "stream", "held", "compute", "eval", "pure", "local-first"]),
    st.lists(st.one_of(st.text(max_size=4), st.integers(0, 3)), max_size=18),
    st.dictionaries(st.text(max_size=4), st.integers(0, 3), max_size=3))
_META = ["request", "key", "want", "scope", "grants", "timeout", "via"]
_REQ = sorted(P._REQUEST_FIELDS)


@st.composite
def mutated(draw):
    req = draw(st.sampled_from(requests()))
    meta = P.open_metadata(req, checked=True, **draw(st.sampled_from(SHAPES)))
    body = {"op": "open", "metadata": meta}
    for _ in range(draw(st.integers(0, 3))):
        where = draw(st.sampled_from(["meta", "request", "top"]))
        target = {"meta": meta, "request": meta.get("request"), "top": body}[where]
        if not isinstance(target, dict):
            continue
        names = {"meta": _META, "request": _REQ, "top": ["op", "metadata"]}[where]
        what = draw(st.sampled_from(["set", "drop", "add"]))
        name = draw(st.sampled_from(names))
        if what == "set":
            target[name] = draw(_VALUES)
        elif what == "drop":
            target.pop(name, None)
        else:
            target[draw(st.text(max_size=6))] = draw(_VALUES)
    try:
        payload = fabric.canonical_bytes(body)
    except (TypeError, ValueError):
        payload = b"\x80"
    cut = draw(st.one_of(st.none(), st.integers(0, len(payload))))
    if cut is not None:  # a byte changed or the payload cut short
        if draw(st.booleans()) and cut < len(payload):
            payload = payload[:cut] + bytes([draw(st.integers(0, 255))]) + payload[cut + 1:]
        else:
            payload = payload[:cut]
    return payload


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_a_payload_read_in_one_pass_is_read_the_same_by_the_general_path(payload):
    if not payload:
        return  # (a frame needs no payload; the decoder's own tests cover it)
    got, want = fast(payload), general(payload)
    if got is not None:
        assert not isinstance(want, Exception), want
        same(got, want)


# ---- over a socket: what is not read in one pass is refused as before ---------------------

def _meta(req, **change):
    meta = P.open_metadata(req, want="value", scope="held", grants=(), timeout=None)
    meta.update(change)
    return meta


BAD = [
    {"want": "values"}, {"scope": "HELD"}, {"timeout": 0}, {"timeout": -1.0},
    {"timeout": True}, {"timeout": float("nan")}, {"grants": ["a", 1]}, {"grants": "a"},
    {"via": ["n"] * 17}, {"via": [1]}, {"extra": 1}, {"key": b"\0" * 32}, {"key": "k"},
]


@pytest.mark.parametrize("change", BAD, ids=[next(iter(c)) + "=" + repr(list(c.values())[0])[:12]
                                             for c in BAD])
def test_a_malformed_open_gets_the_general_paths_error_frame(node, change):
    n = node()
    req = node_ops.double.request(7)
    with connect(n.url) as c:
        assert c.evaluate(req).value == 14
    meta = _meta(req, **change)
    with pytest.raises(P.ProtocolError) as expected:
        P.check_open(meta)
    payload = fabric.canonical_bytes({"op": "open", "metadata": meta})
    assert fast(payload) is None
    with socket.create_connection(n.address, timeout=30) as s:
        s.sendall(hello_bytes() + P.encoder().encode(FrameKind.CONTROL, payload, stream_id=1))
        frames = read_frames(s)  # until the node closes the connection
    assert [(f.kind, f.stream_id) for f in frames] == [(FrameKind.HELLO, 0),
                                                       (FrameKind.ERROR, 0)]
    assert frames[1].decode_payload() == {"kind": "ProtocolError",
                                          "message": str(expected.value)}


def test_an_open_in_the_value_encoding_is_answered_by_the_general_path(node):
    """A payload in the value encoding is not read in one pass; the general
    path reads it and the answer is the same as for the plain payload."""
    n = node()
    req = node_ops.double.request(8)
    with connect(n.url) as c:
        assert c.evaluate(req).value == 16
    plain = P.open_payload(req, want="value", scope="held", grants=(), timeout=None)
    tagged = b"\xc1\x01" + plain
    assert fast(tagged) is None and fast(plain) is not None
    same(general(tagged), general(plain))
    answers = []
    for payload in (plain, tagged):
        with socket.create_connection(n.address, timeout=30) as s:
            s.sendall(hello_bytes() + P.encoder().encode(FrameKind.CONTROL, payload,
                                                         stream_id=5))
            frames = read_frames(s, until_close=False)
            while not any(f.kind == FrameKind.STREAM_END for f in frames):
                more = read_frames(s, until_close=False)
                assert more, frames
                frames += more
        answers.append([(f.kind, f.stream_id, f.seq, bytes(f.payload)) for f in frames])
    assert answers[0] == answers[1]
    assert [a[0] for a in answers[0]] == [FrameKind.HELLO, FrameKind.STREAM_START,
                                          FrameKind.STREAM_CHUNK, FrameKind.STREAM_END]


def test_read_open_takes_bytes_and_leaves_other_controls():
    with pytest.raises(TypeError, match="bytes"):
        fabric.StreamControl.read_open(bytearray(b"\x80"))
    for ctl in (fabric.StreamControl.next(1, 2), fabric.StreamControl.open(1),
                fabric.StreamControl.open(1, {"a": 1}), fabric.StreamControl.cancel(1, "x")):
        assert fabric.StreamControl.read_open(ctl.to_payload()) is None
