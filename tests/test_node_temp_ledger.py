"""A node without a cassette keeps its ledger in a temporary directory: removed
by stop(); left by a node that is SIGKILLed, and then removed by the next node
of the same user that makes one (the directory's owner.lock, locked while its
node lives, tells a killed node's from a live one's). Real processes, each
waited for by its readiness line; each test has a TMPDIR of its own."""

import os
import select
import signal
import subprocess
import sys

import pytest

from fabric.node import Node
from fabric.node.server import _sweep_temp_ledgers

from served import serve

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


@pytest.fixture
def tmpdir_env(tmp_path, monkeypatch):
    """A TMPDIR of this test's own (for this process and the nodes it starts)."""
    d = tmp_path / "tmp"
    d.mkdir()
    monkeypatch.setenv("TMPDIR", str(d))
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    return d


def temp_ledgers(d):
    return sorted(p.name for p in d.iterdir() if p.name.startswith("fabric-node-"))


def serve_in(d, name):
    """`fabric serve` without --cassette, TMPDIR=d; returns once it is listening."""
    proc, _url = serve(d, name, ops=None, cassette=False, env={"TMPDIR": str(d)})
    return proc


def kill(proc):
    proc.kill()  # SIGKILL: the node removes nothing
    assert proc.wait(30) == -signal.SIGKILL
    proc.stdout.close()
    proc.stderr.close()


def test_a_killed_nodes_temp_ledger_is_swept_by_the_next_node(tmpdir_env):
    d = tmpdir_env
    a = serve_in(d, "a")
    try:
        (mine,) = temp_ledgers(d)
        assert mine.startswith(f"fabric-node-{a.pid}-")
        assert {"owner.lock", "node.ledger"} <= set(os.listdir(d / mine))
        assert _sweep_temp_ledgers(str(d)) == 0  # a live node's is kept
        assert temp_ledgers(d) == [mine]
    finally:
        kill(a)
    assert temp_ledgers(d) == [mine]  # left by the killed node
    b = serve_in(d, "b")  # makes its own: sweeps a's first
    try:
        (theirs,) = temp_ledgers(d)
        assert theirs.startswith(f"fabric-node-{b.pid}-")
    finally:
        kill(b)
    assert _sweep_temp_ledgers(str(d)) == 1  # the sweep alone, in this process
    assert temp_ledgers(d) == []


def test_a_stopped_node_removes_its_temp_ledger_and_a_sweep_spares_live_ones(tmpdir_env):
    d = tmpdir_env
    old = d / "fabric-node-old"  # no owner.lock: not known to be a node's, kept
    old.mkdir()
    (old / "node.ledger").write_bytes(b"")
    n = Node(node_id="n", listen="127.0.0.1:0").start()
    try:
        (mine,) = [x for x in temp_ledgers(d) if x != old.name]
        # Another node of this process sweeping does not take a live one's.
        m = Node(node_id="m", listen="127.0.0.1:0").start()
        m.stop()
        assert temp_ledgers(d) == sorted([old.name, mine])
    finally:
        n.stop()
    assert temp_ledgers(d) == [old.name]
    assert _sweep_temp_ledgers(str(d)) == 0
    assert old.is_dir()


def test_a_node_refused_makes_no_temp_ledger(tmpdir_env):
    with pytest.raises(TypeError, match="faults"):
        Node(listen="127.0.0.1:0", faults=["drop"])
    assert temp_ledgers(tmpdir_env) == []


def test_the_serve_tests_that_kill_nodes_give_them_a_cassette():
    """Every test that starts `fabric serve` names its cassette under its
    tmp_path (tests/served.py's do, but with cassette=False), so a node it kills leaves nothing in the shared /tmp (this
    file's tests, which mean to, run with a TMPDIR of their own)."""
    missing = []
    for name in sorted(os.listdir(HERE)):
        if not name.startswith("test_") or not name.endswith(".py") or \
                name == os.path.basename(__file__):
            continue
        with open(os.path.join(HERE, name), encoding="utf-8") as f:
            text = f.read()
        if '"serve"' in text and "--cassette" not in text or "cassette=False" in text:
            missing.append(name)
    assert missing == []


