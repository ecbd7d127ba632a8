"""The node's short path for a hit of an open it parsed before (on any
connection): answered from the read callback when this connection already
checked an open of the same route (scope, claimed grants, this node in
``via``). Over raw sockets on loopback: the same bytes as the general path,
and every refusal still made (a principal without a grant, a route never
checked on the connection, a ``recorded`` reply for another node, malformed
opens)."""

import json
import socket
import threading

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.node import NodeLimits, connect, protocol as P

import gates
import node_ops
from conftest import hello_bytes

TOKENS = {"alice": "alice-token-0123456789abcdef", "bob": "bob-token-0123456789abcdef0"}
_DONE = (FrameKind.STREAM_END, FrameKind.ERROR)


class Raw:
    """A client on a raw socket: a handshake, then one open at a time, each
    answered with the exact bytes the node sent for it."""

    def __init__(self, address, token=None):
        self.s = socket.create_connection(address, timeout=30)
        self.dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
        self.s.sendall(hello_bytes(**({} if token is None else {"token": token})))
        _raw, frames = self._until(lambda fs: fs)
        assert [f.kind for f in frames] == [FrameKind.HELLO]

    def _until(self, done):
        raw, frames = b"", []
        while not done(frames):
            data = self.s.recv(1 << 16)
            assert data, f"the node closed the connection after {frames}"
            raw += data
            self.dec.feed(data)
            frames.extend(self.dec)
        return raw, frames

    def ask(self, payload, sid):
        """(bytes received, frames) for an open of ``payload`` on ``sid``."""
        self.s.sendall(P.encoder().encode(FrameKind.CONTROL, payload, stream_id=sid))
        return self._until(lambda fs: any(f.kind in _DONE for f in fs))

    def close(self):
        self.s.close()


def _open(req, scope="held", via=(), grants=()):
    return P.open_payload(req, want="value", scope=scope, grants=grants, timeout=None, via=via)


def _error(frames, sid):
    """The payload of the ERROR on ``sid``, the first ERROR among ``frames``
    (another may follow it: a running stream's, cancelled as the node closes)."""
    errors = [f for f in frames if f.kind == FrameKind.ERROR]
    assert errors and errors[0].stream_id == sid, frames
    return errors[0].decode_payload()


def test_a_new_open_of_a_checked_route_is_answered_inline_with_the_general_paths_bytes(node):
    n = node()
    reqs = [node_ops.double.request(i) for i in range(8)]
    with connect(n.url) as c:
        for r in reqs:
            assert c.evaluate(r).value == r.args[0] * 2  # now held
    general = {}
    for i, r in enumerate(reqs):  # a fresh connection each: its first open, general path
        raw = Raw(n.address)
        before = n._inline_hits
        general[i] = raw.ask(_open(r), 100 + i)
        assert n._inline_hits == before  # (answered by _queue_request, not _answer_hit)
        raw.close()
    a = Raw(n.address)
    first, _ = a.ask(_open(reqs[0]), 100)  # checks the route (held, no grants, not via)
    assert first == general[0][0]
    before = n._inline_hits
    for i, r in enumerate(reqs[1:], 1):  # opens the node parsed (for other connections)
        got, frames = a.ask(_open(r), 100 + i)
        assert got == general[i][0]
        assert [f.kind for f in frames] == [FrameKind.STREAM_START, FrameKind.STREAM_CHUNK,
                                            FrameKind.STREAM_END]
        assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == r.args[0] * 2
    assert n._inline_hits - before == len(reqs) - 1  # each one by the short path
    # the same request again, the same bytes again
    assert a.ask(_open(reqs[3]), 200)[0] == Raw(n.address).ask(_open(reqs[3]), 200)[0]
    a.close()
    stats = n.stats()
    assert stats["requests"] == stats["replies"] == 8 + 8 + 8 + 2
    assert stats.get("errors", 0) == 0


