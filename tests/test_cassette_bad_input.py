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


def _bad_under_the_checkpoint(path):
    """A ledger of 2000 replies and its checkpoint, then one reply (key(1050))
    changed on disk where the checkpoint's open does not look."""
    with EvalCassette(path, durability="os") as c:
        for i in range(2000):
            c.record(key(i), f"value {i:04}")
        c.checkpoint()
    with open(path, "r+b") as f:  # a byte of one reply between two of the 16 windows the
        # checkpoint samples (a 16th of the file apart: 1000 is on one)
        data = f.read()
        at = data.index(b"value 1050")
        f.seek(at)
        f.write(b"V")


def test_a_bad_record_under_the_checkpoint_says_what_and_how_to_read_past_it(tmp_path):
    path = str(tmp_path / "c.fabl")
    _bad_under_the_checkpoint(path)
    with EvalCassette(path, "r") as c:
        assert c.stats()["checkpoint"]["state"] == "used"  # validated as read
        for what in (lambda: list(c), lambda: list(c.items()), lambda: c.get(key(1050))):
            with pytest.raises(fabric.LedgerCorruptionError) as info:
                what()
            text = str(info.value)
            assert path in text and "the record the checkpoint names there is bad" in text
            assert 'recover="salvage"' in text
    with EvalCassette(path, "r", recover="salvage") as c:
        assert len(c) == 1999 and key(1050) not in c
        assert c.get(key(1051)) == "value 1051"


def test_compacting_past_a_bad_record_under_the_checkpoint_blames_the_source(tmp_path):
    # Not "[Errno 5] writing the compacted ledger: Input/output error",
    # which sends one looking at the destination's disk.
    path = str(tmp_path / "c.fabl")
    _bad_under_the_checkpoint(path)
    before = sorted(os.listdir(tmp_path))
    for dest, max_bytes in ((None, None), (str(tmp_path / "d.fabl"), None),
                            (str(tmp_path / "d.fabl"), 100_000)):
        with EvalCassette(path) as c:
            with pytest.raises(fabric.LedgerCorruptionError) as info:
                c.compact(dest, max_bytes=max_bytes)
        text = str(info.value)
        assert text.startswith(f"{path}: ledger corrupt at offset ")
        assert "the record the checkpoint names there is bad" in text
        assert sorted(os.listdir(tmp_path)) == before


def test_a_request_of_another_key_is_refused(tmp_path):
    # Kept beside the reply it would be that reply's request: request_bytes()
    # would say so, and 'fabric cassette rekey' would move the reply to the
    # other request's key.
    with EvalCassette(str(tmp_path / "c.fabl")) as c:
        other = EvalRequest("op", [2])
        for record in (lambda: c.record(key(1), "one", request=other),
                       lambda: c.record_stream(key(1), request=other)):
            with pytest.raises(ValueError, match=f"request= is the request of {key(2)}, "
                                                 f"not of the key given, {key(1)}"):
                record()
        assert len(c) == 0
        assert c.record(key(1), "one", request=EvalRequest("op", [1]))
        assert c.request_bytes(key(1)) == EvalRequest("op", [1]).identity_bytes()


def test_an_exception_in_the_progress_callback_stops_the_compaction(tmp_path):
    class Stop(Exception):
        pass

    def progress(done, total):
        raise Stop

    path, dest = str(tmp_path / "c.fabl"), str(tmp_path / "d.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(3000):
            c.record(key(i), "x" * 500)
        with pytest.raises(Stop):
            c.compact(dest, progress=progress)
        with pytest.raises(Stop):  # in place too
            c.compact(progress=progress)
        assert len(c) == 3000 and c.get(key(2999)) is not None
    assert not os.path.exists(dest)
    assert [f for f in os.listdir(tmp_path) if "compact" in f] == []  # no temporary left
    with EvalCassette(path, "r") as c:
        assert len(c) == 3000
