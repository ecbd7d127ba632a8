"""ContentAddressedFabric: resolution from holders, peers and home.

Mirrors the seed's content-addressed store scenarios with real cassette
files; peers are in-process ``ContentServeFabric``s over their own ledgers,
the way a network node will serve them.
"""

import asyncio
import os
import re
import subprocess
import sys
import textwrap
import threading

import pytest

import fabric
from fabric import (CapabilityDenied, ContentAddressedFabric, ContentNotHeld, ContentPeer,
                    ContentServeFabric, DeadlineExceeded, EvalReply, HoldingIndex,
                    LocalFabric, NoHolderError, OpRegistry)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class Home:
    """A home site that computes with LocalFabric and counts its calls."""

    def __init__(self, reg, **kw):
        self.inner = LocalFabric(reg, **kw)
        self.calls = 0
        self.lock = threading.Lock()

    def evaluate(self, request, *, grants=None):
        with self.lock:
            self.calls += 1
        return self.inner.evaluate(request, grants=grants)

    def stream(self, request, *, grants=None):
        with self.lock:
            self.calls += 1
        return self.inner.stream(request, grants=grants)


class Partitioned:
    """A peer behind a partition: every call fails like a dead link."""

    def __init__(self):
        self.calls = 0

    def evaluate(self, request, *, grants=None):
        self.calls += 1
        raise ConnectionRefusedError("partitioned")

    def stream(self, request, *, grants=None):
        self.calls += 1
        raise ConnectionRefusedError("partitioned")


class Counting:
    """Wraps a serve fabric and counts the calls that reach it."""

    def __init__(self, inner):
        self.inner = inner
        self.calls = 0

    def evaluate(self, request, *, grants=None):
        self.calls += 1
        return self.inner.evaluate(request, grants=grants)

    def stream(self, request, *, grants=None):
        self.calls += 1
        return self.inner.stream(request, grants=grants)


@pytest.fixture
def reg():
    r = OpRegistry()

    @fabric.op("embed", version=1, registry=r)
    def embed(text):
        return [float(len(text)), float(sum(map(ord, text)) % 97)]

    @fabric.op("guarded", capabilities=("model.call",), registry=r)
    def guarded(x):
        return x * 2

    @fabric.op("broken", registry=r)
    def broken(x):
        raise ValueError(f"cannot handle {x}")

    @fabric.op("tokens", registry=r)
    def tokens(text):
        for i, word in enumerate(text.split()):
            if i == 1:
                fabric.diagnostic("Diagnostic", "second token")
            yield word

    return r


def node(name, cassette_factory, peers=(), home=None, holders=None, **kw):
    cas = cassette_factory(name)
    fab = ContentAddressedFabric(name, cas, peers=peers, home=home, holders=holders, **kw)
    return fab, ContentPeer(name, ContentServeFabric(cas, node=name))


def test_resolves_from_a_peer_holder_with_no_central_router(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = reg.find(fabric.EvalRequest("embed", ("hello",), version=1)).request("hello")
    computed = a.evaluate(req)
    assert computed.source == "home" and home.calls == 1
    b, _ = node("b", cassette_factory, peers=[peer_a])  # no home, no router
    got = b.evaluate(req)
    assert got.source == "peer:a" and got == computed
    assert req.key in b.cassette
    assert b.stats()["peer_hits"] == 1 and home.calls == 1


def test_unheld_content_is_computed_on_home_once_then_held_locally(reg, cassette_factory):
    home = Home(reg)
    a, _ = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("x",), version=1)
    first = a.evaluate(req)
    again = [a.evaluate(req) for _ in range(3)]
    assert home.calls == 1
    assert all(r == first and r.source == "local" for r in again)
    assert a.holders.holders_of(req.key) == ["a"]
    s = a.stats()
    assert s["home_computes"] == 1 and s["local_hits"] == 3 and s["bytes_recorded"] > 0


def test_home_capability_denial_and_home_errors_are_not_recorded(reg, cassette_factory):
    home = Home(reg)
    a, _ = node("a", cassette_factory, home=home)
    guarded = fabric.EvalRequest("guarded", (2,), required_capabilities=())
    with pytest.raises(CapabilityDenied):
        a.evaluate(guarded)  # the op declares model.call; home denies it
    assert guarded.key not in a.cassette
    with pytest.raises(ValueError, match="cannot handle 3"):
        a.evaluate(fabric.EvalRequest("broken", (3,)))
    assert fabric.EvalRequest("broken", (3,)).key not in a.cassette
    assert len(a.cassette) == 0 and len(a.holders) == 0
    assert a.stats()["failures"] == 2


