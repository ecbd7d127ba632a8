"""Deadlines, timeouts, cancellation, close() and async streams through every
fabric (issue 12, defects 2 to 6).

Every wait here is a handshake: an op blocks on an event the test releases,
and an op that must be abandoned blocks until the test ends. The only
clock-based facts asserted are "raised DeadlineExceeded".
"""

import asyncio
import subprocess
import sys
import textwrap
import threading

import pytest

import fabric
from fabric import (CapabilityDenied, ContentServeFabric, DeadlineExceeded, EvalRequest,
                    FabricUnavailable, LedgeredRelayFabric, LocalFabric, OpRegistry,
                    RelayFabric)


@pytest.fixture
def reg():
    return OpRegistry()


class Gate:
    """An op's handshakes: ``started`` when it begins, it waits for ``go``,
    ``ended`` when it leaves (normally or not)."""

    def __init__(self):
        self.started = threading.Event()
        self.go = threading.Event()
        self.ended = threading.Event()
        self.threads = []
        self.runs = 0


class Signalling:
    """A real cassette whose ``record`` also sets an event (a handshake for
    recordings made off the caller's thread)."""

    def __init__(self, cassette):
        self._c = cassette
        self.recorded = threading.Event()

    def record(self, key, record):
        ok = self._c.record(key, record)
        self.recorded.set()
        return ok

    def __getattr__(self, name):
        return getattr(self._c, name)

    def __contains__(self, key):
        return key in self._c


def blocking_op(reg, gate, name="slow"):
    @fabric.op(name, registry=reg)
    def slow(x):
        gate.runs += 1
        gate.threads.append(threading.current_thread())
        gate.started.set()
        try:
            gate.go.wait(30)
            return x * 2
        finally:
            gate.ended.set()
    return slow


# ------------------------------------------------------------------ defect 2

def test_deadline_bounds_the_caller_that_runs_the_op_and_success_is_recorded(
        reg, cassette_factory):
    gate = Gate()
    slow = blocking_op(reg, gate)
    with LocalFabric(reg) as local:
        cas = Signalling(cassette_factory())
        fab = LedgeredRelayFabric(local, cas)
        req = slow.request(21).replace(deadline=0.2)
        with pytest.raises(DeadlineExceeded, match="did not finish within") as info:
            fab.evaluate(req)
        assert gate.started.is_set() and not gate.ended.is_set()  # still running
        assert gate.threads[0] is not threading.current_thread()  # on a worker
        assert req.key not in cas
        gate.go.set()
        # The success still reaches the cassette for later callers.
        assert info.value.pending_reply.result(30).value == 42
        assert cas.recorded.wait(30)
        again = fab.evaluate(req)
        assert again.value == 42 and again.source == "ledger"
        assert gate.runs == 1


def test_a_caller_joining_a_running_op_gets_its_reply(reg):
    gate = Gate()
    slow = blocking_op(reg, gate)
    with LocalFabric(reg) as fab:
        with pytest.raises(DeadlineExceeded):
            fab.evaluate(slow.request(1), timeout=0.1)
        got = []
        t = threading.Thread(target=lambda: got.append(fab.evaluate(slow.request(1)).value))
        t.start()
        for _ in range(3000):  # until the joiner waits on the same op (bounded)
            if fab.stats()["coalesced"] == 1:
                break
            t.join(0.01)
        assert fab.stats()["coalesced"] == 1
        gate.go.set()
        t.join(30)
        assert got == [2] and gate.runs == 1


def test_without_a_deadline_the_op_runs_in_the_callers_thread(reg):
    gate = Gate()
    gate.go.set()
    slow = blocking_op(reg, gate)
    fab = LocalFabric(reg)
    assert fab.evaluate(slow.request(3)).value == 6
    assert gate.threads == [threading.current_thread()]
    assert "_workers" not in vars(fab)  # no pool was even made


