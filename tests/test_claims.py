"""Claims: golden vectors, the claim format's refusals, keys from files,
rotation and revocation, and a malicious peer matrix of 10,000 randomized
attempts that must all be refused while honest peers are accepted."""

import hashlib
import hmac
import random

import pytest

import fabric
from fabric import (Claim, ClaimRejected, ContentAddressedFabric, ContentPeer,
                    ContentServeFabric, EvalReply, FleetKeys, LocalFabric, NoHolderError,
                    OpRegistry, PeerGovernor)
from fabric.claims import attach, reply_bytes

SECRET = bytes(range(32))
# docs/spec/claims.md, vector 1: the MAC of the claim below under SECRET.
GOLDEN_MAC = "2e0073b8bb442b946a467f3b07e7c581134a26de91c89c3fac20c48a5bed0c05"


@pytest.fixture
def reg():
    r = OpRegistry()

    @fabric.op("double", registry=r)
    def double(x):
        return {"x": x, "twice": [2 * x, "t" * (x % 7)]}

    return r


def test_golden_vector_matches_the_spec():
    keys = FleetKeys({"k1": SECRET}, current="k1")
    key = fabric.ContentKey(bytes(32))
    reply = EvalReply(42, (), None, key, "held")
    assert reply_bytes(reply).hex() == "c101932a90c0"
    claim = keys.sign(key, reply, "node-a", time_ns=1_700_000_000_000_000_000)
    assert claim.reply_sha256 == hashlib.sha256(bytes.fromhex("c101932a90c0")).digest()
    signed = claim.signed_bytes()
    assert signed.hex() == (
        "98ac6661627269632e636c61696d01a26b31c420" + "00" * 32 + "c420"
        + claim.reply_sha256.hex() + "06a66e6f64652d61cf17979cfe362a0000")
    assert claim.mac == hmac.new(SECRET, signed, hashlib.sha256).digest()
    assert claim.mac.hex() == GOLDEN_MAC
    assert Claim.decode(claim.encode()) == claim


def test_decode_refuses_malformed_claims():
    keys = FleetKeys({"k1": SECRET}, current="k1")
    key = fabric.ContentKey(bytes(32))
    good = keys.sign(key, EvalReply(1, (), None, key, "held"), "a", time_ns=5)
    cb = fabric.canonical_bytes
    fields = ["fabric.claim", 1, "k1", bytes(32), bytes(32), 6, "a", 5, bytes(32)]
    assert Claim.decode(cb(fields))
    for i, bad, match in ((0, "other", "spec"), (1, 2, "version 2"), (2, "", "key id"),
                          (3, bytes(31), "the key field"), (5, -1, "length"),
                          (6, "", "producer"), (7, 1.5, "time"), (8, b"x", "mac")):
        f = list(fields)
        f[i] = bad
        with pytest.raises(ValueError, match=match):
            Claim.decode(cb(f))
    with pytest.raises(ValueError, match=r"9 \(version 1\) or 11"):
        Claim.decode(cb(fields[:8]))
    with pytest.raises(fabric.DecodeError):
        Claim.decode(good.encode()[:-3])


def test_keys_from_a_file_rotate_and_revoke(tmp_path):
    p = tmp_path / "fleet.keys"
    p.write_text(f"# fleet keys\nk2 {'22' * 32}\nk1 {SECRET.hex()}\nrevoked k0\n")
    keys = FleetKeys.from_file(p)
    assert keys.current == "k2" and "22" not in repr(keys)
    key = fabric.ContentKey(bytes(32))
    reply = EvalReply([1, 2], (), None, key, "held")
    old = FleetKeys({"k1": SECRET}, current="k1").sign(key, reply, "a")
    assert keys.check(old, key, reply, "a") is None  # signed with a key still accepted
    revoking = FleetKeys({"k1": SECRET, "k2": b"\x22" * 32}, current="k2", revoked={"k1"})
    assert revoking.check(old, key, reply, "a") == "key id 'k1' is revoked"
    (tmp_path / "bad.keys").write_text("k1 zz\n")
    with pytest.raises(ValueError, match="not hex"):
        FleetKeys.from_file(tmp_path / "bad.keys")
    with pytest.raises(ValueError, match="at least 16 bytes"):
        FleetKeys({"k": b"short"}, current="k")
    with pytest.raises(ValueError, match="revoked"):
        FleetKeys({"k": SECRET}, current="k", revoked={"k"})


