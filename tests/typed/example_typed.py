"""A typed use of fabric, checked with ``mypy --strict`` (tests/test_typing.py).

Every ``reveal_type`` below states what the type checker must infer; the
test compares mypy's answers with the comment on the same line.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Iterator

import fabric

reg = fabric.OpRegistry()


@fabric.op("embed", version=1, registry=reg)
def embed(text: str, *, scale: float = 1.0) -> list[float]:
    return [len(text) * scale]


@fabric.op("tokens", registry=reg)
def tokens(text: str) -> Iterator[str]:
    yield from text.split()


@fabric.op("aembed", registry=reg)
async def aembed(text: str) -> int:
    await asyncio.sleep(0)
    return len(text)


@fabric.op("atokens", registry=reg)
async def atokens(text: str) -> AsyncIterator[str]:
    for t in text.split():
        yield t


def run(fab: fabric.LocalFabric, cassette: fabric.EvalCassette) -> None:
    reveal_type(embed)  # fabric.ops.Op[[text: str, *, scale: float =], list[float]]
    reveal_type(embed("x"))  # list[float]
    reveal_type(embed.request("x", scale=2.0))  # fabric._core.EvalRequest
    reveal_type(fab.call(embed, "x", scale=2.0))  # list[float]
    reveal_type(fab.call(aembed, "x"))  # int
    reveal_type(fab.call(tokens, "a b"))  # fabric.replies.EvalStream[str]
    reveal_type(fab.call("embed", "x"))  # Any
    reveal_type(fab.evaluate(embed.request("x")))  # fabric.replies.EvalReply
    relay = fabric.LedgeredRelayFabric(fab, cassette)
    reveal_type(relay.evaluate(embed.request("x"), timeout=1.0))  # fabric.replies.EvalReply
    reveal_type(fabric.RelayFabric(relay).evaluate(embed.request("x")))  # fabric.replies.EvalReply
    reveal_type(fabric.ContentServeFabric(cassette).evaluate(embed.request("x")))  # fabric.replies.EvalReply
    for word in fab.call(tokens, "a b"):
        reveal_type(word)  # str
    with fabric.LocalFabric(reg) as other:
        reveal_type(other)  # fabric.fabrics.LocalFabric


async def arun(fab: fabric.LocalFabric) -> None:
    reveal_type(await fab.acall(aembed, "x"))  # int
    reveal_type(await fab.acall(embed, "x"))  # list[float]
    reveal_type(await fab.aevaluate(embed.request("x")))  # fabric.replies.EvalReply
    async for t in await fab.acall(atokens, "a b"):
        reveal_type(t)  # str


async def anode(url: str) -> None:
    client = await fabric.aconnect(url, timeout=5.0)
    reveal_type(client)  # fabric.node.client.NodeClient
    reveal_type(await client.aevaluate(embed.request("x")))  # fabric.replies.EvalReply
    reveal_type(fabric.RelayFabric(client).status)  # fabric.fabrics.RelayStatus
    async with client as c:
        reveal_type(c)  # fabric.node.client.NodeClient
    await client.aclose()
