"""HoldingIndex: grow-only facts, merge, gossip deltas, snapshots, health."""

import os
import random
import threading

import pytest

import fabric
from fabric import ContentKey, HoldingIndex
from fabric.holders import SNAPSHOT_SPEC


def key(i):
    return fabric.EvalRequest("op", (i,)).key


def test_announce_is_grow_only_and_idempotent():
    idx = HoldingIndex()
    assert idx.announce(key(1), "b") is True
    assert idx.announce(key(1), "a") is True
    assert idx.announce(key(1), "b") is False
    assert idx.holders_of(key(1)) == ["a", "b"]
    assert idx.holders_of(key(2)) == []
    assert len(idx) == 2 and idx.version == 2
    assert (key(1), "a") in idx and (key(2), "a") not in idx
    with pytest.raises(TypeError):
        idx.announce("sha256:00", "a")
    with pytest.raises(TypeError):
        idx.announce(key(1), "")


def test_failed_holders_are_listed_last():
    idx = HoldingIndex([(key(1), h) for h in ("a", "b", "c")])
    idx.mark_failed("a")
    idx.mark_failed("a")
    idx.mark_failed("b")
    assert idx.holders_of(key(1)) == ["c", "b", "a"]
    idx.mark_ok("a")
    assert idx.holders_of(key(1)) == ["a", "c", "b"]
    assert idx.failures("b") == 1 and idx.failures("a") == 0


def test_merge_is_a_union_and_self_merge_is_a_no_op():
    a = HoldingIndex([(key(1), "a"), (key(2), "a")])
    b = HoldingIndex([(key(2), "b"), (key(3), "b")])
    assert a.merge(b) == 2
    assert a.merge(b) == 0
    assert a.merge(a) == 0
    assert set(a) == {(key(1), "a"), (key(2), "a"), (key(2), "b"), (key(3), "b")}
    assert a.holders_of(key(2)) == ["a", "b"]
    with pytest.raises(TypeError):
        a.merge({"not": "an index"})


def test_concurrent_merges_both_ways_and_with_itself_never_deadlock():
    a = HoldingIndex()
    b = HoldingIndex()
    stop = threading.Event()
    errors = []
    n = 2000

    def writer(idx, holder):
        for i in range(n):
            idx.announce(key(i % 300), f"{holder}{i % 7}")

    def merger(x, y):
        try:
            while not stop.is_set():
                x.merge(y)
                x.merge(x)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(a, "a")),
               threading.Thread(target=writer, args=(b, "b")),
               threading.Thread(target=merger, args=(a, b)),
               threading.Thread(target=merger, args=(b, a))]
    for t in threads:
        t.start()
    for t in threads[:2]:
        t.join(60)
    stop.set()
    for t in threads[2:]:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a merge deadlocked"
    assert not errors
    a.merge(b)
    b.merge(a)
    assert set(a) == set(b)
    assert len(set(a)) == len(a)  # no fact recorded twice
    expected = {(key(i % 300), f"{h}{i % 7}") for h in "ab" for i in range(n)}
    assert set(a) == expected


def test_delta_since_and_apply_converge_like_gossip():
    rng = random.Random(7)
    nodes = {n: HoldingIndex() for n in "abcd"}
    seen = {(x, y): 0 for x in nodes for y in nodes if x != y}
    for step in range(400):
        n = rng.choice("abcd")
        nodes[n].announce(key(rng.randrange(50)), n)
        # One gossip exchange: x pulls y's delta since what it saw.
        x, y = rng.sample("abcd", 2)
        delta = nodes[y].delta_since(seen[(x, y)])
        nodes[x].apply(delta)
        seen[(x, y)] = delta.end
    for _ in range(3):  # finish with full rounds
        for (x, y) in seen:
            delta = nodes[y].delta_since(seen[(x, y)])
            nodes[x].apply(delta)
            seen[(x, y)] = delta.end
    facts = [set(idx) for idx in nodes.values()]
    assert all(f == facts[0] for f in facts)
    idx = nodes["a"]
    assert idx.delta_since(idx.version).facts == ()
    with pytest.raises(ValueError, match="ahead"):
        idx.delta_since(idx.version + 1)
    with pytest.raises(ValueError):
        idx.delta_since(-1)


