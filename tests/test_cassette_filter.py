"""The lazy catch-up behind the lock page's key filter (docs/spec/ledger.md,
The key filter): a full tmpfs, counts, a fork child, three writers mixing
records, deletes and clears, short lock files, a handle with a gap."""

from __future__ import annotations

import os
import subprocess
import tempfile

import pytest

from fabric import EvalCassette
from test_cassette_processes import STEPPER, _step, key, lock_dir, readline, spawn, tell  # noqa: F401


def _tmpfs(size, monkeypatch):
    """A lock directory on a tmpfs of size (mounting needs root)."""
    d = tempfile.mkdtemp(prefix="fab-filter-tmpfs-")
    if os.geteuid() != 0 or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", f"size={size},nr_inodes=64", "tmpfs", d],
            capture_output=True).returncode != 0:
        os.rmdir(d)
        pytest.skip("cannot mount a tmpfs here")
    monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", d)
    return d


def _unmount(d):
    subprocess.run(["umount", "-l", d])
    os.rmdir(d)


@pytest.fixture
def small_tmpfs(monkeypatch):
    """A lock directory on a tmpfs of 256 KiB: no room for the filter."""
    d = _tmpfs("256k", monkeypatch)
    yield d
    _unmount(d)


@pytest.fixture
def roomy_tmpfs(monkeypatch):
    """A lock directory on a tmpfs of 4 MiB: room for one filter."""
    d = _tmpfs("4m", monkeypatch)
    yield d
    _unmount(d)


def _fill(d):
    """Fills the tmpfs d to the last page."""
    fd = os.open(os.path.join(d, "filler"), os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, b"x" * 4096)
    except OSError:
        pass
    finally:
        os.close(fd)


def test_a_full_lock_tmpfs_leaves_the_filter_off(tmp_path, small_tmpfs):
    """The lock page is 4 KiB + a 2 MiB filter, allocated before the filter
    is first used: on a full tmpfs (a container's 64 MiB /dev/shm, many
    ledgers) the filter stays off and the writers keep appending, where a
    store into an unallocated page would be SIGBUS inside the append lock."""
    path = str(tmp_path / "bus.fabl")
    a = spawn(STEPPER, path, "a", stdin=True)
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(a) == readline(b) == "mutex\n"  # the page's header is allocated
        _fill(small_tmpfs)
        assert _step(a, "r a0") == "True"
        # b meets a's record: the filter is started (based), then b's own
        # key goes into it: the first store into an unallocated page
        got = _step(b, "r b0")
        assert got == "True", f"b died: rc={b.wait()}"
    finally:
        for c in (a, b):
            if c.poll() is None:
                c.stdin.close()
                c.wait()


def test_stats_after_lazy_appends_count_the_records_gone_past(tmp_path, lock_dir):
    """After lazy appends, stats() counts what len() counts: the others'
    records the appends went past are replayed first."""
    path = str(tmp_path / "stats.fabl")
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(b) == "mutex\n"
        with EvalCassette(path, durability="os") as a:
            assert a.record(key("a0"), 0) is True
            assert _step(b, "r b0") == "True"
            assert a.record(key("a1"), 1) is True  # catch-up: filter started
            for i in range(5):
                assert _step(b, f"r b{i + 1}") == "True"
                assert a.record(key(f"a{i + 2}"), i) is True
            s = a.stats()
            assert s["lazy_appends"] > 0
            n = len(a)
            assert n == 13
            assert s["keys"] == n, (s["keys"], n, s["records"], s["bytes"])
    finally:
        b.stdin.close()
        assert b.wait() == 0


def test_forked_child_records_again_a_key_another_deleted(tmp_path, lock_dir):
    """A key another process deleted is recorded again by a handle that held
    it, a fork child's first append included (it reads the filter of the
    lock page it inherited)."""
    path = str(tmp_path / "fork.fabl")
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(b) == "mutex\n"
        a = EvalCassette(path, durability="os")
        assert a.record(key("k"), "a k") is True
        assert _step(b, "r x") == "True"
        assert a.record(key("y"), "a y") is True   # filter started
        assert _step(b, "d k") == "True"          # b deletes k
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                ok = a.record(key("k"), "child k")
                os.write(w, b"T" if ok else b"F")
            finally:
                os._exit(0)
        os.close(w)
        got = os.read(r, 1)
        os.waitpid(pid, 0)
        os.close(r)
        a.close()
        with EvalCassette(path, "r") as rd:
            assert rd.get(key("k")) is not None and got == b"T", (got, rd.get(key("k")))
    finally:
        b.stdin.close()
        b.wait()