def _honest_pair(reg, cassette_factory, keys, n):
    a = ContentAddressedFabric("a", cassette_factory("a"), home=LocalFabric(reg))
    reqs = [fabric.EvalRequest("double", (i,)) for i in range(n)]
    for r in reqs:
        a.evaluate(r)
    serve = ContentServeFabric(a.cassette, node="a", fleet_keys=keys)
    return reqs, serve


def test_an_honest_peer_is_accepted_and_an_unclaimed_reply_refused(reg, cassette_factory):
    keys = FleetKeys({"k1": SECRET}, current="k1")
    reqs, serve = _honest_pair(reg, cassette_factory, keys, 3)
    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("a", serve)],
                               fleet_keys=keys)
    assert b.trust == "fleet-key"
    got = b.evaluate(reqs[0])
    assert got.source == "peer:a" and got.value == {"x": 0, "twice": [0, ""]}
    # The same peer without claims: refused, and nothing is recorded.
    plain = ContentServeFabric(serve.cassette, node="a")
    g = PeerGovernor()
    c = ContentAddressedFabric("c", cassette_factory("c"), peers=[ContentPeer("a", plain)],
                               fleet_keys=keys, governor=g)
    with pytest.raises(NoHolderError) as ei:
        c.evaluate(reqs[1])
    (name, exc), = ei.value.attempts
    assert isinstance(exc, ClaimRejected) and exc.reason == "no claim" and exc.node == "a"
    assert reqs[1].key not in c.cassette
    assert any("discarded: no claim" in outcome for _, _, outcome in c.explain(reqs[1]).steps)
    assert g.health("a").last_event.startswith("penalised:")
    assert c.stats()["peer_penalties"] == 1
    # trust="none" takes it as before.
    d = ContentAddressedFabric("d", cassette_factory("d"), peers=[ContentPeer("a", plain)])
    assert d.trust == "none" and d.evaluate(reqs[1]).source == "peer:a"
    with pytest.raises(ValueError, match="needs fleet_keys"):
        ContentAddressedFabric("e", cassette_factory("e"), trust="fleet-key")
    with pytest.raises(ValueError, match="needs trusted_keys"):
        ContentAddressedFabric("e", cassette_factory("e"), trust="signatures")
    with pytest.raises(ValueError, match="trust must be"):
        ContentAddressedFabric("e", cassette_factory("e"), trust="members")


def test_a_rejected_reply_moves_on_to_the_next_holder(reg, cassette_factory):
    keys = FleetKeys({"k1": SECRET}, current="k1")
    reqs, serve = _honest_pair(reg, cassette_factory, keys, 1)

    class Liar:
        def evaluate(self, request, *, grants=None):
            honest = serve.evaluate(request, grants=grants)
            forged = EvalReply("forged", (), None, request.key, "held")
            return attach(forged, honest.claim._replace(producer="0liar"))

    b = ContentAddressedFabric("b", cassette_factory("b"), fleet_keys=keys,
                               peers=[ContentPeer("0liar", Liar()), ContentPeer("a", serve)])
    got = b.evaluate(reqs[0])
    assert got.source == "peer:a" and got.value == {"x": 0, "twice": [0, ""]}
    steps = b.explain(reqs[0]).steps
    assert steps[1][:2] == ("peer", "0liar") and "bad MAC" in steps[1][2]


ATTACKS = ("flip_value", "flip_claim", "swap_reply", "replay_claim", "wrong_producer",
           "forged_mac", "outsider_key", "unknown_key_id", "revoked_key_id", "no_claim",
           "relabel_key", "length_lie")


