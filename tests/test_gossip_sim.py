"""The gossip simulation (bench/gossip.py) converges in O(log N) rounds."""

import math
import os
import random
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import gossip  # noqa: E402


def test_converges_in_log_rounds():
    for n in (10, 200):
        rounds, msgs, nbytes = gossip.simulate(n, random.Random(n))
        assert rounds <= 4 * math.ceil(math.log2(n)) and msgs >= n - 1 and nbytes > 0


def test_dht_model_grows_with_log_n():
    assert gossip.dht_cost(1000)[0] > gossip.dht_cost(10)[0]
