"""The checkpoint a writer leaves when it closes, and the one a compaction
leaves (spec: ledger.md, Checkpoint, Writing): the next short-lived process
replays only the records appended since.

Each step is a whole process that exits before the next starts: no
handshake is needed, and the file is what the product left, untouched by
this process's handles.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import fabric
from fabric import EvalCassette, EvalRequest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))
AUTO = 65536  # CKPT_AUTO in csrc/ledger.c: records a checkpoint spares


def run(script, *args):
    """Runs script in a new Python process; its last stdout line as JSON."""
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script), *map(str, args)],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout.strip().splitlines()[-1])


WRITE = """
import json, sys
from fabric import EvalCassette, EvalRequest
path, start, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = EvalCassette(path, durability="os")
for i in range(start, start + n):
    c.record(EvalRequest("op", [i]).key, i)
s = c.stats()["checkpoint"]
c.close()
print(json.dumps(s))
"""

READ = """
import json, sys
from fabric import EvalCassette, EvalRequest
path, k = sys.argv[1], int(sys.argv[2])
c = EvalCassette(path, "r")
v = c.get(EvalRequest("op", [k]).key)
s = c.stats()
print(json.dumps({"value": v, "state": s["checkpoint"]["state"],
                  "covered": s["checkpoint"]["covered_bytes"],
                  "written": s["checkpoint"]["written"],
                  "replayed": s["open_replayed"], "keys": len(c)}))
"""


def test_a_writer_closing_after_many_records_leaves_a_checkpoint(tmp_path):
    path = str(tmp_path / "big.fabl")
    assert run(WRITE, path, 0, AUTO)["state"] == "none"
    assert os.path.exists(path + ".ckpt")
    seen = run(READ, path, 12345)
    assert seen["value"] == 12345
    assert seen["state"] == "used"
    assert seen["replayed"] == 0  # nothing was appended after the close
    assert seen["covered"] == os.path.getsize(path)
    assert seen["written"] == 0  # the reader had nothing to add
    assert seen["keys"] == AUTO
    # a short session after it: below the threshold, the checkpoint stays,
    # and the next process replays only that session's tail
    before = os.stat(path + ".ckpt").st_mtime_ns
    run(WRITE, path, AUTO, 10)
    assert os.stat(path + ".ckpt").st_mtime_ns == before
    seen = run(READ, path, AUTO + 9)
    assert (seen["value"], seen["state"], seen["replayed"]) == (AUTO + 9, "used", 10)
    # another long session: the checkpoint moves to the end again
    run(WRITE, path, AUTO + 10, AUTO)
    seen = run(READ, path, 2 * AUTO + 9)
    assert (seen["value"], seen["state"], seen["replayed"]) == (2 * AUTO + 9, "used", 0)
    assert seen["keys"] == 2 * AUTO + 10


def test_a_short_session_leaves_only_the_ledger(tmp_path):
    path = str(tmp_path / "small.fabl")
    run(WRITE, path, 0, 100)
    assert sorted(os.listdir(tmp_path)) == ["small.fabl"]
    seen = run(READ, path, 7)
    assert (seen["value"], seen["state"], seen["replayed"]) == (7, "none", 100)


@pytest.mark.parametrize("where", ["in-place", "copy"])
def test_a_compaction_leaves_a_checkpoint_of_the_new_file(tmp_path, where):
    path = str(tmp_path / "c.fabl")
    n = AUTO + 1000
    run(WRITE, path, 0, n)
    with EvalCassette(path) as c:  # what a compaction drops
        for i in range(0, 300):
            assert c.delete(EvalRequest("op", [i]).key) is True
    cli = [sys.executable, "-m", "fabric", "cassette", "compact", path]
    target = path
    if where == "copy":
        target = str(tmp_path / "copy.fabl")
        cli += ["-o", target]
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run(cli, env=env, check=True, capture_output=True, timeout=600)
    assert os.path.exists(target + ".ckpt")
    seen = run(READ, target, n - 1)
    assert (seen["value"], seen["state"], seen["replayed"]) == (n - 1, "used", 0)
    assert seen["covered"] == os.path.getsize(target)
    assert seen["keys"] == n - 300
    assert run(READ, target, 5)["value"] is None  # deleted, and not brought back


def test_a_read_only_close_writes_no_checkpoint(tmp_path):
    path = str(tmp_path / "r.fabl")
    with EvalCassette(path, durability="os") as c:
        for i in range(AUTO):
            c.record(EvalRequest("op", [i]).key, i)
    os.remove(path + ".ckpt")
    r = EvalCassette(path, "r", checkpoint=False)
    assert len(r) == AUTO
    r.close()
    assert not os.path.exists(path + ".ckpt")


def test_no_checkpoint_option_is_honoured_at_close(tmp_path):
    path = str(tmp_path / "n.fabl")
    with EvalCassette(path, durability="os", checkpoint=False) as c:
        for i in range(AUTO):
            c.record(EvalRequest("op", [i]).key, i)
    assert sorted(os.listdir(tmp_path)) == ["n.fabl"]
