"""Node snapshots: a node's state as bytes, and back (docs/spec/snapshot.md).

``encode(state)`` and ``decode(data)`` are the format alone; ``Node.snapshot``
and ``Node.restore`` gather and apply the state. The layout is a fixed
28-byte header (magic, spec version, flags, section lengths, CRC-32 of the
rest), a canonical msgpack map of the node's small state, then the holding
index's own snapshot bytes (docs/spec/fabric-records.md).

``decode`` reads untrusted bytes: the header with ``struct``, the state with
the hardened ``fabric.unpack`` (fuzzed with the rest of the msgpack decoder),
the holdings with the C core's ``HoldingIndex.restore`` (fuzzed by
``csrc/fuzz/fuzz_holdings.c``). It checks every field before returning, so a
caller that applies only what ``decode`` returned changes nothing on a bad
snapshot.
"""

from __future__ import annotations

import math
import struct
import zlib
from dataclasses import dataclass
from typing import Any

from .._core import DecodeError, FabricError, canonical_bytes, unpack
from ..holders import HoldingIndex

__all__ = ["MAGIC", "SPEC_VERSION", "HEADER", "SnapshotError", "SnapshotBusy",
           "NodeState", "encode", "decode"]

#: The first 8 bytes of every node snapshot.
MAGIC = b"FABNODE\x00"
#: The only spec version this build writes and restores (0 means "missing").
SPEC_VERSION = 1
#: magic, version (u16), flags (u16), state length (u32), holdings length
#: (u64), CRC-32 (zlib) of state + holdings (u32); big-endian.
HEADER = struct.Struct(">8sHHIQI")


class SnapshotError(DecodeError):
    """Snapshot bytes that cannot be restored (the message says what and where)."""


class SnapshotBusy(FabricError):
    """A snapshot was asked for while the node had work queued or running."""


@dataclass
class NodeState:
    """What a node snapshot holds, decoded and checked."""

    node: str
    incarnation: int
    holders: HoldingIndex
    governor: dict[str, Any] | None
    counters: dict[str, int]
    pending: list[dict[str, Any]]
    peer_streams: dict[str, int]


def encode(node: str, incarnation: int, holdings: bytes, governor: dict[str, Any] | None,
           counters: dict[str, int], pending: list[dict[str, Any]],
           peer_streams: dict[str, int]) -> bytes:
    """The snapshot bytes of a node's state (see docs/spec/snapshot.md)."""
    state = canonical_bytes({"node": node, "incarnation": incarnation, "governor": governor,
                             "counters": counters, "pending": pending,
                             "ids": {"peer_streams": peer_streams}})
    crc = zlib.crc32(holdings, zlib.crc32(state))
    return HEADER.pack(MAGIC, SPEC_VERSION, 0, len(state), len(holdings), crc) + state + holdings


def _bad(what: str) -> SnapshotError:
    return SnapshotError(f"node snapshot: {what}")


def _int(v: Any, where: str, lo: int = 0) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
        raise _bad(f"{where} is not an int >= {lo}: {v!r}")
    return v


