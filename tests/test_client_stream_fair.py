"""The fairness section of bench/net.py starts its sync streams together.

Each thread's blocking connection is made on the thread's first call. When
that first call was the measured stream itself, the node (already busy with
the streams that had begun) answered the last handshakes 0.4-0.9 s after the
first: those streams started late and the index of bytes taken when the
first stream ended fell to 0.93-0.98, while the bytes taken after every
stream had begun gave 0.998-1.000 (the client's grants were up to date and
its sockets empty: the consumers waited on the node, not on the GIL). The
section now makes each thread's connection before the start. Checked here by
the mechanism: when the start barrier trips, every thread's connection is
open on the node (no timing)."""

import importlib.util
import os
import sys
import threading
import types

import fabric
from fabric.node import Node

_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "net.py")


def _load_net():
    # Loaded by its path (bench/fabric.py must not shadow the package);
    # net.py edits sys.path on import: undone here.
    saved = list(sys.path)
    spec = importlib.util.spec_from_file_location("bench_net", _PATH)
    net = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(net)
    finally:
        sys.path[:] = saved
    return net


def test_each_thread_is_connected_before_the_streams_start(tmp_path):
    net = _load_net()
    k = 4
    node = Node(str(tmp_path / "fair.ledger"), node_id="fair", home=fabric.LocalFabric(),
                listen="127.0.0.1:0").start()
    seen = []

    class Barrier(threading.Barrier):
        """The section's start: notes the node's connections when it trips."""

        def __init__(self, parties):
            super().__init__(parties, action=lambda: seen.append(
                node.stats()["connections"]))

    # the section's module sees this Barrier; every other use of threading is the real one
    fake = types.SimpleNamespace(Barrier=Barrier, Thread=threading.Thread,
                                 Event=threading.Event)
    net.threading = fake
    try:
        jain, lo, hi = net.section_fair(types.SimpleNamespace(fair_mib=1), node.url, k=k)
    finally:
        node.stop()
    # the client's main connection and one per thread, all answered before the start
    assert seen == [k + 1]
    assert 0 < lo <= hi and 0 < jain <= 1.0
