"""Which requests a node admits: the per-principal count cap refuses a
request alone, and held content goes to any authenticated peer while home
compute needs the grant ``node.compute``."""

import asyncio
import json

import pytest

import fabric
from fabric.node import NodeLimits, connect, protocol as P

import node_ops
from conftest import spin_until

ALICE = "alice-token-0123456789abcdef"
BOB = "bob-token-0123456789abcdefgh"


def test_a_request_over_the_principals_count_cap_is_refused_alone(node, gated):
    """One slot, a cap of 5 requests waiting per principal, 20 requests at
    once: the one running and the 5 queued are answered, the rest refused
    each with its own LimitExceeded naming the principal and the cap; the
    connection stays up and serves the next request."""
    block, gate = gated
    n = node(limits=NodeLimits(max_running=1, principal_max_queued=5))
    with connect(n.url, timeout=30) as c:
        async def main():
            ts = [asyncio.ensure_future(c.aevaluate(block.request(i))) for i in range(20)]
            # the refusals arrive while the admitted requests still wait at the gate
            await spin_until(lambda: sum(t.done() for t in ts) >= 14)
            refused_early = sum(t.done() for t in ts)
            gate.set()
            return refused_early, await asyncio.gather(*ts, return_exceptions=True)
        refused_early, res = asyncio.run(main())
        ok = [r.value for r in res if not isinstance(r, Exception)]
        refused = [r for r in res if isinstance(r, Exception)]
        assert len(ok) == 6 and len(refused) == 14, [str(r)[:160] for r in refused[:2]]
        assert refused_early == 14  # refused at once, not after the gate opened
        for r in refused:
            assert isinstance(r, P.LimitExceeded), repr(r)
            assert "principal 'anonymous'" in str(r) and "cap 5" in str(r), str(r)
            assert "ended the connection" not in str(r)
        assert c.status == "connected"
        assert c.evaluate(block.request(99)).value == 99  # the connection goes on
    st = n.stats()
    assert st["refused_over_count_cap"] == 14
    assert st["requests_queue"]["principals"]["anonymous"]["refused"] == 14


def test_a_connection_error_names_the_node_not_an_empty_prefix(node, gated):
    """An ERROR on stream 0 ends an aevaluate's connection with a message
    that names the node (it read 'ended the connection: : ...')."""
    wait, gate = gated
    n = node(limits=NodeLimits(idle_timeout=0.2))
    try:
        with connect(n.url, timeout=30) as c:
            async def main():
                return await c.aevaluate(wait.request(1))
            with pytest.raises(fabric.FabricUnavailable) as ei:
                asyncio.run(main())  # the node closes the silent connection
    finally:
        gate.set()
    assert "ended the connection: node n0: idle for 0.2 s" in str(ei.value)


@pytest.fixture
def two_principals(node, tmp_path):
    """A node where bob may compute and alice may not (default scope)."""
    grants = tmp_path / "grants.json"
    grants.write_text(json.dumps({"alice": [], "bob": ["node.compute"]}))
    return node(tokens={"alice": ALICE, "bob": BOB}, grants=str(grants))


def test_a_principal_without_compute_gets_what_the_node_holds(two_principals):
    n = two_principals
    with connect(n.url, token=BOB) as bob:
        assert bob.evaluate(node_ops.double.request(3)).value == 6
        assert list(bob.stream(node_ops.count.request(3))) == [0, 1, 2]
    with connect(n.url, token=ALICE) as alice:  # the default scope: compute
        assert alice.scope == "compute"
        for _ in range(2):  # the first reply, then the read callback's inline hit
            assert alice.evaluate(node_ops.double.request(3)).value == 6
        assert list(alice.stream(node_ops.count.request(3))) == [0, 1, 2]

        async def main():
            return (await alice.aevaluate(node_ops.double.request(3))).value, \
                [x async for x in alice.astream(node_ops.count.request(3))]
        assert asyncio.run(main()) == (6, [0, 1, 2])
        # what the node does not hold would be computed: that is refused
        with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
            alice.evaluate(node_ops.double.request(4))
        with pytest.raises(fabric.CapabilityDenied, match="node.compute"):
            list(alice.stream(node_ops.count.request(4)))
    assert n.stats()["denied_compute"] == 2
