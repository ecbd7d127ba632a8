"""The op's sharing class in the key, uncacheable replies never recorded, and
volatile (ignored) keyword arguments kept out of the key (issue 10)."""

from __future__ import annotations

import asyncio
import itertools
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import fabric
from fabric import EvalRequest, OpNotFound

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture
def ops():
    """A registry with one op of each sharing class, each counting its runs."""
    reg = fabric.OpRegistry()
    runs = {"pure": 0, "recorded": 0, "uncacheable": 0, "ticks": 0}

    @fabric.op("t.share.pure", registry=reg)
    def pure(x):
        runs["pure"] += 1
        return [x, runs["pure"]]

    @fabric.op("t.share.recorded", sharing="recorded", registry=reg)
    def recorded(x):
        runs["recorded"] += 1
        return [x, runs["recorded"]]

    @fabric.op("t.share.now", sharing="uncacheable", registry=reg)
    def now(x):
        runs["uncacheable"] += 1
        return [x, runs["uncacheable"]]

    @fabric.op("t.share.ticks", sharing="uncacheable", registry=reg)
    def ticks(n):
        runs["ticks"] += 1
        yield from range(n)

    return reg, runs, pure, recorded, now, ticks


# -- the sharing class is an identity field ------------------------------------

def test_sharing_is_part_of_the_key():
    keys = {s: EvalRequest("op", (1,), sharing=s).key for s in ("pure", "recorded", "uncacheable")}
    assert len(set(keys.values())) == 3
    assert EvalRequest("op", (1,)).key == keys["pure"]
    assert EvalRequest("op", (1,)).sharing == "pure"
    r = EvalRequest("op", (1,), sharing="uncacheable")
    assert r.replace(trace=True).sharing == "uncacheable"
    assert r.replace(sharing="pure").key == keys["pure"]
    assert pickle.loads(pickle.dumps(r)) == r and pickle.loads(pickle.dumps(r)).sharing == \
        "uncacheable"
    assert "sharing='uncacheable'" in repr(r) and "sharing" not in repr(EvalRequest("op"))
    # The last element of the identity array.
    assert r.identity_bytes().endswith(b"\xabuncacheable")


@pytest.mark.parametrize("bad, exc", [("shared", ValueError), ("", ValueError),
                                      ("PURE", ValueError), (1, TypeError), (None, TypeError)])
def test_sharing_refuses_other_values(bad, exc):
    with pytest.raises(exc, match="sharing must be 'pure', 'recorded' or 'uncacheable'"):
        EvalRequest("op", sharing=bad)
    with pytest.raises(exc):
        fabric.op("t.share.bad", sharing=bad, registry=fabric.OpRegistry())(lambda: 1)


def test_op_request_and_name_call_fill_the_sharing_class(ops):
    reg, runs, pure, recorded, now, _ = ops
    assert now.sharing == "uncacheable" and pure.sharing == "pure"
    assert now.request(1).sharing == "uncacheable"
    assert recorded.request(1).sharing == "recorded"
    assert fabric.fabrics._request_for("t.share.now", (1,), {}, reg) == now.request(1)
    assert "sharing='uncacheable'" in repr(now)
    with pytest.raises(AttributeError, match="fixed"):
        now.sharing = "pure"


def test_compute_site_refuses_a_request_with_another_sharing_class(ops):
    reg, runs, _, _, now, ticks = ops
    local = fabric.LocalFabric(reg)
    bare = EvalRequest("t.share.now", (1,))  # built by hand: says pure
    for run in (lambda: local.evaluate(bare), lambda: local.evaluate(bare, timeout=5),
                lambda: list(local.stream(ticks.request(2).replace(sharing="pure")))):
        with pytest.raises(OpNotFound, match="declares sharing 'pure' but the op's sharing "
                                             "class is 'uncacheable'"):
            run()
    assert runs["uncacheable"] == 0 and runs["ticks"] == 0
    # So a relay never records an uncacheable op's reply under a pure key.
    assert local.call(now, 1) == [1, 1]


# -- uncacheable replies are never recorded -------------------------------------

