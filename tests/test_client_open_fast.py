"""The client's open of a request written in one C walk (``_core._open_payload``):
the same bytes as ``protocol.open_payload`` for any request, a request
holding a ``fabric.Secret`` still refused with the same error, and what the
walk leaves to the Python check (a container that check reads otherwise)
checked and sent as before."""

import asyncio
import collections
import math

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import fabric
from fabric._core import _open_payload
from fabric.node import NodeLimits, connect, protocol as P
from fabric.values import walk

import node_ops
from conftest import blocks_kept

REF = fabric.SecretRef("db-password")
SECRET = fabric.Secret("hunter2")
Pair = collections.namedtuple("Pair", "a b")


class MyList(list):
    """Iterates as a list: the C walk reads its items as fabric.values.walk does."""


class MyDict(dict):
    """fabric.values.walk calls its items(): left to that walk."""


class OwnIter(list):
    """Iterates otherwise than its items: left to fabric.values.walk."""

    def __iter__(self):
        return iter(())


class Registered(tuple):
    """A container whose adapter gives its data: left to fabric.values.walk."""


fabric.register_type(Registered, "tests.open_fast.registered", lambda r: list(r),
                     lambda d: Registered(d))


def _no_nan(x):
    return not (isinstance(x, float) and math.isnan(x))


scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-2**64 + 1, max_value=2**64 - 1),
    st.integers(), st.floats().filter(_no_nan), st.text(max_size=20),
    st.binary(max_size=20), st.just(REF), st.complex_numbers(allow_nan=False))
keys = st.one_of(st.text(max_size=8), st.integers(-1000, 1000), st.binary(max_size=4))
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.lists(inner, max_size=4).map(tuple),
        st.dictionaries(keys, inner, max_size=4),
        st.frozensets(st.one_of(st.integers(-50, 50), st.text(max_size=4)), max_size=4),
        st.sets(st.integers(-50, 50), max_size=4)),
    max_leaves=12)
names = st.text(alphabet="abcdefghij", min_size=1, max_size=6)
caps = st.lists(st.text(alphabet="abcxyz.-", min_size=1, max_size=6), max_size=3)
grants = st.frozensets(st.text(min_size=1, max_size=8), max_size=4)
timeouts = st.one_of(st.none(), st.floats(min_value=1e-3, max_value=1e6),
                     st.integers(min_value=1, max_value=10**6))


@st.composite
def requests(draw, args=values):
    opts = {}
    if draw(st.booleans()):
        opts["version"] = draw(st.one_of(st.integers(0, 2**40), names))
    if draw(st.booleans()):
        opts["required_capabilities"] = draw(caps)
    if draw(st.booleans()):
        opts["answer_limit"] = draw(st.integers(1, 2**40))
        opts["stream_buffer"] = draw(st.integers(1, 2**20))
    for flag in ("stream", "trace"):
        if draw(st.booleans()):
            opts[flag] = draw(st.booleans())
    if draw(st.booleans()):
        opts["sharing"] = draw(st.sampled_from(["pure", "recorded", "uncacheable"]))
    if draw(st.booleans()):
        opts["consistency"] = draw(st.sampled_from(["local-first", "local-only", "no-home"]))
    if draw(st.booleans()):
        opts["deadline"] = draw(st.floats(min_value=1e-3, max_value=1e6))
    if draw(st.booleans()):
        opts["mode"] = draw(st.sampled_from(["eval", "analyze"]))
    op = "node." + draw(names)
    a = tuple(draw(st.lists(args, max_size=4)))
    kw = draw(st.dictionaries(names, args, max_size=4))
    try:
        return fabric.EvalRequest(op, a, kw, **opts)
    except (TypeError, ValueError):  # an option combination the request refuses
        return fabric.EvalRequest(op, a, kw)


def _old(req, want, scope, g, timeout, via):
    return P.open_payload(req, want=want, scope=scope, grants=g, timeout=timeout, via=via)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests(), want=st.sampled_from(["value", "stream"]),
       scope=st.sampled_from(list(P.SCOPES)), g=grants, timeout=timeouts,
       via=st.lists(names, max_size=3).map(tuple))
def test_the_c_open_is_the_dict_built_open(req, want, scope, g, timeout, via):
    got = _open_payload(req, want, scope, g, timeout, via)
    assert got is not None, req  # nothing here holds a Secret or a container subclass
    assert got == _old(req, want, scope, g, timeout, via)


with_secrets = st.recursive(
    st.one_of(scalars, st.just(SECRET), st.just(fabric.Secret(b"k", commit=False))),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(st.one_of(st.text(max_size=4), st.just(SECRET)), inner, max_size=3),
        st.frozensets(st.one_of(st.integers(-5, 5), st.just(SECRET)), max_size=3),
        st.lists(inner, max_size=3).map(MyList), st.tuples(inner, inner).map(lambda t: Pair(*t))),
    max_leaves=8)


