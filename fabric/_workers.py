"""Bounded pools of daemon worker threads, one per fabric that needs one.

A fabric hands work to a thread only when the caller must not block on it: a
sync op run under a deadline, a blocking call made from an event loop, a
blocking stream pulled by an async consumer. ``concurrent.futures``'
``ThreadPoolExecutor`` (and so ``asyncio.to_thread``) is not used for that
because its threads are joined at interpreter exit and by ``asyncio.run``:
one hung op would hold the process open. Threads here are daemon threads,
and there are at most ``max_workers`` of them per pool, so hung work cannot
grow without bound; work that is still running when the interpreter exits is
abandoned (its reply is never recorded).

Imports nothing from the package but ``_core``'s errors.
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextvars
import os
import threading
from typing import Any, Callable, TypeVar

from ._core import FabricUnavailable

__all__: list[str] = []

T = TypeVar("T")


def default_max_workers() -> int:
    """The default bound of a fabric's pool (that of ``ThreadPoolExecutor``)."""
    return min(32, (os.cpu_count() or 1) + 4)


class Workers:
    """At most ``max_workers`` daemon threads running submitted calls in order.

    ``submit(fn, *args)`` returns a ``concurrent.futures.Future``; the call
    runs in a copy of the submitter's context (as ``asyncio.to_thread``
    does). A call cancelled before it starts is skipped. ``close()`` refuses
    new calls, cancels the queued ones and lets idle threads end; calls
    already running finish on their own (nothing can stop a Python thread).
    """

    #: A thread idle this long ends (a new call starts another).
    IDLE_SECONDS = 60.0

    def __init__(self, max_workers: int | None = None, name: str = "fabric"):
        if max_workers is None:
            max_workers = default_max_workers()
        if not isinstance(max_workers, int) or isinstance(max_workers, bool) or max_workers < 1:
            raise ValueError(f"max_workers must be a positive int, not {max_workers!r}")
        self.max_workers = max_workers
        self.name = name
        self._cond = threading.Condition(threading.Lock())
        self._queue: collections.deque[tuple[concurrent.futures.Future[Any], Callable[[], Any]]] \
            = collections.deque()
        self._threads = 0
        self._idle = 0
        self._closed = False

    def submit(self, fn: Callable[..., T], /, *args: Any, **kwargs: Any) \
            -> concurrent.futures.Future[T]:
        """Run ``fn(*args, **kwargs)`` on a worker; its future."""
        fut: concurrent.futures.Future[T] = concurrent.futures.Future()
        ctx = contextvars.copy_context()
        job = (fut, lambda: ctx.run(fn, *args, **kwargs))
        with self._cond:
            if self._closed:
                raise FabricUnavailable(f"{self.name}: closed (its worker threads are stopped)")
            self._queue.append(job)
            if self._idle > len(self._queue) - 1:
                self._cond.notify()
                return fut
            if self._threads < self.max_workers:
                self._threads += 1
                n = self._threads
            else:
                return fut  # every worker is busy: the call waits its turn
        t = threading.Thread(target=self._work, name=f"{self.name}-{n}", daemon=True)
        t.start()
        return fut

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._closed:
                    self._idle += 1
                    woke = self._cond.wait(self.IDLE_SECONDS)
                    self._idle -= 1
                    if not woke and not self._queue:
                        break  # idle long enough: a fabric nobody closed leaks no thread
                if not self._queue:
                    self._threads -= 1
                    return
                fut, call = self._queue.popleft()
            if not fut.set_running_or_notify_cancel():
                continue
            try:
                result = call()
            except BaseException as exc:
                fut.set_exception(exc)
            else:
                fut.set_result(result)
            del fut, call

    def busy(self) -> int:
        """Calls running or queued now."""
        with self._cond:
            return self._threads - self._idle + len(self._queue)

    def close(self) -> None:
        """Refuse new calls, cancel queued ones, let idle threads end."""
        with self._cond:
            self._closed = True
            queued = list(self._queue)
            self._queue.clear()
            self._cond.notify_all()
        for fut, _ in queued:
            fut.cancel()

    @property
    def closed(self) -> bool:
        return self._closed
