"""fabric.EvalCassette: API, bad inputs, streams, readers, golden file."""

from __future__ import annotations

import errno
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading

import pytest

import fabric
from fabric import ContentKey, EvalCassette, EvalRequest

import cassette_ref

GOLDEN = pathlib.Path(__file__).parent / "golden" / "ledger-v2.fabl"
GOLDEN_V1 = pathlib.Path(__file__).parent / "golden" / "ledger-v1.fabl"
T0 = 1_700_000_000_000_000_000


def key_v1(i) -> ContentKey:
    """The key scheme 1 key of key(i) (the same identity bytes under tag 1):
    what the version 1 golden file, written before key scheme 2, holds."""
    import hashlib

    # Scheme 2's identity array has a 12th element, the sharing class
    # ("pure", 5 bytes at the end); scheme 1's has 11 under its own tag.
    ident = EvalRequest("op", [i]).identity_bytes()
    return ContentKey(hashlib.sha256(
        b"\x9b" + ident[1:-5].replace(b"fabric.key/2", b"fabric.key/1", 1)).digest())


def key(i) -> ContentKey:
    return EvalRequest("op", [i]).key


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "c.fabl")


VALUES = [
    None, True, False, 0, -1, 2**64 - 1, -(2**63), 2**100, -(2**70), 1.5, float("inf"),
    "", "héllo", b"", b"\x00\xff", [], [1, [2, [3]]], {"a": 1, "b": [None]},
    {1, 2, 3}, frozenset({"x"}), (1, 2), {"nested": {"deep": [{"k": b"v"}]}},
    "x" * 70000, b"y" * 200000,
]


def normalized(v):
    """What a value decodes back to: tuples become lists, sets frozensets."""
    if isinstance(v, tuple | list):
        return [normalized(x) for x in v]
    if isinstance(v, set | frozenset):
        return frozenset(v)
    if isinstance(v, dict):
        return {k: normalized(x) for k, x in v.items()}
    return v


def test_round_trip_every_value_kind(path):
    with EvalCassette(path, durability="fsync") as c:
        for i, v in enumerate(VALUES):
            assert c.record(key(i), v) is True
        for i, v in enumerate(VALUES):
            assert c.get(key(i)) == v and type(c.get(key(i))) is type(v)
            assert bytes(c.get_raw(key(i))) == fabric.encode_value(v)
    with EvalCassette(path, "r") as c:
        assert len(c) == len(VALUES)
        assert list(c) == [key(i) for i in range(len(VALUES))]
        assert [k for k, _ in c.items()] == list(c)
        for i, v in enumerate(VALUES):
            assert c.get(key(i)) == v


def test_first_write_wins_and_writes_nothing(path):
    with EvalCassette(path) as c:
        assert c.record(key(1), "first")
        size = os.path.getsize(path)
        assert c.record(key(1), "second") is False
        assert os.path.getsize(path) == size
        assert c.get(key(1)) == "first"
    with EvalCassette(path) as c:
        assert c.get(key(1)) == "first"
        assert c.stats()["duplicates"] == 0


def test_get_default_contains_len(path):
    with EvalCassette(path) as c:
        sentinel = object()
        assert c.get(key(9)) is None
        assert c.get(key(9), sentinel) is sentinel
        assert key(9) not in c
        assert len(c) == 0
        c.record(key(9), 0)
        assert key(9) in c and key(9).digest in c
        assert c.get(key(9).digest) == 0
        assert len(c) == 1


def test_get_raw_is_zero_copy_and_outlives_close(path):
    c = EvalCassette(path)
    c.record(key(1), {"a": b"b" * 1000})
    view = c.get_raw(key(1))
    assert isinstance(view, memoryview) and view.readonly
    with pytest.raises(TypeError):
        view[0] = 1
    c.close()
    assert fabric.decode_value(bytes(view)) == {"a": b"b" * 1000}


@pytest.mark.parametrize("durability", ["os", "fsync", "group"])
def test_durability_modes(path, durability):
    with EvalCassette(path, durability=durability) as c:
        assert c.durability == durability
        for i in range(50):
            c.record(key(i), i)
        # One fdatasync per record alone (fsync, or group with one writer),
        # none before sync() with os durability.
        assert c.stats()["syncs"] == (0 if durability == "os" else 50)
        c.record(key(0), 0)  # already held: writes and syncs nothing
        assert c.stats()["syncs"] == (0 if durability == "os" else 50)
        c.flush()
        c.sync()
        assert c.stats()["syncs"] >= 1
    with EvalCassette(path, "r") as c:
        assert [c.get(key(i)) for i in range(50)] == list(range(50))


