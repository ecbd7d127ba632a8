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


def test_not_a_cassette(tmp_path):
    path = tmp_path / "junk.fabl"
    path.write_bytes(b"this is not a ledger at all, not even close" * 3)
    one_line_error(run("cassette", "stats", str(path)), "fabric cassette: error:",
                   "LedgerFormatError")


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
