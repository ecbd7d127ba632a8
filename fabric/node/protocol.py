"""The node protocol: what the messages between nodes are, over the frame codec.

Every message is one frame of docs/spec/frames.md (or, for a reply larger
than one frame's payload, several). This module only builds and checks
payloads; it does no I/O, so the server, the client and the tests share it
(docs/spec/protocol.md is the spec, tests/golden/protocol.json its vectors).

- ``HELLO`` (stream 0), both ways: the handshake. Client: ``{"proto":
  [major, minor], "node": str|nil, "max_frame": int, "window": int, "caps":
  [str], "token": str|nil}``. Server: the same fields without ``token``,
  plus ``"principal"`` and ``"grants"``.
- ``CONTROL`` ``open`` on a fresh stream id: a request. ``metadata`` is
  ``{"request": <request map>, "key": bin32, "want": "value"|"stream",
  "scope": "held"|"compute", "grants": [str], "timeout": float|nil,
  "via": [str]}``.
- ``CONTROL`` ``cancel`` / ``close`` on a request's stream id.
- The reply on the request's stream id: ``STREAM_START`` ``{"metadata":
  {"source": str}}``, then ``STREAM_CHUNK`` frames, then ``STREAM_END``
  (with a ``claim``, docs/spec/claims.md, when the node signs what it sends).
  For ``want="value"`` the chunks are bin slices of the reply record's
  canonical bytes (``[value, diagnostics, trace]``); for ``want="stream"``
  each chunk is one item, diagnostics as ``DIAGNOSTIC`` chunks.
- ``ERROR`` on a request's stream id: that request failed, ``{"kind":
  <exception class>, "message": str}``; on stream 0: the connection is
  refused or ending, and the sender closes it.
- ``CREDIT`` on a stream id: ``{"consumed": int}``, the cumulative payload
  bytes of that stream the receiver has consumed.
- ``GOSSIP`` (stream 0): a delta ``{"origin": str, "start": int, "end": int,
  "facts": [[bin32, str]], "epoch": int}`` (the origin's holding index from
  version ``start`` to ``end``), a pull ``{"pull": int, "epoch": int}``
  (send me your facts after this version of yours), or ``{"members":
  [[node id, URL, computes]]}``; built and checked in ``fabric.node.gossip``.
- ``PING`` / ``PONG``: keepalive, payload echoed.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Iterable, Mapping, NamedTuple

from .._core import (CapabilityDenied, ContentKey, ContentNotHeld, DeadlineExceeded,
                     EvalRequest, FabricError, FabricUnavailable, FrameEncoder,
                     NoHolderError, OpNotFound, RemoteError, Secret, StreamFrameLimits,
                     canonical_bytes)
from ..frames import FrameKind, StreamDiagnostic
from ..values import walk

__all__ = [
    "PROTOCOL_VERSION", "DEFAULT_WINDOW", "DEFAULT_MAX_FRAME", "ProtocolError",
    "VersionMismatch", "IdleTimeout", "Unauthenticated", "LimitExceeded", "Backpressure",
    "request_to_wire", "request_from_wire", "hello", "check_hello", "error_payload",
    "error_from_payload", "check_no_secret", "check_request_no_secret", "SECRET_REF_TAG",
    "NodeURL", "NodeURLError", "parse_node_url", "is_node_url",
]

#: (major, minor). A peer with a newer major version is refused.
PROTOCOL_VERSION = (1, 0)
#: Default per-stream credit window in bytes.
DEFAULT_WINDOW = 4 << 20
#: Default largest frame payload a node (and a client) accepts: 1 MiB and
#: 4 KiB for the encoding around it, so an item of 1 MiB (bytes, str, an
#: array and its header) travels in one frame (docs/spec/protocol.md
#: section 3).
DEFAULT_MAX_FRAME = (1 << 20) + 4096
#: The smallest ``max_frame`` a peer may announce.
MIN_MAX_FRAME = 4096
#: The longest timeout an open's ``timeout`` gives (seconds, ~31.7 years): one
#: above it (1e308, inf, 2**64) is read as this, since waits of the platform's
#: clock overflow past it ("timestamp out of range for platform time_t").
MAX_TIMEOUT = 1e9
#: A SecretRef travels (and keys) as the array [SECRET_REF_TAG, name].
SECRET_REF_TAG = "fabric.SecretRef"

SCOPES = ("held", "compute")
WANTS = ("value", "stream")


class ProtocolError(FabricError, ValueError):
    """A peer broke the node protocol (a malformed or unexpected message)."""


class VersionMismatch(ProtocolError):
    """The peer speaks a protocol major version this node does not."""


class IdleTimeout(ProtocolError):
    """The node closed a connection that sent nothing for its ``idle_timeout``
    (docs/spec/protocol.md section 6). ``received``: the frames the node had
    read on that connection when it closed it, its HELLO included (None
    when the ERROR did not say): a request whose open came later was never
    read, so never processed."""

    def __init__(self, message: str, received: int | None = None):
        super().__init__(message)
        self.received = received


class Unauthenticated(FabricError, PermissionError):
    """The handshake's credentials were refused."""


