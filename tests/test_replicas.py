"""ReplicaGroup: the seed's behaviours on real worker processes."""

import os
import signal

import pytest

import fabric
from fabric import CapabilityDenied, ReplicaGroup
from fabric.replicas import replica_identity

REG = fabric.OpRegistry()
SEED = bytes([7]) * 32


@fabric.op("rep.square", registry=REG)
def square(x):
    return x * x


@fabric.op("rep.pid", registry=REG)
def pid(_x):
    return os.getpid()


@fabric.op("rep.die_once", registry=REG)
def die_once(marker):
    # The first replica to run this dies (SIGKILL) mid-request; the retry
    # on another replica finds the marker and answers.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


@fabric.op("rep.die_once_effect", registry=REG, sharing="recorded")
def die_once_effect(marker):
    # Like die_once, for an op whose effects must not be repeated.
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "ran twice"


@fabric.op("rep.hang", registry=REG)
def hang(_x):
    import threading
    threading.Event().wait(300)  # until the replica is restarted
    return "woke"


@fabric.op("rep.count", registry=REG)
def count(n):
    yield from range(n)


@pytest.fixture
def group():
    g = ReplicaGroup("squares", 3, group_seed=SEED, ops=REG)
    yield g
    g.close()


def test_deterministic_identity_and_group_id():
    assert replica_identity(SEED, 0) == replica_identity(SEED, 0)
    assert replica_identity(SEED, 0) != replica_identity(SEED, 1)
    import hashlib
    import hmac
    assert replica_identity(SEED, 2) == hmac.new(SEED, b"\x02", hashlib.sha256).digest()
    with pytest.raises(ValueError):
        replica_identity(SEED, 255)


def test_spawn_group(group):
    members = group.replicas()
    assert [m["index"] for m in members] == [0, 1, 2]
    assert len({m["identity"] for m in members}) == 3
    assert len({m["pid"] for m in members}) == 3
    assert group.health() == fabric.GroupHealth("healthy", 3, 3)
    assert group.evaluate(square.request(9)).value == 81
    g2 = ReplicaGroup("squares", 1, group_seed=SEED, ops=REG)
    try:
        assert g2.group_id == group.group_id
        assert g2.replicas()[0]["identity"] == members[0]["identity"]
    finally:
        g2.close()


def test_zero_replicas_rejected(group):
    with pytest.raises(ValueError, match="must be > 0"):
        ReplicaGroup("x", 0, group_seed=SEED, ops=REG)
    with pytest.raises(ValueError, match="must be > 0"):
        group.scale_to(0)
    with pytest.raises(ValueError, match="32 bytes"):
        ReplicaGroup("x", 1, group_seed=b"short", ops=REG)
    with pytest.raises(ValueError, match="lb_strategy"):
        ReplicaGroup("x", 1, group_seed=SEED, ops=REG, lb_strategy="random")


def test_scale_up_and_down(group):
    ids = [m["identity"] for m in group.replicas()]
    group.scale_to(5)
    assert group.replica_count == 5
    assert [m["identity"] for m in group.replicas()][:3] == ids
    group.scale_to(2)
    assert [m["identity"] for m in group.replicas()] == ids[:2]
    assert group.health().state == "healthy"


def test_crash_respawns_same_identity_and_retries(group, tmp_path):
    before = {m["index"]: m for m in group.replicas()}
    assert group.evaluate(die_once.request(str(tmp_path / "marker"))).value == "survived"
    after = {m["index"]: m for m in group.replicas()}
    changed = [i for i in before if before[i]["pid"] != after[i]["pid"]]
    assert len(changed) == 1
    i = changed[0]
    assert after[i]["identity"] == before[i]["identity"]
    assert group.stats()["retried"] == 1
    assert group.replica_stats()[i]["respawns"] == 1
    assert group.health().state == "healthy"


