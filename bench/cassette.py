"""Cassette benchmark, side by side in one run: fabric.EvalCassette against
diskcache.Cache and sqlite3 (WAL).

    python bench/cassette.py [--records N] [--replay N] [--replay-big BYTES]

Prints times and ratios (ratios hold on shared, noisy machines; absolute
times drift). Figures go into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import random
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

import diskcache

# bench/fabric.py (the fabrics benchmark) would shadow the package when this
# file runs as a script: the package is imported with this directory off the
# import path, and the directory goes back, last, for _common.
_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _here]

import fabric  # noqa: E402
from fabric import EvalCassette  # noqa: E402

sys.path.append(_here)
from _common import best  # noqa: E402

GROUP_THREADS = (8, 16, 32, 64)


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


def bench_random_hits(tmp, n, sample=200_000, rounds=3):
    """A random-key hit in an n-record store (100 B replies): the index
    probe and the record are cache misses, unlike the 2,000-key loop."""
    cas = EvalCassette(os.path.join(tmp, f"rand{n}.fabl"), durability="os")
    ks = keys(n)
    value = b"v" * 100
    for k in ks:
        cas.record(k, value)
    db = sqlite3.connect(os.path.join(tmp, f"rand{n}.db"), isolation_level=None)
    db.execute("pragma journal_mode=wal")
    db.execute("create table t (k blob primary key, v blob)")
    db.execute("begin")
    db.executemany("insert into t values (?, ?)", ((k.digest, value) for k in ks))
    db.execute("commit")
    pick = random.sample(ks, min(sample, n))
    digests = [k.digest for k in pick]

    def run_cas():
        get = cas.get
        for k in pick:
            get(k)

    def run_sq():
        ex = db.execute
        for d in digests:
            ex("select v from t where k = ?", (d,)).fetchone()

    t_cas, t_sq = (t / len(pick) for t in interleaved((run_cas, run_sq), rounds))
    cas.close()
    db.close()
    return t_cas, t_sq


def bench_streams(tmp, n_items=200_000, rounds=5):
    """Items/s of a stream of small items recorded through record_stream and
    replayed through get_stream, against a plain generator of the items."""
    path = os.path.join(tmp, "streams.fabl")
    cas = EvalCassette(path, durability="os")
    items = list(range(n_items))

    def plain():
        for _ in (i for i in items):
            pass

    def record():
        with cas.record_stream(fabric.ContentKey(os.urandom(32))) as w:
            append = w.append
            for i in items:
                append(i)

    k = fabric.ContentKey(os.urandom(32))
    with cas.record_stream(k) as w:
        for i in items:
            w.append(i)

    def replay():
        for _ in cas.get_stream(k):
            pass

    t_plain, t_rec, t_rep = interleaved((plain, record, replay), rounds)
    cas.close()
    return n_items / t_plain, n_items / t_rec, n_items / t_rep


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


def bench_request_appends(tmp, n, rounds=5):
    """Appends (os durability, 100 B reply) without and with the request's
    identity bytes (a REQUEST record before each REPLY), interleaved rounds,
    each round into fresh files: (rate without, rate with bytes, rate with
    the EvalRequest (its identity encoded per record), request bytes)."""
    value = b"v" * 100
    reqs = [fabric.EvalRequest("bench.op", (i, "x" * 40), {"scale": 1.5}) for i in range(n)]
    idents = [r.identity_bytes() for r in reqs]
    ks = [r.key for r in reqs]
    counter = iter(range(10**9))

    def run(kind):
        def go():
            p = os.path.join(tmp, f"req-{kind}-{next(counter)}.fabl")
            with EvalCassette(p, durability="os") as c:
                if kind == "none":
                    for k in ks:
                        c.record(k, value)
                elif kind == "bytes":
                    for k, b in zip(ks, idents):
                        c.record(k, value, request=b)
                else:
                    for k, r in zip(ks, reqs):
                        c.record(k, value, request=r)
            os.unlink(p)
        return go

    t = interleaved([run("none"), run("bytes"), run("request")], rounds)
    return n / t[0], n / t[1], n / t[2], sum(map(len, idents)) / n


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
    # checkpoint=False: the full replay (an open with a checkpoint replays
    # only the tail: bench_open_process)
    t = best(lambda: EvalCassette.from_ledger(p, checkpoint=False).close(), 3)
    with EvalCassette.from_ledger(p, checkpoint=False) as c:
        s = c.stats()
    os.unlink(p)
    return n / t, size / t / 1e9, s["index_bytes_per_key"], size


OPEN_FABRIC = """
import sys
from fabric import ContentKey, EvalCassette
c = EvalCassette.from_ledger(sys.argv[1])
assert c.get(ContentKey(bytes.fromhex(sys.argv[2]))) is not None
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""
OPEN_SQLITE = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1])
assert db.execute("select v from t where k = ?", (bytes.fromhex(sys.argv[2]),)).fetchone()
print(open("/proc/self/status").read().split("VmHWM:")[1].split()[0])
"""
OPEN_SQLITE_FABRIC = "import fabric\n" + OPEN_SQLITE


def _process(script, *args):
    """Wall seconds and peak RSS (MiB, the process's own VmHWM, which exec
    resets: ru_maxrss would count the forking parent) of one short-lived
    Python process."""
    t = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", script, *args], check=True,
                         stdout=subprocess.PIPE, text=True).stdout
    wall = time.perf_counter() - t
    return wall, int(out.split()[-1]) / 1024 if out.strip() else 0.0


def bench_open_process(tmp, n, rounds=7):
    """A whole short-lived process that opens an n-record store and answers
    one get, against sqlite3 (open + one indexed select) on the same data,
    and sqlite3 in a process that also imports fabric. Best wall time and
    its peak RSS over interleaved rounds; page cache warm."""
    p = os.path.join(tmp, f"open-{n}.fabl")
    q = os.path.join(tmp, f"open-{n}.db")
    value = {"v": 1}
    ks = [os.urandom(32) for _ in range(n)]
    with EvalCassette(p, durability="os") as c:
        record, key = c.record, fabric.ContentKey
        for k in ks:
            record(key(k), value)
    # no checkpoint() here: the writer's close leaves one (a session of
    # 65,536 records or more), and the first process after it uses it
    assert os.path.exists(p + ".ckpt"), "the writer's close left no checkpoint"
    made = os.stat(p + ".ckpt").st_mtime_ns
    db = sqlite3.connect(q, isolation_level=None)
    db.execute("create table t (k blob primary key, v blob)")
    db.execute("begin")
    db.executemany("insert into t values (?, ?)",
                   ((k, fabric.canonical_bytes(value)) for k in ks))
    db.execute("commit")
    db.close()
    probe = random.Random(n).choice(ks).hex()
    results = {"fabric": [], "sqlite3": [], "sqlite3 + import fabric": []}
    for _ in range(rounds):
        results["fabric"].append(_process(OPEN_FABRIC, p, probe))
        results["sqlite3"].append(_process(OPEN_SQLITE, q, probe))
        results["sqlite3 + import fabric"].append(_process(OPEN_SQLITE_FABRIC, q, probe))
    import_only = min(_process("import fabric")[0] for _ in range(rounds))
    # every process used the close's checkpoint: none replayed enough to
    # write another
    assert os.stat(p + ".ckpt").st_mtime_ns == made
    with EvalCassette.from_ledger(p) as c:
        assert c.stats()["checkpoint"]["state"] == "used"
        assert c.stats()["open_replayed"] == 0
    first = results["fabric"][0]
    os.unlink(p)
    os.unlink(p + ".ckpt")
    os.unlink(q)
    return {name: min(r) for name, r in results.items()}, import_only, first


WRITER_PROC = """
import os, sys, time
from fabric import ContentKey, EvalCassette
path, n, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
ks = [ContentKey(os.urandom(32)) for _ in range(n)]
c = EvalCassette(path, durability=mode)
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
cpu = time.process_time()
for k in ks:
    c.record(k, b"v" * 100)