def test_group_commit_threads(path):
    with EvalCassette(path, durability="group") as c:
        def work(base):
            for i in range(200):
                c.record(key(base + i), base + i)
        threads = [threading.Thread(target=work, args=(b * 1000,)) for b in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert len(c) == 800
        assert 1 <= c.stats()["syncs"] <= 800  # a batch never takes more than one sync
    with EvalCassette(path, "r") as c:
        assert len(c) == 800
        assert c.get(key(3199 - 1000)) == 2199


def test_bad_keys_and_values(path):
    with EvalCassette(path) as c:
        with pytest.raises(TypeError, match="ContentKey or a 32-byte digest, not int"):
            c.record(5, 1)
        with pytest.raises(ValueError, match="32 bytes, this one has 3"):
            c.get(b"abc")
        with pytest.raises(TypeError, match="reply"):
            c.record(key(1), object())
        with pytest.raises(TypeError):
            c.record(key(1))
        assert len(c) == 0


def test_bad_options(path):
    with pytest.raises(ValueError, match='mode must be one of "r", "a"'):
        EvalCassette(path, "w")
    with pytest.raises(ValueError, match="durability"):
        EvalCassette(path, durability="never")
    with pytest.raises(ValueError, match="recover"):
        EvalCassette(path, recover="maybe")


def test_closed_cassette(path):
    c = EvalCassette(path)
    c.close()
    c.close()
    assert c.closed
    for call in (lambda: c.get(key(1)), lambda: len(c), lambda: c.record(key(1), 1),
                 lambda: key(1) in c, lambda: c.stats()):
        with pytest.raises(ValueError, match="closed cassette"):
            call()


def test_reader_refuses_writes_and_needs_no_lock(path):
    EvalCassette(path).close()
    with EvalCassette(path) as w, EvalCassette(path, "r") as r:
        with pytest.raises(fabric.LedgerError, match="read-only"):
            r.record(key(1), 1)
        w.record(key(1), "v")
        w.record(key(2), "w")
        # A miss looks at the file's tail: no refresh() needed.
        assert key(1) in r
        assert r.get(key(2)) == "w"
        assert r.refresh() == 0
        w.record(key(3), "x")
        assert r.refresh() == 1
        assert r.get(key(3)) == "x"


def test_same_process_twice(path):
    """A re-run notebook cell opens the path again while the first handle is
    open: both work, and each sees what the other recorded."""
    a = EvalCassette(path)
    b = EvalCassette(path)
    assert a.record(key(1), "a") is True
    assert b.record(key(1), "b") is False  # first write wins across handles
    assert b.record(key(2), "b") is True
    assert a.get(key(2)) == "b" and b.get(key(1)) == "a"
    a.close()
    assert b.record(key(3), "c") is True  # closing one never drops the other's locks
    b.close()
    with EvalCassette(path, "r") as r:
        assert {k: r.get(k) for k in r} == {key(1): "a", key(2): "b", key(3): "c"}
        assert r.stats()["duplicates"] == 0


def test_exclusive_writer_is_alone(path):
    with EvalCassette(path, exclusive=True) as c:
        assert c.stats()["exclusive"] is True
        with pytest.raises(fabric.LedgerLockedError) as info:
            EvalCassette(path)
        assert isinstance(info.value, OSError)
        assert "exclusively" in str(info.value)
        assert info.value.pid == os.getpid()
        with EvalCassette(path, "r") as r:  # readers are welcome
            c.record(key(1), 1)
            assert r.get(key(1)) == 1
    with EvalCassette(path) as w:
        with pytest.raises(fabric.LedgerLockedError, match="only writer"):
            EvalCassette(path, exclusive=True)
        assert w.stats()["writers"] in (1, None)
    EvalCassette(path, exclusive=True).close()  # released on close


def test_not_a_ledger(tmp_path):
    p = tmp_path / "junk"
    p.write_bytes(b"definitely not a ledger, just some text\n" * 3)
    with pytest.raises(fabric.LedgerFormatError, match="bad magic") as info:
        EvalCassette(str(p), "r")
    assert info.value.offset == 0 and info.value.path == str(p)
    assert isinstance(info.value, ValueError)


def test_truncated_header(tmp_path):
    p = tmp_path / "short"
    p.write_bytes(cassette_ref.header(T0)[:40])
    with pytest.raises(fabric.LedgerFormatError, match="truncated") as info:
        EvalCassette(str(p))
    assert info.value.offset == 40


def test_newer_version(tmp_path):
    h = bytearray(cassette_ref.header(T0))
    h[8] = 7
    p = tmp_path / "new"
    p.write_bytes(bytes(h))
    with pytest.raises(fabric.LedgerVersionError, match="version 7 is newer") as info:
        EvalCassette(str(p), "r")
    assert info.value.version == 7
    assert isinstance(info.value, fabric.LedgerFormatError)


def test_directory_and_missing(tmp_path):
    with pytest.raises(fabric.LedgerError) as info:
        EvalCassette(str(tmp_path), "r")
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)
    with pytest.raises(fabric.LedgerError) as info:
        EvalCassette(str(tmp_path / "missing"), "r")
    assert info.value.errno == errno.ENOENT