class LimitExceeded(FabricError, OSError):
    """A limit of the node was reached (connections, budget, buffers)."""


class Backpressure(FabricError, BlockingIOError):
    """A non-blocking send found no credit left on its stream."""


class NodeURLError(ValueError):
    """A node URL that is not ``fabric://HOST:PORT`` or ``fabrics://HOST:PORT``."""


class NodeURL(NamedTuple):
    """A node URL's parts (``parse_node_url``): ``scheme`` ``"fabric"`` or
    ``"fabrics"`` (TLS), ``host`` (a name in lower case, an IPv4 address, or
    an IPv6 address without its brackets) and ``port`` (1..65535)."""

    scheme: str
    host: str
    port: int

    @property
    def tls(self) -> bool:
        """Whether the node is reached over TLS (``fabrics://``)."""
        return self.scheme == "fabrics"


NODE_URL_FORM = "a node URL is fabric://HOST:PORT or fabrics://HOST:PORT (TLS)"


def parse_node_url(url: str) -> NodeURL:
    """``url`` as a ``NodeURL``: ``fabric://HOST:PORT`` or
    ``fabrics://HOST:PORT`` (TLS; the scheme in any case), an IPv6 HOST in
    brackets (``fabric://[::1]:7411``), the port in 1..65535, nothing after
    it but an optional ``/``. The one parser of node URLs: the client, a
    node's peers, the fleet's members and the command line use it.

    Raises ``TypeError`` for a non-str, ``NodeURLError`` (a ``ValueError``)
    naming the URL, the form and what is wrong with it otherwise."""
    if not isinstance(url, str):
        raise TypeError(f"{NODE_URL_FORM}: a str, not {type(url).__name__}")

    def bad(why: str) -> NodeURLError:
        return NodeURLError(f"{NODE_URL_FORM}, not {url!r}: {why}")

    scheme, sep, rest = url.partition("://")
    if not sep:
        raise bad("it has no scheme (fabric:// or fabrics://)")
    if scheme.lower() not in ("fabric", "fabrics"):
        raise bad(f"its scheme {scheme!r} is neither fabric nor fabrics")
    if rest.endswith("/"):
        rest = rest[:-1]
    if any(c in rest for c in "/?#"):
        raise bad("a node URL has no path, query or fragment")
    if "@" in rest:
        raise bad("a node URL has no user (a token goes in token=)")
    if rest.startswith("["):
        end = rest.find("]")
        if end < 0:
            raise bad("its IPv6 address has no closing ']'")
        host, after = rest[1:end], rest[end + 1:]
        if not host:
            raise bad("its host is empty")
        if not _is_ipv6(host.partition("%")[0]):  # (a zone, fe80::1%eth0, may follow)
            raise bad(f"{host!r} is not an IPv6 address")
        if after and not after.startswith(":"):
            raise bad("a ':PORT' follows the ']' of an IPv6 address")
        port_text = after[1:]
    else:
        if rest.count(":") > 1:
            host, _, last = rest.rpartition(":")
            example = f"[{host}]:{last}" if last.isdigit() and _is_ipv6(host) \
                else f"[{rest}]:PORT"
            raise bad(f"an IPv6 address goes in brackets: {scheme}://{example}")
        host, _, port_text = rest.partition(":")
        if not host:
            raise bad("its host is empty")
        host = host.lower()
    if any(c.isspace() or not c.isprintable() for c in host):
        raise bad("its host has a space or a control character")
    if not port_text:
        raise bad("it has no port (HOST:PORT)")
    if not (port_text.isascii() and port_text.isdigit()):
        raise bad(f"its port {port_text!r} is not a number")
    port = int(port_text)
    if not 0 < port < 65536:
        raise bad(f"its port {port} is not in 1..65535")
    return NodeURL(scheme.lower(), host, port)


