"""The malformed-frame corpus (tests/corpus/frames, built by
tests/corpus/make_frames_corpus.py): every case raises the specific exception
its manifest names, with the stream offset in .offset and in the message,
fast, and without allocating more than 16 bytes per input byte + 64 KiB."""

import json
import os
import time
import tracemalloc

import pytest

import fabric

HERE = os.path.dirname(os.path.abspath(__file__))
CORPUS = os.path.join(HERE, "corpus", "frames")
with open(os.path.join(CORPUS, "MANIFEST.json")) as fh:
    MANIFEST = json.load(fh)
ALL_GRANTS = {"stream.open", "stream.read", "stream.push", "stream.cancel", "stream.stats",
              "stream.remote.network"}


def _data(entry):
    with open(os.path.join(CORPUS, entry["file"]), "rb") as fh:
        return fh.read()


def _first_frame(data):
    dec = fabric.FrameDecoder()
    dec.feed(data)
    dec.finish()
    return next(dec)


def run_case(layer, data, *, one_byte=False):
    """Reads data the way its layer does; returns normally only if accepted."""
    if layer == "frame":
        dec = fabric.FrameDecoder()
        if one_byte:
            for i in range(len(data)):
                dec.feed(data[i:i + 1])
        else:
            dec.feed(data)
        list(dec)
        dec.finish()
    elif layer == "payload":
        _first_frame(data).decode_payload()
    elif layer == "stream":
        list(fabric.stream_frames_to_stream(data))
    elif layer == "control":
        fabric.StreamControl.from_frame(_first_frame(data), ALL_GRANTS)
    else:
        raise AssertionError("unknown layer %r" % layer)


def test_corpus_is_large_and_named():
    assert len(MANIFEST) >= 300  # QUALITY.md D3
    names = [e["name"] for e in MANIFEST]
    assert len(set(names)) == len(names)
    on_disk = {f for f in os.listdir(CORPUS) if f.endswith(".bin")}
    assert on_disk == {e["file"] for e in MANIFEST}
    assert {e["layer"] for e in MANIFEST} == {"frame", "payload", "stream", "control"}


@pytest.mark.parametrize("entry", MANIFEST, ids=[e["name"] for e in MANIFEST])
def test_case_raises_its_exception_with_offset(entry):
    data = _data(entry)
    expected = getattr(fabric, entry["exception"])
    t0 = time.perf_counter()
    with pytest.raises(expected) as info:
        run_case(entry["layer"], data)
    elapsed = time.perf_counter() - t0
    exc = info.value
    assert type(exc) is expected, (type(exc), exc)
    assert isinstance(exc, ValueError)
    assert exc.offset == entry["offset"], str(exc)
    assert "offset %d" % entry["offset"] in str(exc), str(exc)
    if os.environ.get("FABRIC_TIMED_TESTS"):
        # Opt-in: timing on shared machines is noise, not a verdict.
        assert elapsed < 0.010, "%s took %.1f ms" % (entry["name"], elapsed * 1e3)


@pytest.mark.parametrize("entry", [e for e in MANIFEST if e["layer"] == "frame"],
                         ids=[e["name"] for e in MANIFEST if e["layer"] == "frame"])
def test_frame_case_same_verdict_one_byte_at_a_time(entry):
    with pytest.raises(fabric.FrameError) as info:
        run_case("frame", _data(entry), one_byte=True)
    assert info.value.offset == entry["offset"]


def test_allocation_bound_over_the_corpus():
    """Decoding any corpus input of n bytes allocates <= 16*n + 64 KiB of
    Python memory, and the C decoder's buffer stays <= n + 64 KiB."""
    worst = []
    for entry in MANIFEST:
        data = _data(entry)
        tracemalloc.start()
        try:
            try:
                run_case(entry["layer"], data)
            except (ValueError, PermissionError):
                pass
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        bound = 16 * len(data) + 64 * 1024
        worst.append((peak / bound, entry["name"], peak))
        assert peak <= bound, (entry["name"], peak, bound)
    assert max(worst)[0] < 1.0


def test_six_byte_length_bomb_allocates_little():
    bomb = b"\xc6\xff\xff\xff\xff\x00"  # bin32 declaring 4 GiB, 1 byte present
    frame = fabric.Frame(fabric.FrameKind.STREAM_CHUNK, bomb)
    tracemalloc.start()
    try:
        with pytest.raises(fabric.DecodeError):
            frame.decode_payload()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    # The frame-level bomb: a header declaring 1 GiB (allowed by the limits)
    # and 6 bytes behind it buffer no more than fed + 64 KiB in C.
    limits = fabric.StreamFrameLimits(max_frame_payload_bytes=1 << 30)
    enc = fabric.FrameEncoder(limits)
    header = bytearray(enc.encode(fabric.FrameKind.STREAM_CHUNK, b"")[:36])
    header[24:28] = (1 << 30).to_bytes(4, "big")
    import frames_ref
    header = frames_ref.reseal(bytes(header))
    dec = fabric.FrameDecoder(limits)
    tracemalloc.start()
    try:
        dec.feed(header + b"\x00" * 6)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024
    assert dec.partial
    assert dec._buffer_capacity <= 6 + 64 * 1024
    with pytest.raises(fabric.FrameError, match="offset 42"):
        dec.finish()