def test_read_only_path(tmp_path):
    """A path where the ledger cannot be created: a read-only directory, or,
    for root (who ignores permission bits), sysfs, which refuses new files."""
    if os.geteuid() == 0:
        with pytest.raises(fabric.LedgerError) as info:
            EvalCassette("/sys/fabric-test-ledger.fabl")
        assert info.value.errno == errno.EACCES
        assert info.value.filename == "/sys/fabric-test-ledger.fabl"
        return
    d = tmp_path / "ro"
    d.mkdir()
    d.chmod(0o500)
    try:
        with pytest.raises(fabric.LedgerError) as info:
            EvalCassette(str(d / "c.fabl"))
        assert info.value.errno == errno.EACCES
    finally:
        d.chmod(0o700)


def test_full_disk(tmp_path):
    if not os.path.exists("/dev/full"):
        pytest.skip("no /dev/full")
    # /dev/full is not a regular file: refused before any write.
    with pytest.raises(fabric.LedgerFormatError, match="not a regular file"):
        EvalCassette("/dev/full")


def test_empty_file_becomes_a_ledger(tmp_path):
    p = tmp_path / "empty"
    p.write_bytes(b"")
    with EvalCassette(str(p)) as c:
        c.record(key(1), 1)
    with EvalCassette(str(p), "r") as c:
        assert c.get(key(1)) == 1


def test_streams(path):
    with EvalCassette(path) as c:
        with c.record_stream(key(1)) as w:
            for i in range(100):
                w.append({"i": i})
            assert w.count == 100
        assert key(1) in c
        assert list(c.get_stream(key(1))) == [{"i": i} for i in range(100)]
        # A held key: the writer is a no-op.
        w2 = c.record_stream(key(1))
        assert w2.held
        w2.append(1)
        assert w2.close() is False
        # Abort, and an exception inside the with block, leave the key unheld.
        w3 = c.record_stream(key(2))
        w3.append(1)
        w3.abort()
        with pytest.raises(RuntimeError):
            with c.record_stream(key(3)) as w4:
                w4.append(1)
                raise RuntimeError
        assert key(2) not in c and key(3) not in c
        with pytest.raises(ValueError, match="already closed"):
            w3.append(2)
        with pytest.raises(TypeError, match="get_stream"):
            c.get_raw(key(1))
        c.record(key(4), "single")
        with pytest.raises(TypeError, match="get\\(\\)"):
            c.get_stream(key(4))
        assert c.get_stream(key(5)) is None
    with EvalCassette(path, "r") as c:
        assert len(c) == 2
        s = c.get(key(1))
        assert isinstance(s, fabric.CassetteStream)
        assert next(s) == {"i": 0}
        assert sum(1 for _ in s) == 99


def test_unterminated_stream_not_held(path):
    c = EvalCassette(path)
    w = c.record_stream(key(1))
    w.append(1)
    c.close()  # as if the process died mid-stream
    with EvalCassette(path) as c:
        assert key(1) not in c
        with c.record_stream(key(1)) as w:
            w.append("again")
        assert list(c.get_stream(key(1))) == ["again"]


