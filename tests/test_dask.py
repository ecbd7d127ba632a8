"""DaskFabric on a real LocalCluster: two worker processes of one thread each."""

import asyncio
import os
import signal
import uuid

import pytest

distributed = pytest.importorskip("distributed")

import dask  # noqa: E402

import fabric  # noqa: E402
from fabric import CapabilityDenied, ContentAddressedFabric, DaskFabric, EvalCassette  # noqa: E402

import dask_ops as ops  # noqa: E402


@pytest.fixture(scope="module")
def client():
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                                       host="127.0.0.1", dashboard_address=None)
    c = distributed.Client(cluster)
    yield c
    c.close()
    cluster.close()


@pytest.fixture
def dfab(client):
    fab = DaskFabric(client, ops=ops.REG)
    yield fab
    fab.close()


def _name():
    return f"t-{uuid.uuid4().hex}"


def _on_scheduler(client, key):
    return client.run_on_scheduler(lambda dask_scheduler, key=key: key in dask_scheduler.tasks)


def test_tokenize_and_task_key_are_the_content_key():
    r = ops.where.request(3)
    assert dask.base.tokenize(r) == dask.base.tokenize(ops.where.request(3))
    assert dask.base.tokenize(r) != dask.base.tokenize(ops.where.request(4))
    assert dask.base.normalize_token(r) == ("fabric.EvalRequest", r.key.hex)
    assert DaskFabric.task_key(r) == f"dask.where-{r.key.hex}"


def test_miss_computed_on_a_worker_then_a_hit_without_the_cluster(client, dfab, tmp_path):
    with EvalCassette(str(tmp_path / "n.fab")) as cas:
        node = ContentAddressedFabric("n1", cas, home=dfab)
        r = ops.where.request(7)
        reply = node.evaluate(r)
        value, pid = reply.value
        assert value == 49 and pid != os.getpid()
        assert reply.source == "home" and r.key in cas
        assert reply.diagnostics[0]["pid"] == pid
        assert dfab.stats()["submitted"] == 1 and dfab.stats()["computed"] == 1
        again = node.evaluate(ops.where.request(7))
        assert again.value == [49, pid] and again.source == "local"
        assert dfab.stats()["submitted"] == 1  # the hit never reached the cluster


def test_a_failed_task_is_released_not_held(client, dfab, tmp_path):
    r = ops.fail_once.request(str(tmp_path / "marker"))
    with pytest.raises(ValueError, match="first run fails"):
        dfab.evaluate(r)
    # Released: the same key computes again instead of giving the held error.
    assert dfab.evaluate(r).value == "second run"


def test_grants_and_under_declared_requests(dfab):
    with pytest.raises(CapabilityDenied):
        dfab.evaluate(ops.needs_net.request(1))
    assert dfab.evaluate(ops.needs_net.request(1), grants={"net.fetch"}).value == 1
    bare = fabric.EvalRequest("dask.secret", (1,))  # declares nothing
    with pytest.raises(CapabilityDenied, match="declares capabilities"):
        dfab.evaluate(bare, grants={"net.fetch"})
    assert dfab.stats()["denied"] == 2


def test_stream_arrives_before_the_task_ends_with_backpressure(client, tmp_path):
    fab = DaskFabric(client, ops=ops.REG, stream_window=2)
    gate, log = _name(), str(tmp_path / "log")
    with EvalCassette(str(tmp_path / "n.fab")) as cas:
        node = ContentAddressedFabric("n1", cas, home=fab)
        r = ops.gated.request(40, gate, log)
        s = node.stream(r)
        # Item 0 comes while the task waits on the gate: streamed, not a
        # list at the end.
        assert next(s) == 0
        distributed.Event(gate, client=client).set()
        assert next(s) == 1
        # Let the producer run until the window is full (the scheduler's
        # queue for this stream holds 2), then count what it made: the 2
        # taken, at most 2 the caller fetched but not yet gave, 2 in the
        # queue and 1 blocked in put. Without backpressure, all 40.
        def full(dask_scheduler):
            return [q.qsize() for n, q in dask_scheduler.extensions["queues"].queues.items()
                    if n.startswith(DaskFabric.task_key(r))]
        for _ in range(1000):
            if client.run_on_scheduler(full) == [2]:
                break
        else:
            pytest.fail("the stream's queue never filled")
        with open(log) as f:
            produced = len(f.read().split())
        assert produced <= 2 + 2 + 2 + 1
        assert list(s) == list(range(2, 40))
        assert r.key in cas  # recorded by the calling node once it ended
        assert list(node.stream(r)) == list(range(40))
    fab.close()


