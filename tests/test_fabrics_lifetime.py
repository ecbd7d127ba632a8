"""A ContentAddressedFabric the user drops is freed at once, by reference
counting: nothing it keeps refers back to it, so it lets go of its
cassette without waiting for the cyclic garbage collector."""

import asyncio
import gc
import sys
import traceback
import weakref

import pytest

import fabric


@pytest.fixture
def no_cyclic_gc():
    was = gc.isenabled()
    gc.collect()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def _use(fab):
    """Takes the fabric through the plan's paths: a miss held on the direct
    home path, a hit, a full resolution's miss, a call and explain()."""
    reg = fabric.OpRegistry()

    @fabric.op("life.double", registry=reg)
    def double(x):
        return 2 * x

    fab.home = fabric.LocalFabric(reg)
    assert fab.evaluate(double.request(1)).source == "home"
    assert fab.evaluate(double.request(1)).source == "local"
    assert fab.evaluate(double.request(2), timeout=30).value == 4
    assert fab.call(double, 3) == 6
    assert fab.explain(double.request(1)) is not None


def test_a_dropped_fabric_is_freed_without_the_cyclic_gc(tmp_path, no_cyclic_gc):
    with fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        fab = fabric.ContentAddressedFabric("a", cas)
        _use(fab)
        assert sys.getrefcount(cas) > refs  # the fabric holds it
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs  # let go: the user's alone again


def test_a_dropped_fabric_with_peers_is_freed_without_the_cyclic_gc(tmp_path, no_cyclic_gc):
    with fabric.EvalCassette(str(tmp_path / "b.ledger")) as other, \
            fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        peer = fabric.ContentPeer("b", fabric.ContentServeFabric(other))
        fab = fabric.ContentAddressedFabric("a", cas, peers=[peer])
        _use(fab)
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs


def test_a_fabric_dropped_after_async_misses_is_freed_without_the_cyclic_gc(
        tmp_path, no_cyclic_gc):
    reg = fabric.OpRegistry()

    @fabric.op("life.triple", registry=reg)
    def triple(x):
        return 3 * x

    async def use(fab):
        assert (await fab.aevaluate(triple.request(1))).source == "home"  # the peer first
        assert (await fab.aevaluate(triple.request(1))).source == "local"

    with fabric.EvalCassette(str(tmp_path / "b.ledger")) as other, \
            fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        fab = fabric.ContentAddressedFabric(
            "a", cas, peers=[fabric.ContentPeer("b", fabric.ContentServeFabric(other))],
            home=fabric.LocalFabric(reg))
        asyncio.run(use(fab))
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs


def test_a_fabric_dropped_after_a_stream_is_freed_without_the_cyclic_gc(
        tmp_path, no_cyclic_gc):
    reg = fabric.OpRegistry()

    @fabric.op("life.count", registry=reg)
    def count(n):
        yield from range(n)

    with fabric.EvalCassette(str(tmp_path / "b.ledger")) as other, \
            fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        fab = fabric.ContentAddressedFabric(
            "a", cas, peers=[fabric.ContentPeer("b", fabric.ContentServeFabric(other))],
            home=fabric.LocalFabric(reg))
        s = fab.stream(count.request(3))  # the peer does not hold it: home streams
        assert list(s) == [0, 1, 2] and s.source == "home"
        assert list(fab.stream(count.request(3))) == [0, 1, 2]  # replayed
        del s
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs


class _NotHeldPeer:
    """A peer that holds nothing and does not say it honours a timeout: a
    call with a timeout runs on the peer's own workers and fails."""

    def __init__(self):
        self.asked = 0

    def evaluate(self, request, *, grants=None):
        self.asked += 1
        raise fabric.ContentNotHeld(f"not held: {request.op}")


class _AsyncNotHeldPeer(_NotHeldPeer):
    async def aevaluate(self, request, *, grants=None):
        self.asked += 1
        raise fabric.ContentNotHeld(f"not held: {request.op}")


def _ops():
    reg = fabric.OpRegistry()

    @fabric.op("life.square", registry=reg)
    def square(x):
        return x * x

    @fabric.op("life.fails", registry=reg)
    def fails(x):
        raise ValueError(f"home fails on {x}")

    return reg, square, fails


def test_a_fabric_whose_peer_failed_within_a_timeout_is_freed_without_the_cyclic_gc(
        tmp_path, no_cyclic_gc):
    reg, square, _ = _ops()
    with fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        peer = _NotHeldPeer()
        fab = fabric.ContentAddressedFabric(
            "a", cas, peers=[fabric.ContentPeer("b", peer)], home=fabric.LocalFabric(reg))
        reply = fab.evaluate(square.request(3), timeout=30)
        assert (reply.value, reply.source, peer.asked) == (9, "home", 1)  # the peer failed
        gone = weakref.ref(fab)
        del fab, reply
        assert gone() is None
        assert sys.getrefcount(cas) == refs


@pytest.mark.parametrize("peer_class", [_NotHeldPeer, _AsyncNotHeldPeer])
def test_a_fabric_whose_peer_failed_within_a_timeout_async_is_freed_without_the_cyclic_gc(
        tmp_path, no_cyclic_gc, peer_class):
    reg, square, _ = _ops()

    async def use(fab):
        reply = await fab.aevaluate(square.request(4), timeout=30)
        return reply.value, reply.source

    with fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        peer = peer_class()
        fab = fabric.ContentAddressedFabric(
            "a", cas, peers=[fabric.ContentPeer("b", peer)], home=fabric.LocalFabric(reg))
        assert asyncio.run(use(fab)) == (16, "home") and peer.asked == 1
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs


@pytest.mark.parametrize("timeout", [None, 30])
def test_a_fabric_whose_home_op_failed_is_freed_without_the_cyclic_gc(
        tmp_path, no_cyclic_gc, timeout):
    reg, _, fails = _ops()
    with fabric.EvalCassette(str(tmp_path / "a.ledger")) as cas:
        refs = sys.getrefcount(cas)
        fab = fabric.ContentAddressedFabric("a", cas, home=fabric.LocalFabric(reg))
        with pytest.raises(ValueError, match="home fails on 5") as info:
            fab.evaluate(fails.request(5), timeout=timeout)
        # the caller still gets the op's own traceback, down to the raise
        names = [f.f_code.co_name for f, _ in traceback.walk_tb(info.value.__traceback__)]
        assert names[-1] == "fails", names
        del info
        gone = weakref.ref(fab)
        del fab
        assert gone() is None
        assert sys.getrefcount(cas) == refs
