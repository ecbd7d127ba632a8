"""Ops of bench/soak.py, in a module its `fabric serve` processes import
(``--import _soak_ops --home _soak_ops:home``). Each op's plain function is
also the reference the soak checks every reply against."""

import hashlib

import fabric


def square_fn(x, pad=0):
    """A small reply (``pad`` bytes of filler make it larger)."""
    return {"x": x, "sq": x * x, "pad": "." * pad}


def series_items(n, seed):
    """The items ``series(n, seed)`` yields, in order."""
    return [hashlib.sha256(f"{seed}:{i}".encode()).hexdigest()[:16] for i in range(n)]


def series_fn(n, seed):
    yield from series_items(n, seed)


square = fabric.op("soak.square")(square_fn)
series = fabric.op("soak.series")(series_fn)


def home():
    """The home fabric of a soak node (the ops above, in-process)."""
    return fabric.LocalFabric()