def test_closing_a_stream_early_cancels_its_task(client, dfab, tmp_path):
    gate, log = _name(), tmp_path / "log"
    r = ops.gated.request(5, gate, str(log))
    s = dfab.stream(r)
    assert next(s) == 0
    s.close()
    assert dfab.stats()["cancelled"] == 1

    def states(dask_worker, prefix=DaskFabric.task_key(r)):
        return [ts.state for k, ts in dask_worker.state.tasks.items()
                if isinstance(k, str) and k.startswith(prefix)]
    # The release reaches the worker asynchronously: open the gate once the
    # worker has the task as cancelled.
    for _ in range(1000):
        if "cancelled" in sum(client.run(states).values(), []):
            break
    else:
        pytest.fail("the worker never saw the stream task released")
    distributed.Event(gate, client=client).set()
    # Once its thread is done: it made item 1, found itself released and
    # stopped (all 5 had it run on).
    for _ in range(1000):
        if not any(client.run(lambda dask_worker: len(dask_worker.state.executing)).values()):
            break
    else:
        pytest.fail("the released stream task kept running")
    assert log.read_text().split() == ["0", "1"]


def test_cancelling_the_caller_cancels_a_pending_task(client, dfab, tmp_path):
    started = [_name(), _name()]
    release = _name()
    # Both workers (one thread each) busy with a blocker.
    blockers = [client.submit(ops.block.fn, s, release, pure=False) for s in started]
    for s in started:
        assert distributed.Event(s, client=client).wait(timeout=60)
    mark = tmp_path / "ran"
    r = ops.mark.request(str(mark))
    key = DaskFabric.task_key(r)

    async def go():
        task = asyncio.ensure_future(dfab.aevaluate(r))
        await asyncio.sleep(0)  # aevaluate submits before its first wait
        for _ in range(1000):  # until the scheduler has the task queued
            if _on_scheduler(client, key):
                break
        else:
            pytest.fail("the scheduler never got the task")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    assert dfab.stats()["cancelled"] == 1
    # The release reaches the scheduler, then the worker it had queued the
    # task on, asynchronously: wait until neither holds it.
    for _ in range(1000):
        if not _on_scheduler(client, key) and not any(client.run(
                lambda dask_worker, key=key: key in dask_worker.state.tasks).values()):
            break
    else:
        pytest.fail("the cancelled task stayed on the cluster")
    distributed.Event(release, client=client).set()
    assert len({b.result(timeout=60) for b in blockers}) == 2
    # Both workers free again, and a task submitted after the release has
    # run on each: the cancelled one is gone, never run.
    assert all(client.gather([client.submit(os.getpid, pure=False) for _ in range(4)]))
    assert not mark.exists()


def test_a_running_task_goes_on_and_its_reply_is_recorded(client, dfab, tmp_path):
    started, release = _name(), _name()
    with EvalCassette(str(tmp_path / "n.fab")) as cas:
        relay = fabric.LedgeredRelayFabric(dfab, cas)
        r = ops.block.request(started, release)
        with pytest.raises(fabric.DeadlineExceeded) as info:
            # The op waits for the release, which comes only after the
            # caller gave up: the deadline always passes first.
            relay.evaluate(r, timeout=0.5)
        assert dfab.stats()["abandoned"] == 1
        distributed.Event(release, client=client).set()
        pid = info.value.pending_reply.result(timeout=60).value
        assert pid != os.getpid() and r.key in cas
        assert relay.evaluate(r).value == pid


