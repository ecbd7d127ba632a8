"""Ops worker processes import by reference: `fabric serve --workers N` (``--import
replicas_ops``) and the coalescing tests of ReplicaGroup and PlacementFabric."""

import os

import fabric

import gates


@fabric.op("serve.pid")
def pid(_x):
    """The pid of the process that computed it."""
    return os.getpid()


# -- gated ops: the test opens a gate (gates.py) once every caller is waiting ----

def _gate(d):
    """Counts the run (a line in ``d/count``), then waits for the gate ``d/gate``
    (TimeoutError if the test never opens it)."""
    with open(os.path.join(d, "count"), "a") as f:
        f.write(f"{os.getpid()}\n")
    gates.wait(os.path.join(d, "gate"), 60.0)


def runs(d):
    """How many times a gated op ran (started) with directory ``d``."""
    try:
        with open(os.path.join(d, "count")) as f:
            return len(f.read().split())
    except FileNotFoundError:
        return 0


def open_gate(d):
    gates.open_gate(os.path.join(d, "gate"))


@fabric.op("gated.count")
def gated_count(d):
    _gate(d)
    return "opened"


@fabric.op("gated.fail")
def gated_fail(d):
    _gate(d)
    raise ValueError("the shared computation failed")


@fabric.op("gated.uncacheable", sharing="uncacheable")
def gated_uncacheable(d):
    _gate(d)
    return os.getpid()