MIXER = """
import random, sys
from fabric import EvalCassette, EvalRequest
path, me, n, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
rnd = random.Random(seed)
shared = [EvalRequest("op", ["shared", i]).key for i in range(64)]
c = EvalCassette(path, durability="os")
print("ready", flush=True)
sys.stdin.readline()
for i in range(n):
    x = rnd.random()
    if x < 0.45:
        c.record(EvalRequest("op", [me, i]).key, i)
    elif x < 0.85:
        c.record(rnd.choice(shared), me)
    elif x < 0.998:
        c.delete(rnd.choice(shared))
    else:
        c.clear()
print(c.stats()["lazy_appends"], c.stats()["duplicates"], flush=True)
c.close()
"""


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_three_writers_mixing_records_deletes_clears_keep_first_write_wins(tmp_path, lock_dir, seed):
    """Three writer processes record, delete and clear a small set of shared
    keys at once (with keys of their own between, which keep the lazy path
    in use): a strict open finds no duplicate commit (first write wins)."""
    path = str(tmp_path / "mix.fabl")
    kids = [spawn(MIXER, path, me, 6000, seed * 10 + j, stdin=True)
            for j, me in enumerate(("a", "b", "c"))]
    try:
        assert [readline(k) for k in kids] == ["ready\n"] * 3
        for k in kids:
            tell(k, "go")
        outs = [readline(k).split() for k in kids]
    finally:
        for k in kids:
            k.stdin.close()
            assert k.wait() == 0
    assert all(o[1] == "0" for o in outs)
    with EvalCassette(path, "r", recover="strict") as r:
        assert r.stats()["duplicates"] == 0


def _lock_name(lock_dir, path):
    st = os.stat(path)
    return os.path.join(lock_dir, f"fabric-ledger-{st.st_dev:x}-{st.st_ino:x}.glibc.lock")


@pytest.mark.parametrize("size", [0, 4096, 4096 + 1024 * 1024])
def test_a_short_version_3_lock_file_is_refused_not_mapped(tmp_path, lock_dir, size):
    """A lock file of version 3 shorter than 4096 + 2 MiB (a truncated one)
    is refused at open (the writer falls back to the OFD lock): no SIGBUS
    when the filter beyond its end would be touched."""
    import struct
    path = str(tmp_path / "short.fabl")
    with EvalCassette(path, durability="os") as c:
        c.record(key("x"), 1)
    st = os.stat(path)
    head = b"\x89FABLCK\n" + struct.pack("<IIQQQ", 3, 40, 1, st.st_dev, st.st_ino)
    with open(_lock_name(lock_dir, path), "wb") as f:
        f.write(head[:size] + b"\0" * max(0, size - len(head)))
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(b) == "ofd\n"
        with EvalCassette(path, durability="os") as a:
            assert a.stats()["append_lock"] == "ofd"
            for i in range(20):
                assert a.record(key(f"a{i}"), i) is True
                assert _step(b, f"r b{i}") == "True"
            a.refresh()
            assert len(a) == 41
    finally:
        b.stdin.close()
        assert b.wait() == 0


