"""The network node over loopback: latency, throughput, streams, TLS, memory.

    PYTHONPATH=. python -P bench/net.py [--n 2000] [--rounds 3]
        [--only hit,redis,stream,fair,tls,mem,handshake] [--pin CPU]
        [--loop asyncio|uvloop|both]

Side by side in one run (every server a separate process, every socket on
127.0.0.1, every loop bounded in count):

- ``hit``: p50 / p99 of a small held value (64 B) fetched through
  ``fabric.connect`` from sync code and from asyncio, against a bare Python
  socket ping-pong (blocking sockets; the echo server is a process) of the
  same size, and an asyncio Protocol echo process (the floor of any server
  on asyncio), also pinged from an asyncio client (the floor of a call from
  asyncio to a server on asyncio); every contender once per round, interleaved, ``--rounds``
  rounds, each row keeping its best round; the CPU per call of the client
  and of the node process (scheduling on a loaded machine moves the
  latency, the CPU much less);
- ``redis``: the same hit against redis-py GET on a real ``redis-server``
  (started here on a free loopback port, stopped at the end; installed
  with apt-get if missing and allowed), throughput with 1 and 16
  concurrent clients (threads), TLS and tokens off on both;
- ``stream``: one 256 MiB stream (``--stream-mib``) to a consumer that does
  not record it, held by the node (and, first, computed by its home, which
  the node records as it streams), against a raw socket send loop of the
  same bytes; the same
  stream recorded by the receiving node, against raw append speed
  (``EvalCassette`` stream records written directly) in the same run;
- ``fair``: 100 concurrent streams on one node, Jain's fairness index of the
  bytes each received by the time the first one finished: from 100 threads
  (each on its thread's connection), then from 100 asyncio tasks (all on
  one connection);
- ``tls``: the hit's p50 with TLS against without;
- ``mem``: the node process's RSS growth per idle connection.
- ``handshake`` (not in the default set): a fresh connection's HELLO round
  trip (raw socket: connect, HELLO, the node's HELLO back), ``--hs-n``
  one after another and ``--hs-burst`` arriving together, with the node idle
  and while it streams to ``--hs-k`` streams (a consumer process, its
  streams multiplexed on one connection); p50 and max of each.

``--loop`` is the event loop of everything on asyncio here: the node
process, the asyncio echo process and the asyncio client (``both``, the
default when uvloop is installed: each of those once per loop, side by
side in the same rounds; the other sections use the first). ``--pin CPU``
pins this process and every process it starts (they inherit the mask) to
that one CPU: on an otherwise idle machine a blocked process's core goes
to a deep idle state, and waking it costs tens of µs, so unpinned
latencies are bimodal from run to run (the same ping-pong 13 or 54 µs).
On one CPU the client, the server and the kernel's loopback run back to
back with no cross-core wake-up, and the time per call is the whole CPU
path of a call (p99 close to p50): the figure to compare code by. Both
ways are worth reporting; unpinned is what two processes on an idle
machine see.
"""

import argparse
import asyncio
import itertools
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# bench/fabric.py would shadow the package: import it from the repository root
HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != HERE]
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import fabric  # noqa: E402
from fabric.node import Node, NodeLimits, connect  # noqa: E402
from fabric.node.loops import loop_factory  # noqa: E402

VALUE = b"x" * 64
CHUNK = 1 << 20  # the stream's item (and the raw loop's block) size: --chunk-kib


@fabric.op("bench.small")
def small(i):
    return VALUE


@fabric.op("bench.bulk")
def bulk(mib, chunk=CHUNK):
    block = b"\0" * chunk
    for _ in range(mib * (1 << 20) // chunk):
        yield block


def pct(xs, p):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(len(xs) * p))] * 1e6


# ---- child processes ---------------------------------------------------------------

def child(args, *, env=None):
    """Start this file in a child mode; returns (process, its readiness line's last word)."""
    p = subprocess.Popen([sys.executable, os.path.abspath(__file__)] + args,
                         stdout=subprocess.PIPE, text=True, env=env,
                         cwd=ROOT)
    line = p.stdout.readline()  # the child prints one line when ready (or exits)
    if not line.startswith("ready "):
        p.kill()
        raise SystemExit(f"child {args} did not start: {line!r}")
    return p, line.split()[-1]


