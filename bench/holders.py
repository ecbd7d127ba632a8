"""Holding index benchmark: the C fact store behind fabric.HoldingIndex at
1e6 facts, next to the dict-of-sets a user would otherwise write.

    python bench/holders.py [--facts N] [--holders H]
    python bench/holders.py --envelope [--nodes 100] [--holdings 1000000]
        [--disjoint-holdings 100000]
    python bench/holders.py --envelope-bloom [--nodes 100] [--holdings 1000000]
        [--fp 0.01] [--probes 1000000]

Prints per-fact build times, snapshot / restore times, repr and
_repr_html_ times, memory per fact (the store's own count and the process's
RSS growth) and announce_held() on an N-record cassette. Figures go into
docs/benchmarks.md (the fleet section).

``--envelope`` measures what every node of a fleet keeps when each of
``--nodes`` nodes holds ``--holdings`` keys: the whole fleet's facts in one
index (every node gossips every fact), built as a node builds it
(``announce_keys`` of each holder's packed digests). Two shapes: every node
holds the same keys (a fleet replaying one workload), and every node holds
keys of its own (``--disjoint-holdings`` per node: 100 × 1e6 disjoint
facts, 1e8 distinct keys, would need about 6 GB, so this shape is measured
smaller and the figure per fact carried over).

``--envelope-bloom`` measures the representation that holds at that size
instead: one Bloom filter per holder (``--nodes`` filters of ``--holdings``
keys each, sized for a ``--fp`` false-positive rate), the k bit indexes of a
key taken from its 32-byte SHA-256 digest (uniformly random bytes: 4 of them
per index, modulo the filter's bits). It is a measured model in numpy, like
the DHT model in bench/gossip.py: the node does not build or gossip these
filters, it keeps the exact index. Reported: bytes per node for all the
filters, build time per key, the lookup "which holders may hold this key"
(the key tested against every filter at once), every inserted key found in
its holder's filter (no false negatives) and the false-positive rate measured
with ``--probes`` keys no holder has, per filter and as "at least one wrong
holder named".
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _here]

from fabric import ContentKey, ContentAddressedFabric, EvalCassette, HoldingIndex  # noqa: E402


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return time.perf_counter() - t, out


def rss_kib() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def envelope(nodes: int, holdings: int, disjoint: int) -> None:
    names = [f"node-{i:03d}" for i in range(nodes)]
    for shape, per in (("same keys on every node", holdings),
                       ("keys of its own on every node", disjoint)):
        shared = os.urandom(32 * per)
        before = rss_kib()
        idx = HoldingIndex()
        t = time.perf_counter()
        for i, name in enumerate(names):
            own = shared if i == 0 or shape.startswith("same") else os.urandom(32 * per)
            idx.announce_keys(own, name)
            del own
        t = time.perf_counter() - t
        grown = (rss_kib() - before) * 1024
        n = len(idx)
        assert n == nodes * per, (n, nodes, per)
        first = ContentKey(shared[:32])
        t_h = min(timed(lambda: idx.holders_of(first))[0] for _ in range(5))
        t_d, d = timed(lambda: idx.delta_since(idx.version - per))
        print(f"{shape}: {nodes} nodes x {per} holdings = {n} facts, {idx.key_count} keys")
        print(f"  build (announce_keys per node) {t:8.3f} s  {t / n * 1e6:6.3f} us/fact")
        print(f"  store memory                   {idx.memory() / 1e6:8.1f} MB"
              f"  {idx.memory() / n:6.1f} B/fact   (RSS growth {grown / 1e6:.1f} MB,"
              f" {grown / n:.1f} B/fact)")
        print(f"  holders_of(a key)              {t_h * 1e6:8.1f} us"
              f"   ({len(idx.holders_of(first))} holders)")
        print(f"  delta_since(one node's facts)  {t_d:8.3f} s   ({len(d.facts)} facts)")
        del idx, d


def bloom_envelope(nodes: int, holdings: int, fp: float, probes: int) -> None:
    import math

    import numpy as np

    # Sizing for n keys at rate p: m = -n ln p / (ln 2)^2 bits, k = (m / n) ln 2.
    m = math.ceil(-holdings * math.log(fp) / math.log(2) ** 2 / 64) * 64
    k = max(1, round(m / holdings * math.log(2)))
    if k > 8:
        raise ValueError(f"--fp {fp} needs {k} bit indexes; a 32-byte digest gives 8")

    def bit_indexes(digests: bytes) -> np.ndarray:
        # (count, k) bit positions: the digest's first k 4-byte words mod m.
        words = np.frombuffer(digests, dtype="<u4").reshape(-1, 8)[:, :k]
        return (words % np.uint32(m)).astype(np.int64)

    def lookup(filters: np.ndarray, digests: bytes) -> np.ndarray:
        # (nodes, count) bool: which filters may hold each key, in batches
        # that keep the gathered bytes under ~64 MB.
        idx = bit_indexes(digests)
        out = np.empty((filters.shape[0], idx.shape[0]), dtype=bool)
        step = max(1, (64 << 20) // (filters.shape[0] * k))
        for a in range(0, idx.shape[0], step):
            b_idx = idx[a:a + step]
            hit = np.ones((filters.shape[0], b_idx.shape[0]), dtype=bool)
            for j in range(k):
                col = b_idx[:, j]
                hit &= ((filters[:, col >> 3] >> (col & 7).astype(np.uint8)) & 1).astype(bool)
            out[:, a:a + step] = hit
        return out

    filters = np.zeros((nodes, m // 8), dtype=np.uint8)
    t_build = t_self = 0.0
    missed = 0
    first = b""
    scratch = np.zeros(m, dtype=bool)
    for i in range(nodes):
        own = os.urandom(32 * holdings)  # SHA-256 digests: uniformly random bytes
        t = time.perf_counter()
        scratch[:] = False
        scratch[bit_indexes(own).ravel()] = True
        filters[i] = np.packbits(scratch, bitorder="little")
        t_build += time.perf_counter() - t
        # No false negatives: every one of the holder's keys is in its filter.
        t = time.perf_counter()
        missed += int(holdings - lookup(filters[i:i + 1], own).sum())
        t_self += time.perf_counter() - t
        if i == 0:
            first = own
    del scratch, own
    n = nodes * holdings
    fill = float(np.unpackbits(filters[0], bitorder="little").mean())

    # Which of the nodes may hold a key: the first holder's keys against every filter.
    t_held, held = timed(lambda: lookup(filters, first))
    assert held[0].all()
    del first, held
    # False positives: keys no holder has, against every filter.
    t_miss, wrong = timed(lambda: lookup(filters, os.urandom(32 * probes)))
    per_filter = float(wrong.mean())
    any_wrong = float(wrong.any(axis=0).mean())
    mean_wrong = float(wrong.sum(axis=0).mean())
    print(f"bloom filters: {nodes} holders x {holdings} keys = {n} keys, "
          f"m = {m} bits ({m / 8 / 1e6:.3f} MB) per filter, k = {k}, target fp {fp}")
    print(f"  memory per node (all {nodes} filters)   {filters.nbytes / 1e6:8.1f} MB"
          f"  {filters.nbytes / n:6.2f} B/key   ({m / holdings:.2f} bits/key)")
    print(f"  build                                {t_build:8.3f} s  "
          f"{t_build / n * 1e6:6.3f} us/key")
    print(f"  own keys in own filter               {t_self:8.3f} s  "
          f"false negatives {missed} of {n}")
    print(f"  lookup against all {nodes} filters     {t_held / holdings * 1e6:8.3f} us"
          f"   (held keys, batches; {probes} unheld keys: {t_miss / probes * 1e6:.3f} us)")
    print(f"  filter fill {fill:.4f}: expected fp {fill ** k:.5f}")
    print(f"  false positives per filter           {per_filter:.5f}"
          f"   ({int(wrong.sum())} of {nodes * probes})")
    print(f"  at least one wrong holder named      {any_wrong:.5f}"
          f"   (1-(1-fp)^nodes = {1 - (1 - per_filter) ** nodes:.5f});"
          f" wrong holders per lookup {mean_wrong:.4f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--facts", type=int, default=1_000_000)
    ap.add_argument("--holders", type=int, default=10)
    ap.add_argument("--envelope", action="store_true",
                    help="the fleet's envelope instead: --nodes x --holdings")
    ap.add_argument("--nodes", type=int, default=100)
    ap.add_argument("--holdings", type=int, default=1_000_000)
    ap.add_argument("--disjoint-holdings", type=int, default=100_000)
    ap.add_argument("--envelope-bloom", action="store_true",
                    help="per-holder Bloom filters (a measured model): --nodes x --holdings")
    ap.add_argument("--fp", type=float, default=0.01)
    ap.add_argument("--probes", type=int, default=1_000_000)
    args = ap.parse_args()
    if args.envelope_bloom:
        bloom_envelope(args.nodes, args.holdings, args.fp, args.probes)
        return
    if args.envelope:
        envelope(args.nodes, args.holdings, args.disjoint_holdings)
        return
    n, nh = args.facts, args.holders
    names = [f"node-{i:02d}" for i in range(nh)]
    keys = [ContentKey(os.urandom(32)) for _ in range(n)]
    facts = [(keys[i], names[i % nh]) for i in range(n)]
    print(f"{n} facts over {n} keys, {nh} holders")

    before = rss_kib()
    t_build, idx = timed(lambda: HoldingIndex(facts))
    grown = (rss_kib() - before) * 1024
    print(f"build HoldingIndex(facts)      {t_build:8.3f} s  {t_build / n * 1e6:6.3f} us/fact")
    print(f"  store memory                 {idx.memory() / n:8.1f} B/fact"
          f"   (RSS growth {grown / n:.1f} B/fact)")

    one = HoldingIndex()
    t_ann, _ = timed(lambda: [one.announce(k, h) for k, h in facts])
    print(f"announce() one at a time       {t_ann:8.3f} s  {t_ann / n * 1e6:6.3f} us/fact")

    def dict_of_sets():
        by_key: dict[ContentKey, set[str]] = {}
        log = []
        for k, h in facts:
            s = by_key.get(k)
            if s is None:
                by_key[k] = {h}
            elif h in s:
                continue
            else:
                s.add(h)
            log.append((k, h))
        return by_key, log

    before = rss_kib()
    t_dict, dos = timed(dict_of_sets)
    grown_dict = (rss_kib() - before) * 1024
    print(f"dict of sets + log (baseline)  {t_dict:8.3f} s  {t_dict / n * 1e6:6.3f} us/fact"
          f"   RSS growth {grown_dict / n:.1f} B/fact")
    del dos

    t_snap, data = timed(idx.snapshot)
    print(f"snapshot()                     {t_snap:8.3f} s  ({len(data) / 1e6:.1f} MB)")
    t_rest, back = timed(lambda: HoldingIndex.restore(data))
    assert back.version == idx.version and back.facts()[-1] == idx.facts()[-1]
    print(f"restore()                      {t_rest:8.3f} s")
    t_delta, d = timed(lambda: idx.delta_since(n - 1000))
    print(f"delta_since(last 1000)         {t_delta * 1e3:8.3f} ms")
    t_hold, _ = timed(lambda: [idx.holders_of(k) for k in keys[:100_000]])
    print(f"holders_of()                   {t_hold / 100_000 * 1e6:8.3f} us/call")
    def best(fn):
        return min(timed(fn)[0] for _ in range(5))

    t_repr, t_html = best(lambda: repr(idx)), best(idx._repr_html_)
    small = HoldingIndex(facts[:100])
    t_repr_s, t_html_s = best(lambda: repr(small)), best(small._repr_html_)
    print(f"repr / _repr_html_ at {n}:   {t_repr * 1e6:8.1f} / {t_html * 1e6:.1f} us"
          f"   (at 100 facts: {t_repr_s * 1e6:.1f} / {t_html_s * 1e6:.1f} us)")

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "held.ledger")
        with EvalCassette(path, "a", durability="os") as cas:
            for k in keys:
                cas.record(k, [1, [], None])
        with EvalCassette(path, "r") as cas:
            t_iter, _ = timed(lambda: sum(1 for _ in cas))
            fab = ContentAddressedFabric("self", cassette=cas)
            t_held, count = timed(fab.announce_held)
            assert count == n
            print(f"cassette key iteration alone   {t_iter:8.3f} s")
            print(f"announce_held() ({n} records) {t_held:8.3f} s")


if __name__ == "__main__":
    main()
