"""Writes tests/golden/snapshot-v1.bin, the node snapshot golden file
(docs/spec/snapshot.md): ``python tests/golden/make_snapshot.py``."""

import hashlib
import os

from fabric import ContentKey
from fabric.holders import HoldingIndex
from fabric.node import snapshot as S


def golden_bytes() -> bytes:
    def key(i):
        return ContentKey(hashlib.sha256(b"k%d" % i).digest())
    holders = HoldingIndex([(key(0), "golden"), (key(1), "peer-b")])
    gov = {"allow": None, "block": ["evil"], "down_after": 3, "backoff_base": 0.5,
           "backoff_cap": 30.0, "jitter": 0.5, "skips": 1, "penalties": 0,
           "health": [["peer-b", 1, 1, "failed: timeout", 2.5, False]],
           "backoff": [["peer-b", 1, 0.5]]}
    return S.encode("golden", 3, holders.snapshot(), gov, {"hits": 2, "requests": 5},
                    [{"peer": "fabric://127.0.0.1:7412", "start": 1, "end": 2,
                      "redelivered": True}],
                    {"fabric://127.0.0.1:7412": 9})


if __name__ == "__main__":
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "snapshot-v1.bin")
    with open(out, "wb") as f:
        f.write(golden_bytes())
    print(out)
