#!/usr/bin/env python3
"""Writes the malformed-frame corpus: tests/corpus/frames/*.bin + MANIFEST.json.

Each case is one input and what must happen to it: the layer that reads it
(frame: FrameDecoder; payload: the first frame's decode_payload(); stream:
stream_frames_to_stream(); control: StreamControl.from_frame() with every
grant), the exception class, and the stream offset the error must name.
Offsets are computed here from how each input was built, independently of
the decoders. Run it again after a format change and review the diff:

    python3 tests/corpus/make_frames_corpus.py
"""

import json
import os
import random
import struct
import sys

import msgpack

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))
import frames_ref as ref  # noqa: E402

OUT = os.path.join(HERE, "frames")
H = ref.HEADER_LEN
K = ref.KINDS
CASES = []


def case(name, data, layer, exception, offset):
    assert not any(c["name"] == name for c in CASES), name
    CASES.append({"name": name, "layer": layer, "exception": exception, "offset": offset,
                  "data": bytes(data)})


def pack(v):
    return msgpack.packb(v, use_bin_type=True)


def good(kind="PING", payload=b"\xc0", **kw):
    return ref.frame(K[kind], payload, **kw)


def frame_cases():
    first = good("PING", pack("first"), stream_id=1, seq=1)
    base = good("STREAM_CHUNK", pack({"x": [1, 2, 3]}), stream_id=1, seq=2)
    n = len(first)
    # Bad magic, in each byte, in the first and in a later frame.
    for i in range(4):
        for v, tag in ((0x00, "zero"), (0xFF, "ff"), (ord("s"), "lower")):
            if base[i] == v:
                continue
            b = bytearray(base)
            b[i] = v
            case("magic_byte%d_%s" % (i, tag), b, "frame", "FrameError", i)
        b = bytearray(first + base)
        b[n + i] ^= 0x01
        case("magic_byte%d_second_frame" % i, b, "frame", "FrameError", n + i)
    # Versions other than 1: refused before the checksum is looked at.
    for v in (0, 2, 3, 7, 128, 255):
        b = bytearray(base)
        b[4] = v
        case("version_%d" % v, b, "frame", "FrameError", 4)
    case("version_2_second_frame", first + ref.reseal(base[:4] + b"\x02" + base[5:]),
         "frame", "FrameError", n + 4)
    # Any single bit flip in the checked header bytes is a checksum failure.
    for i in range(5, 32):
        b = bytearray(base)
        b[i] ^= 1 << (i % 8)
        case("header_bitflip_byte%d" % i, b, "frame", "FrameError", 32)
    for i in range(32, 36):
        b = bytearray(base)
        b[i] ^= 0x80
        case("header_crc_byte%d" % i, b, "frame", "FrameError", 32)
    # Unknown kinds and reserved flags, with a valid checksum.
    for k in (0, 12, 13, 64, 200, 255):
        case("unknown_kind_%d" % k, ref.frame(k, b"\xc0"), "frame", "FrameError", 5)
    for fl in (0x0002, 0x0004, 0x0100, 0x8000, 0xFFFF, 0xFFFE):
        case("reserved_flags_%04x" % fl, ref.frame(K["PING"], b"\xc0", flags=fl),
             "frame", "FrameError", 6)
    # Length bombs: a declared payload above the limit (1 MiB by default),
    # with only a few bytes behind the header.
    for length in (1 << 20 | 1, 1 << 24, 0x7FFFFFFF, 0xFFFFFFFF, 0x80000000):
        data = ref.header(K["STREAM_CHUNK"], 0, 1, 1, b"", length=length) + b"\x00" * 6
        case("length_bomb_%x" % length, data, "frame", "FrameError", 24)
    case("length_bomb_second_frame",
         first + ref.header(K["STREAM_CHUNK"], 0, 1, 1, b"", length=0xFFFFFFFF),
         "frame", "FrameError", n + 24)
    # Payload checksum failures.
    payload = pack(list(range(40)))
    f = good("STREAM_CHUNK", payload)
    for pos in (0, 1, 7, len(payload) // 2, len(payload) - 1):
        b = bytearray(f)
        b[H + pos] ^= 0x04
        case("payload_bitflip_at_%d" % pos, b, "frame", "FrameError", 28)
    case("payload_crc_zero", ref.frame(K["PING"], b"\xc0", payload_crc=0), "frame",
         "FrameError", 28)
    case("payload_crc_on_empty", ref.frame(K["PING"], b"", payload_crc=1), "frame",
         "FrameError", 28)
    case("payload_swapped_bytes", f[:H] + f[H + 1:H + 2] + f[H:H + 1] + f[H + 2:], "frame",
         "FrameError", 28)
    case("payload_crc_second_frame", first + ref.frame(K["PING"], b"\xc0", payload_crc=7),
         "frame", "FrameError", n + 28)
    # Truncation: the stream ends inside a header or a payload.
    for cut in (1, 3, 4, 5, 8, 20, 31, 32, 35):
        case("truncated_header_at_%d" % cut, base[:cut], "frame", "FrameError", cut)
    for cut in (H, H + 1, len(base) - 1):
        case("truncated_payload_at_%d" % cut, base[:cut], "frame", "FrameError", cut)
    case("truncated_second_header", first + base[:10], "frame", "FrameError", n + 10)
    case("truncated_second_payload", first + base[:-2], "frame", "FrameError",
         n + len(base) - 2)
    # Things that are not frames at all.
    case("zero_filled_64", b"\x00" * 64, "frame", "FrameError", 0)
    case("zero_filled_after_frame", first + b"\x00" * 40, "frame", "FrameError", n)
    case("http_request", b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", "frame", "FrameError", 0)
    case("tls_client_hello", bytes.fromhex("160301020001000200030312345678"), "frame",
         "FrameError", 0)
    case("msgpack_not_framed", pack({"op": "open"}), "frame", "FrameError", 0)
    case("magic_only_then_zero_version", b"SFRM\x00", "frame", "FrameError", 4)
    rng = random.Random(20240611)
    for i in range(6):
        junk = bytes(rng.randrange(256) for _ in range(rng.randrange(8, 80)))
        # The first byte that differs from the magic is the offset.
        off = next(j for j in range(4) if junk[j] != b"SFRM"[j])
        case("random_junk_%d" % i, junk, "frame", "FrameError", off)


def payload_cases():
    def pf(name, payload, bad_at, exception="DecodeError"):
        case("payload_" + name, good("STREAM_CHUNK", payload, stream_id=1, seq=1), "payload",
             exception, H + bad_at)

    pf("reserved_c1", b"\xc1", 1)  # the value encoding's prefix, its version byte missing
    pf("reserved_c1_in_array", b"\x93\x01\x02\xc1", 3)
    pf("reserved_c1_as_map_key", b"\x81\xc1\x01", 1)
    pf("reserved_c1_deep", b"\x91\x91\x91\xc1", 3)
    pf("empty", b"", 0)
    pf("trailing_byte", b"\x01\x02", 1)
    pf("trailing_after_map", pack({"a": 1}) + b"\xc0", len(pack({"a": 1})))
    # Truncated items: the item whose body is missing is named (a container
    # whose count cannot fit in what remains is refused at its header; one
    # whose count fits is refused where the missing child should start).
    for name, data in (("str8", b"\xd9\x05ab"), ("str16", b"\xda\x00\x10abc"),
                       ("str32", b"\xdb\x00\x00\x01\x00a"), ("bin8", b"\xc4\x09xx"),
                       ("bin16", b"\xc5\x01\x00"), ("bin32", b"\xc6\x00\x00\x10\x00"),
                       ("ext8", b"\xc7\x05\x01ab"), ("fixext4", b"\xd6\x01ab"),
                       ("uint64", b"\xcf\x00\x00"), ("float64", b"\xcb\x40\x09"),
                       ("float32", b"\xca\x40"), ("int16", b"\xd1\x01"),
                       ("fixstr", b"\xa5abc"), ("str8_header", b"\xd9")):
        pf("truncated_" + name, data, 0)
    for name, data, at in (("array_items", b"\x93\x01\x02", 0), ("map_value", b"\x81\xa1a", 3),
                           ("array16_header", b"\xdc\x00", 0), ("map32_header", b"\xdf\x00\x00", 0)):
        pf("truncated_" + name, data, at)
    # Length bombs inside the payload: declared far beyond the bytes present.
    for name, data in (("bin32_4g", b"\xc6\xff\xff\xff\xff\x00"),
                       ("str32_4g", b"\xdb\xff\xff\xff\xff\x00"),
                       ("ext32_4g", b"\xc9\xff\xff\xff\xff\x01"),
                       ("array32_4g", b"\xdd\xff\xff\xff\xff\x00"),
                       ("map32_4g", b"\xdf\xff\xff\xff\xff\x00"),
                       ("array16_64k", b"\xdc\xff\xff\x00"),
                       ("map16_64k", b"\xde\xff\xff\x00")):
        pf("bomb_" + name, data, 0)
    # Nesting beyond the depth limit (256 by default).
    for depth in (257, 300, 1000):
        pf("deep_arrays_%d" % depth, b"\x91" * depth + b"\x01", 256)
    pf("deep_maps_300", b"\x81\x01" * 300 + b"\x01", 2 * 256)
    # Invalid UTF-8 in a str.
    for name, s in (("lone_continuation", b"\x80"), ("overlong_slash", b"\xc0\xaf"),
                    ("surrogate_d800", b"\xed\xa0\x80"), ("above_10ffff", b"\xf4\x90\x80\x80"),
                    ("truncated_3byte", b"\xe2\x82"), ("ff_byte", b"\xff"),
                    ("overlong_nul", b"\xc0\x80"), ("f8_5byte", b"\xf8\x88\x80\x80\x80")):
        pf("utf8_" + name, bytes([0xA0 | len(s)]) + s, 0)
        pf("utf8_key_" + name, b"\x81" + bytes([0xA0 | len(s)]) + s + b"\x01", 1)


def payload_systematic_cases():
    """Every fixed-width item cut at every length, every length field cut,
    and the refusals that need a whole item (fabric extensions, duplicate
    keys and members). The offset is the item at fault: the item that is
    cut, the second of two equal keys or members, or the first trailing
    byte."""
    def pf(name, payload, bad_at):
        case("payload_" + name, good("STREAM_CHUNK", payload, stream_id=1, seq=1), "payload",
             "DecodeError", H + bad_at)

    fixed = (("uint8", 0xCC, 1), ("uint16", 0xCD, 2), ("uint32", 0xCE, 4),
             ("uint64", 0xCF, 8), ("int8", 0xD0, 1), ("int16", 0xD1, 2), ("int32", 0xD2, 4),
             ("int64", 0xD3, 8), ("float32", 0xCA, 4), ("float64", 0xCB, 8))
    for name, tag, width in fixed:
        for have in range(width):
            pf("cut_%s_%dof%d" % (name, have, width), bytes([tag]) + b"\x01" * have, 0)
        # The same, as the second element of an array: the offset moves with it.
        pf("cut_%s_in_array" % name, b"\x92\x01" + bytes([tag]), 2)
    # Length fields cut short (str, bin, array, map, ext).
    for name, tag, width in (("str8", 0xD9, 1), ("str16", 0xDA, 2), ("str32", 0xDB, 4),
                             ("bin8", 0xC4, 1), ("bin16", 0xC5, 2), ("bin32", 0xC6, 4),
                             ("array16", 0xDC, 2), ("array32", 0xDD, 4),
                             ("map16", 0xDE, 2), ("map32", 0xDF, 4),
                             ("ext8", 0xC7, 1), ("ext16", 0xC8, 2), ("ext32", 0xC9, 4)):
        for have in range(1, width):
            pf("cut_len_%s_%dof%d" % (name, have, width), bytes([tag]) + b"\x00" * have, 0)
    # An ext's header whose type byte is missing, and a body shorter than declared.
    for name, head in (("ext8", b"\xc7\x01"), ("ext16", b"\xc8\x00\x01"),
                       ("ext32", b"\xc9\x00\x00\x00\x01")):
        pf("cut_ext_type_" + name, head, 0)
        pf("cut_ext_body_" + name, head[:-1] + bytes([head[-1] + 4]) + b"\x07ab", 0)
    for size, tag in ((1, 0xD4), (2, 0xD5), (4, 0xD6), (8, 0xD7), (16, 0xD8)):
        pf("cut_fixext%d" % size, bytes([tag, 0x07]) + b"a" * (size - 1), 0)
    # Fabric extensions that are malformed.
    pf("bigint_empty", b"\xc7\x00\x01", 0)
    pf("secret_with_payload", b"\xd4\x03\x00", 0)
    pf("set_payload_not_array", b"\xd4\x02\x01", 0)
    # Trailing bytes are named at the first of them, as after a whole value.
    pf("set_payload_trailing", b"\xc7\x03\x02\x91\x01\x01", 5)
    pf("set_duplicate_member", b"\xc7\x03\x02\x92\x01\x01", 5)
    pf("set_member_is_map", b"\xc7\x02\x02\x91\x80", 4)
    pf("timestamp_5_bytes", b"\xc7\x05\xff" + b"\x00" * 5, 0)
    pf("timestamp64_nanoseconds_1e9", b"\xd7\xff" + ((10**9 << 34) | 5).to_bytes(8, "big"), 0)
    pf("timestamp96_nanoseconds_1e9",
       b"\xc7\x0c\xff" + (10**9).to_bytes(4, "big") + (5).to_bytes(8, "big"), 0)
    # Map keys: equal keys (1, True and 1.0 are equal in Python), a map as a key.
    pf("duplicate_key_int", b"\x82\x01\xc0\x01\xc0", 3)
    pf("duplicate_key_str", b"\x82\xa1k\xc0\xa1k\xc0", 4)
    pf("duplicate_key_1_and_true", b"\x82\x01\xc0\xc3\xc0", 3)
    pf("duplicate_key_1_and_float", b"\x82\x01\xc0\xcb" + struct.pack(">d", 1.0) + b"\xc0", 3)
    pf("duplicate_key_array_tuple", b"\x82\x91\x01\xc0\x91\x01\xc0", 4)
    pf("map_as_key", b"\x81\x80\x01", 1)
    pf("map_as_key_nested", b"\x81\x91\x80\x01", 2)
    # A NaN is not equal to itself: duplicates are found by encoding (one NaN).
    nan64 = b"\xcb\x7f\xf8\x00\x00\x00\x00\x00\x00"
    nan32 = b"\xca\x7f\xc0\x00\x00"
    pf("duplicate_key_nan", b"\x82" + nan64 + b"\x01" + nan64 + b"\x02", 11)
    pf("duplicate_key_nan32_nan64", b"\x82" + nan32 + b"\x01" + nan64 + b"\x02", 7)
    pf("duplicate_key_nan_in_tuple", b"\x82\x91" + nan64 + b"\x01\x91" + nan64 + b"\x02", 12)
    pf("set_duplicate_member_nan", b"\xc7\x13\x02\x92" + nan64 + nan64, 13)
    # Hash floods: keys that all share one Python hash (multiples of 2^61 - 1)
    # are refused at the container once more than 8 of them share it.
    m61 = (1 << 61) - 1
    flood = ([b"\xcf" + (m61 * i).to_bytes(8, "big") for i in range(8)]
             + [b"\xd3" + (-m61).to_bytes(8, "big", signed=True)])
    pf("map_keys_share_one_hash", b"\x89" + b"".join(k + b"\xc0" for k in flood), 0)
    members = b"\x99" + b"".join(flood)
    pf("set_members_share_one_hash", b"\xc7" + bytes([len(members)]) + b"\x02" + members, 0)
    pf("map_tuple_keys_share_one_hash",
       b"\x89" + b"".join(b"\x91" + k + b"\xc0" for k in flood), 0)


def _stream(frames):
    """Concatenates frames; returns (bytes, [offset of each frame])."""
    out, offs = b"", []
    for f in frames:
        offs.append(len(out))
        out += f
    return out, offs


def stream_cases():
    sid = 7

    def start(seq=0, meta=None):
        return ref.frame(K["STREAM_START"], pack({"metadata": meta}), stream_id=sid, seq=seq)

    def chunk(seq, item, s=sid, flags=0):
        return ref.frame(K["STREAM_CHUNK"], pack(item), stream_id=s, seq=seq, flags=flags)

    def end(seq, chunks, nbytes, truncated=False):
        return ref.frame(K["STREAM_END"],
                         pack({"bytes": nbytes, "chunks": chunks, "truncated": truncated}),
                         stream_id=sid, seq=seq)

    one = len(pack(1))

    def sc(name, frames, bad_index, exception="FrameError"):
        data, offs = _stream(frames)
        case("stream_" + name, data, "stream", exception, offs[bad_index])

    sc("missing_start", [chunk(0, 1), end(1, 1, one)], 0)
    sc("starts_with_end", [end(0, 0, 0)], 0)
    sc("frame_after_end", [start(), chunk(1, 1), end(2, 1, one), chunk(3, 2)], 3)
    sc("end_after_end", [start(), end(1, 0, 0), end(2, 0, 0)], 2)
    sc("duplicate_seq", [start(), chunk(1, 1), chunk(1, 1), end(2, 1, one)], 2)
    sc("seq_gap", [start(), chunk(1, 1), chunk(3, 2), end(4, 2, 2 * one)], 2)
    sc("reordered", [start(), chunk(2, 2), chunk(1, 1), end(3, 2, 2 * one)], 1)
    sc("start_seq_1", [start(seq=1)], 0)
    sc("other_stream_id", [start(), chunk(1, 1, s=8), end(2, 1, one)], 1)
    sc("second_start", [start(), start(seq=1)], 1)
    sc("end_counts_too_many", [start(), chunk(1, 1), end(2, 2, 2 * one)], 2)
    sc("end_counts_too_few_bytes", [start(), chunk(1, 1), end(2, 1, 0)], 2)
    sc("cut_after_chunks", [start(), chunk(1, 1), chunk(2, 2)], 2)
    sc("cut_after_start", [start()], 0)
    sc("cut_after_diagnostic",
       [start(), chunk(1, {"kind": "LimitExceeded", "message": "m", "limit": "max_stream_frames",
                           "count": 2}, flags=1)], 1)
    sc("chunk_after_terminal_diagnostic",
       [start(), chunk(1, {"kind": "RemoteError", "message": "boom", "limit": None,
                           "count": None}, flags=1), chunk(2, 5), end(3, 1, one)], 2)
    sc("unknown_diagnostic_kind",
       [start(), chunk(1, {"kind": "Explode", "message": "m", "limit": None, "count": None},
                       flags=1), end(2, 0, 0)], 1)
    sc("diagnostic_not_a_map", [start(), chunk(1, [1, 2], flags=1), end(2, 0, 0)], 1)
    sc("diagnostic_message_not_str",
       [start(), chunk(1, {"kind": "Diagnostic", "message": 5, "limit": None, "count": None},
                       flags=1), end(2, 0, 0)], 1)
    sc("start_payload_not_map",
       [ref.frame(K["STREAM_START"], pack([1]), stream_id=sid), end(1, 0, 0)], 0)
    sc("start_payload_extra_field",
       [ref.frame(K["STREAM_START"], pack({"metadata": None, "x": 1}), stream_id=sid)], 0)
    sc("end_payload_not_map",
       [start(), ref.frame(K["STREAM_END"], pack(3), stream_id=sid, seq=1)], 1)
    sc("ping_inside_stream",
       [start(), ref.frame(K["PING"], b"\xc0", stream_id=sid, seq=1), end(2, 0, 0)], 1)
    sc("control_inside_stream",
       [start(), ref.frame(K["CONTROL"], pack({"op": "close"}), stream_id=sid, seq=1)], 1)
    data, offs = _stream([start(), chunk(1, 1)])
    case("stream_truncated_mid_frame", data[:-1], "stream", "FrameError", len(data) - 1)
    data, offs = _stream([start(), ref.frame(K["STREAM_CHUNK"], b"\x91\xc1", stream_id=sid,
                                             seq=1)])
    case("stream_chunk_payload_c1", data, "stream", "DecodeError", offs[1] + H + 1)


def control_cases():
    def cf(name, body, bad="payload", kind="CONTROL", raw=None, exception="FrameError"):
        payload = raw if raw is not None else pack(body)
        data = ref.frame(K[kind], payload, stream_id=3)
        # Control refusals name the payload offset; decode errors the bad byte.
        offset = H if bad == "payload" else H + bad
        case("control_" + name, data, "control", exception, offset)

    cf("unknown_op", {"op": "explode"})
    cf("op_not_str", {"op": 5})
    cf("missing_op", {"limit": 3})
    cf("empty_map", {})
    cf("not_a_map_array", ["next", 1])
    cf("not_a_map_int", 7)
    cf("not_a_map_str", "open")
    cf("not_a_map_nil", None)
    cf("non_str_key", {"op": "close", 1: 2})
    cf("next_missing_limit", {"op": "next"})
    cf("next_limit_zero", {"op": "next", "limit": 0})
    cf("next_limit_negative", {"op": "next", "limit": -4})
    cf("next_limit_str", {"op": "next", "limit": "10"})
    cf("next_limit_bool", {"op": "next", "limit": True})
    cf("next_limit_float", {"op": "next", "limit": 2.0})
    cf("next_unknown_field", {"op": "next", "limit": 1, "extra": 0})
    cf("push_missing_item", {"op": "push"})
    cf("close_unknown_field", {"op": "close", "reason": "x"})
    cf("cancel_reason_int", {"op": "cancel", "reason": 3})
    cf("open_metadata_list", {"op": "open", "metadata": [1]})
    cf("stats_with_limit", {"op": "stats", "limit": 1})
    cf("metadata_with_item", {"op": "metadata", "item": 1})
    cf("fault_missing_kind", {"op": "fault", "count": 1})
    cf("fault_missing_count", {"op": "fault", "kind": "drop"})
    cf("fault_unknown_kind", {"op": "fault", "kind": "meltdown", "count": 1})
    cf("fault_count_zero", {"op": "fault", "kind": "drop", "count": 0})
    cf("wrong_frame_kind", {"op": "close"}, kind="STREAM_CHUNK")
    cf("ping_frame", None, kind="PING")
    cf("payload_c1", None, bad=1, raw=b"\xc1", exception="DecodeError")  # (as reserved_c1)
    cf("payload_truncated_map", None, bad=0, raw=b"\x82\xa2op", exception="DecodeError")
    cf("payload_deep", None, bad=2 + 256, raw=b"\x81\xa1x" + b"\x91" * 300 + b"\x01",
       exception="DecodeError")


def main():
    frame_cases()
    payload_cases()
    payload_systematic_cases()
    stream_cases()
    control_cases()
    if os.path.isdir(OUT):
        for old in os.listdir(OUT):
            os.remove(os.path.join(OUT, old))
    os.makedirs(OUT, exist_ok=True)
    manifest = []
    for c in CASES:
        fname = c["name"] + ".bin"
        with open(os.path.join(OUT, fname), "wb") as fh:
            fh.write(c["data"])
        manifest.append({"name": c["name"], "file": fname, "layer": c["layer"],
                         "exception": c["exception"], "offset": c["offset"]})
    with open(os.path.join(OUT, "MANIFEST.json"), "w") as fh:
        json.dump(manifest, fh, indent=1, sort_keys=True)
        fh.write("\n")
    print("%d cases in %s" % (len(manifest), OUT))
    write_fuzz_seeds()


def write_fuzz_seeds():
    """Seeds of the libFuzzer targets (csrc/fuzz/seeds/<target>/): the corpus
    cases plus valid inputs, as each target reads them."""
    root = os.path.join(os.path.dirname(os.path.dirname(HERE)), "csrc", "fuzz", "seeds")
    valid_stream = b"".join([
        ref.frame(K["STREAM_START"], pack({"metadata": {"a": 1}}), stream_id=7),
        ref.frame(K["STREAM_CHUNK"], pack([1, "two", 3.0]), stream_id=7, seq=1),
        ref.frame(K["STREAM_END"], pack({"bytes": 9, "chunks": 1, "truncated": False}),
                  stream_id=7, seq=2)])
    controls = [pack(b) for b in ({"op": "open"}, {"op": "next", "limit": 8},
                                  {"op": "push", "item": [1, {"x": b"y"}]},
                                  {"op": "fault", "kind": "drop", "count": 2},
                                  {"op": "cancel", "reason": "stop"})]
    seeds = {"frame": [], "payload": [], "control": []}
    for c in CASES:
        if c["layer"] in ("frame", "stream"):
            seeds["frame"].append((c["name"], b"\x00" + c["data"]))
        elif c["layer"] == "payload":
            seeds["payload"].append((c["name"], c["data"][H:]))
        else:
            seeds["control"].append((c["name"], c["data"]))
    seeds["frame"].append(("valid_stream", b"\x07" + valid_stream))
    seeds["payload"] += [("valid_%d" % i, p) for i, p in enumerate(controls)]
    seeds["control"] += [("valid_%d" % i, ref.frame(K["CONTROL"], p, stream_id=1))
                         for i, p in enumerate(controls)]
    for target, items in seeds.items():
        d = os.path.join(root, target)
        if os.path.isdir(d):
            for old in os.listdir(d):
                os.remove(os.path.join(d, old))
        os.makedirs(d, exist_ok=True)
        for name, data in items:
            with open(os.path.join(d, name), "wb") as fh:
                fh.write(data)


if __name__ == "__main__":
    main()
