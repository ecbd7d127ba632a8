"""Home sites side by side: ReplicaGroup against ProcessPoolExecutor with the
same number of workers (a trivial op and a 10 ms op), and the cost of
enforcing limits per placed op (PlacementFabric against ReplicaGroup, both
one worker process per request at a time), and DaskFabric's overhead per
task against plain ``client.submit`` on the same LocalCluster (two worker
processes of one thread; tasks one after another, then from 8 threads).

    PYTHONPATH=$PWD python bench/engines.py [--n 400] [--only dask|local]
"""

import argparse
import concurrent.futures as cf
import os
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/fabric.py would shadow the package: this folder goes last.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE] + [_HERE]

import fabric  # noqa: E402
import _engines_ops as ops  # noqa: E402

ALL = ("stream.placement.run-node-on-server", "stream.remote.network", "stream.remote.render")


def rate(fn, n, workers):
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(workers) as ex:
        list(ex.map(fn, range(n)))
    return n / (time.perf_counter() - t0)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--only", choices=("dask", "local"), default=None)
    a = ap.parse_args()
    w = a.workers
    reg = fabric.OpRegistry([ops.trivial, ops.ten_ms])
    rows = []
    if a.only != "dask":
        local_engines(a, w, reg, rows)
    if a.only != "local":
        dask_engine(a, w, reg, rows)
    print(f"{'case':<62} {'fabric':>12} {'peer':>12} {'ratio':>7}")
    for r in rows:
        print(f"{r[0]:<62} {r[1]:>12} {r[2]:>12} {r[3]:>7}")


def dask_engine(a, w, reg, rows):
    from distributed import Client, LocalCluster
    with LocalCluster(n_workers=w, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=None) as cluster, Client(cluster) as client, \
            fabric.DaskFabric(client, ops=reg) as dfab:
        n = a.n
        for i in range(20):  # warm up: both paths, every worker
            client.submit(ops.trivial_fn, -i, pure=False).result()
            dfab.evaluate(ops.trivial.request(-i - 1000))

        def plain(i):
            return client.submit(ops.trivial_fn, i, pure=False).result()

        def fab(i):
            return dfab.evaluate(ops.trivial.request(i)).value

        # Alternating rounds, so load from other jobs falls on both alike.
        t_plain = t_fab = 0.0
        for rnd in range(4):
            base = (rnd + 1) * 1_000_000
            t0 = time.perf_counter()
            for i in range(n // 4):
                plain(base + i)
            t_plain += time.perf_counter() - t0
            t0 = time.perf_counter()
            for i in range(n // 4):
                fab(base + i)
            t_fab += time.perf_counter() - t0
        m = (n // 4) * 4
        rows.append(("DaskFabric vs client.submit, trivial op, one at a time",
                     f"{t_fab / m * 1e6:,.0f} us", f"{t_plain / m * 1e6:,.0f} us",
                     f"{t_fab / t_plain:.2f}x"))
        t_plain = t_fab = 0.0
        for rnd in range(4):
            base = (rnd + 10) * 1_000_000
            t_plain += (n // 4) / rate(lambda i: plain(base + i), n // 4, 8)
            t_fab += (n // 4) / rate(lambda i: fab(base + i), n // 4, 8)
        ppl, pfb = m / t_plain, m / t_fab
        rows.append(("DaskFabric vs client.submit, trivial op, 8 caller threads",
                     f"{pfb:,.0f}/s", f"{ppl:,.0f}/s", f"{ppl / pfb:.2f}x"))


def local_engines(a, w, reg, rows):
    with cf.ProcessPoolExecutor(w, mp_context=__import__("multiprocessing").get_context("spawn")) as pool, \
            fabric.ReplicaGroup("bench", w, group_seed=b"\1" * 32, ops=reg,
                                lb_strategy="least-loaded") as group:
        list(pool.map(ops.trivial_fn, range(w * 2)))  # warm up
        for name, op, fn, n in (("trivial", ops.trivial, ops.trivial_fn, a.n),
                                ("10 ms", ops.ten_ms, ops.ten_ms_fn, max(40, a.n // 10))):
            ppe = rate(lambda i: pool.submit(fn, i).result(), n, w)
            rg = rate(lambda i: group.evaluate(op.request(i)).value, n, w)
            rows.append((f"ReplicaGroup({w}) vs ProcessPoolExecutor({w}), {name} op",
                         f"{rg:,.0f}/s", f"{ppe:,.0f}/s", f"{rg / ppe:.2f}x"))
    with fabric.ReplicaGroup("bench", 1, group_seed=b"\1" * 32, ops=reg) as group, \
            fabric.PlacementFabric(ops=reg, grants=ALL) as placed:
        placed.evaluate(ops.trivial.request(-1))
        n = a.n
        t0 = time.perf_counter()
        for i in range(n):
            placed.evaluate(ops.trivial.request(i))
        t_placed = (time.perf_counter() - t0) / n
        t0 = time.perf_counter()
        for i in range(n):
            group.evaluate(ops.trivial.request(i))
        t_group = (time.perf_counter() - t0) / n
        rows.append(("trivial op placed under limits vs on a replica",
                     f"{t_placed * 1e6:,.0f} us", f"{t_group * 1e6:,.0f} us",
                     f"{t_placed / t_group:.2f}x"))
        # A fresh process per op (the alternative to a long-lived worker's
        # soft RLIMIT_CPU): the cost of starting one.
        import multiprocessing
        ctx = multiprocessing.get_context("spawn")
        k = 5
        t0 = time.perf_counter()
        for _ in range(k):
            p = ctx.Process(target=ops.trivial_fn, args=(1,))
            p.start()
            p.join()
        t_fresh = (time.perf_counter() - t0) / k
        rows.append(("fresh spawned process per op vs long-lived worker (placed)",
                     f"{t_fresh * 1e6:,.0f} us", f"{t_placed * 1e6:,.0f} us",
                     f"{t_fresh / t_placed:.1f}x"))


if __name__ == "__main__":
    main()
