"""Value encoding benchmark, side by side in one run (issue 10).

    python bench/values.py [--quick]

For (a) a 10-key dict of mixed types, (b) a nested ~10 KB object and (c) an
8 MiB float64 numpy array:

- fabric: ``EvalCassette.record`` + ``get`` with ``durability="os"`` and a
  fresh key every round (the typed value encoding, types kept);
- pickle protocol 5 ``dumps`` + ``loads`` in memory;
- msgpack ``packb`` + ``unpackb`` in memory (types not kept: tuples come back
  as lists; (c) as raw bytes);
- for (c): a raw ``fab`` ledger append of the same 8 MiB (``record`` of a
  ``bytes``), ``get`` throughput, and the content key of the array against
  ``openssl speed`` SHA-256 at 8 MiB.

Each timed run loops over the calls itself (no per-call Python function
around them, for pickle and msgpack as for fabric). The fresh keys of a
run are made before its clock starts, from one ``os.urandom`` call per
4,096 keys: a key is an input of the round trip, as the value is (a
fabric takes it from the request it is serving), and the time of making
one is printed in the parts table. For (a) and (b) that table splits the
round trip into its parts.

``--clock cpu`` times with ``time.process_time`` (CPU time of this
process: steadier than wall time on a shared machine, but blind to time
spent waiting, e.g. on a disk); the default is wall time.

Prints per-call times and ratios (ratios hold on shared, noisy machines;
absolute times drift). Figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import shutil
import sys
import tempfile
import time
from itertools import repeat

import msgpack
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keys as keybench  # noqa: E402  (bench/keys.py: the same contents (a), (b))

import fabric  # noqa: E402
from fabric import ContentKey, EvalCassette  # noqa: E402


def content_c():
    """8 MiB of float64."""
    return np.arange(1 << 20, dtype=np.float64) * 0.5


def best_per_call(runs, quick, clock=time.perf_counter):
    """Best per-call seconds of each run, timed in interleaved rounds.

    A run is ``run(n, clock)``: it makes what its n calls need, then makes
    the n calls between two readings of clock, and returns the seconds
    between them."""
    numbers = {}
    for name, run in runs.items():
        n = 1
        while run(n, clock) < 0.05 and n < 1 << 24:
            n *= 4
        numbers[name] = n
    best = {name: float("inf") for name in runs}
    for _ in range(3 if quick else 10):
        for name, run in runs.items():
            best[name] = min(best[name], run(numbers[name], clock) / numbers[name])
    return best


def calls(fn, *args):
    """A run of n calls fn(*args)."""
    def run(n, clock):
        t0 = clock()
        for _ in repeat(None, n):
            fn(*args)
        return clock() - t0
    return run


def fmt(s):
    return "%.2f µs" % (s * 1e6) if s < 1e-3 else "%.2f ms" % (s * 1e3)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                    help="time with perf_counter (wall) or process_time (cpu)")
    args = ap.parse_args(argv)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    # The ledger grows by 1-3 GB over a run: removed at the end.
    tmp = tempfile.mkdtemp(prefix="fabric-values-")
    try:
        run(args, clock, tmp)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def run(args, clock, tmp):
    cas = EvalCassette(os.path.join(tmp, "v.fabl"), durability="os")
    rec, get = cas.record, cas.get

    pool = []

    def fresh():
        # Random keys, 4,096 per urandom call.
        if not pool:
            blob = os.urandom(32 * 4096)
            pool.extend(blob[i:i + 32] for i in range(0, len(blob), 32))
        return ContentKey(pool.pop())

    def fresh_keys(n):
        return [fresh() for _ in range(n)]

    def records(value, then_get):
        """A run of n records of value, each under a fresh key made before
        the clock starts, each followed by a get when then_get."""
        def run(n, clock):
            keys = fresh_keys(n)
            if then_get:
                t0 = clock()
                for k in keys:
                    rec(k, value)
                    get(k)
            else:
                t0 = clock()
                for k in keys:
                    rec(k, value)
            return clock() - t0
        return run

    print("| content | fabric record+get | pickle 5 dumps+loads | msgpack packb+unpackb "
          "| fabric / pickle time | fabric / msgpack time |")
    print("|---|---:|---:|---:|---:|---:|")
    rows, parts = [], {}
    for label, value in (("(a) 10-key dict", keybench.content_a()),
                         ("(b) nested ~10 KB", keybench.content_b()),
                         ("(c) 8 MiB float64 array", content_c())):
        is_array = isinstance(value, np.ndarray)
        mp_value = value.tobytes() if is_array else value

        def pick(n, clock, value=value):
            dumps, loads = pickle.dumps, pickle.loads
            t0 = clock()
            for _ in repeat(None, n):
                loads(dumps(value, protocol=5))
            return clock() - t0

        def mp(n, clock, mp_value=mp_value):
            packb, unpackb = msgpack.packb, msgpack.unpackb
            t0 = clock()
            for _ in repeat(None, n):
                unpackb(packb(mp_value), strict_map_key=False)
            return clock() - t0

        t = best_per_call({"fabric": records(value, True), "pickle": pick, "msgpack": mp},
                          args.quick, clock)
        rows.append("| %s | %s | %s | %s | %.2f× | %.2f× |" % (
            label, fmt(t["fabric"]), fmt(t["pickle"]), fmt(t["msgpack"]),
            t["fabric"] / t["pickle"], t["fabric"] / t["msgpack"]))
        print(rows[-1])
        if is_array:
            continue
        enc = fabric.encode_value(value)
        held = fresh()
        cas.record(held, value)
        pickled = pickle.dumps(value, protocol=5)
        parts[label] = best_per_call({
            "fresh key (made before the clock starts, not in the round trip)": calls(fresh),
            "record": records(value, False),
            "record of the encoded bytes": records(enc, False),
            "get": calls(get, held),
            "encode_value": calls(fabric.encode_value, value),
            "decode_value": calls(fabric.decode_value, enc),
            "pickle dumps": calls(pickle.dumps, value, 5),
            "pickle loads": calls(pickle.loads, pickled),
        }, args.quick, clock)
    print()
    print("| part | "
          + " | ".join(parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for name in next(iter(parts.values())):
        print("| %s | %s |" % (name, " | ".join(fmt(p[name]) for p in parts.values())))

    # (c) in detail: record against a raw append of the same bytes, get, key.
    arr = content_c()
    raw = arr.tobytes()
    held = fresh()
    cas.record(held, arr)

    def key_array():
        fabric.EvalRequest("f", (arr,))

    def sha_raw():
        hashlib.sha256(raw).digest()

    t = best_per_call({"record": records(arr, False), "raw": records(raw, False),
                       "get": calls(get, held), "key": calls(key_array),
                       "sha": calls(sha_raw)}, args.quick, clock)
    ssl = keybench.openssl_speed(len(raw), 1 if args.quick else 3)
    print()
    print("| (c) 8 MiB float64 array | time | rate | against | goal |")
    print("|---|---:|---:|---:|---|")
    print("| record (value encoding) | %s | %.2f GB/s | %.0f %% of a raw append (%s) | ≥ 80 %% |"
          % (fmt(t["record"]), len(raw) / t["record"] / 1e9, 100 * t["raw"] / t["record"],
             fmt(t["raw"])))
    print("| get (a new writable array) | %s | %.2f GB/s | | ≥ 2 GB/s |"
          % (fmt(t["get"]), len(raw) / t["get"] / 1e9))
    key_rate = len(raw) / t["key"]
    print("| content key of a request holding it | %s | %.2f GB/s | %.0f %% of hashlib.sha256 "
          "of the bytes in the same run (%.2f GB/s); %s | ≥ 90 %% |"
          % (fmt(t["key"]), key_rate / 1e9, 100 * t["sha"] / t["key"], len(raw) / t["sha"] / 1e9,
             "%.0f %% of openssl speed sha256 (%.2f GB/s)" % (100 * key_rate / ssl, ssl / 1e9)
             if ssl else "openssl speed not available"))
    cas.close()


if __name__ == "__main__":
    main()
