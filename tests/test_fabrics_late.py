"""ContentAddressedFabric records the late reply of a home computation that
goes on after its caller stopped waiting (``pending_reply``), as
LedgeredRelayFabric does: the same recording path, shared."""

import asyncio
import threading

import pytest

import fabric
from conftest import wait_for

REG = fabric.OpRegistry()
GATES: dict[str, threading.Event] = {}
STARTED: dict[str, threading.Event] = {}


@fabric.op("late.gated", registry=REG)
def gated(name):
    """Says it started, then waits for the test to open its gate."""
    STARTED[name].set()
    if not GATES[name].wait(60):
        raise TimeoutError("the test never opened the gate")
    return f"done {name}"


@fabric.op("late.gated_fail", registry=REG)
def gated_fail(name):
    STARTED[name].set()
    GATES[name].wait(60)
    raise ValueError(f"failed {name}")


@fabric.op("late.gated_uncacheable", registry=REG, sharing="uncacheable")
def gated_uncacheable(name):
    STARTED[name].set()
    GATES[name].wait(60)
    return name


def gate(name):
    GATES[name] = threading.Event()
    STARTED[name] = threading.Event()
    return GATES[name], STARTED[name]


@pytest.fixture
def node(cassette_factory):
    home = fabric.LocalFabric(ops=REG)
    n = fabric.ContentAddressedFabric("n1", cassette_factory("n1"), home=home)
    yield n
    for g in GATES.values():
        g.set()
    home.close()


def test_a_late_reply_past_the_deadline_is_recorded_and_announced(node):
    release, started = gate("deadline")
    request = gated.request("deadline")
    with pytest.raises(fabric.DeadlineExceeded) as info:
        node.evaluate(request, timeout=0.05)  # the op waits on the gate: it cannot finish
    assert started.is_set()
    pending = info.value.pending_reply
    assert request.key not in node.cassette
    release.set()
    assert pending.result(timeout=30).value == "done deadline"  # settled once recorded
    assert request.key in node.cassette
    assert "n1" in node.holders.holders_of(request.key)
    # A later caller gets the recorded reply, without computing again.
    reply = node.evaluate(request)
    assert reply.value == "done deadline" and reply.source == "local"


def test_a_cancelled_async_callers_late_reply_is_recorded(node):
    release, started = gate("cancel")
    request = gated.request("cancel")

    async def main():
        task = asyncio.ensure_future(node.aevaluate(request))
        await asyncio.to_thread(started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert request.key not in node.cassette
    release.set()
    wait_for(lambda: request.key in node.cassette, "the late reply to be recorded")
    assert node.evaluate(request).source == "local"


def test_a_late_error_or_an_uncacheable_reply_is_not_recorded(node):
    release, started = gate("fail")
    request = gated_fail.request("fail")
    with pytest.raises(fabric.DeadlineExceeded) as info:
        node.evaluate(request, timeout=0.05)
    release.set()
    with pytest.raises(ValueError, match="failed fail"):
        info.value.pending_reply.result(timeout=30)
    assert request.key not in node.cassette

    release, started = gate("unc")
    request = gated_uncacheable.request("unc")
    with pytest.raises(fabric.DeadlineExceeded) as info:
        node.evaluate(request, timeout=0.05)
    home_pending = info.value.pending_reply  # home's own future: nothing wraps it
    release.set()
    assert home_pending.result(timeout=30).value == "unc"
    assert request.key not in node.cassette


class SlowHome:
    """A home that does not bound its own wait (no ``timeout`` keyword, no
    ``honours_timeout``): the node runs it on a worker thread of its own."""

    def __init__(self):
        self.gate = threading.Event()
        self.started = threading.Event()
        self.calls = 0

    def evaluate(self, request, grants=None):
        self.calls += 1
        self.started.set()
        if not self.gate.wait(60):
            raise TimeoutError("the test never opened the gate")
        return fabric.EvalReply("slow", [], None, request.key, "computed")

    def stream(self, request, grants=None):
        self.started.set()
        self.gate.wait(60)
        return iter(["slow"])


@pytest.fixture
def slow(cassette_factory):
    home = SlowHome()
    yield home, fabric.ContentAddressedFabric("n2", cassette_factory("n2"), home=home)
    home.gate.set()


def test_a_home_that_does_not_bound_its_wait_times_out_and_its_reply_is_recorded(slow):
    home, node = slow
    request = fabric.EvalRequest("late.slow", (1,))
    with pytest.raises(fabric.DeadlineExceeded, match="home did not answer") as info:
        node.evaluate(request, timeout=0.05)  # the home waits on the gate
    assert home.started.is_set() and request.key not in node.cassette
    home.gate.set()
    assert info.value.pending_reply.result(timeout=30).value == "slow"
    assert request.key in node.cassette
    assert node.evaluate(request).source == "local" and home.calls == 1


def test_the_same_from_asyncio(slow):
    home, node = slow
    request = fabric.EvalRequest("late.slow", (2,))

    async def main():
        with pytest.raises(fabric.DeadlineExceeded, match="home did not answer") as info:
            await node.aevaluate(request, timeout=0.05)
        return info.value

    exc = asyncio.run(main())
    home.gate.set()
    assert exc.pending_reply.result(timeout=30).value == "slow"
    assert request.key in node.cassette


def test_a_home_stream_that_does_not_start_in_time(slow):
    home, node = slow
    with pytest.raises(fabric.DeadlineExceeded, match="home did not answer"):
        node.stream(fabric.EvalRequest("late.slow", (3,), stream=True), timeout=0.05)
