"""Claims over the node protocol: two (and three) real nodes on 127.0.0.1.
An honest node's replies and streams carry claims the receiver verifies and
records; a node whose reply or stream does not match its claim, or whose
key is not trusted, or that sends no claim, is refused: nothing recorded,
the peer penalised and counted, and the resolution falls back to home."""

import pytest

import fabric
from fabric import ClaimRejected, FleetKeys, LocalFabric, NoHolderError
from fabric.claims import NodeKey, StreamDigest, TrustedKeys
from fabric.node import Node, connect

from conftest import wait_for


@fabric.op("claims.pair")
def pair(x):
    return (x, [x, "y" * (x % 5)], {"k": (1.5, b"b")})


@fabric.op("claims.count")
def count(n):
    for i in range(n):
        yield {"i": i}


class Lying:
    """A signer whose claims are for other bytes than the node sends: what a
    node that changes replies after signing (or a disk that damaged them)
    looks like to its receiver."""

    def __init__(self, inner):
        self.inner = inner

    def sign_record(self, key, data, producer):
        return self.inner.sign_record(key, data[:-1] + bytes([data[-1] ^ 1]), producer)

    def sign_stream(self, key, digest, producer):
        other = StreamDigest()
        other.update(0, {"i": -1})
        return self.inner.sign_stream(key, other, producer)


@pytest.fixture
def nodes(tmp_path):
    started = []

    def start(name, **kw):
        n = Node(str(tmp_path / f"{name}.ledger"), node_id=name, listen="127.0.0.1:0", **kw)
        started.append(n.start())
        return n

    yield start
    for n in reversed(started):
        n.stop()


def _receiver(nodes, peer, **kw):
    b = nodes("b", peers=[peer.url], **kw)
    wait_for(lambda: b.fabric.peers, "b to connect to its peer")
    return b


def test_signed_replies_and_streams_cross_the_wire(nodes):
    ka = NodeKey.generate("ka", "a")
    a = nodes("a", home=LocalFabric(), node_key=ka)
    req, sreq = pair.request(3), count.request(6)
    assert a.fabric.evaluate(req).source == "home"
    assert len(list(a.fabric.stream(sreq))) == 6
    b = _receiver(nodes, a, trusted_keys=TrustedKeys.of(ka))
    assert b.fabric.trust == "signatures"
    got = b.fabric.evaluate(req)
    # the record travels in the value encoding between nodes: types kept
    assert got.source == "peer:a" and got.value == (3, [3, "yyy"], {"k": (1.5, b"b")})
    assert type(got.value) is tuple and type(got.value[2]["k"]) is tuple
    assert req.key in b.cassette and b.fabric.evaluate(req).source == "local"
    items = list(b.fabric.stream(sreq))
    assert [x["i"] for x in items] == list(range(6))
    assert sreq.key in b.cassette
    assert b.fabric.stats().get("peer_penalties", 0) == 0
    # a client sees the claims too
    with connect(a.url, scope="held") as c:
        r = c.evaluate(req)
        assert r.claim.producer == "a" and r.claim.scheme == "ed25519"
        assert TrustedKeys.of(ka).check(r.claim, req.key, r, "a") is None
        # the claim covers the bytes that travelled: the value encoding
        assert r.claim.kind == "record" and r.record_data[:2] == b"\xc1\x01"
        assert r.claim.length == len(r.record_data) == len(fabric.encode_value(
            [r.value, list(r.diagnostics), r.trace]))
        s = c.stream(sreq)
        assert s.claim is None and len(list(s)) == 6
        assert s.claim.kind == "stream" and s.claim.length > 0


