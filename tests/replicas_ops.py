"""Ops a `fabric serve --workers N` test process imports (``--import replicas_ops``)."""

import os

import fabric


@fabric.op("serve.pid")
def pid(_x):
    """The pid of the process that computed it."""
    return os.getpid()
