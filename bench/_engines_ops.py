"""Ops of bench/engines.py, in a module the worker processes can import."""

import time

import fabric


def trivial_fn(x):
    return x


def ten_ms_fn(x):
    time.sleep(0.01)
    return x


trivial = fabric.op("bench.trivial", registry=fabric.OpRegistry())(trivial_fn)
ten_ms = fabric.op("bench.ten-ms", registry=fabric.OpRegistry())(ten_ms_fn)