def _is_ipv6(text: str) -> bool:
    try:
        ipaddress.IPv6Address(text)
    except ValueError:
        return False
    return True


def is_node_url(url: str) -> bool:
    """Whether ``url`` is a node URL (``parse_node_url`` takes it)."""
    try:
        parse_node_url(url)
    except (TypeError, ValueError):
        return False
    return True


def encoder(max_frame: int = DEFAULT_MAX_FRAME) -> FrameEncoder:
    """A frame encoder refusing payloads above ``max_frame`` bytes."""
    return FrameEncoder(node_limits(max_frame))


def node_limits(max_frame: int) -> StreamFrameLimits:
    """The frame limits a node decodes with: ``max_frame`` per payload, the
    rest wide (streams are bounded by credit and budgets, not frame counts)."""
    return StreamFrameLimits(max_frame_payload_bytes=max_frame, max_stream_frames=1 << 40,
                             max_stream_bytes=1 << 62, max_duration_ms=1 << 40,
                             max_rate_hz=1 << 30)


# ---- requests ----------------------------------------------------------------

# Exact types that neither are nor hold a Secret: a value of these, or a
# flat tuple, list or dict of them (the usual arguments), needs no walk.
_PLAIN = frozenset((int, float, str, bytes, bool, type(None)))


def check_no_secret(value: Any, where: str = "args", depth: int = 0) -> None:
    """Raise ``CapabilityDenied`` if ``value`` holds a ``fabric.Secret``: its
    value never enters frames, so the request cannot be computed remotely."""
    t = type(value)
    if t in _PLAIN:
        return
    if t is tuple or t is list:
        if all(type(v) in _PLAIN for v in value):
            return
    elif t is dict:
        if all(type(k) in _PLAIN and type(v) in _PLAIN for k, v in value.items()):
            return
    for path, v in walk(value, where, depth):
        if isinstance(v, Secret):
            raise CapabilityDenied(
                f"{path} holds a fabric.Secret: its value never leaves this process, so the "
                f"request is not sent for remote compute; pass fabric.SecretRef(name) instead "
                f"and give the computing node the secret (environment FABRIC_SECRET_<NAME> or "
                f"its --secrets file)")


def check_request_no_secret(request: EvalRequest) -> bool:
    """``check_no_secret`` on a request's args and kwargs. False when they
    are flat scalars (the usual arguments: nothing walked, nothing worth
    remembering), True when they were walked and hold no Secret."""
    for v in request.args:
        if type(v) not in _PLAIN:
            break
    else:
        for v in request.kwargs.values():  # (its keys are str: EvalRequest's rule)
            if type(v) not in _PLAIN:
                break
        else:
            return False
    check_no_secret(request.args, "args")
    check_no_secret(dict(request.kwargs), "kwargs")
    return True


