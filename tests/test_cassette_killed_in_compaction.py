"""A writer killed inside the append lock (a torn write or not) while an
in-place compaction is held in its first pass: every acknowledged record
is in the compacted file and a strict open succeeds. Real processes,
synchronized by handshakes (no sleeps)."""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys

import pytest

import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))


def key(k):
    return EvalRequest("op", [k]).key


def readline(f, timeout=120.0):
    """The next line of f; fails (never hangs) after timeout seconds."""
    ready, _, _ = select.select([f], [], [], timeout)
    assert ready, f"nothing within {timeout} s"
    return f.readline()


HOLDER = """
import sys
from fabric import EvalCassette, EvalRequest
path, n = sys.argv[1], int(sys.argv[2])
c = EvalCassette(path, durability="os")
for i in range(n - 1):
    assert c.record(EvalRequest("op", [("h", i)]).key, i) is True
print("acked", flush=True)
c.record(EvalRequest("op", [("h", n - 1)]).key, "never")  # held inside the lock
"""

COMPACTOR = """
import sys
from fabric import EvalCassette
c = EvalCassette(sys.argv[1], durability="os")
first = [True]
def progress(done, total):
    if first[0]:
        first[0] = False
        print("compacting", flush=True)
        assert sys.stdin.readline() == "go on\\n"
c.compact(progress=progress)
print("compacted", flush=True)
"""


@pytest.mark.parametrize("torn", [False, True], ids=["before-write", "mid-write"])
def test_writer_killed_inside_the_lock_while_a_compaction_is_midway(tmp_path, torn):
    """The issue's "one writer killed ... while a compaction runs": a writer
    SIGKILLed inside the append lock (torn or not) while an in-place
    compaction is held in its first pass; the compaction then finishes, a
    writer appends, and every acknowledged record is there, strictly."""
    path = str(tmp_path / "kc.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(2000):
            c.record(key(i), {"v": i, "pad": "p" * 300})
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    comp = subprocess.Popen([sys.executable, "-c", COMPACTOR, path], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)
    r, w = os.pipe()
    n = 40
    henv = dict(env, FABRIC_LEDGER_TEST_HOLD=f"{n}:{w}" + (":torn" if torn else ""))
    holder = None
    try:
        # the compaction first reaches its first pass (it may need the
        # append lock before that, which the held writer would keep)
        assert readline(comp.stdout) == "compacting\n"
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, path, str(n)],
                                  stdout=subprocess.PIPE, text=True, env=henv, pass_fds=(w,))
        os.close(w)
        assert readline(holder.stdout) == "acked\n"
        assert select.select([r], [], [], 120.0)[0] and os.read(r, 1) == b"H"  # inside the lock
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        comp.stdin.write("go on\n")
        comp.stdin.flush()
        assert readline(comp.stdout) == "compacted\n"
        assert comp.wait(120) == 0
    finally:
        os.close(r)
        for p in (holder, comp):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait()
    with EvalCassette(path, durability="os") as c:
        assert c.record(key("late"), 1) is True
    with EvalCassette(path, "r", recover="strict") as c:
        assert all(c.get(key(("h", i))) == i for i in range(n - 1))
        assert all(c.get(key(i))["v"] == i for i in range(2000))
        assert key(("h", n - 1)) not in c
        assert len(c) == 2000 + n - 1 + 1 and c.stats()["duplicates"] == 0