@pytest.mark.parametrize("then", ["iter", "checkpoint", "compact", "keys_packed", "refresh"])
def test_a_handle_with_a_gap_sees_everything_before_its_end(tmp_path, lock_dir, then):
    """After lazy appends (others' records not replayed), iteration, a
    checkpoint, an in-place compaction, keys_packed and refresh() all see
    the others' records in the gap; a strict reader agrees."""
    path = str(tmp_path / "gap.fabl")
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(b) == "mutex\n"
        a = EvalCassette(path, durability="os")
        assert a.record(key("a0"), 0) is True
        assert _step(b, "r b0") == "True"
        assert a.record(key("a1"), 1) is True
        for i in range(1, 30):
            assert _step(b, f"r b{i}") == "True"
            assert a.record(key(f"a{i + 1}"), i) is True
        want = {key(f"a{i}") for i in range(31)} | {key(f"b{i}") for i in range(30)}
        if then == "iter":
            assert set(a) == want
        elif then == "checkpoint":
            a.checkpoint()
            with EvalCassette(path, "r", recover="strict") as r:
                assert set(r) == want and len(r) == 61
        elif then == "compact":
            a.compact()
            assert set(a) == want
            assert _step(b, "r after") == "True"
            a.refresh()
            assert len(a) == 62
        elif then == "keys_packed":
            packed = a.keys_packed()
            assert len(packed) % 61 == 0 and len(packed) // 61 in (32, 33, 34, 39), len(packed)
        else:
            n = a.refresh()
            assert n == 30, n  # the others' records replayed, own counted once
            assert len(a) == 61
        assert a.stats()["lazy_appends"] > 0
        a.close()
    finally:
        b.stdin.close()
        assert b.wait() == 0
    with EvalCassette(path, "r", recover="strict") as r:
        assert r.stats()["duplicates"] == 0 and want <= set(r)


def test_a_lock_tmpfs_filled_after_the_filter_started(tmp_path, roomy_tmpfs):
    """The same with the filter started before the tmpfs fills up: an
    append's look at the filter (before the mutex) reads only allocated
    pages (a read fault of an unallocated page on a full tmpfs is SIGBUS
    too), and the writers keep appending lazily."""
    path = str(tmp_path / "bus2.fabl")
    a = spawn(STEPPER, path, "a", stdin=True)
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(a) == readline(b) == "mutex\n"
        assert _step(a, "r a0") == "True"
        assert _step(b, "r b0") == "True"  # the filter is based: its 2 MiB allocated
        _fill(roomy_tmpfs)
        for i in range(1, 200):
            got = _step(a, f"r a{i}")
            assert got == "True", f"a died: rc={a.wait()}"
            assert _step(b, f"r b{i}") == "True"
        lazy, dups = _step(a, "s").split()
        assert int(lazy) > 100 and dups == "0"
    finally:
        for c in (a, b):
            if c.poll() is None:
                c.stdin.close()
                c.wait()


def test_the_end_hint_follows_the_end_and_any_value_of_it_is_safe(tmp_path, lock_dir):
    """The lock page's end hint (offset 120, in the mutex's cache line) is
    the end the last holder published; it only tells a waiter which lines
    to fetch, so any value written over it (0, past the file, far past the
    mapping, inside a record) changes nothing: every record lands, the
    first write wins across the processes, and the ledger opens strictly
    with every key once."""
    import mmap
    import struct
    path = str(tmp_path / "hint.fabl")
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(b) == "mutex\n"
        with EvalCassette(path, durability="os") as a:
            assert a.record(key("a0"), 0) is True
            assert _step(b, "r b0") == "True"
            with open(_lock_name(lock_dir, path), "r+b") as f:
                page = mmap.mmap(f.fileno(), 4096)
            try:
                end, = struct.unpack_from("=Q", page, 40)
                assert end > 64
                assert struct.unpack_from("=Q", page, 120) == (end,)
                wild = [0, 1, 63, end - 1, end + 1, 1 << 40, 2**63, 2**64 - 1]
                for i, bad in enumerate(wild):
                    struct.pack_into("=Q", page, 120, bad)
                    assert a.record(key(f"a{i + 1}"), i) is True
                    struct.pack_into("=Q", page, 120, bad)
                    assert _step(b, f"r b{i + 1}") == "True"
                    struct.pack_into("=Q", page, 120, bad)
                    assert _step(b, f"r a{i + 1}") == "False"  # a's, first
                    assert a.record(key(f"b{i + 1}"), -1) is False  # b's, first
                end, = struct.unpack_from("=Q", page, 40)
                assert struct.unpack_from("=Q", page, 120) == (end,)
            finally:
                page.close()
    finally:
        b.stdin.close()
        assert b.wait() == 0
    with EvalCassette(path, "r") as r:
        assert len(r) == 2 * (len(wild) + 1)
        assert r.stats()["duplicates"] == 0
        for i in range(len(wild) + 1):
            assert r.get(key(f"a{i}")) == (i - 1 if i else 0)
            assert r.get(key(f"b{i}")) == f"b b{i}"