def test_a_client_not_announcing_values_gets_a_canonical_record_and_its_claim(
        nodes, monkeypatch):
    """A peer whose HELLO does not announce ``values`` (an older client) is
    sent the canonical record, and the claim covers those bytes."""
    from fabric.claims import record_bytes
    from fabric.node import client as client_mod
    ka = NodeKey.generate("ka", "a")
    a = nodes("a", home=LocalFabric(), node_key=ka)
    req = pair.request(4)
    monkeypatch.setattr(client_mod, "_CAPS", [])
    with connect(a.url) as c:
        for first in (True, False):  # computed, then held
            r = c.evaluate(req)
            assert (r.source == "home") == first
            assert r.value == [4, [4, "yyyy"], {"k": [1.5, b"b"]}]
            assert r.record_data[:2] != b"\xc1\x01"
            assert r.record_data == fabric.canonical_bytes([r.value, [], None])
            assert r.claim.kind == "record" and r.claim.length == len(r.record_data)
            assert TrustedKeys.of(ka).check(r.claim, req.key, r, "a") is None
            # without the bytes received, the canonical record is what it covers
            assert record_bytes(fabric.EvalReply(r.value, (), None, req.key, "x")) \
                == r.record_data


@pytest.mark.parametrize("how", ["tampered", "untrusted_key", "no_claim"])
def test_a_forging_node_is_refused_and_the_resolution_falls_back(nodes, how):
    ka = NodeKey.generate("ka", "a")
    signer = {"tampered": Lying(ka), "untrusted_key": NodeKey.generate("ka2", "a"),
              "no_claim": None}[how]
    a = nodes("a", home=LocalFabric(), node_key=ka)
    a.signer = signer  # after start: what this node sends from now on
    req, sreq = pair.request(4), count.request(5)
    a.fabric.evaluate(req)
    list(a.fabric.stream(sreq))
    gov = fabric.PeerGovernor(backoff_base=0.0, backoff_cap=0.0)
    b = _receiver(nodes, a, trusted_keys=TrustedKeys.of(ka), governor=gov)
    # No home: the refusal is the answer, and nothing is recorded.
    with pytest.raises(NoHolderError) as ei:
        b.fabric.evaluate(req)
    (name, exc), = ei.value.attempts
    assert name == "a" and isinstance(exc, ClaimRejected)
    reason = {"tampered": "differs from the claim's", "untrusted_key": "unknown key id",
              "no_claim": "no claim"}[how]
    assert reason in exc.reason
    assert req.key not in b.cassette
    assert b.fabric.stats()["peer_penalties"] == 1
    assert any("discarded" in step[2] for step in b.fabric.explain(req).steps)
    # A stream: its items arrive, then its claim fails: not recorded.
    got = []
    with pytest.raises(fabric.RemoteError) as si:
        for x in b.fabric.stream(sreq):
            got.append(x)
    assert len(got) == 5 and isinstance(si.value.__cause__, ClaimRejected)
    assert sreq.key not in b.cassette
    assert b.fabric.stats()["peer_penalties"] == 2


def test_the_refused_reply_falls_back_to_home(nodes):
    ka = NodeKey.generate("ka", "a")
    a = nodes("a", home=LocalFabric(), node_key=ka)
    a.signer = Lying(ka)
    req = pair.request(9)
    a.fabric.evaluate(req)
    b = _receiver(nodes, a, trusted_keys=TrustedKeys.of(ka), home=LocalFabric(),
                  governor=fabric.PeerGovernor())
    got = b.fabric.evaluate(req)
    assert got.source == "home" and got.value == (9, [9, "yyyy"], {"k": (1.5, b"b")})
    steps = b.fabric.explain(req).steps
    assert steps[1][1] == "a" and "discarded" in steps[1][2]
    assert b.fabric.stats()["peer_penalties"] == 1


def test_fleet_key_over_the_wire(nodes):
    fk = FleetKeys({"f1": bytes(range(32))}, current="f1")
    a = nodes("a", home=LocalFabric(), fleet_keys=fk)
    req = pair.request(1)
    a.fabric.evaluate(req)
    b = _receiver(nodes, a, fleet_keys=fk)
    assert b.fabric.trust == "fleet-key"
    assert b.fabric.evaluate(req).source == "peer:a"
    other = FleetKeys({"f1": bytes(32)}, current="f1")
    c = nodes("c", peers=[a.url], fleet_keys=other)
    wait_for(lambda: c.fabric.peers, "c to connect to a")
    with pytest.raises(NoHolderError) as ei:
        c.fabric.evaluate(req)
    assert ei.value.attempts[0][1].reason == "bad MAC"


