"""Reviewer repros for issue 13 (audit r1): behaviours the issue asks for
that no other test pins down."""

import asyncio
import threading

import pytest

import fabric
from fabric.node import NodeLimits, connect

import node_ops


def _bounded_until(pred, n=2_000_000):
    for _ in range(n):
        if pred():
            return True
    return False


def test_credit_keeps_the_producer_within_the_window(node):
    produced = []

    @fabric.op("r1.big_items")
    def big_items():
        for i in range(64):
            produced.append(i)
            yield bytes(64 * 1024)

    n = node(limits=NodeLimits(window=256 * 1024, max_frame=128 * 1024))
    with connect(n.url, window=256 * 1024) as c:
        s = c.stream(big_items.request())
        assert len(next(s)) == 65536
        # the node's sender runs out of credit (a handshake, no sleep)
        assert _bounded_until(
            lambda: c.node_status()["streams"]["backpressure_events"] >= 1, 2000)
        # 4 items fit in the window, +1 taken, +1 waiting for credit
        assert len(produced) <= 8, len(produced)
        s.close()


def test_a_cancelled_stream_is_not_recorded(node):
    started = threading.Event()

    @fabric.op("r1.endless")
    def endless():
        for i in range(10_000_000):
            started.set()
            yield i

    n = node()
    req = endless.request()
    with connect(n.url) as c:
        s = c.stream(req)
        assert next(s) == 0
        s.close()
        assert _bounded_until(lambda: n.stats().get("cancels", 0) >= 1)
        assert _bounded_until(lambda: n.status()["streams"]["open"] == 0, 5000)
    with connect(n.url, scope="held") as held:
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))


def test_cancel_reaches_an_async_generator_op(node):
    closed = threading.Event()

    @fabric.op("r1.aendless")
    async def aendless():
        try:
            for i in range(10_000_000):
                yield i
                await asyncio.sleep(0)
        finally:
            closed.set()

    n = node()
    with connect(n.url) as c:
        s = c.stream(aendless.request())
        assert next(s) == 0
        s.close()
        assert closed.wait(30), "the async producer was not cancelled"


@pytest.mark.xfail(strict=True, reason="a thread's sync channel outlives a reconnect (issue 13 audit)")
def test_the_first_sync_call_after_a_reconnect_is_not_failed_by_the_old_link(tmp_path):
    """Repro (fails at 461a078): the client says "connected" again after its
    node restarted, yet the first sync evaluate of a thread that used the
    client before fails with the OLD connection's error."""
    from fabric.node import Node
    a = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(), listen="127.0.0.1:0").start()
    port = a.address[1]
    c = connect(a.url, timeout=10)
    b = None
    try:
        assert c.evaluate(node_ops.double.request(1)).value == 2
        a.stop()
        assert _bounded_until(lambda: c.status != "connected")
        b = Node(str(tmp_path / "b.ledger"), home=fabric.LocalFabric(),
                 listen=f"127.0.0.1:{port}").start()
        assert _bounded_until(lambda: c.status == "connected", 50_000_000)
        assert c.evaluate(node_ops.double.request(2)).value == 4
    finally:
        c.close()
        if b is not None:
            b.stop()


@pytest.mark.xfail(strict=True, reason="connect blocks the caller's loop (issue 13 audit)")
def test_connect_from_a_coroutine_to_a_node_served_on_the_same_loop(tmp_path):
    """Repro (fails at 461a078): fabric.connect blocks the calling event loop
    until the handshake is done, so `await node.serve()` and a client in the
    same asyncio program deadlock until connect's timeout (no async connect)."""
    from fabric.node import Node

    async def main():
        n = Node(str(tmp_path / "a.ledger"), home=fabric.LocalFabric(), listen="127.0.0.1:0")
        t = asyncio.create_task(n.serve())
        for _ in range(10_000):
            try:
                n.address
                break
            except Exception:
                await asyncio.sleep(0)
        try:
            with connect(n.url, timeout=2) as c:
                return (await c.aevaluate(node_ops.double.request(4))).value
        finally:
            n.request_stop()
            await asyncio.wait_for(t, 30)

    assert asyncio.run(main()) == 8


def test_a_stream_ended_by_a_limit_is_not_recorded(node):
    @fabric.op("r1.then_too_big")
    def then_too_big():
        yield b"small"
        yield bytes(200_000)

    n = node(limits=NodeLimits(max_frame=64 * 1024, window=64 * 1024))
    req = then_too_big.request()
    with connect(n.url) as c:
        s = c.stream(req)
        assert next(s) == b"small"
        with pytest.raises(fabric.FabricError, match="larger than the largest frame"):
            next(s)
    with connect(n.url, scope="held") as held:
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))


@pytest.mark.xfail(strict=True, reason='only client.relay() follows the status (issue 13 audit)')
def test_relay_fabric_built_on_a_client_follows_its_connection(node):
    """Repro (fails at 461a078): the issue says RelayFabric(client) plugs in
    unchanged and its status follows the connection; only client.relay()
    does, a RelayFabric(client) says CONNECTED after the client closed."""
    n = node()
    c = connect(n.url)
    r = fabric.RelayFabric(c)
    assert r.status == fabric.RelayStatus.CONNECTED
    c.close()
    assert r.status == fabric.RelayStatus.DISCONNECTED


@pytest.mark.xfail(strict=True, reason='the count cap closes the connection (issue 13 audit)')
def test_a_request_over_the_principals_count_cap_is_refused_alone(node):
    """Repro (fails at 461a078): one request over principal_max_queued closes
    the whole connection, so the requests already admitted (running or
    queued) fail too, with 'ended the connection: : principal ...'."""
    gate = threading.Event()

    @fabric.op("r1.block")
    def block(i):
        gate.wait(30)
        return i

    n = node(limits=NodeLimits(max_running=1, principal_max_queued=5))
    with connect(n.url, timeout=30) as c:
        async def main():
            ts = [asyncio.ensure_future(c.aevaluate(block.request(i))) for i in range(20)]
            for _ in range(100_000):
                if n.stats().get("requests", 0) >= 7 or all(t.done() for t in ts):
                    break
                await asyncio.sleep(0)
            gate.set()
            return await asyncio.gather(*ts, return_exceptions=True)
        res = asyncio.run(main())
    ok = [r for r in res if not isinstance(r, Exception)]
    refused = [r for r in res if isinstance(r, Exception)]
    assert len(ok) >= 6, [str(r)[:120] for r in refused[:2]]
    assert all("cap 5" in str(r) for r in refused)
