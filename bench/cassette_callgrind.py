"""Instructions per cassette hit (``EvalCassette.get`` of a held key), by
callgrind: load-independent, the figure to compare code by on a shared
machine.

    PYTHONPATH=. python -P bench/cassette_callgrind.py [--calls 20000,120000] [--mode r|a]

A ledger of 1,000 replies (100 bytes each) is written first; then a process
opens it (``--mode``: a reader, or a writer) and gets its keys in turn N
times under ``valgrind --tool=callgrind``, for two N; the difference of the
totals divided by the difference of N is the instructions a hit (start-up,
imports, the open and the key list cancel out). ``PYTHONHASHSEED=0``.
Needs valgrind.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

LOOP = """
import sys
from fabric import EvalCassette, EvalRequest
path, mode, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
keys = [EvalRequest("op", [i]).key for i in range(1000)]
c = EvalCassette(path, mode)
get = c.get
for k in keys:
    assert get(k) is not None
m = len(keys)
for i in range(n):
    get(keys[i % m])
c.close()
"""


def instructions(path, mode, n):
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "cg.out")
        env = dict(os.environ, PYTHONHASHSEED="0",
                   PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        sys.executable, "-P", "-c", LOOP, path, mode, str(n)],
                       env=env, check=True, capture_output=True)
        with open(out) as f:
            m = re.search(r"^summary:\s+(\d+)", f.read(), re.M)
        return int(m.group(1))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--calls", default="20000,120000", help="the two N, comma-separated")
    ap.add_argument("--mode", default="r", choices=["r", "a"], help="reader or writer handle")
    args = ap.parse_args()
    n1, n2 = (int(x) for x in args.calls.split(","))
    sys.path.insert(0, ROOT)
    from fabric import EvalCassette, EvalRequest

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "hits.fabl")
        with EvalCassette(path, durability="os") as c:
            for i in range(1000):
                c.record(EvalRequest("op", [i]).key, b"x" * 100)
        a, b = instructions(path, args.mode, n1), instructions(path, args.mode, n2)
    print(f"{(b - a) / (n2 - n1):.1f} instructions a hit ({args.mode}; N {n1} -> {n2})")


if __name__ == "__main__":
    main()
