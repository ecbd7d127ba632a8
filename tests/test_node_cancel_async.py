"""A node's cancel reaches an async generator op mid-await (issue 13: "an
async generator cancelled" within one round trip): the op, parked at an
await between items, sees ``CancelledError`` there, and the stream ends as
cancelled, never recorded. (A sync generator op cannot be interrupted
mid-item: it is closed once its item is ready; see tests/test_node.py.)"""

import asyncio
import threading

import pytest

import fabric
from fabric.node import connect

from conftest import wait_for


@pytest.fixture
def parked():
    """``(op, seen)``: an async generator op that yields ``"first"`` (when
    called with True) and then awaits an asyncio.Event nobody sets; what its
    ``except`` / ``finally`` saw goes to ``seen`` (a list, and
    ``seen.cancelled`` a threading.Event).
    At the end of the test the op is released in any case (its event set on
    its own loop), so a failing run leaves no op parked behind it."""
    seen = _Seen()
    held = {}

    @fabric.op("tests.node_cancel_async.parked")
    async def parked_op(first):
        never = asyncio.Event()
        held["loop"], held["event"] = asyncio.get_running_loop(), never
        try:
            if first:
                yield "first"
            seen.append("awaiting")
            await never.wait()
            seen.append("released")
        except asyncio.CancelledError:
            seen.append("CancelledError")
            seen.cancelled.set()
            raise
        finally:
            seen.append("finally")

    yield parked_op, seen
    if "loop" in held and not held["loop"].is_closed():
        try:
            held["loop"].call_soon_threadsafe(held["event"].set)
        except RuntimeError:  # closed meanwhile
            pass


class _Seen(list):
    def __init__(self):
        super().__init__()
        self.cancelled = threading.Event()


@pytest.mark.parametrize("first", [True, False], ids=["after-an-item", "before-any"])
@pytest.mark.parametrize("timeout", [None, 60.0], ids=["no-timeout", "timeout"])
def test_cancel_reaches_an_async_generator_op_parked_at_an_await(node, parked, first, timeout):
    """Parked after its first item (the node pulls ahead under credit) or
    before any (the stream's start); with a timeout the op's events are
    pulled on one more worker thread (LocalFabric's ``_sync_within``)."""
    op, seen = parked
    n = node()
    req = op.request(first)
    with connect(n.url) as c:
        s = c.stream(req, timeout=timeout)
        if first:
            assert next(s) == "first"
        wait_for(lambda: "awaiting" in seen, "the op to park at its await")
        s.close()
        assert seen.cancelled.wait(30), f"the parked op was not cancelled: {seen}"
        wait_for(lambda: "finally" in seen, "the op's finally")
        wait_for(lambda: n.status()["streams"]["open"] == 0, "the stream to end")
    assert seen == ["awaiting", "CancelledError", "finally"], seen
    assert n.stats()["cancels"] == 1
    with connect(n.url, scope="held") as held:  # ended as cancelled: not recorded
        with pytest.raises(fabric.ContentNotHeld):
            list(held.stream(req))