def test_hung_ops_are_bounded_by_the_pool(reg):
    gate = Gate()
    started = []
    gate_threads = []
    lock = threading.Lock()

    @fabric.op("hang", registry=reg)
    def hang(i):
        with lock:
            started.append(i)
            gate_threads.append(threading.current_thread())
            if len(started) == 2:
                gate.started.set()
        gate.go.wait(30)
        return i

    fab = LocalFabric(reg, max_workers=2)
    try:
        for i in range(5):
            with pytest.raises(DeadlineExceeded):
                fab.evaluate(hang.request(i), timeout=0.05)
        assert gate.started.wait(30)
        workers = {id(t): t for t in gate_threads}.values()
        assert len(workers) == 2 and all(t.daemon for t in workers)
        assert len(started) == 2  # the others wait their turn, no new thread
    finally:
        gate.go.set()
        fab.close()


def test_timeout_is_checked(reg):
    @fabric.op("one", registry=reg)
    def one():
        return 1

    fab = LocalFabric(reg)
    with pytest.raises(ValueError, match="timeout must be >= 0"):
        fab.evaluate(one.request(), timeout=-1)
    with pytest.raises(TypeError, match="timeout must be a number"):
        fab.evaluate(one.request(), timeout="1")
    assert fab.evaluate(one.request(), timeout=30).value == 1
    for cls in (LocalFabric, LedgeredRelayFabric, RelayFabric, ContentServeFabric):
        assert cls.honours_timeout is True
    assert isinstance(fab, fabric.EvalFabric)


def test_relays_pass_the_timeout_on(reg, cassette_factory):
    gate = Gate()
    slow = blocking_op(reg, gate)
    with LocalFabric(reg) as local:
        relay = RelayFabric(LedgeredRelayFabric(local, cassette_factory()))
        with pytest.raises(DeadlineExceeded):
            relay.evaluate(slow.request(5), timeout=0.1)

        async def main():
            with pytest.raises(DeadlineExceeded):
                await relay.aevaluate(slow.request(6), timeout=0.1)
        asyncio.run(main())
        gate.go.set()


# ------------------------------------------------------------------ defect 5

def test_coalesced_async_callers_with_different_deadlines(reg):
    # asyncio.shield: the impatient caller's deadline must not cancel the
    # computation the patient caller shares.
    runs = []
    release = {}

    @fabric.op("aslow", registry=reg)
    async def aslow(x):
        runs.append(x)
        await release["event"].wait()
        return x + 1

    fab = LocalFabric(reg)

    async def main():
        release["event"] = asyncio.Event()
        patient = asyncio.ensure_future(fab.aevaluate(aslow.request(1)))
        await asyncio.sleep(0)  # the patient caller owns the computation
        with pytest.raises(DeadlineExceeded):
            await fab.aevaluate(aslow.request(1).replace(deadline=0.05))
        release["event"].set()
        return await patient

    reply = asyncio.run(main())
    assert reply.value == 2 and runs == [1]


def test_coalesced_sync_op_callers_with_different_deadlines(reg):
    gate = Gate()
    slow = blocking_op(reg, gate)
    fab = LocalFabric(reg)

    async def main():
        patient = asyncio.ensure_future(fab.aevaluate(slow.request(4)))
        await asyncio.to_thread(gate.started.wait, 30)
        with pytest.raises(DeadlineExceeded):
            await fab.aevaluate(slow.request(4), timeout=0.05)
        gate.go.set()
        return await patient

    assert asyncio.run(main()).value == 8 and gate.runs == 1
    fab.close()


