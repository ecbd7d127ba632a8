"""The demonstration run by ``bash dev.sh demo`` (``fabric demo``).

Two nodes in one process, each with its own durable ledger under
``$FABRIC_HOME/demo`` (default ``~/.cache/fabric/demo``):

0. ops are registered with ``@fabric.op``;
1. node *a* evaluates them through a ``ContentAddressedFabric``: unheld work
   is computed on its home site and recorded;
2. the same requests again are local hits (timed);
3. node *b*, with no home, resolves them from *a* as a peer, then holds them;
4. a stream op is streamed, recorded frame by frame and replayed;
5. ``explain`` and ``stats`` say what happened;
6. over the network: two ``fabric serve`` processes on loopback (``net-a``
   computes, ``net-b`` has no home and ``net-a`` as its peer) and a client
   that resolves across them with ``fabric.connect``.

Node *a*'s ledger is kept between runs (a second run shows its holdings
replayed at open); node *b*'s is started afresh each run so step 3 always
shows peer resolution.
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time
from pathlib import Path

import fabric


def fabric_home() -> Path:
    """``$FABRIC_HOME``, else ``~/.cache/fabric``."""
    env = os.environ.get("FABRIC_HOME")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "fabric"


def _fmt(seconds: float) -> str:
    if seconds >= 1e-3:
        return f"{seconds * 1e3:8.2f} ms"
    if seconds >= 1e-6:
        return f"{seconds * 1e6:8.2f} µs"
    return f"{seconds * 1e9:8.0f} ns"


def _timed(fn, *args, **kwargs):
    t0 = time.perf_counter()
    out = fn(*args, **kwargs)
    return out, time.perf_counter() - t0


def _median_call(fn, n: int = 2000) -> float:
    samples = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        samples.append((time.perf_counter() - t0) / n)
    return statistics.median(samples)


def register_ops(registry: fabric.OpRegistry):
    """The demo's ops: a slow deterministic 'embedding' and a token stream."""

    @fabric.op("demo.embed", version=1, registry=registry)
    def embed(text: str, dims: int = 4) -> list:
        # Stands for a model call: deterministic, and slow enough to notice.
        h = text.encode()
        for _ in range(60_000):
            h = hashlib.sha256(h).digest()
        return [round(b / 255, 3) for b in h[:dims]]

    @fabric.op("demo.tokens", version=1, registry=registry)
    def tokens(text: str):
        for i, word in enumerate(text.split()):
            time.sleep(0.01)  # produced one by one
            if i == 2:
                fabric.diagnostic("Diagnostic", "third token reached", index=i)
            yield word.lower()

    return embed, tokens


def main(args=None) -> int:
    reg = fabric.OpRegistry()
    embed, tokens = register_ops(reg)
    home_dir = fabric_home() / "demo"
    home_dir.mkdir(parents=True, exist_ok=True)
    path_a, path_b = home_dir / "node-a.ledger", home_dir / "node-b.ledger"
    if path_b.exists():
        path_b.unlink()

    print("stream-fabric demo: content-addressed evaluation\n")
    print(f"  ops registered: {embed!r}, {tokens!r}")
    print(f"  ledgers under {home_dir} (set FABRIC_HOME to move them)\n")

    cas_a = fabric.EvalCassette(str(path_a))
    cas_b = fabric.EvalCassette(str(path_b))
    try:
        held_before = len(cas_a)
        home = fabric.LocalFabric(reg, name="home")
        a = fabric.ContentAddressedFabric("a", cas_a, home=home)
        if held_before:
            print(f"  node a opened its ledger holding {held_before} replies from earlier runs")
        texts = ["the quick brown fox", "jumps over", "the lazy dog",
                 time.strftime("run at %H:%M:%S")]  # new each run: always computed
        requests = [embed.request(t) for t in texts]

        print("1. node a evaluates (home computes what nobody holds):")
        for t, req in zip(texts, requests):
            reply, dt = _timed(a.evaluate, req)
            print(f"   embed({t!r:<24}) -> {reply.value}  from {reply.source:<6} {_fmt(dt)}")

        print("\n2. the same requests again on node a (local hits, no peer, no home):")
        for t, req in zip(texts, requests):
            per_call = _median_call(lambda: a.evaluate(req))
            print(f"   embed({t!r:<24}) from {a.evaluate(req).source:<6} {_fmt(per_call)} per call")

        print("\n3. node b (no home, fresh ledger) resolves from node a as a peer:")
        b = fabric.ContentAddressedFabric(
            "b", cas_b, peers=[fabric.ContentPeer("a", fabric.ContentServeFabric(cas_a, node="a"))],
            holders=a.holders)
        for t, req in zip(texts, requests):
            reply, dt = _timed(b.evaluate, req)
            print(f"   embed({t!r:<24}) from {reply.source:<6} {_fmt(dt)}")
        reply, dt = _timed(b.evaluate, requests[0])
        print(f"   and now b holds them too: from {reply.source} in {_fmt(dt).strip()}")
        print(f"   holders of the first request: {a.holders.holders_of(requests[0].key)}")

        print("\n4. a stream op through node a, recorded frame by frame, then replayed:")
        sreq = tokens.request("Content never mutates so holders never go stale")
        s = a.stream(sreq)
        t0 = time.perf_counter()
        items = []
        for item in s:
            items.append(item)
        dt = time.perf_counter() - t0
        print(f"   {s.source:<5} {len(items)} items in {_fmt(dt).strip()}: {' '.join(items)}")
        s2 = a.stream(sreq)
        replay, dt2 = _timed(list, s2)
        print(f"   {s2.source:<5} {len(replay)} items in {_fmt(dt2).strip()} "
              f"(identical: {replay == items}), diagnostics {s2.diagnostics}")

        print("\n5. why did node b answer the way it did?")
        print("   " + repr(b.explain(requests[-1])).replace("\n", "\n   "))
        print(f"\n   {a!r}\n   {b!r}")
    finally:
        cas_a.close()
        cas_b.close()
    if getattr(args, "network", True):
        network_demo(embed, tokens)
    return 0


