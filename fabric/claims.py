"""Claims: replies no peer can forge (docs/spec/claims.md).

A node that serves a held reply to a peer attaches a *claim*: the content
key, the SHA-256 and length of the reply's bytes (its value encoding, see
``reply_bytes``), the producing node, a time, and an HMAC-SHA256 over all of
them under a fleet key named by a key id. The node that asked verifies the
claim against the reply it got before recording it: another key, other
bytes, another producer, an unknown or revoked key id, or a bad MAC, and the
reply is discarded (``ClaimRejected``), the peer penalised in the governor,
and the next holder or home asked.

With a fleet key every member can make valid claims: the claim protects
against outsiders (anyone without the key) and against damage, not against
a member that lies. Keys rotate by key id: a verifier holds every key still
accepted, a signer uses its ``current`` one, and a revoked id is refused.

With Ed25519 signatures (``NodeKey`` signs, ``TrustedKeys`` verifies:
``trust="signatures"``) each node signs with its own private key, and a
verifier accepts a claim only under a public key it trusts *for the node
the claim names*: a member cannot forge another member's replies.

A claim covers a single reply (its value encoding, kind ``"value"``; or the
canonical bytes of its record, kind ``"record"``, which the node protocol
carries) or a whole stream (kind ``"stream"``: a ``StreamDigest`` over its
ordered events).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any, Mapping, NamedTuple

from . import _core
from ._core import ContentKey, RemoteError, canonical_bytes, encode_value, unpack

__all__ = ["Claim", "ClaimRejected", "FleetKeys", "NodeKey", "TrustedKeys", "StreamDigest",
           "reply_bytes", "record_bytes", "CLAIM_SPEC", "CLAIM_VERSION", "SCHEMES", "KINDS"]

CLAIM_SPEC = "fabric.claim"
#: The newest claim version (version 1, HMAC claims of kind "value", is still read).
CLAIM_VERSION = 2
#: How a claim is authenticated.
SCHEMES = ("hmac-sha256", "ed25519")
#: What a claim covers: a reply's value encoding, its record's canonical
#: bytes (what the node protocol carries), or a stream's ordered events.
KINDS = ("value", "record", "stream")
#: How far in the future a claim's time may be (seconds of clock skew).
MAX_SKEW_S = 300


class ClaimRejected(RemoteError):
    """A peer's reply failed its claim and was discarded (``.node``, ``.reason``)."""

    reason: str


def reply_bytes(reply: Any) -> bytes:
    """The bytes a claim of kind ``"value"`` covers: the value encoding of
    ``[value, diagnostics, trace]`` (diagnostics as a list), the reply as a
    cassette holds it, independent of where the reply was decoded."""
    return encode_value([reply.value, list(reply.diagnostics), reply.trace])


def record_bytes(reply: Any) -> bytes:
    """The bytes a claim of kind ``"record"`` covers: a single reply's record
    ``[value, diagnostics, trace]`` exactly as it travelled over the node
    protocol (docs/spec/protocol.md section 3): the bytes received, which
    the node protocol's client keeps on the reply it attaches the claim to
    (``attach(..., data)``); for a reply without them, the record's
    canonical msgpack (what a node sends a peer that did not announce
    ``values``), which decodes and encodes back to the same bytes."""
    data = getattr(reply, "record_data", None)
    if data is not None:
        return bytes(data)
    return canonical_bytes([reply.value, list(reply.diagnostics), reply.trace])


def _covered(kind: str, reply: Any) -> bytes:
    return reply_bytes(reply) if kind == "value" else record_bytes(reply)


