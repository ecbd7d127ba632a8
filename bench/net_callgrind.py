"""Instructions per remote hit of a new request (issue 13), by callgrind:
the client process, or the node process, alone.

    PYTHONPATH=. python -P bench/net_callgrind.py client|node [--calls 2000,4000]

A node process on asyncio's own loop (``bench/net.py --serve-node``) holds
1,000 requests; a client process awaits ``aevaluate`` of them in turn (200
calls first, then N), on asyncio's own loop. ``client``: the client runs
under ``valgrind --tool=callgrind``; ``node``: the node does. Each side is
run for two N and the difference of the totals, divided by the difference
of N, is its instructions a call: start-up, imports and the holding of the
1,000 requests cancel out. Load-independent, so the figure to compare code
by on a shared machine; the node's counts move by up to ~2k a call from
run to run (its collector's and its tick's work fall differently), so take
several. ``PYTHONHASHSEED=0`` for both processes. Needs valgrind.
"""

import argparse
import asyncio
import itertools
import os
import re
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def drive(side, n, out):
    """One run: a node process and this client, N calls after the warm-up."""
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    sys.path.insert(0, ROOT)
    sys.path.insert(1, HERE)
    import net  # noqa: E402 (bench/net.py: its op, its node process)
    from fabric.node import connect

    tmp = tempfile.mkdtemp(prefix="fabric-bench-cg-")
    args = [sys.executable, "-P", os.path.join(HERE, "net.py"), "--serve-node",
            "--cassette", os.path.join(tmp, "n.ledger"), "--loop", "asyncio"]
    if side == "node":
        args = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + args
    p = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                         cwd=ROOT)
    try:
        line = p.stdout.readline()
        if not line.startswith("ready "):
            raise SystemExit(f"the node did not start: {line!r}")
        c = connect(line.split()[-1])
        many = [net.small.request(i) for i in range(1000, 2000)]
        for r in many:
            c.evaluate(r)  # held from now on

        async def run():
            for r in many[:200]:
                await c.aevaluate(r)
            it = itertools.cycle(many)
            for _ in range(n):
                await c.aevaluate(next(it))

        asyncio.run(run())
        c.close()
    finally:
        net.stop(p)
        import shutil
        shutil.rmtree(tmp, ignore_errors=True)


def total(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise SystemExit(f"no total in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("side", choices=("client", "node"))
    ap.add_argument("--calls", default="2000,4000")
    ap.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.drive is not None:  # one run (the client under callgrind, or the node)
        return drive(a.side, a.drive, a.out)
    lo, hi = (int(x) for x in a.calls.split(","))
    env = dict(os.environ, PYTHONHASHSEED="0")
    tmp = tempfile.mkdtemp(prefix="fabric-bench-cg-")
    got = []
    for n in (lo, hi):
        out = os.path.join(tmp, f"{a.side}.{n}.out")
        cmd = [sys.executable, "-P", os.path.abspath(__file__), a.side, "--drive", str(n),
               "--out", out]
        if a.side == "client":
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        got.append(total(out))
    print(f"{a.side}: {got[0]:,} instructions for {lo} calls, {got[1]:,} for {hi}: "
          f"{(got[1] - got[0]) / (hi - lo):,.0f} a call (callgrind outputs in {tmp})")


if __name__ == "__main__":
    main()
