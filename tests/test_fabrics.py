"""Ops, LocalFabric, LedgeredRelayFabric, RelayFabric and ContentServeFabric.

Cassettes here are real ledger files (the ``cassette_factory`` fixture);
threads and event loops are real.
"""

import asyncio
import threading

import pytest

import fabric
from conftest import wait_for
from fabric import (CapabilityDenied, ContentNotHeld, EvalReply, EvalRequest,
                    FabricUnavailable, LedgeredRelayFabric, LocalFabric, OpNotFound,
                    OpRegistry, RelayFabric, RelayStatus, ContentServeFabric)


class Calls:
    """Counts calls of an op body, by argument, across threads."""

    def __init__(self):
        self.lock = threading.Lock()
        self.n = 0
        self.args = []

    def hit(self, *a):
        with self.lock:
            self.n += 1
            self.args.append(a)


@pytest.fixture
def reg():
    return OpRegistry()


# --------------------------------------------------------------------------- ops

def test_op_builds_requests_with_name_version_capabilities(reg):
    @fabric.op("embed", version=3, capabilities=("model.call", "gpu"), registry=reg)
    def embed(text, model="mini"):
        return [len(text)]

    r = embed.request("hi", model="big")
    assert r.op == "embed" and r.version == 3
    assert r.args == ("hi",) and dict(r.kwargs) == {"model": "big"}
    assert r.required_capabilities == ("gpu", "model.call")
    assert r.stream is False
    assert embed("abc") == [3]  # calling the op directly runs the function
    assert embed in reg
    assert "embed" in repr(embed) and "version=3" in repr(embed)
    # Another version is another key.
    other = fabric.ops.Op("embed", embed.fn, version=4).request("hi", model="big")
    assert other.key != r.key


def test_generator_function_is_a_stream_op(reg):
    @fabric.op("count", registry=reg)
    def count(n):
        yield from range(n)

    assert count.is_stream
    assert count.request(3).stream is True
    assert "stream op" in repr(count)


def test_op_rejects_bad_names_and_capabilities(reg):
    with pytest.raises(ValueError):
        fabric.op("Bad Name", registry=reg)(lambda: 1)
    with pytest.raises(TypeError, match="single string"):
        fabric.op("x", capabilities="gpu", registry=reg)(lambda: 1)
    with pytest.raises(TypeError, match="decorates a function"):
        fabric.op("x", registry=reg)(42)


def test_diagnostic_outside_an_op_is_an_error():
    with pytest.raises(RuntimeError, match="outside a running op"):
        fabric.diagnostic("Diagnostic", "no op is running")


# --------------------------------------------------------------------- LocalFabric

def test_local_fabric_runs_op_and_call_is_one_line(reg):
    @fabric.op("add", registry=reg)
    def add(a, b=1):
        return a + b

    fab = LocalFabric(reg)
    reply = fab.evaluate(add.request(2, b=5))
    assert isinstance(reply, EvalReply)
    assert reply.value == 7 and reply.source == "computed"
    assert reply.key == add.request(2, b=5).key
    assert fab.call(add, 40, b=2) == 42
    assert fab.stats()["computed"] == 2
    assert "LocalFabric" in repr(fab) and "computed=2" in repr(fab)


def test_local_fabric_unknown_op_and_version(reg):
    @fabric.op("known", version=2, registry=reg)
    def known():
        return 1

    fab = LocalFabric(reg)
    with pytest.raises(OpNotFound, match="'nope' is not registered"):
        fab.evaluate(EvalRequest("nope"))
    with pytest.raises(OpNotFound, match="registered versions: 2"):
        fab.evaluate(EvalRequest("known", version=1))
    with pytest.raises(LookupError):
        fab.evaluate(EvalRequest("nope"))