def test_stream_items_written_in_batches(path):
    """Items are written a batch at a time (by count and bytes) and before
    the END; an item that fails to encode is not kept; an abort drops the
    batch; the stream reads back whole."""
    with EvalCassette(path, durability="os") as c:
        records = lambda: c.stats()["records"]
        w = c.record_stream(key(1))
        base = records()  # the BEGIN
        for i in range(1500):
            w.append(i)
        assert records() == base + 1024  # one batch written, 476 items pending
        with pytest.raises(TypeError):
            w.append(object())
        assert w.count == 1500
        w.append("big" * 100_000)  # past the byte limit: written at once
        assert records() == base + 1501
        w.append(-1)
        assert w.close() is True
        assert records() == base + 1503  # the last item and the END
        assert list(c.get_stream(key(1))) == [*range(1500), "big" * 100_000, -1]
        w = c.record_stream(key(2))
        for i in range(10):
            w.append(i)
        before = records()
        w.abort()
        assert records() == before + 1 and key(2) not in c  # the ABORT alone
    with EvalCassette(path, "r") as c:
        assert list(c.get_stream(key(1)))[-3:] == [1499, "big" * 100_000, -1]


def test_stream_killed_with_items_pending_is_not_held(tmp_path):
    """A process killed mid-stream, with a batch written and one pending:
    the stream has no END, so it is not held, and the ledger opens strictly."""
    path = str(tmp_path / "killed.fabl")
    script = textwrap.dedent("""
        import sys
        from fabric import EvalCassette, EvalRequest
        c = EvalCassette(sys.argv[1], durability="os")
        w = c.record_stream(EvalRequest("op", [1]).key)
        for i in range(2000):
            w.append(i)
        print("ready", flush=True)
        sys.stdin.readline()
    """)
    root = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))
    env = dict(os.environ, PYTHONPATH=root)
    child = subprocess.Popen([sys.executable, "-c", script, path], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True, env=env)
    try:
        assert child.stdout.readline() == "ready\n"
        child.kill()
    finally:
        child.communicate()
    with EvalCassette(path, "r") as c:
        assert key(1) not in c and len(c) == 0
        assert c.stats()["records"] == 1 + 1024


def test_delete_and_clear(path):
    with EvalCassette(path, durability="fsync") as c:
        for i in range(5):
            c.record(key(i), i)
        r = EvalCassette(path, "r")
        assert r.get(key(3)) == 3
        assert c.delete(key(1)) is True
        assert c.delete(key(1)) is False  # not held: nothing written
        assert c.delete(key(99)) is False
        assert key(1) not in c and c.get(key(1)) is None and len(c) == 4
        assert sorted(c.get(k) for k in c) == [0, 2, 3, 4]
        assert c.stats()["tombstones"] == 1
        assert r.get(key(1)) == 1  # a hit does not look at the file: the window
        assert r.get(key(99)) is None  # a miss does, and finds the tombstone
        assert r.get(key(1)) is None and len(r) == 4
        assert c.delete(key(3)) is True
        assert r.refresh() == 1  # refresh() looks too
        assert r.get(key(3)) is None
        assert c.record(key(1), "again") is True  # a deleted key can be recorded again
        assert c.get(key(1)) == "again" and r.get(key(1)) == "again"
        with c.record_stream(key(2)) as w:  # held: the stream is a no-op
            assert w.held
        assert c.delete(key(2)) is True
        with c.record_stream(key(2)) as w:
            w.append("s")
        assert list(c.get_stream(key(2))) == ["s"]
        r.close()
    with pytest.raises(fabric.LedgerError, match="read-only"), EvalCassette(path, "r") as r:
        r.delete(key(0))
    with EvalCassette(path) as c:
        assert {c.get(k) if k != key(2) else "stream" for k in c} == {0, "again", 4, "stream"}
        assert c.clear() == 4
        assert len(c) == 0 and key(0) not in c and list(c) == []
        c.record(key(0), "fresh")
    with EvalCassette(path, "r") as c:
        assert len(c) == 1 and c.get(key(0)) == "fresh"


def test_expire(path):
    with EvalCassette(path, durability="os") as c:
        assert c.record(key(1), 1, expire=1e-9) is True  # past by the next call
        assert c.get(key(1)) is None and key(1) not in c
        assert c.record(key(1), "again", expire=3600) is True  # expired: recorded again
        assert c.get(key(1)) == "again"
        assert c.record(key(1), "third") is False  # held until it expires
        assert c.record(key(2), 2, expire=None) is True
        for bad, exc in ((0, ValueError), (-1, ValueError), (float("nan"), ValueError),
                         ("1", TypeError), (True, TypeError)):
            with pytest.raises(exc, match="expire"):
                c.record(key(3), 3, expire=bad)
        with pytest.raises(TypeError, match="unexpected keyword"):
            c.record(key(3), 3, expires=1)
        c.record(key(4), 4, expire=1e-9)
        assert c.compact() == 0  # drops the expired reply
    with EvalCassette(path, "r") as c:
        assert c.get(key(1)) == "again" and c.get(key(2)) == 2 and c.get(key(4)) is None
        assert c.stats()["records"] == 2


