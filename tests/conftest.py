"""Shared fixtures of the test suite."""

import itertools

import pytest

import fabric


class _StandInCassette:
    """TEMPORARY in-memory stand-in for fabric.EvalCassette while it is being
    built on another branch; removed once the real cassette lands."""

    def __init__(self, path, mode="a", **kw):
        self.path = path
        self._d = {}
        self._streams = {}

    def record(self, key, reply):
        self._d.setdefault(key, fabric.canonical_bytes(reply))

    def get(self, key, default=None):
        b = self._d.get(key)
        return default if b is None else fabric.unpack(b)

    def __contains__(self, key):
        return key in self._d or key in self._streams

    def __len__(self):
        return len(self._d) + len(self._streams)

    def __iter__(self):
        return iter(list(self._d) + list(self._streams))

    def record_stream(self, key):
        cas = self
        frames = []

        class W:
            def append(self, item):
                frames.append(fabric.canonical_bytes(item))

            def close(self):
                cas._streams.setdefault(key, frames)

            def abort(self):
                frames.clear()
        return W()

    def get_stream(self, key):
        return (fabric.unpack(b) for b in self._streams[key])

    def close(self):
        pass


@pytest.fixture
def cassette_factory(tmp_path):
    """cassette_factory(name) -> a cassette on a real file under tmp_path."""
    opened = []
    counter = itertools.count()

    def make(name=None, **kw):
        path = tmp_path / f"{name or 'c%d' % next(counter)}.ledger"
        if hasattr(fabric, "EvalCassette"):
            c = fabric.EvalCassette(str(path), **kw)
        else:
            c = _StandInCassette(str(path), **kw)
        opened.append(c)
        return c

    yield make
    for c in opened:
        try:
            c.close()
        except Exception:
            pass
