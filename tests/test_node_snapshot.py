"""Node snapshot and restore (docs/spec/snapshot.md): round trip, refused
versions, damage, all-or-nothing, redelivery of unacknowledged gossip."""

import hashlib
import os
import struct
import time

import pytest

from fabric import ContentKey
from fabric.governor import PeerGovernor
from fabric.node import Node
from fabric.node import snapshot as S
from conftest import wait_for

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "golden", "snapshot-v1.bin")


def key(i):
    return ContentKey(hashlib.sha256(b"k%d" % i).digest())


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


def make_node(tmp_path, name="a", peers=("fabric://127.0.0.1:1",), facts=5):
    gov = PeerGovernor(down_after=2, backoff_base=100.0, backoff_cap=100.0, jitter=0.0,
                       block=["evil"], allow=None)
    gov.failed("b", "refused")
    gov.failed("b", "refused")  # down, backing off
    gov.ok("c")
    node = Node(str(tmp_path / f"{name}.ledger"), node_id=name, peers=peers, governor=gov)
    for i in range(facts):
        node.fabric.holders.announce(key(i), "b" if i % 2 else "c")
    node._stat("requests", 7)
    node._stat("hits", 3)
    return node


def test_round_trip(tmp_path):
    a = make_node(tmp_path)
    data = a.snapshot()
    assert data[:8] == S.MAGIC and struct.unpack(">H", data[8:10])[0] == S.SPEC_VERSION
    b = Node.restore(data, str(tmp_path / "b.ledger"))
    assert b.node_id == "a" and b.incarnation == a.incarnation + 1 == 1
    assert b.fabric.holders.facts() == a.fabric.holders.facts()
    assert b.fabric.holders.version == a.fabric.holders.version
    assert b.stats()["requests"] == 7 and b.stats()["hits"] == 3
    g = b.fabric.governor
    assert g is not None and g.block == frozenset({"evil"}) and g.allow is None
    hb = g.health("b")
    assert (hb.failures, hb.consecutive, hb.down, hb.last_event) == (2, 2, True, "failed: refused")
    assert hb.retry_at is not None and hb.retry_at - time.monotonic() > 50  # backoff kept
    assert g.would_refuse("b") is not None and g.would_refuse("c") is None
    assert g.health("c").last_event == "ok"
    # the peer had acknowledged nothing: all of it is pending, marked redelivered
    again = S.decode(b.snapshot())
    assert again.pending == [{"peer": "fabric://127.0.0.1:1", "start": 0, "end": 5,
                              "redelivered": True}]
    assert again.incarnation == 1
    assert Node.restore(b.snapshot(), str(tmp_path / "c.ledger")).incarnation == 2


def test_id_counters_restored(tmp_path):
    a = make_node(tmp_path)
    a._peer_streams["fabric://127.0.0.1:1"] = 41
    b = Node.restore(a.snapshot(), str(tmp_path / "b.ledger"))
    assert b._peer_streams == {"fabric://127.0.0.1:1": 41}
    assert S.decode(b.snapshot()).peer_streams == {"fabric://127.0.0.1:1": 41}


def test_without_governor(tmp_path):
    a = Node(str(tmp_path / "a.ledger"), node_id="solo")
    b = Node.restore(a.snapshot(), str(tmp_path / "b.ledger"))
    assert b.fabric.governor is None and b.incarnation == 1 and len(b.fabric.holders) == 0


def test_golden_file_decodes():
    """The checked-in v1 snapshot (written by tests/golden/make_snapshot.py)."""
    with open(GOLDEN, "rb") as f:
        st = S.decode(f.read())
    assert st.node == "golden" and st.incarnation == 3
    assert st.holders.facts() == [(key(0), "golden"), (key(1), "peer-b")]
    assert st.counters == {"hits": 2, "requests": 5}
    assert st.pending == [{"peer": "fabric://127.0.0.1:7412", "start": 1, "end": 2,
                           "redelivered": True}]
    assert st.peer_streams == {"fabric://127.0.0.1:7412": 9}
    assert st.governor["health"] == [["peer-b", 1, 1, "failed: timeout", 2.5, False]]
    assert st.governor["backoff"] == [["peer-b", 1, 0.5]]


def test_encoder_matches_golden():
    from golden.make_snapshot import golden_bytes
    with open(GOLDEN, "rb") as f:
        assert golden_bytes() == f.read()


def bad(data, match, tmp_path):
    path = tmp_path / "x.ledger"
    with pytest.raises(S.SnapshotError, match=match):
        Node.restore(data, str(path))
    assert not path.exists()  # nothing was made


