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
from test_client_wake import CountingSelector, loop_waits_of_calls_in_turn

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


def _slow_call(node, op, x, arrange):
    """On a new asyncio loop (its selector a ``CountingSelector``), the
    channel up (a held call), then ``arrange(loop, selector)`` (what is to
    end or prevent the wait; it may return an awaitable, awaited after the
    call), then ``op(x)``'s call timed: (its value, its seconds)."""
    n = node()
    sel = CountingSelector()
    loop = asyncio.SelectorEventLoop(sel)
    with connect(n.url, timeout=60) as c:
        async def run():
            await c.aevaluate(node_ops.double.request(1))  # the channel is up
            after = arrange(loop, sel)
            t0 = time.monotonic()
            got = await c.aevaluate(op.request(x))
            took = time.monotonic() - t0
            if after is not None:
                await after
            return got.value, took

        return _run(loop, run())


def test_calls_in_turn_take_their_replies_without_a_turn_of_the_loop(node, long_wait):
    waits, inline = loop_waits_of_calls_in_turn(node())
    assert inline
    # one wait a call through the loop (200); inline, none but a reply that
    # came in two reads (loopback: rare)
    assert waits < 20, waits


def test_an_event_of_the_loop_ends_the_wait_at_once(node, long_wait, slow):
    op, started, gate = slow

    def arrange(loop, sel):
        # another thread's callback for the loop (its wake-up pipe) opens
        # the gate: the call's reply comes only after it ran
        threading.Thread(target=lambda: (started.wait(30),
                                         loop.call_soon_threadsafe(gate.set)),
                         daemon=True).start()

    value, took = _slow_call(node, op, 21, arrange)
    assert value == 42
    assert took < LONG / 2, took  # not held in a wait until its bound


def test_no_wait_with_a_timer_due_within_it(node, long_wait, slow):
    op, _started, gate = slow
    def arrange(loop, sel):
        loop.call_later(0.2, gate.set)  # due within the wait's bound

    value, took = _slow_call(node, op, 4, arrange)
    assert value == 8
    assert took < LONG / 2, took


def test_the_wait_ends_at_its_bound(node, slow):
    # The default bound (a millisecond), and no event of the loop: a thread
    # opens the gate once the loop turns again (the wait is over and the
    # call awaits its reply through the loop), or after 40 s.
    op, started, gate = slow

    def opener(sel):
        try:
            started.wait(30)  # the node runs the op: the call is in flight
            sel.turned.wait(40)
        finally:
            gate.set()

    def arrange(loop, sel):
        sel.turned.clear()  # (the loop does not turn before the call waits)
        threading.Thread(target=opener, args=(sel,), daemon=True).start()

    value, took = _slow_call(node, op, 6, arrange)
    assert value == 12
    assert took < LONG / 2, took


def test_no_wait_with_another_task_ready(node, long_wait, slow):
    op, _started, gate = slow

    async def opener():  # ready to run when the call starts
        for _ in range(3):
            await asyncio.sleep(0)
        gate.set()

    value, took = _slow_call(node, op, 5, lambda loop, sel: asyncio.ensure_future(opener()))
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
