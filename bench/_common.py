"""Helpers shared by the micro-benchmarks in this folder (bench/cassette.py,
bench/control.py, bench/decode.py, bench/frames.py).

A script imports it after the package, with this folder appended last to
``sys.path`` (bench/fabric.py would otherwise shadow the package)::

    sys.path.append(_HERE)
    from _common import best  # noqa: E402
"""

import time


def best(fn, repeat=5):
    """The least wall time, in seconds, of ``repeat`` calls of ``fn()``: the
    least disturbed run on a shared machine."""
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return min(times)
