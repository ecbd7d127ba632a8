"""A pure-Python reference of the frame format (docs/spec/frames.md).

An executable spec, not a runtime fallback: the tests cross-check the C
codec against it, and the malformed corpus is built with it.
"""

import struct

MAGIC = b"SFRM"
VERSION = 1
HEADER = struct.Struct(">4sBBHQQII")  # everything before the header CRC
HEADER_LEN = HEADER.size + 4
KINDS = {"HELLO": 1, "STREAM_START": 2, "STREAM_CHUNK": 3, "STREAM_END": 4, "ERROR": 5,
         "CONTROL": 6, "CREDIT": 7, "PLACEMENT": 8, "GOSSIP": 9, "PING": 10, "PONG": 11}
FLAG_DIAGNOSTIC = 1


def _table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_T = _table()


def crc32c(data, crc=0):
    """CRC-32C (Castagnoli), bitwise reference."""
    crc ^= 0xFFFFFFFF
    for b in bytes(data):
        crc = _T[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def header(kind, flags, stream_id, seq, payload, *, version=VERSION, magic=MAGIC,
           length=None, payload_crc=None):
    """The 36 header bytes; length/payload_crc may be forged."""
    body = HEADER.pack(magic, version, kind, flags, stream_id, seq,
                       len(payload) if length is None else length,
                       crc32c(payload) if payload_crc is None else payload_crc)
    return body + struct.pack(">I", crc32c(body))


def frame(kind, payload=b"", *, stream_id=0, seq=0, flags=0, **forge):
    """One encoded frame."""
    return header(kind, flags, stream_id, seq, payload, **forge) + payload


def reseal(frame_bytes):
    """Recomputes the header CRC of a (tampered) frame."""
    b = bytearray(frame_bytes)
    b[32:36] = struct.pack(">I", crc32c(bytes(b[:32])))
    return bytes(b)


def parse(data):
    """Decodes a whole byte string into (kind, flags, stream_id, seq, payload)
    tuples; raises ValueError on any malformed frame."""
    out, pos = [], 0
    while pos < len(data):
        if len(data) - pos < HEADER_LEN:
            raise ValueError("truncated header at %d" % pos)
        magic, version, kind, flags, sid, seq, length, pcrc = HEADER.unpack_from(data, pos)
        (hcrc,) = struct.unpack_from(">I", data, pos + 32)
        if magic != MAGIC or version != VERSION or hcrc != crc32c(data[pos:pos + 32]):
            raise ValueError("bad header at %d" % pos)
        if kind not in KINDS.values() or flags & ~FLAG_DIAGNOSTIC:
            raise ValueError("bad kind/flags at %d" % pos)
        payload = data[pos + HEADER_LEN:pos + HEADER_LEN + length]
        if len(payload) != length or crc32c(payload) != pcrc:
            raise ValueError("bad payload at %d" % pos)
        out.append((kind, flags, sid, seq, bytes(payload)))
        pos += HEADER_LEN + length
    return out
