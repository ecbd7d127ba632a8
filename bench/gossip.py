"""Gossip convergence in an in-process simulation (no sockets), next to a DHT.

    python bench/gossip.py [--nodes 10 100 1000] [--trials 5] [--fanout 3]

N nodes, each starting with two peers it knows (the next node on a ring and
one random node: connected, nothing more). Rounds are synchronous. In a
round, every node *hot* with a rumour (facts it learned and still spreads)
pushes it to ``fanout`` peers drawn at random from its view; a push that
finds the receiver already knowing the fact counts against the sender, which
stops spreading after ``stop_after`` such duplicates (rumour mongering with
feedback). Every ``pull_every`` rounds each node also pulls from one random
peer (anti-entropy: it sends its per-origin version vector for the origins it
knows; the peer answers the facts missing), which catches what the rumour
missed. Every message carries a sample of up to ``sample`` peers of the
sender's view; the receiver keeps a view of at most ``view`` peers (random
replacement), so membership spreads by gossip too.

Bytes are modelled on the node protocol's GOSSIP frame (docs/spec/
protocol.md): 16 B of frame header, 40 B per fact (32-byte key + an 8-byte
holder reference), 16 B per version-vector entry (origin ref + version),
12 B per peer in a sample (address).

The DHT column models a Kademlia provider record (k = 20 replicas, lookup
parallelism alpha = 3): announcing a fact costs an iterative lookup of about
alpha * ceil(log2 N) request/response pairs plus k STORE pairs, each request
about 80 B and each response about 80 B + k contacts of 50 B. That is what
an announcement costs; a DHT gives no node the whole index, so every reader
pays another lookup per key, where gossip pays nothing more.

Prints one table (markdown) and the holding index's bytes per fact measured
in the C core when keys are shared by many holders (the fleet envelope).

    python bench/gossip.py --processes 5 [--trials 5] [--fanout 2]

runs the same measurement on real ``fabric serve`` processes on loopback,
linked only as a chain by ``--peer`` (membership gossip adds up to
``--fanout`` learned links each): after a warm-up in which every node
announces one fact and all learn all, one fact is announced on the last node
of the chain; each node's debug log names the sender of every delta it
receives and how many facts were new, which gives the relay hops (depth in
the propagation tree), the delta messages that carried the fact and their
bytes (frame header included). Membership and anti-entropy messages are
counted apart (per node per second of the run).
"""

from __future__ import annotations

import argparse
import ast
import math
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

FRAME = 16
FACT = 40
VV_ENTRY = 16
PEER = 12


def simulate(n: int, rng: random.Random, *, fanout: int = 3, stop_after: int = 2,
             pull_every: int = 4, sample: int = 8, view: int = 32,
             max_rounds: int = 1000) -> tuple[int, int, int]:
    """One fact announced on node 0: (rounds, messages, bytes) until all n hold it."""
    views: list[list[int]] = []
    for i in range(n):
        v = {(i + 1) % n, rng.randrange(n)} - {i}
        views.append(list(v) or [(i + 1) % n])
    knows = [False] * n
    knows[0] = True
    hot = {0: 0}  # node -> duplicates seen
    have = 1
    msgs = 0
    nbytes = 0

    def learn_peers(dst: int, src: int) -> int:
        """dst merges a sample of src's view (and src itself); returns bytes of the sample."""
        s = views[src] if len(views[src]) <= sample else rng.sample(views[src], sample)
        vd = views[dst]
        for p in s + [src]:
            if p != dst and p not in vd:
                if len(vd) < view:
                    vd.append(p)
                else:
                    vd[rng.randrange(view)] = p
        return len(s) * PEER

    rounds = 0
    while have < n and rounds < max_rounds:
        rounds += 1
        learned: list[int] = []
        for src, dups in list(hot.items()):
            for dst in rng.sample(views[src], min(fanout, len(views[src]))):
                msgs += 1
                nbytes += FRAME + FACT + learn_peers(dst, src)
                if knows[dst] or dst in learned:
                    hot[src] = dups = dups + 1
                else:
                    learned.append(dst)
            if hot.get(src, 0) >= stop_after:
                del hot[src]
        if rounds % pull_every == 0:
            for dst in range(n):
                src = rng.choice(views[dst])
                # request: version vector of the origins dst knows (one here: node 0's,
                # or none) and a peer sample; response: the missing facts and a sample.
                msgs += 2
                nbytes += 2 * FRAME + (VV_ENTRY if knows[dst] else 0) + learn_peers(src, dst)
                nbytes += learn_peers(dst, src)
                if knows[src] and not knows[dst] and dst not in learned:
                    nbytes += FACT
                    learned.append(dst)
        for d in learned:
            if not knows[d]:
                knows[d] = True
                have += 1
                hot[d] = 0
    if have < n:
        raise RuntimeError(f"no convergence within {max_rounds} rounds at {n} nodes")
    return rounds, msgs, nbytes