def test_third_node_resolves_from_the_second_after_it_computes(reg, cassette_factory):
    home = Home(reg)
    holders = HoldingIndex()
    a, peer_a = node("a", cassette_factory, home=home, holders=holders)
    b, peer_b = node("b", cassette_factory, peers=[peer_a], holders=holders)
    req = fabric.EvalRequest("embed", ("abc",), version=1)
    a.evaluate(req)
    assert b.evaluate(req).source == "peer:a"
    # c knows only b; b became a holder when it recorded the reply.
    c, _ = node("c", cassette_factory, peers=[peer_b], holders=holders)
    got = c.evaluate(req)
    assert got.source == "peer:b" and home.calls == 1
    assert holders.holders_of(req.key) == ["a", "b", "c"]


def test_partitioned_holder_is_skipped_and_another_answers(reg, cassette_factory):
    home = Home(reg)
    holders = HoldingIndex()
    a, peer_a = node("a", cassette_factory, home=home, holders=holders)
    req = fabric.EvalRequest("embed", ("p",), version=1)
    a.evaluate(req)
    dead = Partitioned()
    holders.announce(req.key, "0a")  # sorted first, but partitioned
    c, _ = node("c", cassette_factory,
                peers=[ContentPeer("0a", dead), peer_a], holders=holders)
    got = c.evaluate(req)
    assert got.source == "peer:a" and dead.calls == 1
    assert holders.failures("0a") == 1
    steps = c.explain(req).steps
    assert ("holder", "0a", "ConnectionRefusedError: partitioned") in steps
    # Next time the failed holder is tried last.
    req2 = fabric.EvalRequest("embed", ("q",), version=1)
    a.evaluate(req2)
    holders.announce(req2.key, "0a")
    assert holders.holders_of(req2.key) == ["a", "0a"]
    c.evaluate(req2)
    assert dead.calls == 1


def test_two_holders_return_identical_replies(reg, cassette_factory):
    home_a, home_b = Home(reg), Home(reg)
    a, peer_a = node("a", cassette_factory, home=home_a)
    b, peer_b = node("b", cassette_factory, home=home_b)
    req = fabric.EvalRequest("tokens", ("one two three",), stream=True)
    ra = a.evaluate(fabric.EvalRequest("embed", ("same",), version=1))
    rb = b.evaluate(fabric.EvalRequest("embed", ("same",), version=1))
    assert ra == rb
    assert peer_a.serve.evaluate(fabric.EvalRequest("embed", ("same",), version=1)) == \
        peer_b.serve.evaluate(fabric.EvalRequest("embed", ("same",), version=1))
    assert a.evaluate(req) == b.evaluate(req)


def test_local_holdings_survive_a_total_partition(reg, cassette_factory):
    home = Home(reg)
    a, _ = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("held",), version=1)
    a.evaluate(req)
    dead = [Partitioned() for _ in range(3)]
    b, _ = node("b", cassette_factory)
    b.cassette.record(req.key, fabric.fabrics.reply_record(a.evaluate(req)))
    b = ContentAddressedFabric("b", b.cassette,
                               peers=[ContentPeer(f"p{i}", d) for i, d in enumerate(dead)])
    assert b.evaluate(req).source == "local"
    assert [d.calls for d in dead] == [0, 0, 0]


def test_total_partition_without_home_fails_closed_listing_every_peer(reg, cassette_factory):
    dead = [Partitioned(), Partitioned()]
    holders = HoldingIndex()
    empty_cas = cassette_factory("empty")
    peers = [ContentPeer("p0", dead[0]), ContentPeer("p1", dead[1]),
             ContentPeer("empty", ContentServeFabric(empty_cas, node="empty"))]
    b, _ = node("b", cassette_factory, peers=peers, holders=holders)
    req = fabric.EvalRequest("embed", ("nobody",), version=1)
    with pytest.raises(NoHolderError) as ei:
        b.evaluate(req)
    err = ei.value
    assert isinstance(err, LookupError)
    assert [n for n, _ in err.attempts] == ["p0", "p1", "empty"]
    assert isinstance(err.attempts[0][1], ConnectionRefusedError)
    assert isinstance(err.attempts[2][1], ContentNotHeld)
    msg = str(err)
    assert "p0: ConnectionRefusedError: partitioned" in msg and "empty: not held" in msg
    assert req.key not in b.cassette
    ex = b.explain(req)
    assert ex.source is None and ex.steps[-1] == ("home", "-", "no home")