class StreamDigest:
    """The SHA-256 a stream claim covers: over the stream's events in order,
    each as the canonical msgpack of ``[tag, payload]`` (tag 0 an item, 1 a
    diagnostic). ``length`` counts the bytes hashed, ``events`` the events."""

    __slots__ = ("_h", "length", "events")

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self.length = 0
        self.events = 0

    def update(self, tag: int, payload: Any) -> None:
        """Add the next event."""
        self.update_encoded(tag, canonical_bytes(payload))

    def update_encoded(self, tag: int, body: bytes) -> None:
        """Add the next event from its payload's canonical bytes (what a node sends)."""
        if tag not in (0, 1):
            raise ValueError(f"a stream event's tag is 0 (item) or 1 (diagnostic), not {tag!r}")
        head = b"\x92\x00" if tag == 0 else b"\x92\x01"
        self._h.update(head)
        self._h.update(body)
        self.length += 2 + len(body)
        self.events += 1

    def digest(self) -> bytes:
        """The SHA-256 of the events so far."""
        return self._h.digest()


class Claim(NamedTuple):
    """A producer's authenticated statement that ``reply_sha256`` (of
    ``length`` bytes) is the reply (or, of kind ``"stream"``, the stream
    digest) for ``key``. ``mac`` is the HMAC-SHA256 or the Ed25519
    signature, as ``scheme`` says; ``version`` 1 is the original form
    (HMAC, kind ``"value"``), 2 names its scheme and kind."""

    key: ContentKey
    reply_sha256: bytes
    length: int
    producer: str
    time_ns: int
    key_id: str
    mac: bytes
    scheme: str = "hmac-sha256"
    kind: str = "value"
    version: int = 1

    def _parts(self) -> list[Any]:
        if self.version == 1:
            return [CLAIM_SPEC, 1, self.key_id, self.key.digest, self.reply_sha256,
                    self.length, self.producer, self.time_ns]
        return [CLAIM_SPEC, self.version, self.scheme, self.kind, self.key_id, self.key.digest,
                self.reply_sha256, self.length, self.producer, self.time_ns]

    def signed_bytes(self) -> bytes:
        """The bytes the MAC or signature covers: canonical msgpack of the
        fields before it."""
        return canonical_bytes(self._parts())

    def encode(self) -> bytes:
        """The claim on the wire: canonical msgpack of every field, MAC last."""
        return canonical_bytes(self._parts() + [self.mac])

    @classmethod
    def decode(cls, data: bytes) -> "Claim":
        """A claim from ``encode()`` bytes; ValueError (DecodeError for bytes
        that are not msgpack) naming the first field that is wrong."""
        doc = unpack(data)
        if not isinstance(doc, list) or len(doc) not in (9, 11):
            raise ValueError("claim: not an array of 9 (version 1) or 11 (version 2) fields")
        spec, version = doc[0], doc[1]
        if spec != CLAIM_SPEC:
            raise ValueError(f"claim: spec is {spec!r}, expected {CLAIM_SPEC!r}")
        if version not in (1, 2) or type(version) is not int:
            raise ValueError(f"claim: version {version!r} is not supported "
                             f"(this build reads versions 1 and {CLAIM_VERSION})")
        if len(doc) != (9 if version == 1 else 11):
            raise ValueError(f"claim: version {version} has {9 if version == 1 else 11} "
                             f"fields, not {len(doc)}")
        if version == 1:
            scheme, kind = "hmac-sha256", "value"
            key_id, digest, sha, length, producer, t, mac = doc[2:]
        else:
            scheme, kind, key_id, digest, sha, length, producer, t, mac = doc[2:]
        maclen = 64 if scheme == "ed25519" else 32
        for name, v, ok in (("scheme", scheme, scheme in SCHEMES),
                            ("kind", kind, kind in KINDS),
                            ("key id", key_id, isinstance(key_id, str) and key_id),
                            ("key", digest, isinstance(digest, bytes) and len(digest) == 32),
                            ("reply sha256", sha, isinstance(sha, bytes) and len(sha) == 32),
                            ("length", length, type(length) is int and length >= 0),
                            ("producer", producer, isinstance(producer, str) and producer),
                            ("time", t, type(t) is int and t >= 0),
                            ("mac", mac, isinstance(mac, bytes) and len(mac) == maclen)):
            if not ok:
                raise ValueError(f"claim: the {name} field is malformed ({v!r})")
        return cls(ContentKey(digest), sha, length, producer, t, key_id, mac, scheme, kind,
                   version)


