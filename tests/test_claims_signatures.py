"""Ed25519 claims (trust="signatures") and claims on streams, in process:
golden vectors of docs/spec/claims.md, key files, a member that cannot
forge another member's replies, a malicious-peer matrix of 10,000
randomized attempts with none accepted, and streams whose claim fails
never recorded."""

import hashlib
import os
import random

import pytest

import fabric
from fabric import (Claim, ClaimRejected, ContentAddressedFabric, ContentPeer,
                    ContentServeFabric, EvalReply, FleetKeys, LocalFabric, NoHolderError,
                    OpRegistry, PeerGovernor)
from fabric._core import ed25519_verify
from fabric.claims import NodeKey, StreamDigest, TrustedKeys, attach, record_bytes

# RFC 8032 section 7.1, test 1: the seed and its public key.
SEED = bytes.fromhex("9d61b19deffd5a60ba844af492ec2cc44449c5697b326919703bac031cae7f60")
PUBLIC = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")
T = 1_700_000_000_000_000_000
ZERO = "00" * 32
HEAD = "9aac6661627269632e636c61696d02a765643235353139"  # [spec, 2, "ed25519",


@pytest.fixture
def reg():
    r = OpRegistry()

    @fabric.op("double", registry=r)
    def double(x):
        return {"x": x, "twice": (2 * x, "t" * (x % 7))}

    @fabric.op("count", registry=r)
    def count(n):
        for i in range(n):
            yield {"i": i}

    return r


def test_golden_vectors_match_the_spec():
    nk = NodeKey("n1", "node-a", SEED)
    assert nk.public_key == PUBLIC
    key = fabric.ContentKey(bytes(32))
    reply = EvalReply(42, (), None, key, "held")
    assert record_bytes(reply).hex() == "932a90c0"
    sha = hashlib.sha256(bytes.fromhex("932a90c0")).hexdigest()
    claim = nk.sign(key, reply, "node-a", time_ns=T, kind="record")
    assert claim.reply_sha256.hex() == sha
    signed = (HEAD + "a67265636f7264" + "a26e31" + "c420" + ZERO + "c420" + sha
              + "04" + "a66e6f64652d61" + "cf17979cfe362a0000")
    assert claim.signed_bytes().hex() == signed
    assert claim.mac.hex() == (
        "49434d74a03fc5b24c4ae3a8975797eb6fab8a9c6fcd6745cac2e468375902195b03"
        "9772f334fabec9148afba10a880eac5743167c7f957bcc73f32db6002e08")
    assert ed25519_verify(PUBLIC, bytes.fromhex(signed), claim.mac)
    wire = claim.encode()
    assert wire.hex() == "9b" + signed[2:] + "c440" + claim.mac.hex()
    assert Claim.decode(wire) == claim
    assert TrustedKeys.of(nk).check(claim, key, reply, "node-a") is None

    # A stream: items 1 and "two", then a diagnostic.
    d = StreamDigest()
    for tag, payload in ((0, 1), (0, "two"), (1, {"kind": "X", "message": "m"})):
        d.update(tag, payload)
    hashed = bytes.fromhex("920001" "9200a374776f" "920182a46b696e64a158a76d657373616765a16d")
    assert d.length == len(hashed) == 29 and d.digest() == hashlib.sha256(hashed).digest()
    sc = nk.sign_stream(key, d, "node-a", time_ns=T)
    assert sc.signed_bytes().hex() == (
        HEAD + "a673747265616d" + "a26e31" + "c420" + ZERO + "c420" + d.digest().hex()
        + "1d" + "a66e6f64652d61" + "cf17979cfe362a0000")
    assert sc.mac.hex() == (
        "c97ca5c4b6458a8bade3d14873ee687e468d011474a6e211314cd374d8e5dd48e534"
        "02ee9f9a46886280395e3b0eb113849013ba95882b8e54845d6591b57500")
    assert TrustedKeys.of(nk).check_stream(sc, key, d, "node-a") is None
    # The same reply under the fleet key, version 2 (kind "record").
    fc = FleetKeys({"k1": bytes(range(32))}, current="k1").sign(key, reply, "node-a",
                                                                time_ns=T, kind="record")
    assert fc.version == 2 and fc.mac.hex() == (
        "d49002e58376aa1671344ac80b3fe6fae78d684175a8f15e25f581619f2071d2")