def dht_cost(n: int, k: int = 20, alpha: int = 3) -> tuple[int, int]:
    """Messages and bytes for one provider-record announcement (see the docstring)."""
    k = min(k, n - 1)
    lookups = alpha * max(1, math.ceil(math.log2(n)))
    pairs = lookups + k
    req, resp = 80, 80 + k * 50
    return 2 * pairs, lookups * (req + resp) + k * (req + 80)


def envelope() -> tuple[float, float]:
    """The C index's bytes per fact: 1e5 keys each held by 1 and by 10 holders."""
    from fabric.holders import HoldingIndex
    r = random.Random(1)
    keys = r.randbytes(32 * 100_000)
    one = HoldingIndex()
    one.announce_keys(keys, "n0")
    many = HoldingIndex()
    for h in range(10):
        many.announce_keys(keys, f"n{h}")
    return one.memory() / len(one), many.memory() / len(many)


_OPS = """
import fabric

@fabric.op("bench.gossip.fact")
def fact(x):
    return x

def home():
    return fabric.LocalFabric()
"""
_LINE = re.compile(r"node (\S+): gossip delta from (\S+): (\d+) fact\(s\), (\d+) new, (\d+) B")


def _wait(cond, what, bound=30.0):
    end = time.monotonic() + bound
    while not cond():
        if time.monotonic() > end:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.02)


