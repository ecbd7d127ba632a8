"""``fabric serve --principal-max-queued N``: the per-principal count cap
of requests waiting for a slot, as a real process. A value that is not
positive is one line naming the limit, as the other limit flags'; a
request over the cap is refused alone with ``LimitExceeded`` naming it,
and the one waiting is served once the slot frees."""

import asyncio

import pytest

from fabric.node import connect
from fabric.node import protocol as P

import gates
import node_ops
from test_cli import one_line_error, run
from served import serve, stop


@pytest.mark.parametrize("value", ["0", "-3"])
def test_a_count_cap_that_is_not_positive_is_one_line_naming_it(tmp_path, value):
    cassette = tmp_path / "refused.ledger"
    one_line_error(run("serve", "--listen", "127.0.0.1:0", "--cassette", str(cassette),
                       "--principal-max-queued", value),
                   "fabric serve: error:",
                   f"NodeLimits.principal_max_queued must be a positive number, not {value}")
    assert not cassette.exists()  # refused before anything started


def test_a_request_over_the_count_cap_is_refused_alone(tmp_path):
    """One slot (``--max-running 1``) held by a stream waiting at a gate; a
    cap of 1: of two requests sent next, the first waits and the second is
    refused (``LimitExceeded`` naming ``principal_max_queued=1``); once the
    gate opens, the stream ends whole and the waiting request is served."""
    proc, url = serve(tmp_path, "capped", "--home", "node_ops:home", "--max-running", "1",
                      "--principal-max-queued", "1")
    gate = str(tmp_path / "gate")
    try:
        with connect(url, timeout=60) as c:
            async def main():
                # (the loop's connection made first: the requests below go in order)
                assert (await c.aevaluate(node_ops.double.request(1))).value == 2
                items = c.astream(node_ops.gated_count.request(3, gate)).__aiter__()
                assert await items.__anext__() == 0  # running: it holds the one slot
                first = asyncio.ensure_future(c.aevaluate(node_ops.double.request(5)))
                second = asyncio.ensure_future(c.aevaluate(node_ops.double.request(6)))
                with pytest.raises(P.LimitExceeded) as refused:
                    await second
                assert not first.done()  # it waits for the slot
                gates.open_gate(gate)
                rest = [x async for x in items]
                return str(refused.value), (await first).value, rest

            message, first, rest = asyncio.run(main())
        assert "principal_max_queued=1" in message and "refused" in message, message
        assert (first, rest) == (10, [1, 2])
    finally:
        gates.open_gate(gate)
        stop(proc)
