"""Cassette benchmark, side by side in one run: fabric.EvalCassette against
diskcache.Cache and sqlite3 (WAL).

    python bench/cassette.py [--records N] [--replay N] [--replay-big BYTES]

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

GROUP_THREADS = (8, 16, 32, 64)


def best(fn, repeat=5):
    """Best time of repeat runs of fn (seconds)."""
    times = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def interleaved(fns, rounds):
    """Best time of each fn over rounds, running them in turn within each
    round (A B C A B C ...) so that a change in the machine's load during
    the run hits every contender alike instead of whichever ran then."""
    best_times = [float("inf")] * len(fns)
    for _ in range(rounds):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            fn()
            best_times[i] = min(best_times[i], time.perf_counter() - t)
    return best_times


def keys(n):
    return [fabric.ContentKey(os.urandom(32)) for _ in range(n)]


def bench_hits(tmp, size, n=2000, loops=10, rounds=5):
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

    raw = cas.get_raw

    def run_cas():
        get = cas.get
        for _ in range(loops):
            for k in ks:
                get(k)

    def run_copy():
        # The floor of a decoded get: one copy of the reply out of the
        # mapping into a new bytes object (what get() does for a bin reply).
        for _ in range(loops):
            for k in ks:
                bytes(raw(k))

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
    t_cas, t_copy, t_dc, t_sq = (t / total for t in interleaved(
        (run_cas, run_copy, run_dc, run_sq), rounds))
    cas.close()
    dc.close()
    db.close()
    return t_cas, t_dc, t_sq, t_copy


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
    # Group commit with concurrent writers: each writer waits for its own
    # record, so a batch holds at most one record per writer thread.
    for n_threads in GROUP_THREADS:
        ks = keys(n_threads * 300)
        p = os.path.join(tmp, f"app-group-{n_threads}.fabl")
        with EvalCassette(p, durability="group") as c:
            def work(part):
                for k in part:
                    c.record(k, value)
            threads = [threading.Thread(target=work, args=(ks[i::n_threads],))
                       for i in range(n_threads)]
            t = time.perf_counter()
            for th in threads:
                th.start()
            for th in threads:
                th.join()
            rate = len(ks) / (time.perf_counter() - t)
            per_sync = len(ks) / max(1, c.stats()["syncs"])
        out[f"group, {n_threads} threads"] = (rate, per_sync)
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


def bench_replay(tmp, n, reply_size):
    """Open/replay of an n-record ledger with replies of reply_size bytes,
    page cache warm (the file was just written; best of 3 opens)."""
    p = os.path.join(tmp, f"replay-{reply_size}.fabl")
    value = b"r" * reply_size
    with EvalCassette(p, durability="os") as c:
        record, key = c.record, fabric.ContentKey
        for _ in range(n):
            record(key(os.urandom(32)), value)
    size = os.path.getsize(p)
    t = best(lambda: EvalCassette.from_ledger(p).close(), 3)
    with EvalCassette.from_ledger(p) as c:
        s = c.stats()
    os.unlink(p)
    return n / t, size / t / 1e9, s["index_bytes_per_key"], size


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000, help="appends with os durability")
    ap.add_argument("--replay", type=int, default=1_000_000, help="records in the replay ledgers")
    ap.add_argument("--replay-big", type=int, default=1024,
                    help="reply size (bytes) of the second replay ledger (GB/s figure)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("FABRIC_BENCH_DIR")) as tmp:
        print("get hit (decoded), per call, best of interleaved rounds:")
        for size in (100, 65536):
            c, d, s, cp = bench_hits(tmp, size)
            print(f"  {size:>6} B  cassette {c*1e6:6.2f} us  diskcache {d*1e6:6.2f} us  "
                  f"sqlite3 WAL {s*1e6:6.2f} us   -> {d/c:4.1f}x diskcache, {s/c:4.1f}x sqlite3"
                  f"   (copy floor bytes(get_raw) {cp*1e6:.2f} us)")
        print("append, 100 B reply (records/s):")
        for name, rate in bench_appends(tmp, args.records).items():
            if isinstance(rate, tuple):
                print(f"  {name:<34} {rate[0]:>12,.0f}   {rate[1]:6.1f} records per fdatasync")
            else:
                print(f"  {name:<34} {rate:>12,.0f}")
        for reply_size in (100, args.replay_big):
            rps, gbs, per_key, size = bench_replay(tmp, args.replay, reply_size)
            print(f"open/replay of {args.replay:,} records of {reply_size} B replies "
                  f"({size/1e6:.0f} MB, page cache warm): {rps/1e6:.2f} M records/s, "
                  f"{gbs:.2f} GB/s, index {per_key:.1f} B/record")

if __name__ == "__main__":
    main()