def processes(n: int, fanout: int, interval: float = 0.1) -> tuple[int, int, int, int]:
    """One trial on n real processes: (max hops, delta messages carrying the
    fact, their bytes, other gossip messages per node per second)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    sys.path.insert(0, root)
    from fabric.node import connect
    from fabric.node.client import NodeClient

    with tempfile.TemporaryDirectory(prefix="fabric-gossip-bench-") as tmp:
        with open(os.path.join(tmp, "gossip_bench_ops.py"), "w") as f:
            f.write(_OPS)
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, tmp]))
        sys.path.insert(0, tmp)
        import gossip_bench_ops as ops  # type: ignore[import-not-found]
        procs, urls, names = [], {}, [f"n{i}" for i in range(1, n + 1)]
        seen: dict[str, set] = {}
        observers = []
        t0 = time.monotonic()
        try:
            for i, name in enumerate(names):
                cmd = [sys.executable, "-m", "fabric", "serve", "--listen", "127.0.0.1:0",
                       "--node-id", name, "--import", "gossip_bench_ops",
                       "--home", "gossip_bench_ops:home", "--log-level", "debug",
                       "--gossip-interval", str(interval), "--fanout", str(fanout)]
                if i:
                    cmd += ["--peer", urls[names[i - 1]]]
                log = open(os.path.join(tmp, f"{name}.log"), "w")
                p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=log, env=env,
                                     text=True)
                log.close()
                procs.append(p)
                line = p.stdout.readline()
                if "listening on" not in line:
                    raise RuntimeError(f"{name} did not start: {line!r}")
                urls[name] = line.rsplit(" ", 1)[1].strip()
            for name in names:
                got: set = set()
                seen[name] = got
                observers.append(NodeClient(
                    urls[name], scope="held",
                    on_gossip=lambda b, g=got: g.update((bytes(k), h)
                                                        for k, h in b.get("facts", ()))))
                observers[-1].wait_connected(20)
            warm = set()
            for i, name in enumerate(names):
                with connect(urls[name]) as c:
                    r = ops.fact.request(-1 - i)
                    c.evaluate(r)
                    warm.add((r.key.digest, name))
            _wait(lambda: all(warm <= s for s in seen.values()), "the warm-up facts")
            marks = {nm: os.path.getsize(os.path.join(tmp, f"{nm}.log")) for nm in names}
            r = ops.fact.request(random.getrandbits(60))
            with connect(urls[names[-1]]) as c:
                c.evaluate(r)
            fact = (r.key.digest, names[-1])
            _wait(lambda: all(fact in s for s in seen.values()), "the fact")
            elapsed = time.monotonic() - t0
        finally:
            for o in observers:
                o.close()
            for p in procs:
                p.send_signal(signal.SIGTERM)
            for p in procs:
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        parent, msgs, nbytes, other = {}, 0, 0, 0
        for name in names:
            with open(os.path.join(tmp, f"{name}.log")) as f:
                text = f.read()
            for m in _LINE.finditer(text[marks[name]:]):
                if m.group(1) != name or m.group(3) == "0":
                    continue
                msgs += 1
                nbytes += int(m.group(5))
                if m.group(4) != "0":
                    parent.setdefault(name, m.group(2))
            final = re.search(r"node \S+ gossip: (\{.*\})", text)
            if final:
                st = ast.literal_eval(final.group(1))
                other += st["members_out"] + st["pulls_out"]
        depth = {names[-1]: 0}

        def d(x: str) -> int:
            if x not in depth:
                depth[x] = d(parent[x]) + 1
            return depth[x]

        return max(d(x) for x in names), msgs, nbytes, round(other / n / elapsed, 1)


def bulk(n: int) -> tuple[float, int, int]:
    """A node holding n facts, and a new node linking to it: (seconds until
    the new node holds all n, delta messages, bytes) in one process, real
    sockets on loopback (the first pull of a link, cut into bounded
    messages; the sender checks its own facts for 'recorded' first)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from fabric.node import Node

    with tempfile.TemporaryDirectory(prefix="fabric-gossip-bulk-") as tmp:
        a = Node(os.path.join(tmp, "a.ledger"), node_id="a", listen="127.0.0.1:0").start()
        try:
            a.fabric.holders.announce_keys(random.Random(1).randbytes(32 * n), "a")
            t0 = time.perf_counter()
            b = Node(os.path.join(tmp, "b.ledger"), node_id="b", listen="127.0.0.1:0",
                     peers=[a.url]).start()
            try:
                _wait(lambda: len(b.fabric.holders) >= n, "all facts", bound=600)
                el = time.perf_counter() - t0
            finally:
                b.stop()
            g = a.stats()["gossip"]
            return el, g["messages_out"], g["bytes_out"]
        finally:
            a.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--nodes", type=int, nargs="+", default=[10, 100, 1000])
    ap.add_argument("--trials", type=int, default=5)
    ap.add_argument("--fanout", type=int, default=3)
    ap.add_argument("--seed", type=int, default=14)
    ap.add_argument("--processes", type=int, default=0, metavar="N",
                    help="measure N real fabric serve processes instead (chain + fanout)")
    ap.add_argument("--bulk", type=int, default=0, metavar="N",
                    help="time a new link receiving a node's N facts instead")
    args = ap.parse_args()
    if args.bulk:
        el, msgs, nbytes = bulk(args.bulk)
        print(f"{args.bulk} facts to a new link: {el:.2f} s ({el / args.bulk * 1e6:.2f} us/fact),"
              f" {msgs} messages, {nbytes} bytes ({nbytes / args.bulk:.1f} B/fact)")
        return
    if args.processes:
        print("| processes | fanout | hops (median, max) | delta messages / fact "
              "| delta bytes / fact | membership + pull msgs / node / s |")
        print("|---|---|---|---|---|---|")
        runs = [processes(args.processes, args.fanout) for _ in range(args.trials)]
        h = [x[0] for x in runs]
        print(f"| {args.processes} | {args.fanout} | {statistics.median(h):g}, {max(h)} "
              f"| {statistics.median(x[1] for x in runs):g} "
              f"| {statistics.median(x[2] for x in runs):g} "
              f"| {statistics.median(x[3] for x in runs):g} |")
        return
    rng = random.Random(args.seed)
    print("| nodes | rounds (median, max) | log2 N | messages / fact | bytes / fact "
          "| msgs / node | DHT announce msgs | DHT announce bytes |")
    print("|---|---|---|---|---|---|---|---|")
    for n in args.nodes:
        runs = [simulate(n, rng, fanout=args.fanout) for _ in range(args.trials)]
        r = [x[0] for x in runs]
        m = statistics.median(x[1] for x in runs)
        b = statistics.median(x[2] for x in runs)
        dm, db = dht_cost(n)
        print(f"| {n} | {statistics.median(r):g}, {max(r)} | {math.log2(n):.1f} | {m:g} "
              f"| {b:g} | {m / n:.1f} | {dm} | {db} |")
    one, many = envelope()
    print(f"\nC holding index: {one:.1f} B/fact (each key one holder), "
          f"{many:.1f} B/fact (each key 10 holders), 1e5 keys")


if __name__ == "__main__":
    main()