def request_to_wire(request: EvalRequest, *, checked: bool = False) -> dict[str, Any]:
    """The request map (identity fields plus routing policy). ``checked``:
    the caller already made sure no ``fabric.Secret`` is in it."""
    if not checked:
        check_no_secret(request.args, "args")
        check_no_secret(dict(request.kwargs), "kwargs")
    return {"op": request.op, "args": list(request.args), "kwargs": dict(request.kwargs),
            "version": request.version, "caps": list(request.required_capabilities),
            "mode": request.mode, "answer_limit": request.answer_limit,
            "stream_buffer": request.stream_buffer, "stream": request.stream,
            "trace": request.trace, "sharing": request.sharing,
            "consistency": request.consistency, "deadline": request.deadline}


_REQUEST_FIELDS = frozenset(("op", "args", "kwargs", "version", "caps", "mode",
                             "answer_limit", "stream_buffer", "stream", "trace",
                             "sharing", "consistency", "deadline"))


_SecretRef: Any = None  # fabric.node.secrets.SecretRef (that module imports this one)


def _refs(value: Any, depth: int = 0) -> Any:
    """Arrays shaped [SECRET_REF_TAG, name] become SecretRef objects again:
    lists, and the tuples an array decodes to inside a set or as a map's
    key (sets and map keys are walked too)."""
    global _SecretRef
    if _SecretRef is None:
        from .secrets import SecretRef
        _SecretRef = SecretRef
    if depth > 300:
        return value
    t = type(value)
    if t is list or t is tuple:
        if (len(value) == 2 and type(value[0]) is str and value[0] == SECRET_REF_TAG
                and type(value[1]) is str):
            return _SecretRef(value[1])
        return t(_refs(v, depth + 1) for v in value)
    if t is dict:
        return {_refs(k, depth + 1): _refs(v, depth + 1) for k, v in value.items()}
    if t is frozenset or t is set:
        return t(_refs(v, depth + 1) for v in value)
    return value


def _args_from_wire(args: list[Any]) -> tuple[Any, ...]:
    """``tuple(_refs(args))``: a flat array of scalars (the usual arguments)
    holds no SecretRef below it, so only its own shape is looked at."""
    for v in args:
        if type(v) not in _PLAIN:
            return tuple(_refs(args))
    if len(args) == 2 and args[0] == SECRET_REF_TAG and type(args[1]) is str:
        return tuple(_refs(args))  # as _refs reads it (one SecretRef)
    return tuple(args)


def _kwargs_from_wire(kwargs: dict[Any, Any]) -> dict[Any, Any]:
    """``_refs(kwargs)``: a flat map of scalars is returned as it is."""
    for v in kwargs.values():
        if type(v) not in _PLAIN:
            return _refs(kwargs)
    return kwargs


def request_from_wire(body: Any, key: Any) -> EvalRequest:
    """The request a peer sent; ``ProtocolError`` if the map is malformed or
    its content key differs from ``key`` (what the sender computed)."""
    if not isinstance(body, dict) or body.keys() != _REQUEST_FIELDS:
        got = sorted(body) if isinstance(body, dict) else type(body).__name__
        raise ProtocolError(f"a request map has exactly the fields "
                            f"{sorted(_REQUEST_FIELDS)}, got {got}")
    if not isinstance(body["args"], list) or not isinstance(body["kwargs"], dict):
        raise ProtocolError("request args must be an array and kwargs a map")
    try:
        req = EvalRequest(body["op"], _args_from_wire(body["args"]),
                          _kwargs_from_wire(body["kwargs"]),
                          version=body["version"],
                          required_capabilities=tuple(body["caps"] or ()),
                          mode=body["mode"], answer_limit=body["answer_limit"],
                          stream_buffer=body["stream_buffer"], stream=body["stream"],
                          trace=body["trace"], sharing=body["sharing"],
                          consistency=body["consistency"],
                          deadline=body["deadline"])
    except (TypeError, ValueError) as exc:
        raise ProtocolError(f"malformed request: {exc}") from None
    if not isinstance(key, (bytes, bytearray, memoryview)) or bytes(key) != req.key.digest:
        raise ProtocolError(f"the request's content key does not match its fields "
                            f"(sent {bytes(key).hex() if isinstance(key, bytes) else key!r}, "
                            f"computed {req.key})")
    return req


