"""A ``fabric.connect`` client over its connection's life: ``aconnect``
from a coroutine (a node served on the same loop with ``await
node.serve()``), ``connect`` inside a running loop, the reconnect (calls on
a thread's or a loop's connection after it, the status a ``RelayFabric``
follows, the backoff schedule), and the exit of a process that did not
close its client. Real nodes on loopback; waits are on handshakes."""

import asyncio
import os
import subprocess
import sys

import pytest

import fabric
from fabric.node import Node, aconnect, connect
from fabric.node.client import Backoff, NodeClient

import node_ops
from conftest import free_port, wait_for
from served import serve, stop

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


async def _serving(tmp_path):
    """A node served on the running loop (``await node.serve()``), once it listens."""
    n = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(), listen="127.0.0.1:0")
    task = asyncio.create_task(n.serve())
    while n._address is None:  # it listens after a few turns of this loop
        assert not task.done(), task.exception()
        await asyncio.sleep(0)
    return n, task


async def _stopped(n, task):
    n.request_stop()
    await asyncio.wait_for(task, 30)


# ---- from a coroutine -------------------------------------------------------------

def test_aconnect_from_a_coroutine_to_a_node_served_on_the_same_loop(tmp_path):
    """``await node.serve()`` and ``await fabric.aconnect(...)`` in one
    asyncio program: the handshake is answered by the caller's own loop."""
    async def main():
        n, task = await _serving(tmp_path)
        try:
            async with await fabric.aconnect(n.url, timeout=10) as c:
                assert c.status == "connected" and c.node == n.node_id
                r = await c.aevaluate(node_ops.double.request(4))
                items = [x async for x in c.astream(node_ops.count.request(3))]
                assert n.stats()["replies"] >= 2
            assert c.status == "disconnected"
            return r.value, items
        finally:
            await _stopped(n, task)

    assert asyncio.run(main()) == (8, [0, 1, 2])


def test_aconnect_fails_as_connect_does(tmp_path):
    """Nothing listening: ``FabricUnavailable`` naming the URL; the client is closed."""
    port = free_port()  # nobody listens there

    async def main():
        with pytest.raises(fabric.FabricUnavailable, match=f"127.0.0.1:{port}"):
            await aconnect(f"fabric://127.0.0.1:{port}", timeout=10, reconnect=False)
    asyncio.run(main())


def test_connect_inside_a_running_loop_warns_and_its_timeout_points_at_aconnect(tmp_path):
    """``connect`` from a coroutine blocks that loop until the handshake: it
    warns so, and when the node is served on that loop (it cannot answer)
    the error at the timeout says to use ``aconnect``, not only 'no handshake'."""
    async def main():
        n, task = await _serving(tmp_path)
        try:
            with pytest.warns(RuntimeWarning, match="aconnect"):
                with pytest.raises(fabric.FabricUnavailable,
                                   match=r"no handshake .*await fabric\.aconnect"):
                    connect(n.url, timeout=0.5)
        finally:
            await _stopped(n, task)
    asyncio.run(main())


def test_connect_outside_a_loop_does_not_warn(node, recwarn):
    n = node()
    with connect(n.url) as c:
        assert c.evaluate(node_ops.double.request(2)).value == 4
    assert not [w for w in recwarn if "aconnect" in str(w.message)]


# ---- reconnect ----------------------------------------------------------------------

def _restart_on_the_same_port(tmp_path, a, c):
    """Stop node ``a``, wait for the client to notice, start ``b`` on a's port
    and wait for the client's new handshake; returns ``b``."""
    port = a.address[1]
    a.stop()
    wait_for(lambda: c.status == "reconnecting", "the client to notice the node went")
    b = Node(str(tmp_path / "b.ledger"), home=fabric.LocalFabric(),
             listen=f"127.0.0.1:{port}").start()
    wait_for(lambda: c.status == "connected", "the client's new handshake")
    return b


