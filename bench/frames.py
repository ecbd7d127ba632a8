"""Frame codec throughput against msgpack, side by side in one run.

    python3 bench/frames.py            (about 20 s)

Figures: encode+decode of 64 KiB payloads (payload GB/s), and frames per
second for 100-byte payloads one at a time and batched (encode_many + one
feed), against msgpack.packb/unpackb of the same payloads (a bin per
payload; batched: one Unpacker fed the concatenation). Prints ratios; record
them in docs/benchmarks.md ("Frames").
"""

import os
import sys

import msgpack

_HERE = os.path.dirname(os.path.abspath(__file__))
# bench/fabric.py would shadow the package: the package is imported with this
# folder off the path, and the folder goes back, last, for _common.
sys.path[:] = [p for p in sys.path if os.path.abspath(p or ".") != _HERE]

import fabric  # noqa: E402
from fabric import FrameDecoder, FrameEncoder, FrameKind  # noqa: E402

sys.path.append(_HERE)
from _common import best  # noqa: E402

CHUNK = FrameKind.STREAM_CHUNK


def big(n=128, size=64 * 1024):
    payload = bytes(range(256)) * (size // 256)
    enc = FrameEncoder()

    def ours():
        dec = FrameDecoder()
        for i in range(n):
            dec.feed(enc.encode(CHUNK, payload, stream_id=1, seq=i))
            for f in dec:
                f.payload  # noqa: B018 - touch the zero-copy view
    def theirs():
        for _ in range(n):
            msgpack.unpackb(msgpack.packb(payload))

    a, b = best(ours, 7), best(theirs, 7)
    gb = n * size / 1e9
    return gb / a, gb / b


def small_one_by_one(n=100_000):
    payload = b"x" * 100
    enc = FrameEncoder()

    def ours():
        dec = FrameDecoder()
        for i in range(n):
            dec.feed(enc.encode(CHUNK, payload, stream_id=1, seq=i))
            next(dec)

    def theirs():
        for _ in range(n):
            msgpack.unpackb(msgpack.packb(payload))

    return n / best(ours, 5), n / best(theirs, 5)


def small_batched(n=100_000, batch=1000):
    payloads = [b"x" * 100] * batch
    enc = FrameEncoder()

    def ours():
        dec = FrameDecoder()
        for b in range(n // batch):
            dec.feed(enc.encode_many(CHUNK, payloads, stream_id=1, first_seq=b * batch))
            for f in dec:
                pass

    def theirs():
        up = msgpack.Unpacker()
        for _ in range(n // batch):
            up.feed(b"".join(msgpack.packb(p) for p in payloads))
            for v in up:
                pass

    return n / best(ours, 5), n / best(theirs, 5)


def main():
    print("fabric %s, msgpack %s, CRC32C hardware: %s" % (
        fabric.__version__, msgpack.version, bool(fabric._core.CRC32C_HARDWARE)))
    a, b = big()
    print("64 KiB encode+decode:  fabric %.2f GB/s   msgpack %.2f GB/s   ratio %.2fx" % (a, b, a / b))
    a, b = small_one_by_one()
    print("100 B one at a time:   fabric %.2f M/s    msgpack %.2f M/s    ratio %.2fx" % (a / 1e6, b / 1e6, a / b))
    a, b = small_batched()
    print("100 B batched (1000):  fabric %.2f M/s    msgpack %.2f M/s    ratio %.2fx" % (a / 1e6, b / 1e6, a / b))


if __name__ == "__main__":
    main()