def test_crash_of_an_op_that_is_not_pure_is_not_retried(group, tmp_path):
    r = die_once_effect.request(str(tmp_path / "marker"))
    assert r.sharing == "recorded"
    with pytest.raises(fabric.FabricError, match="not retried.*'recorded'"):
        group.evaluate(r)
    assert group.stats()["retried"] == 0
    assert group.health().state == "healthy"  # the dead replica was respawned
    assert group.evaluate(square.request(4)).value == 16


def test_timeout_restarts_the_replica_and_raises(group):
    assert ReplicaGroup.honours_timeout is True
    before = {m["index"]: m["pid"] for m in group.replicas()}
    with pytest.raises(fabric.DeadlineExceeded, match="restarted"):
        group.evaluate(hang.request(1), timeout=0.2)
    after = {m["index"]: m["pid"] for m in group.replicas()}
    assert sum(before[i] != after[i] for i in before) == 1
    assert group.health().state == "healthy"
    assert group.evaluate(square.request(5), timeout=60).value == 25
    with pytest.raises(ValueError):
        group.evaluate(square.request(5), timeout=-1)


def test_health_states(group):
    pids = [m["pid"] for m in group.replicas()]
    os.kill(pids[0], signal.SIGKILL)
    group._replicas[0].worker.proc.join()
    assert group.health() == fabric.GroupHealth("degraded", 2, 3)
    for p in pids[1:]:
        os.kill(p, signal.SIGKILL)
    for r in group._replicas:
        r.worker.proc.join()
    assert group.health() == fabric.GroupHealth("dead", 0, 3)
    assert sorted(group.heal()) == [0, 1, 2]
    assert group.health().state == "healthy"
    assert group.evaluate(square.request(3)).value == 9


@pytest.mark.parametrize("strategy", ["round-robin", "least-loaded", "consistent-hash",
                                      "power-of-two"])
def test_strategies_route_to_members(strategy):
    with ReplicaGroup("s", 3, group_seed=SEED, ops=REG, lb_strategy=strategy) as g:
        pids = {m["pid"] for m in g.replicas()}
        seen = {g.evaluate(pid.request(i)).value for i in range(12)}
        assert seen <= pids
        if strategy == "round-robin":
            assert seen == pids
        assert list(g.stream(count.request(3))) == [0, 1, 2]


def test_consistent_hash_is_sticky_and_moves_few_keys():
    with ReplicaGroup("s", 4, group_seed=SEED, ops=REG, lb_strategy="consistent-hash") as g:
        reqs = [square.request(i) for i in range(200)]
        first = [g.route(r) for r in reqs]
        assert [g.route(r) for r in reqs] == first
        g.scale_to(5)
        moved = sum(1 for r, a in zip(reqs, first) if g.route(r) != a)
        # Rendezvous hashing: only keys that now prefer replica 4 move.
        assert all(g.route(r) == 4 for r, a in zip(reqs, first) if g.route(r) != a)
        assert 0 < moved < 100


# -- identical requests in flight at once run once ------------------------------------

import asyncio  # noqa: E402
import threading  # noqa: E402

import replicas_ops  # noqa: E402
from conftest import wait_for  # noqa: E402

GATED = [replicas_ops.gated_count, replicas_ops.gated_fail, replicas_ops.gated_uncacheable]
N = 6