def test_local_fabric_checks_grants_against_op_capabilities(reg):
    calls = Calls()

    @fabric.op("secret.read", capabilities=("vault.read",), registry=reg)
    def read(name):
        calls.hit(name)
        return "value"

    fab = LocalFabric(reg)
    with pytest.raises(CapabilityDenied, match="vault.read"):
        fab.evaluate(read.request("db"))
    # A request built by hand without the capability still needs the op's.
    with pytest.raises(PermissionError):
        fab.evaluate(EvalRequest("secret.read", ("db",)), grants={"other"})
    assert calls.n == 0
    assert fab.evaluate(read.request("db"), grants={"vault.read"}).value == "value"
    assert LocalFabric(reg, grants={"vault.read"}).call(read, "db") == "value"
    assert fab.stats()["denied"] == 2


def test_op_errors_propagate_and_diagnostics_are_attached(reg):
    @fabric.op("fails", registry=reg)
    def fails():
        raise ZeroDivisionError("boom")

    @fabric.op("warns", registry=reg)
    def warns(x):
        fabric.diagnostic("Diagnostic", "rounded", digits=2)
        return round(x, 2)

    fab = LocalFabric(reg)
    with pytest.raises(ZeroDivisionError, match="boom"):
        fab.evaluate(fails.request())
    reply = fab.evaluate(warns.request(1.23456))
    assert reply.value == 1.23
    assert reply.diagnostics == ({"kind": "Diagnostic", "message": "rounded", "digits": 2},)


def test_trace_is_collected_when_asked(reg):
    @fabric.op("t", registry=reg)
    def t():
        return 1

    fab = LocalFabric(reg, name="site-a")
    assert fab.evaluate(t.request()).trace is None
    tr = fab.evaluate(t.request().replace(trace=True)).trace
    assert tr[0]["site"] == "site-a" and tr[0]["op"] == "t"


def test_concurrent_identical_requests_compute_once_threads(reg):
    calls = Calls()
    gate = threading.Event()

    @fabric.op("slow", registry=reg)
    def slow(x):
        calls.hit(x)
        gate.wait(10)
        return x * 2

    fab = LocalFabric(reg)
    results, errors = [], []

    def worker():
        try:
            results.append(fab.evaluate(slow.request(21)))
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    # Wait until every caller is either computing or waiting on the computation.
    wait_for(lambda: fab.stats()["coalesced"] >= 7, "7 callers joined")
    gate.set()
    for t in threads:
        t.join(10)
    assert not errors
    assert calls.n == 1
    assert [r.value for r in results] == [42] * 8
    assert fab.stats()["coalesced"] == 7
    # Once finished, a new request computes again (coalescing is not caching).
    fab.evaluate(slow.request(21))
    assert calls.n == 2


def test_a_joiner_settles_a_flight_its_owner_finished_without_the_lock(reg):
    """The common miss finishes its flight without the lock: it leaves its
    reply on the flight, sets ``finished``, takes the flight out of the table
    and only then looks for a future. A joiner that found the flight in the
    table before it left and made the future after the owner looked (no
    thread interleaving can be forced at that point, so the state is set up
    here) must settle the future itself from the reply left on the flight,
    or it would wait forever."""
    from fabric.fabrics import _Flight

    @fabric.op("t.finished", version=1, registry=reg)
    def finished(x):
        return x

    fab = LocalFabric(reg)
    req = finished.request(1)
    flight = _Flight()
    fab._inflight[req.key] = flight  # still in the table: the owner is between its steps
    reply = EvalReply(1, (), None, req.key, "computed")
    flight.reply, flight.finished = reply, True  # the owner finished and saw no future
    joined, owner = fab._join(req.key)
    assert joined is flight and not owner
    assert flight.future is not None and flight.future.done()
    assert flight.future.result() is reply
    assert fab.stats()["coalesced"] == 1
    # The owner's own look at the future, coming after, leaves it as it is.
    from fabric.fabrics import _resolve
    _resolve(flight.future, EvalReply(2, (), None, req.key, "computed"))
    assert flight.future.result() is reply


