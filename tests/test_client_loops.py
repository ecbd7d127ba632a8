"""The async client finds the running loop's channel without asking asyncio
for the running loop when it can (asyncio's own loop names the thread that
runs it): calls from several loops, in several threads, one after another
and interleaved, each reach the node on their own loop's channel; a dropped
channel fails its in-flight call fast; a missed deadline still fails and
cleans up; many concurrent calls on one channel each get their own reply."""

import asyncio
import threading

import pytest

import fabric
from fabric.node import connect

import node_ops


def test_two_loops_in_two_threads_interleaved_each_use_their_own_channel(node):
    n = node()
    with connect(n.url, timeout=60) as c:
        turns = [threading.Event() for _ in range(2)]
        out = {0: [], 1: []}
        errors = []
        loops = {}

        async def run(me):
            loops[me] = asyncio.get_running_loop()
            for i in range(20):  # strictly alternating: the last channel is the other loop's
                if not turns[me].wait(60):
                    raise AssertionError("the other thread did not hand over")
                turns[me].clear()
                r = await c.aevaluate(node_ops.double.request(100 * me + i))
                out[me].append(r.value)
                assert c._last_achannel.loop is asyncio.get_running_loop()
                turns[1 - me].set()

        def thread(me):
            try:
                asyncio.run(run(me))
            except BaseException as exc:  # reported by the main thread
                errors.append(exc)
                turns[1 - me].set()

        ts = [threading.Thread(target=thread, args=(k,)) for k in range(2)]
        for t in ts:
            t.start()
        turns[0].set()
        for t in ts:
            t.join(120)
        assert not errors, errors
        assert out == {k: [2 * (100 * k + i) for i in range(20)] for k in range(2)}
        assert loops[0] is not loops[1]


def test_a_new_loop_on_the_same_thread_gets_a_new_channel(node):
    n = node()
    with connect(n.url, timeout=60) as c:
        async def run(x):
            r = await c.aevaluate(node_ops.double.request(x))
            return r.value, c._last_achannel, asyncio.get_running_loop()

        v1, ch1, loop1 = asyncio.run(run(1))
        v2, ch2, loop2 = asyncio.run(run(2))  # the first loop has ended (closed)
        assert (v1, v2) == (2, 4)
        assert ch1 is not ch2 and ch1.loop is loop1 and ch2.loop is loop2
        assert ch1.dead  # closed with its loop


def test_one_loop_run_by_two_threads_in_turn(node):
    """A loop stopped on one thread and run again on another: its channel is
    found from either (the loop names the thread running it now)."""
    n = node()
    loop = asyncio.new_event_loop()
    with connect(n.url, timeout=60) as c:
        async def call(x):
            return (await c.aevaluate(node_ops.double.request(x))).value

        got = []
        for k in range(3):
            t = threading.Thread(target=lambda k=k: got.append(
                loop.run_until_complete(call(k))))
            t.start()
            t.join(60)
        got.append(loop.run_until_complete(call(10)))  # and from this thread
        assert got == [0, 2, 4, 20]
        assert len([ch for ch in c._achannels.values() if not ch.dead]) == 1
        loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


def test_many_concurrent_calls_on_one_channel_each_get_their_own_reply(node):
    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            xs = list(range(300))
            got = await asyncio.gather(*(c.aevaluate(node_ops.double.request(x)) for x in xs))
            again = await asyncio.gather(*(c.aevaluate(node_ops.double.request(x))
                                           for x in reversed(xs)))  # held now: hits
            chans = {id(ch) for ch in c._achannels.values()}
            return [r.value for r in got], [r.value for r in again], chans, \
                c._last_achannel.calls

        got, again, chans, left = asyncio.run(run())
        assert got == [2 * x for x in range(300)]
        assert again == [2 * x for x in reversed(range(300))]
        assert len(chans) == 1 and left == {}


def test_a_dropped_channel_fails_the_in_flight_call_fast(node):
    gate = threading.Event()

    @fabric.op("client.loops.block")
    def block():
        gate.wait(60)
        return 1

    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(3))).value == 6
            ch = c._last_achannel
            call = asyncio.ensure_future(c.aevaluate(block.request()))
            while not ch.calls:  # sent (bounded: the call is sent on its first step)
                await asyncio.sleep(0)
            ch.transport.abort()  # the connection drops under the call
            with pytest.raises(fabric.FabricUnavailable, match="lost|ended"):
                await asyncio.wait_for(call, 30)
            assert ch.dead and ch.calls == {}
            gate.set()
            return (await c.aevaluate(node_ops.double.request(4))).value  # a new channel

        try:
            assert asyncio.run(run()) == 8
        finally:
            gate.set()


def test_a_missed_deadline_fails_and_cleans_up(node):
    gate = threading.Event()

    @fabric.op("client.loops.slow")
    def slow():
        gate.wait(60)
        return 1

    n = node()
    with connect(n.url, timeout=60) as c:
        async def run():
            assert (await c.aevaluate(node_ops.double.request(5))).value == 10
            ch = c._last_achannel
            with pytest.raises(fabric.DeadlineExceeded, match="did not answer"):
                await c.aevaluate(slow.request(), timeout=0.2)
            assert ch.calls == {}  # given up on (the node was told)
            gate.set()
            value = (await c.aevaluate(node_ops.double.request(6))).value
            return value, c._last_achannel is ch and not ch.dead  # the same channel goes on

        try:
            assert asyncio.run(run()) == (12, True)
        finally:
            gate.set()