class _Verifier:
    """The checks every scheme shares (docs/spec/claims.md, "Verification")."""

    scheme = ""
    revoked: frozenset[str] = frozenset()

    def _authentic(self, claim: Claim) -> str | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def _check(self, claim: object, key: ContentKey, kind: str, covered: Any,
               producer: str, now_ns: int | None) -> str | None:
        if claim is None:
            return "no claim"
        if isinstance(claim, MalformedClaim):
            return f"malformed claim ({claim.why})"
        if not isinstance(claim, Claim):
            return f"not a claim ({type(claim).__name__})"
        if claim.version not in (1, 2) or (claim.version == 1 and (
                claim.scheme, claim.kind) != ("hmac-sha256", "value")):
            return f"malformed claim (version {claim.version!r})"
        if claim.scheme != self.scheme:
            return f"the claim is {claim.scheme!r}, this node trusts {self.scheme!r} claims"
        if claim.key_id in self.revoked:
            return f"key id {claim.key_id!r} is revoked"
        try:
            why = self._authentic(claim)
        except Exception as exc:  # a field of a wrong type: not a claim anyone made
            return f"malformed claim ({type(exc).__name__})"
        if why is not None:
            return why
        if claim.kind != kind:
            return f"the claim covers a {claim.kind!r}, not a {kind!r}"
        if claim.key != key:
            return f"the claim is for another key ({claim.key})"
        if claim.producer != producer:
            return f"the claim names producer {claim.producer!r}, not {producer!r}"
        now = time.time_ns() if now_ns is None else now_ns
        if claim.time_ns > now + MAX_SKEW_S * 10**9:
            return "the claim's time is in the future"
        if isinstance(covered, StreamDigest):
            length, sha = covered.length, covered.digest()
            what = "stream"
        else:
            try:
                data = _covered(kind, covered)
            except Exception as exc:  # a value the claim's encoding cannot hold
                return f"the reply cannot be encoded as a {kind!r} ({type(exc).__name__})"
            length, sha = len(data), hashlib.sha256(data).digest()
            what = "reply"
        if length != claim.length:
            return f"the {what} is {length} bytes, the claim says {claim.length}"
        if not hmac.compare_digest(sha, claim.reply_sha256):
            return f"the {what}'s SHA-256 differs from the claim's"
        return None

    def check(self, claim: object, key: ContentKey, reply: Any, producer: str,
              now_ns: int | None = None) -> str | None:
        """Why ``claim`` does not vouch for ``reply`` as ``key``'s reply from
        ``producer`` (None: it does). Checks, in order: a claim is there, its
        scheme, its key id is known and not revoked, the MAC or signature
        (and, for signatures, that the key is the producer's), the kind, the
        key, the producer, the time, then the reply's length and SHA-256."""
        kind = getattr(claim, "kind", "value")
        return self._check(claim, key, kind if kind in ("value", "record") else "value",
                           reply, producer, now_ns)

    def check_stream(self, claim: object, key: ContentKey, digest: StreamDigest,
                     producer: str, now_ns: int | None = None) -> str | None:
        """``check`` for a whole stream: ``digest`` over the events received."""
        return self._check(claim, key, "stream", digest, producer, now_ns)


