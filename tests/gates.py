"""A gate that a test opens for ops waiting in other processes (node and worker
processes import it beside node_ops / replicas_ops).

The gate at ``path`` is a FIFO beside a marker file ``path + ".open"``. An op
waits (``wait``) with the FIFO open for reading and blocks in ``poll`` with
a timeout; the test opens the gate (``open_gate``): it makes the marker,
then opens the FIFO for writing and closes it, which wakes every reader at
once (the FIFO reports the writer's hang-up as readable). The marker is what
says the gate is open: an op that comes after the gate opened sees it and
does not wait, and a wake-up without it (another writer) waits again.
POSIX FIFOs: the processes share a file system, as the tests' do.
"""

import errno
import math
import os
import select
import stat
import time


def _fifo(path):
    try:
        os.mkfifo(path, 0o600)
    except FileExistsError:
        _check_fifo(os.stat(path).st_mode, path)


def _check_fifo(mode, path):
    # Anything else there (a regular file is always readable) would make the
    # wait a busy loop until its timeout.
    if not stat.S_ISFIFO(mode):
        raise FileExistsError(errno.EEXIST, "the gate's path exists and is not a FIFO", path)


def _open_reader(path):
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
    try:
        _check_fifo(os.fstat(fd).st_mode, path)  # (the one opened, whatever came since)
    except BaseException:
        os.close(fd)
        raise
    return fd


def wait(path, timeout=60.0, ready=None):
    """Returns once the gate at ``path`` is open; TimeoutError when it is not
    within ``timeout`` seconds (a test that never opens it fails, not hangs).
    ``ready()``, if given, is called once waiting (the FIFO open)."""
    _fifo(path)
    deadline = time.monotonic() + timeout
    fd = _open_reader(path)
    try:
        if ready is not None:
            ready()
        poll = select.poll()  # (not select: a descriptor may be >= 1024)
        poll.register(fd, select.POLLIN)
        while not os.path.exists(path + ".open"):
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"the test never opened the gate {path}")
            readable = poll.poll(math.ceil(left * 1000))  # (a hang-up is reported too)
            if readable and not os.path.exists(path + ".open"):
                # a writer came and went, not the test's opening: the hang-up
                # stays readable, so wait on a new descriptor (opened before
                # the old one is closed: if the open fails, its error is
                # raised and the old one closed once, by the finally)
                new = _open_reader(path)
                poll.unregister(fd)
                os.close(fd)
                fd = new
                poll.register(fd, select.POLLIN)
    finally:
        os.close(fd)


def open_gate(path):
    """Opens the gate at ``path``: ops waiting wake now, later ones pass."""
    open(path + ".open", "w").close()
    try:
        fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK)
    except OSError as e:
        if e.errno in (errno.ENXIO, errno.ENOENT):  # no op waits (yet): the marker will do
            return
        raise
    os.close(fd)  # the hang-up wakes every reader


def is_open(path):
    return os.path.exists(path + ".open")