def test_an_async_op_is_cancelled_when_its_last_waiter_goes(reg):
    cancelled = []

    @fabric.op("forever", registry=reg)
    async def forever(x):
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(x)
            raise

    fab = LocalFabric(reg)

    async def main():
        a = asyncio.ensure_future(fab.aevaluate(forever.request(1)))
        b = asyncio.ensure_future(fab.aevaluate(forever.request(1)))
        for _ in range(100):  # b joins a within a few loop turns
            if fab.stats()["coalesced"] == 1:
                break
            await asyncio.sleep(0)
        assert fab.stats()["coalesced"] == 1
        a.cancel()
        with pytest.raises(asyncio.CancelledError):
            await a
        await asyncio.sleep(0)
        assert cancelled == []  # b still waits: the op goes on
        with pytest.raises(DeadlineExceeded):
            await fab.aevaluate(forever.request(2), timeout=0.05)
        b.cancel()
        with pytest.raises(asyncio.CancelledError):
            await b
        for _ in range(100):  # the cancellation is delivered on the next turns
            if len(cancelled) == 2:
                break
            await asyncio.sleep(0)
        assert sorted(cancelled) == [1, 2]
        assert fab._inflight == {}

    asyncio.run(main())


def test_a_cancelled_aevaluate_lets_a_sync_op_finish_and_records_it(reg, cassette_factory):
    gate = Gate()
    slow = blocking_op(reg, gate)
    local = LocalFabric(reg)
    cas = Signalling(cassette_factory())
    fab = LedgeredRelayFabric(local, cas)
    req = slow.request(10)

    async def main():
        task = asyncio.ensure_future(fab.aevaluate(req))
        await asyncio.to_thread(gate.started.wait, 30)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert req.key not in cas
    gate.go.set()
    assert cas.recorded.wait(30) and gate.ended.wait(30)
    assert fab.evaluate(req).source == "ledger" and gate.runs == 1
    local.close()


def test_close_stops_background_work(reg):
    gate = Gate()
    slow = blocking_op(reg, gate)
    with LocalFabric(reg) as fab:
        with pytest.raises(DeadlineExceeded):
            fab.evaluate(slow.request(1), timeout=0.05)
        worker = gate.threads[0]
    gate.go.set()
    worker.join(30)
    assert not worker.is_alive()  # the worker ended once idle
    with pytest.raises(FabricUnavailable, match="closed"):
        fab.evaluate(slow.request(2), timeout=1)
    assert fab.evaluate(slow.request(3)).value == 6  # no worker needed


def test_interpreter_exit_is_not_held_up_by_abandoned_work(tmp_path):
    script = tmp_path / "hang.py"
    script.write_text(textwrap.dedent("""
        import asyncio, threading
        import fabric

        reg = fabric.OpRegistry()
        never = threading.Event()

        @fabric.op("hang", registry=reg)
        def hang(x):
            never.wait()

        @fabric.op("ahang", registry=reg)
        async def ahang(x):
            await asyncio.Event().wait()

        fab = fabric.LocalFabric(reg)
        try:
            fab.evaluate(hang.request(1), timeout=0.05)
        except fabric.DeadlineExceeded:
            print("sync deadline", flush=True)

        async def main():
            for op in (hang, ahang):
                try:
                    await fab.aevaluate(op.request(2), timeout=0.05)
                except fabric.DeadlineExceeded:
                    print("async deadline", op.name, flush=True)
            task = asyncio.ensure_future(fab.aevaluate(hang.request(3)))
            await asyncio.sleep(0)
            task.cancel()
        asyncio.run(main())
        print("exiting", flush=True)
    """))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split("\n") == ["sync deadline", "async deadline hang",
                                       "async deadline ahang", "exiting", ""]


# ------------------------------------------------------------------ defect 6

def test_call_of_an_async_op_inside_a_running_loop(reg):
    @fabric.op("triple", registry=reg)
    async def triple(x):
        await asyncio.sleep(0)
        fabric.diagnostic("Diagnostic", "on a helper loop")
        return x * 3

    @fabric.op("acount", registry=reg)
    async def acount(n):
        for i in range(n):
            await asyncio.sleep(0)
            yield i

    fab = LocalFabric(reg)

    async def cell():  # what a notebook cell is: code run by a running loop
        reply = fab.evaluate(triple.request(2))
        return fab.call(triple, 5), reply.diagnostics, list(fab.call(acount, 3))

    assert asyncio.run(cell()) == (15, ({"kind": "Diagnostic",
                                         "message": "on a helper loop"},), [0, 1, 2])
    # Outside a loop, too (no hand-off).
    assert fab.call(triple, 1) == 3 and list(fab.call(acount, 2)) == [0, 1]
    fab.close()