def test_compact_max_bytes_evicts_oldest_first(path, tmp_path):
    with EvalCassette(path, durability="os") as c:
        for i in range(200):
            if i % 20 == 7:
                with c.record_stream(key(i)) as w:
                    for j in range(10):
                        w.append("x" * 30)
            else:
                c.record(key(i), "v" * 100)
        c.delete(key(199))
        dest = str(tmp_path / "small.fabl")
        evicted = c.compact(dest, max_bytes=10_000)
        with pytest.raises(ValueError, match="max_bytes"):
            c.compact(dest, max_bytes=10)
        with pytest.raises(TypeError, match="max_bytes"):
            c.compact(dest, max_bytes=1.5)
    assert 9_000 < os.path.getsize(dest) <= 10_000
    with EvalCassette(dest, "r") as c:
        kept = len(c)
        assert kept + evicted == 199
        first = 199 - kept
        assert [i for i in range(199) if key(i) in c] == list(range(first, 199))
        for i in range(first, 199):
            if i % 20 == 7:  # a stream is kept whole
                assert list(c.get_stream(key(i))) == ["x" * 30] * 10
    with EvalCassette(dest) as c:  # an evicted key can be recorded again
        assert c.record(key(0), "back") is True and c.get(key(0)) == "back"


def test_compact_keeps_deletes(path):
    with EvalCassette(path, durability="os") as c:
        for i in range(10):
            c.record(key(i), i)
        c.delete(key(4))
        c.compact()
        assert key(4) not in c and len(c) == 9
        assert c.stats()["tombstones"] == 0
    with EvalCassette(path, "r") as c:
        assert key(4) not in c and len(c) == 9 and c.stats()["records"] == 9


def test_compact(path, tmp_path):
    dest = str(tmp_path / "compact.fabl")
    with EvalCassette(path) as c:
        for i in range(20):
            c.record(key(i), "v" * i)
        w = c.record_stream(key(100))
        w.append(1)
        w.abort()
        with c.record_stream(key(101)) as w:
            w.append("kept")
        with pytest.raises(ValueError, match="onto itself"):
            c.compact(path)
        c.compact(dest)
    with EvalCassette(dest, "r") as c:
        assert len(c) == 21
        assert c.get(key(7)) == "v" * 7
        assert list(c.get_stream(key(101))) == ["kept"]
        assert c.stats()["records"] == 20 + 3
    assert os.path.getsize(dest) < os.path.getsize(path)


def test_stats_and_progress(path):
    with EvalCassette(path, durability="os") as c:
        for i in range(1000):
            c.record(key(i), i)
    calls = []
    with EvalCassette.from_ledger(path, progress=lambda d, t: calls.append((d, t))) as c:
        s = c.stats()
        assert c.mode == "r"
    size = os.path.getsize(path)
    assert calls[-1] == (size, size)
    assert s["records"] == s["keys"] == 1000
    assert s["bytes"] == size
    assert s["index_bytes_per_key"] <= 64
    assert s["torn_tails_cut"] == s["salvage_skips"] == 0
    assert s["version"] == fabric._core.LEDGER_VERSION == 2


def test_torn_tail_cut_and_reported(path):
    with EvalCassette(path) as c:
        c.record(key(1), "a")
        c.record(key(2), "b")
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - 3)
    with EvalCassette(path, "r") as c:  # a reader does not cut
        assert len(c) == 1 and c.stats()["torn_bytes"] > 0
    with EvalCassette(path) as c:
        s = c.stats()
        assert s["torn_tails_cut"] == 1 and len(c) == 1
    assert os.path.getsize(path) < size - 3


def test_middle_corruption_and_salvage(path):
    with EvalCassette(path) as c:
        for i in range(10):
            c.record(key(i), "value %d" % i)
    data = bytearray(open(path, "rb").read())
    recs = list(cassette_ref.read(bytes(data)))
    bad_off = recs[4][0]
    data[bad_off + 53] ^= 1  # inside its payload
    open(path, "wb").write(bytes(data))
    with pytest.raises(fabric.LedgerCorruptionError) as info:
        EvalCassette(path)
    assert info.value.offset == bad_off and info.value.path == path
    assert f"offset {bad_off}" in str(info.value)
    with EvalCassette(path, recover="salvage") as c:
        assert len(c) == 9 and key(4) not in c
        assert c.stats()["salvage_skips"] == 1


