"""The hit path's memos (held replies, call requests), the shared counters and
the glue's argument parser: behaviour that the speed must not change."""

import pytest

import fabric
from fabric import _core


@pytest.fixture
def reg():
    return fabric.OpRegistry()


def make(tmp_path, reg, name="n", **kw):
    cas = fabric.EvalCassette(str(tmp_path / f"{name}.ledger"))
    return fabric.ContentAddressedFabric(name, cas, home=fabric.LocalFabric(reg), **kw)


def test_a_hit_never_hands_out_what_another_caller_mutated(tmp_path, reg):
    @fabric.op("memo.nested", registry=reg)
    def nested():
        fabric.diagnostic("Note", "d")
        return {"xs": [1, 2, [3]], "t": (1, "a"), "s": "x"}

    fab = make(tmp_path, reg)
    req = nested.request()
    fab.evaluate(req)
    first = fab.evaluate(req)
    assert first.source == "local"
    first.value["xs"][2].append("mutated")
    first.value["new"] = 1
    first.diagnostics[0]["kind"] = "changed"
    for _ in range(3):
        again = fab.evaluate(req)
        assert again.value == {"xs": [1, 2, [3]], "t": (1, "a"), "s": "x"}
        assert again.diagnostics[0]["kind"] == "Note"
        assert again.value is not first.value
    assert fab.call(nested) == {"xs": [1, 2, [3]], "t": (1, "a"), "s": "x"}
    assert fab.stats()["local_hits"] == 5


def test_a_hit_after_the_cassette_closed_is_not_served_from_memory(tmp_path, reg):
    @fabric.op("memo.one", registry=reg)
    def one():
        return [1]

    fab = make(tmp_path, reg)
    fab.evaluate(one.request())
    assert fab.evaluate(one.request()).value == [1]
    fab.cassette.close()
    with pytest.raises(ValueError, match="closed cassette"):  # as cassette.get says
        fab.evaluate(one.request())
    with pytest.raises(ValueError, match="closed cassette"):
        fab.call(one)


def test_call_tells_arguments_apart_that_python_calls_equal(tmp_path, reg):
    seen = []

    @fabric.op("memo.kind", registry=reg)
    def kind(x):
        seen.append(x)
        return repr(x)

    fab = make(tmp_path, reg)
    for x in (0.0, -0.0, 1, True, 1.0, (1,), (True,), "a", b"a"):
        assert fab.call(kind, x) == repr(x)
        assert fab.call(kind, x) == repr(x)  # the second is a hit
    assert [repr(x) for x in seen] == ["0.0", "-0.0", "1", "True", "1.0", "(1,)", "(True,)",
                                        "'a'", "b'a'"]
    assert fab.call(kind, x=[1, 2]) == "[1, 2]"  # not memoizable: built each time
    assert fab.call(kind, x=[1, 2]) == "[1, 2]"


def test_call_checks_grants_on_every_hit(tmp_path, reg):
    @fabric.op("memo.secret", capabilities=("vault",), registry=reg)
    def secret(n):
        return n

    fab = make(tmp_path, reg, grants=("vault",))
    assert fab.call(secret, 1) == 1
    assert fab.call(secret, 1) == 1
    fab.grants = ()
    with pytest.raises(fabric.CapabilityDenied, match="vault"):
        fab.call(secret, 1)
    assert fab.stats()["denied"] == 1


def test_call_goes_through_an_overridden_evaluate(tmp_path, reg):
    @fabric.op("memo.sq", registry=reg)
    def sq(n):
        return n * n

    seen = []

    class Logged(fabric.ContentAddressedFabric):
        def evaluate(self, request, **kw):
            seen.append(request.op)
            return super().evaluate(request, **kw)

    fab = Logged("l", fabric.EvalCassette(str(tmp_path / "l.ledger")),
                 home=fabric.LocalFabric(reg))
    assert fab.call(sq, 3) == 9 and fab.call(sq, 3) == 9
    assert seen == ["memo.sq", "memo.sq"]


def test_call_of_something_else_and_of_a_stream_op(tmp_path, reg):
    @fabric.op("memo.count", registry=reg)
    def count(n):
        yield from range(n)

    fab = make(tmp_path, reg)
    assert list(fab.call(count, 3)) == [0, 1, 2]
    assert list(fab.call(count, 3)) == [0, 1, 2]
    with pytest.raises(TypeError, match="takes an Op"):
        fab.call(42)


def test_an_ops_identity_is_fixed(reg):
    @fabric.op("memo.fixed", version=1, registry=reg)
    def fixed():
        return 1

    for name, value in (("version", 2), ("name", "other"), ("capabilities", ("x",)),
                        ("fn", len), ("is_stream", True), ("_made", False)):
        with pytest.raises(AttributeError, match="fixed"):
            setattr(fixed, name, value)
    fixed.note = "free"  # other attributes stay free
    assert fixed.version == 1


def test_counters():
    c = _core._Counters("a", "b")
    c.add("a")
    c.add("b", 5)
    assert c.items() == [("a", 1), ("b", 5)] and c["b"] == 5 and list(c) == ["a", "b"]
    with pytest.raises(KeyError, match="nope"):
        c.add("nope")
    with pytest.raises(ValueError, match="only grow"):
        c.add("a", -1)
    with pytest.raises(TypeError):
        _core._Counters("a", 1)
    with pytest.raises(ValueError, match="at most"):
        _core._Counters(*[f"c{i}" for i in range(17)])


def test_the_argument_parser_names_what_is_wrong(tmp_path, reg):
    fab = make(tmp_path, reg)
    req = fabric.EvalRequest("memo.none", ())
    with pytest.raises(TypeError, match="unexpected keyword argument 'grant'"):
        fab.evaluate(req, grant=())
    with pytest.raises(TypeError, match="missing required argument 'request'"):
        fab.evaluate(grants=())
    with pytest.raises(TypeError, match="at most 1 positional"):
        fab.evaluate(req, ())
    with pytest.raises(TypeError, match="unexpected keyword argument 'source'"):
        _core._reply_from_record([1, [], None], req.key, source="x")
    with pytest.raises(TypeError, match="missing required argument 'source'"):
        _core._reply_from_record([1, [], None], req.key)


def test_a_recorded_stream_with_a_bad_frame_is_refused(tmp_path):
    key = fabric.EvalRequest("memo.s", ()).key
    with pytest.raises(fabric.FabricError, match="frame 1 is not"):
        list(_core._Replay(iter([[0, "a"], [7, "b"]]), key))
    s = fabric.EvalStream(_core._Replay(iter([[0, "a"], [1, {"kind": "K"}], [0, "b"]]), key),
                          key, "ledger")
    assert list(s) == ["a", "b"] and s.diagnostics == [{"kind": "K"}]
    assert s.items_seen == 2 and s.done