def open_metadata(request: EvalRequest, *, want: str, scope: str, grants: Iterable[str],
                  timeout: float | None, via: Iterable[str] = (),
                  checked: bool = False) -> dict[str, Any]:
    """The ``metadata`` of the CONTROL ``open`` that carries a request
    (``checked``: as for ``request_to_wire``)."""
    return {"request": request_to_wire(request, checked=checked), "key": request.key.digest, "want": want,
            "scope": scope, "grants": sorted(grants), "timeout": timeout, "via": list(via)}


def open_payload(request: EvalRequest, *, want: str, scope: str, grants: Iterable[str],
                 timeout: float | None, via: Iterable[str] = ()) -> bytes:
    """The payload of the CONTROL ``open`` that carries a request: the bytes
    ``StreamControl.open(sid, open_metadata(...)).to_frame(...)`` carries (the
    control map's canonical encoding; the stream id is in the frame header),
    built in one encoding pass. The caller has made sure no ``fabric.Secret``
    is in the request (``check_no_secret``), as for ``checked=True``; the
    receiver checks the control as any other (``StreamControl.from_frame``)."""
    return canonical_bytes({"op": "open", "metadata": {
        "request": {"op": request.op, "args": list(request.args),
                    "kwargs": dict(request.kwargs), "version": request.version,
                    "caps": list(request.required_capabilities), "mode": request.mode,
                    "answer_limit": request.answer_limit,
                    "stream_buffer": request.stream_buffer, "stream": request.stream,
                    "trace": request.trace, "sharing": request.sharing,
                    "consistency": request.consistency, "deadline": request.deadline},
        "key": request.key.digest, "want": want, "scope": scope, "grants": sorted(grants),
        "timeout": timeout, "via": list(via)}})


_OPEN_FIELDS = frozenset(("request", "key", "want", "scope", "grants", "timeout", "via"))


def check_open(meta: Any) -> tuple[EvalRequest, str, str, frozenset[str], float | None,
                                   list[str]]:
    """Check an ``open``'s metadata: (request, want, scope, grants, timeout, via)."""
    if not isinstance(meta, dict) or meta.keys() != _OPEN_FIELDS:
        got = sorted(meta) if isinstance(meta, dict) else type(meta).__name__
        raise ProtocolError(f"open metadata has exactly the fields {sorted(_OPEN_FIELDS)}, "
                            f"got {got}")
    want, scope, timeout = meta["want"], meta["scope"], meta["timeout"]
    if want not in WANTS:
        raise ProtocolError(f"want must be one of {WANTS}, not {want!r}")
    if scope not in SCOPES:
        raise ProtocolError(f"scope must be one of {SCOPES}, not {scope!r}")
    if timeout is not None and (not isinstance(timeout, (int, float))
                                or isinstance(timeout, bool) or not timeout > 0):
        raise ProtocolError(f"timeout must be a positive number or nil, not {timeout!r}")
    grants, via = meta["grants"], meta["via"]
    if not isinstance(grants, list) or (grants and not all(isinstance(g, str) for g in grants)):
        raise ProtocolError("grants must be an array of str")
    if not isinstance(via, list) or len(via) > 16 or (
            via and not all(isinstance(v, str) for v in via)):
        raise ProtocolError("via must be an array of at most 16 node ids")
    return (request_from_wire(meta["request"], meta["key"]), want, scope,
            frozenset(grants) if grants else _NO_GRANTS, _bounded(timeout), via)


def _bounded(timeout: float | None) -> float | None:
    """A checked open's timeout, at most ``MAX_TIMEOUT``."""
    return timeout if timeout is None or timeout <= MAX_TIMEOUT else MAX_TIMEOUT


_NO_GRANTS: frozenset[str] = frozenset()