def test_gossip_lets_a_node_ask_only_the_announced_holder(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("gossip",), version=1)
    a.evaluate(req)
    others = [Counting(ContentServeFabric(cassette_factory(f"o{i}"))) for i in range(3)]
    counted_a = Counting(peer_a.serve)
    # z knows nothing about who holds what until it applies a's delta.
    z_holders = HoldingIndex()
    z_holders.apply(a.holders.delta_since(0))
    z, _ = node("z", cassette_factory, holders=z_holders,
                peers=[ContentPeer(f"o{i}", o) for i, o in enumerate(others)]
                + [ContentPeer("a", counted_a)])
    assert z.evaluate(req).source == "peer:a"
    assert [o.calls for o in others] == [0, 0, 0] and counted_a.calls == 1


def test_stale_announcement_falls_back(reg, cassette_factory):
    home = Home(reg)
    holders = HoldingIndex()
    a, peer_a = node("a", cassette_factory, home=home, holders=holders)
    req = fabric.EvalRequest("embed", ("stale",), version=1)
    a.evaluate(req)
    # "s" announced the key but lost its ledger: its serve holds nothing.
    holders.announce(req.key, "a-stale")
    stale = Counting(ContentServeFabric(cassette_factory("stale")))
    b, _ = node("b", cassette_factory, holders=holders,
                peers=[ContentPeer("a-stale", stale), peer_a])
    assert holders.holders_of(req.key) == ["a", "a-stale"]
    holders.mark_failed("a")  # make the stale holder come first
    got = b.evaluate(req)
    assert got.source == "peer:a" and stale.calls == 1
    assert holders.failures("a-stale") == 1 and holders.failures("a") == 0
    # And with no live holder at all, home computes.
    req2 = fabric.EvalRequest("embed", ("stale2",), version=1)
    holders.announce(req2.key, "a-stale")
    b2, _ = node("b2", cassette_factory, holders=holders, home=home,
                 peers=[ContentPeer("a-stale", stale)])
    assert b2.evaluate(req2).source == "home"