def _salvaged_streams(path, damage):
    """A ledger of a reply, stream A (3 items) interleaved with stream B (2
    items), and a reply after them; ``damage(records, a, b)`` names the
    record to flip a byte of. Opened with recover="salvage": (which of "A",
    "B" are held, the cassette's stats)."""
    a, b = key(200), key(201)
    if os.path.exists(path):
        os.remove(path)  # (a new ledger each time)
    with EvalCassette(path) as c:
        c.record(key(0), "before")
        wa, wb = c.record_stream(a), c.record_stream(b)
        for i in range(3):
            wa.append(f"a{i}")
            if i < 2:
                wb.append(f"b{i}")
        wa.close()
        wb.close()
        c.record(key(1), "after")
    data = bytearray(open(path, "rb").read())
    recs = list(cassette_ref.read(bytes(data)))
    off = damage(recs, a, b)
    data[off + 40] ^= 1  # a byte of its key (a BEGIN has no payload)
    open(path, "wb").write(bytes(data))
    with EvalCassette(path, recover="salvage") as c:
        held = {name for name, k in (("A", a), ("B", b)) if k in c}
        listed = set(c)
        assert listed == {key(0), key(1)} | {k for name, k in (("A", a), ("B", b))
                                             if name in held}
        assert len(c) == len(listed)
        assert c.get(key(0)) == "before" and c.get(key(1)) == "after"
        for name, k, items in (("A", a, ["a0", "a1", "a2"]), ("B", b, ["b0", "b1"])):
            if name in held:
                assert list(c.get_stream(k)) == items  # whole
            else:
                assert c.get_stream(k) is None and c.get_stream(k, "gone") == "gone"
                assert k not in dict(c.items())
        return held, c.stats()


def _chunks(recs, k):
    return [off for off, rtype, rkey, _ in recs if rtype == 3 and rkey == bytes(k)]


def _record_of(recs, k, rtype):
    (off,) = [off for off, t, rkey, _ in recs if t == rtype and rkey == bytes(k)]
    return off


@pytest.mark.parametrize("which", [0, 1, 2])
def test_a_salvaged_stream_that_lost_an_item_is_not_held(path, which):
    """A stream without its terminator is never held; nor is one whose END
    survived salvage but not every item (docs/spec/ledger.md, Replay): it
    is not listed, not counted, and get_stream misses, where it was listed
    and failed when read. The stream beside it, all of whose records are
    sound, is held whole."""
    held, stats = _salvaged_streams(path, lambda recs, a, b: _chunks(recs, a)[which])
    assert held == {"B"} and stats["salvage_skips"] == 1


def test_a_salvaged_stream_that_lost_its_begin_or_end_is_not_held(path):
    held, _ = _salvaged_streams(path, lambda recs, a, b: _record_of(recs, a, 2))
    assert held == {"B"}
    held, _ = _salvaged_streams(path, lambda recs, a, b: _record_of(recs, b, 4))
    assert held == {"A"}


def test_a_salvaged_stream_that_lost_only_a_neighbours_item_is_held(path):
    held, _ = _salvaged_streams(path, lambda recs, a, b: _chunks(recs, b)[0])
    assert held == {"A"}  # A's chunks sit on both sides of B's lost one


def test_a_salvaged_stream_lost_an_item_is_not_compacted_and_can_be_recorded_again(path, tmp_path):
    _salvaged_streams(path, lambda recs, a, b: _chunks(recs, a)[1])
    with EvalCassette(path, recover="salvage") as c:
        c.compact(str(tmp_path / "compacted.fabl"))
        with c.record_stream(key(200)) as w:  # not held: recorded anew
            w.append("again")
        assert list(c.get_stream(key(200))) == ["again"]
    with EvalCassette(str(tmp_path / "compacted.fabl"), "r") as c:
        assert set(c) == {key(0), key(1), key(201)}
        assert c.get_stream(key(200)) is None


