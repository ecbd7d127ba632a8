"""Decoding hostile maps: keys that share one Python hash, against ordinary
keys of the same count and size, side by side in one run.

    python3 bench/decode.py            (about 10 s)

CPython's dict costs O(k^2) for k keys with one hash (every multiple of
2^61 - 1 hashes to 0), so a decoder that builds dicts straight from untrusted
bytes can be made to spend quadratic time with the GIL held. fabric.unpack
refuses a map or set in which more than 8 keys share a hash, before adding
the 9th. Printed: time per decode of 8,000 big-int keys, ordinary and
colliding, for fabric.unpack and for dict.fromkeys over the same keys (the
cost any decoder that builds the dict pays), and the colliding/ordinary
ratio of each. Record the
ratios in docs/benchmarks.md ("Decoding hostile maps").
"""

import os
import sys

# bench/fabric.py would shadow the package: import it from the repository,
# with this folder off the path; the folder goes back, last, for _common.
_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]
sys.path.insert(0, os.path.dirname(_HERE))

import fabric  # noqa: E402

sys.path.append(_HERE)
from _common import best  # noqa: E402

M61 = (1 << 61) - 1
N = 8000


def main():
    # Both maps: 8,000 big-int keys of one size (ext 1), so the inputs have one
    # size; the colliding keys are multiples of 2^61 - 1, the ordinary ones
    # are the same numbers plus 1..8000 (distinct hashes).
    base = 1 << 13
    ordinary_keys = [M61 * (base + i) + i + 1 for i in range(N)]
    colliding_keys = [M61 * (base + i) for i in range(N)]
    ordinary = fabric.canonical_bytes(dict.fromkeys(ordinary_keys))
    colliding = fabric.canonical_bytes(dict.fromkeys(colliding_keys))
    assert len(ordinary) == len(colliding), (len(ordinary), len(colliding))

    def fab(data):
        def run():
            try:
                fabric.unpack(data)
            except fabric.DecodeError:
                pass
        return run

    rows = [("fabric.unpack", best(fab(ordinary)), best(fab(colliding))),
            # What building the dict alone costs, as any decoder that builds
            # dicts from these keys pays it (msgpack.unpackb gives ExtType
            # objects for ext 1, so it never meets these keys as ints).
            ("dict.fromkeys", best(lambda: dict.fromkeys(ordinary_keys)),
             best(lambda: dict.fromkeys(colliding_keys), repeat=1))]
    print(f"{N} big-int keys per map, {len(ordinary)} bytes per input")
    print(f"{'decoder':<16} {'ordinary':>12} {'colliding':>12} {'ratio':>8}")
    for name, t_ok, t_bad in rows:
        print(f"{name:<16} {t_ok * 1e3:>9.2f} ms {t_bad * 1e3:>9.2f} ms {t_bad / t_ok:>7.2f}x")


if __name__ == "__main__":
    main()
