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
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time
from typing import Any, Mapping, NamedTuple

from ._core import ContentKey, RemoteError, canonical_bytes, encode_value, unpack

__all__ = ["Claim", "ClaimRejected", "FleetKeys", "reply_bytes", "CLAIM_SPEC", "CLAIM_VERSION"]

CLAIM_SPEC = "fabric.claim"
CLAIM_VERSION = 1
#: How far in the future a claim's time may be (seconds of clock skew).
MAX_SKEW_S = 300


class ClaimRejected(RemoteError):
    """A peer's reply failed its claim and was discarded (``.node``, ``.reason``)."""

    reason: str


def reply_bytes(reply: Any) -> bytes:
    """The bytes a claim covers: the value encoding of ``[value,
    diagnostics, trace]`` (diagnostics as a list), the reply as a cassette
    holds it, independent of where the reply was decoded."""
    return encode_value([reply.value, list(reply.diagnostics), reply.trace])


class Claim(NamedTuple):
    """A producer's authenticated statement that ``reply_sha256`` (of
    ``length`` bytes) is the reply for ``key``."""

    key: ContentKey
    reply_sha256: bytes
    length: int
    producer: str
    time_ns: int
    key_id: str
    mac: bytes

    def signed_bytes(self) -> bytes:
        """The bytes the MAC covers: canonical msgpack of the fields before it."""
        return canonical_bytes([CLAIM_SPEC, CLAIM_VERSION, self.key_id, self.key.digest,
                                self.reply_sha256, self.length, self.producer, self.time_ns])

    def encode(self) -> bytes:
        """The claim on the wire: canonical msgpack of every field, MAC last."""
        return canonical_bytes([CLAIM_SPEC, CLAIM_VERSION, self.key_id, self.key.digest,
                                self.reply_sha256, self.length, self.producer, self.time_ns,
                                self.mac])

    @classmethod
    def decode(cls, data: bytes) -> "Claim":
        """A claim from ``encode()`` bytes; ValueError (DecodeError for bytes
        that are not msgpack) naming the first field that is wrong."""
        doc = unpack(data)
        if not isinstance(doc, list) or len(doc) != 9:
            raise ValueError("claim: not an array of 9 fields")
        spec, version, key_id, digest, sha, length, producer, t, mac = doc
        if spec != CLAIM_SPEC:
            raise ValueError(f"claim: spec is {spec!r}, expected {CLAIM_SPEC!r}")
        if version != CLAIM_VERSION:
            raise ValueError(f"claim: version {version!r} is not supported "
                             f"(this build reads version {CLAIM_VERSION})")
        for name, v, ok in (("key id", key_id, isinstance(key_id, str) and key_id),
                            ("key", digest, isinstance(digest, bytes) and len(digest) == 32),
                            ("reply sha256", sha, isinstance(sha, bytes) and len(sha) == 32),
                            ("length", length, type(length) is int and length >= 0),
                            ("producer", producer, isinstance(producer, str) and producer),
                            ("time", t, type(t) is int and t >= 0),
                            ("mac", mac, isinstance(mac, bytes) and len(mac) == 32)):
            if not ok:
                raise ValueError(f"claim: the {name} field is malformed ({v!r})")
        return cls(ContentKey(digest), sha, length, producer, t, key_id, mac)


class FleetKeys:
    """The fleet keys a node signs and verifies claims with.

    ``FleetKeys({"k1": secret, ...}, current="k1", revoked=())``: ``keys``
    maps key ids to secrets (at least 16 bytes); claims are signed with
    ``current`` and verified with any key that is not revoked.
    """

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

    def sign(self, key: ContentKey, reply: Any, producer: str,
             time_ns: int | None = None) -> Claim:
        """The claim that ``producer`` serves ``reply`` for ``key``."""
        data = reply_bytes(reply)
        t = time.time_ns() if time_ns is None else time_ns
        unsigned = Claim(key, hashlib.sha256(data).digest(), len(data), producer, t,
                         self.current, b"")
        return unsigned._replace(mac=self._mac(self.current, unsigned.signed_bytes()))

    def check(self, claim: object, key: ContentKey, reply: Any, producer: str,
              now_ns: int | None = None) -> str | None:
        """Why ``claim`` does not vouch for ``reply`` as ``key``'s reply from
        ``producer`` (None: it does). Checks, in order: a claim is there, its
        key id is known and not revoked, the MAC, the key, the producer, the
        time, then the reply's length and SHA-256."""
        if claim is None:
            return "no claim"
        if not isinstance(claim, Claim):
            return f"not a claim ({type(claim).__name__})"
        if claim.key_id in self.revoked:
            return f"key id {claim.key_id!r} is revoked"
        if claim.key_id not in self._keys:
            return f"unknown key id {claim.key_id!r}"
        try:
            signed = claim.signed_bytes()
        except Exception as exc:  # a field of a wrong type: not a claim we made
            return f"malformed claim ({type(exc).__name__})"
        if not isinstance(claim.mac, bytes) or not hmac.compare_digest(
                claim.mac, self._mac(claim.key_id, signed)):
            return "bad MAC"
        if claim.key != key:
            return f"the claim is for another key ({claim.key})"
        if claim.producer != producer:
            return f"the claim names producer {claim.producer!r}, not {producer!r}"
        now = time.time_ns() if now_ns is None else now_ns
        if claim.time_ns > now + MAX_SKEW_S * 10**9:
            return "the claim's time is in the future"
        data = reply_bytes(reply)
        if len(data) != claim.length:
            return f"the reply is {len(data)} bytes, the claim says {claim.length}"
        if not hmac.compare_digest(hashlib.sha256(data).digest(), claim.reply_sha256):
            return "the reply's SHA-256 differs from the claim's"
        return None


def attach(reply: Any, claim: Claim) -> Any:
    """``reply`` with ``claim`` attached (as its ``.claim``), for a peer to verify."""
    from .replies import EvalReply

    class_ = _claimed_class(EvalReply)
    out = class_(reply.value, reply.diagnostics, reply.trace, reply.key, reply.source)
    out.claim = claim
    return out


_CLAIMED: dict[type, type] = {}


def _claimed_class(base: type) -> type:
    cls = _CLAIMED.get(base)
    if cls is None:
        cls = type("ClaimedReply", (base,), {
            "__slots__": ("claim",),
            "__doc__": "An EvalReply with the claim its producer attached (``.claim``).",
            "__module__": __name__})
        _CLAIMED[base] = cls
    return cls