def test_ledgered_relay_never_records_uncacheable(ops, cassette_factory):
    reg, runs, pure, recorded, now, ticks = ops
    cas = cassette_factory()
    relay = fabric.LedgeredRelayFabric(fabric.LocalFabric(reg), cas)
    assert relay.call(now, 1) == [1, 1]
    assert relay.call(now, 1) == [1, 2]  # computed again: no hit
    # By name where the relay cannot look the op up (it is not in the global
    # registry): the request says pure, and the compute site refuses it.
    with pytest.raises(OpNotFound, match="declares sharing 'pure'"):
        relay.call("t.share.now", 1)
    assert now.request(1).key not in cas and EvalRequest("t.share.now", (1,)).key not in cas
    assert list(relay.call(ticks, 3)) == [0, 1, 2]
    assert list(relay.call(ticks, 3)) == [0, 1, 2]
    assert runs["ticks"] == 2 and ticks.request(3).key not in cas
    # pure and recorded are recorded and hit.
    assert relay.call(pure, 1) == relay.call(pure, 1) == [1, 1]
    assert relay.call(recorded, 1) == relay.call(recorded, 1) == [1, 1]
    assert pure.request(1).key in cas and recorded.request(1).key in cas
    assert len(cas) == 2
    st = relay.stats()
    assert st["hits"] == 2 and st["recorded"] == 2


def test_ledgered_relay_async_never_records_uncacheable(ops, cassette_factory):
    reg, runs, _, _, now, ticks = ops
    cas = cassette_factory()
    relay = fabric.LedgeredRelayFabric(fabric.LocalFabric(reg), cas)

    async def main():
        a = await relay.acall(now, 7)
        b = await relay.acall(now, 7)
        items = [x async for x in relay.astream(ticks.request(2))]
        return a, b, items

    a, b, items = asyncio.run(main())
    assert (a, b, items) == ([7, 1], [7, 2], [0, 1])
    assert len(cas) == 0


def test_a_hit_for_an_uncacheable_request_never_happens(ops, cassette_factory):
    """Even if a reply is in the cassette under an uncacheable key (written by
    hand), the relay neither looks it up nor serves it."""
    reg, runs, _, _, now, _ = ops
    cas = cassette_factory()
    cas.record(now.request(1).key, fabric.replies.reply_record(
        fabric.replies.EvalReply("planted", [], None, now.request(1).key, "computed")))
    relay = fabric.LedgeredRelayFabric(fabric.LocalFabric(reg), cas)
    assert relay.call(now, 1) == [1, 1]
    assert relay.stats()["hits"] == 0
    # Nor does ContentAddressedFabric's hit path (in C), by evaluate or call.
    caf = fabric.ContentAddressedFabric("a", cas, home=fabric.LocalFabric(reg))
    assert caf.evaluate(now.request(1)).value == [1, 2]
    assert caf.call(now, 1) == [1, 3]
    assert caf.stats()["local_hits"] == 0


def test_content_addressed_never_records_or_announces_uncacheable(ops, cassette_factory):
    reg, runs, pure, _, now, ticks = ops
    cas = cassette_factory()
    home = fabric.LocalFabric(reg)
    a = fabric.ContentAddressedFabric("a", cas, home=home)
    assert a.call(now, 1) == [1, 1]
    assert a.call(now, 1) == [1, 2]
    assert list(a.call(ticks, 2)) == [0, 1] and list(a.call(ticks, 2)) == [0, 1]
    assert runs["ticks"] == 2
    assert asyncio.run(a.acall(now, 1)) == [1, 3]
    assert len(cas) == 0
    assert a.holders.holders_of(now.request(1).key) == []
    # A pure op beside it is recorded and announced.
    a.call(pure, 1)
    assert pure.request(1).key in cas and a.holders.holders_of(pure.request(1).key) == ["a"]
    # A peer of a never asks a for it (a announced nothing) and computes at its home.
    b = fabric.ContentAddressedFabric(
        "b", cassette_factory(), home=home,
        peers=[fabric.ContentPeer("a", fabric.ContentServeFabric(cas))], holders=a.holders)
    assert b.call(now, 1) == [1, 4] and len(b.cassette) == 0