def test_the_first_sync_call_after_a_reconnect_is_not_failed_by_the_old_link(tmp_path):
    """A thread's blocking connection made before the reconnect is made
    again for its next call, which is answered by the new node (before: it
    failed with the old connection's error though the client said connected)."""
    a = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(),
             listen=f"127.0.0.1:{free_port()}").start()  # restarted on that port
    c = connect(a.url, timeout=10)
    b = None
    try:
        assert c.evaluate(node_ops.double.request(1)).value == 2
        assert c.sessions == 1
        b = _restart_on_the_same_port(tmp_path, a, c)
        assert c.sessions == 2
        assert c.evaluate(node_ops.double.request(2)).value == 4
        assert list(c.stream(node_ops.count.request(3))) == [0, 1, 2]
        assert b.stats()["replies"] == 2  # both answered by the new node
    finally:
        c.close()
        if b is not None:
            b.stop()


def test_the_first_async_call_after_a_reconnect_is_not_failed_by_the_old_link(tmp_path):
    """The same for a loop's connection (``aevaluate`` on one loop across the restart)."""
    a = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(),
             listen=f"127.0.0.1:{free_port()}").start()  # restarted on that port
    c = connect(a.url, timeout=10)
    b = None
    try:
        with asyncio.Runner() as runner:
            async def ask(x):
                return (await c.aevaluate(node_ops.double.request(x))).value
            assert runner.run(ask(1)) == 2
            b = _restart_on_the_same_port(tmp_path, a, c)
            assert runner.run(ask(2)) == 4
            assert runner.run(ask(3)) == 6
        assert b.stats()["replies"] == 2
    finally:
        c.close()
        if b is not None:
            b.stop()


def test_relay_fabric_built_on_a_client_follows_its_connection(tmp_path):
    """``RelayFabric(client)`` (not only ``client.relay()``) follows the link:
    connected, reconnecting while its node is away (calls refused at once,
    never sent), connected again, disconnected once the client closed."""
    a = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(),
             listen=f"127.0.0.1:{free_port()}").start()  # restarted on that port
    c = connect(a.url, timeout=10)
    r = fabric.RelayFabric(c)
    via = c.relay()
    b = None
    try:
        assert r.status == via.status == fabric.RelayStatus.CONNECTED
        assert r.evaluate(node_ops.double.request(5)).value == 10
        port = a.address[1]
        a.stop()
        wait_for(lambda: c.status == "reconnecting", "the client to notice the node went")
        assert r.status == via.status == fabric.RelayStatus.RECONNECTING
        with pytest.raises(fabric.FabricUnavailable, match="link is reconnecting"):
            r.evaluate(node_ops.double.request(6))
        assert r.stats()["refused_status"] == 1
        b = Node(str(tmp_path / "b.ledger"), home=fabric.LocalFabric(),
                 listen=f"127.0.0.1:{port}").start()
        wait_for(lambda: r.status == fabric.RelayStatus.CONNECTED, "the relay to follow")
        assert r.evaluate(node_ops.double.request(6)).value == 12
        # an explicit status is the relay's own: it no longer follows
        fixed = fabric.RelayFabric(c, status="disconnected")
        assert fixed.status == fabric.RelayStatus.DISCONNECTED
        r2 = fabric.RelayFabric(r)  # a relay of a relay follows it
        assert r2.status == fabric.RelayStatus.CONNECTED
    finally:
        c.close()
        if b is not None:
            b.stop()
    assert r.status == via.status == r2.status == fabric.RelayStatus.DISCONNECTED
    with pytest.raises(fabric.FabricUnavailable, match="link is disconnected"):
        r.evaluate(node_ops.double.request(5))


def test_a_relay_of_a_fabric_without_a_link_keeps_its_own_status():
    r = fabric.RelayFabric(fabric.LocalFabric())
    assert r.status == fabric.RelayStatus.CONNECTED
    r.set_status("reconnecting")
    assert r.status == fabric.RelayStatus.RECONNECTING


# ---- the reconnect schedule --------------------------------------------------------

