"""Shared fixtures of the test suite."""

import asyncio
import contextlib
import gc
import itertools
import random
import socket
import sys
import threading
import time

import pytest

import fabric
from fabric.frames import FrameKind
from fabric.node import protocol as P


@pytest.fixture
def cassette_factory(tmp_path):
    """cassette_factory(name) -> a real EvalCassette on a ledger file under tmp_path
    (OS durability unless asked: the tests check behaviour, not fsync)."""
    opened = []
    counter = itertools.count()

    def make(name=None, **kw):
        kw.setdefault("durability", "os")
        path = tmp_path / f"{name or 'c%d' % next(counter)}.ledger"
        c = fabric.EvalCassette(str(path), **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


# pytester runs the pytest plugin's own tests (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


def read_frames(sock, until_close=True, limit=10):
    """The frames a node sends on a raw socket: until it closes the
    connection (or the first read's, until_close=False), at most limit."""
    dec = fabric.FrameDecoder(P.node_limits(P.DEFAULT_MAX_FRAME))
    out = []
    while len(out) < limit:
        data = sock.recv(1 << 16)
        if not data:
            break
        dec.feed(data)
        out.extend(dec)
        if not until_close and out:
            break
    return out


def hello_bytes(**kw):
    """A client's HELLO frame with the protocol's defaults (kw: more fields)."""
    body = P.hello(node=None, max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW,
                   **kw)
    return P.encoder().encode_value(FrameKind.HELLO, body)


def end_process(proc, bound=60):
    """SIGTERM to a served node's process, which must then exit with status
    0 (within bound seconds); killed and reaped if it has not."""
    proc.terminate()
    try:
        assert proc.wait(bound) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _ephemeral_low():
    """The first port of the kernel's ephemeral range (0 if unknown)."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 0


def free_port():
    """A port free on 127.0.0.1 now, for a node bound to it later (or a
    client that dials it where nothing listens): below the kernel's
    ephemeral range when there is room. The kernel never gives a port there
    to an outgoing connection nor to a bind of port 0 (another node's
    links, a client's dial, in this process or another), which could
    otherwise take the port between this call and the later bind, or
    answer a dial meant to find nothing."""
    low = _ephemeral_low()
    if low > 11024:
        rng = random.Random()  # its own seed: not the one pytest-randomly sets
        for _ in range(1000):
            port = rng.randrange(low - 10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(cond, what, bound=20.0):
    """A bounded wait for a condition another thread or process makes true
    (polled: the condition is the handshake, never the time it takes)."""
    end = time.monotonic() + bound
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)


def blocks_kept(fn, n=2000, rounds=3):
    """Blocks still allocated after n more calls of fn than after a warm-up
    (a leak of one object per call shows as >= n; noise is a few dozen).
    The least of ``rounds`` measurements: a leak keeps its blocks in every
    round, while the blocks another thread of the process (pytest-xdist's
    channel) happens to hold at one round's end do not recur."""
    for _ in range(200):
        fn()
    kept = []
    for _ in range(rounds):
        gc.collect()
        before = sys.getallocatedblocks()
        for _ in range(n):
            fn()
        gc.collect()
        kept.append(sys.getallocatedblocks() - before)
        if kept[-1] < 200:
            break
    return min(kept)


@contextlib.contextmanager
def started_nodes(tmp_path, prefix="n", local_home=False):
    """``make(name=None, **Node kwargs)``: a Node started on loopback (a
    port of its own), its ledger ``NAME.ledger`` in tmp_path (NAME: the name
    given, else PREFIX and a number), ``home`` a LocalFabric unless given
    when ``local_home``; every one stopped when the block ends."""
    from fabric.node import Node
    started = []

    def make(name=None, **kw):
        kw.setdefault("listen", "127.0.0.1:0")
        if local_home and "home" not in kw:
            kw["home"] = fabric.LocalFabric()
        name = name or f"{prefix}{len(started)}"
        n = Node(str(tmp_path / f"{name}.ledger"), node_id=name, **kw).start()
        started.append(n)
        return n

    try:
        yield make
    finally:
        for n in started:
            n.stop()


@pytest.fixture
def node(tmp_path):
    """Starts nodes on loopback (a port of their own, a ledger in tmp_path,
    ``home`` a LocalFabric unless given) and stops them after the test:
    ``node(**Node kwargs)``."""
    with started_nodes(tmp_path, local_home=True) as make:
        yield lambda **kw: make(**kw)


@pytest.fixture
def gated(node):
    """``(op, gate)``: an op whose calls wait at ``gate`` (a threading.Event,
    at most 30 s) and then return their argument. The gate is opened at the
    end of the test in any case, before its nodes stop (after ``node``)."""
    gate = threading.Event()

    @fabric.op("tests.gated")
    def gated_op(i):
        gate.wait(30)
        return i

    yield gated_op, gate
    gate.set()


async def spin_until(cond):
    """Yield to the event loop until ``cond()`` holds (bounded: a million
    turns); whether it held. Each turn lets the client read what the node
    sent: the node's answers are the handshake."""
    for _ in range(1_000_000):
        if cond():
            return True
        await asyncio.sleep(0)
    return cond()