def open_from_read(read: tuple[Any, ...]) -> tuple[EvalRequest, str, str, frozenset[str],
                                                  float | None, list[str]] | None:
    """``check_open``'s result for an open read in one pass
    (``StreamControl.read_open``: the payload's shape is checked there), or
    None when the request's fields are refused or its key does not match
    them: the caller then takes the general path, which says why."""
    (op, args, kwargs, version, caps, mode, answer_limit, stream_buffer, stream, trace,
     sharing, consistency, deadline, key, want, scope, grants, timeout, via) = read
    try:
        req = EvalRequest(op, _args_from_wire(args), _kwargs_from_wire(kwargs),
                          version=version, required_capabilities=tuple(caps or ()),
                          mode=mode, answer_limit=answer_limit, stream_buffer=stream_buffer,
                          stream=stream, trace=trace, sharing=sharing,
                          consistency=consistency, deadline=deadline)
    except (TypeError, ValueError):
        return None
    if type(key) is not bytes or key != req.key.digest:
        return None
    return (req, want, scope, frozenset(grants) if grants else _NO_GRANTS,
            _bounded(timeout), via)


# ---- handshake ---------------------------------------------------------------

def hello(*, node: str | None, max_frame: int, window: int, caps: Iterable[str] = (),
          token: str | None = None, principal: str | None = None,
          grants: Iterable[str] | None = None,
          proto: tuple[int, int] = PROTOCOL_VERSION) -> dict[str, Any]:
    """A HELLO payload (client: with ``token``; server: with ``principal``/``grants``)."""
    body: dict[str, Any] = {"proto": list(proto), "node": node, "max_frame": max_frame,
                            "window": window, "caps": sorted(caps)}
    if principal is None:
        body["token"] = token
    else:
        body["principal"] = principal
        body["grants"] = sorted(grants or ())
    return body


MAX_FRAME_RANGE = f"an int in [{MIN_MAX_FRAME}, 2**32)"
WINDOW_RANGE = "an int >= 0 (0 = unbounded)"


def valid_max_frame(mf: Any) -> bool:
    """Whether ``mf`` is a HELLO's ``max_frame`` (``MAX_FRAME_RANGE``)."""
    return isinstance(mf, int) and not isinstance(mf, bool) and MIN_MAX_FRAME <= mf < 1 << 32


def valid_window(win: Any) -> bool:
    """Whether ``win`` is a HELLO's ``window`` (``WINDOW_RANGE``)."""
    return isinstance(win, int) and not isinstance(win, bool) and 0 <= win < 1 << 64


def check_hello(body: Any, *, server: bool) -> dict[str, Any]:
    """Check a received HELLO (``server``: it came from a server). Raises
    ``VersionMismatch`` naming both versions for a newer major version,
    ``ProtocolError`` for anything malformed."""
    if not isinstance(body, dict):
        raise ProtocolError(f"HELLO payload must be a map, not {type(body).__name__}")
    proto = body.get("proto")
    if (not isinstance(proto, list) or len(proto) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0
                       for x in proto)):
        raise ProtocolError(f"HELLO proto must be [major, minor], not {proto!r}")
    if proto[0] != PROTOCOL_VERSION[0]:
        raise VersionMismatch(
            f"peer speaks node protocol {proto[0]}.{proto[1]}, this "
            f"{'client' if server else 'node'} speaks "
            f"{PROTOCOL_VERSION[0]}.{PROTOCOL_VERSION[1]}: major versions differ")
    want = {"proto", "node", "max_frame", "window", "caps"} | (
        {"principal", "grants"} if server else {"token"})
    if set(body) != want:
        raise ProtocolError(f"HELLO has exactly the fields {sorted(want)}, got {sorted(body)}")
    mf, win = body["max_frame"], body["window"]
    if not valid_max_frame(mf):
        raise ProtocolError(f"HELLO max_frame must be {MAX_FRAME_RANGE}, not {mf!r}")
    if not valid_window(win):
        raise ProtocolError(f"HELLO window must be {WINDOW_RANGE}, not {win!r}")
    if body["node"] is not None and not isinstance(body["node"], str):
        raise ProtocolError("HELLO node must be a str or nil")
    caps = body["caps"]
    if not isinstance(caps, list) or not all(isinstance(c, str) for c in caps):
        raise ProtocolError("HELLO caps must be an array of str")
    if server:
        if not isinstance(body["principal"], str) or not isinstance(body["grants"], list):
            raise ProtocolError("server HELLO principal must be a str and grants an array")
    elif body["token"] is not None and not isinstance(body["token"], str):
        raise ProtocolError("HELLO token must be a str or nil")
    return body


