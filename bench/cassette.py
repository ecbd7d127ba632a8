"""Cassette benchmark, side by side in one run: fabric.EvalCassette against
diskcache.Cache and sqlite3 (WAL).

    python bench/cassette.py [--records N] [--replay N]

Prints times and ratios (ratios hold on shared, noisy machines; absolute
times drift). Figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import sqlite3
import tempfile
import threading
import time

import diskcache

import fabric
from fabric import EvalCassette


def best(fn, repeat=5):
    """Best time of repeat runs of fn (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def keys(n):
    return [fabric.ContentKey(os.urandom(32)) for _ in range(n)]


def bench_hits(tmp, size, n=2000, loops=20):
    value = b"v" * size
    ks = keys(n)
    cas = EvalCassette(os.path.join(tmp, f"hit{size}.fabl"), durability="os")
    for k in ks:
        cas.record(k, value)
    dc = diskcache.Cache(os.path.join(tmp, f"dc{size}"))
    hexes = [k.hex for k in ks]
    for h in hexes:
        dc.set(h, value)
    db = sqlite3.connect(os.path.join(tmp, f"sq{size}.db"), isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (k blob primary key, v blob)")
    db.execute("begin")
    db.executemany("insert into t values (?, ?)", [(k.digest, value) for k in ks])
    db.execute("commit")
    digests = [k.digest for k in ks]

    def run_cas():
        get = cas.get
        for _ in range(loops):
            for k in ks:
                get(k)

    def run_dc():
        get = dc.get
        for _ in range(loops):
            for h in hexes:
                get(h)

    def run_sq():
        ex = db.execute
        for _ in range(loops):
            for d in digests:
                ex("select v from t where k = ?", (d,)).fetchone()

    total = n * loops
    t_cas, t_dc, t_sq = (best(f, 3) / total for f in (run_cas, run_dc, run_sq))
    cas.close()
    dc.close()
    db.close()
    return t_cas, t_dc, t_sq


def bench_appends(tmp, n):
    value = b"v" * 100
    out = {}
    for mode in ("os", "fsync", "group"):
        count = n if mode == "os" else max(200, n // 200)
        ks = keys(count)
        p = os.path.join(tmp, f"app-{mode}.fabl")
        with EvalCassette(p, durability=mode) as c:
            t = time.perf_counter()
            for k in ks:
                c.record(k, value)
            out[mode] = count / (time.perf_counter() - t)
    # Group commit with concurrent writers (8 threads).
    ks = keys(4000)
    p = os.path.join(tmp, "app-group-threads.fabl")
    with EvalCassette(p, durability="group") as c:
        def work(part):
            for k in part:
                c.record(k, value)
        threads = [threading.Thread(target=work, args=(ks[i::8],)) for i in range(8)]
        t = time.perf_counter()
        for th in threads:
            th.start()
        for th in threads:
            th.join()
        out["group x8 threads"] = len(ks) / (time.perf_counter() - t)
    dc = diskcache.Cache(os.path.join(tmp, "dc-app"))
    ks = [os.urandom(32).hex() for _ in range(max(200, n // 20))]
    t = time.perf_counter()
    for k in ks:
        dc.set(k, value)
    out["diskcache set"] = len(ks) / (time.perf_counter() - t)
    dc.close()
    db = sqlite3.connect(os.path.join(tmp, "sq-app.db"), isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("pragma synchronous=normal")
    db.execute("create table t (k blob primary key, v blob)")
    ks = [os.urandom(32) for _ in range(max(200, n // 20))]
    t = time.perf_counter()
    for k in ks:
        db.execute("insert into t values (?, ?)", (k, value))
    out["sqlite3 insert (WAL, autocommit)"] = len(ks) / (time.perf_counter() - t)
    db.close()
    return out


def bench_replay(tmp, n):
    p = os.path.join(tmp, "replay.fabl")
    value = b"r" * 100
    with EvalCassette(p, durability="os") as c:
        for _ in range(n):
            c.record(fabric.ContentKey(os.urandom(32)), value)
    size = os.path.getsize(p)
    t = best(lambda: EvalCassette.from_ledger(p).close(), 3)
    with EvalCassette.from_ledger(p) as c:
        s = c.stats()
    return n / t, size / t / 1e9, s["index_bytes_per_key"], size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000, help="appends with os durability")
    ap.add_argument("--replay", type=int, default=1_000_000, help="records in the replay ledger")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("FABRIC_BENCH_DIR")) as tmp:
        print("get hit (decoded), per call:")
        for size in (100, 65536):
            c, d, s = bench_hits(tmp, size)
            print(f"  {size:>6} B  cassette {c*1e6:6.2f} us  diskcache {d*1e6:6.2f} us  "
                  f"sqlite3 WAL {s*1e6:6.2f} us   -> {d/c:4.1f}x diskcache, {s/c:4.1f}x sqlite3")
        print("append, 100 B reply (records/s):")
        for name, rate in bench_appends(tmp, args.records).items():
            print(f"  {name:<34} {rate:>12,.0f}")
        rps, gbs, per_key, size = bench_replay(tmp, args.replay)
        print(f"open/replay of {args.replay:,} records ({size/1e6:.0f} MB): "
              f"{rps/1e6:.2f} M records/s, {gbs:.2f} GB/s, index {per_key:.1f} B/record")


if __name__ == "__main__":
    main()