def test_grants_are_rechecked_on_a_hit(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = reg.find(fabric.EvalRequest("guarded", version=0)).request(21)
    assert a.evaluate(req, grants={"model.call"}).value == 42
    with pytest.raises(CapabilityDenied, match="model.call"):
        a.evaluate(req)  # held locally, but this caller lacks the grant
    with pytest.raises(CapabilityDenied):
        peer_a.serve.evaluate(req)
    b, _ = node("b", cassette_factory, peers=[peer_a], grants={"model.call"})
    assert b.evaluate(req).value == 42  # the fabric's default grants apply
    assert a.stats()["denied"] == 1


def test_peer_timeout_and_request_deadline(reg, cassette_factory):
    release = threading.Event()

    class Hung:
        calls = 0

        def evaluate(self, request, *, grants=None):
            Hung.calls += 1
            release.wait(10)
            raise ConnectionResetError("late")

        def stream(self, request, *, grants=None):
            raise ConnectionResetError("late")

    home = Home(reg)
    try:
        b, _ = node("b", cassette_factory, peers=[ContentPeer("hung", Hung())], home=home,
                    peer_timeout=0.05)
        req = fabric.EvalRequest("embed", ("t",), version=1)
        assert b.evaluate(req).source == "home"
        assert ("peer", "hung", "DeadlineExceeded: peer 'hung' did not answer within 0.05 s") \
            in b.explain(req).steps
        c, _ = node("c", cassette_factory, peers=[ContentPeer("hung", Hung())], home=home,
                    peer_timeout=None)
        with pytest.raises(DeadlineExceeded) as ei:
            c.evaluate(fabric.EvalRequest("embed", ("u",), version=1, deadline=0.05))
        assert isinstance(ei.value, TimeoutError)
        assert [n for n, _ in ei.value.attempts] == ["hung"]
    finally:
        release.set()


def test_consistency_local_only_and_no_home(reg, cassette_factory):
    home = Home(reg)
    a, _ = node("a", cassette_factory, home=home)
    with pytest.raises(ContentNotHeld, match="local-only"):
        a.evaluate(fabric.EvalRequest("embed", ("l",), version=1, consistency="local-only"))
    with pytest.raises(NoHolderError, match="no-home"):
        a.evaluate(fabric.EvalRequest("embed", ("l",), version=1, consistency="no-home"))
    assert home.calls == 0


def test_a_peer_answering_for_another_key_is_refused(reg, cassette_factory):
    home = Home(reg)

    class Liar:
        def evaluate(self, request, *, grants=None):
            other = fabric.EvalRequest("embed", ("other",), version=1)
            return EvalReply([0.0], (), None, other.key, "held")

        def stream(self, request, *, grants=None):
            raise ContentNotHeld("no")

    b, _ = node("b", cassette_factory, peers=[ContentPeer("liar", Liar())], home=home)
    req = fabric.EvalRequest("embed", ("mine",), version=1)
    got = b.evaluate(req)
    assert got.source == "home" and got.value != [0.0]
    assert "another key" in b.explain(req).steps[1][2]


def test_streams_resolve_record_and_replay_through_peers(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("tokens", ("alpha beta gamma",), stream=True)
    s = a.stream(req)
    assert s.source == "home"
    assert list(s) == ["alpha", "beta", "gamma"]
    assert s.diagnostics == [{"kind": "Diagnostic", "message": "second token"}]
    assert req.key in a.cassette and a.holders.holders_of(req.key) == ["a"]
    local = a.stream(req)
    assert local.source == "local" and list(local) == ["alpha", "beta", "gamma"]
    assert local.diagnostics == s.diagnostics
    b, _ = node("b", cassette_factory, peers=[peer_a])
    viab = b.stream(req)
    assert viab.source == "peer:a" and list(viab) == ["alpha", "beta", "gamma"]
    assert viab.diagnostics == s.diagnostics and home.calls == 1
    # A stream cancelled midway is not held.
    c, _ = node("c", cassette_factory, peers=[peer_a])
    partial = c.stream(req)
    assert next(partial) == "alpha"
    partial.close()
    assert req.key not in c.cassette
    # answer_limit is part of the key: a cut stream is resolved on its own.
    cut = req.replace(answer_limit=1)
    assert list(a.stream(cut)) == ["alpha"] and home.calls == 2


def test_async_twins(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("async",), version=1)

    async def main():
        r1 = await a.aevaluate(req)
        r2 = await a.aevaluate(req)
        items = [x async for x in a.astream(fabric.EvalRequest("tokens", ("x y",), stream=True))]
        return r1, r2, items

    r1, r2, items = asyncio.run(main())
    assert r1.source == "home" and r2.source == "local" and items == ["x", "y"]


def test_explain_and_reprs(reg, cassette_factory):
    home = Home(reg)
    a, _ = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("e",), version=1)
    before = a.explain(req)
    assert before.source is None and ("home", "home", "would compute") in before.steps
    a.evaluate(req)
    after = a.explain(req)
    assert after.source == "local" and after.key == req.key
    assert ("home", "home", "computed") in after.steps
    assert "explain sha256:" in repr(after) and "<table>" in after._repr_html_()
    r = repr(a)
    assert "node='a'" in r and "home_computes=1" in r
    assert "HoldingIndex(1 facts" in repr(a.holders)
    assert "<table>" in a._repr_html_() and "<table>" in a.holders._repr_html_()


RESTART_SCRIPT = textwrap.dedent("""
    import sys
    import fabric
    from fabric import ContentAddressedFabric, EvalCassette, EvalRequest

    path, phase = sys.argv[1], sys.argv[2]

    @fabric.op("embed", version=1)
    def embed(text):
        if phase == "replay":
            raise SystemExit("home must not be called after a restart")
        return [float(len(text))]

    home = fabric.LocalFabric() if phase == "record" else None
    cas = EvalCassette(path)
    fab = ContentAddressedFabric("n1", cas, home=home)
    reqs = [embed.request(t) for t in ("a", "bb", "ccc")]
    replies = [fab.evaluate(r) for r in reqs]
    print(phase, [r.source for r in replies], [r.value for r in replies], fab.announce_held())
    cas.close()
""")


def test_cassette_replays_holdings_after_the_node_restarts(tmp_path):
    path = str(tmp_path / "node.ledger")
    env = dict(os.environ, PYTHONPATH=ROOT)
    out1 = subprocess.run([sys.executable, "-c", RESTART_SCRIPT, path, "record"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert out1.returncode == 0, out1.stderr
    assert out1.stdout.split("[")[0].strip() == "record"
    assert "'home', 'home', 'home'" in out1.stdout
    out2 = subprocess.run([sys.executable, "-c", RESTART_SCRIPT, path, "replay"],
                          capture_output=True, text=True, env=env, timeout=60)
    assert out2.returncode == 0, out2.stderr
    assert "'local', 'local', 'local'" in out2.stdout
    assert "[[1.0], [2.0], [3.0]] 3" in out2.stdout


def test_hit_path_answers_and_refuses_bad_arguments(reg, cassette_factory):
    # How fast the hit is (it runs in C) is guarded by bench/fabric.py.
    cas = cassette_factory("w")
    fab = ContentAddressedFabric("w", cas, home=Home(reg))
    req = fabric.EvalRequest("embed", ("w",), version=1)
    assert fab.evaluate(req).source == "home"
    for _ in range(3):
        reply = fab.evaluate(req)
        assert type(reply) is EvalReply and reply.source == "local"
    assert fab.stats()["local_hits"] == 3
    with pytest.raises(TypeError, match="expected an EvalRequest"):
        fab.evaluate("not a request")
    with pytest.raises(TypeError, match="unexpected keyword"):
        fab.evaluate(req, grant=())
    with pytest.raises(TypeError, match="single string"):
        fab.evaluate(req, grants="model.call")


@pytest.mark.parametrize("bad, exc, message", [
    ("1", TypeError, "timeout must be a number of seconds or None, not str"),
    (True, TypeError, "timeout must be a number of seconds or None, not bool"),
    (-1, ValueError, "timeout must be >= 0 seconds or None, not -1"),
    (float("nan"), ValueError, "timeout must be >= 0 seconds or None, not nan"),
])
def test_a_bad_timeout_is_refused_on_a_hit_and_a_miss_alike(reg, cassette_factory, bad, exc,
                                                             message):
    # As LocalFabric refuses it (test_fabrics_time), not a TypeError from
    # float + str on a miss, a DeadlineExceeded for -1, or nothing on a hit.
    fab = ContentAddressedFabric("t", cassette_factory("t"), home=Home(reg))
    held = fabric.EvalRequest("embed", ("held",), version=1)
    fab.evaluate(held)
    for req in (held, fabric.EvalRequest("embed", ("missed",), version=1)):
        with pytest.raises(exc, match=re.escape(message)):
            fab.evaluate(req, timeout=bad)
        with pytest.raises(exc, match=re.escape(message)):
            asyncio.run(fab.aevaluate(req, timeout=bad))
    sreq = fabric.EvalRequest("tokens", ("a b",), stream=True)
    with pytest.raises(exc, match=re.escape(message)):
        fab.stream(sreq, timeout=bad)
    with pytest.raises(exc, match=re.escape(message)):
        fab.astream(sreq, timeout=bad)
    assert fab.stats()["local_hits"] == 0 and len(fab.cassette) == 1


def test_a_cassette_home_or_request_of_the_wrong_kind_is_named(reg, cassette_factory,
                                                                tmp_path):
    cas = cassette_factory("n")
    with pytest.raises(TypeError, match=r"cassette must be an EvalCassette .*not str "
                                        r"\(open one: fabric\.EvalCassette\(path\)\)"):
        ContentAddressedFabric("n", str(tmp_path / "n.fabl"))
    with pytest.raises(TypeError, match="cassette must be an EvalCassette .*not NoneType"):
        ContentAddressedFabric("n", None)
    with pytest.raises(TypeError, match="cassette must be an EvalCassette .*not str"):
        fabric.LedgeredRelayFabric(Home(reg), str(tmp_path / "n.fabl"))
    with pytest.raises(TypeError, match=r"home must be a fabric .*not int"):
        ContentAddressedFabric("n", cas, home=3)
    fab = ContentAddressedFabric("n", cas, home=Home(reg))
    with pytest.raises(TypeError, match=r"home must be a fabric .*not str"):
        fab.home = "fabric://127.0.0.1:7411"
    assert isinstance(fab.home, Home)
    fab.home = None
    with pytest.raises(TypeError, match="expected an EvalRequest, not int"):
        fab.explain(3)


def test_a_miss_asks_in_order_and_explains_it(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("c-path",), version=1)
    a.evaluate(req)
    empty = ContentPeer("e", ContentServeFabric(cassette_factory("e"), node="e"))
    b, _ = node("b", cassette_factory, peers=[empty, peer_a], peer_timeout=None)
    reply = b.evaluate(req)
    assert reply.source == "peer:a" and req.key in b.cassette
    assert b.holders.holders_of(req.key) == ["b"]
    assert b.explain(req).steps == [("local", "b", "not held"), ("peer", "e", "not held"),
                                    ("peer", "a", "hit"), ("local", "b", "held now (first "
                                                                        "from peer:a)")]


def test_a_record_that_is_not_a_reply_is_refused(reg, cassette_factory):
    cas = cassette_factory("junk")
    req = fabric.EvalRequest("embed", ("junk",), version=1)
    cas.record(req.key, "not a reply record")
    fab = ContentAddressedFabric("j", cas)
    with pytest.raises(fabric.FabricError, match="not a reply record"):
        fab.evaluate(req)


def test_a_failed_record_fails_the_call_and_nothing_is_announced(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("embed", ("rec",), version=1)
    a.evaluate(req)

    class FullDisk:
        """A cassette whose disk is full: lookups work, records fail."""

        def get(self, key):
            return None

        def __contains__(self, key):
            return False

        def record(self, key, reply):
            raise OSError(28, "No space left on device")

    b = ContentAddressedFabric("b", FullDisk(), peers=[peer_a], home=home)
    with pytest.raises(OSError, match="No space left"):
        b.evaluate(req)
    assert b.holders.holders_of(req.key) == []
    assert b.stats()["failures"] == 1 and b.stats()["peer_hits"] == 0
    assert b.explain(req).source is None and home.calls == 1


def test_a_base_exception_from_a_peer_is_not_swallowed(reg, cassette_factory):
    class Interrupting:
        def evaluate(self, request, *, grants=None):
            raise KeyboardInterrupt

        def stream(self, request, *, grants=None):
            raise KeyboardInterrupt

    home = Home(reg)
    b, _ = node("b", cassette_factory, peers=[ContentPeer("i", Interrupting())], home=home,
                peer_timeout=None)
    req = fabric.EvalRequest("embed", ("kb",), version=1)
    with pytest.raises(KeyboardInterrupt):
        b.evaluate(req)
    assert home.calls == 0 and req.key not in b.cassette
    assert b.stats()["failures"] == 1


def test_resolution_object_refuses_misuse(reg, cassette_factory):
    from fabric.resolving import Resolution

    home = Home(reg)
    req = fabric.EvalRequest("embed", ("misuse",), version=1)
    res = Resolution(req, req.key, node="b", peers={}, holders=None, home=home)
    with pytest.raises(RuntimeError, match="call next"):
        res.answered(None)
    ask = res.next()
    assert ask.name == "home" and ask.stage == "home" and ask.timeout is None
    with pytest.raises(RuntimeError, match="being asked"):
        res.next()
    with pytest.raises(TypeError, match="exception instance"):
        res.failed("not an exception")
    reply = ask.target.evaluate(req)
    assert res.answered(reply) is reply
    with pytest.raises(RuntimeError, match="being recorded"):
        res.next()
    assert res.held(reply).source == "home"
    with pytest.raises(RuntimeError, match="finished"):
        res.next()


class Flaky:
    """A peer serving a stream that breaks after `good` items (0: before any)."""

    def __init__(self, items, good):
        self.items, self.good, self.calls = items, good, 0

    def evaluate(self, request, *, grants=None):
        raise ConnectionResetError("link dropped")

    def stream(self, request, *, grants=None):
        self.calls += 1

        def gen():
            yield from self.items[:self.good]
            raise ConnectionResetError("link dropped")

        return gen()


def test_a_stream_source_failing_before_its_first_item_fails_over(reg, cassette_factory):
    home = Home(reg)
    a, peer_a = node("a", cassette_factory, home=home)
    req = fabric.EvalRequest("tokens", ("alpha beta gamma",), stream=True)
    assert list(a.stream(req)) == ["alpha", "beta", "gamma"]
    flaky = Flaky(["alpha"], good=0)
    holders = HoldingIndex()
    holders.announce(req.key, "0flaky")
    b, _ = node("b", cassette_factory, holders=holders,
                peers=[ContentPeer("0flaky", flaky), peer_a])
    s = b.stream(req)
    assert s.source == "peer:a" and list(s) == ["alpha", "beta", "gamma"]
    assert s.diagnostics == [{"kind": "Diagnostic", "message": "second token"}]
    assert flaky.calls == 1 and holders.failures("0flaky") == 1
    assert req.key in b.cassette
    assert ("holder", "0flaky", "ConnectionResetError: link dropped") in b.explain(req).steps


def test_a_stream_failing_after_items_ends_with_remote_error_and_is_not_held(
        reg, cassette_factory):
    home = Home(reg)
    req = fabric.EvalRequest("tokens", ("alpha beta gamma",), stream=True)
    flaky = Flaky(["alpha", "beta"], good=2)
    b, _ = node("b", cassette_factory, peers=[ContentPeer("f", flaky)], home=home)
    s = b.stream(req)
    assert s.source == "peer:f"
    got = []
    with pytest.raises(fabric.RemoteError, match="failed after 2 items") as ei:
        for x in s:
            got.append(x)
    assert got == ["alpha", "beta"]  # given to the caller: no silent restart elsewhere
    err = ei.value
    assert err.node == "f" and err.remote_type == "ConnectionResetError"
    assert isinstance(err.__cause__, ConnectionResetError)
    assert s.diagnostics[-1]["kind"] == "StreamInterrupted"
    assert req.key not in b.cassette and home.calls == 0
    assert b.holders.failures("f") == 1 and b.stats()["failures"] == 1
    assert b.explain(req).source is None
    # The failed peer now goes last, so the next call starts from home.
    flaky.good = 0
    again = b.stream(req)
    assert again.source == "home" and list(again) == ["alpha", "beta", "gamma"]
    assert req.key in b.cassette


def test_a_home_stream_failing_midway_keeps_its_error_and_is_not_held(reg, cassette_factory):
    @fabric.op("breaks", registry=reg)
    def breaks(n):
        yield 1
        raise RuntimeError("broke midway")

    home = Home(reg)
    b, _ = node("b", cassette_factory, home=home)
    req = breaks.request(1)
    s = b.stream(req)
    assert next(s) == 1
    with pytest.raises(RuntimeError, match="broke midway") as ei:
        next(s)
    assert any("cannot restart" in n for n in ei.value.__notes__)
    assert s.diagnostics[-1]["kind"] == "StreamInterrupted"
    assert req.key not in b.cassette and len(b.holders) == 0


def test_stream_deadline_is_checked_per_item(reg, cassette_factory):
    gate = threading.Event()

    @fabric.op("slow", registry=reg)
    def slow(n):
        yield 0
        gate.wait(10)  # the test opens it once the deadline has passed
        yield 1
        yield 2

    home = Home(reg)
    b, _ = node("b", cassette_factory, home=home)
    now = [0.0]  # the fabric's clock, moved by the test: no wait on the real one
    b._plan.clock = lambda: now[0]
    req = slow.request(3).replace(deadline=5.0)
    s = b.stream(req)
    assert next(s) == 0
    now[0] = 5.0  # the deadline passed between two items
    gate.set()
    with pytest.raises(DeadlineExceeded, match="after 1 items"):
        next(s)
    assert req.key not in b.cassette


def test_aevaluate_awaits_asyncio_peers_and_home_on_the_loop(reg, cassette_factory):
    home_inner = LocalFabric(reg)

    class AsyncPeer:
        """An asyncio peer: its aevaluate is awaited; its evaluate must not run."""

        def __init__(self, serve):
            self.serve, self.threads, self.cancelled = serve, [], False
            self.hang = False

        def evaluate(self, request, *, grants=None):
            raise AssertionError("the sync evaluate of an asyncio peer was called")

        def stream(self, request, *, grants=None):
            raise AssertionError("not used")

        async def aevaluate(self, request, *, grants=None):
            self.threads.append(threading.get_ident())
            try:
                if self.hang:
                    await asyncio.Event().wait()
                await asyncio.sleep(0)
                return self.serve.evaluate(request, grants=grants)
            except asyncio.CancelledError:
                self.cancelled = True
                raise

    class AsyncHome:
        calls = 0

        def evaluate(self, request, *, grants=None):
            raise AssertionError("the sync evaluate of an asyncio home was called")

        async def aevaluate(self, request, *, grants=None):
            AsyncHome.calls += 1
            return await home_inner.aevaluate(request, grants=grants)

    a, peer_a = node("a", cassette_factory, home=AsyncHome())
    req = fabric.EvalRequest("embed", ("aio",), version=1)
    async_a = AsyncPeer(peer_a.serve)
    hung = AsyncPeer(peer_a.serve)
    hung.hang = True
    b, _ = node("b", cassette_factory, peers=[ContentPeer("hung", hung), ContentPeer("a", async_a)],
                peer_timeout=0.05)

    async def main():
        loop_thread = threading.get_ident()
        computed = await a.aevaluate(req)
        got = await b.aevaluate(req)
        return loop_thread, computed, got

    loop_thread, computed, got = asyncio.run(main())
    assert computed.source == "home" and AsyncHome.calls == 1
    assert got.source == "peer:a" and got == computed and req.key in b.cassette
    assert async_a.threads == [loop_thread] and hung.threads == [loop_thread]
    assert hung.cancelled  # the timed-out peer's coroutine was cancelled, not left running
    assert ("peer", "hung", "DeadlineExceeded: peer 'hung' did not answer within 0.05 s") \
        in b.explain(req).steps
    assert b.holders.holders_of(req.key) == ["b"] and b.stats()["peer_hits"] == 1


def test_aevaluate_fails_closed_like_evaluate(reg, cassette_factory):
    dead = Partitioned()
    b, _ = node("b", cassette_factory, peers=[ContentPeer("p0", dead)])
    req = fabric.EvalRequest("embed", ("aio-none",), version=1)

    async def main():
        with pytest.raises(NoHolderError) as ei:
            await b.aevaluate(req)
        return ei.value

    err = asyncio.run(main())
    assert [n for n, _ in err.attempts] == ["p0"] and dead.calls == 1
    assert "p0: ConnectionRefusedError: partitioned" in str(err)
    assert b.stats()["failures"] == 1 and req.key not in b.cassette


# ----------------------------------------------------- the plan's holding index

def test_a_holding_index_subclass_is_called_through_its_own_methods(reg, cassette_factory):
    """The resolution calls a HoldingIndex's fact store directly; a subclass
    (which may override announce, holders_of or failures) is called through
    its methods, and an index set later is the one used."""

    class Watched(HoldingIndex):
        def __init__(self):
            super().__init__()
            self.calls = []

        def announce(self, key, holder):
            self.calls.append(("announce", holder))
            return super().announce(key, holder)

        def holders_of(self, key):
            self.calls.append(("holders_of",))
            return super().holders_of(key)

    a, peer_a = node("a", cassette_factory, home=Home(reg))
    req = reg.find(fabric.EvalRequest("embed", ("watched",), version=1)).request("watched")
    a.evaluate(req)
    watched = Watched()
    b, _ = node("b", cassette_factory, peers=[peer_a], holders=watched)
    assert b.evaluate(req).source == "peer:a"
    assert watched.calls == [("holders_of",), ("announce", "b")]
    assert watched.holds(req.key, "b")
    # A plain index set afterwards takes the announcements from then on.
    plain = HoldingIndex()
    b.holders = plain
    req2 = reg.find(fabric.EvalRequest("embed", ("plain",), version=1)).request("plain")
    a.evaluate(req2)
    assert b.evaluate(req2).source == "peer:a"
    assert plain.holds(req2.key, "b") and not watched.holds(req2.key, "b")
    assert len(watched.calls) == 2


def test_a_lone_peer_is_asked_as_a_holder_only_when_announced(reg, cassette_factory):
    """With one peer the order is made once per plan: the peer is asked as
    an announced holder when the index says it holds the key (a failure then
    marks it failed), else as a plain peer (its "not held" is benign)."""
    holders = HoldingIndex()
    a_cas = cassette_factory("a")
    a = ContentServeFabric(a_cas, node="a")
    b = ContentAddressedFabric("b", cassette_factory("b"), peers=[ContentPeer("a", a)],
                               holders=holders)
    req = reg.find(fabric.EvalRequest("embed", ("lone",), version=1)).request("lone")
    with pytest.raises(fabric.NoHolderError):
        b.evaluate(req)
    assert ("peer", "a", "not held") in b.explain(req).steps
    assert holders.failures("a") == 0
    holders.announce(req.key, "a")  # stale: a does not hold it
    with pytest.raises(fabric.NoHolderError):
        b.evaluate(req)
    assert ("holder", "a", "not held") in b.explain(req).steps
    assert holders.failures("a") == 1
    a_cas.record(req.key, [[1.0, 2.0], [], None])
    got = b.evaluate(req)
    assert got.source == "peer:a" and got.value == [1.0, 2.0]
    assert b.explain(req).steps[:2] == [("local", "b", "not held"), ("holder", "a", "hit")]
    assert holders.failures("a") == 0  # it answered