def test_a_node_key_must_be_its_own():
    with pytest.raises(ValueError, match="node 'a'.s, this node is 'b'"):
        Node(node_id="b", node_key=NodeKey.generate("k", "a"), listen="127.0.0.1:0")


def test_fabric_serve_processes_with_key_files(tmp_path):
    """`fabric serve --node-key / --trusted-keys`: a node trusting a's key
    records a's reply; one trusting another key for "a" refuses it. b and
    c are used once each says in its log that its link to a is up."""
    from served import read_until, serve, stop

    import node_ops
    ka = NodeKey.generate("ka", "a")
    ka.save(tmp_path / "a.key")
    (tmp_path / "trusted").write_text(ka.trusted_line() + "\n")
    (tmp_path / "wrong").write_text(NodeKey.generate("ka", "a").trusted_line() + "\n")
    (tmp_path / "bad").write_text("ka a nothex\n")
    procs = []
    try:
        pa, a_url = serve(tmp_path, "a", "--node-key", str(tmp_path / "a.key"),
                          "--home", "node_ops:home")
        procs.append(pa)
        req = node_ops.double.request(12)
        with connect(a_url) as c:
            got = c.evaluate(req)
            assert got.value == 24 and TrustedKeys.of(ka).check(got.claim, req.key, got,
                                                                "a") is None
        pb, b_url = serve(tmp_path, "b", "--peer", a_url, "--trusted-keys",
                          str(tmp_path / "trusted"), "--log-level", "info")
        procs.append(pb)
        pc, c_url = serve(tmp_path, "c", "--peer", a_url, "--trusted-keys",
                          str(tmp_path / "wrong"), "--log-level", "info")
        procs.append(pc)
        # The handshake: each node logs that a answered its link's HELLO and
        # is one of its peers (before its readiness line, or later when a
        # did not answer within the handshake timeout). Asking for a key
        # nobody holds was no such sign: a peer skipped (backing off, its
        # link down) is named among the peers asked too.
        for proc, name in ((pb, "b"), (pc, "c")):
            read_until(proc, f"node {name}: peer {a_url} is a")
        with connect(b_url) as b:
            assert b.evaluate(req).value == 24
        with connect(b_url, scope="held") as b:
            assert b.evaluate(req).value == 24  # b recorded it
        with connect(c_url) as c:
            with pytest.raises(NoHolderError, match="bad signature"):
                c.evaluate(req)
        with connect(c_url, scope="held") as c:
            with pytest.raises(fabric.ContentNotHeld):
                c.evaluate(req)  # c recorded nothing
        with pytest.raises(AssertionError, match="trusted-keys .*not hex"):
            serve(tmp_path, "d", "--trusted-keys", str(tmp_path / "bad"))
    finally:
        for p in procs:
            stop(p)


def test_unchecked_non_loopback_peers_are_warned_about(caplog, tmp_path):
    with caplog.at_level("WARNING", logger="fabric.node"):
        n = Node(str(tmp_path / "w.ledger"), node_id="w", listen="127.0.0.1:0",
                 peers=["fabric://192.0.2.1:7411", "fabric://127.0.0.1:1"])
    try:
        warned = [r.getMessage() for r in caplog.records if "without checking claims" in
                  r.getMessage()]
        assert len(warned) == 1 and "192.0.2.1" in warned[0] and "127.0.0.1" not in warned[0]
        caplog.clear()
        Node(str(tmp_path / "v.ledger"), node_id="v", peers=["fabric://192.0.2.1:7411"],
             listen="127.0.0.1:0", trusted_keys=TrustedKeys({})).cassette.close()
        assert not [r for r in caplog.records if "without checking" in r.getMessage()]
    finally:
        n.cassette.close()


