"""Ops travel to other processes (by reference, or by value from __main__),
and realize_events tells a stream that ended from one its answer limit cut."""

import multiprocessing
import pickle

import pytest

import fabric
from fabric import OpNotFound, realize_events
from fabric.ops import _op_by_reference

REG = fabric.OpRegistry()


@fabric.op("travel.square", version=3, registry=REG)
def square(x):
    return x * x


@fabric.op("travel.count", registry=REG)
def count(n):
    yield from range(n)


def _child(conn):
    # A spawn-started process: nothing of the parent but what was pickled.
    data = conn.recv_bytes()
    try:
        op = pickle.loads(data)
    except OpNotFound as exc:
        conn.send(("OpNotFound", str(exc)))
        return
    conn.send(("ok", op.name, op.version, op(7)))


def _in_spawned_process(data):
    ctx = multiprocessing.get_context("spawn")
    parent, child = ctx.Pipe()
    p = ctx.Process(target=_child, args=(child,))
    p.start()
    child.close()
    parent.send_bytes(data)
    answer = parent.recv()
    p.join()
    return answer


class _Ref:
    """Pickles as a reference to an op that does not exist."""

    def __init__(self, module, qualname):
        self.args = (module, qualname, "ghost", 0)

    def __reduce__(self):
        return (_op_by_reference, self.args)


def test_an_op_pickles_by_reference():
    data = pickle.dumps(square)
    assert b"x * x" not in data and len(data) < 200
    assert pickle.loads(data) is square
    assert _in_spawned_process(data) == ("ok", "travel.square", 3, 49)


def test_an_op_the_worker_cannot_import_is_op_not_found():
    answer = _in_spawned_process(pickle.dumps(_Ref("no_such_module_h8", "f")))
    assert answer[0] == "OpNotFound" and "no_such_module_h8" in answer[1]
    with pytest.raises(OpNotFound, match="is missing"):
        pickle.loads(pickle.dumps(_Ref(__name__, "nothing_here")))
    with pytest.raises(OpNotFound, match="not an op"):
        pickle.loads(pickle.dumps(_Ref(__name__, "_child")))


def test_an_op_from_a_function_body_travels_by_value():
    @fabric.op("travel.local")
    def local(x):
        return x + 100

    data = pickle.dumps(local)
    assert _in_spawned_process(data) == ("ok", "travel.local", 0, 107)


def test_realize_events_done_only_when_the_stream_ended_by_itself():
    fab = fabric.LocalFabric(REG)
    ev = list(realize_events(fab, count.request(3), buffer_limit=8))
    assert isinstance(ev[0], fabric.RealizeStarted) and ev[0].seq == 0
    assert ev[0].request == {"term": "travel.count", "observe": "events",
                             "buffer-limit": "8", "answer-limit": None}
    assert [(e.seq, e.item) for e in ev[1:-1]] == [(1, 0), (2, 1), (3, 2)]
    assert ev[-1] == fabric.RealizeDone(4)
    cut = list(realize_events(fab, count.request(10).replace(answer_limit=2)))
    assert [type(e).__name__ for e in cut] == ["RealizeStarted", "RealizeChunk",
                                               "RealizeChunk"]
    assert cut[0].request["answer-limit"] == "2"


def test_realize_events_replayed_tells_the_same(tmp_path):
    cas = fabric.EvalCassette(str(tmp_path / "c.ledger"))
    fab = fabric.LedgeredRelayFabric(fabric.LocalFabric(REG), cas)
    req = count.request(10).replace(answer_limit=2)
    first = list(realize_events(fab, req))
    assert req.key in cas
    again = list(realize_events(fab, req))
    assert first == again and not isinstance(again[-1], fabric.RealizeDone)
    cas.close()


def test_realize_events_refuses_bad_input():
    fab = fabric.LocalFabric(REG)
    with pytest.raises(ValueError, match="stream request"):
        list(realize_events(fab, square.request(1)))
    with pytest.raises(ValueError, match="buffer_limit"):
        list(realize_events(fab, count.request(1), buffer_limit=0))
    with pytest.raises(TypeError, match="EvalRequest"):
        list(realize_events(fab, "travel.count"))
