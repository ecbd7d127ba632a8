"""A `fabric serve` process ended by SIGTERM: what is still running when
its drain timeout expires ends with a diagnostic that says so."""

import logging
import signal
import socket

import pytest

import fabric
from fabric.node import connect

import gates
import node_ops
from conftest import hello_bytes, spin_until, wait_for
from served import fleet  # noqa: F401 (the fixture)


def test_a_stream_open_at_the_drain_timeout_ends_with_a_diagnostic(fleet, tmp_path):
    proc, url = fleet("s", "--home", "node_ops:home", "--log-level", "warning",
                      "--drain-timeout", "0.5")
    gate = str(tmp_path / "gate")
    try:
        with connect(url, timeout=60) as c:
            s = c.stream(node_ops.gated_count.request(5, gate))
            assert next(s) == 0  # in flight: its producer waits at the gate
            proc.send_signal(signal.SIGTERM)
            # the handshake is the node's own: it drains, gives up, ends the stream
            with pytest.raises(fabric.FabricUnavailable) as ei:
                next(s)
    finally:
        gates.open_gate(gate)  # the producer's thread ends, the process can exit
    msg = str(ei.value)
    assert "node s shut down after its drain timeout (0.5 s)" in msg, msg
    assert "--drain-timeout" in msg and "NodeLimits.drain_timeout" in msg, msg
    assert msg != "cancelled"
    assert proc.wait(30) == 0
    err = proc.stderr.read()
    assert "still running after 0.5 s" in err, err[-2000:]


def test_requests_running_or_waiting_at_the_drain_timeout_say_why(node, gated):
    """In process: one slot held by a blocked request, a second one waiting
    for it; a drained stop whose timeout expires ends both with the
    diagnostic (the waiting one was answered with nothing before)."""
    import asyncio

    from fabric.node import NodeLimits

    block, gate = gated
    n = node(limits=NodeLimits(max_running=1, drain_timeout=0.3))
    try:
        with connect(n.url, timeout=60) as c:
            async def main():
                ts = [asyncio.ensure_future(c.aevaluate(block.request(i))) for i in range(2)]
                # both reached the node: one runs, one waits
                await spin_until(lambda: n.stats().get("requests", 0) >= 2)
                assert [e["state"] for e in n.stats()["streams"]] == ["running", "queued"]
                n._loop.call_soon_threadsafe(n.request_stop, True)
                return await asyncio.gather(*ts, return_exceptions=True)
            res = asyncio.run(main())
    finally:
        gate.set()
    assert len(res) == 2
    for r in res:
        assert isinstance(r, fabric.FabricUnavailable), repr(r)
        assert "node n0 shut down after its drain timeout (0.3 s)" in str(r), str(r)


def _asyncio_errors(caplog):
    """The ERROR (and worse) records of asyncio's logger (uvloop logs there
    too): a task destroyed pending, an exception never retrieved, a
    callback that raised, a transport left open."""
    return [f"{r.levelname} {r.getMessage()}" for r in caplog.records
            if r.name.split(".")[0] == "asyncio" and r.levelno >= logging.ERROR]


def _busy(address):
    """Raw sockets: one that never sends its HELLO, one past its handshake,
    and (the node at max_connections) two it refuses, which linger."""
    raws = [socket.create_connection(address, timeout=30) for _ in range(4)]
    raws[1].sendall(hello_bytes())
    return raws


@pytest.mark.parametrize("how", ["stop", "cancel"])
@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_stopping_a_busy_node_logs_no_asyncio_error(tmp_path, caplog, loop, how):
    """Streams in flight, a connection in its handshake, two refused ones
    lingering: ``stop()`` (a started node) or its ``serve()`` task
    cancelled ends every connection's task itself (cancelled and awaited):
    none is left to the loop's end, where asyncio's own loop and uvloop
    log one that ends cancelled as an error, on the node's loop or the
    clients'. A node whose ``serve()`` returned leaves no task behind."""
    import asyncio
    import gc
    import logging

    from fabric.node import Node, NodeLimits, aconnect
    from fabric.node.loops import loop_factory

    if loop == "uvloop":
        pytest.importorskip("uvloop")
    caplog.set_level(logging.DEBUG, logger="asyncio")
    gate = str(tmp_path / "gate")
    # 3 clients (a sync one connects twice: its sync and async channels), 2
    # raw connections: the 2 more are refused
    kw = dict(node_id="n", home=fabric.LocalFabric(), listen="127.0.0.1:0",
              limits=NodeLimits(max_connections=(6 if how == "stop" else 3) + 2))
    raws = []

    def refused(n):
        return lambda: n.stats().get("refused_connections", 0) == 2

    try:
        if how == "stop":
            n = Node(str(tmp_path / "n.ledger"), loop=loop, **kw).start()
            try:
                cs = [connect(n.url, timeout=30, reconnect=False) for _ in range(3)]
                streams = [c.stream(node_ops.gated_count.request(5, gate)) for c in cs]
                assert [next(s) for s in streams] == [0, 0, 0]  # in flight, at the gate
                raws = _busy(n.address)
                wait_for(refused(n), "the refusals")
            finally:
                n.stop()
            for s in streams:
                with pytest.raises(fabric.FabricUnavailable, match="node n stopped"):
                    list(s)
            for c in cs:
                c.close()
        else:
            async def main():
                n = Node(str(tmp_path / "n.ledger"), **kw)
                task = asyncio.create_task(n.serve())
                await n.listening()
                cs = [await aconnect(n.url, timeout=30, reconnect=False) for _ in range(3)]
                its = [c.astream(node_ops.gated_count.request(5, gate)).__aiter__()
                       for c in cs]
                assert [await it.__anext__() for it in its] == [0, 0, 0]
                raws.extend(_busy(n.address))
                assert await spin_until(refused(n))  # (socket reads: a bounded spin)
                task.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await task
                assert asyncio.all_tasks() == {asyncio.current_task()}  # none of the node's
                for it in its:
                    with pytest.raises(fabric.FabricUnavailable, match="node n stopped"):
                        await it.__anext__()
                for c in cs:
                    await c.aclose()
            with asyncio.Runner(loop_factory=loop_factory(loop)[0]) as runner:
                runner.run(main())
    finally:
        gates.open_gate(gate)
        for r in raws:
            r.close()
    gc.collect()  # (a task destroyed pending is logged when it is collected)
    assert _asyncio_errors(caplog) == []
