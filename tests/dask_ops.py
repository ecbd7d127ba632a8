"""Ops the Dask tests run on the cluster's workers (imported there by name)."""

import os

import fabric

REG = fabric.OpRegistry()


@fabric.op("dask.where", registry=REG)
def where(x):
    """x squared, and the pid of the process that computed it."""
    fabric.diagnostic("Computed", "on a worker", pid=os.getpid())
    return [x * x, os.getpid()]


@fabric.op("dask.fail_once", registry=REG)
def fail_once(marker):
    """Fails the first time (leaving ``marker``), answers afterwards."""
    if not os.path.exists(marker):
        open(marker, "w").close()
        raise ValueError("the first run fails")
    return "second run"


@fabric.op("dask.gated", registry=REG)
def gated(n, gate, log):
    """Yields 0, waits for the distributed Event ``gate``, then yields 1..n-1;
    each index is appended to ``log`` before it is yielded."""
    from distributed import Event
    for i in range(n):
        with open(log, "a") as f:
            f.write(f"{i}\n")
        yield i
        if i == 0 and not Event(gate).wait(timeout=120):
            raise TimeoutError("the test never opened the gate")


@fabric.op("dask.block", registry=REG)
def block(started, release):
    """Sets Event ``started``, waits for Event ``release``, returns its pid."""
    from distributed import Event
    Event(started).set()
    if not Event(release).wait(timeout=120):
        raise TimeoutError("the test never released the op")
    return os.getpid()


@fabric.op("dask.killable", registry=REG)
def killable(marker, started):
    """The first run writes its pid to ``marker``, sets Event ``started`` and
    waits to be killed; a run after that answers."""
    from distributed import Event
    if not os.path.exists(marker):
        with open(marker, "w") as f:
            f.write(str(os.getpid()))
        Event(started).set()
        Event(started + "-never").wait(timeout=120)
        return "not killed"
    return ["survived", os.getpid()]


@fabric.op("dask.secret", capabilities=["net.fetch"], registry=REG)
def needs_net(x):
    return x


@fabric.op("dask.mark", registry=REG)
def mark(path):
    """Leaves a file at ``path``: proof the op ran."""
    open(path, "w").close()
    return path


@fabric.op("dask.use_secret", registry=REG)
def use_secret(name, token):
    """Whether ``token`` (a Secret, resolved on this worker) holds the value
    the test planted for ``name``; returns the Secret itself too."""
    assert isinstance(token, fabric.Secret), type(token)
    return {"ok": token.reveal() == f"planted-secret-{name}-do-not-leak",
            "token": token, "pid": os.getpid()}


@fabric.op("dask.use_secret_stream", registry=REG)
def use_secret_stream(name, token):
    for j in range(3):
        yield {"j": j, "ok": token.reveal() == f"planted-secret-{name}-do-not-leak",
               "token": token}


def _counted_wait(log, release):
    """Appends this run to ``log``, then waits for the distributed Event ``release``."""
    from distributed import Event
    with open(log, "a") as f:
        f.write(f"{os.getpid()}\n")
    if not Event(release).wait(timeout=120):
        raise TimeoutError("the test never released the op")
    return os.getpid()


@fabric.op("dask.counted", registry=REG)
def counted(log, release):
    return _counted_wait(log, release)


@fabric.op("dask.counted_uncacheable", registry=REG, sharing="uncacheable")
def counted_uncacheable(log, release):
    return _counted_wait(log, release)