def test_a_worker_killed_mid_task(client, dfab, tmp_path):
    marker, started = str(tmp_path / "marker"), _name()
    r = ops.killable.request(marker, started)
    with fabric.LocalFabric() as threads:
        fut = threads._pool().submit(dfab.evaluate, r)
        assert distributed.Event(started, client=client).wait(timeout=60)
        with open(marker) as f:
            victim = int(f.read())
        os.kill(victim, signal.SIGKILL)
        # Dask runs the task again on the other worker, which answers.
        status, pid = fut.result(timeout=120).value
    assert status == "survived" and pid != victim


def test_bad_arguments(client):
    with pytest.raises(ValueError, match="stream_window"):
        DaskFabric(client, stream_window=0)
    with pytest.raises(TypeError, match="Client"):
        DaskFabric(object())
    fab = DaskFabric(client, ops=ops.REG)
    with pytest.raises(TypeError, match="stream op"):
        fab.evaluate(ops.gated.request(1, "g", "l"))
    with pytest.raises(TypeError, match="not a stream op"):
        fab.stream(ops.where.request(1))
    fab.close()
    with pytest.raises(fabric.FabricUnavailable):
        fab.evaluate(ops.where.request(1))


def test_async_twins(client, dfab, tmp_path):
    gate, log = _name(), str(tmp_path / "log")
    distributed.Event(gate, client=client).set()

    async def go():
        reply = await dfab.aevaluate(ops.where.request(9))
        items = [x async for x in dfab.astream(ops.gated.request(4, gate, log))]
        return reply, items

    reply, items = asyncio.run(go())
    assert reply.value[0] == 81 and reply.value[1] != os.getpid()
    assert items == [0, 1, 2, 3]


def test_secret_refs_resolve_on_the_worker_and_never_leak(client, tmp_path, caplog):
    import json
    import logging

    SecretRef = fabric.SecretRef  # the public spelling
    caplog.set_level(logging.DEBUG)
    value = "planted-secret-db-do-not-leak"
    path = tmp_path / "secrets.json"  # as a worker's machine holds it
    path.write_text(json.dumps({"db": value}))
    fab = DaskFabric(client, ops=ops.REG, secrets=str(path), grants=["secret:db"])
    with EvalCassette(str(tmp_path / "n.fab")) as cas:
        node = ContentAddressedFabric("n1", cas, home=fab)
        r = ops.use_secret.request("db", SecretRef("db"))
        reply = node.evaluate(r, grants=["secret:db"])
        assert reply.value["ok"] is True and reply.value["pid"] != os.getpid()
        assert reply.value["token"] is fabric.REDACTED  # the Secret stayed on the worker
        items = list(node.stream(ops.use_secret_stream.request("db", SecretRef("db")),
                                 grants=["secret:db"]))
        assert [i["ok"] for i in items] == [True] * 3
        assert all(i["token"] is fabric.REDACTED for i in items)
        submitted = fab.stats()["submitted"]
        with pytest.raises(CapabilityDenied, match="does not travel to a worker"):
            fab.evaluate(ops.use_secret.request("db", fabric.Secret(value)))
        with pytest.raises(CapabilityDenied, match="secret:other"):
            fab.evaluate(ops.use_secret.request("other", SecretRef("other")))
        assert fab.stats()["submitted"] == submitted  # refused before the cluster
        with pytest.raises(CapabilityDenied, match="no secret named 'gone'"):
            fab.evaluate(ops.use_secret.request("gone", SecretRef("gone")), grants=["*"])
        texts = [repr(reply), repr(items), repr(node.stats()), repr(fab.stats())]
    texts.append((tmp_path / "n.fab").read_bytes().decode("latin-1"))
    texts.append(caplog.text)
    assert value not in "\n".join(texts)
    fab.close()