def test_decode_refuses_malformed_version_2_claims():
    cb = fabric.canonical_bytes
    fields = ["fabric.claim", 2, "ed25519", "record", "n1", bytes(32), bytes(32), 4, "a", 5,
              bytes(64)]
    assert Claim.decode(cb(fields)).scheme == "ed25519"
    for i, bad, match in ((2, "rsa", "scheme"), (3, "blob", "kind"), (4, "", "key id"),
                          (5, bytes(31), "the key field"), (7, -1, "length"),
                          (10, bytes(32), "mac"), (1, 3, "version 3")):
        f = list(fields)
        f[i] = bad
        with pytest.raises(ValueError, match=match):
            Claim.decode(cb(f))
    with pytest.raises(ValueError, match="version 2 has 11 fields"):
        Claim.decode(cb(fields[:2] + fields[4:]))


def test_key_files_round_trip_and_refusals(tmp_path):
    nk = NodeKey.generate("n1", "node-a")
    path = tmp_path / "node.key"
    nk.save(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    back = NodeKey.from_file(path)
    assert back.public_key == nk.public_key and back.node == "node-a"
    assert SEED.hex() not in repr(NodeKey("n", "a", SEED)) and "seed" not in repr(nk)
    with pytest.raises(FileExistsError):
        nk.save(path)
    other = NodeKey.generate("n2", "node-b")
    trusted = tmp_path / "trusted.keys"
    trusted.write_text(f"# fleet\n{nk.trusted_line()}\n{other.trusted_line()}\n\nrevoked n0\n")
    tk = TrustedKeys.from_file(trusted)
    assert tk.revoked == {"n0"} and "node-a" in repr(tk)
    key = fabric.ContentKey(bytes(32))
    reply = EvalReply([1], (), None, key, "held")
    assert tk.check(back.sign(key, reply, "node-a"), key, reply, "node-a") is None
    for text, match in ((f"n1 node-a {'zz' * 32}\n", "not hex"),
                        (f"n1 node-a {'00' * 31}\n", "31 bytes, not 32"),
                        ("n1 node-a\n", "expected 'KEY_ID NODE_ID")):
        trusted.write_text(text)
        with pytest.raises(ValueError, match=match):
            TrustedKeys.from_file(trusted)
    (tmp_path / "two.key").write_text("a b " + "00" * 32 + "\nc d " + "00" * 32 + "\n")
    with pytest.raises(ValueError, match="expected one line"):
        NodeKey.from_file(tmp_path / "two.key")
    with pytest.raises(ValueError, match="32 bytes"):
        NodeKey("n", "a", b"short")
    with pytest.raises(ValueError, match="signs for node 'node-a', not 'node-b'"):
        nk.sign(key, reply, "node-b")
    with pytest.raises(ValueError, match="public key"):
        TrustedKeys({"n": ("a", b"x")})


def _fleet(reg, cassette_factory, n):
    a = ContentAddressedFabric("a", cassette_factory("a"), home=LocalFabric(reg))
    reqs = [fabric.EvalRequest("double", (i,)) for i in range(n)]
    for r in reqs:
        a.evaluate(r)
    return a, reqs


def test_signatures_hold_against_a_member(reg, cassette_factory):
    a, reqs = _fleet(reg, cassette_factory, 2)
    ka, km = NodeKey.generate("ka", "a"), NodeKey.generate("km", "m")
    trusted = TrustedKeys.of(ka, km)
    serve = ContentServeFabric(a.cassette, node="a", fleet_keys=ka)

    class Impostor:  # member "m" poses as "a": a forged reply, signed with m's own key
        def evaluate(self, request, *, grants=None):
            serve.evaluate(request)  # (a holds the key: the honest reply is not used)
            forged = EvalReply("forged", (), None, request.key, "held")
            c = ka.sign(request.key, forged, "a")._replace(key_id="km", mac=b"")
            return attach(forged, c._replace(mac=fabric._core.ed25519_sign(
                km._seed, c.signed_bytes())))

    class Relabel:  # "m" re-signs a's honest claim with its own key
        def evaluate(self, request, *, grants=None):
            honest = serve.evaluate(request)
            c = honest.claim._replace(key_id="km", mac=b"")
            return attach(honest, c._replace(mac=fabric._core.ed25519_sign(
                km._seed, c.signed_bytes())))

    g = PeerGovernor()
    b = ContentAddressedFabric("b", cassette_factory("b"), trusted_keys=trusted, governor=g,
                               peers=[ContentPeer("0m", Impostor()), ContentPeer("1m", Relabel()),
                                      ContentPeer("a", serve)])
    assert b.trust == "signatures"
    got = b.evaluate(reqs[0])
    assert got.source == "peer:a" and got.value == {"x": 0, "twice": (0, "")}
    steps = b.explain(reqs[0]).steps
    assert [s[1] for s in steps[1:4]] == ["0m", "1m", "a"]
    for step in steps[1:3]:
        assert "key id 'km' belongs to node 'm', the claim names 'a'" in step[2]
    assert b.stats()["peer_penalties"] == 2
    # The same fleet under a fleet key: a member's forgery goes through (by design).
    fk = FleetKeys({"k": bytes(32)}, current="k")
    c = ContentAddressedFabric("c", cassette_factory("c"), fleet_keys=fk,
                               peers=[ContentPeer("m", _FleetLiar(fk))])
    assert c.evaluate(reqs[1]).value == "forged"


class _FleetLiar:
    def __init__(self, keys):
        self.keys = keys

    def evaluate(self, request, *, grants=None):
        forged = EvalReply("forged", (), None, request.key, "held")
        return attach(forged, self.keys.sign(request.key, forged, "m"))


SIG_ATTACKS = ("flip_value", "flip_claim", "swap_reply", "replay_claim", "wrong_producer",
               "forged_signature", "outsider_key", "unknown_key_id", "revoked_key_id",
               "no_claim", "member_signs_as_a", "fleet_key_claim", "stream_claim_for_reply",
               "record_kind_lie")


class SigMalicious:
    """Peer "a" gone bad (or a machine in the middle posing as it)."""

    def __init__(self, serve, reqs, rng, ka, km, revoked):
        self.serve, self.reqs, self.rng = serve, reqs, rng
        self.ka, self.km, self.revoked = ka, km, revoked
        self.outsider = NodeKey.generate("ka", "a")  # same key id and node, another key
        self.kind = None

    def evaluate(self, request, *, grants=None):
        rng, kind, key = self.rng, self.kind, request.key
        honest = self.serve.evaluate(request)
        claim = honest.claim
        other = self.reqs[(self.reqs.index(request) + rng.randrange(1, len(self.reqs)))
                          % len(self.reqs)]
        other_reply = self.serve.evaluate(other)
        if kind == "flip_value":
            data = bytearray(fabric.encode_value(honest.value))
            i = rng.randrange(1, len(data))
            data[i] ^= 1 << rng.randrange(8)
            try:
                value = fabric.decode_value(bytes(data))
            except Exception:
                value = [honest.value]
            if value == honest.value:
                value = [value]
            return attach(EvalReply(value, (), None, key, "held"), claim)
        if kind == "flip_claim":
            field = rng.choice(["reply_sha256", "length", "time_ns", "key", "mac", "kind"])
            if field in ("reply_sha256", "mac"):
                b = bytearray(getattr(claim, field))
                b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
                return attach(honest, claim._replace(**{field: bytes(b)}))
            if field == "length":
                return attach(honest, claim._replace(length=claim.length + rng.choice([-1, 1])))
            if field == "time_ns":
                t = claim.time_ns ^ (1 << rng.randrange(40))
                return attach(honest, claim._replace(time_ns=t))
            if field == "kind":
                return attach(honest, claim._replace(kind="record"))
            return attach(honest, claim._replace(key=other.key))
        if kind == "swap_reply":
            return attach(EvalReply(other_reply.value, (), None, key, "held"), other_reply.claim)
        if kind == "replay_claim":
            return attach(honest, other_reply.claim)
        if kind == "wrong_producer":  # m's own valid claim, served as "a"
            return attach(honest, self.km.sign(key, honest, "m"))
        if kind == "forged_signature":
            return attach(honest, claim._replace(mac=rng.randbytes(64)))
        if kind == "outsider_key":
            return attach(honest, self.outsider.sign(key, honest, "a"))
        if kind == "unknown_key_id":
            return attach(honest, claim._replace(key_id="k9"))
        if kind == "revoked_key_id":
            return attach(honest, self.revoked.sign(key, honest, "a"))
        if kind == "no_claim":
            return EvalReply(honest.value, (), None, key, "held")
        if kind == "member_signs_as_a":
            c = claim._replace(key_id="km")
            return attach(honest, c._replace(mac=fabric._core.ed25519_sign(
                self.km._seed, c.signed_bytes())))
        if kind == "fleet_key_claim":
            fk = FleetKeys({"ka": bytes(32)}, current="ka")
            return attach(honest, fk.sign(key, honest, "a"))
        if kind == "stream_claim_for_reply":
            d = StreamDigest()
            d.update(0, honest.value)
            return attach(honest, self.ka.sign_stream(key, d, "a"))
        if kind == "record_kind_lie":  # a's valid "record" claim of another reply
            forged = EvalReply(other_reply.value, (), None, key, "held")
            return attach(forged, self.ka.sign(key, EvalReply(
                other_reply.value, (), None, key, "held"), "a", kind="record")._replace(
                reply_sha256=hashlib.sha256(record_bytes(honest)).digest()))
        raise AssertionError(kind)


def test_signature_malicious_peer_matrix_ten_thousand_attempts(reg, cassette_factory):
    a, reqs = _fleet(reg, cassette_factory, 30)
    ka, km, kold = (NodeKey.generate("ka", "a"), NodeKey.generate("km", "m"),
                    NodeKey.generate("kold", "a"))
    trusted = TrustedKeys({k.key_id: (k.node, k.public_key) for k in (ka, km, kold)},
                          revoked={"kold"})
    serve = ContentServeFabric(a.cassette, node="a", fleet_keys=ka)
    rng = random.Random(1414)
    m = SigMalicious(serve, reqs, rng, ka, km, kold)
    g = PeerGovernor(backoff_base=0.0, backoff_cap=0.0)
    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("a", m)],
                               trusted_keys=trusted, governor=g, remember=4)
    reasons = {k: set() for k in SIG_ATTACKS}
    accepted, attempts = 0, 10_000
    for i in range(attempts):
        m.kind = SIG_ATTACKS[i % len(SIG_ATTACKS)] if i < 200 else rng.choice(SIG_ATTACKS)
        try:
            b.evaluate(rng.choice(reqs))
            accepted += 1
        except NoHolderError as e:
            (name, exc), = e.attempts
            assert name == "a" and isinstance(exc, ClaimRejected), exc
            reasons[m.kind].add(exc.reason.split(" (")[0].split(" '")[0])
    assert accepted == 0 and len(b.cassette) == 0
    assert b.stats()["peer_penalties"] == attempts
    assert all(reasons[k] for k in SIG_ATTACKS), reasons
    # The control: the honest serve itself is accepted.
    m.evaluate = serve.evaluate
    assert b.evaluate(reqs[0]).source == "peer:a"


