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
    """Yields (offset, type, flags, key, payload) of each record; zero bytes
    after the last record (a writer's reserved tail) end the records."""
    assert data[:8] == FILE_MAGIC
    assert struct.unpack_from("<I", data, 60)[0] == crc32c(SEED_FILE, data[:60])
    off = 64
    while off < len(data):
        head = data[off : off + 16]
        if not any(data[off:]):  # the space a writer reserved after the records
            return
        assert head[:4] == REC_MAGIC, off
        (hcrc,) = struct.unpack_from("<I", data, off + 16)
        assert hcrc == crc32c(SEED_HEAD, head), off
        rtype, flags, _, n, body_crc = struct.unpack_from("<BBHII", data, off + 4)
        key = data[off + 20 : off + 52]
        payload = data[off + 52 : off + 52 + n]
        assert len(payload) == n and crc32c(SEED_BODY, key + payload) == body_crc, off
        yield off, rtype, flags, key, payload
        off += 52 + n


CKPT_MAGIC = b"\x89FABCKP\n"
SEED_CKPT, SEED_CKPT_PAGE = 0x434B5054, 0x50414745
_M64 = (1 << 64) - 1


def _mix64(x: int) -> int:
    x ^= x >> 30
    x = (x * 0xBF58476D1CE4E5B9) & _M64
    x ^= x >> 27
    x = (x * 0x94D049BB133111EB) & _M64
    return x ^ (x >> 31)


def index_hash(seed: int, key: bytes) -> int:
    """The index's seeded 64-bit hash of a 32-byte key (never 0)."""
    h = seed
    for i in range(4):
        (w,) = struct.unpack_from("<Q", key, 8 * i)
        h = (_mix64(h ^ w) + i) & _M64
    return h or 1


def read_checkpoint(ckpt: bytes, ledger: bytes) -> dict:
    """Checks a checkpoint against the ledger it describes, field by field
    (docs/spec/ledger.md, Checkpoint); returns {key: offset} of its slots."""
    h = ckpt[:4096]
    assert h[:8] == CKPT_MAGIC
    version, reserved, page = struct.unpack_from("<HHI", h, 8)
    assert (version, reserved, page) == (1, 0, 4096)
    assert struct.unpack_from("<I", h, 4092)[0] == crc32c(SEED_CKPT, h[:4092])
    seed, cap, count, covered, records, dups = struct.unpack_from("<QQQQQQ", h, 16)
    assert cap >= 256 and cap & (cap - 1) == 0 and count <= cap * 3 // 4
    assert h[64:128] == ledger[:64]
    last = struct.unpack_from("<Q", h, 128)[0]
    assert h[136:156] == ledger[last : last + 20]
    (n,) = struct.unpack_from("<I", ledger, last + 8)
    assert last + 52 + n == covered <= len(ledger)
    crc = SEED_CKPT
    for i in range(16):
        at = 64 + (covered - 64) * i // 16
        crc = crc32c(crc, ledger[at : min(at + 512, covered)])
    assert struct.unpack_from("<I", h, 156)[0] == crc
    assert h[160:4092] == bytes(3932)
    pages = cap * 16 // 4096
    assert len(ckpt) == 4096 + cap * 16 + 4 * pages
    slots = ckpt[4096 : 4096 + cap * 16]
    crcs = ckpt[4096 + cap * 16 :]
    for p in range(pages):
        page_bytes = slots[p * 4096 : (p + 1) * 4096]
        assert struct.unpack_from("<I", crcs, 4 * p)[0] == crc32c(SEED_CKPT_PAGE, page_bytes)
    found = {}
    for i in range(cap):
        hsh, off = struct.unpack_from("<QQ", slots, 16 * i)
        if hsh:
            k = ledger[off + 20 : off + 52]
            assert hsh == index_hash(seed, k)
            j = hsh & (cap - 1)  # linear probing: no empty slot between home and i
            while j != i:
                assert struct.unpack_from("<Q", slots, 16 * j)[0] != 0
                j = (j + 1) & (cap - 1)
            found[k] = off
    assert len(found) == count
    return {"seed": seed, "covered": covered, "records": records, "duplicates": dups,
            "slots": found}
