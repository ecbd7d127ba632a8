"""fabric.EvalCassette given what is not a ledger or not an argument it takes:
a specific exception that says what and where, never a hang.

(The common cases, a directory, a missing file, bad magic, a newer version,
bad mode/durability/recover, live in test_cassette.py.)
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import fabric
from fabric import EvalCassette, EvalRequest


def key(i):
    return EvalRequest("op", [i]).key


def run_child(code: str) -> subprocess.CompletedProcess:
    """Runs code in a child: an open that blocks fails the test at the
    safety timeout instead of hanging the suite."""
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)],
                          capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})


@pytest.mark.parametrize("mode", ["r", "a"])
def test_a_fifo_is_refused_not_waited_on(tmp_path, mode):
    # Opening a FIFO for reading blocks until a writer comes: the open
    # must not wait on one.
    fifo = tmp_path / "c.fabl"
    os.mkfifo(fifo)
    child = run_child(f"""
        import fabric
        try:
            fabric.EvalCassette({str(fifo)!r}, {mode!r})
        except fabric.LedgerFormatError as exc:
            print(exc)
    """)
    assert child.returncode == 0, child.stderr
    assert "not a regular file" in child.stdout and str(fifo) in child.stdout


def test_a_fifo_in_place_of_the_checkpoint_is_ignored_not_waited_on(tmp_path):
    path = tmp_path / "c.fabl"
    with EvalCassette(str(path)) as c:
        c.record(key(1), "one")
    os.mkfifo(str(path) + ".ckpt")
    child = run_child(f"""
        import fabric
        with fabric.EvalCassette({str(path)!r}, "r") as c:
            print(c.get(fabric.EvalRequest("op", [1]).key), c.stats()["checkpoint"]["state"])
    """)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split()[0] == "one"


@pytest.mark.parametrize("bad", [-1, -(2**70)])
def test_compact_max_bytes_below_the_header_is_a_value_error(tmp_path, bad):
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        c.record(key(1), "one")
        with pytest.raises(ValueError, match=f"max_bytes must be at least 64 .*not {bad}"):
            c.compact(str(tmp_path / "d.fabl"), max_bytes=bad)


def test_compact_max_bytes_beyond_any_file_keeps_everything(tmp_path):
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        c.record(key(1), "one")
        assert c.compact(str(tmp_path / "d.fabl"), max_bytes=2**70) == 0
    with EvalCassette(str(tmp_path / "d.fabl"), "r") as d:
        assert d.get(key(1)) == "one"


@pytest.mark.parametrize("bad", [-1, 2**64, 2**70])
def test_created_ns_out_of_range_is_refused_not_wrapped(tmp_path, bad):
    path = str(tmp_path / "c.fabl")
    with pytest.raises(ValueError, match=f"created_ns must be .*not {bad}"):
        EvalCassette(path, created_ns=bad)
    assert not os.path.exists(path)


def test_created_ns_is_written_as_given(tmp_path):
    path = str(tmp_path / "c.fabl")
    with EvalCassette(path, created_ns=2**64 - 1) as c:
        assert c.stats()["created_ns"] == 2**64 - 1
    with pytest.raises(TypeError, match="created_ns must be an int"):
        EvalCassette(path, created_ns=1.5)