def test_concurrent_identical_errors_are_shared_not_cached(reg):
    calls = Calls()
    gate = threading.Event()

    @fabric.op("bad", registry=reg)
    def bad():
        calls.hit()
        gate.wait(10)
        raise ValueError("bad input")

    fab = LocalFabric(reg)
    errors = []

    def worker():
        try:
            fab.evaluate(bad.request())
        except ValueError as e:
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    wait_for(lambda: fab.stats()["coalesced"] >= 3, "3 callers joined")
    gate.set()
    for t in threads:
        t.join(10)
    assert len(errors) == 4 and calls.n == 1


def test_async_callers_coalesce_and_do_not_block_the_loop(reg):
    calls = Calls()
    gate = threading.Event()

    @fabric.op("blocking", registry=reg)
    def blocking(x):
        calls.hit(x)
        gate.wait(10)  # a blocking body: must run off the loop
        return x + 1

    fab = LocalFabric(reg)

    async def main():
        tasks = [asyncio.ensure_future(fab.aevaluate(blocking.request(1))) for _ in range(5)]
        # The loop keeps running while the op blocks its worker thread.
        ticks = 0
        while fab.stats()["coalesced"] < 4:  # bounded: 60 s of 1 ms turns
            assert ticks < 60_000, "the 4 other callers never joined the flight"
            await asyncio.sleep(0.001)
            ticks += 1
        assert ticks >= 1
        gate.set()
        return await asyncio.gather(*tasks)

    replies = asyncio.run(main())
    assert [r.value for r in replies] == [2] * 5
    assert calls.n == 1


def test_async_def_op_runs_on_the_loop_and_sync_callers_share_it(reg):
    @fabric.op("aop", registry=reg)
    async def aop(x):
        fabric.diagnostic("Diagnostic", "awaited")
        await asyncio.sleep(0)
        return x * 3

    fab = LocalFabric(reg)
    reply = asyncio.run(fab.aevaluate(aop.request(2)))
    assert reply.value == 6 and reply.diagnostics[0]["message"] == "awaited"
    assert fab.evaluate(aop.request(5)).value == 15
    assert asyncio.run(fab.acall(aop, 1)) == 3


# ------------------------------------------------------------------- streams (local)

def test_local_stream_yields_items_as_produced(reg):
    produced = []

    @fabric.op("gen", registry=reg)
    def gen(n):
        for i in range(n):
            produced.append(i)
            if i == 1:
                fabric.diagnostic("Diagnostic", "half way")
            yield i * 10

    fab = LocalFabric(reg)
    s = fab.stream(gen.request(4))
    assert produced == []  # lazy: nothing produced before the first next()
    assert next(s) == 0 and produced == [0]
    assert list(s) == [10, 20, 30]
    assert s.diagnostics == [{"kind": "Diagnostic", "message": "half way"}]
    # evaluate() of a stream op gives the list of items.
    reply = fab.evaluate(gen.request(3))
    assert reply.value == [0, 10, 20] and len(reply.diagnostics) == 1
    assert list(fab.call(gen, 2)) == [0, 10]
    with pytest.raises(TypeError, match="not a stream op"):
        @fabric.op("plain", registry=reg)
        def plain():
            return 1
        fab.stream(plain.request())


def test_answer_limit_cuts_a_stream_and_is_part_of_the_key(reg):
    pulled = []

    @fabric.op("naturals", registry=reg)
    def naturals():
        i = 0
        while True:
            pulled.append(i)
            yield i
            i += 1

    fab = LocalFabric(reg)
    req = naturals.request().replace(answer_limit=3)
    assert req.key != naturals.request().key
    assert list(fab.stream(req)) == [0, 1, 2]
    assert pulled == [0, 1, 2]  # no item past the limit is produced