class Malicious:
    """A peer that answers every request with a forgery of the kind chosen."""

    def __init__(self, serve, keys, reqs, rng):
        self.serve, self.keys, self.reqs, self.rng = serve, keys, reqs, rng
        self.outsider = FleetKeys({"k1": bytes(reversed(SECRET))}, current="k1")
        self.revoked = FleetKeys({"old": b"\x07" * 32}, current="old")
        self.kind = None

    def _flip(self, value):
        data = bytearray(fabric.canonical_bytes(value))
        for _ in range(self.rng.randrange(1, 4)):
            i = self.rng.randrange(len(data))
            data[i] ^= 1 << self.rng.randrange(8)
        try:
            return fabric.unpack(bytes(data))
        except Exception:
            return [value, "tampered"]

    def evaluate(self, request, *, grants=None):
        rng, kind = self.rng, self.kind
        honest = self.serve.evaluate(request, grants=grants)  # signed by "a"
        claim = honest.claim._replace(producer="m", mac=b"")
        claim = claim._replace(mac=hmac.new(SECRET, claim.signed_bytes(), hashlib.sha256).digest())
        # ^ what "m" would send if it were an honest member: accepted (checked below)
        other = self.reqs[(self.reqs.index(request) + rng.randrange(1, len(self.reqs)))
                          % len(self.reqs)]
        other_reply = self.serve.evaluate(other)
        key = request.key
        if kind == "flip_value":
            value = self._flip(honest.value)
            if value == honest.value:
                value = [value]
            return attach(EvalReply(value, (), None, key, "held"), claim)
        if kind == "flip_claim":
            field = rng.choice(["reply_sha256", "length", "time_ns", "producer", "key"])
            if field == "reply_sha256":
                b = bytearray(claim.reply_sha256)
                b[rng.randrange(32)] ^= 1 << rng.randrange(8)
                bad = claim._replace(reply_sha256=bytes(b))
            elif field == "length":
                bad = claim._replace(length=claim.length + rng.choice([-1, 1, 1000]))
            elif field == "time_ns":
                bad = claim._replace(time_ns=claim.time_ns ^ (1 << rng.randrange(40)))
            elif field == "producer":
                bad = claim._replace(producer="m" + chr(rng.randrange(97, 123)))
            else:
                bad = claim._replace(key=other.key)
            return attach(honest, bad)
        if kind == "swap_reply":  # another key's reply and its own valid claim, relabelled
            return attach(EvalReply(other_reply.value, (), None, key, "held"),
                          other_reply.claim)
        if kind == "replay_claim":  # a valid claim for another key, on the right reply
            return attach(honest, other_reply.claim)
        if kind == "wrong_producer":  # "a"'s valid claim, served by "m"
            return honest
        if kind == "forged_mac":
            return attach(honest, claim._replace(mac=rng.randbytes(32)))
        if kind == "outsider_key":
            return attach(honest, self.outsider.sign(key, honest, "m"))
        if kind == "unknown_key_id":
            return attach(honest, claim._replace(key_id="k9"))
        if kind == "revoked_key_id":
            return attach(honest, self.revoked.sign(key, honest, "m"))
        if kind == "no_claim":
            return EvalReply(honest.value, (), None, key, "held")
        if kind == "relabel_key":  # another key's reply, with a claim re-signed by an outsider
            forged = EvalReply(other_reply.value, (), None, key, "held")
            return attach(forged, self.outsider.sign(key, forged, "m"))
        if kind == "length_lie":
            value = {"x": honest.value["x"], "twice": honest.value["twice"] + [0]}
            return attach(EvalReply(value, (), None, key, "held"), claim)
        raise AssertionError(kind)


def test_malicious_peer_matrix_ten_thousand_attempts_none_accepted(reg, cassette_factory):
    keys = FleetKeys({"k1": SECRET, "old": b"\x07" * 32}, current="k1", revoked={"old"})
    reqs, serve = _honest_pair(reg, cassette_factory, keys, 40)
    rng = random.Random(14)
    m = Malicious(serve, keys, reqs, rng)
    g = PeerGovernor(backoff_base=0.0, backoff_cap=0.0)
    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("m", m)],
                               fleet_keys=keys, governor=g, remember=4)
    reasons: dict[str, set] = {k: set() for k in ATTACKS}
    accepted = 0
    attempts = 10_000
    for i in range(attempts):
        m.kind = ATTACKS[i % len(ATTACKS)] if i < len(ATTACKS) * 10 else rng.choice(ATTACKS)
        req = rng.choice(reqs)
        try:
            b.evaluate(req)
            accepted += 1
        except NoHolderError as e:
            (name, exc), = e.attempts
            assert name == "m" and isinstance(exc, ClaimRejected), exc
            reasons[m.kind].add(exc.reason.split(" (")[0].split(" '")[0])
    assert accepted == 0
    assert len(b.cassette) == 0
    assert b.stats()["peer_penalties"] == attempts
    assert all(reasons[k] for k in ATTACKS)
    # The control: the same forger sending what an honest member would is accepted,
    # so the matrix above refused forgeries, not everything.
    m.kind = "honest"
    m.evaluate = lambda request, grants=None: _as_member(serve, request)
    assert b.evaluate(reqs[0]).source == "peer:m"


def _as_member(serve, request):
    honest = serve.evaluate(request)
    claim = honest.claim._replace(producer="m", mac=b"")
    claim = claim._replace(mac=hmac.new(SECRET, claim.signed_bytes(), hashlib.sha256).digest())
    return attach(honest, claim)
