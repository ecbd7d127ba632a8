"""A `fabric serve` process ended by SIGTERM: what is still running when
its drain timeout expires ends with a diagnostic that says so."""

import signal

import pytest

import fabric
from fabric.node import connect

import gates
import node_ops
from test_node_fleet import fleet, serve  # noqa: F401 (the fixture)


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
