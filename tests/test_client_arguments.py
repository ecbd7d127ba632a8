"""A call's own arguments (``grants=``, ``timeout=``) checked as ``connect``'s
are, before anything is sent; a timeout of infinity, or past
``fabrics.NO_LIMIT``, is no limit wherever a timeout is taken."""

import asyncio

import pytest

from fabric.fabrics import NO_LIMIT
from fabric.node import aconnect, connect

import node_ops


def test_grants_given_as_one_str_are_a_type_error(node):
    # (Unchecked, "gpu" was taken as the grants {"g", "p", "u"}.)
    n = node()
    message = "grants must be an iterable of str, not str"
    with connect(n.url, timeout=10) as c:
        with pytest.raises(TypeError, match=message):
            c.evaluate(node_ops.double.request(1), grants="gpu")
        with pytest.raises(TypeError, match=message):
            c.stream(node_ops.count.request(2), grants="gpu")
        with pytest.raises(TypeError, match=message):
            asyncio.run(c.aevaluate(node_ops.double.request(1), grants="gpu"))
        assert c.evaluate(node_ops.double.request(1), grants=["gpu"]).value == 2
    with pytest.raises(TypeError, match=message):
        connect(n.url, timeout=10, grants="gpu").close()


@pytest.mark.parametrize("timeout, exc, message", [
    (-1, ValueError, "timeout must be >= 0 seconds or None, not -1"),
    ("1", TypeError, "timeout must be a number of seconds or None, not str"),
    (float("nan"), ValueError, "timeout must be >= 0 seconds or None, not nan"),
])
def test_a_calls_bad_timeout_is_named_as_connects_is(node, timeout, exc, message):
    # (Unchecked: -1 said "Timeout value out of range" (the socket's), "1"
    # "'str' object cannot be interpreted as an integer", nan "Invalid value NaN".)
    n = node()
    with connect(n.url, timeout=10) as c:
        with pytest.raises(exc, match=message):
            c.evaluate(node_ops.double.request(1), timeout=timeout)
        with pytest.raises(exc, match=message):
            c.stream(node_ops.count.request(2), timeout=timeout)
        with pytest.raises(exc, match=message):
            asyncio.run(c.aevaluate(node_ops.double.request(1), timeout=timeout))
        with pytest.raises(exc, match=message):
            c.node_status(timeout=timeout)
        assert c.evaluate(node_ops.double.request(1)).value == 2  # the connection goes on


@pytest.mark.parametrize("timeout", [float("inf"), 1e308, NO_LIMIT * 2])
def test_an_infinite_client_timeout_means_no_limit(node, timeout):
    # (A wait past the platform's range failed with OverflowError "timestamp
    # out of range for platform time_t", connect's first.)
    n = node()
    with connect(n.url, timeout=timeout) as c:
        assert c.timeout is None
        assert c.evaluate(node_ops.double.request(5)).value == 10
        assert list(c.stream(node_ops.count.request(3))) == [0, 1, 2]
    with connect(n.url, timeout=10) as c:
        assert c.evaluate(node_ops.double.request(6), timeout=timeout).value == 12
        assert list(c.stream(node_ops.count.request(2), timeout=timeout)) == [0, 1]
        assert c.node_status(timeout=timeout)["node"] == c.node

    async def main():
        async with await aconnect(n.url, timeout=timeout) as ac:
            assert (await ac.aevaluate(node_ops.double.request(7))).value == 14
            reply = await ac.aevaluate(node_ops.double.request(8), timeout=timeout)
            assert reply.value == 16
            assert [x async for x in ac.astream(node_ops.count.request(2),
                                                timeout=timeout)] == [0, 1]
    asyncio.run(main())


def test_a_timeout_at_the_limit_is_kept(node):
    n = node()
    with connect(n.url, timeout=NO_LIMIT) as c:
        assert c.timeout == NO_LIMIT
        assert c.evaluate(node_ops.double.request(5)).value == 10
