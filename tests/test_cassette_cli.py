"""``fabric cassette stats|dump|compact`` as real processes: the summary
(checkpoint, writers), ``--json``, ``dump --json --key --limit`` and
``compact --max-bytes``."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys

import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))


def run(*argv: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    return subprocess.run([sys.executable, "-m", "fabric", "cassette", *argv],
                          capture_output=True, text=True, env=env, timeout=120)


def key(i):
    return EvalRequest("op", [i]).key


def _fill(path):
    with EvalCassette(path, durability="os") as c:
        c.record(key(0), {"a": [1, 2.5, None, True]})
        c.record(key(1), b"\x00\xff")
        c.record(key(2), {1: "x", "y": {3, 4}})
        c.record(key(3), float("nan"))
        with c.record_stream(key(4)) as w:
            w.append("s1")
            w.append(b"s2")
        c.checkpoint()
        c.record(key(5), "gone")
        c.delete(key(5))


def test_stats_summary_and_json(tmp_path):
    path = str(tmp_path / "c.fabl")
    _fill(path)
    with EvalCassette(path):  # a writer handle open while stats runs
        proc = run("stats", path)
        assert proc.returncode == 0, proc.stderr
        out = proc.stdout
        assert "5 keys in" in out and "1 tombstones" in out
        assert "checkpoint: used, covers" in out and "2 records replayed after it" in out
        assert "writers now: 1 handle(s) open for writing" in out
        proc = run("stats", "--json", path)
    stats = json.loads(proc.stdout)
    assert stats["keys"] == 5 and stats["checkpoint"]["state"] == "used"
    assert stats["writers"] == 1 and stats["version"] == 2


def test_dump_json_tags_what_json_lacks(tmp_path):
    path = str(tmp_path / "c.fabl")
    _fill(path)
    proc = run("dump", "--json", path)
    assert proc.returncode == 0, proc.stderr
    rows = [json.loads(line) for line in proc.stdout.splitlines()]
    by_key = {r["key"]: r for r in rows}
    assert [r["key"] for r in rows] == [str(key(i)) for i in range(5)]
    assert by_key[str(key(0))]["value"] == {"a": [1, 2.5, None, True]}
    assert by_key[str(key(1))]["value"] == {"$bytes": base64.b64encode(b"\x00\xff").decode()}
    v2 = by_key[str(key(2))]["value"]["$map"]
    assert [1, "x"] in v2 and ["y", {"$set": [3, 4]}] in v2
    assert by_key[str(key(3))]["value"] == {"$float": "nan"}
    assert by_key[str(key(4))]["stream"] == ["s1", {"$bytes": base64.b64encode(b"s2").decode()}]
    proc = run("dump", "--json", "--limit", "2", path)
    assert [json.loads(x)["key"] for x in proc.stdout.splitlines()] == [str(key(0)), str(key(1))]
    proc = run("dump", "--json", "--key", str(key(2)), path)
    assert [json.loads(x)["key"] for x in proc.stdout.splitlines()] == [str(key(2))]
    assert run("dump", "--key", str(key(5)), path).stdout == ""  # deleted
    # Records that keep their request show it; --op selects by it.
    with EvalCassette(path, durability="os") as c:
        req = fabric.EvalRequest("dump.op", (7, "x"), {"k": [1, 2]}, version="v2")
        c.record(req.key, {"r": 1}, request=req)
    proc = run("dump", "--json", "--op", "dump.op", path)
    rows = [json.loads(x) for x in proc.stdout.splitlines()]
    assert rows == [{"key": str(req.key), "op": "dump.op", "version": "v2", "args": [7, "x"],
                     "kwargs": {"k": [1, 2]}, "value": {"r": 1}}]
    assert run("dump", "--json", "--op", "other.op", path).stdout == ""
    proc = run("dump", "--key", "nonsense", path)
    assert proc.returncode == 2 and "not a content key" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_compact_max_bytes(tmp_path):
    path = str(tmp_path / "c.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(100):
            c.record(key(i), "v" * 200)
    proc = run("compact", "--max-bytes", "5000", path)
    assert proc.returncode == 0, proc.stderr
    assert "oldest left out to fit 5000 bytes" in proc.stdout
    assert os.path.getsize(path) <= 5000
    with EvalCassette(path, "r") as c:
        assert key(99) in c and key(0) not in c
        assert proc.stdout.startswith(f"{path}: 100 -> {len(c)} keys, ")


# ------------------------------------------------------------------ rekey

def _old(req):
    """(key, identity bytes) of req under a fake older scheme: the same
    identity array as scheme 1 laid it out (no sharing class) under the tag
    fabric.key/1 (as key_v1 in test_cassette)."""
    import hashlib

    fields = fabric.unpack(req.identity_bytes())
    ident = fabric.canonical_bytes(["fabric.key/1"] + list(fields[1:11]))
    return fabric.ContentKey(hashlib.sha256(ident).digest()), ident


def _old_cassette(path):
    reqs = [EvalRequest("add", (i, [i, "x"]), {"scale": 1.5}, version="v3",
                        required_capabilities=("net",)) for i in range(3)]
    sreq = EvalRequest("count", (2,), stream=True)
    current = EvalRequest("add", (99,))
    with EvalCassette(path, durability="os") as c:
        for i, r in enumerate(reqs):
            k, ident = _old(r)
            c.record(k, {"sum": i}, request=ident)
        k, ident = _old(sreq)
        with c.record_stream(k, request=ident) as w:
            w.append("a")
            w.append(("b", 2))
        c.record(current.key, "now", request=current)
        c.record(key(7), "no request")
        c.record(key(8), "junk request", request=b"\x93\x01\x02\x03")
    return reqs, sreq, current


def test_rekey_rewrites_old_scheme_keys_from_their_requests(tmp_path):
    path = str(tmp_path / "old.fabl")
    reqs, sreq, current = _old_cassette(path)
    ino = os.stat(path).st_ino
    r = run("rekey", path, "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == {"rekeyed": 4, "unchanged": 1, "merged": 0,
                                    "unkeyed": 1, "unreadable": 1, "dropped": 0}
    assert os.stat(path).st_ino != ino  # a new file renamed over it
    assert not [n for n in os.listdir(tmp_path) if "rekey.tmp" in n]
    with EvalCassette.from_ledger(path) as c:
        for i, q in enumerate(reqs):
            assert c.get(q.key) == {"sum": i}
            assert c.request_bytes(q.key) == q.identity_bytes()
            assert _old(q)[0] not in c
        assert list(c.get_stream(sreq.key)) == ["a", ("b", 2)]
        assert c.request_bytes(sreq.key) == sreq.identity_bytes()
        assert c.get(current.key) == "now"
        assert c.get(key(7)) == "no request" and c.get(key(8)) == "junk request"
        assert len(c) == 7
    # a second run has nothing left to do
    r = run("rekey", path)
    assert r.returncode == 0 and "0 re-keyed" in r.stdout and "5 already current" in r.stdout


def test_rekey_drop_unkeyed_and_a_locked_cassette(tmp_path):
    path = str(tmp_path / "old.fabl")
    reqs, _sreq, _current = _old_cassette(path)
    with EvalCassette(path, durability="os"):
        r = run("rekey", path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = run("rekey", path, "--drop-unkeyed", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["dropped"] == 2
    with EvalCassette.from_ledger(path) as c:
        assert len(c) == 5 and key(7) not in c and reqs[0].key in c


def test_rekey_merges_two_old_records_of_one_new_key(tmp_path):
    path = str(tmp_path / "m.fabl")
    q = EvalRequest("op", (1,))
    k1, ident = _old(q)
    with EvalCassette(path, durability="os") as c:
        c.record(k1, "first", request=ident)
        c.record(q.key, "current", request=q)
    r = run("rekey", path, "--json")
    counts = json.loads(r.stdout)
    assert counts["rekeyed"] == 1 and counts["merged"] == 1 and counts["unchanged"] == 0
    with EvalCassette.from_ledger(path) as c:  # ledger order: the old record came first
        assert len(c) == 1 and c.get(q.key) == "first"


def _compact_on_a_terminal(path, *extra, columns=80):
    """Runs `fabric cassette compact` with its stderr on a pseudo-terminal
    (what the progress honours: someone watches) of 24 rows of ``columns``
    (None: the 0 x 0 a new pseudo-terminal has); its (stdout, terminal)."""
    import fcntl
    import pty
    import select
    import struct
    import termios
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
    master, slave = pty.openpty()
    if columns is not None:
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    try:
        child = subprocess.Popen([sys.executable, "-m", "fabric", "cassette", "compact", path,
                                  *extra], stdout=subprocess.PIPE, stderr=slave, env=env)
    finally:
        os.close(slave)
    seen = b""
    try:
        while True:
            ready, _, _ = select.select([master], [], [], 120.0)
            assert ready, "the compaction wrote nothing for 120 s"
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            seen += chunk
    finally:
        os.close(master)
    out, _ = child.communicate(timeout=120)
    assert child.returncode == 0, seen
    return out.decode(), seen.decode(errors="replace")


def test_compact_shows_progress_on_a_terminal_with_a_writer_open(tmp_path):
    path = str(tmp_path / "p.fabl")
    with EvalCassette(path, durability="os") as c:  # stays open meanwhile
        for i in range(20_000):
            c.record(key(i), "x" * (i % 100))
        for i in range(0, 20_000, 2):
            c.delete(key(i))
        out, term = _compact_on_a_terminal(path)
        # a bar with its total, the ledger's size (tqdm, or the plain line
        # without it), redrawn as the copy goes
        assert re.search(r"compacting p\.fabl:? +(\[[#.]*\] +)?\d+%", term), term
        assert ": 10000 -> 10000 keys" in out  # the deleted ones were not counted
        # the writer follows the new file and goes on
        assert c.get(key(1)) == "x"
        assert c.get(key(2)) is None
        assert c.record(key(20_001), "after") is True
    with EvalCassette(path, "r") as r:
        assert len(r) == 10_001 and r.get(key(20_001)) == "after"
    # without a terminal: no progress at all (logs and pipes stay clean)
    quiet = run("compact", path)
    assert quiet.returncode == 0 and "compacting" not in quiet.stderr


def test_compact_shows_progress_on_a_terminal_that_says_0_columns(tmp_path):
    """A pseudo-terminal whose size was never set (0 x 0): the bar is drawn
    at a fallback width (tqdm alone drew nothing in 0 columns)."""
    path = str(tmp_path / "z.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(20_000):
            c.record(key(i), "x" * (i % 100))
    out, term = _compact_on_a_terminal(path, columns=None)
    assert re.search(r"compacting z\.fabl:? +(\[[#.]*\] +)?\d+%", term), term
    assert ": 20000 -> 20000 keys" in out
