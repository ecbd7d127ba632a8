"""Claims benchmark: what checking a peer's reply against its claim costs.

    python bench/claims.py [--n N]

Prints, per operation: Ed25519 sign and verify (the C core through
OpenSSL), making and checking a claim for a small reply under an Ed25519
node key and under a fleet key (HMAC-SHA256), and the round trip of a held
reply from a node on loopback with and without a node key, as a ratio.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

_here = os.path.dirname(os.path.abspath(__file__))
sys.path[:] = [d for d in sys.path if os.path.abspath(d or os.curdir) != _here]

import fabric  # noqa: E402
from fabric import _core  # noqa: E402
from fabric.claims import FleetKeys, NodeKey, TrustedKeys  # noqa: E402


def per_call(fn, n):
    fn()
    t = time.perf_counter()
    for _ in range(n):
        fn()
    return (time.perf_counter() - t) / n * 1e6


@fabric.op("bench.claims.double")
def double(x):
    return {"x": x, "twice": [2 * x, "t" * 20]}


def round_trip(n, **keys):
    from fabric.node import Node, connect
    with tempfile.TemporaryDirectory() as d:
        a = Node(os.path.join(d, "a.ledger"), node_id="a", home=fabric.LocalFabric(),
                 listen="127.0.0.1:0", **keys).start()
        try:
            req = double.request(7)
            a.fabric.evaluate(req)
            with connect(a.url, scope="held") as c:
                return per_call(lambda: c.evaluate(req), n)
        finally:
            a.stop()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=5000)
    n = ap.parse_args().n
    seed, public = _core.ed25519_generate()
    msg = bytes(160)  # about a claim's signed bytes
    sig = _core.ed25519_sign(seed, msg)
    print(f"ed25519 sign (160 B)        {per_call(lambda: _core.ed25519_sign(seed, msg), n):8.1f} us")
    print(f"ed25519 verify (160 B)      "
          f"{per_call(lambda: _core.ed25519_verify(public, msg, sig), n):8.1f} us")
    key = double.request(7).key
    reply = fabric.EvalReply({"x": 7, "twice": [14, "t" * 20]}, (), None, key, "held")
    nk = NodeKey.generate("n", "a")
    tk = TrustedKeys.of(nk)
    fk = FleetKeys({"f": bytes(32)}, current="f")
    for name, signer, verifier in (("ed25519", nk, tk), ("fleet key", fk, fk)):
        claim = signer.sign(key, reply, "a", kind="record")
        mk = per_call(lambda: signer.sign(key, reply, "a", kind="record"), n)
        ck = per_call(lambda: verifier.check(claim, key, reply, "a"), n)
        print(f"claim {name:<10} make {mk:8.1f} us   check {ck:8.1f} us")
    plain = round_trip(n)
    signed = round_trip(n, node_key=NodeKey.generate("k", "a"))
    print(f"held reply round trip, node on loopback: {plain:.1f} us plain, {signed:.1f} us "
          f"signed by the node (ratio {signed / plain:.2f})")


if __name__ == "__main__":
    main()