def test_async_stream_of_sync_and_async_generators(reg):
    @fabric.op("sgen", registry=reg)
    def sgen(n):
        yield from range(n)

    @fabric.op("agen", registry=reg)
    async def agen(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    fab = LocalFabric(reg)

    async def main():
        a = [x async for x in fab.astream(sgen.request(3))]
        b = [x async for x in fab.astream(agen.request(3).replace(answer_limit=2))]
        return a, b

    assert asyncio.run(main()) == ([0, 1, 2], [0, 1])


# ------------------------------------------------------------- LedgeredRelayFabric

def test_ledgered_relay_miss_calls_inner_once_then_hits_skip_it(reg, cassette_factory):
    calls = Calls()

    @fabric.op("sq", registry=reg)
    def sq(x):
        calls.hit(x)
        fabric.diagnostic("Diagnostic", "squared")
        return {"x": x, "sq": x * x}

    cas = cassette_factory("relay")
    fab = LedgeredRelayFabric(LocalFabric(reg), cas)
    first = fab.evaluate(sq.request(7))
    assert first.value == {"x": 7, "sq": 49} and calls.n == 1
    for _ in range(3):
        again = fab.evaluate(sq.request(7))
        assert again == first and again.source == "ledger"
    assert calls.n == 1
    assert sq.request(7).key in cas
    assert fab.stats()["hits"] == 3 and fab.stats()["misses"] == 1


def test_ledgered_relay_never_records_errors_or_denials(reg, cassette_factory):
    calls = Calls()

    @fabric.op("guarded", capabilities=("net",), registry=reg)
    def guarded(x):
        calls.hit(x)
        return x

    @fabric.op("flaky", registry=reg)
    def flaky(x):
        calls.hit(x)
        raise OSError("transient")

    cas = cassette_factory()
    fab = LedgeredRelayFabric(LocalFabric(reg), cas)
    with pytest.raises(CapabilityDenied):
        fab.evaluate(guarded.request(1))
    assert guarded.request(1).key not in cas and calls.n == 0
    with pytest.raises(OSError):
        fab.evaluate(flaky.request(1))
    with pytest.raises(OSError):
        fab.evaluate(flaky.request(1))
    assert calls.n == 2 and len(cas) == 0
    # With the grant, the guarded op is computed and recorded...
    assert fab.evaluate(guarded.request(1), grants={"net"}).value == 1
    # ...and a hit still re-checks the grants.
    with pytest.raises(CapabilityDenied):
        fab.evaluate(guarded.request(1))
    assert calls.n == 3


def test_ledgered_relay_failed_record_is_an_error(reg, cassette_factory):
    @fabric.op("unrecordable", registry=reg)
    def unrecordable():
        return object()  # no canonical encoding: the record fails

    fab = LedgeredRelayFabric(LocalFabric(reg), cassette_factory())
    with pytest.raises(TypeError):
        fab.evaluate(unrecordable.request())


def test_ledgered_relay_async_twin(reg, cassette_factory):
    calls = Calls()

    @fabric.op("inc", registry=reg)
    def inc(x):
        calls.hit(x)
        return x + 1

    fab = LedgeredRelayFabric(LocalFabric(reg), cassette_factory())

    async def main():
        a = await fab.aevaluate(inc.request(1))
        b = await fab.aevaluate(inc.request(1))
        return a, b

    a, b = asyncio.run(main())
    assert a.value == b.value == 2 and b.source == "ledger" and calls.n == 1


def test_ledgered_relay_streams_record_and_replay_identically(reg, cassette_factory):
    calls = Calls()

    @fabric.op("frames", registry=reg)
    def frames(n):
        calls.hit(n)
        for i in range(n):
            if i == 2:
                fabric.diagnostic("LimitExceeded", "pretend", item=i)
            yield {"i": i, "data": bytes([i]) * 3}

    cas = cassette_factory()
    fab = LedgeredRelayFabric(LocalFabric(reg), cas)
    s1 = fab.stream(frames.request(5))
    items1 = list(s1)
    s2 = fab.stream(frames.request(5))
    assert s2.source == "ledger"
    items2 = list(s2)
    assert items1 == items2 and len(items1) == 5
    assert s1.diagnostics == s2.diagnostics == [
        {"kind": "LimitExceeded", "message": "pretend", "item": 2}]
    assert calls.n == 1
    assert fab.evaluate(frames.request(5)).value == items1


def test_failed_or_cancelled_streams_are_not_held(reg, cassette_factory):
    calls = Calls()

    @fabric.op("breaks", registry=reg)
    def breaks(n):
        calls.hit(n)
        yield 1
        yield 2
        raise RuntimeError("broke midway")

    @fabric.op("long", registry=reg)
    def long(n):
        calls.hit(n)
        yield from range(n)

    cas = cassette_factory()
    fab = LedgeredRelayFabric(LocalFabric(reg), cas)
    s = fab.stream(breaks.request(1))
    assert next(s) == 1
    with pytest.raises(RuntimeError, match="broke midway"):
        list(s)
    assert breaks.request(1).key not in cas

    s = fab.stream(long.request(100))
    assert next(s) == 0 and next(s) == 1
    s.close()  # the consumer cancels
    assert long.request(100).key not in cas
    # Read to the end, the same stream is held and then replayed.
    assert list(fab.stream(long.request(100))) == list(range(100))
    assert long.request(100).key in cas
    assert calls.n == 3


def test_answer_limit_streams_are_keyed_apart(reg, cassette_factory):
    @fabric.op("nat", registry=reg)
    def nat():
        i = 0
        while True:
            yield i
            i += 1

    cas = cassette_factory()
    fab = LedgeredRelayFabric(LocalFabric(reg), cas)
    assert list(fab.stream(nat.request().replace(answer_limit=2))) == [0, 1]
    assert list(fab.stream(nat.request().replace(answer_limit=4))) == [0, 1, 2, 3]
    assert list(fab.stream(nat.request().replace(answer_limit=2))) == [0, 1]
    assert fab.stats()["hits"] == 1 and len(cas) == 2


# ---------------------------------------------------------------------- RelayFabric

def test_relay_disconnect_reconnect_reaches_inner_exactly_when_connected(reg):
    calls = Calls()

    @fabric.op("ping", registry=reg)
    def ping(i):
        calls.hit(i)
        return i

    relay = RelayFabric(LocalFabric(reg), allowed_capabilities=())
    cycle = ["connected", "reconnecting", "disconnected", "connected", "disconnected",
             "connected"]
    reached = []
    for i, status in enumerate(cycle):
        relay.set_status(status)
        try:
            relay.evaluate(ping.request(i))
            reached.append(i)
        except FabricUnavailable as e:
            assert isinstance(e, ConnectionError) and status in str(e)
    assert reached == [i for i, s in enumerate(cycle) if s == "connected"]
    assert [a[0] for a in calls.args] == reached
    assert relay.stats()["refused_status"] == 3
    assert relay.status is RelayStatus.CONNECTED
    with pytest.raises(ValueError):
        relay.set_status("sideways")


def test_relay_capability_gate_fails_closed_without_reaching_inner(reg):
    calls = Calls()

    @fabric.op("render", capabilities=("stream.remote.render",), registry=reg)
    def render(x):
        calls.hit(x)
        return x

    relay = RelayFabric(LocalFabric(reg), allowed_capabilities={"stream.read"})
    with pytest.raises(CapabilityDenied, match="not allowed through this relay"):
        relay.evaluate(render.request(1), grants={"stream.remote.render"})
    relay = RelayFabric(LocalFabric(reg), allowed_capabilities={"stream.remote.render"})
    with pytest.raises(CapabilityDenied, match="not granted"):
        relay.evaluate(render.request(1))
    assert calls.n == 0
    assert relay.evaluate(render.request(1), grants={"stream.remote.render"}).value == 1
    # No caching and no retry: each call reaches inner exactly once.
    relay.evaluate(render.request(1), grants={"stream.remote.render"})
    assert calls.n == 2


def test_relay_does_not_retry_inner_errors(reg):
    calls = Calls()

    @fabric.op("fail", registry=reg)
    def fail():
        calls.hit()
        raise ConnectionResetError("peer reset")

    relay = RelayFabric(LocalFabric(reg))
    with pytest.raises(ConnectionResetError):
        relay.evaluate(fail.request())
    assert calls.n == 1


# -------------------------------------------------------------- ContentServeFabric

def test_content_serve_answers_only_what_it_holds(reg, cassette_factory):
    @fabric.op("v", registry=reg)
    def v(x):
        return [x, x]

    cas = cassette_factory()
    LedgeredRelayFabric(LocalFabric(reg), cas).evaluate(v.request(1))
    serve = ContentServeFabric(cas, node="a")
    assert serve.evaluate(v.request(1)).value == [1, 1]
    with pytest.raises(ContentNotHeld, match="node 'a' does not hold"):
        serve.evaluate(v.request(2))
    with pytest.raises(LookupError):
        serve.stream(v.request(2))
    assert serve.stats() == {"served": 1, "not_held": 2, "denied": 0}


def test_reprs_and_html(reg, cassette_factory):
    @fabric.op("r", registry=reg)
    def r():
        return "x" * 500

    fab = LedgeredRelayFabric(LocalFabric(reg), cassette_factory())
    reply = fab.evaluate(r.request())
    assert repr(reply).startswith("EvalReply('xxx") and len(repr(reply)) < 200
    assert "<table>" in reply._repr_html_()
    assert "misses=1" in repr(fab) and "<table>" in fab._repr_html_()
    assert "sha256:" in r.request().key._repr_html_()


# ------------------------------------------------------------------------ EvalReply

def test_eval_reply_is_an_immutable_picklable_record():
    import pickle

    key = EvalRequest("x").key
    r = EvalReply({"a": [1, 2]}, [{"kind": "Diagnostic", "message": "m"}], None, key, "home")
    assert isinstance(r, fabric._core.EvalReply)
    assert r.diagnostics == ({"kind": "Diagnostic", "message": "m"},)  # a tuple
    with pytest.raises(AttributeError):
        r.value = 1
    back = pickle.loads(pickle.dumps(r))
    assert type(back) is EvalReply and back == r and back.source == "home"
    assert r == r._with_source("local")  # the source is not part of the answer
    assert r != EvalReply({"a": [1, 2]}, (), None, key)
    with pytest.raises(TypeError):
        hash(r)
    assert EvalReply(1).source == "computed" and EvalReply(1).key is None


def test_reply_record_golden_vector_matches_the_spec():
    from fabric.fabrics import reply_record

    r = EvalReply([0.5, 1.0], [{"kind": "Diagnostic", "message": "rounded"}])
    assert fabric.canonical_bytes(reply_record(r)).hex() == (
        "9392cb3fe0000000000000cb3ff00000000000009182a46b696e64aa446961676e6f73746963"
        "a76d657373616765a7726f756e646564c0")


def test_a_generator_op_runs_in_its_own_context_and_only_it_sees_the_collector(reg):
    import contextvars
    seen = contextvars.ContextVar("seen", default="unset")

    @fabric.op("ctx.gen", registry=reg)
    def gen():
        fabric.diagnostic("Diagnostic", "first")
        yield seen.get()
        seen.set("set by the op")  # stays in the op's context
        fabric.diagnostic("Diagnostic", "second")
        yield seen.get()

    seen.set("the caller's")
    s = LocalFabric(reg).stream(gen.request())
    got = []
    for x in s:
        got.append(x)
        # The consumer's code between items is not inside the op.
        with pytest.raises(RuntimeError, match="outside a running op"):
            fabric.diagnostic("Diagnostic", "from the consumer")
    assert got == ["the caller's", "set by the op"] and seen.get() == "the caller's"
    assert [d["message"] for d in s.diagnostics] == ["first", "second"]


def test_closing_a_stream_through_content_addressed_fabric_stops_the_op(reg,
                                                                        cassette_factory):
    stopped = threading.Event()

    @fabric.op("ctx.long", registry=reg)
    def long(n):
        try:
            yield from range(n)
        finally:
            stopped.set()

    caf = fabric.ContentAddressedFabric("n", cassette_factory(), home=LocalFabric(reg))
    s = caf.stream(long.request(100))
    assert next(s) == 0 and next(s) == 1
    assert not stopped.is_set()
    s.close()
    assert stopped.is_set() and long.request(100).key not in caf.cassette
    assert list(caf.stream(long.request(3))) == [0, 1, 2]
    assert long.request(3).key in caf.cassette and caf.stats()["home_computes"] == 1
