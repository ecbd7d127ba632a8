"""A ``ContentAddressedFabric`` keeps decoded replies (and a node's record
bytes) of held keys so that a hit decodes nothing. A key can be deleted,
cleared, or forgotten and then recorded again with another value: every hit
path (``evaluate``, ``call``, ``_lookup``, ``_lookup_record``) must then give
the new value, never the one kept from the record before."""

import pytest

import fabric
from fabric import EvalCassette
from fabric._core import canonical_bytes
from fabric.replies import reply_record

_answer = {"v": 1}


@fabric.op("test.memo_after_delete.read")
def read(x):
    return [x, _answer["v"]]


@pytest.fixture(autouse=True)
def _reset():
    _answer["v"] = 1
    yield
    _answer["v"] = 1


def _all_hits(fab, request, x):
    """The value every hit path gives for request (read(x)), warmed twice so
    that the memos are used."""
    seen = set()
    for _ in range(2):
        seen.add(tuple(fab.evaluate(request).value))
        seen.add(tuple(fab.call(read, x)))
        seen.add(tuple(fab._lookup(request).value))
        got = fab._lookup_record(request, 1 << 20)
        assert type(got) is bytes
        seen.add(("bytes", got))
    return seen


def _expect(fab, request, x, v):
    rec = canonical_bytes(reply_record(fab._lookup(request)))
    assert _all_hits(fab, request, x) == {(x, v), ("bytes", rec)}
    assert fab._lookup(request).value == [x, v]


@pytest.mark.parametrize("forget", ["delete", "clear"])
def test_a_key_forgotten_and_recorded_again_gives_the_new_value(tmp_path, forget):
    with EvalCassette(str(tmp_path / "m.fabl"), durability="os") as cas:
        fab = fabric.ContentAddressedFabric("n", cas, home=fabric.LocalFabric())
        r = read.request(7)
        assert fab.evaluate(r).value == [7, 1]  # computed and recorded
        _expect(fab, r, 7, 1)
        if forget == "delete":
            assert cas.delete(r.key) is True
        else:
            assert cas.clear() >= 1
        assert fab._lookup(r) is None  # not held any more: no kept value
        _answer["v"] = 2
        assert fab.evaluate(r).value == [7, 2]  # computed again, recorded again
        _expect(fab, r, 7, 2)


def test_another_handle_deleting_and_recording_again(tmp_path):
    path = str(tmp_path / "m.fabl")
    with EvalCassette(path, durability="os") as cas, EvalCassette(path, durability="os") as other:
        fab = fabric.ContentAddressedFabric("n", cas, home=fabric.LocalFabric())
        r = read.request(3)
        fab.evaluate(r)
        _expect(fab, r, 3, 1)
        # Another handle (another process would do the same) forgets the key
        # and records another value under it.
        assert other.delete(r.key) is True
        _answer["v"] = 5
        ofab = fabric.ContentAddressedFabric("o", other, home=fabric.LocalFabric())
        assert ofab.evaluate(r).value == [3, 5]
        # This handle sees the tombstone and the new record at its refresh
        # (the documented window); from then on every hit path gives 5.
        cas.refresh()
        _expect(fab, r, 3, 5)


def test_a_stand_in_cassette_is_asked_every_time(tmp_path):
    class Stand(dict):
        def record(self, key, reply):
            if key in self:
                return False
            self[key] = reply
            return True

        def has(self, key):
            return key in self

    cas = Stand()
    fab = fabric.ContentAddressedFabric("s", cas, home=fabric.LocalFabric())
    r = read.request(1)
    assert fab.evaluate(r).value == [1, 1]
    assert fab.evaluate(r).value == [1, 1]
    del cas[r.key]
    _answer["v"] = 9
    assert fab.evaluate(r).value == [1, 9]
    for _ in range(2):
        assert fab.evaluate(r).value == [1, 9]
        assert fab.call(read, 1) == [1, 9]
