"""Soak: a fleet of three ``fabric serve`` processes on loopback under mixed
load for a bounded time, with a node killed and restarted, checked by
invariants only (no timing is asserted).

    PYTHONPATH=$PWD python bench/soak.py [--seconds 30] [--rate 120] [--kill-at 0.3]

The fleet: node *a* computes; node *b* computes and has *a* as its peer;
node *c* has no home and *a* and *b* as its peers. The load is open loop
(each request has a due time, at ``--rate`` requests per second in all,
and its latency counts from then), from six workers:

- ``miss-a``: fresh keys on *a* (computed there, recorded, acknowledged);
- ``hit-a``: keys *a* acknowledged, asked again;
- ``peer-c``: keys *a* or *b* acknowledged, asked of *c* (which asks the
  holder its gossip named);
- ``none-c``: keys nobody computed, asked of *c* (``NoHolderError`` is the
  right answer);
- ``stream-b``: streams computed on *b*, half of them asked again (replayed
  from its ledger);
- ``async-b``: fresh keys on *b* through ``aevaluate`` from an event loop.

At ``--kill-at`` of the run, node *a* is killed with SIGKILL and started
again from its ledger on the same port.

Invariants (exit status 1 if one fails):

- 0 wrong replies: every value equals its reference (the op's plain
  function), every stream's items are all there, in order;
- no lost acknowledged record: every key a node acknowledged (a computed
  reply, a complete stream) is held by that node at the end, asked with
  scope ``held``; node *a* (killed once) included;
- no error but the expected ones: ``FabricUnavailable`` (a node down or
  restarting), ``NoHolderError`` (nobody holds it, *a* down),
  ``DeadlineExceeded`` (a loaded machine);
- flat memory and descriptors: per node process, the RSS of its last
  quarter of samples at most max(32 MiB, 50 %) above the median of its
  second quarter, and at most 32 more open descriptors;
- every node exits 0 on SIGTERM at the end.

Reported, not asserted: requests and errors per worker, p50 / p99 latency,
RSS and descriptors per node, each node's status counters, a /metrics
scrape of each. Longer runs: ``--seconds 600 --kill-every 30`` kills and
restarts *a* every 30 s.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import itertools
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/fabric.py would shadow the package: the package is imported with
# this folder off the path (an editable install's finder comes after every
# path entry), and the folder goes back, last, for _soak_ops.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import fabric  # noqa: E402
from fabric.node import connect  # noqa: E402

sys.path.append(_HERE)
import _soak_ops as ops  # noqa: E402

EXPECTED = (fabric.FabricUnavailable, fabric.NoHolderError, fabric.DeadlineExceeded)


class Wrong(Exception):
    """A reply that differs from its reference."""


# ---- the fleet ---------------------------------------------------------------------

def free_port() -> int:
    """A free port for a node restarted on the same port, below the kernel's
    ephemeral range when there is room: the kernel never gives a port there
    to an outgoing connection (the nodes' links, the clients' dials), which
    could otherwise take a port chosen here before its node binds it."""
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            low = int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        low = 0
    if low > 11024:
        rng = random.Random()
        for _ in range(1000):
            port = rng.randrange(low - 10000, low)
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Proc:
    """One ``fabric serve`` process (restartable on the same port)."""

    def __init__(self, name: str, workdir: str, port: int, args: list[str]):
        self.name, self.workdir, self.port, self.args = name, workdir, port, args
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"fabric://127.0.0.1:{port}"
        self.metrics: tuple[str, int] | None = None
        self.incarnation = -1

    def start(self, bound: float = 60.0) -> None:
        root = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            p for p in (root, _HERE, os.environ.get("PYTHONPATH")) if p))
        self.incarnation += 1
        err = open(os.path.join(self.workdir, f"{self.name}.{self.incarnation}.log"), "w")
        cmd = [sys.executable, "-m", "fabric", "serve", "--listen", f"127.0.0.1:{self.port}",
               "--node-id", self.name, "--import", "_soak_ops",
               "--cassette", os.path.join(self.workdir, f"{self.name}.ledger"),
               "--metrics", "127.0.0.1:0", "--log-level", "warning", *self.args]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                     env=env, cwd=self.workdir)
        err.close()
        lines: list[str] = []
        # The readiness line and the metrics line, read by a thread (a pipe's
        # text buffer may hold both after one select).
        reader = threading.Thread(target=lambda: lines.extend(
            self.proc.stdout.readline().strip() for _ in range(2)), daemon=True)  # type: ignore[union-attr]
        reader.start()
        reader.join(bound)
        if reader.is_alive() or len(lines) < 2 or not lines[1]:
            self.proc.kill()
            self.proc.wait()
            raise RuntimeError(f"node {self.name} did not start within {bound} s: {lines} "
                               f"{self.log()[-2000:]}")
        assert lines[0].endswith(self.url), lines
        hostport = lines[1].rsplit("//", 1)[1].split("/", 1)[0]
        host, port = hostport.rsplit(":", 1)
        self.metrics = (host, int(port))

    def log(self) -> str:
        with open(os.path.join(self.workdir, f"{self.name}.{self.incarnation}.log")) as f:
            return f.read()

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> int | None:
        """SIGTERM; the exit status (None if it had to be killed)."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return None