def test_corruption_sampled_never_returns_changed_reply(tmp_path):
    """Through real files: the exhaustive version runs in C (test_ledger.c)."""
    base = str(tmp_path / "base.fabl")
    with EvalCassette(base, durability="os", created_ns=T0) as c:
        i = 0
        while os.path.getsize(base) < 32768:
            c.record(key(i), {"i": i, "pad": "p" * (i % 200)})
            i += 1
    n = i
    original = open(base, "rb").read()
    expect = {key(j): {"i": j, "pad": "p" * (j % 200)} for j in range(n)}
    target = str(tmp_path / "t.fabl")
    for pos in range(64, len(original), 331):
        data = bytearray(original)
        data[pos] ^= 0x10
        open(target, "wb").write(bytes(data))
        try:
            with EvalCassette(target, "r") as c:
                # Only a torn tail (the last record) is acceptable here.
                assert len(c) == n - 1
                for k, v in c.items():
                    assert expect[k] == v
        except fabric.LedgerCorruptionError as exc:
            assert exc.offset <= pos


def test_checkpoint_makes_open_replay_only_the_tail(path):
    with EvalCassette(path, durability="os") as c:
        for i in range(500):
            c.record(key(i), {"i": i})
        c.checkpoint()
        for i in range(500, 530):
            c.record(key(i), {"i": i})
    ckpt = path + ".ckpt"
    assert os.path.exists(ckpt)
    with EvalCassette(path, "r") as r:
        s = r.stats()
        assert s["checkpoint"]["state"] == "used" and s["checkpoint"]["keys"] == 500
        assert s["open_replayed"] == 30 and len(r) == 530
        assert all(r.get(key(i)) == {"i": i} for i in range(530))
        assert sorted(v["i"] for _, v in r.items()) == list(range(530))
    # a damaged checkpoint is never believed: every reply stays right
    data = bytearray(open(ckpt, "rb").read())
    for pos in (0, 40, 5000, len(data) - 1):
        damaged = bytearray(data)
        damaged[pos] ^= 0xFF
        open(ckpt, "wb").write(damaged)
        with EvalCassette(path, "r") as r:
            assert all(r.get(key(i)) == {"i": i} for i in range(530))
            assert r.stats()["checkpoint"]["state"] in ("ignored", "rebuilt")
    os.unlink(ckpt)
    with EvalCassette(path, "r", checkpoint=False) as r:
        assert r.stats()["checkpoint"]["state"] == "none" and r.stats()["open_replayed"] == 530


def test_golden_ledger():
    """The committed golden file: written by this code, read by the reference."""
    data = GOLDEN.read_bytes()
    tmp = GOLDEN.with_suffix(".tmp")
    try:
        write_golden(str(tmp))
        assert tmp.read_bytes() == data, "the ledger format changed: review the diff"
    finally:
        tmp.unlink(missing_ok=True)
    recs = list(cassette_ref.read(data))
    assert data[:64] == cassette_ref.header(T0)
    assert [r[1] for r in recs] == [1, 1, 2, 3, 3, 4, 1, 9, 1, 9, 1]
    for off, rtype, k, payload in recs:
        assert cassette_ref.record(rtype, k, payload) == data[off : off + 52 + len(payload)]
    # Replies are in the value encoding (docs/spec/values.md).
    assert recs[0][3][:2] == b"\xc1\x01"
    assert fabric.decode_value(recs[0][3]) == {"answer": 42}
    tomb, clear = recs[7], recs[9]
    assert tomb[2] == key("golden-2").digest and tomb[3] == b""
    assert clear[2] == bytes(32) and clear[3] == b"\x01"
    with EvalCassette(str(GOLDEN), "r") as c:
        assert len(c) == 1 and c.get(key("golden-1")) is None
        assert c.get(key("after-clear")) == 1


def test_golden_v1_ledger_still_read_and_upgraded(tmp_path):
    """A version 1 file (the committed golden file of that version) is read
    as before, appended to as version 1, and rewritten as version 2 by the
    first record version 1 does not know (a tombstone)."""
    data = GOLDEN_V1.read_bytes()
    assert data[:64] == cassette_ref.header(T0, version=1)
    with EvalCassette(str(GOLDEN_V1), "r") as c:
        assert c.stats()["version"] == 1
        assert c.get(key_v1("golden-1")) == {"answer": 42}
        assert list(c.get_stream(key_v1("stream"))) == ["a", "b"]
    p = tmp_path / "v1.fabl"
    p.write_bytes(data)
    with EvalCassette(str(p), durability="os") as c:
        assert c.record(key("new"), 1) is True
        assert p.read_bytes()[8] == 1
        assert c.delete(key_v1("golden-1")) is True
        assert c.stats()["version"] == 2
    data2 = p.read_bytes()
    assert data2[:64] == cassette_ref.header(T0, version=2)
    assert data2[64:] == data[64:] + data2[len(data):]
    assert [r[1] for r in cassette_ref.read(data2)][-2:] == [1, 9]
    with EvalCassette(str(p), "r") as c:
        assert c.get(key_v1("golden-1")) is None and c.get(key("new")) == 1


