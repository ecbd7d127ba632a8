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


def test_a_gate_path_that_is_not_a_fifo_raises_at_once(tmp_path):
    gate = tmp_path / "gate"
    gate.write_bytes(b"")  # a regular file: always readable, it would never block
    with pytest.raises(FileExistsError, match="not a FIFO") as info:
        gates.wait(str(gate), 30.0)  # (a busy wait until the timeout before)
    assert str(gate) in str(info.value)


_HIGH_FD_WAITER = """
import os, resource, sys, gates
soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))
held = [os.open(os.devnull, os.O_RDONLY) for _ in range(1100)]  # the gate's fd above 1024
try:
    gates.wait(sys.argv[1], 0.05)
except TimeoutError as e:
    print("timeout", e, flush=True)
"""


def test_a_gate_waits_on_a_descriptor_above_1024(tmp_path):
    import resource
    if resource.getrlimit(resource.RLIMIT_NOFILE)[1] < 1200:
        pytest.skip("the hard limit on open files is below 1200")
    p = subprocess.run([sys.executable, "-c", _HIGH_FD_WAITER, str(tmp_path / "gate")],
                       capture_output=True, text=True, timeout=60,
                       env=dict(os.environ, PYTHONPATH=HERE))
    assert (p.returncode, p.stdout.split(" ", 1)[0]) == (0, "timeout"), p.stderr
