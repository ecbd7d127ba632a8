"""Who a peer is and what it may do: tokens, TLS subjects, grants.

- A tokens file is a JSON object ``{principal: token}``. A presented token
  is compared with every entry by ``hmac.compare_digest`` (constant time,
  every entry, so the time does not say which matched); tokens are never
  logged or put in an error.
- With mutual TLS the principal is the client certificate's subject
  (``CN=alice,O=example``), verified against ``--tls-ca``.
- A grants file is a JSON object ``{principal: [capability, ...]}``; the key
  ``"*"`` gives the grants of principals not named. ``node.compute`` allows
  home compute, ``node.gossip`` taking part in the node's gossip (pulling
  its holdings, pushing holdings and fleet members: a member pushed is an
  address the node may dial, presenting its peer token there),
  ``secret:<name>`` a SecretRef's resolution; the rest are the
  capabilities requests declare. Without a grants file every principal
  holds ``*`` (everything): the default node binds loopback only.
"""

from __future__ import annotations

import hmac
import json
import os
import ssl
from typing import Any, Iterable, Mapping

__all__ = ["Tokens", "Grants", "server_tls", "client_tls", "tls_principal", "COMPUTE",
           "GOSSIP"]

#: The grant that allows home compute.
COMPUTE = "node.compute"
#: The grant that allows gossip with the node (its holdings, its fleet's members).
GOSSIP = "node.gossip"


def read_json_file(path: str, what: str) -> Any:
    """A JSON file's content (``OSError`` if it cannot be read; ``ValueError``
    naming the file, ``PATH: the WHAT file is ...``, if it is not UTF-8 JSON)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: the {what} file is not valid JSON ({exc.msg} at line "
                         f"{exc.lineno})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"{path}: the {what} file is not UTF-8 text ({exc.reason} at "
                         f"byte {exc.start})") from None


class Tokens:
    """Bearer tokens by principal (from a dict, a JSON tokens file, or a
    ``Tokens`` already read)."""

    def __init__(self, tokens: "Mapping[str, str] | str | Tokens"):
        if isinstance(tokens, Tokens):
            self._entries: list[tuple[str, bytes]] = list(tokens._entries)
            return
        data = read_json_file(tokens, "tokens") if isinstance(tokens, str) else tokens
        where = f"{tokens}: " if isinstance(tokens, str) else ""
        if not isinstance(data, Mapping) or not all(
                isinstance(k, str) and k and isinstance(v, str) and len(v) >= 16
                for k, v in data.items()):
            raise ValueError(f"{where}a tokens file is a JSON object of principal -> token "
                             f"(tokens of at least 16 characters)")
        by_token: dict[str, str] = {}
        for p, t in data.items():
            if t in by_token:  # (the token itself is never put in an error)
                raise ValueError(f"{where}principals {by_token[t]!r} and {p!r} have the same "
                                 f"token: a token names one principal")
            by_token[t] = p
        self._entries = [(p, t.encode()) for p, t in data.items()]

    def principal(self, token: Any) -> str | None:
        """The principal whose token this is, else None (constant time per entry)."""
        if not isinstance(token, str):
            return None
        given = token.encode()
        found = None
        for principal, expected in self._entries:
            if hmac.compare_digest(given, expected) and found is None:
                found = principal
        return found

    def __repr__(self) -> str:
        return f"Tokens({len(self._entries)} principals)"


class Grants:
    """Capabilities by principal (from a dict, a JSON grants file, or a
    ``Grants`` already read)."""

    def __init__(self, grants: "Mapping[str, Iterable[str]] | str | Grants | None" = None):
        if isinstance(grants, Grants):
            self._grants: dict[str, frozenset[str]] = dict(grants._grants)
            return
        data = read_json_file(grants, "grants") if isinstance(grants, str) else grants
        if data is None:
            data = {"*": ["*"]}
        if not isinstance(data, Mapping) or not all(
                isinstance(k, str) and isinstance(v, list) and all(isinstance(c, str) for c in v)
                for k, v in data.items()):
            where = f"{grants}: " if isinstance(grants, str) else ""
            raise ValueError(f"{where}a grants file is a JSON object of principal -> "
                             f"[capability]")
        self._grants = {k: frozenset(v) for k, v in data.items()}

    def of(self, principal: str) -> frozenset[str]:
        """The grants of ``principal`` (``"*"`` inside means everything)."""
        g = self._grants.get(principal)
        return self._grants.get("*", frozenset()) if g is None else g

    @staticmethod
    def effective(principal_grants: frozenset[str], claimed: Iterable[str]) -> frozenset[str]:
        """What a request may use: what the caller claims, within the principal's grants."""
        claimed = frozenset(claimed)
        if "*" in principal_grants:
            return claimed | (principal_grants - {"*"})
        return claimed & principal_grants if claimed else principal_grants

    @staticmethod
    def allows(grants: frozenset[str], capability: str) -> bool:
        return "*" in grants or capability in grants


