"""Instructions per remote hit of a new request (issue 13), by callgrind:
the client process, or the node process, alone.

    PYTHONPATH=. python -P bench/net_callgrind.py client|sync|node [--calls 2000,4000]
    PYTHONPATH=. python -P bench/net_callgrind.py hit [--calls 3000]

A node process on asyncio's own loop (``bench/net.py --serve-node``) holds
1,000 requests; a client process awaits ``aevaluate`` of them in turn (200
calls first, then N), on asyncio's own loop. ``client``: the client runs
under ``valgrind --tool=callgrind``; ``sync``: the same with sync
``evaluate`` calls (the client's blocking channel, no event loop);
``node``: the node does. Each side is
run for two N and the difference of the totals, divided by the difference
of N, is its instructions a call: start-up, imports and the holding of the
1,000 requests cancel out. Load-independent, so the figure to compare code
by on a shared machine; the node's counts move by up to ~2k a call from
run to run (its collector's and its tick's work fall differently), so take
several. ``PYTHONHASHSEED=0`` for both processes. Needs valgrind.

``hit``: the node's read callback alone, in process, without its spread: a
node on its own thread (asyncio's loop) holds the 1,000 requests through a
client's connection; then, on the node's thread, that connection's
transport is replaced by one that drops writes and N opens (the 1,000 keys
in turn, after 2,000 to warm up) are copied into the protocol's read
buffer and handed to ``buffer_updated``, each inside ``functools.reduce``,
which is all callgrind counts (``--toggle-collect``). Instructions a hit,
the driver's own encode and copy of each open included.
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

        if side == "sync":
            for r in many[:200]:
                c.evaluate(r)
            it = itertools.cycle(many)
            for _ in range(n):
                c.evaluate(next(it))
        else:
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


def drive_hit(n):
    """One in-process run of the ``hit`` recipe (under callgrind)."""
    import concurrent.futures
    import functools
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
    sys.path.insert(0, ROOT)
    sys.path.insert(1, HERE)
    import net  # noqa: E402
    import fabric
    from fabric.node import Node, connect

    tmp = tempfile.mkdtemp(prefix="fabric-bench-cg-")
    node = Node(os.path.join(tmp, "n.ledger"), node_id="bench", home=fabric.LocalFabric(),
                listen="127.0.0.1:0", loop="asyncio").start()
    c = connect(node.url)
    many = [net.small.request(i) for i in range(1000, 2000)]
    for r in many:
        c.evaluate(r)  # held from now on
    payloads = [c._prepare(r, None, None)[1] for r in many]

    class Drop:  # the transport: writes dropped, never paused
        def write(self, data):
            pass

        def get_write_buffer_size(self):
            return 0

        def is_closing(self):
            return False

    def run():
        conn = next(x for x in node._conns if x.proto is not None)
        conn.transport = Drop()
        proto, enc, buf = conn.proto, conn.enc, conn.proto.buf
        sids = itertools.count(1 << 20)
        opens = itertools.cycle(payloads)

        def step(acc, _i):
            f = enc.encode_control(next(sids), next(opens))
            buf[:len(f)] = f
            proto.buffer_updated(len(f))
            return acc

        for _ in range(2000):
            step(None, 0)
        functools.reduce(step, range(n), None)
        return node._counters()

    fut = concurrent.futures.Future()

    def go():
        try:
            fut.set_result(run())
        except BaseException as exc:
            fut.set_exception(exc)

    node._loop.call_soon_threadsafe(go)
    got = fut.result()
    c.close()
    node.stop()
    import shutil
    shutil.rmtree(tmp, ignore_errors=True)
    if got.get("hits_inline", 0) < n:
        raise SystemExit(f"not every hit was answered inline: {got}")


def total(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals): (\d+)", line)
            if m:
                return int(m.group(1))
    raise SystemExit(f"no total in {path}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("side", choices=("client", "sync", "node", "hit"))
    ap.add_argument("--calls", default=None)
    ap.add_argument("--drive", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--out", default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.drive is not None:  # one run (the client under callgrind, or the node)
        if a.side == "hit":
            return drive_hit(a.drive)
        return drive(a.side, a.drive, a.out)
    env = dict(os.environ, PYTHONHASHSEED="0")
    if a.side == "hit":
        n = int(a.calls or "3000")
        out = os.path.join(tempfile.mkdtemp(prefix="fabric-bench-cg-"), "hit.out")
        subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                        "--collect-atstart=no", "--toggle-collect=functools_reduce",
                        sys.executable, "-P", os.path.abspath(__file__), "hit",
                        "--drive", str(n)], env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        print(f"hit: {total(out):,} instructions for {n} hits in process: "
              f"{total(out) / n:,.0f} a hit (callgrind output {out})")
        return
    lo, hi = (int(x) for x in (a.calls or "2000,4000").split(","))
    tmp = tempfile.mkdtemp(prefix="fabric-bench-cg-")
    got = []
    for n in (lo, hi):
        out = os.path.join(tmp, f"{a.side}.{n}.out")
        cmd = [sys.executable, "-P", os.path.abspath(__file__), a.side, "--drive", str(n),
               "--out", out]
        if a.side in ("client", "sync"):
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"] + cmd
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)
        got.append(total(out))
    print(f"{a.side}: {got[0]:,} instructions for {lo} calls, {got[1]:,} for {hi}: "
          f"{(got[1] - got[0]) / (hi - lo):,.0f} a call (callgrind outputs in {tmp})")


if __name__ == "__main__":
    main()
