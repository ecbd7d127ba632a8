"""The ``fabric`` command line, run as a real process: every expected error
is one line on stderr with exit status 2 (never a traceback), and ``fabric
key`` gives the key Python gives."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

import fabric

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(fabric.__file__)))


def run(*argv: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (cwd, ROOT, env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "fabric", *argv], capture_output=True,
                          text=True, env=env, cwd=cwd, timeout=120)


def one_line_error(proc: subprocess.CompletedProcess, *fragments: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stdout, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    for f in fragments:
        assert f in lines[0], (f, lines[0])
    return lines[0]


def test_version():
    proc = run("--version")
    assert proc.returncode == 0
    assert proc.stdout.strip() == f"stream-fabric {fabric.__version__} (key scheme " \
                                  f"{fabric.KEY_SCHEME})"


def test_missing_cassette_file(tmp_path):
    missing = str(tmp_path / "nope.fabl")
    for sub in ("stats", "dump", "verify"):
        proc = run("cassette", sub, missing)
        assert proc.returncode == 2, proc
        assert "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert "nope.fabl" in proc.stderr


def test_compact_and_rekey_of_a_missing_file_make_none(tmp_path):
    # They rewrite a ledger: a mistyped path is an error, not a new empty ledger.
    missing = str(tmp_path / "nope.fabl")
    for sub in ("compact", "rekey"):
        one_line_error(run("cassette", sub, missing), "nope.fabl", "no cassette ledger")
        assert os.listdir(tmp_path) == []


def test_dump_limit_below_zero_is_refused(tmp_path):
    # Not an empty dump with exit status 0.
    path = str(tmp_path / "c.fabl")
    with fabric.EvalCassette(path) as c:
        c.record(fabric.EvalRequest("op", [1]).key, "one")
    proc = run("cassette", "dump", "--limit", "-1", path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "--limit" in proc.stderr and "at least 0" in proc.stderr
    assert proc.stdout == ""
    assert run("cassette", "dump", "--limit", "0", path).stdout == ""


def test_not_a_cassette(tmp_path):
    path = tmp_path / "junk.fabl"
    path.write_bytes(b"this is not a ledger at all, not even close" * 3)
    one_line_error(run("cassette", "stats", str(path)), "fabric cassette: error:",
                   "LedgerFormatError")


def test_compact_max_bytes_below_the_header_is_one_line(tmp_path):
    path = str(tmp_path / "c.fabl")
    with fabric.EvalCassette(path) as c:
        c.record(fabric.EvalRequest("op", [1]).key, "one")
    one_line_error(run("cassette", "compact", "--max-bytes", "-1", path),
                   "max_bytes must be at least 64", "not -1")
    with fabric.EvalCassette(path, "r") as c:
        assert len(c) == 1


def test_bad_json():
    one_line_error(run("key", "op", "[1, 2"), "fabric key: error:", "not valid JSON")
    one_line_error(run("key", "op", '{"a": 1}'), "must be a JSON array")
    one_line_error(run("key", "op", "[]", "[1]"), "must be a JSON object")


def test_bad_op_name_is_refused_as_op_refuses_it():
    with pytest.raises(ValueError):
        fabric.op("Bad Name")(lambda: None)
    one_line_error(run("key", "Bad Name", "[]"), "op name must match")


OPS = textwrap.dedent("""
    import fabric

    @fabric.op("cli.payroll", version="2024-01", capabilities=("hr.read",))
    def payroll(name, year=2024):
        return 0

    @fabric.op("cli.ticks", version=3)
    def ticks(n):
        yield from range(n)
    """)


def test_key_with_import_matches_python(tmp_path):
    (tmp_path / "cli_ops.py").write_text(OPS)
    sys.path.insert(0, str(tmp_path))
    try:
        import cli_ops  # noqa: F401  (registers the ops in this process too)
        want_payroll = cli_ops.payroll.request("bob", year=2023).key
        want_ticks = cli_ops.ticks.request(5).key
    finally:
        sys.path.remove(str(tmp_path))
    proc = run("key", "--import", "cli_ops", "cli.payroll", '["bob"]', '{"year": 2023}',
               cwd=str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(want_payroll)
    proc = run("key", "--import", "cli_ops", "cli.ticks", "[5]", cwd=str(tmp_path))
    assert proc.stdout.strip() == str(want_ticks)
    # Without the import, the same key from explicit flags.
    proc = run("key", "cli.payroll", '["bob"]', '{"year": 2023}', "--op-version", "2024-01",
               "--capability", "hr.read")
    assert proc.stdout.strip() == str(want_payroll)
    proc = run("key", "cli.ticks", "[5]", "--op-version", "3", "--stream")
    assert proc.stdout.strip() == str(want_ticks)


def test_unknown_op_and_module(tmp_path):
    (tmp_path / "cli_ops.py").write_text(OPS)
    one_line_error(run("key", "--import", "cli_ops", "cli.nothing", cwd=str(tmp_path)),
                   "'cli.nothing' is not registered", "cli.payroll")
    one_line_error(run("key", "--import", "no_such_module_here", "x"),
                   "ModuleNotFoundError", "no_such_module_here")


def test_fabric_demo_runs_and_shows_each_step(tmp_path):
    """``fabric demo`` exits 0 and its output says what each step shows:
    home computes, local hits, a peer resolves, a stream replayed, explain,
    and two node processes resolving across the network."""
    env = dict(os.environ, FABRIC_HOME=str(tmp_path),
               PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH"))
                                          if p))
    proc = subprocess.run([sys.executable, "-m", "fabric", "demo"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = proc.stdout
    steps = [line.split(".")[0] for line in out.splitlines() if line[:2] in
             {f"{i}." for i in range(10)}]
    assert steps == ["1", "2", "3", "4", "5", "6"], out
    assert f"ledgers under {tmp_path / 'demo'}" in out
    embeds = [x for x in out.splitlines() if x.startswith("   embed(")]
    # four requests: computed at home, then local hits, then resolved by b from a
    assert ["from home" in x for x in embeds[:4]] == [True] * 4, embeds
    assert ["from local" in x and "per call" in x for x in embeds[4:8]] == [True] * 4
    assert ["from peer:a" in x for x in embeds[8:]] == [True] * 4
    assert "holders of the first request: ['a', 'b']" in out
    assert "(identical: True)" in out and "third token reached" in out
    assert "explain sha256:" in out and "holder a            hit" in out
    assert "net-a (computes) listening on fabric://127.0.0.1:" in out
    assert "client -> net-b: resolved from peer:net-a" in out
    assert "client -> net-b again: now held by peer:net-b" in out
    assert "a stream from net-a: streams cross processes with credit" in out
    assert out.rstrip().endswith("both nodes stopped (SIGTERM: streams drained, "
                                 "cassettes closed)")
    assert "Traceback" not in proc.stderr