def test_a_running_tasks_late_reply_is_recorded_by_the_node(client, dfab, tmp_path):
    # The same through ContentAddressedFabric: home's pending_reply is
    # recorded and announced when the task ends.
    started, release = _name(), _name()
    with EvalCassette(str(tmp_path / "n.fab")) as cas:
        node = ContentAddressedFabric("n1", cas, home=dfab)
        r = ops.block.request(started, release)
        with pytest.raises(fabric.DeadlineExceeded) as info:
            # The op waits for the release: always late. (The bound leaves the
            # task time to start; one not started would be cancelled instead.)
            node.evaluate(r, timeout=3)
        assert distributed.Event(started, client=client).wait(timeout=60)
        assert r.key not in cas
        distributed.Event(release, client=client).set()
        pid = info.value.pending_reply.result(timeout=60).value
        assert r.key in cas and "n1" in node.holders.holders_of(r.key)
        reply = node.evaluate(r)
        assert reply.value == pid and reply.source == "local"


def _runs(log):
    try:
        with open(log) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def _concurrently(fab, request, n):
    import threading
    out = []
    threads = [threading.Thread(target=lambda: out.append(fab.evaluate(request)))
               for _ in range(n)]
    for t in threads:
        t.start()
    return threads, out


def test_identical_requests_in_flight_share_one_task_but_never_uncacheable(client, dfab,
                                                                            tmp_path):
    from conftest import wait_for
    log, release = str(tmp_path / "shared.log"), _name()
    r = ops.counted.request(log, release)
    threads, out = _concurrently(dfab, r, 4)
    # Every caller holds a future of the one task before it may end.
    key = DaskFabric.task_key(r)
    wait_for(lambda: client.refcount.get(key, 0) == 4 and _runs(log) == 1,
             "four futures of one running task")
    distributed.Event(release, client=client).set()
    for t in threads:
        t.join(60)
    assert len(out) == 4 and len({rep.value for rep in out}) == 1 and _runs(log) == 1

    log, release = str(tmp_path / "unc.log"), _name()
    threads, out = _concurrently(dfab, ops.counted_uncacheable.request(log, release), 2)
    wait_for(lambda: _runs(log) == 2, "both calls to run (one per worker)")
    distributed.Event(release, client=client).set()
    for t in threads:
        t.join(60)
    assert len(out) == 2 and _runs(log) == 2


_EVENTS = fabric.OpRegistry()
_EVENTS_CLOSED = []


@fabric.op("dask.events.sync", registry=_EVENTS)
def _events_sync(n):
    try:
        for i in range(n):
            if i % 2:
                fabric.diagnostic("Note", f"after {i - 1}")
            yield i
        fabric.diagnostic("Tail", "end")
    finally:
        _EVENTS_CLOSED.append("sync")


@fabric.op("dask.events.async", registry=_EVENTS)
async def _events_async(n):
    try:
        for i in range(n):
            if i % 2:
                fabric.diagnostic("Note", f"after {i - 1}")
            await asyncio.sleep(0)
            yield i
        fabric.diagnostic("Tail", "end")
    finally:
        _EVENTS_CLOSED.append("async")


def test_a_worker_streams_sync_and_async_ops_alike():
    # What a worker task runs (no cluster needed): items with each diagnostic
    # before the item after it, cut at answer_limit, the generator closed.
    from fabric.dask_fabric import _events

    note = ("diag", {"kind": "Note", "message": "after 0"})
    whole = [("item", 0), note, ("item", 1), ("item", 2),
             ("diag", {"kind": "Tail", "message": "end"})]
    for op, kind in ((_events_sync, "sync"), (_events_async, "async")):
        _EVENTS_CLOSED.clear()
        assert list(_events(op, op.request(3))) == whole
        assert list(_events(op, op.request(3).replace(answer_limit=2))) == whole[:3]
        assert _EVENTS_CLOSED == [kind, kind]