print(time.perf_counter() - t, time.process_time() - cpu, flush=True)
"""

SQLITE_WRITER = """
import os, sqlite3, sys, time
path, n = sys.argv[1], int(sys.argv[2])
db = sqlite3.connect(path, isolation_level=None, timeout=60)
db.execute("pragma synchronous=normal")
ks = [os.urandom(32) for _ in range(n)]
print("ready", flush=True)
sys.stdin.readline()
t = time.perf_counter()
for k in ks:
    db.execute("insert into t values (?, ?)", (k, b"v" * 100))
print(time.perf_counter() - t, flush=True)
"""


def _fifo():
    """In a writer process before it runs: the lowest real-time priority
    (SCHED_FIFO 1), above every ordinary job on the machine."""
    os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))


def _writers(script, n_proc, args, cpu=None, fifo=False):
    """Starts n_proc writer processes, releases them together (a line on
    each stdin after every one said ready), returns the wall time from the
    release to the last process's last append (its line; the processes'
    exits, which close their cassettes, are not appends and are not
    counted). cpu: a list that gets the processes' CPU seconds (user +
    system) in their loops, when their lines give them. fifo: the
    processes run at SCHED_FIFO priority 1 (root only)."""
    procs = [subprocess.Popen([sys.executable, "-c", script, *args], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True,
                              preexec_fn=_fifo if fifo else None) for _ in range(n_proc)]
    for pr in procs:
        assert pr.stdout.readline() == "ready\n"
    t = time.perf_counter()
    for pr in procs:
        pr.stdin.write("go\n")
        pr.stdin.flush()
    lines = [pr.stdout.readline() for pr in procs]
    wall = time.perf_counter() - t
    if cpu is not None:
        cpu.append(sum(float(line.split()[1]) for line in lines))
    for pr in procs:
        assert pr.wait() == 0
    return wall


def bench_writer_processes(tmp, n, rounds=3, modes=("os", "group"), fifo=False):
    """Aggregate records/s of 1, 2 and 4 writer processes (os; group with
    fewer records) and of 2 sqlite3 WAL writer processes, best of rounds
    run interleaved (the machine is shared: one round can be unlucky).
    With os, also the writers' CPU time per record (user + system, best
    round): on a machine whose other jobs leave the writers one CPU
    between them, the aggregate rate is bound by it. fifo: every writer
    (sqlite3's too) at SCHED_FIFO priority 1, so that the other jobs of a
    shared machine do not decide how many CPUs the writers get (root
    only; what a quiet machine gives them)."""
    out = {}
    for _ in range(rounds):
        for mode, count in (("os", n), ("group", max(200, n // 100))):
            if mode not in modes:
                continue
            for n_proc in (1, 2, 4):
                p = os.path.join(tmp, f"w-{mode}-{n_proc}.fabl")
                cpu = []
                wall = _writers(WRITER_PROC, n_proc, (p, str(count), mode), cpu, fifo)
                name = f"{mode}, {n_proc} process(es)"
                out[name] = max(out.get(name, 0.0), n_proc * count / wall)
                if mode == "os":
                    name = f"{mode}, {n_proc} process(es), CPU us per record"
                    out[name] = min(out.get(name, 1e9), cpu[0] / (n_proc * count) * 1e6)
                with EvalCassette(p, "r") as c:
                    assert len(c) == n_proc * count
                os.unlink(p)
        q = os.path.join(tmp, "w.db")
        db = sqlite3.connect(q, isolation_level=None)
        db.execute("pragma journal_mode=wal")
        db.execute("create table t (k blob primary key, v blob)")
        db.close()
        count = max(200, n // 20)
        wall = _writers(SQLITE_WRITER, 2, (q, str(count)), fifo=fifo)
        name = "sqlite3 WAL autocommit, 2 processes"
        out[name] = max(out.get(name, 0.0), 2 * count / wall)
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(q + suffix):
                os.unlink(q + suffix)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000, help="appends with os durability")
    ap.add_argument("--replay", type=int, default=1_000_000, help="records in the replay ledgers")
    ap.add_argument("--open", type=int, nargs="*", default=[1_000_000],
                    help="store sizes for the open-and-one-get process (e.g. 1000000 5000000)")
    ap.add_argument("--replay-big", type=int, default=1024,
                    help="reply size (bytes) of the second replay ledger (GB/s figure)")
    ap.add_argument("--hit-records", type=int, default=1_000_000,
                    help="records in the store of the random-key hit")
    ap.add_argument("--only", choices=["hits", "appends", "requests", "streams", "open",
                                       "writers", "replay"],
                    help="run one section only")
    ap.add_argument("--fifo", action="store_true",
                    help="writers section: run the writer processes at SCHED_FIFO priority 1 "
                         "(root only), out of reach of the machine's other jobs")
    args = ap.parse_args()
    want = (lambda name: args.only in (None, name))
    with tempfile.TemporaryDirectory(dir=os.environ.get("FABRIC_BENCH_DIR")) as tmp:
        if want("hits"):
            print("get hit (decoded), per call, best of interleaved rounds:")
        for size in (100, 65536) if want("hits") else ():
            c, d, s, cp = bench_hits(tmp, size)
            print(f"  {size:>6} B  cassette {c*1e6:6.2f} us  diskcache {d*1e6:6.2f} us  "
                  f"sqlite3 WAL {s*1e6:6.2f} us   -> {d/c:4.1f}x diskcache, {s/c:4.1f}x sqlite3"
                  f"   (copy floor bytes(get_raw) {cp*1e6:.2f} us)")
        if want("hits"):
            c, sq = bench_random_hits(tmp, args.hit_records)
            print(f"  random-key hit in a {args.hit_records:,}-record store, 100 B: cassette "
                  f"{c*1e6:.2f} us  sqlite3 WAL {sq*1e6:.2f} us   -> {sq/c:.1f}x sqlite3")
        if want("appends"):
            print("append, 100 B reply (records/s):")
        for name, rate in (bench_appends(tmp, args.records).items() if want("appends") else ()):
            if isinstance(rate, tuple):
                print(f"  {name:<34} {rate[0]:>12,.0f}   {rate[1]:6.1f} records per fdatasync")
            else:
                print(f"  {name:<34} {rate:>12,.0f}")
        if want("requests"):
            n_req = min(args.records, 100_000)
            none, with_b, with_r, rsize = bench_request_appends(tmp, n_req)
            print(f"append with the request's identity bytes ({rsize:.0f} B), os durability, "
                  f"100 B reply, {n_req:,} records (records/s, best of interleaved rounds):")
            print(f"  without {none:>12,.0f}   with bytes {with_b:>12,.0f} ({with_b/none:.2f}x)"
                  f"   with the EvalRequest {with_r:>12,.0f} ({with_r/none:.2f}x)")
        if want("streams"):
            g, r, p = bench_streams(tmp)
            print(f"stream of 200,000 small ints (items/s): plain generator {g/1e6:.2f} M, "
                  f"recorded {r/1e6:.2f} M (1/{g/r:.1f}), replayed {p/1e6:.2f} M (1/{g/p:.1f})")
        for n in args.open if want("open") else ():
            res, imp, first = bench_open_process(tmp, n)
            f, sq, sqf = res["fabric"], res["sqlite3"], res["sqlite3 + import fabric"]
            print(f"a process that opens a {n:,}-record store and answers one get "
                  f"(the checkpoint its writer's close left; best of 7; the first process "
                  f"after the close: {first[0]*1e3:.1f} ms {first[1]:.1f} MiB):")
            print(f"  fabric {f[0]*1e3:6.1f} ms {f[1]:5.1f} MiB   sqlite3 {sq[0]*1e3:6.1f} ms "
                  f"{sq[1]:5.1f} MiB   sqlite3 + import fabric {sqf[0]*1e3:6.1f} ms "
                  f"{sqf[1]:5.1f} MiB   -> {f[0]/sq[0]:.2f}x / {f[0]/sqf[0]:.2f}x time, "
                  f"{f[1]/sq[1]:.2f}x RSS   (python -c 'import fabric': {imp*1e3:.1f} ms)")
        if want("writers"):
            print("writer processes on one cassette, 100 B replies (aggregate records/s):")
        res = bench_writer_processes(tmp, args.records, fifo=args.fifo) if want("writers") else {}
        for name, rate in res.items():
            if name.endswith("per record"):
                print(f"  {name:<50} {rate:12.2f}")
            else:
                print(f"  {name:<50} {rate:>12,.0f}")
        if res:
            print(f"  2 processes / 1 process, os: {res['os, 2 process(es)'] / res['os, 1 process(es)']:.2f}x"
                  f"   (load average {os.getloadavg()[0]:.1f}"
                  f"{'; writers at SCHED_FIFO 1' if args.fifo else ''})")
        for reply_size in (100, args.replay_big) if want("replay") else ():
            rps, gbs, per_key, size = bench_replay(tmp, args.replay, reply_size)
            print(f"open/replay of {args.replay:,} records of {reply_size} B replies "
                  f"({size/1e6:.0f} MB, page cache warm): {rps/1e6:.2f} M records/s, "
                  f"{gbs:.2f} GB/s, index {per_key:.1f} B/record")

if __name__ == "__main__":
    main()