def _sweep_in_a_process(d):
    """_sweep_temp_ledgers(d) in a process of its own, so one that blocks is
    bounded (killed at the timeout) and fails the test instead of hanging it."""
    code = ("import sys; from fabric.node.server import _sweep_temp_ledgers; "
            "print(_sweep_temp_ledgers(sys.argv[1]), flush=True)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(d)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT))
    try:
        out, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        raise AssertionError("the sweep blocked (60 s)") from None
    assert proc.returncode == 0, err
    return int(out)


def test_a_sweep_does_not_block_on_an_owner_lock_that_is_a_fifo(tmpdir_env):
    d = tmpdir_env
    x = d / "fabric-node-x"
    x.mkdir()
    os.mkfifo(x / "owner.lock")  # opening it for reading would wait for a writer
    gone = d / "fabric-node-gone"  # a killed node's: its lock is not held
    gone.mkdir()
    (gone / "owner.lock").write_bytes(b"")
    assert _sweep_in_a_process(d) == 1
    assert temp_ledgers(d) == ["fabric-node-x"]  # not a lock file: left alone
    assert os.listdir(x) == ["owner.lock"]


def test_a_sweep_leaves_an_owner_lock_that_is_not_a_regular_file(tmpdir_env):
    d = tmpdir_env
    (d / "fabric-node-y" / "owner.lock").mkdir(parents=True)  # a directory
    assert _sweep_temp_ledgers(str(d)) == 0
    assert temp_ledgers(d) == ["fabric-node-y"]


def test_a_sweep_counts_only_the_directories_it_removed(tmpdir_env, monkeypatch):
    """A sweep that takes the lock of a node just stopped, whose stop()
    removes the directory first (the race, made to happen here: the real
    rmtree of stop() runs just before the sweep's), does not count it."""
    import shutil

    from fabric.node import server

    d = tmpdir_env
    for name in ("fabric-node-raced", "fabric-node-killed"):
        (d / name).mkdir()
        (d / name / "owner.lock").write_bytes(b"")
        (d / name / "node.ledger").write_bytes(b"x")
    rmtree = shutil.rmtree

    def stop_first(path, *args, **kwargs):
        if os.path.basename(path) == "fabric-node-raced" and os.path.isdir(path):
            rmtree(path)  # the stopping node removes its own directory first
        return rmtree(path, *args, **kwargs)

    monkeypatch.setattr(server.shutil, "rmtree", stop_first)
    assert _sweep_temp_ledgers(str(d)) == 1  # the killed node's alone
    assert temp_ledgers(d) == []


_NODE_THAT_FORKS = """
import os, sys
from fabric.node import Node
n = Node(node_id="f", listen="127.0.0.1:0").start()
pid = os.fork()
if pid == 0:  # a child forked without exec: it shares the node's open files
    os.read(0, 1)  # until the test closes its stdin
    os._exit(0)
print(pid, flush=True)
os.read(0, 1)  # killed here
"""


def test_a_killed_nodes_temp_ledger_stays_while_a_child_it_forked_lives(tmpdir_env):
    """As the Node docstring and README say: the forked child shares the lock."""
    d = tmpdir_env
    proc = subprocess.Popen([sys.executable, "-c", _NODE_THAT_FORKS], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, PYTHONPATH=ROOT, TMPDIR=str(d)))
    child = int(proc.stdout.readline())  # the readiness line: the child's pid
    pidfd = os.pidfd_open(child)
    try:
        (mine,) = temp_ledgers(d)
        kill(proc)  # SIGKILL the node; its child lives on
        assert _sweep_temp_ledgers(str(d)) == 0
        assert temp_ledgers(d) == [mine]
        proc.stdin.close()  # the child reads EOF and ends
        p = select.poll()
        p.register(pidfd, select.POLLIN)
        assert p.poll(60_000), "the forked child did not end"  # bounded
        assert _sweep_temp_ledgers(str(d)) == 1
        assert temp_ledgers(d) == []
    finally:
        proc.stdin.close()  # (again, if the test failed before: the child ends)
        os.close(pidfd)