def test_pytest_plugin_records_no_uncacheable_reply(tmp_path):
    """Recording with the plugin, then replaying: the uncacheable op is not in
    the cassette and runs again on replay; the pure one is replayed."""
    (tmp_path / "test_it.py").write_text(textwrap.dedent("""
        import os
        import fabric

        @fabric.op("t.plugin.now", sharing="uncacheable")
        def now():
            return os.environ["STAMP"]

        @fabric.op("t.plugin.pure")
        def pure():
            return os.environ["STAMP"]

        def test_it(fabric_fabric, fabric_cassette):
            stamp = os.environ["STAMP"]
            assert fabric_fabric.call(now) == stamp
            assert fabric_fabric.call(pure) == "first"
            assert now.request().key not in fabric_cassette
            assert pure.request().key in fabric_cassette
    """))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, env_pp()]))
    for mode, stamp in (("once", "first"), ("none", "second")):
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               f"--fabric-record-mode={mode}", "test_it.py"],
                              cwd=tmp_path, env=dict(env, STAMP=stamp), capture_output=True,
                              text=True, timeout=300)
        assert proc.returncode == 0, (mode, proc.stdout[-2000:], proc.stderr[-2000:])


def env_pp() -> str:
    return os.environ.get("PYTHONPATH", "")


# -- volatile (ignored) keyword arguments -----------------------------------------

@pytest.fixture
def chatty():
    reg = fabric.OpRegistry()
    seen = []

    @fabric.op("t.volatile.sum", ignore=("verbose", "progress"), registry=reg)
    def total(xs, scale=1, verbose=False, *, progress=None):
        seen.append((verbose, progress))
        return sum(xs) * scale

    return reg, seen, total


def test_ignored_kwargs_stay_out_of_the_key(chatty):
    _, _, total = chatty
    base = total.request([1, 2], scale=2)
    for extra in ({"verbose": True}, {"progress": "bar"}, {"verbose": 1, "progress": 2}):
        r = total.request([1, 2], scale=2, **extra)
        assert r.key == base.key and r.identity_bytes() == base.identity_bytes()
        assert dict(r.volatile_kwargs) == extra and dict(r.kwargs) == {"scale": 2}
        assert r == base  # equal requests ask for the same work
    # A keyed argument still changes the key.
    assert total.request([1, 2], scale=3, verbose=True).key != base.key
    assert total.ignore == ("progress", "verbose")
    assert "ignore=('progress', 'verbose')" in repr(total)


def test_the_op_receives_volatile_kwargs_when_it_runs(chatty, cassette_factory):
    reg, seen, total = chatty
    local = fabric.LocalFabric(reg)
    assert local.call(total, [1, 2], verbose=True, progress="p") == 3
    assert local.evaluate(total.request([1, 2], verbose="v")).value == 3
    assert list(local.stream(fabric.op("t.volatile.gen", ignore=("verbose",), registry=reg)(
        lambda n, verbose=False: (yield from [n, verbose])).request(5, verbose=True))) == [5, True]
    assert asyncio.run(local.acall(total, [1], verbose="async")) == 1
    assert seen == [(True, "p"), ("v", None), ("async", None)]
    # Through a cache: the first caller's volatile values computed the reply;
    # a later caller with other values gets that reply (a hit, no run).
    relay = fabric.LedgeredRelayFabric(local, cassette_factory())
    seen.clear()
    assert relay.call(total, [4], verbose=True) == 4
    assert relay.call(total, [4], verbose=False, progress="x") == 4
    assert seen == [(True, None)] and relay.stats()["hits"] == 1
    # Volatile values travel with a pickled request (to worker processes).
    r = pickle.loads(pickle.dumps(total.request([4], verbose=9)))
    assert dict(r.volatile_kwargs) == {"verbose": 9}


def test_ignored_names_are_checked(chatty):
    _, _, total = chatty
    # A positional value for an ignored parameter would be keyed: refused.
    with pytest.raises(TypeError, match="pass 'verbose' by keyword"):
        total.request([1], 2, True)
    assert total.request([1], 2).kwargs == {}  # below that position: fine
    reg = fabric.OpRegistry()
    with pytest.raises(TypeError, match="'quiet', which is not a keyword parameter"):
        fabric.op("t.v.a", ignore=("quiet",), registry=reg)(lambda x, verbose=False: x)
    with pytest.raises(TypeError, match="positional-only"):
        fabric.op("t.v.b", ignore=("x",), registry=reg)(eval("lambda x, /: x"))
    with pytest.raises(TypeError, match="not a single string"):
        fabric.op("t.v.c", ignore="verbose", registry=reg)(lambda verbose=False: 1)
    with pytest.raises(TypeError, match="parameter names"):
        fabric.op("t.v.d", ignore=(1,), registry=reg)(lambda **kw: 1)
    # **kwargs accepts any name.
    o = fabric.op("t.v.e", ignore=("anything",), registry=reg)(lambda **kw: sorted(kw))
    assert fabric.LocalFabric(reg).call(o, anything=1, other=2) == ["anything", "other"]
    assert o.request(anything=1).key == o.request(anything=2).key != o.request(other=1).key


