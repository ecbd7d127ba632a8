"""REQUEST records: each recorded reply or stream keeps its request's
identity bytes (docs/spec/ledger.md, type 6)."""

from __future__ import annotations

import os

import pytest

import fabric
from fabric import EvalCassette, EvalRequest
from fabric import ContentAddressedFabric, LedgeredRelayFabric, LocalFabric, OpRegistry

import cassette_ref


@pytest.fixture
def path(tmp_path):
    return str(tmp_path / "c.fabl")


@pytest.fixture
def reg():
    return OpRegistry()


def test_record_keeps_the_request_bytes_first_write_wins(path):
    a, b = EvalRequest("add", (1, 2)), EvalRequest("add", (2, 3))
    with EvalCassette(path, durability="os") as c:
        assert c.record(a.key, 3, request=a) is True
        size = os.path.getsize(path)
        assert c.record(a.key, 4, request=b"other") is False
        assert os.path.getsize(path) == size  # nothing written: neither record
        assert c.record(b.key, 5, request=b.identity_bytes()) is True
        assert c.request_bytes(a.key) == a.identity_bytes()
        assert c.request_bytes(b.key) == b.identity_bytes()
        assert c.request_bytes(EvalRequest("add", (9,)).key) is None
        assert c.get(a.key) == 3
    # on disk: REQUEST right before its REPLY, same key, REPLY flagged
    recs = list(cassette_ref.read_flags(open(path, "rb").read()))
    assert [(t, f & 4) for _o, t, f, _k, _p in recs] == [(6, 0), (1, 4), (6, 0), (1, 4)]
    assert recs[0][3] == recs[1][3] == a.key.digest
    assert recs[0][4] == a.identity_bytes()


def test_reopen_and_compaction_keep_them(path):
    reqs = [EvalRequest("sq", (i,)) for i in range(5)]
    with EvalCassette(path, durability="os") as c:
        for i, r in enumerate(reqs):
            c.record(r.key, i * i, request=r if i % 2 == 0 else None)
        c.delete(reqs[0].key)
    with EvalCassette(path, durability="os") as c:
        for i, r in enumerate(reqs):
            want = r.identity_bytes() if i % 2 == 0 and i else None
            assert c.request_bytes(r.key) == want, i
        c.compact()
        assert [k for k, _ in c.requests()] == [reqs[2].key, reqs[4].key]
        assert c.get(reqs[4].key) == 16 and c.get(reqs[1].key) == 1
    with EvalCassette.from_ledger(path) as c:
        assert dict(c.requests()) == {r.key: r.identity_bytes() for r in reqs[2::2]}


def test_streams_keep_theirs_and_an_abort_keeps_none(path):
    r = EvalRequest("count", (3,), stream=True)
    with EvalCassette(path, durability="os") as c:
        w = c.record_stream(r.key, request=r)
        w.append(1)
        w.abort()
        assert c.request_bytes(r.key) is None
        with c.record_stream(r.key, request=r) as w:
            w.append(1)
            w.append(2)
        assert c.request_bytes(r.key) == r.identity_bytes()
        assert list(c.get_stream(r.key)) == [1, 2]
        c.compact()
        assert c.request_bytes(r.key) == r.identity_bytes()
        assert list(c.get_stream(r.key)) == [1, 2]


def test_requests_by_op(path):
    long_op = "o" * 40  # a str8 header, not a fixstr
    reqs = [EvalRequest("a", (1,)), EvalRequest("ab", (1,)), EvalRequest(long_op, (1,)),
            EvalRequest("a", (2,))]
    with EvalCassette(path, durability="os") as c:
        for r in reqs:
            c.record(r.key, None, request=r)
        c.record(EvalRequest("a", (3,)).key, None)  # without request bytes: not listed
        c.record(EvalRequest("x", ()).key, None, request=b"\x01 not an array")
        assert [k for k, _ in c.requests(op="a")] == [reqs[0].key, reqs[3].key]
        assert [k for k, _ in c.requests("ab")] == [reqs[1].key]
        assert [b for _, b in c.requests(long_op)] == [reqs[2].identity_bytes()]
        assert list(c.requests("zz")) == []
        assert len(list(c.requests())) == 5


def test_bad_request_arguments(path):
    with EvalCassette(path, durability="os") as c:
        k = EvalRequest("a").key
        with pytest.raises(TypeError, match="request must be an EvalRequest, bytes or None"):
            c.record(k, 1, request="text")
        with pytest.raises(TypeError, match="request must be"):
            c.record_stream(k, request=12)
        with pytest.raises(TypeError, match="op must be a str"):
            c.requests(op=b"a")
        with pytest.raises(TypeError):
            c.request_bytes("not a key")
        assert len(c) == 0 and os.path.getsize(path) == 64


def test_a_version_1_ledger_is_upgraded_by_its_first_request(tmp_path):
    import shutil
    import pathlib
    src = pathlib.Path(__file__).parent / "golden" / "ledger-v1.fabl"
    p = str(tmp_path / "v1.fabl")
    shutil.copyfile(src, p)
    assert open(p, "rb").read()[8] == 1
    r = EvalRequest("fresh", (1,))
    with EvalCassette(p, durability="os") as c:
        n = len(c)
        c.record(r.key, 1, request=r)
    assert open(p, "rb").read()[8] == 2
    with EvalCassette.from_ledger(p) as c:
        assert len(c) == n + 1 and c.request_bytes(r.key) == r.identity_bytes()


def test_fabrics_record_the_request(reg, tmp_path):
    @fabric.op("sq", registry=reg)
    def sq(x):
        return x * x

    @fabric.op("count", registry=reg)
    def count(n):
        yield from range(n)

    c1 = EvalCassette(str(tmp_path / "relay.fabl"), durability="os")
    relay = LedgeredRelayFabric(LocalFabric(reg), c1)
    r = sq.request(4)
    assert relay.evaluate(r).value == 16
    assert c1.request_bytes(r.key) == r.identity_bytes()
    s = count.request(3)
    assert list(relay.stream(s)) == [0, 1, 2]
    assert c1.request_bytes(s.key) == s.identity_bytes()

    c2 = EvalCassette(str(tmp_path / "caf.fabl"), durability="os")
    caf = ContentAddressedFabric("n1", c2, home=LocalFabric(reg))
    r = sq.request(5)
    assert caf.evaluate(r).value == 25
    assert c2.request_bytes(r.key) == r.identity_bytes()
    s = count.request(4)
    assert list(caf.stream(s)) == [0, 1, 2, 3]
    assert c2.request_bytes(s.key) == s.identity_bytes()
    caf.close()
    c1.close()
    c2.close()
