"""Regression: a holding index snapshot that names one fact twice is refused
(it was loaded with the copy dropped, so every later fact's version was one
less than the writer's and a peer's delta_since bookmark pointed one fact
too far)."""

import pytest

import fabric
from fabric.holders import SNAPSHOT_SPEC, SNAPSHOT_VERSION, HoldingIndex


def _keys(n):
    return [fabric.ContentKey(bytes([i]) * 32) for i in range(n)]


def test_a_duplicated_fact_is_refused_by_the_core_and_the_general_decoder():
    k0, k1, k2 = _keys(3)
    idx = HoldingIndex()
    for k in (k0, k1, k2):
        idx.announce(k, "a")
    good = idx.snapshot()
    assert HoldingIndex.restore(good).version == 3
    cb = fabric.canonical_bytes
    facts = [[k0.digest, "a"], [k1.digest, "a"], [k1.digest, "a"], [k2.digest, "b"]]
    canonical = cb({"spec": SNAPSHOT_SPEC, "version": SNAPSHOT_VERSION, "facts": facts})
    with pytest.raises(ValueError, match=r"facts\[2\] repeats facts\[1\]"):
        HoldingIndex.restore(canonical)
    # the raw core store refuses it too, and stays empty
    from fabric._core import _Holdings
    store = _Holdings()
    with pytest.raises(ValueError, match="a fact appears twice"):
        store.restore(canonical)
    assert len(store) == 0 and store.nkeys == 0


def test_the_same_key_under_two_holders_is_two_facts():
    k0, = _keys(1)
    data = fabric.canonical_bytes({"spec": SNAPSHOT_SPEC, "version": SNAPSHOT_VERSION,
                                   "facts": [[k0.digest, "a"], [k0.digest, "b"]]})
    back = HoldingIndex.restore(data)
    assert back.version == 2 and sorted(back.holders_of(k0)) == ["a", "b"]