def test_volatile_kwargs_on_a_request():
    r = EvalRequest("op", (1,), {"a": 1}, volatile_kwargs={"verbose": True})
    assert r.key == EvalRequest("op", (1,), {"a": 1}).key
    assert r.replace(volatile_kwargs=None).volatile_kwargs == {}
    assert "volatile_kwargs={'verbose': True}" in repr(r)
    with pytest.raises(TypeError, match="'verbose' is in both kwargs and volatile_kwargs"):
        EvalRequest("op", (), {"verbose": 1}, volatile_kwargs={"verbose": 2})
    with pytest.raises(TypeError, match="volatile_kwargs keys must be str"):
        EvalRequest("op", volatile_kwargs={1: 2})
    with pytest.raises(TypeError, match="volatile_kwargs must be None or a mapping"):
        EvalRequest("op", volatile_kwargs=[("a", 1)])
    # Not keyed, so any value is accepted, keyable or not.
    obj = object()
    assert EvalRequest("op", volatile_kwargs={"cb": obj}).volatile_kwargs["cb"] is obj
    # The caller's dict is copied.
    d = {"verbose": 1}
    r = EvalRequest("op", volatile_kwargs=d)
    d["verbose"] = 2
    assert r.volatile_kwargs == {"verbose": 1}
    with pytest.raises(TypeError):
        r.volatile_kwargs["x"] = 1  # type: ignore[index]


# -- the CLI ----------------------------------------------------------------------

def test_cli_key_import_takes_sharing_and_ignore(tmp_path):
    (tmp_path / "share_ops.py").write_text(textwrap.dedent("""
        import fabric

        @fabric.op("cli.now", sharing="uncacheable", ignore=("verbose",))
        def now(x, verbose=False):
            return x
    """))
    sys.path.insert(0, str(tmp_path))
    try:
        import share_ops
        want = share_ops.now.request(1, verbose=True).key
    finally:
        sys.path.remove(str(tmp_path))
        sys.modules.pop("share_ops", None)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(tmp_path), ROOT, env_pp()]))

    def key(*argv):
        proc = subprocess.run([sys.executable, "-m", "fabric", "key", *argv], env=env,
                              capture_output=True, text=True, timeout=120, cwd=tmp_path)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    assert key("--import", "share_ops", "cli.now", "[1]", '{"verbose": true}') == str(want)
    assert key("--import", "share_ops", "cli.now", "[1]") == str(want)
    assert key("cli.now", "[1]", "--sharing", "uncacheable") == str(want)
    assert key("cli.now", "[1]") != str(want)


def test_every_sharing_and_volatile_combination_keys_consistently():
    """identity_bytes (the slow path) and the key (the fast path) agree for
    every combination of the fields the fast path special-cases."""
    import hashlib

    for sharing, kwargs, caps, vol in itertools.product(
            ("pure", "recorded", "uncacheable"), (None, {"a": 1}), ((), ("c",)),
            (None, {"v": 1})):
        r = EvalRequest("op", (1,), kwargs, required_capabilities=caps, sharing=sharing,
                        volatile_kwargs=vol)
        assert hashlib.sha256(r.identity_bytes()).digest() == r.key.digest


def test_the_network_request_map_carries_the_sharing_class():
    """A peer rebuilds the request from the wire map and checks its key: the
    sharing class travels (an uncacheable request keeps its key); volatile
    keyword arguments do not."""
    from fabric.node import protocol as P

    r = EvalRequest("op", (1,), {"a": 2}, sharing="uncacheable",
                    volatile_kwargs={"verbose": True})
    back = P.request_from_wire(P.request_to_wire(r), r.key.digest)
    assert back.key == r.key and back.sharing == "uncacheable"
    assert dict(back.volatile_kwargs) == {}
    wire = P.request_to_wire(r)
    wire["sharing"] = "pure"
    with pytest.raises(P.ProtocolError, match="does not match its fields"):
        P.request_from_wire(wire, r.key.digest)
