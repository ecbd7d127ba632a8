"""A pure-Python reference reader of the ledger format (docs/spec/ledger.md).

It is an executable spec for the tests, cross-checking the C core; it is not
a runtime fallback.
"""

from __future__ import annotations

import struct

FILE_MAGIC = b"\x89FABLDG\n"
REC_MAGIC = b"\xe7REC"
SEED_FILE, SEED_BODY, SEED_HEAD = 0x4C444752, 0x424F4459, 0x48445221


def _table():
    poly = 0x82F63B78
    t = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ poly if c & 1 else c >> 1
        t.append(c)
    return t


_T = _table()


def crc32c(crc: int, data: bytes) -> int:
    """CRC32C extending crc (0 to start), like fab_crc32c."""
    c = crc ^ 0xFFFFFFFF
    for b in data:
        c = _T[(c ^ b) & 0xFF] ^ (c >> 8)
    return c ^ 0xFFFFFFFF


def header(created_ns: int, creator: str = "stream-fabric", version: int = 2) -> bytes:
    h = bytearray(64)
    h[0:8] = FILE_MAGIC
    struct.pack_into("<HHIQ", h, 8, version, 64, 0, created_ns)
    c = creator.encode()[:32]
    h[24 : 24 + len(c)] = c
    struct.pack_into("<I", h, 60, crc32c(SEED_FILE, bytes(h[:60])))
    return bytes(h)


def record(rtype: int, key: bytes, payload: bytes, flags: int = 0) -> bytes:
    body_crc = crc32c(SEED_BODY, key + payload)
    head = REC_MAGIC + struct.pack("<BBHII", rtype, flags, 0, len(payload), body_crc)
    return head + struct.pack("<I", crc32c(SEED_HEAD, head)) + key + payload


def read(data: bytes):
    """Yields (offset, type, key, payload) of each record of a clean ledger
    (``read_flags`` also yields the flags)."""
    for off, rtype, _flags, key, payload in read_flags(data):
        yield off, rtype, key, payload


def read_flags(data: bytes):
    """Yields (offset, type, flags, key, payload) of each record."""
    assert data[:8] == FILE_MAGIC
    assert struct.unpack_from("<I", data, 60)[0] == crc32c(SEED_FILE, data[:60])
    off = 64
    while off < len(data):
        head = data[off : off + 16]
        assert head[:4] == REC_MAGIC, off
        (hcrc,) = struct.unpack_from("<I", data, off + 16)
        assert hcrc == crc32c(SEED_HEAD, head), off
        rtype, flags, _, n, body_crc = struct.unpack_from("<BBHII", data, off + 4)
        key = data[off + 20 : off + 52]
        payload = data[off + 52 : off + 52 + n]
        assert len(payload) == n and crc32c(SEED_BODY, key + payload) == body_crc, off
        yield off, rtype, flags, key, payload
        off += 52 + n
