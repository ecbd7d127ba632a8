"""A `fabric serve` process ended by SIGTERM: what is still running when
its drain timeout expires ends with a diagnostic that says so."""

import signal

import pytest

import fabric
from fabric.node import connect

import gates
import node_ops
from conftest import spin_until
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
