"""Crash safety with real processes: SIGKILL a writer during acknowledged
appends, in a loop, then check that every acknowledged record survived.

FABRIC_CRASH_LOOPS=N sets the number of loops (default 200; the L1 goal in
QUALITY.md is >= 1,000: run ``FABRIC_CRASH_LOOPS=1000 pytest
tests/test_cassette_crash.py``).
"""

from __future__ import annotations

import os
import random
import select
import signal
import subprocess
import sys
import textwrap

import pytest

import fabric
from fabric import EvalCassette, EvalRequest

LOOPS = int(os.environ.get("FABRIC_CRASH_LOOPS", "200"))
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))

CHILD = textwrap.dedent(
    """
    import sys
    from fabric import EvalCassette, EvalRequest
    path, base = sys.argv[1], int(sys.argv[2])
    c = EvalCassette(path, durability="fsync")
    print("open", flush=True)
    i = 0
    while True:
        k = base + i
        key = EvalRequest("op", [k]).key
        if i % 5 == 4:
            w = c.record_stream(key)
            for j in range(i % 7 + 1):
                w.append({"k": k, "j": j, "pad": "x" * (k % 300)})
            if w.close():
                sys.stdout.write(f"s {k}\\n")
                sys.stdout.flush()
        elif c.record(key, {"k": k, "pad": "y" * (k % 500)}):
            sys.stdout.write(f"r {k}\\n")
            sys.stdout.flush()
        i += 1
    """
)


def reply(k):
    return {"k": k, "pad": "y" * (k % 500)}



def key(k):
    return EvalRequest("op", [k]).key


def spawn(path, base, script=CHILD):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen(
        [sys.executable, "-c", script, path, str(base)],
        stdout=subprocess.PIPE, env=env, text=True,
    )


def _ack(line, acked_replies, acked_streams):
    """Records one acknowledgement line; returns True if it was one."""
    # A line the kill cut short was never an acknowledgement.
    if not line.endswith("\n"):
        return False
    kind, _, k = line.strip().partition(" ")
    if kind == "r":
        acked_replies.append(int(k))
    elif kind == "s":
        acked_streams.append(int(k))
    else:
        return False
    return True


def _readline(child, timeout=120.0):
    """The child's next stdout line; fails the test (never hangs) when the
    child says nothing for ``timeout`` seconds."""
    ready, _, _ = select.select([child.stdout], [], [], timeout)
    assert ready, f"child {child.pid} wrote nothing within {timeout} s"
    return child.stdout.readline()


def test_crash_loop(tmp_path):
    path = str(tmp_path / "crash.fabl")
    rng = random.Random(1234)
    acked_replies: list[int] = []
    acked_streams: list[int] = []
    for loop in range(LOOPS):
        base = loop * 1_000_000
        child = spawn(path, base)
        # Kill at a moment chosen by what the child has said, never by the
        # clock, so a loaded machine changes nothing: one loop in ten during
        # start-up and replay, one in ten right after the open, and the rest
        # after the child has acknowledged a random number of appends (it
        # keeps appending while the pipe carries the lines to us, so the kill
        # lands anywhere inside an append).
        r = rng.random()
        if r >= 0.1:
            assert _readline(child).strip() == "open"
            if r >= 0.2:
                for _ in range(rng.randint(1, 12)):
                    line = _readline(child)
                    assert _ack(line, acked_replies, acked_streams), line
        child.send_signal(signal.SIGKILL)
        out, _ = child.communicate()
        for line in out.splitlines(keepends=True):
            _ack(line, acked_replies, acked_streams)
        # Reopen as the next writer would: it must always open.
        with EvalCassette(path) as c:
            if loop % 20 == 19 or loop == LOOPS - 1:
                for k in acked_replies:
                    assert bytes(c.get_raw(key(k))) == fabric.encode_value(reply(k)), k
                for k in acked_streams:
                    i = k % 1_000_000
                    expect = [{"k": k, "j": j, "pad": "x" * (k % 300)} for j in range(i % 7 + 1)]
                    assert list(c.get_stream(key(k))) == expect, k
    assert len(acked_replies) > LOOPS  # the loop really exercised appends
    # Shown with pytest -s: the figures docs/benchmarks.md records.
    print(f"\ncrash loop: {LOOPS} loops, {len(acked_replies)} replies and "
          f"{len(acked_streams)} streams acknowledged, all present and byte-identical, "
          f"every reopen succeeded")


def test_second_writer_process_is_welcome(tmp_path):
    """Two writer processes both write and both see everything: the child
    appends in a loop while this process records, and each finds the
    other's records without refresh()."""
    path = str(tmp_path / "two.fabl")
    child = spawn(path, 0)
    try:
        assert _readline(child).strip() == "open"
        with EvalCassette(path) as c:
            for i in range(100):
                assert c.record(key(-1 - i), {"k": -1 - i}) is True
            line = _readline(child)  # one more acknowledged by the child
            kind, _, k = line.strip().partition(" ")
            assert kind in "rs"
            assert c.get(key(int(k))) is not None  # a miss reads the child's tail
        # A reader alongside sees both.
        with EvalCassette(path, "r") as r:
            assert r.get(key(-50)) == {"k": -50}
            assert key(int(k)) in r
    finally:
        child.kill()
        child.communicate()
    with EvalCassette(path, exclusive=True) as c:  # the child's locks died with it
        assert len(c) > 100


EXCLUSIVE_CHILD = textwrap.dedent(
    """
    import sys
    from fabric import EvalCassette
    c = EvalCassette(sys.argv[1], exclusive=True)
    print("open", flush=True)
    sys.stdin.readline()
    """
)


def test_exclusive_writer_process_is_named(tmp_path):
    path = str(tmp_path / "locked.fabl")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    child = subprocess.Popen([sys.executable, "-c", EXCLUSIVE_CHILD, path],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True)
    try:
        assert _readline(child).strip() == "open"
        with pytest.raises(fabric.LedgerLockedError) as info:
            EvalCassette(path)
        assert info.value.pid == child.pid
        assert f"pid {child.pid}" in str(info.value)
    finally:
        child.kill()
        child.communicate()
    EvalCassette(path).close()  # the lock died with the process


def test_reader_during_crashing_writer(tmp_path):
    """A reader refreshing while a writer is killed never sees a torn record."""
    path = str(tmp_path / "r.fabl")
    EvalCassette(path).close()
    with EvalCassette(path, "r") as r:
        for loop in range(5):
            child = spawn(path, loop * 1_000_000)
            assert _readline(child).strip() == "open"
            # Refresh between the writer's acknowledgements, so the reader
            # reads while appends are in flight, then kill it mid-append.
            for _ in range(5 + loop):
                _readline(child)
                r.refresh()
            child.kill()
            child.communicate()
            r.refresh()
            assert len(r) > 0
            for k, v in r.items():
                if not isinstance(v, fabric.CassetteStream):
                    assert v == reply(v["k"])
