"""Which event loop a node runs on: uvloop by default, or asyncio's own.

uvloop, a loop written over libuv, does the same work as asyncio's own loop
with less CPU per wake-up; stream-fabric depends on it (on every platform
but Windows, which uvloop does not support). ``"auto"``, the default, takes
it when it is importable and asyncio's loop otherwise; ``"uvloop"`` insists
on it (``ImportError`` saying how to install it when it is missing);
``"asyncio"`` never uses it. Behaviour is the same on both: only the cost
per call moves. uvloop is imported when a node makes its loop, never by
``import fabric``.
"""

from __future__ import annotations

import asyncio
from typing import Callable

__all__ = ["LOOPS", "loop_factory", "loop_name"]

#: The choices of ``Node(loop=...)`` and ``fabric serve --loop``.
LOOPS = ("auto", "asyncio", "uvloop")


def loop_factory(choice: str = "auto") -> tuple[Callable[[], asyncio.AbstractEventLoop], str]:
    """``(factory, name)``: what makes a new loop of ``choice``, and which
    loop that is (``"asyncio"`` or ``"uvloop"``). ``ValueError`` for a choice
    not in ``LOOPS``; ``ImportError`` for ``"uvloop"`` without uvloop."""
    if choice not in LOOPS:
        raise ValueError(f"event loop {choice!r} is not one of {', '.join(LOOPS)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError as exc:
            if choice == "uvloop":
                raise ImportError(f"event loop 'uvloop' was asked for, but uvloop cannot be "
                                  f"imported ({exc}): pip install 'uvloop>=0.19' (a "
                                  f"dependency of stream-fabric), or choose loop "
                                  f"'asyncio'") from None
        else:
            return uvloop.new_event_loop, "uvloop"
    return asyncio.new_event_loop, "asyncio"


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    """``"uvloop"`` for a uvloop loop, ``"asyncio"`` for asyncio's own, else
    the loop's class (a loop the caller brought)."""
    cls = type(loop)
    if cls.__module__.split(".")[0] == "uvloop":
        return "uvloop"
    if cls.__module__.split(".")[0] == "asyncio":
        return "asyncio"
    return f"{cls.__module__}.{cls.__qualname__}"