class RandomForger:
    """A signer whose claim bytes on the wire are forged at random: bits
    flipped anywhere in them, cut short, another key's valid claim, an old
    claim of this key replayed for other bytes, garbage, the right claim
    re-signed by an untrusted key under a's id."""

    KINDS = ("flip", "cut", "other_key", "other_bytes", "garbage", "untrusted")

    def __init__(self, ka, rng, keys):
        self.ka, self.rng, self.keys = ka, rng, keys
        self.untrusted = NodeKey.generate("ka", "a")
        self.done = []

    def _wire(self, claim, forged):
        class Wire:
            def encode(self_inner):
                return forged
        self.done.append(claim.kind)
        return Wire()

    def _forge(self, claim, redo):
        rng = self.rng
        kind = rng.choice(self.KINDS)
        raw = claim.encode()
        if kind == "flip":
            b = bytearray(raw)
            for _ in range(rng.randrange(1, 4)):
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
            return bytes(b)
        if kind == "cut":
            return raw[:rng.randrange(len(raw))]
        if kind == "other_key":  # a's valid claim for the same bytes under another key
            return redo(rng.choice([k for k in self.keys if k != claim.key])).encode()
        if kind == "other_bytes":  # a's valid signature over another digest
            return self._resign_other(claim)
        if kind == "garbage":
            return rng.randbytes(rng.randrange(0, 300))
        return self.untrusted._make(claim.key, claim.kind, claim.reply_sha256, claim.length,
                                    "a", None).encode()

    def _resign_other(self, claim):
        sha = bytearray(claim.reply_sha256)
        sha[self.rng.randrange(32)] ^= 1
        return self.ka._make(claim.key, claim.kind, bytes(sha), claim.length, "a",
                             None).encode()

    def sign_record(self, key, data, producer):
        claim = self.ka.sign_record(key, data, producer)
        return self._wire(claim, self._forge(
            claim, lambda other: self.ka.sign_record(other, data, producer)))

    def sign_stream(self, key, digest, producer):
        claim = self.ka.sign_stream(key, digest, producer)
        return self._wire(claim, self._forge(
            claim, lambda other: self.ka.sign_stream(other, digest, producer)))


def test_randomized_forged_claims_over_the_wire_none_accepted(nodes):
    import random
    ka = NodeKey.generate("ka", "a")
    a = nodes("a", home=LocalFabric(), node_key=ka)
    reqs = [pair.request(i) for i in range(20)]
    sreqs = [count.request(i + 1) for i in range(5)]
    for r in reqs:
        a.fabric.evaluate(r)
    for r in sreqs:
        list(a.fabric.stream(r))
    forger = RandomForger(ka, random.Random(77), [r.key for r in reqs + sreqs])
    a.signer = forger
    gov = fabric.PeerGovernor(backoff_base=0.0, backoff_cap=0.0)
    b = _receiver(nodes, a, trusted_keys=TrustedKeys.of(ka), governor=gov)
    rng = random.Random(78)
    refused = 0
    for i in range(600):
        if i % 6 == 5:
            req = rng.choice(sreqs)
            with pytest.raises(fabric.RemoteError) as ei:
                list(b.fabric.stream(req))
            assert isinstance(ei.value.__cause__, ClaimRejected), ei.value
        else:
            req = rng.choice(reqs)
            with pytest.raises(NoHolderError) as ei:
                b.fabric.evaluate(req)
            assert isinstance(ei.value.attempts[0][1], ClaimRejected)
        refused += 1
    assert refused == 600 and len(b.cassette) == 0
    assert b.fabric.stats()["peer_penalties"] == 600
    assert len(forger.done) == 600 and forger.done.count("stream") == 100
    # The control: the same node signing honestly is accepted.
    a.signer = ka
    assert b.fabric.evaluate(reqs[0]).source == "peer:a"
    assert [x["i"] for x in b.fabric.stream(sreqs[2])] == [0, 1, 2]