def concurrently(fab, request, n=N):
    """n threads evaluate ``request`` at once: the threads and their
    outcomes (each filled in as its thread ends)."""
    out = [None] * n

    def call(i):
        try:
            out[i] = fab.evaluate(request)
        except Exception as exc:
            out[i] = exc

    threads = [threading.Thread(target=call, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    return threads, out


def all_joined(group, request, d):
    """N callers of a gated ``request`` at once; once every other caller
    joined the first, the gate (under d) opens. Their outcomes."""
    threads, out = concurrently(group, request)
    wait_for(lambda: group.stats()["coalesced"] == N - 1, "every caller to join")
    replicas_ops.open_gate(d)
    for t in threads:
        t.join(60)
    return out


@pytest.fixture
def gated_group():
    g = ReplicaGroup("gated", 3, group_seed=SEED, ops=GATED)
    yield g
    g.close()


def test_concurrent_identical_requests_run_once(gated_group, tmp_path):
    d = str(tmp_path)
    out = all_joined(gated_group, replicas_ops.gated_count.request(d), d)
    assert [r.value for r in out] == ["opened"] * N
    assert replicas_ops.runs(d) == 1
    # Not a cache: once it ended, the same request runs again.
    assert gated_group.evaluate(replicas_ops.gated_count.request(d)).value == "opened"
    assert replicas_ops.runs(d) == 2


def test_every_caller_gets_the_same_error(gated_group, tmp_path):
    d = str(tmp_path)
    out = all_joined(gated_group, replicas_ops.gated_fail.request(d), d)
    assert all(isinstance(e, fabric.RemoteError) for e in out)
    assert len({id(e) for e in out}) == 1
    assert "the shared computation failed" in str(out[0])
    assert replicas_ops.runs(d) == 1


def test_concurrent_async_callers_run_once(gated_group, tmp_path):
    d = str(tmp_path)
    request = replicas_ops.gated_count.request(d)

    async def main():
        calls = [asyncio.ensure_future(gated_group.aevaluate(request)) for _ in range(N * 3)]
        await asyncio.to_thread(wait_for, lambda: gated_group.stats()["coalesced"] == N * 3 - 1,
                                "every async caller to join")
        replicas_ops.open_gate(d)
        return await asyncio.gather(*calls)

    replies = asyncio.run(main())
    assert [r.value for r in replies] == ["opened"] * (N * 3)
    assert replicas_ops.runs(d) == 1


def test_a_waiter_past_its_deadline_gets_the_pending_reply(gated_group, tmp_path):
    d = str(tmp_path)
    request = replicas_ops.gated_count.request(d)
    threads, out = concurrently(gated_group, request, n=1)
    wait_for(lambda: replicas_ops.runs(d) == 1, "the op to start")
    with pytest.raises(fabric.DeadlineExceeded) as info:
        gated_group.evaluate(request, timeout=0.05)  # joins; the gate is shut
    replicas_ops.open_gate(d)
    assert info.value.pending_reply.result(timeout=60).value == "opened"
    threads[0].join(60)
    assert out[0].value == "opened" and replicas_ops.runs(d) == 1


def test_uncacheable_requests_are_never_shared(gated_group, tmp_path):
    d = str(tmp_path)
    threads, out = concurrently(gated_group, replicas_ops.gated_uncacheable.request(d), n=2)
    wait_for(lambda: replicas_ops.runs(d) == 2, "both calls to run")  # on two replicas
    replicas_ops.open_gate(d)
    for t in threads:
        t.join(60)
    assert len({r.value for r in out}) == 2
    assert gated_group.stats()["coalesced"] == 0


@fabric.op("rep.fetch", registry=REG, capabilities=["net.fetch"])
def fetch(x):
    return x


def test_a_request_that_under_declares_its_op_is_refused(group):
    # Its reply would be recorded under a key that does not name what the
    # op needs (or calls an uncacheable op pure).
    short = fabric.EvalRequest("rep.fetch", (1,))
    with pytest.raises(CapabilityDenied, match="net.fetch"):
        group.evaluate(short, grants=["net.fetch"])
    with pytest.raises(fabric.OpNotFound, match="sharing"):
        group.evaluate(fabric.EvalRequest("rep.square", (2,), sharing="uncacheable"))
    assert group.evaluate(fetch.request(1), grants=["net.fetch"]).value == 1


def test_a_closed_group_refuses_async_callers_and_leaves_no_flight(tmp_path):
    g = ReplicaGroup("closed", 1, group_seed=SEED, ops=GATED)
    g.close()
    request = replicas_ops.gated_count.request(str(tmp_path))

    async def twice():
        for _ in range(2):  # the second would wait forever on a flight left behind
            with pytest.raises(fabric.FabricUnavailable):
                await asyncio.wait_for(g.aevaluate(request), 30)

    asyncio.run(twice())
    with pytest.raises(fabric.FabricUnavailable):
        g.evaluate(request)