def test_a_checked_route_does_not_carry_over_to_another_scope_or_principal(node, tmp_path):
    """Alice is granted node.compute, Bob is not. Both get held content by
    the short path; a compute-scope open of a key the node does not hold is
    refused for Bob every time (the route to compute is never kept for
    him), while one of a key it holds is served to him, also when it is the
    very payload Alice's connection had answered by the short path (held
    content goes to any authenticated peer: only compute is refused)."""
    grants = tmp_path / "grants.json"
    grants.write_text(json.dumps({"alice": ["node.compute"], "bob": []}))
    n = node(tokens=dict(TOKENS), grants=str(grants))
    reqs = [node_ops.double.request(i) for i in range(30, 34)]
    with connect(n.url, token=TOKENS["alice"]) as c:
        for r in reqs:
            c.evaluate(r)
    for _ in range(2):  # the first connection's opens are parsed; the second's are not
        alice = Raw(n.address, TOKENS["alice"])
        before = n._inline_hits
        for i, r in enumerate(reqs):
            _raw, frames = alice.ask(_open(r, scope="compute"), 1 + i)
            assert frames[-1].kind == FrameKind.STREAM_END
        alice.close()
    assert n._inline_hits - before == 3  # reqs[1:] by the short path
    bob = Raw(n.address, TOKENS["bob"])
    for i, r in enumerate(reqs):  # held scope, served to any peer: now parsed
        assert bob.ask(_open(r), 1 + i)[1][-1].kind == FrameKind.STREAM_END
    bob.close()
    bob = Raw(n.address, TOKENS["bob"])
    _raw, frames = bob.ask(_open(reqs[0]), 1)
    assert frames[-1].kind == FrameKind.STREAM_END
    before = n._inline_hits
    _raw, frames = bob.ask(_open(reqs[1]), 2)
    assert frames[-1].kind == FrameKind.STREAM_END and n._inline_hits == before + 1
    denied = n.stats().get("denied_compute", 0)
    unheld = [node_ops.double.request(i) for i in range(40, 44)]
    for i, r in enumerate(unheld + unheld):  # refused, then again
        body = _error(bob.ask(_open(r, scope="compute"), 10 + i)[1], 10 + i)
        assert body["kind"] == "CapabilityDenied" and "node.compute" in body["message"]
    assert n.stats()["denied_compute"] - denied == 2 * len(unheld)
    assert n._inline_hits == before + 1
    for i, r in enumerate(reqs + reqs):  # alice's very payloads, then again: held
        _raw, frames = bob.ask(_open(r, scope="compute"), 30 + i)
        assert frames[-1].kind == FrameKind.STREAM_END
    for i, r in enumerate(unheld):  # and compute is still refused
        body = _error(bob.ask(_open(r, scope="compute"), 50 + i)[1], 50 + i)
        assert body["kind"] == "CapabilityDenied"
    assert n.stats()["denied_compute"] - denied == 3 * len(unheld)
    # the connection goes on: held content is still served to bob
    assert bob.ask(_open(reqs[2]), 99)[1][-1].kind == FrameKind.STREAM_END
    bob.close()


@fabric.op("node.hit_fast.recorded", sharing="recorded")
def _recorded(x):
    return x * 3


def test_a_recorded_reply_is_never_answered_for_another_node_by_the_short_path(node):
    n = node()
    req = _recorded.request(5)
    other = node_ops.double.request(6)
    with connect(n.url) as c:
        c.evaluate(req)
        c.evaluate(other)
    a = Raw(n.address)
    # a route with another node in via is checked and kept with `other`...
    assert a.ask(_open(other, via=("n-elsewhere",)), 1)[1][-1].kind == FrameKind.STREAM_END
    assert a.ask(_open(req), 2)[1][-1].kind == FrameKind.STREAM_END  # here: served
    for sid in (3, 4):  # ...but a recorded reply asked for that node is refused each time
        body = _error(a.ask(_open(req, via=("n-elsewhere",)), sid)[1], sid)
        assert body["kind"] == "ContentNotHeld" and "recorded" in body["message"]
    a.close()


@pytest.mark.parametrize("bad", ["wrong key", "stream 0", "running stream"])
def test_a_malformed_open_after_short_path_hits_gets_its_error_frame(node, tmp_path, bad):
    n = node()
    reqs = [node_ops.double.request(i) for i in range(40, 43)]
    with connect(n.url) as c:
        for r in reqs:
            c.evaluate(r)
    for first in (True, False):  # the first connection's opens are new, not the second's
        a = Raw(n.address)
        for i, r in enumerate(reqs):
            assert a.ask(_open(r), 1 + i)[1][-1].kind == FrameKind.STREAM_END
        if first:
            a.close()
    assert n._inline_hits == 4  # all but each connection's first open
    payload = _open(reqs[1])  # parsed before, its route checked on this connection
    sid = 50
    gate = tmp_path / "gate"
    if bad == "wrong key":
        meta = P.open_metadata(reqs[0], want="value", scope="held", grants=(), timeout=None)
        meta["key"] = reqs[1].key.digest  # held, but not these fields' key
        payload = fabric.canonical_bytes({"op": "open", "metadata": meta})
    elif bad == "stream 0":
        sid = 0
    else:  # a stream whose request still runs (it waits for the gate)
        running = node_ops.gated_count.request(3, str(gate))
        a.s.sendall(P.encoder().encode(FrameKind.CONTROL, P.open_payload(
            running, want="stream", scope="compute", grants=(), timeout=None),
            stream_id=sid))
        a._until(lambda fs: any(f.kind == FrameKind.STREAM_CHUNK for f in fs))
    try:
        _raw, frames = a.ask(payload, sid)
        body = _error(frames, 0)
        assert body["kind"] == "ProtocolError"
        assert ("content key" if bad == "wrong key" else f"open on stream {sid}") \
            in body["message"]
        with pytest.raises(AssertionError, match="closed the connection"):
            a._until(lambda fs: False)  # and the node closes it
    finally:
        gates.open_gate(str(gate))
        a.close()