GOLDEN_CKPT = pathlib.Path(str(GOLDEN_V1) + ".ckpt")


def test_golden_checkpoint(tmp_path):
    """The committed checkpoint of the version 1 golden ledger: every field
    checked by the reference reader; used by an open; and written again by
    this code byte for byte (a checkpoint in use keeps its seed)."""
    ledger, ckpt = GOLDEN_V1.read_bytes(), GOLDEN_CKPT.read_bytes()
    ref = cassette_ref.read_checkpoint(ckpt, ledger)
    commits = {}
    for off, rtype, k, _ in cassette_ref.read(ledger):
        if rtype in (1, 4):
            commits.setdefault(k, off)
    assert ref["slots"] == commits and ref["covered"] == len(ledger)
    p = tmp_path / "g.fabl"
    p.write_bytes(ledger)
    pathlib.Path(str(p) + ".ckpt").write_bytes(ckpt)
    with EvalCassette(str(p)) as c:
        assert c.stats()["checkpoint"]["state"] == "used"
        assert c.stats()["open_replayed"] == 0
        assert c.get(key_v1("golden-1")) == {"answer": 42}
        c.checkpoint()
    assert pathlib.Path(str(p) + ".ckpt").read_bytes() == ckpt


def write_golden_checkpoint() -> None:
    """Writes GOLDEN_CKPT (with a fresh seed) beside GOLDEN_V1, read-only."""
    with EvalCassette(str(GOLDEN_V1), "r") as c:
        assert c.stats()["checkpoint"]["state"] == "none"
    with tempfile.TemporaryDirectory() as d:
        p = os.path.join(d, "g.fabl")
        shutil.copyfile(GOLDEN_V1, p)
        with EvalCassette(p) as c:
            c.checkpoint()
        shutil.copyfile(p + ".ckpt", GOLDEN_CKPT)


def write_golden(p: str) -> None:
    with EvalCassette(p, durability="os", created_ns=T0) as c:
        c.record(key("golden-1"), {"answer": 42})
        c.record(key("golden-2"), [1, -1, 2.5, "s", b"b", None, True, {1, 2}, 2**80])
        with c.record_stream(key("stream")) as w:
            w.append("a")
            w.append("b")
        c.record(key("golden-3"), "")
        c.delete(key("golden-2"))  # a TOMBSTONE
        c.record(key("golden-2"), "again")  # recorded again after its delete
        c.clear()  # a TOMBSTONE with a zero key and payload {1}
        c.record(key("after-clear"), 1)


if __name__ == "__main__":  # python tests/test_cassette.py: rewrite the golden file
    GOLDEN.unlink(missing_ok=True)
    write_golden(str(GOLDEN))
    if not GOLDEN_CKPT.exists():  # its seed is random: written once
        write_golden_checkpoint()


def test_keys_packed_is_every_committed_key_in_ledger_order(tmp_path):
    path = str(tmp_path / "packed.fabl")
    with EvalCassette(path, durability="os") as c:
        assert c.keys_packed() == b""
        for i in range(50):
            c.record(key(i), i)
        with c.record_stream(key("s")) as w:
            w.append(1)
        c.record(key(3), "again")  # a duplicate commits nothing
        w = c.record_stream(key("aborted"))
        w.append(1)
        w.abort()
        packed = c.keys_packed()
        assert len(packed) == 32 * len(c)
        assert [packed[i:i + 32] for i in range(0, len(packed), 32)] == [k.digest for k in c]
    c.close()
    with pytest.raises(ValueError, match="closed"):
        c.keys_packed()


def test_announce_held_takes_the_packed_keys(tmp_path):
    path = str(tmp_path / "held.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(300):
            c.record(key(i), i)
        fab = fabric.ContentAddressedFabric("n", c)
        assert fab.announce_held() == 300
        assert all(fab.holders.holders_of(key(i)) == ["n"] for i in range(300))