def test_missing_version(tmp_path):
    data = make_node(tmp_path).snapshot()
    bad(data[:8], "missing spec version", tmp_path)
    bad(data[:9], "missing spec version", tmp_path)
    bad(data[:8] + b"\0\0" + data[10:], "missing spec version", tmp_path)


def test_wrong_version(tmp_path):
    data = make_node(tmp_path).snapshot()
    bad(data[:8] + struct.pack(">H", 2) + data[10:], "spec version 2 is not supported",
        tmp_path)
    bad(b"NOTASNAP" + data[8:], "no magic", tmp_path)


@pytest.mark.parametrize("cut", [10, 20, 27, 28, 40, -1])
def test_truncated(tmp_path, cut):
    data = make_node(tmp_path).snapshot()
    bad(data[:cut], "truncated", tmp_path)


def test_damaged_and_trailing(tmp_path):
    data = bytearray(make_node(tmp_path).snapshot())
    data[-3] ^= 0x40
    bad(bytes(data), "checksum mismatch", tmp_path)
    bad(make_node(tmp_path).snapshot() + b"\0", "trailing bytes", tmp_path)


def test_bad_fields_named(tmp_path):
    import fabric, zlib
    def build(state, holdings=b""):
        st = fabric.canonical_bytes(state)
        crc = zlib.crc32(holdings, zlib.crc32(st))
        return S.HEADER.pack(S.MAGIC, 1, 0, len(st), len(holdings), crc) + st + holdings
    good = S.decode(make_node(tmp_path).snapshot())
    base = {"node": "n", "incarnation": 0, "governor": None, "counters": {},
            "pending": [], "ids": {"peer_streams": {}}}
    hold = good.holders.snapshot()
    assert S.decode(build(base, hold)).node == "n"
    bad(build({**base, "incarnation": -1}, hold), "incarnation", tmp_path)
    bad(build({**base, "counters": {"x": "y"}}, hold), r"counters\['x'\]", tmp_path)
    bad(build({**base, "pending": [{"peer": "p", "start": 0, "end": 99,
                                    "redelivered": True}]}, hold), "past the holdings",
        tmp_path)
    bad(build({**base, "governor": {"allow": None}}, hold), "governor fields", tmp_path)
    bad(build(base, b"\x93garbage"), "holdings section", tmp_path)
    bad(build([1, 2], hold), "state is not a map", tmp_path)
    with pytest.raises(TypeError):
        S.decode("not bytes")


def test_failed_restore_changes_nothing(tmp_path):
    """A snapshot damaged late (its holdings) is refused whole: the cassette the
    node would have used is untouched and a good restore still works after."""
    a = make_node(tmp_path)
    ledger = tmp_path / "keep.ledger"
    first = Node(str(ledger), node_id="keep")
    first.cassette.close()
    before = ledger.read_bytes()
    data = bytearray(a.snapshot())
    data[-1] ^= 1
    with pytest.raises(S.SnapshotError):
        Node.restore(bytes(data), str(ledger))
    assert ledger.read_bytes() == before
    b = Node.restore(a.snapshot(), str(ledger))
    assert b.fabric.holders.facts()[:5] == a.fabric.holders.facts()


def test_refused_while_work_is_queued(tmp_path):
    a = make_node(tmp_path)
    a._running = 1
    with pytest.raises(S.SnapshotBusy, match="1 request"):
        a.snapshot()
    a._running = 0
    assert S.decode(a.snapshot()).node == "a"


def test_pending_gossip_is_redelivered(tmp_path):
    """Facts a peer never acknowledged before the snapshot reach it after restore
    (loopback), and the node counts the redelivery."""
    with Node(str(tmp_path / "b.ledger"), node_id="b", listen="127.0.0.1:0") as b:
        a = Node(str(tmp_path / "a.ledger"), node_id="a", peers=[b.url])
        for i in range(3):
            a.fabric.holders.announce(key(i), "a")
        st = S.decode(a.snapshot())
        assert st.pending == [{"peer": b.url, "start": 0, "end": 3, "redelivered": True}]
        a.cassette.close()
        with Node.restore(a.snapshot(), str(tmp_path / "a2.ledger"), peers=[b.url],
                          listen="127.0.0.1:0") as a2:
            assert a2.incarnation == 1
            wait_for(lambda: all(b.fabric.holders.holds(key(i), "a") for i in range(3)),
                     "the redelivered facts on b")
            wait_for(lambda: a2.stats().get("gossip_redelivered") == 1, "the count")
            assert S.decode(a2.snapshot()).pending == []


