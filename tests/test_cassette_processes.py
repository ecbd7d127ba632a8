"""One cassette, many processes: real processes, real files, SIGKILL.

Every test synchronizes on lines the other process writes (readiness,
acknowledgements) and never on the clock.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap

import pytest

import cassette_ref
import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))


def key(k):
    return EvalRequest("op", [k]).key


def spawn(script, *args, stdin=False):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
        stdout=subprocess.PIPE, stdin=subprocess.PIPE if stdin else None,
        env=env, text=True,
    )


def readline(child, timeout=120.0):
    """The child's next stdout line; fails (never hangs) when it says
    nothing for ``timeout`` seconds (a dead child gives EOF at once)."""
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, f"child {child.pid} wrote nothing within {timeout} s"
    return child.stdout.readline()


def kill_inside_the_lock(holder, r):
    """Waits for the byte a writer stopped by FABRIC_LEDGER_TEST_HOLD writes
    to r once inside the append lock (the handshake), then SIGKILLs it."""
    ready, _, _ = select.select([r], [], [], 120.0)
    assert ready and os.read(r, 1) == b"H"  # inside the lock
    holder.send_signal(signal.SIGKILL)
    holder.wait()


def tell(child, line):
    child.stdin.write(line + "\n")
    child.stdin.flush()


# ---- defect 1: fork ------------------------------------------------------------


def test_fork_child_never_writes_through_parents_handle(tmp_path):
    path = str(tmp_path / "fork.fabl")
    c = EvalCassette(path, durability="fsync")
    c.record(key(0), "before")
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: writes through the inherited object
        code = 1
        try:
            os.close(r)
            for i in range(1, 200, 2):
                assert c.record(key(i), f"child {i}") is True
            assert c.get(key(0)) == "before"
            code = 0
        finally:
            os.write(w, b"done\n")
            os._exit(code)
    os.close(w)
    # The parent writes at the same time (the pipe tells us only the end).
    for i in range(2, 200, 2):
        assert c.record(key(i), f"parent {i}") is True
    with os.fdopen(r) as f:
        assert f.readline() == "done\n"
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert c.record(key(1000), "parent after") is True  # the parent is unaffected
    # The parent sees the child's records (a miss reads the tail).
    assert c.get(key(1)) == "child 1"
    c.close()
    with EvalCassette(path, "r", recover="strict") as s:  # a strict open: no corruption
        assert len(s) == 201
        assert s.get(key(0)) == "before"
        for i in range(1, 200):
            assert s.get(key(i)) == ("child" if i % 2 else "parent") + f" {i}"
        assert s.stats()["duplicates"] == 0


_shared: EvalCassette | None = None


def _pool_record(i):
    assert _shared is not None
    _shared.record(key(i), {"worker": os.getpid(), "i": i})
    return os.getpid()


@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_process_pool_workers_share_a_cassette(tmp_path, start):
    """A ProcessPoolExecutor whose workers record into one cassette: with
    fork they inherit the parent's open cassette, with spawn they open it."""
    global _shared
    path = str(tmp_path / f"pool-{start}.fabl")
    ctx = multiprocessing.get_context(start)
    if start == "fork":
        _shared = EvalCassette(path)
        init, initargs = None, ()
    else:
        init, initargs = _open_shared, (path,)
    try:
        with concurrent.futures.ProcessPoolExecutor(2, mp_context=ctx, initializer=init,
                                                    initargs=initargs) as ex:
            pids = set(ex.map(_pool_record, range(400), chunksize=10))
            # every worker reads what the others recorded, without refresh
            seen = list(ex.map(_pool_read_all, [400] * 4))
        assert all(n == 400 for n in seen)
        with EvalCassette(path, "r") as c:
            assert len(c) == 400
            assert {c.get(key(i))["i"] for i in range(400)} == set(range(400))
            assert {c.get(key(i))["worker"] for i in range(400)} <= pids
    finally:
        if _shared is not None:
            _shared.close()
            _shared = None


def _open_shared(path):
    global _shared
    _shared = EvalCassette(path)


def _pool_read_all(n):
    assert _shared is not None
    return sum(1 for i in range(n) if _shared.get(key(i)) is not None)


# ---- defect 2: a file that shrinks underneath ------------------------------------

READER = """
import sys, fabric
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], "r")
key = lambda k: EvalRequest("op", [k]).key
assert all(c.get(key(i)) == {"v": i, "pad": "p" * 3000} for i in range(300))
print("read", flush=True)
assert sys.stdin.readline() == "go\\n"
results = []
for i in range(300):
    try:
        results.append(c.get(key(i)))
    except (fabric.LedgerError, fabric.LedgerFormatError) as exc:
        results.append(type(exc).__name__)
n_gone = sum(r is None for r in results)
n_error = sum(isinstance(r, str) for r in results)
n_new = sum(bool(isinstance(r, dict) and r.get("restored")) for r in results)
print(f"gone {n_gone} error {n_error} new {n_new} len {len(c)}", flush=True)
"""


def _fill(path, n, restored=False):
    with EvalCassette(path, durability="os") as c:
        for i in range(n):
            c.record(key(i), {"v": i, "restored": True} if restored else
                     {"v": i, "pad": "p" * 3000})