@fabric.op("node.hit_fast.until_file")
def _until_file(x, path):
    if not __import__("os").path.exists(path):
        raise ValueError(f"no file {path} yet")
    return x + 1


def test_a_checked_compute_route_with_content_not_held_takes_the_general_path(node, tmp_path):
    """The short path asks the fabric's C hit path (``_lookup``): an open
    parsed before whose reply is not held goes to the general path, which
    computes it (an error while the op fails, then its value), and only a
    held reply is answered inline after that."""
    n = node()
    gate = str(tmp_path / "gate")
    held, flaky = node_ops.double.request(60), _until_file.request(5, gate)
    a = Raw(n.address)
    for sid in (1, 6, 7):  # computed; then held, the route checked and kept; inline
        assert a.ask(_open(held, scope="compute"), sid)[1][-1].kind == FrameKind.STREAM_END
    assert n._inline_hits == 1
    b = Raw(n.address)  # parses the flaky open (it fails: nothing held)
    body = _error(b.ask(_open(flaky, scope="compute"), 1)[1], 1)
    assert "no file" in body["message"]
    b.close()
    before = n._inline_hits
    for sid in (2, 3):  # a's route is checked, the open parsed: not held, so not inline
        body = _error(a.ask(_open(flaky, scope="compute"), sid)[1], sid)
        assert "no file" in body["message"]
    assert n._inline_hits == before
    open(gate, "w").close()
    _raw, frames = a.ask(_open(flaky, scope="compute"), 4)  # computed now, and held
    assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == 6
    assert n._inline_hits == before
    _raw, frames = a.ask(_open(flaky, scope="compute"), 5)  # held: inline
    assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == 6
    assert n._inline_hits == before + 1
    a.close()


_SLOT_TAKEN = threading.Event()


@fabric.op("test.hit_fast.slot_holder")
def _slot_holder(x, gate_path):
    _SLOT_TAKEN.set()
    gates.wait(gate_path, 60.0)
    return x + 1


def test_a_hit_waits_its_turn_while_every_slot_is_taken(node, tmp_path):
    """The read callback answers a hit only while a slot is free and nobody
    waits (``Node._inline_ok``, kept where those change): with the node's
    one slot taken by a running request, a hit of a checked route is
    queued, answered once the slot frees, and the next one is inline again."""
    n = node(limits=NodeLimits(max_running=1))
    held = node_ops.double.request(61)
    gate = str(tmp_path / "gate")
    a, b = Raw(n.address), Raw(n.address)
    for sid in (1, 2, 3):  # computed; then held, the route checked and kept; inline
        assert a.ask(_open(held, scope="compute"), sid)[1][-1].kind == FrameKind.STREAM_END
    assert n._inline_hits == 1 and n._inline_ok
    _SLOT_TAKEN.clear()
    b.s.sendall(P.encoder().encode(FrameKind.CONTROL,
                                   _open(_slot_holder.request(1, gate), scope="compute"),
                                   stream_id=1))
    assert _SLOT_TAKEN.wait(30)
    assert not n._inline_ok  # the one slot is running the holder
    a.s.sendall(P.encoder().encode(FrameKind.CONTROL, _open(held, scope="compute"),
                                   stream_id=4))
    gates.open_gate(gate)
    _raw, frames = b._until(lambda fs: any(f.kind in _DONE for f in fs))
    assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == 2
    _raw, frames = a._until(lambda fs: any(f.kind in _DONE for f in fs))
    assert [f.stream_id for f in frames] == [4, 4, 4]
    assert fabric.unpack(fabric.unpack(bytes(frames[1].payload)))[0] == 122
    assert n._inline_hits == 1  # queued, answered by its task: not inline
    assert a.ask(_open(held, scope="compute"), 5)[1][-1].kind == FrameKind.STREAM_END
    assert n._inline_hits == 2 and n._inline_ok  # the slot is free again
    a.close()
    b.close()
