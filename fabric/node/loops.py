"""Which event loop a node runs on: asyncio's own, or uvloop when chosen.

uvloop (the ``fast`` extra) is an optional accelerator: a loop written over
libuv that does the same work with less CPU per wake-up. ``"auto"`` takes it
when it is importable and asyncio's loop otherwise; ``"uvloop"`` insists on
it (``ImportError`` naming the extra when it is missing); ``"asyncio"``
never uses it. Behaviour is the same on both: only the cost per call moves.
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
                                  f"imported ({exc}): pip install 'stream-fabric[fast]', "
                                  f"or choose loop 'asyncio'") from None
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
