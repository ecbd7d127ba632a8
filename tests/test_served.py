"""The helpers that start `fabric serve` processes for the tests fail a test
that waits for a log line that never comes, instead of hanging it."""

import subprocess
import sys
import time

import pytest

from served import read_until


def test_read_until_gives_up_on_a_process_that_stays_up_and_never_says_it():
    proc = subprocess.Popen(
        [sys.executable, "-c", "import sys, time; print('started', file=sys.stderr, "
         "flush=True); time.sleep(600)"], stderr=subprocess.PIPE, text=True)
    try:
        assert "started" in read_until(proc, "started", timeout=60)
        t0 = time.monotonic()
        with pytest.raises(AssertionError, match="within 200 lines and 2.0 s"):
            read_until(proc, "never said", timeout=2.0)
        assert time.monotonic() - t0 < 60
        assert proc.wait(timeout=60) != 0  # killed by the time limit
    finally:
        proc.kill()
        proc.wait()