def test_snapshot_restore_round_trip_keeps_versions():
    idx = HoldingIndex([(key(i), f"n{i % 3}") for i in range(20)])
    idx.mark_failed("n1")
    data = idx.snapshot()
    assert isinstance(data, bytes)
    back = HoldingIndex.restore(data)
    assert back.facts() == idx.facts() and back.version == idx.version
    assert back.delta_since(5) == idx.delta_since(5)
    assert back.failures("n1") == 0  # health is local, not part of a snapshot
    assert HoldingIndex.restore(HoldingIndex().snapshot()).version == 0


def test_restore_refuses_missing_or_unknown_version_and_bad_facts():
    cb = fabric.canonical_bytes
    with pytest.raises(ValueError, match="no version field"):
        HoldingIndex.restore(cb({"spec": SNAPSHOT_SPEC, "facts": []}))
    with pytest.raises(ValueError, match="version 2 is not supported"):
        HoldingIndex.restore(cb({"spec": SNAPSHOT_SPEC, "version": 2, "facts": []}))
    with pytest.raises(ValueError, match="spec is 'other'"):
        HoldingIndex.restore(cb({"spec": "other", "version": 1, "facts": []}))
    with pytest.raises(ValueError, match=r"facts\[1\]"):
        HoldingIndex.restore(cb({"spec": SNAPSHOT_SPEC, "version": 1,
                                 "facts": [[bytes(32), "a"], [bytes(31), "b"]]}))
    with pytest.raises(ValueError, match="not a map"):
        HoldingIndex.restore(cb([1, 2]))
    with pytest.raises(fabric.DecodeError):
        HoldingIndex.restore(b"\xc1")
    good = HoldingIndex([(key(1), "a")]).snapshot()
    with pytest.raises(ValueError):
        HoldingIndex.restore(good[:-3])


def test_repr_names_counts_and_failing_holders():
    idx = HoldingIndex([(key(1), "a"), (key(2), "b")])
    idx.mark_failed("b")
    r = repr(idx)
    assert "2 facts" in r and "2 keys" in r and "failing=[b]" in r
    assert "<table>" in idx._repr_html_() and "sha256:" in idx._repr_html_()
    assert isinstance(idx.keys()[0], ContentKey)


def test_snapshot_golden_vector_matches_the_spec():
    idx = HoldingIndex([(ContentKey(bytes(32)), "a")])
    assert idx.snapshot().hex() == (
        "83a473706563b46661627269632e686f6c64696e672d696e646578a5666163747391"
        "92c4200000000000000000000000000000000000000000000000000000000000000000"
        "a161a776657273696f6e01")


def test_announce_keys_from_an_iterable_or_packed_digests():
    idx = HoldingIndex([(key(0), "me")])
    assert idx.announce_keys((key(i) for i in range(5)), "me") == 4
    packed = b"".join(key(i).digest for i in range(3, 8))
    assert idx.announce_keys(packed, "me") == 3
    assert idx.announce_keys(memoryview(packed), "other") == 5
    assert idx.holders_of(key(4)) == ["me", "other"] and len(idx) == 13
    with pytest.raises(ValueError, match="multiple of 32"):
        idx.announce_keys(packed[:-1], "me")
    with pytest.raises(TypeError, match="ContentKey"):
        idx.announce_keys([key(9), "sha256:00"], "me")
    with pytest.raises(TypeError, match="holder"):
        idx.announce_keys([key(9)], "")
    assert len(idx) == 13  # nothing of a refused call was added


def test_a_bad_fact_anywhere_adds_nothing():
    idx = HoldingIndex()
    for bad in ([(key(1), "a"), (key(2), "")], [(key(1), "a"), ("k", "a")],
                [(key(1), "a"), (key(2),)], [(key(1), "a"), 7]):
        with pytest.raises(TypeError):
            idx.apply(bad)
        assert len(idx) == 0 and idx.holders_of(key(1)) == []
    assert repr(idx).startswith("HoldingIndex(0 facts, 0 keys, holders=[]")