def _holds_secret(req):
    return any(isinstance(v, fabric.Secret)
               for root, value in (("args", req.args), ("kwargs", dict(req.kwargs)))
               for _path, v in walk(value, root))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(req=requests(args=with_secrets))
def test_the_c_open_stops_exactly_at_a_secret(req):
    got = _open_payload(req, "value", "compute", frozenset(), 30.0, ())
    if _holds_secret(req):
        assert got is None
        with pytest.raises(fabric.CapabilityDenied, match=r"SecretRef\(name\)"):
            P.check_request_no_secret(req)
    else:
        assert got == _old(req, "value", "compute", frozenset(), 30.0, ())


def test_container_subclasses_walked_as_their_kind_or_left_to_the_check():
    for args in [(Pair(1, 2),), ([MyList([1, "a"])],), (REF, [REF]), ({"k": {1, 2}},),
                 (frozenset({"a"}),)]:  # iterate as their kind: written here
        req = fabric.EvalRequest("node.x", args, {"r": REF})
        assert _open_payload(req, "value", "compute", frozenset(), None, ()) == \
            _old(req, "value", "compute", frozenset(), None, ())
    for args in [({"a": MyDict(x=1)},), (OwnIter([1]),), ([Registered((1,))],)]:
        req = fabric.EvalRequest("node.x", args)
        assert _open_payload(req, "value", "compute", frozenset(), None, ()) is None


def test_arguments_not_of_the_clients_types_are_left_to_the_dict_built_open():
    req = fabric.EvalRequest("node.x", (1,))
    want = _old(req, "value", "compute", frozenset({"b", "a"}), None, ("n1",))
    assert _open_payload(req, "value", "compute", frozenset({"b", "a"}), None, ("n1",)) == want
    assert _open_payload(req, "value", "compute", {"a", "b"}, None, ["n1"]) == want
    # not the types the client passes: left to protocol.open_payload
    for bad in [(b"value", "compute", frozenset(), None, ()),
                ("value", "compute", frozenset({1}), None, ()),
                ("value", "compute", ["b", "a"], None, ()),
                ("value", "compute", frozenset(), None, ("n", 1)),
                ("value", "compute", frozenset(), None, "n1")]:
        assert _open_payload(req, *bad) is None
    with pytest.raises(TypeError, match="expected an EvalRequest"):
        _open_payload("node.x", "value", "compute", frozenset(), None, ())
    with pytest.raises(TypeError, match="6 positional"):
        _open_payload(req, "value")  # type: ignore[call-arg]
    # a timeout the canonical encoding refuses: the error protocol.open_payload gives
    with pytest.raises(TypeError) as new:
        _open_payload(req, "value", "compute", frozenset(), object(), ())
    with pytest.raises(TypeError) as old:
        _old(req, "value", "compute", frozenset(), object(), ())
    assert str(new.value) == str(old.value)


SECRET_ARGS = [((SECRET,), {}), ((1, [2, SECRET]), {}), ((), {"k": SECRET}),
               ((1,), {"k": {"n": (SECRET,)}}), (({"a": SECRET},), {}),
               ((MyList([SECRET]),), {}), ((Pair(1, SECRET),), {}),
               (({"x": MyDict(s=SECRET)},), {}), ((Registered((SECRET,)),), {})]


def _refusal(req):
    with pytest.raises(fabric.CapabilityDenied) as exc:
        P.check_request_no_secret(req)
    return str(exc.value)


def test_a_secret_is_refused_with_the_same_error_on_every_path(node):
    n = node()
    with connect(n.url) as c:
        for i, (args, kwargs) in enumerate(SECRET_ARGS):
            req = fabric.EvalRequest("node.reveal", args, kwargs)
            msg = _refusal(req)
            assert "SecretRef(name)" in msg
            for _ in range(2):  # the second time too (nothing kept of a refused request)
                with pytest.raises(fabric.CapabilityDenied) as exc:
                    c.evaluate(req)
                assert str(exc.value) == msg
                with pytest.raises(fabric.CapabilityDenied) as exc:
                    c.stream(req)
                assert str(exc.value) == msg
                with pytest.raises(fabric.CapabilityDenied) as exc:
                    c.astream(req)
                assert str(exc.value) == msg

            async def refused():
                with pytest.raises(fabric.CapabilityDenied) as exc:
                    await c.aevaluate(req)
                return str(exc.value)

            assert asyncio.run(refused()) == msg
            assert c.evaluate(node_ops.double.request(i)).value == 2 * i
        assert n.stats()["requests"] == len(SECRET_ARGS)  # only the requests without one