class Sampler(threading.Thread):
    """RSS and open descriptors of each node process, twice a second."""

    def __init__(self, procs: list[Proc]):
        super().__init__(daemon=True, name="soak-sampler")
        self.procs = procs
        self.samples: dict[tuple[str, int], list[tuple[int, int]]] = {}
        self.stop_evt = threading.Event()

    def run(self) -> None:
        while not self.stop_evt.wait(0.5):
            for p in self.procs:
                if p.proc is None or p.proc.poll() is not None:
                    continue
                try:
                    with open(f"/proc/{p.proc.pid}/status") as f:
                        rss = next(int(line.split()[1]) * 1024 for line in f
                                   if line.startswith("VmRSS:"))
                    fds = len(os.listdir(f"/proc/{p.proc.pid}/fd"))
                except (OSError, StopIteration):  # it just ended
                    continue
                self.samples.setdefault((p.name, p.incarnation), []).append((rss, fds))


# ---- the load ----------------------------------------------------------------------

class Worker(threading.Thread):
    """Calls ``fn`` at fixed due times until the deadline (open loop)."""

    def __init__(self, name: str, fn, interval: float, start: float, deadline: float):
        super().__init__(daemon=True, name=f"soak-{name}")
        self.kind, self.fn, self.interval = name, fn, interval
        self.t0, self.deadline = start, deadline
        self.latencies: list[float] = []
        self.ok = 0
        self.expected: dict[str, int] = {}
        self.unexpected: list[str] = []
        self.wrong: list[str] = []

    def run(self) -> None:
        for i in itertools.count():
            due = self.t0 + i * self.interval
            if due >= self.deadline:
                return
            now = time.monotonic()
            if due > now:
                time.sleep(due - now)
            try:
                self.fn()
                self.ok += 1
                self.latencies.append(time.monotonic() - due)
            except Wrong as exc:
                self.wrong.append(str(exc))
            except EXPECTED as exc:
                name = type(exc).__name__
                self.expected[name] = self.expected.get(name, 0) + 1
            except Exception as exc:  # noqa: BLE001 - reported, and fails the soak
                self.unexpected.append(f"{type(exc).__name__}: {exc}")


class Load:
    """The requests of each worker, and what the nodes acknowledged."""

    def __init__(self, clients: dict[str, Any], seed: int):
        self.c = clients
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.fresh = itertools.count(1)
        self.acked: dict[str, set[tuple[int, int]]] = {"a": set(), "b": set()}
        self.acked_streams: set[tuple[int, int]] = set()
        self._a_list: list[tuple[int, int]] = []
        self._ab_list: list[tuple[int, int]] = []
        self._loop = asyncio.new_event_loop()
        self._stream_seeds: list[tuple[int, int]] = []

    def _check(self, got, want, what):
        if got != want:
            raise Wrong(f"{what}: got {got!r:.200}, expected {want!r:.200}")

    def _new(self) -> tuple[int, int]:
        with self.lock:
            return next(self.fresh), self.rng.choice((0, 0, 100, 2000))

    def _ack(self, node: str, xp: tuple[int, int]) -> None:
        with self.lock:
            self.acked[node].add(xp)
            if node == "a":
                self._a_list.append(xp)
            self._ab_list.append(xp)

    def _pick(self, which: list[tuple[int, int]]) -> tuple[int, int] | None:
        with self.lock:
            return self.rng.choice(which) if which else None

    def miss_a(self) -> None:
        x, pad = self._new()
        rep = self.c["a"].evaluate(sq((x, pad)))
        self._check(rep.value, ops.square_fn(x, pad), f"miss-a {x}")
        self._ack("a", (x, pad))

    def hit_a(self) -> None:
        xp = self._pick(self._a_list)
        if xp is None:
            return self.miss_a()
        rep = self.c["a"].evaluate(sq(xp))
        self._check(rep.value, ops.square_fn(*xp), f"hit-a {xp}")

    def peer_c(self) -> None:
        xp = self._pick(self._ab_list)
        if xp is None:
            return None
        rep = self.c["c"].evaluate(sq(xp))
        self._check(rep.value, ops.square_fn(*xp), f"peer-c {xp}")

    def none_c(self) -> None:
        x, _pad = self._new()
        try:
            rep = self.c["c"].evaluate(ops.square.request(-x))
        except fabric.NoHolderError:
            return  # the right answer: nobody computed -x
        raise Wrong(f"none-c {-x}: a reply {rep.value!r:.100} for a key nobody computed")

    def stream_b(self) -> None:
        with self.lock:
            again = self._stream_seeds and self.rng.random() < 0.5
            if again:
                n, seed = self.rng.choice(self._stream_seeds)
            else:
                n, seed = self.rng.randint(1, 40), next(self.fresh)
        items = list(self.c["b"].stream(ops.series.request(n, seed)))
        self._check(items, ops.series_items(n, seed), f"stream-b {(n, seed)}")
        with self.lock:
            self.acked_streams.add((n, seed))
            if not again:
                self._stream_seeds.append((n, seed))

    def async_b(self) -> None:
        x, pad = self._new()
        rep = self._loop.run_until_complete(self.c["b"].aevaluate(sq((x, pad))))
        self._check(rep.value, ops.square_fn(x, pad), f"async-b {x}")
        self._ack("b", (x, pad))


