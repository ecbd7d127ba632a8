"""Appends through the mapping (docs/spec/ledger.md, "Appends through the
mapping"): the zero bytes a writer reserves after the records read as the
end of the records, strictly; readers in other processes see records that
land in that space (the file does not grow); a writer killed with space
reserved leaves a file that opens strictly; the last writer to close trims
the space; files without it (the golden files) read and append as before.

Real files and processes; every wait is on a line the other process writes.
"""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import textwrap

import cassette_ref
import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))
GOLDEN = pathlib.Path(__file__).parent / "golden" / "ledger-v2.fabl"
GOLDEN_V1 = pathlib.Path(__file__).parent / "golden" / "ledger-v1.fabl"


def key(k):
    return EvalRequest("op", [k]).key


def spawn(script, *args):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE, env=env, text=True,
    )


def readline(child):
    line = child.stdout.readline()
    assert line, f"child {child.pid} ended (status {child.poll()})"
    return line


def tell(child, line):
    child.stdin.write(line + "\n")
    child.stdin.flush()


def test_writer_appends_through_the_mapping_and_close_trims(tmp_path):
    path = str(tmp_path / "t.fabl")
    a = EvalCassette(path, durability="os")
    for i in range(100):
        assert a.record(key(i), {"i": i}) is True
    s = a.stats()
    assert s["mapped_appends"] is True and s["reserved_bytes"] > 0
    assert os.path.getsize(path) == s["bytes"] + s["reserved_bytes"]
    with EvalCassette(path, "r", recover="strict") as r:  # the zeros end the records
        assert len(r) == 100 and r.stats()["torn_bytes"] == 0
        assert r.stats()["bytes"] == s["bytes"]
    b = EvalCassette(path, durability="os")
    assert b.record(key("b"), "b") is True
    b.close()  # a is still open: the space stays
    assert os.path.getsize(path) > a.stats()["bytes"]
    assert a.get(key("b")) == "b"
    a.close()  # the last writer out trims it
    with EvalCassette(path, "r") as r:
        assert os.path.getsize(path) == r.stats()["bytes"] and len(r) == 101
        assert r.stats()["reserved_bytes"] == 0
    assert len(list(cassette_ref.read(open(path, "rb").read()))) == 101


def test_exclusive_writer_appends_through_the_mapping(tmp_path):
    path = str(tmp_path / "x.fabl")
    with EvalCassette(path, durability="fsync", exclusive=True) as c:
        for i in range(50):
            assert c.record(key(i), i) is True
        assert c.stats()["mapped_appends"] is True
        with EvalCassette(path, "r", recover="strict") as r:
            assert [r.get(key(i)) for i in range(50)] == list(range(50))
    with EvalCassette(path, "r") as r:
        assert os.path.getsize(path) == r.stats()["bytes"] and len(r) == 50


READER = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], "r", recover="strict")
print("ready", len(c), flush=True)
for line in sys.stdin:
    k = line.split()[1]
    print(c.get(EvalRequest("op", [k]).key), flush=True)
"""


def test_reader_process_sees_records_that_land_in_the_reserved_space(tmp_path):
    """The file does not grow with these appends, so a reader cannot wait
    for it to grow: a miss looks at the first byte after its records."""
    path = str(tmp_path / "r.fabl")
    w = EvalCassette(path, durability="os")
    assert w.record(key("first"), "first") is True
    size = os.path.getsize(path)
    child = spawn(READER, path)
    try:
        assert readline(child) == "ready 1\n"
        for i in range(20):
            k = f"k{i}"
            assert w.record(key(k), f"value {i}") is True
            tell(child, f"get {k}")
            assert readline(child) == f"value {i}\n"
        assert os.path.getsize(path) == size  # every record landed in the reserved space
    finally:
        child.stdin.close()
        child.wait()
        w.close()
    assert child.returncode == 0


KILLED = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], durability="os")
for i in range(int(sys.argv[2])):
    assert c.record(EvalRequest("op", [i]).key, {"i": i}) is True
s = c.stats()
print(s["mapped_appends"], s["bytes"], flush=True)
sys.stdin.readline()
"""


def test_writer_killed_with_reserved_space_opens_strictly(tmp_path):
    path = str(tmp_path / "k.fabl")
    child = spawn(KILLED, path, 300)
    mapped, end = readline(child).split()
    child.send_signal(signal.SIGKILL)
    child.wait()
    assert mapped == "True" and os.path.getsize(path) > int(end)  # the space is left
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 300 and r.stats()["torn_bytes"] == 0
        assert r.stats()["reserved_bytes"] == os.path.getsize(path) - int(end)
    with EvalCassette(path, durability="os") as w:
        assert w.stats()["torn_tails_cut"] == 0
        assert w.record(key("after"), "after") is True
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 301 and [r.get(key(i)) for i in (0, 299)] == [{"i": 0}, {"i": 299}]
        assert os.path.getsize(path) == r.stats()["bytes"]


def test_golden_files_with_reserved_space_read_alike_and_append(tmp_path):
    """A golden file followed by zeros (what a writer's reservation looks
    like) reads strictly as the golden file; an append lands right after
    its last record and the close trims the rest, so the file is the
    golden bytes plus the new record."""
    for golden in (GOLDEN, GOLDEN_V1):
        data = golden.read_bytes()
        p = tmp_path / golden.name
        p.write_bytes(data + bytes(70000))
        with EvalCassette(str(golden), "r") as g, EvalCassette(str(p), "r") as c:
            assert sorted(k.digest for k in c) == sorted(k.digest for k in g)
            assert c.stats()["torn_bytes"] == 0 and c.stats()["reserved_bytes"] == 70000
            assert c.stats()["bytes"] == len(data)
        with EvalCassette(str(p), durability="os") as c:
            assert c.record(key("new"), "new") is True
        out = p.read_bytes()
        assert out[64:len(data)] == data[64:]  # nothing below rewritten
        recs = list(cassette_ref.read(out))
        assert recs[-1][0] == len(data) and len(out) == len(data) + 52 + len(recs[-1][3])
        with EvalCassette(str(p), "r", recover="strict") as c:
            assert c.get(key("new")) == "new"


BATCHER = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], durability="os")
for i in range(int(sys.argv[2])):
    req = EvalRequest("op", ["r", i])
    assert c.record(req.key, {"i": i}, request=req) is True
    w = c.record_stream(EvalRequest("op", ["s", i]).key)
    for j in range(i % 5 + 2):
        w.append(j)
    assert w.close() is True
    if i == 100:
        print("appending", flush=True)
print("done", flush=True)
"""


def test_strict_opens_while_a_writer_appends_batches(tmp_path):
    """A strict open reads the file while another process stores appends
    of several records (a REQUEST and its REPLY, a batch of stream items)
    into the mapping, their magics last: a record whose magic appears
    while the open looks at it is an append in progress, never corruption
    (the open looks at a bad record again before it says so)."""
    import select

    path = str(tmp_path / "b.fabl")
    n = 20000
    child = spawn(BATCHER, path, n)
    try:
        assert readline(child) == "appending\n"
        seen = opens = 0
        while not select.select([child.stdout], [], [], 0)[0]:  # until it says done
            with EvalCassette(path, "r", recover="strict", checkpoint=False) as r:
                assert len(r) >= seen
                seen = len(r)
            opens += 1
        assert readline(child) == "done\n"
    finally:
        child.kill()
        child.wait()
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 2 * n >= seen