class _Signer:
    """Claim making, shared by the schemes."""

    scheme = ""

    def _key_id(self) -> str:  # pragma: no cover - abstract
        raise NotImplementedError

    def _auth(self, claim: Claim) -> bytes:  # pragma: no cover - abstract
        raise NotImplementedError

    def _make(self, key: ContentKey, kind: str, sha: bytes, length: int, producer: str,
              time_ns: int | None, version: int = CLAIM_VERSION) -> Claim:
        t = time.time_ns() if time_ns is None else time_ns
        unsigned = Claim(key, sha, length, producer, t, self._key_id(), b"", self.scheme,
                         kind, version)
        return unsigned._replace(mac=self._auth(unsigned))

    def sign_record(self, key: ContentKey, data: bytes, producer: str,
                    time_ns: int | None = None) -> Claim:
        """The claim (kind ``"record"``) for a reply whose record's canonical
        bytes are ``data`` (what a node sends)."""
        return self._make(key, "record", hashlib.sha256(data).digest(), len(data), producer,
                          time_ns)

    def sign_stream(self, key: ContentKey, digest: StreamDigest, producer: str,
                    time_ns: int | None = None) -> Claim:
        """The claim (kind ``"stream"``) for a whole stream."""
        return self._make(key, "stream", digest.digest(), digest.length, producer, time_ns)


