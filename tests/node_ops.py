"""Ops that the node tests' `fabric serve` processes import (``--import node_ops``)."""

import time

import fabric

import gates


@fabric.op("node.double")
def double(x):
    return x * 2


@fabric.op("node.count")
def count(n):
    for i in range(n):
        yield i


@fabric.op("node.first_then_hang")
def first_then_hang(tag):
    yield "first"
    time.sleep(120)  # the test kills the process before this ends
    yield "never"


@fabric.op("node.gpu", capabilities=("gpu",))
def gpu(x):
    return x + 1


@fabric.op("node.reveal")
def reveal(secret):
    return "len=%d" % len(secret.reveal())


def home():
    """The home fabric of a `fabric serve --home node_ops:home` process."""
    return fabric.LocalFabric()


@fabric.op("node.gated_count")
def gated_count(n, gate_path):
    """0, then (once the test opens the gate at ``gate_path``: gates.open_gate)
    1 .. n-1. The gate not opened in 60 s ends the stream with TimeoutError."""
    yield 0
    gates.wait(gate_path, 60.0)
    for i in range(1, n):
        yield i
