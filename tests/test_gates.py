"""The tests' gate (gates.py): ops in other processes wait on it blocking, and
wake when the test opens it; one that comes later passes; one never let
through fails with TimeoutError. Real processes, readiness lines."""

import os
import subprocess
import sys
import threading

import pytest

import gates

HERE = os.path.dirname(os.path.abspath(__file__))

_WAITER = """
import sys, gates
gates.wait(sys.argv[1], float(sys.argv[2]), ready=lambda: print("waiting", flush=True))
print("open", flush=True)
"""


def waiter(path, timeout=120.0):
    """A process waiting at the gate; returns once it says it waits."""
    p = subprocess.Popen([sys.executable, "-c", _WAITER, path, str(timeout)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=dict(os.environ, PYTHONPATH=HERE))
    assert p.stdout.readline() == "waiting\n", p.stderr.read()
    return p


def finish(p):
    code = p.wait(60)  # bounded: a gate that does not wake fails here
    # (read through the buffered files: readline() may have read ahead)
    out, err = p.stdout.read(), p.stderr.read()
    p.stdout.close()
    p.stderr.close()
    return code, out, err


def test_the_waiting_processes_all_wake_when_the_test_opens_the_gate(tmp_path):
    gate = str(tmp_path / "gate")
    ps = [waiter(gate), waiter(gate)]  # each would wait 120 s if not woken
    assert all(p.poll() is None for p in ps)
    gates.open_gate(gate)
    for p in ps:
        assert finish(p) == (0, "open\n", "")


def test_a_gate_opened_before_the_wait_lets_it_pass(tmp_path):
    gate = str(tmp_path / "gate")
    gates.open_gate(gate)  # no FIFO yet, nobody waits: the marker says it
    assert gates.is_open(gate)
    p = waiter(gate)
    assert finish(p) == (0, "open\n", "")


def test_a_writer_that_is_not_the_test_does_not_open_it(tmp_path):
    gate = str(tmp_path / "gate")
    p = waiter(gate, timeout=5.0)
    os.close(os.open(gate, os.O_WRONLY | os.O_NONBLOCK))  # wakes it; no marker: waits on
    code, out, err = finish(p)
    assert (code, out) == (1, "") and "TimeoutError: the test never opened the gate" in err


def test_a_gate_never_opened_ends_the_wait_with_timeout_error(tmp_path):
    with pytest.raises(TimeoutError, match="never opened the gate"):
        gates.wait(str(tmp_path / "gate"), 0.05)


def test_a_reopen_that_fails_raises_its_own_error(tmp_path):
    """A foreign writer wakes the waiter, and the gate is gone when it opens
    it again: the waiter raises that (FileNotFoundError), not an EBADF from
    closing its old descriptor twice (which, in a threaded process, may by
    then be another thread's)."""
    gate = str(tmp_path / "gate")
    waiting = threading.Event()
    raised = []

    def waiter_thread():
        try:
            gates.wait(gate, 60.0, ready=waiting.set)
        except BaseException as e:  # noqa: BLE001 (handed to the test)
            raised.append(e)

    t = threading.Thread(target=waiter_thread)
    t.start()
    try:
        assert waiting.wait(60)
        w = os.open(gate, os.O_WRONLY | os.O_NONBLOCK)  # a writer not the test's opening
        os.unlink(gate)
        os.close(w)  # wakes the waiter: no marker, and nothing to open again
    finally:
        t.join(60)  # bounded: the wait ends at once (its error), or at 60 s
    assert not t.is_alive()
    assert len(raised) == 1 and type(raised[0]) is FileNotFoundError, raised
    assert raised[0].filename == gate

