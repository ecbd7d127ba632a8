"""The demonstration run by ``bash dev.sh demo`` (``fabric demo``).

It keys a few requests and shows what a content key captures: identical work
gets the same key in any process, routing policy does not change it, and a
Secret's value never enters it.
"""

from __future__ import annotations

import time

from . import _core


def _show(label: str, request: _core.EvalRequest) -> None:
    print(f"  {label:<34} {request.key}")


def main(args=None) -> int:
    EvalRequest = _core.EvalRequest
    print("stream-fabric demo: content keys\n")
    base = EvalRequest("embed", ("the quick brown fox",), {"model": "mini-l6"}, version=1)
    _show("embed(text, model=mini-l6) v1", base)
    _show("same work, built again", EvalRequest("embed", ["the quick brown fox"],
                                                {"model": "mini-l6"}, version=1))
    _show("version 2 of the op", base.replace(version=2))
    _show("with a deadline (routing only)", base.replace(deadline=5.0))
    secret_a = EvalRequest("fetch", ("https://example.invalid/data",),
                           {"token": _core.Secret("token-A")})
    secret_b = EvalRequest("fetch", ("https://example.invalid/data",),
                           {"token": _core.Secret("token-B")})
    _show("fetch with Secret('token-A')", secret_a)
    _show("fetch with Secret('token-B')", secret_b)
    print(f"\n  repr never shows a secret: {secret_a!r}")

    payload = bytes(1 << 20)
    t0 = time.perf_counter()
    big = EvalRequest("checksum", (payload,))
    dt = time.perf_counter() - t0
    _show("checksum(1 MiB of zeros)", big)
    print(f"  keyed 1 MiB in {dt * 1e3:.2f} ms ({len(payload) / dt / 1e9:.2f} GB/s)")
    return 0
