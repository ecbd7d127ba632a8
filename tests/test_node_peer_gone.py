"""A node whose client left with requests in flight: the requests' ends
(their replies, or their errors) are not written to the closed connection,
and nothing is logged as an exception never retrieved (uvloop's transports
raise on a write after close; asyncio's own drop it)."""

import asyncio
import gc
import logging
import threading

import pytest

import fabric
from fabric.node import Node, connect

from conftest import wait_for

GATE = threading.Event()
STARTED = threading.Semaphore(0)


@fabric.op("node.peer_gone.block")
def block(i):
    STARTED.release()
    GATE.wait(60)
    return i


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_requests_in_flight_when_the_client_leaves_end_quietly(tmp_path, caplog, loop):
    if loop == "uvloop":
        pytest.importorskip("uvloop")
    GATE.clear()
    n = Node(str(tmp_path / "n.ledger"), node_id="n", home=fabric.LocalFabric(),
             listen="127.0.0.1:0", loop=loop).start()
    try:
        with connect(n.url, timeout=60) as c, caplog.at_level(logging.ERROR, "asyncio"):
            async def run():
                calls = [asyncio.ensure_future(c.aevaluate(block.request(i))) for i in range(3)]
                loop_ = asyncio.get_running_loop()
                for _ in range(3):  # each op running on the node
                    assert await loop_.run_in_executor(None, STARTED.acquire, True, 30)
                c._last_achannel.abort()  # the client leaves
                for f in calls:
                    with pytest.raises(fabric.FabricUnavailable):
                        await f

            asyncio.run(run())
            wait_for(lambda: n.stats()["connections"] == 1, "the node to see its peer gone")
            GATE.set()  # the ops end: their replies have nowhere to go
            wait_for(lambda: n._running == 0, "the requests to end")
            n.status()  # a turn of the node's loop after them
            gc.collect()
            assert c.evaluate(block.request(7)).value == 7  # the node serves on
        assert not [r for r in caplog.records if "never retrieved" in r.getMessage()]
    finally:
        GATE.set()
        n.stop()
