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


@pytest.fixture
def terminal():
    """A real terminal (a pseudo-terminal pair): what is drawn on one end is
    read on the other."""
    main, sub = os.openpty()
    # 24 rows of 100 columns, as a terminal window has (a new pty has 0 x 0).
    fcntl.ioctl(sub, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    stream = os.fdopen(sub, "w", encoding="utf-8")
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
