"""Remote hit latency over loopback: fabric.connect vs a bare socket ping-pong.

    PYTHONPATH=. python bench/net.py [--n 2000]

Side by side in one run, p50 and p99 in microseconds: a small held value
fetched through ``fabric.connect`` from sync code and from asyncio, against
a bare Python socket ping-pong (blocking sockets, one thread) of the same
size. Loopback only; bounded in count.
"""

import argparse
import asyncio
import os
import socket
import statistics
import threading
import sys
import time

# bench/fabric.py would shadow the package: import it from the repository root
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != os.path.dirname(
    os.path.abspath(__file__))]

import fabric  # noqa: E402
from fabric.node import Node, connect  # noqa: E402


@fabric.op("bench.small")
def small(i):
    return b"x" * 64


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e6


def ping_pong(n):
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)

    def echo():
        c, _ = srv.accept()
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        while True:
            d = c.recv(4096)
            if not d:
                return
            c.sendall(d)

    t = threading.Thread(target=echo, daemon=True)
    t.start()
    s = socket.create_connection(srv.getsockname())
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    out = []
    msg = b"x" * 100
    for _ in range(n):
        t0 = time.perf_counter()
        s.sendall(msg)
        got = 0
        while got < len(msg):
            got += len(s.recv(4096))
        out.append(time.perf_counter() - t0)
    s.close()
    srv.close()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    a = ap.parse_args()
    node = Node(node_id="bench", home=fabric.LocalFabric(), listen="127.0.0.1:0").start()
    try:
        c = connect(node.url)
        req = small.request(1)
        c.evaluate(req)  # now held: every call below is a remote hit
        sync = []
        for _ in range(a.n):
            t0 = time.perf_counter()
            c.evaluate(req)
            sync.append(time.perf_counter() - t0)

        async def run():
            out = []
            for _ in range(a.n):
                t0 = time.perf_counter()
                await c.aevaluate(req)
                out.append(time.perf_counter() - t0)
            return out

        asy = asyncio.run(run())
        c.close()
    finally:
        node.stop()
    pp = ping_pong(a.n)
    base = statistics.median(pp)
    print(f"{'what':32} {'p50 us':>9} {'p99 us':>9} {'p50 / ping-pong':>16}")
    for name, xs in (("socket ping-pong (100 B)", pp), ("fabric.connect evaluate (sync)", sync),
                     ("fabric.connect aevaluate", asy)):
        print(f"{name:32} {pct(xs, .5):9.1f} {pct(xs, .99):9.1f} "
              f"{statistics.median(xs) / base:16.2f}")


if __name__ == "__main__":
    main()
