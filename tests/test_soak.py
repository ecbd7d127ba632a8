"""The soak's own checks can fail (bench/soak.py): a growing process, a lost
acknowledged record, a wrong reply and an unexpected error are each caught.
The soak itself runs in ``dev.sh test`` (30 s, three processes)."""

import importlib.util
import os
import sys

import pytest

import fabric
from fabric.node import Node

# Loaded by its path (bench/fabric.py must not shadow the package); the
# soak puts bench/ last on sys.path to import its ops: undone here.
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "soak.py")
_saved = list(sys.path)
_spec = importlib.util.spec_from_file_location("bench_soak", _PATH)
soak = importlib.util.module_from_spec(_spec)
sys.modules["bench_soak"] = soak
try:
    _spec.loader.exec_module(soak)
finally:
    sys.path[:] = _saved


def test_flat_accepts_noise_and_catches_growth():
    mib = 1 << 20
    steady = [(100 * mib + (i % 3) * mib, 20) for i in range(40)]
    assert soak.flat(steady)[0]
    leaking = [(100 * mib + i * 4 * mib, 20) for i in range(40)]  # 4 MiB a sample
    ok, text = soak.flat(leaking)
    assert not ok and "RSS" in text
    fd_leak = [(100 * mib, 20 + i * 2) for i in range(40)]
    assert not soak.flat(fd_leak)[0]
    assert soak.flat(leaking[:5]) == (True, "5 samples (too few to judge)")


def test_a_lost_acknowledged_record_is_reported(tmp_path):
    n = Node(str(tmp_path / "a.ledger"), node_id="a", listen="127.0.0.1:0",
             home=soak.ops.home()).start()
    try:
        with fabric.connect(n.url) as c:
            for xp in ((1, 0), (2, 100)):
                assert c.evaluate(soak.sq(xp)).value == soak.ops.square_fn(*xp)
            assert list(c.stream(soak.ops.series.request(3, 9))) == \
                soak.ops.series_items(3, 9)
        assert soak.held_everywhere(n.url, {(1, 0), (2, 100)}, {(3, 9)}) == []
        lost = soak.held_everywhere(n.url, {(1, 0), (2, 100), (3, 0)}, {(3, 9), (4, 9)})
    finally:
        n.stop()
    assert len(lost) == 2
    assert lost[0].startswith("(3, 0): ContentNotHeld")
    assert lost[1].startswith("stream (4, 9): ContentNotHeld")


@pytest.mark.parametrize("outcome", ["ok", "wrong", "expected", "unexpected"])
def test_worker_sorts_each_outcome(outcome):
    def fn():
        if outcome == "wrong":
            raise soak.Wrong("got 3, expected 4")
        if outcome == "expected":
            raise fabric.FabricUnavailable("node down")
        if outcome == "unexpected":
            raise KeyError("a bug")

    w = soak.Worker("t", fn, interval=1.0, start=0.0, deadline=0.5)  # one due time, past
    w.run()
    assert (w.ok, len(w.wrong), sum(w.expected.values()), len(w.unexpected)) == {
        "ok": (1, 0, 0, 0), "wrong": (0, 1, 0, 0), "expected": (0, 0, 1, 0),
        "unexpected": (0, 0, 0, 1)}[outcome]