def test_a_signed_stream_is_recorded_and_a_tampered_one_is_not(reg, cassette_factory):
    a = ContentAddressedFabric("a", cassette_factory("a"), home=LocalFabric(reg))
    req = fabric.EvalRequest("count", (5,), stream=True)
    assert [x["i"] for x in a.stream(req)] == [0, 1, 2, 3, 4]
    ka = NodeKey.generate("ka", "a")
    serve = ContentServeFabric(a.cassette, node="a", fleet_keys=ka)
    s = serve.stream(req)
    assert s.claim is None and len(list(s)) == 5 and s.claim.kind == "stream"
    trusted = TrustedKeys.of(ka)

    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("a", serve)],
                               trusted_keys=trusted)
    assert [x["i"] for x in b.stream(req)] == [0, 1, 2, 3, 4]
    assert req.key in b.cassette and b.stream(req).source == "local"

    class Tamper:
        def __init__(self, how):
            self.how = how

        def evaluate(self, request, *, grants=None, timeout=None):
            raise AssertionError("only streams are asked")

        def stream(self, request, *, grants=None, timeout=None):
            honest = serve.stream(request)
            items = list(honest)
            if self.how == "drop":
                items = items[:-1]
            elif self.how == "change":
                items[2] = {"i": 99}
            out = fabric.EvalStream(iter([(0, x) for x in items]), request.key, "held")
            out.claim = honest.claim if self.how != "none" else None
            return out

    for how in ("drop", "change", "none"):
        g = PeerGovernor()
        c = ContentAddressedFabric(f"c{how}", cassette_factory(f"c{how}"), governor=g,
                                   peers=[ContentPeer("a", Tamper(how))], trusted_keys=trusted)
        got = []
        with pytest.raises(fabric.RemoteError) as ei:
            for x in c.stream(req):
                got.append(x)
        assert got  # the items were given: a stream cannot fall back once started
        assert isinstance(ei.value.__cause__, ClaimRejected)
        assert req.key not in c.cassette  # never recorded
        assert c.stats()["peer_penalties"] == 1
        assert g.health("a").last_event.startswith("penalised:")