def sq(xp: tuple[int, int]) -> Any:
    """The request for ``square(x, pad=pad)`` (always the same call shape:
    a positional ``pad`` would be another key)."""
    return ops.square.request(xp[0], pad=xp[1])


def held_everywhere(url: str, keys, streams=()) -> list[str]:
    """What a node acknowledged and does not hold (asked with scope held)."""
    lost = []
    with connect(url, scope="held", timeout=60) as c:
        for xp in sorted(keys):
            try:
                v = c.evaluate(sq(xp)).value
                if v != ops.square_fn(*xp):
                    lost.append(f"{xp}: held with another value")
            except fabric.FabricError as exc:
                lost.append(f"{xp}: {type(exc).__name__}: {exc}")
        for n, seed in sorted(streams):
            try:
                if list(c.stream(ops.series.request(n, seed))) != ops.series_items(n, seed):
                    lost.append(f"stream {(n, seed)}: held with other items")
            except fabric.FabricError as exc:
                lost.append(f"stream {(n, seed)}: {type(exc).__name__}: {exc}")
    return lost


def scrape(addr: tuple[str, int]) -> dict[str, float]:
    conn = http.client.HTTPConnection(*addr, timeout=30)
    try:
        conn.request("GET", "/metrics")
        r = conn.getresponse()
        body = r.read().decode()
        if r.status != 200:
            raise RuntimeError(f"/metrics answered {r.status}")
    finally:
        conn.close()
    out = {}
    for line in body.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))]


