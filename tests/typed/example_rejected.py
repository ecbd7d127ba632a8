"""Calls ``mypy --strict`` must reject (tests/test_typing.py): each line
marked ``# E`` is an error, and no other line is."""

from __future__ import annotations

import fabric

reg = fabric.OpRegistry()


@fabric.op("embed", version=1, registry=reg)
def embed(text: str, *, scale: float = 1.0) -> list[float]:
    return [len(text) * scale]


def run(fab: fabric.LocalFabric) -> None:
    embed(3)  # E
    embed.request("x", scale="big")  # E
    fab.call(embed, "x", unknown=1)  # E
    n: int = fab.call(embed, "x")  # E
    fab.evaluate(embed.request("x"), timeout="soon")  # E
    s: str = fab.evaluate(embed.request("x"))  # E
    fab.call(embed)  # E