# ---- errors ------------------------------------------------------------------

_ERRORS: Mapping[str, type[BaseException]] = {
    cls.__name__: cls for cls in (
        CapabilityDenied, ContentNotHeld, DeadlineExceeded, FabricUnavailable, NoHolderError,
        OpNotFound, RemoteError, ProtocolError, VersionMismatch, Unauthenticated,
        LimitExceeded, FabricError, IdleTimeout)}


def error_payload(exc: BaseException) -> dict[str, Any]:
    """An ERROR frame's payload for ``exc`` (never a Secret's value: the
    message is the exception's text, which fabric keeps secret-free)."""
    kind = type(exc).__name__
    if isinstance(exc, StreamDiagnostic):
        kind = exc.kind
    elif kind not in _ERRORS:
        kind = "RemoteError"
        return {"kind": kind, "message": f"{type(exc).__name__}: {exc}"}
    if isinstance(exc, IdleTimeout) and exc.received is not None:
        return {"kind": kind, "message": str(exc), "received": exc.received}
    return {"kind": kind, "message": str(exc)}


def error_from_payload(body: Any, where: str) -> BaseException:
    """The exception an ERROR payload stands for (``RemoteError`` for kinds
    this side does not know), its message prefixed with ``where``."""
    if not isinstance(body, dict):
        return ProtocolError(f"{where}: ERROR payload is not a map: {body!r}")
    kind, message = body.get("kind"), body.get("message")
    text = f"{where}: {message}"
    if kind == "LimitExceeded":
        return LimitExceeded(text)
    if kind == "IdleTimeout":
        got = body.get("received")
        return IdleTimeout(text, got if type(got) is int and got >= 0 else None)
    cls = _ERRORS.get(kind) if isinstance(kind, str) else None
    if cls is None:
        return RemoteError(f"{where}: {kind}: {message}")
    return cls(text)


def key_of(raw: Any) -> ContentKey:
    """A ContentKey from a gossip fact's bin32."""
    if not isinstance(raw, (bytes, bytearray)) or len(raw) != 32:
        raise ProtocolError(f"a content key on the wire is 32 bytes, not {raw!r}")
    return ContentKey(bytes(raw))


def reply_part(max_frame: int) -> int:
    """The most bytes of a single reply's record one chunk carries under
    ``max_frame`` (its bin header fits in the rest)."""
    return max(1024, max_frame - 16)


def reply_frames(enc: FrameEncoder, sid: int, start: bytes, data: bytes,
                 end: dict[str, Any], max_frame: int) -> bytes:
    """A single reply's frames in one bytes object (section 3): STREAM_START
    with payload ``start``, ``data`` (the record's bytes) in chunks of
    ``reply_part(max_frame)`` bytes, then STREAM_END with the fields of
    ``end`` and the chunk count."""
    part = reply_part(max_frame)
    parts = [data[i:i + part] for i in range(0, len(data), part)] if len(data) > part \
        else [data]
    out = [enc.encode(FrameKind.STREAM_START, start, stream_id=sid)]
    for i, p in enumerate(parts):
        out.append(enc.encode_value(FrameKind.STREAM_CHUNK, p, stream_id=sid, seq=i + 1))
    end["chunks"] = len(parts)
    out.append(enc.encode_value(FrameKind.STREAM_END, end, stream_id=sid, seq=len(parts) + 1))
    return b"".join(out)


__all__ += ["FrameKind", "canonical_bytes", "open_metadata", "open_payload", "check_open",
            "open_from_read",
            "key_of", "node_limits", "encoder", "reply_part", "reply_frames"]