def test_many_holders_and_keys_round_trip_through_merge_and_snapshot():
    rng = random.Random(3)
    holders = [f"node-{i}" * (1 + i % 20) for i in range(300)]  # names up to 160+ bytes
    a = HoldingIndex()
    ref = set()
    for i in range(20000):
        fact = (key(rng.randrange(5000)), rng.choice(holders))
        a.announce(*fact)
        ref.add(fact)
    assert set(a) == ref and len(a) == len(ref)
    b = HoldingIndex([(key(1), "zz")])
    assert b.merge(a) == len(ref) - ((key(1), "zz") in ref)
    assert set(b) == ref | {(key(1), "zz")}
    back = HoldingIndex.restore(b.snapshot())
    assert back.facts() == b.facts() and back.key_count == b.key_count
    for k in (key(i) for i in range(0, 5000, 97)):
        assert back.holders_of(k) == b.holders_of(k) == sorted({h for kk, h in ref | {(key(1), "zz")} if kk == k})


def test_restore_accepts_a_valid_non_canonical_encoding():
    # The core reads the canonical bytes; other valid msgpack of the same
    # document (here: the facts array with a 16-bit count) goes the long way.
    good = HoldingIndex([(ContentKey(bytes(32)), "a")]).snapshot()
    odd = good.replace(b"facts\x91", b"facts\xdc\x00\x01")
    assert odd != good
    back = HoldingIndex.restore(odd)
    assert back.facts() == [(ContentKey(bytes(32)), "a")]


def test_display_costs_do_not_grow_with_the_index():
    idx = HoldingIndex((key(i), "n") for i in range(3000))
    html_text = idx._repr_html_()
    assert html_text.count("<tr><td><code>") == 20 and "2980 more keys" in html_text
    assert "3000 facts" in repr(idx) and idx.memory() > 3000 * 32


def test_the_benchmark_script_runs_small():
    """bench/holders.py (figures in docs/benchmarks.md) runs at a small size,
    its envelope modes too; each build holds every fact it reports, and the
    Bloom filter model finds every key it inserted and names wrong holders at
    the rate its sizing implies."""
    import subprocess
    import sys
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        p for p in (root, os.environ.get("PYTHONPATH")) if p))
    run = [sys.executable, os.path.join(root, "bench", "holders.py")]
    out = subprocess.run(run + ["--facts", "3000", "--holders", "3"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "3000 facts over 3000 keys, 3 holders" in out and "announce_held()" in out
    out = subprocess.run(run + ["--envelope", "--nodes", "4", "--holdings", "500",
                                "--disjoint-holdings", "200"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "4 nodes x 500 holdings = 2000 facts, 500 keys" in out
    assert "(4 holders)" in out
    assert "4 nodes x 200 holdings = 800 facts, 800 keys" in out
    out = subprocess.run(run + ["--envelope-bloom", "--nodes", "4", "--holdings", "2000",
                                "--probes", "20000"], env=env,
                         capture_output=True, text=True, timeout=300, check=True).stdout
    import re
    assert "4 holders x 2000 keys = 8000 keys, m = 19200 bits" in out and "k = 7" in out
    assert "false negatives 0 of 8000" in out
    # 1 % sized: 80,000 tests of unheld keys against a filter; 14 standard
    # deviations either side of 1 % would still fall inside these bounds.
    per_filter = float(re.search(r"false positives per filter\s+([0-9.]+)", out)[1])
    assert 0.005 < per_filter < 0.015, out
    # At least one of 4 wrong: 1 - 0.99^4 = 0.039 (20,000 probes).
    any_wrong = float(re.search(r"at least one wrong holder named\s+([0-9.]+)", out)[1])
    assert 0.02 < any_wrong < 0.06, out
    assert "1.20 B/key" in out
