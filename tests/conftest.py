"""Shared fixtures of the test suite."""

import itertools
import time

import pytest

import fabric


@pytest.fixture
def cassette_factory(tmp_path):
    """cassette_factory(name) -> a real EvalCassette on a ledger file under tmp_path
    (OS durability unless asked: the tests check behaviour, not fsync)."""
    opened = []
    counter = itertools.count()

    def make(name=None, **kw):
        kw.setdefault("durability", "os")
        path = tmp_path / f"{name or 'c%d' % next(counter)}.ledger"
        c = fabric.EvalCassette(str(path), **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:
            pass


# pytester runs the pytest plugin's own tests (tests/test_pytest_plugin.py).
pytest_plugins = ["pytester"]


def wait_for(cond, what, bound=20.0):
    """A bounded wait for a condition another thread or process makes true
    (polled: the condition is the handshake, never the time it takes)."""
    end = time.monotonic() + bound
    while not cond():
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.02)
