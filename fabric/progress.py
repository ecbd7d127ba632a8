"""Progress of long operations: replaying, verifying or compacting a large
cassette, and ``fab.map``.

``Progress(label, total=None, unit="it")`` draws through tqdm when it is
installed (``tqdm.auto``: the notebook widget in Jupyter, a text bar on a
terminal), else as one plain line rewritten in place, on a terminal only.
Nothing is drawn when nobody watches: by default (``enabled=None``) a bar
appears only when the stream is a terminal or the process is a Jupyter
kernel, so logs, pipes and CI stay clean. tqdm is optional (the ``tqdm``
extra); fabric never requires it. On a terminal that says it has 0 columns
or 0 rows (a pseudo-terminal whose size was never set) tqdm would draw
nothing: its bar gets ``Progress.FALLBACK_COLUMNS`` and ``FALLBACK_ROWS``.

An instance is also the ``progress=`` callback the cassette takes
(``EvalCassette(path, progress=Progress("opening", unit="B"))``,
``compact(progress=...)``): called as ``bar(done, total)`` it moves to
``done`` of ``total``. ``bar.update(n)`` advances by ``n``; ``close()`` (or
the end of a ``with`` block) ends the bar.

Imports nothing from the package.
"""

from __future__ import annotations

import importlib
import os
import sys
import time
from typing import IO, Any

__all__ = ["Progress", "watched"]


def _in_kernel() -> bool:
    """True in a running Jupyter kernel: IPython's current shell is the
    kernel's (importing ipykernel, as tools do, is not enough)."""
    ipython = sys.modules.get("IPython")
    get_ipython = getattr(ipython, "get_ipython", None)
    if get_ipython is None:
        return False
    shell = get_ipython()
    return shell is not None and type(shell).__name__ == "ZMQInteractiveShell"


def watched(stream: IO[str] | None = None) -> bool:
    """Whether someone watches: ``stream`` (stderr by default) is a
    terminal, or this process is a Jupyter kernel."""
    stream = sys.stderr if stream is None else stream
    if _in_kernel():
        return True
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def _tqdm_size(stream: IO[str], columns: int, rows: int) -> dict[str, Any]:
    """tqdm's size keywords for a bar on ``stream``: it follows the
    terminal's size as it changes, except where the terminal says 0 columns
    or 0 rows. tqdm then draws nothing (it takes one less than the size,
    -1), so the bar gets a fixed size: the terminal's where it has one,
    else ``columns`` / ``rows``."""
    try:
        have_cols, have_rows = os.get_terminal_size(stream.fileno())
    except (AttributeError, OSError, ValueError):  # no descriptor, no terminal, closed
        return {"dynamic_ncols": True}
    if have_cols and have_rows:
        return {"dynamic_ncols": True}
    return {"ncols": have_cols - 1 if have_cols else columns,
            "nrows": have_rows - 1 if have_rows else rows}


def _tqdm_class() -> Any:
    """tqdm's automatic bar class (the notebook widget in Jupyter), or None."""
    # By name: tqdm is optional and ships no type stubs.
    try:
        return importlib.import_module("tqdm.auto").tqdm
    except ImportError:
        return None


class Progress:
    """A progress bar through tqdm, a plain line on a terminal, or nothing.

    ``label`` names the work; ``total`` is its size (None: unknown, a
    count only); ``unit`` what is counted (``"B"`` scales to kB, MB...).
    ``enabled``: True draws even when nobody watches, False never, None
    (default) when ``watched(stream)``. ``stream`` defaults to stderr.
    """

    #: The plain line is redrawn at most this often (seconds).
    PLAIN_INTERVAL = 0.1
    #: The width of a tqdm bar on a terminal that reports 0 columns.
    FALLBACK_COLUMNS = 80
    #: The rows tqdm may use on a terminal that reports 0 rows.
    FALLBACK_ROWS = 24

    def __init__(self, label: str, total: int | None = None, *, unit: str = "it",
                 enabled: bool | None = None, stream: IO[str] | None = None):
        self.label = label
        self.total = total
        self.unit = unit
        self.n = 0
        self.stream = sys.stderr if stream is None else stream
        self._bar: Any = None
        self._plain = False
        self._drawn_at = 0.0
        self._drawn = False
        self._closed = False
        if enabled is None:
            enabled = watched(self.stream)
        if not enabled:
            return
        tqdm = _tqdm_class()
        if tqdm is not None:
            size = _tqdm_size(self.stream, self.FALLBACK_COLUMNS, self.FALLBACK_ROWS)
            self._bar = tqdm(total=total, desc=label, unit=unit, unit_scale=unit == "B",
                             file=self.stream, leave=False, **size)
        else:
            self._plain = True

    @property
    def kind(self) -> str:
        """How it draws: ``"tqdm"``, ``"plain"`` or ``"off"``."""
        return "tqdm" if self._bar is not None else "plain" if self._plain else "off"

    def update(self, n: int = 1) -> None:
        """Advance by ``n``."""
        self._move(self.n + n, self.total)

    def __call__(self, done: int, total: int) -> None:
        """The cassette's progress callback: ``done`` of ``total`` so far."""
        self._move(done, total if total > 0 else None)

    def _move(self, done: int, total: int | None) -> None:
        if self._closed:
            return
        step = done - self.n
        self.n = done
        if total != self.total:
            self.total = total
            if self._bar is not None:
                self._bar.total = total
                self._bar.refresh()
        if self._bar is not None:
            if step:
                self._bar.update(step)
        elif self._plain:
            now = time.monotonic()
            finished = total is not None and done >= total
            if finished or now - self._drawn_at >= self.PLAIN_INTERVAL:
                self._drawn_at = now
                self._draw()

    def _draw(self) -> None:
        if self.total:
            width = 30
            filled = min(width, width * self.n // self.total)
            text = (f"{self.label} [{'#' * filled}{'.' * (width - filled)}] "
                    f"{min(100, 100 * self.n // self.total):3d}% "
                    f"{self._amount(self.n)}/{self._amount(self.total)}")
        else:
            text = f"{self.label} {self._amount(self.n)}"
        self.stream.write("\r" + text)
        self.stream.flush()
        self._drawn = True

    def _amount(self, n: int) -> str:
        if self.unit != "B":
            return f"{n} {self.unit}" if self.unit != "it" else str(n)
        for unit in ("B", "kB", "MB", "GB"):
            if n < 1000:
                return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
            n /= 1000  # type: ignore[assignment]
        return f"{n:.1f} TB"

    def close(self) -> None:
        """End the bar (the plain line ends with a newline)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self._plain and (self._drawn or self.n):
            self._draw()
            self.stream.write("\n")
            self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
