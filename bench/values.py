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

Fresh keys come from one ``os.urandom`` call per 4,096 keys (a syscall
per key would cost more than the whole record of (a)); the time of making
one is printed beside the round trip it is part of. For (a) and (b) a second
table splits the round trip into its parts.

Prints per-call times and ratios (ratios hold on shared, noisy machines;
absolute times drift). Figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import pickle
import sys
import tempfile
import timeit

import msgpack
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import keys as keybench  # noqa: E402  (bench/keys.py: the same contents (a), (b))

import fabric  # noqa: E402
from fabric import ContentKey, EvalCassette  # noqa: E402


def content_c():
    """8 MiB of float64."""
    return np.arange(1 << 20, dtype=np.float64) * 0.5


def best_per_call(fns, quick):
    """Best per-call seconds of each function, timed in interleaved rounds."""
    numbers = {}
    for name, fn in fns.items():
        n, _ = timeit.Timer(fn).autorange()
        numbers[name] = max(1, n // 4)
    best = {name: float("inf") for name in fns}
    for _ in range(3 if quick else 10):
        for name, fn in fns.items():
            t = timeit.timeit(fn, number=numbers[name]) / numbers[name]
            best[name] = min(best[name], t)
    return best


def fmt(s):
    return "%.2f µs" % (s * 1e6) if s < 1e-3 else "%.2f ms" % (s * 1e3)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args(argv)
    tmp = tempfile.mkdtemp()
    cas = EvalCassette(os.path.join(tmp, "v.fabl"), durability="os")

    pool = []

    def fresh():
        # Random keys, 4,096 per urandom call.
        if not pool:
            blob = os.urandom(32 * 4096)
            pool.extend(blob[i:i + 32] for i in range(0, len(blob), 32))
        return ContentKey(pool.pop())

    print("| content | fabric record+get | pickle 5 dumps+loads | msgpack packb+unpackb "
          "| fabric / pickle time | fabric / msgpack time |")
    print("|---|---:|---:|---:|---:|---:|")
    rows, parts = [], {}
    for label, value in (("(a) 10-key dict", keybench.content_a()),
                         ("(b) nested ~10 KB", keybench.content_b()),
                         ("(c) 8 MiB float64 array", content_c())):
        is_array = isinstance(value, np.ndarray)
        mp_value = value.tobytes() if is_array else value

        def fab():
            k = fresh()
            cas.record(k, value)
            cas.get(k)

        def pick():
            pickle.loads(pickle.dumps(value, protocol=5))

        def mp():
            msgpack.unpackb(msgpack.packb(mp_value), strict_map_key=False)

        t = best_per_call({"fabric": fab, "pickle": pick, "msgpack": mp}, args.quick)
        rows.append("| %s | %s | %s | %s | %.2f× | %.2f× |" % (
            label, fmt(t["fabric"]), fmt(t["pickle"]), fmt(t["msgpack"]),
            t["fabric"] / t["pickle"], t["fabric"] / t["msgpack"]))
        print(rows[-1])
        if is_array:
            continue
        enc = fabric.encode_value(value)
        held = fresh()
        cas.record(held, value)
        parts[label] = best_per_call({
            "fresh key": fresh,
            "record": lambda: cas.record(fresh(), value),
            "record of the encoded bytes": lambda: cas.record(fresh(), enc),
            "get": lambda: cas.get(held),
            "encode_value": lambda: fabric.encode_value(value),
            "decode_value": lambda: fabric.decode_value(enc),
            "pickle dumps": lambda: pickle.dumps(value, protocol=5),
            "pickle dumps+loads": lambda: pickle.loads(pickle.dumps(value, protocol=5)),
        }, args.quick)
    print()
    print("| part (fresh key included where a record needs one) | "
          + " | ".join(parts) + " |")
    print("|---|" + "---:|" * len(parts))
    for name in next(iter(parts.values())):
        print("| %s | %s |" % (name, " | ".join(fmt(p[name]) for p in parts.values())))

    # (c) in detail: record against a raw append of the same bytes, get, key.
    arr = content_c()
    raw = arr.tobytes()
    held = fresh()
    cas.record(held, arr)

    def rec_array():
        cas.record(fresh(), arr)

    def rec_raw():
        cas.record(fresh(), raw)

    def get_array():
        cas.get(held)

    def key_array():
        fabric.EvalRequest("f", (arr,))

    def sha_raw():
        hashlib.sha256(raw).digest()

    t = best_per_call({"record": rec_array, "raw": rec_raw, "get": get_array,
                       "key": key_array, "sha": sha_raw}, args.quick)
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
