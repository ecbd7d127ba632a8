"""The gossip simulation (bench/gossip.py) converges in O(log N) rounds."""

import importlib.util
import math
import os
import random
import sys

# Loaded by its path: putting bench/ on sys.path would let bench/fabric.py
# shadow the package in every process the suite starts afterwards.
_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench",
                     "gossip.py")
_spec = importlib.util.spec_from_file_location("bench_gossip", _PATH)
assert _spec is not None and _spec.loader is not None
gossip = importlib.util.module_from_spec(_spec)
sys.modules["bench_gossip"] = gossip
_spec.loader.exec_module(gossip)


def test_converges_in_log_rounds():
    for n in (10, 200):
        rounds, msgs, nbytes = gossip.simulate(n, random.Random(n))
        assert rounds <= 4 * math.ceil(math.log2(n)) and msgs >= n - 1 and nbytes > 0


def test_dht_model_grows_with_log_n():
    assert gossip.dht_cost(1000)[0] > gossip.dht_cost(10)[0]