def home() -> fabric.LocalFabric:
    """The home of the demo's ``fabric serve`` node (``--home fabric.demo:home``)."""
    reg = fabric.OpRegistry()
    register_ops(reg)
    return fabric.LocalFabric(reg, name="home")


def _serve(name: str, workdir: Path, *args: str, wait: float = 30.0):
    """Start ``fabric serve`` on a free loopback port; (process, url) once its
    readiness line is read (bounded by ``wait`` seconds)."""
    import select
    import subprocess
    import sys
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    proc = subprocess.Popen(
        [sys.executable, "-m", "fabric", "serve", "--listen", "127.0.0.1:0", "--node-id",
         name, "--cassette", str(workdir / f"{name}.ledger"), *args],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env)
    out = proc.stdout
    assert out is not None
    ready, _, _ = select.select([out], [], [], wait)
    line = out.readline() if ready else ""
    if "listening on" not in line:
        proc.kill()
        proc.wait()
        raise RuntimeError(f"fabric serve {name} did not start within {wait} s")
    return proc, line.rsplit(" ", 1)[1].strip()


def _stop(proc) -> None:
    import signal
    import subprocess
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)  # drains, closes its cassette
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def network_demo(embed, tokens) -> None:
    """Step 6: two node processes on loopback and a client resolving across them."""
    import tempfile
    from .node import connect
    print("\n6. over the network: two `fabric serve` processes on loopback")
    procs = []
    with tempfile.TemporaryDirectory(prefix="fabric-demo-") as tmp:
        try:
            pa, url_a = _serve("net-a", Path(tmp), "--home", "fabric.demo:home")
            procs.append(pa)
            print(f"   net-a (computes) listening on {url_a}")
            pb, url_b = _serve("net-b", Path(tmp), "--peer", url_a)
            procs.append(pb)
            print(f"   net-b (no home, peer net-a) listening on {url_b}")
            req = embed.request("sent over the wire")
            with connect(url_a, timeout=30) as a, connect(url_b, timeout=30) as b:
                reply, dt = _timed(a.evaluate, req)
                print(f"   client -> net-a: {reply.value} from {reply.source:<12} {_fmt(dt)}")
                per_call = _median_call(lambda: a.evaluate(req), n=200)
                print(f"   client -> net-a again: a remote hit, {_fmt(per_call).strip()} "
                      f"per call")
                reply, dt = _timed(b.evaluate, req)
                print(f"   client -> net-b: resolved from {reply.source:<12} {_fmt(dt)}")
                reply, dt = _timed(b.evaluate, req)
                print(f"   client -> net-b again: now held by {reply.source:<7} {_fmt(dt)}")
                sreq = tokens.request("streams cross processes with credit")
                with a.stream(sreq) as s:
                    items = list(s)
                print(f"   a stream from net-a: {' '.join(items)}")
        finally:
            for p in reversed(procs):
                _stop(p)
    print("   both nodes stopped (SIGTERM: streams drained, cassettes closed)")
