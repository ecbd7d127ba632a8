"""Fabrics benchmark: the local-hit path and the miss-path overhead.

    python bench/fabric.py [--quick]

1. Local hit: ``ContentAddressedFabric.evaluate`` on a held 10-key request
   (QUALITY.md goal P8: <= 2 us), side by side in one run with what a user
   would otherwise reach for, memoizing the same function of 10 keyword
   arguments: a dict lookup, ``functools.lru_cache``, ``joblib.Memory`` and
   ``diskcache``'s ``memoize``. Also timed: the one-line ``fab.call(op,
   **kwargs)``, which keys the request on every call.
2. Miss path: a trivial op (returns its argument) evaluated through a
   ``ContentAddressedFabric`` with a home ``LocalFabric`` and a real ledger
   (OS durability), every request new, against calling the function and
   against ``LocalFabric`` alone.

Absolute times drift on shared machines; the ratios, measured in one run,
are the figures. Prints a Markdown table for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import functools
import itertools
import os
import statistics
import sys
import tempfile
import time
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import fabric  # noqa: E402

KWARGS = {f"k{i}": (i * 7919) % 1000 for i in range(10)}  # the 10-key request


def work(**kw):
    """The memoized function: cheap, so the cache machinery is what is timed."""
    return [float(v) / 7 for v in sorted(kw.values())][:8]


def per_call(fn, n: int, repeat: int = 7) -> float:
    """Median seconds per call over ``repeat`` runs of ``n`` calls."""
    samples = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def fmt(s: float) -> str:
    return f"{s * 1e9:,.0f} ns" if s < 1e-5 else f"{s * 1e6:,.1f} µs"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="fewer iterations")
    opts = ap.parse_args()
    n = 20_000 if opts.quick else 100_000
    nslow = 2_000 if opts.quick else 10_000
    rows = []
    tmp = tempfile.mkdtemp(prefix="fabric-bench-")

    # -- 1. local hit ----------------------------------------------------------
    reg = fabric.OpRegistry()
    op = fabric.op("bench.work", version=1, registry=reg)(work)
    req = op.request(**KWARGS)
    cas = fabric.EvalCassette(os.path.join(tmp, "hit.ledger"))
    fab = fabric.ContentAddressedFabric("bench", cas, home=fabric.LocalFabric(reg))
    assert fab.evaluate(req).source == "home"
    assert fab.evaluate(req).source == "local"
    t_caf = per_call(lambda: fab.evaluate(req), n)
    t_call = per_call(lambda: fab.call(op, **KWARGS), n)

    d = {req.key: work(**KWARGS)}
    key = req.key
    t_dict = per_call(lambda: d[key], n)

    cached = functools.lru_cache(maxsize=None)(work)
    cached(**KWARGS)
    t_lru = per_call(lambda: cached(**KWARGS), n)

    import diskcache
    dc = diskcache.Cache(os.path.join(tmp, "diskcache"))
    dmemo = dc.memoize()(work)
    dmemo(**KWARGS)
    t_dc = per_call(lambda: dmemo(**KWARGS), nslow)

    import joblib
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mem = joblib.Memory(os.path.join(tmp, "joblib"), verbose=0)
        jmemo = mem.cache(work)
        jmemo(**KWARGS)
        t_jl = per_call(lambda: jmemo(**KWARGS), max(200, nslow // 20), repeat=5)

    rows.append(("local hit: `ContentAddressedFabric.evaluate(request)`", t_caf, None))
    rows.append(("local hit: `fab.call(op, **kwargs)` (keys the request each call)", t_call,
                 None))
    rows.append(("dict lookup by content key", t_dict, t_caf / t_dict))
    rows.append(("`functools.lru_cache` hit", t_lru, t_caf / t_lru))
    rows.append(("`diskcache` `memoize` hit", t_dc, t_dc / t_caf))
    rows.append(("`joblib.Memory` hit", t_jl, t_jl / t_caf))

    # -- 2. miss path ----------------------------------------------------------
    @fabric.op("bench.echo", version=1, registry=reg)
    def echo(x):
        return x

    local = fabric.LocalFabric(reg)
    counter = iter(range(10**9))
    m = nslow
    t_direct = per_call(lambda: echo.fn(next(counter)), m, repeat=5)
    t_local = per_call(lambda: local.evaluate(echo.request(next(counter))), m, repeat=5)
    rows.append(("miss: trivial op, direct call", t_direct, None))
    rows.append(("miss: `LocalFabric.evaluate` (key + run)", t_local, None))
    t_miss = {}
    opened = []
    for dur in ("os", "group"):
        cas_m = fabric.EvalCassette(os.path.join(tmp, f"miss-{dur}.ledger"), durability=dur)
        opened.append(cas_m)
        fab_m = fabric.ContentAddressedFabric("miss", cas_m, home=fabric.LocalFabric(reg))
        reps = 5 if dur == "os" else 3
        t_miss[dur] = per_call(lambda: fab_m.evaluate(echo.request(next(counter))),
                               m if dur == "os" else max(200, m // 10), repeat=reps)
        rows.append((f"miss: `ContentAddressedFabric.evaluate` (key, lookup, home, record "
                     f"with durability={dur!r}, announce)", t_miss[dur], None))
    # A miss answered by a peer: the C resolution order asks the (in-process)
    # peer, records its reply and announces it; against the peer's serve alone.
    cas_p = fabric.EvalCassette(os.path.join(tmp, "peer.ledger"), durability="os")
    opened.append(cas_p)
    serve = fabric.ContentServeFabric(cas_p, node="a")
    base = 10**8
    nheld = m * 3 * 2
    for v in range(base, base + nheld):
        cas_p.record(echo.request(v).key, [v, [], None])
    held = itertools.cycle(range(base, base + nheld))
    t_serve = per_call(lambda: serve.evaluate(echo.request(next(held))), m, repeat=3)
    rows.append(("peer's `ContentServeFabric.evaluate` alone (key + held reply)", t_serve, None))
    fresh = iter(range(base, base + nheld))
    t_peer = {}
    for label, timeout in (("peer_timeout=None", None), ("peer_timeout=10 s", 10.0)):
        cas_b = fabric.EvalCassette(os.path.join(tmp, f"peer-miss-{timeout}.ledger"),
                                    durability="os")
        opened.append(cas_b)
        fab_b = fabric.ContentAddressedFabric(
            "b", cas_b, peers=[fabric.ContentPeer("a", serve)], peer_timeout=timeout)
        t_peer[label] = per_call(lambda: fab_b.evaluate(echo.request(next(fresh))), m, repeat=3)
        rows.append((f"miss from a peer: `ContentAddressedFabric.evaluate`, {label} "
                     f"(order, ask, record with durability='os', announce)", t_peer[label],
                     None))
    for c in [cas] + opened:
        c.close()
    dc.close()

    print(f"Fabrics benchmark (python {sys.version.split()[0]}, "
          f"{'quick' if opts.quick else 'full'} run)\n")
    print("| what | per call | ratio |")
    print("|---|---:|---:|")
    for name, t, ratio in rows:
        r = "" if ratio is None else f"{ratio:.1f}×"
        print(f"| {name} | {fmt(t)} | {r} |")
    print()
    goal = "met" if t_caf <= 2e-6 else "NOT met"
    print(f"P8 local hit through ContentAddressedFabric.evaluate: {fmt(t_caf)} "
          f"(goal <= 2 µs: {goal})")
    print(f"vs lru_cache: {t_caf / t_lru:.1f}× slower; vs diskcache memoize: "
          f"{t_dc / t_caf:.1f}× faster; vs joblib.Memory: {t_jl / t_caf:.0f}× faster")
    print(f"miss-path overhead over LocalFabric: {fmt(t_miss['os'] - t_local)} per request "
          f"with OS durability, {fmt(t_miss['group'] - t_local)} with group commit")
    print(f"peer-miss overhead over the peer's serve: "
          f"{fmt(t_peer['peer_timeout=None'] - t_serve)} without a peer timeout, "
          f"{fmt(t_peer['peer_timeout=10 s'] - t_serve)} with one (worker thread)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