# ------------------------------------------------------------------ defects 3 and 4

def agen_op(reg, log):
    @fabric.op("atok", registry=reg)
    async def atok(n):
        for i in range(n):
            await asyncio.sleep(0)
            if i == 1:
                fabric.diagnostic("Diagnostic", "second")
            log.append(i)
            yield f"t{i}"
    return atok


def test_async_generator_ops_stream_through_every_fabric(reg, cassette_factory):
    log = []
    atok = agen_op(reg, log)
    local = LocalFabric(reg)
    cas = cassette_factory()
    ledgered = LedgeredRelayFabric(local, cas)
    relay = RelayFabric(ledgered)
    serve = ContentServeFabric(cas)
    req = atok.request(3)

    async def collect(fab, request):
        s = fab.astream(request)
        items = [x async for x in s]
        return items, s.diagnostics, s.source

    async def main():
        first = await collect(relay, req)  # through the relay, recorded
        replay = await collect(ledgered, req)
        held = await collect(serve, req)
        whole = await relay.aevaluate(req)
        return first, replay, held, whole

    first, replay, held, whole = asyncio.run(main())
    diag = [{"kind": "Diagnostic", "message": "second"}]
    assert first == (["t0", "t1", "t2"], diag, "computed")
    assert replay == (["t0", "t1", "t2"], diag, "ledger")
    assert held == (["t0", "t1", "t2"], diag, "held")
    assert whole.value == ["t0", "t1", "t2"] and whole.source == "ledger"
    assert log == [0, 1, 2]  # computed once
    # The sync interface streams it as well.
    other = atok.request(2)
    assert list(ledgered.stream(other)) == ["t0", "t1"]
    assert ledgered.evaluate(other).source == "ledger"
    local.close()


def test_cancelling_an_astream_consumer_stops_a_sync_producer(reg, cassette_factory):
    made = []
    gate = Gate()

    @fabric.op("tick", registry=reg)
    def tick():
        try:
            for i in range(100):
                if i == 1:
                    gate.started.set()
                    gate.go.wait(30)
                made.append(i)
                yield i
        finally:
            gate.ended.set()

    local = LocalFabric(reg)
    cas = cassette_factory()
    fab = LedgeredRelayFabric(local, cas)
    req = tick.request()

    async def main():
        seen = []

        async def consume():
            async for x in fab.astream(req):
                seen.append(x)

        task = asyncio.ensure_future(consume())
        await asyncio.to_thread(gate.started.wait, 30)  # the producer is mid-item
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return seen

    assert asyncio.run(main()) == [0]
    gate.go.set()
    assert gate.ended.wait(30)  # the producer was closed once its item was ready
    assert made == [0, 1] and req.key not in cas
    local.close()


def test_cancelling_an_astream_consumer_stops_an_async_producer(reg):
    stopped = []

    @fabric.op("alive", registry=reg)
    async def alive():
        try:
            yield 0
            await asyncio.Event().wait()
            yield 1
        finally:
            stopped.append(True)

    fab = LocalFabric(reg)

    async def main():
        got = asyncio.Event()

        async def consume():
            async for _ in RelayFabric(fab).astream(alive.request()):
                got.set()

        task = asyncio.ensure_future(consume())
        await got.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(main())
    assert stopped == [True]


def test_a_stream_deadline_ends_a_stream_with_deadline_exceeded(reg):
    gate = Gate()

    @fabric.op("drip", registry=reg)
    def drip():
        yield 0
        gate.go.wait(30)
        yield 1

    @fabric.op("adrip", registry=reg)
    async def adrip():
        yield 0
        await asyncio.Event().wait()

    fab = LocalFabric(reg)
    s = fab.stream(drip.request(), timeout=0.1)
    assert next(s) == 0
    with pytest.raises(DeadlineExceeded):
        next(s)

    async def main():
        s = fab.astream(adrip.request().replace(deadline=0.1))
        assert await s.__anext__() == 0
        with pytest.raises(DeadlineExceeded):
            await s.__anext__()

    asyncio.run(main())
    gate.go.set()
    fab.close()