def flat(samples: list[tuple[int, int]]) -> tuple[bool, str]:
    """Memory and descriptors of one process's life: (ok, summary)."""
    n = len(samples)
    if n < 8:
        return True, f"{n} samples (too few to judge)"
    rss = [s[0] for s in samples]
    fds = [s[1] for s in samples]
    base = statistics.median(rss[n // 4:n // 2])
    end = max(rss[-(n // 4):])
    fd_base, fd_end = max(fds[n // 4:n // 2]), max(fds[-(n // 4):])
    limit = base + max(32 << 20, base // 2)
    ok = end <= limit and fd_end <= fd_base + 32
    return ok, (f"RSS {base / 2**20:.1f} -> {end / 2**20:.1f} MiB (limit {limit / 2**20:.1f}), "
                f"fds {fd_base} -> {fd_end}, {n} samples")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=30.0, help="how long the load runs")
    ap.add_argument("--rate", type=float, default=120.0, help="requests per second, in all")
    ap.add_argument("--kill-at", type=float, default=0.3,
                    help="when node a is killed, as a fraction of the run (0: never)")
    ap.add_argument("--kill-every", type=float, default=0.0,
                    help="also kill and restart a every this many seconds (long runs)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    a = ap.parse_args(argv)
    if not 0 < a.seconds <= 24 * 3600 or not 0 < a.rate <= 10_000:
        ap.error("--seconds in (0, 86400] and --rate in (0, 10000]")

    workdir = tempfile.mkdtemp(prefix="fabric-soak-")
    pa = Proc("a", workdir, free_port(), ["--home", "_soak_ops:home"])
    pb = Proc("b", workdir, free_port(), ["--home", "_soak_ops:home", "--peer", pa.url])
    pc = Proc("c", workdir, free_port(), ["--peer", pa.url, "--peer", pb.url])
    procs = [pa, pb, pc]
    failures: list[str] = []
    clients: dict[str, Any] = {}
    print(f"soak: 3 nodes on loopback, {a.seconds:g} s at {a.rate:g} requests/s, "
          f"node a killed at {a.kill_at:.0%} of the run"
          + (f" and every {a.kill_every:g} s" if a.kill_every else "") + f"; in {workdir}",
          flush=True)
    sampler = Sampler(procs)
    try:
        for p in procs:
            p.start()
        sampler.start()
        for name, p in zip("abc", procs):
            clients[name] = connect(p.url, timeout=30)
        load = Load(clients, a.seed)
        kinds = {"miss-a": (load.miss_a, 3), "hit-a": (load.hit_a, 3),
                 "peer-c": (load.peer_c, 2), "none-c": (load.none_c, 1),
                 "stream-b": (load.stream_b, 1), "async-b": (load.async_b, 2)}
        weight = sum(w for _fn, w in kinds.values())
        start = time.monotonic() + 0.2
        deadline = start + a.seconds
        workers = [Worker(k, fn, weight / (a.rate * w), start, deadline)
                   for k, (fn, w) in kinds.items()]
        for w in workers:
            w.start()
        kills = []
        if a.kill_at > 0:
            kills.append(start + a.kill_at * a.seconds)
        if a.kill_every > 0:
            t = start + a.kill_every
            while t < deadline - 1:
                if not kills or abs(t - kills[0]) > 1:
                    kills.append(t)
                t += a.kill_every
        restarts = []
        for t in sorted(kills):
            time.sleep(max(0.0, t - time.monotonic()))
            pa.kill()
            t0 = time.monotonic()
            pa.start()
            restarts.append(time.monotonic() - t0)
        for w in workers:
            w.join(a.seconds + 120)
            if w.is_alive():
                failures.append(f"worker {w.kind} did not finish within {a.seconds + 120} s")
        load._loop.run_until_complete(load._loop.shutdown_asyncgens())
        load._loop.close()

        # -- after the load: what was acknowledged is held --------------------
        lost = {"a": held_everywhere(pa.url, load.acked["a"]),
                "b": held_everywhere(pb.url, load.acked["b"], load.acked_streams)}
        for node, ls in lost.items():
            if ls:
                failures.append(f"node {node} lost {len(ls)} acknowledged record(s): "
                                + "; ".join(ls[:5]))
        statuses = {name: clients[name].node_status() for name in "abc"}
        metrics = {p.name: scrape(p.metrics) for p in procs}  # type: ignore[arg-type]
    finally:
        for c in clients.values():
            c.close()
        sampler.stop_evt.set()
        codes = {p.name: p.stop() for p in procs}
    sampler.join(5)
    for name, code in codes.items():
        if code != 0:
            failures.append(f"node {name} exited with {code} on SIGTERM")

    # -- the summary ---------------------------------------------------------------
    print(f"\n{'worker':10} {'ok':>7} {'expected errors':>28} {'unexpected':>10} {'wrong':>6} "
          f"{'p50 ms':>8} {'p99 ms':>8}")
    for w in workers:
        exp = ", ".join(f"{k} {v}" for k, v in sorted(w.expected.items())) or "-"
        print(f"{w.kind:10} {w.ok:7d} {exp:>28} {len(w.unexpected):10d} {len(w.wrong):6d} "
              f"{pct(w.latencies, 0.5) * 1e3:8.2f} {pct(w.latencies, 0.99) * 1e3:8.2f}")
        if w.wrong:
            failures.append(f"{w.kind}: {len(w.wrong)} wrong repl(ies): {w.wrong[0]}")
        if w.unexpected:
            failures.append(f"{w.kind}: {len(w.unexpected)} unexpected error(s): "
                            f"{w.unexpected[0]}")
    print(f"\nacknowledged and held at the end: a {len(load.acked['a'])} keys, b "
          f"{len(load.acked['b'])} keys and {len(load.acked_streams)} streams; node a "
          f"restarted {len(restarts)} time(s)"
          + (f" (ready again in {', '.join(f'{r:.2f}' for r in restarts)} s)" if restarts else ""))
    for (name, inc), samples in sorted(sampler.samples.items()):
        ok, text = flat(samples)
        print(f"node {name} (process {inc + 1}): {text}{'' if ok else '  <- GROWS'}")
        if not ok:
            failures.append(f"node {name} (process {inc + 1}) grows: {text}")
    for name in "abc":
        st, m = statuses[name], metrics[name]
        r = st["requests"]
        print(f"node {name}: {r['received']} requests, {r['replied']} replied, "
              f"{r['errors']} failed; {st['cassette'].get('keys', '?')} keys held; "
              f"/metrics: {len(m)} samples, "
              f"{m.get('fabric_node_requests_received_total', float('nan')):.0f} received")
    if not a.keep:
        import shutil
        shutil.rmtree(workdir, ignore_errors=True)
    if failures:
        print("\nSOAK FAILED:\n  " + "\n  ".join(failures), flush=True)
        return 1
    print("\nsoak passed: 0 wrong replies, 0 lost acknowledged records, only expected "
          "errors, flat memory and descriptors, clean exits", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