class FleetKeys(_Signer, _Verifier):
    """The fleet keys a node signs and verifies claims with.

    ``FleetKeys({"k1": secret, ...}, current="k1", revoked=())``: ``keys``
    maps key ids to secrets (at least 16 bytes); claims are signed with
    ``current`` and verified with any key that is not revoked.
    """

    scheme = "hmac-sha256"

    def __init__(self, keys: Mapping[str, bytes], current: str, revoked: frozenset[str] | set[str]
                 | tuple[str, ...] = ()):
        self._keys: dict[str, bytes] = {}
        for kid, secret in keys.items():
            if not isinstance(kid, str) or not kid:
                raise TypeError(f"a key id is a non-empty str, not {kid!r}")
            if not isinstance(secret, bytes) or len(secret) < 16:
                raise ValueError(f"fleet key {kid!r}: a secret is at least 16 bytes")
            self._keys[kid] = secret
        if current not in self._keys:
            raise ValueError(f"the current key id {current!r} is not among the keys")
        self.revoked = frozenset(revoked)
        if current in self.revoked:
            raise ValueError(f"the current key id {current!r} is revoked")
        self.current = current

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "FleetKeys":
        """Keys from a file of lines ``KEY_ID HEX_SECRET`` (the first is
        current), ``revoked KEY_ID`` lines, ``#`` comments and blank lines."""
        keys: dict[str, bytes] = {}
        revoked: set[str] = set()
        current = None
        with open(path, encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                parts = line.split()
                if not parts or parts[0].startswith("#"):
                    continue
                if len(parts) != 2:
                    raise ValueError(f"{path}:{n}: expected 'KEY_ID HEX_SECRET' or "
                                     f"'revoked KEY_ID'")
                if parts[0] == "revoked":
                    revoked.add(parts[1])
                    continue
                try:
                    keys[parts[0]] = bytes.fromhex(parts[1])
                except ValueError:
                    raise ValueError(f"{path}:{n}: the secret of {parts[0]!r} is not hex") from None
                if current is None:
                    current = parts[0]
        if current is None:
            raise ValueError(f"{path}: no key")
        return cls(keys, current, frozenset(revoked))

    def __repr__(self) -> str:  # never the secrets
        return (f"FleetKeys(current={self.current!r}, ids={sorted(self._keys)}, "
                f"revoked={sorted(self.revoked)})")

    def _mac(self, kid: str, data: bytes) -> bytes:
        return hmac.new(self._keys[kid], data, hashlib.sha256).digest()

    def _key_id(self) -> str:
        return self.current

    def _auth(self, claim: Claim) -> bytes:
        return self._mac(claim.key_id, claim.signed_bytes())

    def _authentic(self, claim: Claim) -> str | None:
        if claim.key_id not in self._keys:
            return f"unknown key id {claim.key_id!r}"
        signed = claim.signed_bytes()
        if not isinstance(claim.mac, bytes) or not hmac.compare_digest(
                claim.mac, self._mac(claim.key_id, signed)):
            return "bad MAC"
        return None

    def sign(self, key: ContentKey, reply: Any, producer: str,
             time_ns: int | None = None, *, kind: str = "value") -> Claim:
        """The claim that ``producer`` serves ``reply`` for ``key`` (kind
        ``"value"``: a version-1 claim, as before signatures; ``"record"``:
        a version-2 claim over the record's canonical bytes)."""
        if kind not in ("value", "record"):
            raise ValueError(f"a reply's claim is of kind 'value' or 'record', not {kind!r}")
        data = _covered(kind, reply)
        return self._make(key, kind, hashlib.sha256(data).digest(), len(data), producer,
                          time_ns, 1 if kind == "value" else CLAIM_VERSION)


def _hex_bytes(text: str, n: int, what: str, where: str) -> bytes:
    try:
        raw = bytes.fromhex(text)
    except ValueError:
        raise ValueError(f"{where}: {what} is not hex") from None
    if len(raw) != n:
        raise ValueError(f"{where}: {what} is {len(raw)} bytes, not {n}")
    return raw


def _lines(path: str | os.PathLike[str]) -> Any:
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            parts = line.split()
            if parts and not parts[0].startswith("#"):
                yield f"{os.fspath(path)}:{n}", parts


class NodeKey(_Signer):
    """A node's Ed25519 signing key: ``NodeKey(key_id, node, seed)``.

    ``seed`` is the 32-byte private key (RFC 8032); ``public_key`` its
    32-byte public key. Claims it makes name ``node`` as their producer, so
    a verifier that trusts ``public_key`` for ``node`` (``TrustedKeys``)
    accepts them. ``NodeKey.generate(key_id, node)`` makes one;
    ``save(path)`` / ``NodeKey.from_file(path)`` keep it in a file of one
    line ``KEY_ID NODE_ID HEX_SEED`` (written with mode 0600, never over an
    existing file); ``trusted_line()`` is its line for a trusted-keys file.
    ``repr`` never shows the seed.
    """

    scheme = "ed25519"
    __slots__ = ("key_id", "node", "_seed", "_signer", "public_key")

    def __init__(self, key_id: str, node: str, seed: bytes):
        if not isinstance(key_id, str) or not key_id or any(c.isspace() for c in key_id):
            raise ValueError(f"a key id is a non-empty str without spaces, not {key_id!r}")
        if not isinstance(node, str) or not node or any(c.isspace() for c in node):
            raise ValueError(f"a node id is a non-empty str without spaces, not {node!r}")
        if not isinstance(seed, bytes) or len(seed) != 32:
            raise ValueError("an Ed25519 private key (seed) is 32 bytes")
        self.key_id = key_id
        self.node = node
        self._seed = seed
        self._signer = _core.Ed25519Signer(seed)  # the key made once
        #: The 32-byte Ed25519 public key.
        self.public_key = self._signer.public_key

    @classmethod
    def generate(cls, key_id: str, node: str) -> "NodeKey":
        """A new key from OpenSSL's random generator."""
        seed, _public = _core.ed25519_generate()
        return cls(key_id, node, seed)

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "NodeKey":
        """The key in ``path`` (one line ``KEY_ID NODE_ID HEX_SEED``)."""
        found = [(where, parts) for where, parts in _lines(path)]
        if len(found) != 1 or len(found[0][1]) != 3:
            raise ValueError(f"{os.fspath(path)}: expected one line 'KEY_ID NODE_ID HEX_SEED'")
        where, (kid, node, hexseed) = found[0]
        return cls(kid, node, _hex_bytes(hexseed, 32, "the seed", where))

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the key to a new file readable by its owner only
        (``FileExistsError`` if ``path`` exists)."""
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"# fabric node key (Ed25519): KEY_ID NODE_ID HEX_SEED. Keep it secret.\n"
                    f"{self.key_id} {self.node} {self._seed.hex()}\n")

    def trusted_line(self) -> str:
        """``KEY_ID NODE_ID HEX_PUBLIC_KEY``: this key's line in a trusted-keys file."""
        return f"{self.key_id} {self.node} {self.public_key.hex()}"

    def __repr__(self) -> str:  # never the seed
        return (f"NodeKey(key_id={self.key_id!r}, node={self.node!r}, "
                f"public={self.public_key.hex()})")

    def _key_id(self) -> str:
        return self.key_id

    def _auth(self, claim: Claim) -> bytes:
        return self._signer.sign(claim.signed_bytes())

    def _make(self, key: ContentKey, kind: str, sha: bytes, length: int, producer: str,
              time_ns: int | None, version: int = CLAIM_VERSION) -> Claim:
        if producer != self.node:
            raise ValueError(f"node key {self.key_id!r} signs for node {self.node!r}, "
                             f"not {producer!r}")
        return super()._make(key, kind, sha, length, producer, time_ns, version)

    def sign(self, key: ContentKey, reply: Any, producer: str,
             time_ns: int | None = None, *, kind: str = "value") -> Claim:
        """The signed claim that ``producer`` (this key's node) serves
        ``reply`` for ``key``, of kind ``"value"`` or ``"record"``."""
        if kind not in ("value", "record"):
            raise ValueError(f"a reply's claim is of kind 'value' or 'record', not {kind!r}")
        data = _covered(kind, reply)
        return self._make(key, kind, hashlib.sha256(data).digest(), len(data), producer,
                          time_ns)


class TrustedKeys(_Verifier):
    """The Ed25519 public keys a node accepts claims under, each for one node.

    ``TrustedKeys({key_id: (node_id, public_key)}, revoked=())``. A claim
    verifies only if its key id is here and not revoked, its signature is
    valid under that public key, and the node the key belongs to is the
    claim's producer: a member's own key cannot vouch for another member's
    replies. ``TrustedKeys.from_file(path)`` reads lines ``KEY_ID NODE_ID
    HEX_PUBLIC_KEY`` (a node may have several, for rotation), ``revoked
    KEY_ID``, ``#`` comments and blank lines; ``TrustedKeys.of(*node_keys)``
    trusts the public halves of ``NodeKey`` objects.
    """

    scheme = "ed25519"

    def __init__(self, keys: Mapping[str, tuple[str, bytes]],
                 revoked: frozenset[str] | set[str] | tuple[str, ...] = ()):
        self._keys: dict[str, tuple[str, bytes]] = {}
        for kid, entry in keys.items():
            if not isinstance(kid, str) or not kid:
                raise TypeError(f"a key id is a non-empty str, not {kid!r}")
            if (not isinstance(entry, tuple) or len(entry) != 2
                    or not isinstance(entry[0], str) or not entry[0]
                    or not isinstance(entry[1], bytes) or len(entry[1]) != 32):
                raise ValueError(f"trusted key {kid!r}: expected (node id, 32-byte public key)")
            self._keys[kid] = entry
        self.revoked = frozenset(revoked)

    @classmethod
    def of(cls, *node_keys: NodeKey) -> "TrustedKeys":
        """Trust the public keys of ``node_keys``."""
        return cls({k.key_id: (k.node, k.public_key) for k in node_keys})

    @classmethod
    def from_file(cls, path: str | os.PathLike[str]) -> "TrustedKeys":
        """Keys from lines ``KEY_ID NODE_ID HEX_PUBLIC_KEY`` and ``revoked KEY_ID``."""
        keys: dict[str, tuple[str, bytes]] = {}
        revoked: set[str] = set()
        for where, parts in _lines(path):
            if parts[0] == "revoked" and len(parts) == 2:
                revoked.add(parts[1])
            elif len(parts) == 3:
                keys[parts[0]] = (parts[1], _hex_bytes(parts[2], 32, "the public key", where))
            else:
                raise ValueError(f"{where}: expected 'KEY_ID NODE_ID HEX_PUBLIC_KEY' or "
                                 f"'revoked KEY_ID'")
        return cls(keys, frozenset(revoked))

    def __repr__(self) -> str:
        return (f"TrustedKeys({len(self._keys)} keys of nodes "
                f"{sorted({n for n, _ in self._keys.values()})}, revoked={sorted(self.revoked)})")

    def _authentic(self, claim: Claim) -> str | None:
        entry = self._keys.get(claim.key_id)
        if entry is None:
            return f"unknown key id {claim.key_id!r}"
        node, public = entry
        if not isinstance(claim.mac, bytes) or len(claim.mac) != 64 or \
                not _core.ed25519_verify(public, claim.signed_bytes(), claim.mac):
            return "bad signature"
        if claim.producer != node:
            return (f"key id {claim.key_id!r} belongs to node {node!r}, the claim names "
                    f"{claim.producer!r}")
        return None


def signed_stream(events: Any, key: ContentKey, source: str, signer: Any,
                  producer: str) -> Any:
    """An ``EvalStream`` of ``(tag, payload)`` events that digests them as
    they pass and, once they end, carries ``signer``'s stream claim as its
    ``.claim`` (a stream closed early has none)."""
    from .replies import EvalStream

    def run() -> Any:
        digest = StreamDigest()
        for tag, payload in events:
            digest.update(tag, payload)
            yield tag, payload
        out.claim = signer.sign_stream(key, digest, producer)

    out: Any = EvalStream(run(), key, source)
    out.claim = None
    return out


def verified_events(events: Any, stream: Any, verifier: Any, key: ContentKey,
                    producer: str) -> Any:
    """``events`` of a peer's ``stream`` passed through, digested; once they
    end, ``ClaimRejected`` unless the stream's ``.claim`` vouches for them
    (so a recording of them is aborted, never held)."""
    digest = StreamDigest()
    for ev in events:
        digest.update(ev[0], ev[1])
        yield ev
    why = verifier.check_stream(getattr(stream, "claim", None), key, digest, producer)
    if why is not None:
        rej = ClaimRejected(f"peer {producer!r}'s stream for {key} was discarded after "
                            f"{digest.events} events: {why}")
        rej.node = producer
        rej.reason = why
        raise rej


class MalformedClaim(NamedTuple):
    """Claim bytes a peer sent that do not decode (``why``): refused as such."""

    why: str


def from_wire(raw: Any) -> Claim | MalformedClaim | None:
    """The claim a node protocol message carried (its ``claim`` field:
    ``Claim.encode()`` bytes, or absent), or a ``MalformedClaim`` saying why
    the bytes are not one."""
    if raw is None:
        return None
    if not isinstance(raw, (bytes, bytearray)):
        return MalformedClaim(f"the claim field is {type(raw).__name__}, not bin")
    try:
        return Claim.decode(bytes(raw))
    except ValueError as exc:  # DecodeError too
        return MalformedClaim(str(exc))


def attach(reply: Any, claim: Claim | MalformedClaim | None,
           data: bytes | None = None) -> Any:
    """``reply`` with ``claim`` attached (as its ``.claim``), for a peer to
    verify; ``data``: the record's bytes as they arrived, which the reply
    was decoded from (``.record_data``, what a claim of kind ``record``
    covers: ``record_bytes``)."""
    from .replies import EvalReply

    class_ = _claimed_class(EvalReply)
    out = class_(reply.value, reply.diagnostics, reply.trace, reply.key, reply.source)
    out.claim = claim
    out.record_data = data
    return out


_CLAIMED: dict[type, type] = {}


def _claimed_class(base: type) -> type:
    cls = _CLAIMED.get(base)
    if cls is None:
        cls = type("ClaimedReply", (base,), {
            "__slots__": ("claim", "record_data"),
            "__doc__": "An EvalReply with the claim its producer attached (``.claim``) "
                       "and the record's bytes it came in (``.record_data``, or None).",
            "__module__": __name__})
        _CLAIMED[base] = cls
    return cls