# ---- the decoder fuzzed ----------------------------------------------------------
# Whatever the bytes, decode() returns a NodeState or raises SnapshotError:
# never another exception, never a hang. Two layers: damage to a real
# snapshot's bytes (the checksum catches most; the header checks the rest),
# and damage inside the state map *with the checksum made right*, so the
# field checks behind it are reached.

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

_FUZZ = settings(max_examples=400, deadline=None,
                 suppress_health_check=[HealthCheck.function_scoped_fixture,
                                        HealthCheck.too_slow])


def _good_snapshot():
    import tempfile
    with tempfile.TemporaryDirectory() as d:
        import pathlib
        n = make_node(pathlib.Path(d))
        try:
            return n.snapshot()
        finally:
            n.cassette.close()


_GOOD = None


def good():
    global _GOOD
    if _GOOD is None:
        _GOOD = _good_snapshot()
    return _GOOD


def _decode_or_refuse(data):
    try:
        return S.decode(data)
    except S.SnapshotError as exc:
        assert str(exc)  # says what is wrong
        return None


@_FUZZ
@given(st.binary(max_size=300))
def test_fuzz_random_bytes(data):
    _decode_or_refuse(data)
    _decode_or_refuse(S.MAGIC + data)
    _decode_or_refuse(S.MAGIC + struct.pack(">H", S.SPEC_VERSION) + data)


@_FUZZ
@given(st.data())
def test_fuzz_damaged_snapshot_bytes(data):
    b = bytearray(good())
    for _ in range(data.draw(st.integers(1, 4))):
        how = data.draw(st.sampled_from(["flip", "cut", "insert", "set"]))
        i = data.draw(st.integers(0, max(0, len(b) - 1)))
        if how == "flip" and b:
            b[i] ^= 1 << data.draw(st.integers(0, 7))
        elif how == "cut":
            del b[i:i + data.draw(st.integers(1, 16))]
        elif how == "insert":
            b[i:i] = data.draw(st.binary(min_size=1, max_size=8))
        elif b:
            b[i] = data.draw(st.integers(0, 255))
    _decode_or_refuse(bytes(b))


_plain = st.recursive(
    st.none() | st.booleans() | st.integers(-2**63, 2**64 - 1) | st.text(max_size=8)
    | st.floats(allow_nan=True),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=4),
    max_leaves=12)


def _rebuild(state, holdings):
    import zlib
    import fabric
    sb = fabric.canonical_bytes(state)
    crc = zlib.crc32(holdings, zlib.crc32(sb))
    return S.HEADER.pack(S.MAGIC, S.SPEC_VERSION, 0, len(sb), len(holdings), crc) + sb + holdings


def _paths(v, path=()):
    yield path
    if isinstance(v, dict):
        for k, x in v.items():
            yield from _paths(x, path + (k,))
    elif isinstance(v, list):
        for i, x in enumerate(v):
            yield from _paths(x, path + (i,))


@_FUZZ
@given(st.data())
def test_fuzz_state_fields_with_a_valid_checksum(data):
    import fabric
    raw = good()
    _m, _v, _f, nstate, _nhold, _crc = S.HEADER.unpack_from(raw)
    state = fabric.unpack(raw[S.HEADER.size:S.HEADER.size + nstate])
    holdings = raw[S.HEADER.size + nstate:]
    path = data.draw(st.sampled_from(list(_paths(state))[1:]))
    target = state
    for p in path[:-1]:
        target = target[p]
    how = data.draw(st.sampled_from(["replace", "delete", "add"]))
    if how == "replace":
        target[path[-1]] = data.draw(_plain)
    elif how == "delete":
        del target[path[-1]]
    elif isinstance(target, dict):
        target[data.draw(st.text(max_size=6))] = data.draw(_plain)
    else:
        target.append(data.draw(_plain))
    if data.draw(st.booleans()):
        holdings = holdings[:data.draw(st.integers(0, len(holdings)))]
    try:
        bytes_ = _rebuild(state, holdings)
    except (TypeError, ValueError, OverflowError):
        return  # not encodable (a NaN in a float spot is, a huge int may not be)
    got = _decode_or_refuse(bytes_)
    if got is not None:  # accepted: what restore builds from it builds
        assert isinstance(got.incarnation, int) and got.incarnation >= 0
        if got.governor is not None:
            PeerGovernor.from_state(got.governor)


def test_a_fuzzed_snapshot_that_decodes_also_restores(tmp_path):
    """Restore runs the same decoder: a refusal there makes no cassette."""
    b = bytearray(good())
    b[S.HEADER.size + 2] ^= 0x01
    bad(bytes(b), "checksum mismatch", tmp_path)
