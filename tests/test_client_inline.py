"""On asyncio's own loop an ``aevaluate`` alone in flight waits for its reply
inside its task when the loop has nothing else to run (``wait_inline``): no
turn of the loop a call. The wait ends at once on any event of the loop (a
socket, ``call_soon_threadsafe``), is never taken with a callback ready or
a timer due within it, and is never longer than ``_INLINE_WAIT``.

The tests make that bound a minute: a wait that held the loop when it must
not would hold it that long, and each test checks that it did not."""

import asyncio
import threading
import time

import pytest

import fabric
from fabric.node import client as client_mod
from fabric.node import connect

import node_ops
from test_client_wake import CountingSelector

LONG = 60.0


@pytest.fixture
def long_wait(monkeypatch):
    monkeypatch.setattr(client_mod, "_INLINE_WAIT", LONG)


@pytest.fixture
def slow():
    """``(op, started, gate)``: an op that says it started, then waits at
    ``gate`` (at most 30 s) and returns its argument doubled. The gate is
    opened at the end of the test in any case."""
    started, gate = threading.Event(), threading.Event()

    @fabric.op("tests.inline.slow")
    def slow_op(x):
        started.set()
        gate.wait(30)
        return 2 * x

    yield slow_op, started, gate
    gate.set()


def _run(loop, coro):
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def test_calls_in_turn_take_their_replies_without_a_turn_of_the_loop(node, long_wait):
    n = node()
    sel = CountingSelector()
    loop = asyncio.SelectorEventLoop(sel)
    with connect(n.url, timeout=60) as c:
        reqs = [node_ops.double.request(x) for x in range(100)]

        async def run():
            for r in reqs:  # held from now on; the channel is up
                await c.aevaluate(r)
            assert c._last_achannel.waits is not None
            before = sel.waits
            for r in reqs * 2:
                assert (await c.aevaluate(r)).value == 2 * r.args[0]
            return sel.waits - before

        waits = _run(loop, run())
    # one wait a call through the loop (200); inline, none but a reply that
    # came in two reads (loopback: rare)
    assert waits < 20, waits


def test_an_event_of_the_loop_ends_the_wait_at_once(node, long_wait, slow):
    op, started, gate = slow
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(1))  # the channel is up
            # another thread's callback for the loop (its wake-up pipe)
            # opens the gate: the call's reply comes only after it ran
            threading.Thread(target=lambda: (started.wait(30),
                                             loop.call_soon_threadsafe(gate.set)),
                             daemon=True).start()
            t0 = time.monotonic()
            got = await c.aevaluate(op.request(21))
            return got.value, time.monotonic() - t0

        value, took = _run(loop, run())
    assert value == 42
    assert took < LONG / 2, took  # not held in a wait until its bound


def test_no_wait_with_a_timer_due_within_it(node, long_wait, slow):
    op, _started, gate = slow
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(1))
            loop.call_later(0.2, gate.set)  # due within the wait's bound
            t0 = time.monotonic()
            got = await c.aevaluate(op.request(4))
            return got.value, time.monotonic() - t0

        value, took = _run(loop, run())
    assert value == 8
    assert took < LONG / 2, took


def test_the_wait_ends_at_its_bound(node, slow):
    # The default bound (a millisecond), and no event of the loop: the gate
    # is opened by a thread once the call's task awaits its future (the
    # wait ended and the loop turned), or after 40 s.
    op, started, gate = slow
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        def opener():
            started.wait(30)  # the node runs the op: the call is in flight
            end = time.monotonic() + 40
            while time.monotonic() < end:
                calls = list(c._last_achannel.calls.values())
                if calls and calls[0][0]._callbacks:  # awaited: the wait is over
                    break
                time.sleep(0.001)  # (polling a condition of another thread's)
            gate.set()

        async def run():
            await c.aevaluate(node_ops.double.request(1))
            threading.Thread(target=opener, daemon=True).start()
            t0 = time.monotonic()
            got = await c.aevaluate(op.request(6))
            return got.value, time.monotonic() - t0

        value, took = _run(loop, run())
    assert value == 12
    assert took < LONG / 2, took


def test_no_wait_with_another_task_ready(node, long_wait, slow):
    op, _started, gate = slow
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        async def opener():  # ready to run when the call starts
            for _ in range(3):
                await asyncio.sleep(0)
            gate.set()

        async def run():
            await c.aevaluate(node_ops.double.request(1))
            t0 = time.monotonic()
            task = asyncio.ensure_future(opener())
            got = await c.aevaluate(op.request(5))
            await task
            return got.value, time.monotonic() - t0

        value, took = _run(loop, run())
    assert value == 10
    assert took < LONG / 2, took


def test_concurrent_calls_each_get_their_own_reply(node, long_wait):
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        async def one(x):
            return [(await c.aevaluate(node_ops.double.request(100 * x + k))).value
                    for k in range(20)]

        async def run():
            return await asyncio.gather(*(one(x) for x in range(8)))

        out = _run(loop, run())
    assert out == [[2 * (100 * x + k) for k in range(20)] for x in range(8)]


def test_a_uvloop_channel_never_waits_inline(node):
    uvloop = pytest.importorskip("uvloop")
    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(3))).value == 6
            return c._last_achannel.waits

        assert _run(uvloop.new_event_loop(), run()) is None