@pytest.mark.parametrize("how", ["truncate", "last-byte", "header-only", "below-header", "restore"])
def test_shrink_under_a_reader_never_kills_it(tmp_path, how):
    path = str(tmp_path / "shrink.fabl")
    _fill(path, 300)
    if how == "restore":  # a smaller backup, made from another ledger
        backup = str(tmp_path / "backup.fabl")
        _fill(backup, 10, restored=True)
    child = spawn(READER, path, stdin=True)
    try:
        assert readline(child) == "read\n"
        if how == "truncate":
            os.truncate(path, os.path.getsize(path) // 3)
        elif how == "last-byte":  # inside the last page: no fault, a zero byte
            os.truncate(path, os.path.getsize(path) - 1)
        elif how == "header-only":
            os.truncate(path, 64)
        elif how == "below-header":
            os.truncate(path, 10)
        else:  # copied over the same inode, as cp or a restore tool does
            shutil.copyfile(backup, path)
        tell(child, "go")
        line = readline(child)
    finally:
        out, _ = child.communicate()
    assert child.returncode == 0, f"the reader died: {child.returncode} ({line!r})"
    gone, error, new, n = (int(x) for x in line.split()[1::2])
    if how == "truncate":  # it moved to what is left: a prefix of the records
        assert error == 0 and 0 < gone < 300 and n == 300 - gone
    elif how == "last-byte":  # the last record is a torn tail now
        assert (gone, error, n) == (1, 0, 299)
    elif how == "header-only":
        assert (gone, error, n) == (300, 0, 0)
    elif how == "below-header":  # nothing to move to: a clear error each time
        assert error == 300
    else:
        assert (new, gone, n) == (10, 290, 10)


def test_shrink_under_this_process_with_faulthandler(tmp_path):
    """A hit reads no file metadata: a guard catches the shrink (pytest runs
    with faulthandler on, whose SIGBUS handler the guard passes other faults to)."""
    path = str(tmp_path / "shrink.fabl")
    _fill(path, 300)
    with EvalCassette(path, "r") as c:
        assert c.get(key(299))["v"] == 299
        os.truncate(path, os.path.getsize(path) // 2)
        assert c.get(key(3))["v"] == 3
        assert c.stats()["reloads"] == 1 and 0 < len(c) < 300 and c.get(key(299)) is None


@pytest.mark.parametrize("first", ["iter", "keys_packed"])
def test_an_iteration_started_after_a_shrink_reads_what_is_left(tmp_path, first):
    """Only an iteration under way when the file shrank says so; one
    started after it (or keys_packed()) runs on the file as it is now."""
    path = str(tmp_path / "shrink.fabl")
    _fill(path, 300)
    with EvalCassette(path, "r") as c:
        before = iter(c)
        assert next(before) == key(0)
        os.truncate(path, os.path.getsize(path) // 2)
        if first == "iter":
            keys = list(c)
        else:
            packed = c.keys_packed()
            keys = [packed[i:i + 32] for i in range(0, len(packed), 32)]
        assert 0 < len(keys) < 300 and len(keys) == len(c)
        assert [bytes(k) for k in keys] == [bytes(key(i)) for i in range(len(keys))]
        assert c.stats()["reloads"] == 1
        with pytest.raises(fabric.LedgerError, match="shrank during the iteration"):
            next(before)


def test_get_raw_view_outlives_a_move(tmp_path):
    """A view from get_raw() keeps the mapping of the file it came from; after
    the cassette moves (here: a replacement) the view still reads its bytes."""
    path = str(tmp_path / "v.fabl")
    _fill(path, 5)
    with EvalCassette(path, "r") as c:
        view = c.get_raw(key(3))
        expect = bytes(view)
        other = str(tmp_path / "other.fabl")
        _fill(other, 2, restored=True)
        os.replace(other, path)
        assert c.refresh() == 2
        assert bytes(view) == expect
        assert c.get(key(1)) == {"v": 1, "restored": True}


# ---- defect 3: stale after compaction --------------------------------------------


def test_reader_and_writer_follow_a_compaction(tmp_path):
    path = str(tmp_path / "compact.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(50):
            c.record(key(i), i)
        # make the compaction worth it: a torn tail it drops
    with open(path, "ab") as f:
        f.write(b"\xe7REC torn")
    reader = EvalCassette(path, "r")
    writer = EvalCassette(path)
    it = iter(reader)
    next(it)
    ino = os.stat(path).st_ino
    cli = subprocess.run([sys.executable, "-m", "fabric", "cassette", "compact", path],
                         env=dict(os.environ, PYTHONPATH=ROOT), capture_output=True, text=True)
    assert cli.returncode == 0, cli.stderr
    assert os.stat(path).st_ino != ino
    # The writer's next append goes to the new file, never to the old inode.
    assert writer.record(key(100), "after") is True
    assert writer.stats()["reloads"] == 1
    # The reader moves on a miss...
    assert reader.get(key(100)) == "after"
    assert reader.stats()["reloads"] == 1
    # ...and an iteration that began on the old file says so instead of
    # reading the new one at old offsets.
    with pytest.raises(fabric.LedgerError, match="replaced"):
        next(it)
    # refresh() reports a move: the records of the new file.
    writer2 = EvalCassette(path, "r")
    subprocess.run([sys.executable, "-m", "fabric", "cassette", "compact", path],
                   env=dict(os.environ, PYTHONPATH=ROOT), check=True, capture_output=True)
    assert writer2.refresh() == 51
    assert writer2.stats()["reloads"] == 1
    for c in (reader, writer, writer2):
        c.close()
    with EvalCassette(path, "r") as c:
        assert len(c) == 51 and c.stats()["records"] == 51


# ---- defect 4: a killed compaction's leftovers -----------------------------------

COMPACTOR = """
import sys
from fabric import EvalCassette
c = EvalCassette(sys.argv[1])
def progress(done, total):
    print(f"progress {done} {total}", flush=True)
    sys.stdin.readline()  # wait here until killed
c.compact(progress=progress)
"""


def test_killed_compaction_leaves_nothing_behind(tmp_path):
    path = str(tmp_path / "k.fabl")
    _fill(path, 3000)
    child = spawn(COMPACTOR, path, stdin=True)
    try:
        assert readline(child).startswith("progress ")
        tmp = f"{path}.compact.tmp.{child.pid}"
        assert os.path.exists(tmp)  # killed midway: the temporary file is there
        child.send_signal(signal.SIGKILL)
        child.communicate()
    finally:
        child.kill()
    assert os.path.exists(tmp)
    assert child.returncode == -signal.SIGKILL
    with EvalCassette(path) as c:  # the next writer's open removes it
        assert c.stats()["leftovers_removed"] == 1
        assert len(c) == 3000
    assert not os.path.exists(tmp)
    # A live compaction's file is never taken for a leftover.
    child = spawn(COMPACTOR, path, stdin=True)
    try:
        assert readline(child).startswith("progress ")
        with EvalCassette(path) as c:
            assert c.stats()["leftovers_removed"] == 0
            c.compact(str(tmp_path / "copy.fabl"))
        assert os.path.exists(f"{path}.compact.tmp.{child.pid}")
    finally:
        child.kill()
        child.communicate()
    # and the next compaction cleans up too
    with EvalCassette(path) as c:
        c.compact()
    assert not [n for n in os.listdir(tmp_path) if ".tmp." in n]


# ---- many writers ----------------------------------------------------------------

WRITER = """
import sys
from fabric import EvalCassette, EvalRequest
path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = EvalCassette(path, durability=sys.argv[4])
key = lambda k: EvalRequest("op", [k]).key
print("open", flush=True)
for i in range(n):
    k = base + i
    if i % 7 == 6:
        with c.record_stream(key(k)) as w:
            for j in range(i % 3 + 1):
                w.append([k, j])
        print(f"s {k}", flush=True)
    else:
        assert c.record(key(k), {"k": k}) is True
        print(f"r {k}", flush=True)
    if i % 50 == 49:  # read what the others wrote (shared keys), no refresh
        shared = key(-(i // 50))
        c.record(shared, {"first": base})
        assert c.get(shared) is not None
if len(sys.argv) > 5:  # then, told that the other finished, read all it wrote
    other = int(sys.argv[5])
    print("written", flush=True)
    assert sys.stdin.readline() == "check\\n"
    for i in range(n):  # every get of the other's keys misses first: no refresh()
        k = other + i
        if i % 7 == 6:
            assert list(c.get_stream(key(k))) == [[k, j] for j in range(i % 3 + 1)], k
        else:
            assert c.get(key(k)) == {"k": k}, k
    for s in range(n // 50):  # the shared keys: one value, the same for both
        print("shared", s, c.get(key(-s))["first"], flush=True)
print("done", flush=True)
"""


def _check_all(path, acked, streams, writers_done=()):
    with EvalCassette(path, "r", recover="strict") as c:
        for k in acked:
            assert c.get(key(k)) == {"k": k}, k
        for k in streams:
            i = k % 1_000_000
            assert list(c.get_stream(key(k))) == [[k, j] for j in range(i % 3 + 1)], k
        # first write wins across processes: a second committing record of a
        # key is never even written, so replay finds no duplicates
        assert c.stats()["duplicates"] == 0
        ks = list(c)
        assert len(ks) == len(set(ks)) == len(c)
        return c.stats()


class Lines:
    """A child's stdout lines read from its pipe with select and os.read,
    for a child that waits on its stdin after a line: a line read ahead
    into the text reader's buffer would leave select waiting forever."""

    def __init__(self, child):
        self.child, self.buf = child, b""

    def __call__(self, timeout=120.0):
        fd = self.child.stdout.fileno()
        while b"\n" not in self.buf:
            ready, _, _ = select.select([fd], [], [], timeout)
            assert ready, f"child {self.child.pid} wrote nothing within {timeout} s"
            chunk = os.read(fd, 65536)
            if not chunk:  # it ended
                line, self.buf = self.buf, b""
                return line.decode()
            self.buf += chunk
        line, _, self.buf = self.buf.partition(b"\n")
        return line.decode() + "\n"


def _collect(child, acked, streams, read=None):
    line = (read or (lambda: readline(child)))()
    if not line.endswith("\n"):
        return None
    kind, _, k = line.strip().partition(" ")
    if kind == "r":
        acked.append(int(k))
    elif kind == "s":
        streams.append(int(k))
    return kind


@pytest.mark.parametrize("durability", ["os", "fsync", "group"])
def test_two_writer_processes_both_write_and_see_everything(tmp_path, durability):
    """Each writer, still open, reads every key the OTHER recorded (its
    gets miss and find them without refresh()), and both agree on the
    first value of each shared key; then nothing is lost and a strict open
    finds no duplicate."""
    path = str(tmp_path / "two.fabl")
    n = 300
    kids = [spawn(WRITER, path, b * 1_000_000, n, durability, (3 - b) * 1_000_000, stdin=True)
            for b in (1, 2)]
    acked: list[int] = []
    streams: list[int] = []
    reads = [Lines(child) for child in kids]
    for read in reads:
        assert read() == "open\n"
    for child, read in zip(kids, reads):
        while (kind := _collect(child, acked, streams, read)) != "written":
            assert kind is not None, f"writer {child.pid} ended early"
    assert len(acked) + len(streams) == 2 * n
    for child in kids:  # both have written all: each reads the other's
        tell(child, "check")
    firsts = []
    for child, read in zip(kids, reads):
        seen = {}
        while (line := read()) != "done\n":
            assert line.startswith("shared "), line
            _, s, first = line.split()
            seen[int(s)] = int(first)
        child.communicate()
        assert child.returncode == 0
        assert sorted(seen) == list(range(n // 50))
        firsts.append(seen)
    # first write wins across processes: one value per shared key, and
    # both processes read that same one
    assert firsts[0] == firsts[1]
    assert set(firsts[0].values()) <= {1_000_000, 2_000_000}
    with EvalCassette(path, "r") as c:
        assert len(c) == 2 * n + n // 50
        for s in range(n // 50):
            assert c.get(key(-s))["first"] == firsts[0][s]
    _check_all(path, acked, streams)


def test_writers_killed_in_a_loop_lose_nothing_acknowledged(tmp_path):
    """Three writer processes append at once; one at a time is SIGKILLed
    after a number of acknowledgements (so mid-append, possibly holding the
    append lock) and replaced. The others are never blocked, and every
    acknowledged record of every process is there after a strict open."""
    path = str(tmp_path / "kill.fabl")
    loops = int(os.environ.get("FABRIC_CRASH_LOOPS", "200")) // 10 or 1
    acked: list[int] = []
    streams: list[int] = []
    serial = 0

    def start():
        nonlocal serial
        serial += 1
        child = spawn(WRITER, path, serial * 1_000_000, 1_000_000, "fsync")
        assert readline(child) == "open\n"
        return child

    kids = [start() for _ in range(3)]
    for loop in range(loops):
        victim = loop % 3
        # every writer makes progress: none is blocked by a dead one
        for child in kids:
            for _ in range(5):
                assert _collect(child, acked, streams) in ("r", "s")
        kids[victim].send_signal(signal.SIGKILL)
        out, _ = kids[victim].communicate()
        for line in out.splitlines(keepends=True):
            if line.endswith("\n") and line[:2] in ("r ", "s "):
                (acked if line[0] == "r" else streams).append(int(line[2:]))
        kids[victim] = start()
    for child in kids:
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        for line in out.splitlines(keepends=True):
            if line.endswith("\n") and line[:2] in ("r ", "s "):
                (acked if line[0] == "r" else streams).append(int(line[2:]))
    assert len(acked) > loops * 10
    with EvalCassette(path):  # a writer's open repairs a torn tail
        pass
    _check_all(path, acked, streams)


# ---- 4 writers x 10,000 records, one killed, with and without a compaction ------

FLEET_WRITER = """
import sys
from fabric import EvalCassette, EvalRequest
path, base, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = EvalCassette(path, durability="os")
key = lambda k: EvalRequest("op", [k]).key
print("open", flush=True)
assert sys.stdin.readline() == "go\\n"
out = sys.stdout
for k in range(base, base + n):
    assert c.record(key(k), {"k": k}) is True
    out.write(f"{k}\\n")
    out.flush()
print("done", flush=True)
"""

FLEET_COMPACTOR = """
import sys
from fabric import EvalCassette
c = EvalCassette(sys.argv[1], durability="os")
first = [True]
def progress(done, total):
    if first[0]:  # hold the first compaction midway until told
        first[0] = False
        print("compacting", flush=True)
        assert sys.stdin.readline() == "go on\\n"
c.compact(progress=progress)
print("compacted", flush=True)
while sys.stdin.readline() == "again\\n":
    c.compact()
    print("compacted", flush=True)
"""


class _Acks:
    """Reads a writer's acknowledgements on a thread; ``reached(n)`` is an
    event set once n are in."""

    def __init__(self, child):
        import threading
        self.child, self.keys, self.done = child, [], False
        self.marks: dict[int, threading.Event] = {}
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def reached(self, n):
        import threading
        with self.lock:
            ev = self.marks.setdefault(n, threading.Event())
            if len(self.keys) >= n:
                ev.set()
        return ev

    def _run(self):
        for line in self.child.stdout:
            if not line.endswith("\n"):
                break  # cut by SIGKILL: not acknowledged
            if line == "done\n":
                self.done = True
                continue
            with self.lock:
                self.keys.append(int(line))
                for n, ev in self.marks.items():
                    if len(self.keys) >= n:
                        ev.set()
        with self.lock:
            for ev in self.marks.values():
                ev.set()  # EOF: nothing more will come


@pytest.mark.parametrize("compaction", ["none", "running", "killed"])
def test_four_writers_one_killed_lose_nothing_acknowledged(tmp_path, compaction):
    """4 writer processes x 10,000 records into one cassette; one is SIGKILLed
    midway. With a compaction in place that holds midway while every writer
    appends (then runs on, again and again), or that is SIGKILLed there.
    Every acknowledged record of every process is there, once, and the
    ledger opens strictly."""
    path = str(tmp_path / "fleet.fabl")
    n = 10_000
    _fill(path, 2000)  # something to compact
    # The victim (writer 1) has no end of its own: on a loaded machine a
    # bounded one could finish before the SIGKILL lands.
    kids = [spawn(FLEET_WRITER, path, (w + 1) * 1_000_000, n if w != 1 else 999_999,
                  stdin=True) for w in range(4)]
    compactor = None
    try:
        for child in kids:
            assert readline(child) == "open\n"
        if compaction != "none":
            compactor = spawn(FLEET_COMPACTOR, path, stdin=True)
            assert readline(compactor) == "compacting\n"  # phase 1, held there
        acks = [_Acks(child) for child in kids]
        for child in kids:
            tell(child, "go")
        for a in acks:  # every writer appends while the compaction is held
            assert a.reached(1000).wait(300) and len(a.keys) >= 1000
        if compaction == "killed":
            compactor.send_signal(signal.SIGKILL)
            compactor.communicate()
        elif compaction == "running":
            tell(compactor, "go on")
            assert readline(compactor) == "compacted\n"
        victim = acks[1]
        assert victim.reached(n // 2).wait(300)
        kids[1].send_signal(signal.SIGKILL)
        if compaction == "running":  # compact again while the others go on
            for _ in range(3):
                tell(compactor, "again")
                assert readline(compactor) == "compacted\n"
            compactor.stdin.close()
            assert compactor.stdout.read() == ""
            assert compactor.wait(300) == 0
        for child, a in zip(kids, acks):
            child.wait(300)  # its output is the reader thread's
            a.thread.join(300)
    finally:
        for child in kids + ([compactor] if compactor else []):
            if child.poll() is None:
                child.kill()
                child.communicate()
    assert kids[1].returncode == -signal.SIGKILL
    assert all(kids[i].returncode == 0 and acks[i].done for i in (0, 2, 3))
    assert n // 2 <= len(acks[1].keys) and not acks[1].done  # killed while appending
    acked = [k for a in acks for k in a.keys]
    with EvalCassette(path, "r", recover="strict") as c:
        for k in acked:
            assert c.get(key(k)) == {"k": k}, k
        for i in range(2000):
            assert c.get(key(i)) == {"v": i, "pad": "p" * 3000}
        ks = list(c)
        assert len(ks) == len(set(ks)) == len(c)
        assert c.stats()["duplicates"] == 0
        assert len(c) in (2000 + len(acked), 2000 + len(acked) + 1)  # + the victim's last
    if compaction == "killed":
        with EvalCassette(path) as c:  # the next writer removes what it left
            assert c.stats()["leftovers_removed"] == 1
    assert not [n for n in os.listdir(tmp_path) if ".compact.tmp." in n]


def test_torn_tail_of_a_dead_writer_is_repaired_by_the_next_lock_holder(tmp_path, monkeypatch):
    """A writer killed mid-append leaves part of a record at the end while
    other writers have the cassette open. The next to take the append lock
    (here the second handle, which never saw the torn bytes) cuts it before
    appending, so no record ever follows it and a strict open succeeds.
    Here with the OFD append lock (no lock directory), where the torn bytes
    can be planted by hand; with the lock page, see
    test_writer_killed_holding_the_append_lock."""
    monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", "")
    path = str(tmp_path / "torn.fabl")
    a = EvalCassette(path, durability="os")
    b = EvalCassette(path, durability="os")
    a.record(key(1), 1)
    assert b.get(key(1)) == 1
    before = open(path, "rb").read()
    # what a writer killed inside its pwrite leaves: a record's first bytes
    victim = EvalCassette(str(tmp_path / "other.fabl"), durability="os")
    victim.record(key(2), "x" * 500)
    victim.close()
    record = open(str(tmp_path / "other.fabl"), "rb").read()[64:]
    with open(path, "ab") as f:
        f.write(record[: len(record) // 2])
    with EvalCassette(path, "r") as r:  # a reader ignores it (it may be an append in progress)
        assert r.stats()["torn_bytes"] == len(record) // 2 and len(r) == 1
    assert b.record(key(3), 3) is True
    assert b.stats()["torn_tails_cut"] == 1
    assert a.record(key(4), 4) is True and a.stats()["torn_tails_cut"] == 0
    a.close()
    b.close()
    data = open(path, "rb").read()
    assert data.startswith(before)  # cut, never rewritten below the torn record
    assert [r[1] for r in cassette_ref.read(data)] == [1, 1, 1]
    with EvalCassette(path, "r", recover="strict") as r:
        assert [r.get(key(i)) for i in (1, 2, 3, 4)] == [1, None, 3, 4]
        assert r.stats()["torn_bytes"] == 0


# ---- the append lock page: a writer killed while holding the lock ---------------

HOLDER = """
import sys
from fabric import EvalCassette, EvalRequest
path, n = sys.argv[1], int(sys.argv[2])
c = EvalCassette(path, durability="os")
for i in range(n - 1):
    assert c.record(EvalRequest("op", [i]).key, f"holder {i}") is True
print(c.stats()["append_lock"], c.stats()["mapped_appends"], n - 1, flush=True)  # all acknowledged
# the n-th append never returns: the test hook holds the lock
c.record(EvalRequest("op", [n - 1]).key, "never")
"""

LATECOMER = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], durability="os")
assert c.record(EvalRequest("op", ["late"]).key, "late") is True
s = c.stats()
print(s["lock_owners_dead"], s["torn_tails_cut"], flush=True)
"""


@pytest.fixture
def lock_dir(monkeypatch):
    """A lock directory of the test's own (a tmpfs): a writer opening
    elsewhere on this machine sweeps unused lock files, a dead holder's
    among them, which would hide the owner-died path these tests watch."""
    if not os.path.isdir("/dev/shm"):
        pytest.skip("no /dev/shm")
    d = tempfile.mkdtemp(prefix="fab-lock-test-", dir="/dev/shm")
    monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", d)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.mark.parametrize("torn", [False, True], ids=["before-write", "mid-write"])
def test_writer_killed_holding_the_append_lock(tmp_path, torn, lock_dir):
    """A writer SIGKILLed while it holds the append lock (the test hook
    FABRIC_LEDGER_TEST_HOLD stops it inside the lock, before its write or
    after half of it, and says so on a pipe): another writer then takes
    the lock (the robust mutex reports its owner dead), repairs the tail
    and appends; every record the dead writer acknowledged is there and
    the ledger opens strictly."""
    path = str(tmp_path / "held.fabl")
    n = 40
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               FABRIC_LEDGER_TEST_HOLD=f"{n}:{w}" + (":torn" if torn else ""))
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(n)],
                              stdout=subprocess.PIPE, env=env, text=True, pass_fds=(w,))
    os.close(w)
    try:
        assert readline(holder) == f"mutex True {n - 1}\n"  # through the mapping
        acked = range(n - 1)
        kill_inside_the_lock(holder, r)  # at append n
    finally:
        os.close(r)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    # Before any repair: a strict open sees every acknowledged record, and
    # the dead append (a zero magic, then half its bytes) as a torn tail.
    with EvalCassette(path, "r", recover="strict") as c:
        assert [c.get(key(i)) for i in acked] == [f"holder {i}" for i in range(n - 1)]
        assert len(c) == n - 1 and (c.stats()["torn_bytes"] > 0) == torn
    late = spawn(LATECOMER, path)
    dead, cut = map(int, readline(late).split())  # never blocks on the dead holder
    assert late.wait() == 0
    assert dead == 1 and cut == (1 if torn else 0)
    with EvalCassette(path, "r", recover="strict") as c:
        assert [c.get(key(i)) for i in acked] == [f"holder {i}" for i in range(n - 1)]
        assert c.get(key("late")) == "late" and key(n - 1) not in c
        assert len(c) == n
    data = open(path, "rb").read()
    assert len(list(cassette_ref.read(data))) == n  # the reference reader agrees
    assert os.listdir(lock_dir) == []  # the last writer out removed the lock file


def test_lock_page_and_ofd_lock_never_mix(tmp_path, monkeypatch, lock_dir):
    """A writer that cannot use the lock page (here: no lock directory)
    while others append through it is refused at open; alone, it appends
    under the OFD lock, and a later lock-page writer then falls back to it."""
    path = str(tmp_path / "mix.fabl")
    a = EvalCassette(path, durability="os")
    assert a.stats()["append_lock"] == "mutex"
    monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", "")
    with pytest.raises(fabric.LedgerLockedError, match="lock file"):
        EvalCassette(path, durability="os")
    a.close()
    b = EvalCassette(path, durability="os")
    assert b.stats()["append_lock"] == "ofd"
    monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", lock_dir)
    c = EvalCassette(path, durability="os")
    assert c.stats()["append_lock"] == "ofd"
    for i in range(50):
        assert b.record(key(("b", i)), i) is True
        assert c.record(key(("c", i)), i) is True
    b.close()
    c.close()
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 100
    with EvalCassette(path, exclusive=True) as x:
        assert x.stats()["append_lock"] == "none"


# ---- a miss looks at the others' appends through the lock page ----------------

APPENDER = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], durability="os")
print(c.stats()["append_lock"], flush=True)
for line in sys.stdin:
    i = int(line)
    assert c.record(EvalRequest("op", [("child", i)]).key, {"child": i}) is True
    print("done", flush=True)
"""


def test_a_miss_finds_what_another_process_just_appended(tmp_path, lock_dir):
    """A miss right after another process's append (it says so on a pipe)
    finds the record: the page's end tells that the file grew without an
    fstat when this handle looked at the file less than 1 ms ago, and the
    fstat tells otherwise. This handle's own appends interleave, so the
    page's end and the handle's differ in both directions."""
    path = str(tmp_path / "miss.fabl")
    a = EvalCassette(path, durability="os")
    assert a.stats()["append_lock"] == "mutex"
    child = spawn(APPENDER, path, stdin=True)
    try:
        assert readline(child) == "mutex\n"
        for i in range(300):
            k = key(("child", i))
            assert a.get(k) is None  # a miss: looks at the file, finds nothing new
            tell(child, str(i))
            assert readline(child) == "done\n"
            assert a.get(k) == {"child": i}
            if i % 3 == 0:
                assert a.record(key(("parent", i)), i) is True
        assert a.stats()["foreign_records"] == 300
    finally:
        child.stdin.close()
        assert child.wait() == 0
    assert len(a) == 400
    a.close()


def test_a_miss_follows_appends_and_a_compaction_of_another_handle(tmp_path, lock_dir):
    """Two writer handles of one process share the lock page: each miss of
    one finds what the other just appended (well within the 1 ms in which
    the page's end answers for the file), and a compaction by the other
    (which leaves the page's end unknown) moves it to the new file at its
    next miss."""
    path = str(tmp_path / "two.fabl")
    a = EvalCassette(path, durability="os")
    b = EvalCassette(path, durability="os")
    assert a.stats()["append_lock"] == b.stats()["append_lock"] == "mutex"
    for i in range(500):
        assert a.get(key(("b", i))) is None
        assert b.record(key(("b", i)), i) is True
        assert a.get(key(("b", i))) == i
        if i % 7 == 0:
            assert a.record(key(("a", i)), -i) is True
            assert b.get(key(("a", i))) == -i
    assert a.stats()["foreign_records"] == 500 and a.stats()["reloads"] == 0
    assert a.get(key("fresh")) is None  # a's look at the file is fresh
    b.compact()
    assert b.record(key("after"), "after") is True
    assert a.get(key("after")) == "after"
    assert a.stats()["reloads"] == 1
    assert a.record(key("a-after"), 1) is True
    assert b.get(key("a-after")) == 1
    a.close()
    b.close()
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 500 + 72 + 2


# ---- the lazy catch-up behind the lock page's key filter -----------------------

STEPPER = """
import sys
from fabric import EvalCassette, EvalRequest
c = EvalCassette(sys.argv[1], durability="os")
print(c.stats()["append_lock"], flush=True)
for line in sys.stdin:
    op, _, name = line.strip().partition(" ")
    k = EvalRequest("op", [name]).key
    if op == "r":
        print(c.record(k, f"{sys.argv[2]} {name}"), flush=True)
    elif op == "d":
        print(c.delete(k), flush=True)
    elif op == "g":
        print(c.get(k), flush=True)
    elif op == "s":
        s = c.stats()
        print(s["lazy_appends"], s["duplicates"], flush=True)
c.close()
"""


def _step(child, line):
    tell(child, line)
    return readline(child).strip()


def test_two_writer_processes_record_lazily_and_first_write_wins(tmp_path, lock_dir):
    """Two writer processes, driven in turn over pipes: once both appended,
    their appends of new keys go past the other's records without replaying
    them (lazy_appends); an append of a key the other recorded writes
    nothing (its key is in the filter: first write wins), and the other's
    value is found; a key recorded by one, deleted by the other, is
    recorded again by the first (the tombstone's key is in the filter),
    even after an append that skipped the tombstone. A strict open finds
    every key once."""
    path = str(tmp_path / "lazy.fabl")
    a = spawn(STEPPER, path, "a", stdin=True)
    b = spawn(STEPPER, path, "b", stdin=True)
    try:
        assert readline(a) == readline(b) == "mutex\n"
        for i in range(100):
            assert _step(a, f"r a{i}") == "True"
            assert _step(b, f"r b{i}") == "True"
        lazy_a, lazy_b = (int(_step(c, "s").split()[0]) for c in (a, b))
        assert lazy_a > 90 and lazy_b > 90
        for i in range(200):
            first, second = (a, b) if i % 2 else (b, a)
            assert _step(first, f"r s{i}") == "True"
            assert _step(second, f"r s{i}") == "False"
            assert _step(second, f"g s{i}") == f"{'a' if i % 2 else 'b'} s{i}"
        assert _step(a, "r k") == "True"
        assert _step(b, "d k") == "True"
        assert _step(a, "r other") == "True"  # lazy: b's tombstone not replayed
        assert int(_step(a, "s").split()[0]) > lazy_a
        assert _step(a, "r k") == "True"  # recorded again
        assert _step(b, "g k") == "a k"
        assert _step(a, "s").split()[1] == _step(b, "s").split()[1] == "0"
    finally:
        for c in (a, b):
            c.stdin.close()
            assert c.wait() == 0
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 200 + 200 + 2
        assert r.stats()["duplicates"] == 0
        assert r.get(key("k")) == "a k"
    assert os.listdir(lock_dir) == []


RACER = """
import sys
from fabric import EvalCassette, EvalRequest
path, me, n, reverse = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4] == "1"
shared = [EvalRequest("op", ["shared", i]).key for i in range(n)]
own = [EvalRequest("op", [me, i]).key for i in range(n)]
if reverse:
    shared.reverse()
c = EvalCassette(path, durability="os")
print("ready", flush=True)
sys.stdin.readline()
won = 0
for i in range(n):
    assert c.record(own[i], i) is True
    won += c.record(shared[i], me) is True
print(won, c.stats()["duplicates"], flush=True)
c.close()
"""


@pytest.mark.parametrize("reverse", [False, True], ids=["same-order", "opposite-order"])
def test_two_writer_processes_race_for_the_same_keys(tmp_path, lock_dir, reverse):
    """Two writer processes record the same keys at once (between keys of
    their own, which keep the lazy catch-up in use): each key is recorded
    exactly once, whichever won it, and a strict open finds no duplicate."""
    path = str(tmp_path / "race.fabl")
    n = 20000
    kids = [spawn(RACER, path, me, n, int(reverse and me == "b"), stdin=True)
            for me in ("a", "b")]
    try:
        assert [readline(k) for k in kids] == ["ready\n", "ready\n"]
        for k in kids:
            tell(k, "go")
        won, dups = zip(*(map(int, readline(k).split()) for k in kids))
    finally:
        for k in kids:
            k.stdin.close()
            assert k.wait() == 0
    assert sum(won) == n and sum(dups) == 0
    with EvalCassette(path, "r", recover="strict") as r:
        assert len(r) == 3 * n and r.stats()["duplicates"] == 0
        assert r.stats()["records"] == 3 * n


LAZY_HOLDER = """
import os, sys
from fabric import EvalCassette, EvalRequest
path, n, hold = sys.argv[1], int(sys.argv[2]), sys.argv[3]
c1 = EvalCassette(path, durability="os")
os.environ["FABRIC_LEDGER_TEST_HOLD"] = hold  # read at open: the second handle's
c2 = EvalCassette(path, durability="os")
for i in range(2 * n):  # c2's n-th append (key 2n - 1) never returns
    assert (c2 if i % 2 else c1).record(EvalRequest("op", [i]).key, f"holder {i}") is True
    if i == 2 * n - 2:
        print(c2.stats()["lazy_appends"] > 0, flush=True)  # 0 .. 2n - 2 acknowledged
"""


@pytest.mark.parametrize("torn", [False, True], ids=["before-write", "mid-write"])
def test_writer_killed_after_adding_its_key_to_the_filter(tmp_path, torn, lock_dir):
    """A writer appending lazily is SIGKILLed inside the append lock, after
    its key went into the filter (the test hook stops it there, before its
    write or after half of it): another writer records that key (once),
    finds every acknowledged record held, and the ledger opens strictly
    with every key once."""
    path = str(tmp_path / "lazy-held.fabl")
    n = 40
    r, w = os.pipe()
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    hold = f"{n}:{w}" + (":torn" if torn else "")
    holder = subprocess.Popen([sys.executable, "-c", LAZY_HOLDER, path, str(n), hold],
                              stdout=subprocess.PIPE, env=env, text=True, pass_fds=(w,))
    os.close(w)
    try:
        assert readline(holder) == "True\n"
        kill_inside_the_lock(holder, r)  # at key 2n - 1
    finally:
        os.close(r)
        if holder.poll() is None:
            holder.kill()
            holder.wait()
    with EvalCassette(path, durability="os") as c:
        assert c.record(key(2 * n - 1), "late") is True
        assert c.stats()["lock_owners_dead"] == 1
        assert c.stats()["torn_tails_cut"] == (1 if torn else 0)
        assert all(c.record(key(i), "again") is False for i in range(2 * n - 1))
    with EvalCassette(path, "r", recover="strict") as c:
        assert len(c) == 2 * n and c.stats()["duplicates"] == 0
        assert [c.get(key(i)) for i in range(2 * n - 1)] == [f"holder {i}" for i in range(2 * n - 1)]
        assert c.get(key(2 * n - 1)) == "late"


FULL_LOCK_DIR = """
import os, sys
from fabric import EvalCassette, EvalRequest
path, n = sys.argv[1], int(sys.argv[2])
a = EvalCassette(path, durability="os")
b = EvalCassette(path, durability="os")
for i in range(n):  # in turn: each append of one follows a record of the other
    assert (b if i % 2 else a).record(EvalRequest("op", [i]).key, i) is True
assert all(a.get(EvalRequest("op", [i]).key) == i for i in range(n))
print(a.stats()["append_lock"], a.stats()["lazy_appends"] + b.stats()["lazy_appends"], flush=True)
a.close()
b.close()
"""


@pytest.mark.parametrize("room", ["none", "full", "roomy"])
def test_key_filter_in_a_full_lock_directory(tmp_path, room, monkeypatch):
    """The key filter's 2 MiB are allocated before it is used: in a lock
    directory whose tmpfs is full, two writers that take turns keep
    appending (the filter stays invalid, every append catches up) where a
    write into the filter's unallocated pages would be SIGBUS. With no room
    even for the lock page's header, the writers lock with OFD locks. With
    room, the same turns go lazily (the control: the filter is in use)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    d = tmp_path / "locks"
    d.mkdir()
    size = "256k" if room == "full" else "8m"
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        if room != "roomy":  # fill it up (but the lock file's header page)
            fd = os.open(d / "filler", os.O_WRONLY | os.O_CREAT)
            try:
                while os.write(fd, b"\1" * 4096) == 4096:
                    pass
            except OSError:
                pass
            finally:
                os.close(fd)
            if room == "full":
                os.truncate(d / "filler", os.path.getsize(d / "filler") - 8192)
        monkeypatch.setenv("FABRIC_LEDGER_LOCK_DIR", str(d))
        out = subprocess.run([sys.executable, "-c", FULL_LOCK_DIR, str(tmp_path / "l.fabl"),
                              "4000"], capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        lock, lazy = out.stdout.split()
        assert lock == ("ofd" if room == "none" else "mutex")
        if room != "roomy":
            assert int(lazy) == 0
        else:
            assert int(lazy) > 1000
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)
    with EvalCassette(str(tmp_path / "l.fabl"), "r", recover="strict") as r:
        assert len(r) == 4000 and r.stats()["duplicates"] == 0


STAYS_OPEN = """
import sys
from fabric import EvalCassette, EvalRequest
path, base = sys.argv[1], int(sys.argv[2])
c = EvalCassette(path, durability=sys.argv[3])
for i in range(100):
    assert c.record(EvalRequest("op", [base + i]).key, i) is True
print("open", flush=True)
assert sys.stdin.readline() == "close\\n"
c.close()
print("closed", flush=True)
"""


@pytest.mark.parametrize("durability", ["os", "group"])
def test_nothing_sits_beside_a_cassette_that_several_writers_have_open(tmp_path, durability):
    """No lock file, no side file in the cassette's directory while three
    writers (two processes and this one) append to it, nor after: a
    cassette is committed to a repository as its one file (a checkpoint
    appears beside it only after 65,536 records, and may be left out)."""
    path = str(tmp_path / "shared.fabl")
    mine = EvalCassette(path, durability=durability)
    kids = [spawn(STAYS_OPEN, path, b * 1000, durability, stdin=True) for b in (1, 2)]
    reads = [Lines(child) for child in kids]
    try:
        for read in reads:
            assert read() == "open\n"
        assert mine.record(key(-1), "mine") is True
        assert mine.get(key(1001)) == 1 and mine.get(key(2099)) == 99  # theirs
        assert os.listdir(tmp_path) == ["shared.fabl"]
        for child, read in zip(kids, reads):
            tell(child, "close")
            assert read() == "closed\n"
            assert child.wait(120) == 0
    finally:
        for child in kids:
            child.kill()
            child.communicate()
    assert os.listdir(tmp_path) == ["shared.fabl"]
    mine.close()
    assert os.listdir(tmp_path) == ["shared.fabl"]
    with EvalCassette(path, "r") as c:
        assert len(c) == 201