def test_new_requests_and_the_checked_path_are_answered(node):
    n = node()
    with connect(n.url) as c:
        for i in range(300):  # more than any cache keeps, each a new request
            assert c.evaluate(node_ops.double.request(i)).value == 2 * i
        # a container subclass goes by the Python check and the dict-built open
        assert c.evaluate(node_ops.double.request(MyList([1, 2]))).value == [1, 2, 1, 2]
        assert c.evaluate(node_ops.double.request(Pair("a", "b"))).value == ["a", "b"] * 2

        async def run():
            out = []
            for i in range(300, 600):
                out.append((await c.aevaluate(node_ops.double.request(i))).value)
            out.append((await c.aevaluate(node_ops.double.request(MyList([3])))).value)
            return out

        assert asyncio.run(run()) == [2 * i for i in range(300, 600)] + [[3, 3]]
        assert list(c.stream(node_ops.count.request(3))) == [0, 1, 2]


def test_the_open_kept_for_the_request_asked_again_follows_its_inputs(node):
    n = node()
    with connect(n.url, timeout=30.0) as c:
        req = node_ops.double.request(5)
        first = c._prepare(req, None, None)[1]
        assert first == _old(req, "value", c.scope, c.grants, 30.0, ())
        assert c._prepare(req, None, None)[1] is first  # asked again: kept
        assert c._prepare(req, None, 2.0)[1] == _old(req, "value", c.scope, c.grants, 2.0, ())
        assert c._prepare(req, None, None, "stream")[1] == _old(req, "stream", c.scope,
                                                                 c.grants, 30.0, ())
        assert c._prepare(req, ["x.y"], None)[1] == _old(req, "value", c.scope,
                                                          frozenset({"x.y"}), 30.0, ())
        c.scope = "held"
        assert c._prepare(req, None, None)[1] == _old(req, "value", "held", c.grants, 30.0, ())
        c.node_id = "me"
        assert c._prepare(req, None, None)[1] == _old(req, "value", "held", c.grants, 30.0,
                                                      ("me",))
        late = fabric.EvalRequest("node.double", (5,), deadline=1.5)
        assert c._prepare(late, None, None)[1] == _old(late, "value", "held", c.grants, 1.5,
                                                       ("me",))


def test_the_opens_of_requests_asked_in_turn_are_kept_within_bounds(node):
    from fabric.node import client as C
    n = node()
    with connect(n.url, timeout=30.0) as c:
        reqs = [node_ops.double.request(i) for i in range(100)]
        first = [c._prepare(r, None, None)[1] for r in reqs]
        # each asked again after the others: its open kept, not built again
        assert all(c._prepare(r, None, None)[1] is p for r, p in zip(reqs, first))
        assert all(p == _old(r, "value", c.scope, c.grants, 30.0, ())
                   for r, p in zip(reqs, first))
        # a changed input is not answered from what was kept
        assert c._prepare(reqs[3], None, 2.0)[1] == _old(reqs[3], "value", c.scope,
                                                          c.grants, 2.0, ())
        # bounded in count ...
        for i in range(C._OPENS_KEPT + 10):
            c._prepare(node_ops.double.request(1000 + i), None, None)
        assert len(c._opens) <= C._OPENS_KEPT
        # ... and in the bytes of the payloads kept
        big = [node_ops.double.request("x" * (C._OPENS_BYTES // 8) + str(i))
               for i in range(20)]
        for r in big:
            c._prepare(r, None, None)
            assert c._opens_bytes <= C._OPENS_BYTES + len(r.args[0]) + 1024
        assert sum(len(e[4]) for e in c._opens.values()) == c._opens_bytes


def test_an_open_larger_than_the_agreed_frame_is_refused_before_it_is_sent(node):
    n = node(limits=NodeLimits(max_frame=4096, window=4096))
    big = node_ops.double.request("x" * 5000)
    with connect(n.url, timeout=30) as c:
        for _ in range(2):  # the open kept for the request asked again is checked too
            with pytest.raises(P.LimitExceeded, match="more than the largest frame agreed"):
                c.evaluate(big)
            with pytest.raises(P.LimitExceeded, match="more than the largest frame agreed"):
                c.stream(big)

        async def run():
            for _ in range(2):
                with pytest.raises(P.LimitExceeded, match="more than the largest frame"):
                    await c.aevaluate(big)
            return (await c.aevaluate(node_ops.double.request(4))).value

        assert asyncio.run(run()) == 8
        assert c.evaluate(node_ops.double.request(3)).value == 6
    assert n.stats()["requests"] == 2


@pytest.mark.parametrize("args", [(1, "x", [1.5, {"k": b"v"}]), (SECRET,), ({1: {SECRET: 2}},),
                                  (frozenset({1, SECRET}),), ("y" * 10000, [SECRET]),
                                  (REF, Pair(1, 2)), (OwnIter([1]),)])
def test_the_c_open_keeps_nothing(args):
    req = fabric.EvalRequest("node.x", args, {"k": [1, 2]})
    g = frozenset({"b", "a"})
    assert blocks_kept(lambda: _open_payload(req, "value", "compute", g, 2.5, ("n1",))) < 200
