"""A loop's connection hands a reply to the task awaiting it in the loop
turn that read it: the task is stepped from the read callback, not through
the loop's ready queue and a second turn. The task runs in its own context,
concurrent calls each get their own reply, and a reply completed while a
task is running (no read callback) takes the ordinary way."""

import asyncio
import contextvars
import selectors
import threading

import pytest

from fabric.node import client as client_mod
from fabric.node import connect
from fabric.node.client import _wake

import node_ops


class CountingSelector(selectors.DefaultSelector):
    """The loop's own selector, counting its waits (one a loop turn);
    ``turned`` is set at each (a thread's handshake with the loop's turns)."""

    def __init__(self):
        super().__init__()
        self.waits = 0
        self.turned = threading.Event()

    def select(self, timeout=None):
        self.waits += 1
        self.turned.set()
        return super().select(timeout)


def loop_waits_of_calls_in_turn(n):
    """``aevaluate`` of 100 requests, then of the same 200 times in turn
    (held), on a new asyncio loop: (the waits of the loop's selector during
    the 200, whether the channel may wait inline)."""
    sel = CountingSelector()
    loop = asyncio.SelectorEventLoop(sel)
    with connect(n.url, timeout=60) as c:
        reqs = [node_ops.double.request(x) for x in range(100)]

        async def run():
            for r in reqs:  # held from now on; the channel is up
                await c.aevaluate(r)
            before = sel.waits
            for r in reqs * 2:
                assert (await c.aevaluate(r)).value == 2 * r.args[0]
            return sel.waits - before, c._last_achannel.waits is not None

        try:
            return loop.run_until_complete(run())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()


def test_a_reply_resumes_its_call_in_the_turn_that_read_it(node, monkeypatch):
    # the loop reads every reply (no call waits inline: test_client_inline)
    monkeypatch.setattr(client_mod, "_inline_waits", lambda loop, sock: None)
    waits, inline = loop_waits_of_calls_in_turn(node())
    assert not inline
    # one wait a call (for the reply); the task's step through the
    # ready queue was a second (400 and more)
    assert waits < 300, waits


@pytest.mark.parametrize("loop_name", ["asyncio", "uvloop"])
def test_each_call_resumes_in_its_own_context(node, loop_name):
    if loop_name == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        new_loop = uvloop.new_event_loop
    else:
        new_loop = asyncio.new_event_loop
    var = contextvars.ContextVar("var")
    n = node()
    with connect(n.url, timeout=60) as c:
        async def one(x):
            var.set(x)
            got = []
            for k in range(20):
                r = await c.aevaluate(node_ops.double.request(1000 * x + k))
                got.append((r.value, var.get()))
            return got

        async def run():
            return await asyncio.gather(*(one(x) for x in range(1, 30)))

        loop = new_loop()
        try:
            out = loop.run_until_complete(run())
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
        assert out == [[(2 * (1000 * x + k), x) for k in range(20)] for x in range(1, 30)]


def test_a_reply_completed_from_a_running_task_takes_the_ready_queue():
    """``_wake`` from inside a task (not a read callback): stepping the
    awaiting task there would fail ("Cannot enter into task ..."); the
    future is completed as ``set_result`` does, and its task wakes later."""
    async def run():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        order = []

        async def waiter():
            order.append(("got", await fut))

        t = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)  # the waiter awaits fut now
        _wake(fut, 7, loop)
        order.append("after wake")
        await asyncio.wait_for(t, 30)
        return order

    assert asyncio.run(run()) == ["after wake", ("got", 7)]


def test_a_reply_completed_from_a_callback_steps_the_task_at_once():
    async def run():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        order = []
        done = loop.create_future()

        async def waiter():
            order.append(("got", await fut))

        t = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)

        def callback():  # as the loop's read callback: no task is running
            _wake(fut, 7, loop)
            order.append("after wake")
            done.set_result(None)

        loop.call_soon(callback)
        await asyncio.wait_for(done, 30)
        await asyncio.wait_for(t, 30)
        return order

    assert asyncio.run(run()) == [("got", 7), "after wake"]
