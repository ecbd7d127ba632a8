"""Control frames per second: StreamControl encode + decode.

    PYTHONPATH=. python3 -P bench/control.py         (about 15 s)

(-P: bench/fabric.py would otherwise shadow the package.)

A round trip is what a client and a node pay per control: make the control,
check grants and encode its CONTROL frame (to_frame + encode), then feed the
bytes to a FrameDecoder and check it again on receipt (from_frame). Three
mixes: next(limit=16), push of a small map, cancel with a reason. The peer
is msgpack.packb/unpackb of the same {"op": ...} maps, which checks neither
shape nor capabilities. Run it against two builds (e.g. before and after a
change to StreamControl) to compare them; record the figures in
docs/benchmarks.md ("Frames").
"""

import os
import sys

import msgpack

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/fabric.py would shadow the package: the package is imported with this
# folder off the path, and the folder goes back, last, for _common.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import fabric  # noqa: E402
from fabric import FrameDecoder, StreamControl  # noqa: E402

sys.path.append(_HERE)
from _common import best  # noqa: E402

ALL = {"stream.open", "stream.read", "stream.push", "stream.cancel", "stream.stats",
       "stream.remote.network"}

MIXES = {
    "next(limit=16)": (lambda i: StreamControl.next(i, limit=16), {"op": "next", "limit": 16}),
    "push({'frame': 42, 'tags': ['a', 'b']})": (
        lambda i: StreamControl.push(i, {"frame": 42, "tags": ["a", "b"]}),
        {"op": "push", "item": {"frame": 42, "tags": ["a", "b"]}}),
    "cancel(reason='user pressed stop')": (
        lambda i: StreamControl.cancel(i, reason="user pressed stop"),
        {"op": "cancel", "reason": "user pressed stop"}),
}


def round_trips(make, n):
    dec = FrameDecoder()

    def run():
        for i in range(n):
            dec.feed(make(i).to_frame(ALL).encode())
            StreamControl.from_frame(next(dec), ALL)
    return n / best(run)


def peer(body, n):
    def run():
        for _ in range(n):
            msgpack.unpackb(msgpack.packb(body))
    return n / best(run)


def main(n=50_000):
    print("fabric from", fabric.__file__)
    for name, (make, body) in MIXES.items():
        ours, theirs = round_trips(make, n), peer(body, n)
        print("%-42s %8.0f k/s   msgpack packb+unpackb %8.0f k/s   ratio %.2fx"
              % (name, ours / 1e3, theirs / 1e3, ours / theirs))


if __name__ == "__main__":
    main()
