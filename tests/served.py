"""``fabric serve`` processes for the tests: started on loopback with the
tests' ops importable, synchronised on their readiness line (a handshake,
never a sleep), and always reaped."""

import contextlib
import os
import signal
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def serve_cmd(tmp_path, name, *args, ops="node_ops", cassette=True):
    """The command line of `fabric serve` as node ``name``: on loopback,
    importing ``ops`` (None: nothing), its cassette ``name.ledger`` in
    tmp_path (``cassette=False``: none, a temporary one), then ``args``
    (so a later ``--listen`` wins)."""
    return [sys.executable, "-m", "fabric", "serve", "--listen", "127.0.0.1:0",
            "--node-id", name, *(("--import", ops) if ops else ()),
            *(("--cassette", str(tmp_path / f"{name}.ledger")) if cassette else ()), *args]


def popen(cmd, *, env=None, log=None):
    """``cmd`` as a process with the tests' ops importable, ``env`` added to
    the environment; its stdout a pipe, its stderr too, or appended to the
    file ``log``."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]), **(env or {}))
    if log is None:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                text=True)
    with open(log, "a") as f:
        return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=f, env=env, text=True)


def serve(tmp_path, name, *args, ops="node_ops", cassette=True, env=None, log=None):
    """Start `fabric serve` as node ``name`` (``serve_cmd``; ``env`` and
    ``log`` as ``popen``'s) and wait for its readiness line; returns (proc,
    url). One that does not start is killed and reaped, and fails the test
    with what it said."""
    proc = popen(serve_cmd(tmp_path, name, *args, ops=ops, cassette=cassette), env=env, log=log)
    line = proc.stdout.readline()  # the readiness line, or '' if it died
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        said = proc.stderr.read() if log is None else open(log).read()
        raise AssertionError(f"fabric serve {name} did not start: {line!r} {said[-2000:]}")
    return proc, line.rsplit(" ", 1)[1].strip()


def stop(proc):
    """SIGTERM to a node still running, which must then exit with status 0."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(20) == 0
        finally:
            if proc.poll() is None:
                proc.kill()


def interrupt(proc):
    """Ctrl-C (SIGINT) to a node, which must then exit with status 0."""
    proc.send_signal(signal.SIGINT)
    assert proc.wait(30) == 0


@contextlib.contextmanager
def served(tmp_path, name, *args, **options):
    """``serve`` (its options too) as a context: (proc, url), the process
    killed at the end if the block did not end it, and reaped (its pipes
    left open: what it said may be read after the block)."""
    proc, url = serve(tmp_path, name, *args, **options)
    try:
        yield proc, url
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


@pytest.fixture
def fleet(tmp_path):
    """``fleet(name, *args)`` starts a node as ``serve`` does; each one
    still running at the end of the test is killed, and every one reaped."""
    procs = []

    def start(name, *args):
        p, url = serve(tmp_path, name, *args)
        procs.append(p)
        return p, url

    yield start
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait()
        for f in (p.stdout, p.stderr):
            if f is not None:
                f.close()


def read_until(proc, text, lines=200, timeout=120.0):
    """Read a node's log (its stderr) until a line says ``text``: what the
    node reports itself, the handshake (bounded by its lines, by its end:
    a node that exits first fails here with the line it ended on, and by
    ``timeout`` seconds: a node that stays up and never says it is killed,
    which ends the read, so the test fails instead of hanging)."""
    import threading
    line = ""
    timer = threading.Timer(timeout, proc.kill)
    timer.daemon = True
    timer.start()
    try:
        for _ in range(lines):
            line = proc.stderr.readline()
            if not line or text in line:
                break
    finally:
        timer.cancel()
    assert text in line, (f"no {text!r} in the log of the node within {lines} lines and "
                          f"{timeout} s: {line!r}")
    return line