def _num(v: Any, where: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
        raise _bad(f"{where} is not a finite number >= 0: {v!r}")
    return float(v)


def _str(v: Any, where: str) -> str:
    if not isinstance(v, str) or not v:
        raise _bad(f"{where} is not a non-empty str: {v!r}")
    return v


def _list(v: Any, where: str) -> list[Any]:
    if not isinstance(v, list):
        raise _bad(f"{where} is not an array")
    return v


def _map(v: Any, where: str) -> dict[str, Any]:
    if not isinstance(v, dict) or not all(isinstance(k, str) for k in v):
        raise _bad(f"{where} is not a map with str keys")
    return v


def _governor(g: Any) -> dict[str, Any] | None:
    if g is None:
        return None
    g = _map(g, "governor")
    want = {"allow", "block", "down_after", "backoff_base", "backoff_cap", "jitter", "skips",
            "penalties", "health", "backoff"}
    if set(g) != want:
        raise _bad(f"governor fields are {sorted(g)}, expected {sorted(want)}")
    if g["allow"] is not None:
        [_str(p, f"governor.allow[{i}]") for i, p in enumerate(_list(g["allow"], "allow"))]
    [_str(p, f"governor.block[{i}]") for i, p in enumerate(_list(g["block"], "governor.block"))]
    _int(g["down_after"], "governor.down_after", 1)
    base, cap = _num(g["backoff_base"], "governor.backoff_base"), \
        _num(g["backoff_cap"], "governor.backoff_cap")
    if cap < base:
        raise _bad("governor.backoff_cap is below governor.backoff_base")
    if _num(g["jitter"], "governor.jitter") > 1:
        raise _bad("governor.jitter is above 1")
    _int(g["skips"], "governor.skips")
    _int(g["penalties"], "governor.penalties")
    seen = set()
    for i, h in enumerate(_list(g["health"], "governor.health")):
        w = f"governor.health[{i}]"
        if not isinstance(h, list) or len(h) != 6:
            raise _bad(f"{w} is not [peer, failures, consecutive, event, ago, down]")
        seen.add(_str(h[0], f"{w}.peer"))
        _int(h[1], f"{w}.failures")
        _int(h[2], f"{w}.consecutive")
        if h[3] is not None and not isinstance(h[3], str):
            raise _bad(f"{w}.event is not a str or nil")
        if h[4] is not None:
            _num(h[4], f"{w}.ago")
        if not isinstance(h[5], bool):
            raise _bad(f"{w}.down is not a bool")
    for i, b in enumerate(_list(g["backoff"], "governor.backoff")):
        w = f"governor.backoff[{i}]"
        if not isinstance(b, list) or len(b) != 3:
            raise _bad(f"{w} is not [peer, consecutive, retry_in]")
        if _str(b[0], f"{w}.peer") not in seen:
            raise _bad(f"{w}: peer {b[0]!r} has no health entry")
        _int(b[1], f"{w}.consecutive")
        _num(b[2], f"{w}.retry_in")
    return g


def decode(data: bytes | bytearray | memoryview) -> NodeState:
    """The checked state of snapshot bytes, or SnapshotError naming what is wrong.

    A missing version (bytes shorter than the header's version field, or a
    version of 0) and any version but ``SPEC_VERSION`` are refused before
    anything else is read.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise TypeError(f"a node snapshot is bytes, not {type(data).__name__}")
    data = bytes(data)
    if data[:len(MAGIC)] != MAGIC[:len(data)] or not data:
        raise _bad("no magic: these bytes are not a node snapshot")
    if len(data) < len(MAGIC) + 2:
        raise _bad("missing spec version (the header ends at byte "
                   f"{len(data)}; refused)")
    version = struct.unpack_from(">H", data, len(MAGIC))[0]
    if version == 0:
        raise _bad("missing spec version (0; refused)")
    if version != SPEC_VERSION:
        raise _bad(f"spec version {version} is not supported (this build restores "
                   f"version {SPEC_VERSION})")
    if len(data) < HEADER.size:
        raise _bad(f"truncated header: {len(data)} of {HEADER.size} bytes")
    _magic, _v, flags, nstate, nhold, crc = HEADER.unpack_from(data)
    if flags:
        raise _bad(f"unknown header flags {flags:#x}")
    if len(data) != HEADER.size + nstate + nhold:
        raise _bad(f"length {len(data)} bytes, the header says {HEADER.size + nstate + nhold}"
                   f" ({'truncated' if len(data) < HEADER.size + nstate + nhold else 'trailing bytes'})")
    state_b = data[HEADER.size:HEADER.size + nstate]
    hold_b = data[HEADER.size + nstate:]
    if zlib.crc32(hold_b, zlib.crc32(state_b)) != crc:
        raise _bad("checksum mismatch: the snapshot is damaged")
    try:
        s = unpack(state_b)
    except DecodeError as exc:
        raise _bad(f"state section: {exc}") from None
    s = _map(s, "state")
    want = {"node", "incarnation", "governor", "counters", "pending", "ids"}
    if set(s) != want:
        raise _bad(f"state fields are {sorted(s)}, expected {sorted(want)}")
    node = _str(s["node"], "node")
    inc = _int(s["incarnation"], "incarnation")
    counters = _map(s["counters"], "counters")
    for k, v in counters.items():
        _int(v, f"counters[{k!r}]")
    pending = []
    for i, p in enumerate(_list(s["pending"], "pending")):
        p = _map(p, f"pending[{i}]")
        if set(p) != {"peer", "start", "end", "redelivered"}:
            raise _bad(f"pending[{i}] fields are {sorted(p)}")
        _str(p["peer"], f"pending[{i}].peer")
        if _int(p["end"], f"pending[{i}].end") < _int(p["start"], f"pending[{i}].start"):
            raise _bad(f"pending[{i}] ends before it starts")
        if p["redelivered"] is not True:
            raise _bad(f"pending[{i}].redelivered is not true")
        pending.append(p)
    ids = _map(s["ids"], "ids")
    if set(ids) != {"peer_streams"}:
        raise _bad(f"ids fields are {sorted(ids)}, expected ['peer_streams']")
    streams = _map(ids["peer_streams"], "ids.peer_streams")
    for k, v in streams.items():
        _int(v, f"ids.peer_streams[{k!r}]", 1)
    gov = _governor(s["governor"])
    try:
        holders = HoldingIndex.restore(hold_b)
    except (DecodeError, ValueError) as exc:
        raise _bad(f"holdings section: {exc}") from None
    for p in pending:
        if p["end"] > holders.version:
            raise _bad(f"pending delta for {p['peer']!r} ends at {p['end']}, past the "
                       f"holdings (at {holders.version})")
    return NodeState(node, inc, holders, gov, dict(counters), pending, dict(streams))