def test_a_deadline_past_the_clocks_range_is_refused_and_inf_timeouts_are_no_limit(reg):
    # (A deadline of 1e12 s made a stream fail with OverflowError "timestamp
    # out of range for platform time_t", locally and at a node; so did a
    # timeout of inf given to a stream.)
    @fabric.op("count_to", registry=reg)
    def count_to(n):
        yield from range(n)

    with pytest.raises(ValueError, match="deadline must be at most 1e9 seconds"):
        count_to.request(2).replace(deadline=1e12)
    req = count_to.request(2).replace(deadline=1e9)
    assert req.deadline == 1e9
    fab = LocalFabric(reg)
    assert list(fab.stream(req)) == [0, 1]
    for timeout in (float("inf"), 1e300):
        assert list(fab.stream(count_to.request(3), timeout=timeout)) == [0, 1, 2]

        async def main():
            return [x async for x in fab.astream(count_to.request(2), timeout=timeout)]
        assert asyncio.run(main()) == [0, 1]
    fab.close()


def test_content_serve_stream_checks_grants(reg, cassette_factory):
    @fabric.op("secret", capabilities=("vault",), registry=reg)
    def secret():
        yield 1

    cas = cassette_factory()
    LedgeredRelayFabric(LocalFabric(reg), cas, grants=("vault",)).evaluate(secret.request())
    serve = ContentServeFabric(cas)
    with pytest.raises(CapabilityDenied, match="vault"):
        serve.stream(secret.request())
    with pytest.raises(CapabilityDenied):
        serve.stream(secret.request(), grants=("other",))
    assert serve.stats()["denied"] == 2
    assert list(serve.stream(secret.request(), grants=("vault",))) == [1]


def test_every_module_star_imports_and_all_names_exist():
    import importlib
    import pkgutil
    names = ["fabric"] + [f"fabric.{m.name}" for m in pkgutil.iter_modules(fabric.__path__)]
    assert "fabric.replies" in names and "fabric.fabrics" in names
    for name in names:
        mod = importlib.import_module(name)
        ns = {}
        exec(f"from {name} import *", ns)
        for n in getattr(mod, "__all__", ()):
            assert n in ns, (name, n)
    # The old import paths of the moved names still work.
    from fabric.fabrics import EvalReply, EvalStream, reply_record  # noqa: F401
    assert fabric.fabrics.EvalReply is fabric.replies.EvalReply is fabric.EvalReply


def test_eval_request_timeout_with_deadline_takes_the_shorter(reg):
    gate = Gate()
    slow = blocking_op(reg, gate)
    fab = LocalFabric(reg)
    with pytest.raises(DeadlineExceeded, match="0.05"):
        fab.evaluate(slow.request(1).replace(deadline=30), timeout=0.05)
    with pytest.raises(DeadlineExceeded, match="0.05"):
        fab.evaluate(EvalRequest("slow", (1,), deadline=0.05), timeout=30)
    gate.go.set()
    fab.close()


def test_worker_pool_bounds_and_close_cancels_queued_calls():
    from fabric._workers import Workers
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_workers"):
            LocalFabric(max_workers=bad)
    pool = Workers(1, "t")
    go, started = threading.Event(), threading.Event()
    running = pool.submit(lambda: (started.set(), go.wait(30))[1])
    assert started.wait(30)
    queued = pool.submit(lambda: "never")
    assert pool.busy() == 2
    pool.close()
    assert queued.cancelled()
    with pytest.raises(FabricUnavailable, match="closed"):
        pool.submit(lambda: None)
    go.set()
    assert running.result(30) is True