def test_the_backoff_doubles_to_its_cap_with_jitter_that_only_shortens():
    top = Backoff(rng=lambda: 1.0 - 1e-12)  # the longest jitter: the nominal waits
    waits = [top.next() for _ in range(10)]
    nominal = [min(0.05 * 2 ** i, 5.0) for i in range(10)]
    assert waits == pytest.approx(nominal)
    assert max(waits) <= 5.0 and waits[-1] == pytest.approx(5.0)  # capped
    low = Backoff(rng=lambda: 0.0)  # the shortest: half of each
    assert [low.next() for _ in range(10)] == pytest.approx([w / 2 for w in nominal])
    import random
    rnd = random.Random(7)
    jittered = Backoff(rng=rnd.random)
    seen = [jittered.next() for _ in range(10)]
    assert all(w / 2 <= s <= w for s, w in zip(seen, nominal))
    assert len(set(seen)) == 10 and seen != nominal  # the jitter does vary
    low.reset()
    assert low.next() == pytest.approx(0.025)
    with pytest.raises(ValueError, match="base <= cap"):
        Backoff(base=2.0, cap=1.0)


def test_the_backoffs_jitter_never_moves_the_global_random_state():
    """A client waiting to reconnect draws its jitter from its own generator:
    an application's seeded ``random`` sequence is the same with or without
    clients backing off beside it; a forked child's jitter is its own."""
    import ast
    import os
    import random
    random.seed(1234)
    want = [random.random() for _ in range(3)]
    random.seed(1234)
    b = Backoff()
    waits = [b.next() for _ in range(20)]
    assert [random.random() for _ in range(3)] == want
    assert len(set(waits)) == 20
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its next draws, then exit at once
        try:
            os.write(w, repr([Backoff().rng() for _ in range(4)]).encode())
        finally:
            os._exit(0)
    os.close(w)
    got = b""
    while chunk := os.read(r, 4096):
        got += chunk
    os.close(r)
    os.waitpid(pid, 0)
    child = ast.literal_eval(got.decode())
    parent = [Backoff().rng() for _ in range(4)]
    assert len(child) == 4 and child != parent


def test_a_standalone_client_redials_on_its_backoff_and_resets_it_at_a_handshake(tmp_path):
    """No node yet: the client dials again and again, each wait longer (its
    schedule doubled once per failed dial); a node appears: the handshake
    resets the schedule."""
    port = free_port()
    c = NodeClient(f"fabric://127.0.0.1:{port}", timeout=10)
    n = None
    try:
        wait_for(lambda: c.stats()["dials"] >= 4, "four failed dials")
        assert c.status == "reconnecting"
        dials = c.stats()["dials"]
        # each failed dial doubled the next wait (the schedule is read, not timed)
        assert c.backoff.delay >= min(0.05 * 2 ** (dials - 2), 5.0)
        n = Node(str(tmp_path / "n.ledger"), home=fabric.LocalFabric(),
                 listen=f"127.0.0.1:{port}").start()
        wait_for(lambda: c.status == "connected", "the handshake with the new node")
        assert c.evaluate(node_ops.double.request(7)).value == 14
        assert c.backoff.delay == c.backoff.base
    finally:
        c.close()
        if n is not None:
            n.stop()


# ---- the exit ------------------------------------------------------------------------

def test_a_client_not_closed_ends_quietly_at_exit(tmp_path):
    """A process that used clients (sync and async) and never closed them
    exits 0 without 'Task was destroyed but it is pending!' on stderr (before,
    with 5 clients, one such line each: their tasks were left on their loop)."""
    proc, url = serve(tmp_path, "x", "--home", "node_ops:home")
    try:
        code = ("import asyncio, sys, fabric, node_ops\n"
                "cs = [fabric.connect(sys.argv[1]) for _ in range(5)]\n"
                "c = cs[0]\n"
                "print(sum(x.evaluate(node_ops.double.request(3)).value for x in cs))\n"
                "async def m():\n"
                "    return (await c.aevaluate(node_ops.double.request(4))).value\n"
                "print(asyncio.run(m()))\n")
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, HERE]))
        out = subprocess.run([sys.executable, "-c", code, url], env=env, capture_output=True,
                             text=True, timeout=120)
    finally:
        stop(proc)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["30", "8"]
    assert "Task was destroyed" not in out.stderr, out.stderr
    assert out.stderr == ""
