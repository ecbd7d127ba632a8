"""fabric.progress: tqdm when installed, a plain line on a terminal, else nothing."""

import fcntl
import io
import os
import struct
import sys
import termios

import pytest

import fabric
from fabric.progress import Progress, watched


@pytest.fixture
def no_tqdm(monkeypatch):
    """As if tqdm were not installed (an import of it fails)."""
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    monkeypatch.setitem(sys.modules, "tqdm", None)


def _pty(size):
    """A real terminal (a pseudo-terminal pair) of ``size`` (rows, columns),
    or the size a new one has (0 x 0) when None: (stream to draw on, the fd
    of the other end, where it is read)."""
    main, sub = os.openpty()
    if size is not None:
        fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", *size, 0, 0))
    return os.fdopen(sub, "w", encoding="utf-8"), main


@pytest.fixture
def terminal():
    """A terminal of 24 rows of 100 columns, as a terminal window has."""
    stream, main = _pty((24, 100))
    yield stream, main
    stream.close()
    os.close(main)


@pytest.fixture
def sizeless_terminal():
    """A terminal whose size was never set: it says 0 x 0."""
    stream, main = _pty(None)
    yield stream, main
    stream.close()
    os.close(main)


def _read(fd):
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode()


def test_nothing_is_drawn_when_nobody_watches(no_tqdm):
    out = io.StringIO()
    assert not watched(out)
    with Progress("work", 10, stream=out) as bar:
        assert bar.kind == "off"
        for _ in range(10):
            bar.update()
    assert out.getvalue() == ""


def test_a_plain_line_on_a_terminal_without_tqdm(no_tqdm, terminal):
    stream, main = terminal
    assert watched(stream)
    with Progress("replaying a.ledger", unit="B", stream=stream) as bar:
        assert bar.kind == "plain"
        bar(500, 2_000_000)  # the cassette's callback: done of total
        bar(2_000_000, 2_000_000)
    text = _read(main)
    assert "replaying a.ledger" in text
    assert "100%" in text and "2.0 MB/2.0 MB" in text
    assert text.endswith("\n")


def test_enabled_forces_a_plain_line_even_off_a_terminal(no_tqdm):
    out = io.StringIO()
    with Progress("map sq", 3, stream=out, enabled=True) as bar:
        for _ in range(3):
            bar.update()
    assert "map sq" in out.getvalue() and "3/3" in out.getvalue()


def test_tqdm_draws_when_installed(terminal):
    pytest.importorskip("tqdm")
    stream, main = terminal
    with Progress("compacting", 4, stream=stream) as bar:
        assert bar.kind == "tqdm"
        for _ in range(4):
            bar.update()
    assert "compacting" in _read(main)


def test_tqdm_draws_a_bar_of_80_columns_on_a_terminal_of_0(sizeless_terminal):
    """A terminal that says it has 0 columns: tqdm alone draws nothing there;
    the bar has the fallback width instead."""
    pytest.importorskip("tqdm")
    stream, main = sizeless_terminal
    assert os.get_terminal_size(stream.fileno()).columns == 0
    with Progress("compacting", 4, stream=stream) as bar:
        assert bar.kind == "tqdm"
        bar.update()
        bar._bar.refresh()  # drawn now, whatever tqdm's redraw interval
        for _ in range(3):
            bar.update()
    text = _read(main)
    drawn = [line for line in text.split("\r") if "compacting" in line]
    assert drawn, repr(text)
    assert all(len(line) == Progress.FALLBACK_COLUMNS for line in drawn), drawn
    assert any("1/4" in line for line in drawn), drawn


def test_the_cassette_takes_it_as_its_progress_callback(tmp_path, no_tqdm):
    path = str(tmp_path / "big.ledger")
    with fabric.EvalCassette(path, durability="os") as c:
        for i in range(300):
            c.record(fabric.EvalRequest("p", (i,)).key, "x" * 100)
    out = io.StringIO()
    bar = Progress("opening big.ledger", unit="B", stream=out, enabled=True)
    with fabric.EvalCassette.from_ledger(path, progress=bar, checkpoint=False) as c:
        assert len(c) == 300
    bar.close()
    assert bar.n > 0 and bar.total is not None and bar.n == bar.total
    assert "opening big.ledger" in out.getvalue() and "100%" in out.getvalue()


def test_importing_ipykernel_is_not_being_in_a_kernel():
    pytest.importorskip("ipykernel")
    import ipykernel.kernelapp  # noqa: F401  (as nbclient's users do)
    assert not watched(io.StringIO())