def stop(p):
    p.send_signal(signal.SIGTERM)
    try:
        p.wait(30)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def serve_echo():
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(64)
    print("ready", srv.getsockname()[1], flush=True)

    def echo(c):
        c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with c:
            while True:
                d = c.recv(1 << 16)
                if not d:
                    return
                c.sendall(d)

    while True:
        c, _ = srv.accept()
        threading.Thread(target=echo, args=(c,), daemon=True).start()


def run_on(loop, main):
    """``main()`` (a coroutine) to completion on a new loop of kind ``loop``."""
    with asyncio.Runner(loop_factory=loop_factory(loop)[0]) as runner:
        return runner.run(main)


def serve_aecho(loop):
    """The same echo as an asyncio Protocol: the floor of a server on asyncio."""

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            transport.get_extra_info("socket").setsockopt(
                socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    async def run():
        srv = await asyncio.get_running_loop().create_server(Echo, "127.0.0.1", 0)
        print("ready", srv.sockets[0].getsockname()[1], flush=True)
        await srv.serve_forever()

    run_on(loop, run())


def serve_sink():
    """A raw socket receiver: counts bytes, answers the total on EOF."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    print("ready", srv.getsockname()[1], flush=True)
    while True:
        c, _ = srv.accept()
        n = 0
        buf = bytearray(1 << 20)
        while True:
            k = c.recv_into(buf)
            if not k:
                break
            n += k
        c.sendall(str(n).encode())
        c.close()


def serve_node(a):
    from fabric.node.auth import server_tls
    tls = server_tls(a.tls_cert, a.tls_key) if a.tls_cert else None
    # Sized for the fairness run: 100 streams on one connection may each have
    # a window (at least one 1 MiB frame) in flight: 100 MiB over the default
    # 64 MiB output buffer would disconnect the reader as a slow one.
    limits = NodeLimits(max_frame=CHUNK + 4096, window=8 * (CHUNK + 4096),
                        principal_budget=1 << 30, max_running=256,
                        output_buffer=256 << 20)
    cassette = a.cassette or None
    node = Node(cassette, node_id="bench", home=fabric.LocalFabric(), listen="127.0.0.1:0",
                tls=tls, limits=limits, loop=a.loop)

    async def run():
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, node.request_stop)
        task = asyncio.create_task(node.serve())
        while node._address is None and not task.done():
            await asyncio.sleep(0.01)
        assert node.event_loop == a.loop, (node.event_loop, a.loop)
        print("ready", node.url, flush=True)
        await task

    run_on(a.loop, run())


def proc_cpu(pid):
    """Seconds of CPU process ``pid`` has used: the scheduler's nanosecond
    count summed over its threads (``/proc/PID/task/*/schedstat``), or where
    that is missing user + system time in clock ticks (10 ms: coarse)."""
    try:
        total = 0
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/schedstat") as f:
                total += int(f.read().split()[0])
        return total / 1e9
    except (OSError, ValueError, IndexError):
        pass
    with open(f"/proc/{pid}/stat") as f:
        x = f.read().rsplit(")", 1)[1].split()
    return (int(x[11]) + int(x[12])) / os.sysconf("SC_CLK_TCK")


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---- sections --------------------------------------------------------------------

def ping_pong(n, port):
    s = socket.create_connection(("127.0.0.1", port))
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
    return out


class _PingClient(asyncio.BufferedProtocol):
    """An asyncio client's ping-pong: the floor of any call from asyncio
    (reading into one buffer, as the fabric client's channel does: a plain
    Protocol gets a new 256 KiB bytes per read, an mmap or not depending on
    what the process freed before)."""

    def connection_made(self, transport):
        transport.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP,
                                                      socket.TCP_NODELAY, 1)
        self.transport = transport
        self.buf = memoryview(bytearray(1 << 16))
        self.fut = None
        self.got = 0

    def get_buffer(self, sizehint):
        return self.buf

    def buffer_updated(self, nbytes):
        self.got += nbytes
        if self.got >= 100 and self.fut is not None and not self.fut.done():
            self.fut.set_result(None)


async def aping_pong(n, proto):
    loop = asyncio.get_running_loop()
    msg = b"x" * 100
    out = []
    for _ in range(n):
        proto.got = 0
        proto.fut = loop.create_future()
        t0 = time.perf_counter()
        proto.transport.write(msg)
        await proto.fut
        out.append(time.perf_counter() - t0)
    return out


def hit_latency(url, n, tls=None, loop="asyncio"):
    c = connect(url, tls=tls)
    req = small.request(1)
    c.evaluate(req)  # now held: every call below is a remote hit
    for _ in range(min(n, 200)):
        c.evaluate(req)
    sync = timed(n, lambda: c.evaluate(req))

    async def run():
        for _ in range(min(n, 200)):
            await c.aevaluate(req)
        return await atimed(n, lambda: c.aevaluate(req))

    asy = run_on(loop, run())
    c.close()
    return sync, asy


def threads_throughput(clients, n, make_call):
    """Ops per second of ``clients`` threads each making ``n`` calls."""
    calls = [make_call() for _ in range(clients)]
    start = threading.Barrier(clients + 1)

    def work(call):
        start.wait()
        for _ in range(n):
            call()

    ts = [threading.Thread(target=work, args=(c,)) for c in calls]
    for t in ts:
        t.start()
    start.wait()
    t0 = time.perf_counter()
    for t in ts:
        t.join()
    return clients * n / (time.perf_counter() - t0)


def async_throughput(url, clients, n, loop="asyncio"):
    c = connect(url)
    req = small.request(1)

    async def one():
        for _ in range(n):
            await c.aevaluate(req)

    async def run():
        await c.aevaluate(req)
        t0 = time.perf_counter()
        await asyncio.gather(*(one() for _ in range(clients)))
        return clients * n / (time.perf_counter() - t0)

    try:
        return run_on(loop, run())
    finally:
        c.close()


def start_redis():
    exe = shutil.which("redis-server")
    if exe is None and os.environ.get("FABRIC_BENCH_APT", "1") == "1":
        subprocess.run(["apt-get", "install", "-y", "-q", "redis-server"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        exe = shutil.which("redis-server")
    if exe is None:
        return None, None
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = tempfile.mkdtemp(prefix="fabric-bench-redis-")
    p = subprocess.Popen([exe, "--bind", "127.0.0.1", "--port", str(port), "--save", "",
                          "--appendonly", "no", "--dir", d, "--protected-mode", "yes"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    p.bench_dir = d  # removed by stop_redis
    for _ in range(500):  # bounded: up to ~5 s for it to accept
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return p, port
        except OSError:
            if p.poll() is not None:
                stop_redis(p)
                return None, None
            time.sleep(0.01)
    stop_redis(p)
    return None, None


def stop_redis(p):
    """Stop the bench's redis-server and remove its directory."""
    if p.poll() is None:
        p.terminate()
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
    shutil.rmtree(p.bench_dir, ignore_errors=True)


def redis_get(port):
    import redis
    r = redis.Redis(host="127.0.0.1", port=port)
    r.set("k", VALUE)
    return lambda: r.get("k")


def timed(n, call):
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        out.append(time.perf_counter() - t0)
    return out


def _rotate(c, reqs):
    """A call that awaits ``c.aevaluate`` of the next of ``reqs``, in turn."""
    it = itertools.cycle(reqs)
    return lambda: c.aevaluate(next(it))


async def atimed(n, call):
    """timed() for a coroutine function: n awaited calls, each one's seconds."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        await call()
        out.append(time.perf_counter() - t0)
    return out


def section_hit_redis(a, nodes, rows, only, cpu):
    """Latency rows and throughput, every contender measured once per round,
    interleaved, ``--rounds`` rounds: each row keeps its best round (by p50),
    so a burst of load on this shared machine hits one round, not one row.
    ``nodes``: {loop: (url, pid)}, a node process per event loop measured;
    the asyncio echo process and the asyncio client run on each loop too."""
    echo, eport = child(["--serve-echo"])
    procs = [echo]
    rp = rport = None
    if "redis" in only:
        try:
            import redis  # noqa: F401
            rp, rport = start_redis()
            if rp is None:
                print("redis-server not found and not installable: redis rows skipped")
        except ImportError:
            print("redis-py is not installed (pip install redis): redis rows skipped")
    req = small.request(1)
    # A node answers a request its connection sent before without parsing
    # or checking it again (at most 256 per connection): the "1,000 keys"
    # rows go round 1,000 held requests, which that never helps.
    many = [small.request(i) for i in range(1000, 2000)]
    names = ["socket ping-pong (100 B, echo process)"]
    calls = [lambda n: ping_pong(n, int(eport))]
    pids = [None]
    clients, loops, transports, aports = [], [], [], {}
    for lp, (url, pid) in nodes.items():
        aecho, aport = child(["--serve-aecho", "--loop", lp])
        aports[lp] = aport
        procs.append(aecho)
        c = connect(url)
        c.evaluate(req)  # now held: every call below is a remote hit
        for r in many:
            c.evaluate(r)
        clients.append(c)
        loop = loop_factory(lp)[0]()
        loops.append(loop)
        _t, aproto = loop.run_until_complete(
            loop.create_connection(_PingClient, "127.0.0.1", int(aport)))
        transports.append(_t)
        names += [f"asyncio Protocol echo (100 B) [{lp}]",
                  f"asyncio client and echo (100 B) [{lp}]",
                  f"fabric.connect evaluate (sync) [{lp} node]",
                  f"fabric.connect aevaluate [{lp}]",
                  f"fabric.connect aevaluate, 1,000 keys [{lp}]"]
        calls += [lambda n, aport=aport: ping_pong(n, int(aport)),
                  lambda n, loop=loop, aproto=aproto: loop.run_until_complete(
                      aping_pong(n, aproto)),
                  lambda n, c=c: timed(n, lambda: c.evaluate(req)),
                  lambda n, c=c, loop=loop: loop.run_until_complete(
                      atimed(n, lambda: c.aevaluate(req))),
                  lambda n, c=c, loop=loop: loop.run_until_complete(
                      atimed(n, _rotate(c, many)))]
        pids += [None, None, pid, pid, pid]
    if {"asyncio", "uvloop"} <= set(nodes):
        # what `fabric serve` runs where uvloop installs (a dependency there),
        # called from a user's code on asyncio's own loop
        aloop = loops[list(nodes).index("asyncio")]
        uc, upid = clients[list(nodes).index("uvloop")], nodes["uvloop"][1]
        # its floor: an asyncio client (on asyncio's own loop) of the echo on uvloop
        _t, xproto = aloop.run_until_complete(
            aloop.create_connection(_PingClient, "127.0.0.1", int(aports["uvloop"])))
        transports.append(_t)
        loops.append(aloop)
        names += ["asyncio client and echo (100 B) [asyncio client, uvloop echo]",
                  "fabric.connect aevaluate [asyncio client, uvloop node]",
                  "fabric.connect aevaluate, 1,000 keys [asyncio client, uvloop node]"]
        calls += [lambda n: aloop.run_until_complete(aping_pong(n, xproto)),
                  lambda n: aloop.run_until_complete(atimed(n, lambda: uc.aevaluate(req))),
                  lambda n: aloop.run_until_complete(atimed(n, _rotate(uc, many)))]
        pids += [None, upid, upid]
    if rp is not None:
        names.append("redis-py GET (64 B)")
        get = redis_get(rport)
        calls.append(lambda n: timed(n, get))
        pids.append(rp.pid)
    lat = {}
    for call in calls:  # warm up
        call(min(a.n, 200))
    for _ in range(a.rounds):
        for name, call, pid in zip(names, calls, pids):
            c0, n0 = time.process_time(), proc_cpu(pid) if pid else 0.0
            xs = call(a.n)
            used = ((time.process_time() - c0) / a.n,
                    ((proc_cpu(pid) - n0) / a.n) if pid else 0.0)
            if pid:  # CPU per call: client process, server process
                cpu[name] = min(cpu.get(name, used), used, key=sum)
            if name not in lat or statistics.median(xs) < statistics.median(lat[name]):
                lat[name] = xs
    base = statistics.median(lat[names[0]])
    for name in names:
        rows.append((name, lat[name], base))
    tput = {}
    if rp is not None:
        for k in (1, 16):
            def mk_redis():
                return redis_get(rport)
            contenders = [(f"redis-py GET, {k} client(s)",
                           lambda: threads_throughput(k, a.n // k or 1, mk_redis))]
            for (lp, (url, _pid)), c in zip(nodes.items(), clients):
                contenders += [
                    (f"fabric evaluate, {k} thread(s), one client [{lp} node]",
                     lambda c=c: threads_throughput(k, a.n // k or 1,
                                                    lambda: lambda: c.evaluate(req))),
                    (f"fabric aevaluate, {k} task(s), one client [{lp}]",
                     lambda url=url, lp=lp: async_throughput(url, k, a.n // k or 1, lp))]
            for _ in range(a.rounds):
                for name, run in contenders:
                    tput[name] = max(tput.get(name, 0.0), run())
    for loop, t in zip(loops, transports):  # each ping transport closes on its loop
        t.close()
        loop.run_until_complete(asyncio.sleep(0))
    for loop in dict.fromkeys(loops):  # (asyncio's loop is there twice)
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()
    for c in clients:
        c.close()
    for p in procs:
        stop(p)
    if rp is not None:
        stop_redis(rp)
    return list(tput.items())


def own_cpu():
    """Seconds of CPU (user + system) this process has used."""
    t = os.times()
    return t.user + t.system


def section_stream(a, url, out, node_pid=None, cpu=None):
    """The raw send loop and the held stream once per round, interleaved,
    each keeping its best round; the first stream (computed by the node's
    home, recorded by the node as it streams) is measured once. ``cpu``
    gets each contender's CPU seconds (sender, receiver) in its best round:
    on a loaded machine the wall time moves with scheduling, the CPU much
    less."""
    mib = a.stream_mib
    total = mib << 20
    sink, sport = child(["--serve-sink"])
    block = b"\0" * CHUNK
    cpu = {} if cpu is None else cpu

    def raw_loop():
        s = socket.create_connection(("127.0.0.1", int(sport)))
        c0, s0 = own_cpu(), proc_cpu(sink.pid)
        t0 = time.perf_counter()
        for _ in range(total // CHUNK):
            s.sendall(block)
        s.shutdown(socket.SHUT_WR)
        got = int(s.recv(64))
        took = time.perf_counter() - t0
        used = (own_cpu() - c0, proc_cpu(sink.pid) - s0)
        s.close()
        assert got == total, got
        return took, used

    c = connect(url, max_frame=CHUNK + 4096, window=8 * (CHUNK + 4096), timeout=600)
    req = bulk.request(mib, CHUNK)

    def fabric_stream():
        n0 = proc_cpu(node_pid) if node_pid else 0.0
        c0 = own_cpu()
        t0 = time.perf_counter()
        n = 0
        with c.stream(req) as st:
            for item in st:
                n += len(item)
        took = time.perf_counter() - t0
        used = ((proc_cpu(node_pid) - n0) if node_pid else float("nan"), own_cpu() - c0)
        assert n == total, n
        return took, used

    try:
        computed, _ = fabric_stream()  # the node's home computes it, the node records it
        raw = held = (float("inf"), None)
        for _ in range(a.rounds):
            raw = min(raw, raw_loop(), key=lambda r: r[0])
            held = min(held, fabric_stream(), key=lambda r: r[0])
    finally:
        stop(sink)
        c.close()
    cpu["raw socket send loop"] = raw[1]
    cpu["fabric stream held by the node"] = held[1]
    out.append((f"raw socket send loop, {mib} MiB (sink process)", total / raw[0]))
    out.append((f"fabric stream, {mib} MiB held by the node, consumer not recording",
                total / held[0]))
    out.append((f"fabric stream, {mib} MiB computed by the node's home (the node "
                f"records it), consumer not recording", total / computed))
    # recorded by the receiving node: a second node with the first as its home
    d = tempfile.mkdtemp(prefix="fabric-bench-net-")
    try:
        home = connect(url, max_frame=CHUNK + 4096, window=8 * (CHUNK + 4096), timeout=600)
        limits = NodeLimits(max_frame=CHUNK + 4096, window=8 * (CHUNK + 4096),
                            principal_budget=1 << 30)
        recv = Node(os.path.join(d, "recv.ledger"), node_id="recv", home=home,
                    listen="127.0.0.1:0", limits=limits)
        req2 = bulk.request(mib, CHUNK - 1)  # a new key: not held anywhere yet
        t0 = time.perf_counter()
        n = 0
        with recv.fabric.stream(req2) as st:
            for item in st:
                n += len(item)
        rec = time.perf_counter() - t0
        assert n == total - total // CHUNK, n
        assert req2.key in recv.cassette, "the stream was not recorded"
        home.close()
        recv.cassette.close()
        cas = fabric.EvalCassette(os.path.join(d, "raw.ledger"))
        key = bulk.request(mib, 7).key
        block = b"\0" * (CHUNK - 1)
        t0 = time.perf_counter()
        with cas.record_stream(key) as w:
            for _ in range(total // CHUNK):
                w.append(block)
        rawapp = time.perf_counter() - t0
        cas.close()
        out.append((f"fabric stream, {mib} MiB, recorded by the receiving node", n / rec))
        out.append((f"raw cassette stream append (record_stream), {mib} MiB", n / rawapp))
    finally:
        shutil.rmtree(d, ignore_errors=True)


def section_fair(a, url, k=100):
    """``k`` (100) concurrent streams; Jain's index of bytes received when the first ends.

    Each thread's connection (a sync call's blocking connection is made on
    the thread's first call) is made and answered before the start, with a
    small ``evaluate``: the streams then start together. Made inside the
    measurement instead, the last handshakes are answered by a node already
    busy with the first streams, 0.4-0.9 s after the first (HELLO to answer:
    p50 0.2 s): those streams start late and the index fell to 0.93-0.98,
    while the bytes taken after every stream had begun gave 0.998-1.000."""
    c = connect(url, max_frame=CHUNK + 4096, window=4 * (64 << 10), timeout=600)
    got = [0] * k
    first_done = threading.Event()
    snapshot = []
    start = threading.Barrier(k)

    def consume(i):
        req = bulk.request(a.fair_mib, (64 << 10) + i)  # a key of its own
        c.evaluate(small.request(0))  # this thread's connection, made before the start
        start.wait()
        with c.stream(req) as st:
            for item in st:
                got[i] += len(item)
        if not first_done.is_set():
            snapshot.append(list(got))
            first_done.set()

    ts = [threading.Thread(target=consume, args=(i,)) for i in range(k)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    c.close()
    xs = snapshot[0]
    jain = sum(xs) ** 2 / (k * sum(x * x for x in xs)) if any(xs) else 0.0
    return jain, min(xs), max(xs)


def section_fair_one_connection(a, url):
    """The same with asyncio: 100 ``astream`` on one client's main connection
    (streams multiplexed on one connection, credit per stream)."""
    k = 100
    c = connect(url, max_frame=CHUNK + 4096, window=4 * (64 << 10), timeout=600)
    got = [0] * k
    snapshot = []

    async def consume(i):
        req = bulk.request(a.fair_mib, (96 << 10) + i)  # keys of their own
        async for item in c.astream(req):
            got[i] += len(item)
        if not snapshot:
            snapshot.append(list(got))

    async def run():
        await asyncio.gather(*(consume(i) for i in range(k)))

    try:
        asyncio.run(run())
    finally:
        c.close()
    xs = snapshot[0]
    jain = sum(xs) ** 2 / (k * sum(x * x for x in xs)) if any(xs) else 0.0
    return jain, min(xs), max(xs)


def section_tls(a, tmp, loop):
    from fabric.node.auth import client_tls
    cert, key = os.path.join(tmp, "c.pem"), os.path.join(tmp, "k.pem")
    r = subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                        "-keyout", key, "-out", cert, "-days", "1", "-subj",
                        "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    if r.returncode:
        return None
    p, url = child(["--serve-node", "--tls-cert", cert, "--tls-key", key, "--loop", loop])
    try:
        sync, asy = hit_latency(url, a.n, tls=client_tls(cert), loop=loop)
    finally:
        stop(p)
    return sync, asy


def section_mem(url, pid, k=200):
    socks = []
    before = rss_kib(pid)
    from fabric.node import protocol as P
    from fabric.frames import FrameKind
    hello = P.encoder().encode_value(FrameKind.HELLO, P.hello(
        node=None, max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW))
    port = int(url.rsplit(":", 1)[1])
    for _ in range(k):
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.sendall(hello)
        s.recv(4096)  # the server's HELLO: the connection is established
        socks.append(s)
    after = rss_kib(pid)
    for s in socks:
        s.close()
    return (after - before) * 1024 / k


def consume_streams(a):
    """Child mode (``--consume URL``): ``--hs-k`` endless streams of 1 MiB
    items on one connection, consumed and dropped; prints ``ready`` once
    every stream delivered its first item, then runs until killed."""
    c = connect(a.consume, max_frame=CHUNK + 4096, window=8 * (CHUNK + 4096), timeout=600)
    k = a.hs_k
    begun = set()

    async def one(i):
        # endless, computed on the node's worker threads; a key of its own
        async for _item in c.astream(bulk.request(1 << 30, CHUNK + 2 * i + 1)):
            if i not in begun:
                begun.add(i)
                if len(begun) == k:
                    print("ready", k, flush=True)

    async def run():
        await asyncio.gather(*(one(i) for i in range(k)))

    run_on(a.loop or "asyncio", run())


def _hello_bytes():
    from fabric.node import protocol as P
    from fabric.frames import FrameKind
    return P.encoder().encode_value(FrameKind.HELLO, P.hello(
        node=None, max_frame=P.DEFAULT_MAX_FRAME, window=P.DEFAULT_WINDOW))


def handshakes_one_by_one(port, n):
    """``n`` fresh connections one after another: seconds from connect to
    the node's HELLO, each."""
    hello, out = _hello_bytes(), []
    for _ in range(n):
        t0 = time.perf_counter()
        s = socket.create_connection(("127.0.0.1", port), timeout=30)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        s.sendall(hello)
        got = s.recv(4096)
        out.append(time.perf_counter() - t0)
        assert got, "the node closed a new connection"
        s.close()
    return out


def handshakes_together(port, n):
    """``n`` fresh connections made at once (non-blocking, one selector):
    seconds from the first connect to each one's HELLO from the node."""
    import selectors
    hello = _hello_bytes()
    sel = selectors.DefaultSelector()
    t0 = time.perf_counter()
    socks = []
    for _ in range(n):
        s = socket.socket()
        s.setblocking(False)
        s.connect_ex(("127.0.0.1", port))
        sel.register(s, selectors.EVENT_WRITE)
        socks.append(s)
    out, sent, deadline = [], set(), time.monotonic() + 60
    while len(out) < n and time.monotonic() < deadline:
        for key, ev in sel.select(1.0):
            s = key.fileobj
            if s not in sent:
                s.sendall(hello)  # small: the fresh socket's buffer takes it
                sent.add(s)
                sel.modify(s, selectors.EVENT_READ)
            else:
                assert s.recv(4096), "the node closed a new connection"
                out.append(time.perf_counter() - t0)
                sel.unregister(s)
    for s in socks:
        s.close()
    assert len(out) == n, f"{n - len(out)} handshake(s) not answered in 60 s"
    return out


def section_handshake(a, lp):
    """A fresh connection's handshake, the node idle then streaming to
    ``--hs-k`` streams (its own node process, no ledger: nothing recorded)."""
    node, url = child(["--serve-node", "--chunk-kib", str(a.chunk_kib), "--loop", lp])
    port = int(url.rsplit(":", 1)[1])
    rows = []
    try:
        rows.append(("idle, one by one", handshakes_one_by_one(port, a.hs_n)))
        rows.append(("idle, together", handshakes_together(port, a.hs_burst)))
        cons, _ = child(["--consume", url, "--hs-k", str(a.hs_k), "--chunk-kib",
                         str(a.chunk_kib), "--loop", lp])
        try:
            c0, t0 = proc_cpu(node.pid), time.perf_counter()
            rows.append((f"{a.hs_k} streams, one by one", handshakes_one_by_one(port, a.hs_n)))
            share = (proc_cpu(node.pid) - c0) / (time.perf_counter() - t0)
            rows.append((f"(node CPU while streaming: {share:.0%} of a core)", None))
            rows.append((f"{a.hs_k} streams, together", handshakes_together(port, a.hs_burst)))
        finally:
            cons.kill()
            cons.wait()
    finally:
        stop(node)
    return rows


def main():
    global CHUNK
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--only", default="hit,redis,stream,fair,tls,mem")
    ap.add_argument("--stream-mib", type=int, default=256)
    ap.add_argument("--fair-mib", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--chunk-kib", type=int, default=1024)
    ap.add_argument("--pin", type=int, default=None, metavar="CPU",
                    help="run this process and every process it starts on that one CPU")
    ap.add_argument("--loop", default=None, choices=("asyncio", "uvloop", "both"),
                    help="the event loop of the node, the asyncio echo and the asyncio "
                         "client (default: both when uvloop is installed, else asyncio)")
    ap.add_argument("--serve-echo", action="store_true")
    ap.add_argument("--serve-aecho", action="store_true")
    ap.add_argument("--serve-sink", action="store_true")
    ap.add_argument("--serve-node", action="store_true")
    ap.add_argument("--tls-cert")
    ap.add_argument("--tls-key")
    ap.add_argument("--cassette")
    ap.add_argument("--consume", metavar="URL")
    ap.add_argument("--hs-n", type=int, default=100)
    ap.add_argument("--hs-burst", type=int, default=100)
    ap.add_argument("--hs-k", type=int, default=64)
    a = ap.parse_args()
    CHUNK = a.chunk_kib << 10
    if a.pin is not None:  # the children inherit the mask (fork and exec keep it)
        os.sched_setaffinity(0, {a.pin})
    if a.serve_echo:
        return serve_echo()
    if a.serve_aecho:
        return serve_aecho(a.loop or "asyncio")
    if a.serve_sink:
        return serve_sink()
    if a.serve_node:
        a.loop = a.loop or "asyncio"
        return serve_node(a)
    if a.consume:
        return consume_streams(a)
    if a.loop is None:
        a.loop = "both" if loop_factory("auto")[1] == "uvloop" else "asyncio"
    loops = ["asyncio", "uvloop"] if a.loop == "both" else [a.loop]
    for lp in loops:
        loop_factory(lp)  # uvloop asked for but missing: says so now
    print(f"event loops: {', '.join(loops)}; "
          + (f"pinned to CPU {a.pin} (this process and its children)" if a.pin is not None
             else f"not pinned (CPUs {sorted(os.sched_getaffinity(0))})"), flush=True)
    only = set(a.only.split(","))
    if only == {"handshake"}:  # its own node: none of the shared ones
        return print_handshake(a, loops)
    tmp = tempfile.mkdtemp(prefix="fabric-bench-")
    nodes = {}
    try:
        for lp in loops:
            p, url = child(["--serve-node", "--cassette", os.path.join(tmp, f"{lp}.ledger"),
                            "--chunk-kib", str(a.chunk_kib), "--loop", lp])
            nodes[lp] = (url, p)
        lp0 = loops[0]
        url, node = nodes[lp0]
        rows, tput, streams = [], [], []
        if only & {"hit", "redis"}:
            cpu = {}
            tput = section_hit_redis(a, {lp: (u, p.pid) for lp, (u, p) in nodes.items()},
                                     rows, only, cpu)
            print(f"{'what':48} {'p50 us':>9} {'p99 us':>9} {'p50 / ping-pong':>16}")
            for name, xs, base in rows:
                print(f"{name:48} {pct(xs, .5):9.1f} {pct(xs, .99):9.1f} "
                      f"{statistics.median(xs) / base:16.2f}")
            for name, (cl, nd) in cpu.items():
                print(f"{name:48} CPU per call: client {cl * 1e6:5.1f} us, server "
                      f"{nd * 1e6:5.1f} us (best round)")
            base = dict(tput)
            for name, ops in tput:
                ref = base.get(f"redis-py GET, {name.split(', ')[1].split()[0]} client(s)")
                rel = f" ({ops / ref:.2f}x redis-py)" if ref and not name.startswith("redis") \
                    else ""
                print(f"{name:56} {ops:12,.0f} ops/s{rel}")
        if "tls" in only:
            got = section_tls(a, tmp, lp0)
            if got is None:
                print("tls: openssl not found, skipped")
            else:
                plain = hit_latency(url, a.n, loop=lp0)
                for what, xs, ys in (("sync", got[0], plain[0]), ("asyncio", got[1], plain[1])):
                    print(f"TLS hit p50 ({what}) [{lp0}] {pct(xs, .5):9.1f} us vs plain "
                          f"{pct(ys, .5):9.1f} us: {statistics.median(xs) / statistics.median(ys):.2f}x")
        if "mem" in only:
            print(f"memory per idle connection [{lp0}]: "
                  f"{section_mem(url, node.pid) / 1024:.1f} KiB "
                  f"(node RSS growth over 200 handshaken connections)")
        if "stream" in only:
            scpu = {}
            section_stream(a, url, streams, node.pid, scpu)
            print(f"streams [{lp0} node]:")
            for name, bps in streams:
                print(f"{name:56} {bps / 2**20:9.1f} MiB/s")
            for name, (tx, rx) in scpu.items():
                print(f"{name:44} CPU per {a.stream_mib} MiB (best round): sender "
                      f"{tx * 1e3:5.0f} ms, receiver {rx * 1e3:5.0f} ms")
        if "fair" in only:
            jain, lo, hi = section_fair(a, url)
            print(f"100 concurrent streams [{lp0} node]: Jain's index {jain:.3f} "
                  f"(bytes received when the first ended: min {lo}, max {hi})")
            jain, lo, hi = section_fair_one_connection(a, url)
            print(f"100 concurrent astreams on one connection: Jain's index {jain:.3f} "
                  f"(bytes received when the first ended: min {lo}, max {hi})")
        if "handshake" in only:
            print_handshake(a, loops)
    finally:
        for _url, p in nodes.values():
            stop(p)
        shutil.rmtree(tmp, ignore_errors=True)


def print_handshake(a, loops):
    for lp in loops:
        for what, xs in section_handshake(a, lp):
            if xs is None:
                print(f"handshake [{lp} node], {what}")
                continue
            print(f"handshake [{lp} node], {what:28} p50 {pct(xs, .5) / 1e3:8.2f} ms, "
                  f"max {max(xs) * 1e3:8.2f} ms ({len(xs)})", flush=True)


if __name__ == "__main__":
    main()