def test_the_signer_object_signs_as_the_one_shot_call_and_keeps_its_seed():
    s = fabric._core.Ed25519Signer(SEED)
    assert s.public_key == PUBLIC and "9d61" not in repr(s)
    assert s.sign(b"") == fabric._core.ed25519_sign(SEED, b"") == bytes.fromhex(
        "e5564300c360ac729086e2cc806e828a84877f1eb8e5d974d873e065224901555fb8821590a33bacc6"
        "1e39701cf9b46bd25bf5f0595bbe24655141438e7a100b")  # RFC 8032 test 1
    import pickle
    with pytest.raises(TypeError):
        pickle.dumps(s)
    with pytest.raises(ValueError, match="must be 32 bytes, not 3"):
        fabric._core.Ed25519Signer(b"abc")
    with pytest.raises(ValueError, match="signature must be 64 bytes"):
        fabric._core.ed25519_verify(PUBLIC, b"", b"x")
    assert fabric._core.ed25519_verify(bytes(32), b"", bytes(64)) is False


def test_a_reply_the_claims_encoding_cannot_hold_is_refused_not_raised():
    nk = NodeKey("n1", "a", SEED)
    key = fabric.ContentKey(bytes(32))
    good = EvalReply([1], (), None, key, "held")
    claim = nk.sign(key, good, "a", kind="record")
    odd = EvalReply(object(), (), None, key, "held")
    why = TrustedKeys.of(nk).check(claim, key, odd, "a")
    assert why is not None and why.startswith("the reply cannot be encoded as a 'record'")