def _readable(**files: str | None) -> None:
    """Each file given (``ca``, ``cert``, ``key``) can be opened: else an
    ``OSError`` naming it and its role (ssl's own names neither)."""
    for role, path in files.items():
        if path is None:
            continue
        what = {"ca": "TLS CA", "cert": "TLS certificate", "key": "TLS key"}[role]
        if not isinstance(path, (str, os.PathLike)):
            raise TypeError(f"the {what} file is a path, not {type(path).__name__}")
        try:
            with open(path, "rb"):
                pass
        except OSError as exc:
            raise type(exc)(exc.errno, f"{exc.strerror} (the {what} file)",
                            os.fspath(path)) from None


def _not_pem(what: str, exc: ssl.SSLError, needs: str) -> ValueError:
    return ValueError(f"{what} cannot be used: {exc.reason or exc} ({needs})")


def _load_cert(ctx: ssl.SSLContext, cert: str | None, key: str | None) -> None:
    if cert is not None:
        try:
            ctx.load_cert_chain(cert, key)
        except ssl.SSLError as exc:
            raise _not_pem(f"the TLS certificate {cert} and key {key or cert}", exc,
                           "PEM files, the key the certificate's") from None


def server_tls(cert: str, key: str, ca: str | None = None) -> ssl.SSLContext:
    """A server context; with ``ca`` client certificates are required
    (mutual TLS). A file that cannot be read is an ``OSError`` naming it and
    its role, one that cannot be used a ``ValueError`` naming it."""
    _readable(ca=ca, cert=cert, key=key)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert(ctx, cert, key)
    if ca is not None:
        try:
            ctx.load_verify_locations(ca)
        except ssl.SSLError as exc:
            raise _not_pem(f"the TLS CA file {ca}", exc, "PEM certificates") from None
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


def client_tls(ca: str | None = None, cert: str | None = None,
               key: str | None = None) -> ssl.SSLContext:
    """A client context trusting ``ca`` (else the system's), presenting
    ``cert``/``key`` when given. Host names are checked against the URL's
    host. Files are refused as by ``server_tls``."""
    _readable(ca=ca, cert=cert, key=key)
    try:
        ctx = ssl.create_default_context(cafile=ca)
    except ssl.SSLError as exc:
        raise _not_pem(f"the TLS CA file {ca}", exc, "PEM certificates") from None
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    _load_cert(ctx, cert, key)
    return ctx


_SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
          "countryName": "C"}


def _escape(value: str) -> str:
    """An attribute value as RFC 4514 writes it: ``,`` ``+`` ``"`` ``\\`` ``<``
    ``>`` ``;`` ``=`` escaped, and a leading ``#`` or space and a trailing
    space, so no value can read as more attributes or other RDNs."""
    chars = ["\\" + ch if ch in ',+"\\<>;=' else "\\00" if ch == "\0" else ch
             for ch in value]
    if chars and value[0] in "# ":
        chars[0] = "\\" + chars[0]
    if len(value) > 1 and value[-1] == " ":
        chars[-1] = "\\ "
    return "".join(chars)


def tls_principal(peercert: Any) -> str | None:
    """``CN=alice,O=example`` from ``SSLSocket.getpeercert()``, or None: the
    subject's RDNs in order joined by ``,`` (the attributes of one RDN by
    ``+``), values escaped as RFC 4514 says (a CN of ``alice,O=example`` is
    ``CN=alice\\,O\\=example``, never the principal of a certificate with
    CN ``alice`` and O ``example``)."""
    if not peercert:
        return None
    rdns = []
    for rdn in peercert.get("subject", ()):
        rdns.append("+".join(f"{_SHORT.get(name, name)}={_escape(value)}"
                             for name, value in rdn))
    return ",".join(rdns) or None
