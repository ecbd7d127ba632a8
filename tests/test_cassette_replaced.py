"""An open handle never serves a file that a compaction in another process
replaced: its next get (a hit as well as a miss), len(), stats() and
iteration move to the new file without a refresh() (spec: ledger.md, Files
that change underneath, "Replaced by a compaction").

Every compaction runs in another process (the CLI, or a script), which has
finished (its exit is the handshake) before the handle is asked again."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import textwrap

import pytest

import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))
ENV = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))


def key(k):
    return EvalRequest("op", [k]).key


def run(script, *args, env=None):
    """Runs a script in a child process to its end."""
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                          env=env or ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return done.stdout


def compact_cli(path, *extra, env=None):
    done = subprocess.run([sys.executable, "-m", "fabric", "cassette", "compact", *extra, path],
                          env=env or ENV, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


def fill(path, n=100):
    with EvalCassette(path, durability="os") as c:
        for i in range(n):
            c.record(key(i), f"value-{i}" * 4)


def held_now(path):
    """The keys a fresh handle finds in the file now at path."""
    with EvalCassette(path, "r") as c:
        return set(c)


@pytest.fixture(params=["reader", "writer-page", "writer-ofd"])
def handle_env(request, tmp_path, monkeypatch):
    """The handle kind under test: a reader; a writer serializing through
    the lock page (a tmpfs lock directory of the test's own); a writer
    whose lock page cannot be made (a lock directory that is not a tmpfs:
    the OFD-lock fallback). Returns (mode, env for the other processes)."""
    if request.param == "writer-page":
        if not os.path.isdir("/dev/shm"):
            pytest.skip("no /dev/shm")
        d = tempfile.mkdtemp(prefix="fab-lock-test-", dir="/dev/shm")
        request.addfinalizer(lambda: shutil.rmtree(d, ignore_errors=True))
        monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", d)
    elif request.param == "writer-ofd":
        d = tmp_path / "not-tmpfs"
        d.mkdir()
        monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", str(d))
    env = dict(ENV, **{k: v for k, v in os.environ.items() if k == "FABRIC_LEDGER_LOCK_DIR"})
    return ("r" if request.param == "reader" else "a"), env, request.param


def test_a_hit_on_a_key_evicted_by_another_process_compaction_is_gone(tmp_path, handle_env):
    mode, env, kind = handle_env
    path = str(tmp_path / "c.fabl")
    fill(path)
    with EvalCassette(path) as c:
        assert c.delete(key(1))
    h = EvalCassette(path, mode)
    try:
        want = {"writer-page": "mutex", "writer-ofd": "ofd", "reader": "none"}[kind]
        assert h.stats()["append_lock"] == want
        assert h.get(key(0)) == "value-0" * 4  # a hit on the old file
        assert len(h) == 99
        compact_cli(path, "--max-bytes", "3000", env=env)
        now = held_now(path)
        assert key(0) not in now and 0 < len(now) < 99  # evicted by the compaction
        # No refresh(): the next hit of the evicted key is a miss, and
        # len() and stats() describe the new file.
        assert h.get(key(0)) is None
        assert h.get(key(1)) is None
        assert len(h) == len(now)
        s = h.stats()
        assert s["reloads"] == 1 and s["keys"] == len(now)
        assert set(h) == now
        assert h.get(key(99)) == "value-99" * 4  # the newest are kept
        if mode == "a":  # and appends go to the new file
            assert h.record(key(200), "after") is True
            assert held_now(path) == now | {key(200)}
    finally:
        h.close()


def test_a_hit_on_a_key_another_process_deleted_then_compacted_is_gone(tmp_path, handle_env):
    mode, env, _ = handle_env
    path = str(tmp_path / "c.fabl")
    fill(path, 20)
    h = EvalCassette(path, mode)
    try:
        assert h.get(key(5)) == "value-5" * 4
        run("""
            import sys
            from fabric import EvalCassette, EvalRequest
            with EvalCassette(sys.argv[1]) as c:
                assert c.delete(EvalRequest("op", [5]).key)
                c.compact()
            """, path, env=env)
        assert h.get(key(5)) is None
        assert len(h) == 19 and h.stats()["reloads"] == 1
        assert h.get(key(6)) == "value-6" * 4
    finally:
        h.close()


def test_an_exclusive_writer_compacting_moves_the_readers(tmp_path):
    path = str(tmp_path / "c.fabl")
    fill(path)
    h = EvalCassette(path, "r")
    try:
        assert h.get(key(0)) == "value-0" * 4
        out = run("""
            import sys
            from fabric import EvalCassette
            with EvalCassette(sys.argv[1], exclusive=True) as c:
                print(c.compact(max_bytes=3000))
            """, path)
        assert int(out) > 0
        assert h.get(key(0)) is None
        assert len(h) == len(held_now(path)) and h.stats()["reloads"] == 1
    finally:
        h.close()


def test_a_compaction_while_a_reader_iterates(tmp_path, handle_env):
    mode, env, _ = handle_env
    path = str(tmp_path / "c.fabl")
    fill(path)
    h = EvalCassette(path, mode)
    try:
        it = iter(h)
        first = next(it)
        items = h.items()
        next(items)
        compact_cli(path, "--max-bytes", "3000", env=env)
        # The iterations that began on the old file say so at their next
        # item, rather than go on with the old file's keys.
        with pytest.raises(fabric.LedgerError, match="replaced"):
            next(it)
        with pytest.raises(fabric.LedgerError, match="replaced"):
            next(items)
        # A new iteration reads the new file.
        now = held_now(path)
        packed = h.keys_packed()
        assert {packed[i:i + 32] for i in range(0, len(packed), 32)} == {bytes(k) for k in now}
        assert set(h) == now and first not in now
        assert {k for k, _ in h.items()} == now
    finally:
        h.close()


def test_a_second_hard_link_keeps_the_old_file_until_refresh(tmp_path):
    """The documented window: a compaction marks the file it replaced only
    when that file has no name left; one kept by a second hard link is
    another ledger that others may open, left as it was. A handle of it
    moves at refresh() (which compares the path) or its next miss."""
    path = str(tmp_path / "c.fabl")
    fill(path, 20)
    h = EvalCassette(path, "r")
    try:
        os.link(path, str(tmp_path / "other.fabl"))
        run("""
            import sys
            from fabric import EvalCassette, EvalRequest
            with EvalCassette(sys.argv[1]) as c:
                assert c.delete(EvalRequest("op", [5]).key)
                c.compact()
            """, path)
        assert h.get(key(5)) == "value-5" * 4  # the old file, still named
        assert h.stats()["reloads"] == 0
        h.refresh()
        assert h.get(key(5)) is None and h.stats()["reloads"] == 1
        with EvalCassette(str(tmp_path / "other.fabl"), "r") as o:  # still valid
            assert len(o) == 19 and o.get(key(5)) is None
    finally:
        h.close()
